import { join } from 'node:path'
import { XMLParser } from 'fast-xml-parser'
import Fastify, { type FastifyInstance } from 'fastify'
import { OperationFailure, type Store } from 'longrun'
import { longrun, type LongrunPluginOptions } from 'longrun/fastify'
import { memoryStore } from 'longrun/memory'
import { sqliteStore } from 'longrun/sqlite'
import { afterEach, describe, expect, it } from 'vitest'
import { parse as parseYaml } from 'yaml'
import { Client, expectProblem, Gates, listen, tempDir, type Json } from './helpers/http.js'

// Your API, your shape (docs/custom-routes.md): every endpoint in JSON, XML or YAML, actions of the
// operations API at the app's own URLs with the id where the app wants it, bodies and state names
// of the app's own, hooks before the queue, public error details and operations started later.

const apps: FastifyInstance[] = []
const dirs: { remove(): void }[] = []
afterEach(async () => {
  for (const app of apps.splice(0)) await app.close()
  for (const dir of dirs.splice(0)) dir.remove()
})

const ALL_FORMATS = ['application/json', 'application/xml', 'application/yaml'] as const

async function serve(
  setup: (app: FastifyInstance) => void | Promise<void>,
  options: Partial<LongrunPluginOptions> = {},
  store: Store = memoryStore(),
): Promise<Client> {
  const app = Fastify()
  apps.push(app)
  await app.register(longrun, { store, poll: 20, ...options })
  await setup(app)
  return new Client(await listen(app))
}

function sqlite(): Store {
  const dir = tempDir('longrun-custom-')
  dirs.push(dir)
  return sqliteStore({ path: join(dir.path, 'ops.db') })
}

const xml = new XMLParser()

