import { describe, expect, it } from 'vitest'
import { LongrunError } from '../src/core/errors.js'
import { isStamped } from '../src/core/store.js'
import type { IdempotencyKey, Lease, Operation, OperationError } from '../src/core/types.js'
import { memoryStore } from '../src/stores/memory/index.js'
import { newOp, T0 } from './helpers/stores.js'

// What the memory store does beyond the shared store contract (test/stores.test.ts): it keeps a
// bounded number of finished operations, hands out copies, and stamps its changes.

const LEASE = 1_000
const boom: OperationError = { type: 'urn:longrun:problem:handler-error', code: 'handler-error', title: 'Error' }

const leaseOf = (op: Operation): Lease => ({ id: op.id, attempt: op.attempt, worker: op.worker! })
const ids = (ops: { id: string }[]) => ops.map((op) => op.id)

type Memory = ReturnType<typeof memoryStore>

/** Inserts `count` operations and claims them all. */
async function runningOps(store: Memory, count: number, prefix = 'op'): Promise<Operation[]> {
  for (let i = 0; i < count; i++) await store.insert(newOp({ id: `${prefix}-${i}` }))
  return store.claim('w1', [{ name: 'work', limit: count }], LEASE, T0)
}

const succeed = (store: Memory, op: Operation, at = T0) =>
  store.settle(leaseOf(op), { state: 'succeeded', result: op.id, expiresAt: at + 1e9 }, at)

const fail = (store: Memory, op: Operation, at = T0) =>
  store.settle(leaseOf(op), { state: 'failed', error: boom, expiresAt: at + 1e9 }, at)

