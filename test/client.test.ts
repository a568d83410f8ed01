import { existsSync } from 'node:fs'
import { createServer } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { gzipSync } from 'node:zlib'
import { Type } from '@sinclair/typebox'
import { build } from 'esbuild'
import Fastify, { type FastifyInstance } from 'fastify'
import {
  createClient,
  NotFoundError,
  OperationCanceledError,
  OperationFailedError,
  UnauthorizedError,
  WaitTimeoutError,
  type Channel,
} from 'longrun/client'
import { apiKeyAuth, defineAsyncRoute, longrun, type LongrunPluginOptions } from 'longrun/fastify'
import { memoryStore } from 'longrun/memory'
import { chromium } from 'playwright-core'
import { afterEach, describe, expect, expectTypeOf, it } from 'vitest'
import { z } from 'zod'
import { Gates, listen } from './helpers/http.js'
import { until } from './helpers/until.js'

// The client SDK (docs/client.md) against a real Fastify server over sockets.

const Job = Type.Object({
  outcome: Type.Union([Type.Literal('succeed'), Type.Literal('fail'), Type.Literal('hang')]),
  steps: Type.Optional(Type.Integer()),
  key: Type.Optional(Type.String()),
})

const gates = new Gates()
const jobRoute = defineAsyncRoute({
  url: '/jobs',
  name: 'job',
  schema: { body: Job },
  async handler(op) {
    if (op.input.outcome === 'hang') await sleep(60_000, undefined, { signal: op.signal })
    for (let step = 1; step <= (op.input.steps ?? 0); step++) {
      if (op.input.key) await gates.wait(`${op.input.key}:${step}`, op.signal)
      else await sleep(30, undefined, { signal: op.signal })
      await op.progress((100 * step) / (op.input.steps! + 1), `Step ${step}`)
    }
    if (op.input.outcome === 'fail') throw Object.assign(new Error('The disk is full'), { code: 'ENOSPC' })
    return { steps: op.input.steps ?? 0 }
  },
})
type Routes = { '/jobs': typeof jobRoute }

const apps: FastifyInstance[] = []
afterEach(async () => {
  gates.openAll()
  for (const app of apps.splice(0)) await app.close()
})

async function start(options: Partial<LongrunPluginOptions> = {}, hook?: (app: FastifyInstance) => void) {
  const app = Fastify({ forceCloseConnections: true })
  hook?.(app)
  await app.register(longrun, { store: memoryStore(), poll: 10, retryAfter: '1s', ...options })
  app.longrun.route(jobRoute)
  apps.push(app)
  const base = await listen(app)
  return { app, base, client: createClient<Routes>({ baseUrl: base }) }
}

describe('types flow from the route definitions', () => {
  it('checks bodies and types results', () => {
    const client = createClient<Routes>({ baseUrl: 'http://x' })
    type Handle = Awaited<ReturnType<typeof client.submit<'/jobs'>>>
    expectTypeOf<Awaited<ReturnType<Handle['wait']>>>().toEqualTypeOf<{ steps: number }>()
    expectTypeOf<Parameters<typeof client.submit<'/jobs'>>[1]>().toEqualTypeOf<typeof Job.static>()
    // @ts-expect-error not a route of the app
    void (() => client.submit('/nope', {}))
    // @ts-expect-error the body does not match the route's schema
    void (() => client.submit('/jobs', { outcome: 'explode' }))
    // A Standard Schema (Zod) types the body the same way.
    const _zodRoute = defineAsyncRoute({
      url: '/zod',
      name: 'zod',
      schema: { body: z.object({ n: z.number() }) },
      handler: (op) => op.input.n * 2,
    })
    const _zodClient = createClient<{ '/zod': typeof _zodRoute }>({ baseUrl: 'http://x' })
    expectTypeOf<Parameters<typeof _zodClient.submit<'/zod'>>[1]>().toEqualTypeOf<{ n: number }>()
    type ZodHandle = Awaited<ReturnType<typeof _zodClient.submit<'/zod'>>>
    expectTypeOf<Awaited<ReturnType<ZodHandle['wait']>>>().toEqualTypeOf<number>()
    const _untyped = createClient({ baseUrl: 'http://x' })
    type Any = Awaited<ReturnType<Awaited<ReturnType<typeof _untyped.submit>>['wait']>>
    expectTypeOf<Any>().toBeUnknown()
  })
})

