import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import Database from 'better-sqlite3'
import { sqliteStore } from 'longrun/sqlite'
import { v7 as uuidv7 } from 'uuid'
import { MIGRATIONS } from '../../src/stores/sqlite/migrations.js'

// The SQLite file of the query scenario: `count` operations of several names, owners and states
// over 30 days, with their history, written straight into the store's own tables (schema made by the
// store) in one transaction, and cached. See "Query, retention and cleanup" in bench/README.md.

/** Bump when the rows written below change, so that stale caches are rebuilt. */
export const SEED_VERSION = 1
const DAY = 86_400_000
/** Never reached: rows that no cleanup may remove by time. */
export const FAR_EXPIRY = Date.UTC(2100, 0, 1)
/** The oldest this many finished operations expired long ago: what one cleanup run purges. */
export const EXPIRED = 100_000
/** The newest this many operations are live: half queued, half running (a lease that never lapses). */
export const LIVE = 10_000
export const OWNERS = 1_000
export const NAMES = ['report.generate', 'invoice.send', 'export.csv', 'image.resize', 'crm.sync'] as const
/** How often each name occurs, in the order of NAMES. */
const NAME_WEIGHTS = [0.4, 0.25, 0.15, 0.12, 0.08]
export const CUSTOMER_PREFIXES = ['acme', 'globex', 'initech', 'umbrella', 'hooli'] as const
/** Customers per prefix: `acme-0` .. `acme-9999`. */
export const CUSTOMERS_PER_PREFIX = 10_000
export const REGIONS = ['eu', 'us', 'ap', 'sa'] as const

/** A small seeded PRNG (mulberry32): the same file every time it is made. */
export function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296
  }
}

export const ownerId = (n: number) => `user-${String(n).padStart(4, '0')}`

export interface Seeded {
  path: string
  /** Seconds it took to make the file; 0 when it came from the cache. */
  seedSeconds: number
  cached: boolean
  sizeMiB: number
  /** The newest `createdAt` of the file: the seed's "now" minus a minute. */
  endAt: number
}

export function seedPath(dir: string, count: number): string {
  const schema = createHash('sha256')
    .update(JSON.stringify(MIGRATIONS))
    .update(String(SEED_VERSION))
    .digest('hex')
    .slice(0, 12)
  return join(dir, `query-${count}-${schema}.db`)
}

/** Makes the seeded file once under `dir`; later calls answer the cached one. */
export async function ensureQuerySeed(dir: string, count: number, log: (line: string) => void): Promise<Seeded> {
  const path = seedPath(dir, count)
  if (existsSync(path)) {
    return { path, seedSeconds: 0, cached: true, sizeMiB: statSync(path).size / 1_048_576, endAt: readEnd(path) }
  }
  mkdirSync(dir, { recursive: true })
  const tmp = `${path}.tmp-${process.pid}`
  for (const suffix of ['', '-wal', '-shm', '-journal']) rmSync(tmp + suffix, { force: true })
  const t0 = performance.now()
  log(`query seed: writing ${count.toLocaleString('en-US')} operations to ${path} (once; cached afterwards)`)
  // The store creates the schema exactly as it would for a new deployment.
  await sqliteStore({ path: tmp }).close()
  const db = new Database(tmp)
  let endAt: number
  try {
    db.pragma('journal_mode = OFF')
    db.pragma('synchronous = OFF')
    db.pragma('cache_size = -524288')
    endAt = write(db, count)
    db.pragma('journal_mode = WAL')
  } finally {
    db.close()
  }
  const seedSeconds = (performance.now() - t0) / 1000
  await verify(tmp, count)
  renameSync(tmp, path)
  const sizeMiB = statSync(path).size / 1_048_576
  log(`query seed: done in ${seedSeconds.toFixed(1)} s (${sizeMiB.toFixed(0)} MiB), checked through the store`)
  return { path, seedSeconds, cached: false, sizeMiB, endAt }
}

function readEnd(path: string): number {
  const db = new Database(path, { readonly: true })
  try {
    return (db.prepare('SELECT max(created_at) AS at FROM operations').get() as { at: number }).at
  } finally {
    db.close()
  }
}

function pick<T>(items: readonly T[], weights: readonly number[], r: number): T {
  let sum = 0
  for (let i = 0; i < items.length; i++) {
    sum += weights[i]!
    if (r < sum) return items[i]!
  }
  return items[items.length - 1]!
}

