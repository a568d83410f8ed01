// Query, retention and cleanup on a SQLite file of 1,000,000 operations (bench/lib/query-seed.ts):
// 1. p50/p99 of queries through the store's public methods, parameters random per sample;
// 2. one cleanup run removing 100,000 operations while a submit loop goes on, in this process
//    (`engine.cleanup()`, purge of expired ones), in a second process (same cleanup, the loop in
//    bench/jobs/query-submitter.ts on its own connection), and a trim by `keep` counts
//    (`store.trim` in batches of 1,000, as the cleanup does), each on a fresh copy of the seed.
// Prints one JSON line. Env: BENCH_QUERY_SEED (the seeded file), BENCH_QUERY_DIR (scratch folder).
import { spawn } from 'node:child_process'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import Database from 'better-sqlite3'
import { Engine, type Condition, type KeepCounts } from 'longrun'
import { sqliteStore } from 'longrun/sqlite'
import { copyPrefill } from '../lib/prefill.js'
import { ROOT } from '../lib/proc.js'
import {
  CUSTOMER_PREFIXES,
  CUSTOMERS_PER_PREFIX,
  EXPIRED,
  FAR_EXPIRY,
  OWNERS,
  ownerId,
  prng,
  REGIONS,
} from '../lib/query-seed.js'
import { envInt, percentile, report } from './common.js'
import { SUBMITTED, submitLoop, window, type SubmitLog } from './query-common.js'

const SEED = process.env.BENCH_QUERY_SEED
const DIR = process.env.BENCH_QUERY_DIR
if (!SEED || !DIR) throw new Error('BENCH_QUERY_SEED and BENCH_QUERY_DIR are required')
const SAMPLES = envInt('BENCH_QUERY_SAMPLES', 300)
const WARMUP = envInt('BENCH_QUERY_WARMUP', 20)
/** Longest measured time per query kind. */
const BUDGET_MS = envInt('BENCH_QUERY_BUDGET_MS', 15_000)
const SUBMITTERS = envInt('BENCH_SUBMITTERS', 8)
const BASELINE_MS = envInt('BENCH_BASELINE_MS', 5_000)
/** Longest trim run: trimming re-ranks every finished operation per batch, see the README. */
const TRIM_BUDGET_MS = envInt('BENCH_TRIM_BUDGET_MS', 30_000)
const PARTS = new Set((process.env.BENCH_QUERY_PARTS ?? 'queries,purge,purge2p,trim').split(','))
const TARGET = EXPIRED
const STATES = ['queued', 'running', 'succeeded', 'failed', 'canceled'] as const
const HOUR = 3_600_000
const DAY = 24 * HOUR
const progress = (line: string) => process.stderr.write(`    ${line}\n`)

const endAt = (() => {
  const db = new Database(SEED, { readonly: true })
  try {
    return (db.prepare('SELECT max(created_at) AS at FROM operations').get() as { at: number }).at
  } finally {
    db.close()
  }
})()

function freshCopy(label: string): string {
  const path = join(DIR!, `query-${label}-${process.pid}.db`)
  copyPrefill(SEED!, path)
  return path
}

const drop = (path: string) => {
  for (const suffix of ['', '-wal', '-shm']) rmSync(path + suffix, { force: true })
}

// --- 1. Queries ---------------------------------------------------------------------------------

type Store = ReturnType<typeof sqliteStore>

interface Kind {
  name: string
  run: (store: Store, random: () => number) => Promise<unknown>
}

const any = <T>(items: readonly T[], random: () => number) => items[Math.floor(random() * items.length)]!
const customer = (random: () => number) =>
  `${any(CUSTOMER_PREFIXES, random)}-${Math.floor(random() * CUSTOMERS_PER_PREFIX)}`

const KINDS: Kind[] = [
  {
    // A state over a time range: from anywhere in the 30 days, 1 hour, 1 day or 7 days long.
    name: 'stateRange',
    run: (store, random) => {
      const width = any([HOUR, DAY, 7 * DAY], random)
      const from = endAt - 30 * DAY + Math.floor(random() * 30 * DAY)
      const where: Condition[] = [
        { field: 'state', op: 'eq', value: any(STATES, random) },
        { field: 'createdAt', op: 'ge', value: from },
        { field: 'createdAt', op: 'lt', value: from + width },
      ]
      return store.query({ where, limit: 20 })
    },
  },
  {
    // One customer: about 20 of the 1,000,000 operations match.
    name: 'inputEq',
    run: (store, random) =>
      store.query({ where: [{ field: 'input.customer', op: 'eq', value: customer(random) }], limit: 20 }),
  },
  {
    // A customer prefix such as `acme-12*`: about 0.2% match.
    name: 'inputLike',
    run: (store, random) => {
      const pattern = `${any(CUSTOMER_PREFIXES, random)}-${10 + Math.floor(random() * 90)}*`
      return store.query({ where: [{ field: 'input.customer', op: 'like', value: pattern }], limit: 20 })
    },
  },
  {
    // A common input value (a quarter match) with a state.
    name: 'inputRegionState',
    run: (store, random) =>
      store.query({
        where: [
          { field: 'input.region', op: 'eq', value: any(REGIONS, random) },
          { field: 'state', op: 'eq', value: any(['succeeded', 'failed', 'canceled'], random) },
        ],
        limit: 20,
      }),
  },
  { name: 'listFirst', run: (store) => store.list({ limit: 20 }) },
  {
    name: 'listOwner',
    run: (store, random) => store.list({ limit: 20, owner: ownerId(Math.floor(random() * OWNERS)) }),
  },
  {
    name: 'statsState',
    run: (store, random) => store.queryStats({ where: [{ field: 'state', op: 'eq', value: any(STATES, random) }] }),
  },
]

