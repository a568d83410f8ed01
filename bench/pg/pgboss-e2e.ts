// The pg-boss version of longrun-e2e.ts: BENCH_JOBS no-op jobs inserted in batches of BENCH_BATCH
// (`boss.insert`), worked by BENCH_CONCURRENCY `boss.work` loops fetching BENCH_PGBOSS_BATCH jobs at
// a time, on a fresh schema dropped afterwards. pg-boss polls (at least every 0.5 s); it has no
// wake-up, so a loop that found nothing sleeps for its polling interval.
import { performance } from 'node:perf_hooks'
import PgBoss from 'pg-boss'
import { deferred, envInt, report } from '../jobs/common.js'
import { dropSchema, PG_URL } from './common.js'

const jobs = envInt('BENCH_JOBS', 20_000)
const batch = envInt('BENCH_BATCH', 1_000)
const concurrency = envInt('BENCH_CONCURRENCY', 50)
const fetchBatch = envInt('BENCH_PGBOSS_BATCH', 1)
const schema = `bench_boss_${process.pid}`

const boss = new PgBoss({ connectionString: PG_URL, schema, supervise: false, schedule: false })
boss.on('error', (err) => process.stderr.write(`pg-boss: ${String(err)}\n`))
await boss.start()
await boss.createQueue('noop')

let done = 0
const all = deferred()
for (let i = 0; i < concurrency; i++) {
  await boss.work('noop', { batchSize: fetchBatch, pollingIntervalSeconds: 0.5 }, async (batchJobs) => {
    done += batchJobs.length
    if (done >= jobs) all.resolve()
  })
}

const t0 = performance.now()
for (let i = 0; i < jobs; i += batch) {
  const n = Math.min(batch, jobs - i)
  await boss.insert(Array.from({ length: n }, (_, k) => ({ name: 'noop', data: { i: i + k } })))
}
const submittedAt = performance.now()
await all.promise
const doneAt = performance.now()
await boss.stop({ graceful: true, wait: true, timeout: 5_000 })
await dropSchema(schema)

report({
  jobs,
  concurrency,
  fetchBatch,
  seconds: (doneAt - t0) / 1000,
  jobsPerSec: jobs / ((doneAt - t0) / 1000),
  submitSeconds: (submittedAt - t0) / 1000,
})
