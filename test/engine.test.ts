import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { backoffMs, resolveDefinition, type ResolvedRetryPolicy } from '../src/core/definition.js'
import {
  Engine,
  LongrunError,
  NonRetryableError,
  OperationAbortedError,
  PROBLEM_TYPE_PREFIX,
  type EngineOptions,
  type Operation,
  type OperationContext,
  type OperationDefinition,
  type OperationState,
  type Progress,
  type RetryPolicy,
  type Store,
} from '../src/core/index.js'
import { silentLogger } from '../src/core/logger.js'
import { memoryStore } from '../src/stores/memory/index.js'
import { sqliteStore } from '../src/stores/sqlite/index.js'
import { until } from './helpers/until.js'

// Short timings keep the suite fast; no assertion depends on how long anything took.
const FAST = { lease: 200, poll: 20, grace: 100 } as const

const engines: Engine[] = []

function makeEngine(options: Partial<EngineOptions> = {}): Engine {
  const engine = new Engine({ store: memoryStore(), ...FAST, ...options })
  engines.push(engine)
  return engine
}

afterEach(async () => {
  await Promise.all(engines.splice(0).map((engine) => engine.close()))
})

const dir = mkdtempSync(join(tmpdir(), 'longrun-engine-'))
afterAll(() => {
  rmSync(dir, { recursive: true, force: true })
})

/** Waits until the operation reaches `state`, and returns it then. */
function reach(engine: Engine, id: string, state: OperationState, timeoutMs = 10_000): Promise<Operation> {
  return until(
    async () => {
      const op = await engine.get(id)
      return op.state === state ? op : undefined
    },
    timeoutMs,
    { what: `operation ${id} to be ${state}` },
  )
}

function deferred<T = void>() {
  let resolve!: (value: T) => void
  let reject!: (reason: unknown) => void
  const promise = new Promise<T>((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
}

/** Rejects with the signal's reason once it aborts: what a well-behaved handler does. */
function aborted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    if (signal.aborted) reject(signal.reason)
    else signal.addEventListener('abort', () => reject(signal.reason), { once: true })
  })
}

/** Lets pending callbacks, microtasks and store writes run. */
async function flush(turns = 5): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise((resolve) => setImmediate(resolve))
}

async function thrown(fn: () => Promise<unknown>): Promise<LongrunError> {
  try {
    await fn()
  } catch (err) {
    expect(err).toBeInstanceOf(LongrunError)
    return err as LongrunError
  }
  throw new Error('expected a LongrunError')
}

const abortCode = (reason: unknown) => (reason instanceof OperationAbortedError ? reason.code : reason)

