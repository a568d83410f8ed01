import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Type } from '@sinclair/typebox'
import Fastify, { type FastifyInstance } from 'fastify'
import { SignJWT } from 'jose'
import { anyOf, apiKeyAuth, jwtAuth, longrun, type LongrunPluginOptions, type Permissions } from 'longrun/fastify'
import { sqliteStore } from 'longrun/sqlite'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { buildDemoApp } from '../examples/demo/app.js'
import { demoTasks } from '../examples/demo/tasks.js'
import {
  Client,
  expectJson,
  expectProblem,
  Gates,
  listen,
  tempDir,
  withoutInstance,
  type HttpResponse,
  type Json,
} from './helpers/http.js'
import { until } from './helpers/until.js'

// Identity, ownership and permissions over a real socket: a listening Fastify server, global fetch,
// the plugin on a real SQLite file, bearer JWTs signed here with `jose`.

/** 32 characters: the HS256 secret the servers verify with. */
const SECRET = 'access-test-secret-0123456789abc'
/** 32 characters too, but not the servers'. */
const OTHER_SECRET = 'another-secret-0123456789abcdefg'

type Who = 'owner' | 'admin' | 'group' | 'role' | 'scope' | 'writer' | 'other' | 'anonymous'
const WHO: readonly Who[] = ['owner', 'admin', 'group', 'role', 'scope', 'writer', 'other', 'anonymous']

/** The JWT claims of each principal (none for `anonymous`). */
const CLAIMS: Record<Exclude<Who, 'anonymous'>, Record<string, unknown> & { sub: string }> = {
  owner: { sub: 'alice' },
  admin: { sub: 'root', roles: ['admin'] },
  group: { sub: 'gina', groups: ['staff', 'auditors'] },
  role: { sub: 'oscar', roles: ['operator'] },
  scope: { sub: 'sam', scope: 'profile ops:read' },
  writer: { sub: 'wendy' },
  other: { sub: 'bob' },
}

/**
 * The `shared` route's grants; the `private` route has none. The operator is in both lists, wendy
 * in `write` only: the write grant alone must let her read too.
 */
const SHARED_PERMISSIONS: Permissions = {
  read: { groups: ['auditors'], scopes: ['ops:read'], roles: ['operator'] },
  write: { roles: ['operator'], users: ['wendy'] },
}

type Route = 'shared' | 'private'

interface JobInput {
  mode?: 'ok' | 'fail' | 'gate'
  key?: string
}

async function mint(
  claims: Record<string, unknown>,
  options: { secret?: string; issuedAt?: number; expiresAt?: number } = {},
): Promise<string> {
  const { sub, ...rest } = claims
  let jwt = new SignJWT(rest)
    .setProtectedHeader({ alg: 'HS256' })
    .setIssuedAt(options.issuedAt)
    .setExpirationTime(options.expiresAt ?? '1h')
  if (typeof sub === 'string') jwt = jwt.setSubject(sub)
  return jwt.sign(new TextEncoder().encode(options.secret ?? SECRET))
}

/** Requests on behalf of one principal: the same headers on every request. */
class Caller {
  constructor(
    readonly client: Client,
    readonly headers: Record<string, string>,
  ) {}

  request(method: string, path: string, json?: unknown): Promise<HttpResponse> {
    return this.client.request(method, path, { headers: this.headers, ...(json === undefined ? {} : { json }) })
  }

  get(path: string) {
    return this.request('GET', path)
  }

  post(path: string, json?: unknown) {
    return this.request('POST', path, json)
  }

  delete(path: string) {
    return this.request('DELETE', path)
  }
}

interface Harness {
  app: FastifyInstance
  /** Every route the app registered, as `METHOD /url` (HEAD routes, which Fastify adds for GET, left out). */
  routes: string[]
  base: string
  client: Client
  gates: Gates
  as(who: Who): Caller
  /** Submits as `who` and checks the 202. */
  submit(who: Who, route: Route, input?: JobInput): Promise<Json>
  /** The operation as the admin sees it; `undefined` once it is gone. */
  peek(id: string): Promise<Json>
  waitState(id: string, state: string): Promise<Json>
  succeeded(route: Route, who?: Who): Promise<Json>
  failed(route: Route, who?: Who): Promise<Json>
  /** A gated operation whose handler has begun waiting on `key`. */
  running(route: Route, who?: Who): Promise<{ op: Json; key: string }>
  /** Waits until no operation is queued or running. */
  settle(): Promise<void>
  close(): Promise<void>
}

const harnesses: Harness[] = []

async function closeAll() {
  for (const harness of harnesses.splice(0)) await harness.close()
}

async function start(options: Partial<LongrunPluginOptions> = {}): Promise<Harness> {
  const dir = tempDir('longrun-access-')
  const gates = new Gates()
  // fetch may open a connection it then never sends on, which Node's server.close() waits for until
  // its headers timeout (seen after the event-stream checks); the tests do not wait for that.
  const app = Fastify({ forceCloseConnections: true })
  const routes: string[] = []
  // Registered before the plugin so that it sees the plugin's routes too.
  app.addHook('onRoute', (route) => {
    for (const method of [route.method].flat()) if (method !== 'HEAD') routes.push(`${method} ${route.url}`)
  })
  await app.register(longrun, {
    store: sqliteStore({ path: join(dir.path, 'ops.db') }),
    authenticate: jwtAuth({ secret: SECRET }),
    adminRole: 'admin',
    lease: 500,
    poll: 20,
    grace: 200,
    ...options,
  })
  // Each route has a twin whose operations wait for their start action: `<name>.later`.
  for (const [name, permissions, start] of [
    ['shared', SHARED_PERMISSIONS, 'auto'],
    ['private', undefined, 'auto'],
    ['shared.later', SHARED_PERMISSIONS, 'manual'],
    ['private.later', undefined, 'manual'],
  ] as const) {
    app.longrun.route({
      url: `/jobs/${name}`,
      name,
      start,
      concurrency: 16,
      sseGroup: name,
      ...(permissions ? { permissions } : {}),
      async handler(op) {
        const input = (op.input ?? {}) as JobInput
        if (input.mode === 'fail') throw new Error(`asked to fail (attempt ${op.attempt})`)
        if (input.mode === 'gate') await gates.wait(input.key!, op.signal)
        // What the handler was told about its caller: the test compares it with the owner.
        return { user: op.user?.id ?? null, attempt: op.attempt }
      },
    })
  }
  app.longrun.route({
    url: '/jobs/typed',
    name: 'typed',
    schema: {
      body: Type.Object({ n: Type.Integer(), label: Type.String() }, { additionalProperties: false }),
    },
    handler: async (op) => ({ doubled: op.input.n * 2 }),
  })

  const base = await listen(app)
  const client = new Client(base)
  const tokens = Object.fromEntries(
    await Promise.all(Object.entries(CLAIMS).map(async ([who, claims]) => [who, await mint(claims)] as const)),
  ) as Record<string, string>
  const as = (who: Who) => new Caller(client, who === 'anonymous' ? {} : { authorization: `Bearer ${tokens[who]!}` })

  let closed = false
  const harness: Harness = {
    app,
    routes,
    base,
    client,
    gates,
    as,
    async submit(who, route, input = { mode: 'ok' }) {
      const res = await as(who).post(`/jobs/${route}`, input)
      const op = expectJson(res, 202)
      expect(res.headers.get('location')).toBe(`/operations/${op.id}`)
      return op
    },
    async peek(id) {
      const res = await as('admin').get(`/operations/${id}`)
      if (res.status === 404) return undefined
      return expectJson(res, 200)
    },
    waitState(id, state) {
      return until(
        async () => {
          const op = await harness.peek(id)
          return op?.state === state ? op : undefined
        },
        20_000,
        { what: `${id} ${state}` },
      )
    },
    async succeeded(route, who = 'owner') {
      const op = await harness.submit(who, route, { mode: 'ok' })
      return harness.waitState(op.id, 'succeeded')
    },
    async failed(route, who = 'owner') {
      const op = await harness.submit(who, route, { mode: 'fail' })
      return harness.waitState(op.id, 'failed')
    },
    async running(route, who = 'owner') {
      const key = randomUUID()
      const submitted = await harness.submit(who, route, { mode: 'gate', key })
      await until(() => gates.started.has(key), 15_000, { what: `${key} started` })
      return { op: await harness.waitState(submitted.id, 'running'), key }
    },
    async settle() {
      await until(
        async () => {
          const stats = expectJson(await as('admin').get('/operations/stats'), 200)
          return stats.queued === 0 && stats.running === 0
        },
        20_000,
        { what: 'no active operations' },
      )
    },
    async close() {
      if (closed) return
      closed = true
      gates.openAll()
      await app.close()
      dir.remove()
    },
  }
  harnesses.push(harness)
  return harness
}

