import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { parseCookie } from 'cookie'
import { createLocalJWKSet, importSPKI, jwtVerify, type JWTPayload } from 'jose'
import { invalidOption, LongrunError } from '../core/errors.js'
import type { Principal } from '../core/permissions.js'
import { anyOfSecurity, apiKeyHeader, bearerJwt, sessionKey, withSecurity } from './openapi/security.js'
import { headerOf, type RequestHead } from './request.js'

/**
 * Finds out who sent a request: a principal, or `undefined` when the request carries no
 * credentials. Credentials that are present but wrong should throw `unauthorized(...)`.
 */
export type Authenticate = ((request: RequestHead) => Principal | undefined | Promise<Principal | undefined>) & {
  /**
   * The request headers it reads the credentials from: answers say `Vary` on them, so that no cache
   * gives one caller's answer to another. @default ['authorization', 'cookie']
   */
  readonly headers?: readonly string[]
}

/** The headers the answers depend on through `authenticate`; none for anonymous callers. */
export function credentialHeaders(authenticate: Authenticate | undefined): readonly string[] {
  if (!authenticate) return []
  return authenticate.headers ?? ['authorization', 'cookie']
}

/** A 401 problem; `challenge` becomes the `WWW-Authenticate` header. */
export function unauthorized(detail: string, challenge = 'Bearer realm="longrun"'): LongrunError {
  return new LongrunError('unauthorized', detail, { headers: { 'www-authenticate': challenge } })
}

const sha256 = (text: string) => createHash('sha256').update(text).digest('base64url')

export interface JwtAuthOptions {
  /** HS256 shared secret. */
  secret?: string
  /** PEM (SPKI) public key, with `algorithm`. */
  publicKey?: string
  /** Path of a JWKS JSON file (a `{ "keys": [...] }` document). */
  jwksFile?: string
  /** Algorithm of `publicKey`. @default 'RS256' */
  algorithm?: string
  issuer?: string
  audience?: string
  /**
   * How far the issuer's clock may be ahead of or behind this server's, in seconds: a token whose
   * `iat` or `nbf` lies further in the future, or whose `exp` lies further in the past, is refused.
   * @default 30
   */
  clockTolerance?: number
}

function strings(value: unknown): string[] | undefined {
  if (Array.isArray(value)) return value.filter((v): v is string => typeof v === 'string')
  return undefined
}

/**
 * Bearer JWTs, verified with `jose`: `sub` is the principal's id; `groups` and `roles` (string
 * arrays) and `scope` (space-separated, or `scp` as an array) its groups, roles and scopes.
 */
export function jwtAuth(options: JwtAuthOptions): Authenticate {
  const given = [options.secret, options.publicKey, options.jwksFile].filter((k) => k !== undefined)
  if (given.length !== 1) throw invalidOption('jwtAuth', 'needs exactly one of secret, publicKey, jwksFile')
  const clockTolerance = options.clockTolerance ?? 30
  if (!(Number.isFinite(clockTolerance) && clockTolerance >= 0)) {
    throw invalidOption('jwtAuth.clockTolerance', 'must be a non-negative number of seconds')
  }
  const verifyOptions = {
    ...(options.issuer !== undefined ? { issuer: options.issuer } : {}),
    ...(options.audience !== undefined ? { audience: options.audience } : {}),
    clockTolerance,
  }
  let verify: (token: string) => Promise<JWTPayload>
  if (options.secret !== undefined) {
    if (options.secret.length < 16) throw invalidOption('jwtAuth.secret', 'must be at least 16 characters')
    const secret = new TextEncoder().encode(options.secret)
    verify = async (token) => (await jwtVerify(token, secret, { ...verifyOptions, algorithms: ['HS256'] })).payload
  } else if (options.publicKey !== undefined) {
    const algorithm = options.algorithm ?? 'RS256'
    const publicKey = importSPKI(options.publicKey, algorithm)
    verify = async (token) =>
      (await jwtVerify(token, await publicKey, { ...verifyOptions, algorithms: [algorithm] })).payload
  } else {
    const keys = createLocalJWKSet(JSON.parse(readFileSync(options.jwksFile!, 'utf8')))
    verify = async (token) => (await jwtVerify(token, keys, verifyOptions)).payload
  }
  const challenge = (error: string) => `Bearer realm="longrun", error="${error}"`
  const authenticate: Authenticate = async (request) => {
    const header = headerOf(request, 'authorization')
    if (header === undefined) return undefined
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header)
    if (!match) throw unauthorized('Send a bearer token: Authorization: Bearer <token>.', challenge('invalid_request'))
    let payload: JWTPayload
    try {
      payload = await verify(match[1]!)
    } catch {
      throw unauthorized('The bearer token is invalid or expired.', challenge('invalid_token'))
    }
    // jose checks `iat` only against a maximum age: a token from the future would outlive its `exp`.
    if (typeof payload.iat === 'number' && payload.iat > Date.now() / 1000 + clockTolerance) {
      throw unauthorized('The bearer token was issued in the future.', challenge('invalid_token'))
    }
    if (typeof payload.sub !== 'string' || payload.sub === '') {
      throw unauthorized('The bearer token has no subject.', challenge('invalid_token'))
    }
    const scopes = typeof payload.scope === 'string' ? payload.scope.split(' ').filter(Boolean) : strings(payload.scp)
    return {
      id: payload.sub,
      ...(strings(payload.groups) ? { groups: strings(payload.groups)! } : {}),
      ...(strings(payload.roles) ? { roles: strings(payload.roles)! } : {}),
      ...(scopes ? { scopes } : {}),
    }
  }
  return withSecurity(Object.assign(authenticate, { headers: ['authorization'] }), bearerJwt())
}

