import { toMs, type Duration } from '../../core/duration.js'
import { invalidOption } from '../../core/errors.js'
import type { Callback, HistoryEvent, Subscription } from '../../core/types.js'
import { TERMINAL_EVENTS } from '../callback.js'
import { RESULT_TYPES } from '../formats.js'
import { checkTarget, targetPolicy, type ResolvedTargetPolicy } from './address.js'
import { retrySchedule, type RetrySchedule } from './schedule.js'
import { checkHeaders } from './send.js'
import { webhookSigner, type Signer } from './sign.js'

/** Callbacks and app-wide webhooks (docs/webhooks.md): the same in API servers and workers. */
export interface WebhookOptions {
  /**
   * Signing secrets, `whsec_` + base64 of 24 to 64 random bytes. Every message is signed with each:
   * during a rotation list the new and the old one, and receivers holding either verify.
   */
  secret: string | string[]
  /** App-wide endpoints: each gets a message for every event it subscribes to. */
  endpoints?: WebhookEndpoint[]
  /**
   * Hosts, addresses and CIDR ranges messages may go to although they are not public (loopback,
   * private networks...), e.g. `['127.0.0.1']` for tests. @default [] (public addresses only)
   */
  allow?: string[]
  /** The waits between attempts. @default ['5s', '5m', '30m', '2h', '5h', '10h', '10h'] (about a day) */
  retry?: Duration[]
  /** Until connected (resolving the host and the TCP connect). @default '5s' */
  connectTimeout?: Duration
  /** Until the answer is read. @default '15s' */
  timeout?: Duration
  /** How often a sender looks for due messages when nothing woke it. @default '1s' */
  poll?: Duration
  /** How long a sender holds the messages it took before another may take them. @default '1m' */
  lease?: Duration
  /** Messages one process sends at once. @default 8 */
  concurrency?: number
}

/** An app-wide webhook endpoint, like a Standard Webhooks sender's endpoints. */
export interface WebhookEndpoint {
  /** Names it in messages' `target` and in the outbox: letters, digits, `.`, `_`, `-`. */
  id: string
  url: string
  /** @default the terminal ones: succeeded, failed, canceled */
  events?: HistoryEvent[]
  /** Route names it wants, `*` matching any run of characters. @default every route */
  names?: string[]
  headers?: Record<string, string>
  /** @default 'application/json' */
  contentType?: Callback['contentType']
  /** Whether messages carry the operation's result. @default false */
  sendResult?: boolean
  /** Signs its messages instead of the app's `secret`. */
  secret?: string | string[]
}

export interface ResolvedEndpoint {
  id: string
  url: string
  events: HistoryEvent[]
  matches(name: string): boolean
  headers: Record<string, string>
  contentType: Callback['contentType']
  sendResult: boolean
  signer: Signer | undefined
}

export interface ResolvedWebhookOptions {
  signer: Signer
  endpoints: ReadonlyMap<string, ResolvedEndpoint>
  policy: ResolvedTargetPolicy
  schedule: RetrySchedule
  connectTimeout: Duration
  timeout: Duration
  pollMs: number
  leaseMs: number
  concurrency: number
}

const ENDPOINT_ID = /^[A-Za-z0-9._-]{1,64}$/
const secrets = (secret: string | string[]) => (Array.isArray(secret) ? secret : [secret])

export function resolveWebhookOptions(input: WebhookOptions): ResolvedWebhookOptions {
  if (typeof input !== 'object' || input === null) throw invalidOption('webhooks', 'must be an object')
  if (input.secret === undefined) throw invalidOption('webhooks.secret', "is required (a 'whsec_' secret)")
  const signer = webhookSigner(secrets(input.secret), 'webhooks.secret')
  const policy = targetPolicy({ allow: input.allow ?? [] })
  const endpoints = new Map<string, ResolvedEndpoint>()
  for (const [i, endpoint] of (input.endpoints ?? []).entries()) {
    const at = `webhooks.endpoints[${i}]`
    if (typeof endpoint?.id !== 'string' || !ENDPOINT_ID.test(endpoint.id) || endpoint.id === 'callback') {
      throw invalidOption(`${at}.id`, "must be 1-64 letters, digits, '.', '_' or '-', and not 'callback'")
    }
    if (endpoints.has(endpoint.id)) throw invalidOption(`${at}.id`, `'${endpoint.id}' is given twice`)
    const check = checkTarget(String(endpoint.url), policy)
    if (!check.ok) throw invalidOption(`${at}.url`, `is refused: ${check.message}`)
    const contentType = endpoint.contentType ?? 'application/json'
    if (!RESULT_TYPES.includes(contentType))
      throw invalidOption(`${at}.contentType`, `must be ${RESULT_TYPES.join(', ')}`)
    const headers = endpoint.headers ?? {}
    checkHeaders(headers, `${at}.headers`)
    const patterns = (endpoint.names ?? ['*']).map(
      (name) => new RegExp(`^${name.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`),
    )
    endpoints.set(endpoint.id, {
      id: endpoint.id,
      url: String(endpoint.url),
      events: endpoint.events ?? TERMINAL_EVENTS,
      matches: (name) => patterns.some((pattern) => pattern.test(name)),
      headers,
      contentType,
      sendResult: endpoint.sendResult === true,
      signer: endpoint.secret === undefined ? undefined : webhookSigner(secrets(endpoint.secret), `${at}.secret`),
    })
  }
  const concurrency = input.concurrency ?? 8
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw invalidOption('webhooks.concurrency', 'must be a positive integer')
  }
  const pollMs = toMs('webhooks.poll', input.poll ?? '1s')
  const leaseMs = toMs('webhooks.lease', input.lease ?? '1m')
  if (pollMs <= 0 || leaseMs <= 0) throw invalidOption('webhooks.poll', 'and webhooks.lease must be positive')
  return {
    signer,
    endpoints,
    policy,
    schedule: retrySchedule(input.retry === undefined ? {} : { delays: input.retry }),
    connectTimeout: input.connectTimeout ?? '5s',
    timeout: input.timeout ?? '15s',
    pollMs,
    leaseMs,
    concurrency,
  }
}

/**
 * The subscriptions an operation gets at submit: its callback's, and those of the app-wide
 * endpoints whose `names` match its route.
 */
export function subscriptionsFor(
  name: string,
  callbackEvents: HistoryEvent[] | undefined,
  webhooks: ResolvedWebhookOptions | undefined,
): Subscription[] {
  const subscriptions: Subscription[] = callbackEvents ? [{ target: 'callback', events: callbackEvents }] : []
  for (const endpoint of webhooks?.endpoints.values() ?? []) {
    if (endpoint.matches(name)) subscriptions.push({ target: endpoint.id, events: endpoint.events })
  }
  return subscriptions
}
