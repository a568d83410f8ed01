// `node --conditions=longrun-source --import tsx bench/pg/run.ts [--quick]`: longrun on PostgreSQL
// against pg-boss and graphile-worker doing the same no-op job, on the same server, in one run. Each
// job script runs as its own process on a fresh schema; the variants alternate within a run. The
// targets compare longrun with graphile-worker's best variant of the same run. Writes
// bench/pg/results.md (--quick: bench/.cache/pg-quick.md, never committed) and prints it.
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus, loadavg } from 'node:os'
import pg from 'pg'
import { runJob } from '../lib/proc.js'
import { PG_URL } from './common.js'

const quick = process.argv.includes('--quick')
const runs = quick ? 1 : Number(process.env.BENCH_RUNS ?? 3)
const jobs = quick ? 3_000 : 10_000

interface E2e {
  jobsPerSec: number
}
interface Latency {
  toStartMs: { p50: number; p99: number }
  submitAckMs: { p50: number; p99: number }
}
type System = 'longrun' | 'pg-boss' | 'graphile-worker'
interface Variant {
  label: string
  system: System
  script: string
  env: Record<string, string>
}

// graphile-worker's batching settings as its docs give them (website/docs/performance.md): the
// "Batching" starting point (local queue of concurrency + 1, 25 ms completion batches) and the
// configuration of its published perf-test figures (local queue 500, 0 ms batches, concurrency 24).
const gwBatching = { BENCH_GW_LOCAL_QUEUE: '51', BENCH_GW_BATCH_DELAY: '25' }
const gwPerfTest = { BENCH_GW_LOCAL_QUEUE: '500', BENCH_GW_BATCH_DELAY: '0' }

const e2eVariants: Variant[] = [
  {
    label: 'longrun, one process (API + worker engine), concurrency 50',
    system: 'longrun',
    script: 'longrun-e2e',
    env: {},
  },
  {
    label: 'longrun, API engine + worker engine on separate pools (NOTIFY wake-ups), concurrency 50',
    system: 'longrun',
    script: 'longrun-e2e',
    env: { BENCH_SPLIT: '1' },
  },
  {
    label: 'pg-boss 10, 10 work loops fetching 50 jobs at a time',
    system: 'pg-boss',
    script: 'pgboss-e2e',
    env: { BENCH_CONCURRENCY: '10', BENCH_PGBOSS_BATCH: '50' },
  },
  {
    label: 'pg-boss 10, 50 work loops fetching 1 job at a time',
    system: 'pg-boss',
    script: 'pgboss-e2e',
    env: { BENCH_CONCURRENCY: '50', BENCH_PGBOSS_BATCH: '1', BENCH_JOBS: String(quick ? 500 : 2_000) },
  },
  {
    label: 'graphile-worker 0.17, concurrency 50, no local queue, no completion batching (its defaults)',
    system: 'graphile-worker',
    script: 'graphile-e2e',
    env: { BENCH_CONCURRENCY: '50' },
  },
  {
    label:
      'graphile-worker 0.17, concurrency 50, local queue 51, completion batches 25 ms (its batching starting point)',
    system: 'graphile-worker',
    script: 'graphile-e2e',
    env: { BENCH_CONCURRENCY: '50', ...gwBatching },
  },
  {
    label: 'graphile-worker 0.17, concurrency 50, local queue 500, completion batches 0 ms',
    system: 'graphile-worker',
    script: 'graphile-e2e',
    env: { BENCH_CONCURRENCY: '50', ...gwPerfTest },
  },
  {
    label: 'graphile-worker 0.17, concurrency 24, local queue 500, completion batches 0 ms (its perf-test config)',
    system: 'graphile-worker',
    script: 'graphile-e2e',
    env: { BENCH_CONCURRENCY: '24', ...gwPerfTest },
  },
]
const latencyVariants: Variant[] = [
  {
    label: 'longrun (API engine submits, worker engine woken by NOTIFY)',
    system: 'longrun',
    script: 'longrun-latency',
    env: {},
  },
  {
    label: 'pg-boss 10 (polling every 0.5 s)',
    system: 'pg-boss',
    script: 'pgboss-latency',
    env: { BENCH_OPS: quick ? '10' : '30' },
  },
  {
    label: 'graphile-worker 0.17, concurrency 50, no local queue (its defaults; woken by NOTIFY)',
    system: 'graphile-worker',
    script: 'graphile-latency',
    env: {},
  },
  {
    label: 'graphile-worker 0.17, concurrency 50, local queue 51, completion batches 25 ms',
    system: 'graphile-worker',
    script: 'graphile-latency',
    env: gwBatching,
  },
  {
    label: 'graphile-worker 0.17, concurrency 50, local queue 500, completion batches 0 ms',
    system: 'graphile-worker',
    script: 'graphile-latency',
    env: gwPerfTest,
  },
]

const probe = new pg.Client({ connectionString: PG_URL, connectionTimeoutMillis: 3_000 })
try {
  await probe.connect()
  await probe.end()
} catch (err) {
  console.error(`PostgreSQL does not answer at ${PG_URL} (set BENCH_PG_URL): ${(err as Error).message}`)
  process.exit(2)
}

