// `node --conditions=longrun-source --import tsx bench/pg/run.ts [--quick]`: longrun on PostgreSQL
// against pg-boss doing the same no-op job, on the same server, in one run. Each job script runs as
// its own process on a fresh schema; the variants alternate within a run. Writes bench/pg/results.md
// (--quick: bench/.cache/pg-quick.md, never committed) and prints it.
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

const e2eVariants: { label: string; script: string; env: Record<string, string> }[] = [
  { label: 'longrun, one process (API + worker engine), concurrency 50', script: 'longrun-e2e', env: {} },
  {
    label: 'longrun, API engine + worker engine on separate pools (NOTIFY wake-ups), concurrency 50',
    script: 'longrun-e2e',
    env: { BENCH_SPLIT: '1' },
  },
  {
    label: 'pg-boss 10, 10 work loops fetching 50 jobs at a time',
    script: 'pgboss-e2e',
    env: { BENCH_CONCURRENCY: '10', BENCH_PGBOSS_BATCH: '50' },
  },
  {
    label: 'pg-boss 10, 50 work loops fetching 1 job at a time',
    script: 'pgboss-e2e',
    env: { BENCH_CONCURRENCY: '50', BENCH_PGBOSS_BATCH: '1', BENCH_JOBS: String(quick ? 500 : 2_000) },
  },
]
const latencyVariants = [
  { label: 'longrun (API engine submits, worker engine woken by NOTIFY)', script: 'longrun-latency', env: {} },
  { label: 'pg-boss 10 (polling every 0.5 s)', script: 'pgboss-latency', env: { BENCH_OPS: quick ? '10' : '30' } },
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
const latency = new Map<string, { p50: number[]; p99: number[] }>()
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
    const seen = latency.get(v.label) ?? { p50: [], p99: [] }
    seen.p50.push(result.toStartMs.p50)
    seen.p99.push(result.toStartMs.p99)
    latency.set(v.label, seen)
    console.error(`run ${run}: ${v.label}: start p50 ${result.toStartMs.p50.toFixed(1)} ms`)
  }
}

const baseline = median(e2e.get(e2eVariants[2]!.label)!)
const lines = [
  `# longrun on PostgreSQL vs pg-boss`,
  '',
  `${new Date().toISOString().slice(0, 10)}, ${runs} run(s), medians; PostgreSQL at ${PG_URL.replace(/\/\/[^@]*@/, '//')}, ` +
    `Node ${process.version}. Same machine for everything; 1-minute load average ${loadBefore.toFixed(1)} before, ` +
    `${loadavg()[0]!.toFixed(1)} after (${cpus().length} cores).`,
  '',
  '## End-to-end throughput (no-op jobs, submitted in batches of 1,000, to all done)',
  '',
  '| variant | jobs/s | vs pg-boss (batch 50) |',
  '| --- | ---: | ---: |',
  ...e2eVariants.map((v) => {
    const m = median(e2e.get(v.label)!)
    return `| ${v.label} | ${Math.round(m)} | ${(m / baseline).toFixed(2)}x |`
  }),
  '',
  '## Submit-to-start latency (one job at a time, idle worker)',
  '',
  '| variant | p50 ms | p99 ms |',
  '| --- | ---: | ---: |',
  ...latencyVariants.map((v) => {
    const seen = latency.get(v.label)!
    return `| ${v.label} | ${median(seen.p50).toFixed(1)} | ${median(seen.p99).toFixed(1)} |`
  }),
  '',
]
const text = lines.join('\n')
const out = new URL(quick ? '../.cache/pg-quick.md' : './results.md', import.meta.url)
mkdirSync(new URL('.', out), { recursive: true })
writeFileSync(out, text)
console.log(text)