/** A 401 problem with a `WWW-Authenticate` challenge; returns the challenge. */
function expectUnauthorized(res: HttpResponse): string {
  expectProblem(res, 401, 'unauthorized')
  const challenge = res.headers.get('www-authenticate')
  expect(challenge, res.text).toBeTruthy()
  return challenge!
}

// ---------------------------------------------------------------------------------------------------
// 1. The access matrix
// ---------------------------------------------------------------------------------------------------

type Endpoint =
  | 'GET {id}'
  | 'GET result'
  | 'GET error'
  | 'POST cancel'
  | 'POST retry'
  | 'DELETE'
  | 'GET list'
  | 'GET stats'
  | 'POST query'
  | 'POST retry (bulk)'
  | 'GET events'
  | 'GET wait'
  | 'GET events (group)'
  | 'GET deliveries'
  | 'POST redeliver'
  | 'POST start'

/** The route of the operations API that serves each endpoint of the matrix. */
const ENDPOINT_ROUTES: Record<Endpoint, string> = {
  'GET {id}': 'GET /operations/:id',
  'GET result': 'GET /operations/:id/result',
  'GET error': 'GET /operations/:id/error',
  'POST cancel': 'POST /operations/:id/cancel',
  'POST retry': 'POST /operations/:id/retry',
  DELETE: 'DELETE /operations/:id',
  'GET list': 'GET /operations',
  'GET stats': 'GET /operations/stats',
  'POST query': 'POST /operations/query',
  'POST retry (bulk)': 'POST /operations/retry',
  'GET events': 'GET /operations/:id/events',
  'GET wait': 'GET /operations/:id/wait',
  'GET events (group)': 'GET /operations/events',
  'GET deliveries': 'GET /operations/:id/deliveries',
  'POST redeliver': 'POST /operations/:id/deliveries/retry',
  'POST start': 'POST /operations/:id/start',
}

/**
 * What each principal gets for an operation the owner (alice) submitted:
 * - allow: served (200, 202 for a retry, 204 for a delete); the operation is listed, counted, retried in bulk;
 * - deny: 403 `forbidden`, nothing changes (in bulk: 200, but the operation is not retried);
 * - hide: 404 `operation-not-found`, nothing changes (list, stats: not shown; bulk: not retried);
 * - auth: 401 `unauthorized` with a `WWW-Authenticate` challenge.
 */
type Outcome = 'allow' | 'deny' | 'hide' | 'auth'

// prettier-ignore
const MATRIX: Record<Route, Record<Endpoint, readonly Outcome[]>> = {
  // The `shared` route grants read to group `auditors`, scope `ops:read` and role `operator`,
  // write to role `operator` and user `wendy`.
  shared: {
    //                      owner    admin    group    role     scope    writer   other   anonymous
    'GET {id}':           ['allow', 'allow', 'allow', 'allow', 'allow', 'allow', 'hide', 'auth'],
    'GET result':         ['allow', 'allow', 'allow', 'allow', 'allow', 'allow', 'hide', 'auth'],
    'GET error':          ['allow', 'allow', 'allow', 'allow', 'allow', 'allow', 'hide', 'auth'],
    'POST cancel':        ['allow', 'allow', 'deny',  'allow', 'deny',  'allow', 'hide', 'auth'],
    'POST retry':         ['allow', 'allow', 'deny',  'allow', 'deny',  'allow', 'hide', 'auth'],
    'DELETE':             ['allow', 'allow', 'deny',  'allow', 'deny',  'allow', 'hide', 'auth'],
    'GET list':           ['allow', 'allow', 'allow', 'allow', 'allow', 'allow', 'hide', 'auth'],
    'GET stats':          ['allow', 'allow', 'allow', 'allow', 'allow', 'allow', 'hide', 'auth'],
    'POST query':         ['allow', 'allow', 'allow', 'allow', 'allow', 'allow', 'hide', 'auth'],
    'POST retry (bulk)':  ['allow', 'allow', 'deny',  'allow', 'deny',  'allow', 'hide', 'auth'],
    'GET events':         ['allow', 'allow', 'allow', 'allow', 'allow', 'allow', 'hide', 'auth'],
    'GET wait':           ['allow', 'allow', 'allow', 'allow', 'allow', 'allow', 'hide', 'auth'],
    'GET events (group)': ['allow', 'allow', 'allow', 'allow', 'allow', 'allow', 'hide', 'auth'],
    'GET deliveries':     ['allow', 'allow', 'allow', 'allow', 'allow', 'allow', 'hide', 'auth'],
    'POST redeliver':     ['allow', 'allow', 'deny',  'allow', 'deny',  'allow', 'hide', 'auth'],
    'POST start':         ['allow', 'allow', 'deny',  'allow', 'deny',  'allow', 'hide', 'auth'],
  },
  // The `private` route grants nothing: only the owner and the admin reach its operations.
  private: {
    //                      owner    admin    group    role     scope    writer   other   anonymous
    'GET {id}':           ['allow', 'allow', 'hide',  'hide',  'hide',  'hide',  'hide', 'auth'],
    'GET result':         ['allow', 'allow', 'hide',  'hide',  'hide',  'hide',  'hide', 'auth'],
    'GET error':          ['allow', 'allow', 'hide',  'hide',  'hide',  'hide',  'hide', 'auth'],
    'POST cancel':        ['allow', 'allow', 'hide',  'hide',  'hide',  'hide',  'hide', 'auth'],
    'POST retry':         ['allow', 'allow', 'hide',  'hide',  'hide',  'hide',  'hide', 'auth'],
    'DELETE':             ['allow', 'allow', 'hide',  'hide',  'hide',  'hide',  'hide', 'auth'],
    'GET list':           ['allow', 'allow', 'hide',  'hide',  'hide',  'hide',  'hide', 'auth'],
    'GET stats':          ['allow', 'allow', 'hide',  'hide',  'hide',  'hide',  'hide', 'auth'],
    'POST query':         ['allow', 'allow', 'hide',  'hide',  'hide',  'hide',  'hide', 'auth'],
    'POST retry (bulk)':  ['allow', 'allow', 'hide',  'hide',  'hide',  'hide',  'hide', 'auth'],
    'GET events':         ['allow', 'allow', 'hide',  'hide',  'hide',  'hide',  'hide', 'auth'],
    'GET wait':           ['allow', 'allow', 'hide',  'hide',  'hide',  'hide',  'hide', 'auth'],
    'GET events (group)': ['allow', 'allow', 'hide',  'hide',  'hide',  'hide',  'hide', 'auth'],
    'GET deliveries':     ['allow', 'allow', 'hide',  'hide',  'hide',  'hide',  'hide', 'auth'],
    'POST redeliver':     ['allow', 'allow', 'hide',  'hide',  'hide',  'hide',  'hide', 'auth'],
    'POST start':         ['allow', 'allow', 'hide',  'hide',  'hide',  'hide',  'hide', 'auth'],
  },
}

