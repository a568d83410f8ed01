import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { tempDir } from './helpers/http.js'
import { call, startSeed, type Json } from './helpers/seeds.js'
import type { ChildServer } from './helpers/child-server.js'
import { until } from './helpers/until.js'

// examples/seeds/async-flow: AsyncFlow's documented endpoints (seed 004), replayed over real sockets
// against the example running as `npm run example -- async-flow` does.

const SECONDS_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/

let server: ChildServer
let dir: ReturnType<typeof tempDir>

beforeAll(async () => {
  dir = tempDir('longrun-seed-async-flow-')
  server = await startSeed('async-flow', { dbPath: `${dir.path}/async-flow.db` })
})

afterAll(async () => {
  await server?.kill('SIGTERM')
  dir?.remove()
})

const api = (method: string, path: string, body?: unknown) =>
  call(server.url, method, path, body === undefined ? {} : { body })

async function enqueue(flow: string, body: unknown): Promise<string> {
  const res = await api('POST', `/${flow}`, body)
  expect(res.status, res.text).toBe(202)
  return res.json.RequestId as string
}

const statusOf = async (flow: string, id: string): Promise<Json> => (await api('GET', `/${flow}/${id}/status`)).json

const ended = (flow: string, id: string) =>
  until(
    async () => {
      const status = await statusOf(flow, id)
      return ['Succeeded', 'Failed', 'Canceled'].includes(status.Status) && status
    },
    15_000,
    { what: `${flow} job ${id} ended` },
  )

describe('AsyncFlow: MapFlow("data")', () => {
  it('answers the enqueue endpoint with { RequestId, DateTime }', async () => {
    const res = await api('POST', '/data', '{"count": 2}')
    expect(res.status).toBe(202)
    expect(Object.keys(res.json).sort()).toEqual(['DateTime', 'RequestId'])
    expect(res.json.RequestId).toMatch(/^[0-9a-f-]{36}$/)
    expect(res.json.DateTime).toMatch(SECONDS_UTC)
    expect(Math.abs(Date.parse(res.json.DateTime) - Date.now())).toBeLessThan(60_000)
  })

  it('shows Status and progressData { progress, percentage } while processing, then Succeeded', async () => {
    const id = await enqueue('data', { count: 10, delayMs: 100 })
    const first = await statusOf('data', id)
    expect(Object.keys(first).sort()).toEqual(['CreatedAt', 'RequestId', 'Status', 'progressData'])
    expect(first.RequestId).toBe(id)
    expect(first.CreatedAt).toMatch(SECONDS_UTC)
    expect(['Enqueued', 'Processing']).toContain(first.Status)

    const processing = await until(async () => {
      const status = await statusOf('data', id)
      const { percentage } = status.progressData
      return status.Status === 'Processing' && percentage > 0 && percentage < 100 && status
    })
    expect(processing.progressData).toEqual({ progress: 'Generating Data', percentage: expect.any(Number) })

    const done = await ended('data', id)
    expect(done).toEqual({
      RequestId: id,
      Status: 'Succeeded',
      CreatedAt: first.CreatedAt,
      progressData: { progress: 'Generating Data', percentage: 100 },
    })
  })

  it('answers the result endpoint with the JSON of the result object once done, 409 before', async () => {
    const id = await enqueue('data', { count: 3, delayMs: 300 })
    const early = await api('GET', `/data/${id}/result`)
    expect(early.status).toBe(409)
    expect(early.json.code).toBe('operation-not-done')
    await ended('data', id)
    const res = await api('GET', `/data/${id}/result`)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/^application\/json/)
    expect(res.json).toEqual({ items: ['item-1', 'item-2', 'item-3'] })
  })

  it('answers the error endpoint of a failed job with { JobId, Error { Type, Message, StackTrace } }', async () => {
    const id = await enqueue('data', { count: 2, delayMs: 10, fail: true })
    const done = await ended('data', id)
    expect(done.Status).toBe('Failed')
    // It failed at its end, after all its progress.
    expect(done.progressData).toEqual({ progress: 'Generating Data', percentage: 100 })

    const res = await api('GET', `/data/${id}/error`)
    expect(res.status).toBe(200)
    expect(res.json).toEqual({
      JobId: id,
      Error: {
        Type: 'DataGenerationException',
        Message: 'Data generation failed after 2 items',
        StackTrace: expect.stringContaining('DataGenerationException: Data generation failed after 2 items'),
      },
    })
    expect(res.json.Error.StackTrace).toMatch(/\n\s+at /)

    const result = await api('GET', `/data/${id}/result`)
    expect(result.status).toBe(409)
    expect(result.json.code).toBe('operation-failed')
  })

  it('answers the error endpoint of a job that did not fail with 404', async () => {
    const id = await enqueue('data', { count: 1, delayMs: 0 })
    await ended('data', id)
    const res = await api('GET', `/data/${id}/error`)
    expect(res.status).toBe(404)
    expect(res.json.code).toBe('no-error')
  })

  it('deletes a finished job and its result with an empty answer', async () => {
    const id = await enqueue('data', { count: 1, delayMs: 0 })
    await ended('data', id)
    const res = await api('DELETE', `/data/${id}`)
    expect(res.status).toBe(204)
    expect(res.text).toBe('')
    expect((await api('GET', `/data/${id}/status`)).status).toBe(404)
    expect((await api('GET', `/data/${id}/result`)).status).toBe(404)
  })

  it('refuses to delete a job still running (409), and answers unknown job ids 404', async () => {
    const id = await enqueue('data', { count: 50, delayMs: 100 })
    const res = await api('DELETE', `/data/${id}`)
    expect(res.status).toBe(409)
    expect(res.json.code).toBe('operation-not-finished')
    for (const path of ['/status', '/result', '/error', '']) {
      const unknown = await api(path === '' ? 'DELETE' : 'GET', `/data/no-such-job${path}`)
      expect(unknown.status).toBe(404)
    }
    // Leave nothing running behind.
    await api('POST', `/operations/${id}/cancel`)
  })

  it('validates the request before enqueueing it', async () => {
    const res = await api('POST', '/data', { count: 0 })
    expect(res.status).toBe(422)
    expect(res.json.code).toBe('invalid-body')
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/)
  })
})

