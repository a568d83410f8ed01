import { mkdtempSync, rmSync } from 'node:fs'
import { connect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import type { OperationResource } from 'longrun/fastify'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { killAllServers, startServer, type ChildServer } from './helpers/child-server.js'
import { until } from './helpers/until.js'

// Crash, durability and shutdown behaviour of the demo server (examples/demo/main.ts), run as a
// real child process on a real SQLite file and spoken to over real HTTP. The child runs with a
// 1 s lease, a 50 ms poll and a 500 ms grace period (see helpers/child-server.ts).
//
// After a child is dead, some tests also open its SQLite file read-only: it is the exact record
// of what the dead process left behind (which operations it held), which no surviving process
// can be asked about without racing its own recovery.

const TASKS = '/api/v1/demo/tasks'

interface Row {
  id: string
  state: string
  attempt: number
  worker: string | null
}

let dir: string
let dbPath: string
const sockets: Socket[] = []
/** Every child the running test started, for their output when it fails. */
const started: ChildServer[] = []

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'longrun-crash-'))
  dbPath = join(dir, 'longrun.db')
})

afterEach(async (context) => {
  if (context.task.result?.state === 'fail') {
    for (const server of started) {
      const exit = JSON.stringify(server.exit ?? 'still running')
      const output = server.output().slice(-8_000)
      console.error(
        `--- demo server pid ${server.pid} (port ${server.port}), exit ${exit}, output's end ---\n${output}`,
      )
    }
  }
  started.length = 0
  for (const socket of sockets.splice(0)) socket.destroy()
  await killAllServers()
  rmSync(dir, { recursive: true, force: true })
})

async function start(env?: Record<string, string>): Promise<ChildServer> {
  const server = await startServer({ dbPath, ...(env ? { env } : {}) })
  started.push(server)
  return server
}

async function call<T = OperationResource>(
  server: ChildServer,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; body: T }> {
  const res = await fetch(server.url + path, {
    method,
    ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(10_000),
  })
  const text = await res.text()
  return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T }
}

/** Submits to a demo route, expects 202 Accepted, returns the operation id. */
async function submit(server: ChildServer, task: string, input: unknown): Promise<string> {
  const res = await call(server, 'POST', `${TASKS}/${task}`, input)
  expect(res.status, JSON.stringify(res.body)).toBe(202)
  return res.body.id
}

async function operation(server: ChildServer, id: string): Promise<OperationResource> {
  const res = await call(server, 'GET', `/operations/${id}`)
  expect(res.status, `GET /operations/${id}: ${JSON.stringify(res.body)}`).toBe(200)
  return res.body
}

/** All operations, through every page of the list. */
async function listAll(server: ChildServer, query = ''): Promise<OperationResource[]> {
  const all: OperationResource[] = []
  let cursor: string | null = null
  do {
    const page: { status: number; body: { items: OperationResource[]; nextCursor: string | null } } = await call(
      server,
      'GET',
      `/operations?limit=100${query}${cursor ? `&cursor=${cursor}` : ''}`,
    )
    expect(page.status).toBe(200)
    all.push(...page.body.items)
    cursor = page.body.nextCursor
  } while (cursor)
  return all
}

/** The rows a dead server left in its SQLite file. Never call it while a server runs on the file. */
function rowsOnDisk(path: string): Map<string, Row> {
  const db = new Database(path, { readonly: true, fileMustExist: true })
  try {
    const rows = db.prepare('SELECT id, state, attempt, worker FROM operations').all() as Row[]
    return new Map(rows.map((row) => [row.id, row]))
  } finally {
    db.close()
  }
}

