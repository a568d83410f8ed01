import { toMs, type Duration } from './duration.js'
import { invalidOption } from './errors.js'
import type { Permissions } from './permissions.js'
import type { Logger } from './logger.js'

export interface RetryPolicy {
  /** Attempts in all, the first included. @default 1 (no retry) */
  attempts: number
  /** @default 'exponential' */
  backoff?: 'fixed' | 'exponential'
  /** Delay before the second attempt (`fixed`: before every one). @default '1s' */
  delay?: Duration
  /** Growth per attempt for `exponential`. @default 2 */
  factor?: number
  /** Longest delay between two attempts. @default '1h' */
  maxDelay?: Duration
  /** Full jitter: each delay is drawn uniformly from 0 to the computed delay. @default true */
  jitter?: boolean
}

/** What a handler sees of its operation. */
export interface OperationContext<
  Input = unknown,
  Args = unknown,
  Params = Record<string, string>,
  Query = Record<string, unknown>,
> {
  readonly id: string
  readonly name: string
  /** 1 on the first start; use it with `id` to make downstream calls idempotent. */
  readonly attempt: number
  readonly input: Input
  readonly params: Params
  readonly query: Query
  /** The submitting request's headers, without credentials (authorization, cookies). */
  readonly headers: Record<string, string>
  /** What a hook attached at submit (an HTTP route's `beforeQueue`), as stored; `{}` for none. */
  readonly context: Readonly<Record<string, unknown>>
  /** The submitting principal, when the request had one. */
  readonly user: { id: string } | undefined
  /** The definition's `args`, as given. */
  readonly args: Args
  /** Aborts on cancel, timeout, lease loss and shutdown; `signal.reason` says which. */
  readonly signal: AbortSignal
  readonly log: Logger
  /** Records progress (0-100) and optionally the current step; only the running attempt can. */
  progress(percent: number, step?: string, description?: string): Promise<void>
}

export interface OperationDefinition<
  Input = unknown,
  Result = unknown,
  Args = unknown,
  Params = Record<string, string>,
  Query = Record<string, unknown>,
> {
  /** Unique among the engine's definitions; stored with each operation. */
  name: string
  handler(op: OperationContext<Input, Args, Params, Query>): Promise<Result> | Result
  /** Handlers of this name running at once in one process. @default 2 */
  concurrency?: number
  /** Per-attempt time limit, or `'none'`. @default '600m' */
  timeout?: Duration | 'none'
  /** @default true */
  cancelable?: boolean
  /** Fixed arguments passed to every run as `op.args`. */
  args?: Args
  /** @default { attempts: 1 } */
  retry?: RetryPolicy
  /** Makes operation ids for this definition. @default the engine's (UUIDv7) */
  idGenerator?: () => string
  /** Who besides the owner may read and change these operations. @default the owner only */
  permissions?: Permissions
}

export interface ResolvedRetryPolicy {
  attempts: number
  backoff: 'fixed' | 'exponential'
  delayMs: number
  factor: number
  maxDelayMs: number
  jitter: boolean
}

export interface ResolvedDefinition {
  name: string
  handler: (op: OperationContext<unknown, unknown>) => unknown
  concurrency: number
  timeoutMs: number | null
  cancelable: boolean
  args: unknown
  retry: ResolvedRetryPolicy
  idGenerator: (() => string) | undefined
  permissions: Permissions | undefined
}

const DEFAULTS = {
  concurrency: 2,
  timeout: '600m', // 10 h: generous for jobs measured in minutes, yet a hung handler ends
  retry: { attempts: 1, backoff: 'exponential', delay: '1s', factor: 2, maxDelay: '1h', jitter: true },
} as const

/** The longest delay `setTimeout` honours. */
const MAX_TIMER_MS = 2_147_483_647

export function resolveDefinition<Input, Result, Args, Params, Query>(
  def: OperationDefinition<Input, Result, Args, Params, Query>,
): ResolvedDefinition {
  if (typeof def.name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/.test(def.name)) {
    throw invalidOption('name', 'must be 1-128 letters, digits, dots, colons, dashes or underscores')
  }
  if (typeof def.handler !== 'function') throw invalidOption(`${def.name}.handler`, 'must be a function')
  const concurrency = def.concurrency ?? DEFAULTS.concurrency
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw invalidOption(`${def.name}.concurrency`, 'must be a positive integer')
  }
  const timeout = def.timeout ?? DEFAULTS.timeout
  const timeoutMs = timeout === 'none' ? null : toMs(`${def.name}.timeout`, timeout)
  if (timeoutMs === 0) throw invalidOption(`${def.name}.timeout`, "must be positive, or 'none'")
  // Node fires a longer timer after 1 ms, which would time out every attempt at once.
  if (timeoutMs !== null && timeoutMs > MAX_TIMER_MS) {
    throw invalidOption(`${def.name}.timeout`, "must be at most 2147483647 ms (about 24.8 days), or 'none'")
  }
  return {
    name: def.name,
    handler: def.handler as unknown as ResolvedDefinition['handler'],
    concurrency,
    timeoutMs,
    cancelable: def.cancelable ?? true,
    args: def.args,
    retry: resolveRetry(def.name, def.retry),
    idGenerator: def.idGenerator,
    permissions: def.permissions,
  }
}

function resolveRetry(name: string, policy: RetryPolicy | undefined): ResolvedRetryPolicy {
  const p = { ...DEFAULTS.retry, ...policy }
  const option = `${name}.retry`
  if (!Number.isInteger(p.attempts) || p.attempts < 1)
    throw invalidOption(`${option}.attempts`, 'must be an integer >= 1')
  if (p.backoff !== 'fixed' && p.backoff !== 'exponential') {
    throw invalidOption(`${option}.backoff`, "must be 'fixed' or 'exponential'")
  }
  if (!(p.factor >= 1)) throw invalidOption(`${option}.factor`, 'must be >= 1')
  const delayMs = toMs(`${option}.delay`, p.delay)
  const maxDelayMs = toMs(`${option}.maxDelay`, p.maxDelay)
  if (maxDelayMs < delayMs) throw invalidOption(`${option}.maxDelay`, 'must not be shorter than delay')
  return { attempts: p.attempts, backoff: p.backoff, delayMs, factor: p.factor, maxDelayMs, jitter: p.jitter }
}

/** Delay before the attempt after `attempt`, drawn with full jitter when enabled. */
export function backoffMs(policy: ResolvedRetryPolicy, attempt: number, random: () => number = Math.random): number {
  const exponent = policy.backoff === 'exponential' ? Math.max(0, attempt - 1) : 0
  const ceiling = Math.min(policy.maxDelayMs, policy.delayMs * policy.factor ** exponent)
  return Math.round(policy.jitter ? random() * ceiling : ceiling)
}
