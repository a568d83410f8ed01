import { ERRORS, LongrunError, PROBLEM_TYPE_PREFIX, type ErrorCode } from '../core/errors.js'
import type { Logger } from '../core/logger.js'
import Negotiator from 'negotiator'
import { serialize } from './formats.js'

export const PROBLEM_CONTENT_TYPE = 'application/problem+json'
const PROBLEM_XML_TYPE = 'application/problem+xml'

// JSON first: a client that states no preference gets JSON. Plain XML asks for XML problems too, so
// that a client fetching a result as XML can read why there is none.
const PROBLEM_OFFERS = [PROBLEM_CONTENT_TYPE, 'application/json', PROBLEM_XML_TYPE, 'application/xml']

/**
 * A problem's media type and body for the request's `Accept`: `application/problem+json`, or
 * `application/problem+xml` (RFC 9457 Appendix B) when XML is preferred.
 */
export function renderProblem(body: Problem, accept: string | undefined): { type: string; text: string } {
  const chosen = accept ? new Negotiator({ headers: { accept } }).mediaType(PROBLEM_OFFERS) : undefined
  if (chosen !== PROBLEM_XML_TYPE && chosen !== 'application/xml') {
    return { type: PROBLEM_CONTENT_TYPE, text: JSON.stringify(body) }
  }
  const xml = serialize(body, 'application/xml', 'problem').replace('<problem>', '<problem xmlns="urn:ietf:rfc:7807">')
  return { type: `${PROBLEM_XML_TYPE}; charset=utf-8`, text: xml }
}

/** An RFC 9457 problem; `code` repeats the stable part of `type` for clients that switch on it. */
export interface Problem {
  type: string
  title: string
  status: number
  detail?: string
  /** The request's path: which request this answers. */
  instance?: string
  code: ErrorCode
  [extension: string]: unknown
}

/** The problem of `code`, with the status and title of the catalogue unless `status` is given. */
export function problem(
  code: ErrorCode,
  detail?: string,
  extra?: object,
  status: number = ERRORS[code].status,
): Problem {
  return {
    type: PROBLEM_TYPE_PREFIX + code,
    title: ERRORS[code].title,
    status,
    ...(detail === undefined ? {} : { detail }),
    code,
    ...extra,
  }
}

/**
 * Maps anything thrown while serving a request to a problem: a LongrunError as it says, anything
 * else as a 500 whose details go to the log, not the client. Adapters map their framework's own
 * errors first.
 */
export function toProblem(err: unknown, log?: Logger): Problem {
  if (err instanceof LongrunError) {
    // A store fault answers 503/507: operators need its cause in the log, clients get only the code.
    if (err.status >= 500) log?.warn({ err, cause: err.cause }, `longrun: answered ${err.status} ${err.code}`)
    return problem(err.code, err.message, err.extra)
  }
  log?.error({ err }, 'longrun: unexpected error while serving a request')
  return problem('internal-error', 'The server failed to handle the request.')
}

/** The problem with `instance`, the path of the request it answers, after its `detail` (RFC 9457). */
export function withInstance(
  { type, title, status, detail, instance: _, code, ...extra }: Problem,
  path: string,
): Problem {
  return { type, title, status, ...(detail === undefined ? {} : { detail }), instance: path, code, ...extra }
}

export const routeNotFound = (method: string, path: string) =>
  withInstance(problem('route-not-found', `No route ${method} ${path}.`), path)

/** `405` for a path the API serves with other methods; `Allow` lists them. */
export const methodNotAllowed = (method: string, allowed: readonly string[]) =>
  new LongrunError('method-not-allowed', `This URL answers ${allowed.join(', ')}, not ${method}.`, {
    headers: { allow: allowed.join(', ') },
  })
