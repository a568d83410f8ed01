import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { tempDir, type Json } from './helpers/http.js'
import { startSeed } from './helpers/seeds.js'
import type { ChildServer } from './helpers/child-server.js'
import { until } from './helpers/until.js'

// The Node "async task system" seed (../shared/seeds/001), replayed on examples/seeds/node-tasks
// started as its README says: every request of the seed's document, its bodies verbatim, and the
// documented answers and shapes.

const dir = tempDir('longrun-seed-node-tasks-')
let server: ChildServer

beforeAll(async () => {
  server = await startSeed('node-tasks', {
    dbPath: `${dir.path}/tasks.db`,
    env: { MAX_COMPLETED_TASKS: '2', MAX_FAILED_TASKS: '1', TASK_CLEANUP_INTERVAL: '3600000', LOG_LEVEL: 'debug' },
  })
}, 30_000)
afterAll(async () => {
  await server?.kill('SIGTERM')
  dir.remove()
})

async function call(method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(server.url + path, {
    method,
    headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
    ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
  })
  const text = await res.text()
  expect(res.status, `${method} ${path}: ${text}`).toBeLessThan(500)
  return { status: res.status, body: (text ? JSON.parse(text) : undefined) as Json }
}

const statusOf = (id: string, headers?: Record<string, string>) =>
  call('GET', `/api/v1/tasks/${id}/status`, undefined, headers)
const until_ = (id: string, status: string, headers?: Record<string, string>) =>
  until(
    async () => {
      const res = await statusOf(id, headers)
      return res.body.status === status ? res.body : undefined
    },
    20_000,
    { what: `${id} ${status}` },
  )