/** Writes the rows as the store's writes (src/stores/sqlite/writes.ts) leave them; returns the newest createdAt. */
function write(db: Database.Database, count: number): number {
  const random = prng(20261203)
  const insert = db.prepare(
    `INSERT INTO operations (id, name, state, owner, input, params, query, headers, request_id, progress, result, error,
       attempt, max_attempts, cancelable, cancel_requested, timeout_ms, created_at, started_at, completed_at, expires_at,
       run_at, worker, lease_expires_at)
     VALUES (?, ?, ?, ?, ?, '{}', '{}', ?, ?, ?, ?, ?, ?, 3, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
  )
  const event = db.prepare(
    `INSERT INTO operation_events (operation_id, at, event, attempt, worker, actor, has_actor, error)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
  )
  const headers = JSON.stringify({ 'content-type': 'application/json', 'user-agent': 'bench-client/1.0' })
  const worker = 'bench-host:4242:a1b2c3'
  const failed = JSON.stringify({
    type: 'handler-error',
    title: 'Handler failed',
    detail: 'Error: upstream timed out',
    retryable: true,
  })
  const canceled = JSON.stringify({ type: 'canceled', title: 'Canceled', detail: 'The operation was canceled.' })
  const end = Date.now() - 60_000
  const step = (30 * DAY) / count
  db.transaction(() => {
    for (let i = 0; i < count; i++) {
      const createdAt = Math.floor(end - 30 * DAY + i * step)
      const id = uuidv7({ msecs: createdAt })
      const name = pick(NAMES, NAME_WEIGHTS, random())
      // 1% anonymous (one owner for trim), the rest spread over OWNERS.
      const owner = random() < 0.01 ? null : ownerId(Math.floor(random() * OWNERS))
      const input = JSON.stringify({
        customer: `${CUSTOMER_PREFIXES[Math.floor(random() * CUSTOMER_PREFIXES.length)]}-${Math.floor(random() * CUSTOMERS_PER_PREFIX)}`,
        amount: 1 + Math.floor(random() * 1000),
        region: REGIONS[Math.floor(random() * REGIONS.length)],
      })
      const requestId = random() < 0.5 ? `req-${i.toString(36)}` : null
      const live = i >= count - LIVE
      const r = random()
      const state = live ? (i % 2 ? 'running' : 'queued') : r < 0.95 ? 'succeeded' : r < 0.98 ? 'failed' : 'canceled'
      const ran = state !== 'queued' && state !== 'canceled'
      const startedAt = ran ? createdAt + 50 + Math.floor(random() * 2_000) : null
      const completedAt =
        state === 'canceled'
          ? createdAt + 1_000 + Math.floor(random() * 10_000)
          : state === 'succeeded' || state === 'failed'
            ? startedAt! + 100 + Math.floor(random() * 60_000)
            : null
      const expiresAt = completedAt === null ? null : i < EXPIRED ? completedAt + DAY : FAR_EXPIRY
      const error = state === 'failed' ? failed : state === 'canceled' ? canceled : null
      insert.run(
        id,
        name,
        state,
        owner,
        input,
        headers,
        requestId,
        state === 'succeeded' ? '{"percent":100}' : '{"percent":0}',
        state === 'succeeded' ? JSON.stringify({ rows: Math.floor(random() * 10_000) }) : null,
        error,
        ran ? 1 : 0,
        state === 'canceled' ? 1 : 0,
        random() < 0.5 ? 600_000 : null,
        createdAt,
        startedAt,
        completedAt,
        expiresAt,
        createdAt,
        state === 'running' ? worker : null,
        state === 'running' ? FAR_EXPIRY : null,
      )
      // The history the store records: submitted (actor: the owner), started, the outcome.
      event.run(id, createdAt, 'submitted', 0, null, owner, 1, null)
      if (ran) event.run(id, startedAt, 'started', 1, worker, null, 0, null)
      if (state === 'succeeded' || state === 'failed') event.run(id, completedAt, state, 1, worker, null, 0, error)
      if (state === 'canceled') event.run(id, completedAt, 'canceled', 0, null, owner, 1, canceled)
    }
  })()
  return Math.floor(end - 30 * DAY + (count - 1) * step)
}

/** Reads the file back through the store's own API: a row format the store does not read fails here. */
async function verify(path: string, count: number): Promise<void> {
  const store = sqliteStore({ path })
  try {
    const fail = (why: string) => {
      throw new Error(`query seed: check failed: ${why}`)
    }
    const page = await store.list({ limit: 20 })
    if (page.items.length !== 20 || !page.nextCursor) fail('the first list page is not 20 operations with a cursor')
    const stats = await store.stats({})
    const total = stats.reduce((n, row) => n + row.count, 0)
    if (total !== count) fail(`stats count ${total} operations, not ${count}`)
    const states = new Set(stats.map((row) => row.state))
    if (states.size !== 5) fail(`stats show the states ${[...states].join(', ')}, not all five`)
    const oldest = (await store.query({ where: [], sort: 'oldest', limit: 3 })).items
    for (const summary of [...page.items.slice(0, 3), ...oldest]) {
      const op = await store.get(summary.id)
      if (!op) fail(`get(${summary.id}) found nothing`)
      if (typeof (op!.input as { customer?: unknown }).customer !== 'string') fail('an input without its customer')
      if (op!.state === 'succeeded' && (op!.completedAt === undefined || op!.expiresAt === undefined)) {
        fail('a succeeded operation without completedAt or expiresAt')
      }
      const history = await store.history(op!.id)
      if (history[0]?.event !== 'submitted') fail(`history of ${op!.id} does not start with submitted`)
    }
    const expired = (await store.queryStats({ where: [{ field: 'expiresAt', op: 'lt', value: Date.now() }] })).reduce(
      (n, row) => n + row.count,
      0,
    )
    if (expired !== Math.min(EXPIRED, count)) fail(`${expired} expired operations, not ${EXPIRED}`)
  } finally {
    await store.close()
  }
}
