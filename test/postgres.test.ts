import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { afterEach, beforeEach, expect, it } from 'vitest'
import { Engine } from '../src/core/engine.js'
import { LongrunError } from '../src/core/errors.js'
import { silentLogger } from '../src/core/logger.js'
import type { FeedEntry, StoreNotice } from '../src/core/store.js'
import type { Operation } from '../src/core/types.js'
import { MIGRATIONS } from '../src/stores/postgres/migrations.js'
import { postgresStore, type PostgresStore, type PostgresStoreOptions } from '../src/stores/postgres/index.js'
import { describePostgres, dropSchema, freshSchemaName, sql } from './helpers/postgres.js'
import { until } from './helpers/child-server.js'
import { storeContract } from '../src/testing/index.js'
import { newOp, rejection, T0 } from './helpers/stores.js'

const LEASE = 1_000

describePostgres('postgres store', (url) => {
  // The contract injects every time, leases included: the store must take the caller's clock.
  storeContract('postgres', async () => {
    const schema = freshSchemaName()
    const store = postgresStore({ connectionString: url, schema, leaseClock: 'caller', max: 4 })
    await store.ready()
    return { store, cleanup: () => dropSchema(url, schema) }
  })

  storeContract('postgres (one row per INSERT)', async () => {
    const schema = freshSchemaName()
    const store = postgresStore({ connectionString: url, schema, leaseClock: 'caller', maxBatch: 1, max: 2 })
    await store.ready()
    return { store, cleanup: () => dropSchema(url, schema) }
  })
})

