import { invalidOption } from '../core/errors.js'
import { OPERATION_STATES, type OperationState } from '../core/operation.js'
import type { Presentation } from './mounts.js'

export type { Presentation } from './mounts.js'

/** Checks a presentation's options; `undefined` when none is given. */
export function resolvePresentation(where: string, given: Presentation): Presentation | undefined {
  const { present, presentSchema, states, statusCodes } = given
  if (present === undefined && presentSchema === undefined && states === undefined && statusCodes === undefined) {
    return undefined
  }
  if (present !== undefined && typeof present !== 'function') throw invalidOption(`${where}.present`, 'must be a function')
  if (presentSchema !== undefined && (typeof presentSchema !== 'object' || presentSchema === null)) {
    throw invalidOption(`${where}.presentSchema`, 'must be a JSON Schema object')
  }
  if (presentSchema !== undefined && present === undefined) {
    throw invalidOption(`${where}.presentSchema`, 'documents what `present` returns: give `present` too')
  }
  checkStateMap(`${where}.states`, states, (name) => typeof name === 'string' && name !== '', 'a non-empty string')
  checkStateMap(
    `${where}.statusCodes`,
    statusCodes,
    (code) => Number.isInteger(code) && (code as number) >= 200 && (code as number) <= 599,
    'an HTTP status from 200 to 599',
  )
  return {
    ...(present ? { present } : {}),
    ...(presentSchema ? { presentSchema } : {}),
    ...(states ? { states: { ...states } } : {}),
    ...(statusCodes ? { statusCodes: { ...statusCodes } } : {}),
  }
}

function checkStateMap(name: string, map: unknown, valid: (value: unknown) => boolean, what: string): void {
  if (map === undefined) return
  if (typeof map !== 'object' || map === null || Array.isArray(map)) {
    throw invalidOption(name, 'must map states to values')
  }
  for (const [state, value] of Object.entries(map)) {
    if (!OPERATION_STATES.includes(state as OperationState)) {
      throw invalidOption(`${name}.${state}`, `is not a state (${OPERATION_STATES.join(', ')})`)
    }
    if (!valid(value)) throw invalidOption(`${name}.${state}`, `must be ${what}`)
  }
}

/** The wire name of `state` under a presentation. */
export const stateName = (presentation: Presentation | undefined, state: OperationState): string =>
  presentation?.states?.[state] ?? state

/**
 * An operation resource (or anything with a `state`) as a presentation shows it: `state` renamed,
 * then the app's `present`.
 */
export function presentOne(presentation: Presentation | undefined, resource: { state: OperationState }): unknown {
  if (!presentation) return resource
  const renamed = presentation.states ? { ...resource, state: stateName(presentation, resource.state) } : resource
  return presentation.present ? (presentation.present as (value: unknown) => unknown)(renamed) : renamed
}

/** A page as a presentation shows it: each item's state renamed, then the app's `present` of the page. */
export function presentPage<P extends { items: { state: OperationState }[] }>(
  presentation: Presentation | undefined,
  page: P,
): unknown {
  if (!presentation) return page
  const renamed = presentation.states
    ? { ...page, items: page.items.map((item) => ({ ...item, state: stateName(presentation, item.state) })) }
    : page
  return presentation.present ? (presentation.present as (value: unknown) => unknown)(renamed) : renamed
}

/** Anything else a presentation shows (stats): the app's `present`, if any. */
export function presentOther(presentation: Presentation | undefined, value: unknown): unknown {
  return presentation?.present ? (presentation.present as (value: unknown) => unknown)(value) : value
}

/** The status of a single-operation answer: the presentation's code for the state, else `fallback`. */
export const statusFor = (presentation: Presentation | undefined, state: OperationState, fallback: number): number =>
  presentation?.statusCodes?.[state] ?? fallback
