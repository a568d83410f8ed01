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
export { openStore } from '../../examples/demo/store.js'

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
