import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { tempDir } from './helpers/http.js'
import { call, startSeed, type Json } from './helpers/seeds.js'
import type { ChildServer } from './helpers/child-server.js'
import { until } from './helpers/until.js'

// examples/seeds/qbm-http: qbm-http's asynchronous request handling (seed 002) over real sockets,
// against the example running as `npm run example -- qbm-http` does: one server with the default
// async timeout (60 s), one with ASYNC_TIMEOUT=1 for the 408.

let server: ChildServer // ASYNC_TIMEOUT unset: 60 s
let short: ChildServer // ASYNC_TIMEOUT=1
let dir: ReturnType<typeof tempDir>

beforeAll(async () => {
  dir = tempDir('longrun-seed-qbm-http-')
  ;[server, short] = await Promise.all([
    startSeed('qbm-http', { dbPath: `${dir.path}/qbm-http.db` }),
    startSeed('qbm-http', { dbPath: `${dir.path}/qbm-http-short.db`, env: { ASYNC_TIMEOUT: '1' } }),
  ])
})

afterAll(async () => {
  await Promise.all([server?.kill('SIGTERM'), short?.kill('SIGTERM')])
  dir?.remove()
})

const asyncTask = (on: ChildServer, delayMs: number, options: Parameters<typeof call>[3] = {}) =>
  call(on.url, 'GET', `/async-task?delayMs=${delayMs}`, options)

const ids = async (on: ChildServer, state: string): Promise<string[]> =>
  (await call(on.url, 'GET', `/operations?name=qbm.async-task&state=${state}&limit=100`)).json.items.map(
    (item: Json) => item.id,
  )

/** Starts held requests and resolves with their operations' ids once they all run. */
async function holdRunning(on: ChildServer, count: number, options: Parameters<typeof call>[3] = {}) {
  const before = new Set(await ids(on, 'queued,running,succeeded,failed,canceled'))
  const answers = Array.from({ length: count }, () => asyncTask(on, 30_000, options))
  const running = await until(async () => {
    const fresh = (await ids(on, 'running')).filter((id) => !before.has(id))
    return fresh.length === count && fresh
  })
  return { answers, running }
}

