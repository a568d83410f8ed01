import type {
  ClaimRequest,
  HistoryEntry,
  IdempotencyKey,
  IdempotentInsert,
  IdempotentUse,
  IdempotencyLookup,
  Lease,
  LeaseStatus,
  ListQuery,
  NewOperation,
  Operation,
  Outcome,
  Page,
  Progress,
  Readable,
  StatsQuery,
  StatsRow,
} from './types.js'
import type { Condition } from './query.js'
import type { DeliveryState, HistoryEvent } from './types.js'
import type { TerminalState } from './operation.js'

/**
 * A change another process made to a shared store, for stores that can tell (e.g. PostgreSQL's
 * LISTEN/NOTIFY). A store may also report its own process's changes: engines treat notices as hints.
 */
export type StoreNotice =
  /** An operation of `name` became due: workers should claim now rather than at the next poll. */
  | { kind: 'queued'; name: string }
  /** A cancel was requested for a running operation: the worker holding it should abort it. */
  | { kind: 'cancel-requested'; id: string }
  /** The operation's state or progress changed. */
  | { kind: 'changed'; id: string }

/**
 * The engine's only view of storage. Every state change is a compare-and-set inside the store, so
 * that concurrent engines, workers and requests can never move an operation backwards or record
 * two outcomes for it. Times are epoch milliseconds from the engine's clock.
 */
export interface Store {
  /** Commits a new `queued` operation; resolves only once it is durable. Rejects a duplicate id. */
  insert(op: NewOperation): Promise<Operation>
  /**
   * Inserts unless `key` is live in its scope: then answers with the operation the key made
   * (`replayed`) when the fingerprint matches, `mismatch` otherwise. Atomic: concurrent uses of one
   * key make one operation. An expired key, or one whose operation was deleted, is used afresh.
   */
  insertIdempotent(op: NewOperation, key: IdempotencyKey, now: number): Promise<IdempotentInsert>
  /** What `insertIdempotent` would answer for a live key, without inserting: `undefined` for none. */
  findIdempotent(key: IdempotencyLookup, now: number): Promise<IdempotentUse | undefined>
  get(id: string): Promise<Operation | undefined>
  /** The operation's history, oldest first, from its `submitted` event on, without `progress` events. */
  history(id: string): Promise<HistoryEntry[]>
  /** Newest first. */
  list(query: ListQuery): Promise<Page>
  stats(query: StatsQuery): Promise<StatsRow[]>
  /**
   * Moves due operations to `running` for `worker`, each with a new attempt number, a lease of
   * `leaseMs` and its progress back at 0 (an attempt reports only its own). Due: `queued` with
   * `runAt <= now`, or `running` with an expired lease (its worker died). Each operation is claimed
   * by at most one worker at a time. Records `started` (and `lease-lost` for the previous attempt of
   * a reclaimed operation) in the history.
   */
  claim(worker: string, wants: ClaimRequest[], leaseMs: number, now: number): Promise<Operation[]>
  /** Extends the lease while it is held. */
  heartbeat(lease: Lease, leaseMs: number, now: number): Promise<LeaseStatus>
  /**
   * Records progress while the lease is held, with a `progress` event; `false` and no change
   * otherwise. A store may coalesce progresses of one lease made close together into the last.
   */
  progress(lease: Lease, progress: Progress, now: number): Promise<boolean>
  /** Records the attempt's outcome while the lease is held; `undefined` and no change otherwise. */
  settle(lease: Lease, outcome: Outcome, now: number): Promise<Operation | undefined>
  /**
   * Gives a held operation back to `queued`, e.g. at shutdown, keeping its `runAt`: it is due at
   * once and keeps its place in the queue. `false` if no longer held.
   */
  release(lease: Lease, now: number): Promise<boolean>
  /**
   * Cancels a cancelable operation: a `queued` one becomes `canceled` at once (purged after
   * `expiresAt`), a `running` one gets `cancelRequested`. Anything else is left as it is.
   * Returns the operation as it now is, `undefined` if there is none.
   */
  cancel(id: string, now: number, expiresAt: number, actor?: string | null): Promise<Operation | undefined>
  /**
   * Queues a `failed` or `canceled` operation again with a fresh budget of `attempts` attempts.
   * Returns the queued operation, `undefined` when it is not (or no longer) failed or canceled.
   */
  requeue(id: string, attempts: number, now: number, actor?: string | null): Promise<Operation | undefined>
  /** Removes a finished operation and its history; `false` when there is none or it is not finished. */
  delete(id: string): Promise<boolean>
  /**
   * Removes up to `limit` finished operations whose `expiresAt` has passed, with their history, and
   * the idempotency keys that expired; returns how many operations.
   */
  purge(now: number, limit: number): Promise<number>
  /** Delivers notices of changes made through other connections; returns the unsubscribe function. */
  subscribe?(listener: (notice: StoreNotice) => void): () => void
  close(): Promise<void>
}

