import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { STATUS_CODES, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { LongrunError } from '../../../core/errors.js'
import type { Logger } from '../../../core/logger.js'
import { mergeVary } from '../../caching.js'
import {
  methodNotAllowed,
  PROBLEM_CONTENT_TYPE,
  problem,
  renderProblem,
  routeNotFound,
  toProblem,
  withInstance,
  type Problem,
} from '../../problem.js'
import { allowedMethods } from '../../routes.js'

interface ValidationIssue {
  instancePath?: string
  message?: string
  params?: Record<string, unknown>
}

interface FrameworkError {
  code?: string
  statusCode?: number
  message?: string
  validation?: ValidationIssue[]
  validationContext?: string
}

const VALIDATED_PARTS = {
  params: 'invalid-params',
  querystring: 'invalid-querystring',
  headers: 'invalid-headers',
} as const

/** Fastify's and Ajv's errors as problems, under stable codes; `undefined` for anything else. */
function frameworkProblem(err: unknown): Problem | undefined {
  if (err instanceof LongrunError) return undefined
  const e = (typeof err === 'object' && err !== null ? err : {}) as FrameworkError
  if (Array.isArray(e.validation)) {
    const where = e.validationContext ?? 'body'
    const errors = e.validation.map((issue) => ({
      path: issue.instancePath || '/',
      message: issue.message ?? 'is invalid',
      ...(issue.params?.additionalProperty ? { property: issue.params.additionalProperty } : {}),
    }))
    if (where === 'body') return problem('invalid-body', 'The request body does not match the schema.', { errors })
    const code = VALIDATED_PARTS[where as keyof typeof VALIDATED_PARTS] ?? 'bad-request'
    return problem(code, `The request ${where} does not match the schema.`, { errors })
  }
  switch (e.code) {
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return problem('unsupported-media-type', 'Send the body as application/json.')
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return problem('body-too-large', 'The request body exceeds the size limit.')
    case 'FST_ERR_BAD_URL':
      return problem('bad-url', 'The URL is not validly percent-encoded.')
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return problem('malformed-json', e.message)
  }
  if (err instanceof SyntaxError && e.statusCode === 400) return problem('malformed-json', err.message)
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    return problem('bad-request', e.message, {}, e.statusCode)
  }
  return undefined
}

export function fastifyProblem(err: unknown, log: Logger): Problem {
  return frameworkProblem(err) ?? toProblem(err, log)
}

/** Sends a problem as the request prefers it: JSON, or XML when asked (`renderProblem`). */
function sendProblem(reply: FastifyReply, request: FastifyRequest, body: Problem): FastifyReply {
  const { type, text } = renderProblem(body, request.headers.accept)
  return reply.code(body.status).type(type).send(text)
}

/** The request's path, without its query string. */
export const pathOf = (request: FastifyRequest) => request.url.split('?')[0]!

/** Sets `headers` on the reply; a `Vary` is added to the one already set (e.g. `Origin` by CORS). */
export function copyHeaders(reply: FastifyReply, headers: Record<string, string>): FastifyReply {
  const { vary, ...rest } = headers
  reply.headers(rest)
  if (vary !== undefined) {
    const current = reply.getHeader('vary')
    reply.header('vary', mergeVary(current === undefined ? undefined : [current].flat().join(', '), vary))
  }
  return reply
}

/** Answers any error as `application/problem+json`; usable as an app-wide error handler. */
export function problemErrorHandler(
  this: FastifyInstance,
  err: FastifyError,
  request: FastifyRequest,
  reply: FastifyReply,
) {
  const body = withInstance(fastifyProblem(err, request.log), pathOf(request))
  if (err instanceof LongrunError) copyHeaders(reply, err.headers)
  if (typeof body.retryAfter === 'number') reply.header('retry-after', String(body.retryAfter))
  return sendProblem(reply, request, body)
}

/**
 * Answers what Fastify refuses before routing (a malformed percent-encoding in the URL) as a problem.
 * Fastify takes it only at construction: `Fastify({ frameworkErrors: problemFrameworkErrors })`.
 */
export function problemFrameworkErrors(err: FastifyError, request: FastifyRequest, reply: FastifyReply) {
  const body = withInstance(fastifyProblem(err, request.log), pathOf(request))
  return sendProblem(reply, request, body)
}

