import { createParser, type EventSourceMessage } from 'eventsource-parser'
import { errorFrom } from './errors.js'

const TERMINAL = new Set(['succeeded', 'failed', 'canceled'])

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason)
    const done = () => {
      signal?.removeEventListener('abort', abort)
      resolve()
    }
    const timer = setTimeout(done, ms)
    const abort = () => {
      clearTimeout(timer)
      reject(signal!.reason)
    }
    signal?.addEventListener('abort', abort, { once: true })
  })
}

export interface StreamRequest {
  fetch: typeof fetch
  url: string
  headers: () => Promise<Headers>
  signal?: AbortSignal | undefined
  /** Start after this event id; `'0'` replays the whole log. */
  lastEventId?: string | undefined
  /** Reconnections in a row that may fail before the stream gives up. */
  attempts: number
}

/**
 * The messages of an operation's event stream until its terminal event. A connection that drops
 * is reopened with `Last-Event-ID` (the server then sends every later event: no gap, no
 * duplicate), after the `retry:` delay the server asked for.
 */
export async function* readStream(request: StreamRequest): AsyncGenerator<EventSourceMessage> {
  let lastId = request.lastEventId
  let retryMs = 1_000
  let failures = 0
  for (;;) {
    const headers = await request.headers()
    headers.set('accept', 'text/event-stream')
    if (lastId !== undefined) headers.set('last-event-id', lastId)
    const queue: EventSourceMessage[] = []
    const parser = createParser({ onEvent: (event) => queue.push(event), onRetry: (ms) => (retryMs = ms) })
    let response: Response
    try {
      response = await request.fetch(request.url, { headers, signal: request.signal ?? null })
      if (!response.ok) throw await errorFrom(response)
      const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader()
      try {
        for (;;) {
          const { done, value } = await reader.read()
          if (done) break
          parser.feed(value)
          for (const event of queue.splice(0)) {
            failures = 0
            if (event.id !== undefined) lastId = event.id
            yield event
            if (event.event !== undefined && TERMINAL.has(event.event)) return
          }
        }
      } finally {
        // An early `return` by the consumer closes the connection rather than leave it open.
        await reader.cancel().catch(() => {})
      }
    } catch (err) {
      // Refusals (4xx, 5xx) and aborts are for the caller; only a broken connection is resumed.
      if (request.signal?.aborted || !(err instanceof TypeError) || ++failures > request.attempts) throw err
    }
    await sleep(retryMs, request.signal)
  }
}
