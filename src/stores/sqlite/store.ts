import { mkdirSync, statfsSync } from 'node:fs'
import { dirname } from 'node:path'
import type Database from 'better-sqlite3'
import type { Statement } from 'better-sqlite3'
import { storeClosed } from '../../core/errors.js'
import type { Condition } from '../../core/query.js'
import type {
  Deferrable,
  Delivery,
  DeliveryAttempt,
  EventFeed,
  EventLog,
  FeedPage,
  FeedQuery,
  KeepCounts,
  Outbox,
  OutboxMessage,
  Queryable,
  QuerySort,
  Stamped,
  Store,
  Trimmable,
} from '../../core/store.js'
import type {
  ClaimRequest,
  DeliveryState,
  HistoryEntry,
  HistoryEvent,
  IdempotencyKey,
  IdempotencyLookup,
  IdempotentInsert,
  IdempotentUse,
  Lease,
  LeaseStatus,
  ListQuery,
  NewOperation,
  Operation,
  Outcome,
  Page,
  Progress,
  StatsQuery,
  StatsRow,
} from '../../core/types.js'
import { cursorPosition } from '../cursor.js'
import { keptCounts } from '../query.js'
import {
  BUSY_TIMEOUT_MS,
  EVENT_COLUMNS,
  migrate,
  openConnection,
  operationQueries,
  statementCache,
  toHistoryEntry,
  type EventValues,
} from './connection.js'
import { classified, isFull, sqliteFault, storageFull } from './faults.js'
import type { SqliteStoreOptions } from './options.js'
import { conditions as conditionTerms } from './query.js'
import { DURABLE, findIdempotent, LOSABLE, SqliteWrites, type Settled, type WriteCall } from './writes.js'

interface PendingWrite extends WriteCall {
  resolve: (value: unknown) => void
  reject: (reason: unknown) => void
}

export class SqliteStore implements Store, EventLog, EventFeed, Queryable, Trimmable, Outbox, Deferrable, Stamped {
  readonly #db: Database.Database
  readonly #sql: ReturnType<typeof statementCache>
  readonly #ops: ReturnType<typeof operationQueries>
  readonly #writes: SqliteWrites
  /** Raw rows, in the order of EVENT_COLUMNS: cheaper than an object per row (see OperationQuery). */
  readonly #history: Statement
  readonly #events: Statement
  /** SQLite's count of commits by other connections to the file, as this one sees it. */
  readonly #dataVersion: Statement
  /** Groups this connection committed (or tried to): changes `data_version` does not count. */
  #groups = 0
  #pending: PendingWrite[] = []
  #flushScheduled = false
  #closing: Promise<void> | undefined
  /** The last group commit failed for want of disk space, and none succeeded since: see #reclaim. */
  #full = false
  /** The folder of the database file, whose free space `ping` reads after a full disk; none in memory. */
  readonly #folder: string | undefined
  #lastReclaim = 0
  /** Something was committed since the last periodic checkpoint. */
  #written = false
  /** Whether the last periodic checkpoint found less than LOW_SPACE_BYTES free. */
  #lowSpace = false
  readonly #checkpoints: NodeJS.Timeout

