import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { LongrunError } from '../../../core/errors.js'
import type { Logger } from '../../../core/logger.js'
import { mergeVary } from '../../caching.js'
import {
  methodNotAllowed,
  PROBLEM_CONTENT_TYPE,
  problem,
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
  return reply.code(body.status).type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(body))
}

/**
 * Answers what Fastify refuses before routing (a malformed percent-encoding in the URL) as a problem.
 * Fastify takes it only at construction: `Fastify({ frameworkErrors: problemFrameworkErrors })`.
 */
export function problemFrameworkErrors(err: FastifyError, request: FastifyRequest, reply: FastifyReply) {
  const body = withInstance(fastifyProblem(err, request.log), pathOf(request))
  return reply.code(body.status).type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(body))
}

/** Answers unknown routes as an `application/problem+json` 404; usable as an app-wide not-found handler. */
export function problemNotFoundHandler(request: FastifyRequest, reply: FastifyReply) {
  const body = routeNotFound(request.method, pathOf(request))
  return reply.code(404).type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(body))
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
