interface Watcher {
  listener: () => void
  progress: boolean
}

/**
 * Hands each `operation:changed` to the listeners of that operation and to those of every
 * operation, without passing it through thousands of filtering listeners: an engine with many open
 * streams pays per change only for the streams that follow it.
 */
export class ChangeRouter {
  readonly #byId = new Map<string, Set<Watcher>>()
  readonly #all = new Set<(id: string) => void>()

  /**
   * Calls `listener` whenever operation `id` changes (with `progress: false`, unless the change is
   * only progress: a wait for the outcome need not read the operation at each); returns the
   * function that stops it.
   */
  watch(id: string, listener: () => void, options: { progress?: boolean } = {}): () => void {
    let listeners = this.#byId.get(id)
    if (!listeners) this.#byId.set(id, (listeners = new Set()))
    const watcher: Watcher = { listener, progress: options.progress ?? true }
    listeners.add(watcher)
    return () => {
      listeners.delete(watcher)
      if (listeners.size === 0 && this.#byId.get(id) === listeners) this.#byId.delete(id)
    }
  }

  /** Calls `listener` with the id of every operation that changes. */
  watchAll(listener: (id: string) => void): () => void {
    this.#all.add(listener)
    return () => this.#all.delete(listener)
  }

  /** `progressOnly`: the change is progress reported in this process (other processes' notices do not say). */
  changed(id: string, progressOnly = false): void {
    for (const { listener, progress } of this.#byId.get(id) ?? []) if (progress || !progressOnly) listener()
    for (const listener of this.#all) listener(id)
  }
}
