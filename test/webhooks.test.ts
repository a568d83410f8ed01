import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import { Webhook } from 'standardwebhooks'
import { parse as parseYaml } from 'yaml'
import { XMLParser } from 'fast-xml-parser'
import { afterEach, describe, expect, it } from 'vitest'
import { defineAsyncRoute, longrun, type LongrunPluginOptions } from '../src/http/adapters/fastify/index.js'
import { sqliteStore } from '../src/stores/sqlite/index.js'
import { tempDir, type Json } from './helpers/http.js'
import { until } from './helpers/until.js'

// Callbacks and app-wide webhooks end to end: a real Fastify app on a SQLite file, and real
// receivers on 127.0.0.1 (allow-listed) that verify every signature with the standardwebhooks package.

const SECRET = `whsec_${Buffer.from('a test secret of at least 24 bytes!').toString('base64')}`
const verifier = new Webhook(SECRET)

interface Received {
  method: string
  headers: IncomingHttpHeaders
  body: string
}

type Answer = { status: number; headers?: Record<string, string> } | 'hang'

interface Receiver {
  url: string
  received: Received[]
  close(): Promise<void>
}

const servers = new Set<Server>()

async function receiver(answer: (n: number) => Answer = () => ({ status: 204 })): Promise<Receiver> {
  const received: Received[] = []
  const server = createServer((request, response) => {
    let body = ''
    request.on('data', (chunk: Buffer) => (body += chunk.toString('utf8')))
    request.on('end', () => {
      received.push({ method: request.method!, headers: request.headers, body })
      const a = answer(received.length)
      if (a === 'hang') return
      response.writeHead(a.status, a.headers).end()
    })
  })
  servers.add(server)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}/hook`,
    received,
    close: () => {
      servers.delete(server)
      server.closeAllConnections()
      return new Promise((resolve) => server.close(() => resolve()))
    },
  }
}

const dirs: { remove(): void }[] = []
const apps: FastifyInstance[] = []

afterEach(async () => {
  await Promise.all(apps.splice(0).map((app) => app.close()))
  await Promise.all([...servers].map((server) => new Promise((resolve) => server.close(resolve))))
  servers.clear()
  for (const dir of dirs.splice(0)) dir.remove()
})

const job = (overrides: Record<string, unknown> = {}) =>
  defineAsyncRoute({
    url: '/jobs',
    name: 'job',
    callback: { sendResult: true },
    schema: {
      body: {
        type: 'object',
        properties: { callbackUrl: { type: 'string' }, fail: { type: 'boolean' }, waitMs: { type: 'integer' } },
      },
    },
    async handler(op) {
      const { fail, waitMs } = op.input as { fail?: boolean; waitMs?: number }
      if (waitMs) await new Promise((resolve) => setTimeout(resolve, waitMs))
      if (fail) throw new Error('asked to fail')
      return { answer: 42 }
    },
    ...overrides,
  })

async function start(
  webhooks: Partial<NonNullable<LongrunPluginOptions['webhooks']>> = {},
  routes = [job()],
): Promise<string> {
  const dir = tempDir('longrun-webhooks-')
  dirs.push(dir)
  const app = Fastify()
  apps.push(app)
  await app.register(longrun, {
    store: sqliteStore({ path: join(dir.path, 'hooks.db') }),
    poll: 20,
    webhooks: { secret: SECRET, allow: ['127.0.0.1'], poll: '50ms', retry: ['50ms', '50ms'], ...webhooks },
  })
  for (const route of routes) app.longrun.route(route)
  return app.listen({ port: 0, host: '127.0.0.1' })
}

async function submit(base: string, body: unknown, path = '/jobs'): Promise<{ status: number; json: Json }> {
  const response = await fetch(base + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  })
  return { status: response.status, json: await response.json() }
}

/**
 * `Webhook#verify` also parses the body as JSON: for XML and YAML bodies, the signature is checked
 * against the package's own signature of the same id, time and bytes.
 */
function expectSigned({ headers, body }: Received): void {
  const id = headers['webhook-id'] as string
  const at = new Date(Number(headers['webhook-timestamp']) * 1000)
  expect((headers['webhook-signature'] as string).split(' ')).toContain(verifier.sign(id, at, body))
}

const getOp = async (base: string, id: string): Promise<Json> => (await fetch(`${base}/operations/${id}`)).json()

