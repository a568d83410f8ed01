import { canceledError, duplicateOperationId, invalidOption } from '../../core/errors.js'
import { allows, canCancel, DEFERRED_RUN_AT, isDeferred, isTerminal, type TerminalState } from '../../core/operation.js'
import type { Condition } from '../../core/query.js'
import type {
  Deferrable,
  EventFeed,
  EventLog,
  FeedEntry,
  FeedPage,
  FeedQuery,
  Delivery,
  DeliveryAttempt,
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
  Readable,
  StatsQuery,
  StatsRow,
} from '../../core/types.js'
import { cursorPosition } from '../cursor.js'
import { CALLBACK_TARGET, messageId, newCallback, stateAfter } from '../outbox.js'
import { keptCounts } from '../query.js'
import { copy, copyEntry, copyOp } from './copy.js'
import { matcher } from './query.js'

// Nested values (input, result, errors, progress...) are copied once on the way in and never
// changed in place after: internal objects may share them, and only what is handed out is copied.

interface Entry {
  seq: number
  op: Operation
  /** Every event, `progress` ones included, oldest first. */
  history: HistoryEntry[]
  /** The ids of its outbox messages, and the slots of the idempotency keys that made it. */
  messages: string[] | undefined
  keys: string[] | undefined
  /** Its index in `#finished` while it is finished and counted there, else -1. */
  rank: number
  /** Forgotten: its entries in the feed log are skipped, then compacted away. */
  removed: boolean
}

export interface MemoryStoreOptions {
  /**
   * How many finished (succeeded, failed or canceled) operations to keep: beyond it the oldest
   * finished, by completion, are removed with their history, events, messages and idempotency
   * keys, so that a long-lived process does not grow. `Infinity` keeps all (until purged).
   * @default 10000
   */
  maxFinished?: number
}

/** Compaction leaves this much slack, so that small stores do not compact on every removal. */
const COMPACT_SLACK = 1024

/** An outbox message as the memory store keeps it. */
interface Message {
  id: string
  operationId: string
  seq: number
  event: HistoryEvent
  at: number
  target: string
  state: DeliveryState
  attempts: DeliveryAttempt[]
  /** When it is due while `pending`. */
  dueAt: number
  sender?: string
  leaseExpiresAt?: number
}

export class MemoryStore implements Store, EventLog, EventFeed, Queryable, Trimmable, Outbox, Deferrable, Stamped {
  // Insertion order is `seq` order, which list() walks backwards for newest first.
  readonly #entries = new Map<string, Entry>()
  readonly #keys = new Map<string, { fingerprint: string; operationId: string; expiresAt: number }>()
  // Queued and running operations by name: claims look at these only, however many finished (or
  // deferred) ones are kept.
  readonly #live = new Map<string, Set<Entry>>()
  #seq = 0
  // One sequence for the events of every operation, as the SQL stores have: increasing per operation.
  #eventSeq = 0
  // Every operation's events in `seq` order, for the feed, with the entry of each one's operation;
  // those of forgotten operations are skipped until they are half the log, then compacted away.
  readonly #log: HistoryEntry[] = []
  readonly #logOwners: Entry[] = []
  #logRemoved = 0
  // Finished entries in completion order, from `#finishedHead` on; a slot whose entry's `rank` is
  // not its index was left (requeued, deleted...) and is skipped.
  #finished: Entry[] = []
  #finishedHead = 0
  #finishedCount = 0
  readonly #maxFinished: number
  #stamp = 0
  // Insertion order is creation order: claims take the oldest first.
  readonly #messages = new Map<string, Message>()
  readonly #disabled = new Set<string>()

  constructor(options: MemoryStoreOptions = {}) {
    const { maxFinished = 10_000 } = options
    if (!(maxFinished >= 0) || (!Number.isInteger(maxFinished) && maxFinished !== Infinity)) {
      throw invalidOption('maxFinished', 'must be a non-negative integer or Infinity')
    }
    this.#maxFinished = maxFinished
  }

  /** Moves on with every change, so that equal stamps mean nothing changed in between. */
  changeStamp(): number {
    return this.#stamp
  }

