import { Agent, request as httpRequest } from 'node:http'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import {
  attemptsOf,
  Engine,
  LongrunError,
  NonRetryableError,
  type EngineOptions,
  type Lease,
  type Operation,
  type OperationState,
  type RetryPolicy,
  type Store,
} from 'longrun'
import { longrun, sessionAuth, type LongrunPluginOptions, type OperationResource } from 'longrun/fastify'
import { memoryStore } from 'longrun/memory'
import { sqliteStore } from 'longrun/sqlite'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { buildDemoApp } from '../examples/demo/app.js'
import { killAllServers, startServer, type ChildServer } from './helpers/child-server.js'
import { Client, expectJson, expectProblem, listen, tempDir, type HttpResponse, type Json } from './helpers/http.js'
import { until } from './helpers/until.js'

// The execution guarantees of docs/guarantees.md and docs/retries-and-idempotency.md, each proven by
// a test that fails without it: retry schedules, attempt history, crash recovery, idempotency keys
// under concurrency, fencing, cancel racing completion, retry policy validation and bulk retry.
// Engine-level tests run on both the SQLite store (a temp file) and the memory store. Times are
// driven by an injected clock where the schedule matters; no assertion depends on how long
// anything took.

type StoreKind = 'sqlite' | 'memory'
const KINDS: StoreKind[] = ['sqlite', 'memory']

const dir = tempDir('longrun-guarantees-')
afterAll(() => dir.remove())

let files = 0
function openStore(kind: StoreKind): Store {
  return kind === 'sqlite' ? sqliteStore({ path: join(dir.path, `store-${++files}.db`) }) : memoryStore()
}

/** Undone in reverse order after each test, failed or not. */
const cleanups: (() => unknown)[] = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

function makeEngine(kind: StoreKind, options: Partial<EngineOptions> = {}): Engine {
  const engine = new Engine({ store: openStore(kind), poll: 10, grace: 100, ...options })
  cleanups.push(() => engine.close())
  return engine
}

/** A clock that moves only when the test moves it. */
class FakeClock {
  now = Date.UTC(2030, 0, 1)
  readonly read = () => this.now
}

function deferred<T = void>() {
  let resolve!: (value: T) => void
  const promise = new Promise<T>((res) => (resolve = res))
  return { promise, resolve }
}

const TERMINAL = new Set<string>(['succeeded', 'failed', 'canceled'])
const terminalEvents = (history: { event: string }[]) => history.filter((entry) => TERMINAL.has(entry.event))

// --- 1. Retry schedule ---------------------------------------------------------------------------

interface ScheduleCase {
  title: string
  retry: RetryPolicy
  random?: () => number
  /** The computed delay after each failed attempt but the last, before jitter. */
  ceilings: number[]
  /** The exact delay expected from a ceiling; bounds [0, ceiling] only when missing. */
  exact?: (ceiling: number) => number
}

const SCHEDULES: ScheduleCase[] = [
  {
    title: 'exponential, random fixed at 0.5: half of 1000, 2000, 4000 and 5000 (8000 capped)',
    retry: { attempts: 5, backoff: 'exponential', delay: 1_000, factor: 2, maxDelay: 5_000 },
    random: () => 0.5,
    ceilings: [1_000, 2_000, 4_000, 5_000],
    exact: (ceiling) => ceiling / 2,
  },
  {
    title: 'exponential without jitter: exactly 1000, 2000, 4000, 5000 (random is not drawn)',
    retry: { attempts: 5, backoff: 'exponential', delay: 1_000, factor: 2, maxDelay: 5_000, jitter: false },
    random: () => 0.5,
    ceilings: [1_000, 2_000, 4_000, 5_000],
    exact: (ceiling) => ceiling,
  },
  {
    title: 'exponential with Math.random: each delay within [0, ceiling]',
    retry: { attempts: 5, backoff: 'exponential', delay: '1s', factor: 2, maxDelay: '5s' },
    ceilings: [1_000, 2_000, 4_000, 5_000],
  },
  {
    title: 'fixed 300 ms, random fixed at 0.25: 75 ms every time',
    retry: { attempts: 4, backoff: 'fixed', delay: 300 },
    random: () => 0.25,
    ceilings: [300, 300, 300],
    exact: (ceiling) => ceiling / 4,
  },
]

