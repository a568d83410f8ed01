import type { OperationAccess } from '../core/access.js'
import type { HttpReply, OperationsProtocol } from './protocol.js'

/** What an endpoint of the operations API reads of its request, as the adapter parsed it. */
export interface EndpointRequest {
  /** The `:id` of the path, for routes that have one. */
  id: string
  /** The query string as an object of strings (a name given twice: an array). */
  query: Record<string, unknown>
  body: unknown
  headers: Record<string, string | string[] | undefined>
  /** The client's address. */
  ip: string
  /** Aborts when the client goes away before its answer. */
  signal?: AbortSignal
  /** A `HEAD` request (answered like `GET`, without a body): a stream answers its headers without opening. */
  head?: boolean
}

export interface OperationRoute {
  method: 'GET' | 'POST' | 'DELETE'
  /** Under the API's `basePath`; `:id` stands for an operation id. */
  path: string
  /** Names the endpoint, e.g. for logs and documentation. */
  name: string
  answer(protocol: OperationsProtocol, access: OperationAccess, request: EndpointRequest): Promise<HttpReply>
}

/** The operations API as data: every adapter serves exactly these routes under `basePath`. */
export const OPERATION_ROUTES: readonly OperationRoute[] = [
  { method: 'GET', path: '', name: 'list', answer: (p, a, r) => p.list(a, r) },
  { method: 'GET', path: '/stats', name: 'stats', answer: (p, a, r) => p.stats(a, r) },
  { method: 'POST', path: '/query', name: 'query', answer: (p, a, r) => p.query(a, r) },
  { method: 'GET', path: '/cleanup', name: 'cleanupStatus', answer: async (p, a) => p.cleanupStatus(a) },
  { method: 'POST', path: '/cleanup', name: 'cleanup', answer: (p, a) => p.runCleanup(a) },
  { method: 'GET', path: '/events', name: 'feed', answer: (p, a, r) => p.feed(a, r) },
  { method: 'POST', path: '/retry', name: 'retryAll', answer: (p, a, r) => p.retryAll(a, r.body) },
  { method: 'GET', path: '/:id', name: 'status', answer: (p, a, r) => p.status(a, r.id, r) },
  { method: 'GET', path: '/:id/events', name: 'events', answer: (p, a, r) => p.events(a, r.id, r) },
  { method: 'GET', path: '/:id/wait', name: 'wait', answer: (p, a, r) => p.wait(a, r.id, r) },
  { method: 'GET', path: '/:id/result', name: 'result', answer: (p, a, r) => p.result(a, r.id, r) },
  { method: 'GET', path: '/:id/error', name: 'error', answer: (p, a, r) => p.error(a, r.id, r) },
  { method: 'POST', path: '/:id/cancel', name: 'cancel', answer: (p, a, r) => p.cancel(a, r.id) },
  { method: 'POST', path: '/:id/retry', name: 'retry', answer: (p, a, r) => p.retry(a, r.id) },
  { method: 'POST', path: '/:id/start', name: 'start', answer: (p, a, r) => p.start(a, r.id) },
  { method: 'DELETE', path: '/:id', name: 'delete', answer: (p, a, r) => p.remove(a, r.id) },
  { method: 'GET', path: '/:id/deliveries', name: 'deliveries', answer: (p, a, r) => p.deliveries(a, r.id, r) },
  { method: 'POST', path: '/:id/deliveries/retry', name: 'redeliver', answer: (p, a, r) => p.redeliver(a, r.id) },
]

/**
 * Finds the by-id route of a path under `basePath` (`/<id>` or `/<id>/<action>`) without a
 * router: for adapters whose router refuses long ids (Fastify's `maxParamLength`), or has none.
 * A route without `:id` is matched too. `undefined`: no such route.
 */
export function matchOperationRoute(method: string, path: string): { route: OperationRoute; id: string } | undefined {
  for (const route of OPERATION_ROUTES) {
    if (route.method !== method) continue
    const id = idOf(route, path)
    if (id !== undefined) return { route, id }
  }
  return undefined
}

/**
 * The methods a path under `basePath` answers, for `Allow` and CORS preflights: those of every
 * route it matches (`/stats`, `/query` and `/cleanup` are also ids for `DELETE /:id`, and `/query`
 * for `GET /:id`), with `HEAD` for `GET`. Empty: no such resource.
 */
export function allowedMethods(path: string): string[] {
  const methods = new Set<string>()
  for (const route of OPERATION_ROUTES)
    if (idOf(route, path === '/' ? '' : path) !== undefined) methods.add(route.method)
  if (methods.has('GET')) methods.add('HEAD')
  return [...methods].sort()
}

/** The id `path` gives `route` (`''` for a route without one), or `undefined` when it does not match. */
function idOf(route: OperationRoute, path: string): string | undefined {
  if (!route.path.startsWith('/:id')) return route.path === path ? '' : undefined
  const suffix = route.path.slice('/:id'.length)
  if (!path.startsWith('/') || !path.endsWith(suffix)) return undefined
  const id = path.slice(1, path.length - suffix.length)
  return id !== '' && !id.includes('/') ? id : undefined
}

/**
 * The response headers longrun's clients read besides the CORS-safelisted ones: what a browser on
 * another origin must be allowed to see (`Access-Control-Expose-Headers`).
 */
export const EXPOSED_HEADERS: readonly string[] = [
  'Location',
  'Operation-Location',
  'Content-Location',
  'Retry-After',
  'ETag',
  'Last-Modified',
  'Preference-Applied',
  'Idempotent-Replayed',
  'Idempotency-Key-Recommended',
  'WWW-Authenticate',
  'Allow',
]
