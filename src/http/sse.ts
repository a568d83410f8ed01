import { Readable } from 'node:stream'

/** One server-sent event (WHATWG HTML, "Server-sent events"). */
export interface SseMessage {
  id?: string
  event?: string
  /** Sent as JSON, which has no raw line breaks: always one `data:` line. */
  data: unknown
}

export interface SseOptions {
  /** A comment line this often keeps proxies and clients from closing an idle stream. */
  heartbeatMs: number
  /** The `retry:` hint: how long a client waits before it reconnects. */
  retryMs: number
  /** A consumer that has not taken what was sent for this long is cut off; it resumes from its last id. */
  stallMs: number
  /** Aborted when the stream ends, for whatever reason: ends what feeds it. */
  controller: AbortController
  /** Aborts when the client has gone away. */
  disconnected?: AbortSignal | undefined
  /** Sent as a comment when `shutdown` aborts, before the stream ends. */
  shutdown: AbortSignal
}

export const SSE_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache, no-transform',
  // Reverse proxies such as nginx would otherwise buffer the stream.
  'x-accel-buffering': 'no',
}

export function formatSse(message: SseMessage): string {
  const id = message.id === undefined ? '' : `id: ${message.id}\n`
  const event = message.event === undefined ? '' : `event: ${message.event}\n`
  return `${id}${event}data: ${JSON.stringify(message.data)}\n\n`
}

const HEARTBEAT = Symbol('heartbeat')

/**
 * The text of an event stream, taken from `messages` only as fast as the consumer reads: a slow
 * consumer holds back the reads of the log, never a growing buffer. Between messages, heartbeats.
 */
export function sseStream(messages: AsyncIterable<SseMessage>, options: SseOptions): Readable {
  let waitingSince: number | undefined
  const stream = Readable.from(
    frames(messages, options, (since) => (waitingSince = since)),
    { objectMode: false },
  )
  // Abort first: a destroyed stream closes only once its source has returned, which is waiting for the log.
  const stop = () => {
    options.controller.abort()
    stream.destroy()
  }
  options.disconnected?.addEventListener('abort', stop, { once: true })
  const watchdog = setInterval(
    () => {
      if (waitingSince !== undefined && Date.now() - waitingSince > options.stallMs) stop()
    },
    Math.max(10, Math.min(options.stallMs, 1_000)),
  )
  watchdog.unref()
  stream.once('close', () => {
    clearInterval(watchdog)
    options.disconnected?.removeEventListener('abort', stop)
    options.controller.abort()
  })
  return stream
}

async function* frames(
  messages: AsyncIterable<SseMessage>,
  options: SseOptions,
  consumerWaiting: (since: number | undefined) => void,
): AsyncGenerator<string> {
  const source = messages[Symbol.asyncIterator]()
  const send = async function* (text: string) {
    consumerWaiting(Date.now())
    yield text
    consumerWaiting(undefined)
  }
  try {
    yield* send(`retry: ${options.retryMs}\n\n`)
    let next = source.next()
    for (;;) {
      let timer: NodeJS.Timeout | undefined
      const beat = new Promise<typeof HEARTBEAT>(
        (resolve) => (timer = setTimeout(resolve, options.heartbeatMs, HEARTBEAT)),
      )
      const first = await Promise.race([next, beat])
      clearTimeout(timer)
      if (first === HEARTBEAT) {
        yield* send(': heartbeat\n\n')
        continue
      }
      if (first.done) break
      yield* send(formatSse(first.value))
      next = source.next()
    }
    if (options.shutdown.aborted) yield* send(': server shutting down\n\n')
  } finally {
    options.controller.abort()
    await source.return?.()
  }
}
