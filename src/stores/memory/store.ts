import { canceledError, duplicateOperationId } from '../../core/errors.js'
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
import { matcher } from './query.js'

interface Entry {
  seq: number
  op: Operation
}

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

export class MemoryStore implements Store, EventLog, EventFeed, Queryable, Trimmable, Outbox, Deferrable {
  // Insertion order is `seq` order, which list() walks backwards for newest first.
  readonly #entries = new Map<string, Entry>()
  readonly #history = new Map<string, HistoryEntry[]>()
  readonly #keys = new Map<string, { fingerprint: string; operationId: string; expiresAt: number }>()
  // Queued and running operations by name: claims look at these only, however many finished (or
  // deferred) ones are kept.
  readonly #live = new Map<string, Set<Operation>>()
  #seq = 0
  // One sequence for the events of every operation, as the SQL stores have: increasing per operation.
  #eventSeq = 0
  // Every operation's events in `seq` order, for the feed; trimmed with the operations.
  #log: FeedEntry[] = []
  // Insertion order is creation order: claims take the oldest first.
  readonly #messages = new Map<string, Message>()
  readonly #disabled = new Set<string>()

  async insert(input: NewOperation): Promise<Operation> {
    return this.#insert(input)
  }

  #insert(input: NewOperation): Operation {
    if (this.#entries.has(input.id)) throw duplicateOperationId(input.id)
    const { callback, deferred, context, ...fields } = input
    const op: Operation = {
      ...structuredClone(fields),
      // Absent reads back as absent, as from the SQL stores' NULL.
      ...(context === undefined ? {} : { context: structuredClone(context) }),
      ...(callback ? { callback: newCallback(callback) } : {}),
      state: 'queued',
      progress: { percent: 0 },
      attempt: 0,
      cancelRequested: false,
      runAt: deferred ? DEFERRED_RUN_AT : input.createdAt,
      ...(deferred ? { expiresAt: deferred.expiresAt } : {}),
    }
    this.#entries.set(op.id, { seq: ++this.#seq, op })
    this.#track(op)
    this.#record(op, { at: op.createdAt, event: 'submitted', attempt: 0, actor: op.owner })
    return structuredClone(op)
  }

  async insertIdempotent(input: NewOperation, key: IdempotencyKey, now: number): Promise<IdempotentInsert> {
    const used = this.#used(key, now)
    if (used) return used
    // No await between the check above and the key below: concurrent uses of one key make one operation.
    const op = this.#insert(input)
    this.#keys.set(slotOf(key), { fingerprint: key.fingerprint, operationId: op.id, expiresAt: key.expiresAt })
    return { kind: 'inserted', op }
  }

  async findIdempotent(key: IdempotencyLookup, now: number): Promise<IdempotentUse | undefined> {
    return this.#used(key, now)
  }

