import rateLimit from '@fastify/rate-limit'
import type {
  FastifyError,
  FastifyInstance,
  FastifyReply,
  FastifyRequest,
  HTTPMethods,
  onRequestHookHandler,
  preParsingAsyncHookHandler,
} from 'fastify'
import fp from 'fastify-plugin'
import { OperationAccess, type Principal } from '../core/access.js'
import type { OperationDefinition } from '../core/definition.js'
import { toMs, type Duration } from '../core/duration.js'
import { Engine } from '../core/engine.js'
import { invalidOption, LongrunError } from '../core/errors.js'
import type { EngineOptions } from '../core/options.js'
import { OperationsProtocol, type HttpReply } from './api.js'
import { unauthorized, type Authenticate } from './auth.js'
import { RESULT_TYPES, type ResultType } from './formats.js'
import {
  fingerprint,
  idempotencyKeyOf,
  idempotencyKeyRequired,
  KEY_RECOMMENDED_HEADER,
  type IdempotencyMode,
} from './idempotency.js'
import { PROBLEM_CONTENT_TYPE, problem, toProblem } from './problem.js'
import { validatorCompiler } from './validation.js'

export interface LongrunPluginOptions extends Omit<EngineOptions, 'logger'> {
  /** Where the operations API is mounted. @default '/operations' */
  basePath?: string
  /** Include handler stack traces in error responses. @default false */
  exposeStack?: boolean
  /** Largest accepted request body, in bytes. @default 1048576 (1 MiB) */
  bodyLimit?: number
  /** Polling hint sent as `Retry-After`. @default '1s' */
  retryAfter?: Duration
  /** @default 20 */
  defaultPageSize?: number
  /** @default 100 */
  maxPageSize?: number
  /**
   * Request headers read as idempotency keys, first match wins; add e.g. `'x-request-id'` to honour
   * a client-chosen request id. Keys live for `idempotencyTtl` (default 24 h).
   * @default ['idempotency-key']
   */
  idempotencyHeaders?: string[]
  /**
   * Finds the caller of each request (see `jwtAuth`, `apiKeyAuth`, `sessionAuth`); the caller owns
   * what it submits. @default none: every caller is anonymous
   */
  authenticate?: Authenticate
  /** Serve requests without a principal, as the anonymous owner. @default true without `authenticate`, false with it */
  allowAnonymous?: boolean
  /** `WWW-Authenticate` challenge of 401 answers. @default 'Bearer realm="longrun"' */
  challenge?: string
  /** Principals with this role may read and change every operation. @default none */
  adminRole?: string
  /** Most queued and running operations one owner may have; one more answers 429. @default unlimited */
  maxActivePerOwner?: number
  /** Requests per principal (or per IP when anonymous) and time window, via `@fastify/rate-limit`. @default none */
  rateLimit?: { max: number; timeWindow: number | string }
}

/** A JSON schema; TypeBox schemas also carry the TypeScript type they validate (`static`). */
type Schema = object

type StaticOf<S> = S extends { static: infer T } ? T : unknown

export interface AsyncRouteSchema {
  body?: Schema
  params?: Schema
  querystring?: Schema
}

export interface AsyncRouteOptions<S extends AsyncRouteSchema, Result, Args> extends OperationDefinition<
  StaticOf<S['body']>,
  Result,
  Args
> {
  /** @default 'POST' */
  method?: HTTPMethods
  url: string
  /** Validated before anything is stored. */
  schema?: S
  /** Media types the result may be fetched in. @default ['application/json'] */
  resultTypes?: ResultType[]
  /** Overrides the plugin's `bodyLimit` for this route. */
  bodyLimit?: number
  /** `required`: a request without an idempotency key gets 400. @default 'optional' */
  idempotency?: IdempotencyMode
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Set on longrun's own routes. */
    longrun?: true
  }
}

/** Any async route's options, e.g. for a list of differently typed routes. */
export type AnyAsyncRoute = AsyncRouteOptions<AsyncRouteSchema, unknown, unknown>

/**
 * Types an async route's options (the body schema types `op.input`) without registering it, so that
 * one list of routes can serve an API process (`app.longrun.route`) and a worker process
 * (`engine.define`, which ignores the HTTP fields).
 */
export function defineAsyncRoute<S extends AsyncRouteSchema, Result, Args = undefined>(
  options: AsyncRouteOptions<S, Result, Args>,
): AsyncRouteOptions<S, Result, Args> {
  return options
}