/** The row of docs/security.md's permission table that each principal stands for, on each route. */
function documentedRow(route: Route, who: Who): string {
  if (who === 'owner' || who === 'admin') return 'owner, admin role'
  if (who === 'anonymous') return 'no principal, anonymous not allowed'
  if (route === 'shared' && (who === 'role' || who === 'writer')) return 'in `write`'
  if (route === 'shared' && (who === 'group' || who === 'scope')) return 'in `read` (and not in `write`)'
  return 'anyone else'
}

/** The endpoints of the matrix that each action named in docs/security.md's table stands for. */
const DOCUMENTED_ACTIONS: Record<string, readonly Endpoint[]> = {
  status: ['GET {id}'],
  result: ['GET result'],
  error: ['GET error'],
  history: ['GET {id}'],
  // The query is a list with conditions: the same grants.
  list: ['GET list', 'POST query'],
  query: ['POST query'],
  deliveries: ['GET deliveries'],
  redeliver: ['POST redeliver'],
  start: ['POST start'],
  stats: ['GET stats'],
  cancel: ['POST cancel'],
  retry: ['POST retry', 'POST retry (bulk)'],
  delete: ['DELETE'],
  events: ['GET events', 'GET events (group)'],
  wait: ['GET wait'],
}

const DOCUMENTED_OUTCOMES: Record<string, Outcome> = {
  yes: 'allow',
  '`403 forbidden`': 'deny',
  '`404 operation-not-found`': 'hide',
  '`401`': 'auth',
}

/** docs/security.md's permission table: each caller row, each action, its outcome. */
function documentedTable(): { row: string; action: string; outcome: string }[] {
  const doc = readFileSync(new URL('../docs/security.md', import.meta.url), 'utf8')
  const lines = doc.split('\n')
  const start = lines.findIndex((line) => /^\|\s*caller\s*\|/.test(line))
  expect(start, 'the permission table of docs/security.md').toBeGreaterThan(-1)
  const cells = (line: string) =>
    line
      .split('|')
      .slice(1, -1)
      .map((cell) => cell.trim())
  // Header cells read `read: status, result, ...`: the kind, then the actions it covers.
  const columns = cells(lines[start]!)
    .slice(1)
    .map((header) =>
      header
        .replace(/^\w+:/, '')
        .split(',')
        .map((action) => action.trim()),
    )
  const table: { row: string; action: string; outcome: string }[] = []
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith('|')) break
    const [row, ...outcomes] = cells(line)
    columns.forEach((actions, i) => {
      for (const action of actions) table.push({ row: row!, action, outcome: outcomes[i]! })
    })
  }
  return table
}

const ROWS: [Route, Endpoint, Who, Outcome][] = (['shared', 'private'] as const).flatMap((route) =>
  (Object.entries(MATRIX[route]) as [Endpoint, readonly Outcome[]][]).flatMap(([endpoint, outcomes]) =>
    WHO.map((who, i): [Route, Endpoint, Who, Outcome] => [route, endpoint, who, outcomes[i]!]),
  ),
)

/** Checks a by-id answer against the outcome; `allowed` is the status when served. */
function expectOutcome(res: HttpResponse, outcome: Outcome, allowed: number): void {
  switch (outcome) {
    case 'allow':
      expect(res.status, res.text).toBe(allowed)
      break
    case 'deny':
      expectProblem(res, 403, 'forbidden')
      break
    case 'hide':
      expectProblem(res, 404, 'operation-not-found')
      break
    case 'auth':
      expect(expectUnauthorized(res)).toMatch(/^Bearer realm="longrun"/)
      break
  }
}

type Check = (h: Harness, caller: Caller, route: Route, outcome: Outcome, who: Who) => Promise<void>

