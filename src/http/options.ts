import { toMs, type Duration } from '../core/duration.js'
import { invalidOption } from '../core/errors.js'
import type { OperationAccessPolicy } from '../core/access.js'
import type { AccessList } from '../core/permissions.js'
import type { Authenticate } from './auth.js'
import { RESULT_TYPES, type ResultType } from './formats.js'
import { resolveDocsOptions, type DocsOptions, type ResolvedDocsOptions } from './openapi/options.js'
import { resolveWebhookOptions, type ResolvedWebhookOptions, type WebhookOptions } from './webhooks/options.js'

/** The options of the HTTP protocol, the same for every adapter. */
export interface ProtocolOptions {
  /** Where the operations API is mounted. @default '/operations' */
  basePath?: string
  /**
   * `false`: do not serve the operations API under `basePath`; serve only the actions the app
   * mounts itself (`app.longrun.operationRoute`). @default true
   */
  operationsApi?: boolean
  /**
   * Media types the operations API answers its bodies in, by `Accept`, the first by default
   * (Pode's `-ResponseContentType`); results follow their route's `resultTypes`.
   * @default ['application/json']
   */
  formats?: ResultType[]
  /** Serve the API's OpenAPI 3.1 document and a docs page (docs/openapi.md). @default false */
  docs?: boolean | DocsOptions
  /** Include handler stack traces in error responses. @default false */
  exposeStack?: boolean
  /** Largest accepted request body, in bytes. @default 1048576 (1 MiB) */
  bodyLimit?: number
  /** Polling hint sent as `Retry-After`. @default '1s' */
  retryAfter?: Duration
  /** @default 20 */
  defaultPageSize?: number
  /** @default 100 */
  maxPageSize?: number
  /**
   * Request headers read as idempotency keys, first match wins; add e.g. `'x-request-id'` to honour
   * a client-chosen request id. Keys live for `idempotencyTtl` (default 24 h).
   * @default ['idempotency-key']
   */
  idempotencyHeaders?: string[]
  /**
   * Finds the caller of each request (see `jwtAuth`, `apiKeyAuth`, `sessionAuth`); the caller owns
   * what it submits. @default none: every caller is anonymous
   */
  authenticate?: Authenticate
  /** Serve requests without a principal, as the anonymous owner. @default true without `authenticate`, false with it */
  allowAnonymous?: boolean
  /** `WWW-Authenticate` challenge of 401 answers. @default 'Bearer realm="longrun"' */
  challenge?: string
  /** Principals with this role may read and change every operation, and run the cleanup. @default none */
  adminRole?: string
  /**
   * The cleanup endpoints (docs/query.md): `allow` lets these principals run it
   * (`POST {base}/cleanup`) besides the admin role, e.g. `{ allow: { roles: ['ops'] } }`.
   * @default only the admin role may run it
   */
  cleanup?: { allow?: AccessList }
  /** Most queued and running operations one owner may have; one more answers 429. @default unlimited */
  maxActivePerOwner?: number
  /** Requests per principal (or per IP when anonymous) and time window, e.g. `'1 minute'`. @default none */
  rateLimit?: { max: number; timeWindow: Duration }
  /**
   * Requests with refused credentials (a `401` although credentials were sent) one client address
   * may make per time window; beyond, every request with credentials from it answers `429
   * rate-limited` with `Retry-After` until the window ends, right ones too, so that guessing keys
   * or tokens stays slow. `false`: no such limit (`rateLimit` still counts refused requests).
   * @default { max: 20, timeWindow: '1m' }
   */
  authFailureLimit?: { max: number; timeWindow: Duration } | false
  /** How often an idle event stream sends a comment, so that proxies keep it open. @default '15s' */
  streamHeartbeat?: Duration
  /** Event streams and waits one caller (principal, or address when anonymous) may hold open at once. @default 16 */
  maxStreamsPerCaller?: number
  /** Longest wait a client may ask for (`/wait?timeout=`, `Prefer: wait=`). @default '60s' */
  maxWait?: Duration
  /** An event stream whose client has not read what was sent for this long is closed. @default '30s' */
  slowConsumerTimeout?: Duration
  /**
   * Callbacks and app-wide webhook endpoints: signing secrets, endpoints, the allow-list of
   * non-public hosts, retries and timeouts (docs/webhooks.md). Needed by routes with a `callback`.
   * @default none
   */
  webhooks?: WebhookOptions
}

