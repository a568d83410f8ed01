import type { OperationAccess } from '../core/access.js'
import type { OperationResource } from '../http/resource.js'
import type { AsyncRouteOptions, AsyncRouteSchema } from '../http/route.js'
import type { EventView } from '../http/realtime.js'
import { errorFrom, LongrunClientError, retryAfterOf, WaitTimeoutError } from './errors.js'
import { readStream, sleep } from './sse.js'

export {
  ConflictError,
  ForbiddenError,
  LongrunClientError,
  NotFoundError,
  OperationCanceledError,
  OperationFailedError,
  RateLimitedError,
  UnauthorizedError,
  WaitTimeoutError,
  type OperationErrorInfo,
} from './errors.js'
export type { OperationResource }

/** Whatever `new Headers()` takes (named here: Node's types have no DOM `HeadersInit`). */
export type HeadersInit = NonNullable<ConstructorParameters<typeof Headers>[0]>

/** How `op.wait()` may learn that an operation ended, cheapest first. */
export type Channel = 'wait' | 'events' | 'poll'

export interface ClientOptions {
  /** Where the API is, e.g. `https://api.example.com`; async routes and the operations API are under it. */
  baseUrl: string
  /** @default '/operations' */
  operationsPath?: string
  /** Credentials for every request, asked for each time (tokens expire). */
  headers?: () => HeadersInit | Promise<HeadersInit>
  fetch?: typeof fetch
  /** Retries of a submit that met a network error, a 5xx or a 429 (with the same idempotency key). */
  retry?: { attempts?: number; delayMs?: number }
  /** The channels `wait()` may use, in order of preference. @default ['wait', 'events', 'poll'] */
  channels?: Channel[]
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyRoute = AsyncRouteOptions<any, any, any>
/** The app's async routes: a map from URL to route, or a list of routes whose `url`s are literal types. */
export type Routes = Record<string, AnyRoute> | readonly AnyRoute[]
type RouteMap<R> = R extends readonly AnyRoute[] ? { [K in R[number] as K['url']]: K } : R
// What the route's handler gets as `op.input`: typed the same way, whatever the schema library.
type BodyOf<Route> = Route extends { handler(op: infer Op): unknown }
  ? Op extends { input: infer I }
    ? I
    : unknown
  : unknown
type ResultOf<Route> = Route extends { handler(...args: never[]): infer R } ? Awaited<R> : unknown

export interface SubmitOptions {
  /** Sent as `Idempotency-Key`; a random one when not given, so that retries never submit twice. */
  idempotencyKey?: string
  signal?: AbortSignal
  headers?: HeadersInit
}

export interface WaitOptions<Result> {
  signal?: AbortSignal
  /** Milliseconds; then `WaitTimeoutError` (the operation goes on). */
  timeout?: number
  /** Called with each progress the operation reports; prefers the event stream. */
  onProgress?: (progress: OperationResource['progress'], operation: Operation<Result>) => void
}

/** The operation resource, with its result typed. */
export type Operation<Result = unknown> = Omit<OperationResource, 'result'> & { result?: Result }
/** One message of the event stream: the operation as read after the event, and the event. */
export type OperationEvent<Result = unknown> = Operation<Result> & { event: EventView }

export interface OperationHandle<Result = unknown> {
  readonly id: string
  /** The operation's absolute URL. */
  readonly url: string
  /** Resolves with the result once it succeeded; rejects with `OperationFailedError`, `OperationCanceledError`, `WaitTimeoutError`... */
  wait(options?: WaitOptions<Result>): Promise<Result>
  /** The event stream, resumed after a dropped connection; ends after the terminal event. */
  events(options?: { signal?: AbortSignal; lastEventId?: string }): AsyncGenerator<OperationEvent<Result>>
  get(options?: { signal?: AbortSignal }): Promise<Operation<Result>>
  result(options?: { signal?: AbortSignal }): Promise<Result>
  cancel(): Promise<Operation<Result>>
  retry(): Promise<Operation<Result>>
  delete(): Promise<void>
}

export interface ListQuery {
  state?: OperationResource['state'] | OperationResource['state'][]
  name?: string
  limit?: number
  cursor?: string
  /** @default 'newest' */
  sort?: 'newest' | 'oldest'
}

/** An operator of a query (docs/query.md), in either case. */
export type QueryOperator = 'eq' | 'ne' | 'gt' | 'lt' | 'ge' | 'le' | 'like' | 'notlike'

/**
 * Conditions a query's operations all meet, by field: `{ state: { op: 'eq', value: 'failed' },
 * 'input.customer': { op: 'like', value: 'acme*' } }` (docs/query.md lists the fields).
 */
export type Where = Record<
  string,
  { op: QueryOperator | Uppercase<QueryOperator>; value: string | number | boolean | null }
>

export interface ListPage {
  items: Operation[]
  nextCursor: string | null
}

export type Stats = Awaited<ReturnType<OperationAccess['stats']>>

export interface Client<R extends Routes> {
  submit<U extends keyof RouteMap<R> & string>(
    url: U,
    body: BodyOf<RouteMap<R>[U]>,
    options?: SubmitOptions,
  ): Promise<OperationHandle<ResultOf<RouteMap<R>[U]>>>
  /** Re-attaches to an existing operation. */
  operation<Result = unknown>(id: string): OperationHandle<Result>
  list(query?: ListQuery, options?: { signal?: AbortSignal }): Promise<ListPage>
  /** The operations meeting every condition of `where` that the caller may read, a page at a time. */
  query(
    where: Where,
    page?: Pick<ListQuery, 'limit' | 'cursor' | 'sort'>,
    options?: { signal?: AbortSignal },
  ): Promise<ListPage>
  stats(options?: { signal?: AbortSignal }): Promise<Stats>
}

/** A client of untyped routes: any URL and body, `unknown` results. */
type Untyped = Record<string, AsyncRouteOptions<AsyncRouteSchema, unknown, unknown>>

const UNAVAILABLE = new Set([404, 405, 501])

/** Whether a channel's refusal means "not offered here" (try the next one), not "no such operation". */
const unavailable = (err: unknown) =>
  err instanceof LongrunClientError &&
  ((UNAVAILABLE.has(err.status) && err.code !== 'operation-not-found') || err.code === 'too-many-streams')

export function createClient<R extends Routes = Untyped>(options: ClientOptions): Client<R> {
  const doFetch = options.fetch ?? ((input, init) => fetch(input, init))
  const base = options.baseUrl.replace(/\/$/, '')
  const operations = base + (options.operationsPath ?? '/operations')
  const attempts = options.retry?.attempts ?? 3
  const delayMs = options.retry?.delayMs ?? 500
  const channels = options.channels ?? ['wait', 'events', 'poll']

  async function headersFor(extra?: HeadersInit): Promise<Headers> {
    const headers = new Headers(await options.headers?.())
    for (const [name, value] of new Headers(extra)) headers.set(name, value)
    return headers
  }

  async function send(
    method: string,
    url: string,
    init: { signal?: AbortSignal | undefined; headers?: HeadersInit } = {},
  ) {
    const response = await doFetch(url, {
      method,
      headers: await headersFor(init.headers),
      signal: init.signal ?? null,
    })
    if (!response.ok && response.status !== 304) throw await errorFrom(response)
    return response
  }
  const json = async <T>(method: string, url: string, signal?: AbortSignal): Promise<T> =>
    (await (await send(method, url, { signal })).json()) as T

  function handle<Result>(url: string): OperationHandle<Result> {
    const id = decodeURIComponent(new URL(url).pathname.split('/').pop()!)
    const get = (o: { signal?: AbortSignal } = {}) => json<Operation<Result>>('GET', url, o.signal)
    const result = (o: { signal?: AbortSignal } = {}) => json<Result>('GET', `${url}/result`, o.signal)
    const events = (o: { signal?: AbortSignal; lastEventId?: string } = {}) =>
      (async function* () {
        for await (const message of readStream({
          fetch: doFetch,
          url: `${url}/events`,
          headers: () => headersFor(),
          signal: o.signal,
          lastEventId: o.lastEventId,
          attempts,
        }))
          yield JSON.parse(message.data) as OperationEvent<Result>
      })()

    // Each channel resolves with the operation once it is done; `signal` aborts at the deadline too.
    const follow: Record<
      Channel,
      (w: WaitOptions<Result>, signal: AbortSignal, deadline: number) => Promise<Operation<Result>>
    > = {
      async wait(_w, signal, deadline) {
        for (;;) {
          const seconds = Math.max(0, Math.min(30_000, deadline - Date.now())) / 1_000
          const op = await json<Operation<Result>>('GET', `${url}/wait?timeout=${seconds.toFixed(3)}`, signal)
          if (op.done) return op
          if (Date.now() >= deadline) throw signal.reason
        }
      },
      async events(w, signal) {
        for await (const op of events({ signal })) {
          if (op.event.type === 'progress') w.onProgress?.(op.progress, op)
          if (op.done) return op
        }
        throw new LongrunClientError(0, undefined, 'The event stream ended before the operation did.')
      },
      async poll(w, signal, deadline) {
        let etag: string | null = null
        let op: Operation<Result> | undefined
        for (;;) {
          const response = await send('GET', url, { signal, headers: etag ? { 'if-none-match': etag } : {} })
          if (response.status !== 304) {
            const previous = op
            op = (await response.json()) as Operation<Result>
            etag = response.headers.get('etag')
            if (op.done) return op
            if (JSON.stringify(previous?.progress) !== JSON.stringify(op.progress)) w.onProgress?.(op.progress, op)
          }
          const pause = (retryAfterOf(response) ?? 1) * 1_000
          await sleep(Math.max(0, Math.min(pause, deadline - Date.now())), signal)
        }
      },
    }

    async function wait(w: WaitOptions<Result> = {}): Promise<Result> {
      const timeout = w.timeout ?? Infinity
      const deadline = Date.now() + timeout
      const controller = new AbortController()
      const abort = () => controller.abort(w.signal!.reason)
      if (w.signal?.aborted) abort()
      w.signal?.addEventListener('abort', abort, { once: true })
      const timer = Number.isFinite(timeout)
        ? setTimeout(() => controller.abort(new WaitTimeoutError(timeout)), timeout)
        : undefined
      // The stream carries progress, which a wait does not.
      const order = w.onProgress
        ? [...channels.filter((c) => c === 'events'), ...channels.filter((c) => c !== 'events')]
        : channels
      try {
        for (const [i, channel] of order.entries()) {
          try {
            await follow[channel](w, controller.signal, deadline)
            return await result({ signal: controller.signal })
          } catch (err) {
            if (i === order.length - 1 || !unavailable(err)) throw err
          }
        }
        throw new LongrunClientError(0, undefined, 'No wait channel is enabled.')
      } catch (err) {
        throw controller.signal.aborted ? controller.signal.reason : err
      } finally {
        clearTimeout(timer)
        w.signal?.removeEventListener('abort', abort)
      }
    }

    return {
      id,
      url,
      wait,
      events,
      get,
      result,
      cancel: () => json('POST', `${url}/cancel`),
      retry: () => json('POST', `${url}/retry`),
      delete: async () => void (await send('DELETE', url)),
    }
  }

  return {
    async submit(path, body, submitOptions = {}) {
      const headers = await headersFor(submitOptions.headers)
      headers.set('content-type', 'application/json')
      headers.set('idempotency-key', submitOptions.idempotencyKey ?? crypto.randomUUID())
      const init = { method: 'POST', headers, body: JSON.stringify(body), signal: submitOptions.signal ?? null }
      for (let attempt = 1; ; attempt++) {
        let response: Response | undefined
        try {
          response = await doFetch(base + path, init)
        } catch (err) {
          // A network error may come after the server stored the operation: resend, under the same key.
          if (submitOptions.signal?.aborted || !(err instanceof TypeError) || attempt >= attempts) throw err
        }
        if (response) {
          const location = response.headers.get('location') ?? response.headers.get('content-location')
          if (response.ok && location) return handle(new URL(location, base + '/').href)
          const retryable = response.status >= 500 || (response.status === 429 && response.headers.has('retry-after'))
          if (!retryable || attempt >= attempts) throw await errorFrom(response)
          await response.body?.cancel()
        }
        const after = response && retryAfterOf(response)
        await sleep(after !== undefined ? after * 1_000 : delayMs * 2 ** (attempt - 1), submitOptions.signal)
      }
    },
    operation: (id) => handle(`${operations}/${encodeURIComponent(id)}`),
    list: (query = {}, o = {}) => json('GET', operations + search(query), o.signal),
    async query(where, page = {}, o = {}) {
      const headers = await headersFor()
      headers.set('content-type', 'application/json')
      const response = await doFetch(`${operations}/query${search(page)}`, {
        method: 'POST',
        headers,
        body: JSON.stringify(where),
        signal: o.signal ?? null,
      })
      if (!response.ok) throw await errorFrom(response)
      return (await response.json()) as ListPage
    },
    stats: (o = {}) => json('GET', `${operations}/stats`, o.signal),
  }
}

/** `?name=value&...` of the members that are set, or nothing. */
function search(query: object): string {
  const params = new URLSearchParams()
  for (const [name, value] of Object.entries(query as Record<string, unknown>))
    if (value !== undefined) params.set(name, String(value))
  return params.size ? `?${params}` : ''
}
