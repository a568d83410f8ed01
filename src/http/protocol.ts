import { Readable } from 'node:stream'
import { OperationAccess } from '../core/access.js'
import type { Engine } from '../core/engine.js'
import { invalidOption, LongrunError, operationNotFound } from '../core/errors.js'
import { isTerminal, OPERATION_STATES, type OperationState } from '../core/operation.js'
import type { Principal } from '../core/permissions.js'
import type { CleanupRun } from '../core/cleanup.js'
import { isDeferrable, isPingable, isStamped, type QuerySort } from '../core/store.js'
import type { HistoryEntry, Operation, Page } from '../core/types.js'
import { credentialHeaders, unauthorized } from './auth.js'
import { entityTag, httpDate, mergeVary, noneMatch, OWNER_SCOPED } from './caching.js'
import { negotiate, serialize, type ResultType } from './formats.js'
import type { ResolvedProtocolOptions } from './options.js'
import { headerOf, type RequestHead } from './request.js'
import {
  builtInLinks,
  iso,
  operationUrl,
  publicError,
  toDetailedResource,
  toResource,
  type OperationResource,
  type ResourceOptions,
} from './resource.js'
import {
  resolveAsyncRoute,
  type AsyncRouteOptions,
  type AsyncRouteSchema,
  type HeldAnswer,
  type ResolvedAsyncRoute,
  type SchemaTypeProvider,
} from './route.js'
import { bodyConditions, queryConditions } from './filters.js'
import type { Condition } from '../core/query.js'
import { validateStandard } from './schema.js'
import { callerKey, preferences, Realtime } from './realtime.js'
import { invalidQuery, singleParameter } from './query.js'
import { Submitter, type SubmitParts } from './submit.js'
import { checkJsonLimits, retryFilterOf } from './limits.js'
import { resolveMount, type ApiDescription, type OperationRouteOptions, type ResolvedMount } from './mounts.js'
import { presentOne, presentOther, presentPage, statusFor, type Presentation } from './present.js'
import { OPERATION_ROUTES, type EndpointName, type EndpointRequest, type EndpointView } from './routes.js'
import { StatusCache } from './status-cache.js'

/** A framework-neutral answer: adapters copy it onto their own reply object. */
export interface HttpReply {
  status: number
  headers: Record<string, string>
  /** A string is sent as is, a Node `Readable` (an event stream) is piped; anything else as JSON. */
  body?: unknown
}

/** What the push endpoints read of a request besides its path. */
export interface LiveRequest {
  headers: Record<string, string | string[] | undefined>
  query: Record<string, unknown>
  /** The client's address: anonymous callers' streams are counted by it. */
  ip: string
  /** Aborts when the client goes away before its answer. */
  signal?: AbortSignal
  /** A `HEAD` request: a stream answers its headers without opening. */
  head?: boolean
  /** How the route serving it answers (formats, presentation); the built-in API's by default. */
  view?: EndpointView
}

/** What an endpoint reads of a request to choose its body's media type and shape. */
type Viewed = Pick<LiveRequest, 'headers' | 'view'>

const CURSOR = /^[A-Za-z0-9_-]{1,200}$/

/**
 * The HTTP protocol of docs/protocol.md, independent of any HTTP framework: each method takes what
 * the request carries and returns the reply, or throws a LongrunError that the adapter turns into a
 * problem. Operations are reached only through the caller's `OperationAccess` (`accessFor`), never
 * through the engine: no endpoint can skip the permission check. An adapter authenticates each
 * request, then calls the endpoint its route table (`routes.ts`) names.
 */
export class OperationsProtocol {
  readonly engine: Engine
  readonly options: ResolvedProtocolOptions
  readonly #submitter: Submitter
  readonly #routes = new Map<string, ResolvedAsyncRoute>()
  readonly #mounts: ResolvedMount[] = []
  readonly #defaultView: EndpointView
  /** How resources are built: links lead to the built-in API, or to the app's mounts without it. */
  readonly #resourceOptions: ResourceOptions
  readonly #realtime: Realtime
  /** The request headers every answer depends on besides its URL: the caller's credentials. */
  readonly #vary: readonly string[]
  readonly #statuses = new StatusCache<HttpReply & { headers: { etag: string } }>()

