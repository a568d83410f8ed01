import type { Statement } from 'better-sqlite3'
import { LongrunError } from '../../core/errors.js'

// Which of SQLite's failures mean "the file or its disk fails right now", as opposed to a fault of
// the statement or its data: the one place this store decides that a call answers 507
// `storage-full` or 503 `store-unavailable` with a Retry-After, rather than 500.

/** How long a client is asked to wait when the disk is full, in seconds: freeing space takes an operator. */
export const FULL_RETRY_AFTER = 30
/** The same when the file cannot be read or written (I/O error, locked by another process too long...). */
export const UNAVAILABLE_RETRY_AFTER = 2

// Primary result codes; better-sqlite3 names extended ones after them (SQLITE_IOERR_WRITE,
// SQLITE_BUSY_TIMEOUT, SQLITE_READONLY_DBMOVED, SQLITE_CANTOPEN_ISDIR...).
// SQLITE_BUSY: another process held the write lock past `busy_timeout`. SQLITE_CORRUPT and
// SQLITE_NOTADB stay 500s: they take a restore, not a retry.
const UNAVAILABLE = [
  'SQLITE_IOERR',
  'SQLITE_CANTOPEN',
  'SQLITE_BUSY',
  'SQLITE_READONLY',
  'SQLITE_NOMEM',
  'SQLITE_PROTOCOL',
]

/** Whether `err` is SQLite's "database or disk is full", as it threw it or as `sqliteFault` made it. */
export const isFull = (err: unknown): boolean =>
  err instanceof LongrunError ? err.code === 'storage-full' : primaryCode(err) === 'SQLITE_FULL'

/** `err` as `storage-full` or `store-unavailable` when the file or its disk fails; otherwise `err` itself. */
export function sqliteFault(err: unknown): unknown {
  if (err instanceof LongrunError) return err
  const code = primaryCode(err)
  if (code === 'SQLITE_FULL') return storageFull(err)
  if (code !== undefined && UNAVAILABLE.includes(code)) {
    // The detail names no path or SQLite message: clients see it, the cause stays for logs.
    return new LongrunError('store-unavailable', 'The database file cannot be read or written; try again shortly.', {
      cause: err,
      extra: { retryAfter: UNAVAILABLE_RETRY_AFTER },
    })
  }
  return err
}

export const storageFull = (cause?: unknown) =>
  new LongrunError('storage-full', 'The disk of the database is full; try again once space is freed.', {
    cause,
    extra: { retryAfter: FULL_RETRY_AFTER },
  })

function primaryCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code
  if (typeof code !== 'string' || !code.startsWith('SQLITE_')) return undefined
  const second = code.indexOf('_', 'SQLITE_'.length)
  return second === -1 ? code : code.slice(0, second)
}

/**
 * Makes `statement`'s runs throw as `sqliteFault` says: every read and write of the store goes
 * through statements prepared by ./connection.ts, so this is where its faults are classified.
 * Returns the same statement (`raw()` and the other setters keep returning it).
 */
export function classified(statement: Statement): Statement {
  const target = statement as unknown as Record<'run' | 'get' | 'all' | 'iterate', (...args: unknown[]) => unknown>
  for (const method of ['run', 'get', 'all', 'iterate'] as const) {
    const original = target[method]!
    target[method] = function (this: unknown, ...args: unknown[]) {
      try {
        return original.apply(this, args)
      } catch (err) {
        throw sqliteFault(err)
      }
    }
  }
  return statement
}