describe.each(KINDS)('retries on the %s store', (kind) => {
  it.each(SCHEDULES)('follows the schedule: $title', async ({ retry, random, ceilings, exact }) => {
    const clock = new FakeClock()
    const engine = makeEngine(kind, { clock: clock.read, ...(random ? { random } : {}) })
    const retrying: Operation[] = []
    engine.on('operation:retrying', (op) => retrying.push(op))
    const settled: Operation[] = []
    engine.on('operation:settled', (op) => settled.push(op))
    const starts: { attempt: number; at: number }[] = []
    engine.define({
      name: 'doomed',
      retry,
      handler: ({ attempt }) => {
        starts.push({ attempt, at: clock.now })
        throw Object.assign(new Error(`attempt ${attempt} failed`), { code: 'flaky' })
      },
    })
    engine.start()
    const op = await engine.submit('doomed')
    expect(op.maxAttempts).toBe(retry.attempts)

    const dueAt: number[] = [clock.now]
    for (let attempt = 1; attempt < retry.attempts; attempt++) {
      const after = await until(() => retrying.find((s) => s.id === op.id && s.attempt === attempt), 10_000, {
        what: `attempt ${attempt} to settle`,
      })
      // The clock did not move while the attempt ran: it is the clock at settle.
      const delay = after.runAt - clock.now
      const ceiling = ceilings[attempt - 1]!
      if (exact) expect(delay, `delay after attempt ${attempt}`).toBe(exact(ceiling))
      else {
        expect(delay).toBeGreaterThanOrEqual(0)
        expect(delay).toBeLessThanOrEqual(ceiling)
      }
      const error = { code: 'flaky', detail: `attempt ${attempt} failed` }
      expect(after).toMatchObject({ state: 'queued', attempt, error })
      expect(after.completedAt).toBeUndefined()
      if (delay > 0) {
        // Waiting: queued with this attempt's error, and not claimed one millisecond early.
        clock.now = after.runAt - 1
        await sleep(60) // several polls of 10 ms
        expect(await engine.get(op.id)).toMatchObject({ state: 'queued', attempt, runAt: after.runAt, error })
        expect(starts).toHaveLength(attempt)
      }
      clock.now = after.runAt
      dueAt.push(after.runAt)
    }

    const failed = await until(async () => {
      const now = await engine.get(op.id)
      return now.state === 'failed' ? now : undefined
    })
    const last = retry.attempts
    expect(failed).toMatchObject({ attempt: last, error: { code: 'flaky', detail: `attempt ${last} failed` } })
    expect(failed.completedAt).toBe(clock.now)
    // Only the end is an outcome: the scheduled retries before it were not.
    await until(() => settled.length > 0)
    expect(settled.map((s) => [s.state, s.attempt])).toEqual([['failed', last]])
    expect(retrying).toHaveLength(last - 1)
    // Each attempt started exactly when it became due, and never more than `attempts` of them.
    expect(starts).toEqual(dueAt.map((at, i) => ({ attempt: i + 1, at })))
    const history = await engine.history(op.id)
    expect(history.filter((e) => e.event === 'retry-scheduled').map((e) => e.attempt)).toEqual(
      Array.from({ length: last - 1 }, (_, i) => i + 1),
    )
    expect(terminalEvents(history)).toMatchObject([{ event: 'failed', attempt: last, error: { code: 'flaky' } }])
  })

  it('ends at once, failed, on a NonRetryableError or an error with retryable: false', async () => {
    const clock = new FakeClock()
    const engine = makeEngine(kind, { clock: clock.read, random: () => 0.5 })
    const calls = new Map<string, number>()
    const count = (name: string) => calls.set(name, (calls.get(name) ?? 0) + 1)
    const retry = { attempts: 5, delay: 1_000 }
    engine.define({
      name: 'fatal',
      retry,
      handler: () => {
        count('fatal')
        throw new NonRetryableError('bad input')
      },
    })
    engine.define({
      name: 'declined',
      retry,
      handler: () => {
        count('declined')
        throw Object.assign(new Error('Card declined'), { code: 'card-declined', retryable: false })
      },
    })
    engine.start()
    const fatal = await engine.submit('fatal')
    const declined = await engine.submit('declined')
    // The clock never moves: an operation that scheduled a retry would stay queued and fail this.
    for (const [op, error] of [
      [fatal, { title: 'NonRetryableError', detail: 'bad input' }],
      [declined, { code: 'card-declined', detail: 'Card declined' }],
    ] as const) {
      const failed = await until(async () => {
        const now = await engine.get(op.id)
        return now.state !== 'queued' && now.state !== 'running' ? now : undefined
      })
      expect(failed).toMatchObject({ state: 'failed', attempt: 1, maxAttempts: 5, error })
      expect((await engine.history(op.id)).map((e) => e.event)).toEqual(['submitted', 'started', 'failed'])
    }
    expect(Object.fromEntries(calls)).toEqual({ fatal: 1, declined: 1 })
  })
})

// --- 2. Attempt history and audit trail ----------------------------------------------------------