describe('formats everywhere', () => {
  it('answers every operations endpoint in JSON, XML or YAML by Accept, the same data each time', async () => {
    const gates = new Gates()
    const client = await serve(
      (app) => {
        app.longrun.route({ url: '/jobs', name: 'job', handler: async (op) => ({ n: (op.input as Json).n }) })
        app.longrun.route({
          url: '/held',
          name: 'held',
          handler: async (op) => gates.wait(op.id, op.signal),
        })
        app.longrun.route({
          url: '/failing',
          name: 'failing',
          handler: async () => {
            throw new Error('no')
          },
        })
      },
      { formats: [...ALL_FORMATS], adminRole: 'admin' },
    )
    const done = (await client.post('/jobs', { n: 1 })).body
    await client.waitForState(done.id, 'succeeded')
    const failed = (await client.post('/failing', {})).body
    await client.waitForState(failed.id, 'failed')
    const running = (await client.post('/held', {})).body
    await client.waitForState(running.id, 'running')

    const reads: [string, string, unknown?][] = [
      ['GET', `/operations/${done.id}`],
      ['GET', `/operations/${done.id}/wait?timeout=1`],
      ['GET', `/operations/${failed.id}/error`],
      ['GET', `/operations/${done.id}/deliveries`],
      ['GET', '/operations?limit=5'],
      ['GET', '/operations/stats'],
      ['POST', '/operations/query', { name: { op: 'eq', value: 'job' } }],
      ['GET', '/operations/cleanup'],
    ]
    for (const [method, path, body] of reads) {
      const as = async (accept: string) =>
        client.request(method, path, { headers: { accept }, ...(body === undefined ? {} : { json: body }) })
      const json = await as('application/json')
      expect(json.status, `${method} ${path}`).toBe(200)
      expect(json.headers.get('content-type')).toBe('application/json; charset=utf-8')
      const yaml = await as('application/yaml')
      expect(yaml.headers.get('content-type')).toBe('application/yaml; charset=utf-8')
      expect(yaml.headers.get('vary')).toMatch(/accept/i)
      expect(parseYaml(yaml.text), `${path} as YAML`).toEqual(json.body)
      const asXml = await as('application/xml')
      expect(asXml.headers.get('content-type')).toBe('application/xml; charset=utf-8')
      expect(asXml.text).toMatch(/^<\?xml version="1.0" encoding="UTF-8"\?><[a-z]+>/)
      expect(Object.keys(xml.parse(asXml.text))).toHaveLength(2)
    }
    const status = xml.parse((await client.get(`/operations/${done.id}`, { accept: 'application/xml' })).text)
    expect(status.operation).toMatchObject({ id: done.id, state: 'succeeded', result: { n: 1 } })

    // Changes answer in the asked format too.
    const canceled = await client.request('POST', `/operations/${running.id}/cancel`, {
      headers: { accept: 'application/yaml' },
    })
    expect(canceled.status).toBe(200)
    expect(parseYaml(canceled.text)).toMatchObject({ id: running.id, cancelRequested: true })
    const submitted = await client.request('POST', '/jobs', { json: { n: 2 }, headers: { accept: 'application/xml' } })
    expect(submitted.status).toBe(202)
    expect(xml.parse(submitted.text).operation).toMatchObject({ name: 'job' })
  })

  it('answers problems as application/problem+xml when XML is asked for, JSON otherwise', async () => {
    const client = await serve(() => {}, { formats: [...ALL_FORMATS] })
    const asXml = await client.get('/operations/nope', { accept: 'application/problem+xml' })
    expect(asXml.status).toBe(404)
    expect(asXml.headers.get('content-type')).toBe('application/problem+xml; charset=utf-8')
    const parsed = xml.parse(asXml.text)
    expect(parsed.problem).toMatchObject({ type: 'urn:longrun:problem:operation-not-found', status: 404 })
    expect(asXml.text).toContain('<problem xmlns="urn:ietf:rfc:7807">')
    // A client that takes XML reads why there is none in XML; any other gets JSON.
    const plainXml = await client.get('/operations/nope', { accept: 'application/xml' })
    expect(plainXml.headers.get('content-type')).toMatch(/^application\/problem\+xml/)
    expectProblem(await client.get('/operations/nope', { accept: 'application/yaml' }), 404, 'operation-not-found')
    expectProblem(await client.get('/operations/nope'), 404, 'operation-not-found')
  })

  it('answers 406 when Accept allows none of the offered formats, but never after storing a change', async () => {
    const client = await serve((app) => {
      app.longrun.route({ url: '/jobs', name: 'job', handler: (op) => new Gates().wait(op.id, op.signal) })
    })
    expectProblem(await client.get('/operations', { accept: 'application/yaml' }), 406, 'not-acceptable')
    // The operation is stored before its answer: the answer is in the first format rather than a 406.
    const submitted = await client.request('POST', '/jobs', { json: {}, headers: { accept: 'application/pdf' } })
    expect(submitted.status).toBe(202)
    expect(submitted.headers.get('content-type')).toBe('application/json; charset=utf-8')
    const canceled = await client.request('POST', `/operations/${submitted.body.id}/cancel`, {
      headers: { accept: 'application/pdf' },
    })
    expect(canceled.status).toBe(200)
    expect(canceled.body.cancelRequested).toBe(true)
    expect(canceled.headers.get('content-type')).toBe('application/json; charset=utf-8')
  })
})