describe('memory store: maxFinished', () => {
  it('removes the oldest finished by completion, with their history, events, keys and messages', async () => {
    const store = memoryStore({ maxFinished: 2 })
    const key: IdempotencyKey = { scope: 's', key: 'k', fingerprint: 'f', expiresAt: T0 + 1e9 }
    const made = await store.insertIdempotent(newOp({ id: 'keyed' }), key, T0)
    expect(made.kind).toBe('inserted')
    await store.insert(newOp({ id: 'hooked', subscriptions: [{ target: 'hook', events: ['succeeded'] }] }))
    for (let i = 0; i < 3; i++) await store.insert(newOp({ id: `op-${i}` }))
    const [keyed, hooked, ...rest] = await store.claim('w1', [{ name: 'work', limit: 5 }], LEASE, T0)
    const start = (await store.feed({ limit: 1 })).cursor
    // Completed in another order than inserted: keyed, hooked, then op-2, op-0, op-1.
    await fail(store, keyed!, T0 + 1)
    await succeed(store, hooked!, T0 + 2)
    for (const op of [rest[2]!, rest[0]!, rest[1]!]) await succeed(store, op, T0 + 3)

    const kept = ids((await store.list({ limit: 10 })).items)
    expect(kept).toEqual(['op-1', 'op-0'])
    for (const id of ['keyed', 'hooked', 'op-2']) {
      expect(await store.get(id), id).toBeUndefined()
      expect(await store.history(id), id).toEqual([])
      expect(await store.events(id, { limit: 10 }), id).toEqual([])
      expect(await store.deliveries(id), id).toEqual([])
    }
    expect(await store.claimMessages('s1', 10, LEASE, T0 + 10)).toEqual([])
    expect(await store.findIdempotent(key, T0 + 10)).toBeUndefined()
    const again = await store.insertIdempotent(newOp({ id: 'keyed-again' }), key, T0 + 10)
    expect(again.kind).toBe('inserted')
    const feed = await store.feed({ after: start, limit: 100 })
    expect(new Set(feed.entries.map((e) => e.operationId))).toEqual(new Set(['op-0', 'op-1', 'keyed-again']))
  })

  it('never removes queued, running or deferred operations', async () => {
    const store = memoryStore({ maxFinished: 0 })
    await store.insert(newOp({ id: 'deferred', deferred: { expiresAt: T0 + 1e9 } }))
    const [first, second] = await runningOps(store, 2)
    await store.insert(newOp({ id: 'queued' }))
    const settled = await succeed(store, first!)
    // The caller still gets the operation it settled.
    expect(settled).toMatchObject({ id: first!.id, state: 'succeeded' })
    expect(await store.get(first!.id)).toBeUndefined()
    const canceled = await store.cancel('queued', T0, T0 + 1e9)
    expect(canceled?.state).toBe('canceled')
    expect(await store.get('queued')).toBeUndefined()
    expect(ids((await store.list({ limit: 10 })).items)).toEqual([second!.id, 'deferred'])
    expect((await store.get(second!.id))?.state).toBe('running')
  })

  it('stops counting a requeued operation, and counts it from its new completion', async () => {
    const store = memoryStore({ maxFinished: 2 })
    const [a, b, c] = await runningOps(store, 3)
    await fail(store, a!, T0 + 1)
    await succeed(store, b!, T0 + 2)
    await store.requeue(a!.id, 1, T0 + 3)
    await succeed(store, c!, T0 + 4)
    expect(ids((await store.list({ limit: 10 })).items)).toEqual([c!.id, b!.id, a!.id])
    const [again] = await store.claim('w1', [{ name: 'work', limit: 1 }], LEASE, T0 + 5)
    await succeed(store, again!, T0 + 6)
    // `b` finished before `a`'s second completion, though after its first.
    expect(ids((await store.list({ limit: 10 })).items)).toEqual([c!.id, a!.id])
  })

  it('does not count operations removed otherwise, and keeps all with Infinity', async () => {
    const store = memoryStore({ maxFinished: 2 })
    const [a, b, c] = await runningOps(store, 3)
    await succeed(store, a!)
    await succeed(store, b!)
    expect(await store.delete(a!.id)).toBe(true)
    await succeed(store, c!)
    expect(ids((await store.list({ limit: 10 })).items)).toEqual([c!.id, b!.id])

    const all = memoryStore({ maxFinished: Infinity })
    for (const op of await runningOps(all, 30)) await succeed(all, op)
    expect((await all.list({ limit: 100 })).items).toHaveLength(30)
  })

  it('keeps 10,000 finished operations by default', async () => {
    const store = memoryStore()
    for (const op of await runningOps(store, 10_001)) await succeed(store, op)
    expect(await store.get('op-0')).toBeUndefined()
    expect((await store.get('op-1'))?.state).toBe('succeeded')
    expect((await store.stats({}))[0]).toEqual({ name: 'work', state: 'succeeded', count: 10_000 })
  })

  it('keeps the feed to the kept operations once it removed many', async () => {
    const store = memoryStore({ maxFinished: 5 })
    const start = (await store.feed({ limit: 1 })).cursor
    for (let round = 0; round < 5; round++) {
      for (const op of await runningOps(store, 500, `r${round}`)) await succeed(store, op)
    }
    const kept = ids((await store.list({ limit: 10 })).items)
    expect(kept).toHaveLength(5)
    const entries = []
    for (let cursor = start; ;) {
      const page = await store.feed({ after: cursor, limit: 7 })
      entries.push(...page.entries)
      if (page.entries.length === 0) break
      cursor = page.cursor
    }
    expect(entries.map((e) => e.operationId).sort()).toEqual(kept.flatMap((id) => [id, id, id]).sort())
    expect(entries.map((e) => e.seq)).toEqual([...entries.map((e) => e.seq)].sort((x, y) => x - y))
  })

  it('refuses a negative or fractional maxFinished', () => {
    for (const maxFinished of [-1, 1.5, Number.NaN]) {
      expect(() => memoryStore({ maxFinished }), String(maxFinished)).toThrow(LongrunError)
    }
  })
})

