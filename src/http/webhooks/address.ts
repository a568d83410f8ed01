import { lookup as dnsLookup } from 'node:dns/promises'
import type { LookupFunction } from 'node:net'
import ipaddr from 'ipaddr.js'
import { invalidOption } from '../../core/errors.js'

/**
 * Where webhooks may go. Every address that is not globally routable unicast is refused (see
 * `blockedRange`); `allow` names the exceptions.
 */
export interface TargetPolicy {
  /**
   * Trusted hosts and networks, sent to whatever they resolve to: host names
   * (`'hooks.internal.example'`, matched exactly, without subdomains), addresses (`'127.0.0.1'`,
   * `'::1'`) and CIDR ranges (`'10.0.0.0/8'`, `'fd00::/8'`).
   * @default []
   */
  allow?: readonly string[]
}

type Address = ipaddr.IPv4 | ipaddr.IPv6

/** A `TargetPolicy` checked once: what `checkTarget`, `guardedLookup` and the sender work from. */
export class ResolvedTargetPolicy {
  readonly #hosts: ReadonlySet<string>
  readonly #ranges: readonly [Address, number][]

  constructor(policy: TargetPolicy = {}) {
    const hosts = new Set<string>()
    const ranges: [Address, number][] = []
    for (const [i, entry] of (policy.allow ?? []).entries()) {
      const option = `allow[${i}]`
      if (typeof entry !== 'string' || entry.trim() === '')
        throw invalidOption(option, 'must be a host name, an IP or a CIDR')
      const text = entry.trim()
      if (text.includes('/')) {
        if (!ipaddr.IPv4.isValidCIDRFourPartDecimal(text) && !ipaddr.IPv6.isValidCIDR(text)) {
          throw invalidOption(option, `must be a CIDR range like '10.0.0.0/8' or 'fd00::/8', got '${text}'`)
        }
        ranges.push(ipaddr.parseCIDR(text))
      } else if (ipaddr.IPv4.isValidFourPartDecimal(text) || ipaddr.IPv6.isValid(text)) {
        const address = ipaddr.process(text)
        ranges.push([address, address.kind() === 'ipv4' ? 32 : 128])
      } else {
        hosts.add(hostName(text, option))
      }
    }
    this.#hosts = hosts
    this.#ranges = ranges
  }

  /** Whether `host` (a name as in a URL, any case, trailing dots or not) is allow-listed. */
  allowsHost(host: string): boolean {
    return this.#hosts.has(normaliseName(host))
  }

  /** Whether the address falls in an allow-listed address or range. */
  allowsAddress(address: string): boolean {
    const parsed = parseAddress(address)
    return parsed !== undefined && this.#allows(parsed)
  }

  #allows(address: Address): boolean {
    return this.#ranges.some(([net, bits]) => net.kind() === address.kind() && address.match(net, bits))
  }

  /** The name of the blocked range `address` is in, unless allow-listed; `undefined` when it may be used. */
  blocked(address: string): string | undefined {
    const parsed = parseAddress(address)
    if (parsed === undefined) return 'invalid'
    return this.#allows(parsed) ? undefined : rangeOf(parsed)
  }
}

export function targetPolicy(policy: TargetPolicy | ResolvedTargetPolicy = {}): ResolvedTargetPolicy {
  return policy instanceof ResolvedTargetPolicy ? policy : new ResolvedTargetPolicy(policy)
}

const DEFAULT_POLICY = new ResolvedTargetPolicy()

/**
 * The name of the blocked range `address` (an IPv4 or IPv6 address as text) falls in, or
 * `undefined` for a globally routable unicast address, or one allow-listed by `policy`.
 */
export function blockedRange(address: string, policy?: TargetPolicy | ResolvedTargetPolicy): string | undefined {
  return (policy === undefined ? DEFAULT_POLICY : targetPolicy(policy)).blocked(address)
}

/** Why a target was refused: stable codes, for logs and problem details. */
export type TargetRefusal = 'invalid-url' | 'bad-scheme' | 'userinfo' | 'bad-port' | 'blocked-address' | 'blocked-host'

export type TargetCheck = { ok: true; url: URL } | { ok: false; reason: TargetRefusal; message: string; url?: URL }

