import { LongrunError } from './errors.js'
import { OPERATION_STATES } from './operation.js'

/**
 * The fields a query can filter operations on, by the names clients see in the operation resource,
 * and how their values compare. `input.<path>` reaches into the operation's input besides these.
 *
 * Semantics every store implements alike (the store contract checks them):
 * - A field without a value (no `startedAt` yet, an anonymous `owner`, `error.code` without an error,
 *   no `timeout`, an input path that is missing or JSON `null`) is `null`.
 * - `eq` matches a value of the same type that is equal; `eq null` matches a field without a value.
 * - `gt`, `lt`, `ge`, `le` match values of the same type only, never `null`: numbers and times by
 *   value, strings by code point, `false < true`.
 * - `like` matches strings only: `*` any run of characters, `?` exactly one, every other character
 *   (`%` and `_` too) itself; ASCII letters match either case, other characters exactly.
 * - `ne`, `notlike` and `notin` are exact complements of `eq`, `like` and `in`: they also match
 *   fields without a value and values of another type.
 * - An input value that is a JSON object or array is a type of its own: never `null`, never
 *   matched by `eq`, an ordering or `like`; so only `ne` and `notlike` match it.
 */
export const QUERY_FIELDS = {
  id: 'string',
  name: 'string',
  state: 'state',
  owner: 'string',
  requestId: 'string',
  createdAt: 'time',
  startedAt: 'time',
  completedAt: 'time',
  expiresAt: 'time',
  runAt: 'time',
  cancelable: 'boolean',
  cancelRequested: 'boolean',
  attempt: 'number',
  maxAttempts: 'number',
  /** The per-attempt time limit in milliseconds (`Operation.timeoutMs`). */
  timeout: 'number',
  'progress.percent': 'number',
  'progress.step': 'string',
  'error.code': 'string',
  /** How the operation's callback is doing: `pending`, `delivering`, `delivered`, `failed`; `null` without one. */
  'callback.state': 'string',
} as const

export type FieldType = (typeof QUERY_FIELDS)[keyof typeof QUERY_FIELDS]

export type ResourceField = keyof typeof QUERY_FIELDS

/** A field of the operation, or `input.` and a dotted path into its input. */
export type QueryField = ResourceField | `input.${string}`

/** The operators of a query, as Pode names them (case-insensitive over HTTP). */
export const OPERATORS = ['eq', 'ne', 'gt', 'lt', 'ge', 'le', 'like', 'notlike'] as const

export type Operator = (typeof OPERATORS)[number]

/** A comparable value; times are epoch milliseconds. */
export type ConditionValue = string | number | boolean | null

/** One condition of a query over operations, e.g. `{ field: 'input.customer', op: 'like', value: 'acme*' }`. */
export type Condition =
  | { field: QueryField; op: Operator; value: ConditionValue }
  /** Set membership, made by the HTTP layer (an `sseGroup` is the set of its routes' names). */
  | { field: 'name'; op: 'in' | 'notin'; value: string[] }

const ORDERED: readonly Operator[] = ['eq', 'ne', 'gt', 'lt', 'ge', 'le']
const OPERATORS_OF: Record<FieldType, readonly Operator[]> = {
  string: OPERATORS,
  state: ['eq', 'ne', 'like', 'notlike'],
  time: ORDERED,
  number: ORDERED,
  boolean: ['eq', 'ne'],
}

export const invalidCondition = (field: string, why: string) =>
  new LongrunError('invalid-condition', `Condition on '${field}' ${why}.`, { extra: { field } })

/** A path segment of an input field: JSON member names that SQL JSON paths can carry without quoting. */
const INPUT_PATH = /^input(\.[A-Za-z_$][\w$-]{0,63}){1,16}$/

/** The type `field` compares as, `undefined` for an input field (compared by its JSON type). */
export function fieldType(field: string): FieldType | undefined {
  if (Object.hasOwn(QUERY_FIELDS, field)) return QUERY_FIELDS[field as ResourceField]
  if (INPUT_PATH.test(field)) return undefined
  throw invalidCondition(field, 'names no field (see docs/query.md for the fields)')
}

/** The path segments of an input field, without `input`: `input.a.b` is `['a', 'b']`. */
export function inputPath(field: `input.${string}`): string[] {
  return field.split('.').slice(1)
}

/**
 * Checks and normalises one condition as a client wrote it. `value` is a JSON value, or the text of a
 * query-string parameter when `fromText`: then `123`, `true`, `false` and `null` are read as JSON
 * literals for fields that are not strings, and for input fields (where `"123"` in quotes is the
 * string). Times may be ISO 8601 strings or epoch milliseconds.
 */
export function parseCondition(field: string, op: string, value: unknown, fromText = false): Condition {
  const type = fieldType(field)
  const operator = op.toLowerCase()
  if (!(OPERATORS as readonly string[]).includes(operator)) {
    throw invalidCondition(field, `has an unknown operator '${op}' (one of ${OPERATORS.join(', ')})`)
  }
  const allowed = type === undefined ? OPERATORS : OPERATORS_OF[type]
  if (!allowed.includes(operator as Operator)) {
    throw invalidCondition(field, `cannot use '${operator}' (one of ${allowed.join(', ')})`)
  }
  const text = fromText && typeof value === 'string' && (type === undefined || type !== 'string')
  const literal = text ? readLiteral(value) : value
  if (operator === 'like' || operator === 'notlike') {
    if (typeof value !== 'string') throw invalidCondition(field, `needs a string pattern for '${operator}'`)
    return { field: field as QueryField, op: operator, value }
  }
  return { field: field as QueryField, op: operator as Operator, value: typedValue(field, type, literal) }
}

function typedValue(field: string, type: FieldType | undefined, value: unknown): ConditionValue {
  if (value === null) return null
  switch (type) {
    case undefined:
      if (typeof value === 'string' || typeof value === 'boolean') return value
      if (typeof value === 'number' && Number.isFinite(value)) return value
      throw invalidCondition(field, 'needs a string, number, boolean or null')
    case 'string':
      if (typeof value === 'string') return value
      throw invalidCondition(field, 'needs a string')
    case 'state':
      if (typeof value === 'string' && (OPERATION_STATES as readonly string[]).includes(value)) return value
      throw invalidCondition(field, `needs a state (one of ${OPERATION_STATES.join(', ')})`)
    case 'boolean':
      if (typeof value === 'boolean') return value
      throw invalidCondition(field, 'needs true or false')
    case 'number':
      if (typeof value === 'number' && Number.isFinite(value)) return value
      throw invalidCondition(field, 'needs a number')
    case 'time': {
      const ms = typeof value === 'number' ? value : typeof value === 'string' ? Date.parse(value) : NaN
      if (Number.isFinite(ms) && (typeof value === 'number' || ISO_TIME.test(value as string))) return ms
      throw invalidCondition(field, 'needs an ISO 8601 time (e.g. 2026-01-01T00:00:00Z) or epoch milliseconds')
    }
  }
}

const ISO_TIME = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?$/

/** `123`, `true`, `false` and `null` as JSON literals, a `"quoted"` string as that string, else the text. */
function readLiteral(text: string): unknown {
  if (text === 'true') return true
  if (text === 'false') return false
  if (text === 'null') return null
  if (/^-?\d+(\.\d+)?([eE][+-]?\d+)?$/.test(text)) return Number(text)
  if (text.length >= 2 && text.startsWith('"') && text.endsWith('"')) return text.slice(1, -1)
  return text
}
