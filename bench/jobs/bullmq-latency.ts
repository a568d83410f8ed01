// Latency of today's alternative: jobs one after the other, each added with queue.add and awaited
// until the Worker reports it completed (see LatencyProbe for counts and bounds). Times, from just
// before queue.add: the processor starting, and the worker's `completed` event.
import { Queue, Worker } from 'bullmq'
import { QUEUE_NAME, redisConnection } from '../lib/shared.js'
import { envInt, LatencyProbe, report } from './common.js'

const connection = redisConnection(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379')
const probe = new LatencyProbe()
const queue = new Queue(QUEUE_NAME, { connection })
const worker = new Worker(QUEUE_NAME, async () => probe.started(), {
  connection: { ...connection, maxRetriesPerRequest: null },
  concurrency: envInt('BENCH_CONCURRENCY', 50),
  removeOnComplete: { count: 1000 },
  removeOnFail: { count: 5000 },
})
worker.on('completed', () => probe.settled(true))
worker.on('failed', () => probe.settled(false))
await queue.waitUntilReady()
await worker.waitUntilReady()

const result = await probe.run((i) => queue.add('noop', { i }))
await worker.close()
await queue.close()
report(result)
