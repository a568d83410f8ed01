import type { Condition } from '../../core/query.js'
import { planCondition, sqlLikePattern, SQL_COLUMNS, type Comparison, type Plan, type Target } from '../query.js'

// Conditions as SQLite SQL with `?` arguments, with the semantics of QUERY_FIELDS: JSON values are
// told apart by json_type (json_extract answers 1 for `true`, and JSON text for objects), and LIKE
// already folds ASCII letters only. Text compares with the BINARY collation: by code point.

const OPERATORS: Record<Comparison, string> = { eq: '=', gt: '>', lt: '<', ge: '>=', le: '<=' }

const JSON_TYPES = { string: `('text')`, number: `('integer', 'real')`, boolean: `('true', 'false')` } as const

/** Every condition as one SQL term each, for `AND`, with their arguments in order. */
export function conditions(where: readonly Condition[]): { where: string[]; args: unknown[] } {
  const args: unknown[] = []
  return { where: where.map((condition) => term(planCondition(condition), args)), args }
}

function term(plan: Plan, args: unknown[]): string {
  if (plan.kind === 'constant') return plan.matches ? 'TRUE' : 'FALSE'
  const positive = test(plan, args)
  // A positive test can be NULL (a NULL column compares to nothing): its complement must be TRUE then.
  return plan.negate ? `NOT coalesce(${positive}, FALSE)` : positive
}

function test(plan: Exclude<Plan, { kind: 'constant' }>, args: unknown[]): string {
  const { target } = plan
  switch (plan.kind) {
    case 'null':
      if (target.kind === 'column') return `${SQL_COLUMNS[target.field]} IS NULL`
      return `coalesce(${jsonType(target, args)}, 'null') = 'null'`
    case 'in':
      if (plan.values.length === 0) return 'FALSE'
      args.push(...plan.values)
      return `${column(target)} IN (${plan.values.map(() => '?').join(', ')})`
    case 'like': {
      const typed = target.kind === 'json' ? `${jsonType(target, args)} = 'text' AND ` : ''
      const value = valueOf(target, args)
      args.push(sqlLikePattern(plan.pattern))
      return `(${typed}${value} LIKE ? ESCAPE '\\')`
    }
    case 'compare': {
      const { value } = plan
      const types = JSON_TYPES[typeof value as keyof typeof JSON_TYPES]
      const typed = target.kind === 'json' ? `${jsonType(target, args)} IN ${types} AND ` : ''
      const read = valueOf(target, args)
      // Booleans as SQLite stores them, in columns and from json_extract: 1 and 0.
      args.push(typeof value === 'boolean' ? Number(value) : value)
      return `(${typed}${read} ${OPERATORS[plan.op]} ?)`
    }
  }
}

function column(target: Target): string {
  if (target.kind !== 'column') throw new Error('a set of values applies to a column only')
  return SQL_COLUMNS[target.field]
}

function valueOf(target: Target, args: unknown[]): string {
  if (target.kind === 'column') return SQL_COLUMNS[target.field]
  args.push(jsonPath(target.path))
  return `json_extract(${target.document}, ?)`
}

function jsonType(target: Extract<Target, { kind: 'json' }>, args: unknown[]): string {
  args.push(jsonPath(target.path))
  return `json_type(${target.document}, ?)`
}

/** A JSON path with every member name quoted: `$."a"."b"`. Names never hold a `"` (see INPUT_PATH). */
function jsonPath(path: readonly string[]): string {
  if (path.some((key) => /["\\]/.test(key))) throw new Error('a JSON path member name holds a quote')
  return `$${path.map((key) => `."${key}"`).join('')}`
}
