// The ceiling: plain Fastify answering what longrun answers, with no storage and no worker.
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
const createdAt = Date.now()
app.get<{ Params: { id: string } }>('/operations/:id', async (request, reply) => {
  reply.header('content-type', JSON_TYPE)
  return JSON.stringify(operationBody(request.params.id, 'succeeded', createdAt))
})

await serve(app)
