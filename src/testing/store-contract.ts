import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { LongrunError } from '../core/errors.js'
import {
  allows,
  DEFERRED_RUN_AT,
  isDeferred,
  OPERATION_STATES,
  TRANSITIONS,
  type Action,
  type OperationState,
  type TerminalState,
} from '../core/operation.js'
import type { Condition, ConditionValue } from '../core/query.js'
import {
  hasEventFeed,
  hasEventLog,
  hasOutbox,
  isDeferrable,
  isExclusive,
  isQueryable,
  isStamped,
  isTrimmable,
  type Deferrable,
  type EventFeed,
  type EventLog,
  type Delivery,
  type DeliveryAttempt,
  type Exclusive,
  type FeedEntry,
  type FeedQuery,
  type Outbox,
  type Queryable,
  type QuerySort,
  type Stamped,
  type Store,
  type Trimmable,
} from '../core/store.js'
import type {
  Callback,
  HistoryEntry,
  HistoryEvent,
  IdempotencyKey,
  Lease,
  ListQuery,
  NewOperation,
  Operation,
  OperationError,
  Outcome,
  StatsQuery,
  StatsRow,
} from '../core/types.js'

/** One opened store under test; `cleanup` runs after the contract has closed the store. */
export interface OpenedStore {
  store: Store
  cleanup?: () => Promise<void>
}

/** The injected "now" the store tests start from: stores must never read their own clock. */
export const T0 = 1_700_000_000_000

// Every time below is an injected clock value: the store must never read its own.
const LEASE = 1_000
const RETAIN = 86_400_000

const boom: OperationError = {
  type: 'urn:longrun:problem:handler-error',
  code: 'handler-error',
  title: 'Error',
  detail: 'boom',
}

let counter = 0

/** A new operation of name `work`, owned by `alice`, with a fresh id unless given one; its input names its id. */
export function newOp(overrides: Partial<NewOperation> = {}): NewOperation {
  counter++
  const id = overrides.id ?? `op-${String(counter).padStart(5, '0')}`
  return {
    id,
    name: 'work',
    owner: 'alice',
    input: { id },
    params: {},
    query: {},
    headers: {},
    maxAttempts: 1,
    cancelable: true,
    timeoutMs: 60_000,
    createdAt: T0,
    ...overrides,
  }
}

const leaseOf = (op: Operation): Lease => ({ id: op.id, attempt: op.attempt, worker: op.worker! })

const ids = (ops: { id: string }[]) => ops.map((op) => op.id)

/** History entries without their `seq`, which stores number as they like as long as it increases. */
const unnumbered = (entries: HistoryEntry[]) => entries.map(({ seq: _seq, ...entry }) => entry)

/** What `promise` rejects with; fails when it resolves. */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise
  } catch (err) {
    return err
  }
  throw new Error('expected a rejection')
}

/** Stats rows in one order, whatever order a store answers them in. */
const sortedStats = (rows: StatsRow[]) =>
  [...rows].sort((x, y) => `${x.name}/${x.state}`.localeCompare(`${y.name}/${y.state}`))

function expectIncreasing(entries: HistoryEntry[]): void {
  for (let i = 1; i < entries.length; i++) expect(entries[i]!.seq).toBeGreaterThan(entries[i - 1]!.seq)
}

/**
 * The conformance suite every `Store` must pass, for a bundled store or anyone else's: call it from
 * a vitest test file with a function that opens a fresh, empty store. Compare-and-set semantics are
 * checked through the public interface only, with plain numbers for `now`, so the suite never
 * sleeps. The cases of an optional capability (`EventLog`, `Queryable`, `Trimmable`, `Exclusive`,
 * `Outbox`, `Deferrable`) run only on stores that have it.
 *
 * List cursors: a store answers a cursor it never issued (`'NaN'`, `'abc'`, `'-1'`, `'1.5'`) with an
 * empty page and no `nextCursor`, rather than an error or the first page.
 */