describe.each(KINDS)('attempt history on the %s store', (kind) => {
  it('records each attempt with its outcome, error, worker and times', async () => {
    const clock = new FakeClock()
    const t0 = clock.now
    // random 0: each retry is due at once; each attempt moves the clock by 7 ms.
    const engine = makeEngine(kind, { clock: clock.read, random: () => 0, workerId: 'worker-h' })
    engine.define({
      name: 'twice-flaky',
      retry: { attempts: 3, delay: 1_000 },
      handler: ({ attempt }) => {
        clock.now += 7
        if (attempt < 3) throw Object.assign(new Error(`attempt ${attempt} failed`), { code: 'flaky' })
        return { attempt }
      },
    })
    engine.start()
    const op = await engine.submit('twice-flaky')
    await until(async () => (await engine.get(op.id)).state === 'succeeded')

    const history = await engine.history(op.id)
    const error = (attempt: number) => expect.objectContaining({ code: 'flaky', detail: `attempt ${attempt} failed` })
    expect(history.map(({ seq: _seq, ...entry }) => entry)).toEqual([
      { at: t0, event: 'submitted', attempt: 0, actor: null },
      { at: t0, event: 'started', attempt: 1, worker: 'worker-h' },
      { at: t0 + 7, event: 'retry-scheduled', attempt: 1, worker: 'worker-h', error: error(1) },
      { at: t0 + 7, event: 'started', attempt: 2, worker: 'worker-h' },
      { at: t0 + 14, event: 'retry-scheduled', attempt: 2, worker: 'worker-h', error: error(2) },
      { at: t0 + 14, event: 'started', attempt: 3, worker: 'worker-h' },
      { at: t0 + 21, event: 'succeeded', attempt: 3, worker: 'worker-h' },
    ])
    expect(attemptsOf(history)).toEqual([
      { attempt: 1, worker: 'worker-h', startedAt: t0, endedAt: t0 + 7, outcome: 'retry-scheduled', error: error(1) },
      {
        attempt: 2,
        worker: 'worker-h',
        startedAt: t0 + 7,
        endedAt: t0 + 14,
        outcome: 'retry-scheduled',
        error: error(2),
      },
      { attempt: 3, worker: 'worker-h', startedAt: t0 + 14, endedAt: t0 + 21, outcome: 'succeeded' },
    ])
  })

  it('records a manual retry and cancel requests with their actor', async () => {
    const engine = makeEngine(kind, { workerId: 'worker-a' })
    const release = deferred()
    engine.define({
      name: 'first-fails',
      handler: ({ attempt }) => {
        if (attempt === 1) throw new Error('first attempt fails')
        return 'second time lucky'
      },
    })
    engine.define({
      name: 'blocking',
      handler: ({ signal }) =>
        new Promise((resolve, reject) => {
          signal.addEventListener('abort', () => reject(signal.reason), { once: true })
          void release.promise.then(resolve)
        }),
    })
    // Canceled while queued, before any worker runs: the cancel itself is the outcome.
    const early = await engine.submit('blocking')
    await engine.cancel(early.id, 'carol')
    engine.start()

    const retried = await engine.submit('first-fails')
    await until(async () => (await engine.get(retried.id)).state === 'failed')
    await engine.retry(retried.id, 'alice')
    await until(async () => (await engine.get(retried.id)).state === 'succeeded')

    const canceled = await engine.submit('blocking')
    await until(async () => (await engine.get(canceled.id)).state === 'running')
    await engine.cancel(canceled.id, 'bob')
    await until(async () => (await engine.get(canceled.id)).state === 'canceled')
    release.resolve()

    const retriedHistory = await engine.history(retried.id)
    expect(retriedHistory.map(({ event, attempt, actor }) => ({ event, attempt, actor }))).toEqual([
      { event: 'submitted', attempt: 0, actor: null },
      { event: 'started', attempt: 1, actor: undefined },
      { event: 'failed', attempt: 1, actor: undefined },
      { event: 'retried', attempt: 1, actor: 'alice' },
      { event: 'started', attempt: 2, actor: undefined },
      { event: 'succeeded', attempt: 2, actor: undefined },
    ])
    expect(attemptsOf(retriedHistory).map((a) => [a.attempt, a.outcome, a.worker])).toEqual([
      [1, 'failed', 'worker-a'],
      [2, 'succeeded', 'worker-a'],
    ])

    const canceledHistory = await engine.history(canceled.id)
    expect(canceledHistory.map(({ event, attempt, actor, worker }) => ({ event, attempt, actor, worker }))).toEqual([
      { event: 'submitted', attempt: 0, actor: null, worker: undefined },
      { event: 'started', attempt: 1, actor: undefined, worker: 'worker-a' },
      { event: 'cancel-requested', attempt: 1, actor: 'bob', worker: undefined },
      { event: 'canceled', attempt: 1, actor: undefined, worker: 'worker-a' },
    ])
    expect(attemptsOf(canceledHistory).map((a) => a.outcome)).toEqual(['canceled'])

    const earlyHistory = await engine.history(early.id)
    expect(earlyHistory).toMatchObject([
      { event: 'submitted', attempt: 0, actor: null },
      { event: 'canceled', attempt: 0, actor: 'carol', error: { code: 'canceled' } },
    ])
    expect(attemptsOf(earlyHistory)).toEqual([])

    // An anonymous actor is recorded as null, not left out.
    const anonymous = await engine.submit('first-fails')
    await until(async () => (await engine.get(anonymous.id)).state === 'failed')
    await engine.retry(anonymous.id)
    const entry = (await engine.history(anonymous.id)).find((e) => e.event === 'retried')
    expect(entry).toHaveProperty('actor', null)
  })
})

// --- 3. Crash on the first attempt ---------------------------------------------------------------

describe('a process killed during the first attempt (demo server, SQLite)', () => {
  const started: ChildServer[] = []
  afterEach(async (context) => {
    if (context.task.result?.state === 'fail') {
      for (const server of started) console.error(`--- pid ${server.pid} output ---\n${server.output().slice(-8_000)}`)
    }
    started.length = 0
    await killAllServers()
  })

  it('runs the operation again after the lease expires; lease-lost then succeeded, one success', async () => {
    const dbPath = join(dir.path, 'crash.db')
    const env = { LONGRUN_LEASE_MS: '1000', LONGRUN_POLL_MS: '50' }
    const first = await startServer({ dbPath, env })
    started.push(first)
    let client = new Client(first.url)
    const submitted = expectJson(await client.post('/api/v1/demo/tasks/sample', { delayMs: 5_000 }), 202)
    const id: string = submitted.id
    const running = await client.waitFor(id, (op) => op.state === 'running' && op.attempt === 1, 'running')
    expect(running.attempts).toMatchObject([{ attempt: 1, outcome: null, endedAt: null }])

    expect((await first.kill('SIGKILL')).signal).toBe('SIGKILL')
    const second = await startServer({ dbPath, env })
    started.push(second)
    client = new Client(second.url)
    const done: OperationResource = await client.waitForState(id, 'succeeded')

    expect(done.attempt).toBe(2)
    expect(done.result).toMatchObject({ message: 'Sample task completed', delayMs: 5_000 })
    const attempts = done.attempts!
    expect(attempts).toHaveLength(2)
    expect(attempts[0]).toMatchObject({ attempt: 1, outcome: 'lease-lost' })
    expect(attempts[1]).toMatchObject({ attempt: 2, outcome: 'succeeded' })
    // Two processes, two workers.
    expect(attempts[0]!.worker).toContain(`:${first.pid}:`)
    expect(attempts[1]!.worker).toContain(`:${second.pid}:`)
    const history = done.history!
    expect(terminalEvents(history)).toMatchObject([{ event: 'succeeded', attempt: 2 }])
    expect(history.map((e) => `${e.event}:${e.attempt}`)).toEqual([
      'submitted:0',
      'started:1',
      'lease-lost:1',
      'started:2',
      'succeeded:2',
    ])
  }, 45_000)
})

