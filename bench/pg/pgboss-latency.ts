// The pg-boss version of longrun-latency.ts: BENCH_OPS jobs one after the other, each sent with
// `boss.send` and awaited until its handler ran. pg-boss picks jobs up by polling, every 0.5 s at
// the fastest.
import { performance } from 'node:perf_hooks'
import PgBoss from 'pg-boss'
import { deferred, envInt, report, summarize } from '../jobs/common.js'
import { dropSchema, PG_URL } from './common.js'

const ops = envInt('BENCH_OPS', 50)
const warmupOps = envInt('BENCH_WARMUP_OPS', 5)
const schema = `bench_bosslat_${process.pid}`

const boss = new PgBoss({ connectionString: PG_URL, schema, supervise: false, schedule: false })
boss.on('error', (err) => process.stderr.write(`pg-boss: ${String(err)}\n`))
await boss.start()
await boss.createQueue('noop')

let startedAt = 0
let current = deferred()
await boss.work('noop', { batchSize: 1, pollingIntervalSeconds: 0.5 }, async () => {
  startedAt = performance.now()
  current.resolve()
})

const ack: number[] = []
const start: number[] = []
for (let i = 0; i < warmupOps + ops; i++) {
  current = deferred()
  const t0 = performance.now()
  await boss.send('noop', { i })
  const ackAt = performance.now()
  await current.promise
  if (i < warmupOps) continue
  ack.push(ackAt - t0)
  start.push(startedAt - t0)
}
await boss.stop({ graceful: true, wait: true, timeout: 5_000 })
await dropSchema(schema)

report({ ops, submitAckMs: summarize(ack), toStartMs: summarize(start) })
