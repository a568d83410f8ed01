// Latency of today's alternative: BENCH_OPS jobs one after the other (after up to BENCH_WARMUP_OPS
// unmeasured ones, at most 2 s of them), each added with queue.add and awaited until the Worker
// reports it completed; the measured part stops early after BENCH_LATENCY_BUDGET_MS.
// Times, from just before queue.add: the processor starting, and the worker's `completed` event.
import { performance } from 'node:perf_hooks'
import { Queue, Worker } from 'bullmq'
import { QUEUE_NAME, redisConnection } from '../lib/shared.js'
import { deferred, envInt, report, summarize } from './common.js'

const ops = envInt('BENCH_OPS', 1_000)
const warmupOps = envInt('BENCH_WARMUP_OPS', 50)
// Bounds the run when operations are slow to start: warm-up stops after 2 s, measuring after this.
const budgetMs = envInt('BENCH_LATENCY_BUDGET_MS', 10_000)
const concurrency = envInt('BENCH_CONCURRENCY', 50)
const connection = redisConnection(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379')

let startedAt = 0
let current = deferred()
let settledAt = 0
let failures = 0
const queue = new Queue(QUEUE_NAME, { connection })
const worker = new Worker(
  QUEUE_NAME,
  async () => {
    startedAt = performance.now()
  },
  {
    connection: { ...connection, maxRetriesPerRequest: null },
    concurrency,
    removeOnComplete: { count: 1000 },
    removeOnFail: { count: 5000 },
  },
)
worker.on('completed', () => {
  settledAt = performance.now()
  current.resolve()
})
worker.on('failed', () => {
  settledAt = performance.now()
  failures++
  current.resolve()
})
await queue.waitUntilReady()
await worker.waitUntilReady()

const ack: number[] = []
const start: number[] = []
const done: number[] = []
let warm = 0
const warmUntil = performance.now() + 2_000
let measureUntil = Infinity
for (let i = 0; ack.length < ops && performance.now() < measureUntil; i++) {
  current = deferred()
  const t0 = performance.now()
  await queue.add('noop', { i })
  const ackAt = performance.now()
  await current.promise
  if (warm < warmupOps && performance.now() < warmUntil) {
    warm++
    continue
  }
  if (measureUntil === Infinity) measureUntil = performance.now() + budgetMs
  ack.push(ackAt - t0)
  start.push(startedAt - t0)
  done.push(settledAt - t0)
}
await worker.close()
await queue.close()

report({
  ops: ack.length,
  requestedOps: ops,
  warmupOps: warm,
  truncated: ack.length < ops ? 1 : 0,
  failures,
  submitAckMs: summarize(ack),
  toStartMs: summarize(start),
  toDoneMs: summarize(done),
})