export interface ResolvedProtocolOptions {
  basePath: string
  operationsApi: boolean
  formats: readonly ResultType[]
  docs: ResolvedDocsOptions | undefined
  exposeStack: boolean
  bodyLimit: number
  retryAfterSeconds: number
  defaultPageSize: number
  maxPageSize: number
  idempotencyHeaders: string[]
  authenticate: Authenticate | undefined
  allowAnonymous: boolean
  challenge: string
  policy: OperationAccessPolicy
  maxActivePerOwner: number | undefined
  rateLimit: { max: number; timeWindowMs: number } | undefined
  authFailureLimit: { max: number; timeWindowMs: number } | undefined
  streamHeartbeatMs: number
  maxStreamsPerCaller: number
  maxWaitMs: number
  slowConsumerTimeoutMs: number
  webhooks: ResolvedWebhookOptions | undefined
}

const DEFAULTS = {
  basePath: '/operations',
  bodyLimit: 1_048_576, // 1 MiB
  retryAfter: 1_000, // 1 s
  defaultPageSize: 20,
  maxPageSize: 100,
  idempotencyHeaders: ['idempotency-key'],
  challenge: 'Bearer realm="longrun"',
  streamHeartbeat: 15_000,
  maxStreamsPerCaller: 16,
  maxWait: 60_000,
  slowConsumerTimeout: 30_000,
  authFailureLimit: { max: 20, timeWindow: 60_000 }, // 20 per minute
} as const

const isPositiveInteger = (n: unknown): n is number => Number.isInteger(n) && (n as number) > 0

// A header name is an RFC 9110 token.
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/

/** Options of a plain type: a wrong one is named at registration rather than misread later. */
const TYPED = {
  basePath: 'string',
  operationsApi: 'boolean',
  exposeStack: 'boolean',
  allowAnonymous: 'boolean',
  challenge: 'string',
  adminRole: 'string',
  authenticate: 'function',
} as const

