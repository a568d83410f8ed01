import SwaggerParser from '@apidevtools/swagger-parser'
import { execFile } from 'node:child_process'
import { existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import Fastify, { type FastifyInstance } from 'fastify'
import openapiTS, { astToString } from 'openapi-typescript'
import { chromium } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parse } from 'yaml'
import { z } from 'zod'
import { demoOptions, routes, setup } from '../examples/demo/module.js'
import { buildServer } from '../src/cli/server.js'
import { ERRORS } from '../src/core/errors.js'
import { longrun } from '../src/http/adapters/fastify/index.js'
import { anyOf, apiKeyAuth, jwtAuth } from '../src/http/auth.js'
import { openApiDocument } from '../src/http/openapi/document.js'
import { resolveProtocolOptions, type ProtocolOptions } from '../src/http/options.js'
import { OPERATION_ROUTES, type EndpointName } from '../src/http/routes.js'
import { memoryStore } from '../src/stores/memory/index.js'
import { listen, tempDir, type Json } from './helpers/http.js'

const run = promisify(execFile)
const FORMATS = ['application/json', 'application/xml', 'application/yaml'] as const
const SECRET = `whsec_${Buffer.alloc(32, 7).toString('base64')}`

/** What each action of the operations API answers besides problems. */
const SUCCESS: Record<EndpointName, string[]> = {
  list: ['200', '304'],
  stats: ['200', '304'],
  query: ['200'],
  cleanupStatus: ['200'],
  cleanup: ['200'],
  feed: ['200'],
  retryAll: ['200'],
  status: ['200', '304'],
  events: ['200'],
  wait: ['200', '304'],
  result: ['200', '304'],
  error: ['200', '304'],
  cancel: ['200'],
  retry: ['202'],
  start: ['202'],
  delete: ['204'],
  deliveries: ['200', '304'],
  redeliver: ['202'],
  health: ['200'],
  ready: ['200'],
}

const pathOf = (url: string) => url.replace(/:(\w+)/g, '{$1}')
const statusesOf = (operation: Json) => Object.keys(operation.responses)

let app: FastifyInstance
let base: string
let document: Json

beforeAll(async () => {
  // The demo as `longrun serve` runs it, with a signing secret of its own rather than the environment's.
  app = await buildServer(
    { store: memoryStore(), logLevel: 'error', worker: false },
    { routes, options: demoOptions({ webhookSecret: SECRET }), setup },
  )
  base = await listen(app)
  document = await (await fetch(`${base}/docs/openapi.json`)).json()
})
afterAll(() => app?.close())

