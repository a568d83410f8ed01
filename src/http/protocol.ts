import { OperationAccess } from '../core/access.js'
import type { Engine } from '../core/engine.js'
import { invalidOption, LongrunError } from '../core/errors.js'
import { isTerminal, OPERATION_STATES, type OperationState } from '../core/operation.js'
import type { Principal } from '../core/permissions.js'
import type { CleanupRun } from '../core/cleanup.js'
import type { QuerySort } from '../core/store.js'
import type { HistoryEntry, Operation, Page } from '../core/types.js'
import { credentialHeaders, unauthorized } from './auth.js'
import { entityTag, httpDate, mergeVary, noneMatch, OWNER_SCOPED } from './caching.js'
import { negotiate, serialize } from './formats.js'
import type { ResolvedProtocolOptions } from './options.js'
import { headerOf, type RequestHead } from './request.js'
import { iso, operationUrl, publicError, toDetailedResource, toResource } from './resource.js'
import {
  resolveAsyncRoute,
  type AsyncRouteOptions,
  type AsyncRouteSchema,
  type ResolvedAsyncRoute,
  type SchemaTypeProvider,
} from './route.js'
import { bodyConditions, queryConditions } from './filters.js'
import { validateStandard } from './schema.js'
import { callerKey, preferences, Realtime } from './realtime.js'
import { invalidQuery, singleParameter } from './query.js'
import { Submitter, type SubmitParts } from './submit.js'
import type { ApiDescription, ResolvedMount } from './mounts.js'
import { OPERATION_ROUTES } from './routes.js'

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
}

