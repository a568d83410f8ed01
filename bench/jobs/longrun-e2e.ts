// End-to-end throughput: BENCH_JOBS no-op operations submitted through engine.submit in batches
// of BENCH_BATCH and run to `succeeded` by the same engine (concurrency BENCH_CONCURRENCY).
import { performance } from 'node:perf_hooks'
import { Engine } from 'longrun'
import { deferred, envInt, openStore, report } from './common.js'

const jobs = envInt('BENCH_JOBS', 20_000)
const batch = envInt('BENCH_BATCH', 1_000)
const concurrency = envInt('BENCH_CONCURRENCY', 50)

const engine = new Engine({ store: await openStore(process.env.BENCH_STORE ?? 'memory') })
engine.define({ name: 'noop', concurrency, handler: async () => undefined })

let settled = 0
let succeeded = 0
const all = deferred()
engine.on('operation:settled', (op) => {
  settled++
  if (op.state === 'succeeded') succeeded++
  if (settled === jobs) all.resolve()
})
engine.start()

const t0 = performance.now()
for (let i = 0; i < jobs; i += batch) {
  const n = Math.min(batch, jobs - i)
  await Promise.all(Array.from({ length: n }, (_, k) => engine.submit('noop', { input: { i: i + k } })))
}
const submittedAt = performance.now()
await all.promise
const doneAt = performance.now()
await engine.close()

report({
  jobs,
  succeeded,
  seconds: (doneAt - t0) / 1000,
  jobsPerSec: jobs / ((doneAt - t0) / 1000),
  submitSeconds: (submittedAt - t0) / 1000,
})
