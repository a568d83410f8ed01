import { join } from 'node:path'
import Fastify, { type FastifyInstance } from 'fastify'
import { LongrunError } from 'longrun'
import { longrun } from 'longrun/fastify'
import { memoryStore } from 'longrun/memory'
import { sqliteStore } from 'longrun/sqlite'
import { afterEach, describe, expect, it } from 'vitest'
import { Client, listen, tempDir } from './helpers/http.js'

// The plugin as a Fastify citizen, over real sockets: routes land in the context they are declared
// in, URLs are right under any prefix, and several APIs live in one app.

const apps: FastifyInstance[] = []
const dirs: { remove(): void }[] = []
afterEach(async () => {
  for (const app of apps.splice(0)) await app.close()
  for (const dir of dirs.splice(0)) dir.remove()
})

async function serve(app: FastifyInstance): Promise<Client> {
  apps.push(app)
  return new Client(await listen(app))
}

describe('encapsulation', () => {
  it("serves a route declared in a child context under its prefix, behind the child's hooks", async () => {
    const app = Fastify()
    await app.register(longrun, { store: memoryStore(), poll: 20 })
    await app.register(
      async (v1) => {
        // An async check that ends the chain: what an app's own authorization looks like.
        v1.decorateRequest('tenant', 'acme')
        // Reads v1's request decorator: it is there only on a request of v1's context.
        v1.addHook('preHandler', async (request, reply) => {
          const tenant = (request as { tenant?: string }).tenant
          if (request.headers['x-deny'] === 'yes' || tenant !== 'acme') return reply.code(403).send({ denied: true })
        })
        v1.longrun.route({ url: '/jobs', name: 'job', handler: async (op) => ({ got: op.input }) })
      },
      { prefix: '/v1' },
    )
    const client = await serve(app)
    const accepted = await client.post('/v1/jobs', { n: 1 })
    expect(accepted.status).toBe(202)
    const done = await client.waitForState(accepted.body.id, 'succeeded')
    expect(done.result).toEqual({ got: { n: 1 } })
    // Not at the root: this app has Fastify's own 404.
    expect((await client.post('/jobs', { n: 1 })).status).toBe(404)
    const denied = await client.post('/v1/jobs', { n: 2 }, { 'x-deny': 'yes' })
    expect(denied.status).toBe(403)
    expect(denied.body).toEqual({ denied: true })
    // The hook stopped the chain before anything was stored.
    expect((await client.get('/operations')).body.items).toHaveLength(1)
  })

  it('points Location and links at the operations API under the prefix the plugin is registered in', async () => {
    const app = Fastify()
    await app.register(
      async (v2) => {
        await v2.register(longrun, { store: memoryStore(), poll: 20 })
        v2.longrun.route({ url: '/jobs', name: 'job', handler: async () => 'done' })
      },
      { prefix: '/v2' },
    )
    const client = await serve(app)
    const accepted = await client.post('/v2/jobs', {})
    expect(accepted.status).toBe(202)
    const location = accepted.headers.get('location')!
    expect(location).toBe(`/v2/operations/${accepted.body.id}`)
    expect(accepted.body.links.self).toBe(location)
    const op = await client.get(location)
    expect(op.status).toBe(200)
    expect(op.body.links.result).toBe(`${location}/result`)
    expect((await client.get(`/operations/${accepted.body.id}`)).status).toBe(404)
  })
})

describe('several APIs in one app', () => {
  it('serves two flows, each in a context of its own, on one shared store', async () => {
    const dir = tempDir('longrun-fastify-')
    dirs.push(dir)
    const store = sqliteStore({ path: join(dir.path, 'ops.db') })
    const app = Fastify()
    for (const flow of ['billing', 'reports']) {
      await app.register(async (api) => {
        await api.register(longrun, { store, basePath: `/${flow}/operations`, poll: 20 })
        api.longrun.route({ url: `/${flow}/jobs`, name: flow, handler: async () => flow })
      })
    }
    const client = await serve(app)
    for (const flow of ['billing', 'reports']) {
      const accepted = await client.post(`/${flow}/jobs`, {})
      expect(accepted.status).toBe(202)
      expect(accepted.headers.get('location')).toBe(`/${flow}/operations/${accepted.body.id}`)
      const op = await client.waitFor(
        accepted.body.id,
        (body) => body.state === 'succeeded',
        'succeeded',
        `/${flow}/operations`,
      )
      expect(op.result).toBe(flow)
    }
  })

  it('refuses a second registration in the same context with a clear error', async () => {
    const app = Fastify()
    apps.push(app)
    await app.register(longrun, { store: memoryStore() })
    const err = await app.register(longrun, { store: memoryStore() }).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(err).toBeInstanceOf(LongrunError)
    expect((err as Error).message).toMatch(/already registered in this context/)
  })
})
