import { parseArgs } from 'node:util'

export const SCENARIOS = [
  'submit',
  'bullmq',
  'e2e',
  'latency',
  'status',
  'scale',
  'streams',
  'query',
  'webhooks',
  'demo',
  'memory1m',
] as const
export type Scenario = (typeof SCENARIOS)[number]
/** Scenarios only `--only` runs: they take minutes of their own (see bench/README.md). */
const OPT_IN: readonly Scenario[] = ['query', 'memory1m']

export interface BenchOptions {
  quick: boolean
  /** Seconds of measured load per HTTP run. */
  duration: number
  /** Seconds of unmeasured load right after each server starts (JIT warm-up). */
  warmup: number
  runs: number
  connections: number
  /** autocannon connections for the p99 reads of the scale scenario (few, so that p99 is not queueing). */
  readConnections: number
  /** Operations of the memory1m scenario. */
  memoryOps: number
  /** Worker concurrency of every engine and BullMQ worker. */
  concurrency: number
  /** Operations in the end-to-end scenario. */
  jobs: number
  /** Sequential operations per latency run. */
  latencyOps: number
  /** Longest measured part of one latency run, in seconds. */
  latencyBudget: number
  /** Operations stored in the SQLite file of the scale scenario. */
  prefill: number
  /** Longest wait for accepted jobs to finish after a load run, in seconds. */
  drainTimeout: number
  /** Concurrent event streams in the streams scenario. */
  streams: number
  /** Operations stored in the SQLite file of the query scenario. */
  queryOps: number
  scenarios: Set<Scenario>
  redisUrl: string
  /** Results are written to `<outDir>/<name>.md` and `.json`. */
  name: string
}

const HELP = `Usage: npm run bench -- [options]          (environment variable, default)

  --quick               smoke run: 2 s per HTTP run, 1 run, 5,000 end-to-end jobs, 200 latency ops;
                        writes bench/results/quick.{md,json}
  --duration <s>        measured load per HTTP run               (BENCH_DURATION, 10)
  --warmup <s>          unmeasured load after each server start  (BENCH_WARMUP, 1)
  --runs <n>            runs per variant; tables show the median (BENCH_RUNS, 3)
  --connections <n>     autocannon connections                   (BENCH_CONNECTIONS, 50)
  --read-connections <n> connections of the scale scenario's p99 reads (BENCH_READ_CONNECTIONS, 1)
  --concurrency <n>     worker concurrency, longrun and BullMQ   (BENCH_CONCURRENCY, 50)
  --jobs <n>            operations in the end-to-end scenario    (BENCH_JOBS, 20000)
  --latency-ops <n>     sequential operations per latency run    (BENCH_LATENCY_OPS, 1000)
  --latency-budget <s>  longest measured part of a latency run   (BENCH_LATENCY_BUDGET, 10)
  --prefill <n>         operations stored for the scale scenario (BENCH_PREFILL, 1000000)
  --drain-timeout <s>   longest wait for accepted jobs to finish (BENCH_DRAIN_TIMEOUT, 60)
  --streams <n>         concurrent event streams                 (BENCH_STREAMS, 2000)
  --query-ops <n>       operations stored for the query scenario (BENCH_QUERY_OPS, 1000000)
  --memory-ops <n>      operations of the memory1m scenario      (BENCH_MEMORY_OPS, 1000000)
  --only <list>         comma-separated subset of               (BENCH_ONLY, all but ${OPT_IN.join(', ')})
                        ${SCENARIOS.join(', ')}
                        (${OPT_IN.join(', ')}: only when named; query alone writes
                        bench/results/query.{md,json}, memory1m alone memory1m.{md,json})
  --skip-scale          leave out the scale scenario (no prefill) (BENCH_SKIP_SCALE=1)
  --name <name>         results file name in bench/results/      (latest; quick with --quick)
  --redis <url>         Redis for the BullMQ baselines           (REDIS_URL, redis://127.0.0.1:6379)
  --help
`