// --- 4. Idempotency keys -------------------------------------------------------------------------

interface RawResponse extends HttpResponse {
  rawHeaders: Record<string, string | string[] | undefined>
}

/** A request through node:http: header arrays are sent as repeated header lines. */
function rawRequest(
  base: string,
  path: string,
  options: { method?: string; headers?: Record<string, string | string[]>; body?: unknown; agent?: Agent } = {},
): Promise<RawResponse> {
  const body = options.body === undefined ? undefined : JSON.stringify(options.body)
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      base + path,
      {
        method: options.method ?? 'POST',
        agent: options.agent ?? false,
        headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...options.headers },
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (chunk: Buffer) => chunks.push(chunk))
        res.on('error', reject)
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8')
          let parsed: Json
          try {
            parsed = text === '' ? undefined : JSON.parse(text)
          } catch {
            parsed = undefined
          }
          const headers = new Headers()
          for (const [name, value] of Object.entries(res.headers)) {
            for (const v of Array.isArray(value) ? value : value === undefined ? [] : [value]) headers.append(name, v)
          }
          resolve({ status: res.statusCode ?? 0, headers, text, body: parsed, rawHeaders: res.headers })
        })
      },
    )
    req.setTimeout(20_000, () => req.destroy(new Error(`${path}: no answer within 20 s`)))
    req.on('error', reject)
    req.end(body)
  })
}

interface Api {
  app: FastifyInstance
  base: string
  client: Client
  engine: Engine
  total(): Promise<number>
}

async function startApi(options: Partial<LongrunPluginOptions> = {}): Promise<Api> {
  const app = Fastify()
  cleanups.push(() => app.close())
  await app.register(longrun, {
    store: sqliteStore({ path: join(dir.path, `api-${++files}.db`) }),
    authenticate: sessionAuth({ header: 'x-session-key' }),
    lease: 1_000,
    poll: 20,
    grace: 200,
    ...options,
  })
  for (const [url, name] of [
    ['/payments', 'payment'],
    ['/refunds', 'refund'],
  ] as const) {
    app.longrun.route({ url, name, handler: (op) => ({ done: op.input }) })
  }
  app.longrun.route({ url: '/transfers', name: 'transfer', idempotency: 'required', handler: () => 'moved' })
  const base = await listen(app)
  const engine = app.longrun.engine
  return { app, base, client: new Client(base), engine, total: async () => (await engine.stats()).total }
}

