import { join } from 'node:path'
import Fastify, { type FastifyInstance } from 'fastify'
import { NonRetryableError, type Store } from 'longrun'
import { apiKeyAuth, longrun, type Principal } from 'longrun/fastify'
import { memoryStore } from 'longrun/memory'
import { postgresStore } from 'longrun/postgres'
import { sqliteStore } from 'longrun/sqlite'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Client, expectJson, expectProblem, listen, tempDir, type HttpResponse, type Json } from './helpers/http.js'
import { describePostgres, dropSchema, freshSchemaName } from './helpers/postgres.js'
import { until } from './helpers/until.js'

// Queries over a real socket (docs/query.md): the body form of `POST /operations/query`, the
// query-string form of `GET /operations` and `GET /operations/stats`, and the permission scope of
// all three, against every bundled store.

type Who = 'alice' | 'bob' | 'carol' | 'root'

/** carol owns nothing, but may read every `invoices` operation; root is the admin. */
const PRINCIPALS: Record<Who, Principal> = {
  alice: { id: 'alice' },
  bob: { id: 'bob' },
  carol: { id: 'carol', groups: ['auditors'] },
  root: { id: 'root', roles: ['admin'] },
}

interface JobInput {
  customer: string
  amount: number
  fail?: boolean
  tags?: { region?: string }
}

/** What each principal submits, in this order, one after the other. */
const SUBMISSIONS: [Who, 'invoices' | 'refunds' | 'reports', JobInput][] = [
  ['alice', 'invoices', { customer: 'acme-1', amount: 10, tags: { region: 'eu' } }],
  ['alice', 'invoices', { customer: 'ACME-2', amount: 20, fail: true }],
  ['alice', 'refunds', { customer: 'globex', amount: 5, tags: { region: 'us' } }],
  ['alice', 'reports', { customer: 'acme-3', amount: 30 }],
  ['bob', 'invoices', { customer: 'acme-bob', amount: 40 }],
  ['bob', 'reports', { customer: 'initech', amount: 50 }],
]

interface Harness {
  app: FastifyInstance
  client: Client
  /** The ids of SUBMISSIONS, in the same order. */
  ids: string[]
  /** Before the first submission. */
  startedAt: string
  as(who: Who): Caller
  close(): Promise<void>
}

class Caller {
  constructor(
    readonly client: Client,
    readonly key: string,
  ) {}

  get(path: string, headers: Record<string, string> = {}): Promise<HttpResponse> {
    return this.client.get(path, { 'x-api-key': this.key, ...headers })
  }

  post(path: string, json?: unknown): Promise<HttpResponse> {
    return this.client.request('POST', path, {
      headers: { 'x-api-key': this.key },
      ...(json === undefined ? {} : { json }),
    })
  }

  raw(path: string, raw: string, contentType: string): Promise<HttpResponse> {
    return this.client.request('POST', path, { headers: { 'x-api-key': this.key, 'content-type': contentType }, raw })
  }

  /** The ids of a page of `GET path` (200 expected). */
  async listed(path: string): Promise<string[]> {
    return ids(expectJson(await this.get(path), 200))
  }

  async queried(body: unknown, query = ''): Promise<string[]> {
    return ids(expectJson(await this.post(`/operations/query${query}`, body), 200))
  }
}

const ids = (page: Json): string[] => (page.items as Json[]).map((item) => item.id as string)

