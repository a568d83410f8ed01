import { invalidOption } from '../core/errors.js'
import type { TerminalState } from '../core/operation.js'
import { fieldType, inputPath, invalidCondition, QUERY_FIELDS, type Condition } from '../core/query.js'
import type { KeepCounts } from '../core/store.js'

// What every store's query shares: each condition reduced to one test with the semantics documented
// on QUERY_FIELDS, which the memory store evaluates and the SQL stores render. Keeping the reduction
// here is what keeps the three stores answering alike.

/** The resource fields held in a column (in the memory store: a property) of their own. */
export type ColumnField = Exclude<keyof typeof QUERY_FIELDS, 'progress.percent' | 'progress.step' | 'error.code'>

/** The columns of the resource fields in the SQL stores' `operations` tables. */
export const SQL_COLUMNS: Record<ColumnField, string> = {
  id: 'id',
  name: 'name',
  state: 'state',
  owner: 'owner',
  requestId: 'request_id',
  createdAt: 'created_at',
  startedAt: 'started_at',
  completedAt: 'completed_at',
  expiresAt: 'expires_at',
  runAt: 'run_at',
  cancelable: 'cancelable',
  cancelRequested: 'cancel_requested',
  attempt: 'attempt',
  maxAttempts: 'max_attempts',
  timeout: 'timeout_ms',
  'callback.state': 'callback_state',
}

/** The JS type of the values a column holds besides `null`. */
export type ValueType = 'string' | 'number' | 'boolean'

/** What a condition reads: a column, or a path into one of the operation's JSON documents. */
export type Target =
  | { kind: 'column'; field: ColumnField; type: ValueType }
  | { kind: 'json'; document: 'input' | 'progress' | 'error'; path: string[] }

export type Comparison = 'eq' | 'gt' | 'lt' | 'ge' | 'le'

/**
 * One condition as a positive test and whether it is negated: `ne`, `notlike` and `notin` are the
 * negations of `eq`, `like` and `in`, so a store that makes each positive test true or false (never
 * SQL NULL) before negating it gets the exact complements the semantics ask for.
 */
export type Plan =
  | { kind: 'constant'; matches: boolean }
  /** The field has no value (missing, SQL NULL or JSON null). */
  | { kind: 'null'; target: Target; negate: boolean }
  /** The field holds a value of `value`'s type that compares so with it. */
  | { kind: 'compare'; target: Target; op: Comparison; value: string | number | boolean; negate: boolean }
  /** The field holds a string matching `pattern` (`*`, `?`; ASCII letters in either case). */
  | { kind: 'like'; target: Target; pattern: string; negate: boolean }
  | { kind: 'in'; target: Target; values: string[]; negate: boolean }

const JSON_FIELDS: Record<string, Extract<Target, { kind: 'json' }>> = {
  'progress.percent': { kind: 'json', document: 'progress', path: ['percent'] },
  'progress.step': { kind: 'json', document: 'progress', path: ['step'] },
  'error.code': { kind: 'json', document: 'error', path: ['code'] },
}

const VALUE_TYPES = { string: 'string', state: 'string', time: 'number', number: 'number', boolean: 'boolean' } as const

/** What `field` reads; rejects a field that names none (`fieldType` checks input paths too). */
export function targetOf(field: string): Target {
  const type = fieldType(field)
  if (type === undefined) return { kind: 'json', document: 'input', path: inputPath(field as `input.${string}`) }
  return JSON_FIELDS[field] ?? { kind: 'column', field: field as ColumnField, type: VALUE_TYPES[type] }
}

const COMPARISONS: Record<string, Comparison> = { eq: 'eq', ne: 'eq', gt: 'gt', lt: 'lt', ge: 'ge', le: 'le' }