const loadBefore = loadavg()[0]!
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!
const e2e = new Map<string, number[]>()
const latency = new Map<string, { p50: number[]; p99: number[]; ack: number[] }>()
for (let run = 1; run <= runs; run++) {
  for (const v of e2eVariants) {
    const env = { BENCH_JOBS: String(jobs), ...v.env }
    const result = await runJob<E2e>(`../pg/${v.script}`, env, 600_000)
    e2e.set(v.label, [...(e2e.get(v.label) ?? []), result.jobsPerSec])
    console.error(`run ${run}: ${v.label}: ${Math.round(result.jobsPerSec)} jobs/s`)
  }
  for (const v of latencyVariants) {
    const env = { BENCH_OPS: quick ? '100' : '500', ...v.env }
    const result = await runJob<Latency>(`../pg/${v.script}`, env, 600_000)
    const seen = latency.get(v.label) ?? { p50: [], p99: [], ack: [] }
    seen.p50.push(result.toStartMs.p50)
    seen.p99.push(result.toStartMs.p99)
    seen.ack.push(result.submitAckMs.p50)
    latency.set(v.label, seen)
    console.error(`run ${run}: ${v.label}: start p50 ${result.toStartMs.p50.toFixed(1)} ms`)
  }
}

const e2eMedian = (v: Variant) => median(e2e.get(v.label)!)
const pickupMedian = (v: Variant) => median(latency.get(v.label)!.p50)
const of = (variants: Variant[], system: System) => variants.filter((v) => v.system === system)
const byMax = (score: (v: Variant) => number) => (a: Variant, b: Variant) => (score(b) > score(a) ? b : a)
const bossBaseline = e2eMedian(e2eVariants[2]!)
const gwBest = of(e2eVariants, 'graphile-worker').reduce(byMax(e2eMedian))
const gwBaseline = e2eMedian(gwBest)
// The target holds only if every longrun variant meets it: the slower one is compared.
const longrunWorst = of(e2eVariants, 'longrun').reduce(byMax((v) => -e2eMedian(v)))
const e2eRatio = e2eMedian(longrunWorst) / gwBaseline
const gwFastest = of(latencyVariants, 'graphile-worker').reduce(byMax((v) => -pickupMedian(v)))
const longrunPickup = pickupMedian(latencyVariants[0]!)
const verdict = (met: boolean) => (met ? 'met' : 'not met')

const lines = [
  `# longrun on PostgreSQL vs pg-boss and graphile-worker`,
  '',
  `${new Date().toISOString().slice(0, 10)}, ${runs} run(s), medians; PostgreSQL at ${PG_URL.replace(/\/\/[^@]*@/, '//')}, ` +
    `Node ${process.version}. Same machine for everything; 1-minute load average ${loadBefore.toFixed(1)} before, ` +
    `${loadavg()[0]!.toFixed(1)} after (${cpus().length} cores).`,
  '',
  '## End-to-end throughput (no-op jobs, submitted in batches of 1,000, to all done)',
  '',
  '| variant | jobs/s | vs pg-boss (batch 50) | vs graphile-worker (best) |',
  '| --- | ---: | ---: | ---: |',
  ...e2eVariants.map((v) => {
    const m = e2eMedian(v)
    return `| ${v.label} | ${Math.round(m)} | ${(m / bossBaseline).toFixed(2)}x | ${(m / gwBaseline).toFixed(2)}x |`
  }),
  '',
  '## Submit-to-start latency (one job at a time, idle worker)',
  '',
  '| variant | p50 ms | p99 ms | submit ack p50 ms |',
  '| --- | ---: | ---: | ---: |',
  ...latencyVariants.map((v) => {
    const seen = latency.get(v.label)!
    return `| ${v.label} | ${median(seen.p50).toFixed(1)} | ${median(seen.p99).toFixed(1)} | ${median(seen.ack).toFixed(1)} |`
  }),
  '',
  '## Targets',
  '',
  `- End to end >= 1.0x graphile-worker's best: ${e2eRatio.toFixed(2)}x — ${verdict(e2eRatio >= 1)} ` +
    `(${longrunWorst.label}, ${Math.round(e2eMedian(longrunWorst))} jobs/s, vs ${gwBest.label}, ${Math.round(gwBaseline)} jobs/s)`,
  `- Pickup (submit-to-start) p50 <= graphile-worker's: ${longrunPickup.toFixed(1)} ms vs ` +
    `${pickupMedian(gwFastest).toFixed(1)} ms — ${verdict(longrunPickup <= pickupMedian(gwFastest))} ` +
    `(graphile-worker's fastest: ${gwFastest.label})`,
  '',
]
const text = lines.join('\n')
const out = new URL(quick ? '../.cache/pg-quick.md' : './results.md', import.meta.url)
mkdirSync(new URL('.', out), { recursive: true })
writeFileSync(out, text)
console.log(text)
