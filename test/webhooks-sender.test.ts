import { randomBytes } from 'node:crypto'
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Webhook } from 'standardwebhooks'
import { afterEach, describe, expect, it } from 'vitest'
import { blockedRange, checkTarget, guardedLookup, targetPolicy, type Resolver } from '../src/http/webhooks/address.js'
import { parseRetryAfter, retrySchedule } from '../src/http/webhooks/schedule.js'
import { webhookSender, type SendResult } from '../src/http/webhooks/send.js'
import { webhookSigner } from '../src/http/webhooks/sign.js'

// The webhook sender against real receivers on 127.0.0.1: Standard Webhooks signatures checked
// with the `standardwebhooks` package, retries driven by an injected clock and random source, and
// SSRF refusals proven by a listening server that counts the connections it gets (none).

interface Received {
  method: string
  url: string
  headers: IncomingHttpHeaders
  body: string
}

interface Receiver {
  port: number
  url: string
  requests: Received[]
  /** TCP connections accepted, requests or not. */
  connections: number
  close(): Promise<void>
}

type Handler = (req: IncomingMessage, res: ServerResponse, received: Received) => void

const receivers: Receiver[] = []

afterEach(async () => {
  await Promise.all(receivers.splice(0).map((r) => r.close()))
})

async function receiver(handler: Handler = (_req, res) => res.end()): Promise<Receiver> {
  const requests: Received[] = []
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const received = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString(),
      }
      requests.push(received)
      handler(req, res, received)
    })
  })
  const state = { connections: 0 }
  server.on('connection', () => state.connections++)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  const r: Receiver = {
    port,
    url: `http://127.0.0.1:${port}/hooks`,
    requests,
    get connections() {
      return state.connections
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
  receivers.push(r)
  return r
}

const secret = () => `whsec_${randomBytes(32).toString('base64')}`
const LOCAL = { allow: ['127.0.0.1'] }
const body = JSON.stringify({ type: 'operation.succeeded', data: { id: 'op_1' } })

/** Every name resolves to 127.0.0.1, and the calls are counted. */
function toLoopback(): Resolver & { calls: string[] } {
  const calls: string[] = []
  const resolve = async (hostname: string) => {
    calls.push(hostname)
    return [{ address: '127.0.0.1', family: 4 }]
  }
  return Object.assign(resolve, { calls })
}

function expectFailure(result: SendResult, failure: SendResult['failure']) {
  expect(result.ok).toBe(false)
  expect(result.failure).toBe(failure)
  expect(typeof result.error).toBe('string')
  expect(result.durationMs).toBeGreaterThanOrEqual(0)
}

describe('signing', () => {
  it('signs per Standard Webhooks with every secret, and a receiver verifies with either', async () => {
    const r = await receiver()
    const [current, previous] = [secret(), secret()]
    const signer = webhookSigner([current, previous])
    const send = webhookSender({ policy: LOCAL })
    const id = 'msg_2QX8Yd3m'
    const result = await send({
      url: r.url,
      body,
      headers: { 'x-tenant': 'acme' },
      signature: signer.sign(id, Date.now(), body),
    })
    expect(result).toMatchObject({ ok: true, status: 200 })
    expect(result.failure).toBeUndefined()

    const [got] = r.requests
    expect(got).toBeDefined()
    expect(got!.method).toBe('POST')
    expect(got!.url).toBe('/hooks')
    expect(got!.body).toBe(body)
    expect(got!.headers['content-type']).toBe('application/json')
    expect(got!.headers['x-tenant']).toBe('acme')
    expect(got!.headers['user-agent']).toMatch(/^longrun-webhooks\/\d+\.\d+\.\d+/)
    expect(got!.headers['webhook-id']).toBe(id)
    expect(got!.headers['webhook-timestamp']).toMatch(/^\d{10}$/)
    const signatures = String(got!.headers['webhook-signature']).split(' ')
    expect(signatures).toHaveLength(2)
    for (const s of signatures) expect(s).toMatch(/^v1,[A-Za-z0-9+/]+=*$/)

    const headers = got!.headers as Record<string, string>
    for (const key of [current, previous]) {
      expect(new Webhook(key).verify(got!.body, headers)).toEqual(JSON.parse(body))
    }
    expect(() => new Webhook(secret()).verify(got!.body, headers)).toThrow(/No matching signature/)
    expect(() => new Webhook(current).verify(`${got!.body} `, headers)).toThrow(/No matching signature/)
  })

  it('sends PUT with the given content type, and signs bytes as sent', async () => {
    const r = await receiver((_req, res) => res.writeHead(204).end())
    const key = secret()
    const bytes = new TextEncoder().encode('{"n":1,"s":"é"}')
    const result = await webhookSender({ policy: LOCAL })({
      url: r.url,
      method: 'PUT',
      body: bytes,
      contentType: 'application/cloudevents+json',
      signature: webhookSigner([key]).sign('msg_1', new Date(), bytes),
    })
    expect(result).toMatchObject({ ok: true, status: 204 })
    const [got] = r.requests
    expect(got!.method).toBe('PUT')
    expect(got!.headers['content-type']).toBe('application/cloudevents+json')
    expect(new Webhook(key).verify(got!.body, got!.headers as Record<string, string>)).toEqual({ n: 1, s: 'é' })
  })

  it('refuses malformed secrets when configured, naming which', () => {
    const good = secret()
    for (const bad of [
      [],
      ['not-a-secret'],
      ['whsec_'],
      ['whsec_!!!!'],
      [`whsec_${randomBytes(8).toString('base64')}`], // too short
      [`whsec_${randomBytes(80).toString('base64')}`], // too long
    ]) {
      expect(() => webhookSigner(bad)).toThrow(expect.objectContaining({ code: 'invalid-option' }))
    }
    expect(() => webhookSigner([good, 'whsec_nope'])).toThrow(/secrets\[1\]/)
  })

  it('refuses custom headers that would replace the ones it sets, sending nothing', async () => {
    const r = await receiver()
    const send = webhookSender({ policy: LOCAL })
    for (const name of ['host', 'content-length', 'webhook-signature', 'User-Agent', 'transfer-encoding']) {
      expectFailure(await send({ url: r.url, body, headers: { [name]: 'x' } }), 'invalid-request')
    }
    expectFailure(await send({ url: r.url, body, headers: { 'x-bad': 'a\r\nb' } }), 'invalid-request')
    expect(r.connections).toBe(0)
  })
})

describe('retries', () => {
  const NOW = Date.parse('2026-03-01T12:00:00Z')

  it('retries a 500 on schedule, with jitter, until a 200', async () => {
    let calls = 0
    const r = await receiver((_req, res) => res.writeHead(++calls === 1 ? 500 : 200).end())
    const schedule = retrySchedule({ random: () => 0.75 }) // factor 1 + 0.2 * 0.5 = 1.1
    const send = webhookSender({ policy: LOCAL })
    let now = NOW

    const first = await send({ url: r.url, body })
    expect(first).toMatchObject({ ok: false, status: 500, failure: 'status' })
    const next = schedule.nextAttempt(1, first, now)
    expect(next).toEqual({ action: 'retry', retryAt: now + 5_500, delayMs: 5_500 })
    if (next.action !== 'retry') return
    now = next.retryAt

    const second = await send({ url: r.url, body })
    expect(second).toMatchObject({ ok: true, status: 200 })
    expect(schedule.nextAttempt(2, second, now)).toEqual({ action: 'done' })
    expect(r.requests).toHaveLength(2)
  })

  it('follows the default schedule of about a day within the jitter bounds, then gives up', () => {
    const draws = [0, 0.5, 0.999_999]
    let n = 0
    const schedule = retrySchedule({ random: () => draws[n++ % draws.length]! })
    const base = [5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000]
    expect(schedule.delaysMs).toEqual(base)
    expect(schedule.maxAttempts).toBe(8)
    const total = base.reduce((a, b) => a + b)
    expect(total).toBeGreaterThan(86_400_000)
    expect(total).toBeLessThan(2 * 86_400_000)

    let now = NOW
    const failed = { ok: false, status: 500 }
    for (const [i, ms] of base.entries()) {
      const next = schedule.nextAttempt(i + 1, failed, now)
      if (next.action !== 'retry') throw new Error(`attempt ${i + 1}: ${next.action}`)
      expect(next.delayMs).toBe(Math.round(ms * (1 + 0.2 * (2 * draws[i % 3]! - 1))))
      expect(next.delayMs).toBeGreaterThanOrEqual(ms * 0.8)
      expect(next.delayMs).toBeLessThanOrEqual(ms * 1.2)
      expect(next.retryAt).toBe(now + next.delayMs)
      now = next.retryAt
    }
    expect(schedule.nextAttempt(8, failed, now)).toEqual({ action: 'give-up', reason: 'exhausted' })
    // Network failures are retried too; refused targets are not.
    expect(schedule.nextAttempt(1, { ok: false, failure: 'timeout' }, now).action).toBe('retry')
    expect(schedule.nextAttempt(1, { ok: false, failure: 'refused' }, now)).toEqual({
      action: 'give-up',
      reason: 'refused',
    })
  })

  it('takes a schedule of durations, and no jitter when asked', () => {
    const schedule = retrySchedule({ delays: ['1s', '2 minutes', 3_000], jitter: 0 })
    expect(schedule.delaysMs).toEqual([1_000, 120_000, 3_000])
    expect(schedule.nextAttempt(2, { ok: false, status: 502 }, NOW)).toEqual({
      action: 'retry',
      retryAt: NOW + 120_000,
      delayMs: 120_000,
    })
    expect(schedule.nextAttempt(4, { ok: false, status: 502 }, NOW)).toEqual({ action: 'give-up', reason: 'exhausted' })
    expect(retrySchedule({ delays: [] }).nextAttempt(1, { ok: false }, NOW)).toEqual({
      action: 'give-up',
      reason: 'exhausted',
    })
    for (const bad of [{ delays: ['soon'] }, { jitter: 1 }, { jitter: -0.1 }, { maxRetryAfter: 'x' }]) {
      expect(() => retrySchedule(bad as never)).toThrow(expect.objectContaining({ code: 'invalid-option' }))
    }
  })

  it('gives up on 410 Gone, saying so', async () => {
    const r = await receiver((_req, res) => res.writeHead(410).end())
    const result = await webhookSender({ policy: LOCAL })({ url: r.url, body })
    expect(result).toMatchObject({ ok: false, status: 410, failure: 'status' })
    expect(retrySchedule().nextAttempt(1, result, NOW)).toEqual({ action: 'give-up', reason: 'gone' })
  })

  it('honours Retry-After in seconds and as a date on 429 and 503, up to the cap', async () => {
    const inAnHour = new Date(NOW + 3_600_000).toUTCString()
    const answers: [number, string][] = [
      [429, '120'],
      [503, inAnHour],
      [429, String(3 * 86_400)],
      [500, '120'],
    ]
    let calls = 0
    const r = await receiver((_req, res) => {
      const [status, retryAfter] = answers[calls++]!
      res.writeHead(status, { 'retry-after': retryAfter }).end()
    })
    const send = webhookSender({ policy: LOCAL })
    const schedule = retrySchedule({ random: () => 0.5 })

    const tooMany = await send({ url: r.url, body })
    expect(tooMany).toMatchObject({ ok: false, status: 429, retryAfter: '120' })
    expect(schedule.nextAttempt(1, tooMany, NOW)).toEqual({ action: 'retry', retryAt: NOW + 120_000, delayMs: 120_000 })

    const unavailable = await send({ url: r.url, body })
    expect(unavailable).toMatchObject({ ok: false, status: 503, retryAfter: inAnHour })
    expect(schedule.nextAttempt(1, unavailable, NOW)).toMatchObject({ retryAt: NOW + 3_600_000 })

    const tooLong = await send({ url: r.url, body })
    expect(schedule.nextAttempt(2, tooLong, NOW)).toMatchObject({ delayMs: 86_400_000 })

    // Only 429 and 503 say when to come back; a 500's Retry-After is not honoured.
    const serverError = await send({ url: r.url, body })
    expect(schedule.nextAttempt(1, serverError, NOW)).toMatchObject({ delayMs: 5_000 })
    // An unreadable Retry-After leaves the schedule's wait.
    expect(schedule.nextAttempt(1, { ok: false, status: 503, retryAfter: 'later' }, NOW)).toMatchObject({
      delayMs: 5_000,
    })
  })

  it('reads Retry-After values', () => {
    expect(parseRetryAfter('0', NOW)).toBe(0)
    expect(parseRetryAfter(' 30 ', NOW)).toBe(30_000)
    expect(parseRetryAfter(new Date(NOW + 90_000).toUTCString(), NOW)).toBe(90_000)
    expect(parseRetryAfter(new Date(NOW - 90_000).toUTCString(), NOW)).toBe(0)
    for (const bad of ['', '-1', '1.5', 'soon', '2026-03-01T12:00:00Z'])
      expect(parseRetryAfter(bad, NOW)).toBeUndefined()
  })
})

describe('timeouts and redirects', () => {
  it('times out on a receiver that accepts and never answers', async () => {
    const r = await receiver(() => {})
    const result = await webhookSender({ policy: LOCAL, timeout: 300 })({ url: r.url, body })
    expectFailure(result, 'timeout')
    expect(result.error).toMatch(/timed out/i)
    expect(result.status).toBeUndefined()
    expect(r.requests).toHaveLength(1)
  })

  it('times out connecting when the host does not resolve in time', async () => {
    const hang: Resolver = () => new Promise(() => {})
    const result = await webhookSender({ connectTimeout: 200, resolve: hang })({
      url: 'http://slow.example/hooks',
      body,
    })
    expectFailure(result, 'connect-timeout')
    expect(result.error).toMatch(/timed out/i)
  })

  it('does not follow redirects: a 3xx is a failed attempt', async () => {
    const elsewhere = await receiver()
    for (const status of [301, 302, 307, 308]) {
      const r = await receiver((_req, res) => res.writeHead(status, { location: elsewhere.url }).end())
      const result = await webhookSender({ policy: LOCAL })({ url: r.url, body })
      expect(result).toMatchObject({ ok: false, status, failure: 'redirect' })
      expect(retrySchedule().nextAttempt(1, result, Date.now()).action).toBe('retry')
    }
    expect(elsewhere.connections).toBe(0)
    expect(elsewhere.requests).toHaveLength(0)
  })

  it('counts only 2xx as success', async () => {
    for (const status of [300, 400, 404, 500]) {
      const r = await receiver((_req, res) => res.writeHead(status).end())
      expect((await webhookSender({ policy: LOCAL })({ url: r.url, body })).ok).toBe(false)
    }
    for (const status of [200, 201, 202, 204, 299]) {
      const r = await receiver((_req, res) => res.writeHead(status).end())
      expect(await webhookSender({ policy: LOCAL })({ url: r.url, body })).toMatchObject({ ok: true, status })
    }
  })

  it('reads at most maxResponseBytes of an answer, then closes the connection', async () => {
    const r = await receiver((_req, res) => {
      res.writeHead(200)
      res.write(Buffer.alloc(256 * 1024)) // and never ends
    })
    const result = await webhookSender({ policy: LOCAL, maxResponseBytes: 1024, timeout: '10s' })({ url: r.url, body })
    expect(result).toMatchObject({ ok: true, status: 200 })
  })

  it('reports a refused connection without throwing', async () => {
    const r = await receiver()
    const { port } = r
    await r.close()
    const result = await webhookSender({ policy: LOCAL })({ url: `http://127.0.0.1:${port}/`, body })
    expectFailure(result, 'network')
    expect(result.error).toMatch(/ECONNREFUSED/)
  })
})

describe('SSRF protection', () => {
  it('classifies addresses by range', () => {
    const blocked: [string, string][] = [
      ['0.0.0.0', 'unspecified'],
      ['127.0.0.1', 'loopback'],
      ['127.255.255.254', 'loopback'],
      ['10.1.2.3', 'private'],
      ['172.16.0.1', 'private'],
      ['172.31.255.255', 'private'],
      ['192.168.0.1', 'private'],
      ['169.254.169.254', 'linkLocal'],
      ['100.64.0.1', 'carrierGradeNat'],
      ['224.0.0.1', 'multicast'],
      ['255.255.255.255', 'broadcast'],
      ['240.0.0.1', 'reserved'],
      ['192.0.2.1', 'reserved'],
      ['::', 'unspecified'],
      ['::1', 'loopback'],
      ['fe80::1', 'linkLocal'],
      ['fc00::1', 'uniqueLocal'],
      ['fd00:ec2::254', 'uniqueLocal'],
      ['ff02::1', 'multicast'],
      ['::ffff:127.0.0.1', 'loopback'],
      ['::ffff:a9fe:a9fe', 'linkLocal'],
      ['::ffff:0:7f00:1', 'rfc6145 loopback'],
      ['::7f00:1', 'ipv4Compatible'],
      ['64:ff9b::a00:1', 'rfc6052 private'],
      ['64:ff9b:1::1', 'rfc6052'],
      ['2002:c0a8:101::1', '6to4 private'],
      ['2001:0:808:808::80ff:fffe', 'teredo loopback'],
      ['2001:db8::1', 'reserved'],
      ['fec0::1', 'deprecatedSiteLocal'],
      ['4000::1', 'unallocated'],
    ]
    for (const [address, range] of blocked) expect([address, blockedRange(address)]).toEqual([address, range])
    for (const address of ['8.8.8.8', '172.32.0.1', '100.128.0.1', '2606:4700:4700::1111', '64:ff9b::808:808']) {
      expect([address, blockedRange(address)]).toEqual([address, undefined])
    }
    expect(blockedRange('127.0.0.1', { allow: ['127.0.0.0/8'] })).toBeUndefined()
    expect(blockedRange('::ffff:127.0.0.1', { allow: ['127.0.0.1'] })).toBeUndefined()
    expect(blockedRange('127.0.0.2', { allow: ['127.0.0.1'] })).toBe('loopback')
  })

  // Each is 127.0.0.1 (or another blocked address) in some disguise, on the port of a listening
  // server that counts connections; none is allow-listed.
  const encodings = (port: number): [string, string][] => [
    [`http://127.0.0.1:${port}/`, 'blocked-address'],
    [`http://2130706433:${port}/`, 'blocked-address'], // decimal
    [`http://0x7f000001:${port}/`, 'blocked-address'], // hex
    [`http://017700000001:${port}/`, 'blocked-address'], // octal
    [`http://0177.0.0.1:${port}/`, 'blocked-address'], // octal, dotted
    [`http://0x7f.0x0.0x0.0x1:${port}/`, 'blocked-address'], // hex, dotted
    [`http://0x7f.1:${port}/`, 'blocked-address'], // two parts, hex
    [`http://127.1:${port}/`, 'blocked-address'], // two parts
    [`http://127.000.000.001:${port}/`, 'blocked-address'], // zero-padded
    [`http://127.0.0.1.:${port}/`, 'blocked-address'], // trailing dot
    [`http://%31%32%37.0.0.1:${port}/`, 'blocked-address'], // percent-encoded
    [`http://①②⑦.0.0.1:${port}/`, 'blocked-address'], // Unicode digits
    [`http://[::ffff:127.0.0.1]:${port}/`, 'blocked-address'], // IPv4-mapped IPv6
    [`http://[0:0:0:0:0:ffff:7f00:1]:${port}/`, 'blocked-address'], // IPv4-mapped, hex
    [`http://[::127.0.0.1]:${port}/`, 'blocked-address'], // IPv4-compatible IPv6
    [`http://[64:ff9b::7f00:1]:${port}/`, 'blocked-address'], // NAT64
    [`http://[2002:7f00:1::]:${port}/`, 'blocked-address'], // 6to4
    [`http://[2001:0:808:808::80ff:fffe]:${port}/`, 'blocked-address'], // Teredo
    [`http://[::1]:${port}/`, 'blocked-address'],
    [`http://0.0.0.0:${port}/`, 'blocked-address'], // reaches this host on Linux
    [`http://0:${port}/`, 'blocked-address'],
    [`http://[::]:${port}/`, 'blocked-address'],
    [`http://169.254.169.254:${port}/latest/meta-data/`, 'blocked-address'], // cloud metadata
    [`http://0xa9fea9fe:${port}/`, 'blocked-address'], // the same, in hex
    [`http://[::ffff:169.254.169.254]:${port}/`, 'blocked-address'],
    [`http://[fd00:ec2::254]:${port}/`, 'blocked-address'], // AWS metadata over IPv6
    [`http://10.0.0.1:${port}/`, 'blocked-address'],
    [`http://172.16.0.1:${port}/`, 'blocked-address'],
    [`http://192.168.1.1:${port}/`, 'blocked-address'],
    [`http://100.64.0.1:${port}/`, 'blocked-address'],
    [`http://224.0.0.1:${port}/`, 'blocked-address'],
    [`http://255.255.255.255:${port}/`, 'blocked-address'],
    [`http://[fe80::1]:${port}/`, 'blocked-address'],
    [`http://[fc00::1]:${port}/`, 'blocked-address'],
    [`http://localhost:${port}/`, 'blocked-host'],
    [`http://LOCALHOST.:${port}/`, 'blocked-host'],
    [`http://hooks.localhost:${port}/`, 'blocked-host'],
    [`http://user:pass@127.0.0.1:${port}/`, 'userinfo'],
    [`http://example.com@127.0.0.1:${port}/`, 'userinfo'], // the host is 127.0.0.1
    [`http://example.com:pass@8.8.8.8:${port}/`, 'userinfo'],
    [`http://8.8.8.8:0/`, 'bad-port'],
    [`ftp://127.0.0.1:${port}/`, 'bad-scheme'],
    [`file:///etc/passwd`, 'bad-scheme'],
    [`gopher://127.0.0.1:${port}/_`, 'bad-scheme'],
    [`http://[fe80::1%25eth0]:${port}/`, 'invalid-url'],
    [`http://256.0.0.1:${port}/`, 'invalid-url'],
    [`/relative/path`, 'invalid-url'],
  ]

  it('refuses at least 20 encodings of blocked targets statically, and the sender connects to none', async () => {
    const server = await receiver()
    const list = encodings(server.port)
    expect(list.filter(([, reason]) => reason === 'blocked-address').length).toBeGreaterThanOrEqual(20)
    for (const [url, reason] of list) {
      const check = checkTarget(url)
      expect([url, check.ok ? 'ok' : check.reason]).toEqual([url, reason])
    }

    const resolve = toLoopback()
    const send = webhookSender({ resolve, connectTimeout: '2s', timeout: '2s' })
    for (const [url] of list) {
      const result = await send({ url, body })
      expect([url, result.failure]).toEqual([url, 'refused'])
    }
    expect(resolve.calls).toEqual([])
    expect(server.connections).toBe(0)
  })

  it('refuses names that resolve to a blocked address when connecting, making no connection', async () => {
    const server = await receiver()
    const resolve = toLoopback()
    const send = webhookSender({ resolve })
    const names = [
      `http://rebind.example:${server.port}/`,
      `http://example.com\\@127.0.0.1:${server.port}/`, // WHATWG reads the host as example.com: so do we
      `http://metadata.google.internal:${server.port}/`,
      `http://localtest.me:${server.port}/`,
      `https://127.0.0.1.nip.io:${server.port}/`,
    ]
    for (const url of names) {
      expect(checkTarget(url).ok).toBe(true)
      const result = await send({ url, body })
      expectFailure(result, 'blocked')
      expect(result.error).toMatch(/127\.0\.0\.1, a loopback address/)
    }
    expect(resolve.calls).toEqual([
      'rebind.example',
      'example.com',
      'metadata.google.internal',
      'localtest.me',
      '127.0.0.1.nip.io',
    ])
    expect(server.connections).toBe(0)
  })

  it('defeats DNS rebinding: the address connected to is the one checked at connect time', async () => {
    const server = await receiver()
    const answers = [
      [{ address: '8.8.8.8', family: 4 }],
      [{ address: '127.0.0.1', family: 4 }],
      [
        { address: '8.8.8.8', family: 4 },
        { address: '127.0.0.1', family: 4 },
      ],
      [{ address: '::ffff:127.0.0.1', family: 6 }],
    ]
    let n = 0
    const resolve: Resolver = async () => answers[n++]!

    // Check time: the name looks public.
    const lookup = guardedLookup({}, resolve)
    const atCheck = await new Promise<unknown>((done, fail) =>
      lookup('rebind.example', { all: true }, (err, address) => (err ? fail(err) : done(address))),
    )
    expect(atCheck).toEqual([{ address: '8.8.8.8', family: 4 }])

    // Connect time: it now answers loopback, alone or among public addresses, or IPv4-mapped.
    const send = webhookSender({ resolve })
    for (let i = 0; i < 3; i++) {
      const result = await send({ url: `http://rebind.example:${server.port}/`, body })
      expectFailure(result, 'blocked')
    }
    expect(n).toBe(4)
    expect(server.connections).toBe(0)
  })

  it('hands the connection only the addresses it checked, in the family asked for', async () => {
    const resolve: Resolver = async () => [
      { address: '8.8.8.8', family: 4 },
      { address: '2606:4700:4700::1111', family: 6 },
    ]
    const lookup = guardedLookup({}, resolve)
    const one = await new Promise<[unknown, unknown]>((done, fail) =>
      lookup('dual.example', { family: 6 }, (err, address, family) => (err ? fail(err) : done([address, family]))),
    )
    expect(one).toEqual(['2606:4700:4700::1111', 6])
  })

  it('sends to allow-listed CIDRs and hosts', async () => {
    const r = await receiver()
    expect(
      await webhookSender({ policy: { allow: ['127.0.0.0/8'] } })({ url: `http://127.0.0.1:${r.port}/`, body }),
    ).toMatchObject({ ok: true })

    // A trusted name may resolve to anything; an untrusted one to the same address may not.
    const resolve = toLoopback()
    const send = webhookSender({ policy: { allow: ['hooks.internal.example'] }, resolve })
    expect(await send({ url: `http://hooks.internal.example:${r.port}/`, body })).toMatchObject({ ok: true })
    expect(await send({ url: `http://HOOKS.internal.example.:${r.port}/`, body })).toMatchObject({ ok: true })
    expectFailure(await send({ url: `http://other.internal.example:${r.port}/`, body }), 'blocked')
    expectFailure(await send({ url: `http://sub.hooks.internal.example:${r.port}/`, body }), 'blocked')
    expect(r.requests).toHaveLength(3)

    // An allow-listed address admits the names that resolve to it.
    const byAddress = webhookSender({ policy: LOCAL, resolve })
    expect(await byAddress({ url: `http://anything.example:${r.port}/`, body })).toMatchObject({ ok: true })

    expect(checkTarget('http://localhost/', { allow: ['localhost'] }).ok).toBe(true)
    expect(checkTarget('http://[::ffff:127.0.0.1]/', LOCAL).ok).toBe(true)
    expect(checkTarget('http://10.20.30.40/', { allow: ['10.0.0.0/8'] }).ok).toBe(true)
    expect(checkTarget('http://11.0.0.1/', { allow: ['10.0.0.0/8'] }).ok).toBe(true) // public anyway
    expect(checkTarget('http://192.168.0.1/', { allow: ['10.0.0.0/8'] })).toMatchObject({ reason: 'blocked-address' })
    expect(checkTarget('http://[fd12::1]/', { allow: ['fd00::/8'] }).ok).toBe(true)
  })

  it('refuses malformed allow-list entries when configured', () => {
    for (const bad of ['', '10.0.0/8', '10.0.0.0/33', 'http://example.com', '0x7f.1', '2130706433', 'a b']) {
      expect(() => targetPolicy({ allow: [bad] })).toThrow(expect.objectContaining({ code: 'invalid-option' }))
    }
    expect(() =>
      targetPolicy({ allow: ['127.0.0.1', '::1', '10.0.0.0/8', 'fd00::/8', 'Hooks.Example.'] }),
    ).not.toThrow()
  })
})
