export { Engine, isValidOperationId } from './engine.js'
export type { IdempotencyRequest, Stats, StateCounts, Submitted, SubmitRequest } from './engine.js'
export type { EngineEvents } from './events.js'
export { attemptsOf, type AttemptRecord } from './history.js'
export type { EngineOptions } from './options.js'
export { OperationAccess, type OperationAccessPolicy } from './access.js'
export type { CleanupRun, CleanupStatus, CleanupTrigger } from './cleanup.js'
export type { AccessList, AccessPolicy, Permissions, Principal } from './permissions.js'
export type { OperationContext, OperationDefinition, RetryPolicy } from './definition.js'
export type { Duration } from './duration.js'
export {
  ERRORS,
  LongrunError,
  NonRetryableError,
  OperationAbortedError,
  OperationFailure,
  PROBLEM_TYPE_PREFIX,
  type AbortCause,
  type ErrorCode,
  type LongrunErrorOptions,
} from './errors.js'
export type { Logger } from './logger.js'
export {
  allows,
  canCancel,
  canDelete,
  canRetry,
  DEFERRED_RUN_AT,
  isDeferred,
  isTerminal,
  OPERATION_STATES,
  TRANSITIONS,
} from './operation.js'
export type { Action } from './operation.js'
export {
  hasEventFeed,
  hasEventLog,
  hasOutbox,
  isDeferrable,
  isExclusive,
  isPingable,
  isQueryable,
  isStamped,
  isTrimmable,
} from './store.js'
export { OPERATORS, parseCondition, QUERY_FIELDS } from './query.js'
export type { Condition, ConditionValue, FieldType, Operator, QueryField } from './query.js'
export type {
  Deferrable,
  DeliveryAttempt,
  Exclusive,
  EventFeed,
  EventLog,
  FeedEntry,
  FeedPage,
  FeedQuery,
  Outbox,
  OutboxMessage,
  Pingable,
  KeepCounts,
  Queryable,
  QuerySort,
  Stamped,
  Store,
  StoreNotice,
  Trimmable,
} from './store.js'
export * from './types.js'