export function resolveProtocolOptions(input: ProtocolOptions): ResolvedProtocolOptions {
  for (const [name, type] of Object.entries(TYPED)) {
    const value = input[name as keyof typeof TYPED]
    if (value !== undefined && typeof value !== type) throw invalidOption(name, `must be a ${type}`)
  }
  const basePath = (input.basePath ?? DEFAULTS.basePath).replace(/\/+$/, '')
  if (!basePath.startsWith('/')) throw invalidOption('basePath', "must start with '/'")
  const bodyLimit = input.bodyLimit ?? DEFAULTS.bodyLimit
  if (!isPositiveInteger(bodyLimit)) throw invalidOption('bodyLimit', 'must be a positive whole number of bytes')
  const retryAfterMs = toMs('retryAfter', input.retryAfter ?? DEFAULTS.retryAfter)
  if (retryAfterMs <= 0) throw invalidOption('retryAfter', 'must be positive')
  const maxPageSize = input.maxPageSize ?? DEFAULTS.maxPageSize
  if (!isPositiveInteger(maxPageSize)) throw invalidOption('maxPageSize', 'must be a positive integer')
  const defaultPageSize = input.defaultPageSize ?? Math.min(DEFAULTS.defaultPageSize, maxPageSize)
  if (!isPositiveInteger(defaultPageSize)) throw invalidOption('defaultPageSize', 'must be a positive integer')
  if (defaultPageSize > maxPageSize)
    throw invalidOption('defaultPageSize', `must not exceed maxPageSize (${maxPageSize})`)
  const idempotencyHeaders = (input.idempotencyHeaders ?? DEFAULTS.idempotencyHeaders).map((h) => h.toLowerCase())
  if (idempotencyHeaders.length === 0) throw invalidOption('idempotencyHeaders', 'must name at least one header')
  for (const header of idempotencyHeaders) {
    if (!HEADER_NAME.test(header)) throw invalidOption('idempotencyHeaders', `holds '${header}', not a header name`)
  }
  const maxActive = input.maxActivePerOwner
  if (maxActive !== undefined && !isPositiveInteger(maxActive)) {
    throw invalidOption('maxActivePerOwner', 'must be a positive integer')
  }
  const rateLimit = input.rateLimit
  if (rateLimit !== undefined && (typeof rateLimit !== 'object' || rateLimit === null)) {
    throw invalidOption('rateLimit', 'must be { max, timeWindow }')
  }
  if (rateLimit && !isPositiveInteger(rateLimit.max)) throw invalidOption('rateLimit.max', 'must be a positive integer')
  const timeWindowMs = rateLimit && toMs('rateLimit.timeWindow', rateLimit.timeWindow)
  if (timeWindowMs === 0) throw invalidOption('rateLimit.timeWindow', 'must be positive')
  const failures = input.authFailureLimit ?? DEFAULTS.authFailureLimit
  if (failures !== false && (typeof failures !== 'object' || failures === null || !isPositiveInteger(failures.max))) {
    throw invalidOption('authFailureLimit', 'must be false or { max, timeWindow } with a positive integer max')
  }
  const failureWindowMs = failures === false ? 0 : toMs('authFailureLimit.timeWindow', failures.timeWindow)
  if (failures !== false && !(failureWindowMs > 0)) {
    throw invalidOption('authFailureLimit.timeWindow', 'must be positive')
  }
  const positiveMs = (name: 'streamHeartbeat' | 'maxWait' | 'slowConsumerTimeout') => {
    const ms = toMs(name, input[name] ?? DEFAULTS[name])
    if (ms <= 0) throw invalidOption(name, 'must be positive')
    return ms
  }
  const cleanup = input.cleanup
  if (cleanup !== undefined && (typeof cleanup !== 'object' || cleanup === null || Array.isArray(cleanup))) {
    throw invalidOption('cleanup', 'must be { allow?: { users?, groups?, roles?, scopes? } }')
  }
  const allow = cleanup?.allow
  if (allow !== undefined) {
    if (typeof allow !== 'object' || allow === null || Array.isArray(allow)) {
      throw invalidOption('cleanup.allow', 'must be { users?, groups?, roles?, scopes? }')
    }
    for (const [kind, names] of Object.entries(allow)) {
      if (!['users', 'groups', 'roles', 'scopes'].includes(kind)) {
        throw invalidOption(`cleanup.allow.${kind}`, 'is not one of users, groups, roles, scopes')
      }
      if (!Array.isArray(names) || names.some((name) => typeof name !== 'string')) {
        throw invalidOption(`cleanup.allow.${kind}`, 'must be an array of strings')
      }
    }
  }
  const maxStreams = input.maxStreamsPerCaller ?? DEFAULTS.maxStreamsPerCaller
  if (!isPositiveInteger(maxStreams)) throw invalidOption('maxStreamsPerCaller', 'must be a positive integer')
  const formats = input.formats ?? ['application/json']
  if (!Array.isArray(formats) || formats.length === 0)
    throw invalidOption('formats', 'must list at least one media type')
  for (const type of formats) {
    if (!RESULT_TYPES.includes(type))
      throw invalidOption('formats', `cannot offer '${type}' (${RESULT_TYPES.join(', ')})`)
  }
  return {
    basePath,
    operationsApi: input.operationsApi ?? true,
    formats: [...new Set(formats)],
    docs: resolveDocsOptions(input.docs),
    exposeStack: input.exposeStack ?? false,
    bodyLimit,
    retryAfterSeconds: Math.max(1, Math.ceil(retryAfterMs / 1000)),
    defaultPageSize,
    maxPageSize,
    idempotencyHeaders,
    authenticate: input.authenticate,
    allowAnonymous: input.allowAnonymous ?? input.authenticate === undefined,
    challenge: input.challenge ?? DEFAULTS.challenge,
    policy: {
      ...(input.adminRole === undefined ? {} : { adminRole: input.adminRole }),
      ...(allow === undefined ? {} : { cleanup: allow }),
    },
    maxActivePerOwner: maxActive,
    rateLimit: rateLimit && { max: rateLimit.max, timeWindowMs: timeWindowMs! },
    authFailureLimit: failures ? { max: failures.max, timeWindowMs: failureWindowMs } : undefined,
    streamHeartbeatMs: positiveMs('streamHeartbeat'),
    maxStreamsPerCaller: maxStreams,
    maxWaitMs: positiveMs('maxWait'),
    slowConsumerTimeoutMs: positiveMs('slowConsumerTimeout'),
    webhooks: input.webhooks === undefined ? undefined : resolveWebhookOptions(input.webhooks),
  }
}