describe('memory store: copies', () => {
  it('shares nothing with what callers pass in or get back', async () => {
    const store = memoryStore()
    const input = { list: [1, { deep: 'x' }] }
    const fresh = newOp({ id: 'a', input, params: { p: '1' }, context: { tenant: { id: 't' } } })
    const inserted = await store.insert(fresh)
    input.list.push(2)
    fresh.params.p = 'changed'
    ;(inserted.context!.tenant as { id: string }).id = 'changed'
    inserted.progress.percent = 50
    const [claimed] = await store.claim('w1', [{ name: 'work', limit: 1 }], LEASE, T0)
    ;(claimed!.input as { list: unknown[] }).list.length = 0
    const progress = { percent: 40, step: 'one' }
    await store.progress(leaseOf(claimed!), progress, T0)
    progress.step = 'changed'
    const result = { answer: [42] }
    const settled = await store.settle(leaseOf(claimed!), { state: 'succeeded', result, expiresAt: T0 + 1e9 }, T0)
    result.answer.push(43)
    ;(settled!.result as { answer: number[] }).answer.push(44)
    ;(await store.list({ limit: 1 })).items[0]!.headers.x = 'changed'
    const [submitted] = await store.history('a')
    submitted!.event = 'failed'
    const events = await store.events('a', { limit: 10 })
    events[2]!.progress!.step = 'changed'
    const read = await store.get('a')
    read!.state = 'failed'

    expect(await store.get('a')).toMatchObject({
      state: 'succeeded',
      input: { list: [1, { deep: 'x' }] },
      params: { p: '1' },
      headers: {},
      context: { tenant: { id: 't' } },
      result: { answer: [42] },
    })
    expect((await store.history('a')).map((e) => e.event)).toEqual(['submitted', 'started', 'succeeded'])
    expect((await store.events('a', { limit: 10 }))[2]!.progress).toEqual({ percent: 40, step: 'one' })
  })

  it('copies errors and delivery attempts', async () => {
    const store = memoryStore()
    await store.insert(newOp({ id: 'a', subscriptions: [{ target: 'hook', events: ['failed'] }] }))
    const [op] = await store.claim('w1', [{ name: 'work', limit: 1 }], LEASE, T0)
    const error = { ...boom }
    const failed = await store.settle(leaseOf(op!), { state: 'failed', error, expiresAt: T0 + 1e9 }, T0)
    error.title = 'changed'
    failed!.error!.title = 'changed'
    const [message] = await store.claimMessages('s1', 1, LEASE, T0)
    const attempt = { at: T0, durationMs: 5, ok: true, status: 200 }
    await store.recordDelivery(message!, attempt)
    attempt.status = 500
    ;(await store.deliveries('a'))[0]!.attempts[0]!.status = 404
    ;(await store.history('a'))[2]!.error!.title = 'changed'

    expect((await store.get('a'))!.error!.title).toBe('Error')
    expect((await store.history('a'))[2]!.error!.title).toBe('Error')
    expect((await store.deliveries('a'))[0]!.attempts[0]!.status).toBe(200)
  })

  it('reads an unset field back as absent', async () => {
    const store = memoryStore()
    const op = await store.insert(newOp({ id: 'a' }))
    for (const key of ['result', 'error', 'worker', 'leaseExpiresAt', 'completedAt', 'context', 'callback']) {
      expect(Object.hasOwn(op, key), key).toBe(false)
    }
    const [claimed] = await store.claim('w1', [{ name: 'work', limit: 1 }], LEASE, T0)
    await store.release(leaseOf(claimed!), T0)
    const released = (await store.get('a'))!
    expect(Object.hasOwn(released, 'worker')).toBe(false)
    expect(Object.hasOwn(released, 'leaseExpiresAt')).toBe(false)
  })
})

