import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { Type } from '@sinclair/typebox'
import { XMLParser } from 'fast-xml-parser'
import Fastify, { type FastifyInstance } from 'fastify'
import type { Store } from 'longrun'
import { longrun, type LongrunPluginOptions } from 'longrun/fastify'
import { memoryStore } from 'longrun/memory'
import { sqliteStore } from 'longrun/sqlite'
import { afterEach, describe, expect, it } from 'vitest'
import { parse as parseYaml } from 'yaml'
import { buildDemoApp } from '../examples/demo/app.js'
import {
  Client,
  expectJson,
  expectProblem,
  Gates,
  ISO_UTC,
  listen,
  POSITIVE_INTEGER,
  rawRequest,
  sortedList,
  tempDir,
  withoutInstance,
  type HttpResponse,
  type Json,
} from './helpers/http.js'
import { until } from './helpers/until.js'

// The operations API of DESIGN §2 over a real socket: a listening Fastify server, global fetch,
// the plugin on a real SQLite file (and the core path again on the memory store).

type StoreKind = 'sqlite' | 'memory'

interface Harness {
  app: FastifyInstance
  client: Client
  gates: Gates
  /** Calls of the `flaky` handler, by key. */
  calls: Map<string, number>
  /** The SQLite file, for the sqlite kind. */
  dbPath: string | undefined
  close(): Promise<void>
}

const REPORT = { title: 'Quarterly report', total: 42, ratio: 0.5, items: ['north', 'south'] }
/** 120 characters: a valid id (up to 128) longer than Fastify's default `maxParamLength` (100). */
const longId = () => 'L' + randomBytes(60).toString('hex').slice(0, 119)

const harnesses: Harness[] = []

afterEach(async () => {
  for (const harness of harnesses.splice(0)) await harness.close()
})

async function start(kind: StoreKind, options: Partial<LongrunPluginOptions> = {}): Promise<Harness> {
  const dir = tempDir()
  const dbPath = kind === 'sqlite' ? join(dir.path, 'ops.db') : undefined
  const store: Store = dbPath ? sqliteStore({ path: dbPath }) : memoryStore()
  const gates = new Gates()
  const calls = new Map<string, number>()

  const app = Fastify()
  await app.register(longrun, { store, lease: 500, poll: 20, grace: 200, ...options })

  app.longrun.route({
    url: '/jobs/echo',
    name: 'echo',
    async handler(op) {
      return {
        echo: op.input,
        query: op.query,
        trace: op.headers['x-trace'] ?? null,
        sawAuthorization: 'authorization' in op.headers,
        attempt: op.attempt,
      }
    },
  })
  app.longrun.route({
    url: '/jobs/gated',
    name: 'gated',
    async handler(op) {
      const { key } = op.input as { key: string }
      await gates.wait(key, op.signal)
      return { key, attempt: op.attempt }
    },
  })
  app.longrun.route({
    url: '/jobs/serial',
    name: 'serial',
    concurrency: 1,
    async handler(op) {
      const { key } = op.input as { key: string }
      await gates.wait(key, op.signal)
      return { key }
    },
  })
  app.longrun.route({
    url: '/jobs/stubborn',
    name: 'stubborn',
    cancelable: false,
    async handler(op) {
      const { key } = op.input as { key: string }
      await gates.wait(key, op.signal)
      return { key }
    },
  })
  app.longrun.route({
    url: '/jobs/flaky',
    name: 'flaky',
    async handler(op) {
      const { key, failTimes } = op.input as { key: string; failTimes: number }
      const n = (calls.get(key) ?? 0) + 1
      calls.set(key, n)
      if (n <= failTimes) throw new Error(`boom ${key} #${n}`)
      return { key, calls: n }
    },
  })
  app.longrun.route({
    url: '/jobs/report',
    name: 'report',
    resultTypes: ['application/json', 'application/xml', 'application/yaml'],
    handler: async () => REPORT,
  })
  app.longrun.route({
    url: '/jobs/typed',
    name: 'typed',
    schema: {
      body: Type.Object(
        { n: Type.Integer({ minimum: 1 }), label: Type.String({ minLength: 1 }) },
        { additionalProperties: false },
      ),
    },
    async handler(op) {
      return { doubled: op.input.n * 2, label: op.input.label }
    },
  })
  app.longrun.route({ url: '/jobs/long-id', name: 'long-id', idGenerator: longId, handler: async () => 'done' })

  const client = new Client(await listen(app))
  let closed = false
  const harness: Harness = {
    app,
    client,
    gates,
    calls,
    dbPath,
    async close() {
      if (closed) return
      closed = true
      await app.close()
      gates.openAll()
      dir.remove()
    },
  }
  harnesses.push(harness)
  return harness
}

/** Submits to an async route and checks the 202; returns the operation resource. */
async function submit(client: Client, path: string, json?: unknown, headers?: Record<string, string>): Promise<Json> {
  const res = await client.post(path, json, headers)
  const op = expectJson(res, 202)
  expect(res.headers.get('location')).toBe(`/operations/${op.id}`)
  expect(res.headers.get('retry-after')).toMatch(POSITIVE_INTEGER)
  return op
}

/** A `gated` (or `serial`, `stubborn`) operation whose handler has begun waiting. */
async function running(h: Harness, key: string, route = '/jobs/gated'): Promise<Json> {
  const op = await submit(h.client, route, { key })
  await until(() => h.gates.started.has(key), 15_000, { what: `${key} started` })
  return h.client.waitForState(op.id, 'running')
}

/** A `serial` operation kept `queued` behind a running one. */
async function queuedBehindBlocker(h: Harness, blockerKey: string, key: string): Promise<{ blocker: Json; op: Json }> {
  const blocker = await running(h, blockerKey, '/jobs/serial')
  const op = await submit(h.client, '/jobs/serial', { key })
  const res = await h.client.get(`/operations/${op.id}`)
  expect(expectJson(res, 200).state).toBe('queued')
  return { blocker, op }
}

