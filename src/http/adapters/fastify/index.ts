import rateLimit from '@fastify/rate-limit'
import type {
  FastifyInstance,
  FastifyReply,
  FastifyRequest,
  HTTPMethods,
  onRequestHookHandler,
  preParsingAsyncHookHandler,
} from 'fastify'
import fp from 'fastify-plugin'
import { Readable } from 'node:stream'
import type { Principal } from '../../../core/permissions.js'
import { Engine } from '../../../core/engine.js'
import { invalidOption, LongrunError } from '../../../core/errors.js'
import type { EngineOptions } from '../../../core/options.js'
import { resolveProtocolOptions, type ProtocolOptions } from '../../options.js'
import { Deliveries } from '../../webhooks/deliveries.js'
import { OperationsProtocol, type HttpReply } from '../../protocol.js'
import type { AsyncRouteOptions, AsyncRouteSchema, SchemaTypeProvider } from '../../route.js'
import type { SchemaTypes } from '../../schema.js'
import {
  allowedMethods,
  matchOperationRoute,
  OPERATION_ROUTES,
  type EndpointName,
  type EndpointRequest,
  type EndpointView,
} from '../../routes.js'
import type { OperationAction, OperationRouteOptions } from '../../mounts.js'
import { serveDocs } from './docs.js'
import { idOf, queryWithoutId } from './ids.js'
import { authFailureGuard } from '../../limits.js'
import { assertJsonBody } from '../../submit.js'
import { addCors, type LongrunCorsOptions, type MethodsOf } from './cors.js'
import { copyHeaders, operationsNotFound, pathOf, problemErrorHandler } from './errors.js'
import { strictValidator } from './validation.js'

export interface LongrunPluginOptions extends ProtocolOptions, Omit<EngineOptions, 'logger'> {
  /**
   * Serve browsers on other origins: the operations API and every async route answer CORS
   * preflights and expose the headers clients read (`Location`, `Retry-After`, `ETag`...).
   * `true` allows any origin. @default false
   */
  cors?: boolean | LongrunCorsOptions
  /**
   * Who validates async routes' JSON Schemas. `app`: the app's own validator, as for its other
   * routes (its Ajv options and plugins, `addSchema` and `$ref`s; Fastify's default coerces types
   * and removes properties a schema forbids). `strict`: longrun's, which coerces path and query
   * parameters only and answers 422 for a body of the wrong type or with a forbidden property, so
   * that the stored input is what the client sent (`$ref`s to the context's schemas still work).
   * Standard Schemas (Zod...) validate themselves either way. @default 'app'
   */
  validation?: 'app' | 'strict'
}

export interface Longrun<TP extends SchemaTypeProvider = SchemaTypes> {
  readonly engine: Engine
  /**
   * Declares an async route: validate, store, answer 202; a worker runs `handler` later. The
   * schema types the handler's `op`, through the app's type provider when it has one
   * (`app.withTypeProvider<TypeBoxTypeProvider>().longrun.route(...)`).
   */
  route<S extends AsyncRouteSchema, Result, Args = undefined, RouteTP extends SchemaTypeProvider = TP>(
    options: FastifyAsyncRouteOptions<S, Result, Args, RouteTP>,
  ): void
  /**
   * Serves one action of the operations API at a URL of this context (Pode's
   * `Add-PodeAsyncGetRoute -Path '/task' -In Query`), with the same permissions, negotiation and
   * problems as the built-in API; the id is read where `id` says (docs/custom-routes.md).
   */
  operationRoute<A extends OperationAction>(options: OperationRouteOptions<A>): void
  /**
   * Answers every held request waiting now (routes with `hold`) as its timeout would: `408
   * hold-timeout` or `202`, by the route's `onTimeout` (qbm-http's `force_timeout_all_requests`).
   * The operations go on.
   */
  timeoutHeld(): void
}

/** An async route's options with its `beforeQueue` hook in Fastify's terms. */
export type FastifyAsyncRouteOptions<
  S extends AsyncRouteSchema,
  Result,
  Args,
  TP extends SchemaTypeProvider = SchemaTypes,
> = Omit<AsyncRouteOptions<S, Result, Args, TP>, 'beforeQueue'> & {
  /**
   * Runs after validation, before anything is stored (AsyncEndpoints' pre-queue delegate, qbm-http's
   * async middleware). Answer and stop with `return reply.code(...).send(...)`, or throw; or go on,
   * returning the values the handler gets as `op.context` (stored as JSON: never credentials).
   */
  beforeQueue?(request: FastifyRequest, reply: FastifyReply): unknown
}