describe('the client', () => {
  it.each<Channel>(['wait', 'events', 'poll'])('waits for the result over %s alone', async (channel) => {
    const { base } = await start()
    const client = createClient<Routes>({ baseUrl: base, channels: [channel] })
    const op = await client.submit('/jobs', { outcome: 'succeed', steps: 2 })
    const progress: number[] = []
    expect(await op.wait({ onProgress: (p) => progress.push(p.percent) })).toEqual({ steps: 2 })
    if (channel === 'events') expect(progress.length).toBeGreaterThanOrEqual(1)
  })

  it('falls back when the server refuses a channel (404 for /wait, 429 too-many-streams)', async () => {
    const seen: string[] = []
    const { base, app } = await start({ maxStreamsPerCaller: 1 }, (app) =>
      app.addHook('onRequest', async (request, reply) => {
        seen.push(request.url.split('?')[0]!.replace(/[^/]{20,}/, ':id'))
        if (request.url.includes('/wait')) return reply.code(404).send({ message: 'no waits here' })
      }),
    )
    void app
    const client = createClient<Routes>({ baseUrl: base })
    const hold = await client.submit('/jobs', { outcome: 'hang' })
    const holder = new AbortController()
    const stream = hold.events({ signal: holder.signal })
    await stream.next() // holds the caller's only stream slot
    const op = await client.submit('/jobs', { outcome: 'succeed', steps: 1 })
    expect(await op.wait()).toEqual({ steps: 1 })
    expect(seen).toEqual(expect.arrayContaining(['/operations/:id/wait', '/operations/:id/events', '/operations/:id']))
    holder.abort()
  })

  it('attaches to the operation of a submit answered when done (Prefer: wait)', async () => {
    const answered: number[] = []
    const { client } = await start({}, (app) =>
      app.addHook('onResponse', async (request, reply) => {
        if (request.method === 'POST') answered.push(reply.statusCode)
      }),
    )
    const op = await client.submit('/jobs', { outcome: 'succeed' }, { headers: { prefer: 'wait=10' } })
    // Answered with the outcome (and Content-Location), not 202 and Location.
    expect(answered).toEqual([200])
    const listed = await client.list()
    expect(listed.items.map((item) => item.id)).toEqual([op.id])
    expect((await op.get()).state).toBe('succeeded')
    expect(await op.wait()).toEqual({ steps: 0 })
  })

  it('offers every method', async () => {
    const { client } = await start()
    const op = await client.submit('/jobs', { outcome: 'hang' })
    expect((await op.get()).state).toMatch(/queued|running/)
    expect((await client.operation(op.id).get()).id).toBe(op.id)
    expect((await op.cancel()).id).toBe(op.id)
    await expect(op.wait()).rejects.toBeInstanceOf(OperationCanceledError)
    expect((await op.retry()).state).toBe('queued')
    await op.cancel()
    await until(async () => (await op.get()).done)
    const listed = await client.list({ state: 'canceled', name: 'job', limit: 5 })
    expect(listed.items.map((o) => o.id)).toEqual([op.id])
    expect((await client.stats()).total).toBe(1)
    await op.delete()
    await expect(op.get()).rejects.toBeInstanceOf(NotFoundError)
    const failed = await client.submit('/jobs', { outcome: 'fail' })
    const error = await failed.wait().catch((err: unknown) => err)
    expect(error).toBeInstanceOf(OperationFailedError)
    expect((error as OperationFailedError).error).toMatchObject({ code: 'ENOSPC', detail: 'The disk is full' })
    await expect(client.operation('nope').result()).rejects.toBeInstanceOf(NotFoundError)
    const slow = await client.submit('/jobs', { outcome: 'hang' })
    await expect(slow.wait({ timeout: 200 })).rejects.toBeInstanceOf(WaitTimeoutError)

    const found = await client.query({
      state: { op: 'EQ', value: 'failed' },
      'input.outcome': { op: 'like', value: 'f*' },
    })
    expect(found.items.map((o) => o.id)).toEqual([failed.id])
    const oldest = await client.query({ name: { op: 'eq', value: 'job' } }, { sort: 'oldest', limit: 1 })
    expect(oldest.items.map((o) => o.id)).toEqual([failed.id])
    expect(oldest.nextCursor).toEqual(expect.any(String))
    await expect(client.query({ nope: { op: 'eq', value: 1 } })).rejects.toMatchObject({ code: 'invalid-condition' })
  })

  it('resumes a dropped event stream with no gap and no duplicate', async () => {
    const { app, client } = await start()
    const op = await client.submit('/jobs', { outcome: 'succeed', steps: 3, key: 'drop' })
    const ids: string[] = []
    const reading = (async () => {
      for await (const event of op.events({ lastEventId: '0' })) ids.push(String(event.event.seq))
    })()
    gates.open('drop:1')
    await until(() => ids.length >= 3, 5_000)
    app.server.closeAllConnections()
    gates.open('drop:2')
    gates.open('drop:3')
    await reading
    const all: string[] = []
    for await (const event of op.events({ lastEventId: '0' })) all.push(String(event.event.seq))
    expect(ids).toEqual(all)
    expect(all.length).toBeGreaterThanOrEqual(5)
  })

  it('retries a submit whose connection dropped after the commit, making one operation', async () => {
    let dropped = false
    const { client } = await start({}, (app) =>
      app.addHook('onSend', async (request, _reply, payload) => {
        if (!dropped && request.method === 'POST') {
          dropped = true
          request.raw.socket.destroy()
        }
        return payload
      }),
    )
    const retrying = createClient<Routes>({ baseUrl: apps[0]!.listeningOrigin, retry: { delayMs: 50 } })
    const op = await retrying.submit('/jobs', { outcome: 'succeed' })
    expect(dropped).toBe(true)
    expect(await op.wait()).toEqual({ steps: 0 })
    expect((await client.list()).items.map((o) => o.id)).toEqual([op.id])
  })

  it('rejects an aborted wait with AbortError and frees its slot', async () => {
    const { client } = await start({ maxStreamsPerCaller: 1 })
    const op = await client.submit('/jobs', { outcome: 'hang' })
    for (const channel of ['wait', 'events'] as const) {
      const controller = new AbortController()
      const waiting = createClient({ baseUrl: apps[0]!.listeningOrigin, channels: [channel] })
        .operation(op.id)
        .wait({ signal: controller.signal })
      await sleep(100)
      controller.abort()
      await expect(waiting).rejects.toMatchObject({ name: 'AbortError' })
      // The server saw the connection go: the only slot is free again.
      await until(async () => {
        const res = await fetch(`${op.url}/wait?timeout=0`)
        return res.status === 200
      })
    }
  })

  it('sends credentials from the headers function, and throws UnauthorizedError without', async () => {
    const { base } = await start({ authenticate: apiKeyAuth({ keys: { 'key-a': { id: 'alice' } } }) })
    await expect(createClient({ baseUrl: base }).list()).rejects.toBeInstanceOf(UnauthorizedError)
    const client = createClient<Routes>({ baseUrl: base, headers: async () => ({ 'x-api-key': 'key-a' }) })
    const op = await client.submit('/jobs', { outcome: 'succeed' })
    expect(await op.wait()).toEqual({ steps: 0 })
    expect((await op.get()).owner).toBe('alice')
  })

  it('bundles small, with no Node built-ins', async () => {
    const code = await bundle()
    const gzipped = gzipSync(code).length
    console.log(`client bundle: ${code.length} B minified, ${gzipped} B gzipped`)
    expect(gzipped).toBeLessThan(5_000)
  })

  // .ci/run installs Debian's chromium; elsewhere the test skips without it, but never under CI.
  const browser = existsSync('/usr/bin/chromium') || process.env.CI === 'true' ? '/usr/bin/chromium' : undefined
  it.skipIf(!browser)('submits and waits from a page on another origin in Chromium', async () => {
    const { base } = await start({ cors: true })
    const code = await bundle()
    const page = createServer((req, res) =>
      req.url === '/client.js'
        ? res.writeHead(200, { 'content-type': 'text/javascript' }).end(code)
        : res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><title>app</title>'),
    )
    await new Promise<void>((resolve) => page.listen(0, '127.0.0.1', resolve))
    const origin = `http://localhost:${(page.address() as { port: number }).port}`
    const chrome = await chromium.launch({
      executablePath: browser!,
      args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
    })
    try {
      const tab = await chrome.newPage()
      await tab.goto(origin)
      // A string, not a function: vitest would rewrite a function's dynamic import.
      const seen = await tab.evaluate(`(async () => {
        const { createClient } = await import('${origin}/client.js')
        const client = createClient({ baseUrl: '${base}' })
        const op = await client.submit('/jobs', { outcome: 'succeed', steps: 2 })
        const progress = []
        const result = await op.wait({ onProgress: (p) => progress.push(p.percent) })
        return { result, progress: progress.length > 0 }
      })()`)
      expect(seen).toEqual({ result: { steps: 2 }, progress: true })
    } finally {
      await chrome.close()
      await new Promise((resolve) => page.close(resolve))
    }
  })
})

async function bundle(): Promise<Uint8Array> {
  const out = await build({
    entryPoints: [new URL('../src/client/index.ts', import.meta.url).pathname],
    bundle: true,
    minify: true,
    format: 'esm',
    write: false,
    platform: 'neutral',
  })
  return out.outputFiles[0]!.contents
}