describe('idempotency keys (SQLite store, real socket)', () => {
  const PAYMENT = { amount: 42, currency: 'EUR', lines: [{ sku: 'a', qty: 1 }] }

  it('makes exactly one operation from 1,000 concurrent identical requests', async () => {
    const api = await startApi()
    const SOCKETS = 64
    const agent = new Agent({ keepAlive: true, maxSockets: SOCKETS })
    cleanups.push(() => agent.destroy())
    // Open every socket first, so that the first POSTs reach the server together rather than one
    // by one as connections are made: the requests must really overlap.
    const warmups = await Promise.all(
      Array.from({ length: SOCKETS }, () => rawRequest(api.base, '/operations/stats', { method: 'GET', agent })),
    )
    expect(warmups.every((res) => res.status === 200)).toBe(true)
    const headers = { 'idempotency-key': 'order-1234' }
    const responses = await Promise.all(
      Array.from({ length: 1_000 }, () => rawRequest(api.base, '/payments', { headers, body: PAYMENT, agent })),
    )

    expect(responses.map((res) => res.status).filter((status) => status !== 202)).toEqual([])
    const ids = new Set(responses.map((res) => res.body.id as string))
    expect(ids.size).toBe(1)
    const [id] = ids
    expect(new Set(responses.map((res) => res.headers.get('location')))).toEqual(new Set([`/operations/${id}`]))
    const replayed = responses.filter((res) => res.headers.get('idempotent-replayed') === 'true')
    expect(replayed).toHaveLength(999)
    const original = responses.filter((res) => !res.headers.has('idempotent-replayed'))
    expect(original).toHaveLength(1)
    expect(responses.some((res) => res.headers.has('idempotency-key-recommended'))).toBe(false)

    const stats = await api.engine.stats()
    expect(stats.total).toBe(1)
    expect(stats.byName.payment?.total).toBe(1)
    const list = expectJson(await api.client.get('/operations?limit=100'), 200)
    expect(list.items.map((op: Json) => op.id)).toEqual([id])

    // The same request later, with the body's keys in another order: still a replay.
    const reordered = await api.client.request('POST', '/payments', {
      raw: '{ "lines": [{ "qty": 1, "sku": "a" }], "currency": "EUR", "amount": 42 }',
      headers: { 'content-type': 'application/json', ...headers },
    })
    expect(reordered.status).toBe(202)
    expect(reordered.body.id).toBe(id)
    expect(reordered.headers.get('idempotent-replayed')).toBe('true')
    expect(await api.total()).toBe(1)
  })

  it('refuses the same key with another body, and scopes keys by route and by caller', async () => {
    const api = await startApi()
    const key = { 'idempotency-key': 'shared-key' }
    const first = expectJson(await api.client.post('/payments', PAYMENT, key), 202)

    const mismatch = expectProblem(
      await api.client.post('/payments', { ...PAYMENT, amount: 43 }, key),
      422,
      'idempotency-key-mismatch',
    )
    expect(mismatch.detail).toBeDefined()
    expect(await api.total()).toBe(1)

    const otherRoute = await api.client.post('/refunds', PAYMENT, key)
    expect(otherRoute.status).toBe(202)
    expect(otherRoute.body.id).not.toBe(first.id)
    expect(otherRoute.headers.has('idempotent-replayed')).toBe(false)

    const alice = await api.client.post('/payments', PAYMENT, { ...key, 'x-session-key': 'alice' })
    const bob = await api.client.post('/payments', PAYMENT, { ...key, 'x-session-key': 'bob' })
    const aliceAgain = await api.client.post('/payments', PAYMENT, { ...key, 'x-session-key': 'alice' })
    expect([alice.status, bob.status, aliceAgain.status]).toEqual([202, 202, 202])
    expect(new Set([first.id, otherRoute.body.id, alice.body.id, bob.body.id]).size).toBe(4)
    expect(alice.headers.has('idempotent-replayed')).toBe(false)
    expect(bob.headers.has('idempotent-replayed')).toBe(false)
    expect(aliceAgain.body.id).toBe(alice.body.id)
    expect(aliceAgain.headers.get('idempotent-replayed')).toBe('true')
    // Another caller's key does not reveal its operation either.
    expect((await api.client.get(`/operations/${alice.body.id}`, { 'x-session-key': 'bob' })).status).toBe(404)
    expect(await api.total()).toBe(4)
  })

  it('requires a key where the route says so, recommends one elsewhere, and refuses bad keys', async () => {
    const api = await startApi()
    const before = await api.total()

    const required = expectProblem(await api.client.post('/transfers', { to: 'x' }), 400, 'idempotency-key-required')
    expect(required.detail).toContain('idempotency-key')
    const bad: [string, Record<string, string | string[]>][] = [
      ['256 characters', { 'idempotency-key': 'k'.repeat(256) }],
      ['empty', { 'idempotency-key': '' }],
      ['sent twice, same value', { 'idempotency-key': ['twice', 'twice'] }],
      ['sent twice, two values', { 'idempotency-key': ['one', 'two'] }],
      ['not ASCII', { 'idempotency-key': 'cl\u00e9-1' }],
    ]
    for (const [what, headers] of bad) {
      for (const path of ['/payments', '/transfers']) {
        const res = await rawRequest(api.base, path, { headers, body: PAYMENT })
        expect(res.status, `${what} on ${path}: ${res.text}`).toBe(400)
        expectProblem(res, 400, 'invalid-idempotency-key')
      }
    }
    // Nothing was stored by any refused request.
    expect(await api.total()).toBe(before)

    const optional = await api.client.post('/payments', PAYMENT)
    expect(optional.status).toBe(202)
    expect(optional.headers.get('idempotency-key-recommended')).toBe('true')
    expect(optional.headers.has('idempotent-replayed')).toBe(false)
    // Without a key, the same request again is a new operation.
    const again = await api.client.post('/payments', PAYMENT)
    expect(again.body.id).not.toBe(optional.body.id)

    // The longest valid key, with spaces, is accepted on the required route.
    const longest = await rawRequest(api.base, '/transfers', {
      headers: { 'idempotency-key': `a key ${'x'.repeat(249)}` },
      body: { to: 'y' },
    })
    expect(longest.status, longest.text).toBe(202)
    expect(longest.headers.has('idempotency-key-recommended')).toBe(false)
    expect(await api.total()).toBe(before + 3)
  })

  it('forgets keys after idempotencyTtl and reads the headers named by idempotencyHeaders', async () => {
    const clock = new FakeClock()
    const api = await startApi({
      clock: clock.read,
      idempotencyTtl: 200,
      idempotencyHeaders: ['idempotency-key', 'x-request-id'],
    })
    const key = { 'idempotency-key': 'ttl-key' }
    const first = await api.client.post('/payments', PAYMENT, key)
    expect(first.status).toBe(202)
    clock.now += 199
    const replay = await api.client.post('/payments', PAYMENT, key)
    expect([replay.body.id, replay.headers.get('idempotent-replayed')]).toEqual([first.body.id, 'true'])
    clock.now += 1
    const expired = await api.client.post('/payments', PAYMENT, key)
    expect(expired.status).toBe(202)
    expect(expired.body.id).not.toBe(first.body.id)
    expect(expired.headers.has('idempotent-replayed')).toBe(false)
    // The new operation owns the key now, for another 200 ms; even another body is refused again.
    expect((await api.client.post('/payments', PAYMENT, key)).body.id).toBe(expired.body.id)
    expectProblem(await api.client.post('/payments', { amount: 1 }, key), 422, 'idempotency-key-mismatch')

    const byRequestId = await api.client.post('/payments', PAYMENT, { 'x-request-id': 'req-77' })
    expect(byRequestId.status).toBe(202)
    expect(byRequestId.headers.has('idempotency-key-recommended')).toBe(false)
    const byRequestIdAgain = await api.client.post('/payments', PAYMENT, { 'X-Request-Id': 'req-77' })
    expect(byRequestIdAgain.body.id).toBe(byRequestId.body.id)
    expect(byRequestIdAgain.headers.get('idempotent-replayed')).toBe('true')
    // First match wins: with both headers, the Idempotency-Key is the key.
    const both = await api.client.post('/payments', PAYMENT, { 'idempotency-key': 'ttl-key', 'x-request-id': 'req-99' })
    expect(both.body.id).toBe(expired.body.id)
    // Rules for bad keys hold for every header read.
    expectProblem(
      await rawRequest(api.base, '/payments', { headers: { 'x-request-id': ['a', 'b'] }, body: PAYMENT }),
      400,
      'invalid-idempotency-key',
    )
    expect(await api.total()).toBe(3)

    // Without the option, X-Request-Id is no key.
    const plain = await startApi()
    const one = await plain.client.post('/payments', PAYMENT, { 'x-request-id': 'req-77' })
    const two = await plain.client.post('/payments', PAYMENT, { 'x-request-id': 'req-77' })
    expect(one.body.id).not.toBe(two.body.id)
    expect(two.headers.get('idempotency-key-recommended')).toBe('true')
  })
})

