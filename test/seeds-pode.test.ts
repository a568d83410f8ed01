import { createServer, type IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import { EventSource } from 'eventsource'
import { XMLParser } from 'fast-xml-parser'
import { Webhook } from 'standardwebhooks'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parse as parseYaml } from 'yaml'
import { tempDir } from './helpers/http.js'
import { call, startSeed, type Json } from './helpers/seeds.js'
import type { ChildServer } from './helpers/child-server.js'
import { until } from './helpers/until.js'

// examples/seeds/pode: Pode's async routes (seed 000), started as `npm run example -- pode` does,
// with its seconds shortened (PODE_SECOND_MS=20), each usage of the seed's document replayed.

const SECRET = `whsec_${Buffer.from('pode-example-secret-of-32-bytes!').toString('base64')}`
const received: { headers: IncomingHttpHeaders; body: string }[] = []
const receiver = createServer((request, response) => {
  let body = ''
  request.on('data', (chunk: Buffer) => (body += chunk.toString('utf8')))
  request.on('end', () => {
    received.push({ headers: request.headers, body })
    response.writeHead(204).end()
  })
})

let server: ChildServer
let dir: ReturnType<typeof tempDir>

beforeAll(async () => {
  dir = tempDir('longrun-seed-pode-')
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve))
  server = await startSeed('pode', {
    dbPath: `${dir.path}/pode.db`,
    env: {
      PODE_SECOND_MS: '20',
      LONGRUN_WEBHOOK_SECRET: SECRET,
      LONGRUN_CALLBACK_ALLOW: '127.0.0.1',
      LOG_LEVEL: 'info',
    },
  })
})

afterAll(async () => {
  await server?.kill('SIGTERM')
  receiver.close()
  dir?.remove()
})

const api = (method: string, path: string, options: Parameters<typeof call>[3] = {}) =>
  call(server.url, method, path, options)

/** Invoke-RestMethod -Method Put, without a body. */
const put = async (path: string, options: Parameters<typeof call>[3] = {}) => {
  const res = await api('PUT', path, options)
  expect(res.status, res.text).toBe(202)
  return res.json
}

const ended = (id: string, headers: Record<string, string> = {}) =>
  until(
    async () => {
      const task = (await api('GET', `/task?taskId=${id}`, { headers })).json
      return ['Completed', 'Failed', 'Aborted'].includes(task.State) ? task : undefined
    },
    20_000,
    { what: `task ${id} to end` },
  )

describe('Set-PodeAsyncRoute: the three examples', () => {
  it('answers each with an AsyncTask, runs it, and offers its result in the route-s response types', async () => {
    for (const [path, message, alternative] of [
      ['/asyncParam', 'coming as argument', 'application/xml'],
      ['/asyncUsing', 'coming from using', 'application/yaml'],
      ['/asyncState', 'coming from a PodeState', 'application/yaml'],
    ] as const) {
      const accepted = await put(path)
      expect(accepted).toMatchObject({
        Id: expect.any(String),
        Name: path.slice(1),
        State: 'NotStarted',
        Cancelable: true,
        CreationTime: expect.any(String),
      })
      const done = await ended(accepted.Id)
      expect(done).toMatchObject({ State: 'Completed', Result: { InnerValue: message }, Progress: expect.any(Number) })
      const result = await api('GET', `/operations/${accepted.Id}/result`, { headers: { accept: alternative } })
      expect(result.headers.get('content-type')).toBe(`${alternative}; charset=utf-8`)
      const parsed =
        alternative === 'application/xml' ? new XMLParser().parse(result.text).result : parseYaml(result.text)
      expect(parsed).toEqual({ InnerValue: message })
      // A type the route does not offer: 406.
      const other = alternative === 'application/xml' ? 'application/yaml' : 'application/xml'
      expect((await api('GET', `/operations/${accepted.Id}/result`, { headers: { accept: other } })).status).toBe(406)
    }
    // Write-PodeHost's lines, from the handlers' logs.
    expect(server.output()).toContain('sleepTime2=2')
    expect(server.output()).toContain('Message=coming from using')
    expect(server.output()).toContain('state:MessageTest=coming from a PodeState')
  })
})