/** What Node's HTTP parser (llhttp) reports of a request it could not read. */
interface ClientError extends Error {
  code?: string
  reason?: string
  /** The bytes being parsed when it failed. */
  rawPacket?: unknown
}

/** The status and detail answering a request that Node could not parse, or that came too slowly. */
function clientProblem(err: ClientError): Problem {
  switch (err.code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return problem('request-timeout', 'The request was not received in time.')
    case 'HPE_HEADER_OVERFLOW':
      return problem('headers-too-large', "The request line and headers exceed the server's size limit.")
  }
  // llhttp's reason is short ASCII (e.g. 'Invalid header value char'); kept printable all the same.
  const reason = (err.reason ?? err.message ?? '').replace(/[^\x20-\x7e]/g, '').slice(0, 120)
  const code = /^HPE_[A-Z_]+$/.test(err.code ?? '') ? `${err.code}: ` : ''
  return problem('bad-request', `The request is not valid HTTP/1.1 (${code}${reason}).`)
}

// Sockets answered already: after a parse error, more bytes of the same request may fail again.
const answered = new WeakSet<Socket>()

/**
 * Answers what Node's HTTP parser refuses (a malformed request line, a bad header character, a
 * duplicate or negative `Content-Length`, headers or a URL over `maxHeaderSize`) and requests not
 * received within `headersTimeout` or `requestTimeout`, as a raw HTTP/1.1 `application/problem+json`
 * answer; then the connection closes. An answer in flight on the same connection to an earlier
 * request ends first; nothing is written when the client is gone, or into an answer that has begun
 * (the connection is closed instead).
 * Fastify takes it only at construction: `Fastify({ clientErrorHandler: problemClientErrorHandler })`.
 */
export function problemClientErrorHandler(this: { log?: Logger } | void, err: ClientError, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed || answered.has(socket)) return
  answered.add(socket)
  this?.log?.debug?.({ err }, 'longrun: refused a request Node could not read')
  const inFlight = (socket as Socket & { _httpMessage?: ServerResponse })._httpMessage
  if (inFlight && !inFlight.writableFinished) {
    // The answer to an earlier, whole request goes first: the error is in a request pipelined after it.
    if (inFlight.req.complete) {
      inFlight.once('close', () => answerClientError(err, socket))
      return
    }
    // The error is in the request being answered (its body): bytes written into an answer that has
    // begun would corrupt it, as Node's own handler knows.
    if (inFlight.headersSent) {
      socket.destroy()
      return
    }
  }
  answerClientError(err, socket)
}

function answerClientError(err: ClientError, socket: Socket): void {
  if (!socket.writable) {
    socket.destroy()
    return
  }
  const answer = clientProblem(err)
  const { status } = answer
  const body = JSON.stringify(answer)
  // The answer to a HEAD has no body, even when its request could not be read to the end.
  const head = Buffer.isBuffer(err.rawPacket) && err.rawPacket.subarray(0, 5).toString('latin1') === 'HEAD '
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\n` +
      `Content-Type: ${PROBLEM_CONTENT_TYPE}\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\n` +
      'Cache-Control: no-store\r\nConnection: close\r\n\r\n' +
      (head ? '' : body),
  )
  // Half-closed, the client reads the answer before the socket goes; a client that neither reads nor
  // closes loses it after a second.
  const timer = setTimeout(() => socket.destroy(), 1_000)
  timer.unref()
  socket.once('close', () => clearTimeout(timer))
}

/** Answers unknown routes as an `application/problem+json` 404; usable as an app-wide not-found handler. */
export function problemNotFoundHandler(request: FastifyRequest, reply: FastifyReply) {
  const body = routeNotFound(request.method, pathOf(request))
  return sendProblem(reply, request, body)
}

/**
 * The operations API's not-found handler: a URL it serves with other methods answers `405` with
 * `Allow` (a plain `OPTIONS`: `204` with `Allow`), any other `404 route-not-found`.
 */
export function operationsNotFound(basePath: string) {
  return (request: FastifyRequest, reply: FastifyReply) => {
    const methods = allowedMethods(pathOf(request).slice(basePath.length))
    if (methods.length === 0) return problemNotFoundHandler(request, reply)
    const allowed = [...methods, 'OPTIONS']
    if (request.method === 'OPTIONS') return reply.code(204).header('allow', allowed.join(', ')).send()
    return problemErrorHandler.call(
      request.server,
      methodNotAllowed(request.method, allowed) as FastifyError,
      request,
      reply,
    )
  }
}