// --- 5. Fencing ----------------------------------------------------------------------------------

describe.each(KINDS)('fencing on the %s store', (kind) => {
  // A's late writes come while B still holds the operation (only the attempt number and worker
  // tell them apart), or once B settled it (its state does too).
  it.each(['while B still runs', 'after B settled'] as const)(
    'ignores every write of an attempt whose lease was taken over, arriving %s',
    async (when) => {
      const clock = new FakeClock()
      // A long lease: A's heartbeat (every 20 s) never runs during the test, so A keeps writing.
      const engine = makeEngine(kind, { clock: clock.read, workerId: 'A', lease: 60_000 })
      const store = engine.store
      const writesOfA: { kind: 'progress' | 'settle'; result: unknown }[] = []
      const progress = store.progress.bind(store)
      const settle = store.settle.bind(store)
      store.progress = async (lease: Lease, p, now) => {
        const result = await progress(lease, p, now)
        if (lease.worker === 'A') writesOfA.push({ kind: 'progress', result })
        return result
      }
      store.settle = async (lease: Lease, outcome, now) => {
        const result = await settle(lease, outcome, now)
        if (lease.worker === 'A') writesOfA.push({ kind: 'settle', result })
        return result
      }
      const settledEvents: Operation[] = []
      engine.on('operation:settled', (op) => settledEvents.push(op))

      const entered = deferred()
      const release = deferred()
      engine.define({
        name: 'job',
        handler: async (op) => {
          await op.progress(10, 'A early')
          entered.resolve()
          await release.promise // deaf to its signal, like a handler stuck in a call
          await op.progress(90, 'A late')
          return 'A'
        },
      })
      engine.start()
      const submitted = await engine.submit('job')
      await entered.promise
      const held = await engine.get(submitted.id)
      expect(held).toMatchObject({
        state: 'running',
        attempt: 1,
        worker: 'A',
        progress: { percent: 10, step: 'A early' },
      })

      // Worker B cannot claim it while A's lease holds, and can once it expired.
      const wants = [{ name: 'job', limit: 1 }]
      expect(await store.claim('B', wants, 60_000, held.leaseExpiresAt! - 1)).toEqual([])
      const takeoverAt = held.leaseExpiresAt! + 1
      const [claimed] = await store.claim('B', wants, 60_000, takeoverAt)
      expect(claimed).toMatchObject({ id: submitted.id, state: 'running', attempt: 2, worker: 'B' })
      const leaseB = { id: submitted.id, attempt: 2, worker: 'B' }
      const lateA = async () => {
        release.resolve()
        await until(() => writesOfA.some((w) => w.kind === 'settle'), 10_000, { what: "A's late outcome" })
      }

      if (when === 'while B still runs') {
        await lateA()
        // Still B's, untouched by A.
        expect(await engine.get(submitted.id)).toStrictEqual(claimed)
      }
      expect(await store.progress(leaseB, { percent: 50, step: 'B' }, takeoverAt + 1)).toBe(true)
      const outcome = { state: 'succeeded' as const, result: 'B', expiresAt: takeoverAt + 1e9 }
      const settledByB = await store.settle(leaseB, outcome, takeoverAt + 5)
      expect(settledByB).toMatchObject({ state: 'succeeded', result: 'B', progress: { percent: 50, step: 'B' } })
      if (when === 'after B settled') await lateA()

      expect(writesOfA).toEqual([
        { kind: 'progress', result: true },
        { kind: 'progress', result: false },
        { kind: 'settle', result: undefined },
      ])
      expect(await engine.get(submitted.id)).toStrictEqual(settledByB)
      expect(settledEvents).toEqual([])
      const history = await engine.history(submitted.id)
      expect(history.map((e) => `${e.event}:${e.attempt}:${e.worker}`)).toEqual([
        'submitted:0:undefined',
        'started:1:A',
        'lease-lost:1:A',
        'started:2:B',
        'succeeded:2:B',
      ])
      expect(terminalEvents(history)).toHaveLength(1)
    },
  )
})

// --- 6. Cancel racing completion -----------------------------------------------------------------

