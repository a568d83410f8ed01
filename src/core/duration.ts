import { invalidOption } from './errors.js'

/** Milliseconds as a number, or a string such as `'500ms'`, `'30s'`, `'10m'`, `'2h'`, `'7d'`. */
export type Duration = number | `${number}${'ms' | 's' | 'm' | 'h' | 'd'}`

const UNIT_MS = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const

export function toMs(option: string, value: Duration): number {
  let ms: number
  if (typeof value === 'number') {
    ms = value
  } else {
    const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(value)
    if (!match) throw invalidOption(option, `must be milliseconds or a duration like '30s', got '${value}'`)
    ms = Number(match[1]) * UNIT_MS[match[2] as keyof typeof UNIT_MS]
  }
  if (!Number.isFinite(ms) || ms < 0) throw invalidOption(option, 'must be a finite, non-negative duration')
  return Math.round(ms)
}
