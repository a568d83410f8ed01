// End-to-end throughput on PostgreSQL: BENCH_JOBS no-op operations submitted through engine.submit
// in batches of BENCH_BATCH and run to `succeeded` (concurrency BENCH_CONCURRENCY), on a fresh
// schema dropped afterwards. BENCH_SPLIT=1: the submitting engine is API-only (`worker: false`) and
// a second engine on its own store (own pool) runs the handlers, woken by LISTEN/NOTIFY as a worker
// process would be.
import { performance } from 'node:perf_hooks'
import { Engine } from 'longrun'
import { postgresStore } from 'longrun/postgres'
import { deferred, envInt, report } from '../jobs/common.js'
import { dropSchema, PG_URL } from './common.js'

const jobs = envInt('BENCH_JOBS', 20_000)
const batch = envInt('BENCH_BATCH', 1_000)
const concurrency = envInt('BENCH_CONCURRENCY', 50)
const split = process.env.BENCH_SPLIT === '1'
const schema = `bench_e2e_${process.pid}`

const open = async () => {
  const store = postgresStore({ connectionString: PG_URL, schema })
  await store.ready()
  return store
}
const api = new Engine({ store: await open(), worker: !split })
const worker = split ? new Engine({ store: await open() }) : api
for (const engine of new Set([api, worker])) {
  engine.define({ name: 'noop', concurrency, handler: async () => undefined })
}

let settled = 0
let succeeded = 0
const all = deferred()
worker.on('operation:settled', (op) => {
  settled++
  if (op.state === 'succeeded') succeeded++
  if (settled === jobs) all.resolve()
})
api.start()
worker.start()

const t0 = performance.now()
for (let i = 0; i < jobs; i += batch) {
  const n = Math.min(batch, jobs - i)
  await Promise.all(Array.from({ length: n }, (_, k) => api.submit('noop', { input: { i: i + k } })))
}
const submittedAt = performance.now()
await all.promise
const doneAt = performance.now()
await Promise.all([api.close(), worker.close()])
await dropSchema(schema)

report({
  jobs,
  concurrency,
  split: split ? 1 : 0,
  succeeded,
  seconds: (doneAt - t0) / 1000,
  jobsPerSec: jobs / ((doneAt - t0) / 1000),
  submitSeconds: (submittedAt - t0) / 1000,
})
