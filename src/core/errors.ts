import type { Operation, OperationError } from './types.js'

export const PROBLEM_TYPE_PREFIX = 'urn:longrun:problem:'

/**
 * Every code longrun answers a failed request with, its HTTP status and its title: the one list that
 * `docs/protocol.md`, clients and OpenAPI follow. The code is also the last part of the problem's
 * `type`, and never changes once released.
 */
export const ERRORS = {
  // Operations and their controls
  'operation-not-found': { status: 404, title: 'Operation not found' },
  'operation-not-done': { status: 409, title: 'Operation not done' },
  'operation-failed': { status: 409, title: 'Operation failed' },
  'operation-canceled': { status: 409, title: 'Operation canceled' },
  'operation-finished': { status: 409, title: 'Operation finished' },
  'operation-not-cancelable': { status: 409, title: 'Operation not cancelable' },
  'operation-not-retryable': { status: 409, title: 'Operation not retryable' },
  'operation-not-finished': { status: 409, title: 'Operation not finished' },
  'operation-started': { status: 409, title: 'Operation already started' },
  'no-error': { status: 404, title: 'No error' },
  'duplicate-operation-id': { status: 409, title: 'Duplicate operation id' },
  'unknown-operation': { status: 500, title: 'Unknown operation' },
  // Requests
  'malformed-json': { status: 400, title: 'Malformed JSON' },
  'invalid-body': { status: 422, title: 'Invalid request body' },
  'invalid-params': { status: 400, title: 'Invalid request' },
  'invalid-querystring': { status: 400, title: 'Invalid request' },
  'invalid-headers': { status: 400, title: 'Invalid request' },
  'invalid-query': { status: 400, title: 'Invalid query' },
  'invalid-condition': { status: 400, title: 'Invalid condition' },
  'invalid-callback': { status: 422, title: 'Invalid callback' },
  'invalid-id': { status: 400, title: 'Invalid operation id' },
  'unsupported-media-type': { status: 415, title: 'Unsupported media type' },
  'unsupported-value': { status: 422, title: 'Unsupported value' },
  'body-too-large': { status: 413, title: 'Body too large' },
  'bad-url': { status: 400, title: 'Bad URL' },
  'bad-request': { status: 400, title: 'Bad request' },
  'request-timeout': { status: 408, title: 'Request timeout' },
  'headers-too-large': { status: 431, title: 'Request headers too large' },
  'route-not-found': { status: 404, title: 'Not found' },
  'method-not-allowed': { status: 405, title: 'Method not allowed' },
  'not-acceptable': { status: 406, title: 'Not acceptable' },
  'invalid-idempotency-key': { status: 400, title: 'Invalid idempotency key' },
  'idempotency-key-required': { status: 400, title: 'Idempotency key required' },
  'idempotency-key-mismatch': { status: 422, title: 'Idempotency key reused' },
  // Callers
  unauthorized: { status: 401, title: 'Unauthorized' },
  forbidden: { status: 403, title: 'Forbidden' },
  'quota-exceeded': { status: 429, title: 'Too many active operations' },
  'rate-limited': { status: 429, title: 'Too many requests' },
  'too-many-streams': { status: 429, title: 'Too many open streams' },
  // Waiting
  'hold-timeout': { status: 408, title: 'Operation not done in time' },
  // The server
  'store-closed': { status: 503, title: 'Store closed' },
  'store-unavailable': { status: 503, title: 'Store unavailable' },
  'storage-full': { status: 507, title: 'Storage full' },
  'shutting-down': { status: 503, title: 'Shutting down' },
  'not-supported': { status: 501, title: 'Not supported' },
  'schema-too-new': { status: 500, title: 'Schema too new' },
  'invalid-option': { status: 500, title: 'Invalid option' },
  'internal-error': { status: 500, title: 'Internal error' },
} as const satisfies Record<string, { status: number; title: string }>

export type ErrorCode = keyof typeof ERRORS