describe('AsyncFlow: a second flow, MapFlow("report") with its configurator', () => {
  it('serves the same five endpoints with its own request and response types', async () => {
    const id = await enqueue('report', { title: 'Quarterly', sections: 2, delayMs: 20 })
    const done = await ended('report', id)
    expect(done).toMatchObject({
      RequestId: id,
      Status: 'Succeeded',
      progressData: { progress: 'Done', percentage: 100 },
    })
    const result = await api('GET', `/report/${id}/result`)
    expect(result.json).toEqual({ title: 'Quarterly', sections: ['Quarterly, section 1', 'Quarterly, section 2'] })
    expect((await api('DELETE', `/report/${id}`)).status).toBe(204)
  })

  it('fails at its end with "fail": true, with its own error type', async () => {
    const id = await enqueue('report', { title: 'Broken', sections: 1, delayMs: 0, fail: true })
    expect((await ended('report', id)).Status).toBe('Failed')
    const res = await api('GET', `/report/${id}/error`)
    expect(res.json.Error).toMatchObject({
      Type: 'ReportGenerationException',
      Message: "Report 'Broken' could not be generated",
    })
  })

  it("refuses the other flow's body", async () => {
    expect((await api('POST', '/report', { count: 3 })).status).toBe(422)
  })

  it("answers 404 at the data flow's endpoints for a job of the report flow", async () => {
    const id = await enqueue('report', { title: 'Mine', sections: 1, delayMs: 0 })
    await ended('report', id)
    for (const [method, path] of [
      ['GET', `/data/${id}/status`],
      ['GET', `/data/${id}/result`],
      ['GET', `/data/${id}/error`],
      ['DELETE', `/data/${id}`],
    ] as const) {
      expect((await api(method, path)).status, `${method} ${path}`).toBe(404)
    }
    expect((await api('GET', `/report/${id}/status`)).status).toBe(200)
  })
})