async function queries(): Promise<Record<string, unknown>> {
  const path = freshCopy('queries')
  const store = sqliteStore({ path })
  try {
    const random = prng(Date.now())
    for (const kind of KINDS) for (let i = 0; i < WARMUP; i++) await kind.run(store, random)
    // Round-robin, one sample of each kind per round, so that drift touches them alike.
    const times = new Map(KINDS.map((k) => [k.name, [] as number[]]))
    const spent = new Map(KINDS.map((k) => [k.name, 0]))
    for (let round = 0; round < SAMPLES; round++) {
      let ran = false
      for (const kind of KINDS) {
        if (spent.get(kind.name)! >= BUDGET_MS) continue
        const t = performance.now()
        await kind.run(store, random)
        const ms = performance.now() - t
        times.get(kind.name)!.push(ms)
        spent.set(kind.name, spent.get(kind.name)! + ms)
        ran = true
      }
      if (!ran) break
    }
    const out: Record<string, unknown> = {}
    for (const [name, ms] of times) {
      const sorted = [...ms].sort((a, b) => a - b)
      out[name] = { p50Ms: percentile(sorted, 50), p99Ms: percentile(sorted, 99), samples: sorted.length }
      progress(
        `${name}: p50 ${percentile(sorted, 50).toFixed(2)} ms, p99 ${percentile(sorted, 99).toFixed(2)} ms, ${sorted.length} samples`,
      )
    }
    return out
  } finally {
    await store.close()
    drop(path)
  }
}

// --- 2. Cleanup while submitting ----------------------------------------------------------------

interface Windows {
  before: number
  start: number
  end: number
}

/** Submit throughput and latency before the run (the baseline) and during it, from one loop's log. */
function figures<T extends { removed: number }>(log: SubmitLog, w: Windows, clean: T) {
  const baseline = window(log, w.before, w.start)
  const during = window(log, w.start, w.end)
  const after = window(log, w.end, w.end + BASELINE_MS / 2)
  return {
    ...clean,
    seconds: (w.end - w.start) / 1000,
    baselinePerSec: baseline.perSec,
    duringPerSec: during.perSec,
    afterPerSec: after.perSec,
    ratio: during.perSec / baseline.perSec,
    baselineP50Ms: baseline.p50Ms,
    baselineP99Ms: baseline.p99Ms,
    duringP50Ms: during.p50Ms,
    duringP99Ms: during.p99Ms,
    submitErrors: log.errors,
  }
}

function describe(label: string, f: ReturnType<typeof figures<{ removed: number }>>) {
  progress(
    `${label}: removed ${f.removed} in ${f.seconds.toFixed(1)} s; submits ${f.baselinePerSec.toFixed(0)}/s before, ` +
      `${f.duringPerSec.toFixed(0)}/s during (${f.ratio.toFixed(2)}x), p99 ${f.baselineP99Ms.toFixed(1)} -> ${f.duringP99Ms.toFixed(1)} ms`,
  )
}

function engineOn(path: string, keep?: KeepCounts): Engine {
  const engine = new Engine({ store: sqliteStore({ path }), worker: false, ...(keep ? { keep } : {}) })
  engine.define({ name: SUBMITTED, handler: async () => undefined })
  return engine
}

/** Warm-up, a baseline window, the cleanup, half a baseline after it; the loop runs throughout. */
async function measured<T>(clock: () => number, clean: () => Promise<T>) {
  await sleep(1_000)
  const before = clock()
  await sleep(BASELINE_MS)
  const start = clock()
  const result = await clean()
  const end = clock()
  await sleep(BASELINE_MS / 2)
  return { windows: { before, start, end }, result }
}

async function purgeInProcess() {
  const path = freshCopy('purge')
  const engine = engineOn(path)
  try {
    const clock = () => performance.now()
    const loop = submitLoop(engine, SUBMITTERS, clock)
    const { windows, result } = await measured(clock, async () => {
      const run = await engine.cleanup()
      if (run.error) throw new Error(`cleanup failed: ${run.error}`)
      return { removed: run.removed.expired + run.removed.trimmed }
    })
    const f = figures(await loop.stop(), windows, result)
    describe('purge, submits in this process', f)
    return f
  } finally {
    await engine.close()
    drop(path)
  }
}