describe('Add-PodeAsyncGetRoute, Add-PodeAsyncStopRoute, Add-PodeAsyncQueryRoute', () => {
  it("gets a task by its id in the query or the path, in JSON, XML or YAML (the seed's usage)", async () => {
    const response_asyncWait = await put('/asyncWait')
    const byQuery = await api('GET', `/task?taskId=${response_asyncWait.Id}`)
    expect(byQuery.status).toBe(200)
    expect(byQuery.json).toMatchObject({ Id: response_asyncWait.Id, Name: 'asyncWait' })
    expect((await api('GET', `/task/${response_asyncWait.Id}`)).json.Id).toBe(response_asyncWait.Id)
    const asYaml = await api('GET', `/task?taskId=${response_asyncWait.Id}`, {
      headers: { accept: 'application/yaml' },
    })
    expect(parseYaml(asYaml.text)).toMatchObject({ Id: response_asyncWait.Id })
    const asXml = await api('GET', `/task/${response_asyncWait.Id}`, { headers: { accept: 'application/xml' } })
    expect(new XMLParser().parse(asXml.text).operation).toMatchObject({ Id: response_asyncWait.Id })
  })

  it('stops a task: it ends Aborted', async () => {
    const response_asyncWait = await put('/asyncWait')
    const stopped = await api('DELETE', `/task?taskId=${response_asyncWait.Id}`)
    expect(stopped.status).toBe(200)
    expect(['Aborted', 'Running', 'NotStarted']).toContain(stopped.json.State)
    expect((await ended(response_asyncWait.Id)).State).toBe('Aborted')
  })

  it('answers the documented query body (nothing matches its 2024 times), and finds tasks by Pode-s names', async () => {
    const response_asyncWait = await put('/asyncWait')
    // $queryBody of the seed, as ConvertTo-Json sends it.
    const queryBody = {
      Id: { value: response_asyncWait.Id, op: 'EQ' },
      State: { value: 'Completed', op: 'EQ' },
      CreationTime: { value: '7/5/2024 1:20:00 PM', op: 'LE' },
      StartingTime: { value: '7/5/2024 1:20:00 PM', op: 'GT' },
      Name: { value: 'Get', op: 'LIKE' },
      Cancelable: { value: true, op: 'EQ' },
    }
    const documented = await api('POST', '/tasks/query', { body: JSON.stringify(queryBody) })
    expect(documented.status, documented.text).toBe(200)
    expect(documented.json).toEqual([])

    const found = await api('POST', '/tasks/query', {
      body: {
        Id: { value: response_asyncWait.Id, op: 'EQ' },
        State: { value: 'NotStarted', op: 'NE' },
        CreationTime: { value: '7/5/2024 1:20:00 PM', op: 'GT' },
        Name: { value: 'async*', op: 'LIKE' },
        Cancelable: { value: true, op: 'EQ' },
      },
    })
    expect(found.json).toEqual([expect.objectContaining({ Id: response_asyncWait.Id, Name: 'asyncWait' })])
    const unknown = await api('POST', '/tasks/query', { body: { Colour: { value: 'red', op: 'EQ' } } })
    expect(unknown.status).toBe(400)
    expect(unknown.json.code).toBe('invalid-condition')
  })
})