declare module 'fastify' {
  // The parameters must repeat Fastify's declaration; only the type provider is used.
  // eslint-disable-next-line @typescript-eslint/no-unused-vars
  interface FastifyInstance<RawServer, RawRequest, RawReply, Logger, TypeProvider> {
    longrun: Longrun<TypeProvider>
  }
}

function send(reply: FastifyReply, answer: HttpReply): FastifyReply {
  copyHeaders(reply.code(answer.status), answer.headers)
  if (answer.body === undefined) return reply.send()
  if (answer.body instanceof Readable) {
    // An event stream ends at shutdown: its HTTP/1.1 connection must not then sit idle and keep the
    // server from closing. (HTTP/2 forbids the header, and closes its own streams.)
    if (reply.request.raw.httpVersionMajor === 1) reply.header('connection', 'close')
    return reply.send(answer.body)
  }
  if (typeof answer.body === 'string') return reply.send(answer.body)
  return reply.send(JSON.stringify(answer.body))
}

/** What a `beforeQueue` hook returned, as the submission's `context`: a JSON object, or nothing. */
function contextOf(route: string, value: unknown): { context?: Record<string, unknown> } {
  if (value === undefined || value === null) return {}
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw invalidOption(`${route}.beforeQueue`, 'must return nothing, the reply, or an object of values for op.context')
  }
  return { context: value as Record<string, unknown> }
}

/**
 * Aborts when the client goes away before the whole answer was sent. Made on first use: most
 * answers never look, and a signal with its listener per request is a cost on the hottest paths.
 */
function disconnected(reply: FastifyReply): () => AbortSignal {
  let signal: AbortSignal | undefined
  return () => {
    if (signal) return signal
    const controller = new AbortController()
    const { raw } = reply
    if (!raw.closed) {
      raw.once('close', () => {
        if (!raw.writableFinished) controller.abort()
      })
    } else if (!raw.writableFinished) controller.abort()
    return (signal = controller.signal)
  }
}

/** Node's flat [name, value, ...] list shows a header sent twice, which the parsed headers join. */
const valuesOf = (request: FastifyRequest) => (name: string) => {
  const raw = request.raw.rawHeaders
  const values: string[] = []
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.toLowerCase() === name) values.push(raw[i + 1]!)
  return values
}

const jsonBodiesOnly: preParsingAsyncHookHandler = async (request) => assertJsonBody(request.headers['content-type'])