describePostgres('postgres store across nodes', (url) => {
  let schema: string
  const open: PostgresStore[] = []
  const openStore = (options: Partial<PostgresStoreOptions> = {}) => {
    const store = postgresStore({ connectionString: url, schema, max: 4, ...options })
    open.push(store)
    return store
  }

  beforeEach(() => {
    schema = freshSchemaName()
  })

  afterEach(async () => {
    await Promise.all(open.splice(0).map((store) => store.close()))
    await dropSchema(url, schema)
  })

  /** Waits until a store's listener has issued its LISTEN on this schema's channel. */
  const listening = (count = 1) =>
    until(
      async () =>
        (
          await sql<{ n: number }>(url, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = $1`, [
            `LISTEN "longrun_${schema}"`,
          ])
        )[0]!.n >= count,
      10_000,
    )

  it('feeds an event committed late with a smaller sequence number, never skipping it', async () => {
    const store = openStore()
    const early = await store.insert(newOp({ id: 'early' }))
    const start = (await store.feed({ limit: 10 })).cursor
    // A transaction takes its sequence number and stays open, while a later one commits.
    const client = new pg.Client({ connectionString: url })
    await client.connect()
    try {
      await client.query('BEGIN')
      await client.query(
        `INSERT INTO ${schema}.operation_events (operation_id, at, event, attempt) VALUES ($1, $2, 'cancel-requested', 0)`,
        [early.id, T0],
      )
      const late = await store.insert(newOp({ id: 'late' }))
      // Nothing may be read past the open transaction's event. (Events also wait for older
      // transactions anywhere in the cluster, as other test files run, so the feed is read until
      // both arrive: it never skips one, and may repeat one read before.)
      const meanwhile = await store.feed({ after: start, limit: 10 })
      const ours = (entries: FeedEntry[]) =>
        entries.filter((e) => e.operationId === late.id || e.event === 'cancel-requested')
      expect(ours(meanwhile.entries)).toEqual([])
      await client.query('COMMIT')
      let cursor = meanwhile.cursor
      const waited: FeedEntry[] = []
      await until(async () => {
        const page = await store.feed({ after: cursor, limit: 10 })
        cursor = page.cursor
        waited.push(...ours(page.entries))
        return waited.length >= 2
      }, 20_000)
      expect(waited.map((e) => [e.operationId, e.event])).toEqual([
        [early.id, 'cancel-requested'],
        [late.id, 'submitted'],
      ])
      // The smaller sequence number came first, in commit order.
      expect(waited[0]!.seq).toBeLessThan(waited[1]!.seq)
    } finally {
      await client.end()
    }
  })

  it('applies the migrations once when five nodes start at the same moment', async () => {
    const stores = Array.from({ length: 5 }, () => openStore())
    await Promise.all(stores.map((store) => store.ready()))
    const applied = await sql<{ version: number }>(url, `SELECT version FROM ${schema}.migrations ORDER BY version`)
    expect(applied.map((row) => row.version)).toEqual(MIGRATIONS.map((m) => m.version))
    // Every node works on the one schema.
    await stores[0]!.insert(newOp({ id: 'shared' }))
    for (const store of stores) expect((await store.get('shared'))?.state).toBe('queued')
  })

  it('refuses a schema newer than it knows, at ready() and at every call, and leaves it alone', async () => {
    await openStore().ready()
    const latest = MIGRATIONS[MIGRATIONS.length - 1]!.version
    await sql(url, `INSERT INTO ${schema}.migrations (version, name) VALUES ($1, 'from the future')`, [latest + 1])
    const store = openStore()
    const err = await rejection(store.ready())
    expect(err).toBeInstanceOf(LongrunError)
    expect((err as LongrunError).code).toBe('schema-too-new')
    expect(((await rejection(store.get('x'))) as LongrunError).code).toBe('schema-too-new')
    const applied = await sql<{ version: number }>(url, `SELECT version FROM ${schema}.migrations ORDER BY version`)
    expect(applied.map((row) => row.version)).toEqual([...MIGRATIONS.map((m) => m.version), latest + 1])
  })

  it('rejects ready() and every call while the database is unreachable, and closes cleanly', async () => {
    const store = postgresStore({ host: '127.0.0.1', port: 1, user: 'postgres', database: 'test', schema })
    const err = (await rejection(store.ready())) as { code?: string }
    expect(err.code).toBe('ECONNREFUSED')
    // Calls answer what HTTP shows as 503 store-unavailable, with the driver's error as the cause.
    const got = (await rejection(store.get('x'))) as { code?: string; cause?: { code?: string } }
    expect(got.code).toBe('store-unavailable')
    expect(got.cause?.code).toBe('ECONNREFUSED')
    await store.close()
  })

  it('delivers queued, changed and cancel-requested notices to another instance, not to the writer', async () => {
    const writer = openStore({ leaseClock: 'caller' })
    const reader = openStore({ leaseClock: 'caller' })
    const heard: StoreNotice[] = []
    const echoed: StoreNotice[] = []
    reader.subscribe((notice) => heard.push(notice))
    writer.subscribe((notice) => echoed.push(notice))
    await Promise.all([writer.ready(), reader.ready()])
    await listening(2)

    await writer.insert(newOp({ id: 'n1', name: 'mail' }))
    await until(() => heard.some((n) => n.kind === 'queued' && n.name === 'mail'), 5_000)
    const [claimed] = await writer.claim('w1', [{ name: 'mail', limit: 1 }], LEASE, T0)
    await until(() => heard.some((n) => n.kind === 'changed' && n.id === 'n1'), 5_000)
    await writer.cancel(claimed!.id, T0 + 1, T0 + 2)
    await until(() => heard.some((n) => n.kind === 'cancel-requested' && n.id === 'n1'), 5_000)
    // A heartbeat changes nothing anyone watches: no notice.
    const before = heard.length
    await writer.heartbeat({ id: 'n1', attempt: 1, worker: 'w1' }, LEASE, T0 + 3)
    await writer.progress({ id: 'n1', attempt: 1, worker: 'w1' }, { percent: 50 }, T0 + 4)
    await until(() => heard.length > before, 5_000)
    expect(heard.slice(before)).toEqual([{ kind: 'changed', id: 'n1' }])
    expect(echoed).toEqual([])
  })

  it('reconnects its listener when the connection drops, and claims at once in case it missed a notice', async () => {
    const writer = openStore({ leaseClock: 'caller' })
    const reader = openStore({ leaseClock: 'caller' })
    const heard: StoreNotice[] = []
    reader.subscribe((notice) => heard.push(notice))
    await reader.claim('w1', [{ name: 'report', limit: 1 }], LEASE, T0)
    await listening()
    await sql(url, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1`, [
      `LISTEN "longrun_${schema}"`,
    ])
    // Back on a new connection: it says that 'report' may have work waiting.
    await until(() => heard.some((n) => n.kind === 'queued' && n.name === 'report'), 10_000)
    await listening()
    await writer.insert(newOp({ id: 'after', name: 'mail' }))
    await until(() => heard.some((n) => n.kind === 'queued' && n.name === 'mail'), 5_000)
  })

  it('wakes a worker engine and forwards a cancel to it at once, polling only every 30 s', async () => {
    const slow = { poll: '30s', lease: '30s' } as const
    const api = new Engine({ store: openStore(), worker: false, ...slow })
    const worker = new Engine({ store: openStore(), ...slow })
    const started: string[] = []
    const definition = {
      name: 'wait',
      handler: async (op: { id: string; signal: AbortSignal }) => {
        started.push(op.id)
        await new Promise((_, reject) => op.signal.addEventListener('abort', () => reject(op.signal.reason)))
      },
    }
    api.define(definition)
    worker.define(definition)
    api.start()
    worker.start()
    try {
      await listening(2)
      const op = await api.submit('wait')
      const submittedAt = Date.now()
      await until(() => started.includes(op.id), 5_000, { interval: 10 })
      expect(Date.now() - submittedAt).toBeLessThan(2_000)
      await api.cancel(op.id)
      const canceledAt = Date.now()
      await until(async () => (await api.get(op.id)).state === 'canceled', 5_000, { interval: 10 })
      // Long before the next heartbeat (10 s) could have told the worker.
      expect(Date.now() - canceledAt).toBeLessThan(2_000)
    } finally {
      await Promise.all([api.close(), worker.close()])
    }
  })

  it('shows a progress update made through one instance to another with its own pool', async () => {
    const worker = openStore({ leaseClock: 'caller' })
    const api = openStore({ leaseClock: 'caller' })
    await api.insert(newOp({ id: 'p1' }))
    const [op] = await worker.claim('w1', [{ name: 'work', limit: 1 }], LEASE, T0)
    expect(await worker.progress({ id: op!.id, attempt: 1, worker: 'w1' }, { percent: 42, step: 'halfway' }, T0)).toBe(
      true,
    )
    expect((await api.get('p1'))?.progress).toStrictEqual({ percent: 42, step: 'halfway' })
  })

  it('makes one operation for concurrent uses of one idempotency key through several instances', async () => {
    const stores = Array.from({ length: 4 }, () => openStore({ leaseClock: 'caller' }))
    await Promise.all(stores.map((store) => store.ready()))
    const key = { scope: 'alice\u0000work', key: 'k1', fingerprint: 'fp', expiresAt: T0 + 60_000 }
    const results = await Promise.all(
      Array.from({ length: 40 }, (_, i) => stores[i % 4]!.insertIdempotent(newOp({ id: `idem-${i}` }), key, T0)),
    )
    const inserted = results.filter((r) => r.kind === 'inserted')
    expect(inserted).toHaveLength(1)
    const { id } = (inserted[0] as { op: Operation }).op
    expect(results.every((r) => r.kind === 'replayed' || r.kind === 'inserted')).toBe(true)
    expect(results.every((r) => r.kind !== 'mismatch' && r.op.id === id)).toBe(true)
    expect((await stores[0]!.list({ limit: 100 })).items.map((op) => op.id)).toEqual([id])
  })

  it('never hands one operation to two of many instances claiming at once', async () => {
    const stores = Array.from({ length: 4 }, () => openStore({ leaseClock: 'caller' }))
    await Promise.all(Array.from({ length: 200 }, (_, i) => stores[0]!.insert(newOp({ id: `c-${i}` }))))
    const claims = await Promise.all(
      Array.from({ length: 80 }, (_, i) => stores[i % 4]!.claim(`w${i % 4}`, [{ name: 'work', limit: 5 }], LEASE, T0)),
    )
    const claimed = claims.flat().map((op) => op.id)
    expect(new Set(claimed).size).toBe(claimed.length)
    expect(claimed).toHaveLength(200)
  })

  it('runs leases on the database clock, whatever the callers clocks say', async () => {
    const store = openStore()
    await store.insert(newOp({ id: 'clocked' }))
    const before = Date.now()
    // This caller's clock is years behind; the lease still runs from the server's now.
    const [op] = await store.claim('slow-clock', [{ name: 'work', limit: 1 }], LEASE, T0)
    expect(op!.startedAt).toBe(T0)
    expect(op!.leaseExpiresAt).toBeGreaterThanOrEqual(before + LEASE - 2_000)
    expect(op!.leaseExpiresAt).toBeLessThanOrEqual(Date.now() + LEASE + 2_000)
    // A caller whose clock runs an hour ahead cannot take a lease that has not lapsed.
    expect(await store.claim('fast-clock', [{ name: 'work', limit: 1 }], LEASE, Date.now() + 3_600_000)).toEqual([])
    // Heartbeats extend it on the server's clock too.
    await sleep(LEASE / 2)
    const lease = { id: 'clocked', attempt: 1, worker: 'slow-clock' }
    expect(await store.heartbeat(lease, LEASE, T0)).toEqual({ held: true, cancelRequested: false })
    const extended = (await store.get('clocked'))!.leaseExpiresAt!
    expect(extended).toBeGreaterThan(op!.leaseExpiresAt!)
    // Once it lapsed on the server's clock, even the slow caller takes it over.
    await until(
      async () => (await store.claim('slow-2', [{ name: 'work', limit: 1 }], LEASE, T0)).length === 1,
      5_000,
      {
        interval: 100,
      },
    )
    expect(Date.now()).toBeGreaterThanOrEqual(extended - 50)
    expect((await store.history('clocked')).map((e) => e.event)).toEqual([
      'submitted',
      'started',
      'lease-lost',
      'started',
    ])
  })

  it('commits inserts issued together in one statement, rejecting only the bad ones', async () => {
    const store = openStore()
    await store.insert(newOp({ id: 'existing', input: 'original' }))
    const writes = [
      ...Array.from({ length: 300 }, (_, i) => store.insert(newOp({ id: `ok-${i}` }))),
      store.insert(newOp({ id: 'existing', input: 'impostor' })),
      store.insert(newOp({ id: 'nul', input: 'a\u0000b' })),
      store.insert(newOp({ id: 'ok-7', input: 'twin in the same batch' })),
    ]
    const results = await Promise.allSettled(writes)
    const rejected = results.flatMap((r, i) =>
      r.status === 'rejected' ? [{ i, code: (r.reason as LongrunError).code }] : [],
    )
    expect(rejected).toEqual([
      { i: 300, code: 'duplicate-operation-id' },
      { i: 301, code: 'unsupported-value' },
      { i: 302, code: 'duplicate-operation-id' },
    ])
    const page = await store.list({ limit: 1_000 })
    expect(page.items).toHaveLength(301)
    // In submission order.
    expect(page.items.map((op) => op.id).slice(0, 3)).toEqual(['ok-299', 'ok-298', 'ok-297'])
    expect((await store.get('ok-7'))?.input).toEqual({ id: 'ok-7' })
  })

  it('commits writes issued before close() and rejects those issued after', async () => {
    const store = openStore()
    await store.ready()
    const inserted = store.insert(newOp({ id: 'in-flight' }))
    const closed = store.close()
    expect(store.close()).toBe(closed)
    await closed
    expect((await inserted).id).toBe('in-flight')
    expect(((await rejection(store.insert(newOp({ id: 'too-late' })))) as LongrunError).code).toBe('store-closed')
    expect(((await rejection(store.get('in-flight'))) as LongrunError).code).toBe('store-closed')
    expect((await openStore().get('in-flight'))?.state).toBe('queued')
  })

  it('keeps answering, unprepared, when a newer node adds a column under its prepared statements', async () => {
    const warnings: string[] = []
    const logger = { ...silentLogger, warn: (_: object | string, msg?: string) => void warnings.push(msg ?? '') }
    // One connection: the statements prepared by the first calls are those the later ones meet.
    const store = openStore({ leaseClock: 'caller', max: 1, logger })
    await store.insert(newOp({ id: 'shape-1' }))
    expect((await store.get('shape-1'))?.state).toBe('queued')
    await sql(url, `ALTER TABLE ${schema}.operations ADD COLUMN from_the_future INTEGER`)
    expect((await store.get('shape-1'))?.state).toBe('queued')
    await store.insert(newOp({ id: 'shape-2' }))
    const claimed = await store.claim('w1', [{ name: 'work', limit: 2 }], LEASE, T0)
    expect(claimed.map((op) => op.id)).toEqual(['shape-1', 'shape-2'])
    const settled = await store.settle(
      { id: 'shape-1', attempt: 1, worker: 'w1' },
      { state: 'succeeded', result: 1, expiresAt: T0 + 60_000 },
      T0,
    )
    expect(settled?.state).toBe('succeeded')
    expect(warnings).toEqual(['longrun: prepared statements fail here; running them unprepared'])
  })
})
