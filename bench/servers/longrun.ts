// longrun as users deploy it: the Fastify plugin, one async route with a no-op handler, the
// worker in the same process. BENCH_STORE: `memory` or `sqlite:<path>` (default settings: durable,
// synchronous FULL). `/jobs/progress` reports progress `steps` times, `everyMs` apart: what the
// streams scenario watches; with `gated`, only once `POST /_bench/go` came, so that every stream
// can be open before the first progress.
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify from 'fastify'
import { longrun } from 'longrun/fastify'
import { openStore } from 'longrun/cli'
import { addStateRoute, serve, type Counters } from './common.js'

const counters: Counters = { accepted: 0, done: 0 }
const app = Fastify({ logger: false })
await app.register(longrun, {
  store: await openStore(process.env.BENCH_STORE ?? 'memory'),
  // The load generator is one anonymous caller holding every stream.
  maxStreamsPerCaller: 100_000,
})
app.longrun.route({
  name: 'noop',
  url: '/jobs',
  concurrency: Number(process.env.BENCH_CONCURRENCY ?? 50),
  handler: async () => undefined,
})
let go!: () => void
const gate = new Promise<void>((resolve) => (go = resolve))
app.post('/_bench/go', async () => {
  go()
  return {}
})
app.longrun.route({
  name: 'progress',
  url: '/jobs/progress',
  concurrency: Number(process.env.BENCH_PROGRESS_CONCURRENCY ?? 50),
  async handler(op) {
    const { steps, everyMs, gated } = op.input as { steps: number; everyMs: number; gated?: boolean }
    if (gated) await gate
    for (let i = 1; i <= steps; i++) {
      await sleep(everyMs, undefined, { signal: op.signal })
      await op.progress((100 * i) / steps)
    }
  },
})
app.longrun.engine.on('operation:queued', () => counters.accepted++)
app.longrun.engine.on('operation:settled', () => counters.done++)
addStateRoute(app, counters)

await serve(app)