async function failed(h: Harness, key: string, failTimes = 99): Promise<Json> {
  const op = await submit(h.client, '/jobs/flaky', { key, failTimes })
  return h.client.waitForState(op.id, 'failed')
}

async function succeeded(h: Harness, input: unknown = { hello: 'world' }): Promise<Json> {
  const op = await submit(h.client, '/jobs/echo', input)
  return h.client.waitForState(op.id, 'succeeded')
}

async function canceled(h: Harness, key: string): Promise<Json> {
  const op = await running(h, key)
  expectJson(await h.client.post(`/operations/${op.id}/cancel`), 200)
  return h.client.waitForState(op.id, 'canceled')
}

function expectResource(op: Json, name: string): void {
  expect(Object.keys(op)).toEqual(
    expect.arrayContaining([
      'id',
      'name',
      'state',
      'done',
      'progress',
      'createdAt',
      'startedAt',
      'completedAt',
      'expiresAt',
      'attempt',
      'maxAttempts',
      'cancelable',
      'cancelRequested',
      'links',
    ]),
  )
  expect(op.id).toMatch(/^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$/)
  expect(op.name).toBe(name)
  expect(['queued', 'running', 'succeeded', 'failed', 'canceled']).toContain(op.state)
  expect(op.done).toBe(['succeeded', 'failed', 'canceled'].includes(op.state))
  expect(op.progress.percent).toBeGreaterThanOrEqual(0)
  expect(op.progress.percent).toBeLessThanOrEqual(100)
  expect(op.createdAt).toMatch(ISO_UTC)
  expect(new Date(op.createdAt).toISOString()).toBe(op.createdAt)
  for (const field of ['startedAt', 'completedAt', 'expiresAt']) {
    if (op[field] !== null) expect(op[field]).toMatch(ISO_UTC)
  }
  expect(Number.isInteger(op.attempt)).toBe(true)
  expect(Number.isInteger(op.maxAttempts)).toBe(true)
  expect(typeof op.cancelable).toBe('boolean')
  expect(typeof op.cancelRequested).toBe('boolean')
  const self = `/operations/${encodeURIComponent(op.id)}`
  expect(op.links).toMatchObject({ self, result: `${self}/result`, cancel: `${self}/cancel` })
}

const STATES = ['queued', 'running', 'succeeded', 'failed', 'canceled'] as const
const counts = (partial: Partial<Record<(typeof STATES)[number], number>>) => {
  const all = Object.fromEntries(STATES.map((s) => [s, partial[s] ?? 0])) as Record<string, number>
  return { ...all, total: Object.values(all).reduce((a, b) => a + b, 0) }
}

/** The core path, run against each store. */
function coreHappyPath(kind: StoreKind) {
  it('submits, runs and serves the result of an operation', async () => {
    const h = await start(kind)
    const accepted = await h.client.post('/jobs/echo', { hello: 'world' })
    const op = expectJson(accepted, 202)
    expectResource(op, 'echo')
    expect(accepted.headers.get('location')).toBe(op.links.self)
    expect(accepted.headers.get('retry-after')).toMatch(POSITIVE_INTEGER)

    const done = await h.client.waitForState(op.id, 'succeeded')
    expectResource(done, 'echo')
    expect(done.result).toMatchObject({ echo: { hello: 'world' } })

    const result = await h.client.get(`/operations/${op.id}/result`)
    expect(expectJson(result, 200)).toMatchObject({ echo: { hello: 'world' }, attempt: 1 })

    const list = expectJson(await h.client.get('/operations'), 200)
    expect(list.items.map((o: Json) => o.id)).toEqual([op.id])
    expect(await h.client.stats()).toMatchObject({
      ...counts({ succeeded: 1 }),
      byName: { echo: counts({ succeeded: 1 }) },
    })
  })

  it('cancels a queued operation, retries a failed one and deletes a finished one', async () => {
    const h = await start(kind)
    const { blocker, op } = await queuedBehindBlocker(h, 'blocker', 'waiting')
    const canceledOp = expectJson(await h.client.post(`/operations/${op.id}/cancel`), 200)
    expect(canceledOp).toMatchObject({ state: 'canceled', done: true, cancelRequested: true })
    h.gates.open('blocker')
    await h.client.waitForState(blocker.id, 'succeeded')

    const failedOp = await failed(h, 'once', 1)
    expect(expectJson(await h.client.post(`/operations/${failedOp.id}/retry`), 202).state).toBe('queued')
    expect((await h.client.waitForState(failedOp.id, 'succeeded')).result).toEqual({ key: 'once', calls: 2 })

    expect((await h.client.delete(`/operations/${failedOp.id}`)).status).toBe(204)
    expectProblem(await h.client.get(`/operations/${failedOp.id}`), 404, 'operation-not-found')
  })

  it('refuses a cursor it never issued', async () => {
    const h = await start(kind)
    await succeeded(h)
    for (const cursor of ['abc', '12', '!!!']) {
      expectProblem(await h.client.get(`/operations?cursor=${cursor}`), 400, 'invalid-query')
    }
  })
}