export function storeContract(name: string, open: () => Promise<OpenedStore>): void {
  describe(`${name} store`, () => {
    let store: Store
    let cleanup: (() => Promise<void>) | undefined

    beforeEach(async () => {
      ;({ store, cleanup } = await open())
    })

    afterEach(async () => {
      await store.close()
      await cleanup?.()
    })

    /** Inserts and claims one operation for `worker` at `now`. */
    async function running(overrides: Partial<NewOperation> = {}, worker = 'w1', now = T0): Promise<Operation> {
      const op = await store.insert(newOp({ createdAt: now, ...overrides }))
      const claimed = await store.claim(worker, [{ name: op.name, limit: 1 }], LEASE, now)
      expect(ids(claimed)).toEqual([op.id])
      return claimed[0]!
    }

    async function finished(
      state: 'succeeded' | 'failed' | 'canceled',
      expiresAt = T0 + RETAIN,
      overrides: Partial<NewOperation> = {},
    ): Promise<Operation> {
      // A name of its own, so that it never claims another test's queued operation instead.
      const op = await running({ name: 'done', ...overrides })
      const outcome =
        state === 'succeeded'
          ? ({ state, result: { ok: true }, expiresAt } as const)
          : ({ state, error: boom, expiresAt } as const)
      const settled = await store.settle(leaseOf(op), outcome, T0 + 10)
      expect(settled?.state).toBe(state)
      return settled!
    }

    /**
     * Checks that `stats` (and `queryStats` without conditions) count exactly what the store holds,
     * for every owner, state and reader that `queries` name: counted here from a full list.
     */
    async function expectExactStats(queries: StatsQuery[] = []): Promise<void> {
      const all = (await store.list({ limit: 100_000 })).items
      const owners = [...new Set(all.map((op) => op.owner))]
      const names = [...new Set(all.map((op) => op.name))]
      const asked: StatsQuery[] = [
        {},
        ...owners.map((owner) => ({ owner })),
        { owner: 'nobody' },
        ...OPERATION_STATES.map((state) => ({ states: [state] })),
        { states: ['queued', 'running'] },
        ...owners.map((owner) => ({ owner, states: ['queued', 'running'] as OperationState[] })),
        { readable: { owners: [null], names: [] } },
        { readable: { owners: [], names: names.slice(0, 1) } },
        { readable: { owners: owners.slice(0, 2), names: names.slice(-1) } },
        { readable: { owners: [], names: [] } },
        ...queries,
      ]
      for (const query of asked) {
        const counts = new Map<string, StatsRow>()
        for (const op of all) {
          if (query.owner !== undefined && op.owner !== query.owner) continue
          if (query.states?.length && !query.states.includes(op.state)) continue
          const { readable } = query
          if (readable && !readable.owners.includes(op.owner) && !readable.names.includes(op.name)) continue
          const key = `${op.name}/${op.state}`
          const row = counts.get(key) ?? { name: op.name, state: op.state, count: 0 }
          row.count++
          counts.set(key, row)
        }
        const expected = sortedStats([...counts.values()])
        expect(sortedStats(await store.stats(query)), JSON.stringify(query)).toEqual(expected)
        if (isQueryable(store)) {
          expect(sortedStats(await store.queryStats({ ...query, where: [] })), JSON.stringify(query)).toEqual(expected)
        }
      }
    }

    describe('insert and get', () => {
      it('round-trips every field of a new operation', async () => {
        const input = {
          text: 'héllo ✓ "quoted" \\ back',
          int: 42,
          float: -1.5e-7,
          yes: true,
          no: false,
          nothing: null,
          list: [1, 'two', { three: [3] }, []],
          nested: { a: { b: { c: {} } } },
        }
        const fresh = newOp({
          owner: null,
          input,
          params: { userId: '7', slug: 'a-b' },
          query: { page: 2, tags: ['x', 'y'], flag: true },
          headers: { 'content-type': 'application/json', 'x-trace': 'abc' },
          requestId: 'req-42',
          maxAttempts: 3,
          cancelable: false,
          timeoutMs: null,
          createdAt: T0 + 5,
        })
        const { callback: _callback, ...fields } = structuredClone(fresh)
        const expected: Operation = {
          ...fields,
          state: 'queued',
          progress: { percent: 0 },
          attempt: 0,
          cancelRequested: false,
          runAt: T0 + 5,
        }
        expect(await store.insert(fresh)).toStrictEqual(expected)
        expect(await store.get(fresh.id)).toStrictEqual(expected)
      })

      it('keeps the context with the operation, and reads an operation without one back without one', async () => {
        const context = { tenant: 'acme', plan: { tier: 2, flags: ['a', 'b'] }, quoted: 'é "x" \\', none: null }
        const fresh = newOp({ context })
        const inserted = await store.insert(fresh)
        expect(inserted.context).toStrictEqual(context)
        expect((await store.get(fresh.id))!.context).toStrictEqual(context)
        expect((await store.list({ limit: 10 })).items[0]!.context).toStrictEqual(context)
        const empty = await store.insert(newOp({ context: {} }))
        expect((await store.get(empty.id))!.context).toStrictEqual({})
        const none = await store.insert(newOp())
        expect(Object.hasOwn(none, 'context')).toBe(false)
        expect(Object.hasOwn((await store.get(none.id))!, 'context')).toBe(false)
        const [claimed] = await store.claim('w1', [{ name: 'work', limit: 1 }], LEASE, T0)
        expect(claimed).toMatchObject({ id: fresh.id, context })
        const settled = await store.settle(leaseOf(claimed!), { state: 'succeeded', result: 1, expiresAt: T0 }, T0)
        expect(settled!.context).toStrictEqual(context)
        const key: IdempotencyKey = { scope: 's', key: 'k', fingerprint: 'f', expiresAt: T0 + 100 }
        const made = await store.insertIdempotent(newOp({ context: { via: 'key' } }), key, T0)
        expect(made.kind === 'inserted' && made.op.context).toStrictEqual({ via: 'key' })
        const replayed = await store.insertIdempotent(newOp(), key, T0 + 1)
        expect(replayed.kind === 'replayed' && replayed.op.context).toStrictEqual({ via: 'key' })
        const [next] = await store.claim('w1', [{ name: 'work', limit: 5 }], LEASE, T0 + 1)
        expect(Object.hasOwn(next!, 'context')).toBe(next!.id !== none.id)
      })

      it('round-trips scalar and array inputs', async () => {
        for (const input of [null, 0, 'text', [1, 2, 3], false]) {
          const op = await store.insert(newOp({ input }))
          expect((await store.get(op.id))!.input).toStrictEqual(input)
        }
      })

      it('answers undefined for an unknown id', async () => {
        expect(await store.get('no-such-op')).toBeUndefined()
      })

      it('returns copies that callers cannot mutate the store through', async () => {
        const op = await store.insert(newOp({ input: { n: 1 } }))
        ;(op.input as { n: number }).n = 2
        const read = await store.get(op.id)
        ;(read!.input as { n: number }).n = 3
        read!.state = 'failed'
        expect(await store.get(op.id)).toMatchObject({ state: 'queued', input: { n: 1 } })
      })

      it('rejects a duplicate id with duplicate-operation-id and keeps the original', async () => {
        const first = await store.insert(newOp({ id: 'dup', input: 'first' }))
        const err = store.insert(newOp({ id: 'dup', input: 'second', name: 'other' }))
        await expect(err).rejects.toBeInstanceOf(LongrunError)
        await expect(err).rejects.toMatchObject({ code: 'duplicate-operation-id' })
        expect(await store.get('dup')).toStrictEqual(first)
        expect((await store.list({ limit: 10 })).items).toHaveLength(1)
      })
    })

    describe('list', () => {
      it('lists newest first', async () => {
        const inserted = []
        // Same createdAt for all: order must come from insertion, not from timestamps or ids.
        for (const id of ['m', 'b', 'z', 'a']) inserted.push(await store.insert(newOp({ id })))
        const page = await store.list({ limit: 10 })
        expect(ids(page.items)).toEqual(['a', 'z', 'b', 'm'])
        expect(page.nextCursor).toBeUndefined()
        expect(page.items[0]).toStrictEqual(inserted[3])
      })

      it('filters by states, name and owner, including anonymous owners', async () => {
        const a1 = await store.insert(newOp({ name: 'a', owner: 'alice' }))
        const a2 = await store.insert(newOp({ name: 'a', owner: null }))
        const b1 = await store.insert(newOp({ name: 'b', owner: 'bob' }))
        const b2 = await store.insert(newOp({ name: 'b', owner: null }))
        await store.claim('w1', [{ name: 'b', limit: 1 }], LEASE, T0) // b1 -> running
        await store.cancel(a1.id, T0, T0 + RETAIN) // a1 -> canceled

        const list = async (query: Omit<Parameters<Store['list']>[0], 'limit'>) =>
          ids((await store.list({ limit: 100, ...query })).items)

        expect(await list({})).toEqual([b2.id, b1.id, a2.id, a1.id])
        // An empty states list is no filter, not a filter that matches nothing.
        expect(await list({ states: [] })).toEqual([b2.id, b1.id, a2.id, a1.id])
        expect(await list({ states: ['queued'] })).toEqual([b2.id, a2.id])
        expect(await list({ states: ['running', 'canceled'] })).toEqual([b1.id, a1.id])
        expect(await list({ states: ['succeeded'] })).toEqual([])
        expect(await list({ name: 'a' })).toEqual([a2.id, a1.id])
        expect(await list({ name: 'nope' })).toEqual([])
        expect(await list({ owner: 'alice' })).toEqual([a1.id])
        expect(await list({ owner: null })).toEqual([b2.id, a2.id])
        expect(await list({ owner: null, name: 'b' })).toEqual([b2.id])
        expect(await list({ owner: null, states: ['running'] })).toEqual([])
        expect(await list({ owner: 'bob', states: ['running'], name: 'b' })).toEqual([b1.id])
      })

      it('pages with limit and cursor, visiting every operation exactly once', async () => {
        const all = []
        for (let i = 0; i < 23; i++) all.push((await store.insert(newOp())).id)
        for (const limit of [1, 5, 7, 23, 50]) {
          const seen: string[] = []
          let cursor: string | undefined
          let pages = 0
          do {
            const page = await store.list({ limit, ...(cursor === undefined ? {} : { cursor }) })
            expect(page.items.length).toBeLessThanOrEqual(limit)
            if (page.nextCursor !== undefined) expect(page.items).toHaveLength(limit)
            seen.push(...ids(page.items))
            cursor = page.nextCursor
            pages++
          } while (cursor !== undefined)
          expect(seen).toEqual([...all].reverse())
          expect(pages).toBe(Math.ceil(23 / limit))
        }
      })

      it('pages through a filtered list, visiting every match exactly once', async () => {
        const mine = []
        for (let i = 0; i < 17; i++) {
          const op = await store.insert(newOp({ owner: i % 3 === 0 ? null : 'alice' }))
          if (op.owner === null) mine.push(op.id)
        }
        const seen: string[] = []
        let cursor: string | undefined
        do {
          const page = await store.list({ owner: null, limit: 2, ...(cursor === undefined ? {} : { cursor }) })
          seen.push(...ids(page.items))
          cursor = page.nextCursor
        } while (cursor !== undefined)
        expect(seen).toEqual(mine.reverse())
      })

      it('keeps a cursor valid while newer operations arrive', async () => {
        for (let i = 0; i < 4; i++) await store.insert(newOp({ id: `old-${i}` }))
        const first = await store.list({ limit: 2 })
        expect(ids(first.items)).toEqual(['old-3', 'old-2'])
        await store.insert(newOp({ id: 'new-0' }))
        const second = await store.list({ limit: 2, cursor: first.nextCursor! })
        expect(ids(second.items)).toEqual(['old-1', 'old-0'])
        expect(second.nextCursor).toBeUndefined()
      })
    })

    describe('stats', () => {
      it('counts operations by name and state, optionally for one owner', async () => {
        await store.insert(newOp({ name: 'a', owner: 'alice' }))
        await store.insert(newOp({ name: 'a', owner: 'alice' }))
        await store.insert(newOp({ name: 'a', owner: null }))
        const b = await store.insert(newOp({ name: 'b', owner: 'bob' }))
        await store.insert(newOp({ name: 'b', owner: null }))
        await store.claim('w1', [{ name: 'a', limit: 1 }], LEASE, T0)
        await store.cancel(b.id, T0, T0 + RETAIN)

        const sorted = (rows: Awaited<ReturnType<Store['stats']>>) =>
          [...rows].sort((x, y) => `${x.name}/${x.state}`.localeCompare(`${y.name}/${y.state}`))

        expect(sorted(await store.stats({}))).toEqual([
          { name: 'a', state: 'queued', count: 2 },
          { name: 'a', state: 'running', count: 1 },
          { name: 'b', state: 'canceled', count: 1 },
          { name: 'b', state: 'queued', count: 1 },
        ])
        expect(sorted(await store.stats({ owner: null }))).toEqual([
          { name: 'a', state: 'queued', count: 1 },
          { name: 'b', state: 'queued', count: 1 },
        ])
        expect(sorted(await store.stats({ owner: 'bob' }))).toEqual([{ name: 'b', state: 'canceled', count: 1 }])
        expect(await store.stats({ owner: 'nobody' })).toEqual([])
      })

      it('answers no rows for an empty store', async () => {
        expect(await store.stats({})).toEqual([])
      })

      it('keeps counts exact across every transition', async () => {
        await expectExactStats()
        const a = await store.insert(newOp({ name: 'a', owner: 'alice', maxAttempts: 3 }))
        await store.insert(newOp({ name: 'a', owner: null }))
        const b = await store.insert(newOp({ name: 'b', owner: 'bob' }))
        const c = await store.insert(newOp({ name: 'b', owner: null }))
        await rejection(store.insert(newOp({ id: a.id, name: 'b', owner: 'carol' })))
        const key: IdempotencyKey = { scope: 'k', key: 'k', fingerprint: 'f', expiresAt: T0 + RETAIN }
        await store.insertIdempotent(newOp({ name: 'c', owner: 'carol' }), key, T0)
        await store.insertIdempotent(newOp({ name: 'c', owner: 'carol' }), key, T0)
        await expectExactStats()
        const [a1] = await store.claim('w1', [{ name: 'a', limit: 1 }], LEASE, T0)
        await expectExactStats()
        // Its worker died: claimed again, running all along.
        const [a2] = await store.claim('w2', [{ name: 'a', limit: 1 }], LEASE, T0 + LEASE)
        expect(a2?.id).toBe(a1!.id)
        await store.heartbeat(leaseOf(a2!), LEASE, T0 + LEASE)
        await store.progress(leaseOf(a2!), { percent: 5 }, T0 + LEASE)
        await store.settle(leaseOf(a2!), { state: 'queued', error: boom, runAt: T0 + LEASE }, T0 + LEASE)
        await expectExactStats()
        const [a3] = await store.claim('w1', [{ name: 'a', limit: 1 }], LEASE, T0 + LEASE)
        await store.release(leaseOf(a3!), T0 + LEASE)
        await expectExactStats()
        const [a4] = await store.claim('w1', [{ name: 'a', limit: 1 }], LEASE, T0 + LEASE)
        await store.cancel(a4!.id, T0 + LEASE, T0 + RETAIN, 'alice') // running: asked to stop
        await expectExactStats()
        await store.settle(leaseOf(a4!), { state: 'failed', error: boom, expiresAt: T0 + 100 }, T0 + LEASE)
        await store.cancel(b.id, T0, T0 + 100, 'bob')
        await store.cancel(b.id, T0, T0 + 100, 'bob') // already canceled: no change
        await expectExactStats()
        await store.requeue(a4!.id, 1, T0 + LEASE)
        await store.requeue(a4!.id, 1, T0 + LEASE) // already queued: no change
        await expectExactStats()
        const done = await finished('succeeded', T0 + 100, { owner: 'dave' })
        await finished('succeeded', T0 + RETAIN, { owner: 'dave' })
        await expectExactStats()
        expect(await store.delete(done.id)).toBe(true)
        expect(await store.delete(c.id)).toBe(false)
        await expectExactStats()
        expect(await store.purge(T0 + 100, 10)).toBe(1)
        await expectExactStats()
        if (isTrimmable(store)) {
          expect(await store.trim({ succeeded: 0 }, 10)).toBe(1)
          await expectExactStats()
        }
        if (isDeferrable(store)) {
          const later = await store.insert(newOp({ name: 'd', owner: 'erin', deferred: { expiresAt: T0 + 50 } }))
          await store.insert(newOp({ name: 'd', owner: 'erin', deferred: { expiresAt: T0 + 50 } }))
          await expectExactStats()
          await store.start(later.id, T0 + 1, 'erin')
          await expectExactStats()
          expect(await store.purge(T0 + 50, 10)).toBe(1)
          await expectExactStats()
        }
        // Everything gone: no rows, rather than rows of zero.
        const live = (await store.list({ limit: 1_000, states: ['queued', 'running'] })).items
        const wants = [...new Set(live.map((op) => op.name))].map((name) => ({ name, limit: 100 }))
        for (const op of await store.claim('w9', wants, LEASE, T0 + 1e9)) {
          await store.settle(leaseOf(op), { state: 'succeeded', result: 1, expiresAt: T0 }, T0 + 1e9)
        }
        await store.purge(T0 + 1e9, 1_000)
        expect(await store.stats({})).toEqual([])
        await expectExactStats()
      })

      it('keeps counts exact under concurrent inserts, claims, outcomes, cancels and retries', async () => {
        const owners = ['alice', 'bob', null, 'carol']
        const inserted = await Promise.all(
          Array.from({ length: 60 }, (_, i) =>
            store.insert(newOp({ name: i % 3 === 0 ? 'x' : 'y', owner: owners[i % owners.length]! })),
          ),
        )
        await expectExactStats()
        const claims = await Promise.all(
          Array.from({ length: 6 }, (_, w) =>
            store.claim(
              `w${w}`,
              [
                { name: 'x', limit: 3 },
                { name: 'y', limit: 4 },
              ],
              LEASE,
              T0,
            ),
          ),
        )
        const claimed = claims.flat()
        expect(new Set(ids(claimed)).size).toBe(claimed.length)
        const held = new Set(ids(claimed))
        const queued = inserted.filter((op) => !held.has(op.id))
        await Promise.all([
          ...claimed.map((op, i) =>
            store.settle(
              leaseOf(op),
              i % 3 === 0
                ? { state: 'succeeded', result: i, expiresAt: T0 + RETAIN }
                : i % 3 === 1
                  ? { state: 'failed', error: boom, expiresAt: T0 + RETAIN }
                  : { state: 'queued', error: boom, runAt: T0 },
              T0 + 1,
            ),
          ),
          ...queued.slice(0, 10).map((op) => store.cancel(op.id, T0 + 1, T0 + RETAIN)),
          store.claim('late', [{ name: 'y', limit: 5 }], LEASE, T0 + 1),
        ])
        await expectExactStats()
        const finishedOnes = (await store.list({ limit: 1_000, states: ['failed', 'canceled'] })).items
        await Promise.all([
          ...finishedOnes.map((op) => store.requeue(op.id, 1, T0 + 2)),
          ...finishedOnes.map((op) => store.requeue(op.id, 1, T0 + 2)),
          ...Array.from({ length: 3 }, (_, w) => store.claim(`v${w}`, [{ name: 'x', limit: 10 }], LEASE, T0 + 2)),
        ])
        await expectExactStats()
      })
    })

    describe('claim', () => {
      it('moves a due operation to running for the worker with a lease', async () => {
        const op = await store.insert(newOp())
        const claimed = await store.claim('w1', [{ name: 'work', limit: 5 }], LEASE, T0 + 7)
        expect(claimed).toHaveLength(1)
        const expected: Operation = {
          ...op,
          state: 'running',
          attempt: 1,
          worker: 'w1',
          leaseExpiresAt: T0 + 7 + LEASE,
          startedAt: T0 + 7,
        }
        expect(claimed[0]).toStrictEqual(expected)
        expect(await store.get(op.id)).toStrictEqual(expected)
      })

      it('claims only operations whose runAt has come', async () => {
        const later = await store.insert(newOp({ createdAt: T0 + 100 }))
        expect(await store.claim('w1', [{ name: 'work', limit: 5 }], LEASE, T0 + 99)).toEqual([])
        expect((await store.get(later.id))!.state).toBe('queued')
        expect(ids(await store.claim('w1', [{ name: 'work', limit: 5 }], LEASE, T0 + 100))).toEqual([later.id])
      })

      it('respects the limit of each name and ignores names not asked for', async () => {
        for (let i = 0; i < 5; i++) await store.insert(newOp({ name: 'a' }))
        for (let i = 0; i < 3; i++) await store.insert(newOp({ name: 'b' }))
        for (let i = 0; i < 2; i++) await store.insert(newOp({ name: 'c' }))
        const claimed = await store.claim(
          'w1',
          [
            { name: 'a', limit: 2 },
            { name: 'b', limit: 10 },
            { name: 'unknown', limit: 3 },
          ],
          LEASE,
          T0,
        )
        const byName = (n: string) => claimed.filter((op) => op.name === n).length
        expect(claimed).toHaveLength(5)
        expect([byName('a'), byName('b'), byName('c')]).toEqual([2, 3, 0])
        expect(await store.claim('w1', [{ name: 'a', limit: 0 }], LEASE, T0)).toEqual([])
        expect(await store.claim('w1', [], LEASE, T0)).toEqual([])
        const rest = await store.claim('w2', [{ name: 'a', limit: 10 }], LEASE, T0)
        expect(rest).toHaveLength(3)
        expect(rest.every((op) => op.worker === 'w2' && op.attempt === 1)).toBe(true)
      })

      it('claims operations oldest first', async () => {
        const first = await store.insert(newOp({ id: 'zz-first' }))
        await store.insert(newOp({ id: 'aa-second' }))
        expect(ids(await store.claim('w1', [{ name: 'work', limit: 1 }], LEASE, T0))).toEqual([first.id])
      })

      it('never returns the same operation to two claims while its lease holds', async () => {
        for (let i = 0; i < 4; i++) await store.insert(newOp())
        const one = await store.claim('w1', [{ name: 'work', limit: 10 }], LEASE, T0)
        expect(one).toHaveLength(4)
        expect(await store.claim('w2', [{ name: 'work', limit: 10 }], LEASE, T0 + LEASE - 1)).toEqual([])
        expect(await store.claim('w1', [{ name: 'work', limit: 10 }], LEASE, T0 + LEASE - 1)).toEqual([])
      })

      it('hands an operation whose lease expired to another worker with the next attempt', async () => {
        const op = await running({}, 'w1', T0)
        const reclaimed = await store.claim('w2', [{ name: 'work', limit: 5 }], LEASE, T0 + LEASE)
        expect(ids(reclaimed)).toEqual([op.id])
        expect(reclaimed[0]).toMatchObject({
          state: 'running',
          attempt: 2,
          worker: 'w2',
          startedAt: T0 + LEASE,
          leaseExpiresAt: T0 + 2 * LEASE,
        })
      })

      it('starts every attempt at zero progress, whether after a lease loss or a scheduled retry', async () => {
        const lost = await running({}, 'w1', T0)
        expect(await store.progress(leaseOf(lost), { percent: 80, step: 'upload' }, T0)).toBe(true)
        const [takenOver] = await store.claim('w2', [{ name: 'work', limit: 1 }], LEASE, T0 + LEASE)
        expect(takenOver).toMatchObject({ id: lost.id, attempt: 2, progress: { percent: 0 } })
        expect(await store.progress(leaseOf(takenOver!), { percent: 60 }, T0)).toBe(true)
        await store.settle(leaseOf(takenOver!), { state: 'queued', error: boom, runAt: T0 + LEASE }, T0 + LEASE)
        const [retried] = await store.claim('w2', [{ name: 'work', limit: 1 }], LEASE, T0 + LEASE + 1)
        expect(retried).toMatchObject({ id: lost.id, attempt: 3, progress: { percent: 0 } })
        expect((await store.get(lost.id))!.progress).toEqual({ percent: 0 })
      })

      it('fences off the worker whose lease was taken over: its writes change nothing', async () => {
        const stale = await running({}, 'w1', T0)
        const [fresh] = await store.claim('w2', [{ name: 'work', limit: 5 }], LEASE, T0 + LEASE + 1)
        expect(fresh?.attempt).toBe(2)
        const before = await store.get(stale.id)

        expect(await store.heartbeat(leaseOf(stale), LEASE, T0 + LEASE + 2)).toEqual({
          held: false,
          cancelRequested: false,
        })
        expect(await store.progress(leaseOf(stale), { percent: 99, step: 'stale' }, T0)).toBe(false)
        expect(
          await store.settle(leaseOf(stale), { state: 'succeeded', result: 'stale', expiresAt: T0 }, T0 + LEASE + 3),
        ).toBeUndefined()
        expect(
          await store.settle(leaseOf(stale), { state: 'queued', error: boom, runAt: T0 }, T0 + LEASE + 3),
        ).toBeUndefined()
        expect(await store.release(leaseOf(stale), T0 + LEASE + 4)).toBe(false)
        // Right attempt, wrong worker; right worker, wrong attempt: neither holds the lease.
        const impostor = { ...leaseOf(fresh!), worker: 'w1' }
        expect((await store.heartbeat(impostor, LEASE, T0 + LEASE + 5)).held).toBe(false)
        expect(await store.release({ ...leaseOf(fresh!), attempt: 3 }, T0 + LEASE + 5)).toBe(false)

        expect(await store.get(stale.id)).toStrictEqual(before)
        // The new holder still can.
        expect(await store.progress(leaseOf(fresh!), { percent: 10 }, T0)).toBe(true)
        expect((await store.settle(leaseOf(fresh!), { state: 'succeeded', result: 1, expiresAt: T0 }, T0))?.state).toBe(
          'succeeded',
        )
      })

      it('never returns one operation to two of many concurrent claims', async () => {
        const total = 60
        for (let i = 0; i < total; i++) await store.insert(newOp())
        const claims = await Promise.all(
          Array.from({ length: 40 }, (_, i) =>
            store.claim(i % 2 === 0 ? 'w1' : 'w2', [{ name: 'work', limit: 3 }], LEASE, T0),
          ),
        )
        const claimed = claims.flat()
        expect(claims.every((c) => c.length <= 3)).toBe(true)
        expect(new Set(ids(claimed)).size).toBe(claimed.length)
        expect(claimed).toHaveLength(total)
        expect(claimed.every((op) => op.attempt === 1)).toBe(true)
        const page = await store.list({ limit: 1_000, states: ['running'] })
        expect(page.items).toHaveLength(total)
      })

      it('never returns one expired operation to two concurrent claims', async () => {
        for (let i = 0; i < 10; i++) await store.insert(newOp())
        await store.claim('dead', [{ name: 'work', limit: 10 }], LEASE, T0)
        const claims = await Promise.all(
          Array.from({ length: 10 }, (_, i) =>
            store.claim(`w${i}`, [{ name: 'work', limit: 2 }], LEASE, T0 + LEASE + i),
          ),
        )
        const claimed = claims.flat()
        expect(claimed).toHaveLength(10)
        expect(new Set(ids(claimed)).size).toBe(10)
        expect(claimed.every((op) => op.attempt === 2)).toBe(true)
      })
    })

    describe('heartbeat and progress', () => {
      it('extends the lease while held', async () => {
        const op = await running({}, 'w1', T0)
        expect(await store.heartbeat(leaseOf(op), LEASE, T0 + 500)).toEqual({ held: true, cancelRequested: false })
        expect((await store.get(op.id))!.leaseExpiresAt).toBe(T0 + 500 + LEASE)
        expect(await store.claim('w2', [{ name: 'work', limit: 1 }], LEASE, T0 + LEASE)).toEqual([])
        expect(await store.claim('w2', [{ name: 'work', limit: 1 }], LEASE, T0 + 500 + LEASE - 1)).toEqual([])
        expect(ids(await store.claim('w2', [{ name: 'work', limit: 1 }], LEASE, T0 + 500 + LEASE))).toEqual([op.id])
      })

      it('reports a requested cancel to the lease holder', async () => {
        const op = await running()
        await store.cancel(op.id, T0 + 1, T0 + RETAIN)
        expect(await store.heartbeat(leaseOf(op), LEASE, T0 + 2)).toEqual({ held: true, cancelRequested: true })
      })

      it('records progress while the lease is held', async () => {
        const op = await running()
        expect(await store.progress(leaseOf(op), { percent: 40, step: 'download', description: 'Fetching' }, T0)).toBe(
          true,
        )
        expect((await store.get(op.id))!.progress).toStrictEqual({
          percent: 40,
          step: 'download',
          description: 'Fetching',
        })
        expect(await store.progress(leaseOf(op), { percent: 50 }, T0)).toBe(true)
        expect((await store.get(op.id))!.progress).toStrictEqual({ percent: 50 })
      })

      it('refuses heartbeats and progress for queued, unknown and finished operations', async () => {
        const queued = await store.insert(newOp())
        const notHeld = { id: queued.id, attempt: 0, worker: 'w1' }
        expect(await store.heartbeat(notHeld, LEASE, T0)).toEqual({ held: false, cancelRequested: false })
        expect(await store.progress(notHeld, { percent: 1 }, T0)).toBe(false)
        expect(await store.heartbeat({ id: 'nope', attempt: 1, worker: 'w1' }, LEASE, T0)).toMatchObject({
          held: false,
        })
        const done = await finished('succeeded')
        const doneLease = { id: done.id, attempt: done.attempt, worker: 'w1' }
        expect((await store.heartbeat(doneLease, LEASE, T0)).held).toBe(false)
        expect(await store.progress(doneLease, { percent: 1 }, T0)).toBe(false)
        expect((await store.get(queued.id))!.progress).toStrictEqual({ percent: 0 })
      })
    })

    describe('settle', () => {
      it('records success with its result and retention', async () => {
        const op = await running()
        await store.progress(leaseOf(op), { percent: 100 }, T0)
        const result = { rows: [1, 2, { x: null }], total: 3, label: 'ünïcode' }
        const settled = await store.settle(leaseOf(op), { state: 'succeeded', result, expiresAt: T0 + RETAIN }, T0 + 50)
        const expected: Operation = {
          ...op,
          state: 'succeeded',
          progress: { percent: 100 },
          result,
          completedAt: T0 + 50,
          expiresAt: T0 + RETAIN,
        }
        delete expected.worker
        delete expected.leaseExpiresAt
        expect(settled).toStrictEqual(expected)
        expect(await store.get(op.id)).toStrictEqual(expected)
      })

      it('records a null result', async () => {
        const op = await running()
        await store.settle(leaseOf(op), { state: 'succeeded', result: null, expiresAt: T0 }, T0)
        const read = await store.get(op.id)
        expect(read!.state).toBe('succeeded')
        expect(read!.result).toBeNull()
      })

      it.each(['failed', 'canceled'] as const)('records %s with its error', async (state) => {
        const op = await running()
        const settled = await store.settle(leaseOf(op), { state, error: boom, expiresAt: T0 + RETAIN }, T0 + 60)
        expect(settled).toMatchObject({ state, error: boom, completedAt: T0 + 60, expiresAt: T0 + RETAIN })
        expect(settled!.result).toBeUndefined()
        expect(settled!.worker).toBeUndefined()
        expect(settled!.leaseExpiresAt).toBeUndefined()
        expect(await store.get(op.id)).toStrictEqual(settled)
      })

      it('records one outcome only: a second settle under the same lease changes nothing', async () => {
        const op = await running()
        const first = await store.settle(leaseOf(op), { state: 'succeeded', result: 1, expiresAt: T0 }, T0)
        expect(await store.settle(leaseOf(op), { state: 'failed', error: boom, expiresAt: T0 }, T0 + 1)).toBeUndefined()
        expect(await store.release(leaseOf(op), T0 + 1)).toBe(false)
        expect(await store.get(op.id)).toStrictEqual(first)
      })

      it('queues a retry until its runAt, keeping the error, then claims it with the next attempt', async () => {
        const op = await running({ maxAttempts: 3 })
        const retry = await store.settle(leaseOf(op), { state: 'queued', error: boom, runAt: T0 + 300 }, T0 + 20)
        expect(retry).toMatchObject({ state: 'queued', error: boom, runAt: T0 + 300, attempt: 1 })
        expect(retry!.worker).toBeUndefined()
        expect(retry!.leaseExpiresAt).toBeUndefined()
        expect(retry!.completedAt).toBeUndefined()
        expect(await store.get(op.id)).toStrictEqual(retry)

        expect(await store.claim('w2', [{ name: 'work', limit: 1 }], LEASE, T0 + 299)).toEqual([])
        const [again] = await store.claim('w2', [{ name: 'work', limit: 1 }], LEASE, T0 + 300)
        expect(again).toMatchObject({ id: op.id, state: 'running', attempt: 2, worker: 'w2', startedAt: T0 + 300 })
        // The first attempt's lease is gone for good.
        expect(await store.progress(leaseOf(op), { percent: 5 }, T0)).toBe(false)

        const done = await store.settle(leaseOf(again!), { state: 'succeeded', result: 'ok', expiresAt: T0 }, T0 + 400)
        expect(done).toMatchObject({ state: 'succeeded', result: 'ok', attempt: 2 })
        expect(done!.error).toBeUndefined()
      })
    })

    describe('release', () => {
      it('gives a held operation back, due at once in its old place, and it is claimed with the next attempt', async () => {
        const op = await running({}, 'w1', T0)
        expect(await store.release(leaseOf(op), T0 + 30)).toBe(true)
        const read = await store.get(op.id)
        expect(read).toMatchObject({ state: 'queued', runAt: op.runAt, attempt: 1 })
        expect(read!.worker).toBeUndefined()
        expect(read!.leaseExpiresAt).toBeUndefined()
        expect(await store.release(leaseOf(op), T0 + 31)).toBe(false)
        // Queued after it, but released work keeps its place: it is claimed first.
        await store.insert(newOp({ createdAt: T0 + 20 }))
        const [again] = await store.claim('w2', [{ name: 'work', limit: 1 }], LEASE, T0 + 30)
        expect(again).toMatchObject({ id: op.id, attempt: 2, worker: 'w2' })
      })

      it('refuses to release a queued or unknown operation', async () => {
        const op = await store.insert(newOp())
        expect(await store.release({ id: op.id, attempt: 0, worker: 'w1' }, T0)).toBe(false)
        expect(await store.release({ id: 'nope', attempt: 1, worker: 'w1' }, T0)).toBe(false)
        expect(await store.get(op.id)).toStrictEqual(op)
      })
    })

    describe('cancel', () => {
      it('cancels a queued cancelable operation at once', async () => {
        const op = await store.insert(newOp())
        const canceled = await store.cancel(op.id, T0 + 5, T0 + RETAIN)
        expect(canceled).toMatchObject({ state: 'canceled', completedAt: T0 + 5, expiresAt: T0 + RETAIN })
        expect(canceled!.error?.code).toBe('canceled')
        expect(canceled!.error?.type).toBe('urn:longrun:problem:canceled')
        expect(await store.get(op.id)).toStrictEqual(canceled)
        expect(await store.claim('w1', [{ name: 'work', limit: 1 }], LEASE, T0 + RETAIN * 2)).toEqual([])
      })

      it('asks a running cancelable operation to stop, leaving it running for its worker to settle', async () => {
        const op = await running()
        const after = await store.cancel(op.id, T0 + 5, T0 + RETAIN)
        expect(after).toStrictEqual({ ...op, cancelRequested: true })
        expect(await store.get(op.id)).toStrictEqual(after)
        // Asking twice is harmless.
        expect(await store.cancel(op.id, T0 + 6, T0 + RETAIN)).toStrictEqual(after)
        const settled = await store.settle(
          leaseOf(op),
          { state: 'canceled', error: boom, expiresAt: T0 + RETAIN },
          T0 + 10,
        )
        expect(settled).toMatchObject({ state: 'canceled', cancelRequested: true })
      })

      it('leaves a non-cancelable operation as it is, queued or running', async () => {
        const queued = await store.insert(newOp({ cancelable: false }))
        expect(await store.cancel(queued.id, T0, T0 + RETAIN)).toStrictEqual(queued)
        expect(await store.get(queued.id)).toStrictEqual(queued)
        const run = await running({ cancelable: false, name: 'other' })
        expect(await store.cancel(run.id, T0, T0 + RETAIN)).toStrictEqual(run)
        expect(await store.get(run.id)).toStrictEqual(run)
        expect((await store.heartbeat(leaseOf(run), LEASE, T0 + 1)).cancelRequested).toBe(false)
      })

      it.each(['succeeded', 'failed', 'canceled'] as const)('leaves a %s operation as it is', async (state) => {
        const op = await finished(state)
        expect(await store.cancel(op.id, T0 + 99, T0 + 2 * RETAIN)).toStrictEqual(op)
        expect(await store.get(op.id)).toStrictEqual(op)
      })

      it('answers undefined for an unknown id', async () => {
        expect(await store.cancel('nope', T0, T0 + RETAIN)).toBeUndefined()
      })
    })

    describe('requeue', () => {
      it('queues a failed operation again with a fresh budget, clearing its outcome', async () => {
        const op = await running({ maxAttempts: 2 })
        await store.progress(leaseOf(op), { percent: 70, step: 'half' }, T0)
        await store.settle(leaseOf(op), { state: 'failed', error: boom, expiresAt: T0 + RETAIN }, T0 + 10)

        const queued = await store.requeue(op.id, 3, T0 + 20)
        expect(queued).toMatchObject({
          id: op.id,
          state: 'queued',
          attempt: 1,
          maxAttempts: 4,
          runAt: T0 + 20,
          cancelRequested: false,
          progress: { percent: 0 },
        })
        for (const key of ['result', 'error', 'completedAt', 'expiresAt', 'worker', 'leaseExpiresAt'] as const) {
          expect(queued![key], key).toBeUndefined()
        }
        expect(await store.get(op.id)).toStrictEqual(queued)
        expect(await store.claim('w1', [{ name: 'work', limit: 1 }], LEASE, T0 + 19)).toEqual([])
        const [again] = await store.claim('w1', [{ name: 'work', limit: 1 }], LEASE, T0 + 20)
        expect(again).toMatchObject({ id: op.id, attempt: 2, maxAttempts: 4 })
      })

      it('queues a canceled operation again, clearing its cancel request', async () => {
        const op = await store.insert(newOp())
        await store.cancel(op.id, T0, T0 + RETAIN)
        const queued = await store.requeue(op.id, 1, T0 + 1)
        expect(queued).toMatchObject({ state: 'queued', cancelRequested: false, attempt: 0, maxAttempts: 1 })
        expect(queued!.error).toBeUndefined()
        const [claimed] = await store.claim('w1', [{ name: 'work', limit: 1 }], LEASE, T0 + 1)
        expect(claimed).toMatchObject({ id: op.id, attempt: 1, cancelRequested: false })
      })

      it('refuses queued, running, succeeded and unknown operations', async () => {
        const queued = await store.insert(newOp())
        const run = await running({ name: 'other' })
        const done = await finished('succeeded')
        for (const op of [queued, run, done]) {
          const before = await store.get(op.id)
          expect(await store.requeue(op.id, 1, T0 + 5), op.state).toBeUndefined()
          expect(await store.get(op.id)).toStrictEqual(before)
        }
        expect(await store.requeue('nope', 1, T0)).toBeUndefined()
      })
    })

    describe('delete', () => {
      it.each(['succeeded', 'failed', 'canceled'] as const)('removes a %s operation', async (state) => {
        const op = await finished(state)
        expect(await store.delete(op.id)).toBe(true)
        expect(await store.get(op.id)).toBeUndefined()
        expect(await store.delete(op.id)).toBe(false)
        expect((await store.list({ limit: 10 })).items).toEqual([])
      })

      it('keeps queued and running operations, and answers false for unknown ids', async () => {
        const queued = await store.insert(newOp())
        const run = await running({ name: 'other' })
        expect(await store.delete(queued.id)).toBe(false)
        expect(await store.delete(run.id)).toBe(false)
        expect(await store.delete('nope')).toBe(false)
        expect(await store.get(queued.id)).toStrictEqual(queued)
        expect(await store.get(run.id)).toStrictEqual(run)
      })
    })

    describe('history', () => {
      it('records every attempt and request, oldest first', async () => {
        const op = await store.insert(newOp({ maxAttempts: 2 }))
        const claim = async (worker: string, now: number) => {
          const [claimed] = await store.claim(worker, [{ name: 'work', limit: 1 }], LEASE, now)
          expect(claimed?.id).toBe(op.id)
          return claimed!
        }
        const a1 = await claim('w1', T0)
        const a2 = await claim('w2', T0 + LEASE) // w1 died
        await store.settle(leaseOf(a2), { state: 'queued', error: boom, runAt: T0 + LEASE + 10 }, T0 + LEASE + 5)
        const a3 = await claim('w3', T0 + LEASE + 10)
        await store.progress(leaseOf(a3), { percent: 50 }, T0)
        await store.heartbeat(leaseOf(a3), LEASE, T0 + LEASE + 11)
        await store.release(leaseOf(a3), T0 + LEASE + 12)
        const a4 = await claim('w1', T0 + LEASE + 13)
        await store.cancel(op.id, T0 + LEASE + 14, T0 + RETAIN, 'alice')
        await store.cancel(op.id, T0 + LEASE + 15, T0 + RETAIN, 'bob') // already requested: no new entry
        const canceled = { ...boom, code: 'canceled' }
        await store.settle(leaseOf(a4), { state: 'canceled', error: canceled, expiresAt: T0 + RETAIN }, T0 + LEASE + 16)
        await store.requeue(op.id, 1, T0 + LEASE + 17, null)
        const a5 = await claim('w2', T0 + LEASE + 18)
        await store.settle(leaseOf(a5), { state: 'succeeded', result: 1, expiresAt: T0 + RETAIN }, T0 + LEASE + 19)
        expect(a1.attempt).toBe(1)

        const expected: Omit<HistoryEntry, 'seq'>[] = [
          { at: T0, event: 'submitted', attempt: 0, actor: 'alice' },
          { at: T0, event: 'started', attempt: 1, worker: 'w1' },
          { at: T0 + LEASE, event: 'lease-lost', attempt: 1, worker: 'w1' },
          { at: T0 + LEASE, event: 'started', attempt: 2, worker: 'w2' },
          { at: T0 + LEASE + 5, event: 'retry-scheduled', attempt: 2, worker: 'w2', error: boom },
          { at: T0 + LEASE + 10, event: 'started', attempt: 3, worker: 'w3' },
          { at: T0 + LEASE + 12, event: 'released', attempt: 3, worker: 'w3' },
          { at: T0 + LEASE + 13, event: 'started', attempt: 4, worker: 'w1' },
          { at: T0 + LEASE + 14, event: 'cancel-requested', attempt: 4, actor: 'alice' },
          { at: T0 + LEASE + 16, event: 'canceled', attempt: 4, worker: 'w1', error: canceled },
          { at: T0 + LEASE + 17, event: 'retried', attempt: 4, actor: null },
          { at: T0 + LEASE + 18, event: 'started', attempt: 5, worker: 'w2' },
          { at: T0 + LEASE + 19, event: 'succeeded', attempt: 5, worker: 'w2' },
        ]
        const history = await store.history(op.id)
        expect(unnumbered(history)).toStrictEqual(expected)
        expectIncreasing(history)
      })

      it('records a queued cancel with its actor and error', async () => {
        const op = await store.insert(newOp())
        await store.cancel(op.id, T0 + 3, T0 + RETAIN, 'alice')
        const [submitted, entry, ...rest] = await store.history(op.id)
        expect(submitted?.event).toBe('submitted')
        expect(rest).toEqual([])
        expect(entry).toMatchObject({ at: T0 + 3, event: 'canceled', attempt: 0, actor: 'alice' })
        expect(entry!.error?.code).toBe('canceled')
        expect(entry!.worker).toBeUndefined()
      })

      it('records nothing for writes that change nothing', async () => {
        const stale = await running({ cancelable: false })
        const [fresh] = await store.claim('w2', [{ name: 'work', limit: 1 }], LEASE, T0 + LEASE)
        const before = await store.history(stale.id)
        expect(before.map((e) => e.event)).toEqual(['submitted', 'started', 'lease-lost', 'started'])
        await store.settle(leaseOf(stale), { state: 'succeeded', result: 1, expiresAt: T0 }, T0 + LEASE + 1)
        await store.settle(leaseOf(stale), { state: 'queued', error: boom, runAt: T0 }, T0 + LEASE + 1)
        await store.release(leaseOf(stale), T0 + LEASE + 1)
        await store.cancel(stale.id, T0 + LEASE + 1, T0 + RETAIN, 'alice') // not cancelable
        await store.requeue(stale.id, 1, T0 + LEASE + 1, 'alice') // not failed
        expect(await store.history(stale.id)).toStrictEqual(before)
        expect(fresh?.attempt).toBe(2)
      })

      it('starts with submitted, by the owner at the creation time, and is empty for an unknown operation', async () => {
        const op = await store.insert(newOp({ createdAt: T0 + 3 }))
        const anonymous = await store.insert(newOp({ owner: null }))
        expect(unnumbered(await store.history(op.id))).toStrictEqual([
          { at: T0 + 3, event: 'submitted', attempt: 0, actor: 'alice' },
        ])
        expect(unnumbered(await store.history(anonymous.id))).toStrictEqual([
          { at: T0, event: 'submitted', attempt: 0, actor: null },
        ])
        expect(await store.history('nope')).toEqual([])
      })

      it('records submitted once for an idempotent insert, and nothing for a replay or a duplicate id', async () => {
        const key: IdempotencyKey = { scope: 'alice\u0000work', key: 'k', fingerprint: 'fp', expiresAt: T0 + 100 }
        const first = await store.insertIdempotent(newOp(), key, T0)
        const op = (first as { op: Operation }).op
        expect((await store.insertIdempotent(newOp(), key, T0 + 1)).kind).toBe('replayed')
        await expect(store.insert(newOp({ id: op.id }))).rejects.toMatchObject({ code: 'duplicate-operation-id' })
        expect((await store.history(op.id)).map((e) => e.event)).toEqual(['submitted'])
      })

      it('leaves progress out', async () => {
        const op = await running()
        expect(await store.progress(leaseOf(op), { percent: 30 }, T0)).toBe(true)
        expect((await store.history(op.id)).map((e) => e.event)).toEqual(['submitted', 'started'])
      })

      it('forgets the history of deleted and purged operations', async () => {
        const deleted = await finished('succeeded')
        const purged = await finished('failed', T0 + 5)
        const kept = await finished('canceled', T0 + RETAIN)
        expect(await store.delete(deleted.id)).toBe(true)
        expect(await store.purge(T0 + 5, 10)).toBe(1)
        expect(await store.history(deleted.id)).toEqual([])
        expect(await store.history(purged.id)).toEqual([])
        expect((await store.history(kept.id)).map((e) => e.event)).toEqual(['submitted', 'started', 'canceled'])
        // An id used again starts a history of its own.
        await store.insert(newOp({ id: deleted.id }))
        expect((await store.history(deleted.id)).map((e) => e.event)).toEqual(['submitted'])
      })
    })

    describe('insertIdempotent', () => {
      const key = (overrides: Partial<IdempotencyKey> = {}): IdempotencyKey => ({
        scope: 'alice\u0000work',
        key: 'key-1',
        fingerprint: 'fp-1',
        expiresAt: T0 + 1_000,
        ...overrides,
      })

      it('inserts on first use and replays the same operation for the same request', async () => {
        const first = await store.insertIdempotent(newOp(), key(), T0)
        expect(first.kind).toBe('inserted')
        const op = (first as { op: Operation }).op
        expect(await store.get(op.id)).toStrictEqual(op)

        const second = newOp()
        const again = await store.insertIdempotent(second, key(), T0 + 999)
        expect(again).toStrictEqual({ kind: 'replayed', op })
        expect(await store.get(second.id)).toBeUndefined()
        expect((await store.list({ limit: 10 })).items).toHaveLength(1)
      })

      it('replays the operation as it is now', async () => {
        const first = await store.insertIdempotent(newOp(), key(), T0)
        const op = (first as { op: Operation }).op
        await store.claim('w1', [{ name: 'work', limit: 1 }], LEASE, T0 + 1)
        const again = await store.insertIdempotent(newOp(), key(), T0 + 2)
        expect(again.kind).toBe('replayed')
        expect((again as { op: Operation }).op).toStrictEqual(await store.get(op.id))
        expect((again as { op: Operation }).op.state).toBe('running')
      })

      it('refuses the same key for a different request', async () => {
        await store.insertIdempotent(newOp(), key(), T0)
        const other = newOp()
        expect(await store.insertIdempotent(other, key({ fingerprint: 'fp-2' }), T0 + 1)).toStrictEqual({
          kind: 'mismatch',
        })
        expect(await store.get(other.id)).toBeUndefined()
        // The key still belongs to the first request.
        expect((await store.insertIdempotent(newOp(), key(), T0 + 2)).kind).toBe('replayed')
      })

      it('finds what a live key made without inserting, and nothing for an unknown or expired key', async () => {
        const lookup = { scope: 'alice\u0000work', key: 'key-1', fingerprint: 'fp-1' }
        expect(await store.findIdempotent(lookup, T0)).toBeUndefined()
        const op = ((await store.insertIdempotent(newOp(), key({ expiresAt: T0 + 100 }), T0)) as { op: Operation }).op
        expect(await store.findIdempotent(lookup, T0 + 99)).toStrictEqual({ kind: 'replayed', op })
        expect(await store.findIdempotent({ ...lookup, fingerprint: 'fp-2' }, T0 + 99)).toStrictEqual({
          kind: 'mismatch',
        })
        expect(await store.findIdempotent({ ...lookup, scope: 'bob\u0000work' }, T0 + 99)).toBeUndefined()
        expect(await store.findIdempotent(lookup, T0 + 100)).toBeUndefined()
        expect((await store.list({ limit: 10 })).items).toHaveLength(1)
      })

      it('keeps keys apart by scope', async () => {
        const a = await store.insertIdempotent(newOp(), key({ scope: 'alice\u0000work' }), T0)
        const b = await store.insertIdempotent(newOp(), key({ scope: 'bob\u0000work', fingerprint: 'fp-9' }), T0)
        expect([a.kind, b.kind]).toEqual(['inserted', 'inserted'])
        expect((a as { op: Operation }).op.id).not.toBe((b as { op: Operation }).op.id)
      })

      it('uses a key afresh once it expired', async () => {
        const first = await store.insertIdempotent(newOp(), key({ expiresAt: T0 + 100 }), T0)
        const later = await store.insertIdempotent(newOp(), key({ expiresAt: T0 + 500, fingerprint: 'fp-2' }), T0 + 100)
        expect(later.kind).toBe('inserted')
        const newer = (later as { op: Operation }).op
        expect(newer.id).not.toBe((first as { op: Operation }).op.id)
        expect(await store.insertIdempotent(newOp(), key({ fingerprint: 'fp-2' }), T0 + 499)).toStrictEqual({
          kind: 'replayed',
          op: newer,
        })
      })

      it('uses a key afresh once its operation was deleted', async () => {
        const first = await store.insertIdempotent(newOp({ name: 'done' }), key(), T0)
        const [claimed] = await store.claim('w1', [{ name: 'done', limit: 1 }], LEASE, T0)
        await store.settle(leaseOf(claimed!), { state: 'succeeded', result: 1, expiresAt: T0 + RETAIN }, T0)
        expect(await store.delete((first as { op: Operation }).op.id)).toBe(true)
        const again = await store.insertIdempotent(newOp(), key(), T0 + 1)
        expect(again.kind).toBe('inserted')
        expect((await store.insertIdempotent(newOp(), key(), T0 + 2)).kind).toBe('replayed')
      })

      it('makes one operation for many concurrent uses of one key', async () => {
        const results = await Promise.all(
          Array.from({ length: 25 }, (_, i) => store.insertIdempotent(newOp(), key(), T0 + i)),
        )
        const inserted = results.filter((r) => r.kind === 'inserted')
        expect(inserted).toHaveLength(1)
        const { id } = (inserted[0] as { op: Operation }).op
        expect(results.every((r) => r.kind !== 'mismatch' && r.op.id === id)).toBe(true)
        expect((await store.list({ limit: 100 })).items.map((op) => op.id)).toEqual([id])
      })

      it('rejects a duplicate id without taking the key', async () => {
        await store.insert(newOp({ id: 'taken' }))
        await expect(store.insertIdempotent(newOp({ id: 'taken' }), key(), T0)).rejects.toMatchObject({
          code: 'duplicate-operation-id',
        })
        expect((await store.insertIdempotent(newOp(), key(), T0 + 1)).kind).toBe('inserted')
      })
    })

    describe('purge', () => {
      it('removes only finished operations whose expiresAt has passed', async () => {
        const early = await finished('succeeded', T0 + 1_000)
        const due = await finished('failed', T0 + 2_000)
        const late = await finished('canceled', T0 + 3_000)
        const queued = await store.insert(newOp())
        const run = await running({ name: 'other' })
        const retry = await running({ name: 'retry', maxAttempts: 2 })
        await store.settle(leaseOf(retry), { state: 'queued', error: boom, runAt: T0 }, T0)

        expect(await store.purge(T0 + 2_000, 100)).toBe(2)
        expect(await store.get(early.id)).toBeUndefined()
        expect(await store.get(due.id)).toBeUndefined()
        for (const op of [late, queued, run, retry]) expect(await store.get(op.id), op.id).toBeDefined()
        expect(await store.purge(T0 + 2_999, 100)).toBe(0)
        expect(await store.purge(T0 + 1e12, 100)).toBe(1)
        expect(await store.get(late.id)).toBeUndefined()
        expect(ids((await store.list({ limit: 10 })).items).sort()).toEqual([queued.id, run.id, retry.id].sort())
      })

      it('removes at most limit operations per call', async () => {
        for (let i = 0; i < 5; i++) await finished('succeeded', T0)
        expect(await store.purge(T0, 2)).toBe(2)
        expect(await store.purge(T0, 2)).toBe(2)
        expect(await store.purge(T0, 2)).toBe(1)
        expect(await store.purge(T0, 2)).toBe(0)
        expect((await store.list({ limit: 10 })).items).toEqual([])
      })
    })

    describe('list with a cursor it never issued', () => {
      it.each(['NaN', 'abc', '-1', '1.5', '', ' 1', '1e3', 'Infinity', '0x10', '9'.repeat(30)])(
        'answers %j with an empty page',
        async (cursor) => {
          for (let i = 0; i < 3; i++) await store.insert(newOp())
          expect(await store.list({ limit: 10, cursor })).toStrictEqual({ items: [] })
          expect(await store.list({ limit: 10, cursor, states: ['queued'], owner: 'alice' })).toStrictEqual({
            items: [],
          })
        },
      )

      it('answers a cursor before the first operation with an empty page', async () => {
        await store.insert(newOp())
        expect(await store.list({ limit: 10, cursor: '0' })).toStrictEqual({ items: [] })
      })
    })

    describe('event log', () => {
      let log: Store & EventLog

      beforeEach(({ skip }) => {
        if (!hasEventLog(store)) skip()
        log = store as Store & EventLog
      })

      const all = (id: string) => log.events(id, { limit: 1_000 })

      it('holds every event of the history and the progress events, oldest first, seq increasing', async () => {
        const op = await running({ maxAttempts: 2 })
        expect(await store.progress(leaseOf(op), { percent: 10, step: 'one' }, T0)).toBe(true)
        await store.heartbeat(leaseOf(op), LEASE, T0 + 1)
        expect(await store.progress(leaseOf(op), { percent: 60, description: 'more' }, T0 + 1)).toBe(true)
        await store.settle(leaseOf(op), { state: 'succeeded', result: 1, expiresAt: T0 + RETAIN }, T0 + 2)

        const events = await all(op.id)
        expect(events.map((e) => e.event)).toEqual(['submitted', 'started', 'progress', 'progress', 'succeeded'])
        expectIncreasing(events)
        const progresses = events.filter((e) => e.event === 'progress')
        expect(progresses.map((e) => e.progress)).toStrictEqual([
          { percent: 10, step: 'one' },
          { percent: 60, description: 'more' },
        ])
        // Stamped with the caller's clock, as every other write: a store never reads its own.
        expect(progresses.map((e) => e.at)).toEqual([T0, T0 + 1])
        for (const entry of progresses) expect(entry).toMatchObject({ attempt: 1, worker: 'w1' })
        // The history is the event log without its progress events, entry for entry.
        expect(await store.history(op.id)).toStrictEqual(events.filter((e) => e.event !== 'progress'))
      })

      it('records the last of progresses made together, and nothing that was never reported', async () => {
        const op = await running()
        const reported = Array.from({ length: 5 }, (_, i) => ({ percent: (i + 1) * 10 }))
        expect(await Promise.all(reported.map((p) => store.progress(leaseOf(op), p, T0)))).toEqual(
          reported.map(() => true),
        )
        const progresses = (await all(op.id)).filter((e) => e.event === 'progress').map((e) => e.progress)
        expect(progresses.length).toBeGreaterThanOrEqual(1)
        expect(progresses[progresses.length - 1]).toStrictEqual({ percent: 50 })
        for (const p of progresses) expect(reported).toContainEqual(p)
      })

      it('pages with after and limit, with no gap and no duplicate, and only its own events', async () => {
        const a = await running({ name: 'a', maxAttempts: 3 })
        const b = await running({ name: 'b' })
        for (let i = 1; i <= 6; i++) {
          await store.progress(leaseOf(a), { percent: i }, T0)
          await store.progress(leaseOf(b), { percent: i }, T0)
        }
        await store.settle(leaseOf(a), { state: 'queued', error: boom, runAt: T0 }, T0 + 1)
        const full = await all(a.id)
        expect(full.map((e) => e.event)).toEqual([
          'submitted',
          'started',
          ...Array.from({ length: 6 }, () => 'progress'),
          'retry-scheduled',
        ])
        expect(full.every((e) => e.event !== 'progress' || e.worker === 'w1')).toBe(true)
        expect((await all(b.id)).map((e) => e.progress?.percent ?? e.event)).toEqual([
          'submitted',
          'started',
          1,
          2,
          3,
          4,
          5,
          6,
        ])
        for (const limit of [1, 3, 4, 9, 10]) {
          const seen: HistoryEntry[] = []
          let after: number | undefined
          for (;;) {
            const page = await log.events(a.id, { limit, ...(after === undefined ? {} : { after }) })
            expect(page.length).toBeLessThanOrEqual(limit)
            seen.push(...page)
            if (page.length < limit) break
            after = page[page.length - 1]!.seq
          }
          expect(seen).toStrictEqual(full)
        }
        expect(await log.events(a.id, { after: full[full.length - 1]!.seq, limit: 10 })).toEqual([])
        expect(await log.events(a.id, { after: full[3]!.seq, limit: 2 })).toStrictEqual(full.slice(4, 6))
        expect(await log.events(a.id, { after: 0, limit: 2 })).toStrictEqual(full.slice(0, 2))
        expect(await log.events('nope', { limit: 10 })).toEqual([])
      })

      it('records no event for a write that changed nothing', async () => {
        const stale = await running()
        const [fresh] = await store.claim('w2', [{ name: 'work', limit: 1 }], LEASE, T0 + LEASE)
        const before = await all(stale.id)
        expect(before.map((e) => e.event)).toEqual(['submitted', 'started', 'lease-lost', 'started'])
        expect(await store.progress(leaseOf(stale), { percent: 99 }, T0)).toBe(false)
        await store.heartbeat(leaseOf(stale), LEASE, T0 + LEASE + 1)
        await store.settle(leaseOf(stale), { state: 'succeeded', result: 1, expiresAt: T0 }, T0 + LEASE + 1)
        await store.settle(leaseOf(stale), { state: 'queued', error: boom, runAt: T0 }, T0 + LEASE + 1)
        await store.release(leaseOf(stale), T0 + LEASE + 1)
        await store.requeue(stale.id, 1, T0 + LEASE + 1, 'alice')
        expect(await all(stale.id)).toStrictEqual(before)

        const queued = await store.insert(newOp())
        expect(await store.progress({ id: queued.id, attempt: 0, worker: 'w1' }, { percent: 5 }, T0)).toBe(false)
        expect((await all(queued.id)).map((e) => e.event)).toEqual(['submitted'])
        expect(fresh?.attempt).toBe(2)
      })

      it('forgets the events of deleted and purged operations', async () => {
        const deleted = await running({ name: 'done' })
        await store.progress(leaseOf(deleted), { percent: 50 }, T0)
        await store.settle(leaseOf(deleted), { state: 'succeeded', result: 1, expiresAt: T0 + RETAIN }, T0 + 1)
        const purged = await finished('failed', T0 + 5)
        const kept = await finished('canceled', T0 + RETAIN)
        expect(await store.delete(deleted.id)).toBe(true)
        expect(await store.purge(T0 + 5, 10)).toBe(1)
        expect(await all(deleted.id)).toEqual([])
        expect(await all(purged.id)).toEqual([])
        expect((await all(kept.id)).map((e) => e.event)).toEqual(['submitted', 'started', 'canceled'])
        await store.insert(newOp({ id: deleted.id }))
        expect((await all(deleted.id)).map((e) => e.event)).toEqual(['submitted'])
      })
    })

    describe('event feed', () => {
      let feed: Store & EventFeed

      beforeEach(({ skip }) => {
        if (!hasEventFeed(store)) skip()
        feed = store as Store & EventFeed
      })

      /** Reads the feed from `after` to its end, page by page. */
      const readAll = async (after: string, query: Omit<FeedQuery, 'after' | 'limit'> = {}, limit = 1_000) => {
        const entries: FeedEntry[] = []
        let cursor = after
        for (;;) {
          const page = await feed.feed({ ...query, after: cursor, limit })
          expect(page.entries.length).toBeLessThanOrEqual(limit)
          entries.push(...page.entries)
          cursor = page.cursor
          if (page.entries.length < limit) return { entries, cursor }
        }
      }

      it('starts at the present and then holds every event of every operation, in commit order', async () => {
        await store.insert(newOp({ name: 'before' }))
        const start = await feed.feed({ limit: 10 })
        expect(start.entries).toEqual([])
        const a = await running({ name: 'a' })
        const b = await store.insert(newOp({ name: 'b' }))
        await store.progress(leaseOf(a), { percent: 40 }, T0)
        await store.settle(leaseOf(a), { state: 'succeeded', result: 1, expiresAt: T0 + RETAIN }, T0 + 1)
        const { entries, cursor } = await readAll(start.cursor)
        expect(entries.map((e) => [e.operationId, e.event])).toEqual([
          [a.id, 'submitted'],
          [a.id, 'started'],
          [b.id, 'submitted'],
          [a.id, 'progress'],
          [a.id, 'succeeded'],
        ])
        expectIncreasing(entries)
        // Entry for entry what each operation's own log holds.
        if (hasEventLog(store)) {
          const own = await store.events(a.id, { limit: 100 })
          expect(
            entries.filter((e) => e.operationId === a.id).map(({ operationId: _id, cursor: _cursor, ...e }) => e),
          ).toStrictEqual(own)
        }
        expect((await feed.feed({ after: cursor, limit: 10 })).entries).toEqual([])
        for (const limit of [1, 2, 3]) expect((await readAll(start.cursor, {}, limit)).entries).toStrictEqual(entries)
        // Each entry's cursor resumes right after it.
        for (const [i, entry] of entries.entries()) {
          expect((await readAll(entry.cursor)).entries).toStrictEqual(entries.slice(i + 1))
        }
      })

      it('keeps only the names and the readers asked for, and moves past what it left out', async () => {
        const start = (await feed.feed({ limit: 10 })).cursor
        const mine = await store.insert(newOp({ name: 'report', owner: 'alice' }))
        const theirs = await store.insert(newOp({ name: 'report', owner: 'bob' }))
        const shared = await store.insert(newOp({ name: 'export', owner: 'bob' }))
        const ids = async (query: Omit<FeedQuery, 'after' | 'limit'>) =>
          (await readAll(start, query)).entries.map((e) => e.operationId)
        expect(await ids({ names: ['report'] })).toEqual([mine.id, theirs.id])
        expect(await ids({ names: [] })).toEqual([])
        expect(await ids({ readable: { owners: ['alice'], names: [] } })).toEqual([mine.id])
        expect(await ids({ readable: { owners: ['alice'], names: ['export'] } })).toEqual([mine.id, shared.id])
        expect(await ids({ names: ['report'], readable: { owners: ['bob'], names: [] } })).toEqual([theirs.id])
        const skipped = await readAll(start, { names: ['nothing'] })
        expect(skipped.entries).toEqual([])
        const later = await store.insert(newOp({ name: 'nothing' }))
        expect((await readAll(skipped.cursor, { names: ['nothing'] })).entries.map((e) => e.operationId)).toEqual([
          later.id,
        ])
      })

      it('answers an unknown cursor with an empty page at the present', async () => {
        await store.insert(newOp())
        for (const cursor of ['', 'abc', '-1', '1.5', '1-2-3', 'NaN']) {
          const page = await feed.feed({ after: cursor, limit: 10 })
          expect(page.entries).toEqual([])
          const next = await store.insert(newOp())
          expect((await readAll(page.cursor)).entries.map((e) => e.operationId)).toEqual([next.id])
        }
      })

      it('forgets the events of deleted operations', async () => {
        const start = (await feed.feed({ limit: 10 })).cursor
        const gone = await finished('succeeded', T0 + RETAIN)
        const kept = await store.insert(newOp())
        expect(await store.delete(gone.id)).toBe(true)
        expect((await readAll(start)).entries.map((e) => e.operationId)).toEqual([kept.id])
      })
    })

    describe('query', () => {
      let q: Store & Queryable

      beforeEach(({ skip }) => {
        if (!isQueryable(store)) skip()
        q = store as Store & Queryable
      })

      const ALL = ['qa', 'qb', 'qc', 'qd', 'qe']
      const but = (...left: string[]) => ALL.filter((id) => !left.includes(id))

      /** The ids of the operations meeting `where`, sorted: which ones match, not in which order. */
      const matching = async (where: Condition[], query: Omit<ListQuery, 'limit'> = {}) =>
        ids((await q.query({ limit: 1_000, ...query, where })).items).sort()

      type Case = [field: string, op: string, value: ConditionValue | string[], expected: string[]]

      /** Every case that answers other ids than expected, so that a failure shows them all. */
      async function wrongCases(cases: Case[]): Promise<unknown[]> {
        const wrong = []
        for (const [field, op, value, expected] of cases) {
          const found = await matching([{ field, op, value } as Condition])
          if (JSON.stringify(found) !== JSON.stringify([...expected].sort()))
            wrong.push({ field, op, value, expected, found })
        }
        return wrong
      }

      /**
       * Five operations, one value of each kind per field:
       *
       * |                  | qa        | qb     | qc           | qd            | qe          |
       * | name             | alpha     | beta   | gamma        | delta         | delta       |
       * | state            | queued    | queued | running      | failed        | succeeded   |
       * | owner            | alice     | null   | bob          | alice         | bob         |
       * | requestId        | req-1     | -      | -            | -             | -           |
       * | createdAt (+T0)  | 0         | 10     | 20           | 40            | 70          |
       * | startedAt        | -         | -      | 30           | 50            | 80          |
       * | completedAt      | -         | -      | -            | 60            | 90          |
       * | expiresAt        | -         | -      | -            | RETAIN        | RETAIN + 1  |
       * | cancelable       | true      | false  | true         | true          | true        |
       * | cancelRequested  | false     | false  | true         | false         | false       |
       * | attempt          | 0         | 0      | 1            | 1             | 1           |
       * | maxAttempts      | 1         | 3      | 2            | 1             | 1           |
       * | timeout          | 1000      | null   | 60000        | 60000         | 60000       |
       * | progress         | 0         | 0      | 40, 'Upload' | 100, 'done'   | 0           |
       * | error.code       | -         | -      | -            | handler-error | -           |
       */
      async function fixture(): Promise<void> {
        const input = {
          qa: {
            customer: 'Acme Corp',
            count: 5,
            code: '5',
            ratio: 0.5,
            vip: true,
            nested: { region: 'eu-west', level: { deep: 'x' } },
            tags: ['a'],
            nothing: null,
          },
          qb: { customer: 'acme labs', count: '5', code: 5, vip: false, nested: { region: 'us' } },
          qc: { customer: 'Émile', count: 12, nested: 'flat' },
          qd: { customer: 'émile', count: -1, vip: 'true' },
          qe: 'plain',
        }
        await store.insert(
          newOp({ id: 'qa', name: 'alpha', requestId: 'req-1', timeoutMs: 1_000, createdAt: T0, input: input.qa }),
        )
        await store.insert(
          newOp({
            id: 'qb',
            name: 'beta',
            owner: null,
            timeoutMs: null,
            maxAttempts: 3,
            cancelable: false,
            createdAt: T0 + 10,
            input: input.qb,
          }),
        )
        await store.insert(
          newOp({ id: 'qc', name: 'gamma', owner: 'bob', maxAttempts: 2, createdAt: T0 + 20, input: input.qc }),
        )
        const [qc] = await store.claim('w1', [{ name: 'gamma', limit: 1 }], LEASE, T0 + 30)
        expect(await store.progress(leaseOf(qc!), { percent: 40, step: 'Upload' }, T0 + 31)).toBe(true)
        expect((await store.cancel('qc', T0 + 35, T0 + RETAIN, 'bob'))?.cancelRequested).toBe(true)
        await store.insert(newOp({ id: 'qd', name: 'delta', createdAt: T0 + 40, input: input.qd }))
        const [qd] = await store.claim('w1', [{ name: 'delta', limit: 1 }], LEASE, T0 + 50)
        expect(await store.progress(leaseOf(qd!), { percent: 100, step: 'done' }, T0 + 51)).toBe(true)
        await store.settle(leaseOf(qd!), { state: 'failed', error: boom, expiresAt: T0 + RETAIN }, T0 + 60)
        await store.insert(newOp({ id: 'qe', name: 'delta', owner: 'bob', createdAt: T0 + 70, input: input.qe }))
        const [qe] = await store.claim('w1', [{ name: 'delta', limit: 1 }], LEASE, T0 + 80)
        await store.settle(leaseOf(qe!), { state: 'succeeded', result: 1, expiresAt: T0 + RETAIN + 1 }, T0 + 90)
        const states = Object.fromEntries((await store.list({ limit: 10 })).items.map((op) => [op.id, op.state]))
        expect(states).toEqual({ qa: 'queued', qb: 'queued', qc: 'running', qd: 'failed', qe: 'succeeded' })
      }

      it('compares strings, the null owner and request id, and values of another type', async () => {
        await fixture()
        const cases: Case[] = [
          ['name', 'eq', 'alpha', ['qa']],
          ['name', 'ne', 'alpha', but('qa')],
          ['name', 'gt', 'beta', ['qc', 'qd', 'qe']],
          ['name', 'ge', 'beta', but('qa')],
          ['name', 'lt', 'beta', ['qa']],
          ['name', 'le', 'beta', ['qa', 'qb']],
          ['name', 'like', 'AL*', ['qa']],
          ['name', 'like', 'd?lta', ['qd', 'qe']],
          ['name', 'like', 'alph', []],
          ['name', 'notlike', 'd*', ['qa', 'qb', 'qc']],
          ['name', 'eq', null, []],
          ['name', 'ne', null, ALL],
          ['name', 'gt', null, []],
          ['name', 'le', null, []],
          // A value of another type never equals, and never compares.
          ['name', 'eq', 5, []],
          ['name', 'ne', 5, ALL],
          ['name', 'gt', 0, []],
          ['id', 'eq', 'qc', ['qc']],
          ['id', 'gt', 'qc', ['qd', 'qe']],
          ['owner', 'eq', 'alice', ['qa', 'qd']],
          ['owner', 'ne', 'alice', ['qb', 'qc', 'qe']],
          ['owner', 'eq', null, ['qb']],
          ['owner', 'ne', null, but('qb')],
          ['owner', 'gt', 'alice', ['qc', 'qe']],
          ['owner', 'lt', 'bob', ['qa', 'qd']],
          ['owner', 'le', 'bob', but('qb')],
          ['owner', 'like', '*', but('qb')],
          ['owner', 'notlike', '*', ['qb']],
          ['owner', 'like', 'B?B', ['qc', 'qe']],
          ['requestId', 'eq', 'req-1', ['qa']],
          ['requestId', 'ne', 'req-1', but('qa')],
          ['requestId', 'eq', null, but('qa')],
          ['requestId', 'lt', 'z', ['qa']],
          ['requestId', 'like', 'REQ-?', ['qa']],
          ['requestId', 'notlike', 'REQ-?', but('qa')],
          ['state', 'eq', 'running', ['qc']],
          ['state', 'ne', 'queued', ['qc', 'qd', 'qe']],
          ['state', 'like', '*ed', ['qa', 'qb', 'qd', 'qe']],
          ['state', 'like', 'RUNNING', ['qc']],
          ['state', 'notlike', 'q*', ['qc', 'qd', 'qe']],
        ]
        expect(await wrongCases(cases)).toEqual([])
      })

      it('compares times and numbers by value, missing ones as null', async () => {
        await fixture()
        const cases: Case[] = [
          ['createdAt', 'eq', T0 + 20, ['qc']],
          ['createdAt', 'ne', T0 + 20, but('qc')],
          ['createdAt', 'gt', T0 + 10, ['qc', 'qd', 'qe']],
          ['createdAt', 'ge', T0 + 10, but('qa')],
          ['createdAt', 'lt', T0 + 10, ['qa']],
          ['createdAt', 'le', T0 + 10, ['qa', 'qb']],
          ['createdAt', 'gt', T0 + 9.5, but('qa')],
          ['createdAt', 'le', T0 + 10.5, ['qa', 'qb']],
          ['createdAt', 'eq', T0 + 0.5, []],
          ['createdAt', 'eq', String(T0), []],
          ['createdAt', 'ne', String(T0), ALL],
          ['createdAt', 'gt', null, []],
          ['startedAt', 'eq', null, ['qa', 'qb']],
          ['startedAt', 'ne', null, ['qc', 'qd', 'qe']],
          ['startedAt', 'gt', 0, ['qc', 'qd', 'qe']],
          ['startedAt', 'lt', T0 + 1_000_000, ['qc', 'qd', 'qe']],
          ['startedAt', 'ne', T0 + 30, but('qc')],
          ['completedAt', 'ge', T0, ['qd', 'qe']],
          ['completedAt', 'le', T0 + 60, ['qd']],
          ['completedAt', 'ne', T0 + 60, but('qd')],
          ['expiresAt', 'gt', T0 + RETAIN, ['qe']],
          ['expiresAt', 'eq', null, ['qa', 'qb', 'qc']],
          ['runAt', 'eq', T0, ['qa']],
          ['runAt', 'lt', T0 + 40, ['qa', 'qb', 'qc']],
          ['attempt', 'eq', 0, ['qa', 'qb']],
          ['attempt', 'ne', 1, ['qa', 'qb']],
          ['attempt', 'gt', 0, ['qc', 'qd', 'qe']],
          ['attempt', 'eq', '0', []],
          ['attempt', 'ne', '0', ALL],
          ['attempt', 'eq', false, []],
          ['maxAttempts', 'ge', 2, ['qb', 'qc']],
          ['maxAttempts', 'lt', 2, ['qa', 'qd', 'qe']],
          ['maxAttempts', 'le', 2, but('qb')],
          ['timeout', 'eq', null, ['qb']],
          ['timeout', 'ne', null, but('qb')],
          ['timeout', 'gt', 1_000, ['qc', 'qd', 'qe']],
          ['timeout', 'le', 1_000, ['qa']],
          ['timeout', 'ne', 60_000, ['qa', 'qb']],
          ['timeout', 'lt', 1e300, but('qb')],
          ['progress.percent', 'eq', 40, ['qc']],
          ['progress.percent', 'gt', 0, ['qc', 'qd']],
          ['progress.percent', 'ge', 100, ['qd']],
          ['progress.percent', 'lt', 50, ['qa', 'qb', 'qc', 'qe']],
          ['progress.percent', 'eq', '40', []],
          ['progress.percent', 'ne', '40', ALL],
        ]
        expect(await wrongCases(cases)).toEqual([])
      })

      it('compares booleans and the strings of the progress and the error', async () => {
        await fixture()
        const cases: Case[] = [
          ['cancelable', 'eq', true, but('qb')],
          ['cancelable', 'eq', false, ['qb']],
          ['cancelable', 'ne', true, ['qb']],
          ['cancelable', 'eq', 1, []],
          ['cancelable', 'ne', 1, ALL],
          ['cancelable', 'eq', 'true', []],
          ['cancelable', 'eq', null, []],
          ['cancelable', 'ne', null, ALL],
          ['cancelRequested', 'eq', true, ['qc']],
          ['cancelRequested', 'ne', false, ['qc']],
          ['progress.step', 'eq', 'Upload', ['qc']],
          ['progress.step', 'ne', 'Upload', but('qc')],
          ['progress.step', 'eq', null, ['qa', 'qb', 'qe']],
          ['progress.step', 'like', 'up*', ['qc']],
          ['progress.step', 'notlike', 'up*', but('qc')],
          // By code point: 'U' (U+0055) sorts before 'a', whatever the database's collation says.
          ['progress.step', 'lt', 'a', ['qc']],
          ['progress.step', 'gt', 'a', ['qd']],
          ['error.code', 'eq', 'handler-error', ['qd']],
          ['error.code', 'ne', 'handler-error', but('qd')],
          ['error.code', 'eq', null, but('qd')],
          ['error.code', 'ge', 'handler-error', ['qd']],
          ['error.code', 'like', '*-ERROR', ['qd']],
          ['error.code', 'notlike', '*-error', but('qd')],
        ]
        expect(await wrongCases(cases)).toEqual([])
      })

      it("compares the state of an operation's callback, null without one", async () => {
        const callback = {
          url: 'https://hooks.example.com/',
          method: 'POST',
          contentType: 'application/json',
          headers: {},
          sendResult: false,
        } as const
        await q.insert(newOp({ id: 'qcb', callback, subscriptions: [{ target: 'callback', events: ['succeeded'] }] }))
        await q.insert(newOp({ id: 'qnone' }))
        const found = async (op: string, value: ConditionValue) =>
          ids((await q.query({ limit: 10, where: [{ field: 'callback.state', op, value } as Condition] })).items).sort()
        expect(await found('eq', 'pending')).toEqual(['qcb'])
        expect(await found('like', 'PEND*')).toEqual(['qcb'])
        expect(await found('eq', 'delivered')).toEqual([])
        expect(await found('eq', null)).toEqual(['qnone'])
        expect(await found('ne', 'pending')).toEqual(['qnone'])
      })

      it('reaches into the input by path, by JSON type, missing and null paths as null', async () => {
        await fixture()
        const cases: Case[] = [
          ['input.customer', 'eq', 'Acme Corp', ['qa']],
          ['input.customer', 'eq', null, ['qe']],
          ['input.customer', 'like', 'acme*', ['qa', 'qb']],
          ['input.customer', 'like', 'ACME ?ORP', ['qa']],
          ['input.customer', 'like', '?mile', ['qc', 'qd']],
          ['input.customer', 'notlike', 'acme*', ['qc', 'qd', 'qe']],
          // The number 5 and the string "5" are different values.
          ['input.count', 'eq', 5, ['qa']],
          ['input.count', 'eq', '5', ['qb']],
          ['input.count', 'ne', 5, but('qa')],
          ['input.count', 'gt', 4, ['qa', 'qc']],
          ['input.count', 'ge', 5, ['qa', 'qc']],
          ['input.count', 'lt', 0, ['qd']],
          ['input.count', 'le', 5, ['qa', 'qd']],
          ['input.count', 'gt', '4', ['qb']],
          ['input.count', 'lt', '6', ['qb']],
          ['input.count', 'like', '5', ['qb']],
          ['input.count', 'like', '*', ['qb']],
          ['input.count', 'notlike', '*', but('qb')],
          ['input.code', 'eq', '5', ['qa']],
          ['input.code', 'eq', 5, ['qb']],
          ['input.ratio', 'eq', 0.5, ['qa']],
          ['input.ratio', 'lt', 1, ['qa']],
          // false < true; neither equals 1 or "true".
          ['input.vip', 'eq', true, ['qa']],
          ['input.vip', 'eq', false, ['qb']],
          ['input.vip', 'eq', 'true', ['qd']],
          ['input.vip', 'eq', 1, []],
          ['input.vip', 'gt', 0, []],
          ['input.vip', 'ne', true, but('qa')],
          ['input.vip', 'gt', false, ['qa']],
          ['input.vip', 'ge', false, ['qa', 'qb']],
          ['input.vip', 'lt', true, ['qb']],
          ['input.vip', 'le', false, ['qb']],
          ['input.vip', 'lt', false, []],
          ['input.nothing', 'eq', null, ALL],
          ['input.nothing', 'ne', null, []],
          ['input.missing', 'eq', null, ALL],
          ['input.missing', 'ne', 'x', ALL],
          ['input.missing', 'gt', 0, []],
          ['input.missing', 'like', '*', []],
          ['input.missing', 'notlike', '*', ALL],
          ['input.nested.region', 'eq', 'eu-west', ['qa']],
          ['input.nested.region', 'like', '*', ['qa', 'qb']],
          ['input.nested.region', 'eq', null, ['qc', 'qd', 'qe']],
          ['input.nested.level.deep', 'eq', 'x', ['qa']],
          ['input.nested.level.deep.deeper', 'eq', null, ALL],
          // Objects and arrays are values of their own type: never a string, never null.
          ['input.nested', 'eq', 'flat', ['qc']],
          ['input.nested', 'ne', 'flat', but('qc')],
          ['input.nested', 'eq', null, ['qd', 'qe']],
          ['input.nested', 'like', '*', ['qc']],
          ['input.nested', 'gt', '', ['qc']],
          ['input.tags', 'eq', null, but('qa')],
          ['input.tags', 'gt', '', []],
          ['input.tags', 'like', '*', []],
          ['input.tags.length', 'eq', null, ALL],
          ['input.customer.length', 'eq', null, ALL],
          ['input.length', 'eq', null, ALL],
        ]
        expect(await wrongCases(cases)).toEqual([])
      })

      it('matches like patterns: * and ? as wildcards, % _ and \\ as themselves, ASCII letters in either case', async () => {
        const texts: Record<string, string> = {
          pct: '100%',
          pcx: '100x',
          und: 'a_b',
          anb: 'axb',
          bsl: 'back\\slash',
          bsx: 'backXslash',
          upE: 'ÉCOLE',
          loE: 'école',
          asc: 'Ecole',
          nl: 'a\nb',
          eur: 'a€b',
          emo: 'a😀b',
          star: 'a*b',
        }
        for (const [id, text] of Object.entries(texts)) await store.insert(newOp({ id, input: { text } }))
        const every = Object.keys(texts)
        const ab = ['und', 'anb', 'nl', 'eur', 'emo', 'star']
        const patterns: [string, string[]][] = [
          ['100%', ['pct']],
          ['100?', ['pct', 'pcx']],
          ['100*', ['pct', 'pcx']],
          ['*%', ['pct']],
          ['%', []],
          ['_', []],
          ['*_*', ['und']],
          ['a_b', ['und']],
          ['A_B', ['und']],
          ['a?b', ab],
          ['A?B', ab],
          ['a??b', []],
          ['a*', ab],
          ['back\\slash', ['bsl']],
          ['*\\*', ['bsl']],
          ['back?slash', ['bsl', 'bsx']],
          ['école', ['loE']],
          ['ÉCOLE', ['upE']],
          ['ecole', ['asc']],
          ['ECOLE', ['asc']],
          ['?cole', ['upE', 'loE', 'asc']],
          ['*', every],
          ['', []],
        ]
        const wrong = []
        for (const [pattern, expected] of patterns) {
          for (const op of ['like', 'notlike'] as const) {
            const want = op === 'like' ? expected : every.filter((id) => !expected.includes(id))
            const found = await matching([{ field: 'input.text', op, value: pattern }])
            if (JSON.stringify(found) !== JSON.stringify([...want].sort())) wrong.push({ op, pattern, want, found })
          }
        }
        expect(wrong).toEqual([])
      })

      it('orders strings by code point', async () => {
        // By code point: 'B' < 'a' < 'é' < U+E000 < U+1F600 (UTF-16 code units put the last two the other way).
        const texts: Record<string, string> = { cB: 'B', ca: 'a', ce: 'é', cp: '\uE000', cm: '😀' }
        for (const [id, s] of Object.entries(texts)) await store.insert(newOp({ id, owner: s, input: { s } }))
        const wrong = []
        for (const field of ['input.s', 'owner'] as const) {
          const cases: [string, string, string[]][] = [
            ['gt', 'a', ['ce', 'cp', 'cm']],
            ['lt', 'a', ['cB']],
            ['ge', 'é', ['ce', 'cp', 'cm']],
            ['gt', '\uE000', ['cm']],
            ['lt', '😀', ['cB', 'ca', 'ce', 'cp']],
            ['le', 'B', ['cB']],
          ]
          for (const [op, value, expected] of cases) {
            const found = await matching([{ field, op, value } as Condition])
            if (JSON.stringify(found) !== JSON.stringify([...expected].sort())) wrong.push({ field, op, value, found })
          }
        }
        expect(wrong).toEqual([])
      })

      it('matches names in and not in a set', async () => {
        await fixture()
        const cases: Case[] = [
          ['name', 'in', ['alpha', 'gamma'], ['qa', 'qc']],
          ['name', 'in', ['delta'], ['qd', 'qe']],
          ['name', 'in', ['ALPHA', 'nope'], []],
          ['name', 'in', [], []],
          ['name', 'notin', ['alpha', 'gamma'], ['qb', 'qd', 'qe']],
          ['name', 'notin', [], ALL],
        ]
        expect(await wrongCases(cases)).toEqual([])
      })

      it('joins conditions with AND, and with the filters of list', async () => {
        await fixture()
        expect(await matching([])).toEqual(ALL)
        expect(
          await matching([
            { field: 'state', op: 'eq', value: 'queued' },
            { field: 'owner', op: 'eq', value: null },
          ]),
        ).toEqual(['qb'])
        const window: Condition[] = [
          { field: 'createdAt', op: 'ge', value: T0 + 10 },
          { field: 'createdAt', op: 'le', value: T0 + 40 },
        ]
        expect(await matching(window)).toEqual(['qb', 'qc', 'qd'])
        expect(await matching([...window, { field: 'owner', op: 'ne', value: 'bob' }])).toEqual(['qb', 'qd'])
        expect(
          await matching([
            { field: 'name', op: 'eq', value: 'alpha' },
            { field: 'name', op: 'eq', value: 'beta' },
          ]),
        ).toEqual([])
        expect(
          await matching([{ field: 'owner', op: 'eq', value: 'alice' }], { states: ['queued', 'failed'] }),
        ).toEqual(['qa', 'qd'])
        expect(await matching([{ field: 'state', op: 'ne', value: 'failed' }], { name: 'delta' })).toEqual(['qe'])
        expect(await matching([], { owner: null })).toEqual(['qb'])
        expect(await matching([{ field: 'input.count', op: 'lt', value: 0 }], { owner: 'alice' })).toEqual(['qd'])
        expect(await matching([{ field: 'input.count', op: 'lt', value: 0 }], { owner: 'bob' })).toEqual([])
      })

      it('answers whole operations, newest first unless sorted oldest first', async () => {
        await fixture()
        const where: Condition[] = [{ field: 'owner', op: 'ne', value: 'bob' }]
        const newest = await q.query({ limit: 10, where })
        expect(ids(newest.items)).toEqual(['qd', 'qb', 'qa'])
        expect(newest.nextCursor).toBeUndefined()
        for (const op of newest.items) expect(op).toStrictEqual(await store.get(op.id))
        expect(await q.query({ limit: 10, where, sort: 'newest' })).toStrictEqual(newest)
        expect(ids((await q.query({ limit: 10, where, sort: 'oldest' })).items)).toEqual(['qa', 'qb', 'qd'])
      })

      it('never matches nor counts what the caller cannot read', async () => {
        await fixture()
        const readable = { owners: ['alice'], names: ['gamma'] }
        expect(await matching([], { readable })).toEqual(['qa', 'qc', 'qd'])
        expect(await matching([{ field: 'owner', op: 'ne', value: 'alice' }], { readable })).toEqual(['qc'])
        expect(await matching([{ field: 'owner', op: 'eq', value: null }], { readable })).toEqual([])
        expect(await matching([{ field: 'name', op: 'notin', value: ['alpha'] }], { readable })).toEqual(['qc', 'qd'])
        expect(await matching([], { readable: { owners: [null], names: [] } })).toEqual(['qb'])
        expect(await matching([], { readable: { owners: [], names: [] } })).toEqual([])
        expect(await q.queryStats({ where: [{ field: 'owner', op: 'ne', value: 'alice' }], readable })).toEqual([
          { name: 'gamma', state: 'running', count: 1 },
        ])
        expect(await q.queryStats({ where: [], readable: { owners: [], names: [] } })).toEqual([])
      })

      it('counts matching operations by name and state', async () => {
        await fixture()
        await store.insert(newOp({ id: 'qf', name: 'alpha', owner: 'carol', input: { count: 7 } }))
        const sorted = (rows: Awaited<ReturnType<Store['stats']>>) =>
          [...rows].sort((x, y) => `${x.name}/${x.state}`.localeCompare(`${y.name}/${y.state}`))
        expect(sorted(await q.queryStats({ where: [] }))).toEqual(sorted(await store.stats({})))
        expect(sorted(await q.queryStats({ where: [{ field: 'input.count', op: 'gt', value: 4 }] }))).toEqual([
          { name: 'alpha', state: 'queued', count: 2 },
          { name: 'gamma', state: 'running', count: 1 },
        ])
        expect(sorted(await q.queryStats({ where: [{ field: 'owner', op: 'ne', value: 'alice' }] }))).toEqual([
          { name: 'alpha', state: 'queued', count: 1 },
          { name: 'beta', state: 'queued', count: 1 },
          { name: 'delta', state: 'succeeded', count: 1 },
          { name: 'gamma', state: 'running', count: 1 },
        ])
        expect(await q.queryStats({ owner: 'bob', where: [{ field: 'state', op: 'ne', value: 'running' }] })).toEqual([
          { name: 'delta', state: 'succeeded', count: 1 },
        ])
        expect(
          await q.queryStats({ states: ['queued'], where: [{ field: 'cancelable', op: 'eq', value: false }] }),
        ).toEqual([{ name: 'beta', state: 'queued', count: 1 }])
        expect(await q.queryStats({ where: [{ field: 'name', op: 'in', value: [] }] })).toEqual([])
      })

      it('pages through the matches in either order, each cursor going on where its page ended', async () => {
        const matches: string[] = []
        for (let i = 0; i < 13; i++) {
          const op = await store.insert(newOp({ input: { keep: i % 3 !== 1 } }))
          if (i % 3 !== 1) matches.push(op.id)
        }
        const where: Condition[] = [{ field: 'input.keep', op: 'eq', value: true }]
        for (const sort of ['newest', 'oldest'] as const) {
          const expected = sort === 'newest' ? [...matches].reverse() : matches
          for (const limit of [1, 2, 4, 9, 20]) {
            const seen: string[] = []
            let cursor: string | undefined
            let pages = 0
            do {
              const page = await q.query({ limit, where, sort, ...(cursor === undefined ? {} : { cursor }) })
              if (page.nextCursor !== undefined) expect(page.items).toHaveLength(limit)
              seen.push(...ids(page.items))
              cursor = page.nextCursor
              pages++
            } while (cursor !== undefined && pages < 20)
            expect(seen, `${sort}, limit ${limit}`).toEqual(expected)
            expect(pages).toBe(Math.ceil(matches.length / limit))
          }
        }
        // Operations arriving meanwhile: after the newest-first pages, at the end of the oldest-first ones.
        const newest = await q.query({ limit: 2, where })
        const oldest = await q.query({ limit: 2, where, sort: 'oldest' })
        const late = await store.insert(newOp({ input: { keep: true } }))
        const rest = async (cursor: string, sort: QuerySort) =>
          ids((await q.query({ limit: 100, where, sort, cursor })).items)
        expect(await rest(newest.nextCursor!, 'newest')).toEqual([...matches].reverse().slice(2))
        expect(await rest(oldest.nextCursor!, 'oldest')).toEqual([...matches.slice(2), late.id])
        for (const sort of ['newest', 'oldest'] as const) {
          expect(await q.query({ limit: 10, where, sort, cursor: 'abc' })).toStrictEqual({ items: [] })
        }
      })

      it('refuses a condition on a field that does not exist', async () => {
        await fixture()
        for (const field of ['nope', 'input', 'input.a"b', 'input..a', 'progress']) {
          const where = [{ field, op: 'eq', value: 1 } as unknown as Condition]
          expect(await rejection(q.query({ limit: 10, where })), field).toMatchObject({ code: 'invalid-condition' })
          expect(await rejection(q.queryStats({ where })), field).toMatchObject({ code: 'invalid-condition' })
        }
      })
    })

    describe('trim', () => {
      let t: Store & Trimmable

      beforeEach(({ skip }) => {
        if (!isTrimmable(store)) skip()
        t = store as Store & Trimmable
      })

      /** An operation of `owner` that finished in `state` at `at`. */
      async function completed(
        state: TerminalState,
        at: number,
        owner: string | null = 'alice',
        key?: IdempotencyKey,
      ): Promise<Operation> {
        const fresh = newOp({ name: 'trim', owner })
        const op = key
          ? ((await store.insertIdempotent(fresh, key, T0)) as { op: Operation }).op
          : await store.insert(fresh)
        if (state === 'canceled') return (await store.cancel(op.id, at, T0 + RETAIN))!
        const [claimed] = await store.claim('w1', [{ name: 'trim', limit: 1 }], LEASE, T0)
        expect(claimed?.id).toBe(op.id)
        const outcome: Outcome =
          state === 'succeeded'
            ? { state, result: 1, expiresAt: T0 + RETAIN }
            : { state, error: boom, expiresAt: T0 + RETAIN }
        return (await store.settle(leaseOf(claimed!), outcome, at))!
      }

      const remaining = async () => ids((await store.list({ limit: 1_000 })).items).sort()

      it("removes each owner's oldest finished operations beyond the count kept of their state", async () => {
        const key: IdempotencyKey = { scope: 'trim', key: 'k1', fingerprint: 'f1', expiresAt: T0 + RETAIN }
        // Completed out of insertion order: the count goes by completedAt.
        const a1 = await completed('succeeded', T0 + 500)
        const a2 = await completed('succeeded', T0 + 100)
        const a3 = await completed('succeeded', T0 + 300)
        const a4 = await completed('succeeded', T0 + 400)
        const af = await completed('failed', T0 + 50)
        const ac1 = await completed('canceled', T0 + 60)
        const ac2 = await completed('canceled', T0 + 70)
        const n1 = await completed('succeeded', T0 + 200, null, key)
        const n2 = await completed('succeeded', T0 + 600, null)
        const n3 = await completed('succeeded', T0 + 700, null)
        const b1 = await completed('succeeded', T0 + 10, 'bob')
        const b2 = await completed('succeeded', T0 + 20, 'bob')
        const queued = await store.insert(newOp({ name: 'live', createdAt: T0 - 1_000 }))
        const live = await running({ name: 'live-running' })

        expect(await t.trim({ succeeded: 2, canceled: 1 }, 100)).toBe(4)
        const gone = [a2, a3, n1, ac1]
        for (const op of gone) {
          expect(await store.get(op.id), op.id).toBeUndefined()
          expect(await store.history(op.id), op.id).toEqual([])
          if (hasEventLog(store)) expect(await store.events(op.id, { limit: 100 }), op.id).toEqual([])
        }
        const kept = [a1, a4, af, ac2, n2, n3, b1, b2, queued, live]
        expect(await remaining()).toEqual(ids(kept).sort())
        for (const op of kept) expect((await store.history(op.id)).length, op.id).toBeGreaterThan(0)
        // The trimmed operation's idempotency key went with it.
        expect(await store.findIdempotent(key, T0)).toBeUndefined()
        const reused = await store.insertIdempotent(newOp(), { ...key, fingerprint: 'f2' }, T0)
        expect(reused.kind).toBe('inserted')
        // Nothing more to trim.
        expect(await t.trim({ succeeded: 2, canceled: 1 }, 100)).toBe(0)
        expect(await t.trim({}, 100)).toBe(0)
        expect(await t.trim({ succeeded: 0, failed: 0, canceled: 0 }, 0)).toBe(0)
        expect(await remaining()).toEqual([...ids(kept), reused.kind === 'inserted' ? reused.op.id : ''].sort())
      })

      it('removes the oldest first, at most limit per call, ties by insertion order', async () => {
        const x1 = await completed('succeeded', T0 + 100, 'alice')
        const x2 = await completed('failed', T0 + 100, 'bob')
        const x3 = await completed('succeeded', T0 + 50, null)
        const x4 = await completed('canceled', T0 + 300, 'alice')
        const x5 = await completed('succeeded', T0 + 200, 'alice')
        const none = { succeeded: 0, failed: 0, canceled: 0 }
        expect(await t.trim(none, 2)).toBe(2)
        // The oldest two of all owners: x3 (at +50), then x1 (at +100, inserted before x2).
        expect(await remaining()).toEqual(ids([x2, x4, x5]).sort())
        for (const op of [x1, x3]) expect(await store.get(op.id)).toBeUndefined()
        expect(await t.trim(none, 2)).toBe(2)
        expect(await remaining()).toEqual([x4.id])
        expect(await t.trim(none, 2)).toBe(1)
        expect(await t.trim(none, 2)).toBe(0)

        // Completed at the same time: the one inserted later counts as newer and stays.
        const t1 = await completed('succeeded', T0 + 900, 'carol')
        const t2 = await completed('succeeded', T0 + 900, 'carol')
        const t3 = await completed('succeeded', T0 + 900, 'carol')
        expect(await t.trim({ succeeded: 2 }, 100)).toBe(1)
        expect(await remaining()).toEqual(ids([t2, t3]).sort())
        expect(t1.id).not.toBe(t2.id)
      })
    })

    describe('deferred operations', () => {
      let d: Store & Deferrable

      beforeEach(({ skip }) => {
        if (!isDeferrable(store)) skip()
        d = store as Store & Deferrable
      })

      const deferredOp = (overrides: Partial<NewOperation> = {}) =>
        newOp({ deferred: { expiresAt: T0 + 500 }, ...overrides })

      it('stores a deferred operation queued, due never, with its expiry; no claim takes it', async () => {
        const fresh = deferredOp({ context: { a: 1 } })
        const op = await store.insert(fresh)
        const { deferred: _deferred, callback: _callback, ...fields } = structuredClone(fresh)
        const expected: Operation = {
          ...fields,
          state: 'queued',
          progress: { percent: 0 },
          attempt: 0,
          cancelRequested: false,
          runAt: DEFERRED_RUN_AT,
          expiresAt: T0 + 500,
        }
        expect(op).toStrictEqual(expected)
        expect(await store.get(op.id)).toStrictEqual(expected)
        expect(isDeferred(op)).toBe(true)
        const key: IdempotencyKey = { scope: 's', key: 'k', fingerprint: 'f', expiresAt: T0 + 100 }
        const made = await store.insertIdempotent(deferredOp(), key, T0)
        expect(made.kind === 'inserted' && isDeferred(made.op) && made.op.expiresAt).toBe(T0 + 500)
        expect(await store.claim('w1', [{ name: 'work', limit: 10 }], LEASE, 8_000_000_000_000_000)).toEqual([])
        expect((await store.history(op.id)).map((e) => e.event)).toEqual(['submitted'])
      })

      it('starts one: due at now, its expiry cleared, queued recorded with the actor; then claimed', async () => {
        const op = await store.insert(deferredOp())
        const waiting = await store.insert(newOp({ createdAt: T0 + 5 }))
        const started = await d.start(op.id, T0 + 10, 'bob')
        const { expiresAt: _expiresAt, ...waitingFields } = op
        expect(started).toStrictEqual({ ...waitingFields, runAt: T0 + 10 })
        expect(await store.get(op.id)).toStrictEqual(started)
        expect(unnumbered(await store.history(op.id))).toStrictEqual([
          { at: T0, event: 'submitted', attempt: 0, actor: 'alice' },
          { at: T0 + 10, event: 'queued', attempt: 0, actor: 'bob' },
        ])
        if (hasEventLog(store)) {
          expect((await store.events(op.id, { limit: 10 })).map((e) => e.event)).toEqual(['submitted', 'queued'])
        }
        expect(await store.claim('w1', [{ name: 'work', limit: 10 }], LEASE, T0 + 9)).toMatchObject([
          { id: waiting.id },
        ])
        expect(ids(await store.claim('w1', [{ name: 'work', limit: 10 }], LEASE, T0 + 10))).toEqual([op.id])
        // An anonymous start.
        const other = await store.insert(deferredOp())
        await d.start(other.id, T0 + 20)
        expect((await store.history(other.id))[1]).toMatchObject({ event: 'queued', actor: null })
      })

      it('answers an operation that is not deferred as it is, and undefined for none', async () => {
        const queued = await store.insert(newOp())
        const run = await running({ name: 'other' })
        const done = await finished('succeeded')
        const once = await store.insert(deferredOp())
        await d.start(once.id, T0 + 1, 'alice')
        for (const op of [queued, run, done, once]) {
          const before = await store.get(op.id)
          const history = await store.history(op.id)
          expect(await d.start(op.id, T0 + 2, 'bob'), op.id).toStrictEqual(before)
          expect(await store.get(op.id)).toStrictEqual(before)
          expect(await store.history(op.id)).toStrictEqual(history)
        }
        expect(await d.start('nope', T0, 'bob')).toBeUndefined()
      })

      it('records one start of many concurrent ones', async () => {
        const op = await store.insert(deferredOp())
        const answers = await Promise.all(Array.from({ length: 12 }, (_, i) => d.start(op.id, T0 + 1 + i, `u${i}`)))
        const events = (await store.history(op.id)).filter((e) => e.event === 'queued')
        expect(events).toHaveLength(1)
        const now = await store.get(op.id)
        expect(now!.runAt).toBe(events[0]!.at)
        for (const answer of answers) expect(answer).toStrictEqual(now)
      })

      it('purges one never started once its expiry passed, with its history and events; a started one stays', async () => {
        const stale = await store.insert(deferredOp({ deferred: { expiresAt: T0 + 100 } }))
        const later = await store.insert(deferredOp({ deferred: { expiresAt: T0 + 200 } }))
        const started = await store.insert(deferredOp({ deferred: { expiresAt: T0 + 100 } }))
        await d.start(started.id, T0 + 50)
        expect(await store.purge(T0 + 99, 10)).toBe(0)
        expect(await store.purge(T0 + 100, 10)).toBe(1)
        expect(await store.get(stale.id)).toBeUndefined()
        expect(await store.history(stale.id)).toEqual([])
        if (hasEventLog(store)) expect(await store.events(stale.id, { limit: 10 })).toEqual([])
        expect(await store.get(later.id)).toBeDefined()
        expect(await store.get(started.id)).toMatchObject({ state: 'queued', runAt: T0 + 50 })
        expect(await store.purge(T0 + 1e12, 10)).toBe(1)
        expect(ids((await store.list({ limit: 10 })).items)).toEqual([started.id])
      })

      it('cancels one as any queued operation; delete and trim leave it', async () => {
        const kept = await store.insert(deferredOp({ name: 'trim' }))
        const op = await store.insert(deferredOp())
        expect(await store.delete(op.id)).toBe(false)
        if (isTrimmable(store)) expect(await store.trim({ succeeded: 0, failed: 0, canceled: 0 }, 10)).toBe(0)
        const canceled = await store.cancel(op.id, T0 + 3, T0 + RETAIN, 'bob')
        expect(canceled).toMatchObject({ state: 'canceled', completedAt: T0 + 3, expiresAt: T0 + RETAIN })
        expect((await store.history(op.id)).map((e) => e.event)).toEqual(['submitted', 'canceled'])
        expect(await d.start(op.id, T0 + 4)).toStrictEqual(canceled)
        expect(await store.get(kept.id)).toMatchObject({ state: 'queued', runAt: DEFERRED_RUN_AT })
      })

      it("writes a message for a subscription to 'queued' when it starts", async ({ skip }) => {
        if (!hasOutbox(store)) skip()
        const box = store as Store & Outbox
        const op = await store.insert(deferredOp({ subscriptions: [{ target: 'ep_1', events: ['queued'] }] }))
        expect(await box.claimMessages('s1', 10, LEASE, T0 + 100)).toEqual([])
        await d.start(op.id, T0 + 10, 'bob')
        const [message, ...rest] = await box.claimMessages('s1', 10, LEASE, T0 + 100)
        expect(rest).toEqual([])
        expect(message).toMatchObject({ operationId: op.id, event: 'queued', at: T0 + 10, target: 'ep_1' })
      })
    })

    describe('change stamp', () => {
      let stamped: Store & Stamped

      beforeEach(({ skip }) => {
        if (!isStamped(store)) skip()
        stamped = store as Store & Stamped
      })

      it('stays while only reads happen, and moves with every change a reader could see', async () => {
        const op = await running()
        const still = stamped.changeStamp()
        await store.get(op.id)
        await store.history(op.id)
        await store.list({ limit: 10 })
        await store.stats({})
        expect(stamped.changeStamp()).toBe(still)
        const changes: [string, () => Promise<unknown>][] = [
          ['insert', () => store.insert(newOp())],
          ['progress', () => store.progress(leaseOf(op), { percent: 40 }, T0 + 1)],
          ['cancel request', () => store.cancel(op.id, T0 + 2, T0 + RETAIN, 'alice')],
          [
            'settle',
            () => store.settle(leaseOf(op), { state: 'succeeded', result: 1, expiresAt: T0 + RETAIN }, T0 + 3),
          ],
          ['delete', () => store.delete(op.id)],
        ]
        for (const [what, change] of changes) {
          const before = stamped.changeStamp()
          await change()
          expect(stamped.changeStamp(), what).not.toBe(before)
        }
      })
    })

    describe('exclusively', () => {
      let x: Store & Exclusive

      beforeEach(({ skip }) => {
        if (!isExclusive(store)) skip()
        x = store as Store & Exclusive
      })

      it('runs one task per lock name at a time, and frees the lock when the task ends', async () => {
        let started!: () => void
        let finish!: () => void
        const running = new Promise<void>((resolve) => (started = resolve))
        const gate = new Promise<void>((resolve) => (finish = resolve))
        const first = x.exclusively('chore', async () => {
          started()
          await gate
          return 42
        })
        await running
        let ran = false
        expect(await x.exclusively('chore', async () => (ran = true))).toBeUndefined()
        expect(ran).toBe(false)
        // Another name is another lock.
        expect(await x.exclusively('other chore', async () => 'other')).toEqual({ value: 'other' })
        finish()
        expect(await first).toEqual({ value: 42 })
        expect(await x.exclusively('chore', async () => 'again')).toEqual({ value: 'again' })
        // A task that throws frees the lock too.
        const failed = await rejection(
          x.exclusively('chore', async () => {
            throw new Error('chore failed')
          }),
        )
        expect((failed as Error).message).toBe('chore failed')
        expect(await x.exclusively('chore', async () => undefined)).toEqual({ value: undefined })
      })
    })

    describe('outbox', () => {
      let box: Store & Outbox

      beforeEach(({ skip }) => {
        if (!hasOutbox(store)) skip()
        box = store as Store & Outbox
      })

      const CALLBACK: Callback = {
        url: 'https://receiver.test/hook?x=1',
        method: 'PUT',
        contentType: 'application/json',
        headers: { authorization: 'Bearer t', 'x-tenant': 'é' },
        sendResult: true,
      }
      const TERMINAL: HistoryEvent[] = ['succeeded', 'failed', 'canceled']
      /** Its callback for the terminal events, and the app-wide endpoint `hooks.a-1` for submit and success. */
      const subscribed = (overrides: Partial<NewOperation> = {}): Partial<NewOperation> => ({
        callback: CALLBACK,
        subscriptions: [
          { target: 'callback', events: TERMINAL },
          { target: 'hooks.a-1', events: ['submitted', 'succeeded'] },
        ],
        ...overrides,
      })
      /** An endpoint's interest in `submitted` only: a message as soon as the operation is inserted. */
      const onSubmit = (target: string, overrides: Partial<NewOperation> = {}) =>
        newOp({ subscriptions: [{ target, events: ['submitted'] }], ...overrides })
      const answered = (at: number, status: number): DeliveryAttempt => ({
        at,
        durationMs: 12,
        ok: status >= 200 && status < 300,
        status,
      })
      const shape = (deliveries: Delivery[]) => deliveries.map(({ event, target, state }) => ({ event, target, state }))
      const claimAll = (sender: string, now: number) => box.claimMessages(sender, 1_000, LEASE, now)

      it('round-trips the callback and the subscriptions; the callback starts pending with no attempts', async () => {
        const fresh = newOp(subscribed({ createdAt: T0 + 5 }))
        const { callback: _callback, ...fields } = structuredClone(fresh)
        const expected: Operation = {
          ...fields,
          callback: { ...CALLBACK, state: 'pending', attempts: 0 },
          state: 'queued',
          progress: { percent: 0 },
          attempt: 0,
          cancelRequested: false,
          runAt: T0 + 5,
        }
        expect(await store.insert(fresh)).toStrictEqual(expected)
        expect(await store.get(fresh.id)).toStrictEqual(expected)
        expect((await store.list({ limit: 10 })).items).toStrictEqual([expected])
        // An operation without either shows neither.
        const plain = await store.insert(newOp())
        expect(Object.keys(plain)).not.toContain('callback')
        expect(Object.keys((await store.get(plain.id))!)).not.toContain('subscriptions')
        // A callback without subscriptions is kept too, and empty subscriptions stay empty.
        const quiet = await store.insert(newOp({ callback: CALLBACK, subscriptions: [] }))
        expect(await store.get(quiet.id)).toMatchObject({
          callback: { state: 'pending', attempts: 0 },
          subscriptions: [],
        })
      })

      it('writes one message per subscribed event and target with the event, and none for the others', async () => {
        const op = await running(subscribed())
        await store.progress(leaseOf(op), { percent: 50 }, T0 + 1)
        await store.settle(leaseOf(op), { state: 'succeeded', result: 1, expiresAt: T0 + RETAIN }, T0 + 2)
        const deliveries = await box.deliveries(op.id)
        expect(shape(deliveries)).toEqual([
          { event: 'submitted', target: 'hooks.a-1', state: 'pending' },
          { event: 'succeeded', target: 'callback', state: 'pending' },
          { event: 'succeeded', target: 'hooks.a-1', state: 'pending' },
        ])
        // Each message reports its event by the event's seq, and is due from the event's time.
        const history = await store.history(op.id)
        const seqOf = (event: HistoryEvent) => history.find((entry) => entry.event === event)!.seq
        expect(deliveries.map((d) => d.seq)).toEqual([seqOf('submitted'), seqOf('succeeded'), seqOf('succeeded')])
        expect(deliveries.map((d) => d.nextAttemptAt)).toEqual([T0, T0 + 2, T0 + 2])
        expect(deliveries.every((d) => d.attempts.length === 0)).toBe(true)
        expect(new Set(deliveries.map((d) => d.id)).size).toBe(3)
        // One spelling on every store: the id is the webhook-id receivers deduplicate by.
        expect(deliveries.map((d) => d.id)).toEqual(deliveries.map((d) => `msg_${op.id}_${d.seq}_${d.target}`))
        const claimed = await claimAll('s1', T0 + 2)
        expect(claimed).toStrictEqual(
          deliveries.map((d, i) => ({
            id: d.id,
            operationId: op.id,
            seq: d.seq,
            event: d.event,
            at: i === 0 ? T0 : T0 + 2,
            target: d.target,
            attempts: 0,
            sender: 's1',
          })),
        )
        // Operations without subscriptions make none; unknown ones have none.
        const plain = await running()
        await store.settle(leaseOf(plain), { state: 'succeeded', result: 1, expiresAt: T0 + RETAIN }, T0 + 2)
        expect(await box.deliveries(plain.id)).toEqual([])
        expect(await box.deliveries('no-such-op')).toEqual([])
        expect(await claimAll('s2', T0 + 100)).toEqual([])
      })

      it('writes the messages of every event it records: attempts, lease losses, retries, releases', async () => {
        const events: HistoryEvent[] = ['started', 'lease-lost', 'retry-scheduled', 'released', 'failed', 'retried']
        const first = await running({ maxAttempts: 3, subscriptions: [{ target: 'all', events }] })
        const [second] = await store.claim('w2', [{ name: 'work', limit: 1 }], LEASE, T0 + LEASE)
        await store.settle(leaseOf(second!), { state: 'queued', error: boom, runAt: T0 + LEASE }, T0 + LEASE)
        const [third] = await store.claim('w1', [{ name: 'work', limit: 1 }], LEASE, T0 + LEASE)
        await store.release(leaseOf(third!), T0 + LEASE)
        const [fourth] = await store.claim('w1', [{ name: 'work', limit: 1 }], LEASE, T0 + LEASE)
        await store.settle(leaseOf(fourth!), { state: 'failed', error: boom, expiresAt: T0 + RETAIN }, T0 + LEASE)
        await store.requeue(first.id, 1, T0 + LEASE + 1, 'bob')
        const deliveries = await box.deliveries(first.id)
        expect(deliveries.map((d) => d.event)).toEqual([
          'started',
          'lease-lost',
          'started',
          'retry-scheduled',
          'started',
          'released',
          'started',
          'failed',
          'retried',
        ])
        expectIncreasing(deliveries as unknown as HistoryEntry[])
      })

      it("writes the 'canceled' message of a queued operation canceled at once", async () => {
        const op = await store.insert(newOp(subscribed()))
        await store.cancel(op.id, T0 + 5, T0 + RETAIN, 'bob')
        const deliveries = await box.deliveries(op.id)
        expect(shape(deliveries)).toEqual([
          { event: 'submitted', target: 'hooks.a-1', state: 'pending' },
          { event: 'canceled', target: 'callback', state: 'pending' },
        ])
        expect(deliveries[1]!.nextAttemptAt).toBe(T0 + 5)
      })

      it('claims due messages oldest first, up to the limit, and none before they are due', async () => {
        const ops = [T0, T0 + 1, T0 + 2].map((createdAt) => onSubmit('hooks.a', { createdAt }))
        for (const op of ops) await store.insert(op)
        expect((await box.claimMessages('s1', 5, LEASE, T0)).map((m) => m.operationId)).toEqual([ops[0]!.id])
        expect((await box.claimMessages('s1', 1, LEASE, T0 + 5)).map((m) => m.operationId)).toEqual([ops[1]!.id])
        expect((await box.claimMessages('s1', 5, LEASE, T0 + 5)).map((m) => m.operationId)).toEqual([ops[2]!.id])
        // Held while their leases last.
        expect(await claimAll('s2', T0 + LEASE - 1)).toEqual([])
      })

      it('never hands one message to two of many concurrent senders', async () => {
        const made = Array.from({ length: 12 }, (_, i) => onSubmit(`hooks.${i % 3}`))
        for (const op of made) await store.insert(op)
        const claims = await Promise.all(Array.from({ length: 6 }, (_, i) => box.claimMessages(`s${i}`, 3, LEASE, T0)))
        const claimed = claims.flat()
        expect(new Set(claimed.map((m) => m.id)).size).toBe(claimed.length)
        // Concurrent claims skip what another takes rather than wait for it, so some may come back short.
        const rest = await claimAll('late', T0)
        expect(claimed.length + rest.length).toBe(12)
        expect(new Set([...claimed, ...rest].map((m) => m.id)).size).toBe(12)
        expect(await claimAll('later', T0 + LEASE - 1)).toEqual([])
      })

      it("gives a message whose sender's lease lapsed to another, and refuses the first sender's late record", async () => {
        await store.insert(onSubmit('hooks.a'))
        const [first] = await box.claimMessages('s1', 1, LEASE, T0)
        expect(await claimAll('s2', T0 + LEASE - 1)).toEqual([])
        const [second] = await claimAll('s2', T0 + LEASE)
        expect(second).toStrictEqual({ ...first!, sender: 's2' })
        expect(await box.recordDelivery(first!, answered(T0 + LEASE, 200))).toBe(false)
        expect((await box.deliveries(first!.operationId))[0]).toMatchObject({ state: 'delivering', attempts: [] })
        // s2 fails and retries later; s1 claims it again, and its record of the first claim is refused.
        expect(await box.recordDelivery(second!, answered(T0 + LEASE, 503), T0 + LEASE + 10)).toBe(true)
        const [third] = await claimAll('s1', T0 + LEASE + 10)
        expect(third).toStrictEqual({ ...first!, attempts: 1 })
        expect(await box.recordDelivery(first!, answered(T0 + LEASE + 11, 200))).toBe(false)
        expect(await box.recordDelivery(second!, answered(T0 + LEASE + 11, 200))).toBe(false)
        expect(await box.recordDelivery(third!, answered(T0 + LEASE + 12, 204))).toBe(true)
        const [delivery] = await box.deliveries(first!.operationId)
        expect(delivery).toMatchObject({ state: 'delivered' })
        expect(delivery!.attempts.map((a) => a.status)).toEqual([503, 204])
        // A message delivered is held by none.
        expect(await box.recordDelivery(third!, answered(T0 + LEASE + 13, 200))).toBe(false)
      })

      it('makes a message retried pending until its retryAt, with the attempt recorded', async () => {
        const op = await store.insert(newOp({ ...subscribed(), cancelable: true }))
        await store.cancel(op.id, T0, T0 + RETAIN)
        const [message] = (await claimAll('s1', T0)).filter((m) => m.target === 'callback')
        expect((await store.get(op.id))!.callback).toStrictEqual({ ...CALLBACK, state: 'delivering', attempts: 0 })
        const attempt: DeliveryAttempt = { at: T0 + 1, durationMs: 30_000, ok: false, error: 'timed out' }
        expect(await box.recordDelivery(message!, attempt, T0 + 500)).toBe(true)
        const delivery = (await box.deliveries(op.id)).find((d) => d.id === message!.id)
        expect(delivery).toStrictEqual({
          id: message!.id,
          seq: message!.seq,
          event: 'canceled',
          target: 'callback',
          state: 'pending',
          nextAttemptAt: T0 + 500,
          attempts: [attempt],
        })
        expect((await store.get(op.id))!.callback).toStrictEqual({
          ...CALLBACK,
          state: 'pending',
          attempts: 1,
          lastAttemptAt: T0 + 1,
        })
        expect(await claimAll('s2', T0 + 499)).toEqual([])
        expect(await claimAll('s2', T0 + 500)).toStrictEqual([{ ...message!, attempts: 1, sender: 's2' }])
      })

      it("ends a message delivered or failed, and the operation's callback status follows its callback's", async () => {
        const ok = await finished('succeeded', T0 + RETAIN, subscribed())
        const ko = await finished('failed', T0 + RETAIN, subscribed())
        const claimed = await claimAll('s1', T0 + 10)
        const find = (op: Operation, target: string) =>
          claimed.find((m) => m.operationId === op.id && m.target === target && m.event !== 'submitted')!
        expect((await store.get(ok.id))!.callback!.state).toBe('delivering')
        expect(await box.recordDelivery(find(ok, 'callback'), answered(T0 + 11, 200))).toBe(true)
        expect(await box.recordDelivery(find(ko, 'callback'), answered(T0 + 12, 410))).toBe(true)
        // An endpoint's message leaves the callback status alone.
        expect(await box.recordDelivery(find(ok, 'hooks.a-1'), answered(T0 + 13, 500))).toBe(true)
        expect((await store.get(ok.id))!.callback).toStrictEqual({
          ...CALLBACK,
          state: 'delivered',
          attempts: 1,
          lastAttemptAt: T0 + 11,
          lastStatus: 200,
        })
        expect((await store.get(ko.id))!.callback).toStrictEqual({
          ...CALLBACK,
          state: 'failed',
          attempts: 1,
          lastAttemptAt: T0 + 12,
          lastStatus: 410,
        })
        expect(shape(await box.deliveries(ok.id))).toEqual([
          { event: 'submitted', target: 'hooks.a-1', state: 'delivering' },
          { event: 'succeeded', target: 'callback', state: 'delivered' },
          { event: 'succeeded', target: 'hooks.a-1', state: 'failed' },
        ])
        // Ended messages are claimed by no one, even once their lease would have lapsed.
        const left = await claimAll('s2', T0 + 10 + LEASE)
        expect(left.map((m) => m.event)).toEqual(['submitted', 'submitted'])
      })

      it('lists the deliveries of an operation with every attempt, oldest first', async () => {
        const op = await store.insert(onSubmit('hooks.a'))
        const attempts: DeliveryAttempt[] = [
          { at: T0 + 1, durationMs: 5, ok: false, error: 'connect ECONNREFUSED' },
          { at: T0 + 20, durationMs: 40, ok: false, status: 502, error: 'Bad Gateway' },
          { at: T0 + 300, durationMs: 7, ok: true, status: 200 },
        ]
        for (const [i, attempt] of attempts.entries()) {
          const [message] = await claimAll(`s${i}`, attempt.at)
          expect(message!.attempts).toBe(i)
          const last = i === attempts.length - 1
          expect(await box.recordDelivery(message!, attempt, last ? undefined : attempts[i + 1]!.at)).toBe(true)
        }
        const [delivery] = await box.deliveries(op.id)
        expect(delivery).toMatchObject({ event: 'submitted', target: 'hooks.a', state: 'delivered' })
        expect(delivery!.attempts).toStrictEqual(attempts)
        expect(delivery).not.toHaveProperty('nextAttemptAt')
      })

      it('redelivers the delivered and failed messages of an operation, due at once', async () => {
        const op = await finished('succeeded', T0 + RETAIN, subscribed())
        const other = await store.insert(onSubmit('hooks.a'))
        const mine = (await claimAll('s1', T0 + 10)).filter((m) => m.operationId === op.id)
        expect(mine).toHaveLength(3)
        // Delivered, failed, and one still being delivered, which stays so.
        await box.recordDelivery(mine[1]!, answered(T0 + 11, 200))
        await box.recordDelivery(mine[2]!, answered(T0 + 11, 500))
        expect(await box.redeliver(op.id, T0 + 50)).toBe(2)
        const deliveries = await box.deliveries(op.id)
        expect(deliveries.map((d) => [d.state, d.nextAttemptAt])).toEqual([
          ['delivering', undefined],
          ['pending', T0 + 50],
          ['pending', T0 + 50],
        ])
        expect((await store.get(op.id))!.callback).toMatchObject({ state: 'pending', attempts: 1, lastStatus: 200 })
        expect(await claimAll('s2', T0 + 49)).toEqual([])
        const again = await claimAll('s2', T0 + 50)
        expect(again.map((m) => [m.id, m.attempts])).toEqual([
          [mine[1]!.id, 1],
          [mine[2]!.id, 1],
        ])
        expect(await box.redeliver(other.id, T0 + 50)).toBe(0)
        expect(await box.redeliver('no-such-op', T0 + 50)).toBe(0)
      })

      it('fails the pending messages of a disabled target, and makes its later messages failed', async () => {
        const gone = await store.insert(onSubmit('hooks.gone'))
        const kept = await store.insert(onSubmit('hooks.kept'))
        const held = await store.insert(onSubmit('hooks.gone', { createdAt: T0 + 1 }))
        // One is being delivered: its sender records how that ends.
        const [delivering] = await box.claimMessages('s1', 1, LEASE, T0)
        expect(delivering!.operationId).toBe(gone.id)
        await box.disableTarget('hooks.gone', T0 + 2)
        expect(shape(await box.deliveries(held.id))).toEqual([
          { event: 'submitted', target: 'hooks.gone', state: 'failed' },
        ])
        expect(shape(await box.deliveries(gone.id))[0]!.state).toBe('delivering')
        expect(shape(await box.deliveries(kept.id))[0]!.state).toBe('pending')
        const later = await store.insert(onSubmit('hooks.gone', { createdAt: T0 + 3 }))
        const [made] = await box.deliveries(later.id)
        expect(made).toMatchObject({ state: 'failed', attempts: [] })
        expect(made).not.toHaveProperty('nextAttemptAt')
        expect((await claimAll('s2', T0 + 3)).map((m) => m.operationId)).toEqual([kept.id])
        // Disabling twice is fine.
        await box.disableTarget('hooks.gone', T0 + 4)
      })

      it('forgets the messages and attempts of deleted, purged and trimmed operations', async () => {
        const deleted = await finished('succeeded', T0 + RETAIN, subscribed())
        const purged = await finished('failed', T0 + 100, subscribed())
        const live = await store.insert(onSubmit('hooks.a'))
        for (const message of await claimAll('s1', T0 + 10)) {
          await box.recordDelivery(message, answered(T0 + 11, 500), T0 + 20)
        }
        expect(await store.delete(deleted.id)).toBe(true)
        expect(await store.purge(T0 + 100, 10)).toBe(1)
        expect(await box.deliveries(deleted.id)).toEqual([])
        expect(await box.deliveries(purged.id)).toEqual([])
        expect(await box.redeliver(deleted.id, T0 + 20)).toBe(0)
        expect((await claimAll('s2', T0 + 20)).map((m) => m.operationId)).toEqual([live.id])
        if (isTrimmable(store)) {
          const trimmed = await finished('canceled', T0 + RETAIN, subscribed())
          expect(await store.trim({ canceled: 0 }, 10)).toBe(1)
          expect(await box.deliveries(trimmed.id)).toEqual([])
        }
      })
    })

    describe('the transition table', () => {
      // Every action of TRANSITIONS on an operation in every state: the store changes it exactly
      // when the table allows the action from that state, and only to a state the table lists.
      const NOW = T0 + 10
      const OUTCOMES: Record<Outcome['state'], Outcome> = {
        succeeded: { state: 'succeeded', result: 1, expiresAt: T0 + RETAIN },
        failed: { state: 'failed', error: boom, expiresAt: T0 + RETAIN },
        canceled: { state: 'canceled', error: boom, expiresAt: T0 + RETAIN },
        queued: { state: 'queued', error: boom, runAt: NOW },
      }

      interface Case {
        action: Action
        state: OperationState
        /** Why the action does not apply although the table lists the state, or a variant of it. */
        variant?: 'lease expired' | 'not cancelable' | Outcome['state']
        changes: boolean
      }

      const cases: Case[] = []
      for (const action of Object.keys(TRANSITIONS) as Action[]) {
        for (const state of OPERATION_STATES) {
          const allowed = allows(action, state)
          if (action === 'claim' && state === 'running') {
            // Claimable only once its worker's lease expired.
            cases.push({ action, state, changes: false })
            cases.push({ action, state, variant: 'lease expired', changes: true })
          } else if (action === 'settle') {
            for (const outcome of Object.keys(OUTCOMES) as Outcome['state'][]) {
              cases.push({ action, state, variant: outcome, changes: allowed })
            }
          } else {
            cases.push({ action, state, changes: allowed })
            if (action === 'cancel') cases.push({ action, state, variant: 'not cancelable', changes: false })
          }
        }
      }

      async function inState(state: OperationState, cancelable: boolean): Promise<Operation> {
        if (state === 'queued') return store.insert(newOp({ cancelable }))
        if (state === 'running') return running({ cancelable })
        return finished(state, T0 + RETAIN, { name: 'work', cancelable })
      }

      function act(op: Operation, { action, variant }: Case): Promise<unknown> {
        // The lease the operation runs, or last ran, under.
        const lease = { id: op.id, attempt: op.attempt, worker: 'w1' }
        switch (action) {
          case 'claim':
            return store.claim(
              'w2',
              [{ name: op.name, limit: 1 }],
              LEASE,
              variant === 'lease expired' ? T0 + LEASE : NOW,
            )
          case 'settle':
            return store.settle(lease, OUTCOMES[variant as Outcome['state']], NOW)
          case 'release':
            return store.release(lease, NOW)
          case 'cancel':
            return store.cancel(op.id, NOW, T0 + RETAIN, 'bob')
          case 'retry':
            return store.requeue(op.id, 1, NOW, 'bob')
          case 'delete':
            return store.delete(op.id)
        }
      }

      it.each(cases)('$action on $state ($variant): changes it: $changes', async (c) => {
        const op = await inState(c.state, c.variant !== 'not cancelable')
        expect(op.state).toBe(c.state)
        const before = await store.get(op.id)
        const history = await store.history(op.id)
        await act(op, c)
        const after = await store.get(op.id)
        if (!c.changes) {
          expect(after).toStrictEqual(before)
          expect(await store.history(op.id)).toStrictEqual(history)
          return
        }
        expect(after).not.toStrictEqual(before)
        const reached = after?.state ?? 'deleted'
        expect(TRANSITIONS[c.action][c.state]).toContain(reached)
        if (c.action === 'settle') expect(reached).toBe(c.variant)
      })
    })
  })
}