describe('the seed document, request by request', () => {
  it('creates a sample task: the documented envelope, then its progress with steps, then it in the list', async () => {
    // The body verbatim, as in the seed's curl.
    const created = await call(
      'POST',
      '/api/v1/demo/tasks/sample',
      `{
    "delayMs": 3000,
    "description": "My first async task"
  }`,
    )
    expect(created.status).toBe(202)
    expect(created.body).toEqual({
      success: true,
      message: 'Sample task created and started',
      task: {
        id: expect.stringMatching(/^[0-9a-f-]{36}$/),
        name: 'Sample Long-Running Task',
        status: 'pending',
        progress: 0,
        sessionKey: expect.stringMatching(/^ip:/),
      },
      note: 'Task is running in the background. Use the task ID to check progress.',
    })
    const { id } = created.body.task

    const running = await until(
      async () => {
        const res = await statusOf(id)
        return res.body.currentStep === 'Processing Data' ? res.body : undefined
      },
      20_000,
      { what: 'the step Processing Data' },
    )
    expect(running).toEqual({
      success: true,
      status: 'running',
      progress: 25,
      currentStep: 'Processing Data',
      currentStepDescription: 'Analyzing input data and preparing output',
      startedAt: expect.any(Number),
      completedAt: null,
      error: null,
    })
    expect(Math.abs(running.startedAt - Date.now())).toBeLessThan(60_000)

    const done = await until_(id, 'completed')
    expect(done).toMatchObject({ progress: 100, completedAt: expect.any(Number), error: null })

    const list = await call('GET', '/api/v1/tasks')
    expect(list.body).toEqual({
      success: true,
      tasks: [
        expect.objectContaining({
          id,
          name: 'Sample Long-Running Task',
          status: 'completed',
          progress: 100,
          createdAt: expect.any(Number),
          completedAt: expect.any(Number),
        }),
      ],
      count: 1,
    })
  }, 30_000)

  it('runs the other three demo tasks with their documented bodies', async () => {
    const bodies: [string, string, string][] = [
      [
        'file-processing',
        '{"filePath": "/path/to/file.txt", "fileSize": 1024, "description": "Processing my document"}',
        'File Processing Task',
      ],
      [
        'api-call',
        '{"endpoint": "https://api.example.com/data", "data": {"key": "value"}, "description": "Fetching external data"}',
        'API Call Task',
      ],
      [
        'batch',
        '{"items": ["item1", "item2", "item3", "item4", "item5"], "description": "Processing multiple items"}',
        'Batch Processing Task',
      ],
    ]
    const headers = { 'x-session-key': 'demo-three' }
    for (const [path, body, title] of bodies) {
      const created = await call('POST', `/api/v1/demo/tasks/${path}`, body, headers)
      expect(created.status, path).toBe(202)
      expect(created.body.task).toMatchObject({
        name: title,
        status: 'pending',
        sessionKey: expect.stringMatching(/^session:/),
      })
      await until_(created.body.task.id, 'completed', headers)
    }
  }, 30_000)

  it('creates a task with the seed body, starts it, and cancels and retries others', async () => {
    const headers = { 'x-session-key': 'control' }
    const created = await call(
      'POST',
      '/api/v1/tasks',
      {
        name: 'File Processing',
        description: 'Processing uploaded file',
        metadata: { fileName: 'a.txt', fileSize: 10 },
      },
      headers,
    )
    expect(created.status).toBe(202)
    expect(created.body).toMatchObject({ success: true, task: { name: 'File Processing', status: 'pending' } })
    const { id } = created.body.task
    // Created, not started: it stays pending.
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect((await statusOf(id, headers)).body.status).toBe('pending')
    expect((await call('GET', `/api/v1/tasks/${id}`, undefined, headers)).body).toMatchObject({
      success: true,
      task: { id, name: 'File Processing', status: 'pending' },
    })
    const started = await call('POST', `/api/v1/tasks/${id}/start`, undefined, headers)
    expect(started.status).toBe(202)
    await until_(id, 'completed', headers)

    const other = (await call('POST', '/api/v1/tasks', { name: 'Later' }, headers)).body.task.id
    const cancelled = await call('POST', `/api/v1/tasks/${other}/cancel`, undefined, headers)
    expect(cancelled.body).toMatchObject({ success: true, task: { id: other, status: 'cancelled' } })
    const retried = await call('POST', `/api/v1/tasks/${other}/retry`, undefined, headers)
    expect(retried.status).toBe(202)
    await until_(other, 'completed', headers)

    const failing = await call('POST', '/api/v1/demo/tasks/sample', { delayMs: 40, fail: true }, headers)
    const failed = await until_(failing.body.task.id, 'failed', headers)
    expect(failed.error).toBe('The task was asked to fail')
  }, 30_000)

  it('keeps sessions apart: by session key, and by IP without one', async () => {
    const alice = { 'x-session-key': 'alice' }
    const mine = (await call('POST', '/api/v1/demo/tasks/sample', { delayMs: 0 }, alice)).body.task.id
    expect((await call('GET', '/api/v1/tasks', undefined, alice)).body.tasks.map((t: Json) => t.id)).toEqual([mine])
    expect((await call('GET', '/api/v1/tasks', undefined, { 'x-session-key': 'bob' })).body).toEqual({
      success: true,
      tasks: [],
      count: 0,
    })
    expect((await statusOf(mine, { 'x-session-key': 'bob' })).status).toBe(404)
    const byIp = (await call('GET', '/api/v1/tasks')).body.tasks
    expect(byIp.map((t: Json) => t.id)).not.toContain(mine)
  })

  it('answers the statistics, the cleanup status and a manual cleanup in the seed shapes', async () => {
    const headers = { 'x-session-key': 'stats' }
    const ids: string[] = []
    for (let i = 0; i < 3; i++)
      ids.push((await call('POST', '/api/v1/demo/tasks/sample', { delayMs: 0 }, headers)).body.task.id)
    for (const id of ids) await until_(id, 'completed', headers)
    const canceled = (await call('POST', '/api/v1/tasks', { name: 'never' }, headers)).body.task.id
    await call('POST', `/api/v1/tasks/${canceled}/cancel`, undefined, headers)

    expect((await call('GET', '/api/v1/tasks/stats', undefined, headers)).body).toEqual({
      success: true,
      stats: { total: 4, pending: 0, running: 0, completed: 3, failed: 0, cancelled: 1 },
    })
    expect((await call('GET', '/api/v1/tasks/cleanup/status', undefined, headers)).body).toEqual({
      success: true,
      status: {
        isRunning: false,
        isActive: true,
        options: { maxCompletedTasks: 2, maxFailedTasks: 1, cleanupInterval: 3_600_000 },
        lastRun: 'idle',
      },
    })
    // MAX_COMPLETED_TASKS=2: the manual cleanup keeps the newest two completed tasks of the session.
    const run = await call('POST', '/api/v1/tasks/cleanup/run', undefined, headers)
    expect(run.status).toBe(200)
    expect(run.body).toMatchObject({ success: true, result: { removed: { trimmed: expect.any(Number) } } })
    expect((await call('GET', '/api/v1/tasks/stats', undefined, headers)).body.stats).toMatchObject({ completed: 2 })
    const status = (await call('GET', '/api/v1/tasks/cleanup/status', undefined, headers)).body.status
    expect(status.lastRun).toMatchObject({ trigger: 'request' })
  })

  it('logs the execution lines of the seed', async () => {
    const { id } = (await call('POST', '/api/v1/demo/tasks/sample', { delayMs: 0 })).body.task
    await until_(id, 'completed')
    const logged = await until(
      () => (server.output().includes(`Completed execution of task ${id}`) ? server.output() : undefined),
      10_000,
      { what: 'the completion log line' },
    )
    expect(logged).toMatch(new RegExp(`Starting execution of task ${id} for session ip:`))
    expect(logged).toContain(`Task ${id} progress: 0%`)
    expect(logged).toContain(`Task ${id} progress: 100%`)
  })
})