describe('the demo server as a child process on SQLite', () => {
  it('recovers every accepted operation after SIGKILL, running again what the dead process held', async () => {
    let server = await start()

    const inputs: [string, unknown][] = []
    for (let i = 0; i < 5; i++) inputs.push(['sample', { delayMs: 1_500 + i * 300, description: `sample ${i}` }])
    for (let i = 0; i < 5; i++)
      inputs.push(['batch', { items: Array.from({ length: 3 + (i % 3) }, (_, j) => `b${i}.${j}`) }])
    for (let i = 0; i < 5; i++) inputs.push(['api-call', { endpoint: `https://api.example.com/${i}`, data: { i } }])
    for (let i = 0; i < 5; i++)
      inputs.push(['file-processing', { filePath: `/tmp/f${i}.txt`, fileSize: 512 * 1024 * (i + 1) }])
    const accepted: string[] = []
    for (const [task, input] of inputs) accepted.push(await submit(server, task, input))
    expect(new Set(accepted).size).toBe(20)

    // Crash with some work done, some in progress and some still queued.
    await until(async () => {
      const stats = (await call<Record<string, number>>(server, 'GET', '/operations/stats')).body
      return stats.succeeded! >= 1 && stats.running! >= 2
    }, 20_000)
    const runningSeen = (await listAll(server, '&state=running')).map((op) => op.id)
    expect(runningSeen.length).toBeGreaterThan(0)
    const killed = await server.kill('SIGKILL')
    expect(killed.signal).toBe('SIGKILL')

    const atDeath = rowsOnDisk(dbPath)
    for (const id of accepted) expect(atDeath.has(id), `${id} is on disk`).toBe(true)
    // What the list showed as running was still running at the kill, or had just finished.
    for (const id of runningSeen) expect(['running', 'succeeded']).toContain(atDeath.get(id)!.state)
    const heldByTheDead = accepted.filter((id) => atDeath.get(id)!.state === 'running')
    expect(heldByTheDead.length).toBeGreaterThan(0)
    expect(accepted.some((id) => atDeath.get(id)!.state === 'queued')).toBe(true)
    expect(accepted.some((id) => atDeath.get(id)!.state === 'succeeded')).toBe(true)

    server = await start()
    const final = await until(
      async () => {
        const ops = await Promise.all(accepted.map((id) => operation(server, id)))
        return ops.every((op) => op.done) && ops
      },
      40_000,
      { interval: 200 },
    )
    for (const op of final) {
      expect(op.state, `${op.id} (${op.name}): ${JSON.stringify(op.error)}`).toBe('succeeded')
      const before = atDeath.get(op.id)!
      if (before.state === 'running') expect(op.attempt, `${op.id} ran again`).toBeGreaterThanOrEqual(2)
      // Finished before the crash: untouched since (not run again).
      else if (before.state === 'succeeded') expect(op.attempt, `${op.id} ran once`).toBe(1)
      else expect(op.attempt, `${op.id} ran`).toBeGreaterThanOrEqual(1)
    }
    // Nothing appeared that was not accepted.
    expect((await call<Record<string, number>>(server, 'GET', '/operations/stats')).body.total).toBe(20)
  }, 60_000)

  it('keeps every acknowledged submission when killed right after the last 202', async () => {
    let server = await start()
    const routes: [string, unknown][] = [
      ['sample', { delayMs: 200 }],
      ['batch', { items: ['a', 'b'] }],
      ['api-call', { endpoint: 'https://api.example.com/x' }],
      ['file-processing', { filePath: '/tmp/x', fileSize: 1 }],
    ]
    const responses = await Promise.all(
      Array.from({ length: 200 }, async (_, i) => {
        const [task, input] = routes[i % routes.length]!
        try {
          return await call(server, 'POST', `${TASKS}/${task}`, input)
        } catch (err) {
          return { status: 0, body: { id: '', error: String(err) } as unknown as OperationResource }
        }
      }),
    )
    await server.kill('SIGKILL')

    const accepted = responses.filter((res) => res.status === 202).map((res) => res.body.id)
    // Nothing should have been refused; the property under test is about the 202s either way.
    expect(responses.filter((res) => res.status !== 202).map((res) => res.status)).toEqual([])
    expect(new Set(accepted).size).toBe(accepted.length)

    server = await start()
    const ops = await Promise.all(accepted.map((id) => operation(server, id)))
    expect(ops.map((op) => op.id)).toEqual(accepted)
    expect((await call<Record<string, number>>(server, 'GET', '/operations/stats')).body.total).toBe(accepted.length)
  }, 60_000)

  it('on SIGTERM stops gracefully, gives running work back, and runs it again after a restart', async () => {
    let server = await start()
    const long = await submit(server, 'sample', { delayMs: 60_000, description: 'long' })
    await until(async () => (await operation(server, long)).state === 'running', 10_000)
    // demo.sample runs two at a time: with the long one in a slot, these run one after another.
    const shorts: string[] = []
    for (let i = 0; i < 3; i++) shorts.push(await submit(server, 'sample', { delayMs: 800, description: `short ${i}` }))

    const exit = await server.kill('SIGTERM', 20_000)
    expect(exit).toEqual({ code: 0, signal: null })
    // A graceful stop abandons no handler past the grace period and logs no error (such as an
    // outcome it failed to record).
    expect(server.output()).not.toContain('ignored its abort signal')
    expect(server.output()).not.toMatch(/"level":(50|60)/)

    const onDisk = rowsOnDisk(dbPath)
    expect(onDisk.get(long)).toMatchObject({ state: 'queued', attempt: 1, worker: null })
    for (const id of shorts) expect(['queued', 'succeeded']).toContain(onDisk.get(id)!.state)
    expect([...onDisk.values()].filter((row) => row.state === 'running')).toEqual([])

    server = await start()
    // Attempt 2 normally; more only if the new process lost its own lease under heavy load.
    await until(async () => {
      const op = await operation(server, long)
      return op.state === 'running' && op.attempt >= 2
    }, 20_000)
    const cancel = await call(server, 'POST', `/operations/${long}/cancel`)
    expect(cancel.status).toBe(200)
    const canceled = await until(async () => {
      const op = await operation(server, long)
      return op.done && op
    }, 10_000)
    expect(canceled.state).toBe('canceled')
    expect(canceled.attempt).toBeGreaterThanOrEqual(2)

    const finished = await until(
      async () => {
        const ops = await Promise.all(shorts.map((id) => operation(server, id)))
        return ops.every((op) => op.done) && ops
      },
      20_000,
      { interval: 100 },
    )
    for (const op of finished) expect(op.state).toBe('succeeded')
  }, 60_000)

  it('exits at once, with code 1, on a second SIGTERM while the first is still stopping', async () => {
    // A long grace period, and a request whose body never arrives: Fastify's close waits for that
    // request forever, so the first SIGTERM cannot finish before the second one arrives.
    const server = await start({ LONGRUN_GRACE_MS: '30000', LOG_LEVEL: 'info' })
    const long = await submit(server, 'sample', { delayMs: 60_000 })
    await until(async () => (await operation(server, long)).state === 'running', 10_000)

    const socket = connect(server.port, '127.0.0.1')
    sockets.push(socket)
    socket.on('error', () => {})
    socket.write(
      `POST ${TASKS}/sample?inflight=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n` +
        'Content-Length: 100\r\n\r\n{"delayMs":',
    )
    await until(() => server.output().includes('inflight=1'), 10_000)

    server.signal('SIGTERM')
    await until(() => server.output().includes('SIGTERM: stopping'), 10_000)
    expect(server.exit).toBeUndefined()
    server.signal('SIGTERM')
    const exit = await server.waitExit(10_000)
    expect(exit).toEqual({ code: 1, signal: null })
    expect(server.output()).toContain('SIGTERM again: exiting at once')
  }, 60_000)
})
