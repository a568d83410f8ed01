// Submit-to-start latency on PostgreSQL: BENCH_OPS operations one after the other (after
// BENCH_WARMUP_OPS unmeasured ones); each is submitted and awaited until settled. By default
// (BENCH_SPLIT=1) an API-only engine submits and a worker engine on its own store (own pool, own
// LISTEN connection) runs them: the start waits for the NOTIFY wake-up, as across processes.
// The poll fallback is set to 10 s so that it cannot be what starts them.
import { performance } from 'node:perf_hooks'
import { Engine } from 'longrun'
import { postgresStore } from 'longrun/postgres'
import { deferred, envInt, report, summarize } from '../jobs/common.js'
import { dropSchema, PG_URL } from './common.js'

const ops = envInt('BENCH_OPS', 500)
const warmupOps = envInt('BENCH_WARMUP_OPS', 50)
const split = (process.env.BENCH_SPLIT ?? '1') === '1'
const schema = `bench_lat_${process.pid}`

const open = async () => {
  const store = postgresStore({ connectionString: PG_URL, schema })
  await store.ready()
  return store
}
let startedAt = 0
let current = deferred()
let settledAt = 0
let failures = 0
const api = new Engine({ store: await open(), worker: !split, poll: '10s' })
const worker = split ? new Engine({ store: await open(), poll: '10s' }) : api
for (const engine of new Set([api, worker])) {
  engine.define({
    name: 'noop',
    handler: async () => {
      startedAt = performance.now()
    },
  })
}
worker.on('operation:settled', (op) => {
  settledAt = performance.now()
  if (op.state !== 'succeeded') failures++
  current.resolve()
})
api.start()
worker.start()
// Let the worker's LISTEN connection open before the first submission.
await new Promise((resolve) => setTimeout(resolve, 500))

const ack: number[] = []
const start: number[] = []
const done: number[] = []
for (let i = 0; i < warmupOps + ops; i++) {
  current = deferred()
  const t0 = performance.now()
  await api.submit('noop', { input: { i } })
  const ackAt = performance.now()
  await current.promise
  if (i < warmupOps) continue
  ack.push(ackAt - t0)
  start.push(startedAt - t0)
  done.push(settledAt - t0)
}
await Promise.all([api.close(), worker.close()])
await dropSchema(schema)

report({
  ops,
  split: split ? 1 : 0,
  failures,
  submitAckMs: summarize(ack),
  toStartMs: summarize(start),
  toDoneMs: summarize(done),
})
