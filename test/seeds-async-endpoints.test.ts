import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { tempDir } from './helpers/http.js'
import { call, startSeed, type Json } from './helpers/seeds.js'
import type { ChildServer } from './helpers/child-server.js'
import { until } from './helpers/until.js'

// examples/seeds/async-endpoints: AsyncEndpoints' design (seed 003) over real sockets, against the
// example running as `npm run example -- async-endpoints` does.

let server: ChildServer
let dir: ReturnType<typeof tempDir>

beforeAll(async () => {
  dir = tempDir('longrun-seed-async-endpoints-')
  server = await startSeed('async-endpoints', {
    dbPath: `${dir.path}/async-endpoints.db`,
    env: { LOG_LEVEL: 'info' },
  })
})

afterAll(async () => {
  await server?.kill('SIGTERM')
  dir?.remove()
})

const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
  call(server.url, 'POST', path, { body, headers })
const get = (path: string) => call(server.url, 'GET', path)

async function finished(id: string): Promise<Json> {
  const res = await call(server.url, 'GET', `/operations/${id}/wait?timeout=20`)
  expect(res.json.done, res.text).toBe(true)
  return res.json
}

const total = async (): Promise<number> => (await get('/operations/stats')).json.total

describe('AsyncEndpoints: MapAsyncPost("/{resourceId}")', () => {
  it('queues the request and answers 202 at once with the request id and its metadata', async () => {
    const res = await post('/orders-1', { message: 'hello', delayMs: 300 })
    expect(res.status).toBe(202)
    expect(res.headers.get('location')).toBe(`/operations/${res.json.id}`)
    expect(res.headers.get('retry-after')).toBe('1')
    expect(res.json).toMatchObject({ name: 'async-endpoint', state: 'queued', done: false, maxAttempts: 3 })
    expect(res.json.links.self).toBe(`/operations/${res.json.id}`)
  })

  it('gives the handler the route parameters, the query and the headers', async () => {
    const res = await post(
      '/resource-42?filter=active&tag=a&tag=b',
      { message: 'with context' },
      { 'x-tenant': 'acme' },
    )
    const job = await finished(res.json.id)
    expect(job.state).toBe('succeeded')
    expect(job.result).toMatchObject({
      resourceId: 'resource-42',
      message: 'with context',
      query: { filter: 'active', tag: ['a', 'b'] },
      headers: { 'x-tenant': 'acme', 'content-type': 'application/json' },
      attempt: 1,
    })
    // The handler's log lines (logger.LogInformation) carry the job's id.
    const lines = () =>
      server
        .output()
        .split('\n')
        .filter((line) => line.includes(res.json.id))
    await until(() => lines().some((line) => line.includes('"msg":"Handling request for resourceId resource-42"')))
    await until(() => lines().some((line) => line.includes('"msg":"Request processed successfully."')))
  })

  it('shows the latest status: the worker updates it, and the response of a completed job', async () => {
    const { json } = await post('/status-demo', { delayMs: 400 })
    const running = await until(async () => {
      const status = (await get(`/operations/${json.id}`)).json
      return status.state === 'running' && status.progress.step === 'Processing' && status
    })
    expect(running.progress).toMatchObject({ percent: 0, step: 'Processing' })
    expect(running.done).toBe(false)
    const done = await finished(json.id)
    expect(done).toMatchObject({ state: 'succeeded', progress: { percent: 100, step: 'Done' } })
    expect(done.result.resourceId).toBe('status-demo')
    expect(done.history.map((entry: Json) => entry.event)).toEqual(['submitted', 'started', 'succeeded'])
  })

  describe('the pre-queue delegate', () => {
    it('validates the request and answers 400 with its errors, storing nothing', async () => {
      const before = await total()
      const res = await post('/not%20valid', { message: '   ' })
      expect(res.status).toBe(400)
      expect(res.json).toEqual({
        errors: ['resourceId must be 1-64 letters, digits, - or _', 'message must not be blank'],
      })
      expect(await total()).toBe(before)
    })

    it('continues to the queue when the request is valid', async () => {
      const before = await total()
      expect((await post('/valid_id-1', { message: 'fine' })).status).toBe(202)
      expect(await total()).toBe(before + 1)
    })
  })

  describe('retries and the results of each run', () => {
    it('retries a failed run and shows every attempt', async () => {
      const { json } = await post('/flaky', { failAttempts: 2 })
      const job = await finished(json.id)
      expect(job).toMatchObject({ state: 'succeeded', attempt: 3, result: { attempt: 3 } })
      expect(job.attempts).toHaveLength(3)
      expect(job.attempts.map((a: Json) => a.outcome)).toEqual(['retry-scheduled', 'retry-scheduled', 'succeeded'])
      expect(job.attempts[0].error).toMatchObject({ code: 'handler-error', detail: "Attempt 1 of 'flaky' failed" })
      expect(job.attempts[1].error).toMatchObject({ detail: "Attempt 2 of 'flaky' failed" })
      expect(job.attempts[2].error).toBeUndefined()
    })

    it('fails with the list of errors after the last attempt, each attempt with its own', async () => {
      const { json } = await post('/broken', { fail: true })
      const job = await finished(json.id)
      expect(job.state).toBe('failed')
      expect(job.error).toMatchObject({
        detail: 'Request failed',
        errors: ["Resource 'broken' could not be processed", 'Attempt 3 gave up'],
      })
      expect(job.attempts.map((a: Json) => a.outcome)).toEqual(['retry-scheduled', 'retry-scheduled', 'failed'])
      expect(job.attempts.map((a: Json) => a.error.errors[1])).toEqual([
        'Attempt 1 gave up',
        'Attempt 2 gave up',
        'Attempt 3 gave up',
      ])

      const error = await get(`/operations/${json.id}/error`)
      expect(error.status).toBe(200)
      expect(error.json.error.errors).toEqual(["Resource 'broken' could not be processed", 'Attempt 3 gave up'])
      const result = await get(`/operations/${json.id}/result`)
      expect(result.status).toBe(409)
      expect(result.json.error.errors).toHaveLength(2)
      await until(() => server.output().includes("Request failed: Resource 'broken' could not be processed"))
    })
  })

  describe('the request id header', () => {
    it('makes a request sent again with the same Async-Job-Id the same job', async () => {
      const headers = { 'Async-Job-Id': 'job-2026-0001' }
      const first = await post('/orders-7', '{"message": "once"}', headers)
      expect(first.status).toBe(202)
      expect(first.headers.get('idempotency-key-recommended')).toBeNull()
      const again = await post('/orders-7', '{ "message": "once" }', headers)
      expect(again.status).toBe(202)
      expect(again.json.id).toBe(first.json.id)
      expect(again.headers.get('idempotent-replayed')).toBe('true')
      // The same id for another request is refused rather than answered with the other's job.
      const other = await post('/orders-7', { message: 'twice' }, headers)
      expect(other.status).toBe(422)
      expect(other.json.code).toBe('idempotency-key-mismatch')
    })

    it('reads X-Request-Id as well', async () => {
      const headers = { 'X-Request-Id': 'req-77' }
      const first = await post('/orders-8', { message: 'x' }, headers)
      const again = await post('/orders-8', { message: 'x' }, headers)
      expect(again.json.id).toBe(first.json.id)
      expect(again.headers.get('idempotent-replayed')).toBe('true')
    })

    it('flags a request sent without one: Idempotency-Key-Recommended: true', async () => {
      const res = await post('/orders-9', { message: 'no id' })
      expect(res.status).toBe(202)
      expect(res.headers.get('idempotency-key-recommended')).toBe('true')
      // Each such request is a job of its own.
      const again = await post('/orders-9', { message: 'no id' })
      expect(again.json.id).not.toBe(res.json.id)
    })

    it('warns a request sent without Async-Job-Id to use that header, and only such a request', async () => {
      const res = await post('/orders-10', { message: 'no id' })
      expect(res.status).toBe(202)
      expect(res.json.warning).toMatch(/^Send an Async-Job-Id \(or X-Request-Id\) header/)
      const identified = await post('/orders-10', { message: 'with id' }, { 'async-job-id': 'job-10' })
      expect(identified.status).toBe(202)
      expect(identified.json.warning).toBeUndefined()
      expect(identified.json).toMatchObject({ id: expect.any(String), state: 'queued' })
    })
  })
})
