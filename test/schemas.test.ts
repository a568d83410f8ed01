import Fastify, { type FastifyInstance } from 'fastify'
import { LongrunError } from 'longrun'
import { longrun, type LongrunPluginOptions } from 'longrun/fastify'
import { memoryStore } from 'longrun/memory'
import T1 from 'typebox'
import { afterEach, describe, expect, it } from 'vitest'
import { z } from 'zod'
import { Client, expectJson, expectProblem, listen } from './helpers/http.js'

// Async routes validate the way the app writes its schemas, over real sockets: the app's own
// validator (its Ajv plugins, `addSchema`, `$ref`s) by default, longrun's strict one when asked,
// and Standard Schemas (Zod) with their own `validate`. Types: test/types.test.ts.

const apps: FastifyInstance[] = []
afterEach(async () => {
  for (const app of apps.splice(0)) await app.close()
})

async function serve(app: FastifyInstance): Promise<Client> {
  apps.push(app)
  return new Client(await listen(app))
}

const plugin = (options: Partial<LongrunPluginOptions> = {}): LongrunPluginOptions => ({
  store: memoryStore(),
  poll: 10,
  ...options,
})

/** An Ajv plugin, as apps pass them in Fastify's `ajv.plugins`: adds the keyword `even`. */
function evenKeyword(ajv: import('ajv').Ajv) {
  ajv.addKeyword({ keyword: 'even', type: 'number', validate: (on: boolean, value: number) => !on || value % 2 === 0 })
  return ajv
}

const Customer = {
  $id: 'Customer',
  type: 'object',
  properties: { name: { type: 'string', minLength: 1 }, seats: { type: 'integer', even: true } },
  required: ['name', 'seats'],
  additionalProperties: false,
}

async function echoApp(options: Partial<LongrunPluginOptions> = {}) {
  const app = Fastify({ ajv: { plugins: [evenKeyword] } })
  app.addSchema(Customer)
  await app.register(longrun, plugin(options))
  app.longrun.route({
    url: '/orders',
    name: 'order',
    schema: { body: { type: 'object', properties: { customer: { $ref: 'Customer#' } }, required: ['customer'] } },
    handler: async (op) => op.input,
  })
  return { app, client: await serve(app) }
}

async function total(client: Client): Promise<number> {
  return expectJson(await client.get('/operations/stats'), 200).total
}

describe("validation: 'app' (the default)", () => {
  it("validates with the app's Ajv plugins, addSchema and $refs", async () => {
    const { client } = await echoApp()
    const accepted = expectJson(await client.post('/orders', { customer: { name: 'Acme', seats: 4 } }), 202)
    expect((await client.waitForState(accepted.id, 'succeeded')).result).toEqual({
      customer: { name: 'Acme', seats: 4 },
    })
    // The app's keyword, through the app's $ref.
    const odd = expectProblem(
      await client.post('/orders', { customer: { name: 'Acme', seats: 3 } }),
      422,
      'invalid-body',
    )
    expect(odd.errors).toEqual([expect.objectContaining({ path: '/customer/seats' })])
    expectProblem(await client.post('/orders', { customer: { name: '' } }), 422, 'invalid-body')
    expect(await total(client)).toBe(1)
  })

  it("stores what the app's validator makes of the body: Fastify's default coerces and removes", async () => {
    const { client } = await echoApp()
    const op = expectJson(await client.post('/orders', { customer: { name: 'Acme', seats: '4', vip: true } }), 202)
    expect((await client.waitForState(op.id, 'succeeded')).result).toEqual({ customer: { name: 'Acme', seats: 4 } })
  })

  it("uses the schemas of the context a route is declared in, and that context's validator", async () => {
    const app = Fastify()
    await app.register(longrun, plugin())
    await app.register(
      async (v1) => {
        v1.addSchema({
          $id: 'Ticket',
          type: 'object',
          properties: { seat: { type: 'string', pattern: '^[A-F][0-9]+$' } },
        })
        v1.longrun.route({
          url: '/tickets',
          name: 'ticket',
          schema: { body: { $ref: 'Ticket#' } },
          handler: () => 'ok',
        })
      },
      { prefix: '/v1' },
    )
    const client = await serve(app)
    expectJson(await client.post('/v1/tickets', { seat: 'C12' }), 202)
    expectProblem(await client.post('/v1/tickets', { seat: 'Z1' }), 422, 'invalid-body')
  })

  it('validates TypeBox 1.x schemas, which are JSON Schemas', async () => {
    const app = Fastify()
    await app.register(longrun, plugin())
    app.longrun.route({
      url: '/tb1',
      name: 'tb1',
      schema: { body: T1.Object({ n: T1.Integer({ minimum: 1 }) }) },
      handler: async (op) => op.input,
    })
    const client = await serve(app)
    const op = expectJson(await client.post('/tb1', { n: 2 }), 202)
    expect((await client.waitForState(op.id, 'succeeded')).result).toEqual({ n: 2 })
    expectProblem(await client.post('/tb1', { n: 0 }), 422, 'invalid-body')
  })
})

