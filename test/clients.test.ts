import { existsSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import { apiKeyAuth, longrun, type LongrunPluginOptions } from 'longrun/fastify'
import { memoryStore } from 'longrun/memory'
import { chromium } from 'playwright-core'
import { afterEach, describe, expect, it } from 'vitest'
import { azurePoller } from '../examples/azure/poller.js'
import { Client, expectJson, expectProblem, listen, rawRequest, sortedList, type Json } from './helpers/http.js'
import { until } from './helpers/until.js'

// Clients that nobody here wrote, over real sockets: Azure's poller (@azure/core-lro), a cache-minded
// client's conditional requests, and a browser on another origin (CORS). docs/protocol.md, "Using
// longrun from standard clients".

interface Job {
  outcome: 'succeed' | 'fail' | 'hang'
  steps?: number
}

interface Harness {
  app: FastifyInstance
  base: string
  client: Client
  /** Every request's method and path, as the server received them, with when. */
  seen: { method: string; path: string; at: number }[]
}

const harnesses: Harness[] = []
afterEach(async () => {
  for (const harness of harnesses.splice(0)) await harness.app.close()
})

const KEYS = { 'key-a': { id: 'alice' } }
const ALICE = { 'x-api-key': 'key-a' }

async function start(options: Partial<LongrunPluginOptions> = {}): Promise<Harness> {
  const app = Fastify({ forceCloseConnections: true })
  const seen: Harness['seen'] = []
  app.addHook('onRequest', async (request, reply) => {
    seen.push({ method: request.method, path: request.url, at: Date.now() })
    // What an app's own CORS or content negotiation sets: longrun must add to it, not replace it.
    reply.header('vary', 'Origin')
  })
  await app.register(longrun, { store: memoryStore(), poll: 10, retryAfter: '1s', ...options })
  app.longrun.route({
    url: '/jobs',
    name: 'job',
    async handler(op) {
      const job = op.input as Job
      if (job.outcome === 'hang') await sleep(60_000, undefined, { signal: op.signal })
      for (let step = 1; step <= (job.steps ?? 0); step++) {
        await op.progress((100 * step) / (job.steps! + 1), `Step ${step}`)
        await sleep(400, undefined, { signal: op.signal })
      }
      if (job.outcome === 'fail') throw Object.assign(new Error('The disk is full'), { code: 'ENOSPC' })
      return { steps: job.steps ?? 0 }
    },
  })
  const base = await listen(app)
  const harness = { app, base, client: new Client(base), seen }
  harnesses.push(harness)
  return harness
}

describe("Azure's poller (@azure/core-lro createHttpPoller), unmodified", () => {
  it('resolves with the result of a succeeded operation, polling as Retry-After says', async () => {
    const h = await start()
    // Azure's own default interval, much longer than Retry-After: only honouring the header ends in time.
    const poller = azurePoller<{ steps: number }>(
      h.base,
      '/jobs',
      { outcome: 'succeed', steps: 3 },
      { intervalInMs: 60_000 },
    )
    expect(await poller.pollUntilDone()).toEqual({ steps: 3 })
    expect(poller.operationState?.status).toBe('succeeded')

    const [submit, ...rest] = h.seen
    expect(submit).toMatchObject({ method: 'POST', path: '/jobs' })
    const id = rest[0]!.path.split('/')[2]!
    const polls = rest.filter((r) => r.path === `/operations/${id}`)
    expect(polls.length).toBeGreaterThanOrEqual(2)
    for (let i = 1; i < polls.length; i++) {
      const gap = polls[i]!.at - polls[i - 1]!.at
      expect(gap).toBeGreaterThanOrEqual(950)
      expect(gap).toBeLessThan(30_000)
    }
    // The result comes from resourceLocation, not from the status again.
    expect(rest.at(-1)).toMatchObject({ method: 'GET', path: `/operations/${id}/result` })
  })

  it("throws an error carrying longrun's error code and message for a failed operation", async () => {
    const h = await start()
    const poller = azurePoller(h.base, '/jobs', { outcome: 'fail', steps: 1 })
    const error = await poller.pollUntilDone().then(
      () => undefined,
      (err: Error) => err,
    )
    expect(error?.message).toBe('The long-running operation has failed. ENOSPC. The disk is full')
    expect(poller.operationState?.status).toBe('failed')
  })

  it('ends canceled for a canceled operation', async () => {
    const h = await start()
    let location = ''
    const poller = azurePoller(
      h.base,
      '/jobs',
      { outcome: 'hang' },
      { withOperationLocation: (url) => (location = url) },
    )
    await poller.submitted()
    expectJson(await h.client.post(`${location}/cancel`), 200)
    await expect(poller.pollUntilDone()).rejects.toThrow('Operation was canceled')
    expect(poller.operationState?.status).toBe('canceled')
  })

  it('reads Operation-Location on the 202, and status, resourceLocation and error.message on the status', async () => {
    const h = await start()
    const accepted = await h.client.post('/jobs', { outcome: 'succeed' })
    expect(accepted.status).toBe(202)
    expect(accepted.headers.get('operation-location')).toBe(accepted.headers.get('location'))
    expect(accepted.body).toMatchObject({ state: 'queued', status: 'NotStarted' })
    const done = await h.client.waitForState(accepted.body.id, 'succeeded')
    expect(done).toMatchObject({ status: 'Succeeded', resourceLocation: `/operations/${done.id}/result` })

    const failed = await h.client.post('/jobs', { outcome: 'fail' })
    const error = (await h.client.waitForState(failed.body.id, 'failed')).error
    expect(error).toMatchObject({ code: 'ENOSPC', detail: 'The disk is full', message: 'The disk is full' })
    expect((await h.client.waitForState(failed.body.id, 'failed')).status).toBe('Failed')
  })
})

describe('cheap conditional polling', () => {
  const etagOf = (res: { headers: Headers }) => res.headers.get('etag')!

  it('gives status answers a strong ETag, Last-Modified and owner-scoped caching, and 304 on a match', async () => {
    const h = await start({ authenticate: apiKeyAuth({ keys: KEYS }) })
    const accepted = await h.client.post('/jobs', { outcome: 'succeed', steps: 2 }, ALICE)
    const path = accepted.headers.get('location')!
    const running = await until(async () => {
      const res = await h.client.get(path, ALICE)
      return res.body.state === 'running' ? res : undefined
    })
    const etag = etagOf(running)
    expect(etag).toMatch(/^"[A-Za-z0-9_-]+"$/)
    expect(new Date(running.headers.get('last-modified')!).getTime()).toBeGreaterThan(0)
    expect(running.headers.get('cache-control')).toBe('private, no-cache')
    expect(sortedList(running.headers.get('vary')!)).toBe('Origin, Prefer, x-api-key')

    const same = await rawRequest(h.base, 'GET', path, { ...ALICE, 'if-none-match': etag })
    if (same.status === 304) {
      expect(same.body).toBe('')
      expect(same.headers.etag).toBe(etag)
      expect(same.headers['retry-after']).toBe('1')
      expect(same.headers['content-type']).toBeUndefined()
    } else {
      // Progress moved between the two requests: a new representation, a new tag.
      expect(same.headers.etag).not.toBe(etag)
    }

    const final = await until(async () => {
      const res = await h.client.get(path, ALICE)
      return res.body.state === 'succeeded' ? res : undefined
    })
    expect(etagOf(final)).not.toBe(etag)
    expect(final.headers.get('retry-after')).toBeNull()
    const unchanged = await rawRequest(h.base, 'GET', path, { ...ALICE, 'if-none-match': etagOf(final) })
    expect([unchanged.status, unchanged.body, unchanged.headers['retry-after']]).toEqual([304, '', undefined])

    const head = await rawRequest(h.base, 'HEAD', path, ALICE)
    expect([head.status, head.body, head.headers.etag]).toEqual([200, '', etagOf(final)])
    const headMatch = await rawRequest(h.base, 'HEAD', path, { ...ALICE, 'if-none-match': etagOf(final) })
    expect(headMatch.status).toBe(304)
  })

  it('answers HEAD like GET everywhere, opening no stream and holding no slot', async () => {
    const h = await start({ maxStreamsPerCaller: 1 })
    const accepted = await h.client.post('/jobs', { outcome: 'hang' })
    const path = accepted.headers.get('location')!
    for (const url of [`${path}/events`, '/operations/events', `${path}/events`]) {
      const res = await rawRequest(h.base, 'HEAD', url)
      expect([url, res.status, res.headers['content-type'], res.body]).toEqual([
        url,
        200,
        'text/event-stream; charset=utf-8',
        '',
      ])
    }
    const missing = await rawRequest(h.base, 'HEAD', `/operations/${'L'.repeat(150)}`)
    expect([missing.status, missing.headers['content-type']]).toEqual([404, 'application/problem+json; charset=utf-8'])
    for (const url of [path, `${path}/result`, '/operations', '/operations/stats']) {
      const [get, head] = [await rawRequest(h.base, 'GET', url), await rawRequest(h.base, 'HEAD', url)]
      expect([url, head.status, head.body, head.headers['content-type']]).toEqual([
        url,
        get.status,
        '',
        get.headers['content-type'],
      ])
    }
  })

  it('sends Retry-After (integer seconds) with a 304 while the operation is not done', async () => {
    const h = await start({ retryAfter: '1500ms' })
    const accepted = await h.client.post('/jobs', { outcome: 'hang' })
    const path = accepted.headers.get('location')!
    expect(accepted.headers.get('retry-after')).toBe('2')
    await h.client.waitForState(accepted.body.id, 'running')
    const status = await h.client.get(path)
    const match = await rawRequest(h.base, 'GET', path, { 'if-none-match': etagOf(status) })
    expect([match.status, match.headers['retry-after'], match.body]).toEqual([304, '2', ''])
    expect(sortedList(match.headers.vary)).toBe('Origin, Prefer')
  })

  it.each([
    ['*', 304],
    ['"other", {etag}', 304],
    ['W/{etag}', 304],
    ['"a", W/"b",{etag}', 304],
    ['"other"', 200],
    ['"other", W/"more"', 200],
    ['garbage', 200],
    ['"unterminated', 200],
    ['W/', 200],
    ['{etag} garbage', 200],
    [',,,', 200],
    ['"' + 'x'.repeat(6000) + '"', 200],
  ])('answers If-None-Match: %.40s with %s', async (header, status) => {
    const h = await start()
    const accepted = await h.client.post('/jobs', { outcome: 'succeed' })
    const path = accepted.headers.get('location')!
    await h.client.waitForState(accepted.body.id, 'succeeded')
    for (const url of [path, `${path}/result`]) {
      const etag = etagOf(await h.client.get(url))
      const res = await rawRequest(h.base, 'GET', url, { 'if-none-match': header.replace('{etag}', etag) })
      expect([url, res.status]).toEqual([url, status])
      expect(res.headers.etag).toBe(etag)
      if (status === 200) expect(res.body).not.toBe('')
    }
  })

  it('answers a conditional request for an unknown id, or a result not there yet, with its problem', async () => {
    const h = await start()
    for (const header of ['*', '"x"', 'garbage']) {
      const missing = await h.client.get('/operations/no-such-id', { 'if-none-match': header })
      expectProblem(missing, 404, 'operation-not-found')
    }
    const accepted = await h.client.post('/jobs', { outcome: 'hang' })
    const early = await h.client.get(`${accepted.headers.get('location')}/result`, { 'if-none-match': '*' })
    expectProblem(early, 409, 'operation-not-done')
  })

  it("adds to the app's Vary on results, errors, lists and stats, and validates them too", async () => {
    const h = await start({ authenticate: apiKeyAuth({ keys: KEYS }) })
    const ok = await h.client.post('/jobs', { outcome: 'succeed' }, ALICE)
    const bad = await h.client.post('/jobs', { outcome: 'fail' }, ALICE)
    await until(async () => (await h.client.get(`/operations/${bad.body.id}`, ALICE)).body.state === 'failed')
    await until(async () => (await h.client.get(`/operations/${ok.body.id}`, ALICE)).body.state === 'succeeded')
    const cases: [string, string][] = [
      [`/operations/${ok.body.id}/result`, 'Accept, Origin, x-api-key'],
      [`/operations/${bad.body.id}/error`, 'Origin, x-api-key'],
      ['/operations', 'Origin, x-api-key'],
      ['/operations/stats', 'Origin, x-api-key'],
    ]
    for (const [url, vary] of cases) {
      const res = await h.client.get(url, ALICE)
      expect([url, res.status, sortedList(res.headers.get('vary')!)]).toEqual([url, 200, vary])
      expect(res.headers.get('cache-control')).toBe('private, no-cache')
      const again = await rawRequest(h.base, 'GET', url, { ...ALICE, 'if-none-match': etagOf(res) })
      expect([url, again.status]).toEqual([url, 304])
    }
    // Another caller's list is another representation.
    const other = await start({ authenticate: apiKeyAuth({ keys: { 'key-b': { id: 'bob' } } }) })
    expect(etagOf(await other.client.get('/operations', { 'x-api-key': 'key-b' }))).not.toBe(
      etagOf(await h.client.get('/operations', ALICE)),
    )
  })
})

describe('CORS for browsers on another origin', () => {
  const ORIGIN = 'http://app.example'
  const preflight = (h: Harness, path: string, method: string, origin = ORIGIN) =>
    rawRequest(h.base, 'OPTIONS', path, {
      origin,
      'access-control-request-method': method,
      'access-control-request-headers': 'x-api-key, content-type, if-none-match, idempotency-key, last-event-id',
    })

  const URLS: [string, string][] = [
    ['/operations', 'GET, HEAD'],
    ['/operations/stats', 'DELETE, GET, HEAD'],
    ['/operations/events', 'DELETE, GET, HEAD'],
    ['/operations/retry', 'DELETE, GET, HEAD, POST'],
    ['/operations/some-id', 'DELETE, GET, HEAD'],
    ['/operations/some-id/result', 'GET, HEAD'],
    ['/operations/some-id/error', 'GET, HEAD'],
    ['/operations/some-id/events', 'GET, HEAD'],
    ['/operations/some-id/wait', 'GET, HEAD'],
    ['/operations/some-id/cancel', 'POST'],
    ['/operations/some-id/retry', 'POST'],
    [`/operations/${'L'.repeat(150)}/cancel`, 'POST'],
    ['/jobs', 'POST'],
  ]

  it.each(URLS)('answers a preflight on %s with the methods it serves', async (path, methods) => {
    const h = await start({ cors: { origin: [ORIGIN] }, authenticate: apiKeyAuth({ keys: KEYS }) })
    for (const method of methods.split(', ')) {
      const res = await preflight(h, path, method)
      expect([path, method, res.status]).toEqual([path, method, 204])
      expect(res.headers['access-control-allow-origin']).toBe(ORIGIN)
      expect(sortedList(res.headers['access-control-allow-methods'])).toBe(methods)
      expect(res.headers['access-control-allow-headers']).toContain('x-api-key')
      expect(res.headers['access-control-allow-headers']).toContain('last-event-id')
      expect(sortedList(res.headers.allow)).toBe(sortedList(`${methods}, OPTIONS`))
    }
  })

  it('answers neighbouring preflights correctly or with a 4xx problem, never 500', async () => {
    const h = await start({ cors: true })
    // A method the URL does not serve, or that does not exist: the browser sees it is not allowed.
    for (const method of ['PUT', 'PURGE', 'NOT A METHOD']) {
      const res = await preflight(h, '/operations/some-id/result', method)
      expect([method, res.status]).toEqual([method, 204])
      expect(sortedList(res.headers['access-control-allow-methods'])).toBe('GET, HEAD')
    }
    // Not a URL of longrun's: a problem, and no CORS grant.
    for (const path of ['/operations/some-id/nope', '/operationsx', '/jobs/more', '/jobsx']) {
      const res = await preflight(h, path, 'GET')
      expect([path, res.status, res.headers['access-control-allow-origin']]).toEqual([path, 404, undefined])
      // Under the operations API, longrun's problem; elsewhere, the app's own not-found answer.
      if (path.startsWith('/operations/')) expect(res.headers['content-type']).toMatch(/^application\/problem\+json/)
    }
    // An origin not allowed gets no grant; a plain OPTIONS gets Allow.
    const strict = await start({ cors: { origin: [ORIGIN] } })
    const foreign = await preflight(strict, '/operations/x', 'GET', 'http://evil.example')
    expect(foreign.status).toBeLessThan(500)
    expect(foreign.headers['access-control-allow-origin']).toBeUndefined()
    const plain = await rawRequest(strict.base, 'OPTIONS', '/operations/x')
    expect([plain.status, sortedList(plain.headers.allow)]).toEqual([204, 'DELETE, GET, HEAD, OPTIONS'])
  })

  it('exposes the headers clients read, keeps the Vary of the app, and grants even 401s', async () => {
    const h = await start({ cors: { origin: [ORIGIN] }, authenticate: apiKeyAuth({ keys: KEYS }) })
    const accepted = await h.client.post('/jobs', { outcome: 'succeed' }, { ...ALICE, origin: ORIGIN })
    const exposed = sortedList(accepted.headers.get('access-control-expose-headers')!)
    for (const name of ['Location', 'Operation-Location', 'Retry-After', 'ETag', 'Idempotency-Key-Recommended']) {
      expect(exposed).toContain(name)
    }
    expect(accepted.headers.get('access-control-allow-origin')).toBe(ORIGIN)
    const status = await h.client.get(accepted.headers.get('location')!, { ...ALICE, origin: ORIGIN })
    expect(sortedList(status.headers.get('vary')!)).toBe('Origin, Prefer, x-api-key')
    expect(status.headers.get('access-control-expose-headers')).toContain('ETag')
    const refused = await h.client.get('/operations', { origin: ORIGIN })
    expectProblem(refused, 401, 'unauthorized')
    expect(refused.headers.get('access-control-allow-origin')).toBe(ORIGIN)
    expect(refused.headers.get('access-control-expose-headers')).toContain('WWW-Authenticate')
  })

  // .ci/run installs Debian's chromium; elsewhere the test skips without it, but never under CI.
  const browser = existsSync('/usr/bin/chromium') || process.env.CI === 'true' ? '/usr/bin/chromium' : undefined
  it.skipIf(!browser)('serves a cross-origin page in a real browser (chromium)', async () => {
    const page = await servePage()
    const h = await start({ cors: { origin: [page.origin] }, authenticate: apiKeyAuth({ keys: KEYS }) })
    // No background networking: this machine's closed network would refuse it, many connections at a time.
    const chrome = await chromium.launch({
      executablePath: browser!,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    })
    try {
      const tab = await chrome.newPage()
      await tab.goto(page.origin)
      const seen: Json = await tab.evaluate(async (base) => {
        const auth = { 'x-api-key': 'key-a' }
        const submit = await fetch(`${base}/jobs`, {
          method: 'POST',
          headers: { ...auth, 'content-type': 'application/json', 'idempotency-key': 'browser-1' },
          body: JSON.stringify({ outcome: 'succeed' }),
        })
        const location = submit.headers.get('location')!
        let status: Response
        for (;;) {
          status = await fetch(base + location, { headers: auth, cache: 'no-store' } as RequestInit)
          if (((await status.clone().json()) as { done: boolean }).done) break
          await new Promise((resolve) => setTimeout(resolve, 100))
        }
        const etag = status.headers.get('etag')!
        const again = await fetch(base + location, {
          headers: { ...auth, 'if-none-match': etag },
          cache: 'no-store',
        } as RequestInit)
        const result = await fetch(`${base}${location}/result`, { headers: auth })
        const removed = await fetch(base + location, { method: 'DELETE', headers: auth })
        const wrong = await fetch(`${base}${location}/cancel`, { method: 'PUT', headers: auth }).then(
          (res) => res.status,
          () => 'refused',
        )
        return {
          submit: [
            submit.status,
            location,
            submit.headers.get('retry-after'),
            submit.headers.get('operation-location'),
          ],
          etag,
          again: again.status,
          result: [result.status, await result.json()],
          removed: removed.status,
          wrong,
        }
      }, h.base)
      expect(seen.submit).toEqual([202, expect.stringMatching(/^\/operations\//), '1', seen.submit[1]])
      expect(seen.etag).toMatch(/^"/)
      expect(seen.again).toBe(304)
      expect(seen.result).toEqual([200, { steps: 0 }])
      expect(seen.removed).toBe(204)
      // PUT is not allowed on that URL: the preflight says so, and the browser refuses to send it.
      expect(seen.wrong).toBe('refused')
      const preflights = h.seen.filter((r) => r.method === 'OPTIONS').map((r) => r.path.replace(/[^/]+-[^/]+/, ':id'))
      expect(new Set(preflights)).toEqual(
        new Set(['/jobs', '/operations/:id', '/operations/:id/result', '/operations/:id/cancel']),
      )
    } finally {
      await chrome.close()
      await page.close()
    }
  })
})

/** An empty page on an origin of its own, for the browser to run its fetches from. */
async function servePage(): Promise<{ origin: string; close: () => Promise<void> }> {
  const server: Server = createServer((_req, res) =>
    res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><title>app</title>'),
  )
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  // Another host name than the API's 127.0.0.1: another origin, as a browser sees it.
  return {
    origin: `http://localhost:${port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  }
}
