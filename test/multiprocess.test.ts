import { spawn, type ChildProcess } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { afterAll, expect, it } from 'vitest'
import { killAllServers, startServer, type ChildServer } from './helpers/child-server.js'
import { describePostgres, dropSchema, freshSchemaName, sql } from './helpers/postgres.js'
import { until } from './helpers/until.js'

// Scale-out on PostgreSQL with real processes: two API-only servers (the demo with LONGRUN_ROLE=api)
// and two workers (`npm run worker`) on one schema. One worker is SIGKILLed mid-run.

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const LEASE_MS = 1_000
const POLL_MS = 100
const TOTAL = 2_000
const SESSION = { 'x-session-key': 'multiprocess-test' }

interface Worker {
  readonly pid: number
  readonly exited: Promise<void>
  output(): string
  kill(signal: NodeJS.Signals): void
}

const workers: Worker[] = []
let stopSubmitting = false

function startWorker(env: Record<string, string>): Worker {
  const child: ChildProcess = spawn(
    process.execPath,
    ['--conditions=longrun-source', '--import', 'tsx', 'examples/demo/worker.ts'],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } },
  )
  let output = ''
  const collect = (chunk: Buffer) => {
    output = (output + chunk.toString('utf8')).slice(-64 * 1024)
  }
  child.stdout!.on('data', collect)
  child.stderr!.on('data', collect)
  let alive = true
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => {
      alive = false
      resolve()
    })
    child.once('error', () => {
      alive = false
      resolve()
    })
  })
  const worker: Worker = {
    pid: child.pid ?? -1,
    exited,
    output: () => output,
    kill: (signal) => {
      if (alive) child.kill(signal)
    },
  }
  workers.push(worker)
  return worker
}

/** Ends every process this file started: before its schema is dropped, which their locks would block. */
async function stopAll(): Promise<void> {
  stopSubmitting = true
  for (const worker of workers) worker.kill('SIGKILL')
  await Promise.all(workers.map((worker) => worker.exited))
  await killAllServers()
}

/** Runs `tasks` with at most `limit` at once. */
async function pool<T>(items: T[], limit: number, task: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < items.length && !stopSubmitting) {
        const i = next++
        await task(items[i]!, i)
      }
    }),
  )
}

