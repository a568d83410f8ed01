import { spawn, type ChildProcess } from 'node:child_process'
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Webhook } from 'standardwebhooks'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { killAllServers, startServer } from './helpers/child-server.js'
import { tempDir } from './helpers/http.js'
import { describePostgres, dropSchema, freshSchemaName } from './helpers/postgres.js'
import { until } from './helpers/until.js'

// Callbacks never lost, with real processes: the demo server SIGKILLed while it delivers, then
// restarted; and two API nodes with two workers on PostgreSQL delivering each callback once.

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const SECRET = `whsec_${Buffer.from('the process tests secret, 24+ bytes').toString('base64')}`
const WEBHOOK_ENV = {
  LONGRUN_WEBHOOK_SECRET: SECRET,
  LONGRUN_CALLBACK_ALLOW: '127.0.0.1',
  LONGRUN_WEBHOOK_POLL_MS: '100',
  LONGRUN_WEBHOOK_LEASE_MS: '1000',
  LONGRUN_WEBHOOK_RETRY: '200ms,200ms,200ms',
}

interface Receiver {
  url: string
  received: { headers: IncomingHttpHeaders; body: string }[]
  server: Server
}

async function receiver(answer: (n: number) => number | 'hang'): Promise<Receiver> {
  const received: Receiver['received'] = []
  const server = createServer((request, response) => {
    let body = ''
    request.on('data', (chunk: Buffer) => (body += chunk.toString('utf8')))
    request.on('end', () => {
      received.push({ headers: request.headers, body })
      const status = answer(received.length)
      if (status !== 'hang') response.writeHead(status).end()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, received, server }
}

const receivers: Receiver[] = []
afterEach(async () => {
  await killAllServers()
  for (const { server } of receivers.splice(0)) {
    server.closeAllConnections()
    server.close()
  }
})

const submit = async (base: string, callbackUrl: string): Promise<string> => {
  const response = await fetch(`${base}/api/v1/demo/tasks/noop`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-session-key': 'hooks' },
    body: JSON.stringify({ callbackUrl }),
  })
  expect(response.status).toBe(202)
  return ((await response.json()) as { id: string }).id
}

describe('a callback across a crash', () => {
  it('is delivered after SIGKILL mid-delivery and a restart, with the same webhook-id', async () => {
    let hang = true
    const hook = await receiver(() => (hang ? 'hang' : 200))
    receivers.push(hook)
    const dir = tempDir('longrun-hooks-crash-')
    try {
      const dbPath = join(dir.path, 'demo.db')
      const first = await startServer({ dbPath, env: WEBHOOK_ENV })
      const id = await submit(first.url, hook.url)
      // The outcome is committed and the message is out: the receiver holds the request open.
      await until(() => hook.received.length === 1, 20_000)
      await first.kill('SIGKILL')
      hang = false

      const second = await startServer({ dbPath, env: WEBHOOK_ENV })
      await until(() => hook.received.length === 2, 20_000, { describe: () => second.output() })
      const [lost, delivered] = hook.received
      expect(delivered!.headers['webhook-id']).toBe(lost!.headers['webhook-id'])
      expect(new Webhook(SECRET).verify(delivered!.body, delivered!.headers as Record<string, string>)).toMatchObject({
        type: 'operation.succeeded',
        data: { id },
      })
      await until(async () => {
        const op = (await (
          await fetch(`${second.url}/operations/${id}`, { headers: { 'x-session-key': 'hooks' } })
        ).json()) as {
          callback: { state: string }
        }
        return op.callback.state === 'delivered'
      })
      // Delivered: nothing more is sent.
      await new Promise((resolve) => setTimeout(resolve, 1_500))
      expect(hook.received).toHaveLength(2)
    } finally {
      dir.remove()
    }
  }, 90_000)
})

describePostgres('callbacks with two API nodes and two workers on PostgreSQL', (url) => {
  const schema = freshSchemaName('lrhooks')
  const workers: ChildProcess[] = []
  afterAll(async () => {
    for (const worker of workers) worker.kill('SIGKILL')
    await killAllServers()
    await dropSchema(url, schema)
  })

  it('delivers each callback once, with one webhook-id', async () => {
    const hook = await receiver(() => 200)
    receivers.push(hook)
    const env = { ...WEBHOOK_ENV, LONGRUN_STORE: url, LONGRUN_PG_SCHEMA: schema, LONGRUN_ROLE: 'api' }
    const apis = [await startServer({ dbPath: '', env }), await startServer({ dbPath: '', env })]
    for (let i = 0; i < 2; i++) {
      const child = spawn(
        process.execPath,
        ['--conditions=longrun-source', '--import', 'tsx', 'examples/demo/worker.ts'],
        {
          cwd: ROOT,
          stdio: 'ignore',
          env: { ...process.env, ...env, LONGRUN_POLL_MS: '50', LOG_LEVEL: 'warn' },
        },
      )
      workers.push(child)
    }
    const ids: string[] = []
    for (let i = 0; i < 40; i++) ids.push(await submit(apis[i % 2]!.url, hook.url))
    await until(() => new Set(hook.received.map((r) => r.headers['webhook-id'])).size === ids.length, 60_000, {
      interval: 100,
    })
    await new Promise((resolve) => setTimeout(resolve, 1_500))
    expect(hook.received).toHaveLength(ids.length)
    const reported = hook.received.map((r) => (JSON.parse(r.body) as { data: { id: string } }).data.id).sort()
    expect(reported).toEqual([...ids].sort())
  }, 120_000)
})