describe('operation routes at your own paths', () => {
  async function mounted(options: Partial<LongrunPluginOptions> = {}) {
    const gates = new Gates()
    const client = await serve((app) => {
      app.longrun.route({ url: '/jobs', name: 'job', handler: (op) => gates.wait(op.id, op.signal) })
      app.longrun.operationRoute({ action: 'status', url: '/task/:taskId', id: { in: 'path', name: 'taskId' } })
      app.longrun.operationRoute({ action: 'status', url: '/task', id: { in: 'query', name: 'taskId' } })
      app.longrun.operationRoute({ action: 'status', url: '/by-header', id: { in: 'header', name: 'X-Task-Id' } })
      app.longrun.operationRoute({ action: 'status', url: '/by-cookie', id: { in: 'cookie', name: 'taskId' } })
      app.longrun.operationRoute({
        action: 'cancel',
        method: 'DELETE',
        url: '/task',
        id: { in: 'query', name: 'taskId' },
      })
      app.longrun.operationRoute({ action: 'query', url: '/tasks/query' })
      app.longrun.operationRoute({ action: 'list', url: '/tasks' })
    }, options)
    return { client, gates }
  }

  it('serves an action with the id in the path, the query, a header or a cookie, under a name of its own', async () => {
    const { client, gates } = await mounted()
    const { id } = (await client.post('/jobs', {})).body
    const views = [
      await client.get(`/task/${id}`),
      await client.get(`/task?taskId=${id}`),
      await client.get('/by-header', { 'x-task-id': id }),
      await client.get('/by-cookie', { cookie: `theme=dark; taskId=${id}` }),
    ]
    for (const view of views) {
      expect(view.status, view.text).toBe(200)
      expect(view.body).toMatchObject({ id, name: 'job' })
    }
    // Pode's stop route: the task ends canceled.
    await client.waitForState(id, 'running')
    const stopped = await client.request('DELETE', `/task?taskId=${id}`)
    expect(stopped.status).toBe(200)
    expect(stopped.body.cancelRequested).toBe(true)
    await client.waitForState(id, 'canceled')
    const found = await client.post('/tasks/query', { state: { op: 'eq', value: 'canceled' } })
    expect(found.body.items.map((op: Json) => op.id)).toEqual([id])
    expect((await client.get('/tasks')).body.items).toHaveLength(1)
    gates.openAll()
  })

  it('answers 400 invalid-id for an id missing, given twice, or given in the wrong place', async () => {
    const { client } = await mounted()
    const { id } = (await client.post('/jobs', {})).body
    const cases: [string, Record<string, string>][] = [
      ['/task', {}],
      [`/task?taskId=${id}&taskId=${id}`, {}],
      [`/task?taskId=${id}`, { taskid: id }],
      [`/task?taskId=${id}`, { cookie: `taskId=${id}` }],
      [`/by-header?X-Task-Id=${id}`, { 'x-task-id': id }],
      ['/by-cookie', { cookie: `taskId=${id}; taskId=${id}` }],
      [`/task/${id}?taskId=${id}`, {}],
    ]
    for (const [path, headers] of cases) {
      const problem = expectProblem(await client.get(path, headers), 400, 'invalid-id')
      expect(problem.detail, path).toMatch(/operation id|given/)
    }
    // An id nobody has: the same 404 as the built-in API.
    expectProblem(await client.get('/task?taskId=unknown'), 404, 'operation-not-found')
  })

  it('keeps the permissions of the built-in API: another caller gets 404, a reader may not cancel', async () => {
    const client = await serve(
      (app) => {
        app.longrun.route({ url: '/jobs', name: 'job', handler: (op) => new Gates().wait(op.id, op.signal) })
        app.longrun.operationRoute({ action: 'status', url: '/task', id: { in: 'query', name: 'taskId' } })
        app.longrun.operationRoute({ action: 'cancel', url: '/task/stop', id: { in: 'query', name: 'taskId' } })
      },
      {
        authenticate: async (request) => {
          const user = request.headers['x-user']
          return typeof user === 'string' ? { id: user } : undefined
        },
      },
    )
    const { id } = (await client.post('/jobs', {}, { 'x-user': 'ann' })).body
    expect((await client.get(`/task?taskId=${id}`, { 'x-user': 'ann' })).status).toBe(200)
    expectProblem(await client.get(`/task?taskId=${id}`, { 'x-user': 'bob' }), 404, 'operation-not-found')
    expectProblem(
      await client.post(`/task/stop?taskId=${id}`, undefined, { 'x-user': 'bob' }),
      404,
      'operation-not-found',
    )
    expectProblem(await client.get(`/task?taskId=${id}`), 401, 'unauthorized')
  })

  it('turns the built-in API off: Location and links then point at the mounts', async () => {
    const { client } = await mounted({ operationsApi: false })
    const accepted = await client.post('/jobs', {})
    expect(accepted.status).toBe(202)
    const { id } = accepted.body
    expect(accepted.headers.get('location')).toBe(`/task/${id}`)
    expect(accepted.body.links).toEqual({ self: `/task/${id}`, cancel: `/task?taskId=${id}` })
    expect((await client.get(`/task/${id}`)).status).toBe(200)
    expect((await client.get(`/operations/${id}`)).status).toBe(404)
  })

  it('refuses to start without the built-in API and without a status mount, and refuses bad mounts', async () => {
    const app = Fastify()
    apps.push(app)
    await app.register(longrun, { store: memoryStore(), operationsApi: false })
    app.longrun.route({ url: '/jobs', name: 'job', handler: () => null })
    await expect(app.ready()).rejects.toThrow(/mount the 'status' action/)
    const other = Fastify()
    apps.push(other)
    await other.register(longrun, { store: memoryStore() })
    const refused: [object, RegExp][] = [
      [{ action: 'status', url: '/task' }, /path parameter ':id'/],
      [{ action: 'status', url: '/task/:taskId', id: { in: 'query', name: 'taskId' } }, /not the path/],
      [{ action: 'list', url: '/tasks', id: { in: 'query', name: 'x' } }, /not about one operation/],
      [{ action: 'teleport', url: '/x' }, /must be one of/],
      [{ action: 'status', url: '/t', id: { in: 'body', name: 'x' } }, /'path', 'query', 'header' or 'cookie'/],
      [{ action: 'status', url: '/t/:id', colour: 'red' }, /not an option/],
      [{ action: 'status', url: '/t/:id', states: { done: 'x' } }, /not a state/],
    ]
    for (const [options, message] of refused) {
      expect(() => other.longrun.operationRoute(options as never)).toThrow(message)
    }
  })
})

