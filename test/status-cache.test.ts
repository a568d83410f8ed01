import { join } from 'node:path'
import Fastify, { type FastifyInstance } from 'fastify'
import { Engine, isStamped, type Store } from 'longrun'
import { apiKeyAuth, longrun } from 'longrun/fastify'
import { memoryStore } from 'longrun/memory'
import { sqliteStore } from 'longrun/sqlite'
import { afterEach, describe, expect, it } from 'vitest'
import { Client, Gates, listen, tempDir, type Json } from './helpers/http.js'
import { until } from './helpers/until.js'

// Status reads are answered from the reply built last time while the store's change stamp stays
// the same: these tests change operations behind the cache's back (another connection to the same
// SQLite file, which is what another process is to SQLite; the worker of the same process) and
// check that no read shows what was true before.

const ALICE = { 'x-api-key': 'alice-key' }
const BOB = { 'x-api-key': 'bob-key' }
const closers: (() => Promise<void> | void)[] = []

afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close()
})

/** A SQLite file in a temporary folder, removed after the test (after the stores are closed). */
function dbPath(): string {
  const dir = tempDir()
  closers.unshift(() => dir.remove())
  return join(dir.path, 'ops.db')
}

async function serve(
  store: Store,
  formats?: ('application/json' | 'application/yaml')[],
): Promise<{ app: FastifyInstance; client: Client; gates: Gates }> {
  const gates = new Gates()
  const app = Fastify()
  await app.register(longrun, {
    store,
    lease: 1_000,
    poll: 20,
    grace: 200,
    ...(formats ? { formats } : {}),
    authenticate: apiKeyAuth({ keys: { 'alice-key': { id: 'alice' }, 'bob-key': { id: 'bob' } } }),
  })
  app.longrun.route({
    url: '/jobs/gated',
    name: 'gated',
    async handler(op) {
      await gates.wait((op.input as { key: string }).key, op.signal)
      return { done: true }
    },
  })
  const client = new Client(await listen(app))
  closers.push(() => app.close())
  return { app, client, gates }
}

/** Polls as alice until the operation is in `state`. */
function reach(client: Client, id: string, state: string): Promise<Json> {
  return until(
    async () => {
      const res = await client.get(`/operations/${id}`, ALICE)
      return res.status === 200 && (res.body as Json).state === state ? res.body : undefined
    },
    20_000,
    { what: `${id} ${state}` },
  )
}

async function submit(client: Client, key: string): Promise<string> {
  const res = await client.post('/jobs/gated', { key }, ALICE)
  expect(res.status).toBe(202)
  return (res.body as { id: string }).id
}

describe('status reads from the cache', () => {
  it('show a change another connection to the SQLite file committed, at the next read', async () => {
    const path = dbPath()
    const { client } = await serve(sqliteStore({ path }))
    const id = await submit(client, 'a')
    await reach(client, id, 'running')
    const first = await client.get(`/operations/${id}`, ALICE)
    const again = await client.get(`/operations/${id}`, ALICE)
    expect(again.text).toBe(first.text)
    const etag = first.headers.get('etag')!
    expect((await client.get(`/operations/${id}`, { ...ALICE, 'if-none-match': etag })).status).toBe(304)

    // Another connection (as another process would) asks for the cancel: no worker of its own.
    const other = new Engine({ store: sqliteStore({ path }) })
    closers.push(() => other.close())
    await other.cancel(id, 'alice')

    const after = await client.get(`/operations/${id}`, { ...ALICE, 'if-none-match': etag })
    expect(after.status).toBe(200)
    expect(after.body).toMatchObject({ id, cancelRequested: true })
    expect(after.headers.get('etag')).not.toBe(etag)
  })

  it('show what the worker of the same process changed, and never to a caller who may not read it', async () => {
    const { client, gates } = await serve(sqliteStore({ path: dbPath() }))
    const id = await submit(client, 'b')
    await reach(client, id, 'running')
    expect((await client.get(`/operations/${id}`, ALICE)).body).toMatchObject({ state: 'running' })
    // Cached for alice now; bob gets what any unknown id gets.
    const bob = await client.get(`/operations/${id}`, BOB)
    expect(bob.status).toBe(404)
    expect(bob.headers.get('content-type')).toMatch(/^application\/problem\+json/)

    gates.open('b')
    const done = await reach(client, id, 'succeeded')
    expect(done).toMatchObject({ state: 'succeeded', result: { done: true } })
    expect((await client.get(`/operations/${id}`, ALICE)).body).toMatchObject({ state: 'succeeded' })
  })

  it('answer each media type its own representation', async () => {
    const { client } = await serve(memoryStore(), ['application/json', 'application/yaml'])
    const id = await submit(client, 'c')
    const json = await client.get(`/operations/${id}`, ALICE)
    const yaml = await client.get(`/operations/${id}`, { ...ALICE, accept: 'application/yaml' })
    expect(json.headers.get('content-type')).toMatch(/^application\/json/)
    expect(yaml.headers.get('content-type')).toMatch(/^application\/yaml/)
    expect(yaml.text).toContain(`id: ${id}`)
    expect((await client.get(`/operations/${id}`, ALICE)).text).toBe(json.text)
  })
})

describe('the SQLite store change stamp', () => {
  it('moves with every commit, of this connection or another, and stays while only reads happen', async () => {
    const path = dbPath()
    const store = sqliteStore({ path })
    const other = sqliteStore({ path })
    closers.push(
      () => store.close(),
      () => other.close(),
    )
    expect(isStamped(store)).toBe(true)
    const engine = new Engine({ store })
    engine.define({ name: 'noop', handler: async () => undefined })
    const op = await engine.submit('noop')
    const before = store.changeStamp()
    await store.get(op.id)
    await store.history(op.id)
    expect(store.changeStamp()).toBe(before)

    await other.cancel(op.id, Date.now(), Date.now() + 60_000)
    const afterOther = store.changeStamp()
    expect(afterOther).not.toBe(before)

    await engine.submit('noop')
    expect(store.changeStamp()).not.toBe(afterOther)
  })
})
