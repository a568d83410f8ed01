import { buildDemoApp } from './app.js'
import { roleFromEnv, timingsFromEnv } from './env.js'
import { storeSpec } from './store.js'

// `npm start`: the demo server. The store comes from LONGRUN_STORE or DATABASE_URL (see
// ./store.ts); LONGRUN_ROLE=api leaves the handlers to `npm run worker` processes. Every waiting
// period can be shortened from the environment so that crash tests run in seconds.
const env = process.env

const app = await buildDemoApp({
  store: storeSpec(env),
  ...(env.LONGRUN_PG_SCHEMA ? { pgSchema: env.LONGRUN_PG_SCHEMA } : {}),
  ...(roleFromEnv(env) === 'api' ? { worker: false } : {}),
  logLevel: env.LOG_LEVEL ?? 'info',
  ...(env.LONGRUN_JWT_SECRET ? { jwtSecret: env.LONGRUN_JWT_SECRET } : {}),
  ...(env.LONGRUN_MAX_ACTIVE ? { maxActivePerOwner: Number(env.LONGRUN_MAX_ACTIVE) } : {}),
  ...(env.LONGRUN_RATE_LIMIT ? { rateLimit: { max: Number(env.LONGRUN_RATE_LIMIT), timeWindow: '1 minute' } } : {}),
  ...timingsFromEnv(env),
})

let closing = false
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (closing) {
      app.log.warn(`${signal} again: exiting at once`)
      process.exit(1)
    }
    closing = true
    app.log.info(`${signal}: stopping (send it again to exit at once)`)
    app.close().then(
      () => process.exit(0),
      (err: unknown) => {
        app.log.error({ err }, 'error while stopping')
        process.exit(1)
      },
    )
  })
}

await app.listen({ port: Number(env.PORT ?? 3000), host: env.HOST ?? '127.0.0.1' })