describe.each(KINDS)('cancel racing completion on the %s store', (kind) => {
  it('ends each of 500 operations in exactly one terminal state, never moving backwards', async () => {
    const RUNS = 500
    const RANK: Record<OperationState, number> = { queued: 0, running: 1, succeeded: 2, failed: 2, canceled: 2 }
    const engine = makeEngine(kind, { poll: 5 })
    const random3 = () => Math.floor(Math.random() * 4)

    const seen = new Map<string, OperationState[]>()
    const note = (id: string, state: OperationState) => {
      const states = seen.get(id)
      if (states) states.push(state)
      else seen.set(id, [state])
    }
    type CancelOutcome = 'canceled' | 'requested' | 'finished' | `error: ${string}`
    const cancels = new Map<string, Promise<CancelOutcome>>()
    const cancelSoon = (id: string) => {
      if (cancels.has(id)) return
      const outcome = deferred<CancelOutcome>()
      cancels.set(id, outcome.promise)
      setTimeout(() => {
        engine.cancel(id, 'racer').then(
          (op) => outcome.resolve(op.state === 'canceled' ? 'canceled' : 'requested'),
          (err: unknown) => {
            if (err instanceof LongrunError && err.code === 'operation-finished') outcome.resolve('finished')
            else outcome.resolve(`error: ${String(err)}`)
          },
        )
      }, random3())
    }
    engine.on('operation:queued', (op) => note(op.id, op.state))
    engine.on('operation:started', (op) => {
      note(op.id, op.state)
      if ((op.input as { cancelFrom: string }).cancelFrom === 'start') cancelSoon(op.id)
    })
    engine.on('operation:settled', (op) => note(op.id, op.state))
    /** Whether each handler's signal had aborted when it returned or threw. */
    const abortedAtEnd = new Map<string, boolean>()
    engine.define({
      name: 'race',
      concurrency: 50,
      handler: async ({ id, input, signal }) => {
        try {
          // Half honour their signal, half finish their sleep whatever it says.
          if ((input as { honour: boolean }).honour) await sleep(random3(), undefined, { signal })
          else await sleep(random3())
          return 'done'
        } finally {
          abortedAtEnd.set(id, signal.aborted)
        }
      },
    })
    engine.start()

    const ids: string[] = []
    let polling = true
    const poller = (async () => {
      while (polling) {
        for (const id of [...ids]) note(id, (await engine.get(id)).state)
        await sleep(1)
      }
    })()
    await Promise.all(
      Array.from({ length: RUNS }, async (_, i) => {
        const cancelFrom = i % 4 === 0 ? 'submit' : 'start'
        const op = await engine.submit('race', { input: { honour: i % 2 === 0, cancelFrom } })
        ids.push(op.id)
        if (cancelFrom === 'submit') cancelSoon(op.id)
      }),
    )
    await until(() => cancels.size === RUNS, 20_000, { what: 'every operation to get its cancel' })
    const cancelOutcomes = new Map(await Promise.all([...cancels].map(async ([id, p]) => [id, await p] as const)))
    expect([...cancelOutcomes.values()].filter((outcome) => outcome.startsWith('error'))).toEqual([])
    await until(
      async () => (await Promise.all(ids.map((id) => engine.get(id)))).every((op) => TERMINAL.has(op.state)),
      20_000,
      { what: 'every operation to end' },
    )
    await sleep(30) // a few more polls of settled operations
    polling = false
    await poller

    const outcomes = { succeeded: 0, canceled: 0, canceledWhileRunning: 0, abortedHandlers: 0 }
    for (const id of ids) {
      const op = await engine.get(id)
      expect(['succeeded', 'canceled'], `${id}: ${op.state}`).toContain(op.state)
      if (op.state === 'succeeded') {
        outcomes.succeeded++
        expect(op.result).toBe('done')
      } else {
        outcomes.canceled++
        if (op.attempt > 0) outcomes.canceledWhileRunning++
        expect(op.error?.code).toBe('canceled')
      }
      const states = seen.get(id)!
      for (let i = 1; i < states.length; i++) {
        expect(RANK[states[i]!], `${id} moved backwards: ${states.join(' > ')}`).toBeGreaterThanOrEqual(
          RANK[states[i - 1]!],
        )
      }
      expect(
        states.filter((state) => RANK[state] === 2),
        `${id}: ${states.join(' > ')}`,
      ).toEqual(states.filter((state) => state === op.state && RANK[state] === 2))
      const history = await engine.history(id)
      expect(
        terminalEvents(history).map((e) => e.event),
        id,
      ).toEqual([op.state])
      expect(history.filter((e) => e.event === 'started').length).toBeLessThanOrEqual(1)
      const cancel = cancelOutcomes.get(id)
      if (cancel === 'finished') expect(op.state).toBe('succeeded')
      if (cancel === 'canceled') expect(op.state).toBe('canceled')
      // Once the signal has aborted, the outcome is canceled, whatever the handler returns.
      if (abortedAtEnd.get(id)) {
        outcomes.abortedHandlers++
        expect(op.state, `${id} ended after its signal aborted`).toBe('canceled')
      }
    }
    expect(outcomes.succeeded + outcomes.canceled).toBe(RUNS)
    // The race was real: both ends happened, and some cancels reached running handlers.
    expect(outcomes.succeeded).toBeGreaterThan(0)
    expect(outcomes.canceledWhileRunning).toBeGreaterThan(0)
    expect(outcomes.abortedHandlers).toBeGreaterThan(0)
    expect((await engine.stats()).total).toBe(RUNS)
  }, 40_000)
})

// --- 7. Retry policy validation ------------------------------------------------------------------

