import type { EventEmitter } from 'node:events'
import type { Logger } from './logger.js'
import type { Operation, Progress } from './types.js'

/**
 * What an engine emits. Every operation event carries the operation as it is after the change; each
 * is followed by `operation:changed` with its id, which is also all that changes made by other
 * processes (on stores with notices) emit: listen to that one to hear of every change.
 */
export type EngineEvents = {
  'operation:queued': [op: Operation]
  'operation:started': [op: Operation]
  'operation:progress': [op: Operation, progress: Progress]
  'operation:cancel-requested': [op: Operation]
  /** An attempt failed and the next one is scheduled: the operation is `queued` until `runAt`. */
  'operation:retrying': [op: Operation]
  /** The operation ended: `succeeded`, `failed` or `canceled`. */
  'operation:settled': [op: Operation]
  /** The operation changed, in this process or (stores with notices only) in another one. */
  'operation:changed': [id: string]
  /** A listener threw, or closing failed: logged, and reported here too when anyone listens. */
  error: [error: Error]
}

/**
 * Emits without letting a listener's exception escape: a listener that throws must not fail the
 * change that was already committed, nor skip what follows the emit (waking the runner). The error
 * is logged, and emitted as `error` when that event has listeners.
 */
export function safeEmit<K extends keyof EngineEvents>(
  emitter: EventEmitter<EngineEvents>,
  logger: Logger,
  event: K,
  ...args: EngineEvents[K]
): void {
  try {
    ;(emitter.emit as (event: K, ...args: EngineEvents[K]) => boolean).call(emitter, event, ...args)
  } catch (err) {
    logger.error({ err, event }, 'longrun: an event listener threw')
    if (event !== 'error' && emitter.listenerCount('error') > 0) {
      safeEmit(emitter, logger, 'error', err instanceof Error ? err : new Error(String(err)))
    }
  }
}