describePostgres('scale-out on PostgreSQL (2 API processes, 2 workers)', (url) => {
  const schema = freshSchemaName('lrmp')
  const ops = `${schema}.operations`
  const events = `${schema}.operation_events`

  afterAll(async () => {
    await stopAll()
    await dropSchema(url, schema)
  })

  it('runs 2,000 operations to exactly one outcome each while a worker is SIGKILLed mid-run', async () => {
    const env = {
      LONGRUN_STORE: url,
      LONGRUN_PG_SCHEMA: schema,
      LONGRUN_LEASE_MS: String(LEASE_MS),
      LONGRUN_POLL_MS: String(POLL_MS),
      LONGRUN_GRACE_MS: '500',
      LOG_LEVEL: 'warn',
    }
    // Four processes start together and race to migrate the new schema.
    const [doomed, survivor] = [startWorker(env), startWorker(env)]
    const apis: ChildServer[] = await Promise.all(
      [0, 1].map(() => startServer({ dbPath: 'unused', env: { ...env, LONGRUN_ROLE: 'api' }, readyTimeoutMs: 40_000 })),
    )
    const workerOf = (pid: number) => `%:${pid}:%`

    // Submissions alternate between the two API processes.
    const ids: string[] = []
    const startedAt = Date.now()
    const submitting = pool(
      Array.from({ length: TOTAL }, (_, i) => i),
      32,
      async (i) => {
        const res = await fetch(`${apis[i % 2]!.url}/api/v1/demo/tasks/noop`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...SESSION },
          // Mostly quick; every 50th takes a second, so that a worker always holds some when killed.
          body: JSON.stringify({ delayMs: i % 50 === 0 ? 1_000 : i % 51 }),
        })
        const body = await res.text()
        if (res.status !== 202) {
          throw new Error(`submit answered ${res.status}: ${body}\n--- API output ---\n${apis[i % 2]!.output()}`)
        }
        ids.push((JSON.parse(body) as { id: string }).id)
      },
    )

    // A failed test must not leave an unhandled rejection behind: it is awaited below.
    submitting.catch(() => {})

    // Kill one worker while it holds running operations, one of them a second-long one: quick ones
    // alone may all be settled by the time the signal lands.
    await until(
      async () => {
        const [held] = await sql<{ n: number; long: number }>(
          url,
          `SELECT count(*)::int AS n, count(*) FILTER (WHERE (input->>'delayMs')::int >= 1000)::int AS long
           FROM ${ops} WHERE state = 'running' AND worker LIKE $1`,
          [workerOf(doomed.pid)],
        )
        return held!.n >= 5 && held!.long >= 1
      },
      40_000,
      { interval: 20 },
    )
    const killedAt = Date.now()
    doomed.kill('SIGKILL')
    await doomed.exited
    // What the dead worker held. A statement it sent just before dying may still commit (the server
    // runs what it received): give the server a moment, then nothing of that worker changes any more.
    await sleep(300)
    const orphans = (
      await sql<{ id: string }>(
        url,
        `SELECT id FROM ${ops} WHERE state = 'running' AND worker LIKE $1
         UNION SELECT operation_id FROM ${events} WHERE event = 'lease-lost' AND worker LIKE $1`,
        [workerOf(doomed.pid)],
      )
    ).map((row) => row.id)
    expect(orphans.length).toBeGreaterThan(0)

    // The survivor takes them over once their leases lapse.
    await until(
      async () =>
        (
          await sql<{ n: number }>(
            url,
            `SELECT count(*)::int AS n FROM ${ops} WHERE id = ANY($1) AND state = 'running' AND worker LIKE $2`,
            [orphans, workerOf(doomed.pid)],
          )
        )[0]!.n === 0,
      15_000,
      { interval: 20 },
    )
    // When: the survivor records the lapsed lease as it claims the operation. Within lease + one
    // poll of the kill, give or take the busy cores' scheduling.
    const takeovers = await sql<{ id: string; at: number }>(
      url,
      `SELECT operation_id AS id, at::float8 AS at FROM ${events} WHERE event = 'lease-lost' AND worker LIKE $1`,
      [workerOf(doomed.pid)],
    )
    expect(takeovers.map((row) => row.id).sort()).toEqual([...orphans].sort())
    const pickedUpMs = Math.max(...takeovers.map((row) => row.at)) - killedAt
    expect(pickedUpMs).toBeLessThan(LEASE_MS + POLL_MS + 500)

    await submitting
    const submittedMs = Date.now() - startedAt
    expect(new Set(ids).size).toBe(TOTAL)

    // Everything finishes: nothing stays queued or running.
    await until(
      async () =>
        (await sql<{ n: number }>(url, `SELECT count(*)::int AS n FROM ${ops} WHERE state <> 'succeeded'`))[0]!.n === 0,
      40_000,
      { interval: 100 },
    )
    const drainedMs = Date.now() - startedAt
    const states = await sql<{ state: string; n: number }>(
      url,
      `SELECT state, count(*)::int AS n FROM ${ops} GROUP BY state`,
    )
    expect(states).toEqual([{ state: 'succeeded', n: TOTAL }])

    // Exactly one recorded outcome per operation, and only workers ever ran handlers.
    const outcomes = await sql<{ id: string; succeeded: number; ended: number }>(
      url,
      `SELECT o.id,
           count(*) FILTER (WHERE e.event = 'succeeded')::int AS succeeded,
           count(*) FILTER (WHERE e.event IN ('succeeded', 'failed', 'canceled'))::int AS ended
         FROM ${ops} o LEFT JOIN ${events} e ON e.operation_id = o.id
         GROUP BY o.id`,
    )
    expect(outcomes).toHaveLength(TOTAL)
    expect(outcomes.filter((row) => row.succeeded !== 1 || row.ended !== 1)).toEqual([])
    expect(new Set(outcomes.map((row) => row.id))).toEqual(new Set(ids))
    const runners = await sql<{ worker: string }>(url, `SELECT DISTINCT worker FROM ${events} WHERE event = 'started'`)
    const pids = runners.map((row) => Number(row.worker.split(':').at(-2)))
    expect(pids.every((pid) => pid === doomed.pid || pid === survivor.pid)).toBe(true)

    // The orphans' histories tell what happened: the dead worker's attempt lost its lease and
    // the survivor's next attempt succeeded.
    for (const id of orphans.slice(0, 5)) {
      const res = await fetch(`${apis[1]!.url}/operations/${id}`, { headers: SESSION })
      const body = (await res.json()) as { state: string; history: { event: string; worker?: string }[] }
      expect(body.state).toBe('succeeded')
      const trail = body.history.map((entry) => entry.event)
      expect(trail).toEqual(['submitted', 'started', 'lease-lost', 'started', 'succeeded'])
      expect(body.history[3]!.worker).toContain(`:${survivor.pid}:`)
    }

    // A worker's progress shows through the API process that did not take the request.
    const submitted = await fetch(`${apis[0]!.url}/api/v1/demo/tasks/sample`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...SESSION },
      body: JSON.stringify({ delayMs: 2_000 }),
    })
    const { id } = (await submitted.json()) as { id: string }
    const seen = await until(
      async () => {
        const res = await fetch(`${apis[1]!.url}/operations/${id}`, { headers: SESSION })
        const op = (await res.json()) as { state: string; progress: { percent: number; step?: string } }
        return op.state === 'running' && op.progress.percent >= 25 ? op : undefined
      },
      10_000,
      { interval: 50 },
    )
    expect(seen.progress.step).toBeDefined()
    const done = await until(async () => {
      const res = await fetch(`${apis[1]!.url}/operations/${id}`, { headers: SESSION })
      const op = (await res.json()) as { state: string; progress: { percent: number } }
      return op.state === 'succeeded' ? op : undefined
    }, 10_000)
    expect(done.progress.percent).toBe(100)

    // SIGTERM: the survivor stops gracefully.
    survivor.kill('SIGTERM')
    await survivor.exited
    console.info(
      `[multiprocess] ${TOTAL} operations submitted in ${submittedMs} ms, all succeeded after ${drainedMs} ms; ` +
        `${orphans.length} orphaned by SIGKILL, taken over ${pickedUpMs} ms after it`,
    )
  }, 90_000)
})
