import { randomFillSync } from 'node:crypto'

// Random bytes fetched in batches: one system call per 256 ids rather than one per id.
const POOL = new Uint8Array(16 * 256)
let offset = POOL.length

const HEX = Array.from({ length: 256 }, (_, byte) => byte.toString(16).padStart(2, '0'))

/**
 * A UUIDv7 (RFC 9562) with 74 fresh random bits: the 48-bit Unix time in milliseconds, then
 * nothing but random bits besides the version and variant. Ids sort by the millisecond they were
 * made in. No counter, unlike uuid's `v7()` (whose ids made in the same millisecond differ in a
 * counter and about 42 random bits): an id is a capability where a route lets others read it, so
 * it must not be guessable from another made just before it.
 */
export function operationId(now: number = Date.now()): string {
  if (offset === POOL.length) {
    randomFillSync(POOL)
    offset = 0
  }
  const bytes = POOL.subarray(offset, offset + 16)
  offset += 16
  // 48 bits of milliseconds, big-endian (exact in a double until the year 10889).
  const high = Math.floor(now / 2 ** 16)
  bytes[0] = (high >>> 24) & 0xff
  bytes[1] = (high >>> 16) & 0xff
  bytes[2] = (high >>> 8) & 0xff
  bytes[3] = high & 0xff
  bytes[4] = (now >>> 8) & 0xff
  bytes[5] = now & 0xff
  bytes[6] = 0x70 | (bytes[6]! & 0x0f) // version 7, then 12 random bits (rand_a)
  bytes[8] = 0x80 | (bytes[8]! & 0x3f) // variant 10, then 62 random bits (rand_b)
  let id = ''
  for (let i = 0; i < 16; i++) {
    id += HEX[bytes[i]!]!
    if (i === 3 || i === 5 || i === 7 || i === 9) id += '-'
  }
  return id
}
