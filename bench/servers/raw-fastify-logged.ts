// The ceiling of the demo scenario: plain Fastify with the logger and server settings the demo gets
// from `buildServer` (src/cli/server.ts: `logger: { level }`, LOG_LEVEL or `info`, its timeouts),
// serving the demo's sample task route (`POST /api/v1/demo/tasks/sample`, its body validated by the
// same JSON schema) with the 202 the demo answers, headers included. It stores nothing and runs
// nothing. Every request is logged (`incoming request`, `request completed`) on stdout, as the demo's
// are: the driver sends stdout to a file.
import Fastify from 'fastify'
import { v7 as uuidv7 } from 'uuid'
import { JSON_TYPE } from '../lib/shared.js'
import { addStateRoute, serve, type Counters } from './common.js'

const headersTimeout = 10_000
const requestTimeout = 30_000
const app = Fastify({
  logger: { level: process.env.LOG_LEVEL ?? 'info' },
  connectionTimeout: 60_000,
  requestTimeout,
  http: {
    headersTimeout,
    requestTimeout,
    maxHeaderSize: 16_384,
    connectionsCheckingInterval: Math.max(10, Math.min(1_000, Math.floor(headersTimeout / 10))),
  },
})
const counters: Counters = { accepted: 0, done: 0 }
addStateRoute(app, counters)

// The demo's SampleTask (examples/demo/tasks.ts) as JSON schema.
const body = {
  type: 'object',
  additionalProperties: false,
  required: ['delayMs', 'fail'],
  properties: {
    delayMs: { type: 'integer', minimum: 0, maximum: 600_000, default: 3_000 },
    description: { type: 'string', maxLength: 500 },
    callbackUrl: { type: 'string', minLength: 1, maxLength: 2048 },
    fail: { type: 'boolean', default: false },
  },
} as const

// What the demo's 202 shows for an anonymous caller, who is told apart by IP address.
const owner = 'ip:EsoXtJryKJQ28wPgFmAwoh'

app.post('/api/v1/demo/tasks/sample', { schema: { body } }, async (_request, reply) => {
  const id = uuidv7()
  counters.accepted++
  const self = `/operations/${id}`
  reply.code(202).headers({
    location: self,
    'operation-location': self,
    'retry-after': '1',
    'idempotency-key-recommended': 'true',
    'content-type': JSON_TYPE,
    vary: 'Prefer, Accept',
  })
  return JSON.stringify({
    id,
    name: 'demo.sample',
    state: 'queued',
    status: 'NotStarted',
    done: false,
    owner,
    progress: { percent: 0 },
    createdAt: new Date().toISOString(),
    startedAt: null,
    completedAt: null,
    expiresAt: null,
    attempt: 0,
    maxAttempts: 1,
    cancelable: true,
    cancelRequested: false,
    links: { self, result: `${self}/result`, error: `${self}/error`, cancel: `${self}/cancel` },
  })
})

await serve(app)
