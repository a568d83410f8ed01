import { EventEmitter } from 'node:events'
import { resolveDefinition, type OperationDefinition, type ResolvedDefinition } from './definition.js'
import {
  capabilityMissing,
  idempotencyKeyMismatch,
  invalidOption,
  operationFinished,
  operationNotCancelable,
  operationNotFinished,
  operationNotFound,
  operationNotRetryable,
  operationStarted,
  unknownOperation,
} from './errors.js'
import { ChangeRouter } from './changes.js'
import { Cleanup, type CleanupRun, type CleanupStatus } from './cleanup.js'
import { safeEmit, type EngineEvents } from './events.js'
import { canDelete, canRetry, isDeferred, isTerminal, OPERATION_STATES, type OperationState } from './operation.js'
import { resolveEngineOptions, type EngineOptions, type ResolvedEngineOptions } from './options.js'
import { Runner } from './runner.js'
import type { Condition } from './query.js'
import {
  hasEventFeed,
  hasEventLog,
  hasOutbox,
  isDeferrable,
  isQueryable,
  type Delivery,
  type FeedPage,
  type FeedQuery,
  type QuerySort,
  type Store,
} from './store.js'
import type {
  Callback,
  HistoryEntry,
  ListQuery,
  NewOperation,
  Operation,
  Page,
  Readable,
  StatsQuery,
  StatsRow,
  Subscription,
} from './types.js'

export interface SubmitRequest {
  input?: unknown
  params?: Record<string, string>
  query?: Record<string, unknown>
  headers?: Record<string, string>
  /** The submitting principal's id. */
  owner?: string | null
  /** The submitting request's id in the server's logs; the handler's logs carry it as `reqId`. */
  requestId?: string
  /** Where its outcome is called back (resolved from its route's settings and the request). */
  callback?: Callback
  /** Who gets messages about which of its events: its callback, the app's webhook endpoints. */
  subscriptions?: Subscription[]
  /** Values for the handler's `op.context`, stored with the operation as JSON. */
  context?: Record<string, unknown>
  /**
   * Create it without queueing it: no worker runs it until `startDeferred`, and it is purged after
   * the retention if never started. Needs a `Deferrable` store.
   */
  deferred?: boolean
}

// NUL cannot occur in an owner id or a name, so scopes never collide.
const keyOf = (name: string, owner: string | null | undefined, { key, fingerprint }: IdempotencyRequest) => ({
  scope: `${owner ?? ''}\u0000${name}`,
  key,
  fingerprint,
})

export interface Submitted {
  op: Operation
  /** `true` when an idempotency key matched an earlier request and no new operation was made. */
  replayed: boolean
}

export interface IdempotencyRequest {
  key: string
  /** Hash of the request (method, path, canonical body): the same key must come with the same one. */
  fingerprint: string
}

export type StateCounts = Record<OperationState, number> & { total: number }

export interface Stats extends StateCounts {
  byName: Record<string, StateCounts>
}

/** Ids are path segments and log fields: keep them to URL-safe characters. */
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$/

export function isValidOperationId(id: string): boolean {
  return ID_PATTERN.test(id)
}

/**
 * The core: submits operations, answers questions about them, controls them, and (unless
 * `worker: false`) runs their handlers. It knows nothing of HTTP or of any storage driver.
 */
export class Engine extends EventEmitter<EngineEvents> {
  readonly store: Store
  readonly #opts: ResolvedEngineOptions
  readonly #definitions = new Map<string, ResolvedDefinition>()
  readonly #runner: Runner | undefined
  readonly #changes = new ChangeRouter()
  readonly #cleanup: Cleanup
  #started = false
  #unsubscribe: (() => void) | undefined
  #draining: Promise<void> | undefined
  #closing: Promise<void> | undefined

