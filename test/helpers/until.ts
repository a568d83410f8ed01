import { setTimeout as sleep } from 'node:timers/promises'

export type Truthy<T> = Exclude<T, false | null | undefined | 0 | ''>

export interface UntilOptions<T> {
  /** Names the condition in the timeout's message. */
  what?: string
  /** Milliseconds between two calls of `fn`, counted from the end of the previous call. */
  interval?: number
  /** Accounts for the last value in the timeout's message, instead of its JSON. */
  describe?: (last: T | undefined) => string
}

/**
 * Polls `fn` until it returns something truthy, and returns that. An error thrown by `fn` counts as
 * "not yet": the condition may depend on something still starting. After `timeoutMs` it throws,
 * with the last value and the last error. It never asserts on how long anything took: the timeout
 * is only there so that a broken test fails rather than hangs.
 */
export async function until<T>(
  fn: () => T | Promise<T>,
  timeoutMs = 10_000,
  { what = 'condition', interval = 10, describe }: UntilOptions<T> = {},
): Promise<Truthy<T>> {
  const deadline = Date.now() + timeoutMs
  let last: T | undefined
  let lastError: unknown
  for (;;) {
    try {
      last = await fn()
      lastError = undefined
      if (last) return last as Truthy<T>
    } catch (err) {
      lastError = err
    }
    if (Date.now() >= deadline) break
    await sleep(interval)
  }
  const value = describe ? describe(last) : `last value: ${show(last)}`
  const cause = (lastError as { cause?: unknown } | undefined)?.cause
  const error = lastError === undefined ? '' : `; last error: ${String(lastError)}${cause ? ` (${String(cause)})` : ''}`
  throw new Error(`until: ${what} not met within ${timeoutMs} ms (${value}${error})`)
}

/** JSON where possible (`undefined` and cycles are not), cut short: it goes into one line of a message. */
function show(value: unknown): string {
  let text: string
  try {
    text = JSON.stringify(value) ?? String(value)
  } catch {
    text = String(value)
  }
  return text.length > 500 ? `${text.slice(0, 500)}…` : text
}
