/**
 * Batching of the writes a worker makes under its leases (progress, heartbeats, outcomes, releases).
 * Each kind waits in a `Batch`; one `Lane` runs the batches one statement at a time, so that
 *  - every statement carries as many writes as arrived meanwhile (one round trip and one commit for
 *    all of them: the budget of PERFORMANCE.md), and
 *  - two statements of one process never lock the same rows in different orders (no deadlocks
 *    between, say, a batch of heartbeats and a batch of outcomes touching the same operations).
 */

interface Pending<In, Out> {
  item: In
  resolve(out: Out): void
  reject(reason: unknown): void
}

export interface BatchSpec<In, Out> {
  /** Runs one statement for `items`, whose keys are distinct; answers each, in order. */
  run(items: In[]): Promise<Out[]>
  key(item: In): string
  /**
   * Several writes with one key in one batch: `coalesce` runs only the last and answers all with its
   * answer (a newer progress supersedes an older one); `defer` keeps the later ones for the next
   * statement, so that they see the first one's effect (a second outcome under one lease changes nothing).
   */
  duplicates: 'coalesce' | 'defer'
  /** What each write rejects with when its statement failed. */
  error(err: unknown): unknown
  /** Whether a failed statement is worth retrying in halves, to fail only the write at fault. */
  splittable(err: unknown): boolean
}

export class Batch<In, Out> {
  readonly #spec: BatchSpec<In, Out>
  readonly #maxBatch: number
  #pending: Pending<In, Out>[] = []

  constructor(spec: BatchSpec<In, Out>, maxBatch: number) {
    this.#spec = spec
    this.#maxBatch = maxBatch
  }

  get waiting(): boolean {
    return this.#pending.length > 0
  }

  add(item: In): Promise<Out> {
    return new Promise<Out>((resolve, reject) => this.#pending.push({ item, resolve, reject }))
  }

  /** Runs one statement for what is waiting (up to `maxBatch` distinct keys). */
  async runOnce(): Promise<void> {
    const groups = new Map<string, Pending<In, Out>[]>()
    const later: Pending<In, Out>[] = []
    for (const write of this.#pending) {
      const key = this.#spec.key(write.item)
      const group = groups.get(key)
      if (group && this.#spec.duplicates === 'coalesce') group.push(write)
      else if (!group && groups.size < this.#maxBatch) groups.set(key, [write])
      else later.push(write)
    }
    this.#pending = later
    await this.#execute([...groups.values()])
  }

  async #execute(groups: Pending<In, Out>[][]): Promise<void> {
    let answers: Out[]
    try {
      answers = await this.#spec.run(groups.map((group) => group[group.length - 1]!.item))
    } catch (err) {
      if (groups.length === 1 || !this.#spec.splittable(err)) {
        for (const group of groups) for (const write of group) write.reject(this.#spec.error(err))
        return
      }
      // Whatever failed the statement must fail only its own write: halve until it is alone.
      const half = Math.ceil(groups.length / 2)
      await this.#execute(groups.slice(0, half))
      await this.#execute(groups.slice(half))
      return
    }
    groups.forEach((group, i) => {
      for (const write of group) write.resolve(answers[i]!)
    })
  }
}

export class Lane {
  readonly #batches: Batch<never, unknown>[]
  #running = false

  /** `batches` in the order a round runs them, e.g. progress before outcomes. */
  constructor(batches: Batch<never, unknown>[]) {
    this.#batches = batches
  }

  push<In, Out>(batch: Batch<In, Out>, item: In): Promise<Out> {
    const answer = batch.add(item)
    if (!this.#running) {
      this.#running = true
      // Everything issued in this event-loop turn goes into the first statement.
      setImmediate(() => void this.#drain())
    }
    return answer
  }

  async #drain(): Promise<void> {
    try {
      while (this.#batches.some((batch) => batch.waiting)) {
        for (const batch of this.#batches) if (batch.waiting) await batch.runOnce()
      }
    } finally {
      this.#running = false
    }
  }
}
