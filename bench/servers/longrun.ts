// longrun as users deploy it: the Fastify plugin, one async route with a no-op handler, the
// worker in the same process. BENCH_STORE: `memory` or `sqlite:<path>` (default settings: durable,
// synchronous FULL).
import Fastify from 'fastify'
import { longrun } from 'longrun/fastify'
import { openStore } from '../../examples/demo/store.js'
import { addStateRoute, serve, type Counters } from './common.js'

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