// Optional capabilities: a store offers each by having its methods, and the engine checks with the
// guards below, as it does for `subscribe`. The store contract runs each capability's cases only on
// stores that have it.

/** A store that reads an operation's event log from a point on: what streams resume from. */
export interface EventLog {
  /**
   * The operation's events with `seq > after`, oldest first, at most `limit`: every entry of its
   * history and its `progress` events, written in the same transaction as the change each reports.
   */
  events(id: string, range: { after?: number; limit: number }): Promise<HistoryEntry[]>
}

export function hasEventLog(store: Store): store is Store & EventLog {
  return typeof (store as Partial<EventLog>).events === 'function'
}

/** An event of the feed across operations. */
export interface FeedEntry extends HistoryEntry {
  operationId: string
  /** The feed's position just after this entry: reading on from it gives the entries that follow. */
  cursor: string
}

export interface FeedQuery {
  /** A cursor from an earlier page; none: no entries, and the cursor of the present. */
  after?: string
  limit: number
  /** Only operations of these names. */
  names?: string[]
  /** Only what a caller may read. */
  readable?: Readable
}

export interface FeedPage {
  entries: FeedEntry[]
  /** Where the next page starts: the last entry's position, or `after` when there is none. */
  cursor: string
}

/**
 * A store that reads the events of many operations in the order they were committed: what group
 * streams resume from. A cursor never skips an event committed later with a smaller position (on
 * PostgreSQL, concurrent transactions can commit out of their sequence order).
 */
export interface EventFeed {
  /** An unknown cursor answers an empty page at the present, as list cursors do. */
  feed(query: FeedQuery): Promise<FeedPage>
}

export function hasEventFeed(store: Store): store is Store & EventFeed {
  return typeof (store as Partial<EventFeed>).feed === 'function'
}

/**
 * A store that keeps the messages to send about operations (webhook deliveries): for each event it
 * writes whose type an operation's `subscriptions` name, one message per subscribed target, in the
 * same transaction as the event; and hands each due message to one sender at a time, so that
 * nothing acknowledged is lost (a sender that dies leaves its messages to be claimed again when its
 * lease lapses: delivery is at least once).
 */
export interface Outbox {
  /**
   * Takes up to `limit` messages for `sender` until `now + leaseMs`, oldest first: `pending` ones
   * due by `now`, and `delivering` ones whose sender's lease lapsed. They become `delivering` (and so
   * does the operation's `callback.state`, for `callback` messages).
   */
  claimMessages(sender: string, limit: number, leaseMs: number, now: number): Promise<OutboxMessage[]>
  /**
   * Records an attempt of a message `sender` still holds (`false` and no change otherwise), then:
   * `retryAt` makes it `pending` again until then; without, it ends `delivered` when the attempt is
   * `ok`, else `failed`. For `callback` messages the operation's `callback` status follows.
   */
  recordDelivery(message: OutboxMessage, attempt: DeliveryAttempt, retryAt?: number): Promise<boolean>
  /** The operation's messages with their attempts, oldest first; `[]` for none or no operation. */
  deliveries(operationId: string): Promise<Delivery[]>
  /** Makes the operation's `delivered` and `failed` messages `pending` again, due `now`; returns how many. */
  redeliver(operationId: string, now: number): Promise<number>
  /**
   * Stops sending to `target` (an endpoint answered 410 Gone): its pending messages end `failed`,
   * and messages made for it later are made `failed`.
   */
  disableTarget(target: string, now: number): Promise<void>
}

export interface OutboxMessage {
  /** Stable across attempts, senders and restarts: the `webhook-id` receivers deduplicate by. */
  id: string
  operationId: string
  /** The `seq` of the event it reports, and the event. */
  seq: number
  event: HistoryEvent
  /** When the event was written. */
  at: number
  target: string
  /** Attempts made before this claim. */
  attempts: number
  /** Who holds it. */
  sender: string
}

export interface DeliveryAttempt {
  at: number
  durationMs: number
  /** A 2xx answer. */
  ok: boolean
  /** The answer's status; none when there was no answer (refused, timed out...). */
  status?: number
  error?: string
}

