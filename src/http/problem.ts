import { LongrunError, PROBLEM_TYPE_PREFIX } from '../core/errors.js'
import type { Logger } from '../core/logger.js'

export const PROBLEM_CONTENT_TYPE = 'application/problem+json'

/** An RFC 9457 problem; `code` repeats the stable part of `type` for clients that switch on it. */
export interface Problem {
  type: string
  title: string
  status: number
  detail?: string
  code: string
  [extension: string]: unknown
}

export function problem(code: string, status: number, title: string, detail?: string, extra?: object): Problem {
  return {
    type: PROBLEM_TYPE_PREFIX + code,
    title,
    status,
    ...(detail === undefined ? {} : { detail }),
    code,
    ...extra,
  }
}

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

/**
 * Maps anything thrown while serving a request to a problem. Framework errors keep their 4xx status
 * under a stable code; anything unexpected is a 500 whose details go to the log, not the client.
 */
export function toProblem(err: unknown, log?: Logger): Problem {
  if (err instanceof LongrunError) {
    return problem(err.code, err.status, err.title, err.message, err.extra)
  }
  const e = (typeof err === 'object' && err !== null ? err : {}) as FrameworkError
  if (Array.isArray(e.validation)) {
    const where = e.validationContext ?? 'body'
    const errors = e.validation.map((issue) => ({
      path: issue.instancePath || '/',
      message: issue.message ?? 'is invalid',
      ...(issue.params?.additionalProperty ? { property: issue.params.additionalProperty } : {}),
    }))
    return where === 'body'
      ? problem('invalid-body', 422, 'Invalid request body', 'The request body does not match the schema.', { errors })
      : problem(`invalid-${where}`, 400, 'Invalid request', `The request ${where} does not match the schema.`, {
          errors,
        })
  }
  switch (e.code) {
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return problem('unsupported-media-type', 415, 'Unsupported media type', 'Send the body as application/json.')
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return problem('body-too-large', 413, 'Body too large', 'The request body exceeds the size limit.')
    case 'FST_ERR_BAD_URL':
      return problem('bad-url', 400, 'Bad URL', 'The URL is not validly percent-encoded.')
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return problem('malformed-json', 400, 'Malformed JSON', e.message)
  }
  if (err instanceof SyntaxError && e.statusCode === 400) {
    return problem('malformed-json', 400, 'Malformed JSON', err.message)
  }
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    return problem('bad-request', e.statusCode, 'Bad request', e.message)
  }
  log?.error({ err }, 'longrun: unexpected error while serving a request')
  return problem('internal-error', 500, 'Internal error', 'The server failed to handle the request.')
}
