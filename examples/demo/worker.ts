import { buildWorker, closeOnSignals, consoleLogger, openStore, storeUrl } from 'longrun/cli'
import { timingsFromEnv } from './env.js'
import { startDeliveries } from 'longrun/http'
import { logGeneratedSecret, options, routes } from './module.js'

// `npm run worker`: runs the demo's handlers, and serves no HTTP. Start any number of them beside
// API-only servers (`LONGRUN_ROLE=api npm start`) on one shared store, e.g. PostgreSQL:
//   DATABASE_URL=postgres://localhost/longrun npm run worker
// SIGTERM or SIGINT: stop claiming, let running handlers finish (or give their operations back)
// within the grace period, exit. A second signal exits at once.
// `npx longrun worker examples/demo/module.ts` does the same, configured by its flags.
const env = process.env
const logger = consoleLogger(env.LOG_LEVEL ?? 'info')

const url = storeUrl(env)
if (url === 'memory') {
  logger.error('a worker needs a store shared with the API processes: sqlite:<path> or a postgres:// URL')
  process.exit(1)
}
const store = await openStore(url, { ...(env.LONGRUN_PG_SCHEMA ? { pgSchema: env.LONGRUN_PG_SCHEMA } : {}), logger })
const engine = buildWorker({ store, logger, ...timingsFromEnv(env) }, { routes, options })
// Callbacks are sent where handlers run.
const deliveries = startDeliveries(engine, options.webhooks!, { logger })
if (!env.LONGRUN_WEBHOOK_SECRET) logGeneratedSecret(logger, options)
closeOnSignals(async () => {
  await Promise.all([engine.drain(), deliveries.close()])
  await engine.close()
}, logger)

engine.start()
logger.info(
  { workerId: engine.workerId, operations: engine.definitions().map((def) => def.name) },
  'longrun worker started',
)