  constructor(options: EngineOptions) {
    super()
    this.#opts = resolveEngineOptions(options)
    this.store = this.#opts.store
    this.#cleanup = new Cleanup(this.#opts)
    if (this.#opts.worker) {
      this.#runner = new Runner(this.#opts, this.#definitions, {
        started: (op) => this.#emit('operation:started', op),
        progressed: (op, progress) => this.#emit('operation:progress', op, progress),
        settled: (op) => this.#emit(op.state === 'queued' ? 'operation:retrying' : 'operation:settled', op),
      })
    }
  }

  get workerId(): string {
    return this.#opts.workerId
  }

  /** The `poll` option: how long anything waiting for a change waits before it looks again. */
  get pollMs(): number {
    return this.#opts.pollMs
  }

  /** Registers what operations of `def.name` do. Definitions are the same in API and worker processes. */
  define<Input, Result, Args, Params = Record<string, string>, Query = Record<string, unknown>>(
    def: OperationDefinition<Input, Result, Args, Params, Query>,
  ): ResolvedDefinition {
    const resolved = resolveDefinition(def)
    if (this.#definitions.has(resolved.name)) throw invalidOption('name', `'${resolved.name}' is already defined`)
    this.#definitions.set(resolved.name, resolved)
    if (this.#started) this.#runner?.wake()
    return resolved
  }

  definition(name: string): ResolvedDefinition | undefined {
    return this.#definitions.get(name)
  }

  definitions(): ResolvedDefinition[] {
    return [...this.#definitions.values()]
  }

  /** Starts running handlers and the scheduled cleanup (both a no-op for `worker: false`). */
  start(): void {
    if (this.#started || this.#draining) return
    this.#started = true
    this.#unsubscribe = this.store.subscribe?.((notice) => {
      if (notice.kind === 'queued') this.#runner?.wake()
      else if (notice.kind === 'cancel-requested') this.#runner?.cancelRequested(notice.id)
      else this.#changed(notice.id)
    })
    this.#runner?.start()
    if (this.#runner) this.#cleanup.start()
  }

  /** Commits a new operation; resolves once it is durable. */
  async submit(name: string, request: SubmitRequest = {}): Promise<Operation> {
    const op = await this.store.insert(this.#newOperation(name, request))
    this.#queued(op)
    return op
  }

  /**
   * Queues an operation created with `deferred`: it is due at once. Idempotent: an operation
   * already started is returned as it is; a finished one is `operation-started`'s 409.
   */
  async startDeferred(id: string, actor: string | null = null): Promise<Operation> {
    if (!isDeferrable(this.store)) throw capabilityMissing('deferred operations (Deferrable)')
    const op = await this.get(id)
    if (!isDeferred(op)) {
      if (op.state === 'queued' || op.state === 'running') return op
      throw operationStarted(op)
    }
    const after = await this.store.start(id, this.#opts.clock(), actor)
    if (!after) throw operationNotFound()
    this.#queued(after)
    return after
  }

  /**
   * Like `submit`, but a key already used by the same owner on the same definition within
   * `idempotencyTtl` makes no new operation: the first one is returned with `replayed: true`.
   * The same key with another fingerprint is refused (`idempotency-key-mismatch`, 422).
   */
  async submitIdempotent(name: string, request: SubmitRequest, idempotency: IdempotencyRequest): Promise<Submitted> {
    const now = this.#opts.clock()
    const outcome = await this.store.insertIdempotent(
      this.#newOperation(name, request),
      { ...keyOf(name, request.owner, idempotency), expiresAt: now + this.#opts.idempotencyTtlMs },
      now,
    )
    if (outcome.kind === 'mismatch') throw idempotencyKeyMismatch()
    if (outcome.kind === 'inserted') this.#queued(outcome.op)
    return { op: outcome.op, replayed: outcome.kind === 'replayed' }
  }

  /**
   * The operation an earlier submission with this key made, as `submitIdempotent` would replay it,
   * without making one when there is none (`undefined`): for answering a replay where a new
   * operation may not be made, e.g. past a quota.
   */
  async findSubmitted(
    name: string,
    owner: string | null,
    idempotency: IdempotencyRequest,
  ): Promise<Operation | undefined> {
    const used = await this.store.findIdempotent(keyOf(name, owner, idempotency), this.#opts.clock())
    if (used?.kind === 'mismatch') throw idempotencyKeyMismatch()
    return used?.op
  }

  #queued(op: Operation): void {
    if (!isDeferred(op)) this.#runner?.wake()
    this.#emit('operation:queued', op)
  }

  /** Emits an operation event, then `operation:changed`; a listener's exception escapes neither. */
  #emit<K extends Exclude<keyof EngineEvents, 'operation:changed' | 'error'>>(
    event: K,
    ...args: EngineEvents[K]
  ): void {
    safeEmit(this, this.#opts.logger, event, ...args)
    this.#changed(args[0].id, event === 'operation:progress')
  }

  #changed(id: string, progressOnly = false): void {
    this.#changes.changed(id, progressOnly)
    safeEmit(this, this.#opts.logger, 'operation:changed', id)
  }

  /**
   * Calls `listener` whenever operation `id` changes, as `operation:changed` would, but at a cost
   * per change that does not grow with the number of operations watched; with `progress: false`,
   * not for progress reported in this process. Returns the unwatch function.
   */
  watch(id: string, listener: () => void, options?: { progress?: boolean }): () => void {
    return this.#changes.watch(id, listener, options)
  }

  /** Calls `listener` with the id of every operation that changes; returns the unwatch function. */
  watchAll(listener: (id: string) => void): () => void {
    return this.#changes.watchAll(listener)
  }

  /** The events of many operations in commit order (`EventFeed`); the bundled stores all have it. */
  feed(query: FeedQuery): Promise<FeedPage> {
    if (!hasEventFeed(this.store)) throw capabilityMissing('an event feed (EventFeed)')
    return this.store.feed(query)
  }

  #newOperation(name: string, request: SubmitRequest): NewOperation {
    const def = this.#definitions.get(name)
    if (!def) throw unknownOperation(name)
    const id = (def.idGenerator ?? this.#opts.idGenerator)()
    if (typeof id !== 'string' || !isValidOperationId(id)) {
      throw invalidOption('idGenerator', 'must return 1-128 URL-safe characters (letters, digits, . _ ~ -)')
    }
    return {
      id,
      name,
      owner: request.owner ?? null,
      // Stores keep JSON: a programmatic caller's Date or Map must not read back differently per store.
      input: JSON.parse(JSON.stringify(request.input ?? null)),
      params: request.params ?? {},
      query: request.query ?? {},
      headers: request.headers ?? {},
      ...(request.requestId === undefined ? {} : { requestId: request.requestId }),
      ...(request.callback === undefined ? {} : { callback: request.callback }),
      ...(request.subscriptions?.length ? { subscriptions: request.subscriptions } : {}),
      ...(request.context === undefined ? {} : { context: JSON.parse(JSON.stringify(request.context)) }),
      ...(request.deferred ? { deferred: { expiresAt: this.#opts.clock() + this.#opts.retentionMs } } : {}),
      maxAttempts: def.retry.attempts,
      cancelable: def.cancelable,
      timeoutMs: def.timeoutMs,
      createdAt: this.#opts.clock(),
    }
  }

  async get(id: string): Promise<Operation> {
    const op = isValidOperationId(id) ? await this.store.get(id) : undefined
    if (!op) throw operationNotFound()
    return op
  }

  /** The operation's history, oldest first; see `attemptsOf` for its attempts. */
  async history(id: string): Promise<HistoryEntry[]> {
    return this.store.history(id)
  }

  /**
   * The operation's events with `seq > after`, oldest first: its log, progress included. A store
   * without the event log capability answers from its history (no progress events).
   */
  async events(id: string, range: { after?: number; limit: number }): Promise<HistoryEntry[]> {
    if (hasEventLog(this.store)) return this.store.events(id, range)
    const after = range.after ?? 0
    return (await this.store.history(id)).filter((entry) => entry.seq > after).slice(0, range.limit)
  }

  /** Cancels at once when queued, asks the running handler to stop otherwise. Idempotent. */
  async cancel(id: string, actor: string | null = null): Promise<Operation> {
    const op = await this.get(id)
    if (op.state === 'canceled') return op
    if (isTerminal(op.state)) throw operationFinished(op)
    if (!op.cancelable) throw operationNotCancelable()
    const now = this.#opts.clock()
    const after = await this.store.cancel(id, now, now + this.#opts.retentionMs, actor)
    if (!after) throw operationNotFound()
    if (after.state === 'canceled' && op.state === 'queued') this.#emit('operation:settled', after)
    else if (after.state === 'running' && !op.cancelRequested) {
      this.#runner?.cancelRequested(id)
      this.#emit('operation:cancel-requested', after)
    } else if (after.state === 'succeeded' || after.state === 'failed') throw operationFinished(after)
    return after
  }

  /** Queues a failed or canceled operation again, with a fresh budget of attempts. */
  async retry(id: string, actor: string | null = null): Promise<Operation> {
    const op = await this.get(id)
    if (!canRetry(op.state)) throw operationNotRetryable(op)
    const attempts = this.#definitions.get(op.name)?.retry.attempts ?? 1
    const after = await this.store.requeue(id, attempts, this.#opts.clock(), actor)
    if (!after) throw operationNotRetryable(await this.get(id))
    this.#queued(after)
    return after
  }

  /**
   * Retries every failed (or canceled) operation matching `filter`, up to `limit`: the "retry all"
   * of dead operations. Returns the ids queued again.
   */
  async retryAll(
    filter: {
      states?: ('failed' | 'canceled')[]
      name?: string
      owner?: string | null
      readable?: Readable
      limit?: number
    },
    actor: string | null = null,
  ): Promise<string[]> {
    const limit = filter.limit ?? 1_000
    const retried: string[] = []
    let cursor: string | undefined
    do {
      const page = await this.store.list({
        states: filter.states?.length ? filter.states : ['failed'],
        ...(filter.name !== undefined ? { name: filter.name } : {}),
        ...(filter.owner !== undefined ? { owner: filter.owner } : {}),
        ...(filter.readable ? { readable: filter.readable } : {}),
        ...(cursor !== undefined ? { cursor } : {}),
        limit: Math.min(100, limit - retried.length),
      })
      for (const op of page.items) {
        const attempts = this.#definitions.get(op.name)?.retry.attempts ?? 1
        const after = await this.store.requeue(op.id, attempts, this.#opts.clock(), actor)
        if (after) {
          retried.push(after.id)
          this.#queued(after)
        }
      }
      cursor = page.nextCursor
    } while (cursor !== undefined && retried.length < limit)
    return retried
  }

  /** Removes a finished operation, its result and its history; the deletion itself is logged. */
  async delete(id: string, actor: string | null = null): Promise<void> {
    const op = await this.get(id)
    if (!canDelete(op.state)) throw operationNotFinished(op)
    if (!(await this.store.delete(id))) throw operationNotFound()
    this.#opts.logger.info({ operationId: id, operation: op.name, actor }, 'longrun: operation deleted')
  }

  list(query: ListQuery): Promise<Page> {
    return this.store.list(query)
  }

  /**
   * Like `list`, keeping the operations that meet every condition (docs/query.md), newest first or
   * oldest first. Needs a `Queryable` store (the bundled ones are); else `not-supported`.
   */
  async query(query: ListQuery & { where: Condition[]; sort?: QuerySort }): Promise<Page> {
    if (!isQueryable(this.store)) throw capabilityMissing('queries (Queryable)')
    return this.store.query(query)
  }

  async stats(query: StatsQuery = {}): Promise<Stats> {
    return toStats(await this.store.stats(query))
  }

  /** Like `stats`, counting the operations that meet every condition; needs a `Queryable` store. */
  async queryStats(query: StatsQuery & { where: Condition[] }): Promise<Stats> {
    if (!isQueryable(this.store)) throw capabilityMissing('queries (Queryable)')
    return toStats(await this.store.queryStats(query))
  }

  /** The operation's webhook messages with their attempts, oldest first; needs an `Outbox` store. */
  async deliveries(id: string): Promise<Delivery[]> {
    await this.get(id)
    if (!hasOutbox(this.store)) throw capabilityMissing('webhook deliveries (Outbox)')
    return this.store.deliveries(id)
  }

  /** Sends the operation's delivered and failed messages again, now; returns how many. */
  async redeliver(id: string, actor: string | null = null): Promise<number> {
    const op = await this.get(id)
    if (!hasOutbox(this.store)) throw capabilityMissing('webhook deliveries (Outbox)')
    const count = await this.store.redeliver(id, this.#opts.clock())
    this.#opts.logger.info({ operationId: id, operation: op.name, actor, count }, 'longrun: redelivery requested')
    return count
  }

  /** The cleanup service as it is: scheduled or not, running or not, its options and its last run. */
  cleanupStatus(): CleanupStatus {
    return this.#cleanup.status()
  }

  /**
   * Runs the cleanup now (purge past `retention`, trim to `keep`) and resolves with the run; while
   * one is in progress in this process, with that one. Never rejects: a failure is in `error`.
   */
  cleanup(): Promise<CleanupRun> {
    return this.#cleanup.run('request')
  }

  /**
   * Stops claiming and lets running handlers finish, or gives their operations back after the grace
   * period. The store stays open: requests still in flight can be answered. Safe to call twice.
   */
  drain(): Promise<void> {
    this.#draining ??= (async () => {
      this.#unsubscribe?.()
      await Promise.all([this.#runner?.stop(), this.#cleanup.stop()])
    })()
    return this.#draining
  }

  /** Drains, then closes the store. Safe to call twice. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      for (const step of [() => this.drain(), () => this.store.close()]) {
        try {
          await step()
        } catch (err) {
          this.#opts.logger.error({ err }, 'longrun: error while closing')
          if (this.listenerCount('error') > 0) {
            safeEmit(this, this.#opts.logger, 'error', err instanceof Error ? err : new Error(String(err)))
          }
        }
      }
    })()
    return this.#closing
  }
}

function toStats(rows: StatsRow[]): Stats {
  const stats: Stats = { ...emptyCounts(), byName: {} }
  for (const row of rows) {
    const byName = (stats.byName[row.name] ??= emptyCounts())
    for (const counts of [stats, byName]) {
      counts[row.state] += row.count
      counts.total += row.count
    }
  }
  return stats
}

function emptyCounts(): StateCounts {
  const counts = { total: 0 } as StateCounts
  for (const state of OPERATION_STATES) counts[state] = 0
  return counts
}
