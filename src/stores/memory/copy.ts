import type { HistoryEntry, Operation } from '../../core/types.js'

// Copies of what the memory store hands out or takes in, so that no caller shares its objects.
// The values are JSON in practice: walking them is several times cheaper than `structuredClone`,
// which remains for anything else (a Date, a Map...) so that those copy as they always did.

/** A deep copy of `value`. */
export function copy<T>(value: T): T {
  if (typeof value !== 'object' || value === null) {
    // structuredClone refuses functions and symbols: so does this.
    return typeof value === 'function' || typeof value === 'symbol' ? structuredClone(value) : value
  }
  if (Array.isArray(value)) return value.map(copy) as T
  if (Object.getPrototypeOf(value) !== Object.prototype) return structuredClone(value)
  const out: Record<string, unknown> = {}
  for (const key in value) {
    const member = copy(value[key])
    // A JSON `__proto__` member is a property like any other, never the prototype.
    if (key === '__proto__')
      Object.defineProperty(out, key, { value: member, enumerable: true, writable: true, configurable: true })
    else out[key] = member
  }
  return out as T
}

/**
 * A copy of `op` that shares nothing with it. The store clears fields by setting them `undefined`
 * (deleting would slow every later access to the object): the copy leaves them out, as absent.
 */
export function copyOp(op: Operation): Operation {
  const out: Record<string, unknown> = {}
  for (const key in op) {
    const value = op[key as keyof Operation]
    if (value !== undefined) out[key] = typeof value === 'object' ? copy(value) : value
  }
  return out as unknown as Operation
}

/** A copy of `entry` that shares nothing with it. */
export function copyEntry(entry: HistoryEntry): HistoryEntry {
  const out = { ...entry }
  if (entry.error) out.error = copy(entry.error)
  if (entry.progress) out.progress = { ...entry.progress }
  return out
}
