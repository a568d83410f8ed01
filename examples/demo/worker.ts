import { Engine, type Logger } from 'longrun'
import { timingsFromEnv } from './env.js'
import { openStore, storeSpec } from './store.js'
import { demoTasks } from './tasks.js'

// `npm run worker`: runs the demo's handlers, and serves no HTTP. Start any number of them beside
// API-only servers (`LONGRUN_ROLE=api npm start`) on one shared store, e.g. PostgreSQL:
//   DATABASE_URL=postgres://localhost/longrun npm run worker
// SIGTERM or SIGINT: stop claiming, let running handlers finish (or give their operations back)
// within the grace period, exit. A second signal exits at once.
const env = process.env
const logger = consoleLogger(env.LOG_LEVEL ?? 'info')

const spec = storeSpec(env)
if (spec === 'memory') {
  logger.error('a worker needs a store shared with the API processes: sqlite:<path> or a postgres:// URL')
  process.exit(1)
}
const store = await openStore(spec, { ...(env.LONGRUN_PG_SCHEMA ? { pgSchema: env.LONGRUN_PG_SCHEMA } : {}), logger })
const engine = new Engine({ store, worker: true, logger, ...timingsFromEnv(env) })
for (const task of demoTasks) engine.define(task)

let closing = false
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (closing) {
      logger.warn(`${signal} again: exiting at once`)
      process.exit(1)
    }
    closing = true
    logger.info(`${signal}: stopping (send it again to exit at once)`)
    engine.close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'error while stopping')
        process.exit(1)
      },
    )
  })
}

engine.start()
logger.info(
  { workerId: engine.workerId, operations: engine.definitions().map((def) => def.name) },
  'longrun worker started',
)

/** One JSON object per line on stdout, like Fastify's logger, without depending on pino. */
function consoleLogger(level: string, bindings: Record<string, unknown> = {}): Logger {
  const levels = { debug: 20, info: 30, warn: 40, error: 50 } as const
  const threshold = level === 'silent' ? Infinity : (levels[level as keyof typeof levels] ?? levels.info)
  const write =
    (name: keyof typeof levels) =>
    (obj: object | string, msg?: string): void => {
      if (levels[name] < threshold) return
      const fields = typeof obj === 'string' ? { msg: obj } : { ...serialise(obj), ...(msg ? { msg } : {}) }
      process.stdout.write(
        `${JSON.stringify({ level: levels[name], time: Date.now(), pid: process.pid, ...bindings, ...fields })}\n`,
      )
    }
  return {
    debug: write('debug'),
    info: write('info'),
    warn: write('warn'),
    error: write('error'),
    child: (more) => consoleLogger(level, { ...bindings, ...more }),
  }
}

/** Errors do not survive JSON.stringify: keep their message and stack. */
function serialise(obj: object): Record<string, unknown> {
  const out: Record<string, unknown> = { ...obj }
  for (const [key, value] of Object.entries(out)) {
    if (value instanceof Error) out[key] = { type: value.name, message: value.message, stack: value.stack }
  }
  return out
}