describe("the demo's OpenAPI document", () => {
  it('is served as JSON and as the same YAML, and validates', async () => {
    // Every body read to the end: one left unread keeps its connection, and the server, from closing.
    const get = async (path: string) => {
      const response = await fetch(base + path)
      return { status: response.status, type: response.headers.get('content-type'), text: await response.text() }
    }
    const json = await get('/docs/openapi.json')
    expect(json.type).toMatch(/^application\/json/)
    expect(JSON.parse(json.text)).toEqual(document)
    const yaml = await get('/docs/openapi.yaml')
    expect(yaml.type).toMatch(/^application\/yaml/)
    expect(parse(yaml.text)).toEqual(document)
    // Of swagger-ui-dist, only the files the page loads are served.
    expect((await get('/docs/assets/swagger-ui.css')).status).toBe(200)
    expect((await get('/docs/assets/index.html')).status).toBe(404)
    expect(document).toMatchObject({ openapi: '3.1.0', info: { title: 'longrun demo', version: '1.0.0' } })
    // validate() dereferences in place: give it a copy.
    await expect(SwaggerParser.validate(structuredClone(document))).resolves.toBeTruthy()
  })

  it('documents every async route as 202 with the operation, and 200 for a request that waits', () => {
    for (const route of routes) {
      const operation = document.paths[route.url].post
      expect(operation.operationId).toBe(route.name)
      const accepted = operation.responses['202']
      expect(Object.keys(accepted.headers)).toEqual(['Location', 'Operation-Location', 'Retry-After'])
      expect(Object.keys(accepted.content)).toEqual([...FORMATS])
      expect(accepted.content['application/json'].schema).toEqual({ $ref: '#/components/schemas/Operation' })
      expect(Object.keys(operation.responses['200'].content)).toEqual(['application/json'])
      expect(operation.requestBody.content['application/json'].schema).toMatchObject({
        type: 'object',
        properties: { callbackUrl: { type: 'string' } },
      })
      expect(operation.parameters.map((p: Json) => `${p.in}:${p.name}`)).toEqual([
        'header:idempotency-key',
        'header:Prefer',
      ])
      expect(statusesOf(operation)).toEqual(expect.arrayContaining(['400', '401', '413', '415', '422', '500']))
    }
  })

  it('lists the problem types each status may carry', () => {
    const submit = document.paths['/api/v1/demo/tasks/sample'].post
    const invalid = submit.responses['422'].content['application/problem+json'].schema
    expect(invalid.properties.code.enum).toEqual([
      'invalid-body',
      'idempotency-key-mismatch',
      'invalid-callback',
      'unsupported-value',
    ])
    expect(invalid.properties.type.enum).toContain('urn:longrun:problem:invalid-callback')
    const result = document.paths['/operations/{id}/result'].get
    expect(result.responses['409'].description).toContain('`operation-not-done`')
    expect(result.responses['406'].content['application/problem+xml']).toBeDefined()
    expect(document.components.schemas.Problem.properties.code.enum).toEqual(Object.keys(ERRORS))
  })

  it('shows the callback of a callback route, with the webhook message as its body', () => {
    const callbacks = document.paths['/api/v1/demo/tasks/sample'].post.callbacks
    const message = callbacks['demo.sample.callback']['{$request.body#/callbackUrl}'].post
    expect(message.requestBody.content['application/json'].schema).toMatchObject({
      allOf: [{ $ref: '#/components/schemas/WebhookPayload' }],
      properties: { type: { enum: ['operation.succeeded', 'operation.failed', 'operation.canceled'] } },
    })
    expect(message.parameters.map((p: Json) => p.name)).toEqual([
      'webhook-id',
      'webhook-timestamp',
      'webhook-signature',
    ])
  })

  it('documents the whole operations API, in every format of the demo', () => {
    for (const route of OPERATION_ROUTES) {
      const operation = document.paths[pathOf(`/operations${route.path}`)]?.[route.method.toLowerCase()]
      expect(operation, `${route.method} ${route.path}`).toBeDefined()
      expect(operation.operationId).toBe(route.name)
      expect(statusesOf(operation)).toEqual(expect.arrayContaining([...SUCCESS[route.name], '401', '500']))
      if (route.path.startsWith('/:id')) {
        expect(operation.parameters[0]).toMatchObject({ name: 'id', in: 'path', required: true })
        expect(operation.responses['404'].content['application/problem+json'].schema.properties.code.enum).toContain(
          'operation-not-found',
        )
      }
      const ok = operation.responses[SUCCESS[route.name][0]!]
      const types = Object.keys(ok.content ?? {})
      if (route.name === 'events' || route.name === 'feed') expect(types).toEqual(['text/event-stream'])
      else if (route.name !== 'delete' && route.name !== 'result') expect(types).toEqual([...FORMATS])
    }
    const query = document.paths['/operations/query'].post.requestBody.content['application/json'].schema
    expect(query).toEqual({ $ref: '#/components/schemas/QueryConditions' })
    expect(document.components.schemas.QueryConditions.properties.state.properties.op.enum).toContain('EQ')
  })

  it('names the session key as a security scheme that identifies, and anonymous callers as allowed', () => {
    expect(document.components.securitySchemes).toEqual({
      'session.x-session-key': expect.objectContaining({ type: 'apiKey', in: 'header', name: 'x-session-key' }),
    })
    expect(document.components.securitySchemes['session.x-session-key'].description).toMatch(/does not authenticate/)
    expect(document.security).toEqual([{ 'session.x-session-key': [] }, {}])
  })

  // tsc in a child process: seconds on a busy machine.
  it('gives a typed client with openapi-typescript that compiles', async () => {
    const dir = tempDir('longrun-openapi-')
    try {
      writeFileSync(join(dir.path, 'api.d.ts'), astToString(await openapiTS(document)))
      writeFileSync(
        join(dir.path, 'use.ts'),
        `import type { paths } from './api.js'
type Status = paths['/operations/{id}']['get']['responses']['200']['content']['application/json']
type Submit = paths['/api/v1/demo/tasks/sample']['post']
export const op: Status = {
  id: '019ab0c2', name: 'demo.sample', state: 'succeeded', status: 'Succeeded', done: true, owner: null,
  progress: { percent: 100 }, createdAt: '2026-12-03T09:41:07.512Z', startedAt: null, completedAt: null,
  expiresAt: null, attempt: 1, maxAttempts: 1, cancelable: true, cancelRequested: false, links: { self: '/operations/019ab0c2' },
}
export const body: NonNullable<Submit['requestBody']>['content']['application/json'] = { delayMs: 10, fail: false }
export const problem: Submit['responses']['422']['content']['application/problem+json']['code'] = 'invalid-callback'
// @ts-expect-error: no such state
export const wrong: Status['state'] = 'done'
`,
      )
      writeFileSync(
        join(dir.path, 'tsconfig.json'),
        JSON.stringify({
          compilerOptions: { strict: true, noEmit: true, target: 'ES2022', module: 'NodeNext', types: [] },
          files: ['api.d.ts', 'use.ts'],
        }),
      )
      await run('npx', ['tsc', '--noEmit', '-p', join(dir.path, 'tsconfig.json')], { cwd: process.cwd() })
    } finally {
      dir.remove()
    }
  }, 60_000)
})

