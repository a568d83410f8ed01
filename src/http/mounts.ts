import type { Stats } from '../core/engine.js'
import { invalidOption } from '../core/errors.js'
import { RESULT_TYPES, type ResultType } from './formats.js'
import type { ResolvedProtocolOptions } from './options.js'
import {
  resolvePresentation,
  type JsonSchema,
  type PresentedPage,
  type PresentedResource,
  type Presentation,
} from './present.js'

export type { JsonSchema, PresentedPage, PresentedResource, Presentation } from './present.js'
import type { ResolvedAsyncRoute } from './route.js'
import { OPERATION_ROUTES, type EndpointName } from './routes.js'

/** The actions of the operations API that an app may also mount at a URL of its own. */
export type OperationAction =
  | 'status'
  | 'result'
  | 'error'
  | 'cancel'
  | 'retry'
  | 'delete'
  | 'start'
  | 'wait'
  | 'events'
  | 'list'
  | 'query'
  | 'stats'
  | 'cleanupStatus'
  | 'cleanup'

/** Where a mounted action reads the operation id (Pode's `-In` and `-TaskIdName`). */
export interface IdLocation {
  in: 'path' | 'query' | 'header' | 'cookie'
  /** The parameter, header or cookie name. */
  name: string
}

/** An action of the operations API where it is served: built in under `basePath`, or mounted by the app. */
export interface ResolvedMount {
  /** The endpoint it serves: the `name` of one of `OPERATION_ROUTES`. */
  action: EndpointName
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE'
  /** The full URL as the framework routes it, its prefix included; `:name` marks a path parameter. */
  url: string
  /** Where the id is read, for the actions on one operation. */
  id: IdLocation | undefined
  /** Media types its bodies may be answered in, the first by default. */
  formats: readonly ResultType[]
  presentation: Presentation | undefined
  /** For `query`: how the app's body becomes longrun's conditions. */
  readQuery?: (body: unknown) => unknown
  /** Only the operations of this async route (its name). */
  route?: string
  /** One of the operations API's own routes under `basePath`. */
  builtIn: boolean
}

/** Everything an API serves, for documents generated from it (OpenAPI). */
export interface ApiDescription {
  options: ResolvedProtocolOptions
  /** Async routes, in the order they were declared. */
  routes: readonly ResolvedAsyncRoute[]
  /** The operations API's routes (unless turned off) and the app's mounts, in the order they were added. */
  mounts: readonly ResolvedMount[]
}

/** What `present` gets for an action: the operation, a page of them, the stats, or the cleanup's status or run. */
export type PresentInput<A extends OperationAction> = A extends 'list' | 'query'
  ? PresentedPage
  : A extends 'stats'
    ? Stats
    : A extends 'cleanupStatus' | 'cleanup'
      ? Record<string, unknown>
      : PresentedResource

/**
 * One action of the operations API at a URL of the app's own (Pode's `Add-PodeAsyncGetRoute` and
 * friends), with the same permissions, negotiation and problems as the built-in API.
 */
export interface OperationRouteOptions<A extends OperationAction = OperationAction> {
  action: A
  /** @default the built-in route's method (`GET` for status, `POST` for cancel...) */
  method?: ResolvedMount['method']
  /** Where it is served, under the context's prefix; a path id is a `:name` parameter of it. */
  url: string
  /** Where the id is read, for the actions on one operation. @default { in: 'path', name: 'id' } */
  id?: IdLocation
  /** Media types it answers in, by `Accept`. @default the plugin's `formats` */
  formats?: ResultType[]
  /** Its own body: gets what longrun would answer, with `state` renamed by `states`. */
  present?: (value: PresentInput<A>) => unknown
  presentSchema?: JsonSchema
  states?: Presentation['states']
  statusCodes?: Presentation['statusCodes']
  /**
   * For `query`: turns the body the app's clients send into longrun's conditions
   * (`{ "<field>": { "op", "value" } }`, docs/query.md), e.g. Pode's field names (`CreationTime`) into
   * longrun's (`createdAt`). Values of `state` are read in the mount's `states` names either way.
   */
  readQuery?: (body: unknown) => unknown
  /**
   * Only the operations of the async route of this name (AsyncFlow's per-flow endpoints): another's
   * answers 404 as an unknown id does, and lists, queries and stats leave them out. @default all
   */
  route?: string
}