const JSON_TYPE = 'application/json; charset=utf-8'
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
  readonly #realtime: Realtime
  /** The request headers every answer depends on besides its URL: the caller's credentials. */
  readonly #vary: readonly string[]

  constructor(engine: Engine, options: ResolvedProtocolOptions) {
    this.engine = engine
    this.options = options
    this.#vary = credentialHeaders(options.authenticate)
    this.#submitter = new Submitter(engine, options)
    this.#realtime = new Realtime(options, engine.pollMs, this.#groupNames)
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
   * Answers every open stream, wait and held request at once (streams end after a comment, the
   * others get `503 shutting-down`) and refuses new ones: call it when the server starts closing.
   */
  shutdown(): void {
    this.#realtime.shutdown()
  }

  /** Checks an async route and defines its operation on the engine; the adapter then serves it. */
  addRoute<S extends AsyncRouteSchema, Result, Args, TP extends SchemaTypeProvider>(
    route: AsyncRouteOptions<S, Result, Args, TP>,
  ): ResolvedAsyncRoute {
    const resolved = resolveAsyncRoute(route)
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
    if (!waitMs || !slot) return this.#acceptedAsPreferred(op, vary, prefer)
    const done = await this.#realtime.wait(access, op.id, waitMs, parts.signal, slot)
    if (parts.signal?.aborted) {
      if (route.hold?.cancelOnDisconnect && !isTerminal(done.state)) await access.cancel(op.id).catch(() => {})
      return this.#acceptedAsPreferred(done, vary, prefer)
    }
    if (!isTerminal(done.state)) {
      if (route.hold?.onTimeout === 'timeout') {
        throw new LongrunError('hold-timeout', `The operation is still '${done.state}'; poll it.`, {
          extra: { state: done.state, retryAfter: this.options.retryAfterSeconds },
          headers: { location: operationUrl(this.options.basePath, op.id), ...vary },
        })
      }
      return this.#acceptedAsPreferred(done, vary, prefer)
    }
    const answered: Record<string, string> = { ...vary, 'content-location': operationUrl(this.options.basePath, op.id) }
    if (route.hold === undefined) answered['preference-applied'] = `wait=${prefer.get('wait')}`
    return this.#outcome(done, headerOf(parts, 'accept'), answered)
  }

  #acceptedAsPreferred(op: Operation, headers: Record<string, string>, prefer: Map<string, string>): HttpReply {
    return this.accepted(
      op,
      prefer.has('respond-async') ? { ...headers, 'preference-applied': 'respond-async' } : headers,
    )
  }

  /**
   * 202 for a just-accepted (or re-queued) operation. `Operation-Location` (the same URL as
   * `Location`) makes Azure's pollers read the status from the body rather than from the status code.
   */
  accepted(op: Operation, headers: Record<string, string> = {}): HttpReply {
    const location = operationUrl(this.options.basePath, op.id)
    return {
      status: 202,
      headers: {
        'content-type': JSON_TYPE,
        location,
        'operation-location': location,
        'retry-after': String(this.options.retryAfterSeconds),
        ...headers,
      },
      body: toResource(op, this.options),
    }
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
    request: Pick<LiveRequest, 'headers'> | undefined,
    vary: { vary?: string },
  ): Promise<HttpReply> {
    const { op, history } = await access.details(id)
    const body = JSON.stringify(toDetailedResource(op, history, this.options))
    return this.#validated(
      { status: 200, headers: { ...this.#headers(op), ...vary }, body },
      request,
      lastChange(op, history),
    )
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

  async result(access: OperationAccess, id: string, request: Pick<LiveRequest, 'headers'>): Promise<HttpReply> {
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

  async error(access: OperationAccess, id: string, request: Pick<LiveRequest, 'headers'>): Promise<HttpReply> {
    const op = await access.get(id)
    if (op.state !== 'failed' || !op.error) {
      throw new LongrunError('no-error', `The operation is '${op.state}', not failed.`, { extra: { state: op.state } })
    }
    const body = {
      id: op.id,
      state: op.state,
      attempt: op.attempt,
      error: publicError(op.error, this.options.exposeStack),
    }
    return this.#validated(
      { status: 200, headers: { 'content-type': JSON_TYPE }, body: JSON.stringify(body) },
      request,
      op.completedAt,
    )
  }

  async cancel(access: OperationAccess, id: string): Promise<HttpReply> {
    return this.#resource(await access.cancel(id))
  }

  async retry(access: OperationAccess, id: string): Promise<HttpReply> {
    return this.accepted(await access.retry(id))
  }

  /** `POST {base}/{id}/start`: queues an operation its route created to start later (`start: 'manual'`). */
  async start(access: OperationAccess, id: string): Promise<HttpReply> {
    return this.accepted(await access.start(id))
  }

  /** Every webhook message of the operation (its callback's and app-wide endpoints'), with each attempt. */
  async deliveries(access: OperationAccess, id: string, request: Pick<LiveRequest, 'headers'>): Promise<HttpReply> {
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
    const body = JSON.stringify({ items })
    return this.#validated({ status: 200, headers: { 'content-type': JSON_TYPE }, body }, request)
  }

  /** Sends the operation's delivered and failed messages again. */
  async redeliver(access: OperationAccess, id: string): Promise<HttpReply> {
    const redelivered = await access.redeliver(id)
    return { status: 202, headers: { 'content-type': JSON_TYPE }, body: { redelivered } }
  }

  async remove(access: OperationAccess, id: string): Promise<HttpReply> {
    await access.delete(id)
    return { status: 204, headers: {} }
  }

  /**
   * `GET {base}`: a page of what the caller may read, newest first; `state` (a comma list) and
   * `name` as always, and any filter of docs/query.md in the query-string form, with `sort`.
   */
  async list(access: OperationAccess, request: Pick<LiveRequest, 'headers' | 'query'>): Promise<HttpReply> {
    const { query } = request
    const states = parseStates(query.state)
    const name = singleParameter(query.name, 'name')
    const where = queryConditions(query, LIST_PARAMETERS, this.#groupNames)
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
    const body = JSON.stringify(this.#pageBody(page, sort))
    return this.#validated({ status: 200, headers: { 'content-type': JSON_TYPE }, body }, request)
  }

  /**
   * `POST {base}/query`: the page of what the caller may read that meets every condition of the
   * body (Pode's form: `{ "<field>": { "op": "<operator>", "value": ... } }`); `limit`, `cursor`
   * and `sort` in the query string.
   */
  async query(access: OperationAccess, request: Pick<LiveRequest, 'query'> & { body: unknown }): Promise<HttpReply> {
    for (const parameter of Object.keys(request.query)) {
      if (!PAGE_PARAMETERS.includes(parameter)) {
        throw invalidQuery(
          parameter,
          'is not a parameter of the query (limit, cursor, sort): conditions go in the body',
        )
      }
    }
    const where = bodyConditions(request.body, this.#groupNames)
    const { limit, cursor, sort } = this.#pageOf(request.query)
    const page = await access.query({ where, sort, limit, ...(cursor !== undefined ? { cursor } : {}) })
    return { status: 200, headers: { 'content-type': JSON_TYPE }, body: JSON.stringify(this.#pageBody(page, sort)) }
  }

  #pageBody(page: Page, sort: QuerySort) {
    return {
      items: page.items.map((op) => toResource(op, this.options)),
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
    const filter = (body ?? {}) as { state?: unknown; name?: unknown; limit?: unknown }
    if (typeof filter !== 'object' || Array.isArray(filter)) throw invalidFilter('(body)', 'must be a JSON object')
    const states = parseStates(filter.state, invalidFilter)
    if (states?.some((state) => state !== 'failed' && state !== 'canceled')) {
      throw invalidFilter('state', 'must be failed or canceled')
    }
    if (filter.name !== undefined && typeof filter.name !== 'string') throw invalidFilter('name', 'must be a string')
    const limit = filter.limit ?? 1_000
    if (typeof limit !== 'number' || !Number.isInteger(limit) || limit < 1 || limit > 10_000) {
      throw invalidFilter('limit', 'must be an integer from 1 to 10000')
    }
    const ids = await access.retryAll({
      ...(states ? { states: states as ('failed' | 'canceled')[] } : {}),
      ...(filter.name !== undefined ? { name: filter.name } : {}),
      limit,
    })
    return { status: 200, headers: { 'content-type': JSON_TYPE }, body: { retried: ids.length, ids } }
  }

  /** `GET {base}/stats`: counts of what the caller may read; `state` and the filters of the list. */
  async stats(access: OperationAccess, request: Pick<LiveRequest, 'headers' | 'query'>): Promise<HttpReply> {
    const states = parseStates(request.query.state)
    const where = queryConditions(request.query, STATS_PARAMETERS, this.#groupNames)
    const body = JSON.stringify(await access.stats({ ...(states ? { states } : {}), where }))
    return this.#validated({ status: 200, headers: { 'content-type': JSON_TYPE }, body }, request)
  }

  /** `GET {base}/cleanup`: the cleanup service's status (docs/query.md); any caller may see it. */
  cleanupStatus(access: OperationAccess): HttpReply {
    const { lastRun, ...status } = access.cleanupStatus()
    const body = { ...status, lastRun: lastRun && runResource(lastRun) }
    return { status: 200, headers: { 'content-type': JSON_TYPE, 'cache-control': 'no-store' }, body }
  }

  /**
   * `POST {base}/cleanup`: runs the cleanup now and answers the run (while one is in progress in
   * this process, once it ends: that run). Admin role, or the `cleanup.allow` grant.
   */
  async runCleanup(access: OperationAccess): Promise<HttpReply> {
    const run = await access.runCleanup()
    return { status: 200, headers: { 'content-type': JSON_TYPE, 'cache-control': 'no-store' }, body: runResource(run) }
  }

  /**
   * An owner-scoped read with its validators, or `304` without a body when `If-None-Match` matches
   * (keeping `Retry-After`, so that a client polling cheaply still knows how often to ask).
   */
  #validated(
    reply: HttpReply & { body: string },
    request: Pick<LiveRequest, 'headers'> | undefined,
    lastModified?: number,
  ): HttpReply {
    const etag = entityTag(reply.headers['content-type']!, reply.body)
    const headers: Record<string, string> = {
      ...reply.headers,
      etag,
      ...(lastModified === undefined ? {} : { 'last-modified': httpDate(lastModified) }),
      'cache-control': OWNER_SCOPED,
    }
    const vary = mergeVary(reply.headers.vary, ...this.#vary)
    if (vary !== '') headers.vary = vary
    if (!noneMatch(request?.headers['if-none-match'], etag)) return { ...reply, headers }
    const { 'content-type': _type, ...kept } = headers
    return { status: 304, headers: kept }
  }

  #resource(op: Operation): HttpReply {
    return { status: 200, headers: this.#headers(op), body: toResource(op, this.options) }
  }

  #headers(op: Operation): Record<string, string> {
    const headers: Record<string, string> = { 'content-type': JSON_TYPE }
    if (!isTerminal(op.state)) headers['retry-after'] = String(this.options.retryAfterSeconds)
    return headers
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
