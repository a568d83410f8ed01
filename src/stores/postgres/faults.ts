import { LongrunError } from '../../core/errors.js'

// Which failures of the driver mean "the database is not there right now" (down, restarting,
// unreachable, out of connections or disk), as opposed to a fault of the statement or its data:
// the one place this store decides that a call answers 503 `store-unavailable` (or 507
// `storage-full`) with a Retry-After, rather than 500.

/** How long a client is asked to wait before trying again when PostgreSQL is unavailable, in seconds. */
export const UNAVAILABLE_RETRY_AFTER = 2
/** The same when its disk is full: freeing space takes an operator. */
export const FULL_RETRY_AFTER = 30

// Node's socket errors while connecting or talking to the server.
const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ENOENT', // a Unix socket path that is gone while the server is down
])

// SQLSTATEs: class 08 (connection exception), class 53 (insufficient resources), the 57P0x of a
// server shutting down, crashed or starting up, and a read-only standby after a failover.
const DISK_FULL = '53100'
const UNAVAILABLE_STATES = new Set(['57P01', '57P02', '57P03', '57P04', '57P05', '25006'])

// What pg and pg-pool throw without a code when a connection ends or never comes.
const DRIVER_MESSAGES = [
  /^Connection terminated/,
  /timeout exceeded when trying to connect/,
  /^Client has encountered a connection error/,
  /^Client was closed and is not queryable/,
  /^Cannot use a pool after calling end/,
  /the database system is (starting up|shutting down|in recovery mode|not yet accepting connections)/,
]

/** `err` as `store-unavailable` or `storage-full` when it means the database is down or full; otherwise `err` itself. */
export function postgresFault(err: unknown): unknown {
  if (err instanceof LongrunError) return err
  const kind = faultKind(err)
  if (kind === undefined) return err
  if (kind === 'full') {
    return new LongrunError('storage-full', 'The database is out of disk space; try again later.', {
      cause: err,
      extra: { retryAfter: FULL_RETRY_AFTER },
    })
  }
  return storeUnavailable(err)
}

// The detail names no host, port or driver message, only the error code: clients see it, the
// cause stays for logs.
export function storeUnavailable(cause?: unknown): LongrunError {
  const code = (cause as { code?: unknown } | undefined)?.code
  const why = typeof code === 'string' && /^[A-Z0-9_]{1,32}$/.test(code) ? ` (${code})` : ''
  return new LongrunError('store-unavailable', `The database is unavailable${why}; try again shortly.`, {
    cause,
    extra: { retryAfter: UNAVAILABLE_RETRY_AFTER },
  })
}

function faultKind(err: unknown): 'full' | 'unavailable' | undefined {
  if (typeof err !== 'object' || err === null) return undefined
  const { code, errors, message } = err as { code?: unknown; errors?: unknown; message?: unknown }
  if (typeof code === 'string') {
    if (code === DISK_FULL) return 'full'
    if (code.startsWith('08') || code.startsWith('53') || UNAVAILABLE_STATES.has(code) || NETWORK_CODES.has(code)) {
      return 'unavailable'
    }
  }
  // Node's connect to a name of several addresses fails with every address's error.
  if (err instanceof AggregateError && Array.isArray(errors) && errors.some((e) => faultKind(e) !== undefined)) {
    return 'unavailable'
  }
  if (typeof message === 'string' && DRIVER_MESSAGES.some((pattern) => pattern.test(message))) return 'unavailable'
  return undefined
}