export interface LongrunErrorOptions extends ErrorOptions {
  /** Extension members of the problem, e.g. `state` or `retryAfter`. */
  extra?: Record<string, unknown>
  /** Response headers that go with the error over HTTP, e.g. `www-authenticate`. */
  headers?: Record<string, string>
}

/** Every failure longrun reports: a code of `ERRORS` (which gives its status and title) and a detail. */
export class LongrunError extends Error {
  readonly status: number
  readonly title: string
  readonly extra: Record<string, unknown>
  readonly headers: Record<string, string>

  constructor(
    readonly code: ErrorCode,
    detail: string,
    options: LongrunErrorOptions = {},
  ) {
    super(detail, options.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'LongrunError'
    this.status = ERRORS[code].status
    this.title = ERRORS[code].title
    this.extra = options.extra ?? {}
    this.headers = options.headers ?? {}
  }

  get type(): string {
    return PROBLEM_TYPE_PREFIX + this.code
  }
}

/** Throw from a handler to fail the operation without any further attempt. */
export class NonRetryableError extends Error {
  readonly retryable = false
  constructor(message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'NonRetryableError'
  }
}

/**
 * Throw from a handler to fail with details its clients may see (AsyncEndpoints'
 * `Failure(errors)`): the members of `details` appear in the operation's `error` beside `detail`
 * (the message), up to `MAX_DETAILS_BYTES` of JSON. Nothing else of a thrown error is shown, its
 * stack only with `exposeStack`. Retried like any failure unless `retryable: false`.
 */
export class OperationFailure extends Error {
  readonly details: Record<string, unknown>
  readonly code: string | undefined
  readonly retryable: boolean

