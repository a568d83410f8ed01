// The graphile-worker version of longrun-latency.ts: BENCH_OPS jobs one after the other (after
// BENCH_WARMUP_OPS unmeasured ones), each added with `addJob` on a pool of its own and awaited until
// its handler ran in an idle worker pool (options: graphile.ts), which is woken by LISTEN/NOTIFY.
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { deferred, envInt, report, summarize } from '../jobs/common.js'
import { dropSchema } from './common.js'
import { localQueueSize, openUtils, startWorker } from './graphile.js'

const ops = envInt('BENCH_OPS', 500)
const warmupOps = envInt('BENCH_WARMUP_OPS', 50)
const schema = `bench_gwlat_${process.pid}`

let startedAt = 0
let current = deferred()
const runner = await startWorker(schema, {
  noop: async () => {
    startedAt = performance.now()
    current.resolve()
  },
})
const utils = await openUtils(schema)
// Let the pool's LISTEN connection open before the first job.
await sleep(500)

const ack: number[] = []
const start: number[] = []
for (let i = 0; i < warmupOps + ops; i++) {
  current = deferred()
  const t0 = performance.now()
  await utils.addJob('noop', { i })
  const ackAt = performance.now()
  await current.promise
  if (i < warmupOps) continue
  ack.push(ackAt - t0)
  start.push(startedAt - t0)
}
await runner.stop()
await utils.release()
await dropSchema(schema)

report({ ops, localQueueSize, submitAckMs: summarize(ack), toStartMs: summarize(start) })
