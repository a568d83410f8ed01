import type { Operation, OperationError } from './types.js'

export const PROBLEM_TYPE_PREFIX = 'urn:longrun:problem:'

/** Every failure longrun reports: a stable code, the HTTP status it maps to, and a message. */
export class LongrunError extends Error {
  /** Response headers that go with this error over HTTP, e.g. `www-authenticate`. */
  readonly headers: Record<string, string> = {}

  constructor(
    readonly code: string,
    readonly status: number,
    readonly title: string,
    message: string,
    readonly extra: Record<string, unknown> = {},
    options?: ErrorOptions,
  ) {
    super(message, options)
    this.name = 'LongrunError'
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

// Unknown ids and ids the caller may not read answer the very same bytes, so the message names no id.
export const operationNotFound = () =>
  new LongrunError('operation-not-found', 404, 'Operation not found', 'No such operation, or you may not read it.')

export const unknownOperationName = (name: string) =>
  new LongrunError('unknown-operation', 500, 'Unknown operation', `No operation named '${name}' is defined.`)

export const operationFinished = (op: Operation) =>
  new LongrunError('operation-finished', 409, 'Operation finished', `The operation already ended '${op.state}'.`, {
    state: op.state,
  })

export const notCancelable = () =>
  new LongrunError('operation-not-cancelable', 409, 'Operation not cancelable', 'This operation cannot be canceled.')

export const notRetryable = (op: Operation) =>
  new LongrunError(
    'operation-not-retryable',
    409,
    'Operation not retryable',
    `Only failed or canceled operations can be retried; this one is '${op.state}'.`,
    { state: op.state },
  )

export const notDeletable = (op: Operation) =>
  new LongrunError(
    'operation-not-finished',
    409,
    'Operation not finished',
    `Only finished operations can be deleted; this one is '${op.state}'.`,
    { state: op.state },
  )

export const duplicateOperationId = (id: string) =>
  new LongrunError(
    'duplicate-operation-id',
    409,
    'Duplicate operation id',
    `An operation with id '${id}' already exists.`,
  )

export const idempotencyMismatch = () =>
  new LongrunError(
    'idempotency-key-mismatch',
    422,
    'Idempotency key reused',
    'This idempotency key was already used for a different request; use a new key for a new request.',
  )

export const invalidOption = (name: string, why: string) =>
  new LongrunError('invalid-option', 500, 'Invalid option', `Option '${name}' ${why}.`)

export const operationError = (code: string, title: string, detail?: string, stack?: string): OperationError => ({
  type: PROBLEM_TYPE_PREFIX + code,
  code,
  title,
  ...(detail === undefined ? {} : { detail }),
  ...(stack === undefined ? {} : { stack }),
})

/** How a thrown value is recorded on the operation. */
export function toOperationError(err: unknown): OperationError {
  if (err instanceof Error) {
    const { code } = err as { code?: unknown }
    return operationError(
      typeof code === 'string' ? code : 'handler-error',
      err.name || 'Error',
      err.message,
      err.stack,
    )
  }
  return operationError('handler-error', 'Error', String(err))
}

export function isRetryable(err: unknown): boolean {
  return !(typeof err === 'object' && err !== null && (err as { retryable?: unknown }).retryable === false)
}

export const canceledError = (): OperationError =>
  operationError('canceled', 'Operation canceled', 'The operation was canceled at the caller’s request.')