describe('features', () => {
  it('calls back the URL of the body, signed, with the result (Callbacks)', async () => {
    const callbackUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/done`
    const accepted = await put('/asyncCallback', { body: { callbackUrl } })
    const message = await until(() => received.find((m) => m.body.includes(accepted.Id)), 20_000, {
      what: 'the callback',
    })
    const payload = new Webhook(SECRET).verify(message.body, {
      'webhook-id': String(message.headers['webhook-id']),
      'webhook-timestamp': String(message.headers['webhook-timestamp']),
      'webhook-signature': String(message.headers['webhook-signature']),
    }) as Json
    expect(message.headers['x-pode']).toBe('callback')
    expect(payload.data).toMatchObject({ id: accepted.Id, state: 'succeeded', result: { InnerValue: 'called back' } })
    const task = await until(async () => {
      const t = (await api('GET', `/task?taskId=${accepted.Id}`)).json
      return t.CallbackInfo?.State === 'Completed' ? t : undefined
    })
    expect(task.CallbackInfo).toEqual({ State: 'Completed', Tentative: 1, Url: callbackUrl })
    expect(task.CallbackSettings).toMatchObject({ Method: 'POST', SendResult: true })
  })

  it("streams a task's events, and its group's, over SSE", async () => {
    const accepted = await put('/asyncParam')
    const events: string[] = []
    await new Promise<void>((resolve, reject) => {
      const source = new EventSource(`${server.url}/task/events?taskId=${accepted.Id}&after=0`)
      for (const name of ['submitted', 'started', 'progress', 'succeeded'])
        source.addEventListener(name, () => {
          events.push(name)
          if (name === 'succeeded') {
            source.close()
            resolve()
          }
        })
      source.onerror = (err) => {
        if (!events.includes('succeeded')) reject(new Error(`stream failed: ${String(err.message)}`))
      }
    })
    expect(events[0]).toBe('submitted')
    expect(events).toContain('progress')

    const group = await fetch(`${server.url}/operations/events?group=pode`, { signal: AbortSignal.timeout(20_000) })
    expect(group.headers.get('content-type')).toMatch(/^text\/event-stream/)
    const reader = group.body!.getReader()
    const next = put('/asyncUsing')
    let text = ''
    const { Id } = await next
    while (!text.includes(Id)) text += new TextDecoder().decode((await reader.read()).value)
    await reader.cancel()
  })

  it('lets read and write grants of users, groups, roles and scopes see and stop a task, and no one else', async () => {
    const as = (key: string) => ({ headers: { 'x-api-key': key } })
    const task = await put('/asyncSecure', as('key-alice'))
    expect(task.User).toBe('alice')
    expect(task.Permission).toEqual({
      Read: { Users: ['bob'], Groups: ['auditors'], Roles: ['reader'], Scopes: ['tasks:read'] },
      Write: { Users: ['wendy'], Roles: ['operator'] },
    })
    for (const reader of ['key-bob', 'key-ann', 'key-rita', 'key-sam']) {
      expect((await api('GET', `/task?taskId=${task.Id}`, as(reader))).status, reader).toBe(200)
      expect((await api('DELETE', `/task?taskId=${task.Id}`, as(reader))).status, reader).toBe(403)
    }
    expect((await api('GET', `/task?taskId=${task.Id}`, as('key-carol'))).status).toBe(404)
    expect((await api('GET', `/task?taskId=${task.Id}`)).status).toBe(404)
    expect((await api('DELETE', `/task?taskId=${task.Id}`, as('key-otto'))).status).toBe(200)
    expect((await ended(task.Id, { 'x-api-key': 'key-wendy' })).State).toBe('Aborted')
  })

  it('refuses to stop a NotCancelable task, and names tasks with its own id generator', async () => {
    const task = await put('/asyncNotCancelable')
    expect(task.Id).toMatch(/^pode-[0-9a-f-]{36}$/)
    expect(task.Cancelable).toBe(false)
    const refused = await api('DELETE', `/task?taskId=${task.Id}`)
    expect(refused.status).toBe(409)
    expect(refused.json.code).toBe('operation-not-cancelable')
    expect((await ended(task.Id)).State).toBe('Completed')
  })

  it('documents its routes in OpenAPI, with the callback of the callback route', async () => {
    const document = (await api('GET', '/docs/openapi.json')).json
    expect(document.openapi).toMatch(/^3\.1\./)
    for (const path of [
      '/asyncParam',
      '/asyncUsing',
      '/asyncState',
      '/asyncWait',
      '/asyncCallback',
      '/task',
      '/tasks/query',
    ]) {
      expect(Object.keys(document.paths), path).toContain(path)
    }
    expect(Object.keys(document.paths['/asyncCallback'].put.callbacks ?? {})).not.toHaveLength(0)
    expect(Object.keys(document.paths['/task'])).toEqual(expect.arrayContaining(['get', 'delete']))
    // The query route takes Pode's body, which only the app knows: it is not described as longrun's.
    expect(document.paths['/tasks/query'].post.description).toMatch(/readQuery/)
    expect(document.paths['/tasks/query'].post.requestBody.content['application/json'].schema).toEqual({
      type: 'object',
    })
  })
})