  async insert(input: NewOperation): Promise<Operation> {
    return copyOp(this.#insert(input).op)
  }

  #insert(input: NewOperation): Entry {
    if (this.#entries.has(input.id)) throw duplicateOperationId(input.id)
    const op = newOperation(input)
    const entry: Entry = {
      seq: ++this.#seq,
      op,
      history: [],
      messages: undefined,
      keys: undefined,
      rank: -1,
      removed: false,
    }
    this.#entries.set(op.id, entry)
    this.#track(entry)
    this.#record(entry, { at: op.createdAt, event: 'submitted', attempt: 0, actor: op.owner })
    return entry
  }

  async insertIdempotent(input: NewOperation, key: IdempotencyKey, now: number): Promise<IdempotentInsert> {
    const used = this.#used(key, now)
    if (used) return used
    // No await between the check above and the key below: concurrent uses of one key make one operation.
    const entry = this.#insert(input)
    const slot = slotOf(key)
    this.#keys.set(slot, { fingerprint: key.fingerprint, operationId: entry.op.id, expiresAt: key.expiresAt })
    ;(entry.keys ??= []).push(slot)
    this.#stamp++
    return { kind: 'inserted', op: copyOp(entry.op) }
  }

  async findIdempotent(key: IdempotencyLookup, now: number): Promise<IdempotentUse | undefined> {
    return this.#used(key, now)
  }

  #used(key: IdempotencyLookup, now: number): IdempotentUse | undefined {
    const used = this.#keys.get(slotOf(key))
    const made = used && used.expiresAt > now ? this.#entries.get(used.operationId) : undefined
    if (!used || !made) return undefined
    return used.fingerprint === key.fingerprint ? { kind: 'replayed', op: copyOp(made.op) } : { kind: 'mismatch' }
  }

  async history(id: string): Promise<HistoryEntry[]> {
    const found: HistoryEntry[] = []
    for (const entry of this.#entries.get(id)?.history ?? [])
      if (entry.event !== 'progress') found.push(copyEntry(entry))
    return found
  }

  async events(id: string, range: { after?: number; limit: number }): Promise<HistoryEntry[]> {
    const after = range.after ?? 0
    const found: HistoryEntry[] = []
    for (const entry of this.#entries.get(id)?.history ?? []) {
      if (found.length >= range.limit) break
      if (entry.seq > after) found.push(copyEntry(entry))
    }
    return found
  }

  async feed(query: FeedQuery): Promise<FeedPage> {
    const head = String(this.#eventSeq)
    const after = query.after === undefined ? undefined : cursorPosition(query.after)
    if (after === undefined) return { entries: [], cursor: head }
    const entries: FeedEntry[] = []
    for (let i = firstAfter(this.#log, after); i < this.#log.length && entries.length < query.limit; i++) {
      const owner = this.#logOwners[i]!
      const { op } = owner
      if (owner.removed || (query.names && !query.names.includes(op.name))) continue
      if (!isReadable(op, query.readable)) continue
      const entry = this.#log[i]!
      entries.push({ ...copyEntry(entry), operationId: op.id, cursor: String(entry.seq) })
    }
    // A page cut short by the filters still moves the cursor past what it read.
    const last = entries.length === query.limit ? entries[entries.length - 1]!.seq : this.#eventSeq
    return { entries, cursor: String(Math.max(after, last)) }
  }

  async get(id: string): Promise<Operation | undefined> {
    const entry = this.#entries.get(id)
    return entry && copyOp(entry.op)
  }

  async list(query: ListQuery): Promise<Page> {
    return this.#page(query, () => true, 'newest')
  }

  async query(query: ListQuery & { where: Condition[]; sort?: QuerySort }): Promise<Page> {
    return this.#page(query, matcher(query.where), query.sort ?? 'newest')
  }

  /** The page of `query` among the operations `matches` keeps; the cursor is the last one's `seq`. */
  #page(query: ListQuery, matches: (op: Operation) => boolean, sort: QuerySort): Page {
    const from = query.cursor === undefined ? undefined : cursorPosition(query.cursor)
    if (query.cursor !== undefined && from === undefined) return { items: [] }
    const all = [...this.#entries.values()]
    const newest = sort === 'newest'
    const items: Entry[] = []
    for (let n = 0; n < all.length && items.length <= query.limit; n++) {
      const entry = all[newest ? all.length - 1 - n : n]!
      const { op } = entry
      if (from !== undefined && (newest ? entry.seq >= from : entry.seq <= from)) continue
      // An empty `states` filters nothing, as in the SQLite store.
      if (query.states?.length && !query.states.includes(op.state)) continue
      if (query.name !== undefined && op.name !== query.name) continue
      if (query.owner !== undefined && op.owner !== query.owner) continue
      if (!isReadable(op, query.readable)) continue
      if (!matches(op)) continue
      items.push(entry)
    }
    const more = items.length > query.limit
    const page = items.slice(0, query.limit)
    return {
      items: page.map((e) => copyOp(e.op)),
      ...(more ? { nextCursor: String(page[page.length - 1]!.seq) } : {}),
    }
  }

  async stats(query: StatsQuery): Promise<StatsRow[]> {
    return this.#stats(query, () => true)
  }

  async queryStats(query: StatsQuery & { where: Condition[] }): Promise<StatsRow[]> {
    return this.#stats(query, matcher(query.where))
  }

  #stats(query: StatsQuery, matches: (op: Operation) => boolean): StatsRow[] {
    const counts = new Map<string, StatsRow>()
    for (const { op } of this.#entries.values()) {
      if (query.owner !== undefined && op.owner !== query.owner) continue
      if (query.states?.length && !query.states.includes(op.state)) continue
      if (!isReadable(op, query.readable)) continue
      if (!matches(op)) continue
      const key = `${op.name}\u0000${op.state}`
      const row = counts.get(key) ?? { name: op.name, state: op.state, count: 0 }
      row.count++
      counts.set(key, row)
    }
    return [...counts.values()]
  }

  async claim(worker: string, wants: ClaimRequest[], leaseMs: number, now: number): Promise<Operation[]> {
    const claimed: Operation[] = []
    for (const want of wants) {
      let left = want.limit
      for (const entry of this.#live.get(want.name) ?? []) {
        if (left === 0) break
        const { op } = entry
        const expired = op.state === 'running' && op.leaseExpiresAt! <= now
        if (!(expired || (op.state === 'queued' && op.runAt <= now))) continue
        if (expired) this.#record(entry, { at: now, event: 'lease-lost', attempt: op.attempt, worker: op.worker! })
        op.state = 'running'
        op.attempt++
        op.worker = worker
        op.leaseExpiresAt = now + leaseMs
        op.startedAt = now
        op.progress = { percent: 0 }
        this.#record(entry, { at: now, event: 'started', attempt: op.attempt, worker })
        left--
        claimed.push(copyOp(op))
      }
    }
    return claimed
  }

  async heartbeat(lease: Lease, leaseMs: number, now: number): Promise<LeaseStatus> {
    const op = this.#held(lease)?.op
    if (!op) return { held: false, cancelRequested: false }
    op.leaseExpiresAt = now + leaseMs
    this.#stamp++
    return { held: true, cancelRequested: op.cancelRequested }
  }

  async progress(lease: Lease, progress: Progress, now: number): Promise<boolean> {
    const entry = this.#held(lease)
    if (!entry) return false
    entry.op.progress = { ...progress }
    this.#record(entry, {
      at: now,
      event: 'progress',
      attempt: entry.op.attempt,
      worker: lease.worker,
      progress: entry.op.progress,
    })
    return true
  }