describe('per-route callbacks', () => {
  it('calls back once the operation ends, signed per Standard Webhooks, and shows how it went', async () => {
    const hook = await receiver()
    const base = await start()
    const { status, json: op } = await submit(base, { callbackUrl: hook.url })
    expect(status).toBe(202)
    expect(op.callback).toEqual({
      url: hook.url,
      method: 'POST',
      state: 'pending',
      attempts: 0,
      lastAttemptAt: null,
      lastStatus: null,
    })
    await until(() => hook.received.length === 1, 10_000)
    const [message] = hook.received
    expect(message!.method).toBe('POST')
    expect(message!.headers['content-type']).toBe('application/json')
    // verify() throws on a bad signature, a stale timestamp or a changed body.
    const payload = verifier.verify(message!.body, message!.headers as Record<string, string>) as Json
    expect(payload).toMatchObject({
      type: 'operation.succeeded',
      data: { id: op.id, state: 'succeeded', result: { answer: 42 } },
    })
    expect(Date.parse(payload.timestamp)).toBeGreaterThan(0)
    expect(message!.headers['webhook-id']).toMatch(/^msg_/)

    await until(async () => (await getOp(base, op.id)).callback.state === 'delivered')
    const after = await getOp(base, op.id)
    expect(after.callback).toMatchObject({ state: 'delivered', attempts: 1, lastStatus: 204 })
    expect(Date.parse(after.callback.lastAttemptAt)).toBeGreaterThan(0)

    const deliveries = (await (await fetch(`${base}/operations/${op.id}/deliveries`)).json()) as Json
    expect(deliveries.items).toEqual([
      expect.objectContaining({
        id: message!.headers['webhook-id'],
        event: 'succeeded',
        target: 'callback',
        state: 'delivered',
        nextAttemptAt: null,
        attempts: [expect.objectContaining({ ok: true, status: 204, error: null, durationMs: expect.any(Number) })],
      }),
    ])

    // Queries find operations by how their callback is doing.
    const query = async (state: string) =>
      (
        (await (
          await fetch(`${base}/operations/query`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ 'callback.state': { op: 'eq', value: state } }),
          })
        ).json()) as Json
      ).items.map((o: Json) => o.id)
    expect(await query('delivered')).toEqual([op.id])
    expect(await query('failed')).toEqual([])

    // Redelivery sends the same message again: the same webhook-id, which receivers deduplicate by.
    const redeliver = await fetch(`${base}/operations/${op.id}/deliveries/retry`, { method: 'POST' })
    expect(redeliver.status).toBe(202)
    expect(await redeliver.json()).toEqual({ redelivered: 1 })
    await until(() => hook.received.length === 2, 10_000)
    expect(hook.received[1]!.headers['webhook-id']).toBe(message!.headers['webhook-id'])
  })

  it('calls back failures and a queued operation canceled at once', async () => {
    const hook = await receiver()
    const base = await start({}, [
      job(),
      job({
        url: '/later',
        name: 'later',
        concurrency: 1,
        handler: (op: { signal: AbortSignal }) => sleep(60_000, undefined, { signal: op.signal }),
      }),
    ])
    const failed = await submit(base, { callbackUrl: hook.url, fail: true })
    await until(() => hook.received.length === 1, 10_000)
    expect(verifier.verify(hook.received[0]!.body, hook.received[0]!.headers as Record<string, string>)).toMatchObject({
      type: 'operation.failed',
      data: { id: failed.json.id, error: { code: 'handler-error' } },
    })
    // The first `later` takes the only slot; the second stays queued and is canceled at once.
    await submit(base, {}, '/later')
    const queued = await submit(base, { callbackUrl: hook.url }, '/later')
    const canceled = await fetch(`${base}/operations/${queued.json.id}/cancel`, { method: 'POST' })
    expect(((await canceled.json()) as Json).state).toBe('canceled')
    await until(() => hook.received.length === 2, 10_000)
    expect(JSON.parse(hook.received[1]!.body)).toMatchObject({
      type: 'operation.canceled',
      data: { id: queued.json.id },
    })
  })

  it('sends XML or YAML when the route asks, and PUT', async () => {
    const hook = await receiver()
    const base = await start({}, [
      job({ url: '/xml', name: 'xml', callback: { contentType: 'application/xml', method: 'PUT' } }),
      job({ url: '/yaml', name: 'yaml', callback: { contentType: 'application/yaml' } }),
    ])
    await submit(base, { callbackUrl: hook.url }, '/xml')
    await until(() => hook.received.length === 1, 10_000)
    await submit(base, { callbackUrl: hook.url }, '/yaml')
    await until(() => hook.received.length === 2, 10_000)
    const [xml, yaml] = hook.received
    expect(xml!.method).toBe('PUT')
    expect(xml!.headers['content-type']).toBe('application/xml')
    expectSigned(xml!)
    expect(JSON.stringify(new XMLParser().parse(xml!.body))).toContain('operation.succeeded')
    expect(yaml!.headers['content-type']).toBe('application/yaml')
    expectSigned(yaml!)
    expect(parseYaml(yaml!.body)).toMatchObject({ type: 'operation.succeeded', data: { name: 'yaml' } })
    // sendResult is false unless asked, as in Pode.
    expect(parseYaml(yaml!.body).data.result).toBeUndefined()
  })

  it('takes the URL and header values from runtime expressions over the request', async () => {
    const hook = await receiver()
    const base = await start({}, [
      job({
        url: '/expr/:tenant',
        name: 'expr',
        callback: {
          url: '$request.query.cb',
          headers: { 'x-tenant': '{$request.path.tenant}', 'x-trace': '$request.header.x-trace' },
        },
      }),
    ])
    const response = await fetch(`${base}/expr/acme?cb=${encodeURIComponent(hook.url)}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-trace': 't-1' },
      body: '{}',
    })
    expect(response.status).toBe(202)
    await until(() => hook.received.length === 1, 10_000)
    expect(hook.received[0]!.headers).toMatchObject({ 'x-tenant': 'acme', 'x-trace': 't-1' })
  })

  it('refuses a callback URL it may not reach with 422 before storing anything; no URL is no callback', async () => {
    const base = await start({ allow: [] })
    for (const callbackUrl of [
      'http://127.0.0.1:9/hook',
      'http://2130706433/',
      'http://[::ffff:10.0.0.1]/',
      'ftp://example.com/',
      'http://u:p@example.com/',
    ]) {
      const { status, json } = await submit(base, { callbackUrl })
      expect(status, callbackUrl).toBe(422)
      expect(json).toMatchObject({ type: 'urn:longrun:problem:invalid-callback', field: 'callback' })
    }
    expect((await submit(base, { callbackUrl: 42 })).status).toBe(422)
    expect(((await (await fetch(`${base}/operations`)).json()) as Json).items).toEqual([])
    const plain = await submit(base, {})
    expect(plain.status).toBe(202)
    expect(plain.json.callback).toBeUndefined()
  })

  it('retries on the schedule after a 500, and honours Retry-After', async () => {
    const hook = await receiver((n) =>
      n === 1 ? { status: 500 } : n === 2 ? { status: 503, headers: { 'retry-after': '1' } } : { status: 200 },
    )
    const base = await start({ retry: ['50ms', '50ms', '50ms'] })
    const { json: op } = await submit(base, { callbackUrl: hook.url })
    await until(() => hook.received.length === 3, 15_000)
    const ids = new Set(hook.received.map((r) => r.headers['webhook-id']))
    expect(ids.size).toBe(1)
    await until(async () => (await getOp(base, op.id)).callback.state === 'delivered')
    const { items } = (await (await fetch(`${base}/operations/${op.id}/deliveries`)).json()) as Json
    expect(items[0].attempts.map((a: Json) => a.status)).toEqual([500, 503, 200])
    // The 503's Retry-After (1 s) stood in for the schedule's 50 ms.
    const [, second, third] = items[0].attempts.map((a: Json) => Date.parse(a.at))
    expect(third - second).toBeGreaterThanOrEqual(1_000)
  })

  it('gives up when the schedule is spent, and marks the callback failed', async () => {
    const hook = await receiver(() => ({ status: 500 }))
    const base = await start({ retry: ['20ms'] })
    const { json: op } = await submit(base, { callbackUrl: hook.url })
    await until(async () => (await getOp(base, op.id)).callback.state === 'failed', 10_000)
    expect((await getOp(base, op.id)).callback).toMatchObject({ attempts: 2, lastStatus: 500 })
    expect(hook.received).toHaveLength(2)
  })

  it('fails at registration on an unknown route option or a callback without webhooks', async () => {
    const app = Fastify()
    apps.push(app)
    const dir = tempDir('longrun-webhooks-')
    dirs.push(dir)
    await app.register(longrun, { store: sqliteStore({ path: join(dir.path, 'x.db') }) })
    expect(() => app.longrun.route({ ...job(), callbak: true } as never)).toThrow(/job\.callbak.*not an option/)
    expect(() => app.longrun.route(job())).toThrow(/webhooks option/)
    expect(() => app.longrun.route(job({ callback: { url: '$request.nope' } }))).toThrow(/runtime expression/)
    // Headers the sender sets itself cannot be overridden by a route.
    expect(() => app.longrun.route(job({ callback: { headers: { 'webhook-id': 'x' } } }))).toThrow(/set by the sender/)
  })
})

describe('app-wide webhook endpoints', () => {
  it('get the events they subscribe to, for the routes they name; a 410 disables the endpoint', async () => {
    const all = await receiver()
    let gone = false
    const leaving = await receiver(() => (gone ? { status: 410 } : { status: 200 }))
    const base = await start(
      {
        endpoints: [
          { id: 'audit', url: all.url, events: ['started', 'succeeded'], names: ['jo*'] },
          { id: 'leaving', url: leaving.url },
        ],
      },
      [job({ callback: undefined }), job({ url: '/other', name: 'other', callback: undefined })],
    )
    const { json: op } = await submit(base, {})
    await until(() => all.received.length === 2 && leaving.received.length === 1, 10_000)
    expect(all.received.map((r) => JSON.parse(r.body).type).sort()).toEqual([
      'operation.started',
      'operation.succeeded',
    ])
    for (const r of all.received) verifier.verify(r.body, r.headers as Record<string, string>)
    // `other` is not among audit's names.
    await submit(base, {}, '/other')
    await until(() => leaving.received.length === 2, 10_000)
    expect(all.received).toHaveLength(2)

    gone = true
    await submit(base, {})
    await until(() => leaving.received.length === 3, 10_000)
    const later = await submit(base, {})
    await until(async () => {
      const { items } = (await (await fetch(`${base}/operations/${later.json.id}/deliveries`)).json()) as Json
      return items.some((m: Json) => m.target === 'leaving' && m.state === 'failed')
    }, 10_000)
    expect(leaving.received).toHaveLength(3)
    expect(op.callback).toBeUndefined()
  })
})
