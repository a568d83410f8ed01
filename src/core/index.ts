export { attemptsOf, Engine, isValidOperationId } from './engine.js'
export type {
  AttemptRecord,
  EngineEvents,
  IdempotencyRequest,
  Stats,
  StateCounts,
  Submitted,
  SubmitRequest,
} from './engine.js'
export type { EngineOptions } from './options.js'
export { OperationAccess } from './access.js'
export type { AccessList, AccessPolicy, Permissions, Principal } from './access.js'
export type { OperationContext, OperationDefinition, RetryPolicy } from './definition.js'
export type { Duration } from './duration.js'
export { LongrunError, NonRetryableError, PROBLEM_TYPE_PREFIX } from './errors.js'
export type { Logger } from './logger.js'
export { OperationAbortedError, type AbortCause } from './runner.js'
export type { Store, StoreNotice } from './store.js'
export * from './types.js'
