import { startServer, type ChildServer, type StartOptions } from './child-server.js'
import type { Json } from './http.js'

export type { Json } from './http.js'

/** A seed example (examples/seeds/<name>) as a child process on a free port and a SQLite file. */
export const startSeed = (name: string, options: Omit<StartOptions, 'example'>): Promise<ChildServer> =>
  startServer({ ...options, example: name })

/** A JSON request; `body` is sent as given when a string (the seed's bodies verbatim). */
export async function call(
  base: string,
  method: string,
  path: string,
  options: { body?: unknown; headers?: Record<string, string>; signal?: AbortSignal } = {},
): Promise<{ status: number; headers: Headers; text: string; json: Json }> {
  const headers: Record<string, string> = { ...options.headers }
  let body: string | undefined
  if (options.body !== undefined) {
    body = typeof options.body === 'string' ? options.body : JSON.stringify(options.body)
    headers['content-type'] ??= 'application/json'
  }
  const res = await fetch(base + path, {
    method,
    headers,
    ...(body === undefined ? {} : { body }),
    ...(options.signal ? { signal: options.signal } : {}),
  })
  const text = await res.text()
  let json: Json
  try {
    json = text === '' ? undefined : JSON.parse(text)
  } catch {
    json = undefined
  }
  return { status: res.status, headers: res.headers, text, json }
}
