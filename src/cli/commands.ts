import type { Logger } from '../core/logger.js'
import { startDeliveries } from '../http/webhooks/deliveries.js'
import { consoleLogger } from './logger.js'
import { buildServer, buildWorker, loadRoutesModule } from './server.js'
import { closeOnSignals } from './signals.js'
import { openStore, redact, storeUrl } from './store-url.js'

// The server side of the CLI, loaded only by `serve`, `worker` and `migrate`: the client commands
// never load Fastify or a driver.

interface StoreFlags {
  store?: string
  pgSchema?: string
  logLevel: string
}

const storeOf = (flags: StoreFlags, logger: Logger) =>
  openStore(flags.store ?? storeUrl(), { ...(flags.pgSchema ? { pgSchema: flags.pgSchema } : {}), logger })

/** `longrun serve <module>`: the module's async routes and the operations API, until a signal. */
export async function serve(
  module: string,
  flags: StoreFlags & { port: string; host: string; role: 'all' | 'api' },
): Promise<void> {
  const routes = await loadRoutesModule(module)
  const port = Number(flags.port)
  if (!Number.isInteger(port) || port < 0 || port > 65_535) throw new Error(`--port '${flags.port}' is not a port`)
  const url = flags.store ?? storeUrl()
  const store = await storeOf(flags, consoleLogger(flags.logLevel))
  const app = await buildServer(
    { store, logLevel: flags.logLevel, ...(flags.role === 'api' ? { worker: false } : {}) },
    routes,
  )
  closeOnSignals(() => app.close(), app.log)
  await app.listen({ port, host: flags.host })
  app.log.info({ store: redact(url), role: flags.role, routes: routes.routes.map((r) => r.url) }, 'longrun serving')
}

/** `longrun worker <module>`: runs the module's handlers on a store shared with API servers. */
export async function worker(
  module: string,
  flags: StoreFlags & { lease?: number; poll?: number; grace?: number },
): Promise<void> {
  const logger = consoleLogger(flags.logLevel)
  const url = flags.store ?? storeUrl()
  if (url === 'memory')
    throw new Error('a worker needs a store shared with the API: sqlite:<path> or a postgres:// URL')
  const routes = await loadRoutesModule(module)
  const store = await storeOf(flags, logger)
  const { lease, poll, grace } = flags
  const engine = buildWorker(
    {
      store,
      logger,
      ...(lease !== undefined ? { lease } : {}),
      ...(poll !== undefined ? { poll } : {}),
      ...(grace !== undefined ? { grace } : {}),
    },
    routes,
  )
  const webhooks = routes.options?.webhooks
  const deliveries =
    webhooks &&
    startDeliveries(engine, webhooks, {
      ...(routes.options?.basePath ? { basePath: routes.options.basePath } : {}),
      logger,
    })
  closeOnSignals(async () => {
    await Promise.all([engine.drain(), deliveries?.close()])
    await engine.close()
  }, logger)
  engine.start()
  logger.info(
    { workerId: engine.workerId, store: redact(url), operations: engine.definitions().map((def) => def.name) },
    'longrun worker started',
  )
}

/** `longrun migrate`: creates or upgrades the store's schema (opening a store migrates it), then exits. */
export async function migrate(flags: StoreFlags): Promise<void> {
  const url = flags.store ?? storeUrl()
  if (url === 'memory') throw new Error('the memory store has no schema to migrate')
  const store = await storeOf(flags, consoleLogger(flags.logLevel))
  await store.close()
  process.stdout.write(`longrun: the store ${redact(url)} is ready\n`)
}
