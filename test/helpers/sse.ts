import { createParser, type EventSourceMessage } from 'eventsource-parser'

export interface RawStream {
  status: number
  headers: Headers
  events: EventSourceMessage[]
  comments: string[]
  retry: number | undefined
  /** Resolves when the server ends the stream. */
  ended: Promise<void>
  abort(): void
}

/** Opens an event stream with fetch and parses it with eventsource-parser, keeping everything. */
export async function openRaw(url: string, headers: Record<string, string> = {}): Promise<RawStream> {
  const controller = new AbortController()
  const response = await fetch(url, { headers: { accept: 'text/event-stream', ...headers }, signal: controller.signal })
  const stream: RawStream = {
    status: response.status,
    headers: response.headers,
    events: [],
    comments: [],
    retry: undefined,
    ended: Promise.resolve(),
    abort: () => controller.abort(),
  }
  if (response.status !== 200) {
    stream.events.push({ event: 'body', data: await response.text(), id: undefined })
    return stream
  }
  const parser = createParser({
    onEvent: (event) => stream.events.push(event),
    onComment: (comment) => stream.comments.push(comment),
    onRetry: (retry) => (stream.retry = retry),
  })
  stream.ended = (async () => {
    const decoder = new TextDecoder()
    try {
      for await (const chunk of response.body!) parser.feed(decoder.decode(chunk, { stream: true }))
    } catch (err) {
      if (!controller.signal.aborted) throw err
    }
  })()
  return stream
}
