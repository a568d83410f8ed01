// Latency: BENCH_OPS operations one after the other (after up to BENCH_WARMUP_OPS unmeasured ones,
// at most 2 s of them); each is submitted with engine.submit and awaited until settled. The measured
// part stops early after BENCH_LATENCY_BUDGET_MS, so that slow pick-ups cannot stretch the run. Times, from just before engine.submit:
// the handler starting, and the `operation:settled` event (state succeeded).
import { performance } from 'node:perf_hooks'
import { Engine } from 'longrun'
import { deferred, envInt, openStore, report, summarize } from './common.js'

const ops = envInt('BENCH_OPS', 1_000)
const warmupOps = envInt('BENCH_WARMUP_OPS', 50)
// Bounds the run when operations are slow to start: warm-up stops after 2 s, measuring after this.
const budgetMs = envInt('BENCH_LATENCY_BUDGET_MS', 10_000)
const concurrency = envInt('BENCH_CONCURRENCY', 50)

let startedAt = 0
let current = deferred()
let settledAt = 0
let failures = 0
const engine = new Engine({ store: await openStore(process.env.BENCH_STORE ?? 'memory') })
engine.define({
  name: 'noop',
  concurrency,
  handler: async () => {
    startedAt = performance.now()
  },
})
engine.on('operation:settled', (op) => {
  settledAt = performance.now()
  if (op.state !== 'succeeded') failures++
  current.resolve()
})
engine.start()

const ack: number[] = []
const start: number[] = []
const done: number[] = []
let warm = 0
const warmUntil = performance.now() + 2_000
let measureUntil = Infinity
for (let i = 0; ack.length < ops && performance.now() < measureUntil; i++) {
  current = deferred()
  const t0 = performance.now()
  await engine.submit('noop', { input: { i } })
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
await engine.close()

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