async function plugin(app: FastifyInstance, options: LongrunPluginOptions): Promise<void> {
  if (app.hasDecorator('longrun')) {
    throw new LongrunError(
      'invalid-option',
      'longrun is already registered in this context or one around it: register each API in a context of its own (docs/fastify.md).',
    )
  }
  const mounted = resolveProtocolOptions(options)
  // The URLs clients see (Location, links) include the prefix of the context the plugin is in.
  const opts = { ...mounted, basePath: app.prefix + mounted.basePath }
  const cors = options.cors === true ? {} : options.cors || undefined
  const { validation = 'app' } = options
  if (validation !== 'app' && validation !== 'strict') throw invalidOption('validation', "must be 'app' or 'strict'")
  const strict = validation === 'strict'
  const engine = new Engine({ ...options, logger: app.log })
  const protocol = new OperationsProtocol(engine, opts)
  // Messages are written by any process; they are sent where handlers run.
  const deliveries =
    opts.webhooks &&
    new Deliveries(engine, opts.webhooks, { basePath: opts.basePath, exposeStack: opts.exposeStack, logger: app.log })

  // Who sent each request, found once by `authenticate` below; requests are never reused.
  const callers = new WeakMap<FastifyRequest, Principal>()

  if (opts.rateLimit) {
    await app.register(rateLimit, {
      global: false,
      // After authentication, before the body is read: callers are counted by principal.
      hook: 'preParsing',
      keyGenerator: (request) => callers.get(request)?.id ?? `ip:${request.ip}`,
      errorResponseBuilder: (_request, context) =>
        Object.assign(
          new LongrunError('rate-limited', `At most ${context.max} requests per ${context.after}.`, {
            extra: { retryAfter: Math.max(1, Math.ceil(context.ttl / 1000)) },
          }),
          { statusCode: 429 },
        ),
    })
  }
  // One counter per caller across all of longrun's routes. A route's `config.rateLimit` would give each
  // route a counter of its own, letting a caller make `max` requests on every route.
  const limit = opts.rateLimit
    ? app.rateLimit({ max: opts.rateLimit.max, timeWindow: opts.rateLimit.timeWindowMs })
    : undefined
  const limited: preParsingAsyncHookHandler[] = limit
    ? [
        async function (request, reply) {
          await limit.call(this, request, reply)
        },
      ]
    : []

  // Refused credentials are limited per address even without `rateLimit`: guessing keys stays slow.
  const failures = authFailureGuard(opts)
  const authenticate: onRequestHookHandler = async (request, reply) => {
    failures?.check(request)
    try {
      const principal = await protocol.authenticate(request)
      if (principal) callers.set(request, principal)
    } catch (err) {
      if (err instanceof LongrunError && err.status === 401) {
        failures?.refused(request)
        // With `rateLimit`, refused credentials count against the client's address too.
        if (limit) await limit.call(app, request, reply)
      }
      throw err
    }
  }
  const accessOf = (request: FastifyRequest) => protocol.accessFor(callers.get(request))

  // Routes land in the context `route()` is called from (its prefix, hooks and decorators): the
  // decorator is a getter, and `this` is the context it is read from.
  const declarations = new WeakMap<FastifyInstance, Longrun>()
  /** Serves `serve(scope, url)` at `url` of `context`; with CORS, in a context of its own. */
  const inContext = (
    context: FastifyInstance,
    method: string,
    url: string,
    serve: (scope: FastifyInstance, url: string) => void,
  ) => {
    if (!cors) return void serve(context, url)
    // CORS needs a context of its own: @fastify/cors adds hooks, and a preflight route `<prefix>*`
    // that also catches longer URLs (the rest in its `*` parameter), which are not this route's.
    const methods: MethodsOf = (request) =>
      (request.params as { '*'?: string })['*'] ? [] : method === 'GET' ? ['GET', 'HEAD'] : [method]
    context.register(
      async (scope) => {
        await addCors(scope, cors, methods)
        serve(scope, '')
      },
      { prefix: url },
    )
  }

  const declare = (context: FastifyInstance): Longrun => ({
    engine,
    route(options) {
      const route = protocol.addRoute(options, context.prefix)
      const beforeQueue = route.beforeQueue as ((request: FastifyRequest, reply: FastifyReply) => unknown) | undefined
      inContext(context, route.method, route.url, (scope, url) =>
        scope.route({
          method: route.method as HTTPMethods,
          url,
          schema: route.schema,
          bodyLimit: route.bodyLimit ?? opts.bodyLimit,
          preParsing: [...limited, jsonBodiesOnly],
          ...(strict ? { validatorCompiler: strictValidator(scope.getSchemas()) } : {}),
          onRequest: authenticate,
          errorHandler: problemErrorHandler,
          handler: async (request, reply) => {
            const hooked = beforeQueue ? await beforeQueue(request, reply) : undefined
            // The hook answered: nothing is stored.
            if (hooked === reply || reply.sent) return reply
            const signal = disconnected(reply)
            return send(
              reply,
              await protocol.submit(accessOf(request), route, {
                method: request.method,
                path: request.url.split('?')[0]!,
                body: request.body,
                params: (request.params ?? {}) as Record<string, string>,
                query: (request.query ?? {}) as Record<string, unknown>,
                headers: request.headers,
                headerValues: valuesOf(request),
                ip: request.ip,
                get signal() {
                  return signal()
                },
                requestId: request.id,
                ...contextOf(route.name, hooked),
              }),
            )
          },
        }),
      )
    },
    timeoutHeld: () => protocol.timeoutHeld(),
    operationRoute(options) {
      const mount = protocol.addMount(options as OperationRouteOptions, context.prefix)
      const view: EndpointView = {
        formats: mount.formats,
        presentation: mount.presentation,
        readQuery: mount.readQuery,
        route: mount.route,
      }
      inContext(context, mount.method, options.url, (scope, url) =>
        scope.route({
          method: mount.method,
          url,
          bodyLimit: opts.bodyLimit,
          preParsing: limited,
          onRequest: authenticate,
          errorHandler: problemErrorHandler,
          handler: (request, reply) => {
            const id = mount.id ? idOf(mount.id, request, valuesOf(request)) : ''
            const query = mount.id ? queryWithoutId(mount.id, request.query) : request.query
            return answer(mount.action, id, request, reply, view, query)
          },
        }),
      )
    },
  })
  app.decorate('longrun', {
    getter(this: FastifyInstance) {
      let longrun = declarations.get(this)
      if (!longrun) declarations.set(this, (longrun = declare(this)))
      return longrun
    },
  })

  const answer = (
    name: EndpointName,
    id: string,
    request: FastifyRequest,
    reply: FastifyReply,
    view?: EndpointView,
    query: unknown = request.query,
  ) => {
    const signal = disconnected(reply)
    const endpoint: EndpointRequest = {
      id,
      query: (query ?? {}) as Record<string, unknown>,
      body: request.body,
      headers: request.headers,
      ip: request.ip,
      get signal() {
        return signal()
      },
      head: request.method === 'HEAD',
      ...(view ? { view } : {}),
    }
    return protocol.answer(name, accessOf(request), endpoint).then((answer) => send(reply, answer))
  }

  const notFound = operationsNotFound(opts.basePath)
  if (opts.operationsApi)
    await app.register(
      async (api) => {
        api.setErrorHandler(problemErrorHandler)
        api.setNotFoundHandler(notFound)
        // Before authentication: a preflight carries no credentials.
        if (cors) await addCors(api, cors, (request) => allowedMethods(pathOf(request).slice(opts.basePath.length)))
        // Every route of this context, present and future, authenticates before anything else.
        // Liveness and readiness probes excepted: a load balancer has no credentials to send.
        const probes = new Set([`${opts.basePath}/health`, `${opts.basePath}/ready`])
        api.addHook('onRequest', async function (request, reply) {
          if (!probes.has(pathOf(request))) await authenticate.call(this, request, reply, () => {})
        })
        for (const route of OPERATION_ROUTES) {
          api.route<{ Params: { id?: string } }>({
            method: route.method,
            url: route.path === '' ? '/' : route.path,
            bodyLimit: opts.bodyLimit,
            preParsing: limited,
            handler: (request, reply) => answer(route.name, request.params.id ?? '', request, reply),
          })
        }
        // An id longer than the server's `maxParamLength` (Fastify's default: 100) misses the routes
        // above and would get Fastify's bare 414: answer it here like any other id.
        api.route<{ Params: { '*': string } }>({
          method: ['GET', 'POST', 'DELETE'],
          url: '/*',
          bodyLimit: opts.bodyLimit,
          preParsing: limited,
          handler: (request, reply) => {
            // Fastify serves HEAD with the GET handler: match it as GET.
            const method = request.method === 'HEAD' ? 'GET' : request.method
            const match = matchOperationRoute(method, `/${request.params['*']}`)
            if (!match || match.id === '') return notFound(request, reply)
            return answer(match.route.name, match.id, request, reply)
          },
        })
      },
      { prefix: mounted.basePath },
    )

  if (opts.docs) await serveDocs(app, () => protocol.describe(), opts.docs)

  app.addHook('onReady', async () => {
    protocol.checkComplete()
    engine.start()
    if (options.worker !== false) deliveries?.start()
  })
  // Stop claiming as soon as closing begins, and answer every stream, wait and held request now: the
  // server would otherwise wait for them. The store stays open for requests still in flight.
  app.addHook('preClose', async () => {
    protocol.shutdown()
    await Promise.all([engine.drain(), deliveries?.close()])
  })
  app.addHook('onClose', async () => engine.close())
}