/**
 * What can be said of a target URL without resolving it, e.g. at submit: only `http:` and `https:`,
 * no credentials in it, no port 0, no IP literal in a blocked range and no `localhost` name unless
 * allow-listed. The URL is read the WHATWG way (as `new URL()` does, and as the sender connects), so
 * `http://2130706433/`, `http://0x7f.1/` and `http://[::ffff:127.0.0.1]/` are all 127.0.0.1.
 * Host names pass: what they resolve to is checked when connecting (`guardedLookup`).
 */
export function checkTarget(target: string | URL, policy?: TargetPolicy | ResolvedTargetPolicy): TargetCheck {
  const resolved = policy === undefined ? DEFAULT_POLICY : targetPolicy(policy)
  let url: URL
  try {
    url = new URL(String(target))
  } catch {
    return { ok: false, reason: 'invalid-url', message: 'Not an absolute URL.' }
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    return {
      ok: false,
      reason: 'bad-scheme',
      message: `Only http: and https: URLs are sent to, not ${url.protocol}`,
      url,
    }
  }
  if (url.username !== '' || url.password !== '') {
    return { ok: false, reason: 'userinfo', message: 'URLs with credentials (user:password@) are refused.', url }
  }
  if (url.port === '0') return { ok: false, reason: 'bad-port', message: 'Port 0 is refused.', url }
  const host = urlHost(url)
  if (ipaddr.isValid(host)) {
    const range = resolved.blocked(host)
    if (range !== undefined) {
      return {
        ok: false,
        reason: 'blocked-address',
        message: `${host} is a ${range} address, and not allow-listed.`,
        url,
      }
    }
    return { ok: true, url }
  }
  const name = normaliseName(host)
  if ((name === 'localhost' || name.endsWith('.localhost')) && !resolved.allowsHost(name)) {
    return {
      ok: false,
      reason: 'blocked-host',
      message: `${name} always means loopback, and is not allow-listed.`,
      url,
    }
  }
  return { ok: true, url }
}

/** The host of a URL as `http.request` takes it: without the brackets of an IPv6 literal. */
export function urlHost(url: URL): string {
  const host = url.hostname
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host
}

/** Resolves a host name to all its addresses; the default is `dns.lookup` with `all: true`. */
export type Resolver = (hostname: string) => Promise<readonly { address: string; family: number }[]>

const defaultResolver: Resolver = (hostname) => dnsLookup(hostname, { all: true })

/** The code of the error a refused connection fails with. */
export const BLOCKED_ADDRESS = 'ERR_LONGRUN_BLOCKED_ADDRESS'

export class BlockedAddressError extends Error {
  readonly code = BLOCKED_ADDRESS
  constructor(
    readonly hostname: string,
    readonly address: string,
    readonly range: string,
  ) {
    super(`${hostname} resolves to ${address}, a ${range} address, and neither is allow-listed.`)
    this.name = 'BlockedAddressError'
  }
}

/**
 * A `lookup` for `http.request`/`net.connect` that resolves the host once, fails with a
 * `BlockedAddressError` if any of its addresses is blocked (unless the host name or that address
 * is allow-listed), and hands the connection exactly the addresses it checked: what is connected
 * to is what was checked, so a name that rebinds between a check and the connection gains nothing.
 * Node does not call `lookup` for IP literals: check those first (`checkTarget`).
 */
export function guardedLookup(
  policy?: TargetPolicy | ResolvedTargetPolicy,
  resolve: Resolver = defaultResolver,
): LookupFunction {
  const resolved = policy === undefined ? DEFAULT_POLICY : targetPolicy(policy)
  return (hostname, options, callback) => {
    const answer = (err: NodeJS.ErrnoException | null, found: { address: string; family: number }[] = []) => {
      const first = found[0]
      if (err !== null || first === undefined) {
        process.nextTick(callback, err ?? notFound(hostname), '', undefined)
      } else if (options.all === true) {
        process.nextTick(callback, null, found)
      } else {
        process.nextTick(callback, null, first.address, first.family)
      }
    }
    resolve(hostname).then(
      (addresses) => {
        const hostAllowed = resolved.allowsHost(hostname)
        const checked: { address: string; family: number }[] = []
        for (const { address } of addresses) {
          const range = resolved.blocked(address)
          if (range !== undefined && !hostAllowed) return answer(new BlockedAddressError(hostname, address, range))
          // Hand on the address as parsed, so that the connection cannot read it differently.
          const parsed = parseAddress(address)
          if (parsed === undefined) return answer(new BlockedAddressError(hostname, address, 'invalid'))
          checked.push({ address: parsed.toString(), family: parsed.kind() === 'ipv4' ? 4 : 6 })
        }
        const family = options.family === 'IPv4' ? 4 : options.family === 'IPv6' ? 6 : options.family
        answer(null, family === 4 || family === 6 ? checked.filter((a) => a.family === family) : checked)
      },
      (err: NodeJS.ErrnoException) => answer(err),
    )
  }
}