const CHECKS: Record<Endpoint, Check> = {
  async 'GET {id}'(h, caller, route, outcome) {
    const op = await h.succeeded(route)
    const res = await caller.get(`/operations/${op.id}`)
    expectOutcome(res, outcome, 200)
    if (outcome === 'allow') {
      expect(res.body).toMatchObject({ id: op.id, owner: 'alice', state: 'succeeded' })
      // The history is part of what `read` grants.
      expect(res.body.history[0]).toMatchObject({ event: 'submitted', actor: 'alice' })
    }
  },

  async 'GET result'(h, caller, route, outcome) {
    const op = await h.succeeded(route)
    const res = await caller.get(`/operations/${op.id}/result`)
    expectOutcome(res, outcome, 200)
    if (outcome === 'allow') expect(res.body).toEqual({ user: 'alice', attempt: 1 })
  },

  async 'GET error'(h, caller, route, outcome) {
    const op = await h.failed(route)
    const res = await caller.get(`/operations/${op.id}/error`)
    expectOutcome(res, outcome, 200)
    if (outcome === 'allow') {
      expect(res.body).toMatchObject({ id: op.id, state: 'failed', error: { code: 'handler-error' } })
    }
  },

  async 'POST cancel'(h, caller, route, outcome) {
    const { op, key } = await h.running(route)
    try {
      const res = await caller.post(`/operations/${op.id}/cancel`)
      expectOutcome(res, outcome, 200)
      if (outcome === 'allow') {
        expect(res.body).toMatchObject({ id: op.id, cancelRequested: true })
        await h.waitState(op.id, 'canceled')
      } else {
        expect(await h.peek(op.id)).toMatchObject({ state: 'running', cancelRequested: false })
      }
    } finally {
      h.gates.open(key)
    }
    if (outcome !== 'allow') await h.waitState(op.id, 'succeeded')
  },

  async 'POST start'(h, caller, route, outcome) {
    const res0 = await h.as('owner').post(`/jobs/${route}.later`, { mode: 'ok' })
    const op = expectJson(res0, 202)
    expect(op).toMatchObject({ state: 'queued', awaitingStart: true })
    const res = await caller.post(`/operations/${op.id}/start`)
    expectOutcome(res, outcome, 202)
    if (outcome === 'allow') return void (await h.waitState(op.id, 'succeeded'))
    expect(await h.peek(op.id)).toMatchObject({ state: 'queued', awaitingStart: true })
    // Not left queued: other checks wait for no operation to be active.
    expectJson(await h.as('owner').post(`/operations/${op.id}/cancel`), 200)
  },

  async 'POST retry'(h, caller, route, outcome) {
    const op = await h.failed(route)
    const res = await caller.post(`/operations/${op.id}/retry`)
    expectOutcome(res, outcome, 202)
    if (outcome === 'allow') {
      expect(res.body).toMatchObject({ id: op.id, state: 'queued' })
      await until(async () => {
        const after = await h.peek(op.id)
        return after.state === 'failed' && after.attempt === 2
      })
    } else {
      expect(await h.peek(op.id)).toMatchObject({ state: 'failed', attempt: 1 })
    }
  },

  async DELETE(h, caller, route, outcome) {
    const op = await h.succeeded(route)
    const res = await caller.delete(`/operations/${op.id}`)
    expectOutcome(res, outcome, 204)
    if (outcome === 'allow') {
      expect(res.text).toBe('')
      expect(await h.peek(op.id)).toBeUndefined()
      expectProblem(await h.as('owner').get(`/operations/${op.id}`), 404, 'operation-not-found')
    } else {
      expect(await h.peek(op.id)).toMatchObject({ state: 'succeeded' })
    }
  },

  async 'GET list'(h, caller, route, outcome) {
    const op = await h.succeeded(route)
    await h.settle()
    const path = `/operations?name=${route}&limit=100`
    const res = await caller.get(path)
    if (outcome === 'auth') return void expectUnauthorized(res)
    const ids = (expectJson(res, 200).items as Json[]).map((item) => item.id)
    if (outcome === 'allow') {
      expect(ids).toContain(op.id)
      // Everything the admin lists of this route (all of it alice's), newest first.
      const all = expectJson(await h.as('admin').get(path), 200).items as Json[]
      expect(ids).toEqual(all.map((item) => item.id))
    } else {
      expect(ids).toEqual([])
    }
  },

  async 'POST query'(h, caller, route, outcome) {
    const op = await h.succeeded(route)
    await h.settle()
    const path = '/operations/query?limit=100'
    const conditions = { name: { op: 'EQ', value: route } }
    const res = await caller.post(path, conditions)
    if (outcome === 'auth') return void expectUnauthorized(res)
    const ids = (expectJson(res, 200).items as Json[]).map((item) => item.id)
    if (outcome === 'allow') {
      expect(ids).toContain(op.id)
      const all = expectJson(await h.as('admin').post(path, conditions), 200).items as Json[]
      expect(ids).toEqual(all.map((item) => item.id))
    } else {
      expect(ids).toEqual([])
    }
  },

  async 'GET deliveries'(h, caller, route, outcome) {
    const op = await h.succeeded(route)
    const res = await caller.get(`/operations/${op.id}/deliveries`)
    expectOutcome(res, outcome, 200)
    // Operations of a route without a callback, in an app without endpoints, send nothing.
    if (outcome === 'allow') expect(res.body).toEqual({ items: [] })
  },

  async 'POST redeliver'(h, caller, route, outcome) {
    const op = await h.succeeded(route)
    const res = await caller.post(`/operations/${op.id}/deliveries/retry`)
    expectOutcome(res, outcome, 202)
    if (outcome === 'allow') expect(res.body).toEqual({ redelivered: 0 })
  },

  async 'GET stats'(h, caller, route, outcome, who) {
    await h.succeeded(route)
    await h.settle()
    const res = await caller.get('/operations/stats')
    if (outcome === 'auth') return void expectUnauthorized(res)
    const stats = expectJson(res, 200)
    if (outcome === 'allow') {
      const all = expectJson(await h.as('admin').get('/operations/stats'), 200)
      expect(all.byName[route].succeeded).toBeGreaterThan(0)
      expect(stats.byName[route]).toEqual(all.byName[route])
    } else {
      expect(stats.byName[route]?.total ?? 0).toBe(0)
    }
    // Readers see the granted route only; the other principals own nothing in this app.
    if (who === 'group' || who === 'role' || who === 'scope' || who === 'writer' || who === 'other') {
      expect(stats.byName.private?.total ?? 0).toBe(0)
    }
  },

  async 'GET events'(h, caller, route, outcome) {
    const op = await h.succeeded(route)
    // A finished operation's stream sends its terminal event and ends.
    const res = await caller.get(`/operations/${op.id}/events`)
    if (outcome !== 'allow') return expectOutcome(res, outcome, 200)
    expect(res.status, res.text).toBe(200)
    expect(res.headers.get('content-type')).toBe('text/event-stream; charset=utf-8')
    expect(res.text).toMatch(/\nevent: succeeded\ndata: /)
    expect(res.text).toContain(`"id":"${op.id}"`)
  },

  async 'GET wait'(h, caller, route, outcome) {
    const op = await h.succeeded(route)
    const res = await caller.get(`/operations/${op.id}/wait?timeout=0`)
    expectOutcome(res, outcome, 200)
    if (outcome === 'allow') expect(res.body).toMatchObject({ id: op.id, state: 'succeeded' })
  },

  async 'GET events (group)'(h, caller, route, outcome) {
    const controller = new AbortController()
    const res = await fetch(`${h.base}/operations/events?group=${route}`, {
      headers: caller.headers,
      signal: controller.signal,
    })
    if (outcome === 'auth') {
      controller.abort()
      return void expect(res.status).toBe(401)
    }
    expect(res.status).toBe(200)
    let text = ''
    const reading = (async () => {
      const decoder = new TextDecoder()
      for await (const chunk of res.body!) text += decoder.decode(chunk, { stream: true })
    })().catch(() => {})
    try {
      const op = await h.succeeded(route)
      // The admin's stream of the same group, opened after, shows what was there to see.
      const admin = await fetch(`${h.base}/operations/events?group=${route}`, {
        headers: { ...h.as('admin').headers, 'last-event-id': '0' },
        signal: controller.signal,
      })
      const decoder = new TextDecoder()
      let adminText = ''
      for await (const chunk of admin.body!) {
        adminText += decoder.decode(chunk, { stream: true })
        if (adminText.includes(`"id":"${op.id}"`) && adminText.includes('event: succeeded')) break
      }
      if (outcome === 'allow') {
        await until(() => text.includes(`"id":"${op.id}"`) && text.includes('event: succeeded'), 5_000)
      } else {
        await new Promise((resolve) => setTimeout(resolve, 200))
        expect(text).not.toContain(`"id":"${op.id}"`)
        expect(text).not.toContain('event:')
      }
    } finally {
      controller.abort()
      await reading
    }
  },

  async 'POST retry (bulk)'(h, caller, route, outcome) {
    const op = await h.failed(route)
    const res = await caller.post('/operations/retry', { name: route })
    if (outcome === 'auth') {
      expectUnauthorized(res)
    } else {
      const body = expectJson(res, 200)
      expect(body.retried).toBe(body.ids.length)
      if (outcome === 'allow') {
        expect(body.ids).toContain(op.id)
      } else {
        expect(body).toEqual({ retried: 0, ids: [] })
      }
    }
    if (outcome === 'allow') {
      await until(async () => {
        const after = await h.peek(op.id)
        return after.state === 'failed' && after.attempt === 2
      })
    } else {
      expect(await h.peek(op.id)).toMatchObject({ state: 'failed', attempt: 1 })
    }
    await h.settle()
  },
}

describe('access matrix: every endpoint, every principal (bearer JWTs, SQLite)', () => {
  let h: Harness
  beforeAll(async () => {
    h = await start()
  })
  afterAll(closeAll)

  it.each(ROWS)('%s route, %s by %s: %s', async (route, endpoint, who, outcome) => {
    await CHECKS[endpoint](h, h.as(who), route, outcome, who)
  })

  // A route added to the operations API without a row here would go unchecked for access.
  it('has a row for every route the operations API registers', () => {
    const api = h.routes
      .filter((route) => / \/operations(\/|$)/.test(route))
      // The catch-all answers ids too long for Fastify's router, with the same endpoints as above.
      .filter((route) => !route.endsWith(' /operations/*'))
      // The cleanup is about no operation in particular: test/cleanup.test.ts checks who may run it.
      .filter((route) => !route.endsWith(' /operations/cleanup'))
      // Liveness and readiness say nothing of any operation: any caller may ask (docs/guarantees.md).
      .filter((route) => !route.endsWith(' /operations/health') && !route.endsWith(' /operations/ready'))
      .map((route) => route.replace(/\/$/, ''))
    expect([...new Set(api)].sort()).toEqual(Object.values(ENDPOINT_ROUTES).sort())
  })

  // The matrix is the documented table made concrete: every cell of it is checked, with the outcome it promises.
  it('checks every cell of the permission table in docs/security.md, as documented', () => {
    const table = documentedTable()
    const rows = new Set(table.map((cell) => cell.row))
    expect(rows).toEqual(new Set(ROWS.map(([route, , who]) => documentedRow(route, who))))
    expect(new Set(table.map((cell) => cell.action))).toEqual(new Set(Object.keys(DOCUMENTED_ACTIONS)))
    expect(new Set(Object.values(DOCUMENTED_ACTIONS).flat())).toEqual(new Set(Object.keys(ENDPOINT_ROUTES)))
    for (const { row, action, outcome } of table) {
      expect(Object.keys(DOCUMENTED_OUTCOMES), `${row}, ${action}`).toContain(outcome)
      const checked = ROWS.filter(([route, endpoint, who]) => {
        return documentedRow(route, who) === row && DOCUMENTED_ACTIONS[action]!.includes(endpoint)
      })
      expect(checked.length, `${row}, ${action}`).toBeGreaterThan(0)
      for (const [route, endpoint, who, expected] of checked) {
        expect(expected, `${route} ${endpoint} by ${who} (${row}, ${action})`).toBe(DOCUMENTED_OUTCOMES[outcome])
      }
    }
  })

  // An outcome missing from a row would leave a principal's check undefined, and so unchecked.
  it('gives every principal an outcome in every row', () => {
    for (const route of Object.values(MATRIX)) {
      for (const outcomes of Object.values(route)) expect(outcomes).toHaveLength(WHO.length)
    }
  })
})