  #used(key: IdempotencyLookup, now: number): IdempotentUse | undefined {
    const used = this.#keys.get(slotOf(key))
    const made = used && used.expiresAt > now ? this.#entries.get(used.operationId) : undefined
    if (!used || !made) return undefined
    return used.fingerprint === key.fingerprint
      ? { kind: 'replayed', op: structuredClone(made.op) }
      : { kind: 'mismatch' }
  }

  async history(id: string): Promise<HistoryEntry[]> {
    return structuredClone((this.#history.get(id) ?? []).filter((entry) => entry.event !== 'progress'))
  }

  async events(id: string, range: { after?: number; limit: number }): Promise<HistoryEntry[]> {
    const after = range.after ?? 0
    const found: HistoryEntry[] = []
    for (const entry of this.#history.get(id) ?? []) {
      if (found.length >= range.limit) break
      if (entry.seq > after) found.push(entry)
    }
    return structuredClone(found)
  }

  async feed(query: FeedQuery): Promise<FeedPage> {
    const head = String(this.#eventSeq)
    const after = query.after === undefined ? undefined : cursorPosition(query.after)
    if (after === undefined) return { entries: [], cursor: head }
    const entries: FeedEntry[] = []
    for (let i = firstAfter(this.#log, after); i < this.#log.length && entries.length < query.limit; i++) {
      const entry = this.#log[i]!
      const op = this.#entries.get(entry.operationId)!.op
      if (query.names && !query.names.includes(op.name)) continue
      if (isReadable(op, query.readable)) entries.push(entry)
    }
    // A page cut short by the filters still moves the cursor past what it read.
    const last = entries.length === query.limit ? entries[entries.length - 1]!.seq : this.#eventSeq
    return { entries: structuredClone(entries), cursor: String(Math.max(after, last)) }
  }

  async get(id: string): Promise<Operation | undefined> {
    const entry = this.#entries.get(id)
    return entry && structuredClone(entry.op)
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
      items: page.map((e) => structuredClone(e.op)),
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
      for (const op of this.#live.get(want.name) ?? []) {
        if (left === 0) break
        const expired = op.state === 'running' && op.leaseExpiresAt! <= now
        if (!(expired || (op.state === 'queued' && op.runAt <= now))) continue
        if (expired) this.#record(op, { at: now, event: 'lease-lost', attempt: op.attempt, worker: op.worker! })
        op.state = 'running'
        op.attempt++
        op.worker = worker
        op.leaseExpiresAt = now + leaseMs
        op.startedAt = now
        op.progress = { percent: 0 }
        this.#record(op, { at: now, event: 'started', attempt: op.attempt, worker })
        left--
        claimed.push(structuredClone(op))
      }
    }
    return claimed
  }

  async heartbeat(lease: Lease, leaseMs: number, now: number): Promise<LeaseStatus> {
    const op = this.#held(lease)
    if (!op) return { held: false, cancelRequested: false }
    op.leaseExpiresAt = now + leaseMs
    return { held: true, cancelRequested: op.cancelRequested }
  }

  async progress(lease: Lease, progress: Progress, now: number): Promise<boolean> {
    const op = this.#held(lease)
    if (!op) return false
    op.progress = { ...progress }
    this.#record(op, {
      at: now,
      event: 'progress',
      attempt: op.attempt,
      worker: lease.worker,
      progress: op.progress,
    })
    return true
  }

  async settle(lease: Lease, outcome: Outcome, now: number): Promise<Operation | undefined> {
    const op = this.#held(lease)
    if (!op) return undefined
    delete op.worker
    delete op.leaseExpiresAt
    this.#record(op, {
      at: now,
      event: outcome.state === 'queued' ? 'retry-scheduled' : outcome.state,
      attempt: op.attempt,
      worker: lease.worker,
      ...(outcome.state === 'succeeded' ? {} : { error: outcome.error }),
    })
    if (outcome.state === 'queued') {
      op.state = 'queued'
      op.error = outcome.error
      op.runAt = outcome.runAt
    } else {
      op.state = outcome.state
      op.completedAt = now
      op.expiresAt = outcome.expiresAt
      if (outcome.state === 'succeeded') {
        op.result = structuredClone(outcome.result)
        delete op.error
      } else {
        op.error = outcome.error
      }
    }
    this.#track(op)
    return structuredClone(op)
  }

  async release(lease: Lease, now: number): Promise<boolean> {
    const op = this.#held(lease)
    if (!op) return false
    this.#record(op, { at: now, event: 'released', attempt: op.attempt, worker: lease.worker })
    op.state = 'queued'
    delete op.worker
    delete op.leaseExpiresAt
    return true
  }

  async cancel(
    id: string,
    now: number,
    expiresAt: number,
    actor: string | null = null,
  ): Promise<Operation | undefined> {
    const op = this.#entries.get(id)?.op
    if (!op) return undefined
    if (!canCancel(op)) return structuredClone(op)
    if (op.state === 'queued') {
      this.#record(op, { at: now, event: 'canceled', attempt: op.attempt, actor, error: canceledError() })
      op.state = 'canceled'
      op.cancelRequested = true
      op.completedAt = now
      op.expiresAt = expiresAt
      op.error = canceledError()
      this.#track(op)
    } else if (!op.cancelRequested) {
      this.#record(op, { at: now, event: 'cancel-requested', attempt: op.attempt, actor })
      op.cancelRequested = true
    }
    return structuredClone(op)
  }

  async requeue(
    id: string,
    attempts: number,
    now: number,
    actor: string | null = null,
  ): Promise<Operation | undefined> {
    const op = this.#entries.get(id)?.op
    if (!op || !allows('retry', op.state)) return undefined
    this.#record(op, { at: now, event: 'retried', attempt: op.attempt, actor })
    op.state = 'queued'
    op.maxAttempts = op.attempt + attempts
    op.cancelRequested = false
    op.runAt = now
    op.progress = { percent: 0 }
    delete op.error
    delete op.result
    delete op.completedAt
    delete op.expiresAt
    this.#track(op)
    return structuredClone(op)
  }

  async start(id: string, now: number, actor: string | null = null): Promise<Operation | undefined> {
    const op = this.#entries.get(id)?.op
    if (!op) return undefined
    if (isDeferred(op)) {
      this.#record(op, { at: now, event: 'queued', attempt: op.attempt, actor })
      op.runAt = now
      delete op.expiresAt
      this.#track(op)
    }
    return structuredClone(op)
  }

  async delete(id: string): Promise<boolean> {
    const op = this.#entries.get(id)?.op
    if (!op || !allows('delete', op.state)) return false
    this.#forget(new Set([id]))
    return true
  }

  async purge(now: number, limit: number): Promise<number> {
    const purged = new Set<string>()
    for (const [id, { op }] of this.#entries) {
      if (purged.size === limit) break
      // Finished ones, and deferred ones never started: the only others with an `expiresAt`.
      if ((isTerminal(op.state) || isDeferred(op)) && op.expiresAt !== undefined && op.expiresAt <= now) purged.add(id)
    }
    if (purged.size > 0) this.#forget(purged)
    for (const [slot, used] of this.#keys) if (used.expiresAt <= now) this.#keys.delete(slot)
    return purged.size
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
    const trimmed = new Set(beyond.slice(0, limit).map((entry) => entry.op.id))
    if (trimmed.size > 0) this.#forget(trimmed)
    return trimmed.size
  }

  /** Removes operations with their history, events and idempotency keys. */
  #forget(ids: Set<string>): void {
    for (const id of ids) {
      this.#entries.delete(id)
      this.#history.delete(id)
    }
    this.#log = this.#log.filter((entry) => !ids.has(entry.operationId))
    for (const [id, message] of this.#messages) if (ids.has(message.operationId)) this.#messages.delete(id)
    for (const [slot, used] of this.#keys) if (ids.has(used.operationId)) this.#keys.delete(slot)
  }

  async close(): Promise<void> {}

  /** Always answers: the process is the store. */
  async ping(): Promise<void> {}

  #track(op: Operation): void {
    let live = this.#live.get(op.name)
    if (!isTerminal(op.state) && !isDeferred(op)) {
      if (!live) this.#live.set(op.name, (live = new Set()))
      live.add(op)
    } else {
      live?.delete(op)
    }
  }

  #record(op: Operation, event: Omit<HistoryEntry, 'seq'>): void {
    const entry: HistoryEntry = { seq: ++this.#eventSeq, ...event }
    this.#log.push({ ...entry, operationId: op.id, cursor: String(entry.seq) })
    const history = this.#history.get(op.id)
    if (history) history.push(entry)
    else this.#history.set(op.id, [entry])
    for (const { target, events } of op.subscriptions ?? []) {
      if (!events.includes(entry.event)) continue
      const id = messageId(op.id, entry.seq, target)
      const state = this.#disabled.has(target) ? 'failed' : 'pending'
      const message = { id, operationId: op.id, seq: entry.seq, event: entry.event, at: entry.at, target }
      this.#messages.set(id, { ...message, state, attempts: [], dueAt: entry.at })
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
    message.attempts.push(structuredClone(attempt))
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
    return true
  }

  async deliveries(operationId: string): Promise<Delivery[]> {
    const found: Delivery[] = []
    for (const message of this.#messages.values()) {
      if (message.operationId !== operationId) continue
      const { id, seq, event, target, state } = message
      found.push({
        id,
        seq,
        event,
        target,
        state,
        ...(state === 'pending' ? { nextAttemptAt: message.dueAt } : {}),
        attempts: structuredClone(message.attempts),
      })
    }
    return found
  }

  async redeliver(operationId: string, now: number): Promise<number> {
    let redelivered = 0
    for (const message of this.#messages.values()) {
      if (message.operationId !== operationId) continue
      if (message.state !== 'delivered' && message.state !== 'failed') continue
      message.state = 'pending'
      message.dueAt = now
      this.#callbackFollows(message, (status) => (status.state = 'pending'))
      redelivered++
    }
    return redelivered
  }

  async disableTarget(target: string, _now: number): Promise<void> {
    this.#disabled.add(target)
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

  #held(lease: Lease): Operation | undefined {
    const op = this.#entries.get(lease.id)?.op
    return op && op.state === 'running' && op.attempt === lease.attempt && op.worker === lease.worker ? op : undefined
  }
}

const slotOf = (key: IdempotencyLookup) => `${key.scope}\u0000${key.key}`

/** The index of the first entry with `seq > after`: the log is in `seq` order. */
function firstAfter(log: FeedEntry[], after: number): number {
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
