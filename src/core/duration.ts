import { parse } from '@lukeed/ms'
import { invalidOption } from './errors.js'

type ShortUnit = 'ms' | 's' | 'm' | 'h' | 'd' | 'w'
type LongUnit = 'millisecond' | 'second' | 'minute' | 'hour' | 'day' | 'week'

/**
 * Milliseconds as a number, or a text in `@lukeed/ms`'s grammar: `'500ms'`, `'30s'`, `'10m'`,
 * `'2h'`, `'7d'`, `'1 minute'`, `'2 hours'`. The same forms for every option that takes a duration.
 */
export type Duration = number | `${number}${ShortUnit}` | `${number} ${LongUnit}` | `${number} ${LongUnit}s`

export function toMs(option: string, value: Duration): number {
  // `parse` reads a bare number as milliseconds, but answers '0' with undefined.
  const ms = typeof value === 'number' ? value : /^\d+(\.\d+)?$/.test(value) ? Number(value) : parse(value)
  if (ms === undefined) {
    throw invalidOption(option, `must be milliseconds or a duration like '30s' or '1 minute', got '${String(value)}'`)
  }
  if (!Number.isFinite(ms) || ms < 0) throw invalidOption(option, 'must be a finite, non-negative duration')
  return Math.round(ms)
}