/** The Fastify plugin: mounts the operations API and adds `app.longrun.route()` for async routes. */
export const longrun = fp(plugin, { fastify: '5.x', name: 'longrun' })

/** The same plugin, for `app.register(import('longrun/fastify'), options)` as Fastify's docs write it. */
export default longrun

export { problemErrorHandler, problemFrameworkErrors, problemNotFoundHandler } from './errors.js'
export { problemClientErrorHandler } from './errors.js'
export {
  defineAsyncRoute,
  type AnyAsyncRoute,
  type AsyncRouteOptions,
  type AsyncRouteSchema,
  type HeldAnswer,
  type HoldOptions,
} from '../../route.js'
export type { ProtocolOptions } from '../../options.js'
export type { LongrunCorsOptions } from './cors.js'
export { EXPOSED_HEADERS } from '../../routes.js'
export type { ResultType } from '../../formats.js'
export type {
  IdLocation,
  OperationAction,
  OperationRouteOptions,
  PresentedPage,
  PresentedResource,
  PresentInput,
} from '../../mounts.js'
export type { JsonSchema, Presentation } from '../../present.js'
export { withSecurity, type SecurityAlternative, type SecurityScheme } from '../../openapi/security.js'
export type { DocsOptions } from '../../openapi/options.js'
export type { CallbackOptions } from '../../callback.js'
export type { WebhookEndpoint, WebhookOptions } from '../../webhooks/options.js'
export type { WebhookPayload } from '../../webhooks/deliveries.js'
export type { OperationResource } from '../../resource.js'
export type { Problem } from '../../problem.js'
export type { RequestHead } from '../../request.js'
export { anyOf, apiKeyAuth, jwtAuth, sessionAuth, unauthorized } from '../../auth.js'
export type { ApiKeyAuthOptions, Authenticate, JwtAuthOptions, SessionAuthOptions } from '../../auth.js'
export type { AccessList, Permissions, Principal } from '../../../core/permissions.js'
