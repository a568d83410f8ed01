/**
 * Hands each `operation:changed` to the listeners of that operation and to those of every
 * operation, without passing it through thousands of filtering listeners: an engine with many open
 * streams pays per change only for the streams that follow it.
 */
export class ChangeRouter {
  readonly #byId = new Map<string, Set<() => void>>()
  readonly #all = new Set<(id: string) => void>()

  /** Calls `listener` whenever operation `id` changes; returns the function that stops it. */
  watch(id: string, listener: () => void): () => void {
    let listeners = this.#byId.get(id)
    if (!listeners) this.#byId.set(id, (listeners = new Set()))
    listeners.add(listener)
    return () => {
      listeners.delete(listener)
      if (listeners.size === 0 && this.#byId.get(id) === listeners) this.#byId.delete(id)
    }
  }

  /** Calls `listener` with the id of every operation that changes. */
  watchAll(listener: (id: string) => void): () => void {
    this.#all.add(listener)
    return () => this.#all.delete(listener)
  }

  changed(id: string): void {
    for (const listener of this.#byId.get(id) ?? []) listener()
    for (const listener of this.#all) listener(id)
  }
}
