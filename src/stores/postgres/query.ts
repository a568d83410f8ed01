import type { Condition } from '../../core/query.js'
import {
  foldAscii,
  planCondition,
  sqlLikePattern,
  SQL_COLUMNS,
  type Comparison,
  type Plan,
  type Target,
} from '../query.js'

// Conditions as PostgreSQL SQL with `$n` arguments, with the semantics of QUERY_FIELDS. PostgreSQL
// orders text by the database's collation and jsonb across types, so: text compares COLLATE "C" (by
// code point, as SQLite and JS do), JSON values are told apart by jsonb_typeof first, and `like`
// folds ASCII letters only with translate() (ILIKE and lower() would fold other letters too).

const OPERATORS: Record<Comparison, string> = { eq: '=', gt: '>', lt: '<', ge: '>=', le: '<=' }

const JSON_TYPES = { string: 'string', number: 'number', boolean: 'boolean' } as const

const fold = (text: string) => `translate(${text}, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')`

/** Every condition as one SQL term each, for `AND`; `arg` binds a value and answers its `$n`. */
export function conditionTerms(where: readonly Condition[], arg: (value: unknown) => string): string[] {
  return where.map((condition) => term(planCondition(condition), arg))
}

function term(plan: Plan, arg: (value: unknown) => string): string {
  if (plan.kind === 'constant') return plan.matches ? 'TRUE' : 'FALSE'
  const positive = test(plan, arg)
  // A positive test can be NULL (a NULL column compares to nothing): its complement must be TRUE then.
  return plan.negate ? `NOT coalesce(${positive}, false)` : positive
}

function test(plan: Exclude<Plan, { kind: 'constant' }>, arg: (value: unknown) => string): string {
  const { target } = plan
  if (plan.kind === 'in') return `${column(target)} = ANY(${arg(plan.values)}::text[])`
  if (target.kind === 'column') {
    const column = SQL_COLUMNS[target.field]
    switch (plan.kind) {
      case 'null':
        return `${column} IS NULL`
      case 'like':
        return `(${fold(column)} COLLATE "C" LIKE ${arg(foldAscii(sqlLikePattern(plan.pattern)))}::text ESCAPE '\\')`
      case 'compare':
        return `(${compareColumn(column, plan.op, plan.value, arg)})`
    }
  }
  // The path is bound once, and read as jsonb (`#>`) or as text (`#>>`).
  const path = `${arg(target.path)}::text[]`
  const json = `${target.document} #> ${path}`
  const text = `${target.document} #>> ${path}`
  switch (plan.kind) {
    case 'null':
      return `coalesce(jsonb_typeof(${json}), 'null') = 'null'`
    case 'like':
      return `(jsonb_typeof(${json}) = 'string' AND ${fold(text)} COLLATE "C" LIKE ${arg(
        foldAscii(sqlLikePattern(plan.pattern)),
      )}::text ESCAPE '\\')`
    case 'compare': {
      const { op, value } = plan
      const type = JSON_TYPES[typeof value as keyof typeof JSON_TYPES]
      // Strings as text by code point; numbers and booleans as jsonb, which orders them by value.
      const compared =
        typeof value === 'string'
          ? `${text} COLLATE "C" ${OPERATORS[op]} ${arg(value)}::text`
          : `${json} ${OPERATORS[op]} ${arg(JSON.stringify(value))}::jsonb`
      return `(jsonb_typeof(${json}) = '${type}' AND ${compared})`
    }
  }
}

function compareColumn(column: string, op: Comparison, value: string | number | boolean, arg: (v: unknown) => string) {
  if (typeof value === 'string') {
    // Equality is the same in every deterministic collation, and this one can use the indexes.
    return op === 'eq'
      ? `${column} = ${arg(value)}::text`
      : `${column} COLLATE "C" ${OPERATORS[op]} ${arg(value)}::text`
  }
  if (typeof value === 'boolean') return `${column} ${OPERATORS[op]} ${arg(value)}::boolean`
  // A whole number as BIGINT keeps the indexes of the integer columns usable; others compare as float8.
  return Number.isSafeInteger(value)
    ? `${column} ${OPERATORS[op]} ${arg(value)}::bigint`
    : `${column}::float8 ${OPERATORS[op]} ${arg(value)}::float8`
}

function column(target: Target): string {
  if (target.kind !== 'column') throw new Error('a set of values applies to a column only')
  return SQL_COLUMNS[target.field]
}
