import type { Operation } from '../core/types.js'

/** A status reply as built for one request shape, with the operation it shows (for the access check). */
export interface CachedStatus<Reply> {
  op: Operation
  reply: Reply
}

/**
 * The status replies built since the store's change stamp last moved (`Stamped`): a poll of an
 * operation that did not change is answered from here, after the caller's access check, instead of
 * reading its row and history and encoding and hashing them again. One generation only: the first
 * read that sees a new stamp drops every entry, so an entry can never outlive a change, made in
 * this process or another, and the cache holds no more than what was polled since the last one.
 */
export class StatusCache<Reply> {
  #stamp: unknown
  // Per view (a mount's formats and presentation), then per id and request shape.
  #entries = new WeakMap<object, Map<string, CachedStatus<Reply>>>()
  #size = 0

  constructor(readonly maxEntries = 1_000) {}

  get(stamp: unknown, view: object, key: string): CachedStatus<Reply> | undefined {
    if (stamp !== this.#stamp) {
      this.#renew(stamp)
      return undefined
    }
    return this.#entries.get(view)?.get(key)
  }

  /** Keeps `entry` if `stamp`, read before the operation was, is still the current one. */
  set(stamp: unknown, view: object, key: string, entry: CachedStatus<Reply>): void {
    if (stamp !== this.#stamp) return
    if (this.#size >= this.maxEntries) this.#renew(stamp)
    let entries = this.#entries.get(view)
    if (!entries) this.#entries.set(view, (entries = new Map()))
    if (!entries.has(key)) this.#size++
    entries.set(key, entry)
  }

  #renew(stamp: unknown): void {
    this.#stamp = stamp
    this.#entries = new WeakMap()
    this.#size = 0
  }
}