function notFound(hostname: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND', hostname })
}

/** A literal address in its usual forms (dotted quad or IPv6), IPv4-mapped IPv6 read as IPv4. */
function parseAddress(address: string): Address | undefined {
  const text = address.startsWith('[') && address.endsWith(']') ? address.slice(1, -1) : address
  if (!ipaddr.isValid(text)) return undefined
  return ipaddr.process(text)
}

const GLOBAL_UNICAST_V6 = ipaddr.parseCIDR('2000::/3')
const NAT64_WELL_KNOWN = ipaddr.parseCIDR('64:ff9b::/96')

/**
 * IPv4 is usable only when ipaddr.js calls it `unicast` (none of its special ranges: unspecified
 * 0/8, loopback 127/8, private 10/8 172.16/12 192.168/16, link-local 169.254/16 with the cloud
 * metadata 169.254.169.254, CGNAT 100.64/10, multicast 224/4, broadcast, reserved 240/4 and the
 * documentation and benchmarking nets, AS112, AMT). IPv6 likewise, and in 2000::/3; the forms that
 * carry an IPv4 address (mapped, translated, NAT64 64:ff9b::/96, 6to4, Teredo) are judged by the
 * IPv4 they carry, and the deprecated IPv4-compatible ::/96 is refused outright.
 */
function rangeOf(address: Address): string | undefined {
  if (address.kind() === 'ipv4') {
    const range = address.range()
    return range === 'unicast' ? undefined : range
  }
  const v6 = address as ipaddr.IPv6
  const range = v6.range()
  const p = v6.parts
  const v4 = (hi: number, lo: number) => new ipaddr.IPv4([hi >> 8, hi & 0xff, lo >> 8, lo & 0xff])
  let carried: ipaddr.IPv4[] | undefined
  if (range === 'ipv4Mapped' || range === 'rfc6145') carried = [v4(p[6]!, p[7]!)]
  else if (range === 'rfc6052' && v6.match(NAT64_WELL_KNOWN)) carried = [v4(p[6]!, p[7]!)]
  else if (range === '6to4') carried = [v4(p[1]!, p[2]!)]
  // Teredo: the server's address, then the client's, stored inverted.
  else if (range === 'teredo') carried = [v4(p[2]!, p[3]!), v4(p[6]! ^ 0xffff, p[7]! ^ 0xffff)]
  if (carried !== undefined) {
    for (const inner of carried) {
      const innerRange = rangeOf(inner)
      if (innerRange !== undefined) return `${range} ${innerRange}`
    }
    return undefined
  }
  if (range !== 'unicast') return range
  if (p.slice(0, 6).every((part) => part === 0)) return 'ipv4Compatible'
  return v6.match(GLOBAL_UNICAST_V6) ? undefined : 'unallocated'
}

function normaliseName(host: string): string {
  return host.toLowerCase().replace(/\.+$/, '')
}

function hostName(text: string, option: string): string {
  const name = normaliseName(text)
  let parsed: string | undefined
  try {
    parsed = new URL(`http://${name}/`).hostname
  } catch {
    parsed = undefined
  }
  // A name the URL parser rewrites (to an IPv4 address, to punycode...) would never match a URL's host.
  if (parsed !== name || name === '') {
    throw invalidOption(option, `must be a host name, an IP (in its usual form) or a CIDR, got '${text}'`)
  }
  return name
}