export interface ApiKeyAuthOptions {
  /** Each key and the principal it stands for. */
  keys: Record<string, Principal>
  /** @default 'x-api-key' */
  header?: string
}

/** Static API keys from a header. */
export function apiKeyAuth(options: ApiKeyAuthOptions): Authenticate {
  const header = (options.header ?? 'x-api-key').toLowerCase()
  // Looked up by hash, so that the comparison time says nothing about how much of a key matched.
  const byHash = new Map(Object.entries(options.keys).map(([key, principal]) => [sha256(key), principal]))
  const authenticate: Authenticate = (request) => {
    const key = request.headers[header]
    if (key === undefined) return undefined
    const principal = typeof key === 'string' ? byHash.get(sha256(key)) : undefined
    if (!principal) throw unauthorized(`The ${header} header holds no known key.`, `ApiKey header="${header}"`)
    return principal
  }
  return withSecurity(Object.assign(authenticate, { headers: [header] }), apiKeyHeader(header))
}

export interface SessionAuthOptions {
  /** Header carrying the session key. @default 'x-session-key' */
  header?: string
  /** Cookie carrying the session key (percent-decoded), when no header does. */
  cookie?: string
  /** Without a key, isolate callers by (a hash of) their IP address. @default true */
  fallbackToIp?: boolean
}

/**
 * Session isolation: every caller is the principal `session:<hash of its
 * key>`, or `ip:<hash of its address>`. Not authentication - anyone who knows a key is its session -
 * but it keeps callers' operations apart. A session cookie that is not valid percent-encoding is
 * refused with `401` rather than ignored: ignoring it would silently move its caller to the
 * address's session, and that caller's operations out of sight.
 */
export function sessionAuth(options: SessionAuthOptions = {}): Authenticate {
  const header = (options.header ?? 'x-session-key').toLowerCase()
  const authenticate: Authenticate = (request) => {
    const fromHeader = headerOf(request, header)
    const key = typeof fromHeader === 'string' && fromHeader !== '' ? fromHeader : cookie(request, options.cookie)
    if (key !== undefined) return { id: `session:${sha256(key).slice(0, 22)}` }
    if (options.fallbackToIp ?? true) return { id: `ip:${sha256(request.ip).slice(0, 22)}` }
    return undefined
  }
  return withSecurity(
    Object.assign(authenticate, { headers: options.cookie === undefined ? [header] : [header, 'cookie'] }),
    sessionKey(header, options.cookie, options.fallbackToIp ?? true),
  )
}

/** The decoded value of cookie `name` (the first, if sent twice); `undefined` when absent or empty. */
function cookie(request: RequestHead, name: string | undefined): string | undefined {
  const header = headerOf(request, 'cookie')
  if (name === undefined || header === undefined) return undefined
  // Raw values: only the session cookie is decoded, so that another cookie's encoding never matters.
  const value = parseCookie(header, { decode: (raw) => raw })[name]
  if (value === undefined || value === '') return undefined
  try {
    return decodeURIComponent(value)
  } catch {
    throw unauthorized(`The ${name} cookie is not validly percent-encoded.`, `Session cookie="${name}"`)
  }
}

/** The first of `authenticators` that finds a principal. */
export function anyOf(...authenticators: Authenticate[]): Authenticate {
  const first: Authenticate = async (request) => {
    for (const authenticate of authenticators) {
      const principal = await authenticate(request)
      if (principal) return principal
    }
    return undefined
  }
  return withSecurity(
    Object.assign(first, { headers: [...new Set(authenticators.flatMap((a) => credentialHeaders(a)))] }),
    anyOfSecurity(authenticators),
  )
}
