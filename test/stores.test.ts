import { mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest'
import { LongrunError } from '../src/core/errors.js'
import type { Store } from '../src/core/store.js'
import { memoryStore } from '../src/stores/memory/index.js'
import { sqliteStore } from '../src/stores/sqlite/index.js'
import { MIGRATIONS } from '../src/stores/sqlite/migrations.js'
import { storeContract } from 'longrun/testing'
import { newOp, rejection, T0 } from './helpers/stores.js'

const dir = mkdtempSync(join(tmpdir(), 'longrun-stores-'))
let files = 0
const freshPath = () => join(dir, `store-${++files}.db`)

afterAll(() => {
  rmSync(dir, { recursive: true, force: true })
})

storeContract('memory', async () => ({ store: memoryStore() }))

storeContract('sqlite', async () => {
  const path = freshPath()
  return {
    store: sqliteStore({ path }),
    cleanup: async () => {
      for (const suffix of ['', '-wal', '-shm']) rmSync(path + suffix, { force: true })
    },
  }
})

storeContract('sqlite (synchronous NORMAL)', async () => ({
  store: sqliteStore({ path: freshPath(), synchronous: 'NORMAL' }),
}))

storeContract('sqlite (:memory:)', async () => ({ store: sqliteStore({ path: ':memory:' }) }))

/** This process's open file descriptors on `path` or its WAL/SHM siblings (Linux only). */
function openFilesUnder(path: string): string[] {
  return readdirSync('/proc/self/fd').flatMap((fd) => {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`)
      return target.startsWith(path) ? [target] : []
    } catch {
      return []
    }
  })
}

describe('sqlite store', () => {
  let path: string
  const open: Store[] = []
  const openStore = () => {
    const store = sqliteStore({ path })
    open.push(store)
    return store
  }

  beforeEach(() => {
    path = freshPath()
  })

  afterEach(async () => {
    await Promise.all(open.splice(0).map((store) => store.close()))
  })

  it('keeps operations across close and reopen of the same file', async () => {
    const first = openStore()
    const done = await first.insert(newOp({ id: 'done', owner: 'alice', input: { deep: [1, { x: 'y' }] } }))
    await first.insert(newOp({ id: 'waiting', createdAt: T0 + 1 }))
    const [claimed] = await first.claim('w1', [{ name: 'work', limit: 1 }], 1_000, T0 + 2)
    expect(claimed?.id).toBe(done.id)
    await first.progress({ id: done.id, attempt: 1, worker: 'w1' }, { percent: 80, step: 'almost' }, T0)
    const settled = await first.settle(
      { id: done.id, attempt: 1, worker: 'w1' },
      { state: 'succeeded', result: { answer: 42 }, expiresAt: T0 + 9_999 },
      T0 + 3,
    )
    const before = (await first.list({ limit: 10 })).items
    await first.close()

    const second = openStore()
    expect(await second.get('done')).toStrictEqual(settled)
    expect((await second.list({ limit: 10 })).items).toStrictEqual(before)
    // The reopened store carries on where the first left off.
    const [next] = await second.claim('w2', [{ name: 'work', limit: 5 }], 1_000, T0 + 4)
    expect(next).toMatchObject({ id: 'waiting', attempt: 1, worker: 'w2' })
  })

  it('commits writes issued before close() and rejects those issued after', async () => {
    const store = openStore()
    const inserted = store.insert(newOp({ id: 'in-flight' }))
    const closed = store.close()
    expect(store.close()).toBe(closed)
    await closed
    expect((await inserted).id).toBe('in-flight')
    const err = await rejection(store.insert(newOp({ id: 'too-late' })))
    expect((err as LongrunError).code).toBe('store-closed')

    const reopened = openStore()
    expect((await reopened.get('in-flight'))?.state).toBe('queued')
    expect(await reopened.get('too-late')).toBeUndefined()
  })

  it('refuses a file whose schema is newer than it knows', async () => {
    await openStore().close()
    const db = new Database(path)
    const latest = MIGRATIONS[MIGRATIONS.length - 1]!.version
    db.pragma(`user_version = ${latest + 1}`)
    db.close()

    let err: unknown
    try {
      openStore()
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(LongrunError)
    expect((err as LongrunError).code).toBe('schema-too-new')
    // The refused file is not left open behind the error.
    if (process.platform === 'linux') expect(openFilesUnder(path)).toEqual([])
  })

  it('migrates a new file to the latest schema version', async () => {
    await openStore().close()
    const db = new Database(path, { readonly: true })
    expect(db.pragma('user_version', { simple: true })).toBe(MIGRATIONS[MIGRATIONS.length - 1]!.version)
    db.close()
    // Opening an up-to-date file again is a no-op migration.
    expect(await openStore().get('nothing')).toBeUndefined()
  })

  it('upgrades a file of schema version 2, whose operations have no submitted or progress events', async () => {
    const db = new Database(path)
    for (const migration of MIGRATIONS.filter((m) => m.version <= 2)) db.exec(migration.sql)
    db.pragma('user_version = 2')
    db.prepare(
      `INSERT INTO operations (id, name, state, owner, input, params, query, headers, max_attempts, cancelable,
         created_at, run_at, attempt) VALUES ('old', 'work', 'queued', NULL, '{}', '{}', '{}', '{}', 1, 1, ?, ?, 1)`,
    ).run(T0, T0)
    db.prepare(
      `INSERT INTO operation_events (operation_id, at, event, attempt, worker) VALUES ('old', ?, 'started', 1, 'w1')`,
    ).run(T0)
    db.close()

    const store = openStore()
    expect(await store.history('old')).toStrictEqual([{ seq: 1, at: T0, event: 'started', attempt: 1, worker: 'w1' }])
    await store.insert(newOp({ id: 'new' }))
    expect((await store.events('new', { limit: 10 })).map((e) => e.event)).toEqual(['submitted'])
  })

  it('commits 500 inserts issued in the same tick, every one readable afterwards', async () => {
    const store = openStore()
    const ids = Array.from({ length: 500 }, (_, i) => `bulk-${i}`)
    const inserted = await Promise.all(ids.map((id, i) => store.insert(newOp({ id, input: { i } }))))
    expect(inserted.map((op) => op.id)).toEqual(ids)
    const page = await store.list({ limit: 1_000 })
    expect(page.items.map((op) => op.id)).toEqual([...ids].reverse())
    for (const [i, id] of ids.entries()) expect((await store.get(id))?.input).toEqual({ i })
  })

  it('rejects only the failing write of a group commit; the others commit', async () => {
    const store = openStore()
    await store.insert(newOp({ id: 'existing', input: 'original' }))
    const writes = [
      ...Array.from({ length: 50 }, (_, i) => store.insert(newOp({ id: `ok-${i}` }))),
      store.insert(newOp({ id: 'existing', input: 'impostor' })),
      ...Array.from({ length: 50 }, (_, i) => store.insert(newOp({ id: `ok-${50 + i}` }))),
      store.insert(newOp({ id: 'ok-7', input: 'twin in the same batch' })),
    ]
    const results = await Promise.allSettled(writes)
    const rejected = results.flatMap((r, i) => (r.status === 'rejected' ? [{ i, reason: r.reason as unknown }] : []))
    expect(rejected.map((r) => r.i)).toEqual([50, 101])
    for (const { reason } of rejected) {
      expect(reason).toBeInstanceOf(LongrunError)
      expect((reason as LongrunError).code).toBe('duplicate-operation-id')
    }
    await store.close()

    // Reopening proves the batch committed rather than sitting in an open transaction.
    const reopened = openStore()
    expect((await reopened.list({ limit: 1_000 })).items).toHaveLength(101)
    expect((await reopened.get('existing'))?.input).toBe('original')
    expect((await reopened.get('ok-7'))?.input).toEqual({ id: 'ok-7' })
    for (let i = 0; i < 100; i++) expect(await reopened.get(`ok-${i}`), `ok-${i}`).toBeDefined()
  })

  it('reports a write SQLite refuses with the SQLite error, and commits the rest of its group', async () => {
    const store = openStore()
    const writes = [
      store.insert(newOp({ id: 'fine' })),
      store.insert(newOp({ id: 'broken', name: null as unknown as string })),
    ]
    const [fine, broken] = (await Promise.allSettled(writes)) as [PromiseSettledResult<unknown>, PromiseRejectedResult]
    expect(fine.status).toBe('fulfilled')
    expect(broken.status).toBe('rejected')
    const err = broken.reason as Error & { code: string }
    expect(err).toBeInstanceOf(Database.SqliteError)
    expect(err.code).toBe('SQLITE_CONSTRAINT_NOTNULL')
    expect(await store.get('fine')).toBeDefined()
  })

  it('fails only the write whose arguments JSON cannot encode', async () => {
    const store = openStore()
    const writes = [store.insert(newOp({ id: 'fine' })), store.insert(newOp({ id: 'bigint', input: { n: 1n } }))]
    const [fine, bigint] = (await Promise.allSettled(writes)) as [PromiseSettledResult<unknown>, PromiseRejectedResult]
    expect(fine.status).toBe('fulfilled')
    expect(bigint.reason).toBeInstanceOf(TypeError)
    expect(await store.get('bigint')).toBeUndefined()
  })

  it('reads what an awaited write committed, from its own connection', async () => {
    const store = openStore()
    for (let i = 0; i < 20; i++) {
      const op = await store.insert(newOp({ id: `seen-${i}` }))
      expect(await store.get(op.id)).toStrictEqual(op)
      const [claimed] = await store.claim('w', [{ name: 'work', limit: 1 }], 1_000, T0 + i)
      expect((await store.get(claimed!.id))?.state).toBe('running')
    }
  })

  it('lets two stores on the same file claim each operation once', async () => {
    const a = openStore()
    const b = openStore()
    await Promise.all(Array.from({ length: 40 }, (_, i) => a.insert(newOp({ id: `shared-${i}` }))))
    const claims = await Promise.all(
      Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).claim(`w${i % 2}`, [{ name: 'work', limit: 3 }], 1_000, T0)),
    )
    const claimed = claims.flat().map((op) => op.id)
    expect(claimed).toHaveLength(40)
    expect(new Set(claimed).size).toBe(40)
  })
})
