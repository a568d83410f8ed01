import { join } from 'node:path'
import Fastify, { type FastifyInstance } from 'fastify'
import { longrun, sessionAuth, type SessionAuthOptions } from 'longrun/fastify'
import { sqliteStore } from 'longrun/sqlite'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Client, expectJson, expectProblem, listen, tempDir, type HttpResponse } from './helpers/http.js'

// Session keys from a cookie (`sessionAuth({ cookie: 'sid' })`), over a real socket and a SQLite
// file: malformed percent-encoding answers 401, never 500, and every neighbour of it answers as the
// session (or the address) it stands for.

interface Harness {
  app: FastifyInstance
  client: Client
  /** The owner an operation submitted with `headers` gets: the caller's principal. */
  ownerOf(headers: Record<string, string>): Promise<string>
  close(): Promise<void>
}

async function start(options: SessionAuthOptions): Promise<Harness> {
  const dir = tempDir('longrun-cookies-')
  const app = Fastify()
  await app.register(longrun, {
    store: sqliteStore({ path: join(dir.path, 'ops.db') }),
    authenticate: sessionAuth(options),
    // Its cases send refused cookies on purpose, more than the default limit allows one address.
    authFailureLimit: false,
    poll: 20,
  })
  app.longrun.route({ url: '/jobs/echo', name: 'echo', handler: (op) => ({ user: op.user?.id ?? null }) })
  const client = new Client(await listen(app))
  return {
    app,
    client,
    async ownerOf(headers) {
      const op = expectJson(await client.request('POST', '/jobs/echo', { json: {}, headers }), 202)
      expect(typeof op.owner).toBe('string')
      return op.owner
    },
    async close() {
      await app.close()
      dir.remove()
    },
  }
}

/** Session cookie values that are not valid percent-encoding (decodeURIComponent throws on each). */
const MALFORMED = [
  '%E0%A4%A', // a truncated UTF-8 sequence: the example
  '%',
  '%zz',
  'abc%',
  '%C3%28', // a lead byte followed by no continuation byte
  '%ED%A0%80', // an encoded UTF-16 surrogate
  '%FF',
]

function expectRefusedCookie(res: HttpResponse): void {
  expectProblem(res, 401, 'unauthorized')
  expect(res.headers.get('www-authenticate')).toBe('Session cookie="sid"')
  expect(res.body.detail).toContain('sid')
}

describe('sessionAuth with a cookie (SQLite, over HTTP)', () => {
  let h: Harness
  beforeAll(async () => {
    h = await start({ cookie: 'sid' })
  })
  afterAll(() => h.close())

  it.each(MALFORMED)('answers sid=%s with 401 on every route and stores nothing', async (value) => {
    const before = (await h.app.longrun.engine.stats()).total
    const existing = expectJson(await h.client.post('/jobs/echo', {}), 202)
    const headers = { cookie: `theme=dark; sid=${value}; lang=en` }
    for (const [method, path, json] of [
      ['GET', '/operations', undefined],
      ['GET', '/operations/stats', undefined],
      ['GET', `/operations/${existing.id}`, undefined],
      ['GET', `/operations/${existing.id}/result`, undefined],
      ['POST', `/operations/${existing.id}/cancel`, undefined],
      ['DELETE', `/operations/${existing.id}`, undefined],
      ['POST', '/operations/retry', {}],
      ['POST', '/jobs/echo', {}],
    ] as const) {
      expectRefusedCookie(await h.client.request(method, path, { headers, ...(json ? { json } : {}) }))
    }
    // Only the operation this test submitted without a cookie was stored; it is still there.
    expect((await h.app.longrun.engine.stats()).total).toBe(before + 1)
    expect((await h.client.waitForState(existing.id, 'succeeded')).id).toBe(existing.id)
  })

  it('percent-decodes the cookie once: the session is the same as the decoded key in the header', async () => {
    for (const [cookie, key] of [
      ['sid=plain', 'plain'],
      ['sid=alice%20key', 'alice key'],
      ['sid=%2541', '%41'],
      ['sid=  padded  ', 'padded'],
      ['sid="quoted"', '"quoted"'],
    ]) {
      const fromCookie = await h.ownerOf({ cookie: cookie! })
      expect(fromCookie, cookie).toMatch(/^session:[A-Za-z0-9_-]{22}$/)
      expect(fromCookie, cookie).toBe(await h.ownerOf({ 'x-session-key': key! }))
    }
    expect(await h.ownerOf({ cookie: 'sid=a' })).not.toBe(await h.ownerOf({ cookie: 'sid=b' }))
  })

  it('reads only the session cookie: another malformed cookie never matters', async () => {
    const good = await h.ownerOf({ 'x-session-key': 'good' })
    for (const cookie of ['other=%E0%A4%A; sid=good', 'sid=good; other=%', 'a; b=%zz; sid=good', 'sid=good; sid=%E0']) {
      expect(await h.ownerOf({ cookie }), cookie).toBe(good)
    }
    // Sent twice, the first one counts, as browsers send the most specific cookie first.
    expect(await h.ownerOf({ cookie: 'sid=first; sid=second' })).toBe(await h.ownerOf({ 'x-session-key': 'first' }))
    expectRefusedCookie(await h.client.get('/operations', { cookie: 'sid=%E0; sid=good' }))
  })

  it('treats an absent or empty session cookie as none: the caller is its address', async () => {
    const byAddress = await h.ownerOf({})
    expect(byAddress).toMatch(/^ip:[A-Za-z0-9_-]{22}$/)
    for (const cookie of ['sid=', 'sid=   ', 'sid', 'SID=other', 'sids=x', 'theme=dark', ';;;', '=', '=%E0', 'x=%E0']) {
      expect(await h.ownerOf({ cookie }), cookie).toBe(byAddress)
    }
  })

  it('prefers the header: a malformed cookie beside a session header is not read', async () => {
    const header = await h.ownerOf({ 'x-session-key': 'from-header' })
    expect(await h.ownerOf({ 'x-session-key': 'from-header', cookie: 'sid=%E0%A4%A' })).toBe(header)
    // An empty header is no key: the cookie is read, and refused.
    expectRefusedCookie(await h.client.get('/operations', { 'x-session-key': '', cookie: 'sid=%E0%A4%A' }))
  })
})

describe('sessionAuth without a cookie, or without the address fallback', () => {
  const harnesses: Harness[] = []
  afterAll(async () => {
    for (const harness of harnesses) await harness.close()
  })

  it('ignores every cookie when none is configured', async () => {
    const h = await start({})
    harnesses.push(h)
    const byAddress = await h.ownerOf({})
    expect(byAddress).toMatch(/^ip:/)
    expect(await h.ownerOf({ cookie: 'sid=%E0%A4%A' })).toBe(byAddress)
    expect(await h.ownerOf({ cookie: 'sid=plain' })).toBe(byAddress)
  })

  it('refuses a malformed cookie, and no key at all, when there is no address fallback', async () => {
    const h = await start({ cookie: 'sid', fallbackToIp: false })
    harnesses.push(h)
    expectRefusedCookie(await h.client.get('/operations', { cookie: 'sid=%E0%A4%A' }))
    // Without a key there is no principal, and anonymous callers are not served.
    for (const headers of [{}, { cookie: 'sid=' }] as Record<string, string>[]) {
      expectProblem(await h.client.get('/operations', headers), 401, 'unauthorized')
    }
    expect(await h.ownerOf({ cookie: 'sid=alice%20key' })).toBe(await h.ownerOf({ 'x-session-key': 'alice key' }))
  })
})
