import type { OperationState } from '../core/operation.js'
import type { ResultType } from './formats.js'
import type { ResolvedProtocolOptions } from './options.js'
import type { ResolvedAsyncRoute } from './route.js'

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

/** Where a mounted action reads the operation id (Pode's `-In` and `-TaskIdName`). */
export interface IdLocation {
  in: 'path' | 'query' | 'header' | 'cookie'
  /** The parameter, header or cookie name. */
  name: string
}

/** A JSON Schema (2020-12, as OpenAPI 3.1 takes it), e.g. a TypeBox schema. */
export type JsonSchema = Record<string, unknown>

/**
 * How an async route or a mount shows its operations, to keep an existing API's contract: its own
 * body, its own state names, its own status codes.
 */
export interface Presentation {
  /**
   * The body in place of longrun's: it gets what longrun would answer (the operation resource, a
   * page `{ items, nextCursor }` or the stats), with `state` already renamed by `states`.
   */
  present?: (value: never) => unknown
  /** The schema of what `present` returns, for OpenAPI. */
  presentSchema?: JsonSchema
  /** State names on the wire, e.g. `{ succeeded: 'completed', canceled: 'cancelled' }`. */
  states?: Partial<Record<OperationState, string>>
  /** The HTTP status of a single-operation answer by the operation's state, e.g. `{ failed: 500 }`. */
  statusCodes?: Partial<Record<OperationState, number>>
}

/** An action of the operations API where it is served: built in under `basePath`, or mounted by the app. */
export interface ResolvedMount {
  /** The endpoint it serves: the `name` of one of `OPERATION_ROUTES`. */
  action: string
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE'
  /** The full URL as the framework routes it, its prefix included; `:name` marks a path parameter. */
  url: string
  /** Where the id is read, for the actions on one operation. */
  id: IdLocation | undefined
  /** Media types its bodies may be answered in, the first by default. */
  formats: readonly ResultType[]
  presentation: Presentation | undefined
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