export interface Longrun {
  readonly engine: Engine
  /** Declares an async route: validate, store, answer 202; a worker runs `handler` later. */
  route<S extends AsyncRouteSchema, Result, Args = undefined>(options: AsyncRouteOptions<S, Result, Args>): void
}

declare module 'fastify' {
  interface FastifyInstance {
    longrun: Longrun
  }
}

// Credentials are not stored with the operation: handlers get the other headers.
const UNSTORED_HEADERS = new Set(['authorization', 'proxy-authorization', 'cookie', 'x-api-key'])

function storedHeaders(headers: FastifyRequest['headers']): Record<string, string> {
  const kept: Record<string, string> = {}
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || UNSTORED_HEADERS.has(name)) continue
    kept[name] = Array.isArray(value) ? value.join(', ') : value
  }
  return kept
}

function send(reply: FastifyReply, answer: HttpReply): FastifyReply {
  reply.code(answer.status).headers(answer.headers)
  if (answer.body === undefined) return reply.send()
  return reply.send(typeof answer.body === 'string' ? answer.body : JSON.stringify(answer.body))
}

/** Answers any error as `application/problem+json`; usable as an app-wide error handler. */
export function problemErrorHandler(
  this: FastifyInstance,
  err: FastifyError,
  request: FastifyRequest,
  reply: FastifyReply,
) {
  const body = toProblem(err, request.log)
  if (err instanceof LongrunError) reply.headers(err.headers)
  if (typeof body.retryAfter === 'number') reply.header('retry-after', String(body.retryAfter))
  return reply.code(body.status).type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(body))
}

/**
 * Answers what Fastify refuses before routing (a malformed percent-encoding in the URL) as a problem.
 * Fastify takes it only at construction: `Fastify({ frameworkErrors: problemFrameworkErrors })`.
 */
export function problemFrameworkErrors(err: FastifyError, request: FastifyRequest, reply: FastifyReply) {
  const body = toProblem(err, request.log)
  return reply.code(body.status).type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(body))
}

/** Answers unknown routes as an `application/problem+json` 404; usable as an app-wide not-found handler. */
export function problemNotFoundHandler(request: FastifyRequest, reply: FastifyReply) {
  const body = problem('route-not-found', 404, 'Not found', `No route ${request.method} ${request.url.split('?')[0]}.`)
  return reply.code(404).type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(body))
}

const JSON_MEDIA_TYPE = /^application\/(?:[\w.+-]+\+)?json\s*(?:;|$)/i

const jsonBodiesOnly: preParsingAsyncHookHandler = async (request) => {
  const type = request.headers['content-type']
  if (type !== undefined && !JSON_MEDIA_TYPE.test(type)) {
    throw new LongrunError(
      'unsupported-media-type',
      415,
      'Unsupported media type',
      'Send the body as application/json.',
    )
  }
}

const quotaExceeded = (max: number, retryAfter: number) =>
  new LongrunError(
    'quota-exceeded',
    429,
    'Too many active operations',
    `You already have ${max} queued or running operations; wait for some to finish.`,
    { retryAfter },
  )

/** Runs the functions given the same key one after another; with no key, at once. */
function serializer(): <T>(key: string | null | undefined, fn: () => Promise<T>) => Promise<T> {
  const tails = new Map<string | null, Promise<void>>()
  return async (key, fn) => {
    if (key === undefined) return fn()
    const result = (tails.get(key) ?? Promise.resolve()).then(fn)
    const tail = result.then(
      () => {},
      () => {},
    )
    tails.set(key, tail)
    try {
      return await result
    } finally {
      if (tails.get(key) === tail) tails.delete(key)
    }
  }
}

const DEFAULTS = {
  basePath: '/operations',
  bodyLimit: 1_048_576, // 1 MiB
  retryAfter: 1_000, // 1 s
  defaultPageSize: 20,
  maxPageSize: 100,
} as const