describe('Engine', () => {
  it('goes on when the store cannot record a progress report: the report is dropped, warned of once', async () => {
    const store = memoryStore()
    // The store refuses progress as a full disk would, and takes the outcome once space is back.
    store.progress = async () => {
      throw new LongrunError('storage-full', 'The disk of the database is full; try again once space is freed.')
    }
    const warnings: string[] = []
    const logger = { ...silentLogger, warn: (_: object | string, msg?: string) => void warnings.push(msg ?? '') }
    const engine = makeEngine({ store, logger })
    engine.define({
      name: 'reports',
      async handler(op) {
        await op.progress(10, 'one')
        await op.progress(50, 'two')
        return 'done'
      },
    })
    engine.start()
    const op = await engine.submit('reports')
    const done = await reach(engine, op.id, 'succeeded')
    expect(done).toMatchObject({ result: 'done', attempt: 1, progress: { percent: 0 } })
    expect(warnings).toEqual([
      'longrun: recording progress failed; the report is dropped (not logged again this attempt)',
    ])
  })

  describe('running operations', () => {
    it('moves an operation from queued through running to succeeded and stores its result', async () => {
      const engine = makeEngine()
      const gate = deferred()
      const seen: OperationContext[] = []
      engine.define({
        name: 'greet',
        args: { greeting: 'Hello' },
        handler: async (op: OperationContext<{ who: string }, { greeting: string }>) => {
          seen.push(op as OperationContext)
          await gate.promise
          return { message: `${op.args.greeting}, ${op.input.who}` }
        },
      })
      const events: string[] = []
      engine.on('operation:queued', (op) => events.push(`queued:${op.state}`))
      engine.on('operation:started', (op) => events.push(`started:${op.state}`))
      engine.on('operation:settled', (op) => events.push(`settled:${op.state}`))

      const submitted = await engine.submit('greet', {
        input: { who: 'world' },
        params: { p: '1' },
        query: { q: 2 },
        headers: { 'x-h': 'v' },
        owner: 'alice',
      })
      expect(submitted).toMatchObject({ state: 'queued', attempt: 0, owner: 'alice', input: { who: 'world' } })
      expect(await engine.get(submitted.id)).toMatchObject({ state: 'queued' })

      engine.start()
      const running = await reach(engine, submitted.id, 'running')
      expect(running).toMatchObject({ attempt: 1, worker: engine.workerId })
      expect(running.leaseExpiresAt).toBeGreaterThan(running.startedAt!)
      await until(() => seen.length === 1)
      expect(seen[0]).toMatchObject({
        id: submitted.id,
        name: 'greet',
        attempt: 1,
        input: { who: 'world' },
        params: { p: '1' },
        query: { q: 2 },
        headers: { 'x-h': 'v' },
        user: { id: 'alice' },
        args: { greeting: 'Hello' },
      })
      expect(seen[0]!.signal.aborted).toBe(false)

      gate.resolve()
      const done = await reach(engine, submitted.id, 'succeeded')
      expect(done).toMatchObject({ attempt: 1, result: { message: 'Hello, world' } })
      expect(done.error).toBeUndefined()
      expect(done.worker).toBeUndefined()
      expect(done.completedAt).toBeGreaterThanOrEqual(done.startedAt!)
      expect(done.expiresAt).toBeGreaterThan(done.completedAt!)
      await until(() => events.length === 3)
      expect(events).toEqual(['queued:queued', 'started:running', 'settled:succeeded'])
    })

    it('stores JSON values only: input and result are copied through JSON', async () => {
      const engine = makeEngine()
      engine.define({ name: 'echo', handler: ({ input }) => ({ input, at: new Date(0), skip: undefined }) })
      engine.start()
      const op = await engine.submit('echo', { input: { when: new Date(0), map: new Map([[1, 2]]) } })
      expect(op.input).toEqual({ when: '1970-01-01T00:00:00.000Z', map: {} })
      const done = await reach(engine, op.id, 'succeeded')
      expect(done.result).toStrictEqual({
        input: { when: '1970-01-01T00:00:00.000Z', map: {} },
        at: '1970-01-01T00:00:00.000Z',
      })
    })

    it('records a handler that returns nothing as a null result', async () => {
      const engine = makeEngine()
      engine.define({ name: 'void', handler: () => {} })
      engine.start()
      const op = await engine.submit('void')
      expect((await reach(engine, op.id, 'succeeded')).result).toBeNull()
    })

    it('records a thrown error as failed with its code, title and detail', async () => {
      const engine = makeEngine()
      class UpstreamError extends Error {
        readonly code = 'upstream-down'
        override name = 'UpstreamError'
      }
      engine.define({
        name: 'fails',
        handler: ({ input }) => {
          if (input === 'coded') throw new UpstreamError('The upstream answered 503')
          if (input === 'string') throw 'just a string'
          throw new Error('boom')
        },
      })
      engine.start()
      const plain = await engine.submit('fails', { input: 'plain' })
      const coded = await engine.submit('fails', { input: 'coded' })
      const str = await engine.submit('fails', { input: 'string' })

      const a = await reach(engine, plain.id, 'failed')
      expect(a.error).toMatchObject({
        type: `${PROBLEM_TYPE_PREFIX}handler-error`,
        code: 'handler-error',
        title: 'Error',
        detail: 'boom',
      })
      expect(a.error!.stack).toContain('boom')
      expect(a.attempt).toBe(1)
      expect(a.result).toBeUndefined()

      const b = await reach(engine, coded.id, 'failed')
      expect(b.error).toMatchObject({
        type: `${PROBLEM_TYPE_PREFIX}upstream-down`,
        code: 'upstream-down',
        title: 'UpstreamError',
        detail: 'The upstream answered 503',
      })
      const c = await reach(engine, str.id, 'failed')
      expect(c.error).toMatchObject({ code: 'handler-error', detail: 'just a string' })
    })

    it('fails a result that is not JSON-serialisable, without retrying', async () => {
      const engine = makeEngine()
      let calls = 0
      engine.define({
        name: 'bigint',
        retry: { attempts: 3, delay: 10, jitter: false },
        handler: () => {
          calls++
          return { n: 1n }
        },
      })
      engine.start()
      const op = await engine.submit('bigint')
      const failed = await reach(engine, op.id, 'failed')
      expect(failed.error?.code).toBe('result-not-serializable')
      expect(failed.attempt).toBe(1)
      expect(calls).toBe(1)
    })

    it('rejects a submit for an unknown name, and answers not-found for unknown or malformed ids', async () => {
      const engine = makeEngine()
      expect((await thrown(() => engine.submit('nope'))).code).toBe('unknown-operation')
      expect((await thrown(() => engine.get('no-such-id'))).code).toBe('operation-not-found')
      expect((await thrown(() => engine.get('../etc/passwd'))).code).toBe('operation-not-found')
      expect((await thrown(() => engine.cancel('no-such-id'))).code).toBe('operation-not-found')
    })

    it('uses the definition id generator and rejects ids that are not URL-safe', async () => {
      const engine = makeEngine()
      let next = 'job-1'
      engine.define({ name: 'ids', handler: () => 1, idGenerator: () => next })
      expect((await engine.submit('ids')).id).toBe('job-1')
      next = 'has a space'
      expect((await thrown(() => engine.submit('ids'))).code).toBe('invalid-option')
    })
  })

  describe('retries', () => {
    it('retries a failing handler and succeeds on the third attempt', async () => {
      const engine = makeEngine()
      const attempts: number[] = []
      engine.define({
        name: 'flaky',
        retry: { attempts: 3, delay: 10, jitter: false },
        handler: ({ attempt }) => {
          attempts.push(attempt)
          if (attempt < 3) throw new Error(`fail ${attempt}`)
          return { attempt }
        },
      })
      engine.start()
      const op = await engine.submit('flaky')
      expect(op.maxAttempts).toBe(3)
      const done = await reach(engine, op.id, 'succeeded')
      expect(done).toMatchObject({ attempt: 3, result: { attempt: 3 } })
      expect(done.error).toBeUndefined()
      expect(attempts).toEqual([1, 2, 3])
    })

    it('keeps the last error once attempts are exhausted', async () => {
      const engine = makeEngine()
      const attempts: number[] = []
      engine.define({
        name: 'hopeless',
        retry: { attempts: 3, delay: 10, jitter: false },
        handler: ({ attempt }) => {
          attempts.push(attempt)
          throw new Error(`fail ${attempt}`)
        },
      })
      engine.start()
      const op = await engine.submit('hopeless')
      const failed = await reach(engine, op.id, 'failed')
      expect(failed.attempt).toBe(3)
      expect(failed.error?.detail).toBe('fail 3')
      expect(attempts).toEqual([1, 2, 3])
    })

    it('keeps a queued retry with the error of the failed attempt until it runs again', async () => {
      const engine = makeEngine()
      const second = deferred()
      engine.define({
        name: 'slow-retry',
        retry: { attempts: 2, delay: 10, jitter: false },
        handler: async ({ attempt }) => {
          if (attempt === 1) throw new Error('first')
          await second.promise
          return 'ok'
        },
      })
      engine.start()
      const op = await engine.submit('slow-retry')
      const running = await until(async () => {
        const now = await engine.get(op.id)
        return now.attempt === 2 && now.state === 'running' ? now : undefined
      })
      // The second attempt's record still tells why the first one failed.
      expect(running.error?.detail).toBe('first')
      second.resolve()
      expect((await reach(engine, op.id, 'succeeded')).error).toBeUndefined()
    })

    it('stops retrying on a NonRetryableError', async () => {
      const engine = makeEngine()
      let calls = 0
      engine.define({
        name: 'fatal',
        retry: { attempts: 5, delay: 10, jitter: false },
        handler: () => {
          calls++
          throw new NonRetryableError('bad input')
        },
      })
      engine.start()
      const op = await engine.submit('fatal')
      const failed = await reach(engine, op.id, 'failed')
      expect(failed.attempt).toBe(1)
      expect(failed.error).toMatchObject({ title: 'NonRetryableError', detail: 'bad input' })
      expect(calls).toBe(1)
    })

    it('requeues a failed operation with retry(), which then succeeds', async () => {
      const engine = makeEngine()
      engine.define({
        name: 'second-time',
        handler: ({ attempt }) => {
          if (attempt === 1) throw new Error('not yet')
          return { attempt }
        },
      })
      engine.start()
      const op = await engine.submit('second-time')
      await reach(engine, op.id, 'failed')
      const queued = await engine.retry(op.id)
      expect(queued).toMatchObject({ maxAttempts: 2 })
      // It may already have been claimed; it must never still look failed.
      expect(['queued', 'running', 'succeeded']).toContain(queued.state)
      expect(queued.error).toBeUndefined()
      const done = await reach(engine, op.id, 'succeeded')
      expect(done).toMatchObject({ attempt: 2, result: { attempt: 2 } })
    })

    it('retries a canceled operation', async () => {
      const engine = makeEngine({ worker: false })
      engine.define({ name: 'later', handler: () => 1 })
      const op = await engine.submit('later')
      await engine.cancel(op.id)
      expect(await engine.retry(op.id)).toMatchObject({ state: 'queued', cancelRequested: false })
    })

    it('refuses retry() for an operation that is not failed or canceled', async () => {
      const engine = makeEngine()
      const gate = deferred()
      engine.define({ name: 'busy', handler: () => gate.promise })
      const queued = await engine.submit('busy')
      expect((await thrown(() => engine.retry(queued.id))).code).toBe('operation-not-retryable')
      engine.start()
      await reach(engine, queued.id, 'running')
      const err = await thrown(() => engine.retry(queued.id))
      expect(err.code).toBe('operation-not-retryable')
      expect(err.status).toBe(409)
      gate.resolve()
      await reach(engine, queued.id, 'succeeded')
      expect((await thrown(() => engine.retry(queued.id))).code).toBe('operation-not-retryable')
    })
  })

  describe('concurrency', () => {
    it('never runs more handlers of one name at once than its concurrency', async () => {
      const engine = makeEngine()
      let active = 0
      let peak = 0
      const bothIn = deferred()
      engine.define({
        name: 'limited',
        concurrency: 2,
        handler: async () => {
          active++
          peak = Math.max(peak, active)
          if (active === 2) bothIn.resolve()
          // Hold every slot until the limit has been reached once, so that overlap is certain.
          await bothIn.promise
          await flush(2)
          active--
          return 'ok'
        },
      })
      engine.define({ name: 'other', concurrency: 1, handler: () => 'other' })
      engine.start()
      const ops = await Promise.all(Array.from({ length: 10 }, () => engine.submit('limited')))
      const other = await engine.submit('other')
      for (const op of ops) await reach(engine, op.id, 'succeeded')
      await reach(engine, other.id, 'succeeded')
      expect(peak).toBe(2)
      expect(active).toBe(0)
    })
  })

  describe('timeouts', () => {
    it('fails an attempt past its timeout, aborting its signal with reason timeout', async () => {
      const engine = makeEngine()
      let reason: unknown
      let signal: AbortSignal | undefined
      engine.define({
        name: 'slow',
        timeout: 50,
        handler: async (op) => {
          signal = op.signal
          try {
            await aborted(op.signal)
          } catch (err) {
            reason = err
            throw err
          }
        },
      })
      engine.start()
      const op = await engine.submit('slow')
      expect(op.timeoutMs).toBe(50)
      const failed = await reach(engine, op.id, 'failed')
      expect(failed.error).toMatchObject({ code: 'timeout', type: `${PROBLEM_TYPE_PREFIX}timeout` })
      expect(failed.attempt).toBe(1)
      expect(signal?.aborted).toBe(true)
      expect(reason).toBeInstanceOf(OperationAbortedError)
      expect(abortCode(reason)).toBe('timeout')
    })

    it('retries a timed-out attempt while attempts remain', async () => {
      const engine = makeEngine()
      engine.define({
        name: 'slow-then-fast',
        timeout: 50,
        retry: { attempts: 2, delay: 10, jitter: false },
        handler: async ({ attempt, signal }) => {
          if (attempt === 1) await aborted(signal)
          return { attempt }
        },
      })
      engine.start()
      const op = await engine.submit('slow-then-fast')
      expect((await reach(engine, op.id, 'succeeded')).result).toEqual({ attempt: 2 })
    })

    it("stores timeoutMs null for timeout 'none'", async () => {
      const engine = makeEngine({ worker: false })
      engine.define({ name: 'forever', timeout: 'none', handler: () => 1 })
      expect((await engine.submit('forever')).timeoutMs).toBeNull()
    })
  })

  describe('cancel', () => {
    it('cancels a queued operation at once', async () => {
      const engine = makeEngine({ worker: false })
      engine.define({ name: 'queued', handler: () => 1 })
      const settled: Operation[] = []
      engine.on('operation:settled', (op) => settled.push(op))
      const op = await engine.submit('queued')
      const canceled = await engine.cancel(op.id)
      expect(canceled.state).toBe('canceled')
      expect(canceled.error).toMatchObject({ code: 'canceled', type: `${PROBLEM_TYPE_PREFIX}canceled` })
      expect(await engine.get(op.id)).toStrictEqual(canceled)
      expect(settled.map((o) => o.id)).toEqual([op.id])
    })

    it('aborts a running handler with reason cancel and records it canceled', async () => {
      const engine = makeEngine()
      const entered = deferred()
      let reason: unknown
      engine.define({
        name: 'long',
        handler: async ({ signal }) => {
          entered.resolve()
          try {
            await aborted(signal)
          } catch (err) {
            reason = err
            throw err
          }
        },
      })
      const requested: string[] = []
      engine.on('operation:cancel-requested', (op) => requested.push(op.id))
      engine.start()
      const op = await engine.submit('long')
      await entered.promise
      const after = await engine.cancel(op.id)
      expect(after).toMatchObject({ state: 'running', cancelRequested: true })
      const canceled = await reach(engine, op.id, 'canceled')
      expect(canceled.error?.code).toBe('canceled')
      expect(abortCode(reason)).toBe('cancel')
      expect(requested).toEqual([op.id])
    })

    it('reaches a handler run by another engine through its heartbeat', async () => {
      const store = memoryStore()
      const worker = makeEngine({ store })
      const api = makeEngine({ store, worker: false })
      const entered = deferred()
      let reason: unknown
      for (const engine of [worker, api]) {
        engine.define({
          name: 'remote',
          handler: async ({ signal }) => {
            entered.resolve()
            await aborted(signal).catch((err: unknown) => {
              reason = err
              throw err
            })
          },
        })
      }
      worker.start()
      const op = await api.submit('remote')
      await entered.promise
      expect(await api.cancel(op.id)).toMatchObject({ state: 'running', cancelRequested: true })
      await reach(api, op.id, 'canceled')
      expect(abortCode(reason)).toBe('cancel')
    })

    it('records canceled after the grace period when the handler ignores its signal, whatever it returns later', async () => {
      const engine = makeEngine()
      const late = deferred<string>()
      const entered = deferred()
      let lateReturned = false
      engine.define({
        name: 'stubborn',
        concurrency: 1,
        handler: async ({ input }) => {
          if (input !== 'hang') return 'quick'
          entered.resolve()
          const value = await late.promise
          lateReturned = true
          return value
        },
      })
      engine.start()
      const op = await engine.submit('stubborn', { input: 'hang' })
      await entered.promise
      await engine.cancel(op.id)
      const canceled = await reach(engine, op.id, 'canceled')
      expect(canceled.error?.code).toBe('canceled')
      // The abandoned handler no longer holds the only slot.
      const next = await engine.submit('stubborn')
      await reach(engine, next.id, 'succeeded')

      late.resolve('too late')
      await until(() => lateReturned)
      await flush()
      const after = await engine.get(op.id)
      expect(after).toStrictEqual(canceled)
      expect(after.result).toBeUndefined()
    })

    it('refuses to cancel a non-cancelable operation', async () => {
      const engine = makeEngine({ worker: false })
      engine.define({ name: 'fixed', cancelable: false, handler: () => 1 })
      const op = await engine.submit('fixed')
      const err = await thrown(() => engine.cancel(op.id))
      expect(err.code).toBe('operation-not-cancelable')
      expect(err.status).toBe(409)
      expect((await engine.get(op.id)).state).toBe('queued')
    })

    it('refuses to cancel a succeeded operation', async () => {
      const engine = makeEngine()
      engine.define({ name: 'fast', handler: () => 'done' })
      engine.start()
      const op = await engine.submit('fast')
      await reach(engine, op.id, 'succeeded')
      const err = await thrown(() => engine.cancel(op.id))
      expect(err.code).toBe('operation-finished')
      expect(err.extra).toEqual({ state: 'succeeded' })
    })

    it('answers a canceled operation again when canceled twice', async () => {
      const engine = makeEngine({ worker: false })
      engine.define({ name: 'twice', handler: () => 1 })
      const op = await engine.submit('twice')
      const first = await engine.cancel(op.id)
      expect(await engine.cancel(op.id)).toStrictEqual(first)
    })
  })

  describe('progress', () => {
    it('shows progress while running, and none once the attempt ended', async () => {
      const engine = makeEngine()
      const reported = deferred()
      const gate = deferred()
      let context: OperationContext | undefined
      engine.define({
        name: 'progressing',
        handler: async (op) => {
          context = op
          await op.progress(40, 'download', 'Fetching the file')
          reported.resolve()
          await gate.promise
          return 'done'
        },
      })
      // The event carries the operation as it is after the change, not only its id.
      const events: [Operation, Progress][] = []
      engine.on('operation:progress', (changed, progress) => events.push([changed, progress]))
      engine.start()
      const op = await engine.submit('progressing')
      await reported.promise
      const running = await engine.get(op.id)
      expect(running.state).toBe('running')
      expect(running.progress).toStrictEqual({ percent: 40, step: 'download', description: 'Fetching the file' })
      const fetching = { percent: 40, step: 'download', description: 'Fetching the file' }
      expect(events).toHaveLength(1)
      const [changed, progress] = events[0]!
      expect(progress).toStrictEqual(fetching)
      expect(changed).toMatchObject({ id: op.id, state: 'running', attempt: 1 })
      expect(changed.progress).toStrictEqual(fetching)

      gate.resolve()
      await reach(engine, op.id, 'succeeded')
      // A finished attempt can no longer report progress.
      await context!.progress(90)
      expect((await engine.get(op.id)).progress.percent).toBe(40)
    })
  })

  describe('delete, list and stats', () => {
    it('deletes only finished operations', async () => {
      const engine = makeEngine()
      const gate = deferred()
      engine.define({ name: 'job', handler: () => gate.promise })
      engine.start()
      const op = await engine.submit('job')
      await reach(engine, op.id, 'running')
      const err = await thrown(() => engine.delete(op.id))
      expect(err.code).toBe('operation-not-finished')
      expect(err.extra).toEqual({ state: 'running' })
      gate.resolve()
      await reach(engine, op.id, 'succeeded')
      await engine.delete(op.id)
      expect((await thrown(() => engine.get(op.id))).code).toBe('operation-not-found')
      expect((await thrown(() => engine.delete(op.id))).code).toBe('operation-not-found')
    })

    it('counts operations by state and by name', async () => {
      const engine = makeEngine({ worker: false })
      engine.define({ name: 'a', handler: () => 1 })
      engine.define({ name: 'b', handler: () => 1 })
      const a1 = await engine.submit('a', { owner: 'alice' })
      await engine.submit('a', { owner: 'alice' })
      await engine.submit('a')
      await engine.submit('b', { owner: 'bob' })
      await engine.submit('b')
      await engine.cancel(a1.id)

      const zero = { queued: 0, running: 0, succeeded: 0, failed: 0, canceled: 0 }
      expect(await engine.stats()).toEqual({
        ...zero,
        queued: 4,
        canceled: 1,
        total: 5,
        byName: {
          a: { ...zero, queued: 2, canceled: 1, total: 3 },
          b: { ...zero, queued: 2, total: 2 },
        },
      })
      expect(await engine.stats({ owner: 'alice' })).toEqual({
        ...zero,
        queued: 1,
        canceled: 1,
        total: 2,
        byName: { a: { ...zero, queued: 1, canceled: 1, total: 2 } },
      })
      expect(await engine.stats({ owner: 'nobody' })).toEqual({ ...zero, total: 0, byName: {} })
      const page = await engine.list({ limit: 10, name: 'a', states: ['queued'] })
      expect(page.items).toHaveLength(2)
    })
  })

  describe('close', () => {
    it('aborts running handlers with reason shutdown and gives their operations back for the next engine', async () => {
      const store = memoryStore()
      const first = makeEngine({ store })
      const entered = deferred()
      let reason: unknown
      first.define({
        name: 'job',
        handler: async ({ signal }) => {
          entered.resolve()
          try {
            await aborted(signal)
          } catch (err) {
            reason = err
            throw err
          }
        },
      })
      first.start()
      const op = await first.submit('job')
      await entered.promise
      await first.close()
      expect(abortCode(reason)).toBe('shutdown')
      const released = await store.get(op.id)
      expect(released).toMatchObject({ state: 'queued', attempt: 1 })
      expect(released!.worker).toBeUndefined()
      expect(released!.error).toBeUndefined()

      const second = makeEngine({ store })
      second.define({ name: 'job', handler: ({ attempt }) => ({ attempt }) })
      second.start()
      const done = await reach(second, op.id, 'succeeded')
      expect(done).toMatchObject({ attempt: 2, result: { attempt: 2 } })
    })

    it('records the result of a handler that finishes its work on shutdown', async () => {
      const store = memoryStore()
      const engine = makeEngine({ store })
      const entered = deferred()
      engine.define({
        name: 'finisher',
        handler: async ({ signal }) => {
          entered.resolve()
          await aborted(signal).catch(() => {})
          return 'finished anyway'
        },
      })
      engine.start()
      const op = await engine.submit('finisher')
      await entered.promise
      await engine.close()
      expect(await store.get(op.id)).toMatchObject({ state: 'succeeded', result: 'finished anyway' })
    })

    it('can be called twice and stops a started engine from claiming', async () => {
      const POLL = 20
      const store = memoryStore()
      const claimsBy = new Map<string, number>()
      const claim = store.claim.bind(store)
      store.claim = (worker, ...rest) => {
        claimsBy.set(worker, (claimsBy.get(worker) ?? 0) + 1)
        return claim(worker, ...rest)
      }
      let ran = 0
      const engine = makeEngine({ store, poll: POLL, workerId: 'closed' })
      engine.define({ name: 'never', handler: () => ++ran })
      engine.start()
      const closed = engine.close()
      expect(engine.close()).toBe(closed)
      await closed
      engine.start()
      const other = makeEngine({ store, worker: false })
      other.define({ name: 'never', handler: () => ++ran })
      const op = await other.submit('never')
      const claimsAfterClose = claimsBy.get('closed') ?? 0
      // Ten polls of real time: a loop that had started again would have claimed by then.
      await sleep(10 * POLL)
      expect(await store.get(op.id)).toMatchObject({ state: 'queued', attempt: 0 })
      expect(claimsBy.get('closed') ?? 0).toBe(claimsAfterClose)
      expect(ran).toBe(0)
    })
  })

  describe('leases', () => {
    it('keeps control of an attempt it claims again after its own lease lapsed', async () => {
      // Heartbeats that fail for longer than a lease (a store outage) let this very engine claim its
      // own operation again. The new attempt must stay cancelable and the old one must stop.
      const store = memoryStore()
      let heartbeatsDown = false
      const heartbeat = store.heartbeat.bind(store)
      store.heartbeat = async (...args: Parameters<Store['heartbeat']>) => {
        if (heartbeatsDown) throw new Error('store unreachable')
        return heartbeat(...args)
      }
      let now = Date.now()
      const engine = makeEngine({ store, clock: () => now })
      const reasons = new Map<number, unknown>()
      engine.define({
        name: 'job',
        concurrency: 2,
        handler: async ({ attempt, signal }) => {
          reasons.set(attempt, 'running')
          try {
            await aborted(signal)
          } catch (err) {
            reasons.set(attempt, err)
            throw err
          }
        },
      })
      engine.start()
      const op = await engine.submit('job')
      await until(() => reasons.has(1))

      heartbeatsDown = true
      now += 10_000
      await until(() => reasons.has(2), 10_000, { what: 'the second attempt to start' })
      heartbeatsDown = false
      expect(abortCode(await until(() => reasons.get(1) !== 'running' && reasons.get(1)))).toBe('lease-lost')
      await flush()

      await engine.cancel(op.id)
      const canceled = await reach(engine, op.id, 'canceled')
      expect(canceled.attempt).toBe(2)
      expect(abortCode(reasons.get(2))).toBe('cancel')
    })
  })

  describe('crash loops', () => {
    /** Claims the operation as `times` workers in turn, each dying: every later claim finds its lease lapsed. */
    async function dieRunning(store: Store, times: number, now: number): Promise<number> {
      for (let i = 0; i < times; i++) {
        now += FAST.lease
        const [claimed] = await store.claim(`dead-${i}`, [{ name: 'job', limit: 1 }], FAST.lease, now)
        expect(claimed).toBeDefined()
      }
      return now + FAST.lease
    }

    it('fails an operation whose workers died maxLeaseLosses times running it, without running it again', async () => {
      const store = memoryStore()
      let now = Date.now()
      const runs: string[] = []
      const engine = makeEngine({ store, clock: () => now, maxLeaseLosses: 2 })
      engine.define({ name: 'job', retry: { attempts: 5 }, handler: ({ id }) => void runs.push(id) })
      const doomed = await engine.submit('job')
      // Two workers die running it; the engine's claim records the second lease loss.
      now = await dieRunning(store, 2, now)
      engine.start()
      const failed = await reach(engine, doomed.id, 'failed')
      expect(runs).toEqual([])
      expect(failed.attempt).toBe(3)
      expect(failed.error).toMatchObject({ code: 'lease-lost', title: 'Lease lost too often' })
      expect((await engine.history(doomed.id)).filter((e) => e.event === 'lease-lost')).toHaveLength(2)

      // A manual retry starts afresh: the next attempt runs.
      await engine.retry(doomed.id)
      await reach(engine, doomed.id, 'succeeded')
      expect(runs).toEqual([doomed.id])
    })

    it('runs again an operation that lost fewer leases than the limit', async () => {
      const store = memoryStore()
      let now = Date.now()
      const engine = makeEngine({ store, clock: () => now, maxLeaseLosses: 2 })
      engine.define({ name: 'job', handler: ({ attempt }) => attempt })
      const survivor = await engine.submit('job')
      now = await dieRunning(store, 1, now)
      engine.start()
      expect((await reach(engine, survivor.id, 'succeeded')).result).toBe(2)
    })

    it('refuses a limit that is not a whole number of at least 1', () => {
      for (const bad of [0, -1, 1.5, Number.NaN]) {
        expect(() => makeEngine({ maxLeaseLosses: bad })).toThrow(/maxLeaseLosses/)
      }
      expect(() => makeEngine({ maxLeaseLosses: Infinity })).not.toThrow()
    })
  })

  describe('on a shared SQLite file', () => {
    it('runs the operation of a dead worker once its lease expires, with the next attempt', async () => {
      const store = sqliteStore({ path: join(dir, 'dead-worker.db') })
      const engine = makeEngine({ store })
      const attempts: number[] = []
      engine.define({
        name: 'job',
        handler: ({ attempt }) => {
          attempts.push(attempt)
          return { attempt }
        },
      })
      const op = await engine.submit('job')
      const [claimed] = await store.claim('dead-worker', [{ name: 'job', limit: 1 }], 100, Date.now())
      expect(claimed).toMatchObject({ id: op.id, attempt: 1, worker: 'dead-worker' })

      engine.start()
      const done = await reach(engine, op.id, 'succeeded')
      expect(done).toMatchObject({ attempt: 2, result: { attempt: 2 } })
      expect(attempts).toEqual([2])
      // The dead worker's late outcome is fenced off.
      const stale = { id: op.id, attempt: 1, worker: 'dead-worker' }
      expect(await store.settle(stale, { state: 'failed', error: done.error!, expiresAt: 0 }, Date.now())).toBe(
        undefined,
      )
      expect(await engine.get(op.id)).toStrictEqual(done)
    })

    it('runs each operation exactly once with two engines, each with its own store on one file', async () => {
      const path = join(dir, 'two-engines.db')
      const a = makeEngine({ store: sqliteStore({ path }), workerId: 'engine-a' })
      const b = makeEngine({ store: sqliteStore({ path }), workerId: 'engine-b' })
      const runs = new Map<string, number>()
      for (const engine of [a, b]) {
        engine.define({
          name: 'shared',
          concurrency: 3,
          handler: async ({ id }) => {
            runs.set(id, (runs.get(id) ?? 0) + 1)
            await flush(1)
            return engine.workerId
          },
        })
      }
      const ops = []
      for (let i = 0; i < 30; i++) ops.push(await (i % 2 ? a : b).submit('shared', { input: i }))
      a.start()
      b.start()
      for (const op of ops) await reach(a, op.id, 'succeeded')
      expect([...runs.values()].every((n) => n === 1)).toBe(true)
      expect(runs.size).toBe(30)
      for (const op of ops) expect(['engine-a', 'engine-b']).toContain((await b.get(op.id)).result)
    })
  })
})

