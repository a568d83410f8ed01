import { createHash } from 'node:crypto'

/**
 * Every answer of the operations API depends on who asks: shared caches must not keep it, and a
 * private one must ask again each time, which an `If-None-Match` makes cheap (docs/protocol.md).
 */
export const OWNER_SCOPED = 'private, no-cache'

/**
 * A strong entity tag for a representation: a hash of its media type and its exact bytes, so that
 * it changes whenever anything shown changes (state, progress, history, the result).
 */
export function entityTag(type: string, body: string): string {
  return `"${createHash('sha256').update(type).update('\n').update(body).digest('base64url').slice(0, 27)}"`
}

// An entity-tag of RFC 9110 §8.8.3: an optional weak prefix, then opaque characters in quotes.
const ENTITY_TAG = /^(?:W\/)?("[\x21\x23-\x7e\x80-\xff]*")$/

/**
 * Whether `If-None-Match` matches `etag` (RFC 9110 §13.1.2): `*`, or a list holding it, compared
 * weakly as the RFC asks (`W/"x"` matches `"x"`). A value that is not a list of entity tags
 * matches nothing, so that a malformed header costs a full answer, never an error.
 */
export function noneMatch(header: string | string[] | undefined, etag: string): boolean {
  if (header === undefined) return false
  const value = Array.isArray(header) ? header.join(',') : header
  if (value.trim() === '*') return true
  const tags: string[] = []
  for (const member of value.split(',')) {
    const item = member.trim()
    if (item === '') continue
    const match = ENTITY_TAG.exec(item)
    if (!match) return false
    tags.push(match[1]!)
  }
  return tags.includes(etag)
}

/** `Vary` with `names` added to what it already lists, each name once (case-insensitively). */
export function mergeVary(current: string | undefined, ...names: string[]): string {
  const listed = (current ?? '')
    .split(',')
    .map((name) => name.trim())
    .filter(Boolean)
  if (listed.includes('*')) return '*'
  for (const name of names) {
    if (!listed.some((seen) => seen.toLowerCase() === name.toLowerCase())) listed.push(name)
  }
  return listed.join(', ')
}

/** `Last-Modified`: an HTTP date, which has whole seconds. */
export const httpDate = (ms: number) => new Date(ms).toUTCString()
