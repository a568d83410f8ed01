import { mkdirSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import type Database from 'better-sqlite3'
import { LongrunError } from '../../core/errors.js'
import type { Store } from '../../core/store.js'
import type {
  ClaimRequest,
  HistoryEntry,
  IdempotencyKey,
  IdempotentInsert,
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
import { migrate, openConnection, statementCache, toOperation, type EventRow, type Row } from './connection.js'
import { InlineWriter, ThreadWriter, type Writer } from './writer-client.js'
import { SqliteWrites, type BatchOutcome, type Settled, type WriteMethod } from './writes.js'

export interface SqliteStoreOptions {
  /** Database file, created with its folder when missing; `':memory:'` for a throwaway one. */
  path: string
  /**
   * `FULL` makes every acknowledged write survive a power loss; `NORMAL` only a process crash.
   * @default 'FULL'
   */
  synchronous?: 'FULL' | 'NORMAL'
}

/**
 * The embedded default store: one SQLite file in WAL mode. Writes are committed by a writer thread
 * of their own, in groups: all the writes issued while it commits one group make the next group,
 * one transaction and one fsync, and each write resolves only after its group's commit. The fsync
 * waits happen in that thread, so the event loop keeps serving meanwhile. Reads run in the calling
 * thread on a connection of their own, which WAL lets read while the writer writes.
 *
 * `':memory:'` (and `''`, a private temporary file) cannot be shared between two connections: such
 * a store keeps its one connection in the calling thread and commits its groups there, once per
 * event-loop turn, with the same code.
 */
export function sqliteStore(options: SqliteStoreOptions): Store {
  return new SqliteStore(options)
}

interface PendingWrite {
  /** The call as the writer takes it (see `Writer.prepare`). */
  call: unknown
  resolve: (value: unknown) => void
  reject: (reason: unknown) => void
}

class SqliteStore implements Store {
  /** Reads; for an unshared database (`:memory:`) also the writes. */
  readonly #db: Database.Database
  readonly #sql: ReturnType<typeof statementCache>
  readonly #writer: Writer
  #pending: PendingWrite[] = []
  #flushScheduled = false
  #inFlight = false
  #onIdle: (() => void)[] = []
  #closing: Promise<void> | undefined

  constructor(options: SqliteStoreOptions) {
    const synchronous = options.synchronous === 'NORMAL' ? 'NORMAL' : 'FULL'
    const shared = options.path !== ':memory:' && options.path !== ''
    if (shared) mkdirSync(dirname(options.path), { recursive: true })
    const db = openConnection(options.path, synchronous)
    try {
      // Before any read or write, and synchronously so that a file it refuses fails the call.
      migrate(db)
      if (shared) {
        db.pragma('query_only = ON')
        this.#writer = new ThreadWriter(resolve(options.path), synchronous)
      } else {
        this.#writer = new InlineWriter(new SqliteWrites(db))
      }
    } catch (err) {
      // A store that fails to open must not keep the file open behind the error.
      db.close()
      throw err
    }
    this.#db = db
    this.#sql = statementCache(db)
  }

  insert(op: NewOperation): Promise<Operation> {
    return this.#write('insert', op)
  }

  insertIdempotent(op: NewOperation, key: IdempotencyKey, now: number): Promise<IdempotentInsert> {
    return this.#write('insertIdempotent', op, key, now)
  }

  async get(id: string): Promise<Operation | undefined> {
    const row = this.#sql(`SELECT * FROM operations WHERE id = ?`).get(id) as Row | undefined
    return row && toOperation(row)
  }

  async history(id: string): Promise<HistoryEntry[]> {
    const rows = this.#sql(
      `SELECT at, event, attempt, worker, actor, has_actor, error FROM operation_events WHERE operation_id = ? ORDER BY seq`,
    ).all(id) as EventRow[]
    return rows.map((row) => {
      const entry: HistoryEntry = { at: row.at, event: row.event, attempt: row.attempt }
      if (row.worker !== null) entry.worker = row.worker
      if (row.has_actor === 1) entry.actor = row.actor
      if (row.error !== null) entry.error = JSON.parse(row.error)
      return entry
    })
  }

  async list(query: ListQuery): Promise<Page> {
    const { where, args } = filters(query)
    if (query.name !== undefined) {
      where.push('name = ?')
      args.push(query.name)
    }
    if (query.cursor !== undefined) {
      where.push('seq < ?')
      args.push(Number(query.cursor))
    }
    const sql = `SELECT * FROM operations ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY seq DESC LIMIT ?`
    const rows = this.#sql(sql).all(...args, query.limit + 1) as Row[]
    const more = rows.length > query.limit
    const page = rows.slice(0, query.limit)
    return { items: page.map(toOperation), ...(more ? { nextCursor: String(page[page.length - 1]!.seq) } : {}) }
  }

  async stats(query: StatsQuery): Promise<StatsRow[]> {
    const { where, args } = filters(query)
    const sql = `SELECT name, state, count(*) AS count FROM operations ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
                 GROUP BY name, state`
    return this.#sql(sql).all(...args) as StatsRow[]
  }

  claim(worker: string, wants: ClaimRequest[], leaseMs: number, now: number): Promise<Operation[]> {
    return this.#write('claim', worker, wants, leaseMs, now)
  }

  heartbeat(lease: Lease, leaseMs: number, now: number): Promise<LeaseStatus> {
    return this.#write('heartbeat', lease, leaseMs, now)
  }

  progress(lease: Lease, progress: Progress): Promise<boolean> {
    return this.#write('progress', lease, progress)
  }

  settle(lease: Lease, outcome: Outcome, now: number): Promise<Operation | undefined> {
    return this.#write('settle', lease, outcome, now)
  }

  release(lease: Lease, now: number): Promise<boolean> {
    return this.#write('release', lease, now)
  }

  cancel(id: string, now: number, expiresAt: number, actor: string | null = null): Promise<Operation | undefined> {
    return this.#write('cancel', id, now, expiresAt, actor)
  }

  requeue(id: string, attempts: number, now: number, actor: string | null = null): Promise<Operation | undefined> {
    return this.#write('requeue', id, attempts, now, actor)
  }

  delete(id: string): Promise<boolean> {
    return this.#write('delete', id)
  }

  purge(now: number, limit: number): Promise<number> {
    return this.#write('purge', now, limit)
  }

  /** Commits the writes issued before it, then closes the writer and the database. */
  close(): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close(): Promise<void> {
    // Writes issued before close() are pending or in flight: wait for their commit.
    await new Promise<void>((resolve) => {
      if (this.#idle()) resolve()
      else this.#onIdle.push(resolve)
    })
    // The reader first: closing last, the writer's connection checkpoints the WAL into the database
    // file and removes it, in its own thread.
    try {
      this.#db.close()
    } finally {
      await this.#writer.close()
    }
  }

  #write<M extends WriteMethod>(method: M, ...args: Parameters<SqliteWrites[M]>): Promise<ReturnType<SqliteWrites[M]>> {
    if (this.#closing) return Promise.reject(storeClosed())
    let call: unknown
    try {
      call = this.#writer.prepare(method, args)
    } catch (err) {
      return Promise.reject(err)
    }
    return new Promise((resolve, reject) => {
      this.#pending.push({ call, resolve: resolve as (value: unknown) => void, reject })
      this.#schedule()
    })
  }

  #idle(): boolean {
    return !this.#inFlight && this.#pending.length === 0
  }

  /**
   * Sends the pending writes at the end of this event-loop turn, unless a group is being committed:
   * they wait for its commit, and more join them meanwhile.
   */
  #schedule(): void {
    if (this.#flushScheduled || this.#inFlight) return
    this.#flushScheduled = true
    setImmediate(this.#flush)
  }

  readonly #flush = (): void => {
    this.#flushScheduled = false
    if (this.#inFlight) return
    if (this.#pending.length === 0) return this.#settleIdle()
    const batch = this.#pending
    this.#pending = []
    this.#inFlight = true
    void this.#commit(batch)
  }

  /** Commits one group, then settles each write's promise: a write's own error rejects only it. */
  async #commit(batch: PendingWrite[]): Promise<void> {
    let outcome: BatchOutcome
    try {
      outcome = await this.#writer.run(batch.map((write) => write.call))
    } catch (error) {
      outcome = { ok: false, error }
    }
    this.#inFlight = false
    // The writer is free: hand it the writes that gathered meanwhile at once, then answer this group.
    if (this.#pending.length > 0) this.#flush()
    batch.forEach((write, i) => {
      const result: Settled | undefined = outcome.ok ? outcome.results[i] : outcome
      if (result?.ok) write.resolve(result.value)
      else write.reject(result ? result.error : new Error('longrun: the SQLite writer returned no result'))
    })
    this.#settleIdle()
  }

  #settleIdle(): void {
    if (!this.#idle()) return
    for (const resolve of this.#onIdle.splice(0)) resolve()
  }
}

/** The filters list and stats share: states, owner and what the caller may read. */
function filters(query: StatsQuery): { where: string[]; args: unknown[] } {
  const where: string[] = []
  const args: unknown[] = []
  if (query.states?.length) {
    where.push(`state IN (${query.states.map(() => '?').join(', ')})`)
    args.push(...query.states)
  }
  if (query.owner !== undefined) {
    where.push('owner IS ?')
    args.push(query.owner)
  }
  if (query.readable) {
    const { owners, names } = query.readable
    const anyOwner = owners.map(() => 'owner IS ?')
    const anyName = names.length ? [`name IN (${names.map(() => '?').join(', ')})`] : []
    where.push(`(${[...anyOwner, ...anyName].join(' OR ') || 'FALSE'})`)
    args.push(...owners, ...names)
  }
  return { where, args }
}

const storeClosed = () => new LongrunError('store-closed', 503, 'Store closed', 'The store is closed.')