// ---------------------------------------------------------------------------------------------------
// 2.-8. Isolation, ownership, credentials, sessions, limits, bodies, validation
// ---------------------------------------------------------------------------------------------------

const BY_ID = (id: string): [string, string][] => [
  ['GET', `/operations/${id}`],
  ['GET', `/operations/${id}/result`],
  ['GET', `/operations/${id}/error`],
  ['POST', `/operations/${id}/cancel`],
  ['POST', `/operations/${id}/retry`],
  ['DELETE', `/operations/${id}`],
]

describe('isolation between owners', () => {
  afterEach(closeAll)

  /** Alice's operations: 2 succeeded and 2 failed `shared` ones, 1 succeeded and 1 failed `private` one. */
  async function seed(h: Harness) {
    const shared = [
      await h.succeeded('shared'),
      await h.succeeded('shared'),
      await h.failed('shared'),
      await h.failed('shared'),
    ]
    const priv = [await h.succeeded('private'), await h.failed('private')]
    return { shared, priv, all: [...shared, ...priv] }
  }

  it("gives another user the very 404 of a missing operation for the owner's operations", async () => {
    const h = await start()
    const { all } = await seed(h)
    const bob = h.as('other')
    const missing = randomUUID()
    for (const op of all) {
      for (const [[method, path], [, missingPath]] of BY_ID(op.id).map((r, i) => [r, BY_ID(missing)[i]!] as const)) {
        const mine = await bob.request(method, path)
        const none = await bob.request(method, missingPath)
        // Each names only the path it answers (`instance`), which the caller sent.
        const mineText = withoutInstance(expectProblem(mine, 404, 'operation-not-found'), path)
        expect(mineText, `${method} ${path}`).toBe(
          withoutInstance(expectProblem(none, 404, 'operation-not-found'), missingPath),
        )
        expect(mine.headers.get('content-type')).toBe(none.headers.get('content-type'))
        expect(mine.headers.get('content-length')).toBe(none.headers.get('content-length'))
        const names = (res: HttpResponse) => [...res.headers.keys()].filter((name) => name !== 'date').sort()
        expect(names(mine)).toEqual(names(none))
        expect(mineText).not.toContain(op.id)
      }
    }
    // Nothing Bob did changed anything.
    for (const op of all) expect(await h.peek(op.id)).toEqual(op)
  })

  it("never lists or counts the owner's operations for another user", async () => {
    const h = await start()
    await seed(h)
    const alice = expectJson(await h.as('owner').get('/operations/stats'), 200)
    expect(alice).toMatchObject({ total: 6, succeeded: 3, failed: 3 })
    expect(expectJson(await h.as('owner').get('/operations?limit=100'), 200).items).toHaveLength(6)

    const bob = h.as('other')
    expect(expectJson(await bob.get('/operations?limit=100'), 200)).toEqual({ items: [], nextCursor: null })
    for (const query of ['?name=shared', '?name=private', '?state=failed', '?state=succeeded,failed']) {
      expect(expectJson(await bob.get(`/operations${query}`), 200).items).toEqual([])
    }
    expect(expectJson(await bob.get('/operations/stats'), 200)).toMatchObject({ total: 0, byName: {} })

    // Bob's own operation is all Bob sees.
    const his = await h.succeeded('shared', 'other')
    expect(his.owner).toBe('bob')
    const items = expectJson(await bob.get('/operations?limit=100'), 200).items as Json[]
    expect(items.map((op) => op.id)).toEqual([his.id])
    expect(expectJson(await bob.get('/operations/stats'), 200)).toMatchObject({ total: 1, succeeded: 1 })
    // And alice does not see his.
    expect(expectJson(await h.as('owner').get('/operations/stats'), 200).total).toBe(6)
  })

  it("shows readers of the granted route the owner's operations of that route only", async () => {
    const h = await start()
    const { shared } = await seed(h)
    const sharedIds = shared.map((op) => op.id).sort()
    for (const who of ['group', 'role', 'scope', 'writer'] as const) {
      const reader = h.as(who)
      const items = expectJson(await reader.get('/operations?limit=100'), 200).items as Json[]
      expect(items.map((op) => op.id).sort(), who).toEqual(sharedIds)
      expect(items.every((op) => op.name === 'shared' && op.owner === 'alice')).toBe(true)
      expect(expectJson(await reader.get('/operations?name=private'), 200).items).toEqual([])
      const stats = expectJson(await reader.get('/operations/stats'), 200)
      expect(stats, who).toMatchObject({ total: 4, succeeded: 2, failed: 2 })
      expect(Object.keys(stats.byName)).toEqual(['shared'])
    }
  })

  it("retries none of the owner's failed operations in bulk for another user or a reader", async () => {
    const h = await start()
    const { shared, priv } = await seed(h)
    const failedShared = shared.filter((op) => op.state === 'failed').map((op) => op.id)
    const failedPrivate = priv.filter((op) => op.state === 'failed').map((op) => op.id)

    for (const who of ['other', 'group', 'scope'] as const) {
      for (const body of [{}, { name: 'shared' }, { name: 'private' }, { state: 'failed' }]) {
        const res = await h.as(who).post('/operations/retry', body)
        expect(expectJson(res, 200), `${who} ${JSON.stringify(body)}`).toEqual({ retried: 0, ids: [] })
      }
    }
    expect(expectJson(await h.as('owner').get('/operations/stats'), 200)).toMatchObject({ failed: 3, queued: 0 })

    // The operator may write `shared`: exactly alice's failed shared operations, not the private one.
    const byRole = expectJson(await h.as('role').post('/operations/retry', {}), 200)
    expect([...byRole.ids].sort()).toEqual([...failedShared].sort())
    await h.settle()
    expect(await h.peek(failedPrivate[0]!)).toMatchObject({ state: 'failed', attempt: 1 })
    // The admin may write everything.
    const byAdmin = expectJson(await h.as('admin').post('/operations/retry', { name: 'private' }), 200)
    expect(byAdmin.ids).toEqual(failedPrivate)
    await h.settle()
  })
})

