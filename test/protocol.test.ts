import Fastify from 'fastify'
import { afterEach, describe, expect, it } from 'vitest'
import { Engine } from '../src/core/engine.js'
import { LongrunError } from '../src/core/errors.js'
import { longrun } from '../src/http/adapters/fastify/index.js'
import { resolveProtocolOptions } from '../src/http/options.js'
import { methodNotAllowed, routeNotFound, toProblem, withInstance } from '../src/http/problem.js'
import { OperationsProtocol, type HttpReply } from '../src/http/protocol.js'
import type { AnyAsyncRoute } from '../src/http/route.js'
import { allowedMethods, matchOperationRoute } from '../src/http/routes.js'
import { assertJsonBody } from '../src/http/submit.js'
import { memoryStore } from '../src/stores/memory/index.js'
import { until } from './helpers/until.js'

// One table of protocol cases, run without sockets against the neutral protocol (with the few lines
// of glue any adapter writes) and against each adapter: an adapter passes when it answers alike.

interface Answer {
  status: number
  headers: Record<string, string>
  body: unknown
}

interface Subject {
  send(method: string, url: string, body?: unknown, headers?: Record<string, string>): Promise<Answer>
  /** Lets the gated handler finish. */
  release(): void
  close(): Promise<void>
}

function gatedRoute(): { route: AnyAsyncRoute; release: () => void } {
  let release!: () => void
  const gate = new Promise<void>((resolve) => (release = resolve))
  const route: AnyAsyncRoute = {
    url: '/reports',
    name: 'report',
    handler: async () => {
      await gate
      return { total: 42 }
    },
  }
  return { route, release }
}

const parsed = (reply: HttpReply): Answer => ({
  status: reply.status,
  headers: reply.headers,
  body: typeof reply.body === 'string' ? JSON.parse(reply.body) : reply.body,
})

/** The neutral protocol behind the glue an adapter writes: authenticate, route, call, answer. */
async function neutral(): Promise<Subject> {
  const engine = new Engine({ store: memoryStore(), poll: 20 })
  const protocol = new OperationsProtocol(engine, resolveProtocolOptions({}))
  const { route: options, release } = gatedRoute()
  const route = protocol.addRoute(options)
  engine.start()
  return {
    async send(method, url, body, sent = {}) {
      const headers = Object.fromEntries(Object.entries(sent).map(([k, v]) => [k.toLowerCase(), v]))
      const [path = '', search] = url.split('?')
      try {
        const access = protocol.accessFor(await protocol.authenticate({ method, url, headers, ip: '127.0.0.1' }))
        if (method === route.method && path === route.url) {
          assertJsonBody(headers['content-type'])
          const values = (name: string) => (headers[name] === undefined ? [] : [headers[name]!])
          const parts = { method, path, body, params: {}, query: {}, headers, headerValues: values }
          return parsed(await protocol.submit(access, route, parts))
        }
        const { basePath } = protocol.options
        const match = path.startsWith(basePath) ? matchOperationRoute(method, path.slice(basePath.length)) : undefined
        if (!match) {
          const allowed = path.startsWith(basePath) ? allowedMethods(path.slice(basePath.length)) : []
          if (allowed.length > 0) throw methodNotAllowed(method, [...allowed, 'OPTIONS'])
          return { status: 404, headers: {}, body: routeNotFound(method, path) }
        }
        const query = Object.fromEntries(new URLSearchParams(search))
        return parsed(
          await protocol.answer(match.route.name, access, { id: match.id, query, body, headers, ip: '127.0.0.1' }),
        )
      } catch (err) {
        const problem = withInstance(toProblem(err), path)
        return { status: problem.status, headers: err instanceof LongrunError ? err.headers : {}, body: problem }
      }
    },
    release,
    close: () => engine.close(),
  }
}

