// The graphile-worker version of longrun-e2e.ts: BENCH_JOBS no-op jobs added with `addJobs` in
// batches of BENCH_BATCH (each awaited), run by one worker pool (options: graphile.ts), on a fresh
// schema dropped afterwards. Done means what longrun's `operation:settled` means, the outcome is in
// the database: graphile-worker deletes a completed job, up to `completeJobBatchDelay` after its
// handler returned, so once every handler has run the jobs table is polled until empty.
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { deferred, envInt, report } from '../jobs/common.js'
import { dropSchema, PG_URL } from './common.js'
import { batchDelay, concurrency, localQueueSize, openUtils, startWorker } from './graphile.js'

const jobs = envInt('BENCH_JOBS', 20_000)
const batch = envInt('BENCH_BATCH', 1_000)
const schema = `bench_gw_${process.pid}`

const runner = await startWorker(schema, { noop: async () => undefined })
const utils = await openUtils(schema)
const probe = new pg.Client({ connectionString: PG_URL })
await probe.connect()

let handled = 0
let failed = 0
const all = deferred()
runner.events.on('job:complete', ({ error }) => {
  if (error) failed++
  if (++handled === jobs) all.resolve()
})
const jobsLeft = async () =>
  (await probe.query<{ left: boolean }>(`SELECT EXISTS (SELECT 1 FROM ${schema}._private_jobs) AS left`)).rows[0]!.left

const t0 = performance.now()
for (let i = 0; i < jobs; i += batch) {
  const n = Math.min(batch, jobs - i)
  await utils.addJobs(Array.from({ length: n }, (_, k) => ({ identifier: 'noop', payload: { i: i + k } })))
}
const submittedAt = performance.now()
await all.promise
const handledAt = performance.now()
while (await jobsLeft()) await sleep(1)
const doneAt = performance.now()
await runner.stop()
await Promise.all([utils.release(), probe.end()])
await dropSchema(schema)

report({
  jobs,
  concurrency,
  localQueueSize,
  batchDelay,
  succeeded: handled - failed,
  seconds: (doneAt - t0) / 1000,
  jobsPerSec: jobs / ((doneAt - t0) / 1000),
  submitSeconds: (submittedAt - t0) / 1000,
  handledSeconds: (handledAt - t0) / 1000,
})
