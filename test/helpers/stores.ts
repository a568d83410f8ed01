import type { NewOperation } from '../../src/core/types.js'

/** The injected "now" the store tests start from: stores must never read their own clock. */
export const T0 = 1_700_000_000_000

/** A new operation of name `work`, its input naming its id. */
export const newOp = (id: string, overrides: Partial<NewOperation> = {}): NewOperation => ({
  id,
  name: 'work',
  owner: null,
  input: { id },
  params: {},
  query: {},
  headers: {},
  maxAttempts: 1,
  cancelable: true,
  timeoutMs: null,
  createdAt: T0,
  ...overrides,
})

/** What `promise` rejects with; fails when it resolves. */
export async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise
  } catch (err) {
    return err
  }
  throw new Error('expected a rejection')
}