async function start(store: Store): Promise<Harness> {
  const app = Fastify()
  const keys = Object.fromEntries(Object.entries(PRINCIPALS).map(([who, principal]) => [`key-${who}`, principal]))
  await app.register(longrun, {
    store,
    authenticate: apiKeyAuth({ keys }),
    adminRole: 'admin',
    poll: 20,
  })
  for (const [name, sseGroup] of [
    ['invoices', 'billing'],
    ['refunds', 'billing'],
    ['reports', 'analytics'],
  ] as const) {
    app.longrun.route({
      url: `/jobs/${name}`,
      name,
      sseGroup,
      ...(name === 'invoices' ? { permissions: { read: { groups: ['auditors'] } } } : {}),
      async handler(op) {
        const input = op.input as JobInput
        if (input.fail) throw new NonRetryableError(`no invoice for ${input.customer}`)
        return { billed: input.amount }
      },
    })
  }
  const base = await listen(app)
  const client = new Client(base)
  const as = (who: Who) => new Caller(client, `key-${who}`)
  const startedAt = new Date(Date.now() - 1).toISOString()
  const submitted: string[] = []
  for (const [who, route, input] of SUBMISSIONS) {
    const op = expectJson(await as(who).post(`/jobs/${route}`, input), 202)
    // One at a time: each operation is created (and finishes) after the one before.
    await until(async () => {
      const res = await as('root').get(`/operations/${op.id}`)
      return res.status === 200 && res.body.done === true
    })
    submitted.push(op.id as string)
  }
  return { app, client, ids: submitted, startedAt, as, close: () => app.close() }
}

/** The ids of SUBMISSIONS at these indexes, newest first (the default order). */
const newestFirst = (h: Harness, ...indexes: number[]) => indexes.sort((a, b) => b - a).map((i) => h.ids[i]!)

