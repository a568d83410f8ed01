// Today's alternative, as users build it: Fastify + BullMQ. The route adds a job and answers 202;
// a BullMQ Worker (concurrency 50) runs a no-op processor in the same process. Settings follow
// BullMQ's docs ("Going to production", "Auto-removal of jobs"): the worker connection has
// `maxRetriesPerRequest: null`, the producer connection used from HTTP handlers has
// `enableOfflineQueue: false` (fail fast), and finished jobs are trimmed with
// `removeOnComplete: { count: 1000 }` / `removeOnFail: { count: 5000 }`.
import { Queue, Worker } from 'bullmq'
import Fastify from 'fastify'
import { JSON_TYPE, operationBody, QUEUE_NAME, redisConnection } from '../lib/shared.js'
import { addStateRoute, serve, type Counters } from './common.js'

const connection = redisConnection(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379')
const queue = new Queue(QUEUE_NAME, { connection: { ...connection, enableOfflineQueue: false } })
const worker = new Worker(QUEUE_NAME, async () => undefined, {
  connection: { ...connection, maxRetriesPerRequest: null },
  concurrency: Number(process.env.BENCH_CONCURRENCY ?? 50),
  removeOnComplete: { count: 1000 },
  removeOnFail: { count: 5000 },
})

const counters: Counters = { accepted: 0, done: 0 }
worker.on('completed', () => counters.done++)
worker.on('failed', () => counters.done++)
worker.on('error', (err) => process.stderr.write(`worker error: ${err.message}\n`))

const app = Fastify({ logger: false })
addStateRoute(app, counters)
app.post('/jobs', async (request, reply) => {
  const job = await queue.add('noop', request.body ?? null)
  counters.accepted++
  const id = job.id!
  reply.code(202).headers({ 'content-type': JSON_TYPE, location: `/operations/${id}`, 'retry-after': '1' })
  return JSON.stringify(operationBody(id, 'queued', job.timestamp))
})
app.addHook('onClose', async () => {
  await worker.close()
  await queue.close()
})

await serve(app, async () => {
  await queue.waitUntilReady()
  await worker.waitUntilReady()
})