describe('shapes you choose', () => {
  it("keeps the Node task system's contract: its body, its state names, its status codes", async () => {
    const gates = new Gates()
    const states = { queued: 'pending', succeeded: 'completed', canceled: 'cancelled' } as const
    const client = await serve((app) => {
      app.longrun.route({
        url: '/api/v1/tasks',
        name: 'task',
        handler: async (op) => {
          await op.progress(40, 'fetch', 'Fetching data')
          await gates.wait(op.id, op.signal)
          return { ok: true }
        },
        states,
        present: (op) => ({ success: true, task: { id: op.id, status: op.state } }),
        presentSchema: { type: 'object', properties: { success: { type: 'boolean' } } },
      })
      app.longrun.operationRoute({
        action: 'status',
        url: '/api/v1/tasks/:id/status',
        states,
        statusCodes: { failed: 500 },
        present: (op) => ({
          success: true,
          status: op.state,
          progress: op.progress.percent,
          currentStep: op.progress.step ?? null,
          currentStepDescription: op.progress.description ?? null,
          createdAt: Date.parse(op.createdAt),
        }),
      })
      app.longrun.operationRoute({
        action: 'stats',
        url: '/api/v1/tasks/stats',
        present: (stats) => ({ success: true, stats: { pending: stats.queued, running: stats.running } }),
      })
      app.longrun.operationRoute({
        action: 'list',
        url: '/api/v1/tasks',
        states,
        present: (page) => ({
          success: true,
          tasks: page.items.map((t) => ({ id: t.id, status: t.state })),
          count: page.items.length,
        }),
      })
    })
    const created = await client.post('/api/v1/tasks', { name: 'a' })
    expect(created.status).toBe(202)
    expect(created.body).toEqual({ success: true, task: { id: expect.any(String), status: 'pending' } })
    const id = created.body.task.id
    const status = await client.waitFor(id, (op) => op.state === 'running')
    expect(status.state).toBe('running')
    const shaped = await client.get(`/api/v1/tasks/${id}/status`)
    expect(shaped.status).toBe(200)
    expect(shaped.body).toEqual({
      success: true,
      status: 'running',
      progress: 40,
      currentStep: 'fetch',
      currentStepDescription: 'Fetching data',
      createdAt: expect.any(Number),
    })
    expect((await client.get('/api/v1/tasks/stats')).body).toEqual({ success: true, stats: { pending: 0, running: 1 } })
    gates.open(id)
    await client.waitForState(id, 'succeeded')
    expect((await client.get(`/api/v1/tasks/${id}/status`)).body.status).toBe('completed')
    expect((await client.get('/api/v1/tasks')).body).toEqual({
      success: true,
      tasks: [{ id, status: 'completed' }],
      count: 1,
    })
    // The built-in API keeps longrun's own shape for longrun's clients.
    expect((await client.get(`/operations/${id}`)).body.state).toBe('succeeded')
  })

  it('answers a state with the status code a presentation gives it', async () => {
    const client = await serve((app) => {
      app.longrun.route({
        url: '/data',
        name: 'data',
        handler: async () => {
          throw new Error('broken')
        },
        present: (op) => ({ RequestId: op.id, DateTime: op.createdAt }),
      })
      app.longrun.operationRoute({ action: 'status', url: '/data/:id/status', statusCodes: { failed: 500 } })
    })
    const posted = await client.post('/data', {})
    expect(posted.body).toEqual({ RequestId: expect.any(String), DateTime: expect.any(String) })
    await client.waitForState(posted.body.RequestId, 'failed')
    // A chosen 500 is the app's contract, not a server error: read it without the client's 5xx check.
    const res = await fetch(`${client.base}/data/${posted.body.RequestId}/status`)
    expect(res.status).toBe(500)
    expect(((await res.json()) as Json).state).toBe('failed')
  })
})

