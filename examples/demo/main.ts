import { closeOnSignals, storeUrl } from 'longrun/cli'
import { buildDemoApp } from './app.js'
import { roleFromEnv, timingsFromEnv } from './env.js'
import { settingsFromEnv } from './module.js'

// `npm start`: the demo server. The store comes from LONGRUN_STORE or DATABASE_URL, else a SQLite
// file in ./data; LONGRUN_ROLE=api leaves the handlers to `npm run worker` processes. Every waiting
// period can be shortened from the environment so that crash tests run in seconds.
const env = process.env

const app = await buildDemoApp({
  store: storeUrl(env),
  ...(env.LONGRUN_PG_SCHEMA ? { pgSchema: env.LONGRUN_PG_SCHEMA } : {}),
  ...(roleFromEnv(env) === 'api' ? { worker: false } : {}),
  logLevel: env.LOG_LEVEL ?? 'info',
  ...settingsFromEnv(env),
  ...(env.LONGRUN_MAX_ACTIVE ? { maxActivePerOwner: Number(env.LONGRUN_MAX_ACTIVE) } : {}),
  ...(env.LONGRUN_RATE_LIMIT ? { rateLimit: { max: Number(env.LONGRUN_RATE_LIMIT), timeWindow: '1 minute' } } : {}),
  ...timingsFromEnv(env),
})
closeOnSignals(() => app.close(), app.log)

await app.listen({ port: Number(env.PORT ?? 3000), host: env.HOST ?? '127.0.0.1' })