  constructor(options: SqliteStoreOptions) {
    const synchronous = options.synchronous === 'NORMAL' ? 'NORMAL' : 'FULL'
    if (options.path !== ':memory:' && options.path !== '') mkdirSync(dirname(options.path), { recursive: true })
    this.#folder = options.path !== ':memory:' && options.path !== '' ? dirname(options.path) : undefined
    const db = openConnection(options.path, synchronous)
    try {
      // Synchronously, so that a file it refuses fails the call.
      migrate(db)
    } catch (err) {
      // A store that fails to open must not keep the file open behind the error.
      db.close()
      throw err
    }
    this.#db = db
    this.#sql = statementCache(db)
    this.#ops = operationQueries(db)
    this.#history = classified(
      db.prepare(
        `SELECT ${EVENT_COLUMNS} FROM operation_events WHERE operation_id = ? AND event <> 'progress' ORDER BY seq`,
      ),
    ).raw(true)
    this.#events = classified(
      db.prepare(
        `SELECT ${EVENT_COLUMNS} FROM operation_events WHERE operation_id = ? AND seq > ? ORDER BY seq LIMIT ?`,
      ),
    ).raw(true)
    this.#dataVersion = db.prepare('PRAGMA data_version').pluck()
    this.#writes = new SqliteWrites(db, synchronous)
    this.#adaptToSpace()
    this.#checkpoints = setInterval(this.#checkpoint, CHECKPOINT_EVERY_MS).unref()
  }

  insert(op: NewOperation): Promise<Operation> {
    return this.#write((w) => w.insert(op), DURABLE)
  }

  insertIdempotent(op: NewOperation, key: IdempotencyKey, now: number): Promise<IdempotentInsert> {
    return this.#write((w) => w.insertIdempotent(op, key, now), DURABLE)
  }

  async findIdempotent(key: IdempotencyLookup, now: number): Promise<IdempotentUse | undefined> {
    return findIdempotent(this.#ops, key, now)
  }

  async get(id: string): Promise<Operation | undefined> {
    return this.#ops(`SELECT * FROM operations WHERE id = ?`).get(id)
  }

  changeStamp(): string {
    return `${this.#dataVersion.get() as number}:${this.#groups}`
  }

  async history(id: string): Promise<HistoryEntry[]> {
    return (this.#history.all(id) as EventValues[]).map(toHistoryEntry)
  }

  async events(id: string, range: { after?: number; limit: number }): Promise<HistoryEntry[]> {
    return (this.#events.all(id, range.after ?? 0, range.limit) as EventValues[]).map(toHistoryEntry)
  }

  async feed(query: FeedQuery): Promise<FeedPage> {
    // One writer commits in `seq` order: a position read is never passed by a later commit.
    const { head } = this.#sql(`SELECT coalesce(max(seq), 0) AS head FROM operation_events`).get() as { head: number }
    const after = query.after === undefined ? undefined : cursorPosition(query.after)
    if (after === undefined) return { entries: [], cursor: String(head) }
    const { where, args } = filters(query)
    if (query.names) {
      where.push(`name IN (${query.names.map(() => '?').join(', ') || 'NULL'})`)
      args.push(...query.names)
    }
    const sql = `SELECT ${FEED_COLUMNS} FROM operation_events e JOIN operations o ON o.id = e.operation_id
                 WHERE e.seq > ? ${where.map((w) => `AND ${w}`).join(' ')} ORDER BY e.seq LIMIT ?`
    const rows = this.#sql(sql)
      .raw(true)
      .all(after, ...args, query.limit) as [...EventValues, string][]
    const entries = rows.map((row) => ({
      ...toHistoryEntry(row.slice(0, -1) as EventValues),
      operationId: row.at(-1) as string,
      cursor: String(row[0]),
    }))
    // A page cut short by the filters still moves the cursor past what it read.
    const cursor = entries.length === query.limit ? entries[entries.length - 1]!.seq : Math.max(after, head)
    return { entries, cursor: String(cursor) }
  }

  async list(query: ListQuery): Promise<Page> {
    return this.#page(query, [], 'newest')
  }

  async query(query: ListQuery & { where: Condition[]; sort?: QuerySort }): Promise<Page> {
    return this.#page(query, query.where, query.sort ?? 'newest')
  }

  #page(query: ListQuery, conditions: readonly Condition[], sort: QuerySort): Page {
    const { where, args } = filters(query)
    if (query.name !== undefined) {
      where.push('name = ?')
      args.push(query.name)
    }
    const matching = conditionTerms(conditions)
    where.push(...matching.where)
    args.push(...matching.args)
    if (query.cursor !== undefined) {
      const from = cursorPosition(query.cursor)
      if (from === undefined) return { items: [] }
      where.push(sort === 'newest' ? 'seq < ?' : 'seq > ?')
      args.push(from)
    }
    const sql = `SELECT * FROM operations ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
                 ORDER BY seq ${sort === 'newest' ? 'DESC' : 'ASC'} LIMIT ?`
    const rows = this.#ops(sql)
    const found = rows.statement.all(...args, query.limit + 1) as unknown[][]
    const page = found.slice(0, query.limit)
    return {
      items: page.map((values) => rows.operation(values)),
      ...(found.length > query.limit ? { nextCursor: String(rows.column(page[page.length - 1]!, 'seq')) } : {}),
    }
  }

  async stats(query: StatsQuery): Promise<StatsRow[]> {
    return this.#stats(query, [])
  }

  async queryStats(query: StatsQuery & { where: Condition[] }): Promise<StatsRow[]> {
    return this.#stats(query, query.where)
  }

  #stats(query: StatsQuery, conditions: readonly Condition[]): StatsRow[] {
    if (conditions.length === 0) {
      // The counters the triggers of migration 9 keep: as many rows as groups, whatever the operations.
      const { where, args } = filters(query, COUNTER_OWNER)
      const sql = `SELECT name, state, sum(count) AS count FROM operation_counts
                   ${where.length ? `WHERE ${where.join(' AND ')}` : ''} GROUP BY name, state HAVING sum(count) > 0`
      return this.#sql(sql).all(...args) as StatsRow[]
    }
    const { where, args } = filters(query)
    const matching = conditionTerms(conditions)
    where.push(...matching.where)
    args.push(...matching.args)
    const sql = `SELECT name, state, count(*) AS count FROM operations ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
                 GROUP BY name, state`
    return this.#sql(sql).all(...args) as StatsRow[]
  }

  claim(worker: string, wants: ClaimRequest[], leaseMs: number, now: number): Promise<Operation[]> {
    return this.#write((w) => w.claim(worker, wants, leaseMs, now), LOSABLE)
  }

  heartbeat(lease: Lease, leaseMs: number, now: number): Promise<LeaseStatus> {
    return this.#write((w) => w.heartbeat(lease, leaseMs, now), LOSABLE)
  }

  progress(lease: Lease, progress: Progress, now: number): Promise<boolean> {
    return this.#write((w) => w.progress(lease, progress, now), LOSABLE)
  }

  settle(lease: Lease, outcome: Outcome, now: number): Promise<Operation | undefined> {
    return this.#write((w) => w.settle(lease, outcome, now), DURABLE)
  }

  release(lease: Lease, now: number): Promise<boolean> {
    return this.#write((w) => w.release(lease, now), LOSABLE)
  }

  cancel(id: string, now: number, expiresAt: number, actor: string | null = null): Promise<Operation | undefined> {
    return this.#write((w) => w.cancel(id, now, expiresAt, actor), DURABLE)
  }

  requeue(id: string, attempts: number, now: number, actor: string | null = null): Promise<Operation | undefined> {
    return this.#write((w) => w.requeue(id, attempts, now, actor), DURABLE)
  }

  start(id: string, now: number, actor: string | null = null): Promise<Operation | undefined> {
    return this.#write((w) => w.start(id, now, actor), DURABLE)
  }

  delete(id: string): Promise<boolean> {
    return this.#write((w) => w.delete(id), DURABLE)
  }

  purge(now: number, limit: number): Promise<number> {
    return this.#write((w) => w.purge(now, limit), LOSABLE)
  }

  trim(keep: KeepCounts, limit: number): Promise<number> {
    // Checked here, so that a bad count rejects this call rather than a write of the batch.
    const kept = keptCounts(keep)
    if (kept.length === 0 || !(limit > 0)) return Promise.resolve(0)
    // Losable as a purge is: a lost trim is done again.
    return this.#write((w) => w.trim(kept, limit), LOSABLE)
  }

  claimMessages(sender: string, limit: number, leaseMs: number, now: number): Promise<OutboxMessage[]> {
    // Losable as a claim is: a lost claim leaves the message to be claimed again, and refuses the
    // sender's record, so it is delivered once more (at least once).
    return this.#write((w) => w.claimMessages(sender, limit, leaseMs, now), LOSABLE)
  }

  recordDelivery(message: OutboxMessage, attempt: DeliveryAttempt, retryAt?: number): Promise<boolean> {
    return this.#write((w) => w.recordDelivery(message, attempt, retryAt), DURABLE)
  }

  async deliveries(operationId: string): Promise<Delivery[]> {
    const messages = this.#sql(
      `SELECT id, seq, event, target, state, due_at FROM outbox WHERE operation_id = ? ORDER BY n`,
    ).all(operationId) as {
      id: string
      seq: number
      event: HistoryEvent
      target: string
      state: DeliveryState
      due_at: number
    }[]
    if (messages.length === 0) return []
    const attempts = this.#sql(
      `SELECT message_id, at, duration_ms, ok, status, error FROM delivery_attempts WHERE operation_id = ?
       ORDER BY message_id, n`,
    ).all(operationId) as AttemptRow[]
    const byMessage = new Map<string, DeliveryAttempt[]>()
    for (const row of attempts) {
      const attempt: DeliveryAttempt = { at: row.at, durationMs: row.duration_ms, ok: row.ok === 1 }
      if (row.status !== null) attempt.status = row.status
      if (row.error !== null) attempt.error = row.error
      const list = byMessage.get(row.message_id)
      if (list) list.push(attempt)
      else byMessage.set(row.message_id, [attempt])
    }
    return messages.map(({ due_at, ...message }) => ({
      ...message,
      ...(message.state === 'pending' ? { nextAttemptAt: due_at } : {}),
      attempts: byMessage.get(message.id) ?? [],
    }))
  }

  redeliver(operationId: string, now: number): Promise<number> {
    return this.#write((w) => w.redeliver(operationId, now), DURABLE)
  }

  disableTarget(target: string, now: number): Promise<void> {
    return this.#write((w) => w.disableTarget(target, now), DURABLE)
  }

  /** Commits the writes issued before it, then closes the database. */
  close(): Promise<void> {
    this.#closing ??= new Promise<void>((resolve) => {
      clearInterval(this.#checkpoints)
      this.#flush()
      this.#db.close()
      resolve()
    })
    return this.#closing
  }

  /**
   * Resolves when the database file can be read, unless the disk was full at the last group commit
   * of a durable write and none succeeded since: then it first gives the write-ahead log's space
   * back (#reclaim), and rejects with `storage-full` until that worked and the file system has
   * MIN_FREE_BYTES free (so that readiness turns green again without waiting for traffic).
   * `store-unavailable` when the file cannot be read.
   */
  async ping(): Promise<void> {
    if (this.#closing) throw storeClosed()
    this.#sql(`SELECT 1 FROM operations LIMIT 1`).get()
    if (!this.#full) return
    if (!this.#reclaim(true) || this.#freeBytes() < MIN_FREE_BYTES) throw storageFull()
    this.#full = false
  }

  #freeBytes(): number {
    if (this.#folder === undefined) return Infinity
    try {
      const { bavail, bsize } = statfsSync(this.#folder)
      return bavail * bsize
    } catch {
      return Infinity
    }
  }

  /**
   * Copies the write-ahead log into the database file and truncates it to nothing: what gives a
   * full disk the log's space back, which SQLite otherwise keeps (it reuses the file, never
   * shrinks it). Needs free space for the pages the log holds that the file lacks; while it fails,
   * submissions fail too, as `storage-full`. Never waits for other processes' readers (busy timeout
   * 0 meanwhile): then it is tried again later. Whether it completed.
   */
  #reclaim(now = false): boolean {
    const at = Date.now()
    if (!now && at - this.#lastReclaim < RECLAIM_EVERY_MS) return false
    this.#lastReclaim = at
    try {
      this.#db.pragma('busy_timeout = 0')
      const [result] = this.#db.pragma('wal_checkpoint(TRUNCATE)') as { busy: number }[]
      return result?.busy === 0
    } catch {
      return false
    } finally {
      this.#db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`)
    }
  }

  /**
   * Every CHECKPOINT_EVERY_MS after writes: a passive checkpoint (it waits for no one), so that the
   * log holds little that the database file lacks when the disk fills up, and the space needed to
   * recover stays small whatever the load before. While the file system has less than
   * LOW_SPACE_BYTES free, the log is truncated instead (#reclaim) and checkpointed by SQLite every
   * LOW_SPACE_CHECKPOINT_PAGES rather than every 1,000 pages (4 MiB): small commits write whole
   * pages, so a log that waits for 1,000 pages fills a small disk on its own.
   */
  readonly #checkpoint = (): void => {
    if (!this.#written || this.#closing) return
    this.#written = false
    try {
      if (this.#adaptToSpace()) this.#reclaim(true)
      else this.#db.pragma('wal_checkpoint(PASSIVE)')
    } catch {
      // A full disk: #reclaim takes over at the next write.
    }
  }

  /** Sets SQLite's automatic checkpoint for the free space there is now; whether it is low. */
  #adaptToSpace(): boolean {
    const low = this.#freeBytes() < LOW_SPACE_BYTES
    if (low !== this.#lowSpace) {
      this.#db.pragma(`wal_autocheckpoint = ${low ? LOW_SPACE_CHECKPOINT_PAGES : 1_000}`)
      this.#lowSpace = low
    }
    return low
  }

  /** Queues `run` for the next group commit; `losable` as LOSABLE in ./writes.ts says. */
  #write<T>(run: (writes: SqliteWrites) => T, { losable }: { losable: boolean }): Promise<T> {
    if (this.#closing) return Promise.reject(storeClosed())
    return new Promise<T>((resolve, reject) => {
      this.#pending.push({ run, losable, resolve: resolve as (value: unknown) => void, reject })
      if (!this.#flushScheduled) {
        this.#flushScheduled = true
        setImmediate(this.#flush)
      }
    })
  }

  /** Commits the pending writes as one group, then settles each: a write's own error rejects only it. */
  readonly #flush = (): void => {
    this.#flushScheduled = false
    if (this.#pending.length === 0) return
    const batch = this.#pending
    this.#pending = []
    // Submissions go on failing until the log's space is back: try for it first.
    if (this.#full) this.#reclaim()
    this.#groups++
    const outcome = this.#writes.runBatch(batch)
    const full = outcome.ok
      ? outcome.results.some((result) => !result.ok && isFull(result.error))
      : isFull(outcome.error)
    if (full) this.#full = true
    else if (outcome.ok) {
      this.#written = true
      // A group of losable writes may change nothing (a claim that found no work): no proof of space.
      if (batch.some((write) => !write.losable)) this.#full = false
    }
    batch.forEach((write, i) => {
      const result: Settled = outcome.ok ? outcome.results[i]! : outcome
      if (result.ok) write.resolve(result.value)
      else write.reject(sqliteFault(result.error))
    })
  }
}

interface AttemptRow {
  message_id: string
  at: number
  duration_ms: number
  ok: number
  status: number | null
  error: string | null
}

// A commit that failed on a full disk is followed by at most one #reclaim per this interval.
const RECLAIM_EVERY_MS = 250
const CHECKPOINT_EVERY_MS = 1_000
const LOW_SPACE_BYTES = 67_108_864 // 64 MiB
const LOW_SPACE_CHECKPOINT_PAGES = 64 // 256 KiB of 4 KiB pages
// What `ping` wants free after a full disk before it answers again: room for some hundreds of submissions.
const MIN_FREE_BYTES = 262_144 // 256 KiB

const FEED_COLUMNS = [...EVENT_COLUMNS.split(', ').map((column) => `e.${column}`), 'e.operation_id'].join(', ')

/** How a filter names one owner, with its arguments: in `operations`, or in `operation_counts`. */
type OwnerTerm = (owner: string | null) => { sql: string; args: unknown[] }

const OPERATION_OWNER: OwnerTerm = (owner) => ({ sql: 'owner IS ?', args: [owner] })
const COUNTER_OWNER: OwnerTerm = (owner) =>
  // Anonymous counts have owner '': named too, so that the owner index serves either.
  owner === null
    ? { sql: "(anonymous = 1 AND owner = '')", args: [] }
    : { sql: '(anonymous = 0 AND owner = ?)', args: [owner] }

/**
 * The filters list and stats share: states, owner and what the caller may read; on the counters'
 * columns (name, state, owner) as well as on the operations'.
 */
function filters(query: StatsQuery, ownerIs: OwnerTerm = OPERATION_OWNER): { where: string[]; args: unknown[] } {
  const where: string[] = []
  const args: unknown[] = []
  if (query.states?.length) {
    where.push(`state IN (${query.states.map(() => '?').join(', ')})`)
    args.push(...query.states)
  }
  if (query.owner !== undefined) {
    const term = ownerIs(query.owner)
    where.push(term.sql)
    args.push(...term.args)
  }
  if (query.readable) {
    const { owners, names } = query.readable
    const anyOwner = owners.map(ownerIs)
    const anyName = names.length ? [`name IN (${names.map(() => '?').join(', ')})`] : []
    where.push(`(${[...anyOwner.map((term) => term.sql), ...anyName].join(' OR ') || 'FALSE'})`)
    args.push(...anyOwner.flatMap((term) => term.args), ...names)
  }
  return { where, args }
}
