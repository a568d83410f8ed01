import { Ajv } from 'ajv'
import { LongrunError } from '../core/errors.js'
import { credentialHeaders } from './auth.js'
import type { ResolvedProtocolOptions } from './options.js'
import type { RequestHead } from './request.js'

/**
 * Bounds on every JSON value a request carries, checked before anything reads it deeply: the
 * idempotency fingerprint, the engine's copy and the stores all recurse, and a body of 1 MiB can
 * nest 500,000 levels. One answer for every store: PostgreSQL refuses a lone UTF-16 surrogate
 * where SQLite and the memory store would keep it, so no store is given one.
 */
export const JSON_LIMITS = {
  /** Objects and arrays nested in one another, the outermost being depth 1. */
  maxDepth: 64,
  /** Values in all (every object, array, member and element counts one). */
  maxNodes: 100_000,
} as const

/** Which part of the request a value came from: it names the problem's code. */
export type RequestPart = 'body' | 'params' | 'querystring'

const CODES = { body: 'invalid-body', params: 'invalid-params', querystring: 'invalid-querystring' } as const

// In a `u` regular expression a surrogate pair is one code point: only a lone surrogate is `Cs`.
// (String.prototype.isWellFormed says the same, but is not in the ES2023 library the build targets.)
const LONE_SURROGATE = /\p{Cs}/u

const tooLarge = (where: RequestPart, why: string, path: string) =>
  new LongrunError(CODES[where], `The request ${where} ${why}.`, { extra: { path } })