function querySuite(name: string, open: () => Promise<{ store: Store; cleanup?: () => Promise<void> }>) {
  describe(`queries over HTTP (${name})`, () => {
    let h: Harness
    let cleanup: (() => Promise<void>) | undefined
    beforeAll(async () => {
      const opened = await open()
      cleanup = opened.cleanup
      h = await start(opened.store)
    })
    afterAll(async () => {
      await h?.close()
      await cleanup?.()
    })

    it('filters by the body form, AND-joined, with operators in any case', async () => {
      const alice = h.as('alice')
      // alice's acme-1, ACME-2 (ASCII letters match either case) and acme-3; never bob's acme-bob.
      expect(await alice.queried({ 'input.customer': { op: 'LIKE', value: 'acme*' } })).toEqual(newestFirst(h, 0, 1, 3))
      for (const op of ['like', 'Like', 'lIkE']) {
        expect(await alice.queried({ 'input.customer': { op, value: 'acme*' } })).toEqual(newestFirst(h, 0, 1, 3))
      }
      expect(
        await alice.queried({
          state: { op: 'EQ', value: 'succeeded' },
          createdAt: { op: 'GE', value: h.startedAt },
          'input.customer': { op: 'LIKE', value: 'acme*' },
        }),
      ).toEqual(newestFirst(h, 0, 3))
      expect(await alice.queried({ 'input.amount': { op: 'gt', value: 15 } })).toEqual(newestFirst(h, 1, 3))
      expect(await alice.queried({ 'input.amount': { op: 'le', value: 10 } })).toEqual(newestFirst(h, 0, 2))
      expect(await alice.queried({ 'error.code': { op: 'eq', value: null } })).toEqual(newestFirst(h, 0, 2, 3))
      expect(await alice.queried({ 'input.tags.region': { op: 'ne', value: 'eu' } })).toEqual(newestFirst(h, 1, 2, 3))
      expect(await alice.queried({ 'input.customer': { op: 'notlike', value: 'acme-?' } })).toEqual(newestFirst(h, 2))
      expect(await alice.queried({ createdAt: { op: 'lt', value: h.startedAt } })).toEqual([])
      // No body, or an empty object: no condition, everything alice may read.
      expect(await alice.queried(undefined)).toEqual(newestFirst(h, 0, 1, 2, 3))
      expect(await alice.queried({})).toEqual(newestFirst(h, 0, 1, 2, 3))
    })

    it('filters the list by the query-string form; field=value is eq, typed as the field', async () => {
      const alice = h.as('alice')
      expect(await alice.listed('/operations?input.customer[like]=acme*&state=succeeded')).toEqual(newestFirst(h, 0, 3))
      expect(await alice.listed('/operations?input.customer[LIKE]=acme*&state[ne]=succeeded')).toEqual(
        newestFirst(h, 1),
      )
      expect(await alice.listed(`/operations?createdAt[ge]=${encodeURIComponent(h.startedAt)}&name=invoices`)).toEqual(
        newestFirst(h, 0, 1),
      )
      // `10` is the number 10 in an input field; `"10"` in quotes would be the string.
      expect(await alice.listed('/operations?input.amount=10')).toEqual(newestFirst(h, 0))
      expect(await alice.listed('/operations?input.amount=%2210%22')).toEqual([])
      expect(await alice.listed('/operations?input.customer=globex')).toEqual(newestFirst(h, 2))
      expect(await alice.listed('/operations?attempt[ge]=1&cancelable=true&input.amount[lt]=25')).toEqual(
        newestFirst(h, 0, 1, 2),
      )
      // A field given twice is two conditions.
      expect(await alice.listed('/operations?input.amount[gt]=5&input.amount[lt]=30')).toEqual(newestFirst(h, 0, 1))
      // The plain list still answers as before.
      expect(await alice.listed('/operations?state=succeeded,failed&name=invoices')).toEqual(newestFirst(h, 0, 1))
    })

    it('refuses an unknown field, a bad operator and a value of the wrong type, naming the field', async () => {
      const alice = h.as('alice')
      const refused = async (body: unknown, field: string) => {
        const problem = expectProblem(await alice.post('/operations/query', body), 400, 'invalid-condition')
        expect(problem.field).toBe(field)
      }
      await refused({ colour: { op: 'eq', value: 'red' } }, 'colour')
      await refused({ state: { op: 'between', value: 'queued' } }, 'state')
      await refused({ state: { op: 'gt', value: 'queued' } }, 'state')
      await refused({ state: { op: 'eq', value: 'done' } }, 'state')
      await refused({ createdAt: { op: 'ge', value: 'yesterday' } }, 'createdAt')
      await refused({ attempt: { op: 'eq', value: '1' } }, 'attempt')
      await refused({ cancelable: { op: 'eq', value: 'yes' } }, 'cancelable')
      await refused({ 'input.customer': { op: 'like', value: 3 } }, 'input.customer')
      await refused({ 'input.customer': { op: 'eq', value: { nested: true } } }, 'input.customer')
      await refused({ 'input.customer': 'acme' }, 'input.customer')
      await refused({ 'input.customer': { op: 'eq' } }, 'input.customer')
      await refused({ 'input.customer': { value: 'acme' } }, 'input.customer')
      await refused({ 'input.customer': { op: 'eq', value: 'acme', and: 1 } }, 'input.customer')
      await refused([{ field: 'state', op: 'eq', value: 'queued' }], '(body)')
      await refused('state=queued', '(body)')
      const text = expectProblem(await alice.raw('/operations/query', 'state', 'text/plain'), 400, 'invalid-condition')
      expect(text.field).toBe('(body)')

      const listRefused = async (path: string, code: string, member: string, value: string) => {
        const problem = expectProblem(await alice.get(path), 400, code)
        expect(problem[member]).toBe(value)
      }
      await listRefused('/operations?colour=red', 'invalid-query', 'parameter', 'colour')
      await listRefused('/operations?colour[eq]=red', 'invalid-query', 'parameter', 'colour[eq]')
      await listRefused('/operations?createdAt[between]=1', 'invalid-condition', 'field', 'createdAt')
      await listRefused('/operations?attempt[gt]=many', 'invalid-condition', 'field', 'attempt')
      await listRefused('/operations?sort=random', 'invalid-query', 'parameter', 'sort')
      await listRefused('/operations/stats?limit=2', 'invalid-query', 'parameter', 'limit')
      await listRefused('/operations/stats?colour=red', 'invalid-query', 'parameter', 'colour')
      await listRefused('/operations/stats?createdAt[ge]=soon', 'invalid-condition', 'field', 'createdAt')
      const query = expectProblem(await alice.post('/operations/query?state=queued', {}), 400, 'invalid-query')
      expect(query.parameter).toBe('state')
    })

    it('scopes query, list and stats to what each caller may read, and counts nothing else', async () => {
      const everything = { 'input.customer': { op: 'like', value: '*' } }
      const expected: Record<Who, number[]> = {
        alice: [0, 1, 2, 3],
        bob: [4, 5],
        // Every invoice (alice's and bob's), nothing else: carol owns nothing.
        carol: [0, 1, 4],
        root: [0, 1, 2, 3, 4, 5],
      }
      for (const who of Object.keys(expected) as Who[]) {
        const caller = h.as(who)
        const mine = newestFirst(h, ...expected[who])
        expect(await caller.queried(everything), who).toEqual(mine)
        expect(await caller.listed('/operations?input.customer[like]=*'), who).toEqual(mine)
        const stats = expectJson(await caller.get('/operations/stats?input.customer[like]=*'), 200)
        expect(stats.total, who).toBe(mine.length)
      }
      // bob's acme-bob matches alice's query, but only carol and root may see it.
      expect(await h.as('alice').queried({ 'input.customer': { op: 'eq', value: 'acme-bob' } })).toEqual([])
      expect(await h.as('carol').queried({ 'input.customer': { op: 'eq', value: 'acme-bob' } })).toEqual([h.ids[4]])
      // carol may read no report: alice's acme-3 is neither listed nor counted for her.
      const carol = expectJson(await h.as('carol').get('/operations/stats?input.customer[like]=acme*'), 200)
      expect(carol).toMatchObject({ total: 3, succeeded: 2, failed: 1 })
      expect(Object.keys(carol.byName)).toEqual(['invoices'])
      const root = expectJson(await h.as('root').get('/operations/stats?input.customer[like]=acme*'), 200)
      expect(root).toMatchObject({ total: 4, succeeded: 3, failed: 1 })
      expect(root.byName.reports.total).toBe(1)
    })

    it('counts stats by the same filters, with state as a list', async () => {
      const alice = h.as('alice')
      expect(expectJson(await alice.get('/operations/stats'), 200)).toMatchObject({ total: 4, succeeded: 3, failed: 1 })
      expect(expectJson(await alice.get('/operations/stats?state=failed'), 200)).toMatchObject({ total: 1, failed: 1 })
      const billing = expectJson(await alice.get('/operations/stats?sseGroup=billing&input.amount[ge]=10'), 200)
      expect(billing).toMatchObject({ total: 2, succeeded: 1, failed: 1 })
      expect(Object.keys(billing.byName).sort()).toEqual(['invoices'])
      expect(expectJson(await alice.get('/operations/stats?name=refunds'), 200).total).toBe(1)
    })

    it('pages with cursors, newest first or oldest first', async () => {
      const root = h.as('root')
      const pages = async (path: (cursor: string | null) => Promise<HttpResponse>) => {
        const seen: string[] = []
        let cursor: string | null = null
        for (let i = 0; i < 10; i++) {
          const page = expectJson(await path(cursor), 200)
          expect(page.items.length).toBeLessThanOrEqual(2)
          seen.push(...ids(page))
          cursor = page.nextCursor
          if (cursor === null) return seen
        }
        throw new Error('more pages than operations')
      }
      const all = newestFirst(h, 0, 1, 2, 3, 4, 5)
      const query = (sort: string) => (cursor: string | null) =>
        root.post(`/operations/query?limit=2&sort=${sort}${cursor ? `&cursor=${cursor}` : ''}`, {
          createdAt: { op: 'ge', value: h.startedAt },
        })
      expect(await pages(query('newest'))).toEqual(all)
      expect(await pages(query('oldest'))).toEqual([...all].reverse())
      const list = (sort: string) => (cursor: string | null) =>
        root.get(`/operations?limit=2&sort=${sort}&attempt[ge]=1${cursor ? `&cursor=${cursor}` : ''}`)
      expect(await pages(list('newest'))).toEqual(all)
      expect(await pages(list('oldest'))).toEqual([...all].reverse())
      // Without a sort: newest first, as the list always was.
      expect(await root.listed('/operations?attempt[ge]=1')).toEqual(all)
      // A cursor goes on in the order it was made for.
      const oldest = expectJson(await root.get('/operations?limit=2&sort=oldest'), 200)
      expect(oldest.nextCursor).toEqual(expect.any(String))
      const mixed = expectProblem(
        await root.get(`/operations?limit=2&cursor=${oldest.nextCursor}`),
        400,
        'invalid-query',
      )
      expect(mixed.parameter).toBe('cursor')
      expectProblem(await root.post('/operations/query?cursor=nonsense', {}), 400, 'invalid-query')
    })

    it('takes sseGroup as a field: the routes of the group', async () => {
      const alice = h.as('alice')
      expect(await alice.listed('/operations?sseGroup=billing')).toEqual(newestFirst(h, 0, 1, 2))
      expect(await alice.listed('/operations?sseGroup[ne]=billing')).toEqual(newestFirst(h, 3))
      expect(await alice.queried({ sseGroup: { op: 'EQ', value: 'analytics' } })).toEqual(newestFirst(h, 3))
      expect(await h.as('root').queried({ sseGroup: { op: 'eq', value: 'analytics' } })).toEqual(newestFirst(h, 3, 5))
      const unknown = expectProblem(await alice.get('/operations?sseGroup=nowhere'), 400, 'invalid-condition')
      expect(unknown.field).toBe('sseGroup')
      const like = expectProblem(
        await alice.post('/operations/query', { sseGroup: { op: 'like', value: 'bill*' } }),
        400,
        'invalid-condition',
      )
      expect(like.field).toBe('sseGroup')
    })

    it('keeps the validators of the list and stats: a matching If-None-Match answers 304', async () => {
      const alice = h.as('alice')
      for (const path of ['/operations?input.customer[like]=acme*', '/operations/stats?input.amount[gt]=1']) {
        const first = await alice.get(path)
        expect(first.status).toBe(200)
        const etag = first.headers.get('etag')!
        expect(etag).toMatch(/^"/)
        const again = await alice.get(path, { 'if-none-match': etag })
        expect(again.status).toBe(304)
        expect(again.text).toBe('')
        // Another caller's answer differs, and so does its tag.
        const root = await h.as('root').get(path, { 'if-none-match': etag })
        expect(root.status).toBe(200)
      }
    })
  })
}

querySuite('memory', async () => ({ store: memoryStore() }))

querySuite('sqlite', async () => {
  const dir = tempDir('longrun-query-')
  return { store: sqliteStore({ path: join(dir.path, 'ops.db') }), cleanup: async () => dir.remove() }
})

describePostgres('postgres', (url) => {
  querySuite('postgres', async () => {
    const schema = freshSchemaName('lrq')
    return { store: postgresStore({ connectionString: url, schema, max: 4 }), cleanup: () => dropSchema(url, schema) }
  })
})

describe('queries on a store that cannot filter', () => {
  let app: FastifyInstance
  let base: string
  /** fetch without the helper's check that nothing answers 5xx: 501 is the answer here. */
  const request = async (method: string, path: string, json?: unknown): Promise<HttpResponse> => {
    const response = await fetch(base + path, {
      method,
      ...(json === undefined ? {} : { body: JSON.stringify(json), headers: { 'content-type': 'application/json' } }),
    })
    const text = await response.text()
    return { status: response.status, headers: response.headers, text, body: JSON.parse(text) }
  }
  beforeAll(async () => {
    const store = memoryStore()
    // The same store without its Queryable capability.
    const plain = new Proxy(store, {
      get(target, prop) {
        if (prop === 'query' || prop === 'queryStats') return undefined
        const value: unknown = Reflect.get(target, prop, target)
        return typeof value === 'function' ? value.bind(target) : value
      },
    })
    app = Fastify()
    await app.register(longrun, { store: plain })
    base = await listen(app)
  })
  afterAll(() => app.close())

  it('answers 501 not-supported for conditions, and the plain list as before', async () => {
    const problem = expectProblem(await request('POST', '/operations/query', {}), 501, 'not-supported')
    expect(problem.detail).toMatch(/Queryable/)
    expectProblem(await request('GET', '/operations?input.a=1'), 501, 'not-supported')
    expectProblem(await request('GET', '/operations/stats?name=x'), 501, 'not-supported')
    expect(expectJson(await request('GET', '/operations?state=queued&limit=5'), 200)).toEqual({
      items: [],
      nextCursor: null,
    })
    expect(expectJson(await request('GET', '/operations/stats?state=queued'), 200).total).toBe(0)
  })
})