/** The Fastify adapter through `inject`, which needs no socket either. */
async function fastify(): Promise<Subject> {
  const app = Fastify()
  await app.register(longrun, { store: memoryStore(), poll: 20 })
  const { route, release } = gatedRoute()
  app.longrun.route(route)
  await app.ready()
  return {
    async send(method, url, body, headers = {}) {
      const res = await app.inject({
        method: method as 'GET',
        url,
        headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
        ...(body === undefined ? {} : { payload: JSON.stringify(body) }),
      })
      const type = String(res.headers['content-type'] ?? '')
      return {
        status: res.statusCode,
        headers: res.headers as Record<string, string>,
        body: /json/.test(type) ? res.json() : res.body,
      }
    },
    release,
    close: () => app.close(),
  }
}

describe.each([
  ['the neutral protocol', neutral],
  ['the Fastify adapter', fastify],
])('protocol cases on %s', (_name, open) => {
  let subject: Subject
  afterEach(async () => subject.close())

  it('accepts, reports, refuses the result until done, then serves it', async () => {
    subject = await open()
    const accepted = await subject.send('POST', '/reports', { month: '2026-11' })
    expect(accepted.status).toBe(202)
    expect(accepted.headers['retry-after']).toBe('1')
    const location = accepted.headers.location!
    expect(location).toMatch(/^\/operations\/[\w.~-]+$/)
    expect(accepted.headers['idempotency-key-recommended']).toBe('true')

    expect((await subject.send('GET', location)).body).toMatchObject({ name: 'report', done: false })
    const early = await subject.send('GET', `${location}/result`)
    expect([early.status, (early.body as { code: string }).code]).toEqual([409, 'operation-not-done'])

    subject.release()
    await until(async () => ((await subject.send('GET', location)).body as { done: boolean }).done)
    const result = await subject.send('GET', `${location}/result`)
    expect([result.status, result.body]).toEqual([200, { total: 42 }])
    const canceled = await subject.send('POST', `${location}/cancel`)
    expect([canceled.status, (canceled.body as { code: string }).code]).toEqual([409, 'operation-finished'])
    expect((await subject.send('DELETE', location)).status).toBe(204)
    const gone = await subject.send('GET', location)
    expect([gone.status, (gone.body as { code: string }).code]).toEqual([404, 'operation-not-found'])
  })

  it('answers lists, stats, unknown ids and bad input with the same problems', async () => {
    subject = await open()
    const key = { 'Idempotency-Key': 'k-1' }
    const first = await subject.send('POST', '/reports', {}, key)
    const again = await subject.send('POST', '/reports', {}, key)
    expect([again.status, again.headers.location, again.headers['idempotent-replayed']]).toEqual([
      202,
      first.headers.location,
      'true',
    ])
    const mismatch = await subject.send('POST', '/reports', { other: true }, key)
    expect([mismatch.status, (mismatch.body as { code: string }).code]).toEqual([422, 'idempotency-key-mismatch'])

    const list = await subject.send('GET', '/operations?limit=1')
    expect(list.status).toBe(200)
    expect((list.body as { items: unknown[] }).items).toHaveLength(1)
    expect(((await subject.send('GET', '/operations/stats')).body as { total: number }).total).toBe(1)

    const cases: [string, string, number, string][] = [
      ['GET', '/operations/no-such-id', 404, 'operation-not-found'],
      ['GET', '/operations/no-such-id/result', 404, 'operation-not-found'],
      ['GET', '/operations?state=lost', 400, 'invalid-query'],
      ['GET', '/operations?cursor=forged', 400, 'invalid-query'],
      ['GET', '/operations/x/unknown-action', 404, 'route-not-found'],
      ['GET', '/operations/x/cancel', 405, 'method-not-allowed'],
      ['PUT', '/operations/x', 405, 'method-not-allowed'],
    ]
    for (const [method, url, status, code] of cases) {
      const answer = await subject.send(method, url)
      const body = answer.body as { code: string; instance: string }
      expect([url, answer.status, body.code, body.instance]).toEqual([url, status, code, url.split('?')[0]])
    }
    expect((await subject.send('GET', '/operations/x/cancel')).headers.allow).toBe('POST, OPTIONS')
    const text = await subject.send('POST', '/reports', 'hello', { 'content-type': 'text/plain' })
    expect([text.status, (text.body as { code: string }).code]).toEqual([415, 'unsupported-media-type'])
    subject.release()
  })
})
