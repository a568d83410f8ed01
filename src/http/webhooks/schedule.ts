import { toMs, type Duration } from '../../core/duration.js'
import { invalidOption } from '../../core/errors.js'
import type { SendResult } from './send.js'

export interface RetryScheduleOptions {
  /**
   * The waits before each retry: the first after the first failed attempt, and so on; after a
   * failed attempt with no wait left, the message is given up. `[]` means a single attempt.
   * @default ['5s', '5m', '30m', '2h', '5h', '10h', '10h'] // 8 attempts over about 27.6 hours
   */
  delays?: readonly Duration[]
  /**
   * Each wait is multiplied by a factor drawn uniformly from `[1 - jitter, 1 + jitter)`, so that
   * messages that failed together do not come back together.
   * @default 0.2
   */
  jitter?: number
  /**
   * The longest `Retry-After` (of a 429 or 503) honoured: a longer one waits this long.
   * @default '24h'
   */
  maxRetryAfter?: Duration
  /** Uniform in `[0, 1)`. @default Math.random */
  random?: () => number
}

export interface ResolvedRetrySchedule {
  readonly delaysMs: readonly number[]
  readonly jitter: number
  readonly maxRetryAfterMs: number
}

/** What `nextAttempt` needs of an attempt's outcome: a `SendResult` does. */
export type AttemptAnswer = Pick<SendResult, 'ok' | 'status' | 'retryAfter' | 'failure'>

export type GiveUpReason =
  /** The receiver answered 410 Gone: stop sending to this endpoint altogether. */
  | 'gone'
  /** The target can never be sent to (`checkTarget` refused it). */
  | 'refused'
  /** The schedule's last attempt failed. */
  | 'exhausted'

export type NextAttempt =
  | { action: 'done' }
  | { action: 'retry'; retryAt: number; delayMs: number }
  | { action: 'give-up'; reason: GiveUpReason }

export interface RetrySchedule extends ResolvedRetrySchedule {
  /** Attempts in all, the first one included. */
  readonly maxAttempts: number
  /**
   * After the `attemptsSoFar`-th attempt (1 for the first) ended with `answer` at `now` (epoch
   * ms): `done` on a 2xx; `give-up` on 410 (`gone`), on a refused target (`refused`) or with no
   * wait left (`exhausted`); else `retry` at `retryAt`. The wait is the schedule's, jittered, or,
   * on a 429 or 503 with a valid `Retry-After`, exactly that (at most `maxRetryAfter`).
   */
  nextAttempt(attemptsSoFar: number, answer: AttemptAnswer, now: number): NextAttempt
}

const DEFAULTS = {
  delays: ['5s', '5m', '30m', '2h', '5h', '10h', '10h'],
  jitter: 0.2,
  maxRetryAfter: '24h',
} as const satisfies RetryScheduleOptions

export function retrySchedule(options: RetryScheduleOptions = {}): RetrySchedule {
  const delays = options.delays ?? DEFAULTS.delays
  if (!Array.isArray(delays)) throw invalidOption('delays', 'must be a list of durations')
  const delaysMs = Object.freeze(delays.map((delay, i) => toMs(`delays[${i}]`, delay)))
  const jitter = options.jitter ?? DEFAULTS.jitter
  if (!(jitter >= 0 && jitter < 1)) throw invalidOption('jitter', 'must be a number from 0 to less than 1')
  const maxRetryAfterMs = toMs('maxRetryAfter', options.maxRetryAfter ?? DEFAULTS.maxRetryAfter)
  const random = options.random ?? Math.random
  if (typeof random !== 'function') throw invalidOption('random', 'must be a function')

  return {
    delaysMs,
    jitter,
    maxRetryAfterMs,
    maxAttempts: delaysMs.length + 1,
    nextAttempt(attemptsSoFar, answer, now) {
      if (!Number.isInteger(attemptsSoFar) || attemptsSoFar < 1) {
        throw new RangeError(`attemptsSoFar must be a positive integer, got ${attemptsSoFar}`)
      }
      if (answer.ok) return { action: 'done' }
      if (answer.status === 410) return { action: 'give-up', reason: 'gone' }
      if (answer.failure === 'refused') return { action: 'give-up', reason: 'refused' }
      const base = delaysMs[attemptsSoFar - 1]
      if (base === undefined) return { action: 'give-up', reason: 'exhausted' }
      let delayMs = Math.round(base * (1 + jitter * (2 * random() - 1)))
      if ((answer.status === 429 || answer.status === 503) && answer.retryAfter !== undefined) {
        const asked = parseRetryAfter(answer.retryAfter, now)
        if (asked !== undefined) delayMs = Math.min(asked, maxRetryAfterMs)
      }
      return { action: 'retry', retryAt: now + delayMs, delayMs }
    },
  }
}

/**
 * A `Retry-After` value as a wait in milliseconds from `now`: delay-seconds (`120`) or an HTTP
 * date (`Wed, 21 Oct 2015 07:28:00 GMT`; a past one is 0). `undefined` when it is neither.
 */
export function parseRetryAfter(value: string, now: number): number | undefined {
  const text = value.trim()
  if (/^\d+$/.test(text)) return Number(text) * 1000
  // Every HTTP date form starts with the weekday: this keeps `Date.parse` from taking other texts.
  if (!/^[A-Za-z]{3,9},?\s/.test(text)) return undefined
  const at = Date.parse(text)
  return Number.isNaN(at) ? undefined : Math.max(0, at - now)
}
