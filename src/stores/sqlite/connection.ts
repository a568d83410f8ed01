import Database, { type Statement } from 'better-sqlite3'
import { schemaTooNew } from '../../core/errors.js'
import type { DeliveryState, HistoryEntry, HistoryEvent, Operation, OperationState } from '../../core/types.js'
import { classified } from './faults.js'
import { MIGRATIONS } from './migrations.js'

// Opening a connection, the schema migrations, statement caching and the mapping of rows to
// operations: what reads (store.ts) and writes (writes.ts) share.

export type Synchronous = 'FULL' | 'NORMAL'

export const BUSY_TIMEOUT_MS = 5_000
/**
 * What a checkpoint leaves of the write-ahead log when it grew beyond (e.g. during a burst, or
 * while a reader held old pages): about one automatic checkpoint's worth (1,000 pages of 4 KiB), so
 * that the log of a steady load is reused rather than truncated and grown again on every cycle.
 */
export const WAL_SIZE_LIMIT_BYTES = 4_194_304 // 4 MiB

/** Opens `path` in WAL mode; closes it again when a pragma fails. */
export function openConnection(path: string, synchronous: Synchronous): Database.Database {
  const db = new Database(path)
  try {
    db.pragma('journal_mode = WAL')
    db.pragma(`synchronous = ${synchronous === 'NORMAL' ? 'NORMAL' : 'FULL'}`)
    db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`)
    db.pragma(`journal_size_limit = ${WAL_SIZE_LIMIT_BYTES}`)
    // Every change of state fires the counters' triggers inside a transaction, which gives each
    // statement a statement journal: in a temporary file, it cost a settle 49 µs instead of 20.
    db.pragma('temp_store = MEMORY')
    return db
  } catch (err) {
    db.close()
    throw err
  }
}

export function migrate(db: Database.Database): void {
  const current = db.pragma('user_version', { simple: true }) as number
  const latest = MIGRATIONS[MIGRATIONS.length - 1]!.version
  if (current > latest) {
    throw schemaTooNew('', current, latest)
  }
  for (const migration of MIGRATIONS) {
    if (migration.version <= current) continue
    db.transaction(() => {
      db.exec(migration.sql)
      db.pragma(`user_version = ${migration.version}`)
    }).immediate()
  }
}

/** Prepares each distinct SQL text once per connection, as `make` wraps it. */
function preparedOnce<T>(db: Database.Database, make: (statement: Statement) => T): (sql: string) => T {
  const prepared = new Map<string, T>()
  return (sql) => {
    let made = prepared.get(sql)
    if (made === undefined) {
      made = make(classified(db.prepare(sql)))
      prepared.set(sql, made)
    }
    return made
  }
}

export function statementCache(db: Database.Database): (sql: string) => Statement {
  return preparedOnce(db, (statement) => statement)
}

export interface Row {
  seq: number
  id: string
  name: string
  state: OperationState
  owner: string | null
  input: string
  params: string
  query: string
  headers: string
  request_id: string | null
  context: string | null
  progress: string
  result: string | null
  error: string | null
  attempt: number
  max_attempts: number
  cancelable: number
  cancel_requested: number
  timeout_ms: number | null
  created_at: number
  started_at: number | null
  completed_at: number | null
  expires_at: number | null
  run_at: number
  worker: string | null
  lease_expires_at: number | null
  callback: string | null
  subscriptions: string | null
  callback_state: DeliveryState | null
  callback_attempts: number | null
  callback_last_attempt_at: number | null
  callback_last_status: number | null
}

/** The columns of `operation_events` that `EventValues` holds, in its order. */
export const EVENT_COLUMNS = 'seq, at, event, attempt, worker, actor, has_actor, error, progress'

/** A raw row of `operation_events`, as `EVENT_COLUMNS` selects it. */
export type EventValues = [
  seq: number,
  at: number,
  event: HistoryEvent,
  attempt: number,
  worker: string | null,
  actor: string | null,
  hasActor: number,
  error: string | null,
  progress: string | null,
]

export function toHistoryEntry([
  seq,
  at,
  event,
  attempt,
  worker,
  actor,
  hasActor,
  error,
  progress,
]: EventValues): HistoryEntry {
  const entry: HistoryEntry = { seq, at, event, attempt }
  if (worker !== null) entry.worker = worker
  if (hasActor === 1) entry.actor = actor
  if (error !== null) entry.error = JSON.parse(error)
  if (progress !== null) entry.progress = JSON.parse(progress)
  return entry
}

/** Where each column of an operation row sits in a statement's raw rows. */
type Positions = Record<keyof Row, number>

/**
 * A statement reading whole operation rows (`SELECT *`, `RETURNING *`) in better-sqlite3's raw
 * mode: an array per row costs well under half of an object with two dozen keys, on the reads and
 * writes of every operation.
 */
export class OperationQuery {
  readonly statement: Statement
  readonly #at: Positions & Record<string, number>

  constructor(statement: Statement) {
    this.statement = statement.raw(true)
    this.#at = Object.fromEntries(statement.columns().map((column, i) => [column.name, i])) as Positions &
      Record<string, number>
  }

  get(...params: unknown[]): Operation | undefined {
    const values = this.statement.get(...params) as unknown[] | undefined
    return values && this.operation(values)
  }

  /** The value of `column` in a raw row of this statement. */
  column(values: unknown[], column: string): unknown {
    return values[this.#at[column]!]
  }

  operation(v: unknown[]): Operation {
    const at = this.#at
    const op: Operation = {
      id: v[at.id] as string,
      name: v[at.name] as string,
      state: v[at.state] as OperationState,
      owner: v[at.owner] as string | null,
      input: JSON.parse(v[at.input] as string),
      params: JSON.parse(v[at.params] as string),
      query: JSON.parse(v[at.query] as string),
      headers: JSON.parse(v[at.headers] as string),
      progress: JSON.parse(v[at.progress] as string),
      attempt: v[at.attempt] as number,
      maxAttempts: v[at.max_attempts] as number,
      cancelable: v[at.cancelable] === 1,
      cancelRequested: v[at.cancel_requested] === 1,
      timeoutMs: v[at.timeout_ms] as number | null,
      createdAt: v[at.created_at] as number,
      runAt: v[at.run_at] as number,
    }
    if (v[at.request_id] !== null) op.requestId = v[at.request_id] as string
    if (v[at.context] !== null) op.context = JSON.parse(v[at.context] as string)
    if (v[at.result] !== null) op.result = JSON.parse(v[at.result] as string)
    if (v[at.error] !== null) op.error = JSON.parse(v[at.error] as string)
    if (v[at.started_at] !== null) op.startedAt = v[at.started_at] as number
    if (v[at.completed_at] !== null) op.completedAt = v[at.completed_at] as number
    if (v[at.expires_at] !== null) op.expiresAt = v[at.expires_at] as number
    if (v[at.worker] !== null) op.worker = v[at.worker] as string
    if (v[at.lease_expires_at] !== null) op.leaseExpiresAt = v[at.lease_expires_at] as number
    if (v[at.callback] !== null) {
      op.callback = {
        ...JSON.parse(v[at.callback] as string),
        state: v[at.callback_state] as DeliveryState,
        attempts: v[at.callback_attempts] as number,
      }
      if (v[at.callback_last_attempt_at] !== null) op.callback!.lastAttemptAt = v[at.callback_last_attempt_at] as number
      if (v[at.callback_last_status] !== null) op.callback!.lastStatus = v[at.callback_last_status] as number
    }
    if (v[at.subscriptions] !== null) op.subscriptions = JSON.parse(v[at.subscriptions] as string)
    return op
  }
}

/** Like `statementCache`, for statements reading operation rows. */
export function operationQueries(db: Database.Database): (sql: string) => OperationQuery {
  return preparedOnce(db, (statement) => new OperationQuery(statement))
}