describe('qbm-http: GET /async-task, made async', () => {
  it('keeps the request open and answers it when the work completes', async () => {
    const res = await asyncTask(server, 200, { headers: { 'x-user-id': '42' } })
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/^application\/json/)
    // completion->header(name, value): a header of the handler's answer.
    expect(res.headers.get('x-completed-by')).toBe('async-worker')
    expect(res.json).toEqual({ user_id: '42', name: 'User 42', fetchedAfterMs: 200, check_passed: true })
    const location = res.headers.get('content-location')!
    expect(location).toMatch(/^\/operations\/[0-9a-f-]{36}$/)
    expect((await call(server.url, 'GET', location)).json.state).toBe('succeeded')
  })

  it('holds longer than a second by default (configure_async_timeout: 60 s)', async () => {
    const res = await asyncTask(server, 1_500)
    expect(res.status).toBe(200)
    expect(res.json.user_id).toBe('anonymous')
  })

  it('does not block: other requests are served while work is pending', async () => {
    const slow = asyncTask(server, 2_000)
    const stats = await call(server.url, 'GET', '/operations/stats')
    expect(stats.status).toBe(200)
    const quick = await asyncTask(server, 50)
    expect(quick.status).toBe(200)
    let slowDone = false
    void slow.then(() => (slowDone = true))
    expect(slowDone).toBe(false)
    expect((await slow).status).toBe(200)
  })

  it('answers 408 after the async timeout (ASYNC_TIMEOUT=1), with where to poll the work', async () => {
    const res = await asyncTask(short, 3_000)
    expect(res.status).toBe(408)
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/)
    expect(res.json).toMatchObject({ code: 'hold-timeout', status: 408 })
    expect(['queued', 'running']).toContain(res.json.state)
    const location = res.headers.get('location')!
    expect(location).toMatch(/^\/operations\//)
    // The request is no longer tracked, but the work goes on.
    const done = await call(short.url, 'GET', `${location}/wait?timeout=20`)
    expect(done.json.state).toBe('succeeded')
    expect(done.json.result.fetchedAfterMs).toBe(3_000)
  })

  it('still answers work that ends within the short timeout', async () => {
    expect((await asyncTask(short, 100)).status).toBe(200)
  })

  it('answers an error instead of the result when the work fails (completion->cancel)', async () => {
    const res = await call(server.url, 'GET', '/async-task?delayMs=10&fail=true', { headers: { 'x-user-id': '7' } })
    // completion->cancel(404, message): the status and message the handler chose.
    expect(res.status).toBe(404)
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/)
    expect(res.text).toBe('No data for user 7')
    const location = res.headers.get('content-location')!
    expect((await call(server.url, 'GET', `${location}/error`)).json.error).toMatchObject({ statusCode: 404 })
  })

  describe('the async middleware', () => {
    it('stops the chain: 400 "Async check failed", and no work is queued', async () => {
      const before = (await call(server.url, 'GET', '/operations/stats')).json.total
      const res = await asyncTask(server, 100, { headers: { 'some-header': 'fail' } })
      expect(res.status).toBe(400)
      expect(res.headers.get('content-type')).toMatch(/^text\/plain/)
      expect(res.text).toBe('Async check failed')
      expect((await call(server.url, 'GET', '/operations/stats')).json.total).toBe(before)
    })

    it('continues the chain, and the handler reads what it set (check_passed)', async () => {
      const res = await asyncTask(server, 10, { headers: { 'some-header': 'fine' } })
      expect(res.status).toBe(200)
      expect(res.json.check_passed).toBe(true)
    })
  })

  describe('cancellation', () => {
    it('cancel_request: canceling the work answers the held request (409 operation-canceled)', async () => {
      const { answers, running } = await holdRunning(server, 1)
      const cancel = await call(server.url, 'POST', `/operations/${running[0]}/cancel`)
      expect(cancel.status).toBe(200)
      const res = await answers[0]!
      expect(res.status).toBe(409)
      expect(res.json).toMatchObject({ code: 'operation-canceled', state: 'canceled' })
    })

    it('a client that disconnects cancels the work: the handler sees the session is gone', async () => {
      const controller = new AbortController()
      const { answers, running } = await holdRunning(server, 1, { signal: controller.signal })
      controller.abort()
      await expect(answers[0]).rejects.toThrow()
      const done = await until(async () => {
        const op = (await call(server.url, 'GET', `/operations/${running[0]}`)).json
        return op.done && op
      })
      expect(done.state).toBe('canceled')
      expect(done.result).toBeUndefined()
    })
  })

  it('force_timeout_all_requests: times out every held request now (408), and the work goes on', async () => {
    const { answers, running } = await holdRunning(server, 3)
    const forced = await call(server.url, 'POST', '/admin/force-timeout')
    expect(forced.status).toBe(204)
    for (const answer of await Promise.all(answers)) {
      expect(answer.status).toBe(408)
      expect(answer.json).toMatchObject({ code: 'hold-timeout', state: 'running' })
    }
    for (const id of running) expect((await call(server.url, 'GET', `/operations/${id}`)).json.state).toBe('running')
    for (const id of running) await call(server.url, 'POST', `/operations/${id}/cancel`)
  })

  // Last: it stops `server`.
  it('answers every held request at shutdown (503 shutting-down with Location), then exits', async () => {
    const { answers, running } = await holdRunning(server, 5)
    const exit = server.kill('SIGTERM')
    const results = await Promise.all(answers)
    for (const res of results) {
      expect(res.status).toBe(503)
      expect(res.json.code).toBe('shutting-down')
      expect(res.headers.get('retry-after')).toMatch(/^\d+$/)
      expect(running).toContain(res.headers.get('location')!.replace('/operations/', ''))
    }
    expect(await exit).toEqual({ code: 0, signal: null })

    // The work was put back, not lost: the next start finds it again.
    const next = await startSeed('qbm-http', { dbPath: `${dir.path}/qbm-http.db` })
    try {
      for (const id of running) {
        const op = (await call(next.url, 'GET', `/operations/${id}`)).json
        expect(['queued', 'running']).toContain(op.state)
        expect(op.attempts[0].outcome).toBe('released')
        await call(next.url, 'POST', `/operations/${id}/cancel`)
      }
    } finally {
      await next.kill('SIGTERM')
    }
  })
})
