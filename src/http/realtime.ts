import type { OperationAccess } from '../core/access.js'
import { LongrunError } from '../core/errors.js'
import { followFeed, followOperation, waitForOperation } from '../core/follow.js'
import type { HistoryEntry, Operation } from '../core/types.js'
import type { ResolvedProtocolOptions } from './options.js'
import { invalidQuery, singleParameter } from './query.js'
import { headerOf } from './request.js'
import { operationUrl, publicError, toResource, type OperationResource } from './resource.js'
import { SSE_HEADERS, sseStream, type SseMessage } from './sse.js'

/** Who holds stream slots: the principal, or the address of an anonymous caller. */
export const callerKey = (access: OperationAccess, ip: string) => (access.owner === null ? `ip:${ip}` : access.owner)

/** An event of the log as streams show it, under `event` in each message's data. */
export interface EventView {
  seq: number
  type: HistoryEntry['event']
  at: string
  attempt: number
  progress?: HistoryEntry['progress']
  error?: HistoryEntry['error']
}

/** What one event of a stream carries: the operation as read after the event, and the event. */
export type StreamData = OperationResource & { event: EventView }

export interface StreamRequest {
  access: OperationAccess
  /** Holds the caller's slot: see `callerKey`. */
  caller: string
  headers: Record<string, string | string[] | undefined>
  query: Record<string, unknown>
  /** Aborts when the client goes away: the stream ends and frees its slot. */
  signal?: AbortSignal
  /** A `HEAD` request: the stream's headers, without opening it. */
  head?: boolean
}

/**
 * The push side of the protocol: event streams, waits and held requests, all read from the
 * operation's durable event log (`docs/realtime.md`). Each counts against its caller's slots while
 * open; `shutdown()` ends every one at once so that closing the server never waits for them.
 */
export class Realtime {
  readonly #options: ResolvedProtocolOptions
  readonly #pollMs: number
  readonly #groups: (group: string) => string[]
  readonly #shutdown = new AbortController()
  /** Aborted (then replaced) by `timeoutHeld`: every held request waiting then times out now. */
  #timeoutHeld = new AbortController()
  readonly #slots = new Map<string, number>()

  constructor(options: ResolvedProtocolOptions, pollMs: number, groups: (group: string) => string[]) {
    this.#options = options
    this.#pollMs = pollMs
    this.#groups = groups
  }

  get closing(): boolean {
    return this.#shutdown.signal.aborted
  }

  /** The signal that times out the held requests waiting now (`timeoutHeld`). */
  get heldTimeout(): AbortSignal {
    return this.#timeoutHeld.signal
  }

  /** Answers every held request waiting now as its hold timeout would (qbm-http's `force_timeout_all_requests`). */
  timeoutHeld(): void {
    const now = this.#timeoutHeld
    this.#timeoutHeld = new AbortController()
    now.abort()
  }

  shutdown(): void {
    this.#shutdown.abort()
  }