async function plugin(app: FastifyInstance, options: LongrunPluginOptions): Promise<void> {
  const basePath = (options.basePath ?? DEFAULTS.basePath).replace(/\/+$/, '')
  if (!basePath.startsWith('/')) throw invalidOption('basePath', "must start with '/'")
  const bodyLimit = options.bodyLimit ?? DEFAULTS.bodyLimit
  const retryAfterSeconds = Math.max(1, Math.ceil(toMs('retryAfter', options.retryAfter ?? DEFAULTS.retryAfter) / 1000))
  const maxPageSize = options.maxPageSize ?? DEFAULTS.maxPageSize
  const defaultPageSize = Math.min(options.defaultPageSize ?? DEFAULTS.defaultPageSize, maxPageSize)
  const keyHeaders = (options.idempotencyHeaders ?? ['idempotency-key']).map((h) => h.toLowerCase())
  if (keyHeaders.length === 0) throw invalidOption('idempotencyHeaders', 'must name at least one header')

  const maxActive = options.maxActivePerOwner
  if (maxActive !== undefined && !(Number.isInteger(maxActive) && maxActive > 0)) {
    throw invalidOption('maxActivePerOwner', 'must be a positive integer')
  }
  const allowAnonymous = options.allowAnonymous ?? options.authenticate === undefined
  const challenge = options.challenge ?? 'Bearer realm="longrun"'
  const policy = options.adminRole === undefined ? {} : { adminRole: options.adminRole }

  const engine = new Engine({ ...options, logger: app.log })
  const oneAtATime = serializer()
  const resultTypes = new Map<string, readonly ResultType[]>()
  const protocol = new OperationsProtocol({
    basePath,
    exposeStack: options.exposeStack ?? false,
    retryAfterSeconds,
    defaultPageSize,
    maxPageSize,
    resultTypes: (name) => resultTypes.get(name) ?? ['application/json'],
  })

  // Who sent each request, found once by `authenticate` below; requests are never reused.
  const callers = new WeakMap<FastifyRequest, Principal>()

  if (options.rateLimit) {
    await app.register(rateLimit, {
      global: false,
      // After authentication, before the body is read: callers are counted by principal.
      hook: 'preParsing',
      keyGenerator: (request) => callers.get(request)?.id ?? `ip:${request.ip}`,
      errorResponseBuilder: (_request, context) =>
        Object.assign(
          new LongrunError(
            'rate-limited',
            429,
            'Too many requests',
            `At most ${context.max} requests per ${context.after}.`,
            {
              retryAfter: Math.max(1, Math.ceil(context.ttl / 1000)),
            },
          ),
          { statusCode: 429 },
        ),
    })
  }
  // One counter per caller across all of longrun's routes. A route's `config.rateLimit` would give each
  // route a counter of its own, letting a caller make `max` requests on every route.
  const limit = options.rateLimit ? app.rateLimit(options.rateLimit) : undefined
  const limited: preParsingAsyncHookHandler[] = limit
    ? [
        async function (request, reply) {
          await limit.call(this, request, reply)
        },
      ]
    : []
  const rateLimited = { preParsing: limited }

  const authenticate: onRequestHookHandler = async (request, reply) => {
    try {
      const principal = await options.authenticate?.(request)
      if (principal) callers.set(request, principal)
      else if (!allowAnonymous) throw unauthorized('This API needs credentials.', challenge)
    } catch (err) {
      // Refused credentials count against the client's address: guessing keys or tokens is limited too.
      if (limit && err instanceof LongrunError && err.status === 401) await limit.call(app, request, reply)
      throw err
    }
  }
  const accessOf = (request: FastifyRequest) => new OperationAccess(engine, callers.get(request), policy)

  app.decorate('longrun', {
    engine,
    route(route) {
      const {
        method = 'POST',
        url,
        schema,
        resultTypes: types,
        bodyLimit: routeLimit,
        idempotency = 'optional',
        ...definition
      } = route
      if (idempotency !== 'optional' && idempotency !== 'required') {
        throw invalidOption(`${definition.name}.idempotency`, "must be 'optional' or 'required'")
      }
      for (const type of types ?? []) {
        if (!RESULT_TYPES.includes(type))
          throw invalidOption(`${definition.name}.resultTypes`, `cannot offer '${type}'`)
      }
      engine.define(definition)
      if (types?.length) resultTypes.set(definition.name, types)
      app.route({
        method,
        url,
        schema: schema ?? {},
        bodyLimit: routeLimit ?? bodyLimit,
        // Fastify would also parse text/plain: an operation's input is JSON, whatever the route's schema.
        preParsing: [...limited, jsonBodiesOnly],
        validatorCompiler,
        onRequest: authenticate,
        errorHandler: problemErrorHandler,
        handler: async (request, reply) => {
          const owner = accessOf(request).owner
          const key = idempotencyKeyOf(request.raw.rawHeaders, keyHeaders)
          if (key === undefined && idempotency === 'required') throw idempotencyKeyRequired(keyHeaders[0]!)
          const idempotent =
            key === undefined
              ? undefined
              : { key, fingerprint: fingerprint(request.method, request.url.split('?')[0]!, request.body) }
          // One submission of an owner at a time checks the quota and inserts: otherwise a burst of
          // concurrent submissions would all pass the check before any of them was stored.
          return oneAtATime(maxActive === undefined ? undefined : owner, async () => {
            if (maxActive !== undefined) {
              const { total } = await engine.stats({ owner, states: ['queued', 'running'] })
              if (total >= maxActive) {
                // A replay makes no new operation: the quota does not stand in its way.
                const made = idempotent && (await engine.findSubmitted(definition.name, owner, idempotent))
                if (!made) throw quotaExceeded(maxActive, retryAfterSeconds)
                return send(reply, protocol.accepted(made, { 'idempotent-replayed': 'true' }))
              }
            }
            const submission = {
              owner,
              input: request.body ?? null,
              params: (request.params ?? {}) as Record<string, string>,
              query: (request.query ?? {}) as Record<string, unknown>,
              headers: storedHeaders(request.headers),
            }
            if (!idempotent) {
              const op = await engine.submit(definition.name, submission)
              return send(reply, protocol.accepted(op, { [KEY_RECOMMENDED_HEADER]: 'true' }))
            }
            const { op, replayed } = await engine.submitIdempotent(definition.name, submission, idempotent)
            return send(reply, protocol.accepted(op, replayed ? { 'idempotent-replayed': 'true' } : {}))
          })
        },
      })
    },
  } satisfies Longrun)

  await app.register(
    async (api) => {
      api.setErrorHandler(problemErrorHandler)
      api.setNotFoundHandler(problemNotFoundHandler)
      // Every route of this context, present and future, authenticates before anything else.
      api.addHook('onRequest', authenticate)
      const on = (
        method: HTTPMethods,
        url: string,
        answer: (access: OperationAccess, request: FastifyRequest<{ Params: { id: string } }>) => Promise<HttpReply>,
      ) =>
        api.route<{ Params: { id: string } }>({
          method,
          url,
          bodyLimit,
          ...rateLimited,
          handler: async (request, reply) => send(reply, await answer(accessOf(request), request)),
        })
      on('GET', '/', (access, req) => protocol.list(access, req.query as Record<string, unknown>))
      on('GET', '/stats', (access) => protocol.stats(access))
      on('POST', '/retry', (access, req) => protocol.retryAll(access, req.body))
      type ById = (access: OperationAccess, id: string, request: FastifyRequest) => Promise<HttpReply>
      const byId: [HTTPMethods, string, ById][] = [
        ['GET', '', (access, id) => protocol.status(access, id)],
        ['GET', '/result', (access, id, req) => protocol.result(access, id, req.headers.accept)],
        ['GET', '/error', (access, id) => protocol.error(access, id)],
        ['POST', '/cancel', (access, id) => protocol.cancel(access, id)],
        ['POST', '/retry', (access, id) => protocol.retry(access, id)],
        ['DELETE', '', (access, id) => protocol.remove(access, id)],
      ]
      for (const [method, suffix, answer] of byId) {
        on(method, `/:id${suffix}`, (access, req) => answer(access, req.params.id, req))
      }
      // An id longer than the server's `maxParamLength` (Fastify's default: 100) misses the routes
      // above and would get Fastify's bare 414: answer it here like any other id.
      api.route<{ Params: { '*': string } }>({
        method: ['GET', 'POST', 'DELETE'],
        url: '/*',
        bodyLimit,
        ...rateLimited,
        handler: async (request, reply) => {
          const path = request.params['*']
          const slash = path.indexOf('/')
          const [id, suffix] = slash === -1 ? [path, ''] : [path.slice(0, slash), path.slice(slash)]
          const route = byId.find(([method, s]) => method === request.method && s === suffix)
          if (!route || id === '') return problemNotFoundHandler(request, reply)
          return send(reply, await route[2](accessOf(request), id, request))
        },
      })
    },
    { prefix: basePath },
  )

  app.addHook('onReady', async () => engine.start())
  // Stop claiming as soon as closing begins; the store stays open for requests still in flight.
  app.addHook('preClose', async () => engine.drain())
  app.addHook('onClose', async () => engine.close())
}

/** The Fastify plugin: mounts the operations API and adds `app.longrun.route()` for async routes. */
export const longrun = fp(plugin, { fastify: '5.x', name: 'longrun' })

export type { ResultType } from './formats.js'
export type { OperationResource } from './resource.js'
export type { Problem } from './problem.js'
export { anyOf, apiKeyAuth, jwtAuth, sessionAuth, unauthorized } from './auth.js'
export type { ApiKeyAuthOptions, Authenticate, JwtAuthOptions, SessionAuthOptions } from './auth.js'
export type { AccessList, Permissions, Principal } from '../core/access.js'