/** Reduces one condition; a condition no client could have made (an unknown operator, say) is refused. */
export function planCondition(condition: Condition): Plan {
  const { field, op, value } = condition
  const target = targetOf(field)
  if (op === 'in' || op === 'notin') {
    if (field !== 'name' || !Array.isArray(value) || !value.every((v) => typeof v === 'string')) {
      throw invalidCondition(field, `cannot use '${op}' (only 'name' with a list of names can)`)
    }
    return { kind: 'in', target, values: value, negate: op === 'notin' }
  }
  if (Array.isArray(value)) throw invalidCondition(field, `needs a single value for '${op}'`)
  if (op === 'like' || op === 'notlike') {
    if (typeof value !== 'string') throw invalidCondition(field, `needs a string pattern for '${op}'`)
    const negate = op === 'notlike'
    // A column of numbers or booleans never holds a string.
    if (target.kind === 'column' && target.type !== 'string') return { kind: 'constant', matches: negate }
    return { kind: 'like', target, pattern: value, negate }
  }
  const comparison = COMPARISONS[op]
  if (comparison === undefined) throw invalidCondition(field, `has an unknown operator '${String(op)}'`)
  const negate = op === 'ne'
  if (value === null)
    return comparison === 'eq' ? { kind: 'null', target, negate } : { kind: 'constant', matches: false }
  if (typeof value === 'number' ? !Number.isFinite(value) : typeof value !== 'string' && typeof value !== 'boolean') {
    throw invalidCondition(field, 'needs a string, number, boolean or null')
  }
  // A value of another type than the column's never compares (SQL would convert it: not here).
  if (target.kind === 'column' && typeof value !== target.type) return { kind: 'constant', matches: negate }
  return { kind: 'compare', target, op: comparison, value, negate }
}

/** ASCII letters in lower case, every other character as it is: the only case folding of `like`. */
export function foldAscii(text: string): string {
  return text.replace(/[A-Z]+/g, (letters) => letters.toLowerCase())
}

/** A `like` pattern as a SQL LIKE pattern with `ESCAPE '\'`: `%`, `_` and `\` stand for themselves. */
export function sqlLikePattern(pattern: string): string {
  return pattern.replace(/[\\%_*?]/g, (c) => (c === '*' ? '%' : c === '?' ? '_' : `\\${c}`))
}

/** A `like` pattern as a regular expression over ASCII-folded text (see `foldAscii`). */
export function likeRegExp(pattern: string): RegExp {
  const source = [...foldAscii(pattern)]
    .map((c) => (c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[\\^$.*+?()[\]{}|]/g, '\\$&')))
    .join('')
  // `u`: `?` is one code point, as one character is in SQL; `s`: wildcards match line breaks too.
  return new RegExp(`^${source}$`, 'su')
}

/**
 * Orders strings by code point, as SQLite's BINARY and PostgreSQL's "C" collations order UTF-8:
 * JS's `<` compares UTF-16 code units, which puts U+E000–U+FFFF after the astral planes.
 */
export function compareCodePoints(a: string, b: string): number {
  const length = Math.min(a.length, b.length)
  for (let i = 0; i < length; i++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(i)
    if (x !== y) return codePointRank(x) - codePointRank(y)
  }
  return a.length - b.length
}

// Surrogates (astral code points) above U+E000–U+FFFF, which move down to make room.
const codePointRank = (unit: number) => (unit >= 0xe000 ? unit - 0x800 : unit >= 0xd800 ? unit + 0x2000 : unit)

/**
 * The terminal states `trim` keeps a count of, with that count: a whole number, at least 0. A count
 * that is not a number (or is infinite) keeps everything.
 */
export function keptCounts(keep: KeepCounts): [TerminalState, number][] {
  const kept: [TerminalState, number][] = []
  for (const state of ['succeeded', 'failed', 'canceled'] as const) {
    const count = keep[state]
    if (count === undefined) continue
    if (typeof count !== 'number' || Number.isNaN(count) || count < 0) {
      throw invalidOption(`keep.${state}`, 'must be a number of operations, 0 or more')
    }
    if (Number.isFinite(count)) kept.push([state, Math.floor(count)])
  }
  return kept
}
