// The ceiling: plain Fastify answering what longrun answers, with no storage and no worker.
import { createHash } from 'node:crypto'
import Fastify from 'fastify'
import { v7 as uuidv7 } from 'uuid'
import { JSON_TYPE, operationBody } from '../lib/shared.js'
import { addStateRoute, serve, type Counters } from './common.js'

const counters: Counters = { accepted: 0, done: 0 }
const app = Fastify({ logger: false })
addStateRoute(app, counters)

app.post('/jobs', async (_request, reply) => {
  const id = uuidv7()
  counters.accepted++
  reply.code(202).headers({ 'content-type': JSON_TYPE, location: `/operations/${id}`, 'retry-after': '1' })
  return JSON.stringify(operationBody(id, 'queued', Date.now()))
})

// A status read that looks the operation up nowhere: the same JSON object, built per request.
// A conditional one (`If-None-Match`) builds it too and tags it as a raw app would (and as longrun
// does, src/http/caching.ts): a strong ETag hashed from the media type and the bytes; `304` without
// a body when the header names it, else the `200` with its ETag.
const createdAt = Date.now()
const etagOf = (body: string) =>
  `"${createHash('sha256').update(JSON_TYPE).update('\n').update(body).digest('base64url').slice(0, 27)}"`
app.get<{ Params: { id: string } }>('/operations/:id', async (request, reply) => {
  const body = JSON.stringify(operationBody(request.params.id, 'succeeded', createdAt))
  const ifNoneMatch = request.headers['if-none-match']
  if (ifNoneMatch !== undefined) {
    const etag = etagOf(body)
    reply.header('etag', etag).header('cache-control', 'private, no-cache')
    if (ifNoneMatch.split(',').some((tag) => tag.trim().replace(/^W\//, '') === etag)) return reply.code(304).send()
  }
  reply.header('content-type', JSON_TYPE)
  return body
})

await serve(app)
