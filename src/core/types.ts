/**
 * Terminology
 * - operation: one accepted request, tracked from `queued` to a terminal state.
 * - definition: what operations of one name do (handler, concurrency, timeout, retry policy).
 * - attempt: one start of a handler, numbered from 1. It is also the fencing token of the lease:
 *   a write carrying an older attempt number than the operation's changes nothing.
 * - lease: a worker's time-limited hold on a running operation, renewed by heartbeats. An expired
 *   lease makes the operation claimable again, so a dead worker never keeps it `running`.
 * - store: where operations live; the engine's only view of storage.
 */

import type { OperationState } from './operation.js'

export type { OperationState, TerminalState } from './operation.js'

export interface Progress {
  /** 0 to 100. */
  percent: number
  step?: string
  description?: string
}

/** What went wrong, shaped as an RFC 9457 problem so that the HTTP layer can show it as is. */
export interface OperationError {
  /** Stable URI naming the kind of failure, e.g. `urn:longrun:problem:timeout`. */
  type: string
  /** The short code inside `type`, e.g. `timeout`, `canceled`, `handler-error`. */
  code: string
  title: string
  detail?: string
  stack?: string
  /** Members a handler made public with `OperationFailure`'s `details`, e.g. `errors: [...]`. */
  [extension: string]: unknown
}

export interface Operation {
  id: string
  name: string
  state: OperationState
  /** The submitting principal's id; `null` when the route accepts anonymous callers. */
  owner: string | null
  input: unknown
  params: Record<string, string>
  query: Record<string, unknown>
  headers: Record<string, string>
  /**
   * The id the submitting request had in the server's logs (Fastify's `reqId`), carried into the
   * handler's logs so that the two join up.
   */
  requestId?: string
  progress: Progress
  result?: unknown
  error?: OperationError
  /** Number of starts so far (0 while never started); the fencing token of the current lease. */
  attempt: number
  /** A handler failure is retried while `attempt < maxAttempts`. */
  maxAttempts: number
  cancelable: boolean
  cancelRequested: boolean
  /** Per-attempt time limit; `null` for none. */
  timeoutMs: number | null
  /** Epoch milliseconds, like every time below. */
  createdAt: number
  startedAt?: number
  completedAt?: number
  /** When a finished operation will be purged. */
  expiresAt?: number
  /** Earliest time the operation may be claimed (its next attempt while `queued`). */
  runAt: number
  /** Worker holding the lease while `running`. */
  worker?: string
  leaseExpiresAt?: number
  /**
   * Values a hook attached at submit (an HTTP route's `beforeQueue`), JSON as stored; handlers get
   * them as `op.context`. Never credentials.
   */
  context?: Record<string, unknown>
  /** The operation's own callback, resolved from its route and request at submit, and how it is doing. */
  callback?: Callback & CallbackStatus
  /**
   * Which of its events make webhook messages, and for whom: fixed at submit (its callback, and the
   * app-wide endpoints subscribed to its name then). Each matching event is written to the outbox
   * in the same transaction as the event.
   */
  subscriptions?: Subscription[]
}

/** Where and how an operation's callback is sent (Pode's callback settings). */
export interface Callback {
  url: string
  method: 'POST' | 'PUT'
  contentType: 'application/json' | 'application/xml' | 'application/yaml'
  headers: Record<string, string>
  /** Whether the message carries the operation's result. */
  sendResult: boolean
}

export type DeliveryState = 'pending' | 'delivering' | 'delivered' | 'failed'

/** How an operation's callback is doing (Pode's `CallbackInfo`): that of its latest message. */
export interface CallbackStatus {
  /** `pending` also before any message exists, e.g. while the operation runs. */
  state: DeliveryState
  /** Delivery attempts of the callback's messages so far. */
  attempts: number
  lastAttemptAt?: number
  /** The HTTP status of the last attempt; none when it got no answer. */
  lastStatus?: number
}

/** One target's interest in an operation's events. */
export interface Subscription {
  /** `callback`: the operation's own callback; else the id of an app-wide webhook endpoint. */
  target: string
  /** The events that make a message, e.g. the terminal ones. */
  events: HistoryEvent[]
}

