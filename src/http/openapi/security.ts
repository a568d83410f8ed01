/** An OpenAPI 3.1 security scheme, of the kinds longrun's authenticators read. */
export type SecurityScheme =
  | { type: 'http'; scheme: 'bearer'; bearerFormat?: string; description?: string }
  | { type: 'apiKey'; in: 'header' | 'query' | 'cookie'; name: string; description?: string }

/**
 * One way to be let in: the schemes a request carries together, by scheme name. `{}` is the way
 * without credentials (an anonymous caller, or one told apart by its address).
 */
export type SecurityAlternative = Readonly<Record<string, SecurityScheme>>

/** Where an authenticator keeps the ways it lets callers in, for OpenAPI. */
export const SECURITY: unique symbol = Symbol.for('longrun.openapi.security')

export interface DescribedSecurity {
  readonly [SECURITY]?: readonly SecurityAlternative[]
}

/**
 * Marks an `authenticate` function with the security schemes it reads, so that the OpenAPI
 * document lists them; the bundled authenticators do it, a custom one may too.
 */
export function withSecurity<F extends object>(
  authenticate: F,
  alternatives: readonly SecurityAlternative[] | undefined,
): F & DescribedSecurity {
  return Object.assign(authenticate, { [SECURITY]: alternatives })
}

/** What an authenticator said of itself; `undefined` when it said nothing. */
export const securityOf = (authenticate: object | undefined): readonly SecurityAlternative[] | undefined =>
  (authenticate as DescribedSecurity | undefined)?.[SECURITY]

// Scheme names may hold letters, digits, `.`, `_` and `-` only.
const schemeName = (prefix: string, name: string) => `${prefix}.${name.replace(/[^A-Za-z0-9._-]/g, '_')}`

export const bearerJwt = (): SecurityAlternative[] => [
  { bearerJwt: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } },
]

export const apiKeyHeader = (header: string): SecurityAlternative[] => [
  { [schemeName('apiKey', header)]: { type: 'apiKey', in: 'header', name: header } },
]

const SESSION = 'Identifies a session; it does not authenticate: anyone who knows a key is its session.'

/** A session key in a header, else in a cookie, else (with `fallbackToIp`) none. */
export function sessionKey(header: string, cookie: string | undefined, fallbackToIp: boolean): SecurityAlternative[] {
  const ways: SecurityAlternative[] = [
    { [schemeName('session', header)]: { type: 'apiKey', in: 'header', name: header, description: SESSION } },
  ]
  if (cookie !== undefined) {
    ways.push({
      [schemeName('sessionCookie', cookie)]: { type: 'apiKey', in: 'cookie', name: cookie, description: SESSION },
    })
  }
  if (fallbackToIp) ways.push({})
  return ways
}

/** Any of several authenticators: each one's ways; nothing known if one of them says nothing. */
export function anyOfSecurity(authenticators: readonly object[]): SecurityAlternative[] | undefined {
  const ways: SecurityAlternative[] = []
  for (const authenticate of authenticators) {
    const own = securityOf(authenticate)
    if (!own) return undefined
    ways.push(...own)
  }
  return ways
}
