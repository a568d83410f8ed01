// `npm run bench`: starts each server in its own process, loads it with autocannon from this
// process, runs the job scripts, and writes bench/results/<name>.md and .json. See bench/README.md.
import { execFileSync } from 'node:child_process'
import { cpus, totalmem } from 'node:os'
import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import autocannon from 'autocannon'
import Database from 'better-sqlite3'
import { parseOptions, SCENARIOS, type BenchOptions, type Scenario } from './lib/options.js'
import { copyPrefill, ensurePrefill } from './lib/prefill.js'
import { ensureQuerySeed } from './lib/query-seed.js'
import { ROOT, runJob, startServer, type RunningServer, type ServerOptions } from './lib/proc.js'
import { checkRedis, flushQueue } from './lib/redis.js'
import { evaluate, markdownTable, targetsTable, type Row, type Sample, type Target } from './lib/report.js'

const BENCH = join(ROOT, 'bench')
const CACHE = join(BENCH, '.cache')
const SCRATCH = join(CACHE, 'runs')
const RESULTS = join(BENCH, 'results')
const MiB = 1_048_576

const log = (line: string) => process.stdout.write(`${line}\n`)
const f0 = (v: number) => Math.round(v).toLocaleString('en-US')
const f2 = (v: number) => v.toFixed(2)

interface Request {
  method: 'GET' | 'POST'
  path: string
  body?: string
  /** Request headers besides content-type (e.g. If-None-Match). */
  headers?: Record<string, string>
  /** autocannon connections for this load. @default --connections */
  connections?: number
  /**
   * The status every answer must have when it is not a 2xx: the load counts those answers (e.g.
   * `304` for conditional reads), and any other answer fails the run.
   */
  expect?: number
}

/** A server to start: `bench/servers/<name>.ts`, or `options.script`. */
interface ServerSpec {
  name: string
  env?: Record<string, string>
  options?: Omit<ServerOptions, 'logFile'>
  /** The server logs every request on stdout: send it to a file under bench/.cache/runs (removed after). */
  logs?: boolean
}

const SUBMIT: Request = { method: 'POST', path: '/jobs', body: '{}' }
/** --max-old-space-size of the memory1m job. */
const MEMORY1M_HEAP_MIB = 8_192

/** The demo's sample task (examples/demo/tasks.ts) as its docs submit it: 3 s of named steps. */
const DEMO_SAMPLE: Request = { method: 'POST', path: '/api/v1/demo/tasks/sample', body: '{}' }

/**
 * The demo as `npm start` runs it (examples/demo/main.ts itself), on a fresh SQLite file: its own
 * logger at info, anonymous callers (no JWT secret: told apart by IP address), a generated
 * webhook secret. Whatever the driver's environment says of the demo's settings is blanked.
 */
const demoServer = (db: string): ServerSpec => ({
  name: 'demo',
  env: { LONGRUN_STORE: `sqlite:${db}`, LOG_LEVEL: 'info', HOST: '127.0.0.1' },
  options: {
    script: 'examples/demo/main.ts',
    // It prints no ready line of its own: Fastify logs this once it listens.
    ready: '"msg":"Server listening at',
    stateRoute: false,
    unsetEnv: [
      'DATABASE_URL',
      'LONGRUN_ROLE',
      'LONGRUN_PG_SCHEMA',
      'LONGRUN_JWT_SECRET',
      'LONGRUN_WEBHOOK_SECRET',
      'LONGRUN_CALLBACK_ALLOW',
      'LONGRUN_WEBHOOK_POLL_MS',
      'LONGRUN_WEBHOOK_LEASE_MS',
      'LONGRUN_WEBHOOK_RETRY',
      'LONGRUN_MAX_ACTIVE',
      'LONGRUN_RATE_LIMIT',
      'LONGRUN_LEASE_MS',
      'LONGRUN_POLL_MS',
      'LONGRUN_GRACE_MS',
    ],
  },
  logs: true,
})

/** A shorter query scenario for --quick: fewer samples, shorter windows, a short trim. */
const QUERY_QUICK = {
  BENCH_QUERY_SAMPLES: '50',
  BENCH_QUERY_BUDGET_MS: '3000',
  BENCH_BASELINE_MS: '2000',
  BENCH_TRIM_BUDGET_MS: '10000',
}

/** The cleanup runs of the query scenario, by their key in bench/jobs/longrun-query.ts. */
const QUERY_CLEANUPS = [
  ['purge', 'cleanup (purge 100,000 expired), submits in the same process'],
  ['purge2p', 'cleanup (purge 100,000 expired), submits in a second process'],
  ['trim', 'trim by keep counts (~100,000 beyond), submits in the same process'],
] as const

/** The queries of the query scenario, by their key in bench/jobs/longrun-query.ts. */
const QUERY_KINDS = [
  ['stateRange', 'query: state = X and createdAt in a 1 h / 1 d / 7 d range, limit 20'],
  ['inputEq', 'query: input.customer eq (about 20 match), limit 20'],
  ['inputLike', "query: input.customer like 'acme-12*' (about 0.2% match), limit 20"],
  ['inputRegionState', 'query: input.region eq and state eq (about 24% match), limit 20'],
  ['listFirst', 'list: first page, limit 20'],
  ['listOwner', 'list: first page of one owner, limit 20'],
  ['statsState', 'queryStats: state eq'],
] as const

class Bench {
  readonly samples: Record<string, Sample[]> = {}
  readonly errors: string[] = []
  /** Facts worth a line under the table (not failures). */
  readonly notes: string[] = []
  run = 0
  readonly t0 = performance.now()
  #seq = 0

  constructor(readonly opts: BenchOptions) {}

  record(key: string, sample: Sample): void {
    ;(this.samples[key] ??= []).push(sample)
  }

  elapsed(): string {
    return `${((performance.now() - this.t0) / 1000).toFixed(0)}s`
  }

  /** A fresh SQLite path for one run; removed (with -wal and -shm) by `dropDb`. */
  dbPath(key: string): string {
    return join(SCRATCH, `${key}-${this.run}-${++this.#seq}.db`)
  }

  dropDb(path: string): void {
    for (const suffix of ['', '-wal', '-shm']) rmSync(path + suffix, { force: true })
  }

  async attempt(label: string, body: () => Promise<void>): Promise<void> {
    try {
      await body()
    } catch (err) {
      const message = `${label} (run ${this.run}): ${(err as Error).message}`
      this.errors.push(message)
      log(`  FAILED ${message}`)
    }
  }