  constructor(engine: Engine, options: ResolvedProtocolOptions) {
    this.engine = engine
    this.options = options
    this.#vary = credentialHeaders(options.authenticate)
    this.#submitter = new Submitter(engine, options)
    this.#realtime = new Realtime(options, engine.pollMs, this.#groupNames)
    this.#defaultView = { formats: options.formats }
    this.#resourceOptions = {
      basePath: options.basePath,
      exposeStack: options.exposeStack,
      ...(options.operationsApi ? {} : { linksOf: (id: string) => this.#mountedLinks(id) }),
    }
    if (options.operationsApi) {
      for (const route of OPERATION_ROUTES) {
        this.#mounts.push({
          action: route.name,
          method: route.method,
          url: options.basePath + route.path,
          id: route.path.startsWith('/:id') ? { in: 'path', name: 'id' } : undefined,
          formats: options.formats,
          presentation: undefined,
          builtIn: true,
        })
      }
    }
  }

  /** Everything this API serves: its async routes, the operations API and the app's mounts. */
  describe(): ApiDescription {
    return { options: this.options, routes: [...this.#routes.values()], mounts: [...this.#mounts] }
  }

  /**
   * Checks a mount of one action at the app's own URL (`prefix`: the context's); the adapter then
   * serves it, reading the id where the mount says and calling `answer` with the mount's view.
   */
  addMount(options: OperationRouteOptions, prefix = ''): ResolvedMount {
    const mount = resolveMount(options, prefix, this.options.formats)
    this.#mounts.push(mount)
    return mount
  }

  /**
   * Throws when the API cannot tell clients where their operations are: without the built-in
   * operations API, async routes need a status mount that takes the id in its path or query.
   */
  checkComplete(): void {
    if (this.options.operationsApi || this.#routes.size === 0) return
    if (!this.#findMount('status')) {
      throw invalidOption(
        'operationsApi',
        "is false: mount the 'status' action with the id in its path or query (app.longrun.operationRoute), so that Location can point to it",
      )
    }
  }

  /** The endpoint `name` of the operations API, answered as `request.view` says (formats, presentation). */
  async answer(name: EndpointName, access: OperationAccess, request: EndpointRequest): Promise<HttpReply> {
    // A mount of one route's operations: another's is not there (the same 404 as an unknown id).
    if (request.view?.route !== undefined && request.id !== '') {
      if ((await access.get(request.id)).name !== request.view.route) throw operationNotFound()
    }
    const reply = await this.#endpoint(name, access, request)
    return this.#encoded(reply, request, ROOTS[name])
  }

  #endpoint(name: EndpointName, a: OperationAccess, r: EndpointRequest): Promise<HttpReply> | HttpReply {
    switch (name) {
      case 'list':
        return this.list(a, r)
      case 'stats':
        return this.stats(a, r)
      case 'query':
        return this.query(a, r)
      case 'cleanupStatus':
        return this.cleanupStatus(a, r)
      case 'cleanup':
        return this.runCleanup(a, r)
      case 'feed':
        return this.feed(a, r)
      case 'retryAll':
        return this.retryAll(a, r.body)
      case 'status':
        return this.status(a, r.id, r)
      case 'events':
        return this.events(a, r.id, r)
      case 'wait':
        return this.wait(a, r.id, r)
      case 'result':
        return this.result(a, r.id, r)
      case 'error':
        return this.error(a, r.id, r)
      case 'cancel':
        return this.cancel(a, r.id, r)
      case 'retry':
        return this.retry(a, r.id, r)
      case 'start':
        return this.start(a, r.id, r)
      case 'delete':
        return this.remove(a, r.id)
      case 'deliveries':
        return this.deliveries(a, r.id, r)
      case 'redeliver':
        return this.redeliver(a, r.id)
      case 'health':
        return this.health()
      case 'ready':
        return this.ready(a)
    }
  }

  /** The first mount of `action` whose URL can carry an id (in its path or query), for links. */
  #findMount(action: string): ResolvedMount | undefined {
    return this.#mounts.find((m) => m.action === action && (m.id?.in === 'path' || m.id?.in === 'query'))
  }

  /** Where an operation is polled: the built-in status URL, or the app's status mount. */
  #location(id: string): string {
    return this.#resourceOptions.linksOf?.(id).self ?? operationUrl(this.options.basePath, id)
  }

  #mountedLinks(id: string): OperationResource['links'] {
    const at = (action: string) => {
      const mount = this.#findMount(action)
      if (!mount) return undefined
      const encoded = encodeURIComponent(id)
      return mount.id!.in === 'path'
        ? mount.url.replace(`:${mount.id!.name}`, encoded)
        : `${mount.url}?${encodeURIComponent(mount.id!.name)}=${encoded}`
    }
    const links: OperationResource['links'] = { self: at('status') ?? builtInLinks(this.options.basePath, id).self }
    for (const action of ['result', 'error', 'cancel', 'start'] as const) {
      const url = at(action)
      if (url) links[action] = url
    }
    return links
  }

  /**
   * The body of `value` in the media type the request accepts of those its view offers; `406`
   * when it accepts none, unless `lenient` (the first, for an answer about a change already made).
   */
  #encode(request: Viewed | undefined, value: unknown, root: string, lenient: boolean): { type: string; text: string } {
    const { formats } = this.#viewOf(request)
    const accept = headerOf(request ?? { headers: {} }, 'accept')
    let type: ResultType
    try {
      type = negotiate(accept, formats)
    } catch (err) {
      if (!lenient) throw err
      type = formats[0]!
    }
    return { type: `${type}; charset=utf-8`, text: serialize(value, type, root) }
  }

  /** A reply whose body is still a value (not a string or a stream), encoded for the request. */
  #encoded(reply: HttpReply, request: Viewed | undefined, root: string, lenient = false): HttpReply {
    if (reply.body === undefined || typeof reply.body === 'string' || reply.body instanceof Readable) return reply
    const { type, text } = this.#encode(request, reply.body, root, lenient)
    const headers: Record<string, string> = { ...reply.headers, 'content-type': type }
    if (this.#viewOf(request).formats.length > 1) headers.vary = mergeVary(reply.headers.vary, 'Accept')
    return { ...reply, headers, body: text }
  }

  #viewOf(request: Pick<LiveRequest, 'view'> | undefined): EndpointView {
    return request?.view ?? this.#defaultView
  }

  /**
   * Answers every open stream, wait and held request at once (streams end after a comment, the
   * others get `503 shutting-down`) and refuses new ones: call it when the server starts closing.
   */
  shutdown(): void {
    this.#realtime.shutdown()
  }

  /** Checks an async route and defines its operation on the engine; the adapter then serves it. */
  addRoute<S extends AsyncRouteSchema, Result, Args, TP extends SchemaTypeProvider>(
    route: AsyncRouteOptions<S, Result, Args, TP>,
    prefix = '',
  ): ResolvedAsyncRoute {
    const resolved = { ...resolveAsyncRoute(route), prefix }
    if (resolved.start === 'manual' && !isDeferrable(this.engine.store)) {
      throw invalidOption(`${resolved.name}.start`, "is 'manual', but the store does not keep deferred operations")
    }
    if (resolved.callback && !this.options.webhooks) {
      throw invalidOption(`${resolved.name}.callback`, "needs the plugin's webhooks option (its signing secret)")
    }
    this.engine.define(resolved.definition)
    this.#routes.set(resolved.name, resolved)
    return resolved
  }

  /**
   * The caller of a request, by the `authenticate` option; `undefined` for an anonymous one.
   * Throws `unauthorized` for refused credentials, or for none where anonymous callers are not served.
   */
  async authenticate(head: RequestHead): Promise<Principal | undefined> {
    const principal = await this.options.authenticate?.(head)
    if (!principal && !this.options.allowAnonymous)
      throw unauthorized('This API needs credentials.', this.options.challenge)
    return principal ?? undefined
  }

  /** The operations as `caller` may see and change them: what every endpoint takes. */
  accessFor(caller: Principal | undefined): OperationAccess {
    return new OperationAccess(this.engine, caller, this.options.policy)
  }

  /**
   * `POST <route>`: stores the operation, then answers 202; or, for a held route or a request that
   * prefers to wait (`Prefer: wait=N`, RFC 7240), its outcome when it ends in time.
   */
  async submit(
    access: OperationAccess,
    route: ResolvedAsyncRoute,
    parts: SubmitParts & Partial<LiveRequest>,
  ): Promise<HttpReply> {
    parts = await withStandardSchemas(route, parts)
    const prefer = preferences(parts)
    const waitMs = route.hold?.timeoutMs ?? this.#realtime.waitMs(prefer.get('wait'))
    // A held request counts against the caller's slots like a wait, refused before anything is
    // stored; a mere preference to wait is just not applied when no slot is free.
    const slot = waitMs ? this.#realtime.slot(callerKey(access, parts.ip ?? ''), route.hold === undefined) : undefined
    let submitted
    try {
      submitted = await this.#submitter.submit(access, route, parts)
    } catch (err) {
      slot?.()
      throw err
    }
    const { op, headers } = submitted
    const vary = { vary: 'Prefer', ...headers }
    const accepted = (as: Operation) => this.#acceptedAsPreferred(as, vary, prefer, parts, route.presentation)
    if (!waitMs || !slot) return accepted(op)
    const held = route.hold ? this.#realtime.heldTimeout : undefined
    const stop = held && parts.signal ? AbortSignal.any([parts.signal, held]) : (held ?? parts.signal)
    const done = await this.#realtime.wait(access, op.id, waitMs, stop, slot)
    if (parts.signal?.aborted) {
      if (route.hold?.cancelOnDisconnect && !isTerminal(done.state)) await access.cancel(op.id).catch(() => {})
      return accepted(done)
    }
    if (!isTerminal(done.state)) {
      if (route.hold?.onTimeout === 'timeout') {
        throw new LongrunError('hold-timeout', `The operation is still '${done.state}'; poll it.`, {
          extra: { state: done.state, retryAfter: this.options.retryAfterSeconds },
          headers: { location: this.#location(op.id), ...vary },
        })
      }
      return accepted(done)
    }
    const answered: Record<string, string> = { ...vary, 'content-location': this.#location(op.id) }
    if (route.hold === undefined) answered['preference-applied'] = `wait=${prefer.get('wait')}`
    const respond = route.hold?.respond
    const resource = respond && {
      ...toResource(done, this.#resourceOptions),
      input: done.input,
      context: done.context ?? {},
    }
    const answer = resource && respond!(resource)
    if (answer) return this.#respond(answer, answered, parts)
    return this.#outcome(done, headerOf(parts, 'accept'), answered)
  }

  /**
   * Answers every held request waiting now as its hold timeout would (`408 hold-timeout`, or `202`):
   * qbm-http's `force_timeout_all_requests`. The operations go on.
   */
  timeoutHeld(): void {
    this.#realtime.timeoutHeld()
  }

  /** A held request's answer as the route's `hold.respond` makes it. */
  #respond(answer: HeldAnswer, headers: Record<string, string>, request: Viewed): HttpReply {
    const given = Object.fromEntries(
      Object.entries(answer.headers ?? {}).map(([name, value]) => [name.toLowerCase(), value]),
    )
    const reply = { status: answer.status ?? 200, headers: { ...headers, ...given } }
    if (answer.body === undefined) return reply
    if (typeof answer.body === 'string') {
      return { ...reply, headers: { 'content-type': 'text/plain; charset=utf-8', ...reply.headers }, body: answer.body }
    }
    return this.#encoded({ ...reply, body: answer.body }, request, 'result', true)
  }

  #acceptedAsPreferred(
    op: Operation,
    headers: Record<string, string>,
    prefer: Map<string, string>,
    request: Viewed,
    presentation: Presentation | undefined,
  ): HttpReply {
    return this.accepted(
      op,
      prefer.has('respond-async') ? { ...headers, 'preference-applied': 'respond-async' } : headers,
      { headers: request.headers, view: { formats: this.options.formats, presentation } },
    )
  }

  /**
   * 202 for a just-accepted (or re-queued) operation. `Operation-Location` (the same URL as
   * `Location`) makes Azure's pollers read the status from the body rather than from the status code.
   */
  accepted(op: Operation, headers: Record<string, string> = {}, request?: Viewed): HttpReply {
    const location = this.#location(op.id)
    const presentation = request?.view?.presentation
    return this.#encoded(
      {
        status: statusFor(presentation, op.state, 202),
        headers: {
          location,
          'operation-location': location,
          'retry-after': String(this.options.retryAfterSeconds),
          ...headers,
        },
        body: presentOne(presentation, toResource(op, this.#resourceOptions), op),
      },
      request,
      'operation',
      // The operation is stored (or queued again) already: a 406 now would hide that it was.
      true,
    )
  }

  /** `GET {base}/{id}`; with `Prefer: wait=N`, once the operation is done or N seconds have passed. */
  async status(access: OperationAccess, id: string, request?: LiveRequest): Promise<HttpReply> {
    const waitMs = request && this.#realtime.waitMs(preferences(request).get('wait'))
    if (request && waitMs) await this.#wait(access, id, waitMs, request)
    return this.#status(access, id, request, request ? { vary: 'Prefer' } : {})
  }

  async #status(
    access: OperationAccess,
    id: string,
    request: Viewed | undefined,
    vary: { vary?: string },
  ): Promise<HttpReply> {
    const presentation = request?.view?.presentation
    // A presentation is the app's code, which may show more than the operation: never cached.
    const stamp =
      presentation === undefined && isStamped(this.engine.store) ? this.engine.store.changeStamp() : undefined
    const view = this.#viewOf(request)
    const key =
      stamp === undefined ? '' : `${id}\n${vary.vary ?? ''}\n${headerOf(request ?? { headers: {} }, 'accept') ?? ''}`
    const cached = stamp === undefined ? undefined : this.#statuses.get(stamp, view, key)
    let reply: HttpReply & { headers: { etag: string } }
    if (cached) {
      access.shown(cached.op)
      reply = cached.reply
    } else {
      const { op, history } = await access.details(id)
      reply = this.#tagged(
        {
          status: statusFor(presentation, op.state, 200),
          headers: { ...this.#headers(op), ...vary },
          body: presentOne(presentation, toDetailedResource(op, history, this.#resourceOptions), op),
        },
        request,
        lastChange(op, history),
        'operation',
      )
      if (stamp !== undefined) this.#statuses.set(stamp, view, key, { op, reply })
    }
    return this.#notModified(reply, request)
  }

  /** `GET {base}/{id}/wait?timeout=N`: the operation once it is done, or as it is after N seconds (Google's WaitOperation). */
  async wait(access: OperationAccess, id: string, request: LiveRequest): Promise<HttpReply> {
    const timeout = singleParameter(request.query.timeout, 'timeout')
    const waitMs = this.#realtime.waitMs(timeout, 'timeout') ?? Math.min(30_000, this.options.maxWaitMs)
    await this.#wait(access, id, waitMs, request)
    return this.#status(access, id, request, {})
  }

  #wait(access: OperationAccess, id: string, waitMs: number, request: LiveRequest): Promise<Operation> {
    const slot = this.#realtime.slot(callerKey(access, request.ip), false)!
    return this.#realtime.wait(access, id, waitMs, request.signal, slot)
  }

  /** `GET {base}/{id}/events`: the operation's events as server-sent events (docs/realtime.md). */
  events(access: OperationAccess, id: string, request: LiveRequest): Promise<HttpReply> {
    return this.#realtime.operationStream({ access, caller: callerKey(access, request.ip), ...request }, id)
  }

  /** `GET {base}/events`: the events of a group's operations (`?group=`), or of all of the caller's own. */
  feed(access: OperationAccess, request: LiveRequest): Promise<HttpReply> {
    return this.#realtime.feedStream({ access, caller: callerKey(access, request.ip), ...request })
  }

  async result(access: OperationAccess, id: string, request: Viewed): Promise<HttpReply> {
    const op = await access.get(id)
    return this.#validated(this.#outcome(op, headerOf(request, 'accept')), request, op.completedAt)
  }

  /** The result of a succeeded operation, else the problem that says why there is none. */
  #outcome(
    op: Operation,
    accept: string | undefined,
    headers: Record<string, string> = {},
  ): HttpReply & { body: string } {
    if (op.state === 'succeeded') {
      const type = negotiate(accept, this.#routes.get(op.name)?.resultTypes ?? ['application/json'])
      return {
        status: 200,
        headers: { ...headers, 'content-type': `${type}; charset=utf-8`, vary: mergeVary(headers.vary, 'Accept') },
        body: serialize(op.result, type),
      }
    }
    if (!isTerminal(op.state)) {
      throw new LongrunError('operation-not-done', `The operation is '${op.state}'.`, {
        extra: { state: op.state, retryAfter: this.options.retryAfterSeconds },
      })
    }
    throw new LongrunError(
      op.state === 'failed' ? 'operation-failed' : 'operation-canceled',
      `The operation ended '${op.state}'.`,
      {
        extra: { state: op.state, ...(op.error ? { error: publicError(op.error, this.options.exposeStack) } : {}) },
        headers,
      },
    )
  }

  /** `GET {base}/{id}/error`: a failed operation's error; a presentation's `present` gets the operation. */
  async error(access: OperationAccess, id: string, request: Viewed): Promise<HttpReply> {
    const op = await access.get(id)
    if (op.state !== 'failed' || !op.error) {
      throw new LongrunError('no-error', `The operation is '${op.state}', not failed.`, { extra: { state: op.state } })
    }
    const presentation = request.view?.presentation
    const body = presentation?.present
      ? presentOne(presentation, toResource(op, this.#resourceOptions), op)
      : {
          id: op.id,
          state: presentation?.states?.[op.state] ?? op.state,
          attempt: op.attempt,
          error: publicError(op.error, this.options.exposeStack),
        }
    return this.#validated({ status: 200, headers: {}, body }, request, op.completedAt, 'error')
  }

  async cancel(access: OperationAccess, id: string, request?: Viewed): Promise<HttpReply> {
    const op = await access.cancel(id)
    const presentation = request?.view?.presentation
    return this.#encoded(
      {
        status: statusFor(presentation, op.state, 200),
        headers: this.#headers(op),
        body: presentOne(presentation, toResource(op, this.#resourceOptions), op),
      },
      request,
      'operation',
      true,
    )
  }

  async retry(access: OperationAccess, id: string, request?: Viewed): Promise<HttpReply> {
    return this.accepted(await access.retry(id), {}, request)
  }

  /** `POST {base}/{id}/start`: queues an operation its route created to start later (`start: 'manual'`). */
  async start(access: OperationAccess, id: string, request?: Viewed): Promise<HttpReply> {
    return this.accepted(await access.start(id), {}, request)
  }

  /** Every webhook message of the operation (its callback's and app-wide endpoints'), with each attempt. */
  async deliveries(access: OperationAccess, id: string, request: Viewed): Promise<HttpReply> {
    const items = (await access.deliveries(id)).map(({ nextAttemptAt, attempts, ...message }) => ({
      ...message,
      nextAttemptAt: iso(nextAttemptAt),
      attempts: attempts.map(({ at, status, error, ...attempt }) => ({
        at: iso(at)!,
        ...attempt,
        status: status ?? null,
        error: error ?? null,
      })),
    }))
    return this.#validated({ status: 200, headers: {}, body: { items } }, request, undefined, 'deliveries')
  }

  /** Sends the operation's delivered and failed messages again. */
  async redeliver(access: OperationAccess, id: string): Promise<HttpReply> {
    const redelivered = await access.redeliver(id)
    return { status: 202, headers: {}, body: { redelivered } }
  }

  async remove(access: OperationAccess, id: string): Promise<HttpReply> {
    await access.delete(id)
    return { status: 204, headers: {} }
  }

  /**
   * `GET {base}`: a page of what the caller may read, newest first; `state` (a comma list) and
   * `name` as always, and any filter of docs/query.md in the query-string form, with `sort`.
   */
  async list(access: OperationAccess, request: Viewed & Pick<LiveRequest, 'query'>): Promise<HttpReply> {
    const { query } = request
    const states = parseStates(query.state)
    const name = singleParameter(query.name, 'name')
    const where = [...queryConditions(query, LIST_PARAMETERS, this.#groupNames), ...ofRoute(request.view)]
    const { limit, cursor, sort } = this.#pageOf(query)
    const filter = {
      ...(states ? { states } : {}),
      ...(name !== undefined ? { name } : {}),
      ...(cursor !== undefined ? { cursor } : {}),
      limit,
    }
    // Without conditions or another order, the plain list: it needs no `Queryable` store.
    const page =
      where.length > 0 || sort === 'oldest' ? await access.query({ ...filter, where, sort }) : await access.list(filter)
    const body = presentPage(request.view?.presentation, this.#pageBody(page, sort), page.items)
    return this.#validated({ status: 200, headers: {}, body }, request, undefined, 'page')
  }

  /**
   * `POST {base}/query`: the page of what the caller may read that meets every condition of the
   * body (Pode's form: `{ "<field>": { "op": "<operator>", "value": ... } }`); `limit`, `cursor`
   * and `sort` in the query string.
   */
  async query(
    access: OperationAccess,
    request: Pick<LiveRequest, 'query' | 'view'> & { body: unknown },
  ): Promise<HttpReply> {
    for (const parameter of Object.keys(request.query)) {
      if (!PAGE_PARAMETERS.includes(parameter)) {
        throw invalidQuery(
          parameter,
          'is not a parameter of the query (limit, cursor, sort): conditions go in the body',
        )
      }
    }
    checkJsonLimits(request.body, 'body')
    const { readQuery, presentation } = request.view ?? {}
    const body = withStateNames(readQuery ? readQuery(request.body) : request.body, presentation)
    const where = [...bodyConditions(body, this.#groupNames), ...ofRoute(request.view)]
    const { limit, cursor, sort } = this.#pageOf(request.query)
    const page = await access.query({ where, sort, limit, ...(cursor !== undefined ? { cursor } : {}) })
    return {
      status: 200,
      headers: {},
      body: presentPage(request.view?.presentation, this.#pageBody(page, sort), page.items),
    }
  }

  /** A page of resources; without their results, so that a page's size does not grow with them. */
  #pageBody(page: Page, sort: QuerySort) {
    return {
      items: page.items.map((op) => toResource(op, this.#resourceOptions, { result: false })),
      nextCursor: page.nextCursor === undefined ? null : encodeCursor(page.nextCursor, sort),
    }
  }

  /** `limit`, `cursor` and `sort` of a page. */
  #pageOf(query: Record<string, unknown>): { limit: number; cursor: string | undefined; sort: QuerySort } {
    const sortText = singleParameter(query.sort, 'sort')
    if (sortText !== undefined && sortText !== 'newest' && sortText !== 'oldest') {
      throw invalidQuery('sort', "must be 'newest' or 'oldest'")
    }
    const sort = sortText ?? 'newest'
    const cursorText = singleParameter(query.cursor, 'cursor')
    const cursor = cursorText === undefined ? undefined : decodeCursor(cursorText, sort)
    const limitText = singleParameter(query.limit, 'limit')
    let limit = this.options.defaultPageSize
    if (limitText !== undefined) {
      limit = Number(limitText)
      if (!/^\d+$/.test(limitText) || limit < 1) throw invalidQuery('limit', 'must be a positive integer')
      limit = Math.min(limit, this.options.maxPageSize)
    }
    return { limit, cursor, sort }
  }

  /** The names of the routes in an SSE group, for the `sseGroup` field of queries. */
  readonly #groupNames = (group: string): string[] =>
    [...this.#routes.values()].filter((route) => route.sseGroup === group).map((route) => route.name)

  /** Retries failed (or canceled) operations in bulk: `{ state?, name?, limit? }` in the body. */
  async retryAll(access: OperationAccess, body: unknown): Promise<HttpReply> {
    // By its schema first: `parseStates` reads strings only (`{"toString":1}` is no state).
    const filter = retryFilterOf(body)
    const states = parseStates(filter.state, invalidFilter)
    if (states?.some((state) => state !== 'failed' && state !== 'canceled')) {
      throw invalidFilter('state', 'must be failed or canceled')
    }
    const limit = filter.limit ?? 1_000
    const ids = await access.retryAll({
      ...(states ? { states: states as ('failed' | 'canceled')[] } : {}),
      ...(filter.name !== undefined ? { name: filter.name } : {}),
      limit,
    })
    return { status: 200, headers: {}, body: { retried: ids.length, ids } }
  }

  /** `GET {base}/stats`: counts of what the caller may read; `state` and the filters of the list. */
  async stats(access: OperationAccess, request: Viewed & Pick<LiveRequest, 'query'>): Promise<HttpReply> {
    const states = parseStates(request.query.state)
    const where = [...queryConditions(request.query, STATS_PARAMETERS, this.#groupNames), ...ofRoute(request.view)]
    const stats = await access.stats({ ...(states ? { states } : {}), where })
    const body = presentOther(request.view?.presentation, stats)
    return this.#validated({ status: 200, headers: {}, body }, request, undefined, 'stats')
  }

  /** `GET {base}/cleanup`: the cleanup service's status (docs/query.md); any caller may see it. */
  cleanupStatus(access: OperationAccess, request?: Pick<LiveRequest, 'view'>): HttpReply {
    const { lastRun, ...status } = access.cleanupStatus()
    const body = presentOther(request?.view?.presentation, { ...status, lastRun: lastRun && runResource(lastRun) })
    return { status: 200, headers: { 'cache-control': 'no-store' }, body }
  }

  /**
   * `POST {base}/cleanup`: runs the cleanup now and answers the run (while one is in progress in
   * this process, once it ends: that run). Admin role, or the `cleanup.allow` grant.
   */
  async runCleanup(access: OperationAccess, request?: Pick<LiveRequest, 'view'>): Promise<HttpReply> {
    const run = await access.runCleanup()
    const body = presentOther(request?.view?.presentation, runResource(run))
    return { status: 200, headers: { 'cache-control': 'no-store' }, body }
  }

  /**
   * An owner-scoped read with its validators, or `304` without a body when `If-None-Match` matches
   * (keeping `Retry-After`, so that a client polling cheaply still knows how often to ask).
   */
  #validated(given: HttpReply, request: Viewed | undefined, lastModified?: number, root = 'response'): HttpReply {
    return this.#notModified(this.#tagged(given, request, lastModified, root), request)
  }

  /** `given` encoded for the request, with its validators and cache directives. */
  #tagged(
    given: HttpReply,
    request: Viewed | undefined,
    lastModified: number | undefined,
    root: string,
  ): HttpReply & { headers: { etag: string } } {
    const reply = this.#encoded(given, request, root) as HttpReply & { body: string }
    const etag = entityTag(reply.headers['content-type']!, reply.body)
    const headers: Record<string, string> & { etag: string } = {
      ...reply.headers,
      etag,
      ...(lastModified === undefined ? {} : { 'last-modified': httpDate(lastModified) }),
      'cache-control': OWNER_SCOPED,
    }
    const vary = mergeVary(reply.headers.vary, ...this.#vary)
    if (vary !== '') headers.vary = vary
    return { ...reply, headers }
  }

  /** `304` without a body when `If-None-Match` matches the reply's entity tag, else the reply. */
  #notModified(reply: HttpReply & { headers: { etag: string } }, request: Viewed | undefined): HttpReply {
    if (!noneMatch(request?.headers['if-none-match'], reply.headers.etag)) return reply
    const { 'content-type': _type, ...kept } = reply.headers
    return { status: 304, headers: kept }
  }

  /** The headers of an answer about `op`: how soon to ask again while it is not done. */
  #headers(op: Operation): Record<string, string> {
    return isTerminal(op.state) ? {} : { 'retry-after': String(this.options.retryAfterSeconds) }
  }

  /** `GET {base}/health`: liveness, `200 { status: 'ok' }` while the process serves; any caller, the store is not asked. */
  health(): HttpReply {
    return { status: 200, headers: { 'cache-control': 'no-store' }, body: { status: 'ok' } }
  }

  /**
   * `GET {base}/ready`: readiness, `200 { status: 'ok' }` when the store answers a ping (`Pingable`;
   * a store without one is taken as ready); `503 store-unavailable` with Retry-After when it does
   * not, `503 shutting-down` once the server closes. Any caller: it tells nothing of operations.
   */
  async ready(_access: OperationAccess): Promise<HttpReply> {
    const retryAfter = this.options.retryAfterSeconds
    if (this.#realtime.closing) {
      throw new LongrunError('shutting-down', 'The server is shutting down.', { extra: { retryAfter } })
    }
    const { store } = this.engine
    try {
      if (isPingable(store)) await store.ping()
    } catch (err) {
      const known = err instanceof LongrunError
      throw new LongrunError('store-unavailable', `The store does not answer${known ? `: ${err.message}` : ''}`, {
        cause: err,
        extra: { retryAfter: known && typeof err.extra.retryAfter === 'number' ? err.extra.retryAfter : retryAfter },
      })
    }
    return { status: 200, headers: { 'cache-control': 'no-store' }, body: { status: 'ok' } }
  }
}

/** When anything shown of the operation last changed, for `Last-Modified`. */
const lastChange = (op: Operation, history: HistoryEntry[]) =>
  Math.max(op.createdAt, op.startedAt ?? 0, op.completedAt ?? 0, ...history.map((entry) => entry.at))

/** A cleanup run as HTTP shows it: ISO times. */
const runResource = (run: CleanupRun) => ({
  ...run,
  startedAt: new Date(run.startedAt).toISOString(),
  endedAt: new Date(run.endedAt).toISOString(),
})

/** The XML root element of each endpoint's body. */
const ROOTS: Record<EndpointName, string> = {
  list: 'page',
  query: 'page',
  stats: 'stats',
  cleanupStatus: 'cleanup',
  cleanup: 'cleanup',
  feed: 'response',
  retryAll: 'retried',
  status: 'operation',
  events: 'response',
  wait: 'operation',
  result: 'result',
  error: 'error',
  cancel: 'operation',
  retry: 'operation',
  start: 'operation',
  delete: 'response',
  deliveries: 'deliveries',
  redeliver: 'redelivered',
  health: 'health',
  ready: 'health',
}

/** The query parameters the list reads itself; any other is a condition (or refused). */
const PAGE_PARAMETERS: readonly string[] = ['limit', 'cursor', 'sort']
const LIST_PARAMETERS: readonly string[] = ['state', 'name', ...PAGE_PARAMETERS]
const STATS_PARAMETERS: readonly string[] = ['state']

const invalidFilter = (field: string, why: string) =>
  new LongrunError('invalid-body', `Field '${field}' ${why}.`, { extra: { field } })

// Clients get the store's cursor wrapped, so that a cursor the API never issued is refused here
// rather than passed to the store, which may read it as anything (an empty page, the first page).
// An oldest-first page's cursor says so: it goes on only in that order.
function encodeCursor(storeCursor: string, sort: QuerySort): string {
  const wrapped = sort === 'oldest' ? { after: storeCursor, sort } : { after: storeCursor }
  return Buffer.from(JSON.stringify(wrapped)).toString('base64url')
}

function decodeCursor(text: string, sort: QuerySort): string {
  let wrapped: { after?: unknown; sort?: unknown } | undefined
  if (CURSOR.test(text)) {
    try {
      const value: unknown = JSON.parse(Buffer.from(text, 'base64url').toString('utf8'))
      if (typeof value === 'object' && value !== null) wrapped = value
    } catch {
      // not one of ours
    }
  }
  if (typeof wrapped?.after !== 'string') throw invalidQuery('cursor', 'is not a cursor from a previous page')
  if ((wrapped.sort ?? 'newest') !== sort)
    throw invalidQuery('cursor', `is from a page in another order than '${sort}'`)
  return wrapped.after
}

function parseStates(value: unknown, invalid = invalidQuery): OperationState[] | undefined {
  if (value === undefined) return undefined
  const parts = (Array.isArray(value) ? value : [value]).flatMap((v) => String(v).split(','))
  for (const part of parts) {
    if (!OPERATION_STATES.includes(part as OperationState)) {
      throw invalid('state', `must be one of ${OPERATION_STATES.join(', ')}`)
    }
  }
  return parts as OperationState[]
}

/** The condition of a mount limited to one route's operations, if it is. */
const ofRoute = (view: EndpointView | undefined): Condition[] =>
  view?.route === undefined ? [] : [{ field: 'name', op: 'eq', value: view.route }]

/** A query body whose `state` condition names a state in the presentation's names, in longrun's. */
function withStateNames(body: unknown, presentation: Presentation | undefined): unknown {
  const states = presentation?.states
  if (!states || typeof body !== 'object' || body === null || Array.isArray(body)) return body
  const { state } = body as { state?: { value?: unknown } }
  if (typeof state !== 'object' || state === null || typeof state.value !== 'string') return body
  const own = Object.entries(states).find(([, name]) => name === state.value)?.[0]
  return own ? { ...body, state: { ...state, value: own } } : body
}

/** The parts with Standard Schemas validated and replaced by their schemas' output, first of all. */
async function withStandardSchemas<P extends SubmitParts>(route: ResolvedAsyncRoute, parts: P): Promise<P> {
  const { body, params, querystring } = route.standard
  if (!body && !params && !querystring) return parts
  return {
    ...parts,
    body: body ? await validateStandard('body', body, parts.body) : parts.body,
    params: params
      ? ((await validateStandard('params', params, parts.params)) as Record<string, string>)
      : parts.params,
    query: querystring
      ? ((await validateStandard('querystring', querystring, parts.query)) as Record<string, unknown>)
      : parts.query,
  }
}