describe('backoffMs', () => {
  const policy = (overrides: Partial<ResolvedRetryPolicy>): ResolvedRetryPolicy => ({
    attempts: 10,
    backoff: 'exponential',
    delayMs: 100,
    factor: 2,
    maxDelayMs: 1_000,
    jitter: false,
    ...overrides,
  })

  it('grows exponentially up to maxDelay without jitter', () => {
    const p = policy({})
    expect([1, 2, 3, 4, 5, 6, 20].map((attempt) => backoffMs(p, attempt))).toEqual([
      100, 200, 400, 800, 1_000, 1_000, 1_000,
    ])
    expect(backoffMs(policy({ factor: 3, maxDelayMs: 10_000 }), 3)).toBe(900)
  })

  it('waits the same delay every time for fixed backoff', () => {
    const p = policy({ backoff: 'fixed', delayMs: 250 })
    expect([1, 2, 3, 10].map((attempt) => backoffMs(p, attempt))).toEqual([250, 250, 250, 250])
  })

  it('draws a jittered delay within [0, ceiling] from the injected random', () => {
    const exp = policy({ jitter: true })
    expect(backoffMs(exp, 3, () => 0)).toBe(0)
    expect(backoffMs(exp, 3, () => 0.5)).toBe(200)
    expect(backoffMs(exp, 3, () => 0.999_999)).toBe(400)
    for (let attempt = 1; attempt <= 8; attempt++) {
      const ceiling = Math.min(1_000, 100 * 2 ** (attempt - 1))
      for (const r of [0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999_999_9]) {
        const delay = backoffMs(exp, attempt, () => r)
        expect(delay).toBeGreaterThanOrEqual(0)
        expect(delay).toBeLessThanOrEqual(ceiling)
      }
    }
    const fixed = policy({ jitter: true, backoff: 'fixed' })
    expect(backoffMs(fixed, 5, () => 0.25)).toBe(25)
  })
})

