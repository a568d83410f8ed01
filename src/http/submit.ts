import type { OperationAccess } from '../core/access.js'
import type { Engine } from '../core/engine.js'
import { LongrunError } from '../core/errors.js'
import type { Operation } from '../core/types.js'
import { fingerprint, idempotencyKeyOf, idempotencyKeyRequired, KEY_RECOMMENDED_HEADER } from './idempotency.js'
import type { ResolvedProtocolOptions } from './options.js'
import type { ResolvedAsyncRoute } from './route.js'
import { callbackFor, invalidCallback } from './callback.js'
import { checkSubmitLimits } from './limits.js'
import { checkTarget } from './webhooks/address.js'
import { subscriptionsFor } from './webhooks/options.js'

/** What a submission carries, as the adapter parsed and validated it. */
export interface SubmitParts {
  method: string
  /** The path without its query string: with the method and the body, what an idempotency key stands for. */
  path: string
  body: unknown
  params: Record<string, string>
  query: Record<string, unknown>
  headers: Record<string, string | string[] | undefined>
  /**
   * Every value of the header `name` in the order sent, to refuse a key sent twice. An adapter that
   * only sees joined values (Web `Headers`) passes the joined one.
   */
  headerValues(name: string): string[]
  /** The request's id in the server's logs, for the handler's logs to carry. */
  requestId?: string
  /** What the route's `beforeQueue` hook attached, for the handler's `op.context`. */
  context?: Record<string, unknown>
}

// Credentials are not stored with the operation: handlers get the other headers.
const UNSTORED_HEADERS = new Set(['authorization', 'proxy-authorization', 'cookie', 'x-api-key'])

function storedHeaders(headers: SubmitParts['headers']): Record<string, string> {
  const kept: Record<string, string> = {}
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || UNSTORED_HEADERS.has(name)) continue
    kept[name] = Array.isArray(value) ? value.join(', ') : value
  }
  return kept
}

const JSON_MEDIA_TYPE = /^application\/(?:[\w.+-]+\+)?json\s*(?:;|$)/i

/**
 * Refuses a body that is not JSON, before it is read: an operation's input is JSON whatever the
 * route's schema, and frameworks would also parse e.g. text/plain.
 */
export function assertJsonBody(contentType: string | undefined): void {
  if (contentType !== undefined && !JSON_MEDIA_TYPE.test(contentType)) {
    throw new LongrunError('unsupported-media-type', 'Send the body as application/json.')
  }
}

const quotaExceeded = (max: number, retryAfter: number) =>
  new LongrunError('quota-exceeded', `You already have ${max} queued or running operations; wait for some to finish.`, {
    extra: { retryAfter },
  })

/** Runs the functions given the same key one after another; with no key, at once. */
function serializer(): <T>(key: string | null | undefined, fn: () => Promise<T>) => Promise<T> {
  const tails = new Map<string | null, Promise<void>>()
  return async (key, fn) => {
    if (key === undefined) return fn()
    const result = (tails.get(key) ?? Promise.resolve()).then(fn)
    const tail = result.then(
      () => {},
      () => {},
    )
    tails.set(key, tail)
    try {
      return await result
    } finally {
      if (tails.get(key) === tail) tails.delete(key)
    }
  }
}

/** How a submission ended: the operation and the headers its 202 carries besides the usual ones. */
export interface Submission {
  op: Operation
  headers: Record<string, string>
}

/**
 * The submit pipeline of an async route: idempotency key, quota, storing. Resolves once the
 * operation is durable.
 */
export class Submitter {
  readonly #engine: Engine
  readonly #opts: ResolvedProtocolOptions
  readonly #oneAtATime = serializer()

  constructor(engine: Engine, options: ResolvedProtocolOptions) {
    this.#engine = engine
    this.#opts = options
  }

  async submit(access: OperationAccess, route: ResolvedAsyncRoute, parts: SubmitParts): Promise<Submission> {
    // First of all: the fingerprint and the engine's copy below recurse into what they are given.
    checkSubmitLimits(parts)
    const engine = this.#engine
    const { idempotencyHeaders, maxActivePerOwner: maxActive, retryAfterSeconds } = this.#opts
    const owner = access.owner
    const key = idempotencyKeyOf(parts.headerValues, idempotencyHeaders)
    if (key === undefined && route.idempotency === 'required') throw idempotencyKeyRequired(idempotencyHeaders[0]!)
    const idempotent =
      key === undefined ? undefined : { key, fingerprint: fingerprint(parts.method, parts.path, parts.body) }
    const callback = this.#callback(route, parts)
    // One submission of an owner at a time checks the quota and inserts: otherwise a burst of
    // concurrent submissions would all pass the check before any of them was stored.
    return this.#oneAtATime(maxActive === undefined ? undefined : owner, async (): Promise<Submission> => {
      if (maxActive !== undefined) {
        const { total } = await engine.stats({ owner, states: ['queued', 'running'] })
        if (total >= maxActive) {
          // A replay makes no new operation: the quota does not stand in its way.
          const made = idempotent && (await engine.findSubmitted(route.name, owner, idempotent))
          if (!made) throw quotaExceeded(maxActive, retryAfterSeconds)
          return { op: made, headers: { 'idempotent-replayed': 'true' } }
        }
      }
      const request = {
        owner,
        input: parts.body ?? null,
        params: parts.params,
        query: parts.query,
        headers: storedHeaders(parts.headers),
        requestId: parts.requestId,
        ...(callback ? { callback } : {}),
        subscriptions: subscriptionsFor(route.name, callback && route.callback?.events, this.#opts.webhooks),
        ...(parts.context === undefined ? {} : { context: parts.context }),
        ...(route.start === 'manual' ? { deferred: true } : {}),
      }
      if (!idempotent) {
        return { op: await engine.submit(route.name, request), headers: { [KEY_RECOMMENDED_HEADER]: 'true' } }
      }
      const { op, replayed } = await engine.submitIdempotent(route.name, request, idempotent)
      return { op, headers: replayed ? { 'idempotent-replayed': 'true' } : {} }
    })
  }

  /**
   * The route's callback for this request, its URL checked against the SSRF rules before anything
   * is stored (what it resolves to is checked again when connecting); none when the request gave no URL.
   */
  #callback(route: ResolvedAsyncRoute, parts: SubmitParts) {
    if (!route.callback) return undefined
    const callback = callbackFor(route.callback, parts)
    if (!callback) return undefined
    const check = checkTarget(callback.url, this.#opts.webhooks!.policy)
    if (!check.ok) throw invalidCallback(`URL is refused (${check.reason}): ${check.message}`)
    return { ...callback, url: check.url.href }
  }
}
