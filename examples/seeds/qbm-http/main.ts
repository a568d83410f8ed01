import { closeOnSignals, openStore, storeUrl } from 'longrun/cli'
import { buildApp } from './app.js'

// `npm run example -- qbm-http`: PORT (default 3000), HOST (127.0.0.1), LONGRUN_STORE (default
// sqlite:./data/qbm-http.db), ASYNC_TIMEOUT (seconds a request is held, default 60: qbm-http's
// configure_async_timeout), LOG_LEVEL (info). SIGTERM answers every held request, then exits.
const env = process.env
const asyncTimeoutSeconds = Number(env.ASYNC_TIMEOUT || 60)
if (!(asyncTimeoutSeconds > 0))
  throw new Error(`ASYNC_TIMEOUT must be a positive number of seconds, got '${env.ASYNC_TIMEOUT}'`)
const store = await openStore(storeUrl({ LONGRUN_STORE: env.LONGRUN_STORE || 'sqlite:./data/qbm-http.db' }))
const app = await buildApp({ store, asyncTimeoutSeconds, logLevel: env.LOG_LEVEL ?? 'info' })
closeOnSignals(() => app.close(), app.log)
await app.listen({ port: Number(env.PORT ?? 3000), host: env.HOST ?? '127.0.0.1' })
