/**
 * The state machine of an operation, as data: its states, which action may move it from which
 * state to which, and the predicates built on that table. The engine checks its preconditions with
 * these predicates; every store enforces the same table in its compare-and-set writes, and the
 * store contract walks the table against each store.
 */

export type OperationState = 'queued' | 'running' | 'succeeded' | 'failed' | 'canceled'

export const OPERATION_STATES: readonly OperationState[] = ['queued', 'running', 'succeeded', 'failed', 'canceled']

export type TerminalState = 'succeeded' | 'failed' | 'canceled'

/** What can happen to an operation once it is stored; each is one write of the store seam. */
export type Action = 'claim' | 'settle' | 'release' | 'cancel' | 'retry' | 'delete'

/** Where an action may take an operation from each state it applies to; absent: it changes nothing. */
export const TRANSITIONS: Readonly<
  Record<Action, Readonly<Partial<Record<OperationState, readonly (OperationState | 'deleted')[]>>>>
> = {
  /** A worker takes it: when due, or when the lease of the worker running it expired (it died). */
  claim: { queued: ['running'], running: ['running'] },
  /** The attempt's outcome, under its lease; `queued` schedules another attempt. */
  settle: { running: ['succeeded', 'failed', 'canceled', 'queued'] },
  /** Given back under its lease, e.g. at shutdown. */
  release: { running: ['queued'] },
  /** Cancelable operations only: a queued one ends at once, a running one is asked to stop. */
  cancel: { queued: ['canceled'], running: ['running'] },
  /** Queued again with a fresh budget of attempts. */
  retry: { failed: ['queued'], canceled: ['queued'] },
  /** Removed with its history. */
  delete: { succeeded: ['deleted'], failed: ['deleted'], canceled: ['deleted'] },
}

/** Whether `action` applies to an operation in state `from`. */
export function allows(action: Action, from: OperationState): boolean {
  return TRANSITIONS[action][from] !== undefined
}

/** Succeeded, failed or canceled: nothing runs it any more (on the wire, `done: true`). */
export function isTerminal(state: OperationState): state is TerminalState {
  return state === 'succeeded' || state === 'failed' || state === 'canceled'
}

export function canCancel(op: { state: OperationState; cancelable: boolean }): boolean {
  return op.cancelable && allows('cancel', op.state)
}

export function canRetry(state: OperationState): boolean {
  return allows('retry', state)
}

export function canDelete(state: OperationState): boolean {
  return allows('delete', state)
}

/**
 * The `runAt` of an operation created to start later (a route's `start: 'manual'`): past any clock,
 * so that no claim finds it due until it is started.
 */
export const DEFERRED_RUN_AT = Number.MAX_SAFE_INTEGER

/** Created to start later and not started yet. */
export function isDeferred(op: { state: OperationState; runAt: number }): boolean {
  return op.state === 'queued' && op.runAt === DEFERRED_RUN_AT
}