  /** `GET {base}/{id}/events`: the operation's events after `Last-Event-ID`, or from its latest one. */
  async operationStream(request: StreamRequest, id: string) {
    const after = lastEventId(request, /^(0|[1-9][0-9]{0,15})$/)
    await request.access.get(id)
    const options = { ...this.#options, pollMs: this.#pollMs }
    return this.#stream(request, async function* (signal) {
      const follow = followOperation(request.access, id, after === undefined ? undefined : Number(after), {
        signal,
        pollMs: options.pollMs,
      })
      for await (const { entries, op } of follow) {
        // One resource for the batch: every event of it is sent with the operation as read after it.
        const resource = toResource(op, options)
        for (const entry of entries) yield message(String(entry.seq), entry, resource, options)
      }
    })
  }

  /**
   * `GET {base}/events`: the events of every operation of the group `?group=` the caller may read,
   * or of all of the caller's own; resumable from `Last-Event-ID`, a position in the feed.
   */
  async feedStream(request: StreamRequest) {
    const group = singleParameter(request.query.group, 'group')
    const names = group === undefined ? undefined : this.#groups(group)
    if (names?.length === 0) throw invalidQuery('group', `names no route's sseGroup`)
    const after = lastEventId(request, /^[0-9-]{1,48}$/)
    const options = { ...this.#options, pollMs: this.#pollMs }
    const { access } = request
    return this.#stream(request, async function* (signal) {
      const query = { ...(after === undefined ? {} : { after }), ...(names ? { names } : {}) }
      for await (const page of followFeed(access, query, { signal, pollMs: options.pollMs })) {
        // Each operation of the page read once; `null`: deleted since.
        const resources = new Map<string, OperationResource | null>()
        for (const [i, entry] of page.entries.entries()) {
          let resource = resources.get(entry.operationId)
          if (resource === undefined) {
            // A deleted operation's events are gone with it, and so is its message. Any other
            // failure ends the stream, and the client resumes from its last id: no event is skipped.
            const op = await access.get(entry.operationId).catch((err: unknown) => {
              if (err instanceof LongrunError && err.code === 'operation-not-found') return undefined
              throw err
            })
            resource = op ? toResource(op, options) : null
            resources.set(entry.operationId, resource)
          }
          if (resource === null) continue
          // Each message's id resumes right after it; the last one's also skips what the filters left out.
          const id = i === page.entries.length - 1 ? page.cursor : entry.cursor
          yield message(id, entry, resource, options)
        }
      }
    })
  }

  /**
   * Waits up to `timeoutMs` for the operation to finish, holding the caller's `slot` (see `slot`),
   * which it gives back. Throws `shutting-down` when the server closes meanwhile.
   */
  async wait(
    access: OperationAccess,
    id: string,
    timeoutMs: number,
    signal: AbortSignal | undefined,
    release: () => void,
  ): Promise<Operation> {
    const stop = eitherSignal(this.#shutdown.signal, signal)
    try {
      const op = await waitForOperation(access, id, timeoutMs, { signal: stop.signal, pollMs: this.#pollMs })
      if (this.closing) throw shuttingDown(this.#options, id)
      return op
    } finally {
      stop.dispose()
      release()
    }
  }

  /**
   * The seconds a client asked to wait, capped at `maxWait`; `undefined` when it asked for none. A
   * query `parameter` that is not a number is refused; a preference (none) that is not is ignored.
   */
  waitMs(seconds: string | undefined, parameter?: string): number | undefined {
    if (seconds === undefined) return undefined
    if (!/^\d{1,9}(\.\d{1,3})?$/.test(seconds)) {
      if (parameter === undefined) return undefined
      throw invalidQuery(parameter, 'must be a number of seconds')
    }
    return Math.min(Math.round(Number(seconds) * 1_000), this.#options.maxWaitMs)
  }

  #stream(request: StreamRequest, messages: (signal: AbortSignal) => AsyncIterable<SseMessage>) {
    if (request.head) return { status: 200, headers: { ...SSE_HEADERS } }
    const release = this.slot(request.caller, false)!
    const controller = new AbortController()
    const stop = eitherSignal(this.#shutdown.signal, controller.signal)
    const body = sseStream(messages(stop.signal), {
      heartbeatMs: this.#options.streamHeartbeatMs,
      retryMs: this.#options.retryAfterSeconds * 1_000,
      stallMs: this.#options.slowConsumerTimeoutMs,
      controller,
      disconnected: request.signal,
      shutdown: this.#shutdown.signal,
    })
    body.once('close', () => {
      stop.dispose()
      release()
    })
    return { status: 200, headers: { ...SSE_HEADERS }, body }
  }

  /**
   * One of the caller's slots for a stream or wait, as the function that gives it back. None free:
   * 429 `too-many-streams` (503 `shutting-down` while closing), or `undefined` when `optional`.
   */
  slot(caller: string, optional: boolean): (() => void) | undefined {
    if (this.closing) {
      if (optional) return undefined
      throw new LongrunError('shutting-down', 'The server is shutting down.', {
        extra: { retryAfter: this.#options.retryAfterSeconds },
      })
    }
    const open = this.#slots.get(caller) ?? 0
    if (open >= this.#options.maxStreamsPerCaller) {
      if (optional) return undefined
      throw new LongrunError('too-many-streams', `You already have ${open} streams and waits open; close one first.`, {
        extra: { retryAfter: this.#options.retryAfterSeconds },
      })
    }
    this.#slots.set(caller, open + 1)
    let released = false
    return () => {
      if (released) return
      released = true
      const left = (this.#slots.get(caller) ?? 1) - 1
      if (left === 0) this.#slots.delete(caller)
      else this.#slots.set(caller, left)
    }
  }
}

/**
 * A signal that aborts when either does, and `dispose` to stop listening to them: the server's
 * shutdown signal lives as long as the server, and must not collect a listener per stream.
 */
function eitherSignal(a: AbortSignal, b: AbortSignal | undefined): { signal: AbortSignal; dispose(): void } {
  const controller = new AbortController()
  const abort = () => controller.abort()
  if (a.aborted || b?.aborted) abort()
  a.addEventListener('abort', abort, { once: true })
  b?.addEventListener('abort', abort, { once: true })
  return {
    signal: controller.signal,
    dispose() {
      a.removeEventListener('abort', abort)
      b?.removeEventListener('abort', abort)
    },
  }
}

function message(
  id: string | undefined,
  entry: HistoryEntry,
  resource: OperationResource,
  options: ResolvedProtocolOptions,
): SseMessage {
  const event: EventView = {
    seq: entry.seq,
    type: entry.event,
    at: new Date(entry.at).toISOString(),
    attempt: entry.attempt,
  }
  if (entry.progress) event.progress = entry.progress
  if (entry.error) event.error = publicError(entry.error, options.exposeStack)
  const data: StreamData = { ...resource, event }
  return { ...(id === undefined ? {} : { id }), event: entry.event, data }
}

/** `Last-Event-ID`, or `?after=` for clients that cannot set headers; 400 unless it matches `shape`. */
function lastEventId(request: StreamRequest, shape: RegExp): string | undefined {
  const header = headerOf(request, 'last-event-id')
  const query = singleParameter(request.query.after, 'after')
  const value = header ?? query
  if (value === undefined || value === '') return undefined
  if (!shape.test(value)) {
    throw new LongrunError('invalid-headers', 'Last-Event-ID is not the id of an event of this stream.', {
      extra: { header: 'last-event-id' },
    })
  }
  return value
}

function shuttingDown(options: ResolvedProtocolOptions, id: string): LongrunError {
  return new LongrunError('shutting-down', 'The server is shutting down; poll the operation instead.', {
    extra: { retryAfter: options.retryAfterSeconds },
    headers: { location: operationUrl(options.basePath, id) },
  })
}

/** The preferences of an RFC 7240 `Prefer` header: names in lower case, `wait` as its text. */
export function preferences(head: { headers: Record<string, string | string[] | undefined> }): Map<string, string> {
  const found = new Map<string, string>()
  const value = head.headers.prefer
  for (const part of (Array.isArray(value) ? value.join(',') : (value ?? '')).split(',')) {
    // Parameters after ';' refine a preference; none of those longrun reads has any.
    const [token = '', ...rest] = part.split(';')[0]!.split('=')
    const name = token.trim().toLowerCase()
    if (name !== '' && !found.has(name))
      found.set(
        name,
        rest
          .join('=')
          .trim()
          .replace(/^"(.*)"$/, '$1'),
      )
  }
  return found
}
