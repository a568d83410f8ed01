import type { CleanupRun, CleanupStatus } from './cleanup.js'
import type { Engine, Stats } from './engine.js'
import { forbidden, LongrunError, operationNotFound } from './errors.js'
import {
  granted,
  mayRead,
  mayWrite,
  type AccessList,
  type AccessPolicy,
  type Permissions,
  type Principal,
} from './permissions.js'
import type { Condition } from './query.js'
import type { Delivery, FeedPage, QuerySort } from './store.js'
import type { HistoryEntry, ListQuery, Operation, Page, Readable, StatsQuery } from './types.js'

/** The access policy with the grants that are not per definition. */
export interface OperationAccessPolicy extends AccessPolicy {
  /** Who may run the cleanup (`POST {base}/cleanup`) besides the admin role. @default nobody */
  cleanup?: AccessList
}

/**
 * The operations as one caller may see and change them. Every read and control action of the
 * HTTP layer goes through this class, which it gets per request: an endpoint cannot reach an
 * operation without the check. Unreadable operations are reported exactly like missing ones.
 */
export class OperationAccess {
  readonly #engine: Engine
  readonly #caller: Principal | undefined
  readonly #admin: boolean
  readonly #cleaner: boolean

  constructor(engine: Engine, caller: Principal | undefined, policy: OperationAccessPolicy = {}) {
    this.#engine = engine
    this.#caller = caller
    this.#admin = policy.adminRole !== undefined && (caller?.roles?.includes(policy.adminRole) ?? false)
    this.#cleaner = this.#admin || granted(policy.cleanup, caller)
  }

  /** The owner id operations submitted by this caller get (`null`: anonymous). */
  get owner(): string | null {
    return this.#caller?.id ?? null
  }

  canRead(op: Operation): boolean {
    return this.#admin || op.owner === this.owner || mayRead(this.#permissions(op.name), this.#caller)
  }

  canWrite(op: Operation): boolean {
    return this.#admin || op.owner === this.owner || mayWrite(this.#permissions(op.name), this.#caller)
  }

  async get(id: string): Promise<Operation> {
    return this.shown(await this.#engine.get(id))
  }

  /**
   * `op` when this caller may read it, else the not-found a missing one gets: for an operation
   * already at hand (a cached status reply), checked exactly as `get` checks what it reads.
   */
  shown(op: Operation): Operation {
    if (!this.canRead(op)) throw operationNotFound()
    return op
  }

  /** The operation's events after `after`, progress included, oldest first: what streams read. */
  async events(id: string, range: { after?: number; limit: number }): Promise<HistoryEntry[]> {
    await this.get(id)
    return this.#engine.events(id, range)
  }

  /** Calls `listener` when operation `id` changes: a hint to read it again, through this view. */
  watch(id: string, listener: () => void, options?: { progress?: boolean }): () => void {
    return this.#engine.watch(id, listener, options)
  }

  watchAll(listener: (id: string) => void): () => void {
    return this.#engine.watchAll(listener)
  }

  /**
   * The events of the operations this caller may read, in commit order: of the routes `names`
   * when given, else of the caller's own operations only.
   */
  feed(query: { after?: string; limit: number; names?: string[] }): Promise<FeedPage> {
    const readable = query.names ? this.#readable('read').readable : { owners: [this.owner], names: [] }
    return this.#engine.feed({ ...query, ...(readable ? { readable } : {}) })
  }

  /** The operation with its history. */
  async details(id: string): Promise<{ op: Operation; history: HistoryEntry[] }> {
    const op = await this.get(id)
    return { op, history: await this.#engine.history(id) }
  }

  async cancel(id: string): Promise<Operation> {
    await this.#writable(id)
    return this.#engine.cancel(id, this.owner)
  }

  async retry(id: string): Promise<Operation> {
    await this.#writable(id)
    return this.#engine.retry(id, this.owner)
  }

  /** Queues an operation created to start later. */
  async start(id: string): Promise<Operation> {
    await this.#writable(id)
    return this.#engine.startDeferred(id, this.owner)
  }

  /** The operation's webhook messages and their attempts: readable like the operation. */
  async deliveries(id: string): Promise<Delivery[]> {
    await this.get(id)
    return this.#engine.deliveries(id)
  }

  /** Sends its messages again: a change, so for those who may change the operation. */
  async redeliver(id: string): Promise<number> {
    await this.#writable(id)
    return this.#engine.redeliver(id, this.owner)
  }

  async delete(id: string): Promise<void> {
    await this.#writable(id)
    return this.#engine.delete(id, this.owner)
  }

  list(query: Omit<ListQuery, 'readable'>): Promise<Page> {
    return this.#engine.list({ ...query, ...this.#readable('read') })
  }

  /**
   * The operations this caller may read that meet every condition, in `sort` order: scoped exactly
   * like `list`, so that what the caller cannot read never matches.
   */
  query(query: Omit<ListQuery, 'readable'> & { where: Condition[]; sort?: QuerySort }): Promise<Page> {
    return this.#engine.query({ ...query, ...this.#readable('read') })
  }

  /** Counts of what this caller may read; with conditions, of what meets them (never of the rest). */
  stats(query: Omit<StatsQuery, 'readable' | 'owner'> & { where?: Condition[] } = {}): Promise<Stats> {
    const { where, ...rest } = query
    const scoped = { ...rest, ...this.#readable('read') }
    return where?.length ? this.#engine.queryStats({ ...scoped, where }) : this.#engine.stats(scoped)
  }

  /** What the cleanup service is doing: any caller of the API may see it (it shows no operation). */
  cleanupStatus(): CleanupStatus {
    return this.#engine.cleanupStatus()
  }

  /** Runs the cleanup now: for the admin role, or a principal the `cleanup` grant names. */
  runCleanup(): Promise<CleanupRun> {
    if (!this.#cleaner) throw new LongrunError('forbidden', 'Only an administrator may run the cleanup.')
    return this.#engine.cleanup()
  }

  /** Retries the failed operations this caller may change. */
  retryAll(filter: { states?: ('failed' | 'canceled')[]; name?: string; limit?: number }): Promise<string[]> {
    return this.#engine.retryAll({ ...filter, ...this.#readable('write') }, this.owner)
  }

  async #writable(id: string): Promise<void> {
    const op = await this.get(id)
    if (!this.canWrite(op)) throw forbidden()
  }

  #permissions(name: string): Permissions | undefined {
    return this.#engine.definition(name)?.permissions
  }

  #readable(kind: 'read' | 'write'): { readable?: Readable } {
    if (this.#admin) return {}
    const may = kind === 'read' ? mayRead : mayWrite
    const names = this.#engine
      .definitions()
      .filter((def) => may(def.permissions, this.#caller))
      .map((def) => def.name)
    return { readable: { owners: [this.owner], names } }
  }
}