describe('ownership', () => {
  afterEach(closeAll)

  it('makes the JWT subject the owner, tells the handler, and records who cancels and retries', async () => {
    const h = await start()
    const accepted = await h.submit('owner', 'private', { mode: 'ok' })
    expect(accepted.owner).toBe('alice')
    const done = await h.waitState(accepted.id, 'succeeded')
    expect(done.owner).toBe('alice')
    expect(done.result).toEqual({ user: 'alice', attempt: 1 })
    const detail = expectJson(await h.as('owner').get(`/operations/${accepted.id}`), 200)
    expect(detail.history[0]).toMatchObject({ event: 'submitted', actor: 'alice' })

    // The admin cancels alice's running operation, then retries it.
    const { op, key } = await h.running('private')
    expect(expectJson(await h.as('admin').post(`/operations/${op.id}/cancel`), 200).cancelRequested).toBe(true)
    await h.waitState(op.id, 'canceled')
    expect(expectJson(await h.as('admin').post(`/operations/${op.id}/retry`), 202).state).toBe('queued')
    h.gates.open(key)
    const rerun = await h.waitState(op.id, 'succeeded')
    // Still alice's: the handler ran for her again.
    expect(rerun.owner).toBe('alice')
    expect(rerun.result).toEqual({ user: 'alice', attempt: 2 })

    const history = expectJson(await h.as('owner').get(`/operations/${op.id}`), 200).history as Json[]
    expect(history[0]).toMatchObject({ event: 'submitted', actor: 'alice' })
    expect(history.filter((e) => e.event === 'cancel-requested')).toEqual([
      expect.objectContaining({ event: 'cancel-requested', actor: 'root' }),
    ])
    expect(history.filter((e) => e.event === 'retried')).toEqual([
      expect.objectContaining({ event: 'retried', actor: 'root' }),
    ])
    const events = history.map((e) => e.event)
    expect(events.indexOf('cancel-requested')).toBeLessThan(events.indexOf('canceled'))
    expect(events.indexOf('canceled')).toBeLessThan(events.indexOf('retried'))

    // A write grant records its holder too; the owner's own actions record the owner.
    const shared = await h.failed('shared')
    expect(expectJson(await h.as('role').post(`/operations/${shared.id}/retry`), 202).owner).toBe('alice')
    await until(async () => (await h.peek(shared.id)).attempt === 2 && (await h.peek(shared.id)).state === 'failed')
    expectJson(await h.as('owner').post(`/operations/${shared.id}/retry`), 202)
    await until(async () => (await h.peek(shared.id)).attempt === 3 && (await h.peek(shared.id)).state === 'failed')
    const retried = (expectJson(await h.as('owner').get(`/operations/${shared.id}`), 200).history as Json[]).filter(
      (e) => e.event === 'retried',
    )
    expect(retried.map((e) => e.actor)).toEqual(['oscar', 'alice'])
  })
})

describe('bad credentials', () => {
  afterEach(closeAll)

  it('answers 401 with an invalid_token or invalid_request challenge, and stores nothing', async () => {
    // 42 refused tokens by design: more than the default limit of refused credentials per address.
    const h = await start({ authFailureLimit: false })
    const now = Math.floor(Date.now() / 1000)
    const cases: [string, string, string][] = [
      ['a Basic authorization', 'Basic YWxpY2U6c2VjcmV0', 'invalid_request'],
      ['a bearer without a token', 'Bearer', 'invalid_request'],
      ['two tokens', `Bearer ${await mint({ sub: 'alice' })} extra`, 'invalid_request'],
      ['a token that is not a JWT', 'Bearer not-a-jwt', 'invalid_token'],
      [
        'a token signed with another secret',
        `Bearer ${await mint({ sub: 'alice' }, { secret: OTHER_SECRET })}`,
        'invalid_token',
      ],
      [
        'an expired token',
        `Bearer ${await mint({ sub: 'alice' }, { issuedAt: now - 7200, expiresAt: now - 3600 })}`,
        'invalid_token',
      ],
      ['a token without sub', `Bearer ${await mint({ roles: ['admin'] })}`, 'invalid_token'],
      ['a token with an empty sub', `Bearer ${await mint({ sub: '', roles: ['admin'] })}`, 'invalid_token'],
      [
        'an unsigned token',
        `Bearer ${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from(`{"sub":"root","roles":["admin"],"exp":${now + 3600}}`).toString('base64url')}.`,
        'invalid_token',
      ],
    ]
    const existing = await h.succeeded('shared')
    for (const [what, authorization, error] of cases) {
      const caller = new Caller(h.client, { authorization })
      for (const [method, path, json] of [
        ['GET', '/operations', undefined],
        ['GET', '/operations/stats', undefined],
        ['GET', `/operations/${existing.id}`, undefined],
        ['DELETE', `/operations/${existing.id}`, undefined],
        ['POST', '/operations/retry', {}],
        ['POST', '/jobs/shared', { mode: 'ok' }],
      ] as const) {
        const res = await caller.request(method, path, json)
        const challenge = expectUnauthorized(res)
        expect(challenge, `${what}: ${method} ${path}`).toContain(`error="${error}"`)
        expect(challenge).toMatch(/^Bearer realm="longrun"/)
      }
    }
    expect(expectJson(await h.as('admin').get('/operations/stats'), 200)).toMatchObject({ total: 1, succeeded: 1 })
    expect(await h.peek(existing.id)).toEqual(existing)
  })

  it('authenticates API keys: a known key is its principal, an unknown one is 401', async () => {
    const h = await start({
      authenticate: apiKeyAuth({ keys: { k1: { id: 'svc', roles: ['operator'] } } }),
    })
    const svc = new Caller(h.client, { 'x-api-key': 'k1' })
    const op = expectJson(await svc.post('/jobs/shared', { mode: 'ok' }), 202)
    expect(op.owner).toBe('svc')
    const done = await until(async () => {
      const res = expectJson(await svc.get(`/operations/${op.id}`), 200)
      return res.state === 'succeeded' ? res : undefined
    })
    expect(done.result).toEqual({ user: 'svc', attempt: 1 })
    expect(expectJson(await svc.get('/operations'), 200).items.map((o: Json) => o.id)).toEqual([op.id])

    for (const headers of [{ 'x-api-key': 'k2' }, { 'x-api-key': 'K1' }, { 'x-api-key': '' }]) {
      for (const [method, path] of [
        ['GET', '/operations'],
        ['GET', `/operations/${op.id}`],
        ['POST', '/jobs/shared'],
      ] as const) {
        const res = await new Caller(h.client, headers).request(method, path, method === 'POST' ? {} : undefined)
        expect(expectUnauthorized(res)).toBe('ApiKey header="x-api-key"')
      }
    }
    // No key at all: no principal, and anonymous callers are refused.
    expectUnauthorized(await h.client.get('/operations'))
    expect(expectJson(await svc.get('/operations/stats'), 200).total).toBe(1)
  })

  it('accepts either credential with anyOf(jwtAuth, apiKeyAuth)', async () => {
    const h = await start({
      authenticate: anyOf(jwtAuth({ secret: SECRET }), apiKeyAuth({ keys: { k1: { id: 'svc' } } })),
    })
    expect(expectJson(await new Caller(h.client, { 'x-api-key': 'k1' }).post('/jobs/private', {}), 202).owner).toBe(
      'svc',
    )
    expect(expectJson(await h.as('owner').post('/jobs/private', {}), 202).owner).toBe('alice')
    expectUnauthorized(await new Caller(h.client, { 'x-api-key': 'nope' }).get('/operations'))
    expectUnauthorized(await h.as('anonymous').get('/operations'))
  })
})

