import type { OutboxMessage } from '../core/store.js'
import type { Callback, CallbackStatus, DeliveryState, HistoryEvent } from '../core/types.js'

// What the stores' outboxes share: message ids and the callback status a new operation starts with.

/** The target of an operation's own callback; app-wide endpoints are named by their ids. */
export const CALLBACK_TARGET = 'callback'

/**
 * The id of the message about event `seq` of operation `operationId` for `target`: stable across
 * attempts, senders and restarts (the `webhook-id`), and unique, as an event makes one message per
 * target. The SQL stores build the same text in SQL.
 */
export const messageId = (operationId: string, seq: number, target: string) => `msg_${operationId}_${seq}_${target}`

/** Where a message goes after an attempt: `pending` again when retried, else by the attempt's answer. */
export const stateAfter = (ok: boolean, retryAt: number | undefined): DeliveryState =>
  retryAt !== undefined ? 'pending' : ok ? 'delivered' : 'failed'

/** The callback of a new operation, as the operation shows it before any message about it. */
export function newCallback(callback: Callback): Callback & CallbackStatus {
  return { ...structuredClone(callback), state: 'pending', attempts: 0 }
}

/** A message as the SQL stores' `outbox` tables hold it. */
export interface MessageRow {
  id: string
  operation_id: string
  seq: number
  event: HistoryEvent
  at: number
  target: string
  attempts: number
  sender: string
}

export const toMessage = (row: MessageRow): OutboxMessage => ({
  id: row.id,
  operationId: row.operation_id,
  seq: row.seq,
  event: row.event,
  at: row.at,
  target: row.target,
  attempts: row.attempts,
  sender: row.sender,
})