  async settle(lease: Lease, outcome: Outcome, now: number): Promise<Operation | undefined> {
    const entry = this.#held(lease)
    if (!entry) return undefined
    const { op } = entry
    const error = outcome.state === 'succeeded' ? undefined : copy(outcome.error)
    op.worker = undefined
    op.leaseExpiresAt = undefined
    this.#record(entry, {
      at: now,
      event: outcome.state === 'queued' ? 'retry-scheduled' : outcome.state,
      attempt: op.attempt,
      worker: lease.worker,
      ...(error === undefined ? {} : { error }),
    })
    if (outcome.state === 'queued') {
      op.state = 'queued'
      op.error = error
      op.runAt = outcome.runAt
    } else {
      op.state = outcome.state
      op.completedAt = now
      op.expiresAt = outcome.expiresAt
      if (outcome.state === 'succeeded') {
        op.result = copy(outcome.result)
        op.error = undefined
      } else {
        op.error = error
      }
    }
    this.#track(entry)
    const settled = copyOp(op)
    if (outcome.state !== 'queued') this.#finish(entry)
    return settled
  }

  async release(lease: Lease, now: number): Promise<boolean> {
    const entry = this.#held(lease)
    if (!entry) return false
    const { op } = entry
    this.#record(entry, { at: now, event: 'released', attempt: op.attempt, worker: lease.worker })
    op.state = 'queued'
    op.worker = undefined
    op.leaseExpiresAt = undefined
    return true
  }

  async cancel(
    id: string,
    now: number,
    expiresAt: number,
    actor: string | null = null,
  ): Promise<Operation | undefined> {
    const entry = this.#entries.get(id)
    if (!entry) return undefined
    const { op } = entry
    if (!canCancel(op)) return copyOp(op)
    if (op.state === 'queued') {
      const error = canceledError()
      this.#record(entry, { at: now, event: 'canceled', attempt: op.attempt, actor, error })
      op.state = 'canceled'
      op.cancelRequested = true
      op.completedAt = now
      op.expiresAt = expiresAt
      op.error = error
      this.#track(entry)
      const canceled = copyOp(op)
      this.#finish(entry)
      return canceled
    }
    if (!op.cancelRequested) {
      this.#record(entry, { at: now, event: 'cancel-requested', attempt: op.attempt, actor })
      op.cancelRequested = true
    }
    return copyOp(op)
  }

  async requeue(
    id: string,
    attempts: number,
    now: number,
    actor: string | null = null,
  ): Promise<Operation | undefined> {
    const entry = this.#entries.get(id)
    if (!entry || !allows('retry', entry.op.state)) return undefined
    const { op } = entry
    this.#record(entry, { at: now, event: 'retried', attempt: op.attempt, actor })
    op.state = 'queued'
    op.maxAttempts = op.attempt + attempts
    op.cancelRequested = false
    op.runAt = now
    op.progress = { percent: 0 }
    op.error = undefined
    op.result = undefined
    op.completedAt = undefined
    op.expiresAt = undefined
    this.#unfinish(entry)
    this.#track(entry)
    return copyOp(op)
  }

  async start(id: string, now: number, actor: string | null = null): Promise<Operation | undefined> {
    const entry = this.#entries.get(id)
    if (!entry) return undefined
    const { op } = entry
    if (isDeferred(op)) {
      this.#record(entry, { at: now, event: 'queued', attempt: op.attempt, actor })
      op.runAt = now
      op.expiresAt = undefined
      this.#track(entry)
    }
    return copyOp(op)
  }

  async delete(id: string): Promise<boolean> {
    const entry = this.#entries.get(id)
    if (!entry || !allows('delete', entry.op.state)) return false
    this.#forget(entry)
    return true
  }

  async purge(now: number, limit: number): Promise<number> {
    const purged: Entry[] = []
    for (const entry of this.#entries.values()) {
      if (purged.length === limit) break
      const { op } = entry
      // Finished ones, and deferred ones never started: the only others with an `expiresAt`.
      if ((isTerminal(op.state) || isDeferred(op)) && op.expiresAt !== undefined && op.expiresAt <= now) {
        purged.push(entry)
      }
    }
    for (const entry of purged) this.#forget(entry)
    for (const [slot, used] of this.#keys) {
      if (used.expiresAt > now) continue
      this.#keys.delete(slot)
      this.#stamp++
    }
    return purged.length
  }

  async trim(keep: KeepCounts, limit: number): Promise<number> {
    const kept = new Map(keptCounts(keep))
    if (kept.size === 0 || !(limit > 0)) return 0
    // Each owner's finished operations of each kept state, newest first: by completedAt, then seq.
    const groups = new Map<string, Entry[]>()
    for (const entry of this.#entries.values()) {
      const { op } = entry
      if (!kept.has(op.state as TerminalState) || op.completedAt === undefined) continue
      const group = JSON.stringify([op.owner, op.state])
      const members = groups.get(group)
      if (members) members.push(entry)
      else groups.set(group, [entry])
    }
    const beyond: Entry[] = []
    for (const group of groups.values()) {
      group.sort((a, b) => b.op.completedAt! - a.op.completedAt! || b.seq - a.seq)
      beyond.push(...group.slice(kept.get(group[0]!.op.state as TerminalState)))
    }
    beyond.sort((a, b) => a.op.completedAt! - b.op.completedAt! || a.seq - b.seq)
    const trimmed = beyond.slice(0, limit)
    for (const entry of trimmed) this.#forget(entry)
    return trimmed.length
  }

  /** Removes an operation with its history, events, messages and idempotency keys. */
  #forget(entry: Entry): void {
    const { op } = entry
    this.#entries.delete(op.id)
    this.#live.get(op.name)?.delete(entry)
    this.#unfinish(entry)
    entry.removed = true
    this.#logRemoved += entry.history.length
    for (const id of entry.messages ?? []) this.#messages.delete(id)
    for (const slot of entry.keys ?? []) if (this.#keys.get(slot)?.operationId === op.id) this.#keys.delete(slot)
    this.#stamp++
    if (this.#logRemoved > this.#log.length / 2 + COMPACT_SLACK) this.#compactLog()
  }

  /** Drops the log entries of forgotten operations: linear, but only once they are half the log. */
  #compactLog(): void {
    let kept = 0
    for (let i = 0; i < this.#log.length; i++) {
      const owner = this.#logOwners[i]!
      if (owner.removed) continue
      this.#log[kept] = this.#log[i]!
      this.#logOwners[kept++] = owner
    }
    this.#log.length = kept
    this.#logOwners.length = kept
    this.#logRemoved = 0
  }

  /** Counts a newly finished operation, evicting the oldest finished beyond `maxFinished`. */
  #finish(entry: Entry): void {
    if (this.#maxFinished === Infinity) return
    entry.rank = this.#finished.length
    this.#finished.push(entry)
    this.#finishedCount++
    while (this.#finishedCount > this.#maxFinished) {
      const oldest = this.#finished[this.#finishedHead]!
      if (oldest.rank === this.#finishedHead) this.#forget(oldest)
      this.#finishedHead++
    }
    this.#compactFinished()
  }

  /** Stops counting an operation that is no longer finished, or no longer kept. */
  #unfinish(entry: Entry): void {
    if (entry.rank < 0) return
    entry.rank = -1
    this.#finishedCount--
  }

  /** Drops the slots evicted or left once they outnumber the counted ones: amortised O(1) per finish. */
  #compactFinished(): void {
    if (this.#finished.length <= 2 * this.#finishedCount + COMPACT_SLACK) return
    const counted: Entry[] = []
    for (let i = this.#finishedHead; i < this.#finished.length; i++) {
      const entry = this.#finished[i]!
      if (entry.rank !== i) continue
      entry.rank = counted.length
      counted.push(entry)
    }
    this.#finished = counted
    this.#finishedHead = 0
  }

  async close(): Promise<void> {}

  /** Always answers: the process is the store. */
  async ping(): Promise<void> {}

  #track(entry: Entry): void {
    const { op } = entry
    let live = this.#live.get(op.name)
    if (!isTerminal(op.state) && !isDeferred(op)) {
      if (!live) this.#live.set(op.name, (live = new Set()))
      live.add(entry)
    } else {
      live?.delete(entry)
    }
  }

  #record(owner: Entry, event: Omit<HistoryEntry, 'seq'>): void {
    const entry: HistoryEntry = { seq: ++this.#eventSeq, ...event }
    const { op } = owner
    this.#stamp++
    this.#log.push(entry)
    this.#logOwners.push(owner)
    owner.history.push(entry)
    for (const { target, events } of op.subscriptions ?? []) {
      if (!events.includes(entry.event)) continue
      const id = messageId(op.id, entry.seq, target)
      const state = this.#disabled.has(target) ? 'failed' : 'pending'
      const message = { id, operationId: op.id, seq: entry.seq, event: entry.event, at: entry.at, target }
      this.#messages.set(id, { ...message, state, attempts: [], dueAt: entry.at })
      ;(owner.messages ??= []).push(id)
    }
  }

  async claimMessages(sender: string, limit: number, leaseMs: number, now: number): Promise<OutboxMessage[]> {
    const claimed: OutboxMessage[] = []
    for (const message of this.#messages.values()) {
      if (claimed.length >= limit) break
      const due = message.state === 'pending' && message.dueAt <= now
      const lapsed = message.state === 'delivering' && message.leaseExpiresAt! <= now
      if (!due && !lapsed) continue
      message.state = 'delivering'
      message.sender = sender
      message.leaseExpiresAt = now + leaseMs
      this.#callbackFollows(message, (status) => (status.state = 'delivering'))
      const { id, operationId, seq, event, at, target } = message
      claimed.push({ id, operationId, seq, event, at, target, attempts: message.attempts.length, sender })
    }
    if (claimed.length > 0) this.#stamp++
    return claimed
  }

  async recordDelivery(claimed: OutboxMessage, attempt: DeliveryAttempt, retryAt?: number): Promise<boolean> {
    const message = this.#messages.get(claimed.id)
    // The sender and the attempts made before its claim fence off a sender whose lease was taken over.
    if (
      !message ||
      message.state !== 'delivering' ||
      message.sender !== claimed.sender ||
      message.attempts.length !== claimed.attempts
    ) {
      return false
    }
    message.attempts.push({ ...attempt })
    message.state = stateAfter(attempt.ok, retryAt)
    if (retryAt !== undefined) message.dueAt = retryAt
    delete message.sender
    delete message.leaseExpiresAt
    this.#callbackFollows(message, (status) => {
      status.state = message.state
      status.attempts++
      status.lastAttemptAt = attempt.at
      if (attempt.status === undefined) delete status.lastStatus
      else status.lastStatus = attempt.status
    })
    this.#stamp++
    return true
  }

  async deliveries(operationId: string): Promise<Delivery[]> {
    return this.#messagesOf(operationId).map(({ id, seq, event, target, state, dueAt, attempts }) => ({
      id,
      seq,
      event,
      target,
      state,
      ...(state === 'pending' ? { nextAttemptAt: dueAt } : {}),
      attempts: attempts.map((attempt) => ({ ...attempt })),
    }))
  }

  async redeliver(operationId: string, now: number): Promise<number> {
    let redelivered = 0
    for (const message of this.#messagesOf(operationId)) {
      if (message.state !== 'delivered' && message.state !== 'failed') continue
      message.state = 'pending'
      message.dueAt = now
      this.#callbackFollows(message, (status) => (status.state = 'pending'))
      redelivered++
    }
    if (redelivered > 0) this.#stamp++
    return redelivered
  }

  /** The operation's messages, oldest first. */
  #messagesOf(operationId: string): Message[] {
    const ids = this.#entries.get(operationId)?.messages ?? []
    return ids.map((id) => this.#messages.get(id)!)
  }

  async disableTarget(target: string, _now: number): Promise<void> {
    this.#disabled.add(target)
    // Messages made later are made `failed`: that changes what the store will hold.
    this.#stamp++
    for (const message of this.#messages.values()) {
      if (message.target !== target || message.state !== 'pending') continue
      message.state = 'failed'
      this.#callbackFollows(message, (status) => (status.state = 'failed'))
    }
  }

  /** Applies `change` to the operation's callback status when `message` is one of its callback's. */
  #callbackFollows(message: Message, change: (status: NonNullable<Operation['callback']>) => void): void {
    if (message.target !== CALLBACK_TARGET) return
    const callback = this.#entries.get(message.operationId)?.op.callback
    if (callback) change(callback)
  }

  #held(lease: Lease): Entry | undefined {
    const entry = this.#entries.get(lease.id)
    const op = entry?.op
    return op && op.state === 'running' && op.attempt === lease.attempt && op.worker === lease.worker
      ? entry
      : undefined
  }
}

