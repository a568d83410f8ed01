import { duplicateOperationId, LongrunError, operationError } from '../../core/errors.js'
import type {
  Callback,
  DeliveryState,
  HistoryEntry,
  HistoryEvent,
  NewOperation,
  Operation,
  OperationError,
  OperationState,
  Outcome,
  Progress,
  Subscription,
} from '../../core/types.js'

// Rows as the driver reads them, operations as the insert statements take them, and the mapping
// of what PostgreSQL refuses (U+0000, constraint violations) to longrun's errors.

export interface Row {
  seq: number
  id: string
  name: string
  state: OperationState
  owner: string | null
  input: unknown
  params: Record<string, string>
  query: Record<string, unknown>
  headers: Record<string, string>
  request_id: string | null
  context: Record<string, unknown> | null
  progress: Progress
  result: unknown
  error: OperationError | null
  attempt: number
  max_attempts: number
  cancelable: boolean
  cancel_requested: boolean
  timeout_ms: number | null
  created_at: number
  started_at: number | null
  completed_at: number | null
  expires_at: number | null
  run_at: number
  worker: string | null
  lease_expires_at: number | null
  callback: Callback | null
  subscriptions: Subscription[] | null
  callback_state: DeliveryState | null
  callback_attempts: number | null
  callback_last_attempt_at: number | null
  callback_last_status: number | null
}

export interface EventRow {
  // BIGINT, read as a number by this store's type parser.
  seq: number
  at: number
  event: HistoryEvent
  attempt: number
  worker: string | null
  actor: string | null
  has_actor: boolean
  error: OperationError | null
  progress: Progress | null
}

const UNIQUE_VIOLATION = '23505'
const UNTRANSLATABLE_CHARACTER = '22P05'
const CHARACTER_NOT_IN_REPERTOIRE = '22021'
// U+0000 as JSON.stringify writes it: `\u0000` after an even number of backslashes.
export const NUL_ESCAPE = /(?<!\\)(?:\\\\)*\\u0000/
const NUL_ESCAPES = /(?<!\\)((?:\\\\)*)\\u0000/g

/** An operation as the JSON document the insert statements read. */
export function newRow(op: NewOperation) {
  return {
    id: op.id,
    name: op.name,
    owner: op.owner,
    input: op.input ?? null,
    params: op.params,
    query: op.query,
    headers: op.headers,
    requestId: op.requestId ?? null,
    context: op.context ?? null,
    maxAttempts: op.maxAttempts,
    cancelable: op.cancelable,
    timeoutMs: op.timeoutMs,
    createdAt: op.createdAt,
    /** Set for a deferred operation: it waits past any clock until started. */
    deferredExpiresAt: op.deferred?.expiresAt ?? null,
    callback: op.callback ?? null,
    subscriptions: op.subscriptions ?? null,
  }
}

/** Maps the driver's errors that callers can act on to longrun's; passes the others through. */
export function storeError(err: unknown): unknown {
  const { code, constraint } = err as { code?: string; constraint?: string }
  if (code === UNIQUE_VIOLATION && constraint === 'operations_id_key') {
    const id = /\(id\)=\((.*)\)/.exec((err as { detail?: string }).detail ?? '')?.[1] ?? ''
    return duplicateOperationId(id)
  }
  if (code === UNTRANSLATABLE_CHARACTER || code === CHARACTER_NOT_IN_REPERTOIRE) return unsupportedValue(err)
  return err
}

/**
 * A statement failed because of one row's data (SQLSTATE classes 22 and 23), rather than for want of
 * the database: worth retrying the other rows without it.
 */
export function isDataError(err: unknown): boolean {
  const code = (err as { code?: unknown }).code
  return typeof code === 'string' && (code.startsWith('22') || code.startsWith('23'))
}

export const unsupportedValue = (cause?: unknown) =>
  new LongrunError(
    'unsupported-value',
    'The PostgreSQL store cannot keep the character U+0000 (NUL) in text or JSON.',
    {
      cause,
    },
  )

/** The same text with U+0000 written as U+FFFD, for what is only shown (progress, errors). */
export function storable<T>(value: T): T {
  const json = JSON.stringify(value)
  return NUL_ESCAPE.test(json) ? (JSON.parse(json.replace(NUL_ESCAPES, '$1\\ufffd')) as T) : value
}

/** An outcome PostgreSQL can keep: a result it cannot store fails the operation instead of losing it. */
export function storableOutcome(outcome: Outcome): Outcome {
  if (outcome.state === 'succeeded' && NUL_ESCAPE.test(JSON.stringify(outcome.result ?? null))) {
    const detail = 'The result contains the character U+0000 (NUL), which the PostgreSQL store cannot keep.'
    return {
      state: 'failed',
      error: operationError('result-not-storable', 'Result not storable', detail),
      expiresAt: outcome.expiresAt,
    }
  }
  return outcome.state === 'succeeded' ? outcome : { ...outcome, error: storable(outcome.error) }
}

/**
 * Idempotency scopes join owner and name with NUL, which PostgreSQL text cannot hold: escape it,
 * and the escape character, so that distinct scopes stay distinct.
 */
export function escapeNul(text: string): string {
  return text.includes('\0') || text.includes('\\') ? text.replaceAll('\\', '\\\\').replaceAll('\0', '\\0') : text
}

export function toOperation(row: Row): Operation {
  const op: Operation = {
    id: row.id,
    name: row.name,
    state: row.state,
    owner: row.owner,
    input: row.input,
    params: row.params,
    query: row.query,
    headers: row.headers,
    progress: row.progress,
    attempt: row.attempt,
    maxAttempts: row.max_attempts,
    cancelable: row.cancelable,
    cancelRequested: row.cancel_requested,
    timeoutMs: row.timeout_ms,
    createdAt: row.created_at,
    runAt: row.run_at,
  }
  if (row.request_id !== null) op.requestId = row.request_id
  if (row.context !== null) op.context = row.context
  // JSONB null and SQL NULL read back alike: a result exists exactly when the operation succeeded.
  if (row.state === 'succeeded') op.result = row.result
  if (row.error !== null) op.error = row.error
  if (row.started_at !== null) op.startedAt = row.started_at
  if (row.completed_at !== null) op.completedAt = row.completed_at
  if (row.expires_at !== null) op.expiresAt = row.expires_at
  if (row.worker !== null) op.worker = row.worker
  if (row.lease_expires_at !== null) op.leaseExpiresAt = row.lease_expires_at
  if (row.callback !== null) {
    op.callback = { ...row.callback, state: row.callback_state!, attempts: row.callback_attempts! }
    if (row.callback_last_attempt_at !== null) op.callback.lastAttemptAt = row.callback_last_attempt_at
    if (row.callback_last_status !== null) op.callback.lastStatus = row.callback_last_status
  }
  if (row.subscriptions !== null) op.subscriptions = row.subscriptions
  return op
}

export function toHistoryEntry(row: EventRow): HistoryEntry {
  const entry: HistoryEntry = { seq: row.seq, at: row.at, event: row.event, attempt: row.attempt }
  if (row.worker !== null) entry.worker = row.worker
  if (row.has_actor) entry.actor = row.actor
  if (row.error !== null) entry.error = row.error
  if (row.progress !== null) entry.progress = row.progress
  return entry
}