/** A message as `GET {base}/{id}/deliveries` shows it. */
export interface Delivery {
  id: string
  seq: number
  event: HistoryEvent
  target: string
  state: DeliveryState
  /** When it is due again, while `pending`. */
  nextAttemptAt?: number
  attempts: DeliveryAttempt[]
}

export function hasOutbox(store: Store): store is Store & Outbox {
  return typeof (store as Partial<Outbox>).claimMessages === 'function'
}

/** Where a query starts, and in which order: newest first (the default) or oldest first. */
export type QuerySort = 'newest' | 'oldest'

/**
 * A store that filters operations by conditions itself (SQL, not loading them all), with the
 * semantics documented on `QUERY_FIELDS`. Conditions are AND-joined; `readable` scopes them exactly
 * as it does `list`, so that what a caller cannot read never matches and is never counted.
 */
export interface Queryable {
  /** Like `list`, keeping only operations that meet every condition, in `sort` order (a cursor holds for the sort that gave it). */
  query(query: ListQuery & { where: Condition[]; sort?: QuerySort }): Promise<Page>
  /** Like `stats`, counting only operations that meet every condition. */
  queryStats(query: StatsQuery & { where: Condition[] }): Promise<StatsRow[]>
}

export function isQueryable(store: Store): store is Store & Queryable {
  return typeof (store as Partial<Queryable>).query === 'function'
}

/** How many finished operations of each terminal state to keep per owner (anonymous ones are one owner). */
export type KeepCounts = Partial<Record<TerminalState, number>>

/** A store that removes the oldest finished operations beyond a count per owner and state. */
export interface Trimmable {
  /**
   * For each state in `keep`, removes (with their history and idempotency keys) the finished
   * operations of each owner beyond the newest `keep[state]` by `completedAt` (ties: the later
   * submitted is the newer), oldest first, at most `limit` in all; returns how many. `Infinity`
   * keeps all; a negative count is an `invalid-option`.
   */
  trim(keep: KeepCounts, limit: number): Promise<number>
}

export function isTrimmable(store: Store): store is Store & Trimmable {
  return typeof (store as Partial<Trimmable>).trim === 'function'
}

/** A store shared by several processes that can let one of them at a time do a chore. */
export interface Exclusive {
  /**
   * Runs `task` while holding the lock `name` across every process on the store; `undefined`
   * without running it when another holds it.
   */
  exclusively<T>(name: string, task: () => Promise<T>): Promise<{ value: T } | undefined>
}

export function isExclusive(store: Store): store is Store & Exclusive {
  return typeof (store as Partial<Exclusive>).exclusively === 'function'
}

/** A store that keeps operations created to start later (`NewOperation.deferred`) until asked. */
export interface Deferrable {
  /**
   * Makes a deferred operation due at `now` (its `runAt`), keeping it `queued`, clearing the
   * `expiresAt` it had while waiting, and records `queued` in its history (`actor`: who asked).
   * Returns the operation as it now is, `undefined` if there is none; one that is not deferred
   * (started already, or finished) is returned unchanged. Atomic: two concurrent starts record one event.
   */
  start(id: string, now: number, actor?: string | null): Promise<Operation | undefined>
}

export function isDeferrable(store: Store): store is Store & Deferrable {
  return typeof (store as Partial<Deferrable>).start === 'function'
}

/** A store that can tell whether it can serve calls right now: what readiness checks ask. */
export interface Pingable {
  /**
   * Resolves when the store answers; rejects (`store-unavailable`, `storage-full`...) when its calls
   * would fail now, e.g. while its database is down. Cheap and bounded in time: a probe may call it
   * every few seconds.
   */
  ping(): Promise<void>
}

export function isPingable(store: Store): store is Store & Pingable {
  return typeof (store as Partial<Pingable>).ping === 'function'
}

/**
 * A store that can say, cheaply and synchronously, whether anything in it may have changed: what
 * lets the HTTP layer answer a repeated status read from the representation it built last time.
 */
export interface Stamped {
  /**
   * A value that differs from every earlier one once any operation, its history or its messages may
   * have changed, in this process or any other sharing the store. Equal stamps read before two reads
   * mean that nothing committed in between; a change of stamp may also have another cause.
   */
  changeStamp(): number | string
}

export function isStamped(store: Store): store is Store & Stamped {
  return typeof (store as Partial<Stamped>).changeStamp === 'function'
}
