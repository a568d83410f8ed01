import { invalidOption, LongrunError } from '../core/errors.js'
import type { Callback, HistoryEvent } from '../core/types.js'
import { RESULT_TYPES } from './formats.js'
import { checkHeaders } from './webhooks/send.js'

/**
 * A route's callback settings (Pode's `-Callback*` parameters): where the operation's outcome is
 * sent when it ends. `url` and header values are fixed text, or OpenAPI runtime expressions over
 * the submitting request: `$request.body#/callbackUrl` (a JSON Pointer into the body),
 * `$request.query.cb`, `$request.header.X-Callback`, `$request.path.id`, alone or embedded in
 * braces (`https://hooks.example.com/{$request.path.id}`).
 */
export interface CallbackOptions {
  /** @default '$request.body#/callbackUrl' */
  url?: string
  /** @default 'POST' */
  method?: 'POST' | 'PUT'
  /** The body's format. @default 'application/json' */
  contentType?: Callback['contentType']
  headers?: Record<string, string>
  /** Whether the message carries the operation's result. @default false (as Pode's) */
  sendResult?: boolean
  /** The events that call back. @default the terminal ones: succeeded, failed, canceled */
  events?: HistoryEvent[]
}

export interface ResolvedCallback {
  url: string
  method: 'POST' | 'PUT'
  contentType: Callback['contentType']
  headers: Record<string, string>
  sendResult: boolean
  events: HistoryEvent[]
}

/** What a runtime expression reads: the request as the protocol received it. */
export interface CallbackRequest {
  body: unknown
  query: Record<string, unknown>
  headers: Record<string, string | string[] | undefined>
  params: Record<string, string>
}

export const TERMINAL_EVENTS: HistoryEvent[] = ['succeeded', 'failed', 'canceled']
const EVENTS: readonly HistoryEvent[] = [
  'submitted',
  'started',
  'succeeded',
  'failed',
  'canceled',
  'retry-scheduled',
  'released',
  'lease-lost',
  'cancel-requested',
  'retried',
  'progress',
]
const OPTIONS = new Set(['url', 'method', 'contentType', 'headers', 'sendResult', 'events'])

// `$request.body#/a/b`, `$request.query.x`, `$request.header.x`, `$request.path.x`
const EXPRESSION =
  /^\$request\.(body(?:#(\/[^{}]*)?)?|query\.([^{}.]+)|header\.([!#$%&'*+.^_`|~\w-]+)|path\.([^{}.]+))$/
const EMBEDDED = /\{(\$[^{}]+)\}/g

export function resolveCallbackOptions(route: string, options: CallbackOptions | true): ResolvedCallback {
  const given: CallbackOptions = options === true ? {} : options
  const at = `${route}.callback`
  if (typeof given !== 'object' || given === null) throw invalidOption(at, 'must be true or an object')
  for (const key of Object.keys(given)) {
    if (!OPTIONS.has(key)) throw invalidOption(`${at}.${key}`, `is not a callback option (${[...OPTIONS].join(', ')})`)
  }
  const url = given.url ?? '$request.body#/callbackUrl'
  checkTemplate(`${at}.url`, url)
  const method = given.method ?? 'POST'
  if (method !== 'POST' && method !== 'PUT') throw invalidOption(`${at}.method`, "must be 'POST' or 'PUT'")
  const contentType = given.contentType ?? 'application/json'
  if (!RESULT_TYPES.includes(contentType))
    throw invalidOption(`${at}.contentType`, `must be ${RESULT_TYPES.join(', ')}`)
  const headers = given.headers ?? {}
  // The sender's own check: valid names and values, none of the headers it sets itself.
  checkHeaders(headers, `${at}.headers`)
  for (const [name, value] of Object.entries(headers)) {
    checkTemplate(`${at}.headers.${name}`, value)
  }
  const events = given.events ?? TERMINAL_EVENTS
  if (!Array.isArray(events) || events.length === 0 || events.some((event) => !EVENTS.includes(event))) {
    throw invalidOption(`${at}.events`, `must list events among ${EVENTS.join(', ')}`)
  }
  return { url, method, contentType, headers, sendResult: given.sendResult === true, events: [...new Set(events)] }
}

function checkTemplate(at: string, template: unknown): void {
  if (typeof template !== 'string' || template === '') throw invalidOption(at, 'must be a non-empty string')
  if (template.startsWith('$')) {
    if (!EXPRESSION.test(template)) throw invalidOption(at, `'${template}' is not a runtime expression`)
    return
  }
  for (const [, expression] of template.matchAll(EMBEDDED)) {
    if (!EXPRESSION.test(expression!)) throw invalidOption(at, `'${expression}' is not a runtime expression`)
  }
}

export const invalidCallback = (why: string) =>
  new LongrunError('invalid-callback', `The callback ${why}.`, { extra: { field: 'callback' } })

/**
 * The operation's callback for this request; `undefined` when the URL's expression finds nothing
 * (the request asked for no callback). Refused (`invalid-callback`, 422) when a value the request
 * gave is not text.
 */
export function callbackFor(settings: ResolvedCallback, request: CallbackRequest): Callback | undefined {
  const url = expand(settings.url, request)
  if (url === undefined || url === '') return undefined
  const headers: Record<string, string> = {}
  for (const [name, template] of Object.entries(settings.headers)) {
    const value = expand(template, request)
    if (value === undefined) continue
    if (/[\r\n\0]/.test(value)) throw invalidCallback(`header '${name}' may not hold line breaks`)
    headers[name] = value
  }
  return { url, method: settings.method, contentType: settings.contentType, headers, sendResult: settings.sendResult }
}

/** A template with its expressions replaced; `undefined` when a whole-value expression finds nothing. */
function expand(template: string, request: CallbackRequest): string | undefined {
  if (template.startsWith('$')) return evaluate(template, request)
  return template.replace(EMBEDDED, (_, expression: string) => evaluate(expression, request) ?? '')
}

function evaluate(expression: string, request: CallbackRequest): string | undefined {
  const [, , pointer, query, header, path] = EXPRESSION.exec(expression)!
  let value: unknown
  if (query !== undefined) value = request.query[query]
  else if (header !== undefined) value = request.headers[header.toLowerCase()]
  else if (path !== undefined) value = request.params[path]
  else value = resolvePointer(request.body, pointer ?? '')
  if (value === undefined || value === null) return undefined
  if (typeof value !== 'string') throw invalidCallback(`expression ${expression} must find text, found ${typeof value}`)
  return value
}

/** RFC 6901: `/a/b~1c` is `body.a['b/c']`; own members only, never the prototype's. */
function resolvePointer(document: unknown, pointer: string): unknown {
  if (pointer === '') return document
  let value = document
  for (const token of pointer.slice(1).split('/')) {
    const key = token.replace(/~1/g, '/').replace(/~0/g, '~')
    if (typeof value !== 'object' || value === null || !Object.hasOwn(value, key)) return undefined
    value = (value as Record<string, unknown>)[key]
  }
  return value
}
