import type { FastifyInstance } from 'fastify'
import { SignJWT } from 'jose'
import { afterEach, describe, expect, it } from 'vitest'
import { buildServer, type ServerOptions } from '../src/cli/server.js'
import { openStore } from '../src/cli/store-url.js'
import { operationId } from '../src/core/ids.js'
import { jwtAuth } from '../src/http/auth.js'

// Identity: ids that cannot be guessed from one another, tokens from the future refused, and
// refused credentials limited per address by default.

/** The 74 bits of a UUIDv7 that are neither time, version nor variant. */
function randomBits(id: string): string {
  const bits = [...id.replace(/-/g, '')].map((hex) => parseInt(hex, 16).toString(2).padStart(4, '0')).join('')
  return bits.slice(52, 64) + bits.slice(66)
}

describe('operation ids', () => {
  it('are UUIDv7 whose 74 random bits are fresh even within one millisecond', () => {
    const now = Date.UTC(2026, 11, 3, 12, 0, 0, 123)
    const ids = Array.from({ length: 200 }, () => operationId(now))
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    expect(new Set(ids).size).toBe(ids.length)
    const bits = ids.map(randomBits)
    expect(bits[0]).toHaveLength(74)
    // Every one of the 74 positions varies across ids of the same millisecond: none is a counter or
    // a constant. (Each position is the same in all 200 with probability 2^-199.)
    for (let position = 0; position < 74; position++) {
      expect(new Set(bits.map((b) => b[position])).size, `bit ${position}`).toBe(2)
    }
    // Two ids of the same millisecond differ in about half of them, as independent random bits do.
    const differing = [...bits[0]!].filter((bit, i) => bit !== bits[1]![i]).length
    expect(differing).toBeGreaterThan(10)
  })

  it('carry their millisecond and sort by it', () => {
    const times = [0, 1, 255, 256, 65_535, 65_536, 2 ** 32 - 1, 2 ** 32, Date.UTC(2026, 0, 1), 2 ** 48 - 1]
    const ids = times.map((t) => operationId(t))
    for (const [i, id] of ids.entries()) expect(parseInt(id.replace(/-/g, '').slice(0, 12), 16)).toBe(times[i])
    expect([...ids].sort()).toEqual(ids)
    const later = Array.from({ length: 50 }, (_, i) => operationId(1_700_000_000_000 + i))
    expect([...later].sort()).toEqual(later)
  })
})

describe('identity over HTTP', () => {
  const SECRET = 'a-test-secret-of-32-characters!!'
  let app: FastifyInstance | undefined
  afterEach(async () => {
    await app?.close()
    app = undefined
  })

  async function start(extra: Partial<ServerOptions> = {}): Promise<string> {
    const store = await openStore('memory')
    app = await buildServer({ store, logLevel: 'silent', authenticate: jwtAuth({ secret: SECRET }), ...extra })
    return app.listen({ port: 0, host: '127.0.0.1' })
  }

  const token = (iat: number, sub = 'alice') =>
    new SignJWT({ sub })
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuedAt(iat)
      .setExpirationTime(iat + 3_600)
      .sign(new TextEncoder().encode(SECRET))

  const get = (base: string, authorization?: string) =>
    fetch(`${base}/operations`, authorization ? { headers: { authorization } } : {})

  it('refuses a token issued beyond the clock tolerance in the future', async () => {
    const base = await start()
    const now = Math.floor(Date.now() / 1000)
    expect((await get(base, `Bearer ${await token(now)}`)).status).toBe(200)
    // Within the default 30 s of clock skew.
    expect((await get(base, `Bearer ${await token(now + 10)}`)).status).toBe(200)
    const future = await get(base, `Bearer ${await token(now + 86_400)}`)
    expect(future.status).toBe(401)
    expect(future.headers.get('www-authenticate')).toContain('invalid_token')
    expect(await future.json()).toMatchObject({ code: 'unauthorized' })
  })

  it('takes the clock tolerance as an option', async () => {
    expect(() => jwtAuth({ secret: SECRET, clockTolerance: -1 })).toThrow(/clockTolerance/)
    const store = await openStore('memory')
    app = await buildServer({ store, logLevel: 'silent', authenticate: jwtAuth({ secret: SECRET, clockTolerance: 0 }) })
    const base = await app.listen({ port: 0, host: '127.0.0.1' })
    const now = Math.floor(Date.now() / 1000)
    expect((await get(base, `Bearer ${await token(now + 10)}`)).status).toBe(401)
  })

  it('answers 429 with Retry-After once an address had 20 credentials refused, right ones too', async () => {
    const base = await start()
    for (let i = 0; i < 20; i++) expect((await get(base, 'Bearer wrong')).status).toBe(401)
    const limited = await get(base, 'Bearer wrong')
    expect(limited.status).toBe(429)
    expect(limited.headers.get('content-type')).toMatch(/^application\/problem\+json/)
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1)
    expect(Number(limited.headers.get('retry-after'))).toBeLessThanOrEqual(60)
    expect(await limited.json()).toMatchObject({ code: 'rate-limited', status: 429 })
    // A guess that hits gets no further: else the limit would not slow guessing.
    expect((await get(base, `Bearer ${await token(Math.floor(Date.now() / 1000))}`)).status).toBe(429)
    // A request without credentials is no guess: it still learns that credentials are needed.
    expect((await get(base)).status).toBe(401)
  })

  it('takes the limit of refused credentials as an option, or none', async () => {
    const base = await start({ authFailureLimit: { max: 2, timeWindow: '300ms' } })
    expect((await get(base, 'Bearer wrong')).status).toBe(401)
    expect((await get(base, 'Bearer wrong')).status).toBe(401)
    expect((await get(base, 'Bearer wrong')).status).toBe(429)
    await new Promise((resolve) => setTimeout(resolve, 400))
    expect((await get(base, 'Bearer wrong')).status).toBe(401)
    await app!.close()

    const unlimited = await start({ authFailureLimit: false })
    for (let i = 0; i < 30; i++) expect((await get(unlimited, 'Bearer wrong')).status).toBe(401)
  })
})