describe('retry policies that make no sense', () => {
  const handler = () => 'ok'
  const BAD: [string, RetryPolicy, string][] = [
    ['zero attempts', { attempts: 0 }, 'retry.attempts'],
    ['negative attempts', { attempts: -2 }, 'retry.attempts'],
    ['non-integer attempts', { attempts: 2.5 }, 'retry.attempts'],
    ['NaN attempts', { attempts: Number.NaN }, 'retry.attempts'],
    ['attempts as a string', { attempts: '3' as unknown as number }, 'retry.attempts'],
    ['maxDelay shorter than delay', { attempts: 3, delay: 1_000, maxDelay: 500 }, 'retry.maxDelay'],
    ['maxDelay shorter than delay, as durations', { attempts: 3, delay: '2s', maxDelay: '1s' }, 'retry.maxDelay'],
    ['factor below 1', { attempts: 3, factor: 0.5 }, 'retry.factor'],
    ['NaN factor', { attempts: 3, factor: Number.NaN }, 'retry.factor'],
    ['an unknown backoff', { attempts: 3, backoff: 'linear' as 'fixed' }, 'retry.backoff'],
    ['a negative delay', { attempts: 3, delay: -1 }, 'retry.delay'],
    ['a malformed delay', { attempts: 3, delay: 'soon' as '1s' }, 'retry.delay'],
  ]

  function thrownBy(fn: () => unknown): LongrunError {
    try {
      fn()
    } catch (err) {
      expect(err).toBeInstanceOf(LongrunError)
      return err as LongrunError
    }
    throw new Error('expected a LongrunError')
  }

  it.each(BAD)('refuses %s when defined, naming the option', (_, retry, option) => {
    const engine = makeEngine('memory', { worker: false })
    const err = thrownBy(() => engine.define({ name: 'job', retry, handler }))
    expect(err.code).toBe('invalid-option')
    expect(err.message).toContain(`'job.${option}'`)
    // Nothing half-registered: the name is still free.
    expect(engine.definition('job')).toBeUndefined()
    expect(() => engine.define({ name: 'job', retry: { attempts: 2 }, handler })).not.toThrow()
  })

  it.each(BAD)('refuses %s when a route is declared, registering no route', async (_, retry, option) => {
    const app = Fastify()
    cleanups.push(() => app.close())
    await app.register(longrun, { store: memoryStore(), worker: false })
    const err = thrownBy(() => app.longrun.route({ url: '/jobs', name: 'job', retry, handler }))
    expect(err.code).toBe('invalid-option')
    expect(err.message).toContain(`'job.${option}'`)
    await app.ready()
    expect((await app.inject({ method: 'POST', url: '/jobs', payload: {} })).statusCode).toBe(404)
  })

  it('accepts the boundaries: one attempt, factor 1, maxDelay equal to delay, a zero delay', () => {
    const engine = makeEngine('memory', { worker: false })
    engine.define({ name: 'one', retry: { attempts: 1 }, handler })
    engine.define({ name: 'flat', retry: { attempts: 3, factor: 1, delay: '1s', maxDelay: '1s' }, handler })
    engine.define({ name: 'eager', retry: { attempts: 3, delay: 0, maxDelay: 0 }, handler })
    expect(engine.definition('flat')?.retry).toMatchObject({ factor: 1, delayMs: 1_000, maxDelayMs: 1_000 })
  })
})

// --- 8. Bulk retry -------------------------------------------------------------------------------

describe.each(KINDS)('bulk retry over HTTP (demo app, %s store)', (kind) => {
  it('retries only the failed operations of the named definition, which then run again', async () => {
    const app = await buildDemoApp({
      store: kind === 'sqlite' ? `sqlite:${join(dir.path, `demo-${++files}.db`)}` : 'memory',
      logLevel: 'silent',
      poll: 20,
      lease: 2_000,
      // No backoff: each failed flaky attempt is retried at once.
      random: () => 0,
    })
    cleanups.push(() => app.close())
    const client = new Client(await listen(app))
    const post = async (task: string, body: unknown) =>
      expectJson(await client.post(`/api/v1/demo/tasks/${task}`, body), 202).id as string

    // demo.flaky allows 4 attempts: failing 4 times exhausts them.
    const hopeless = [await post('flaky', { failTimes: 4 }), await post('flaky', { failTimes: 4 })]
    const fine = await post('flaky', { failTimes: 0 })
    const otherName = await post('sample', { delayMs: 0, fail: true })
    for (const id of hopeless) expect((await client.waitForState(id, 'failed')).attempt).toBe(4)
    await client.waitForState(fine, 'succeeded')
    await client.waitForState(otherName, 'failed')
    const before = await client.stats()
    expect(before).toMatchObject({ total: 4, failed: 3, succeeded: 1 })

    expectProblem(await client.post('/operations/retry', { state: 'running' }), 422, 'invalid-body')
    expectProblem(await client.post('/operations/retry', { state: ['failed', 'queued'] }), 422, 'invalid-body')
    expect(await client.stats()).toEqual(before)

    const retried = expectJson(await client.post('/operations/retry', { name: 'demo.flaky' }), 200)
    expect(retried.retried).toBe(2)
    expect([...retried.ids].sort()).toEqual([...hopeless].sort())

    for (const id of hopeless) {
      const done = await client.waitForState(id, 'succeeded')
      expect(done).toMatchObject({ attempt: 5, maxAttempts: 8, result: { succeededOnAttempt: 5 } })
      const events = done.history.map((e: Json) => e.event)
      expect(events.filter((e: string) => e === 'retried')).toHaveLength(1)
      expect(terminalEvents(done.history).map((e) => e.event)).toEqual(['failed', 'succeeded'])
      const retriedEntry = done.history.find((e: Json) => e.event === 'retried')
      expect(retriedEntry).toMatchObject({ attempt: 4, actor: done.owner })
      expect(done.attempts.map((a: Json) => a.outcome)).toEqual([
        'retry-scheduled',
        'retry-scheduled',
        'retry-scheduled',
        'failed',
        'succeeded',
      ])
    }
    // The others were left alone.
    expect(await client.get(`/operations/${fine}`)).toMatchObject({ body: { state: 'succeeded', attempt: 1 } })
    expect(await client.get(`/operations/${otherName}`)).toMatchObject({ body: { state: 'failed', attempt: 1 } })
    expect(await client.stats()).toMatchObject({ total: 4, failed: 1, succeeded: 3 })
    // Nothing failed is left of that name: a second bulk retry finds nothing.
    expect(expectJson(await client.post('/operations/retry', { name: 'demo.flaky' }), 200)).toEqual({
      retried: 0,
      ids: [],
    })
  })
})
