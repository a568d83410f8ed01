import type { Condition } from '../../core/query.js'
import type { Operation } from '../../core/types.js'
import {
  compareCodePoints,
  foldAscii,
  likeRegExp,
  planCondition,
  type ColumnField,
  type Plan,
  type Target,
} from '../query.js'

// Conditions evaluated on operations in memory, with the semantics of QUERY_FIELDS as the SQL
// stores render them: each condition is planned once per query, then tested on every operation.

type Value = string | number | boolean | null | object

const PROPERTIES: Record<Exclude<ColumnField, 'callback.state'>, keyof Operation> = {
  id: 'id',
  name: 'name',
  state: 'state',
  owner: 'owner',
  requestId: 'requestId',
  createdAt: 'createdAt',
  startedAt: 'startedAt',
  completedAt: 'completedAt',
  expiresAt: 'expiresAt',
  runAt: 'runAt',
  cancelable: 'cancelable',
  cancelRequested: 'cancelRequested',
  attempt: 'attempt',
  maxAttempts: 'maxAttempts',
  timeout: 'timeoutMs',
}

/** A test of every condition (AND-joined) on an operation. */
export function matcher(where: readonly Condition[]): (op: Operation) => boolean {
  const tests = where.map((condition) => test(planCondition(condition)))
  return (op) => tests.every((matches) => matches(op))
}

function test(plan: Plan): (op: Operation) => boolean {
  if (plan.kind === 'constant') return () => plan.matches
  const read = reader(plan.target)
  let positive: (value: Value) => boolean
  switch (plan.kind) {
    case 'null':
      positive = (value) => value === null
      break
    case 'in': {
      const values = new Set(plan.values)
      positive = (value) => typeof value === 'string' && values.has(value)
      break
    }
    case 'like': {
      const pattern = likeRegExp(plan.pattern)
      // Folded as the pattern is: ASCII letters only.
      positive = (value) => typeof value === 'string' && pattern.test(foldAscii(value))
      break
    }
    case 'compare': {
      const { op, value: wanted } = plan
      positive = (value) => {
        if (typeof value !== typeof wanted || value === null) return false
        const order =
          typeof wanted === 'string'
            ? compareCodePoints(value as string, wanted)
            : Number(value as number | boolean) - Number(wanted)
        return op === 'eq'
          ? order === 0
          : op === 'gt'
            ? order > 0
            : op === 'lt'
              ? order < 0
              : op === 'ge'
                ? order >= 0
                : order <= 0
      }
      break
    }
  }
  const { negate } = plan
  return (op) => positive(read(op)) !== negate
}

function reader(target: Target): (op: Operation) => Value {
  if (target.kind === 'column') {
    if (target.field === 'callback.state') return (op) => op.callback?.state ?? null
    const property = PROPERTIES[target.field]
    return (op) => (op[property] as Value | undefined) ?? null
  }
  const { document, path } = target
  return (op) => {
    let value: unknown = op[document]
    for (const key of path) {
      // Members of objects only, own ones only: arrays have no named members in JSON paths.
      if (typeof value !== 'object' || value === null || Array.isArray(value) || !Object.hasOwn(value, key)) return null
      value = (value as Record<string, unknown>)[key]
    }
    // What JSON would store: no `undefined`, and `null` for numbers it cannot write.
    if (value === undefined || (typeof value === 'number' && !Number.isFinite(value))) return null
    return value as Value
  }
}
