import type { HistoryEntry } from './types.js'

/** What one attempt did, from the operation's history. */
export interface AttemptRecord {
  attempt: number
  worker: string
  startedAt: number
  endedAt?: number
  /** Missing while the attempt runs. */
  outcome?: 'succeeded' | 'failed' | 'canceled' | 'retry-scheduled' | 'released' | 'lease-lost'
  error?: HistoryEntry['error']
}

const ATTEMPT_ENDINGS = new Set(['succeeded', 'failed', 'canceled', 'retry-scheduled', 'released', 'lease-lost'])

/** The attempts of an operation, oldest first, read from its history. */
export function attemptsOf(history: HistoryEntry[]): AttemptRecord[] {
  const attempts: AttemptRecord[] = []
  for (const entry of history) {
    if (entry.event === 'started') {
      attempts.push({ attempt: entry.attempt, worker: entry.worker ?? '', startedAt: entry.at })
      continue
    }
    const open = attempts.find((a) => a.attempt === entry.attempt && a.outcome === undefined)
    if (open && ATTEMPT_ENDINGS.has(entry.event)) {
      open.endedAt = entry.at
      open.outcome = entry.event as NonNullable<AttemptRecord['outcome']>
      if (entry.error) open.error = entry.error
    }
  }
  return attempts
}