describe("an app's own mounts and routes, through the plugin", () => {
  const shown = { type: 'object', properties: { success: { type: 'boolean' }, status: { type: 'string' } } }
  let custom: FastifyInstance
  let doc: Json

  beforeAll(async () => {
    custom = Fastify()
    await custom.register(longrun, {
      store: memoryStore(),
      worker: false,
      operationsApi: false,
      docs: { page: false },
      webhooks: {
        secret: SECRET,
        endpoints: [{ id: 'audit', url: 'https://audit.example.com/hooks', events: ['started'] }],
      },
    })
    custom.longrun.route({
      url: '/thumbnails/:size',
      name: 'thumbnail',
      resultTypes: ['application/json', 'application/xml'],
      hold: { timeout: '5s', onTimeout: 'timeout' },
      idempotency: 'required',
      schema: {
        params: { type: 'object', properties: { size: { type: 'integer' } } },
        querystring: { type: 'object', required: ['dpi'], properties: { dpi: { type: 'integer' } } },
        body: z.object({ source: z.url() }),
      },
      handler: async () => ({}),
    })
    custom.longrun.operationRoute({
      action: 'status',
      url: '/tasks/:taskId',
      id: { in: 'path', name: 'taskId' },
      present: (op) => ({ success: op.state !== 'failed', status: op.state }),
      presentSchema: shown,
      statusCodes: { failed: 500, queued: 202 },
    })
    custom.longrun.operationRoute({
      action: 'cancel',
      method: 'PUT',
      url: '/task',
      id: { in: 'query', name: 'taskId' },
      formats: ['application/yaml'],
    })
    custom.longrun.operationRoute({ action: 'result', url: '/task/result', id: { in: 'header', name: 'x-task-id' } })
    custom.longrun.operationRoute({ action: 'delete', url: '/task', id: { in: 'cookie', name: 'task' } })
    custom.longrun.operationRoute({ action: 'list', url: '/tasks', states: { succeeded: 'completed' } })
    custom.longrun.operationRoute({
      action: 'error',
      url: '/task/error',
      id: { in: 'query', name: 'taskId' },
      states: { failed: 'errored' },
    })
    doc = await (await fetch(`${await listen(custom)}/docs/openapi.json`)).json()
  })
  afterAll(() => custom?.close())

  it('validates, with each mount where the app put it and nothing under basePath', async () => {
    await expect(SwaggerParser.validate(structuredClone(doc))).resolves.toBeTruthy()
    expect(Object.keys(doc.paths)).toEqual([
      '/thumbnails/{size}',
      '/tasks/{taskId}',
      '/task',
      '/task/result',
      '/tasks',
      '/task/error',
    ])
  })

  it('reads the id where each mount does, and documents a presentation in place of the resource', () => {
    const status = doc.paths['/tasks/{taskId}'].get
    expect(status.parameters[0]).toMatchObject({ name: 'taskId', in: 'path', required: true })
    expect(status.responses['200'].content['application/json'].schema).toEqual(shown)
    expect(status.responses['202'].content['application/json'].schema).toEqual(shown)
    expect(Object.keys(status.responses['500'].content)).toEqual([
      'application/problem+json',
      'application/problem+xml',
      'application/json',
    ])
    const cancel = doc.paths['/task'].put
    expect(cancel.parameters[0]).toMatchObject({ name: 'taskId', in: 'query', required: true })
    expect(Object.keys(cancel.responses['200'].content)).toEqual(['application/yaml'])
    expect(cancel.responses['400'].description).toContain('`invalid-id`')
    expect(doc.paths['/task/result'].get.parameters[0]).toMatchObject({ name: 'x-task-id', in: 'header' })
    expect(doc.paths['/task'].delete.parameters[0]).toMatchObject({ name: 'task', in: 'cookie' })
    const page = doc.paths['/tasks'].get.responses['200'].content['application/json'].schema
    expect(page.properties.items.items.properties.state.enum).toEqual([
      'queued',
      'running',
      'completed',
      'failed',
      'canceled',
    ])
    const failure = doc.paths['/task/error'].get.responses['200'].content['application/json'].schema
    expect(failure.properties.state).toEqual({ const: 'errored' })
  })

  it('documents a held route, its request schemas, and app-wide webhook endpoints', () => {
    const submit = doc.paths['/thumbnails/{size}'].post
    expect(submit.parameters).toEqual([
      { name: 'size', in: 'path', required: true, schema: { type: 'integer' } },
      { name: 'dpi', in: 'query', required: true, schema: { type: 'integer' } },
      expect.objectContaining({ name: 'idempotency-key', in: 'header', required: true }),
    ])
    // A Standard Schema that can say its JSON Schema (Zod 4) is documented by it.
    expect(submit.requestBody.content['application/json'].schema).toMatchObject({
      type: 'object',
      required: ['source'],
      properties: { source: { type: 'string', format: 'uri' } },
    })
    expect(Object.keys(submit.responses['200'].content)).toEqual(['application/json', 'application/xml'])
    expect(submit.responses['408'].description).toContain('`hold-timeout`')
    expect(doc.webhooks.audit.post.requestBody.content['application/json'].schema).toMatchObject({
      properties: { type: { enum: ['operation.started'] } },
    })
  })
})

