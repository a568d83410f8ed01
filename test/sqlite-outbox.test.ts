import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, expect, it } from 'vitest'
import type { Store } from '../src/core/store.js'
import { newOp, T0 } from '../src/testing/index.js'
import { sqliteStore } from '../src/stores/sqlite/index.js'

// The outbox of one SQLite file shared by several processes (each with its own connection), and
// across restarts: what the store contract cannot show with one store instance.

const LEASE = 1_000
const dir = mkdtempSync(join(tmpdir(), 'longrun-outbox-'))
const open: Store[] = []
let files = 0

afterEach(async () => {
  await Promise.all(open.splice(0).map((store) => store.close()))
})

afterAll(() => {
  rmSync(dir, { recursive: true, force: true })
})

function openStores(count: number) {
  const path = join(dir, `outbox-${++files}.db`)
  const reopen = () => {
    const store = sqliteStore({ path })
    open.push(store)
    return store
  }
  return { stores: Array.from({ length: count }, reopen), reopen }
}

it('hands each message to one of the connections claiming at once', async () => {
  const { stores } = openStores(3)
  const subscriptions = [{ target: 'hooks.a', events: ['submitted' as const] }]
  for (let i = 0; i < 30; i++) await stores[i % 3]!.insert(newOp({ id: `m-${i}`, subscriptions }))
  const claims = await Promise.all(
    Array.from({ length: 15 }, (_, i) => stores[i % 3]!.claimMessages(`s${i}`, 3, LEASE, T0)),
  )
  const claimed = claims.flat()
  expect(new Set(claimed.map((m) => m.id)).size).toBe(claimed.length)
  expect(claimed).toHaveLength(30)
})

it('keeps messages, attempts, callback status and disabled targets across a restart', async () => {
  const { stores, reopen } = openStores(1)
  const first = stores[0]!
  const callback = { url: 'https://r.test/', method: 'POST', contentType: 'application/json', headers: {} } as const
  await first.insert(
    newOp({
      id: 'kept',
      callback: { ...callback, sendResult: true },
      subscriptions: [{ target: 'callback', events: ['submitted'] }],
    }),
  )
  const [message] = await first.claimMessages('s1', 1, LEASE, T0)
  expect(await first.recordDelivery(message!, { at: T0 + 1, durationMs: 2, ok: false, status: 500 }, T0 + 50)).toBe(
    true,
  )
  await first.disableTarget('hooks.gone', T0)
  await first.close()

  const second = reopen()
  expect((await second.get('kept'))!.callback).toMatchObject({ state: 'pending', attempts: 1, lastStatus: 500 })
  expect(await second.claimMessages('s2', 1, LEASE, T0 + 50)).toMatchObject([{ id: message!.id, attempts: 1 }])
  await second.insert(newOp({ id: 'later', subscriptions: [{ target: 'hooks.gone', events: ['submitted'] }] }))
  expect(await second.deliveries('later')).toMatchObject([{ target: 'hooks.gone', state: 'failed' }])
})
