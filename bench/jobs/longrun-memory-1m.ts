// The memory store over a long life: BENCH_OPS (1,000,000) no-op operations submitted through
// engine.submit in batches of BENCH_BATCH (1,000), each batch awaited, at most BENCH_IN_FLIGHT (3)
// batches submitted and not yet settled, while the same engine (concurrency BENCH_CONCURRENCY) runs
// them. The engine and the store have their defaults, as a user would leave them. At 10%, 50% and
// 100% of the operations settled, submitting pauses until nothing is in flight, then `global.gc()`
// (the driver starts this script with --expose-gc) and the heap and RSS are read.
import { performance } from 'node:perf_hooks'
import { Engine } from 'longrun'
import { deferred, envInt, openStore, report } from './common.js'

const total = envInt('BENCH_OPS', 1_000_000)
const batch = envInt('BENCH_BATCH', 1_000)
const inFlightBatches = envInt('BENCH_IN_FLIGHT', 3)
const concurrency = envInt('BENCH_CONCURRENCY', 50)
const gc = (globalThis as { gc?: () => void }).gc
if (!gc) throw new Error('run with --expose-gc')

const engine = new Engine({ store: await openStore('memory') })
engine.define({ name: 'noop', concurrency, handler: async () => undefined })

let settled = 0
let succeeded = 0
let waiter: { target: number; resolve: () => void } | undefined
engine.on('operation:settled', (op) => {
  settled++
  if (op.state === 'succeeded') succeeded++
  if (waiter && settled >= waiter.target) {
    const w = waiter
    waiter = undefined
    w.resolve()
  }
})
const settledAtLeast = async (target: number) => {
  if (settled >= target) return
  const d = deferred()
  waiter = { target, resolve: d.resolve }
  await d.promise
}
engine.start()

const MiB = 1_048_576
const checkpoints = [Math.round(total / 10), Math.round(total / 2), total]
const marks: { ops: number; seconds: number; heapUsedMiB: number; rssMiB: number }[] = []
const t0 = performance.now()
let submitted = 0
let next = 0
while (submitted < total) {
  // At most `inFlightBatches` batches submitted and not settled.
  await settledAtLeast(submitted - (inFlightBatches - 1) * batch)
  const n = Math.min(batch, total - submitted, checkpoints[next]! - submitted)
  await Promise.all(Array.from({ length: n }, (_, k) => engine.submit('noop', { input: { i: submitted + k } })))
  submitted += n
  if (submitted === checkpoints[next]) {
    await settledAtLeast(submitted)
    const seconds = (performance.now() - t0) / 1000
    gc()
    const mem = process.memoryUsage()
    marks.push({ ops: submitted, seconds, heapUsedMiB: mem.heapUsed / MiB, rssMiB: mem.rss / MiB })
    process.stderr.write(
      `memory1m: ${submitted} settled after ${seconds.toFixed(1)} s, heap ${(mem.heapUsed / MiB).toFixed(0)} MiB, ` +
        `RSS ${(mem.rss / MiB).toFixed(0)} MiB\n`,
    )
    next++
  }
}
const seconds = (performance.now() - t0) / 1000
await engine.close()

// `first`, `mid`, `last`: at 10%, 50% and 100% of the operations.
const [first, mid, last] = marks
report({
  jobs: total,
  succeeded,
  seconds,
  jobsPerSec: total / seconds,
  first,
  mid,
  last,
  heapGrowth: last!.heapUsedMiB / first!.heapUsedMiB,
  heapPerOpBytes: ((last!.heapUsedMiB - first!.heapUsedMiB) * MiB) / (last!.ops - first!.ops),
})