/**
 * The stored form of `input`: every field present, unset ones `undefined` (left out of copies, so
 * absent reads back as absent, as from the SQL stores' NULL), in one order, so that all operations
 * share one shape and the store's reads and writes of them stay fast.
 */
function newOperation(input: NewOperation): Operation {
  return {
    id: input.id,
    name: input.name,
    state: 'queued',
    owner: input.owner,
    input: copy(input.input),
    params: copy(input.params),
    query: copy(input.query),
    headers: copy(input.headers),
    requestId: input.requestId,
    progress: { percent: 0 },
    result: undefined,
    error: undefined,
    attempt: 0,
    maxAttempts: input.maxAttempts,
    cancelable: input.cancelable,
    cancelRequested: false,
    timeoutMs: input.timeoutMs,
    createdAt: input.createdAt,
    startedAt: undefined,
    completedAt: undefined,
    expiresAt: input.deferred?.expiresAt,
    runAt: input.deferred ? DEFERRED_RUN_AT : input.createdAt,
    worker: undefined,
    leaseExpiresAt: undefined,
    context: copy(input.context),
    callback: input.callback && newCallback(input.callback),
    subscriptions: copy(input.subscriptions),
  }
}

const slotOf = (key: IdempotencyLookup) => `${key.scope}\u0000${key.key}`

/** The index of the first entry with `seq > after`: the log is in `seq` order. */
function firstAfter(log: HistoryEntry[], after: number): number {
  let low = 0
  let high = log.length
  while (low < high) {
    const mid = (low + high) >>> 1
    if (log[mid]!.seq <= after) low = mid + 1
    else high = mid
  }
  return low
}

function isReadable(op: Operation, readable: Readable | undefined): boolean {
  return !readable || readable.owners.includes(op.owner) || readable.names.includes(op.name)
}