describe('memory store: changeStamp', () => {
  it('is Stamped', () => {
    expect(isStamped(memoryStore())).toBe(true)
  })

  it('changes with every kind of change, and stays while only reads happen', async () => {
    const store = memoryStore({ maxFinished: 3 })
    const changes = async (what: string, change: () => Promise<unknown>) => {
      const before = store.changeStamp()
      await change()
      expect(store.changeStamp(), what).not.toBe(before)
    }
    const key: IdempotencyKey = { scope: 's', key: 'k', fingerprint: 'f', expiresAt: T0 + 10 }
    const hooked = newOp({ id: 'hooked', subscriptions: [{ target: 'hook', events: ['started', 'succeeded'] }] })

    await changes('insert', () => store.insert(newOp({ id: 'a' })))
    await changes('insertIdempotent', () => store.insertIdempotent(newOp({ id: 'keyed' }), key, T0))
    await changes('insert deferred', () => store.insert(newOp({ id: 'deferred', deferred: { expiresAt: T0 + 5 } })))
    await changes('insert with subscriptions', () => store.insert(hooked))
    let running: Operation[] = []
    await changes('claim', async () => (running = await store.claim('w1', [{ name: 'work', limit: 3 }], LEASE, T0)))
    const [a, keyed, hook] = running
    await changes('heartbeat', () => store.heartbeat(leaseOf(a!), LEASE, T0 + 1))
    await changes('progress', () => store.progress(leaseOf(a!), { percent: 10 }, T0 + 1))
    await changes('cancel requested', () => store.cancel(a!.id, T0 + 1, T0 + 5))
    await changes('settle', () => store.settle(leaseOf(a!), { state: 'queued', error: boom, runAt: T0 + 2 }, T0 + 1))
    const [again] = await store.claim('w1', [{ name: 'work', limit: 1 }], LEASE, T0 + 2)
    await changes('release', () => store.release(leaseOf(again!), T0 + 2))
    const [third] = await store.claim('w1', [{ name: 'work', limit: 1 }], LEASE, T0 + 2)
    await changes('fail', () => fail(store, third!, T0 + 2))
    await changes('requeue', () => store.requeue(a!.id, 1, T0 + 3))
    await changes('cancel', () => store.cancel(a!.id, T0 + 3, T0 + 5))
    await changes('delete', () => store.delete(a!.id))
    await changes('start', () => store.start('deferred', T0 + 3))
    let messages: Awaited<ReturnType<Memory['claimMessages']>> = []
    await changes('claimMessages', async () => (messages = await store.claimMessages('s1', 1, LEASE, T0 + 3)))
    const attempt = { at: T0 + 3, durationMs: 1, ok: true }
    await changes('recordDelivery', () => store.recordDelivery(messages[0]!, attempt))
    await changes('redeliver', () => store.redeliver('hooked', T0 + 3))
    await changes('disableTarget', () => store.disableTarget('hook', T0 + 3))
    await succeed(store, hook!, T0 + 4)
    await succeed(store, keyed!, T0 + 4)
    await changes('purge', () => store.purge(T0 + 1e10, 10))
    for (const op of await runningOps(store, 2, 'more')) await succeed(store, op, T0 + 5)
    await changes('trim', () => store.trim({ succeeded: 0 }, 10))

    const before = store.changeStamp()
    await store.get('more-0')
    await store.list({ limit: 10 })
    await store.query({ limit: 10, where: [] })
    await store.stats({})
    await store.queryStats({ where: [] })
    await store.history('hooked')
    await store.events('hooked', { limit: 10 })
    await store.feed({ after: '0', limit: 10 })
    await store.deliveries('hooked')
    await store.findIdempotent(key, T0)
    expect(store.changeStamp()).toBe(before)
  })

  it('changes when an eviction alone removes an operation', async () => {
    const store = memoryStore({ maxFinished: 1 })
    const [a, b] = await runningOps(store, 2)
    await succeed(store, a!)
    const stamps = new Set<number | string>()
    const record = store.changeStamp.bind(store)
    stamps.add(record())
    await succeed(store, b!)
    stamps.add(record())
    expect(stamps.size).toBe(2)
    expect(await store.get(a!.id)).toBeUndefined()
  })
})
