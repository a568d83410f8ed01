// End-to-end throughput of today's alternative: BENCH_JOBS no-op jobs added with Queue.addBulk in
// batches of BENCH_BATCH and processed by a Worker of concurrency BENCH_CONCURRENCY, settings as in
// BullMQ's docs (see bench/servers/bullmq.ts). The driver empties the queue's keys first.
import { performance } from 'node:perf_hooks'
import { Queue, Worker } from 'bullmq'
import { QUEUE_NAME, redisConnection } from '../lib/shared.js'
import { deferred, envInt, report } from './common.js'

const jobs = envInt('BENCH_JOBS', 20_000)
const batch = envInt('BENCH_BATCH', 1_000)
const concurrency = envInt('BENCH_CONCURRENCY', 50)
const connection = redisConnection(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379')

const queue = new Queue(QUEUE_NAME, { connection })
let settled = 0
let succeeded = 0
const all = deferred()
const count = (ok: boolean) => {
  settled++
  if (ok) succeeded++
  if (settled === jobs) all.resolve()
}
const worker = new Worker(QUEUE_NAME, async () => undefined, {
  connection: { ...connection, maxRetriesPerRequest: null },
  concurrency,
  removeOnComplete: { count: 1000 },
  removeOnFail: { count: 5000 },
})
worker.on('completed', () => count(true))
worker.on('failed', () => count(false))
await queue.waitUntilReady()
await worker.waitUntilReady()

const t0 = performance.now()
for (let i = 0; i < jobs; i += batch) {
  const n = Math.min(batch, jobs - i)
  await queue.addBulk(Array.from({ length: n }, (_, k) => ({ name: 'noop', data: { i: i + k } })))
}
const submittedAt = performance.now()
await all.promise
const doneAt = performance.now()
await worker.close()
await queue.close()

report({
  jobs,
  succeeded,
  seconds: (doneAt - t0) / 1000,
  jobsPerSec: jobs / ((doneAt - t0) / 1000),
  submitSeconds: (submittedAt - t0) / 1000,
})
