import { closeOnSignals, openStore, storeUrl } from 'longrun/cli'
import { buildApp } from './app.js'

// `npm run example -- async-endpoints`: PORT (default 3000), HOST (127.0.0.1), LONGRUN_STORE
// (default sqlite:./data/async-endpoints.db; `memory`, or a postgres:// URL for a shared store),
// LOG_LEVEL (info).
const env = process.env
const store = await openStore(storeUrl({ LONGRUN_STORE: env.LONGRUN_STORE || 'sqlite:./data/async-endpoints.db' }))
const app = await buildApp({ store, logLevel: env.LOG_LEVEL ?? 'info' })
closeOnSignals(() => app.close(), app.log)
await app.listen({ port: Number(env.PORT ?? 3000), host: env.HOST ?? '127.0.0.1' })
