import Database, { type Statement } from 'better-sqlite3'
import { LongrunError } from '../../core/errors.js'
import type { HistoryEvent, Operation, OperationState } from '../../core/types.js'
import { MIGRATIONS } from './migrations.js'

// Opening a connection, the schema migrations, statement caching and the mapping of rows to
// operations: what reads (index.ts) and writes (writes.ts) share.

export type Synchronous = 'FULL' | 'NORMAL'

/** Opens `path` in WAL mode; closes it again when a pragma fails. */
export function openConnection(path: string, synchronous: Synchronous): Database.Database {
  const db = new Database(path)
  try {
    db.pragma('journal_mode = WAL')
    db.pragma(`synchronous = ${synchronous === 'NORMAL' ? 'NORMAL' : 'FULL'}`)
    db.pragma('busy_timeout = 5000')
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
    throw new LongrunError(
      'schema-too-new',
      500,
      'Schema too new',
      `The database schema is at version ${current}; this longrun knows up to ${latest}. Upgrade longrun.`,
    )
  }
  for (const migration of MIGRATIONS) {
    if (migration.version <= current) continue
    db.transaction(() => {
      db.exec(migration.sql)
      db.pragma(`user_version = ${migration.version}`)
    }).immediate()
  }
}

/** Prepares each distinct SQL text once per connection. */
export function statementCache(db: Database.Database): (sql: string) => Statement {
  const statements = new Map<string, Statement>()
  return (sql) => {
    let statement = statements.get(sql)
    if (!statement) {
      statement = db.prepare(sql)
      statements.set(sql, statement)
    }
    return statement
  }
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
}

export interface EventRow {
  at: number
  event: HistoryEvent
  attempt: number
  worker: string | null
  actor: string | null
  has_actor: number
  error: string | null
}

export function toOperation(row: Row): Operation {
  const op: Operation = {
    id: row.id,
    name: row.name,
    state: row.state,
    owner: row.owner,
    input: JSON.parse(row.input),
    params: JSON.parse(row.params),
    query: JSON.parse(row.query),
    headers: JSON.parse(row.headers),
    progress: JSON.parse(row.progress),
    attempt: row.attempt,
    maxAttempts: row.max_attempts,
    cancelable: row.cancelable === 1,
    cancelRequested: row.cancel_requested === 1,
    timeoutMs: row.timeout_ms,
    createdAt: row.created_at,
    runAt: row.run_at,
  }
  if (row.result !== null) op.result = JSON.parse(row.result)
  if (row.error !== null) op.error = JSON.parse(row.error)
  if (row.started_at !== null) op.startedAt = row.started_at
  if (row.completed_at !== null) op.completedAt = row.completed_at
  if (row.expires_at !== null) op.expiresAt = row.expires_at
  if (row.worker !== null) op.worker = row.worker
  if (row.lease_expires_at !== null) op.leaseExpiresAt = row.lease_expires_at
  return op
}