describe('the demo app', () => {
  const dirs: { remove: () => void }[] = []
  let app: FastifyInstance | undefined
  afterEach(async () => {
    await app?.close()
    app = undefined
    for (const dir of dirs.splice(0)) dir.remove()
  })

  async function demo(jwtSecret?: string): Promise<Client> {
    const dir = tempDir('longrun-access-demo-')
    dirs.push(dir)
    app = await buildDemoApp({
      store: `sqlite:${join(dir.path, 'demo.db')}`,
      logLevel: 'silent',
      poll: 20,
      ...(jwtSecret ? { jwtSecret } : {}),
    })
    return new Client(await listen(app))
  }

  it('isolates callers by X-Session-Key, and callers without one by IP', async () => {
    const client = await demo()
    const alpha = new Caller(client, { 'x-session-key': 'alpha-session' })
    const beta = new Caller(client, { 'x-session-key': 'beta-session' })
    const noKey = new Caller(client, {})
    const submitted = new Map<Caller, string[]>([
      [alpha, []],
      [beta, []],
      [noKey, []],
    ])
    for (const [caller, count] of [
      [alpha, 2],
      [beta, 3],
      [noKey, 1],
    ] as const) {
      for (let i = 0; i < count; i++) {
        const op = expectJson(await caller.post('/api/v1/demo/tasks/sample', { delayMs: 0, description: `#${i}` }), 202)
        submitted.get(caller)!.push(op.id)
      }
    }
    for (const [caller, ids] of submitted) {
      for (const id of ids) {
        await until(async () => expectJson(await caller.get(`/operations/${id}`), 200).state === 'succeeded')
      }
      const listed = (expectJson(await caller.get('/operations?limit=100'), 200).items as Json[]).map((op) => op.id)
      expect(listed.sort()).toEqual([...ids].sort())
      expect(expectJson(await caller.get('/operations/stats'), 200)).toMatchObject({
        total: ids.length,
        succeeded: ids.length,
      })
      // Every other caller's operation is missing for this one.
      for (const [other, theirs] of submitted) {
        if (other === caller) continue
        for (const id of theirs) expectProblem(await caller.get(`/operations/${id}`), 404, 'operation-not-found')
      }
    }
    // The owners are opaque hashes, never the key itself.
    const mine = expectJson(await alpha.get(`/operations/${submitted.get(alpha)![0]!}`), 200)
    expect(mine.owner).toMatch(/^session:[A-Za-z0-9_-]+$/)
    expect(mine.owner).not.toContain('alpha')
    const byIp = expectJson(await noKey.get(`/operations/${submitted.get(noKey)![0]!}`), 200)
    expect(byIp.owner).toMatch(/^ip:[A-Za-z0-9_-]+$/)
    expect(byIp.owner).not.toContain('127.0.0.1')
    // The same key is the same session.
    const again = new Caller(client, { 'x-session-key': 'alpha-session' })
    expect(expectJson(await again.get('/operations/stats'), 200).total).toBe(2)
  })

  it('in JWT mode refuses every route without a token, and accepts a task with one', async () => {
    const client = await demo(SECRET)
    const anonymous = new Caller(client, {})
    const id = randomUUID()
    const routes: [string, string, unknown][] = [
      ['GET', '/operations', undefined],
      ['GET', '/operations/stats', undefined],
      ['POST', '/operations/retry', {}],
      ...BY_ID(id).map(([method, path]): [string, string, unknown] => [method, path, undefined]),
      // Every demo task route, whatever the body.
      ...demoTasks.map((task): [string, string, unknown] => [task.method ?? 'POST', task.url, {}]),
    ]
    expect(demoTasks.length).toBeGreaterThanOrEqual(5)
    for (const [method, path, json] of routes) {
      const res = await anonymous.request(method, path, json)
      expect(expectUnauthorized(res), `${method} ${path}`).toMatch(/^Bearer realm="longrun"/)
    }
    // With a session key instead of a token: still no principal.
    expectUnauthorized(await new Caller(client, { 'x-session-key': 'k' }).post('/api/v1/demo/tasks/sample', {}))

    const alice = new Caller(client, { authorization: `Bearer ${await mint({ sub: 'alice' })}` })
    const op = expectJson(await alice.post('/api/v1/demo/tasks/sample', { delayMs: 0 }), 202)
    expect(op.owner).toBe('alice')
    await until(async () => expectJson(await alice.get(`/operations/${op.id}`), 200).state === 'succeeded')
    // The refused requests stored nothing: the demo's admin role sees one operation in all.
    const admin = new Caller(client, { authorization: `Bearer ${await mint({ sub: 'root', roles: ['admin'] })}` })
    expect(expectJson(await admin.get('/operations/stats'), 200)).toMatchObject({ total: 1, succeeded: 1 })
  })
})

describe('limits', () => {
  afterEach(closeAll)

  it('answers 429 quota-exceeded past maxActivePerOwner, per owner', async () => {
    const h = await start({ maxActivePerOwner: 2 })
    const first = await h.running('private')
    const second = await h.submit('owner', 'private', { mode: 'gate', key: 'second' }) // queued or running
    const res = await h.as('owner').post('/jobs/private', { mode: 'ok' })
    const problem = expectProblem(res, 429, 'quota-exceeded')
    expect(problem.detail).toContain('2')
    expect(res.headers.get('retry-after')).toMatch(/^[1-9]\d*$/)
    expect(res.headers.get('location')).toBeNull()
    // Another owner is not affected; neither is the owner's view of its operations.
    expectJson(await h.as('other').post('/jobs/private', { mode: 'ok' }), 202)
    expect(expectJson(await h.as('owner').get('/operations/stats'), 200)).toMatchObject({ total: 2, succeeded: 0 })

    // Once one finishes, there is room again.
    h.gates.open(first.key)
    await h.waitState(first.op.id, 'succeeded')
    expectJson(await h.as('owner').post('/jobs/private', { mode: 'ok' }), 202)
    h.gates.open('second')
    await h.waitState(second.id, 'succeeded')
    await h.settle()
  })

  it('replays an idempotent resubmission at the quota instead of refusing it', async () => {
    const h = await start({ maxActivePerOwner: 1 })
    const owner = (key: string) => new Caller(h.client, { ...h.as('owner').headers, 'idempotency-key': key })
    const input = { mode: 'gate', key: 'held' }
    const first = await owner('k-1').post('/jobs/private', input)
    const op = expectJson(first, 202)

    // The client did not see the 202 and sends the same request again: the same operation.
    const again = await owner('k-1').post('/jobs/private', input)
    expect(expectJson(again, 202).id).toBe(op.id)
    expect(again.headers.get('idempotent-replayed')).toBe('true')
    expect(again.headers.get('location')).toBe(`/operations/${op.id}`)
    // Still no room for anything new, with or without a key, and a reused key must match its request.
    expectProblem(await owner('k-2').post('/jobs/private', input), 429, 'quota-exceeded')
    expectProblem(await h.as('owner').post('/jobs/private', input), 429, 'quota-exceeded')
    expectProblem(await owner('k-1').post('/jobs/private', { mode: 'ok' }), 422, 'idempotency-key-mismatch')
    expect(expectJson(await h.as('owner').get('/operations/stats'), 200).total).toBe(1)
    h.gates.open('held')
    await h.waitState(op.id, 'succeeded')
    await h.settle()
  })

  it('holds maxActivePerOwner against a burst of concurrent submissions', async () => {
    const h = await start({ maxActivePerOwner: 2 })
    const burst = (who: Who) =>
      Promise.all(Array.from({ length: 10 }, () => h.as(who).post('/jobs/private', { mode: 'gate', key: 'burst' })))
    const [alice, bob] = await Promise.all([burst('owner'), burst('other')])
    for (const answers of [alice, bob]) {
      expect(answers.map((res) => res.status).sort()).toEqual([202, 202, 429, 429, 429, 429, 429, 429, 429, 429])
      for (const res of answers.filter((r) => r.status === 429)) expectProblem(res, 429, 'quota-exceeded')
    }
    expect(expectJson(await h.as('admin').get('/operations/stats'), 200).total).toBe(4)
    h.gates.open('burst')
    await h.settle()
  })

  it('answers 429 rate-limited to the request past rateLimit.max, per principal', async () => {
    const h = await start({ rateLimit: { max: 5, timeWindow: '1 minute' } })
    const alice = h.as('owner')
    const ids: string[] = []
    for (let i = 0; i < 3; i++) expectJson(await alice.get('/operations'), 200)
    for (let i = 0; i < 2; i++) ids.push(expectJson(await alice.post('/jobs/private', { mode: 'ok' }), 202).id)
    const res = await alice.post('/jobs/private', { mode: 'ok' })
    expectProblem(res, 429, 'rate-limited')
    expect(res.headers.get('retry-after')).toMatch(/^[1-9]\d*$/)
    expectProblem(await alice.get('/operations/stats'), 429, 'rate-limited')
    expectProblem(await alice.get(`/operations/${ids[0]!}`), 429, 'rate-limited')
    // Another principal has its own budget; the refused submission stored nothing.
    expectJson(await h.as('other').get('/operations'), 200)
    expectJson(await h.as('other').post('/jobs/private', { mode: 'ok' }), 202)
    const stats = expectJson(await h.as('admin').get('/operations/stats'), 200)
    expect(stats.total).toBe(3)
    await h.settle()
  })

  it('rate limits refused credentials by client address, so that guessing them is slow', async () => {
    const h = await start({ rateLimit: { max: 3, timeWindow: '1 minute' } })
    const guesser = (n: number) => new Caller(h.client, { authorization: `Bearer not-a-token-${n}` })
    for (let n = 0; n < 3; n++) expectUnauthorized(await guesser(n).get('/operations'))
    const res = await guesser(3).get('/operations')
    expectProblem(res, 429, 'rate-limited')
    expect(res.headers.get('retry-after')).toMatch(/^[1-9]\d*$/)
    expectProblem(await h.as('anonymous').post('/jobs/private', { mode: 'ok' }), 429, 'rate-limited')
    // Callers who sign in are counted by principal, not by the address they share with the guesser.
    expectJson(await h.as('owner').get('/operations'), 200)
  })

  it('caps the page size at 100', async () => {
    const h = await start()
    const alice = h.as('owner')
    for (let batch = 0; batch < 120; batch += 20) {
      await Promise.all(Array.from({ length: 20 }, () => alice.post('/jobs/private', { mode: 'ok' })))
    }
    await h.settle()
    expect(expectJson(await alice.get('/operations/stats'), 200)).toMatchObject({ total: 120, succeeded: 120 })
    const page = expectJson(await alice.get('/operations?limit=1000'), 200)
    expect(page.items).toHaveLength(100)
    expect(typeof page.nextCursor).toBe('string')
    const rest = expectJson(await alice.get(`/operations?limit=1000&cursor=${page.nextCursor}`), 200)
    expect(rest.items).toHaveLength(20)
    expect(rest.nextCursor).toBeNull()
    expect(new Set([...page.items, ...rest.items].map((op: Json) => op.id)).size).toBe(120)
    expect(expectJson(await alice.get('/operations'), 200).items).toHaveLength(20)
  })
})

