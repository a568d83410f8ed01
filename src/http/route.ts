import type { OperationDefinition } from '../core/definition.js'
import { toMs, type Duration } from '../core/duration.js'
import { invalidOption } from '../core/errors.js'
import { resolveCallbackOptions, type CallbackOptions, type ResolvedCallback } from './callback.js'
import { RESULT_TYPES, type ResultType } from './formats.js'
import type { IdempotencyMode } from './idempotency.js'
import { resolvePresentation, type Presentation, type PresentedResource } from './present.js'
import {
  splitSchema,
  type AsyncRouteSchema,
  type RequestTypes,
  type SchemaPart,
  type SchemaTypeProvider,
  type SchemaTypes,
} from './schema.js'
import type { StandardSchemaV1 } from '@standard-schema/spec'

export type { AsyncRouteSchema, SchemaTypeProvider } from './schema.js'

/**
 * An async route: the operation it makes (its definition) and how HTTP reaches it. The schema types
 * `op.input`, `op.params` and `op.query`, through `TP` when given (a Fastify type provider).
 */
export interface AsyncRouteOptions<
  S extends AsyncRouteSchema,
  Result,
  Args,
  TP extends SchemaTypeProvider = SchemaTypes,
> extends OperationDefinition<
  RequestTypes<S, TP>['body'],
  Result,
  Args,
  RequestTypes<S, TP>['params'],
  RequestTypes<S, TP>['query']
> {
  /** @default 'POST' */
  method?: string
  url: string
  /**
   * Validated before anything is stored: JSON Schemas (TypeBox's included) by the framework's
   * validator, Standard Schemas (Zod, Valibot, ArkType...) by their own.
   */
  schema?: S
  /** Media types the result may be fetched in. @default ['application/json'] */
  resultTypes?: ResultType[]
  /** Overrides the protocol's `bodyLimit` for this route. */
  bodyLimit?: number
  /** `required`: a request without an idempotency key gets 400. @default 'optional' */
  idempotency?: IdempotencyMode
  /** Streams `GET {basePath}/events?group=<sseGroup>` carry this route's operations (Pode's SSE groups). */
  sseGroup?: string
  /**
   * Keeps the submitting request open until the operation ends, then answers its outcome as a
   * synchronous endpoint would (qbm-http's async handlers). @default none: answer 202 at once
   */
  hold?: HoldOptions
  /**
   * Calls the client back when the operation ends (Pode's async route callbacks): signed, retried,
   * never lost (docs/webhooks.md). `true`: the URL is the body's `callbackUrl`. @default none
   */
  callback?: CallbackOptions | true
  /**
   * `manual`: the submit creates the operation without queueing it; the `start` action
   * (`POST {basePath}/{id}/start`) queues it (the Node task system's create-then-start). Until then
   * it is `queued` with `startRequired: true`, and it is purged after the retention if never
   * started. @default 'auto'
   */
  start?: 'auto' | 'manual'
  /**
   * Runs before anything is stored, in the framework's own terms (Fastify: `(request, reply)`): it
   * may answer and stop (nothing is stored), throw (a problem), or go on, returning values that the
   * handler gets as `op.context` (stored with the operation as JSON; never put credentials there).
   */
  beforeQueue?(request: never, reply: never): unknown
  /**
   * The 202 answer (and a held request's, while not done) in a body of the route's own: it gets the
   * operation resource with `state` renamed by `states`. The operations API keeps longrun's shape:
   * mount actions with a presentation of their own for that (`operationRoute`).
   */
  present?: (op: PresentedResource) => unknown
  presentSchema?: Presentation['presentSchema']
  states?: Presentation['states']
  statusCodes?: Presentation['statusCodes']
}

export interface HoldOptions {
  /** How long to hold the request. @default '60s' */
  timeout?: Duration
  /** What a request still held at the timeout gets: `202 Accepted`, or `408` (`hold-timeout`). @default 'accepted' */
  onTimeout?: 'accepted' | 'timeout'
  /** Cancel the operation when the client goes away before its answer. @default false */
  cancelOnDisconnect?: boolean
  /**
   * The held request's answer once the operation ended, in the route's own terms (qbm-http's
   * `completion->status(code).header(name, value).body(...)`): it gets the operation (with its
   * `input`, `context`, `result` or `error`). A string body is sent as is (`text/plain` unless a
   * `content-type` header is given), anything else in the route's formats. `undefined`, and by
   * default: the result (200), or the problem that says why there is none.
   */
  respond?: (op: PresentedResource) => HeldAnswer | undefined
}

/** What a held request is answered with (`HoldOptions.respond`). */
export interface HeldAnswer {
  /** @default 200 */
  status?: number
  headers?: Record<string, string>
  body?: unknown
}

/** Any async route's options, e.g. for a list of differently typed routes. */
export type AnyAsyncRoute = AsyncRouteOptions<AsyncRouteSchema, unknown, unknown>

/**
 * Types an async route's options (its schema types `op.input`, `op.params`, `op.query`) without
 * registering it, so that one list of routes can serve an API process (`app.longrun.route`) and a
 * worker process (`engine.define`, which ignores the HTTP fields). It imports no HTTP framework.
 */
export function defineAsyncRoute<S extends AsyncRouteSchema, Result, Args = undefined>(
  options: AsyncRouteOptions<S, Result, Args>,
): AsyncRouteOptions<S, Result, Args> {
  return options
}

/**
 * `defineAsyncRoute` with the schema types of a type provider, e.g.
 * `defineAsyncRoute.withTypeProvider<TypeBoxTypeProvider>()` for TypeBox 1.x schemas.
 */
