import { mkdtempSync, rmSync } from 'node:fs'
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { expect } from 'vitest'
import { until } from './until.js'

/** A parsed JSON body: tests look into it freely. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Json = any

export const PROBLEM_PREFIX = 'urn:longrun:problem:'
export const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/
export const POSITIVE_INTEGER = /^[1-9]\d*$/

/** A fresh temporary folder, removed by the returned function. */
export function tempDir(prefix = 'longrun-http-'): { path: string; remove: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix))
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) }
}

/** Promises the test resolves by key: handlers wait on them, tests open them. */
export class Gates {
  readonly #gates = new Map<string, { promise: Promise<void>; open: () => void }>()
  /** Keys whose handler has begun waiting, with how many times. */
  readonly started = new Map<string, number>()

  #gate(key: string) {
    let gate = this.#gates.get(key)
    if (!gate) {
      let open!: () => void
      const promise = new Promise<void>((resolve) => (open = resolve))
      gate = { promise, open }
      this.#gates.set(key, gate)
    }
    return gate
  }

  /** Resolves once `open(key)` is called; rejects with the signal's reason when it aborts. */
  wait(key: string, signal: AbortSignal): Promise<void> {
    this.started.set(key, (this.started.get(key) ?? 0) + 1)
    const gate = this.#gate(key)
    return new Promise<void>((resolve, reject) => {
      if (signal.aborted) return reject(signal.reason)
      signal.addEventListener('abort', () => reject(signal.reason), { once: true })
      gate.promise.then(resolve, reject)
    })
  }

  /** Waits forever (whatever the signal says) until `open(key)`. */
  waitIgnoringSignal(key: string): Promise<void> {
    this.started.set(key, (this.started.get(key) ?? 0) + 1)
    return this.#gate(key).promise
  }

  open(key: string): void {
    this.#gate(key).open()
  }

  openAll(): void {
    for (const gate of this.#gates.values()) gate.open()
  }
}

export interface HttpResponse {
  status: number
  headers: Headers
  text: string
  /** The body parsed as JSON, or `undefined` when it is not JSON. */
  body: Json
}

export interface RequestOptions {
  /** Sent as JSON unless `raw` is given. */
  json?: unknown
  raw?: string | Buffer
  headers?: Record<string, string>
}

/** fetch against a listening server; every answer is checked not to be a 5xx. */
export class Client {
  readonly responses: { method: string; path: string; status: number }[] = []

  constructor(readonly base: string) {}

  async request(method: string, path: string, options: RequestOptions = {}): Promise<HttpResponse> {
    const headers: Record<string, string> = { ...options.headers }
    let body: string | Buffer | undefined
    if (options.raw !== undefined) body = options.raw
    else if (options.json !== undefined) {
      body = JSON.stringify(options.json)
      headers['content-type'] ??= 'application/json'
    }
    const response = await fetch(this.base + path, { method, headers, ...(body === undefined ? {} : { body }) })
    const text = await response.text()
    let parsed: unknown
    try {
      parsed = text === '' ? undefined : JSON.parse(text)
    } catch {
      parsed = undefined
    }
    this.responses.push({ method, path, status: response.status })
    expect(response.status, `${method} ${path} answered ${response.status}: ${text.slice(0, 500)}`).toBeLessThan(500)
    return { status: response.status, headers: response.headers, text, body: parsed }
  }

  get(path: string, headers?: Record<string, string>) {
    return this.request('GET', path, headers ? { headers } : {})
  }

  post(path: string, json?: unknown, headers?: Record<string, string>) {
    return this.request('POST', path, { ...(json === undefined ? {} : { json }), ...(headers ? { headers } : {}) })
  }

  delete(path: string) {
    return this.request('DELETE', path)
  }

  /** Polls an operation until `predicate` holds for its resource, under `basePath`. */
  async waitFor(id: string, predicate: (op: Json) => boolean, what = 'state', basePath = '/operations'): Promise<Json> {
    return until(
      async () => {
        const res = await this.get(`${basePath}/${id}`)
        return res.status === 200 && predicate(res.body) ? res.body : undefined
      },
      20_000,
      { what: `${id} ${what}` },
    )
  }

  waitForState(id: string, state: string): Promise<Json> {
    return this.waitFor(id, (op) => op.state === state, `state ${state}`)
  }

  async stats(): Promise<Json> {
    const res = await this.get('/operations/stats')
    expect(res.status).toBe(200)
    return res.body
  }
}

/** Listens on an ephemeral port of the loopback interface; returns the base URL. */
export async function listen(app: FastifyInstance): Promise<string> {
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  expect(address).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
  expect(address).not.toMatch(/:3000$/)
  return address
}

/** Checks an RFC 9457 answer with a stable type; returns its parsed body. */
export function expectProblem(res: HttpResponse, status: number, code: string): Json {
  expect(res.status, res.text).toBe(status)
  expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json(;|$)/)
  expect(res.body).toMatchObject({ type: PROBLEM_PREFIX + code, code, status })
  expect(typeof res.body.title).toBe('string')
  return res.body
}

export function expectJson(res: HttpResponse, status: number): Json {
  expect(res.status, res.text).toBe(status)
  expect(res.headers.get('content-type')).toMatch(/^application\/json(;|$)/)
  return res.body
}

export interface RawResponse {
  status: number
  headers: IncomingHttpHeaders
  body: string
}

/** One request over a socket with node:http, which sends any method and header as given (fetch refuses some). */
export function rawRequest(
  base: string,
  method: string,
  path: string,
  headers: Record<string, string> = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(new URL(path, base), { method, headers, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => (body += chunk))
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

/** A comma-separated header's names, sorted: their order carries no meaning. */
export function sortedList(value: string | string[] | undefined): string {
  return [value ?? []]
    .flat()
    .flatMap((v) => v.split(','))
    .map((name) => name.trim())
    .filter(Boolean)
    .sort()
    .join(', ')
}

/** A problem's text without its `instance`, after checking that `instance` is the request's path. */
export function withoutInstance(problem: Json, path: string): string {
  const { instance, ...rest } = problem as { instance?: string }
  expect(instance).toBe(path)
  return JSON.stringify(rest)
}