/** A JSON Pointer (RFC 6901) of the path walked so far, cut short: a member name may be long. */
const pointer = (path: readonly (string | number)[]) =>
  path.length === 0
    ? '/'
    : path
        .map((key) => '/' + String(key).replace(/~/g, '~0').replace(/\//g, '~1'))
        .join('')
        .slice(0, 256)

/**
 * Throws a 4xx `LongrunError` (`invalid-body`, `invalid-params` or `invalid-querystring` by
 * `where`) unless `value` nests at most `maxDepth` levels, holds at most `maxNodes` values and
 * every string in it (member names too) is well-formed UTF-16. Walks without recursion, so that the
 * check itself cannot overflow the stack.
 */
export function checkJsonLimits(value: unknown, where: RequestPart, limits = JSON_LIMITS): void {
  const { maxDepth, maxNodes } = limits
  // Each entry: a value, its depth among containers, and how it was reached (for the message).
  const stack: { value: unknown; depth: number; path: (string | number)[] }[] = [{ value, depth: 0, path: [] }]
  let nodes = 0
  while (stack.length > 0) {
    const { value: current, depth, path } = stack.pop()!
    nodes++
    if (typeof current === 'string') {
      if (LONE_SURROGATE.test(current)) {
        throw tooLarge(where, 'holds a string with a lone UTF-16 surrogate: send valid Unicode', pointer(path))
      }
      continue
    }
    if (typeof current !== 'object' || current === null) continue
    if (depth + 1 > maxDepth) throw tooLarge(where, `is nested deeper than ${maxDepth} levels`, pointer(path))
    const keys = Array.isArray(current) ? undefined : Object.keys(current)
    // Counted before they are walked, so that a wide array is refused without a stack entry per element.
    if (nodes + stack.length + (keys ?? (current as unknown[])).length > maxNodes) {
      throw tooLarge(where, `holds more than ${maxNodes} JSON values`, pointer(path))
    }
    if (keys === undefined) {
      const items = current as unknown[]
      for (let i = items.length - 1; i >= 0; i--) stack.push({ value: items[i], depth: depth + 1, path: [...path, i] })
      continue
    }
    for (const key of keys) {
      if (LONE_SURROGATE.test(key)) {
        throw tooLarge(where, 'holds a member name with a lone UTF-16 surrogate: send valid Unicode', pointer(path))
      }
      stack.push({ value: (current as Record<string, unknown>)[key], depth: depth + 1, path: [...path, key] })
    }
  }
}

/** The bounds on everything a submission stores of its request: body, path and query parameters. */
export function checkSubmitLimits(parts: { body: unknown; params: unknown; query: unknown }): void {
  checkJsonLimits(parts.body, 'body')
  checkJsonLimits(parts.params, 'params')
  checkJsonLimits(parts.query, 'querystring')
}

/** The body of `POST {base}/retry`, as its schema admits it. */
export interface RetryFilter {
  state?: string | string[]
  name?: string
  limit?: number
}

// Unknown members are refused: a misspelt `states` must not retry everything.
const RETRY_FILTER = {
  type: 'object',
  additionalProperties: false,
  properties: {
    state: { anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' }, maxItems: 16 }] },
    name: { type: 'string', minLength: 1, maxLength: 1024 },
    limit: { type: 'integer', minimum: 1, maximum: 10_000 },
  },
} as const

const validateRetryFilter = new Ajv({ allErrors: false, strict: true }).compile<RetryFilter>(RETRY_FILTER)

const RETRY_FIELDS: Record<string, string> = {
  '': 'must be a JSON object',
  state: 'must be a state or an array of states (failed, canceled)',
  name: 'must be a route name (a non-empty string)',
  limit: 'must be an integer from 1 to 10000',
}

/**
 * The bulk-retry body, checked by its schema: a `422 invalid-body` naming the first member that
 * does not fit. No body is `{}`.
 */
export function retryFilterOf(body: unknown): RetryFilter {
  const filter = body ?? {}
  checkJsonLimits(filter, 'body')
  if (validateRetryFilter(filter)) return filter
  const issue = validateRetryFilter.errors?.[0]
  const unknown = (issue?.params as { additionalProperty?: unknown } | undefined)?.additionalProperty
  if (typeof unknown === 'string') {
    const field = unknown.slice(0, 100)
    throw new LongrunError('invalid-body', `Field '${field}' is not one of state, name, limit.`, { extra: { field } })
  }
  const member = issue?.instancePath.split('/')[1] ?? ''
  const field = member === '' ? '(body)' : member
  const why = RETRY_FIELDS[member] ?? issue?.message ?? 'is invalid'
  throw new LongrunError('invalid-body', `Field '${field}' ${why}.`, { extra: { field } })
}

/**
 * Counts refused credentials per client address in fixed windows: once `max` are refused within
 * `windowMs`, `check` refuses every attempt from that address with `429 rate-limited` until the
 * window ends, whether its credentials are right or not (else a guess that hits would still get through).
 */
export class FailureLimiter {
  readonly #windows = new Map<string, { count: number; resetAt: number }>()

  constructor(
    readonly max: number,
    readonly windowMs: number,
    // Addresses remembered at most: beyond, the oldest window is forgotten (memory stays bounded).
    readonly maxKeys = 100_000,
    readonly clock: () => number = Date.now,
  ) {}

  /** Throws `429 rate-limited`, with `retryAfter` in seconds, when `key` has used up its window. */
  check(key: string): void {
    const window = this.#current(key)
    if (!window || window.count < this.max) return
    const retryAfter = Math.max(1, Math.ceil((window.resetAt - this.clock()) / 1000))
    throw new LongrunError(
      'rate-limited',
      `Too many refused credentials from this address: at most ${this.max} per ${Math.ceil(this.windowMs / 1000)} s.`,
      { extra: { retryAfter } },
    )
  }

  /** Counts one refused attempt of `key`. */
  record(key: string): void {
    const window = this.#current(key)
    if (window) {
      window.count++
      return
    }
    if (this.#windows.size >= this.maxKeys) this.#windows.delete(this.#windows.keys().next().value!)
    this.#windows.set(key, { count: 1, resetAt: this.clock() + this.windowMs })
  }

  #current(key: string) {
    const window = this.#windows.get(key)
    if (window && window.resetAt <= this.clock()) {
      this.#windows.delete(key)
      return undefined
    }
    return window
  }
}

/** The refused-credentials limit of an API (`authFailureLimit`), by client address. */
export interface AuthFailureGuard {
  /** Before authenticating: `429` for a request with credentials from an address that used up its window. */
  check(request: RequestHead): void
  /** After a `401`: counts it when the request sent credentials (a request without is no guess). */
  refused(request: RequestHead): void
}

/** The guard of `options`; `undefined` when the limit is off or nothing authenticates. */
export function authFailureGuard(
  options: Pick<ResolvedProtocolOptions, 'authFailureLimit' | 'authenticate'>,
): AuthFailureGuard | undefined {
  const { authFailureLimit: limit, authenticate } = options
  if (!limit || !authenticate) return undefined
  const limiter = new FailureLimiter(limit.max, limit.timeWindowMs)
  const names = credentialHeaders(authenticate)
  const sent = (request: RequestHead) => names.some((name) => request.headers[name] !== undefined)
  return {
    check: (request) => {
      if (sent(request)) limiter.check(`ip:${request.ip}`)
    },
    refused: (request) => {
      if (sent(request)) limiter.record(`ip:${request.ip}`)
    },
  }
}