describe('hooks before the queue', () => {
  it('lets a hook answer and stop: nothing is stored', async () => {
    let ran = 0
    const client = await serve((app) => {
      app.longrun.route({
        url: '/jobs',
        name: 'job',
        beforeQueue: async (request, reply) => {
          if ((request.body as Json).ok !== true) return reply.code(422).send({ refused: true })
        },
        handler: () => ran++,
      })
    })
    const refused = await client.post('/jobs', { ok: false })
    expect(refused.status).toBe(422)
    expect(refused.body).toEqual({ refused: true })
    expect((await client.get('/operations')).body.items).toEqual([])
    expect((await client.post('/jobs', { ok: true })).status).toBe(202)
    expect((await client.get('/operations')).body.items).toHaveLength(1)
  })

  it('turns a thrown error into a problem, and stores nothing', async () => {
    const client = await serve((app) => {
      app.longrun.route({
        url: '/jobs',
        name: 'job',
        beforeQueue: async () => {
          throw Object.assign(new Error('Tenant suspended'), { statusCode: 403 })
        },
        handler: () => null,
      })
    })
    const res = await client.post('/jobs', {})
    expect(res.status).toBe(403)
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/)
    expect((await client.get('/operations')).body.items).toEqual([])
  })

  it('gives the handler what the hook attached, stored with the operation', async () => {
    const seen: unknown[] = []
    const client = await serve(
      (app) => {
        app.longrun.route({
          url: '/jobs/:tenant',
          name: 'job',
          beforeQueue: async (request) => ({ tenant: (request.params as Json).tenant, plan: 'gold' }),
          handler: async (op) => {
            seen.push(op.context)
            return op.context
          },
        })
      },
      {},
      sqlite(),
    )
    const { id } = (await client.post('/jobs/acme', {})).body
    const done = await client.waitForState(id, 'succeeded')
    expect(seen).toEqual([{ tenant: 'acme', plan: 'gold' }])
    expect(done.result).toEqual({ tenant: 'acme', plan: 'gold' })
  })
})

describe('error details a handler gives', () => {
  it('shows the public details of an OperationFailure, and nothing else of the error', async () => {
    const client = await serve((app) => {
      app.longrun.route({
        url: '/jobs',
        name: 'job',
        handler: async (op) => {
          const { big } = op.input as Json
          const error = new OperationFailure('Validation failed', {
            errors: big ? ['x'.repeat(10_000)] : ['name is required', 'age must be positive'],
            type: 'cannot replace the problem type',
          })
          throw Object.assign(error, { secret: 'never shown' })
        },
      })
    })
    const { id } = (await client.post('/jobs', {})).body
    await client.waitForState(id, 'failed')
    const { error } = (await client.get(`/operations/${id}/error`)).body
    expect(error).toEqual({
      type: 'urn:longrun:problem:handler-error',
      code: 'handler-error',
      title: 'OperationFailure',
      detail: 'Validation failed',
      errors: ['name is required', 'age must be positive'],
    })
    const big = (await client.post('/jobs', { big: true })).body
    await client.waitForState(big.id, 'failed')
    const capped = (await client.get(`/operations/${big.id}`)).body.error
    expect(capped.errors).toBeUndefined()
    expect(capped.detailsOmitted).toMatch(/larger than 8192 bytes/)
  })
})