export type NewOperation = {
  callback?: Callback
  /**
   * Created without being queued (a route's `start: 'manual'`): stored `queued` with `runAt` at
   * `DEFERRED_RUN_AT`, so that no worker claims it until a `Deferrable` store's `start`; purged at
   * `expiresAt` if never started, as a finished operation is.
   */
  deferred?: { expiresAt: number }
} & Pick<
  Operation,
  | 'id'
  | 'name'
  | 'owner'
  | 'input'
  | 'params'
  | 'query'
  | 'headers'
  | 'requestId'
  | 'context'
  | 'subscriptions'
  | 'maxAttempts'
  | 'cancelable'
  | 'timeoutMs'
  | 'createdAt'
>

/** Proof of a claim: writes under it apply only while the operation is still `running` this attempt. */
export interface Lease {
  id: string
  attempt: number
  worker: string
}

export type Outcome =
  | { state: 'succeeded'; result: unknown; expiresAt: number }
  | { state: 'failed' | 'canceled'; error: OperationError; expiresAt: number }
  /** Another attempt later: back to `queued` until `runAt`, keeping the error of this one. */
  | { state: 'queued'; error: OperationError; runAt: number }

export interface LeaseStatus {
  /** `false` once the lease expired and was claimed again, or the operation settled. */
  held: boolean
  cancelRequested: boolean
}

export interface ClaimRequest {
  name: string
  /** At most this many operations of this name. */
  limit: number
}

/** Operations owned by one of `owners` (`null`: anonymous ones) or named one of `names`. */
export interface Readable {
  owners: (string | null)[]
  names: string[]
}

export interface ListQuery {
  states?: OperationState[]
  name?: string
  /** Restricts to one owner's operations (`null`: anonymous ones). */
  owner?: string | null
  /** Restricts to what a caller may see. */
  readable?: Readable
  limit: number
  /** Opaque, from a previous page's `nextCursor`. */
  cursor?: string
}

export interface Page {
  items: Operation[]
  nextCursor?: string
}

export interface StatsQuery {
  owner?: string | null
  states?: OperationState[]
  readable?: Readable
}

export interface StatsRow {
  name: string
  state: OperationState
  count: number
}

/** What happened to an operation, in the order it happened: its event log, audit trail and attempt history. */
export type HistoryEvent =
  /** Stored with the operation; `actor` is its owner. */
  | 'submitted'
  | 'started'
  | 'succeeded'
  | 'failed'
  | 'canceled'
  /** The attempt failed and another one is due at the operation's `runAt`. */
  | 'retry-scheduled'
  /** Given back at shutdown. */
  | 'released'
  /** Its worker stopped renewing the lease (it died) and the operation was claimed again. */
  | 'lease-lost'
  | 'cancel-requested'
  /** A manual retry queued it again. */
  | 'retried'
  /** A deferred operation was started (`Deferrable.start`): due from then on. */
  | 'queued'
  /** The running attempt reported progress (in the event log only: see `Store.history`). */
  | 'progress'

export interface HistoryEntry {
  /**
   * Increases with each event of the operation, in the order the changes were committed: the id
   * of the event in streams. Not dense, and not comparable across operations.
   */
  seq: number
  at: number
  event: HistoryEvent
  /** The attempt the event belongs to (the last one for requests made between attempts). */
  attempt: number
  /** The worker running the attempt, for attempt events. */
  worker?: string
  /** Who asked, for cancel and retry requests (`null`: anonymous). */
  actor?: string | null
  error?: OperationError
  /** What the attempt reported, for `progress` events. */
  progress?: Progress
}

/** An idempotency key as stored: unique per `scope` (caller and route) until `expiresAt`. */
export interface IdempotencyKey {
  scope: string
  key: string
  /** Hash of what the request asked for; the same key with another fingerprint is refused. */
  fingerprint: string
  expiresAt: number
}

export type IdempotencyLookup = Pick<IdempotencyKey, 'scope' | 'key' | 'fingerprint'>

/** What a live key already stands for. */
export type IdempotentUse = Exclude<IdempotentInsert, { kind: 'inserted' }>

export type IdempotentInsert =
  | { kind: 'inserted'; op: Operation }
  /** The key was already used for the same request: `op` is the operation it made. */
  | { kind: 'replayed'; op: Operation }
  /** The key was already used for a different request. */
  | { kind: 'mismatch' }
