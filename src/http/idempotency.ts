import { createHash } from 'node:crypto'
import stableStringify from 'safe-stable-stringify'
import { LongrunError } from '../core/errors.js'

/** How a route treats idempotency keys. */
export type IdempotencyMode = 'optional' | 'required'

/** Header telling a client without a key that sending one is recommended. */
export const KEY_RECOMMENDED_HEADER = 'idempotency-key-recommended'

// Visible ASCII and spaces, as the IETF Idempotency-Key draft's string keys; 255 at most.
const KEY = /^[\x20-\x7e]{1,255}$/

const invalidKey = (why: string) => new LongrunError('invalid-idempotency-key', why)

/**
 * The request's idempotency key, from the first of `headers` it carries; `undefined` without one.
 * `valuesOf` gives every value of a header as sent: a header sent twice is refused, which the
 * parsed headers would silently join.
 */
export function idempotencyKeyOf(valuesOf: (name: string) => string[], headers: readonly string[]): string | undefined {
  for (const name of headers) {
    const values = valuesOf(name)
    if (values.length === 0) continue
    if (values.length > 1) throw invalidKey(`Send one ${name} header, not ${values.length}.`)
    const key = values[0]!
    if (!KEY.test(key)) throw invalidKey(`The ${name} header must be 1 to 255 visible ASCII characters.`)
    return key
  }
  return undefined
}

export const idempotencyKeyRequired = (header: string) =>
  new LongrunError(
    'idempotency-key-required',
    `This route requires an ${header} header: a unique key per request, reused only to resend the same request.`,
  )

/**
 * Same method, path and body (keys in any order) give the same fingerprint. The serializer recurses:
 * `body` must be within `JSON_LIMITS` (limits.ts), as the submitter checks before calling this.
 */
export function fingerprint(method: string, path: string, body: unknown): string {
  return createHash('sha256')
    .update(`${method}\n${path}\n${stableStringify(body ?? null)}`)
    .digest('base64url')
}
