import { Webhook } from 'standardwebhooks'
import { invalidOption } from '../../core/errors.js'

/** The Standard Webhooks 1.0 headers of one message. */
export interface SignatureHeaders {
  'webhook-id': string
  'webhook-timestamp': string
  /** One `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` per secret, space-separated. */
  'webhook-signature': string
}

export interface Signer {
  /**
   * The headers for the body `body` (the exact bytes sent) of message `id` sent at `timestamp`
   * (a `Date` or epoch milliseconds; the header carries whole seconds).
   */
  sign(id: string, timestamp: Date | number, body: string | Uint8Array): SignatureHeaders
}

// Standard Webhooks asks for secrets of 24 to 64 random bytes, written `whsec_` + base64.
const MIN_SECRET_BYTES = 24
const MAX_SECRET_BYTES = 64
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/

/**
 * Checks the secrets (each `whsec_` + base64 of 24 to 64 bytes; at least one) and signs with every
 * one of them: during a rotation, list the new secret and the old one, and receivers holding
 * either verify. Throws `invalid-option` for a malformed secret, naming which.
 */
export function webhookSigner(secrets: readonly string[], option = 'secrets'): Signer {
  if (!Array.isArray(secrets) || secrets.length === 0) throw invalidOption(option, 'must list at least one secret')
  const webhooks = secrets.map((secret, i) => parseSecret(secret, `${option}[${i}]`))
  return {
    sign(id, timestamp, body) {
      if (typeof id !== 'string' || !/^[\x21-\x7e]+$/.test(id)) {
        throw new TypeError('A webhook id must be printable ASCII without spaces.')
      }
      const at = timestamp instanceof Date ? timestamp : new Date(timestamp)
      if (Number.isNaN(at.getTime())) throw new TypeError('A webhook timestamp must be a valid date.')
      // `Webhook#sign` takes a string or a Buffer (of which it signs the UTF-8 reading).
      const payload = typeof body === 'string' ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength)
      return {
        'webhook-id': id,
        'webhook-timestamp': String(Math.floor(at.getTime() / 1000)),
        'webhook-signature': webhooks.map((webhook) => webhook.sign(id, at, payload)).join(' '),
      }
    },
  }
}

/** The headers of one message signed with `secrets`; `webhookSigner` checks the secrets once instead. */
export function signatureHeaders(
  id: string,
  timestamp: Date | number,
  body: string | Uint8Array,
  secrets: readonly string[],
): SignatureHeaders {
  return webhookSigner(secrets).sign(id, timestamp, body)
}

function parseSecret(secret: unknown, option: string): Webhook {
  const why = `must be 'whsec_' followed by the base64 of ${MIN_SECRET_BYTES} to ${MAX_SECRET_BYTES} random bytes`
  if (typeof secret !== 'string' || !secret.startsWith('whsec_')) throw invalidOption(option, why)
  const encoded = secret.slice('whsec_'.length)
  if (!BASE64.test(encoded)) throw invalidOption(option, `${why}: not base64`)
  const bytes = Buffer.from(encoded, 'base64').length
  if (bytes < MIN_SECRET_BYTES || bytes > MAX_SECRET_BYTES) throw invalidOption(option, `${why}, got ${bytes} bytes`)
  try {
    return new Webhook(secret)
  } catch (err) {
    throw invalidOption(option, `${why}: ${(err as Error).message}`)
  }
}
