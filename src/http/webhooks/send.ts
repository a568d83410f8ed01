import { request as httpRequest, validateHeaderName, validateHeaderValue, type ClientRequest } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { createRequire } from 'node:module'
import { performance } from 'node:perf_hooks'
import { toMs, type Duration } from '../../core/duration.js'
import { invalidOption } from '../../core/errors.js'
import {
  BLOCKED_ADDRESS,
  checkTarget,
  guardedLookup,
  targetPolicy,
  urlHost,
  type ResolvedTargetPolicy,
  type Resolver,
  type TargetPolicy,
} from './address.js'
import type { SignatureHeaders } from './sign.js'

const VERSION = (createRequire(import.meta.url)('../../../package.json') as { version: string }).version

export interface SenderOptions {
  /** Where messages may go: see `TargetPolicy`. @default {} (public addresses only) */
  policy?: TargetPolicy | ResolvedTargetPolicy
  /** From the start of an attempt until connected: resolving the host and the TCP connect. @default '5s' */
  connectTimeout?: Duration
  /** From the start of an attempt until the answer is read (TLS handshake and all). @default '15s' */
  timeout?: Duration
  /** How much of an answer's body is read (and discarded) before the connection is closed. @default 65_536 (64 KiB) */
  maxResponseBytes?: number
  /** @default `longrun-webhooks/<version>` */
  userAgent?: string
  /** How host names are resolved; for tests. @default dns.lookup with `all: true` */
  resolve?: Resolver
}

export interface WebhookMessage {
  url: string | URL
  /** @default 'POST' */
  method?: 'POST' | 'PUT'
  /** The exact bytes sent (and signed). */
  body: string | Uint8Array
  /** @default 'application/json' */
  contentType?: string
  /** Sent as given; may not name the headers the sender sets (see `checkHeaders`). */
  headers?: Readonly<Record<string, string>>
  /** Standard Webhooks headers, from `Signer#sign` over the same `body`. */
  signature?: SignatureHeaders
}

/**
 * Why an attempt failed, when it did:
 * - `refused`: `checkTarget` refused the URL; no connection was tried (and none ever will be).
 * - `blocked`: the host resolved to a blocked address; no connection was made.
 * - `invalid-request`: a bad method or header; nothing was sent.
 * - `connect-timeout`, `timeout`: no connection, or no answer, in time.
 * - `network`: the host did not resolve, or the connection failed or was cut before an answer.
 * - `redirect`: a 3xx, which is not followed.
 * - `status`: any other answer that is not 2xx.
 */
export type SendFailure =
  'refused' | 'blocked' | 'invalid-request' | 'connect-timeout' | 'timeout' | 'network' | 'redirect' | 'status'

export interface SendResult {
  /** A 2xx answer. */
  ok: boolean
  /** The answer's status; none when there was no answer. */
  status?: number
  durationMs: number
  /** Why it failed, in words, for the attempt's record. */
  error?: string
  failure?: SendFailure
  /** The answer's `Retry-After`, as sent (`retrySchedule` honours it on 429 and 503). */
  retryAfter?: string
}

export type Send = (message: WebhookMessage) => Promise<SendResult>

const DEFAULTS = {
  connectTimeout: 5_000, // 5 s
  timeout: 15_000, // 15 s
  maxResponseBytes: 65_536, // 64 KiB
} as const

/** The headers the sender sets itself, which custom headers may not name. */
const RESERVED_HEADERS = new Set([
  'host',
  'content-type',
  'content-length',
  'transfer-encoding',
  'connection',
  'keep-alive',
  'upgrade',
  'expect',
  'te',
  'trailer',
  'user-agent',
  'webhook-id',
  'webhook-timestamp',
  'webhook-signature',
])

/**
 * Throws `invalid-option` if `headers` (custom headers of a route or endpoint) has a name the
 * sender sets itself (`host`, `content-type`, `content-length`, `user-agent`, `webhook-*`,
 * hop-by-hop headers) or a name or value HTTP does not allow.
 */
export function checkHeaders(headers: Readonly<Record<string, string>>, option = 'headers'): void {
  for (const [name, value] of Object.entries(headers)) {
    if (RESERVED_HEADERS.has(name.toLowerCase())) throw invalidOption(`${option}.${name}`, 'is set by the sender')
    try {
      validateHeaderName(name)
      validateHeaderValue(name, value)
    } catch {
      throw invalidOption(`${option}.${name}`, 'must be a valid HTTP header name and value')
    }
  }
}

/**
 * Makes a sender of single attempts: one request per call on a fresh connection, made only to a
 * target `checkTarget` accepts and only to addresses `guardedLookup` checked. Redirects are not
 * followed. It never rejects: every failure is a `SendResult` with `ok: false`.
 */
