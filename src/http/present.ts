import { invalidOption } from '../core/errors.js'
import { OPERATION_STATES, type OperationState } from '../core/operation.js'
import type { OperationResource } from './resource.js'

/** A JSON Schema (2020-12, as OpenAPI 3.1 takes it), e.g. a TypeBox schema. */
export type JsonSchema = Record<string, unknown>

/**
 * The operation resource as a presentation's `present` gets it: `state` in the presentation's
 * names, and what the request stored (`input`, and the `context` a `beforeQueue` hook attached),
 * which longrun's own body never shows: the app decides what of it its clients see.
 */
export type PresentedResource = Omit<OperationResource, 'state'> & {
  state: string
  input: unknown
  context: Record<string, unknown>
}

/** A page of operations as a presentation gets it. */
export interface PresentedPage {
  items: PresentedResource[]
  nextCursor: string | null
}

/**
 * How an async route or a mount shows its operations, to keep an existing API's contract: its own
 * body, its own state names, its own status codes.
 */
export interface Presentation {
  /**
   * The body in place of longrun's: it gets what longrun would answer (the operation resource, a
   * page `{ items, nextCursor }` or the stats), with `state` already renamed by `states`.
   */
  present?: (value: never) => unknown
  /** The schema of what `present` returns, for OpenAPI. */
  presentSchema?: JsonSchema
  /** State names on the wire, e.g. `{ succeeded: 'completed', canceled: 'cancelled' }`. */
  states?: Partial<Record<OperationState, string>>
  /** The HTTP status of a single-operation answer by the operation's state, e.g. `{ failed: 500 }`. */
  statusCodes?: Partial<Record<OperationState, number>>
}

/** Checks a presentation's options; `undefined` when none is given. */
export function resolvePresentation(where: string, given: Presentation): Presentation | undefined {
  const { present, presentSchema, states, statusCodes } = given
  if (present === undefined && presentSchema === undefined && states === undefined && statusCodes === undefined) {
    return undefined
  }
  if (present !== undefined && typeof present !== 'function')
    throw invalidOption(`${where}.present`, 'must be a function')
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
 * An operation resource as a presentation shows it: `state` renamed, then the app's `present`,
 * which also gets what the request stored.
 */
export function presentOne(
  presentation: Presentation | undefined,
  resource: { state: OperationState },
  op: Stored,
): unknown {
  if (!presentation) return resource
  const renamed = presentation.states ? { ...resource, state: stateName(presentation, resource.state) } : resource
  return presentation.present ? (presentation.present as (value: unknown) => unknown)(withStored(renamed, op)) : renamed
}

/** What a presentation gets of the stored operation besides its resource. */
type Stored = { input: unknown; context?: Record<string, unknown> }

const withStored = (resource: object, op: Stored) => ({ ...resource, input: op.input, context: op.context ?? {} })

/** A page as a presentation shows it: each item's state renamed, then the app's `present` of the page. */
export function presentPage<P extends { items: { state: OperationState }[] }>(
  presentation: Presentation | undefined,
  page: P,
  ops: readonly Stored[],
): unknown {
  if (!presentation) return page
  const items = page.items.map((item, i) => {
    const renamed = presentation.states ? { ...item, state: stateName(presentation, item.state) } : item
    return presentation.present ? withStored(renamed, ops[i]!) : renamed
  })
  const renamed = { ...page, items }
  return presentation.present ? (presentation.present as (value: unknown) => unknown)(renamed) : renamed
}

/** Anything else a presentation shows (stats): the app's `present`, if any. */
export function presentOther(presentation: Presentation | undefined, value: unknown): unknown {
  return presentation?.present ? (presentation.present as (value: unknown) => unknown)(value) : value
}

/** The status of a single-operation answer: the presentation's code for the state, else `fallback`. */
export const statusFor = (presentation: Presentation | undefined, state: OperationState, fallback: number): number =>
  presentation?.statusCodes?.[state] ?? fallback