describe('operations API over HTTP, SQLite store', () => {
  coreHappyPath('sqlite')

  describe('submit', () => {
    it('answers 202 with Location, Retry-After and every field of the operation resource', async () => {
      const { client } = await start('sqlite')
      const res = await client.post('/jobs/echo', { a: 1 })
      const op = expectJson(res, 202)
      expect(res.headers.get('content-type')).toBe('application/json; charset=utf-8')
      expect(res.headers.get('location')).toBe(`/operations/${op.id}`)
      expect(res.headers.get('location')).toBe(op.links.self)
      expect(res.headers.get('retry-after')).toMatch(POSITIVE_INTEGER)
      expectResource(op, 'echo')
      expect(op).toMatchObject({
        state: 'queued',
        done: false,
        progress: { percent: 0 },
        startedAt: null,
        completedAt: null,
        expiresAt: null,
        attempt: 0,
        maxAttempts: 1,
        cancelable: true,
        cancelRequested: false,
      })
      expect(op.result).toBeUndefined()
      expect(op.error).toBeUndefined()
      expect(Math.abs(Date.parse(op.createdAt) - Date.now())).toBeLessThan(60_000)
    })

    it('is durable: a GET right after the 202 finds it, and so does another store on the same file', async () => {
      const h = await start('sqlite')
      const op = await submit(h.client, '/jobs/gated', { key: 'durable' })
      expect(expectJson(await h.client.get(`/operations/${op.id}`), 200).id).toBe(op.id)

      const dbPath = h.dbPath!
      await h.app.close()
      const reader = sqliteStore({ path: dbPath })
      try {
        const stored = await reader.get(op.id)
        expect(stored).toMatchObject({ id: op.id, name: 'gated', input: { key: 'durable' } })
        expect(['queued', 'running']).toContain(stored!.state)
      } finally {
        await reader.close()
      }
    })

    it('gives the handler the query and the headers, but not the credentials', async () => {
      const { client } = await start('sqlite')
      const op = await submit(
        client,
        '/jobs/echo?mode=fast',
        { x: 1 },
        { 'x-trace': 'abc', authorization: 'Bearer s3cret' },
      )
      const done = await client.waitForState(op.id, 'succeeded')
      expect(done.result).toEqual({
        echo: { x: 1 },
        query: { mode: 'fast' },
        trace: 'abc',
        sawAuthorization: false,
        attempt: 1,
      })
    })

    it('validates a TypeBox body schema and passes the typed input', async () => {
      const { client } = await start('sqlite')
      const op = await submit(client, '/jobs/typed', { n: 21, label: 'answer' })
      expect((await client.waitForState(op.id, 'succeeded')).result).toEqual({ doubled: 42, label: 'answer' })
    })

    it('serves ids longer than the router parameter limit like any other', async () => {
      const { client } = await start('sqlite')
      const op = await submit(client, '/jobs/long-id')
      expect(op.id).toHaveLength(120)
      await client.waitForState(op.id, 'succeeded')
      expect(expectJson(await client.get(`/operations/${op.id}/result`), 200)).toBe('done')
      expectProblem(await client.get(`/operations/${op.id}/error`), 404, 'no-error')
      expectProblem(await client.post(`/operations/${op.id}/cancel`), 409, 'operation-finished')
      expectProblem(await client.post(`/operations/${op.id}/retry`), 409, 'operation-not-retryable')
      expectProblem(await client.get(`/operations/${op.id}/nope`), 404, 'route-not-found')
      expect((await client.delete(`/operations/${op.id}`)).status).toBe(204)
      expectProblem(await client.get(`/operations/${op.id}`), 404, 'operation-not-found')
    })
  })

  describe('GET status', () => {
    it('sends Retry-After while the operation is not done, and none once it is', async () => {
      const h = await start('sqlite')
      const op = await submit(h.client, '/jobs/gated', { key: 'status' })
      const queuedOrRunning = await h.client.get(`/operations/${op.id}`)
      expect(['queued', 'running']).toContain(expectJson(queuedOrRunning, 200).state)
      expect(queuedOrRunning.headers.get('retry-after')).toMatch(POSITIVE_INTEGER)

      await until(() => h.gates.started.has('status'), 15_000, { what: 'status started' })
      const run = await h.client.waitForState(op.id, 'running')
      expect(run).toMatchObject({ id: op.id, state: 'running', done: false, attempt: 1, completedAt: null })
      expect(run.startedAt).toMatch(ISO_UTC)
      const whileRunning = await h.client.get(`/operations/${op.id}`)
      expect(whileRunning.headers.get('retry-after')).toMatch(POSITIVE_INTEGER)

      h.gates.open('status')
      await h.client.waitForState(op.id, 'succeeded')
      const done = await h.client.get(`/operations/${op.id}`)
      const body = expectJson(done, 200)
      expect(done.headers.get('retry-after')).toBeNull()
      expectResource(body, 'gated')
      expect(body).toMatchObject({ done: true, attempt: 1, result: { key: 'status', attempt: 1 } })
      for (const field of ['startedAt', 'completedAt', 'expiresAt']) expect(body[field]).toMatch(ISO_UTC)
      expect(Date.parse(body.expiresAt)).toBeGreaterThan(Date.parse(body.completedAt))
    })
  })

  describe('GET result', () => {
    it('answers 200 JSON once succeeded', async () => {
      const h = await start('sqlite')
      const op = await succeeded(h, { n: 1 })
      const res = await h.client.get(`/operations/${op.id}/result`)
      expect(expectJson(res, 200)).toEqual({
        echo: { n: 1 },
        query: {},
        trace: null,
        sawAuthorization: false,
        attempt: 1,
      })
      expect(res.headers.get('vary')).toMatch(/accept/i)
    })

    it('negotiates JSON, XML and YAML on a route that offers them', async () => {
      const h = await start('sqlite')
      const op = await submit(h.client, '/jobs/report')
      await h.client.waitForState(op.id, 'succeeded')
      const path = `/operations/${op.id}/result`

      expect(expectJson(await h.client.get(path), 200)).toEqual(REPORT)
      expect(expectJson(await h.client.get(path, { accept: '*/*' }), 200)).toEqual(REPORT)
      expect(expectJson(await h.client.get(path, { accept: 'application/json' }), 200)).toEqual(REPORT)

      const yaml = await h.client.get(path, { accept: 'application/yaml' })
      expect(yaml.status).toBe(200)
      expect(yaml.headers.get('content-type')).toMatch(/^application\/yaml(;|$)/)
      expect(parseYaml(yaml.text)).toEqual(REPORT)

      const xml = await h.client.get(path, { accept: 'application/xml' })
      expect(xml.status).toBe(200)
      expect(xml.headers.get('content-type')).toMatch(/^application\/xml(;|$)/)
      expect(xml.text).toMatch(/^<\?xml /)
      expect(xml.text).toContain('<title>Quarterly report</title>')
      expect(xml.text).toContain('<total>42</total>')
      expect(new XMLParser().parse(xml.text).result).toEqual(REPORT)

      const preferred = await h.client.get(path, { accept: 'application/xml;q=0.5, application/yaml' })
      expect(preferred.headers.get('content-type')).toMatch(/^application\/yaml(;|$)/)
    })

    it('answers 406 when Accept allows none of the offered types', async () => {
      const h = await start('sqlite')
      const report = await submit(h.client, '/jobs/report')
      await h.client.waitForState(report.id, 'succeeded')
      const problem = expectProblem(
        await h.client.get(`/operations/${report.id}/result`, { accept: 'text/html' }),
        406,
        'not-acceptable',
      )
      expect(problem.available).toEqual(['application/json', 'application/xml', 'application/yaml'])

      const echo = await succeeded(h)
      const jsonOnly = await h.client.get(`/operations/${echo.id}/result`, { accept: 'application/yaml' })
      expect(expectProblem(jsonOnly, 406, 'not-acceptable').available).toEqual(['application/json'])
    })

    it('answers 409 operation-not-done with Retry-After while queued or running', async () => {
      const h = await start('sqlite')
      const { blocker, op } = await queuedBehindBlocker(h, 'r-blocker', 'r-queued')
      for (const [id, state] of [
        [blocker.id, 'running'],
        [op.id, 'queued'],
      ]) {
        const res = await h.client.get(`/operations/${id}/result`)
        expect(expectProblem(res, 409, 'operation-not-done').state).toBe(state)
        expect(res.headers.get('retry-after')).toMatch(POSITIVE_INTEGER)
      }
    })

    it('answers 409 operation-failed carrying the error when failed', async () => {
      const h = await start('sqlite')
      const op = await failed(h, 'result-failed')
      const res = await h.client.get(`/operations/${op.id}/result`)
      const problem = expectProblem(res, 409, 'operation-failed')
      expect(problem.state).toBe('failed')
      expect(problem.error).toEqual({
        type: 'urn:longrun:problem:handler-error',
        code: 'handler-error',
        title: 'Error',
        detail: 'boom result-failed #1',
      })
      expect(res.headers.get('retry-after')).toBeNull()
    })

    it('answers 409 operation-canceled when canceled', async () => {
      const h = await start('sqlite')
      const op = await canceled(h, 'result-canceled')
      const problem = expectProblem(await h.client.get(`/operations/${op.id}/result`), 409, 'operation-canceled')
      expect(problem.state).toBe('canceled')
      expect(problem.error).toMatchObject({ type: 'urn:longrun:problem:canceled', code: 'canceled' })
    })
  })

  describe('GET error', () => {
    it('answers 200 with the error, without its stack, when failed', async () => {
      const h = await start('sqlite')
      const op = await failed(h, 'err')
      const body = expectJson(await h.client.get(`/operations/${op.id}/error`), 200)
      expect(body).toEqual({
        id: op.id,
        state: 'failed',
        attempt: 1,
        error: {
          type: 'urn:longrun:problem:handler-error',
          code: 'handler-error',
          title: 'Error',
          detail: 'boom err #1',
        },
      })
      expect(op.error.stack).toBeUndefined()
    })

    it('includes the stack with exposeStack: true', async () => {
      const h = await start('sqlite', { exposeStack: true })
      const op = await failed(h, 'stacked')
      expect(op.error.stack).toContain('boom stacked #1')
      const body = expectJson(await h.client.get(`/operations/${op.id}/error`), 200)
      expect(body.error).toMatchObject({ code: 'handler-error', detail: 'boom stacked #1' })
      expect(body.error.stack).toContain('boom stacked #1')
      const result = expectProblem(await h.client.get(`/operations/${op.id}/result`), 409, 'operation-failed')
      expect(result.error.stack).toContain('boom stacked #1')
    })

    it('answers 404 no-error when the operation did not fail', async () => {
      const h = await start('sqlite')
      const ok = await succeeded(h)
      const run = await running(h, 'no-error-running')
      const stopped = await canceled(h, 'no-error-canceled')
      for (const [id, state] of [
        [ok.id, 'succeeded'],
        [run.id, 'running'],
        [stopped.id, 'canceled'],
      ]) {
        expect(expectProblem(await h.client.get(`/operations/${id}/error`), 404, 'no-error').state).toBe(state)
      }
    })
  })

  describe('POST cancel', () => {
    it('asks a running operation to stop; it then ends canceled', async () => {
      const h = await start('sqlite')
      const op = await running(h, 'cancel-me')
      const body = expectJson(await h.client.post(`/operations/${op.id}/cancel`), 200)
      expect(body).toMatchObject({ id: op.id, cancelRequested: true })
      expect(['running', 'canceled']).toContain(body.state)
      const ended = await h.client.waitForState(op.id, 'canceled')
      expect(ended).toMatchObject({ done: true, cancelRequested: true, error: { code: 'canceled' } })
      expect(ended.completedAt).toMatch(ISO_UTC)
    })

    it('cancels a queued operation at once, and its handler never runs', async () => {
      const h = await start('sqlite')
      const { blocker, op } = await queuedBehindBlocker(h, 'c-blocker', 'c-queued')
      const res = await h.client.post(`/operations/${op.id}/cancel`)
      expect(expectJson(res, 200)).toMatchObject({ id: op.id, state: 'canceled', done: true, cancelRequested: true })
      expect(res.headers.get('retry-after')).toBeNull()
      h.gates.open('c-blocker')
      await h.client.waitForState(blocker.id, 'succeeded')
      expect((await h.client.get(`/operations/${op.id}`)).body.state).toBe('canceled')
      expect(h.gates.started.has('c-queued')).toBe(false)
    })

    it('is idempotent', async () => {
      const h = await start('sqlite')
      const op = await running(h, 'twice')
      for (let i = 0; i < 2; i++) {
        expect(expectJson(await h.client.post(`/operations/${op.id}/cancel`), 200).cancelRequested).toBe(true)
      }
      await h.client.waitForState(op.id, 'canceled')
      expect(expectJson(await h.client.post(`/operations/${op.id}/cancel`), 200).state).toBe('canceled')
    })

    it('answers 409 operation-not-cancelable for a non-cancelable route', async () => {
      const h = await start('sqlite')
      const op = await running(h, 'stubborn', '/jobs/stubborn')
      expect(op.cancelable).toBe(false)
      expectProblem(await h.client.post(`/operations/${op.id}/cancel`), 409, 'operation-not-cancelable')
      const after = expectJson(await h.client.get(`/operations/${op.id}`), 200)
      expect(after).toMatchObject({ state: 'running', cancelRequested: false })
      h.gates.open('stubborn')
      await h.client.waitForState(op.id, 'succeeded')
    })

    it('answers 409 operation-finished for a succeeded or failed operation, and changes nothing', async () => {
      const h = await start('sqlite')
      for (const op of [await succeeded(h), await failed(h, 'cancel-failed')]) {
        const problem = expectProblem(await h.client.post(`/operations/${op.id}/cancel`), 409, 'operation-finished')
        expect(problem.state).toBe(op.state)
        expect(expectJson(await h.client.get(`/operations/${op.id}`), 200)).toEqual(op)
      }
    })
  })

  describe('POST retry', () => {
    it('re-queues a failed operation, which runs again', async () => {
      const h = await start('sqlite')
      const op = await failed(h, 'retry-failed', 1)
      const res = await h.client.post(`/operations/${op.id}/retry`)
      const body = expectJson(res, 202)
      expect(res.headers.get('location')).toBe(`/operations/${op.id}`)
      expect(res.headers.get('retry-after')).toMatch(POSITIVE_INTEGER)
      expectResource(body, 'flaky')
      expect(body).toMatchObject({ id: op.id, state: 'queued', done: false, completedAt: null, expiresAt: null })
      expect(body.error).toBeUndefined()
      const done = await h.client.waitForState(op.id, 'succeeded')
      expect(done).toMatchObject({ attempt: 2, result: { key: 'retry-failed', calls: 2 } })
      expect(h.calls.get('retry-failed')).toBe(2)
    })

    it('re-queues a canceled operation, which runs again', async () => {
      const h = await start('sqlite')
      const op = await canceled(h, 'retry-canceled')
      const res = await h.client.post(`/operations/${op.id}/retry`)
      expect(expectJson(res, 202)).toMatchObject({ id: op.id, state: 'queued', cancelRequested: false })
      expect(res.headers.get('location')).toBe(`/operations/${op.id}`)
      await until(() => h.gates.started.get('retry-canceled') === 2, 15_000, { what: 'second start' })
      h.gates.open('retry-canceled')
      const done = await h.client.waitForState(op.id, 'succeeded')
      expect(done.result).toEqual({ key: 'retry-canceled', attempt: 2 })
    })

    it('answers 409 operation-not-retryable for a running, queued or succeeded operation', async () => {
      const h = await start('sqlite')
      const { blocker, op } = await queuedBehindBlocker(h, 'nr-blocker', 'nr-queued')
      const ok = await succeeded(h)
      for (const [id, state] of [
        [blocker.id, 'running'],
        [op.id, 'queued'],
        [ok.id, 'succeeded'],
      ]) {
        const problem = expectProblem(await h.client.post(`/operations/${id}/retry`), 409, 'operation-not-retryable')
        expect(problem.state).toBe(state)
      }
      expect(expectJson(await h.client.get(`/operations/${blocker.id}`), 200)).toMatchObject({
        state: 'running',
        attempt: 1,
      })
    })
  })

  describe('DELETE', () => {
    it('removes a finished operation and its result', async () => {
      const h = await start('sqlite')
      const ok = await succeeded(h)
      const bad = await failed(h, 'delete-failed')
      for (const op of [ok, bad]) {
        const res = await h.client.delete(`/operations/${op.id}`)
        expect(res.status).toBe(204)
        expect(res.text).toBe('')
        expectProblem(await h.client.get(`/operations/${op.id}`), 404, 'operation-not-found')
        expectProblem(await h.client.get(`/operations/${op.id}/result`), 404, 'operation-not-found')
        expectProblem(await h.client.delete(`/operations/${op.id}`), 404, 'operation-not-found')
      }
      expect((await h.client.stats()).total).toBe(0)
    })

    it('answers 409 operation-not-finished while running or queued', async () => {
      const h = await start('sqlite')
      const { blocker, op } = await queuedBehindBlocker(h, 'd-blocker', 'd-queued')
      for (const [id, state] of [
        [blocker.id, 'running'],
        [op.id, 'queued'],
      ]) {
        expect(expectProblem(await h.client.delete(`/operations/${id}`), 409, 'operation-not-finished').state).toBe(
          state,
        )
        expect(expectJson(await h.client.get(`/operations/${id}`), 200).state).toBe(state)
      }
    })
  })

  describe('list', () => {
    it('lists newest first', async () => {
      const h = await start('sqlite')
      const ids: string[] = []
      for (let i = 0; i < 5; i++) ids.push((await submit(h.client, '/jobs/echo', { i })).id)
      const res = await h.client.get('/operations')
      const body = expectJson(res, 200)
      expect(body.items.map((o: Json) => o.id)).toEqual([...ids].reverse())
      expect(body.nextCursor).toBeNull()
      for (const item of body.items) expectResource(item, 'echo')
    })

    it('filters by state (one, a comma list, or repeated) and by name', async () => {
      const h = await start('sqlite')
      const ok1 = await succeeded(h)
      const ok2 = await succeeded(h)
      const bad = await failed(h, 'list-failed')
      const run = await running(h, 'list-running')
      const ids = async (query: string) =>
        expectJson(await h.client.get(`/operations?${query}`), 200).items.map((o: Json) => o.id)

      expect(await ids('state=succeeded')).toEqual([ok2.id, ok1.id])
      expect(await ids('state=failed,running')).toEqual([run.id, bad.id])
      expect(await ids('state=failed&state=running')).toEqual([run.id, bad.id])
      expect(await ids('state=queued')).toEqual([])
      expect(await ids('name=echo')).toEqual([ok2.id, ok1.id])
      expect(await ids('name=flaky&state=failed')).toEqual([bad.id])
      expect(await ids('name=flaky&state=succeeded')).toEqual([])
      expect(await ids('name=nothing-by-this-name')).toEqual([])
    })

    it('pages with limit and cursor, visiting every operation exactly once', async () => {
      const h = await start('sqlite')
      const ids: string[] = []
      for (let i = 0; i < 7; i++) ids.push((await submit(h.client, '/jobs/echo', { i })).id)
      const seen: string[] = []
      const sizes: number[] = []
      let cursor: string | null = null
      do {
        const query: string = cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`
        const body = expectJson(await h.client.get(`/operations?limit=3${query}`), 200)
        sizes.push(body.items.length)
        seen.push(...body.items.map((o: Json) => o.id))
        cursor = body.nextCursor
      } while (cursor !== null && seen.length <= ids.length)
      expect(sizes).toEqual([3, 3, 1])
      expect(seen).toEqual([...ids].reverse())
      expect(new Set(seen).size).toBe(ids.length)

      // A cursor works with a filter too.
      const first = expectJson(await h.client.get('/operations?limit=2&name=echo&state=queued,running,succeeded'), 200)
      expect(first.items).toHaveLength(2)
      const rest = expectJson(await h.client.get(`/operations?limit=100&name=echo&cursor=${first.nextCursor}`), 200)
      expect([...first.items, ...rest.items].map((o: Json) => o.id)).toEqual([...ids].reverse())
      expect(rest.nextCursor).toBeNull()
    })

    it('caps the page size at 100 and defaults to 20', async () => {
      const h = await start('sqlite')
      for (let batch = 0; batch < 101; batch += 25) {
        const size = Math.min(25, 101 - batch)
        await Promise.all(Array.from({ length: size }, (_, i) => submit(h.client, '/jobs/echo', { i: batch + i })))
      }
      expect((await h.client.stats()).total).toBe(101)

      const capped = expectJson(await h.client.get('/operations?limit=1000'), 200)
      expect(capped.items).toHaveLength(100)
      expect(typeof capped.nextCursor).toBe('string')
      const last = expectJson(await h.client.get(`/operations?limit=1000&cursor=${capped.nextCursor}`), 200)
      expect(last.items).toHaveLength(1)
      expect(last.nextCursor).toBeNull()
      expect(new Set([...capped.items, ...last.items].map((o: Json) => o.id)).size).toBe(101)

      expect(expectJson(await h.client.get('/operations'), 200).items).toHaveLength(20)
      expect(expectJson(await h.client.get('/operations?limit=100'), 200).items).toHaveLength(100)
    })

    it.each([
      ['limit', 'limit=abc'],
      ['limit', 'limit=0'],
      ['limit', 'limit=-1'],
      ['limit', 'limit=1.5'],
      ['limit', 'limit=1e3'],
      ['limit', 'limit='],
      ['limit', 'limit=1&limit=2'],
      ['state', 'state=finished'],
      ['state', 'state=running,bogus'],
      ['state', 'state=RUNNING'],
      ['state', 'state='],
      ['cursor', 'cursor=!!!'],
      ['cursor', 'cursor=abc'],
      ['cursor', `cursor=${'x'.repeat(201)}`],
      ['cursor', 'cursor='],
      ['name', 'name=a&name=b'],
    ])('answers 400 invalid-query for a bad %s (%s)', async (parameter, query) => {
      const h = await start('sqlite')
      await succeeded(h)
      const problem = expectProblem(await h.client.get(`/operations?${query}`), 400, 'invalid-query')
      expect(problem.parameter).toBe(parameter)
    })
  })

  describe('stats', () => {
    it('counts operations by state and by name', async () => {
      const h = await start('sqlite')
      const empty = await h.client.stats()
      expect(empty).toEqual({ ...counts({}), byName: {} })

      await succeeded(h)
      await succeeded(h)
      await failed(h, 'stats-failed')
      await running(h, 'stats-running')
      const { op } = await queuedBehindBlocker(h, 'stats-blocker', 'stats-queued')
      expect(await h.client.stats()).toEqual({
        ...counts({ succeeded: 2, failed: 1, running: 2, queued: 1 }),
        byName: {
          echo: counts({ succeeded: 2 }),
          flaky: counts({ failed: 1 }),
          gated: counts({ running: 1 }),
          serial: counts({ running: 1, queued: 1 }),
        },
      })

      expectJson(await h.client.post(`/operations/${op.id}/cancel`), 200)
      const after = await h.client.stats()
      expect(after).toMatchObject({ ...counts({ succeeded: 2, failed: 1, running: 2, canceled: 1 }) })
      expect(after.byName.serial).toEqual(counts({ running: 1, canceled: 1 }))
    })
  })

  describe('bad input', () => {
    const JSON_TYPE = { 'content-type': 'application/json' }
    const cases: [
      string,
      string,
      { raw?: string; json?: unknown; headers?: Record<string, string> },
      number,
      string,
    ][] = [
      ['malformed JSON', '/jobs/typed', { raw: '{"n": 1,', headers: JSON_TYPE }, 400, 'malformed-json'],
      ['malformed JSON (no schema)', '/jobs/echo', { raw: '{oops}', headers: JSON_TYPE }, 400, 'malformed-json'],
      ['an empty JSON body', '/jobs/typed', { raw: '', headers: JSON_TYPE }, 400, 'malformed-json'],
      ['an empty JSON body (no schema)', '/jobs/echo', { raw: '', headers: JSON_TYPE }, 400, 'malformed-json'],
      ['a body failing the schema', '/jobs/typed', { json: { n: 0, label: '' } }, 422, 'invalid-body'],
      ['a body missing required fields', '/jobs/typed', { json: {} }, 422, 'invalid-body'],
      ['a body of the wrong type', '/jobs/typed', { json: { n: 'many', label: 'x' } }, 422, 'invalid-body'],
      ['a JSON array for an object schema', '/jobs/typed', { json: [1, 2] }, 422, 'invalid-body'],
      [
        'a form body',
        '/jobs/typed',
        { raw: 'n=1', headers: { 'content-type': 'application/x-www-form-urlencoded' } },
        415,
        'unsupported-media-type',
      ],
      [
        'a CSV body',
        '/jobs/echo',
        { raw: 'a,b', headers: { 'content-type': 'text/csv' } },
        415,
        'unsupported-media-type',
      ],
      [
        'a text/plain body',
        '/jobs/echo',
        { raw: 'hello', headers: { 'content-type': 'text/plain' } },
        415,
        'unsupported-media-type',
      ],
      [
        'a body over 1 MiB',
        '/jobs/echo',
        { raw: JSON.stringify({ pad: 'x'.repeat(1_048_576) }), headers: JSON_TYPE },
        413,
        'body-too-large',
      ],
      [
        'a body over 1 MiB (schema route)',
        '/jobs/typed',
        { raw: JSON.stringify({ n: 1, label: 'x'.repeat(1_048_576) }), headers: JSON_TYPE },
        413,
        'body-too-large',
      ],
    ]

    it.each(cases)('answers %s with a problem and stores nothing', async (_what, path, options, status, code) => {
      const h = await start('sqlite')
      const before = await h.client.stats()
      const res = await h.client.request('POST', path, options)
      const problem = expectProblem(res, status, code)
      if (code === 'invalid-body') {
        expect(Array.isArray(problem.errors)).toBe(true)
        expect(problem.errors.length).toBeGreaterThan(0)
        for (const error of problem.errors) {
          expect(typeof error.path).toBe('string')
          expect(typeof error.message).toBe('string')
        }
      }
      expect(res.headers.get('location')).toBeNull()
      expect(await h.client.stats()).toEqual(before)
      expect(expectJson(await h.client.get('/operations'), 200).items).toEqual([])
    })

    it('answers the same 404 bytes for every unknown id, on every operation route', async () => {
      const h = await start('sqlite')
      await succeeded(h)
      const before = await h.client.stats()
      const routes = (id: string): [string, string][] => [
        ['GET', `/operations/${id}`],
        ['GET', `/operations/${id}/result`],
        ['GET', `/operations/${id}/error`],
        ['POST', `/operations/${id}/cancel`],
        ['POST', `/operations/${id}/retry`],
        ['DELETE', `/operations/${id}`],
      ]
      const bodies = new Set<string>()
      for (const id of ['01900000-0000-7000-8000-000000000000', 'no-such-operation']) {
        for (const [method, path] of routes(id)) {
          const res = await h.client.request(method, path)
          bodies.add(withoutInstance(expectProblem(res, 404, 'operation-not-found'), path))
        }
      }
      expect(bodies.size).toBe(1)
      const [body] = bodies
      expect(body).not.toContain('no-such-operation')
      expect(await h.client.stats()).toEqual(before)
    })

    it.each([
      ['a NUL byte', '%00bad'],
      ['300 characters', 'a'.repeat(300)],
      ['129 characters', 'b'.repeat(129)],
      ['a space', 'bad%20id'],
      ['a leading dash', '-bad'],
      ['a quote', '%22bad%22'],
    ])('answers a malformed id (%s) with the very 404 of an unknown id', async (_what, id) => {
      const h = await start('sqlite')
      const unknownPath = '/operations/01900000-0000-7000-8000-000000000000'
      const unknown = withoutInstance(
        expectProblem(await h.client.get(unknownPath), 404, 'operation-not-found'),
        unknownPath,
      )
      for (const [method, path] of [
        ['GET', `/operations/${id}`],
        ['GET', `/operations/${id}/result`],
        ['GET', `/operations/${id}/error`],
        ['POST', `/operations/${id}/cancel`],
        ['POST', `/operations/${id}/retry`],
        ['DELETE', `/operations/${id}`],
      ] as const) {
        const res = await h.client.request(method, path)
        expect(withoutInstance(expectProblem(res, 404, 'operation-not-found'), path)).toBe(unknown)
      }
      expect((await h.client.stats()).total).toBe(0)
    })

    it.each([
      ['GET', '/operations/some-id/nope'],
      ['GET', '/operations/some-id/result/extra'],
      ['POST', '/operations/some-id/status'],
      ['GET', `/operations/${'c'.repeat(300)}/nope`],
    ])('answers %s %s with a 404 route-not-found problem', async (method, path) => {
      const h = await start('sqlite')
      const problem = expectProblem(await h.client.request(method, path), 404, 'route-not-found')
      expect(problem.detail).toContain(method)
      expect(problem.instance).toBe(path)
      expect((await h.client.stats()).total).toBe(0)
    })

    it.each([
      ['POST', '/operations/some-id', 'DELETE, GET, HEAD, OPTIONS'],
      ['PUT', '/operations/some-id', 'DELETE, GET, HEAD, OPTIONS'],
      ['PATCH', '/operations/some-id/cancel', 'OPTIONS, POST'],
      ['GET', '/operations/some-id/cancel', 'OPTIONS, POST'],
      ['HEAD', '/operations/some-id/retry', 'OPTIONS, POST'],
      ['DELETE', '/operations/some-id/result', 'GET, HEAD, OPTIONS'],
      ['GET', `/operations/${'c'.repeat(300)}/cancel`, 'OPTIONS, POST'],
      ['PUT', '/operations', 'GET, HEAD, OPTIONS'],
      ['PUT', '/operations/stats', 'DELETE, GET, HEAD, OPTIONS'],
      ['PATCH', '/operations/retry', 'DELETE, GET, HEAD, OPTIONS, POST'],
      ['PURGE', '/operations/some-id', 'DELETE, GET, HEAD, OPTIONS'],
    ])('answers %s %s with 405 method-not-allowed and Allow', async (method, path, allow) => {
      const h = await start('sqlite')
      const res = await rawRequest(h.client.base, method, path)
      expect([res.status, sortedList(res.headers.allow)]).toEqual([405, allow])
      if (method !== 'HEAD') {
        expect(res.headers['content-type']).toMatch(/^application\/problem\+json/)
        expect(JSON.parse(res.body)).toMatchObject({ code: 'method-not-allowed', status: 405, instance: path })
      }
      expect((await h.client.stats()).total).toBe(0)
    })

    it('answers a plain OPTIONS on an operations URL with 204 and Allow, and on other URLs 404', async () => {
      const h = await start('sqlite')
      const res = await rawRequest(h.client.base, 'OPTIONS', '/operations/some-id/result')
      expect([res.status, sortedList(res.headers.allow)]).toEqual([204, 'GET, HEAD, OPTIONS'])
      const unknown = await rawRequest(h.client.base, 'OPTIONS', '/operations/some-id/nope')
      expect([unknown.status, JSON.parse(unknown.body).code]).toEqual([404, 'route-not-found'])
    })

    it('refuses to cancel a finished operation or retry a running one, changing nothing', async () => {
      const h = await start('sqlite')
      const ok = await succeeded(h)
      const run = await running(h, 'bad-control')
      const before = await h.client.stats()
      expectProblem(await h.client.post(`/operations/${ok.id}/cancel`), 409, 'operation-finished')
      expectProblem(await h.client.post(`/operations/${run.id}/retry`), 409, 'operation-not-retryable')
      expect(await h.client.stats()).toEqual(before)
      expect(expectJson(await h.client.get(`/operations/${ok.id}`), 200)).toEqual(ok)
      expect(expectJson(await h.client.get(`/operations/${run.id}`), 200)).toMatchObject({
        state: 'running',
        attempt: 1,
        cancelRequested: false,
      })
    })
  })
})

describe('operations API over HTTP, memory store', () => {
  coreHappyPath('memory')
})

describe('the demo app', () => {
  const dirs: { remove: () => void }[] = []
  let app: FastifyInstance | undefined
  afterEach(async () => {
    await app?.close()
    app = undefined
    for (const dir of dirs.splice(0)) dir.remove()
  })

  it('serves its index and runs its four seed tasks to success', async () => {
    const dir = tempDir('longrun-demo-')
    dirs.push(dir)
    app = await buildDemoApp({
      store: `sqlite:${join(dir.path, 'demo.db')}`,
      logLevel: 'silent',
      lease: 500,
      poll: 20,
      grace: 200,
    })
    const client = new Client(await listen(app))

    const index = expectJson(await client.get('/'), 200)
    expect(index.name).toBe('longrun demo')
    expect(Object.keys(index.tasks)).toEqual(expect.arrayContaining(['sample', 'fileProcessing', 'apiCall', 'batch']))

    // The seed's example bodies, with shorter waits.
    const tasks: [string, unknown, (result: Json) => void][] = [
      [
        'sample',
        { delayMs: 40, description: 'My first async task' },
        (r) => expect(r).toEqual({ message: 'Sample task completed', description: 'My first async task', delayMs: 40 }),
      ],
      [
        'file-processing',
        { filePath: '/path/to/file.txt', fileSize: 1024, description: 'Processing my document' },
        (r) => expect(r).toEqual({ filePath: '/path/to/file.txt', bytesProcessed: 1024, lines: 13 }),
      ],
      [
        'api-call',
        { endpoint: 'https://api.example.com/data', data: { key: 'value' }, description: 'Fetching external data' },
        (r) =>
          expect(r).toEqual({
            endpoint: 'https://api.example.com/data',
            status: 200,
            simulated: true,
            echo: { key: 'value' },
          }),
      ],
      [
        'batch',
        { items: ['item1', 'item2'], description: 'Processing multiple items' },
        (r) => expect(r).toEqual({ processed: 2, items: ['item1', 'item2'] }),
      ],
    ]
    const submitted = []
    for (const [task, body, check] of tasks) {
      const op = await submit(client, `/api/v1/demo/tasks/${task}`, body)
      expect(op.name).toBe(`demo.${task}`)
      submitted.push({ id: op.id as string, check })
    }
    for (const { id, check } of submitted) {
      const done = await client.waitForState(id, 'succeeded')
      expect(done.progress).toMatchObject({ percent: 100, step: 'Completed' })
      check(done.result)
      check(expectJson(await client.get(`/operations/${id}/result`), 200))
    }
    expect(await client.stats()).toMatchObject({ total: 4, succeeded: 4 })
  })

  it('fails the sample task on request, and answers bad input and unknown routes with problems', async () => {
    const dir = tempDir('longrun-demo-')
    dirs.push(dir)
    app = await buildDemoApp({ store: `sqlite:${join(dir.path, 'demo.db')}`, logLevel: 'silent', poll: 20 })
    const client = new Client(await listen(app))

    const op = await submit(client, '/api/v1/demo/tasks/sample', { delayMs: 0, fail: true })
    const failedOp = await client.waitForState(op.id, 'failed')
    expect(failedOp.error).toMatchObject({ code: 'handler-error', detail: 'The sample task was asked to fail' })

    const invalid: HttpResponse = await client.post('/api/v1/demo/tasks/batch', { items: [] })
    expectProblem(invalid, 422, 'invalid-body')
    expectProblem(await client.post('/api/v1/demo/tasks/nope', {}), 404, 'route-not-found')
    expectProblem(await client.get('/operations/%E0%A4%A'), 400, 'bad-url')
    expectProblem(await client.post('/api/v1/demo/tasks/%zz', {}), 400, 'bad-url')
    expect((await client.stats()).total).toBe(1)
  })
})
