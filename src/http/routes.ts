import type { ResultType } from './formats.js'
import type { Presentation } from './present.js'

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
  /** How the route serving it answers: the built-in API's formats, or a mount's. */
  view?: EndpointView
}

/** How an endpoint answers: the media types it offers (the first by default) and how it shows operations. */
export interface EndpointView {
  formats: readonly ResultType[]
  presentation?: Presentation | undefined
  /** Only the operations of this async route (`OperationRouteOptions.route`). */
  route?: string | undefined
  /** For `query`: turns the app's body into longrun's conditions (`OperationRouteOptions.readQuery`). */
  readQuery?: ((body: unknown) => unknown) | undefined
}

export interface OperationRoute {
  method: 'GET' | 'POST' | 'DELETE'
  /** Under the API's `basePath`; `:id` stands for an operation id. */
  path: string
  /** The endpoint it serves (`OperationsProtocol.answer`), also for logs and documentation. */
  name: EndpointName
}

/** The endpoints of the operations API. */
export type EndpointName =
  | 'list'
  | 'stats'
  | 'query'
  | 'cleanupStatus'
  | 'cleanup'
  | 'feed'
  | 'retryAll'
  | 'status'
  | 'events'
  | 'wait'
  | 'result'
  | 'error'
  | 'cancel'
  | 'retry'
  | 'start'
  | 'delete'
  | 'deliveries'
  | 'redeliver'
  | 'health'
  | 'ready'

/** The operations API as data: every adapter serves exactly these routes under `basePath`. */
export const OPERATION_ROUTES: readonly OperationRoute[] = [
  { method: 'GET', path: '', name: 'list' },
  { method: 'GET', path: '/stats', name: 'stats' },
  { method: 'GET', path: '/health', name: 'health' },
  { method: 'GET', path: '/ready', name: 'ready' },
  { method: 'POST', path: '/query', name: 'query' },
  { method: 'GET', path: '/cleanup', name: 'cleanupStatus' },
  { method: 'POST', path: '/cleanup', name: 'cleanup' },
  { method: 'GET', path: '/events', name: 'feed' },
  { method: 'POST', path: '/retry', name: 'retryAll' },
  { method: 'GET', path: '/:id', name: 'status' },
  { method: 'GET', path: '/:id/events', name: 'events' },
  { method: 'GET', path: '/:id/wait', name: 'wait' },
  { method: 'GET', path: '/:id/result', name: 'result' },
  { method: 'GET', path: '/:id/error', name: 'error' },
  { method: 'POST', path: '/:id/cancel', name: 'cancel' },
  { method: 'POST', path: '/:id/retry', name: 'retry' },
  { method: 'POST', path: '/:id/start', name: 'start' },
  { method: 'DELETE', path: '/:id', name: 'delete' },
  { method: 'GET', path: '/:id/deliveries', name: 'deliveries' },
  { method: 'POST', path: '/:id/deliveries/retry', name: 'redeliver' },
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