/** The opt-in scenarios run alone keep their own results file, as the streams run does. */
function soloName(scenarios: Set<Scenario>): string {
  for (const s of OPT_IN) if (scenarios.has(s)) return s
  return 'latest'
}

export function parseOptions(argv: string[], env: NodeJS.ProcessEnv): BenchOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      streams: { type: 'string' },
      'query-ops': { type: 'string' },
      duration: { type: 'string' },
      warmup: { type: 'string' },
      runs: { type: 'string' },
      connections: { type: 'string' },
      'read-connections': { type: 'string' },
      'memory-ops': { type: 'string' },
      concurrency: { type: 'string' },
      jobs: { type: 'string' },
      'latency-ops': { type: 'string' },
      'latency-budget': { type: 'string' },
      prefill: { type: 'string' },
      'drain-timeout': { type: 'string' },
      only: { type: 'string' },
      'skip-scale': { type: 'boolean', default: false },
      name: { type: 'string' },
      redis: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  })
  if (values.help) {
    process.stdout.write(HELP)
    process.exit(0)
  }
  const quick = values.quick === true
  const num = (flag: string | undefined, envName: string, fallback: number, min = 0): number => {
    const text = flag ?? env[envName]
    if (text === undefined || text === '') return fallback
    const value = Number(text)
    if (!Number.isFinite(value) || value < min) throw new Error(`${envName} / --${envName} must be a number >= ${min}`)
    return value
  }
  const int = (flag: string | undefined, envName: string, fallback: number, min = 1) =>
    Math.round(num(flag, envName, fallback, min))

  const only = values.only ?? env.BENCH_ONLY
  const scenarios = new Set<Scenario>(SCENARIOS.filter((s) => !OPT_IN.includes(s)))
  if (only) {
    scenarios.clear()
    for (const part of only.split(',').map((s) => s.trim())) {
      if (!(SCENARIOS as readonly string[]).includes(part)) {
        throw new Error(`--only: unknown scenario '${part}' (known: ${SCENARIOS.join(', ')})`)
      }
      scenarios.add(part as Scenario)
    }
  }
  if (values['skip-scale'] || env.BENCH_SKIP_SCALE === '1') scenarios.delete('scale')

  return {
    quick,
    duration: num(values.duration, 'BENCH_DURATION', quick ? 2 : 10, 0.5),
    warmup: num(values.warmup, 'BENCH_WARMUP', quick ? 0.5 : 1, 0),
    runs: int(values.runs, 'BENCH_RUNS', quick ? 1 : 3),
    connections: int(values.connections, 'BENCH_CONNECTIONS', 50),
    readConnections: int(values['read-connections'], 'BENCH_READ_CONNECTIONS', 1),
    memoryOps: int(values['memory-ops'], 'BENCH_MEMORY_OPS', 1_000_000, 10),
    concurrency: int(values.concurrency, 'BENCH_CONCURRENCY', 50),
    jobs: int(values.jobs, 'BENCH_JOBS', quick ? 5_000 : 20_000),
    latencyOps: int(values['latency-ops'], 'BENCH_LATENCY_OPS', quick ? 200 : 1_000),
    latencyBudget: num(values['latency-budget'], 'BENCH_LATENCY_BUDGET', 10, 1),
    prefill: int(values.prefill, 'BENCH_PREFILL', 1_000_000),
    drainTimeout: num(values['drain-timeout'], 'BENCH_DRAIN_TIMEOUT', 60, 1),
    streams: int(values.streams, 'BENCH_STREAMS', quick ? 200 : 2_000),
    queryOps: int(values['query-ops'], 'BENCH_QUERY_OPS', 1_000_000),
    scenarios,
    redisUrl: values.redis ?? env.REDIS_URL ?? 'redis://127.0.0.1:6379',
    // An opt-in scenario alone keeps its own file, as the streams run does.
    name: values.name ?? (quick ? 'quick' : scenarios.size === 1 ? soloName(scenarios) : 'latest'),
  }
}
