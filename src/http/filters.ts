import { fieldType, invalidCondition, parseCondition, type Condition } from '../core/query.js'
import { invalidQuery } from './query.js'

// The conditions of a query as HTTP carries them (docs/query.md): Pode's body form for
// `POST {base}/query`, and the query-string form for `GET {base}` and `GET {base}/stats`. Both
// end in `parseCondition`, so that one field, operator and value is read alike in either form.

/** A field that is not one of the operation's: the routes' `sseGroup`, as the set of their names. */
export const SSE_GROUP = 'sseGroup'

/** The names of the routes in an SSE group (none for a group no route is in). */
export type GroupNames = (group: string) => string[]

/**
 * The most conditions one query may have: each is a term of one SQL expression, and databases cap
 * its depth (SQLite: 1,000), so a longer list would fail in the store rather than be refused here.
 */
export const MAX_CONDITIONS = 50

/** `field[op]`: an operator in brackets after the field. */
const BRACKETED = /^(.+)\[([A-Za-z]+)\]$/

/**
 * The conditions of a body `{ "<field>": { "op": "<operator>", "value": <JSON value> } }`: every
 * member one condition, AND-joined. No body (`undefined`) is no condition.
 */
export function bodyConditions(body: unknown, groups: GroupNames): Condition[] {
  if (body === undefined) return []
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw invalidCondition('(body)', 'must be a JSON object of { "<field>": { "op": "<operator>", "value": ... } }')
  }
  const members = Object.entries(body as Record<string, unknown>)
  if (members.length > MAX_CONDITIONS) {
    throw invalidCondition('(body)', `has ${members.length} conditions: at most ${MAX_CONDITIONS}`)
  }
  return members.map(([field, member]) => {
    if (typeof member !== 'object' || member === null || Array.isArray(member)) {
      throw invalidCondition(field, 'must be { "op": "<operator>", "value": ... }')
    }
    const extra = Object.keys(member).filter((key) => key !== 'op' && key !== 'value')
    if (extra.length > 0) throw invalidCondition(field, `has members other than op and value (${extra.join(', ')})`)
    const { op, value } = member as { op?: unknown; value?: unknown }
    if (typeof op !== 'string')
      throw invalidCondition(field, 'needs an "op" string (eq, ne, gt, lt, ge, le, like, notlike)')
    if (!Object.hasOwn(member, 'value')) throw invalidCondition(field, 'needs a "value" (null for a missing one)')
    return condition(field, op, value, false, groups)
  })
}

/**
 * The conditions of a query string: `field=value` (`eq`) and `field[op]=value`, for every parameter
 * but the `reserved` ones, which the endpoint reads itself. A parameter given twice is two
 * conditions. A parameter that names no field: `invalid-query` naming it.
 */
export function queryConditions(
  query: Record<string, unknown>,
  reserved: readonly string[],
  groups: GroupNames,
): Condition[] {
  const conditions: Condition[] = []
  for (const [parameter, given] of Object.entries(query)) {
    if (reserved.includes(parameter)) continue
    const bracketed = BRACKETED.exec(parameter)
    const field = bracketed ? bracketed[1]! : parameter
    if (!isField(field)) throw invalidQuery(parameter, 'is neither a parameter nor a field (see docs/query.md)')
    // A query-string parser that nests brackets (`qs`) gives `field: { op: value }`.
    if (!bracketed && typeof given === 'object' && given !== null && !Array.isArray(given)) {
      for (const [op, value] of Object.entries(given)) {
        for (const text of texts(value, parameter)) conditions.push(condition(field, op, text, true, groups))
      }
      continue
    }
    const op = bracketed ? bracketed[2]! : 'eq'
    for (const text of texts(given, parameter)) conditions.push(condition(field, op, text, true, groups))
  }
  if (conditions.length > MAX_CONDITIONS) {
    throw invalidQuery('(conditions)', `are ${conditions.length}: at most ${MAX_CONDITIONS}`)
  }
  return conditions
}

function texts(value: unknown, parameter: string): string[] {
  const values = Array.isArray(value) ? value : [value]
  if (values.some((v) => typeof v !== 'string')) throw invalidQuery(parameter, 'must be text')
  return values as string[]
}

function isField(field: string): boolean {
  if (field === SSE_GROUP) return true
  try {
    fieldType(field)
    return true
  } catch {
    return false
  }
}

function condition(field: string, op: string, value: unknown, fromText: boolean, groups: GroupNames): Condition {
  if (field !== SSE_GROUP) return parseCondition(field, op, value, fromText)
  // A group is the set of its routes' names: `eq` is membership, `ne` its complement.
  const operator = op.toLowerCase()
  if (operator !== 'eq' && operator !== 'ne') throw invalidCondition(field, `cannot use '${op}' (one of eq, ne)`)
  if (typeof value !== 'string') throw invalidCondition(field, 'needs a group name')
  const names = groups(value)
  if (names.length === 0) throw invalidCondition(field, `names no route's sseGroup ('${value}')`)
  return { field: 'name', op: operator === 'eq' ? 'in' : 'notin', value: names }
}
