import { EventSource } from 'eventsource'
import type { EventSourceMessage } from 'eventsource-parser'
import Fastify, { type FastifyInstance } from 'fastify'
import { apiKeyAuth, longrun, type LongrunPluginOptions } from 'longrun/fastify'
import { sqliteStore } from 'longrun/sqlite'
import { afterEach, describe, expect, it } from 'vitest'
import {
  Client,
  expectJson,
  expectProblem,
  Gates,
  listen,
  tempDir,
  withoutInstance,
  type Json,
} from './helpers/http.js'
import { openRaw, type RawStream } from './helpers/sse.js'
import { until } from './helpers/until.js'

// The push side of the protocol (docs/realtime.md) over real sockets on a real SQLite file: event
// streams read by the `eventsource` client and by a raw parser, waits, Prefer: wait, held routes,
// limits and shutdown.

interface Harness {
  app: FastifyInstance
  base: string
  client: Client
  gates: Gates
  close(): Promise<void>
}

const harnesses: Harness[] = []
afterEach(async () => {
  for (const harness of harnesses.splice(0)) await harness.close()
})

async function start(options: Partial<LongrunPluginOptions> = {}, closeGently = false): Promise<Harness> {
  const dir = tempDir('longrun-realtime-')
  // fetch may open a connection it then never sends on, which Node's server.close() waits for until
  // its headers timeout; tests other than the shutdown one do not wait for that.
  const app = Fastify({ forceCloseConnections: !closeGently })
  const gates = new Gates()
  await app.register(longrun, {
    store: sqliteStore({ path: `${dir.path}/ops.db` }),
    lease: 2_000,
    poll: 50,
    grace: 200,
    streamHeartbeat: 60_000,
    ...options,
  })
  // Reports progress at each gate `<key>:<n>`, then ends as its input says.
  app.longrun.route({
    url: '/jobs/steps',
    name: 'steps',
    sseGroup: 'reports',
    async handler(op) {
      const { key, steps = 0, fail = false } = op.input as { key: string; steps?: number; fail?: boolean }
      for (let i = 1; i <= steps; i++) {
        await gates.wait(`${key}:${i}`, op.signal)
        await op.progress(i * 10, `step ${i}`)
      }
      await gates.wait(`${key}:end`, op.signal)
      if (fail) throw new Error(`failed ${key}`)
      return { key }
    },
  })
  app.longrun.route({ url: '/jobs/other', name: 'other', handler: async () => 'other' })
  app.longrun.route({ url: '/jobs/fast', name: 'fast', handler: async (op) => ({ echo: op.input }) })
  for (const [name, hold] of [
    ['held', { timeout: '5s' }],
    ['held-short', { timeout: 200 }],
    ['held-408', { timeout: 200, onTimeout: 'timeout' }],
    ['held-cancel', { timeout: '10s', cancelOnDisconnect: true }],
  ] as const) {
    app.longrun.route({
      url: `/jobs/${name}`,
      name,
      hold,
      async handler(op) {
        await gates.wait((op.input as { key: string }).key, op.signal)
        return { held: name }
      },
    })
  }
  const base = await listen(app)
  let closed = false
  const harness: Harness = {
    app,
    base,
    client: new Client(base),
    gates,
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

const data = (event: EventSourceMessage): Json => JSON.parse(event.data)

async function submit(client: Client, path: string, input: unknown, headers?: Record<string, string>) {
  const res = await client.post(path, input, headers)
  expect(res.status, res.text).toBe(202)
  return res.body.id as string
}

/** Every event of the operation's log, read once it is finished: what streams must add up to. */
async function fullLog(base: string, id: string): Promise<EventSourceMessage[]> {
  const stream = await openRaw(`${base}/operations/${id}/events?after=0`)
  await stream.ended
  return stream.events
}

describe('per-operation event stream', () => {
  it('sends each change in order with ids, names and the resource, then closes after the terminal event', async () => {
    const h = await start()
    const id = await submit(h.client, '/jobs/steps', { key: 'a', steps: 2 })
    await h.client.waitForState(id, 'running')
    const stream = await openRaw(`${h.base}/operations/${id}/events`)
    expect(stream.status).toBe(200)
    expect(stream.headers.get('content-type')).toBe('text/event-stream; charset=utf-8')
    expect(stream.headers.get('cache-control')).toContain('no-cache')
    await until(() => stream.events.length === 1 || undefined, 5_000, { what: 'the latest event' })
    expect(stream.events[0]!.event).toBe('started')
    h.gates.open('a:1')
    await until(() => stream.events.length === 2 || undefined, 5_000, { what: 'progress 1' })
    h.gates.open('a:2')
    h.gates.open('a:end')
    await stream.ended
    expect(stream.retry).toBe(1_000)
    expect(stream.events.map((e) => e.event)).toEqual(['started', 'progress', 'progress', 'succeeded'])
    const ids = stream.events.map((e) => Number(e.id))
    for (let i = 1; i < ids.length; i++) expect(ids[i]).toBeGreaterThan(ids[i - 1]!)
    const progress = stream.events.filter((e) => e.event === 'progress').map((e) => data(e).event.progress)
    expect(progress).toEqual([
      { percent: 10, step: 'step 1' },
      { percent: 20, step: 'step 2' },
    ])
    const last = data(stream.events[3]!)
    expect(last).toMatchObject({ id, state: 'succeeded', done: true, result: { key: 'a' } })
    expect(last.event).toMatchObject({ seq: ids[3], type: 'succeeded', attempt: 1 })
    // The whole log from the start: submitted first, and the same events after it.
    const log = await fullLog(h.base, id)
    expect(log.map((e) => e.event)).toEqual(['submitted', 'started', 'progress', 'progress', 'succeeded'])
    expect(log.slice(1).map((e) => e.id)).toEqual(stream.events.map((e) => e.id))
  })

  it('sends heartbeats while nothing happens', async () => {
    const h = await start({ streamHeartbeat: 30 })
    const id = await submit(h.client, '/jobs/steps', { key: 'hb' })
    const stream = await openRaw(`${h.base}/operations/${id}/events`)
    await until(() => stream.comments.length >= 3 || undefined, 5_000, { what: 'three heartbeats' })
    expect(stream.comments.every((c) => c.trim() === 'heartbeat')).toBe(true)
    h.gates.open('hb:end')
    await stream.ended
    expect(stream.events.at(-1)!.event).toBe('succeeded')
  })

  it('on a finished operation sends its terminal event and closes', async () => {
    const h = await start()
    const id = await submit(h.client, '/jobs/fast', { n: 1 })
    await h.client.waitForState(id, 'succeeded')
    const stream = await openRaw(`${h.base}/operations/${id}/events`)
    await stream.ended
    expect(stream.events.map((e) => e.event)).toEqual(['succeeded'])
    expect(data(stream.events[0]!)).toMatchObject({ state: 'succeeded', result: { echo: { n: 1 } } })
  })

  it('resumes after Last-Event-ID with no gap and no duplicate', async () => {
    const h = await start()
    const id = await submit(h.client, '/jobs/steps', { key: 'r', steps: 4 })
    const first = await openRaw(`${h.base}/operations/${id}/events?after=0`)
    h.gates.open('r:1')
    h.gates.open('r:2')
    await until(() => first.events.filter((e) => e.event === 'progress').length === 2 || undefined, 5_000)
    first.abort()
    const seen = [...first.events]
    h.gates.open('r:3')
    h.gates.open('r:4')
    h.gates.open('r:end')
    await h.client.waitForState(id, 'succeeded')
    const second = await openRaw(`${h.base}/operations/${id}/events`, { 'last-event-id': seen.at(-1)!.id! })
    await second.ended
    const all = [...seen, ...second.events]
    expect(all.map((e) => e.id)).toEqual((await fullLog(h.base, id)).map((e) => e.id))
    expect(all.map((e) => e.event)).toEqual([
      'submitted',
      'started',
      ...Array.from({ length: 4 }, () => 'progress'),
      'succeeded',
    ])
  })

  it('is read by the eventsource client, which reconnects after a dropped connection and misses nothing', async () => {
    const h = await start()
    const id = await submit(h.client, '/jobs/steps', { key: 'es', steps: 3 })
    const received: { id: string; type: string }[] = []
    let opens = 0
    const source = new EventSource(`${h.base}/operations/${id}/events?after=0`)
    source.addEventListener('open', () => opens++)
    for (const type of ['submitted', 'started', 'progress', 'succeeded']) {
      source.addEventListener(type, (event) => {
        received.push({ id: event.lastEventId, type })
        if (type === 'succeeded') source.close()
      })
    }
    try {
      h.gates.open('es:1')
      await until(() => received.some((e) => e.type === 'progress') || undefined, 5_000)
      // The server drops every connection: the client reconnects with the last id it saw.
      h.app.server.closeAllConnections()
      h.gates.open('es:2')
      h.gates.open('es:3')
      h.gates.open('es:end')
      await until(() => received.some((e) => e.type === 'succeeded') || undefined, 10_000, { what: 'the end' })
    } finally {
      source.close()
    }
    expect(opens).toBeGreaterThanOrEqual(2)
    expect(received.map((e) => e.id)).toEqual((await fullLog(h.base, id)).map((e) => e.id))
  })

  it('answers unknown and unreadable ids like the status endpoint, and refuses a bad Last-Event-ID', async () => {
    const keys = { ka: { id: 'alice' }, kb: { id: 'bob' } }
    const h = await start({ authenticate: apiKeyAuth({ keys }) })
    const alice = { 'x-api-key': 'ka' }
    const bob = { 'x-api-key': 'kb' }
    const id = await submit(h.client, '/jobs/fast', {}, alice)
    const missing = await h.client.get('/operations/nope/events', bob)
    const hidden = await h.client.get(`/operations/${id}/events`, bob)
    const missingText = withoutInstance(expectProblem(missing, 404, 'operation-not-found'), '/operations/nope/events')
    expect(withoutInstance(hidden.body, `/operations/${id}/events`)).toBe(missingText)
    for (const bad of ['abc', '-1', '1.5', '99999999999999999999']) {
      expectProblem(
        await h.client.get(`/operations/${id}/events`, { ...alice, 'last-event-id': bad }),
        400,
        'invalid-headers',
      )
    }
    expectProblem(await h.client.get(`/operations/${id}/events?after=x`, alice), 400, 'invalid-headers')
    expectProblem(
      await h.client.get('/operations/events', { ...alice, 'last-event-id': 'x y' }),
      400,
      'invalid-headers',
    )
  })
})

describe('group and caller streams', () => {
  it('streams a group to every reader, and each caller its own operations, resumably', async () => {
    const keys = { ka: { id: 'alice' }, kb: { id: 'bob' } }
    const h = await start({ authenticate: apiKeyAuth({ keys }) })
    const alice = { 'x-api-key': 'ka' }
    const bob = { 'x-api-key': 'kb' }
    const aliceAll = await openRaw(`${h.base}/operations/events`, alice)
    const aliceGroup = await openRaw(`${h.base}/operations/events?group=reports`, alice)
    const bobGroup = await openRaw(`${h.base}/operations/events?group=reports`, bob)
    expect([aliceAll.status, aliceGroup.status, bobGroup.status]).toEqual([200, 200, 200])
    const a1 = await submit(h.client, '/jobs/steps', { key: 'g1' }, alice)
    const a2 = await submit(h.client, '/jobs/other', {}, alice)
    const b1 = await submit(h.client, '/jobs/steps', { key: 'g2' }, bob)
    h.gates.open('g1:end')
    h.gates.open('g2:end')
    for (const [id, key] of [
      [a1, alice],
      [a2, alice],
      [b1, bob],
    ] as const) {
      await until(async () => (await h.client.get(`/operations/${id}`, key)).body.done || undefined, 5_000)
    }
    const settled = (stream: RawStream) => stream.events.filter((e) => e.event === 'succeeded').map((e) => data(e).id)
    await until(() => settled(aliceAll).length === 2 || undefined, 5_000, { what: "alice's own" })
    await until(() => settled(aliceGroup).length === 1 || undefined, 5_000, { what: "alice's group" })
    await until(() => settled(bobGroup).length === 1 || undefined, 5_000, { what: "bob's group" })
    // Each reader sees only what it may read: its own operations of the group.
    expect(new Set(aliceAll.events.map((e) => data(e).id))).toEqual(new Set([a1, a2]))
    expect(new Set(aliceGroup.events.map((e) => data(e).id))).toEqual(new Set([a1]))
    expect(new Set(bobGroup.events.map((e) => data(e).id))).toEqual(new Set([b1]))
    for (const stream of [aliceAll, aliceGroup, bobGroup]) stream.abort()

    // Resuming from any event's id gives exactly the events after it.
    for (let i = 0; i < aliceAll.events.length; i++) {
      const resumed = await openRaw(`${h.base}/operations/events`, {
        ...alice,
        'last-event-id': aliceAll.events[i]!.id!,
      })
      const rest = aliceAll.events.slice(i + 1)
      await until(() => resumed.events.length >= rest.length || undefined, 5_000)
      await new Promise((resolve) => setTimeout(resolve, 100))
      resumed.abort()
      expect(resumed.events.map((e) => [e.event, data(e).id])).toEqual(rest.map((e) => [e.event, data(e).id]))
    }
    expectProblem(await h.client.get('/operations/events?group=nope', alice), 400, 'invalid-query')
    expectProblem(await h.client.get('/operations/events?group=a&group=b', alice), 400, 'invalid-query')
  })
})

describe('waits', () => {
  it('GET /wait answers as soon as the operation is done, or as it is at the timeout', async () => {
    const h = await start()
    const id = await submit(h.client, '/jobs/steps', { key: 'w' })
    const early = h.client.get(`/operations/${id}/wait?timeout=30`)
    const timedOut = await h.client.get(`/operations/${id}/wait?timeout=0.2`)
    expect(expectJson(timedOut, 200).done).toBe(false)
    expect(timedOut.headers.get('retry-after')).toBe('1')
    h.gates.open('w:end')
    const done = await early
    expect(expectJson(done, 200)).toMatchObject({ id, state: 'succeeded', result: { key: 'w' } })
    for (const bad of ['x', '-1', '1e3']) {
      expectProblem(await h.client.get(`/operations/${id}/wait?timeout=${bad}`), 400, 'invalid-query')
    }
  })

  it('Prefer: wait on the status waits the same way, and says it varies on Prefer', async () => {
    const h = await start()
    const id = await submit(h.client, '/jobs/steps', { key: 'p' })
    const timedOut = await h.client.get(`/operations/${id}`, { prefer: 'wait=0.2' })
    expect(expectJson(timedOut, 200).state).not.toBe('succeeded')
    expect(timedOut.headers.get('vary')).toContain('Prefer')
    const waiting = h.client.get(`/operations/${id}`, { prefer: 'wait=30' })
    h.gates.open('p:end')
    expect(expectJson(await waiting, 200)).toMatchObject({ state: 'succeeded', history: expect.any(Array) })
    // A preference it cannot read is ignored, as RFC 7240 asks.
    expectJson(await h.client.get(`/operations/${id}`, { prefer: 'wait=soon' }), 200)
  })
})

describe('sync if fast: Prefer: respond-async, wait=N on submit', () => {
  it('answers 200 with the result when done in time, 202 otherwise, and the error as its problem', async () => {
    const h = await start()
    const prefer = { prefer: 'respond-async, wait=10' }
    const fast = await h.client.post('/jobs/fast', { n: 2 }, prefer)
    expect(expectJson(fast, 200)).toEqual({ echo: { n: 2 } })
    expect(fast.headers.get('content-location')).toMatch(/^\/operations\/[\w-]+$/)
    expect(fast.headers.get('preference-applied')).toBe('wait=10')
    expect(fast.headers.get('vary')).toContain('Prefer')
    const op = await h.client.get(fast.headers.get('content-location')!)
    expect(op.body.state).toBe('succeeded')

    const slow = await h.client.post('/jobs/steps', { key: 's' }, { prefer: 'respond-async, wait=0.2' })
    expect(slow.status).toBe(202)
    expect(slow.headers.get('preference-applied')).toBe('respond-async')
    expect(slow.headers.get('location')).toBe(`/operations/${slow.body.id}`)
    expect(slow.headers.get('vary')).toContain('Prefer')

    const failing = h.client.post('/jobs/steps', { key: 'f', fail: true }, prefer)
    await until(() => h.gates.started.get('f:end') || undefined, 5_000)
    h.gates.open('f:end')
    const failed = expectProblem(await failing, 409, 'operation-failed')
    expect(failed.error).toMatchObject({ code: 'handler-error', detail: 'failed f' })
    expect((await failing).headers.get('content-location')).toMatch(/^\/operations\//)

    const plain = await h.client.post('/jobs/fast', { n: 3 })
    expect(plain.status).toBe(202)
    expect(plain.headers.get('vary')).toContain('Prefer')
    expect(plain.headers.get('preference-applied')).toBeNull()
  })
})

describe('held routes', () => {
  it('answers the outcome when it comes in time', async () => {
    const h = await start()
    const held = h.client.post('/jobs/held', { key: 'h1' })
    await until(() => h.gates.started.get('h1') || undefined, 5_000)
    h.gates.open('h1')
    const res = await held
    expect(expectJson(res, 200)).toEqual({ held: 'held' })
    expect(res.headers.get('content-location')).toMatch(/^\/operations\//)
  })

  it('answers 202 at the timeout, or 408 when the route says so', async () => {
    const h = await start()
    const accepted = await h.client.post('/jobs/held-short', { key: 'h2' })
    expect(accepted.status).toBe(202)
    expect(accepted.headers.get('location')).toBe(`/operations/${accepted.body.id}`)
    const timedOut = await h.client.post('/jobs/held-408', { key: 'h3' })
    const problem = expectProblem(timedOut, 408, 'hold-timeout')
    expect(problem.state).toMatch(/queued|running/)
    expect(timedOut.headers.get('location')).toMatch(/^\/operations\//)
    const op = await h.client.get(timedOut.headers.get('location')!)
    expect(op.body.done).toBe(false)
  })

  it('cancels the operation when the client goes away first, with cancelOnDisconnect', async () => {
    const h = await start()
    const controller = new AbortController()
    const held = fetch(`${h.base}/jobs/held-cancel`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ key: 'h4' }),
      signal: controller.signal,
    }).catch((err: Error) => err)
    await until(() => h.gates.started.get('h4') || undefined, 5_000)
    controller.abort()
    expect(await held).toBeInstanceOf(Error)
    const list = await h.client.get('/operations?name=held-cancel')
    const id = list.body.items[0].id as string
    await h.client.waitForState(id, 'canceled')
  })
})

describe('limits and shutdown', () => {
  it('refuses a stream or wait beyond the per-caller cap with 429, and frees the slot when one closes', async () => {
    const h = await start({ maxStreamsPerCaller: 2 })
    const id = await submit(h.client, '/jobs/steps', { key: 'cap' })
    const one = await openRaw(`${h.base}/operations/${id}/events`)
    const two = await openRaw(`${h.base}/operations/events`)
    expect([one.status, two.status]).toEqual([200, 200])
    expectProblem(await h.client.get(`/operations/${id}/events`), 429, 'too-many-streams')
    expectProblem(await h.client.get(`/operations/${id}/wait?timeout=1`), 429, 'too-many-streams')
    // A preference to wait is then just not applied; a held route is refused before anything is stored.
    expect((await h.client.post('/jobs/fast', {}, { prefer: 'wait=5' })).status).toBe(202)
    expectProblem(await h.client.post('/jobs/held', { key: 'capped' }), 429, 'too-many-streams')
    expect((await h.client.get('/operations?name=held')).body.items).toEqual([])
    one.abort()
    const three = await until(
      async () => {
        const stream = await openRaw(`${h.base}/operations/${id}/events`)
        return stream.status === 200 ? stream : undefined
      },
      5_000,
      { what: 'a free slot' },
    )
    three.abort()
    two.abort()
  })

  it('answers open streams, waits and held requests at once when the server closes', async () => {
    const h = await start({ grace: 100 }, true)
    const id = await submit(h.client, '/jobs/steps', { key: 'down' })
    const stream = await openRaw(`${h.base}/operations/${id}/events`)
    const waiting = fetch(`${h.base}/operations/${id}/wait?timeout=30`)
    const held = fetch(`${h.base}/jobs/held`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ key: 'never' }),
    })
    await until(() => h.gates.started.get('never') || undefined, 5_000)
    const began = Date.now()
    await h.app.close()
    expect(Date.now() - began).toBeLessThan(5_000)
    await stream.ended
    expect(stream.comments.map((c) => c.trim())).toContain('server shutting down')
    for (const res of [await waiting, await held]) {
      expect(res.status).toBe(503)
      expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/)
      expect(res.headers.get('retry-after')).toBe('1')
      expect(res.headers.get('location')).toMatch(/^\/operations\//)
      expect(await res.json()).toMatchObject({ code: 'shutting-down' })
    }
  })
})