  constructor(
    message: string,
    details: Record<string, unknown> = {},
    options: ErrorOptions & { code?: string; retryable?: boolean } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'OperationFailure'
    this.details = details
    this.code = options.code
    this.retryable = options.retryable ?? true
  }
}

/** The most JSON bytes of `OperationFailure` details kept on an operation. */
export const MAX_DETAILS_BYTES = 8_192

// Members of an operation's error that details cannot replace.
const RESERVED = new Set(['type', 'code', 'title', 'detail', 'stack', 'status', 'instance', 'message'])

/** The public members of a failure's details, as stored: JSON, capped, never replacing the problem's own. */
function publicDetails(details: Record<string, unknown>): Record<string, unknown> {
  let json: string | undefined
  try {
    json = JSON.stringify(details)
  } catch {
    // a cycle, a BigInt...
  }
  if (json === undefined || typeof JSON.parse(json) !== 'object') return { detailsOmitted: 'not JSON-serialisable' }
  if (Buffer.byteLength(json) > MAX_DETAILS_BYTES) {
    return { detailsOmitted: `larger than ${MAX_DETAILS_BYTES} bytes of JSON` }
  }
  const kept: Record<string, unknown> = {}
  for (const [name, value] of Object.entries(JSON.parse(json) as Record<string, unknown>)) {
    if (!RESERVED.has(name)) kept[name] = value
  }
  return kept
}

/** Why a run's signal aborted; also `signal.reason.code` as the handler sees it. */
export type AbortCause = 'cancel' | 'timeout' | 'shutdown' | 'lease-lost'

/** The reason of a handler's aborted `signal`. */
export class OperationAbortedError extends Error {
  constructor(readonly code: AbortCause) {
    super(`Operation aborted: ${code}`)
    this.name = 'AbortError'
  }
}

// Factories, named after their codes, for the errors raised in more than one place or with a fixed text.

// Unknown ids and ids the caller may not read answer the very same bytes, so the detail names no id.
export const operationNotFound = () =>
  new LongrunError('operation-not-found', 'No such operation, or you may not read it.')

export const unknownOperation = (name: string) =>
  new LongrunError('unknown-operation', `No operation named '${name}' is defined.`)

export const operationFinished = (op: Operation) =>
  new LongrunError('operation-finished', `The operation already ended '${op.state}'.`, { extra: { state: op.state } })

export const operationNotCancelable = () =>
  new LongrunError('operation-not-cancelable', 'This operation cannot be canceled.')

export const operationNotRetryable = (op: Operation) =>
  new LongrunError(
    'operation-not-retryable',
    `Only failed or canceled operations can be retried; this one is '${op.state}'.`,
    { extra: { state: op.state } },
  )

export const operationNotFinished = (op: Operation) =>
  new LongrunError('operation-not-finished', `Only finished operations can be deleted; this one is '${op.state}'.`, {
    extra: { state: op.state },
  })

export const operationStarted = (op: Operation) =>
  new LongrunError('operation-started', `The operation was started already; it is '${op.state}'.`, {
    extra: { state: op.state },
  })

export const duplicateOperationId = (id: string) =>
  new LongrunError('duplicate-operation-id', `An operation with id '${id}' already exists.`)

export const idempotencyKeyMismatch = () =>
  new LongrunError(
    'idempotency-key-mismatch',
    'This idempotency key was already used for a different request; use a new key for a new request.',
  )

export const forbidden = () => new LongrunError('forbidden', 'You may read this operation but not change it.')

export const invalidOption = (name: string, why: string) =>
  new LongrunError('invalid-option', `Option '${name}' ${why}.`)

export const capabilityMissing = (what: string) =>
  new LongrunError('not-supported', `The store does not offer ${what}.`)

export const storeClosed = () => new LongrunError('store-closed', 'The store is closed.')

export const schemaTooNew = (where: string, current: number, latest: number) =>
  new LongrunError(
    'schema-too-new',
    `The database schema${where} is at version ${current}; this longrun knows up to ${latest}. Upgrade longrun.`,
  )

// What an operation's `error` says: a problem without a status (docs/protocol.md, "Operation errors").

export const operationError = (code: string, title: string, detail?: string, stack?: string): OperationError => ({
  type: PROBLEM_TYPE_PREFIX + code,
  code,
  title,
  ...(detail === undefined ? {} : { detail }),
  ...(stack === undefined ? {} : { stack }),
})

/** The codes longrun itself records on operations; a handler's error may carry any other code. */
export const OPERATION_ERROR_CODES = [
  'timeout',
  'canceled',
  'handler-error',
  'result-not-serializable',
  'result-not-storable',
  'lease-lost',
] as const

/** How a thrown value is recorded on the operation. */
export function toOperationError(err: unknown): OperationError {
  if (err instanceof Error) {
    const { code } = err as { code?: unknown }
    const error = operationError(
      typeof code === 'string' ? code : 'handler-error',
      capped(err.name || 'Error', 200),
      capped(err.message, MAX_DETAILS_BYTES),
      err.stack === undefined ? undefined : capped(err.stack, 4 * MAX_DETAILS_BYTES),
    )
    return err instanceof OperationFailure ? { ...error, ...publicDetails(err.details) } : error
  }
  return operationError('handler-error', 'Error', capped(String(err), MAX_DETAILS_BYTES))
}

/**
 * `text` cut to `max` characters: an error is stored with its operation and shown in every list
 * page that holds it, so a handler's huge message must not make every page huge.
 */
const capped = (text: string, max: number) => (text.length <= max ? text : `${text.slice(0, max)}… (cut)`)

export function isRetryable(err: unknown): boolean {
  return !(typeof err === 'object' && err !== null && (err as { retryable?: unknown }).retryable === false)
}

export const canceledError = (): OperationError =>
  operationError('canceled', 'Operation canceled', 'The operation was canceled at the caller’s request.')

export const timeoutError = (timeoutMs: number | null): OperationError =>
  operationError('timeout', 'Operation timed out', `The attempt exceeded its ${timeoutMs} ms timeout.`)

export const leaseLostError = (losses: number): OperationError =>
  operationError(
    'lease-lost',
    'Lease lost too often',
    `Its worker stopped ${losses} times while running it (e.g. the process crashed); it is not run again.`,
  )

export const resultNotSerializableError = (why: string): OperationError =>
  operationError(
    'result-not-serializable',
    'Result not serialisable',
    `The handler returned a value that is not JSON-serialisable: ${why}`,
  )