/** The actions on one operation, which read an id. */
const ON_ONE = new Set<OperationAction>([
  'status',
  'result',
  'error',
  'cancel',
  'retry',
  'delete',
  'start',
  'wait',
  'events',
])
/** The actions on the operations as a whole. */
const ON_MANY = new Set<OperationAction>(['list', 'query', 'stats', 'cleanupStatus', 'cleanup'])
const METHODS = new Set(['GET', 'POST', 'PUT', 'PATCH', 'DELETE'])
// A header or cookie name is an RFC 9110 token; a path or query name, a plain identifier.
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$/
const PARAMETER = /^[A-Za-z_][A-Za-z0-9_]{0,99}$/

/** Checks a mount's options: a mistake is named at registration rather than answered wrongly. */
export function resolveMount(
  options: OperationRouteOptions,
  prefix: string,
  defaultFormats: readonly ResultType[],
): ResolvedMount {
  if (typeof options !== 'object' || options === null) throw invalidOption('operationRoute', 'needs options')
  const { action, url, formats } = options
  const where = `operationRoute(${String(action)})`
  const builtIn = OPERATION_ROUTES.find((route) => route.name === action)
  if (!builtIn || !(ON_ONE.has(action) || ON_MANY.has(action))) {
    throw invalidOption(`${where}.action`, `must be one of ${[...ON_ONE, ...ON_MANY].join(', ')}`)
  }
  for (const key of Object.keys(options)) {
    if (!MOUNT_OPTIONS.has(key)) throw invalidOption(`${where}.${key}`, 'is not an option of operation routes')
  }
  if (typeof url !== 'string' || !url.startsWith('/')) throw invalidOption(`${where}.url`, "must start with '/'")
  const method = (options.method ?? builtIn.method).toUpperCase() as ResolvedMount['method']
  if (!METHODS.has(method)) throw invalidOption(`${where}.method`, `must be one of ${[...METHODS].join(', ')}`)
  let id: IdLocation | undefined
  if (ON_ONE.has(action)) {
    id = options.id ? { in: options.id.in, name: options.id.name } : { in: 'path', name: 'id' }
    if (!['path', 'query', 'header', 'cookie'].includes(id.in)) {
      throw invalidOption(`${where}.id.in`, "must be 'path', 'query', 'header' or 'cookie'")
    }
    const valid = id.in === 'header' || id.in === 'cookie' ? TOKEN : PARAMETER
    if (typeof id.name !== 'string' || !valid.test(id.name))
      throw invalidOption(`${where}.id.name`, 'is not a valid name')
    const inPath = url.split('/').includes(`:${id.name}`)
    if (id.in === 'path' && !inPath) throw invalidOption(`${where}.url`, `must hold the path parameter ':${id.name}'`)
    if (id.in !== 'path' && inPath) throw invalidOption(`${where}.url`, `reads the id from the ${id.in}, not the path`)
  } else if (options.id !== undefined) {
    throw invalidOption(`${where}.id`, `does not apply: '${action}' is not about one operation`)
  }
  for (const type of formats ?? []) {
    if (!RESULT_TYPES.includes(type)) throw invalidOption(`${where}.formats`, `cannot offer '${type}'`)
  }
  const { readQuery, route } = options
  if (route !== undefined && typeof route !== 'string') throw invalidOption(`${where}.route`, 'must be a route name')
  if (readQuery !== undefined && (typeof readQuery !== 'function' || action !== 'query')) {
    throw invalidOption(`${where}.readQuery`, "must be a function, on a 'query' mount")
  }
  return {
    action,
    method,
    url: prefix + url,
    id,
    formats: formats?.length ? [...new Set(formats)] : defaultFormats,
    presentation: resolvePresentation(where, options as Presentation),
    ...(readQuery ? { readQuery } : {}),
    ...(route !== undefined ? { route } : {}),
    builtIn: false,
  }
}

const MOUNT_OPTIONS = new Set([
  'action',
  'method',
  'url',
  'id',
  'formats',
  'present',
  'presentSchema',
  'states',
  'statusCodes',
  'readQuery',
  'route',
])