interface RawAnswer {
  status: number
  headers: IncomingHttpHeaders
  text: string
}

/**
 * POSTs a body of `announced` bytes (chunked when `announced` is undefined) with node:http, writing
 * `chunk`-sized pieces only while no answer has come, up to `max` bytes. Never ends the request.
 */
async function upload(
  base: string,
  headers: Record<string, string>,
  options: { announced?: number; chunk: number; max: number },
): Promise<{ answer: RawAnswer; written: number; closed: Promise<void> }> {
  const url = new URL(base)
  const req = httpRequest({
    host: url.hostname,
    port: Number(url.port),
    method: 'POST',
    path: '/jobs/private',
    agent: false,
    headers: {
      ...headers,
      'content-type': 'application/json',
      ...(options.announced === undefined ? {} : { 'content-length': String(options.announced) }),
    },
  })
  // Writing into a connection the server closed fails: expected, and not this test's concern.
  req.on('error', () => {})
  let answered = false
  const answer = new Promise<RawAnswer>((resolve, reject) => {
    req.on('response', (res) => {
      answered = true
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (piece: string) => (text += piece))
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, text }))
      res.on('error', reject)
    })
  })
  const closed = new Promise<void>((resolve) => {
    req.on('socket', (socket) => socket.on('close', () => resolve()))
  })
  const piece = Buffer.alloc(options.chunk, 'a')
  piece.write('{"pad":"')
  let written = 0
  while (!answered && written + piece.length <= options.max && !req.destroyed) {
    const flushed = req.write(piece)
    written += piece.length
    if (!flushed) await Promise.race([once(req, 'drain').catch(() => {}), answer, closed])
    await sleep(1)
  }
  const result = await answer
  return { answer: result, written, closed }
}

describe('request bodies', () => {
  afterEach(closeAll)
  const MiB = 1024 * 1024

  it('answers 413 body-too-large from the announced length, before the body is sent', async () => {
    const h = await start()
    const { headers } = h.as('owner')
    const { answer, written, closed } = await upload(h.base, headers, { announced: 50 * MiB, chunk: 4096, max: 4096 })
    expect(answer.status, answer.text).toBe(413)
    expect(answer.headers['content-type']).toMatch(/^application\/problem\+json/)
    expect(JSON.parse(answer.text)).toMatchObject({ code: 'body-too-large', status: 413 })
    expect(answer.headers.connection).toBe('close')
    expect(written).toBe(4096)
    // The server hangs up rather than waiting for the other 50 MiB.
    await closed
    expect(expectJson(await h.as('admin').get('/operations/stats'), 200).total).toBe(0)
  })

  it('answers 413 body-too-large to a chunked upload as soon as it passes 1 MiB', async () => {
    const h = await start()
    const { headers } = h.as('owner')
    const { answer, written, closed } = await upload(h.base, headers, { chunk: 64 * 1024, max: 50 * MiB })
    expect(answer.status, answer.text).toBe(413)
    expect(JSON.parse(answer.text)).toMatchObject({ code: 'body-too-large', status: 413 })
    expect(answer.headers.connection).toBe('close')
    // The answer came while the client was still writing: far fewer than 50 MiB went out.
    expect(written).toBeGreaterThan(MiB)
    expect(written).toBeLessThan(50 * MiB)
    await closed
    expect(expectJson(await h.as('admin').get('/operations/stats'), 200).total).toBe(0)
  })
})

describe("validation: 'strict'", () => {
  afterEach(closeAll)

  it.each([
    ['a string for an integer', { n: '5', label: 'x' }, '/n'],
    ['a number for a string', { n: 5, label: 5 }, '/label'],
    ['a property the schema forbids', { n: 5, label: 'x', extra: true }, '/'],
  ])('answers %s with 422 invalid-body and stores nothing', async (_what, body, path) => {
    const h = await start({ validation: 'strict' })
    const alice = h.as('owner')
    const problem = expectProblem(await alice.post('/jobs/typed', body), 422, 'invalid-body')
    expect(problem.errors).toEqual([expect.objectContaining({ path })])
    if ('extra' in body) expect(problem.errors[0].property).toBe('extra')
    expect(expectJson(await h.as('admin').get('/operations/stats'), 200).total).toBe(0)
    expect(expectJson(await alice.get('/operations'), 200).items).toEqual([])
    // The valid body is accepted, and the handler gets it unchanged.
    const op = expectJson(await alice.post('/jobs/typed', { n: 5, label: 'x' }), 202)
    expect((await h.waitState(op.id, 'succeeded')).result).toEqual({ doubled: 10 })
  })
})
