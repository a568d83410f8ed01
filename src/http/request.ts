/**
 * What every adapter knows of a request before reading its body, in Node's shape: header names in
 * lower case, a header sent several times as an array or joined with `, `. A Fastify request, an
 * Express request and Node's `IncomingMessage` (with `ip` added) all fit as they are.
 */
export interface RequestHead {
  method: string
  /** Path and query string, as sent. */
  url: string
  headers: Record<string, string | string[] | undefined>
  /** The client's address. */
  ip: string
}

/** The first value of a header. */
export function headerOf(head: Pick<RequestHead, 'headers'>, name: string): string | undefined {
  const value = head.headers[name]
  return Array.isArray(value) ? value[0] : value
}
