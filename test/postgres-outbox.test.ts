import pg from 'pg'
import { afterEach, beforeEach, expect, it } from 'vitest'
import { newOp, T0 } from '../src/testing/index.js'
import type { Operation } from '../src/core/types.js'
import { describePostgres, dropSchema, freshSchemaName } from './helpers/postgres.js'
import { postgresStore, type PostgresStore, type PostgresStoreOptions } from '../src/stores/postgres/index.js'

// The outbox across nodes: what the store contract cannot show with one store instance.

const LEASE = 1_000

describePostgres('postgres outbox across nodes', (url) => {
  let schema: string
  const open: PostgresStore[] = []
  const openStore = (options: Partial<PostgresStoreOptions> = {}) => {
    const store = postgresStore({ connectionString: url, schema, max: 4, leaseClock: 'caller', ...options })
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

  it('delivers each message once, with one id, when two API nodes and two workers claim at once', async () => {
    const [api1, api2, worker1, worker2] = [openStore(), openStore(), openStore(), openStore()]
    await Promise.all(open.map((store) => store.ready()))
    const subscriptions = [{ target: 'callback', events: ['succeeded' as const] }]
    const callback = { url: 'https://r.test/', method: 'POST', contentType: 'application/json', headers: {} } as const
    await Promise.all(
      Array.from({ length: 60 }, (_, i) =>
        (i % 2 ? api1 : api2).insert(
          newOp({ id: `n-${i}`, callback: { ...callback, sendResult: false }, subscriptions }),
        ),
      ),
    )
    const workers = [worker1!, worker2!]
    const settled: Operation[] = []
    for (let round = 0; settled.length < 60; round++) {
      const worker = workers[round % 2]!
      const claimed = await worker.claim(`w${round % 2}`, [{ name: 'work', limit: 25 }], LEASE, T0)
      for (const op of claimed) {
        const lease = { id: op.id, attempt: op.attempt, worker: op.worker! }
        settled.push((await worker.settle(lease, { state: 'succeeded', result: 1, expiresAt: T0 + 1e9 }, T0))!)
      }
    }
    // Every node sends: 4 stores x 10 concurrent claims of 3 each, more than there are messages.
    const claims = await Promise.all(
      Array.from({ length: 40 }, (_, i) => open[i % 4]!.claimMessages(`sender-${i}`, 3, LEASE, T0)),
    )
    const claimed = claims.flat()
    expect(new Set(claimed.map((m) => m.id)).size).toBe(claimed.length)
    const rest = await api1!.claimMessages('sweeper', 100, LEASE, T0)
    const all = [...claimed, ...rest]
    expect(all).toHaveLength(60)
    expect(new Set(all.map((m) => m.operationId)).size).toBe(60)
    const recorded = await Promise.all(
      all.map((message, i) =>
        open[i % 4]!.recordDelivery(message, { at: T0 + 1, durationMs: 3, ok: true, status: 200 }),
      ),
    )
    expect(recorded.every(Boolean)).toBe(true)
    for (const op of settled.slice(0, 5)) {
      const [delivery] = await worker2!.deliveries(op.id)
      expect(delivery).toMatchObject({ target: 'callback', state: 'delivered' })
      expect(delivery!.attempts).toHaveLength(1)
      expect((await api2!.get(op.id))!.callback).toMatchObject({ state: 'delivered', attempts: 1, lastStatus: 200 })
    }
    expect(await worker1!.claimMessages('late', 100, LEASE, T0 + 10 * LEASE)).toEqual([])
  })

  it('runs message leases on the database clock, whatever the callers clocks say', async () => {
    const store = openStore({ leaseClock: 'database' })
    await store.insert(newOp({ id: 'clocked', subscriptions: [{ target: 'hooks.a', events: ['submitted'] }] }))
    const [message] = await store.claimMessages('slow-clock', 1, LEASE, T0)
    expect(message?.operationId).toBe('clocked')
    // The caller's clock says the lease lapsed long ago; the server's says it holds.
    expect(await store.claimMessages('fast-clock', 1, LEASE, Date.now() + 10 * LEASE)).toEqual([])
  })

  it('notifies the new pending messages of a statement, once per target', async () => {
    const store = openStore()
    await store.ready()
    const listener = new pg.Client({ connectionString: url })
    await listener.connect()
    try {
      const payloads: string[] = []
      listener.on('notification', (message) => {
        if (message.payload?.includes(' m ')) payloads.push(message.payload)
      })
      await listener.query(`LISTEN longrun_${schema}`)
      const subscriptions = [{ target: 'hooks.a', events: ['submitted' as const] }]
      await Promise.all([store.insert(newOp({ subscriptions })), store.insert(newOp({ subscriptions }))])
      await store.disableTarget('hooks.gone', T0)
      await store.insert(newOp({ subscriptions: [{ target: 'hooks.gone', events: ['submitted'] }] }))
      await store.insert(newOp())
      await listener.query('SELECT 1')
      for (let i = 0; i < 50 && payloads.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 10))
      expect(payloads.map((payload) => payload.split(' ').slice(1).join(' '))).toEqual(['m hooks.a'])
    } finally {
      await listener.end()
    }
  })
})