describe('deferred start', () => {
  for (const [name, store] of [
    ['memory', () => memoryStore()],
    ['SQLite', sqlite],
  ] as const) {
    it(`creates the operation without queueing it, and runs it once started (${name})`, async () => {
      let runs = 0
      const client = await serve(
        (app) => {
          app.longrun.route({ url: '/tasks', name: 'task', start: 'manual', handler: () => ++runs })
          app.longrun.operationRoute({ action: 'start', url: '/tasks/:id/start' })
        },
        {},
        store(),
      )
      const created = await client.post('/tasks', {})
      expect(created.status).toBe(202)
      const { id } = created.body
      expect(created.body).toMatchObject({ state: 'queued', awaitingStart: true })
      expect(created.body.links.start).toBe(`/operations/${id}/start`)
      // Workers poll every 20 ms: give them many chances to (wrongly) claim it.
      await new Promise((resolve) => setTimeout(resolve, 300))
      expect(runs).toBe(0)
      const started = await client.post(`/tasks/${id}/start`)
      expect(started.status).toBe(202)
      expect(started.body.awaitingStart).toBeUndefined()
      const done = await client.waitForState(id, 'succeeded')
      expect(done.result).toBe(1)
      expect(done.history.map((entry: Json) => entry.event)).toEqual(['submitted', 'queued', 'started', 'succeeded'])
      // Starting again changes nothing once it ran.
      expectProblem(await client.post(`/operations/${id}/start`), 409, 'operation-started')
      expect(runs).toBe(1)
    })
  }

  it('lets an unstarted operation be canceled', async () => {
    const client = await serve((app) => {
      app.longrun.route({ url: '/tasks', name: 'task', start: 'manual', handler: () => null })
    })
    const { id } = (await client.post('/tasks', {})).body
    expect((await client.post(`/operations/${id}/cancel`)).body.state).toBe('canceled')
    expectProblem(await client.post(`/operations/${id}/start`), 409, 'operation-started')
  })
})

describe('answers of bounded size', () => {
  it('lists operations without their results, however large, and serves each result on its own', async () => {
    const megabyte = 'x'.repeat(1_048_576)
    const client = await serve(
      (app) => {
        app.longrun.route({
          url: '/big',
          name: 'big',
          handler: async (op) => {
            await op.progress(50, 's'.repeat(1_000), 'd'.repeat(5_000))
            return { blob: megabyte }
          },
        })
      },
      { formats: [...ALL_FORMATS] },
      sqlite(),
    )
    const ids: string[] = []
    for (let i = 0; i < 5; i++) ids.push((await client.post('/big', {})).body.id)
    for (const id of ids) await client.waitForState(id, 'succeeded')
    for (const page of [await client.get('/operations?limit=100'), await client.post('/operations/query', {})]) {
      expect(page.body.items).toHaveLength(5)
      expect(page.text.length).toBeLessThan(20_000)
      for (const item of page.body.items) {
        expect(item.result).toBeUndefined()
        expect(item.resourceLocation).toBe(`/operations/${item.id}/result`)
      }
    }
    const one = await client.get(`/operations/${ids[0]}/result`)
    expect(one.body.blob).toHaveLength(1_048_576)
    // The handler's over-long progress texts are cut, not stored whole.
    const { progress } = (await client.get(`/operations/${ids[0]}`)).body
    expect(progress.step).toHaveLength(200)
    expect(progress.description).toHaveLength(1_000)
  })
})
