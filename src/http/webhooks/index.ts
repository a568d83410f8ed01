// The webhook sender: where messages may go, how they are signed, when they are retried, and one
// attempt at sending. Framework-neutral; knows no store and no engine.
export {
  blockedRange,
  BLOCKED_ADDRESS,
  BlockedAddressError,
  checkTarget,
  guardedLookup,
  ResolvedTargetPolicy,
  targetPolicy,
  type Resolver,
  type TargetCheck,
  type TargetPolicy,
  type TargetRefusal,
} from './address.js'
export { signatureHeaders, webhookSigner, type SignatureHeaders, type Signer } from './sign.js'
export {
  parseRetryAfter,
  retrySchedule,
  type AttemptAnswer,
  type GiveUpReason,
  type NextAttempt,
  type ResolvedRetrySchedule,
  type RetrySchedule,
  type RetryScheduleOptions,
} from './schedule.js'
export {
  checkHeaders,
  webhookSender,
  type Send,
  type SenderOptions,
  type SendFailure,
  type SendResult,
  type WebhookMessage,
} from './send.js'
