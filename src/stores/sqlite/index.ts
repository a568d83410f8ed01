import { mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import type Database from 'better-sqlite3'
import type { Statement } from 'better-sqlite3'
import { storeClosed } from '../../core/errors.js'
import type { Store } from '../../core/store.js'
import type {
  ClaimRequest,
  HistoryEntry,
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
import { migrate, openConnection, operationQueries, statementCache, type EventValues } from './connection.js'
import { findIdempotent, SqliteWrites, type Settled, type WriteCall, type WriteMethod } from './writes.js'

export interface SqliteStoreOptions {
  /** Database file, created with its folder when missing; `':memory:'` for a throwaway one. */
  path: string
  /**
   * `FULL` makes every acknowledged submission, outcome, cancel, retry and delete survive a power
   * loss (claims, heartbeats and progress skip the fsync: losing them loses no promise); `NORMAL`
   * makes writes survive a process crash only.
   * @default 'FULL'
   */
  synchronous?: 'FULL' | 'NORMAL'
}

/**
 * The embedded default store: one SQLite file in WAL mode, on one connection. Writes are committed in
 * groups: the writes issued during one event-loop turn make one transaction and one fsync, and each
 * resolves only after its group's commit, so concurrent submissions share the cost of durability.
 * `':memory:'` gives a throwaway database.
 */
export function sqliteStore(options: SqliteStoreOptions): Store {
  return new SqliteStore(options)
}

interface PendingWrite {
  call: WriteCall
  resolve: (value: unknown) => void
  reject: (reason: unknown) => void
}

class SqliteStore implements Store {
  readonly #db: Database.Database
  readonly #sql: ReturnType<typeof statementCache>
  readonly #ops: ReturnType<typeof operationQueries>
  readonly #writes: SqliteWrites
  /** Raw rows, in the order of its SELECT: cheaper than an object per row (see OperationQuery). */
  readonly #history: Statement
  #pending: PendingWrite[] = []
  #flushScheduled = false
  #closing: Promise<void> | undefined

  constructor(options: SqliteStoreOptions) {
    const synchronous = options.synchronous === 'NORMAL' ? 'NORMAL' : 'FULL'
    if (options.path !== ':memory:' && options.path !== '') mkdirSync(dirname(options.path), { recursive: true })
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
    this.#history = db
      .prepare(
        `SELECT seq, at, event, attempt, worker, actor, has_actor, error FROM operation_events WHERE operation_id = ? ORDER BY seq`,
      )
      .raw(true)
    this.#writes = new SqliteWrites(db, synchronous)
  }

  insert(op: NewOperation): Promise<Operation> {
    return this.#write('insert', op)
  }

  insertIdempotent(op: NewOperation, key: IdempotencyKey, now: number): Promise<IdempotentInsert> {
    return this.#write('insertIdempotent', op, key, now)
  }

  async findIdempotent(key: IdempotencyLookup, now: number): Promise<IdempotentUse | undefined> {
    return findIdempotent(this.#ops, key, now)
  }

  async get(id: string): Promise<Operation | undefined> {
    return this.#ops(`SELECT * FROM operations WHERE id = ?`).get(id)
  }

  async history(id: string): Promise<HistoryEntry[]> {
    const rows = this.#history.all(id) as EventValues[]
    return rows.map(([seq, at, event, attempt, worker, actor, hasActor, error]) => {
      const entry: HistoryEntry = { seq, at, event, attempt }
      if (worker !== null) entry.worker = worker
      if (hasActor === 1) entry.actor = actor
      if (error !== null) entry.error = JSON.parse(error)
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
    const rows = this.#ops(sql)
    const found = rows.statement.all(...args, query.limit + 1) as unknown[][]
    const page = found.slice(0, query.limit)
    return {
      items: page.map((values) => rows.operation(values)),
      ...(found.length > query.limit ? { nextCursor: String(rows.column(page[page.length - 1]!, 'seq')) } : {}),
    }
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

  /** Commits the writes issued before it, then closes the database. */
  close(): Promise<void> {
    this.#closing ??= new Promise<void>((resolve) => {
      this.#flush()
      this.#db.close()
      resolve()
    })
    return this.#closing
  }

  #write<M extends WriteMethod>(method: M, ...args: Parameters<SqliteWrites[M]>): Promise<ReturnType<SqliteWrites[M]>> {
    if (this.#closing) return Promise.reject(storeClosed())
    return new Promise((resolve, reject) => {
      this.#pending.push({ call: { method, args }, resolve: resolve as (value: unknown) => void, reject })
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
    const outcome = this.#writes.runBatch(batch.map((write) => write.call))
    batch.forEach((write, i) => {
      const result: Settled = outcome.ok ? outcome.results[i]! : outcome
      if (result.ok) write.resolve(result.value)
      else write.reject(result.error)
    })
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
