import { LongrunError } from '../core/errors.js'

export const invalidQuery = (parameter: string, why: string) =>
  new LongrunError('invalid-query', `Query parameter '${parameter}' ${why}.`, { extra: { parameter } })

/** A query parameter that may be given at most once: its text, or `undefined` when absent. */
export function singleParameter(value: unknown, parameter: string): string | undefined {
  if (value === undefined) return undefined
  if (typeof value !== 'string') throw invalidQuery(parameter, 'must be given once')
  return value
}