describe('resolveDefinition', () => {
  const handler = () => 1

  it('fills in the defaults', () => {
    expect(resolveDefinition({ name: 'job', handler })).toEqual({
      name: 'job',
      handler,
      concurrency: 2,
      timeoutMs: 36_000_000,
      cancelable: true,
      args: undefined,
      retry: { attempts: 1, backoff: 'exponential', delayMs: 1_000, factor: 2, maxDelayMs: 3_600_000, jitter: true },
      idGenerator: undefined,
    })
    expect(
      resolveDefinition({ name: 'job', handler, retry: { attempts: 3, delay: '2s', maxDelay: '1m' } }).retry,
    ).toEqual({
      attempts: 3,
      backoff: 'exponential',
      delayMs: 2_000,
      factor: 2,
      maxDelayMs: 60_000,
      jitter: true,
    })
  })

  it.each<[string, RetryPolicy]>([
    ['zero attempts', { attempts: 0 }],
    ['negative attempts', { attempts: -1 }],
    ['fractional attempts', { attempts: 1.5 }],
    ['NaN attempts', { attempts: Number.NaN }],
    ['maxDelay shorter than delay', { attempts: 3, delay: 200, maxDelay: 100 }],
    ['maxDelay shorter than delay, as durations', { attempts: 3, delay: '2s', maxDelay: '1s' }],
    ['factor below 1', { attempts: 3, factor: 0.5 }],
    ['an unknown backoff', { attempts: 3, backoff: 'linear' as 'fixed' }],
    ['a negative delay', { attempts: 3, delay: -5 }],
  ])('rejects %s with invalid-option', (_, retry) => {
    let err: unknown
    try {
      resolveDefinition({ name: 'job', handler, retry })
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(LongrunError)
    expect((err as LongrunError).code).toBe('invalid-option')
  })

  it.each<[string, OperationDefinition]>([
    ['a bad name', { name: 'has space', handler }],
    ['a missing handler', { name: 'job', handler: undefined as unknown as () => void }],
    ['zero concurrency', { name: 'job', handler, concurrency: 0 }],
    ['a zero timeout', { name: 'job', handler, timeout: 0 }],
    ['a malformed timeout', { name: 'job', handler, timeout: '5 fortnights' as '5m' }],
    // Node fires a longer setTimeout after 1 ms: such a timeout would fail every attempt at once.
    ['a timeout beyond what a timer can wait', { name: 'job', handler, timeout: '30d' }],
  ])('rejects %s with invalid-option', (_, def) => {
    expect(() => resolveDefinition(def)).toThrow(expect.objectContaining({ code: 'invalid-option' }))
  })

  it('accepts the longest timeout a timer can wait', () => {
    expect(resolveDefinition({ name: 'job', handler, timeout: 2_147_483_647 }).timeoutMs).toBe(2_147_483_647)
    expect(resolveDefinition({ name: 'job', handler, timeout: '24d' }).timeoutMs).toBe(2_073_600_000)
  })

  it('refuses to define one name twice on an engine', async () => {
    const engine = makeEngine({ worker: false })
    engine.define({ name: 'once', handler })
    expect(() => engine.define({ name: 'once', handler })).toThrow(expect.objectContaining({ code: 'invalid-option' }))
  })
})