  async load(url: string, request: Request, seconds: number): Promise<autocannon.Result> {
    const headers = {
      ...(request.body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...request.headers,
    }
    return autocannon({
      url,
      method: request.method,
      connections: request.connections ?? this.opts.connections,
      duration: seconds,
      ...(request.body !== undefined ? { body: request.body } : {}),
      ...(Object.keys(headers).length > 0 ? { headers } : {}),
    })
  }

  /**
   * Starts a server, runs `body` with it, stops it. A server that logs gets its stdout sent to a
   * file, removed afterwards; `body` learns its path.
   */
  async session(
    label: string,
    server: ServerSpec,
    body: (srv: RunningServer, logFile: string | undefined) => Promise<void>,
  ): Promise<void> {
    await this.attempt(label, async () => {
      const logFile = server.logs ? join(SCRATCH, `${server.name}-${this.run}-${++this.#seq}.log`) : undefined
      try {
        const srv = await startServer(server.name, server.env, { ...server.options, ...(logFile ? { logFile } : {}) })
        try {
          await body(srv, logFile)
        } finally {
          await srv.stop()
        }
      } finally {
        if (logFile) rmSync(logFile, { force: true })
      }
    })
  }

  /**
   * One measured load on a running server: warm it up, measure for `seconds` (default
   * `--duration`), optionally wait until every accepted job is done; records the sample.
   */
  async measure(
    srv: RunningServer,
    key: string,
    label: string,
    path: string,
    request: Request,
    options: { drain?: boolean; seconds?: number; logFile?: string } = {},
  ): Promise<Sample> {
    const idle = await srv.state()
    if (this.opts.warmup > 0) await this.load(srv.url + path, request, this.opts.warmup)
    const logBefore = options.logFile ? statSync(options.logFile).size : 0
    const r = await this.load(srv.url + path, request, options.seconds ?? this.opts.duration)
    const loadedAt = performance.now()
    const after = await srv.state()
    // What counts as answered: 2xx, or only the expected status when there is one.
    const expected = request.expect
    const counted = expected === undefined ? r['2xx'] : (r.statusCodeStats?.[`${expected}`]?.count ?? 0)
    const others = expected === undefined ? r.non2xx : r['1xx'] + r['2xx'] + r['3xx'] + r['4xx'] + r['5xx'] - counted
    if (counted === 0) {
      throw new Error(`no ${expected ?? '2xx'} answers (others ${others}, errors ${r.errors})`)
    }
    if (expected !== undefined && others > 0) {
      const codes = Object.entries(r.statusCodeStats ?? {})
        .map(([code, v]) => `${code}: ${v.count ?? 0}`)
        .join(', ')
      throw new Error(`${others} answers were not ${expected} (${codes})`)
    }
    const sample: Sample = {
      rps: counted / r.duration,
      p50Ms: r.latency.p50,
      p99Ms: r.latency.p99,
      requests2xx: counted,
      non2xx: others,
      errors: r.errors,
      connections: request.connections ?? this.opts.connections,
      rssIdleMiB: idle.rss / MiB,
      rssMiB: after.rss / MiB,
      accepted: after.accepted,
      doneAtEnd: after.done,
    }
    if (options.logFile) sample.logBytesPerRequest = (statSync(options.logFile).size - logBefore) / r.requests.total
    let drainNote = ''
    if (options.drain) {
      const deadline = loadedAt + this.opts.drainTimeout * 1000
      let state = after
      while (state.done < state.accepted && performance.now() < deadline) {
        await sleep(50)
        state = await srv.state()
      }
      sample.drainSeconds = (performance.now() - loadedAt) / 1000
      sample.drained = state.done >= state.accepted ? 1 : 0
      sample.doneTotal = state.done
      if (!sample.drained) {
        this.notes.push(
          `${label}, run ${this.run}: ${f0(state.accepted - state.done)} of ${f0(state.accepted)} accepted jobs ` +
            `were still not done ${this.opts.drainTimeout} s after the load (--drain-timeout); the figure is a lower bound.`,
        )
      }
      drainNote = `, all ${f0(state.accepted)} done ${sample.drained ? 'after' : 'NOT done after'} ${f2(sample.drainSeconds)} s`
    }
    const logNote =
      sample.logBytesPerRequest !== undefined ? `, ${f0(sample.logBytesPerRequest)} log bytes/request` : ''
    log(
      `  ${label}: ${f0(sample.rps!)} ${expected ?? ''}${expected ? ' ' : ''}req/s, p50 ${sample.p50Ms} ms, p99 ${sample.p99Ms} ms, ` +
        `${expected ? `not ${expected}` : 'non-2xx'} ${others}, errors ${r.errors}, RSS ${f0(sample.rssMiB!)} MiB` +
        `${drainNote}${logNote}  [${this.elapsed()}]`,
    )
    this.record(key, sample)
    return sample
  }

  /** One HTTP run: start the server, one measured load (see `measure`), stop the server. */
  async http(
    key: string,
    label: string,
    server: ServerSpec,
    request: Request,
    options: { drain?: boolean; prepare?: (srv: RunningServer) => Promise<string> } = {},
  ): Promise<void> {
    await this.session(label, server, async (srv, logFile) => {
      const path = options.prepare ? await options.prepare(srv) : request.path
      await this.measure(srv, key, label, path, request, {
        ...(options.drain ? { drain: true } : {}),
        ...(logFile ? { logFile } : {}),
      })
    })
  }

  async job(key: string, label: string, name: string, env: Record<string, string>, describe: (s: Sample) => string) {
    await this.attempt(label, async () => {
      const raw = await runJob<Record<string, unknown>>(
        name,
        { BENCH_CONCURRENCY: String(this.opts.concurrency), ...env },
        600_000,
      )
      const sample = flatten(raw)
      log(`  ${label}: ${describe(sample)}  [${this.elapsed()}]`)
      this.record(key, sample)
    })
  }
}

/** `{ toStartMs: { p50: 1 } }` → `{ toStartMs_p50: 1 }`. */
function flatten(value: Record<string, unknown>, prefix = ''): Sample {
  const out: Sample = {}
  for (const [k, v] of Object.entries(value)) {
    const name = prefix ? `${prefix}_${k}` : k
    if (typeof v === 'number') out[name] = v
    else if (v && typeof v === 'object') Object.assign(out, flatten(v as Record<string, unknown>, name))
  }
  return out
}

async function main(): Promise<number> {
  let opts: BenchOptions
  try {
    opts = parseOptions(process.argv.slice(2), process.env)
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message} (see --help)\n`)
    return 2
  }
  const has = (s: string) => opts.scenarios.has(s as never)
  const bench = new Bench(opts)
  const needsRedis = has('bullmq') || has('e2e') || has('latency')
  log(
    `longrun bench: scenarios ${[...opts.scenarios].join(', ')}; ${opts.runs} run(s), ${opts.duration} s per HTTP run ` +
      `(+${opts.warmup} s warm-up), ${opts.connections} connections, concurrency ${opts.concurrency}`,
  )
  let redisVersion: string | undefined
  if (needsRedis) {
    try {
      redisVersion = await checkRedis(opts.redisUrl)
    } catch (err) {
      process.stderr.write(`bench: ${(err as Error).message}\n`)
      return 2
    }
  }
  rmSync(SCRATCH, { recursive: true, force: true })
  mkdirSync(SCRATCH, { recursive: true })
  mkdirSync(RESULTS, { recursive: true })

  let prefilled: string | undefined
  if (has('scale')) prefilled = await ensurePrefill(CACHE, opts.prefill, log)
  /** An operation from the middle of a prefilled copy, for the status reads of scenario 6. */
  const storedId = (path: string): string => {
    // On the run's copy, never the cache: a reader of a WAL file leaves -shm and -wal next to it.
    const db = new Database(path, { readonly: true, fileMustExist: true })
    try {
      const row = db
        .prepare(`SELECT id FROM operations WHERE state = 'succeeded' ORDER BY rowid LIMIT 1 OFFSET ?`)
        .get(Math.floor(opts.prefill / 2)) as { id: string } | undefined
      if (!row) throw new Error('no succeeded operation found in the prefilled file')
      return row.id
    } finally {
      db.close()
    }
  }

  const sqlite = (path: string) => ({
    name: 'longrun',
    env: { BENCH_STORE: `sqlite:${path}`, BENCH_CONCURRENCY: String(opts.concurrency) },
  })
  const memory = { name: 'longrun', env: { BENCH_STORE: 'memory', BENCH_CONCURRENCY: String(opts.concurrency) } }
  const bullmq = { name: 'bullmq', env: { REDIS_URL: opts.redisUrl, BENCH_CONCURRENCY: String(opts.concurrency) } }
  // The p99 reads of scenario 6: half a run each, on the server that just took the submits.
  const readSeconds = Math.max(1, opts.duration / 2)
  const withBullmq = async (body: () => Promise<void>) => {
    await flushQueue(opts.redisUrl)
    try {
      await body()
    } finally {
      await flushQueue(opts.redisUrl)
    }
  }

  // 1, 2, 6: submit throughput. Variants alternate within each run so that drift on a shared
  // machine touches them alike.
  if (has('submit') || has('bullmq') || has('scale')) {
    log('\n== Submit throughput (POST -> 202) ==')
    for (bench.run = 1; bench.run <= opts.runs; bench.run++) {
      log(`run ${bench.run}/${opts.runs}`)
      if (has('submit')) await bench.http('submit.raw', 'raw Fastify', { name: 'raw-fastify' }, SUBMIT)
      const db = bench.dbPath('submit-sqlite')
      await bench.http('submit.sqlite', 'longrun SQLite (FULL)', sqlite(db), SUBMIT, { drain: true })
      bench.dropDb(db)
      if (has('submit')) await bench.http('submit.memory', 'longrun memory', memory, SUBMIT, { drain: true })
      if (has('bullmq')) {
        await withBullmq(() => bench.http('submit.bullmq', 'Fastify + BullMQ', bullmq, SUBMIT, { drain: true }))
      }
      if (has('scale') && prefilled) {
        const copy = bench.dbPath('scale-prefilled')
        const t = performance.now()
        copyPrefill(prefilled, copy)
        log(`  (copied and synced the prefilled file in ${((performance.now() - t) / 1000).toFixed(1)} s)`)
        const label = `longrun SQLite, ${f0(opts.prefill)} stored`
        await bench.session(label, sqlite(copy), async (srv) => {
          const id = storedId(copy)
          // Submits first (the row of the empty file's comparison), then, once they are all done,
          // reads with few connections, so that p99 is the read's and not a queue's.
          await bench.measure(srv, 'scale.prefilled', label, SUBMIT.path, SUBMIT, { drain: true })
          const reads = { seconds: readSeconds }
          const status = `/operations/${id}`
          const first = await fetch(srv.url + status)
          if (first.status !== 200) throw new Error(`GET ${status} answered ${first.status}`)
          await bench.measure(
            srv,
            'scale.status',
            `${label}: status read`,
            status,
            { method: 'GET', path: status, connections: opts.readConnections },
            reads,
          )
          const list = '/operations?limit=20'
          const page = (await (await fetch(srv.url + list)).json()) as { items?: unknown[] }
          if (page.items?.length !== 20)
            throw new Error(`GET ${list} listed ${page.items?.length ?? 'no'} operations, not 20`)
          await bench.measure(
            srv,
            'scale.list',
            `${label}: first list page`,
            list,
            { method: 'GET', path: list, connections: opts.readConnections },
            reads,
          )
        })
        bench.dropDb(copy)
      }
    }
    // RSS growth per run: the prefilled server minus the empty one of the same run.
    const empty = bench.samples['submit.sqlite'] ?? []
    for (const [i, s] of (bench.samples['scale.prefilled'] ?? []).entries()) {
      const base = empty[i]
      if (base) bench.record('scale.growth', { rssGrowthMiB: s.rssMiB! - base.rssMiB! })
    }
  }

  // 5: status reads of one existing (succeeded) operation.
  if (has('status')) {
    log('\n== Status reads (GET /operations/{id}) ==')
    const succeededOne = async (srv: RunningServer): Promise<string> => {
      const res = await fetch(`${srv.url}/jobs`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{}',
      })
      const { id } = (await res.json()) as { id: string }
      for (let i = 0; i < 200; i++) {
        const op = (await (await fetch(`${srv.url}/operations/${id}`)).json()) as { state: string }
        if (op.state === 'succeeded') return `/operations/${id}`
        await sleep(25)
      }
      throw new Error('the operation to read did not succeed within 5 s')
    }
    // Its ETag, from a first GET (with a tag that matches nothing: raw Fastify tags conditional reads only).
    const etagOf = async (srv: RunningServer, path: string): Promise<string> => {
      const res = await fetch(srv.url + path, { headers: { 'if-none-match': '"none"' } })
      const etag = res.headers.get('etag')
      if (res.status !== 200 || !etag) throw new Error(`GET ${path} answered ${res.status} with ETag ${etag}`)
      return etag
    }
    /** The 200 read, then the conditional one answered 304, on the same server. */
    const reads = async (srv: RunningServer, key: string, label: string, path: string, conditional: boolean) => {
      await bench.measure(srv, key, label, path, { method: 'GET', path })
      if (!conditional) return
      const headers = { 'if-none-match': await etagOf(srv, path) }
      await bench.measure(srv, `${key}304`, `${label}, If-None-Match -> 304`, path, {
        method: 'GET',
        path,
        headers,
        expect: 304,
      })
    }
    for (bench.run = 1; bench.run <= opts.runs; bench.run++) {
      log(`run ${bench.run}/${opts.runs}`)
      await bench.session('raw Fastify', { name: 'raw-fastify' }, (srv) =>
        reads(srv, 'status.raw', 'raw Fastify', '/operations/0190a4c2-7b1e-7c3a-9d2e-4f5a6b7c8d9e', true),
      )
      const db = bench.dbPath('status-sqlite')
      await bench.session('longrun SQLite', sqlite(db), async (srv) =>
        reads(srv, 'status.sqlite', 'longrun SQLite', await succeededOne(srv), true),
      )
      bench.dropDb(db)
      await bench.session('longrun memory', memory, async (srv) =>
        reads(srv, 'status.memory', 'longrun memory', await succeededOne(srv), false),
      )
    }
  }

  // 11: the demo as `npm start` runs it, against raw Fastify with the same logger.
  if (has('demo')) {
    log(`\n== Demo (npm start, info logs, SQLite): ${DEMO_SAMPLE.method} ${DEMO_SAMPLE.path} ${DEMO_SAMPLE.body} ==`)
    for (bench.run = 1; bench.run <= opts.runs; bench.run++) {
      log(`run ${bench.run}/${opts.runs}`)
      await bench.http('demo.raw', 'raw Fastify, logger info', { name: 'raw-fastify-logged', logs: true }, DEMO_SAMPLE)
      const db = bench.dbPath('demo-sqlite')
      await bench.http('demo.demo', 'demo (examples/demo/main.ts)', demoServer(db), DEMO_SAMPLE)
      bench.dropDb(db)
    }
  }

  // 3: end to end.
  if (has('e2e')) {
    log(`\n== End to end: ${f0(opts.jobs)} no-op jobs, concurrency ${opts.concurrency} ==`)
    const jobs = String(opts.jobs)
    const describe = (s: Sample) =>
      `${f0(s.jobsPerSec!)} jobs/s (${f2(s.seconds!)} s; all submitted after ${f2(s.submitSeconds!)} s; ${f0(s.succeeded!)} succeeded)`
    for (bench.run = 1; bench.run <= opts.runs; bench.run++) {
      log(`run ${bench.run}/${opts.runs}`)
      const db = bench.dbPath('e2e-sqlite')
      await bench.job(
        'e2e.sqlite',
        'longrun SQLite (FULL)',
        'longrun-e2e',
        { BENCH_STORE: `sqlite:${db}`, BENCH_JOBS: jobs },
        describe,
      )
      bench.dropDb(db)
      await withBullmq(() =>
        bench.job('e2e.bullmq', 'BullMQ', 'bullmq-e2e', { REDIS_URL: opts.redisUrl, BENCH_JOBS: jobs }, describe),
      )
      await bench.job(
        'e2e.memory',
        'longrun memory',
        'longrun-e2e',
        { BENCH_STORE: 'memory', BENCH_JOBS: jobs },
        describe,
      )
    }
  }

  // 4: latency of sequential operations.
  if (has('latency')) {
    log(`\n== Latency: ${f0(opts.latencyOps)} sequential operations ==`)
    const latencyEnv = {
      BENCH_OPS: String(opts.latencyOps),
      BENCH_LATENCY_BUDGET_MS: String(Math.round(opts.latencyBudget * 1000)),
    }
    const describe = (s: Sample) =>
      `to start p50 ${f2(s.toStartMs_p50!)} / p99 ${f2(s.toStartMs_p99!)} ms; ` +
      `to done p50 ${f2(s.toDoneMs_p50!)} / p99 ${f2(s.toDoneMs_p99!)} ms; submit ack p50 ${f2(s.submitAckMs_p50!)} ms; ` +
      `${f0(s.ops!)} ops measured${s.truncated ? ` (stopped at the ${opts.latencyBudget} s budget)` : ''}`
    for (bench.run = 1; bench.run <= opts.runs; bench.run++) {
      log(`run ${bench.run}/${opts.runs}`)
      const db = bench.dbPath('latency-sqlite')
      await bench.job(
        'latency.sqlite',
        'longrun SQLite (FULL)',
        'longrun-latency',
        { BENCH_STORE: `sqlite:${db}`, ...latencyEnv },
        describe,
      )
      bench.dropDb(db)
      await withBullmq(() =>
        bench.job('latency.bullmq', 'BullMQ', 'bullmq-latency', { REDIS_URL: opts.redisUrl, ...latencyEnv }, describe),
      )
      await bench.job(
        'latency.memory',
        'longrun memory',
        'longrun-latency',
        { BENCH_STORE: 'memory', ...latencyEnv },
        describe,
      )
    }
  }

  // 12: the memory store over 1,000,000 operations: heap and RSS as finished ones pile up.
  if (has('memory1m')) {
    log(`\n== Memory store, ${f0(opts.memoryOps)} no-op operations (defaults), heap after global.gc() ==`)
    const mark = (m: string) => (s: Sample) =>
      `${f0(s[`${m}_ops`]!)}: heap ${f0(s[`${m}_heapUsedMiB`]!)} MiB, RSS ${f0(s[`${m}_rssMiB`]!)} MiB`
    for (bench.run = 1; bench.run <= opts.runs; bench.run++) {
      log(`run ${bench.run}/${opts.runs}`)
      await bench.attempt('memory1m', async () => {
        const raw = await runJob<Record<string, unknown>>(
          'longrun-memory-1m',
          { BENCH_OPS: String(opts.memoryOps), BENCH_CONCURRENCY: String(opts.concurrency) },
          900_000,
          // A heap limit above the default (about 4 GiB here), so that a store keeping everything
          // can be measured to the end rather than crash.
          ['--expose-gc', `--max-old-space-size=${MEMORY1M_HEAP_MIB}`],
        )
        const sample = flatten(raw)
        bench.record('memory1m', sample)
        log(
          `  ${f0(sample.jobsPerSec!)} jobs/s over ${f2(sample.seconds!)} s; ${['first', 'mid', 'last'].map((m) => mark(m)(sample)).join('; ')}; ` +
            `heap growth ${f2(sample.heapGrowth!)}x, ${f0(sample.heapPerOpBytes!)} heap bytes per operation  [${bench.elapsed()}]`,
        )
      })
    }
  }

  if (has('streams')) {
    log(`\n== Streams: ${f0(opts.streams)} concurrent, progress every 100 ms; observing an operation ==`)
    for (bench.run = 1; bench.run <= opts.runs; bench.run++) {
      log(`run ${bench.run}/${opts.runs}`)
      const db = bench.dbPath('streams-sqlite')
      await bench.attempt('streams', async () => {
        const raw = await runJob<Record<string, Record<string, unknown>>>(
          'longrun-streams',
          { BENCH_STORE: `sqlite:${db}`, BENCH_STREAMS: String(opts.streams) },
          600_000,
        )
        // One sample per way of observing, so that each compares with polling in the table.
        for (const [key, part] of Object.entries(raw)) {
          if (typeof part === 'object' && part !== null) bench.record(`streams.${key}`, flatten(part))
        }
        const s = bench.samples['streams.streams']!.at(-1)!
        log(
          `  ${f0(s.streams!)} streams: delivery p50 ${f0(s.deliveryMs_p50!)} / p99 ${f0(s.deliveryMs_p99!)} ms, ` +
            `${f0(s.eventsPerSec!)} events/s, RSS ${f0(s.rssIdleMiB!)} -> ${f0(s.rssPeakMiB!)} MiB  [${bench.elapsed()}]`,
        )
        for (const way of ['poll', 'sse', 'wait']) {
          const o = bench.samples[`streams.${way}`]!.at(-1)!
          log(
            `  observed by ${way}: ${f2(o.requestsPerOp!)} requests, ${f2(o.observeCpuMsPerOp!)} ms server CPU per op`,
          )
        }
      })
      bench.dropDb(db)
    }
  }

  // 9: queries, and one cleanup run while submitting, on 1,000,000 stored operations.
  if (has('query')) {
    log(`\n== Query, retention and cleanup: ${f0(opts.queryOps)} stored ==`)
    const seeded = await ensureQuerySeed(CACHE, opts.queryOps, log)
    bench.record('query.seed', {
      seedSeconds: seeded.seedSeconds,
      cached: seeded.cached ? 1 : 0,
      sizeMiB: seeded.sizeMiB,
    })
    if (seeded.cached) log(`  (seeded file from the cache: ${seeded.path})`)
    for (bench.run = 1; bench.run <= opts.runs; bench.run++) {
      log(`run ${bench.run}/${opts.runs}`)
      await bench.attempt('query', async () => {
        const raw = await runJob<Record<string, Record<string, unknown>>>(
          'longrun-query',
          { BENCH_QUERY_SEED: seeded.path, BENCH_QUERY_DIR: SCRATCH, ...(opts.quick ? QUERY_QUICK : {}) },
          1_200_000,
        )
        for (const [key, part] of Object.entries(raw)) {
          if (typeof part === 'object' && part !== null) bench.record(`query.${key}`, flatten(part))
        }
        const q = bench.samples['query.queries']?.at(-1) ?? {}
        const kinds = [...new Set(Object.keys(q).map((k) => k.split('_')[0]!))]
        for (const kind of kinds) {
          log(
            `  ${kind}: p50 ${f2(q[`${kind}_p50Ms`]!)} / p99 ${f2(q[`${kind}_p99Ms`]!)} ms (${q[`${kind}_samples`]} samples)`,
          )
        }
        for (const [key, label] of QUERY_CLEANUPS) {
          const c = bench.samples[`query.${key}`]?.at(-1)
          if (!c) continue
          log(
            `  ${label}: removed ${f0(c.removed!)} in ${f2(c.seconds!)} s; submits ${f0(c.baselinePerSec!)}/s without, ` +
              `${f0(c.duringPerSec!)}/s during (${f2(c.ratio!)}x)  [${bench.elapsed()}]`,
          )
        }
      })
      await bench.attempt('query cleanup cost', async () => {
        const raw = await runJob<Record<string, Record<string, unknown>>>(
          'longrun-cleanup-cost',
          { BENCH_QUERY_SEED: seeded.path, BENCH_QUERY_DIR: SCRATCH },
          600_000,
        )
        const cost = flatten(raw)
        bench.record('query.cost', cost)
        log(
          `  purge alone: ${f0(cost.purge_batches!)} batches in ${f2(cost.purge_seconds!)} s, p50 ${f2(cost.purge_batchP50Ms!)} ms, ` +
            `last ${f2(cost.purge_lastBatchMs!)} ms; with nothing to remove: purge ${f2(cost.idle_purgeMs!)} ms, ` +
            `trim ${f2(cost.idle_trimMs!)} ms  [${bench.elapsed()}]`,
        )
      })
    }
  }

  // 10: callbacks: what one costs a submit, and how fast a process sends them.
  if (has('webhooks')) {
    log(`\n== Callbacks: submit with and without, and delivery from a backlog ==`)
    for (bench.run = 1; bench.run <= opts.runs; bench.run++) {
      await bench.attempt('webhooks', async () => {
        const result = await runJob<Sample>(
          'longrun-webhooks',
          { BENCH_DURATION: String(opts.duration), BENCH_OPS: opts.quick ? '500' : '2000' },
          300_000,
        )
        bench.record('webhooks.plain', { perSec: result.submitPlainPerSec! })
        bench.record('webhooks.called', { perSec: result.submitCalledPerSec! })
        bench.record('webhooks.delivery', { perSec: result.deliveriesPerSec!, seconds: result.deliverySeconds! })
        log(
          `  submit ${f0(result.submitPlainPerSec!)}/s without a callback, ${f0(result.submitCalledPerSec!)}/s with ` +
            `(${f2(result.ratio!)}x); ${f0(result.deliveries!)} callbacks in ${f2(result.deliverySeconds!)} s ` +
            `(${f0(result.deliveriesPerSec!)}/s)  [${bench.elapsed()}]`,
        )
      })
    }
  }

  rmSync(SCRATCH, { recursive: true, force: true })
  write(opts, bench, redisVersion)
  if (bench.errors.length > 0) {
    process.stderr.write(
      `\nbench: ${bench.errors.length} problem(s):\n${bench.errors.map((e) => `  - ${e}`).join('\n')}\n`,
    )
    return 1
  }
  return 0
}

function rows(opts: BenchOptions): Row[] {
  const S1 = '1. Submit throughput'
  const S2 = "2. Today's alternative"
  const S3 = `3. End to end (${f0(opts.jobs)} jobs)`
  const S4 = `4. Latency (${f0(opts.latencyOps)} sequential)`
  const S5 = '5. Status reads'
  const S6 = `6. Scale (${f0(opts.prefill)} stored)`
  const S7 = `7. Event streams (${f0(opts.streams)} concurrent, progress every 100 ms)`
  const S8 = '8. Learning that an operation ended (10 s operations, progress 4 times)'
  const S9 = `9. Query, retention and cleanup (${f0(opts.queryOps)} stored, SQLite)`
  const S10 = '10. Callbacks (SQLite, a receiver on 127.0.0.1 answering 204)'
  const S11 = '11. Demo (npm start: info logs, sample task, SQLite)'
  const S12 = `12. Memory store over ${f0(opts.memoryOps)} operations (defaults, no-op, concurrency ${opts.concurrency})`
  const S13 = '13. Memory store vs SQLite (same runs)'
  const observed = (variant: string, key: string, isBaseline = false) => [
    {
      scenario: S8,
      variant,
      key,
      metric: 'requestsPerOp',
      label: 'requests per operation',
      decimals: 2,
      ...(isBaseline ? { isBaseline } : { baseline: 'streams.poll' }),
    },
    {
      scenario: S8,
      variant,
      key,
      metric: 'observeCpuMsPerOp',
      label: 'server CPU ms per operation, beyond running it',
      decimals: 2,
      ...(isBaseline ? { isBaseline } : { baseline: 'streams.poll' }),
    },
  ]
  const SQLITE = 'longrun SQLite (durable, FULL)'
  const PREFILLED = `longrun SQLite, ${f0(opts.prefill)} stored`
  const rps = { metric: 'rps', label: 'req/s', decimals: 0 }
  const accepted = { metric: 'rps', label: 'accepted req/s', decimals: 0 }
  const p99 = { metric: 'p99Ms', label: 'p99 ms', decimals: 1 }
  const rss = { metric: 'rssMiB', label: 'RSS after load, MiB', decimals: 0 }
  const r304 = { metric: 'rps', label: '304 answers/s', decimals: 0 }
  const logBytes = { metric: 'logBytesPerRequest', label: 'stdout log bytes per request', decimals: 0 }
  const drain = { metric: 'drainSeconds', label: 'all accepted done, s after load', decimals: 2 }
  const jps = { metric: 'jobsPerSec', label: 'jobs/s', decimals: 0 }
  const ms = (metric: string, label: string) => ({ metric, label, decimals: 2 })
  const ops = { metric: 'ops', label: 'operations measured', decimals: 0 }
  const LATENCY = [
    ['toStartMs_p50', 'to handler start p50, ms'],
    ['toStartMs_p99', 'to handler start p99, ms'],
    ['toDoneMs_p50', 'to succeeded p50, ms'],
    ['toDoneMs_p99', 'to succeeded p99, ms'],
    ['submitAckMs_p50', 'call acknowledged p50, ms'],
  ] as const
  const target = (name: string, text: string, op: Target['op'], value: number, on: Target['on'] = 'ratio') => ({
    target: { name, text, op, value, on },
  })
  const readP99 = {
    metric: 'p99Ms',
    label: `p99 ms (autocannon, whole ms; ${opts.readConnections} connections)`,
    decimals: 1,
  }
  const readRps = { metric: 'rps', label: `req/s (${opts.readConnections} connections)`, decimals: 0 }
  const M1 = `${f0(opts.memoryOps)} operations`
  const mark = (m: 'first' | 'mid' | 'last', share: number) => {
    const at = `at ${f0(Math.round(opts.memoryOps * share))} done`
    return [
      {
        scenario: S12,
        variant: `heap used after global.gc(), ${at}`,
        key: 'memory1m',
        metric: `${m}_heapUsedMiB`,
        label: 'MiB',
        decimals: 0,
      },
      { scenario: S12, variant: `RSS, ${at}`, key: 'memory1m', metric: `${m}_rssMiB`, label: 'MiB', decimals: 0 },
    ]
  }
  const parts: Record<Scenario, Row[]> = {
    submit: [
      { scenario: S1, variant: 'raw Fastify (ceiling)', key: 'submit.raw', ...rps, isBaseline: true },
      { scenario: S1, variant: 'raw Fastify (ceiling)', key: 'submit.raw', ...p99 },
      { scenario: S1, variant: 'raw Fastify (ceiling)', key: 'submit.raw', ...rss },
      {
        scenario: S1,
        variant: SQLITE,
        key: 'submit.sqlite',
        ...rps,
        baseline: 'submit.raw',
        ...target('Durable submit (SQLite) vs raw Fastify', '>= 0.6x raw Fastify', '>=', 0.6),
      },
      { scenario: S1, variant: SQLITE, key: 'submit.sqlite', ...p99 },
      { scenario: S1, variant: SQLITE, key: 'submit.sqlite', ...rss },
      { scenario: S1, variant: 'longrun memory', key: 'submit.memory', ...rps, baseline: 'submit.raw' },
      { scenario: S1, variant: 'longrun memory', key: 'submit.memory', ...p99 },
      { scenario: S1, variant: 'longrun memory', key: 'submit.memory', ...rss },
    ],
    bullmq: [
      { scenario: S2, variant: 'Fastify + BullMQ', key: 'submit.bullmq', ...accepted, isBaseline: true },
      { scenario: S2, variant: 'Fastify + BullMQ', key: 'submit.bullmq', ...p99 },
      { scenario: S2, variant: 'Fastify + BullMQ', key: 'submit.bullmq', ...drain },
      {
        scenario: S2,
        variant: SQLITE,
        key: 'submit.sqlite',
        ...accepted,
        baseline: 'submit.bullmq',
        ...target('Durable submit (SQLite) vs Fastify + BullMQ', '>= 1.5x Fastify + BullMQ', '>=', 1.5),
      },
      { scenario: S2, variant: SQLITE, key: 'submit.sqlite', ...drain },
      ...(opts.scenarios.has('submit')
        ? [{ scenario: S2, variant: 'longrun memory', key: 'submit.memory', ...accepted, baseline: 'submit.bullmq' }]
        : []),
      { scenario: S2, variant: 'longrun memory', key: 'submit.memory', ...drain },
    ],
    e2e: [
      { scenario: S3, variant: 'BullMQ', key: 'e2e.bullmq', ...jps, isBaseline: true },
      {
        scenario: S3,
        variant: SQLITE,
        key: 'e2e.sqlite',
        ...jps,
        baseline: 'e2e.bullmq',
        ...target(`End to end, ${f0(opts.jobs)} no-op operations, SQLite vs BullMQ`, '>= 2.0x BullMQ', '>=', 2),
      },
      {
        scenario: S3,
        variant: 'longrun memory',
        key: 'e2e.memory',
        ...jps,
        baseline: 'e2e.bullmq',
        ...target(`End to end, ${f0(opts.jobs)} no-op operations, memory vs BullMQ`, '>= 3.0x BullMQ', '>=', 3),
      },
    ],
    latency: [
      ...LATENCY.map(([metric, label]) => ({
        scenario: S4,
        variant: 'BullMQ (add)',
        key: 'latency.bullmq',
        ...ms(metric, label),
        isBaseline: true,
      })),
      { scenario: S4, variant: 'BullMQ (add)', key: 'latency.bullmq', ...ops },
      ...LATENCY.map(([metric, label]) => ({
        scenario: S4,
        variant: `${SQLITE} (submit)`,
        key: 'latency.sqlite',
        ...ms(metric, label),
        baseline: 'latency.bullmq',
        ...(metric === 'toStartMs_p50'
          ? target("Submit-to-handler-start p50 (SQLite) vs BullMQ's add-to-start p50", "<= 1.0x BullMQ's", '<=', 1)
          : {}),
      })),
      { scenario: S4, variant: `${SQLITE} (submit)`, key: 'latency.sqlite', ...ops },
      ...LATENCY.map(([metric, label]) => ({
        scenario: S4,
        variant: 'longrun memory (submit)',
        key: 'latency.memory',
        ...ms(metric, label),
        baseline: 'latency.bullmq',
      })),
      { scenario: S4, variant: 'longrun memory (submit)', key: 'latency.memory', ...ops },
    ],
    status: [
      { scenario: S5, variant: 'raw Fastify (ceiling)', key: 'status.raw', ...rps, isBaseline: true },
      { scenario: S5, variant: 'raw Fastify (ceiling)', key: 'status.raw', ...p99 },
      {
        scenario: S5,
        variant: 'longrun SQLite',
        key: 'status.sqlite',
        ...rps,
        baseline: 'status.raw',
        ...target('Status read (SQLite) vs raw Fastify', '>= 0.7x raw Fastify', '>=', 0.7),
      },
      { scenario: S5, variant: 'longrun SQLite', key: 'status.sqlite', ...p99 },
      { scenario: S5, variant: 'longrun memory', key: 'status.memory', ...rps, baseline: 'status.raw' },
      { scenario: S5, variant: 'longrun memory', key: 'status.memory', ...p99 },
      { scenario: S5, variant: 'raw Fastify, If-None-Match -> 304', key: 'status.raw304', ...r304, isBaseline: true },
      { scenario: S5, variant: 'raw Fastify, If-None-Match -> 304', key: 'status.raw304', ...p99 },
      {
        scenario: S5,
        variant: 'longrun SQLite, If-None-Match -> 304',
        key: 'status.sqlite304',
        ...r304,
        baseline: 'status.raw304',
        ...target(
          'Conditional status read answered 304 (SQLite) vs raw Fastify 304',
          '>= 0.9x raw Fastify 304',
          '>=',
          0.9,
        ),
      },
      { scenario: S5, variant: 'longrun SQLite, If-None-Match -> 304', key: 'status.sqlite304', ...p99 },
    ],
    scale: [
      { scenario: S6, variant: 'longrun SQLite, empty', key: 'submit.sqlite', ...rps, isBaseline: true },
      { scenario: S6, variant: 'longrun SQLite, empty', key: 'submit.sqlite', ...rss },
      {
        scenario: S6,
        variant: PREFILLED,
        key: 'scale.prefilled',
        ...rps,
        baseline: 'submit.sqlite',
        ...target(`Submit with ${f0(opts.prefill)} stored vs the empty file`, '>= 0.9x empty', '>=', 0.9),
      },
      { scenario: S6, variant: PREFILLED, key: 'scale.prefilled', ...p99 },
      { scenario: S6, variant: PREFILLED, key: 'scale.prefilled', ...rss },
      {
        scenario: S6,
        variant: 'RSS growth, stored vs empty (same run)',
        key: 'scale.growth',
        metric: 'rssGrowthMiB',
        label: 'MiB',
        decimals: 1,
        ...target(`Server RSS growth with ${f0(opts.prefill)} stored`, '< 50 MiB', '<', 50, 'median'),
      },
      { scenario: S6, variant: `${PREFILLED}: GET /operations/{id} (a stored one)`, key: 'scale.status', ...readRps },
      {
        scenario: S6,
        variant: `${PREFILLED}: GET /operations/{id} (a stored one)`,
        key: 'scale.status',
        ...readP99,
        ...target(`Status read p99 with ${f0(opts.prefill)} stored`, '< 5 ms', '<', 5, 'median'),
      },
      { scenario: S6, variant: `${PREFILLED}: GET /operations?limit=20`, key: 'scale.list', ...readRps },
      {
        scenario: S6,
        variant: `${PREFILLED}: GET /operations?limit=20`,
        key: 'scale.list',
        ...readP99,
        ...target(`First list page p99 with ${f0(opts.prefill)} stored`, '< 5 ms', '<', 5, 'median'),
      },
    ],
    demo: [
      {
        scenario: S11,
        variant: 'raw Fastify, logger info (same options as the demo)',
        key: 'demo.raw',
        ...rps,
        isBaseline: true,
      },
      { scenario: S11, variant: 'raw Fastify, logger info (same options as the demo)', key: 'demo.raw', ...p99 },
      { scenario: S11, variant: 'raw Fastify, logger info (same options as the demo)', key: 'demo.raw', ...logBytes },
      {
        scenario: S11,
        variant: 'demo (npm start: examples/demo/main.ts, SQLite)',
        key: 'demo.demo',
        ...rps,
        baseline: 'demo.raw',
        ...target('Demo (npm start) vs raw Fastify with the same logger', '>= 0.5x raw Fastify, logged', '>=', 0.5),
      },
      { scenario: S11, variant: 'demo (npm start: examples/demo/main.ts, SQLite)', key: 'demo.demo', ...p99 },
      { scenario: S11, variant: 'demo (npm start: examples/demo/main.ts, SQLite)', key: 'demo.demo', ...rss },
      { scenario: S11, variant: 'demo (npm start: examples/demo/main.ts, SQLite)', key: 'demo.demo', ...logBytes },
    ],
    memory1m: [
      { scenario: S12, variant: 'submit and run, at most 3 batches of 1,000 in flight', key: 'memory1m', ...jps },
      {
        scenario: S12,
        variant: 'submit and run, at most 3 batches of 1,000 in flight',
        key: 'memory1m',
        metric: 'seconds',
        label: 's',
        decimals: 1,
      },
      ...mark('first', 0.1),
      ...mark('mid', 0.5),
      ...mark('last', 1),
      {
        scenario: S12,
        variant: `heap after ${M1} / heap after ${f0(Math.round(opts.memoryOps / 10))}`,
        key: 'memory1m',
        metric: 'heapGrowth',
        label: 'ratio',
        decimals: 2,
        ...target(
          `Memory store, heap after ${M1} vs after ${f0(Math.round(opts.memoryOps / 10))}`,
          '<= 1.5x',
          '<=',
          1.5,
          'median',
        ),
      },
      {
        scenario: S12,
        variant: 'heap growth per operation, between 10% and 100%',
        key: 'memory1m',
        metric: 'heapPerOpBytes',
        label: 'bytes',
        decimals: 0,
      },
    ],
    streams: [
      { scenario: S7, variant: 'longrun SQLite', key: 'streams.streams', ...ms('deliveryMs_p50', 'delivery p50, ms') },
      { scenario: S7, variant: 'longrun SQLite', key: 'streams.streams', ...ms('deliveryMs_p99', 'delivery p99, ms') },
      {
        scenario: S7,
        variant: 'longrun SQLite',
        key: 'streams.streams',
        metric: 'openedInSec',
        label: 's to submit and open them all, 50 at a time',
        decimals: 1,
      },
      {
        scenario: S7,
        variant: 'longrun SQLite',
        key: 'streams.streams',
        metric: 'runSec',
        label: 's from the start signal to the last terminal event (2 s if none fell behind)',
        decimals: 1,
      },
      {
        scenario: S7,
        variant: 'longrun SQLite',
        key: 'streams.streams',
        metric: 'progressPerStream',
        label: 'progress events per stream (of 20)',
        decimals: 1,
      },
      {
        scenario: S7,
        variant: 'longrun SQLite',
        key: 'streams.streams',
        metric: 'eventsPerSec',
        label: 'events/s',
        decimals: 0,
      },
      {
        scenario: S7,
        variant: 'longrun SQLite',
        key: 'streams.streams',
        metric: 'rssIdleMiB',
        label: 'server RSS idle, MiB',
        decimals: 0,
      },
      {
        scenario: S7,
        variant: 'longrun SQLite',
        key: 'streams.streams',
        metric: 'rssPeakMiB',
        label: 'server RSS peak, MiB',
        decimals: 0,
      },
      {
        scenario: S7,
        variant: 'longrun SQLite',
        key: 'streams.streams',
        metric: 'rssPerStreamKiB',
        label: 'RSS per stream and its running operation, KiB',
        decimals: 0,
      },
      ...observed('polling once a second', 'streams.poll', true),
      ...observed('SSE stream', 'streams.sse'),
      ...observed('GET .../wait?timeout=30', 'streams.wait'),
    ],
    webhooks: [
      {
        scenario: S10,
        variant: 'submit, route without a callback',
        key: 'webhooks.plain',
        metric: 'perSec',
        label: 'req/s',
        decimals: 0,
        isBaseline: true,
      },
      {
        scenario: S10,
        variant: 'submit, route with a callback (outbox write with the outcome, delivery in the same process)',
        key: 'webhooks.called',
        metric: 'perSec',
        label: 'req/s',
        decimals: 0,
        baseline: 'webhooks.plain',
      },
      {
        scenario: S10,
        variant: 'callbacks sent from a backlog of accepted operations (no-op handler)',
        key: 'webhooks.delivery',
        metric: 'perSec',
        label: 'deliveries/s',
        decimals: 0,
      },
    ],
    query: [
      {
        scenario: S9,
        variant: 'seeding (once, then cached; 0 = from the cache)',
        key: 'query.seed',
        metric: 'seedSeconds',
        label: 's',
        decimals: 1,
      },
      ...QUERY_KINDS.flatMap(([kind, variant]) => [
        { scenario: S9, variant, key: 'query.queries', ...ms(`${kind}_p50Ms`, 'p50, ms') },
        { scenario: S9, variant, key: 'query.queries', ...ms(`${kind}_p99Ms`, 'p99, ms') },
        { scenario: S9, variant, key: 'query.queries', metric: `${kind}_samples`, label: 'samples', decimals: 0 },
      ]),
      ...QUERY_CLEANUPS.flatMap(([key, variant]) => [
        { scenario: S9, variant, key: `query.${key}`, metric: 'removed', label: 'operations removed', decimals: 0 },
        { scenario: S9, variant, key: `query.${key}`, metric: 'seconds', label: 'run duration, s', decimals: 1 },
        {
          scenario: S9,
          variant,
          key: `query.${key}`,
          metric: 'baselinePerSec',
          label: 'submits/s without a run',
          decimals: 0,
        },
        {
          scenario: S9,
          variant,
          key: `query.${key}`,
          metric: 'duringPerSec',
          label: 'submits/s during the run',
          decimals: 0,
        },
        {
          scenario: S9,
          variant,
          key: `query.${key}`,
          metric: 'ratio',
          label: 'submit throughput during / without (same run)',
          decimals: 3,
        },
        { scenario: S9, variant, key: `query.${key}`, ...ms('baselineP99Ms', 'submit p99 without a run, ms') },
        { scenario: S9, variant, key: `query.${key}`, ...ms('duringP99Ms', 'submit p99 during the run, ms') },
      ]),
      {
        scenario: S9,
        variant: QUERY_CLEANUPS[2][1],
        key: 'query.trim',
        ...ms('batchMs', 'ms per trim batch of 1,000'),
      },
      {
        scenario: S9,
        variant: QUERY_CLEANUPS[2][1],
        key: 'query.trim',
        metric: 'expected',
        label: 'operations beyond the keep count',
        decimals: 0,
      },
      {
        scenario: S9,
        variant: QUERY_CLEANUPS[2][1],
        key: 'query.trim',
        metric: 'projectedSeconds',
        label: 'projected s to trim them all (when cut at the budget)',
        decimals: 0,
      },
      ...(
        [
          ['purge_seconds', 's for all batches'],
          ['purge_batchP50Ms', 'batch p50, ms'],
          ['purge_first90MaxMs', 'slowest of the first 90 batches, ms'],
          ['purge_lastBatchMs', 'last batch (finds fewer than 1,000), ms'],
          ['idle_purgeMs', 'purge with nothing expired, ms (one call)'],
          ['idle_trimMs', 'trim with nobody beyond the counts, ms (one call)'],
        ] as const
      ).map(([metric, label]) => ({
        scenario: S9,
        variant: 'store calls alone (purge 100,000 expired in batches of 1,000, no submits)',
        key: 'query.cost',
        ...ms(metric, label),
      })),
    ],
  }
  // The memory store against SQLite, from the runs above (each row where both were measured).
  const faster = (what: string) => `Memory store faster than SQLite: ${what}`
  const vsSqlite: Row[] = [
    {
      scenario: S13,
      variant: 'submit, memory vs SQLite',
      key: 'submit.memory',
      ...rps,
      baseline: 'submit.sqlite',
      ...target(faster('submit req/s'), '> 1.0x SQLite', '>', 1),
    },
    {
      scenario: S13,
      variant: 'RSS after the submit run, memory vs SQLite',
      key: 'submit.memory',
      ...rss,
      baseline: 'submit.sqlite',
      ...target("Memory store RSS after the submit run vs SQLite's", "<= 2.0x SQLite's", '<=', 2),
    },
    {
      scenario: S13,
      variant: 'end to end, memory vs SQLite',
      key: 'e2e.memory',
      ...jps,
      baseline: 'e2e.sqlite',
      ...target(faster('end to end jobs/s'), '> 1.0x SQLite', '>', 1),
    },
    {
      scenario: S13,
      variant: 'submit to handler start p50 (lower is better), memory vs SQLite',
      key: 'latency.memory',
      ...ms('toStartMs_p50', 'to handler start p50, ms'),
      baseline: 'latency.sqlite',
      ...target(faster('submit-to-handler-start p50'), '< 1.0x SQLite', '<', 1),
    },
    {
      scenario: S13,
      variant: 'status read, memory vs SQLite',
      key: 'status.memory',
      ...rps,
      baseline: 'status.sqlite',
      ...target(faster('status read req/s'), '> 1.0x SQLite', '>', 1),
    },
  ]
  const has = (key: string) =>
    key.startsWith('submit.') ? opts.scenarios.has('submit') : opts.scenarios.has(key.split('.')[0] as Scenario)
  return [
    ...SCENARIOS.filter((s) => opts.scenarios.has(s)).flatMap((s) => parts[s]),
    ...vsSqlite.filter((row) => has(row.key) && has(row.baseline!)),
  ]
}

/** Facts about this run that the table alone would hide. */
function notes(opts: BenchOptions, bench: Bench): string[] {
  const out: string[] = [...bench.notes]
  const names: Record<string, string> = {
    'latency.sqlite': 'longrun SQLite',
    'latency.memory': 'longrun memory',
    'latency.bullmq': 'BullMQ',
  }
  for (const [key, name] of Object.entries(names)) {
    const runs = bench.samples[key] ?? []
    const cut = runs.filter((s) => s.truncated)
    if (cut.length > 0) {
      out.push(
        `Latency, ${name}: ${cut.length} of ${runs.length} run(s) stopped at the ${opts.latencyBudget} s budget ` +
          `after ${cut.map((s) => f0(s.ops!)).join(', ')} of ${f0(opts.latencyOps)} operations: operations took that long to start.`,
      )
    }
  }
  for (const [key, runs] of Object.entries(bench.samples)) {
    const failed = runs.filter((s) => (s.non2xx ?? 0) > 0 || (s.errors ?? 0) > 0)
    if (failed.length > 0) out.push(`${key}: ${failed.length} run(s) had non-2xx answers or connection errors.`)
    const notAll = runs.filter((s) => s.succeeded !== undefined && s.jobs !== undefined && s.succeeded < s.jobs)
    if (notAll.length > 0) out.push(`${key}: ${notAll.length} run(s) where not every job succeeded.`)
  }
  return out
}

/** Which sources were measured: the commit, and whether src/ differed from it. */
function sourceOf(): string {
  try {
    const git = (...args: string[]) => execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: 'pipe' }).trim()
    const commit = git('rev-parse', '--short', 'HEAD')
    const dirty = git('status', '--porcelain', '--', 'src').length > 0
    return dirty ? `${commit} with uncommitted changes in src/` : commit
  } catch {
    return process.env.BENCH_SOURCE ?? 'unknown (not a git checkout; set BENCH_SOURCE)'
  }
}

function versionOf(pkg: string): string {
  try {
    return (JSON.parse(readFileSync(join(ROOT, 'node_modules', pkg, 'package.json'), 'utf8')) as { version: string })
      .version
  } catch {
    return 'unknown'
  }
}

function write(opts: BenchOptions, bench: Bench, redisVersion: string | undefined): void {
  const results = evaluate(rows(opts), bench.samples)
  const seconds = (performance.now() - bench.t0) / 1000
  const meta = {
    date: new Date().toISOString(),
    mode: opts.quick ? 'quick (smoke run: not for decisions)' : 'default',
    source: sourceOf(),
    node: process.version,
    cpus: `${cpus().length} x ${cpus()[0]?.model ?? 'unknown'}`,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    versions: {
      fastify: versionOf('fastify'),
      bullmq: versionOf('bullmq'),
      autocannon: versionOf('autocannon'),
      redis: redisVersion ?? 'not used',
      betterSqlite3: versionOf('better-sqlite3'),
    },
    runs: opts.runs,
    durationSeconds: opts.duration,
    warmupSeconds: opts.warmup,
    connections: opts.connections,
    concurrency: opts.concurrency,
    jobs: opts.jobs,
    latencyOps: opts.latencyOps,
    prefill: opts.prefill,
    queryOps: opts.queryOps,
    scenarios: [...opts.scenarios],
    totalSeconds: Math.round(seconds),
  }
  const v = meta.versions
  const md = [
    '# longrun benchmarks',
    '',
    `${meta.date}, ${meta.mode} run of longrun ${meta.source}, ${Math.round(seconds)} s in all. Node ${meta.node}, ${meta.cpus}, ${meta.memoryGiB} GiB; ` +
      `Fastify ${v.fastify}, BullMQ ${v.bullmq}, Redis ${v.redis}, better-sqlite3 ${v.betterSqlite3}, autocannon ${v.autocannon}.`,
    '',
    `Median, min and max of ${opts.runs} run(s); HTTP runs: ${opts.duration} s of load after ${opts.warmup} s of warm-up, ` +
      `${opts.connections} connections, a fresh server process each. Worker concurrency ${opts.concurrency} everywhere. ` +
      '"vs baseline" is the ratio of medians to the baseline of the same scenario, measured in the same run. ' +
      'The load generator, the servers and Redis share the same cores: compare rows, not machines.',
    '',
    markdownTable(results),
    '',
    '## Targets',
    '',
    targetsTable(results),
    '',
    ...(notes(opts, bench).length ? ['## Notes', '', ...notes(opts, bench).map((n) => `- ${n}`), ''] : []),
    ...(bench.errors.length ? ['## Problems', '', ...bench.errors.map((e) => `- ${e.split('\n')[0]}`), ''] : []),
    'How each figure is measured: [bench/README.md](../README.md). Raw per-run figures: `' + `${opts.name}.json` + '`.',
    '',
  ].join('\n')
  const json = { meta, results, samples: bench.samples, errors: bench.errors }
  writeFileSync(join(RESULTS, `${opts.name}.md`), md)
  writeFileSync(join(RESULTS, `${opts.name}.json`), `${JSON.stringify(json, null, 2)}\n`)
  log(`\n${md}`)
  log(`wrote bench/results/${opts.name}.md and bench/results/${opts.name}.json`)
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`)
    process.exit(1)
  },
)
