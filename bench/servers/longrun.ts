// longrun as users deploy it: the Fastify plugin, one async route with a no-op handler, the
// worker in the same process. BENCH_STORE: `memory` or `sqlite:<path>` (default settings: durable,
// synchronous FULL).
import Fastify from 'fastify'
import type { Store } from 'longrun'
import { longrun } from 'longrun/fastify'
import { addStateRoute, serve, type Counters } from './common.js'

async function openStore(spec: string): Promise<Store> {
  if (spec === 'memory') {
    const { memoryStore } = await import('longrun/memory')
    return memoryStore()
  }
  if (spec.startsWith('sqlite:')) {
    const { sqliteStore } = await import('longrun/sqlite')
    return sqliteStore({ path: spec.slice('sqlite:'.length) })
  }
  throw new Error(`BENCH_STORE must be 'memory' or 'sqlite:<path>', got '${spec}'`)
}

const counters: Counters = { accepted: 0, done: 0 }
const app = Fastify({ logger: false })
await app.register(longrun, { store: await openStore(process.env.BENCH_STORE ?? 'memory') })
app.longrun.route({
  name: 'noop',
  url: '/jobs',
  concurrency: Number(process.env.BENCH_CONCURRENCY ?? 50),
  handler: async () => undefined,
})
app.longrun.engine.on('operation:queued', () => counters.accepted++)
app.longrun.engine.on('operation:settled', () => counters.done++)
addStateRoute(app, counters)

await serve(app)