describe('security schemes', () => {
  it('names the schemes of each authenticator, and alternatives for anyOf', () => {
    const schemes = (authenticate: ProtocolOptions['authenticate']) => {
      const doc = openApiDocument({ options: resolveProtocolOptions({ authenticate }), routes: [], mounts: [] })
      return [doc.components.securitySchemes, doc.security]
    }
    expect(schemes(jwtAuth({ secret: 'x'.repeat(32) }))).toEqual([
      { bearerJwt: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } },
      [{ bearerJwt: [] }],
    ])
    expect(schemes(anyOf(jwtAuth({ secret: 'x'.repeat(32) }), apiKeyAuth({ keys: {}, header: 'X-Key' })))).toEqual([
      {
        bearerJwt: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' },
        'apiKey.x-key': { type: 'apiKey', in: 'header', name: 'x-key' },
      },
      [{ bearerJwt: [] }, { 'apiKey.x-key': [] }],
    ])
    // A function of the app's own says nothing of its scheme: none is claimed.
    expect(schemes(async () => undefined)).toEqual([undefined, undefined])
  })
})

// .ci/run installs Debian's chromium; elsewhere the test skips without it, but never under CI.
const browser = existsSync('/usr/bin/chromium') || process.env.CI === 'true' ? '/usr/bin/chromium' : undefined
describe('the docs page', () => {
  it.skipIf(!browser)(
    'renders the operations in chromium, with every request to this server',
    async () => {
      const chrome = await chromium.launch({
        executablePath: browser!,
        args: [
          '--headless',
          '--no-sandbox',
          '--disable-gpu',
          '--disable-background-networking',
          '--disable-component-update',
          '--disable-sync',
          '--no-first-run',
        ],
      })
      try {
        const tab = await chrome.newPage()
        const requested: string[] = []
        tab.on('request', (request) => requested.push(request.url()))
        const failures: string[] = []
        tab.on('pageerror', (error) => failures.push(error.message))
        // A resource the page's policy refused would show here.
        tab.on('console', (message) => void (message.type() === 'error' && failures.push(message.text())))
        await tab.goto(`${base}/docs`)
        await tab.getByText("Submit 'demo.sample'").waitFor({ state: 'visible' })
        expect(await tab.locator('[data-path="/operations/{id}/result"]').count()).toBe(1)
        expect(await tab.locator('.opblock').count()).toBeGreaterThanOrEqual(routes.length + OPERATION_ROUTES.length)
        expect(failures).toEqual([])
        expect(requested).toContain(`${base}/docs/openapi.json`)
        for (const url of requested) expect(url.startsWith(`${base}/`) || url.startsWith('data:'), url).toBe(true)
      } finally {
        await chrome.close()
      }
    },
    60_000,
  )
})