export function webhookSender(options: SenderOptions = {}): Send {
  const policy = targetPolicy(options.policy)
  const connectTimeoutMs = toMs('connectTimeout', options.connectTimeout ?? DEFAULTS.connectTimeout)
  const timeoutMs = toMs('timeout', options.timeout ?? DEFAULTS.timeout)
  if (connectTimeoutMs === 0) throw invalidOption('connectTimeout', 'must be more than 0')
  if (timeoutMs === 0) throw invalidOption('timeout', 'must be more than 0')
  const maxResponseBytes = options.maxResponseBytes ?? DEFAULTS.maxResponseBytes
  if (!Number.isInteger(maxResponseBytes) || maxResponseBytes < 0) {
    throw invalidOption('maxResponseBytes', 'must be a non-negative integer')
  }
  const userAgent = options.userAgent ?? `longrun-webhooks/${VERSION}`
  const lookup = guardedLookup(policy, options.resolve)

  return (message) => {
    const started = performance.now()
    const done = (result: Omit<SendResult, 'durationMs'>): SendResult => ({
      ...result,
      durationMs: Math.round(performance.now() - started),
    })

    const target = checkTarget(message.url, policy)
    if (!target.ok) return Promise.resolve(done({ ok: false, failure: 'refused', error: target.message }))
    const { url } = target
    const method = message.method ?? 'POST'
    const body = typeof message.body === 'string' ? Buffer.from(message.body) : Buffer.from(message.body)
    let headers: Record<string, string>
    try {
      if (method !== 'POST' && method !== 'PUT') throw new Error(`Method ${String(method)} is not POST or PUT.`)
      checkHeaders(message.headers ?? {})
      headers = {
        'content-type': message.contentType ?? 'application/json',
        ...message.headers,
        ...message.signature,
        'user-agent': userAgent,
        'content-length': String(body.length),
      }
    } catch (err) {
      return Promise.resolve(done({ ok: false, failure: 'invalid-request', error: (err as Error).message }))
    }

    return new Promise<SendResult>((resolve) => {
      let req: ClientRequest | undefined
      let settled = false
      const timers: NodeJS.Timeout[] = []
      const settle = (result: Omit<SendResult, 'durationMs'>) => {
        if (settled) return
        settled = true
        for (const timer of timers) clearTimeout(timer)
        // One connection per attempt: closing it also discards whatever of the body is left.
        req?.destroy()
        resolve(done(result))
      }
      let answer: { status: number; retryAfter?: string } | undefined
      const answered = () => {
        if (answer === undefined) return
        const { status, retryAfter } = answer
        const ok = status >= 200 && status < 300
        const failure: SendFailure | undefined = ok ? undefined : status >= 300 && status < 400 ? 'redirect' : 'status'
        settle({
          ok,
          status,
          ...(failure === 'redirect' && { error: `Answered ${status}; redirects are not followed.` }),
          ...(failure === 'status' && { error: `Answered ${status}.` }),
          ...(failure !== undefined && { failure }),
          ...(retryAfter !== undefined && { retryAfter }),
        })
      }
      const fail = (failure: SendFailure, error: string) => {
        // Once the status is in, the receiver has answered: what happens to the rest does not matter.
        if (answer !== undefined) answered()
        else settle({ ok: false, failure, error })
      }

      try {
        req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(
          {
            protocol: url.protocol,
            hostname: urlHost(url),
            port: url.port === '' ? undefined : Number(url.port),
            path: `${url.pathname}${url.search}`,
            method,
            headers,
            // No pooled connections: each one is made here, through `lookup`.
            agent: false,
            lookup,
          },
          (res) => {
            const retryAfter = res.headers['retry-after']
            answer = { status: res.statusCode ?? 0, ...(retryAfter !== undefined && { retryAfter }) }
            let read = 0
            res.on('data', (chunk: Buffer) => {
              read += chunk.length
              if (read >= maxResponseBytes) answered()
            })
            res.on('end', answered)
            res.on('error', answered)
            res.on('close', answered)
            if (maxResponseBytes === 0) answered()
          },
        )
      } catch (err) {
        settle({ ok: false, failure: 'invalid-request', error: (err as Error).message })
        return
      }
      timers.push(
        setTimeout(() => fail('timeout', `Timed out: no answer within ${timeoutMs} ms.`), timeoutMs),
        setTimeout(
          () => fail('connect-timeout', `Timed out: not connected within ${connectTimeoutMs} ms.`),
          connectTimeoutMs,
        ),
      )
      req.on('socket', (socket) => {
        const connected = () => clearTimeout(timers[1])
        if (socket.connecting) socket.once('connect', connected)
        else connected()
      })
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === BLOCKED_ADDRESS) fail('blocked', `Refused: ${err.message}`)
        else if (err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN')
          fail('network', `Could not resolve ${url.hostname}.`)
        else fail('network', err.code === undefined ? err.message : `${err.code}: ${err.message}`)
      })
      req.end(body)
    })
  }
}
