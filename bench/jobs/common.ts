import { performance } from 'node:perf_hooks'

/** Job scripts report by printing exactly one JSON line on stdout. */
export function report(result: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ ...result, rss: process.memoryUsage.rss() })}\n`)
}

export function envInt(name: string, fallback: number): number {
  const value = Number(process.env[name] ?? fallback)
  if (!Number.isInteger(value) || value < 1) throw new Error(`${name} must be a positive integer`)
  return value
}

/** The store a `BENCH_STORE` names (`memory`, `sqlite:<path>`), opened as the demo opens it. */
export { openStore } from 'longrun/cli'

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[rank]!
}

export function summarize(samples: number[]): { p50: number; p99: number; mean: number; max: number } {
  const sorted = [...samples].sort((a, b) => a - b)
  return {
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    mean: sorted.reduce((a, b) => a + b, 0) / sorted.length,
    max: sorted[sorted.length - 1] ?? NaN,
  }
}

/** A promise with its resolve function, for waiting on an event. */
export function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void
  const promise = new Promise<void>((r) => (resolve = r))
  return { promise, resolve }
}

/**
 * The latency scripts' measurement: BENCH_OPS jobs one after the other, after up to
 * BENCH_WARMUP_OPS unmeasured ones (at most 2 s of them); the measured part stops early after
 * BENCH_LATENCY_BUDGET_MS, so that slow pick-ups cannot stretch the run. The script's handler calls
 * `started()`, its completion event `settled()`; times run from just before each submission.
 */
export class LatencyProbe {
  readonly #ops = envInt('BENCH_OPS', 1_000)
  readonly #warmupOps = envInt('BENCH_WARMUP_OPS', 50)
  readonly #budgetMs = envInt('BENCH_LATENCY_BUDGET_MS', 10_000)
  #current = deferred()
  #startedAt = 0
  #settledAt = 0
  #failures = 0

  started(): void {
    this.#startedAt = performance.now()
  }

  settled(succeeded: boolean): void {
    this.#settledAt = performance.now()
    if (!succeeded) this.#failures++
    this.#current.resolve()
  }

  /** Submits with `submit(i)` until done; returns what the script reports. */
  async run(submit: (i: number) => Promise<unknown>): Promise<Record<string, unknown>> {
    const ack: number[] = []
    const start: number[] = []
    const done: number[] = []
    let warm = 0
    const warmUntil = performance.now() + 2_000
    let measureUntil = Infinity
    for (let i = 0; ack.length < this.#ops && performance.now() < measureUntil; i++) {
      this.#current = deferred()
      const t0 = performance.now()
      await submit(i)
      const ackAt = performance.now()
      await this.#current.promise
      if (warm < this.#warmupOps && performance.now() < warmUntil) {
        warm++
        continue
      }
      if (measureUntil === Infinity) measureUntil = performance.now() + this.#budgetMs
      ack.push(ackAt - t0)
      start.push(this.#startedAt - t0)
      done.push(this.#settledAt - t0)
    }
    return {
      ops: ack.length,
      requestedOps: this.#ops,
      warmupOps: warm,
      truncated: ack.length < this.#ops ? 1 : 0,
      failures: this.#failures,
      submitAckMs: summarize(ack),
      toStartMs: summarize(start),
      toDoneMs: summarize(done),
    }
  }
}
