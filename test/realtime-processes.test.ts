import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { killAllServers, startServer } from './helpers/child-server.js'
import { tempDir } from './helpers/http.js'
import { describePostgres, dropSchema, freshSchemaName } from './helpers/postgres.js'
import { openRaw } from './helpers/sse.js'
import { until } from './helpers/until.js'

// Event streams across processes: resumed after the server is SIGKILLed and restarted on its SQLite
// file, and fed on PostgreSQL by a worker process to an API process that does not poll.

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const SESSION = { 'x-session-key': 'realtime-processes' }

async function submitSample(base: string, delayMs: number): Promise<string> {
  const res = await fetch(`${base}/api/v1/demo/tasks/sample`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...SESSION },
    body: JSON.stringify({ delayMs }),
  })
  expect(res.status).toBe(202)
  return ((await res.json()) as { id: string }).id
}

afterEach(killAllServers)

describe('a stream across a SIGKILL of the server (SQLite)', () => {
  const dir = tempDir('longrun-realtime-kill-')
  afterAll(() => dir.remove())

  it('resumes from Last-Event-ID on the restarted server with no gap and no duplicate', async () => {
    const dbPath = join(dir.path, 'ops.db')
    const env = { LONGRUN_LEASE_MS: '1000', LONGRUN_POLL_MS: '50', LOG_LEVEL: 'warn' }
    const first = await startServer({ dbPath, env })
    const id = await submitSample(first.url, 4_000)
    const before = await openRaw(`${first.url}/operations/${id}/events?after=0`, SESSION)
    await until(() => before.events.some((e) => e.event === 'progress') || undefined, 10_000, { what: 'progress' })
    await first.kill('SIGKILL')
    await before.ended.catch(() => {})

    const second = await startServer({ dbPath, env })
    const lastId = before.events.at(-1)!.id!
    const after = await openRaw(`${second.url}/operations/${id}/events`, { ...SESSION, 'last-event-id': lastId })
    await after.ended
    const full = await openRaw(`${second.url}/operations/${id}/events?after=0`, SESSION)
    await full.ended
    const seen = [...before.events, ...after.events]
    expect(seen.map((e) => e.id)).toEqual(full.events.map((e) => e.id))
    // The attempt the kill cut short, then the one the restarted server ran to the end.
    expect(seen.map((e) => e.event)).toContain('lease-lost')
    expect(seen.at(-1)!.event).toBe('succeeded')
  })
})

describe('shutdown of the demo process with streams and waits open (SQLite)', () => {
  const dir = tempDir('longrun-realtime-term-')
  afterAll(() => dir.remove())

  it('answers them at once on SIGTERM and exits within the grace period', async () => {
    const server = await startServer({ dbPath: join(dir.path, 'ops.db'), env: { LONGRUN_GRACE_MS: '1000' } })
    const id = await submitSample(server.url, 60_000)
    // The wait first: by the time both streams have answered, the server has it too. (A request
    // reaching Fastify only once it is closing gets Fastify's own plain 503.)
    const waiting = fetch(`${server.url}/operations/${id}/wait?timeout=60`, { headers: SESSION })
    const stream = await openRaw(`${server.url}/operations/${id}/events`, SESSION)
    const group = await openRaw(`${server.url}/operations/events?group=demo.tasks`, SESSION)
    await until(() => stream.events.length > 0 || undefined, 10_000, { what: 'the first event' })
    const exit = await server.kill('SIGTERM', 10_000)
    expect(exit).toEqual({ code: 0, signal: null })
    await stream.ended
    await group.ended
    for (const s of [stream, group]) expect(s.comments.map((c) => c.trim())).toContain('server shutting down')
    const waited = await waiting
    expect(waited.status).toBe(503)
    expect(await waited.json()).toMatchObject({ code: 'shutting-down' })
    expect(waited.headers.get('location')).toBe(`/operations/${id}`)
  })
})

describePostgres('a stream on an API process fed by a worker process (PostgreSQL)', (url) => {
  const schema = freshSchemaName('lrrt')
  let worker: ChildProcess | undefined

  afterAll(async () => {
    worker?.kill('SIGKILL')
    await killAllServers()
    await dropSchema(url, schema)
  })

  it('delivers every event through LISTEN/NOTIFY, with polling out of the way', async () => {
    const env = { LONGRUN_STORE: url, LONGRUN_PG_SCHEMA: schema, LONGRUN_GRACE_MS: '500', LOG_LEVEL: 'warn' }
    worker = spawn(process.execPath, ['--conditions=longrun-source', '--import', 'tsx', 'examples/demo/worker.ts'], {
      cwd: ROOT,
      stdio: 'ignore',
      env: { ...process.env, ...env, LONGRUN_POLL_MS: '100' },
    })
    // The API process would look again only after 10 minutes: what reaches it comes by notice.
    const api = await startServer({
      dbPath: 'unused',
      env: { ...env, LONGRUN_ROLE: 'api', LONGRUN_POLL_MS: '600000' },
      readyTimeoutMs: 40_000,
    })
    const id = await submitSample(api.url, 400)
    const stream = await openRaw(`${api.url}/operations/${id}/events?after=0`, SESSION)
    const group = await openRaw(`${api.url}/operations/events?group=demo.tasks`, SESSION)
    await stream.ended
    expect(stream.events.map((e) => e.event)).toEqual([
      'submitted',
      'started',
      ...Array.from({ length: 5 }, () => 'progress'),
      'succeeded',
    ])
    // The group stream opened after the submit: it has the rest, ending with the outcome.
    await until(() => group.events.some((e) => e.event === 'succeeded') || undefined, 10_000, { what: 'group' })
    group.abort()
    const groupEvents = group.events.map((e) => e.event)
    expect(stream.events.map((e) => e.event).slice(-groupEvents.length)).toEqual(groupEvents)
  })
})