describe("validation: 'strict'", () => {
  it('refuses what the app would coerce, and still resolves the context’s $refs', async () => {
    const { client } = await echoApp({ validation: 'strict' })
    expectJson(await client.post('/orders', { customer: { name: 'Acme', seats: 4 } }), 202)
    const coerced = expectProblem(
      await client.post('/orders', { customer: { name: 'Acme', seats: '4' } }),
      422,
      'invalid-body',
    )
    expect(coerced.errors).toEqual([expect.objectContaining({ path: '/customer/seats' })])
    const extra = expectProblem(
      await client.post('/orders', { customer: { name: 'Acme', seats: 4, vip: true } }),
      422,
      'invalid-body',
    )
    expect(extra.errors).toEqual([expect.objectContaining({ path: '/customer', property: 'vip' })])
    expect(await total(client)).toBe(1)
  })

  it('refuses an unknown validation mode at registration, naming the option', async () => {
    const app = Fastify()
    apps.push(app)
    const err = await app.register(longrun, plugin({ validation: 'loose' as 'app' })).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(err).toBeInstanceOf(LongrunError)
    expect((err as LongrunError).message).toMatch(/validation/)
  })
})

describe('Standard Schemas (Zod)', () => {
  async function zodApp() {
    const app = Fastify()
    await app.register(longrun, plugin())
    app.longrun.route({
      url: '/zod/:id',
      name: 'zod',
      schema: {
        body: z.object({ n: z.number().int().positive(), label: z.string().default('none') }).strict(),
        params: z.object({ id: z.coerce.number().int() }),
        querystring: z.object({ mode: z.enum(['fast', 'slow']).default('fast') }),
      },
      handler: async (op) => ({ input: op.input, params: op.params, query: op.query }),
    })
    return serve(app)
  }

  it("hands the handler the schemas' output: defaults applied, parameters coerced", async () => {
    const client = await zodApp()
    const op = expectJson(await client.post('/zod/7', { n: 3 }), 202)
    expect((await client.waitForState(op.id, 'succeeded')).result).toEqual({
      input: { n: 3, label: 'none' },
      params: { id: 7 },
      query: { mode: 'fast' },
    })
  })

  it.each([
    ['a body of the wrong type', '/zod/7', { n: 'three' }, 422, 'invalid-body', '/n'],
    ['a body with a property the schema forbids', '/zod/7', { n: 1, extra: 1 }, 422, 'invalid-body', '/'],
    ['a path parameter that is not a number', '/zod/seven', { n: 1 }, 400, 'invalid-params', '/id'],
    ['a query parameter out of its enum', '/zod/7?mode=warp', { n: 1 }, 400, 'invalid-querystring', '/mode'],
  ])('answers %s as a problem naming where, and stores nothing', async (_what, url, body, status, code, path) => {
    const client = await zodApp()
    const problem = expectProblem(await client.post(url, body), status, code)
    expect(problem.errors).toEqual([expect.objectContaining({ path, message: expect.any(String) })])
    expect(await total(client)).toBe(0)
  })
})