async function purgeTwoProcesses() {
  const path = freshCopy('purge2p')
  const engine = engineOn(path)
  const child = spawn(
    process.execPath,
    ['--conditions=longrun-source', '--import', 'tsx', 'bench/jobs/query-submitter.ts'],
    {
      cwd: ROOT,
      env: { ...process.env, BENCH_STORE: `sqlite:${path}`, BENCH_SUBMITTERS: String(SUBMITTERS) },
      stdio: ['pipe', 'pipe', 'inherit'],
    },
  )
  try {
    let out = ''
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()))
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
    for (let i = 0; !out.includes('BENCH-READY'); i++) {
      if (i > 600 || child.exitCode !== null) throw new Error('the submitter process did not start')
      await sleep(50)
    }
    const clock = () => performance.timeOrigin + performance.now()
    const { windows, result } = await measured(clock, async () => {
      const run = await engine.cleanup()
      if (run.error) throw new Error(`cleanup failed: ${run.error}`)
      return { removed: run.removed.expired + run.removed.trimmed }
    })
    child.stdin!.end()
    const code = await exited
    const line = out.trim().split('\n').pop() ?? ''
    if (code !== 0 || !line.startsWith('{')) throw new Error(`the submitter process failed (exit ${code})`)
    const f = figures(JSON.parse(line) as SubmitLog, windows, result)
    describe('purge, submits in a second process', f)
    return f
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL')
    await engine.close()
    drop(path)
  }
}

/**
 * The `keep.succeeded` count that trims closest to TARGET operations: each owner (anonymous ones
 * are one) keeps its newest `n` succeeded ones.
 */
function keepFor(db: Database.Database): { keep: KeepCounts; expected: number } {
  const counts = (
    db.prepare(`SELECT count(*) AS n FROM operations WHERE state = 'succeeded' GROUP BY owner`).all() as { n: number }[]
  ).map((r) => r.n)
  const trimmed = (keep: number) => counts.reduce((sum, n) => sum + Math.max(0, n - keep), 0)
  let lo = 0
  let hi = Math.max(...counts)
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2)
    if (trimmed(mid) > TARGET) lo = mid + 1
    else hi = mid
  }
  return { keep: { succeeded: lo }, expected: trimmed(lo) }
}

async function trimInProcess() {
  const path = freshCopy('trim')
  // Nothing expired: this run removes by count only.
  const db = new Database(path)
  let keep: KeepCounts
  let expected: number
  try {
    db.prepare('UPDATE operations SET expires_at = ? WHERE expires_at < ?').run(FAR_EXPIRY, FAR_EXPIRY)
    ;({ keep, expected } = keepFor(db))
    db.pragma('wal_checkpoint(TRUNCATE)')
  } finally {
    db.close()
  }
  const store = sqliteStore({ path })
  const engine = new Engine({ store, worker: false })
  engine.define({ name: SUBMITTED, handler: async () => undefined })
  try {
    const clock = () => performance.now()
    const loop = submitLoop(engine, SUBMITTERS, clock)
    const { windows, result } = await measured(clock, async () => {
      // As src/core/cleanup.ts trims: batches of 1,000 until one removes fewer; here cut at a budget.
      const t0 = clock()
      let removed = 0
      let batches = 0
      for (let n = 1_000; n === 1_000 && clock() - t0 < TRIM_BUDGET_MS; batches++) {
        n = await store.trim(keep, 1_000)
        removed += n
      }
      const ms = clock() - t0
      return {
        removed,
        expected,
        keepSucceeded: keep.succeeded!,
        batches,
        batchMs: ms / batches,
        complete: removed >= expected ? 1 : 0,
        projectedSeconds: ((ms / removed) * expected) / 1000,
      }
    })
    const f = figures(await loop.stop(), windows, result)
    describe(`trim to keep ${JSON.stringify(keep)} (${expected} beyond it)`, f)
    progress(
      `trim: ${result.batches} batches, ${result.batchMs.toFixed(0)} ms each; ${result.complete ? 'complete' : `cut at ${TRIM_BUDGET_MS / 1000} s`}, ` +
        `${result.projectedSeconds.toFixed(0)} s projected for all ${expected}`,
    )
    return f
  } finally {
    await engine.close()
    drop(path)
  }
}

const out: Record<string, unknown> = {}
if (PARTS.has('queries')) out.queries = await queries()
if (PARTS.has('purge')) out.purge = await purgeInProcess()
if (PARTS.has('purge2p')) out.purge2p = await purgeTwoProcesses()
if (PARTS.has('trim')) out.trim = await trimInProcess()
report(out)