defineAsyncRoute.withTypeProvider =
  <TP extends SchemaTypeProvider>() =>
  <S extends AsyncRouteSchema, Result, Args = undefined>(
    options: AsyncRouteOptions<S, Result, Args, TP>,
  ): AsyncRouteOptions<S, Result, Args, TP> =>
    options

/** An async route checked, split into what HTTP needs and the definition the engine runs. */
export interface ResolvedAsyncRoute {
  name: string
  method: string
  /** As given, under the framework context's prefix. */
  url: string
  /** The prefix of the context it is declared in: `prefix + url` is where clients reach it. */
  prefix: string
  /** The JSON Schema parts, for the framework to validate. */
  schema: AsyncRouteSchema
  /** The Standard Schema parts, which `OperationsProtocol.submit` validates. */
  standard: Partial<Record<SchemaPart, StandardSchemaV1>>
  resultTypes: readonly ResultType[]
  bodyLimit: number | undefined
  idempotency: IdempotencyMode
  sseGroup: string | undefined
  hold:
    | {
        timeoutMs: number
        onTimeout: 'accepted' | 'timeout'
        cancelOnDisconnect: boolean
        respond: HoldOptions['respond']
      }
    | undefined
  callback: ResolvedCallback | undefined
  start: 'auto' | 'manual'
  beforeQueue: ((request: never, reply: never) => unknown) | undefined
  presentation: Presentation | undefined
  definition: OperationDefinition<unknown, unknown, unknown>
}

const ROUTE_OPTIONS = new Set([
  // HTTP
  'method',
  'url',
  'schema',
  'resultTypes',
  'bodyLimit',
  'idempotency',
  'sseGroup',
  'hold',
  'callback',
  'start',
  'beforeQueue',
  'present',
  'presentSchema',
  'states',
  'statusCodes',
  // The operation's definition
  'name',
  'handler',
  'concurrency',
  'timeout',
  'cancelable',
  'args',
  'retry',
  'idGenerator',
  'permissions',
])

export function resolveAsyncRoute<S extends AsyncRouteSchema, Result, Args, TP extends SchemaTypeProvider>(
  route: AsyncRouteOptions<S, Result, Args, TP>,
): ResolvedAsyncRoute {
  const {
    method = 'POST',
    url,
    schema,
    resultTypes,
    bodyLimit,
    idempotency = 'optional',
    sseGroup,
    hold,
    callback,
    start = 'auto',
    beforeQueue,
    present,
    presentSchema,
    states,
    statusCodes,
    ...definition
  } = route as unknown as AnyAsyncRoute
  const name = definition.name
  // A misspelt or unsupported option would otherwise be ignored without a word.
  for (const key of Object.keys(route)) {
    if (!ROUTE_OPTIONS.has(key)) throw invalidOption(`${name}.${key}`, 'is not an option of async routes')
  }
  if (typeof url !== 'string' || !url.startsWith('/')) throw invalidOption(`${name}.url`, "must start with '/'")
  if (idempotency !== 'optional' && idempotency !== 'required') {
    throw invalidOption(`${name}.idempotency`, "must be 'optional' or 'required'")
  }
  for (const type of resultTypes ?? []) {
    if (!RESULT_TYPES.includes(type)) throw invalidOption(`${name}.resultTypes`, `cannot offer '${type}'`)
  }
  if (bodyLimit !== undefined && !(Number.isInteger(bodyLimit) && bodyLimit > 0)) {
    throw invalidOption(`${name}.bodyLimit`, 'must be a positive whole number of bytes')
  }
  if (sseGroup !== undefined && (typeof sseGroup !== 'string' || !/^[\w.~-]{1,100}$/.test(sseGroup))) {
    throw invalidOption(`${name}.sseGroup`, 'must be 1-100 letters, digits or . _ ~ -')
  }
  if (start !== 'auto' && start !== 'manual') throw invalidOption(`${name}.start`, "must be 'auto' or 'manual'")
  if (beforeQueue !== undefined && typeof beforeQueue !== 'function') {
    throw invalidOption(`${name}.beforeQueue`, 'must be a function')
  }
  const { json, standard } = splitSchema(schema ?? {})
  return {
    name,
    method: method.toUpperCase(),
    url,
    prefix: '',
    schema: json,
    standard,
    resultTypes: resultTypes?.length ? resultTypes : ['application/json'],
    bodyLimit,
    idempotency,
    sseGroup,
    hold: hold && resolveHold(name, hold),
    callback: callback === undefined ? undefined : resolveCallbackOptions(name, callback),
    start,
    beforeQueue,
    presentation: resolvePresentation(name, { present, presentSchema, states, statusCodes }),
    definition,
  }
}

function resolveHold(name: string, hold: HoldOptions): NonNullable<ResolvedAsyncRoute['hold']> {
  const timeoutMs = toMs(`${name}.hold.timeout`, hold.timeout ?? 60_000)
  if (timeoutMs <= 0) throw invalidOption(`${name}.hold.timeout`, 'must be positive')
  const onTimeout = hold.onTimeout ?? 'accepted'
  if (onTimeout !== 'accepted' && onTimeout !== 'timeout') {
    throw invalidOption(`${name}.hold.onTimeout`, "must be 'accepted' or 'timeout'")
  }
  if (hold.respond !== undefined && typeof hold.respond !== 'function') {
    throw invalidOption(`${name}.hold.respond`, 'must be a function')
  }
  return { timeoutMs, onTimeout, cancelOnDisconnect: hold.cancelOnDisconnect === true, respond: hold.respond }
}
