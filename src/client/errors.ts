import type { Problem } from '../http/problem.js'

/** An operation's `error`: a problem without a status (docs/protocol.md, "Operation errors"). */
export interface OperationErrorInfo {
  type: string
  code: string
  title: string
  detail?: string
  message?: string
}

/** Every error the client throws for an answer of the server: its status and problem (RFC 9457). */
export class LongrunClientError extends Error {
  constructor(
    readonly status: number,
    readonly problem: Partial<Problem> | undefined,
    message = problem?.detail ?? problem?.title ?? `HTTP ${status}`,
  ) {
    super(message)
    this.name = new.target.name
  }

  get code(): string | undefined {
    return this.problem?.code
  }
}

export class OperationFailedError extends LongrunClientError {
  /** The operation's `error`, e.g. `{ code: 'ENOSPC', detail: 'The disk is full' }`. */
  readonly error: OperationErrorInfo | undefined
  constructor(status: number, problem: Partial<Problem> | undefined) {
    const error = problem?.error as OperationErrorInfo | undefined
    super(status, problem, error?.detail ?? error?.title ?? 'The operation failed.')
    this.error = error
  }
}

export class OperationCanceledError extends LongrunClientError {}
export class NotFoundError extends LongrunClientError {}
export class UnauthorizedError extends LongrunClientError {}
export class ForbiddenError extends LongrunClientError {}
export class ConflictError extends LongrunClientError {}

export class RateLimitedError extends LongrunClientError {
  /** Seconds to wait before trying again. */
  readonly retryAfter: number | undefined
  constructor(status: number, problem: Partial<Problem> | undefined, retryAfter: number | undefined) {
    super(status, problem)
    this.retryAfter = retryAfter
  }
}

/** `op.wait()` ran out of its `timeout`; the operation goes on. */
export class WaitTimeoutError extends LongrunClientError {
  constructor(timeoutMs: number) {
    super(0, undefined, `The operation did not finish within ${timeoutMs} ms.`)
  }
}

/** `Retry-After` in seconds (the delay form longrun sends), else `undefined`. */
export function retryAfterOf(response: Response): number | undefined {
  const value = Number(response.headers.get('retry-after') ?? NaN)
  return Number.isFinite(value) && value >= 0 ? value : undefined
}

/** The error class of a refused answer, by its problem code first, then by its status. */
export async function errorFrom(response: Response): Promise<LongrunClientError> {
  let problem: Partial<Problem> | undefined
  try {
    problem = (await response.json()) as Partial<Problem>
  } catch {
    // Not longrun's answer (a proxy's page): the status alone.
  }
  const { status } = response
  if (problem?.code === 'operation-failed') return new OperationFailedError(status, problem)
  if (problem?.code === 'operation-canceled') return new OperationCanceledError(status, problem)
  if (status === 429) {
    const retryAfter = typeof problem?.retryAfter === 'number' ? problem.retryAfter : retryAfterOf(response)
    return new RateLimitedError(status, problem, retryAfter)
  }
  const Class =
    { 401: UnauthorizedError, 403: ForbiddenError, 404: NotFoundError, 409: ConflictError }[status] ??
    LongrunClientError
  return new Class(status, problem)
}
