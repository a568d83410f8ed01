import { isTerminal } from './operation.js'
import type { FeedPage, FeedQuery } from './store.js'
import type { HistoryEntry, Operation } from './types.js'

/** What following one operation reads: a caller's view of it (`OperationAccess`). */
export interface FollowSource {
  get(id: string): Promise<Operation>
  events(id: string, range: { after?: number; limit: number }): Promise<HistoryEntry[]>
  watch(id: string, listener: () => void, options?: { progress?: boolean }): () => void
}

/** What following many operations reads. */
export interface FeedSource {
  feed(query: Omit<FeedQuery, 'readable'>): Promise<FeedPage>
  watchAll(listener: (id: string) => void): () => void
}

export interface FollowOptions {
  /** Ends the following: the generator returns, the wait resolves. */
  signal: AbortSignal
  /** Reads again after this long without a change notice: changes of processes that send none. */
  pollMs: number
}

const PAGE = 100
const TERMINAL_EVENTS = new Set(['succeeded', 'failed', 'canceled'])

/**
 * The operation's events as they are committed, read from its durable log: `after` a `seq`, or,
 * without one, from its latest event on. Each batch comes with the operation as read after it.
 * Notices only say when to read again, so none is lost or repeated by a missed or doubled notice.
 * Ends after the terminal event of a finished operation, or when `signal` aborts.
 */
export async function* followOperation(
  source: FollowSource,
  id: string,
  after: number | undefined,
  options: FollowOptions,
): AsyncGenerator<{ entries: HistoryEntry[]; op: Operation }> {
  const bell = new Doorbell()
  const unwatch = source.watch(id, () => bell.ring())
  try {
    let cursor = after ?? (await latestSeq(source, id))
    while (!options.signal.aborted) {
      const entries = await source.events(id, { after: cursor, limit: PAGE })
      if (entries.length > 0) {
        const op = await source.get(id)
        cursor = entries[entries.length - 1]!.seq
        yield { entries, op }
        if (isTerminal(op.state) && TERMINAL_EVENTS.has(entries[entries.length - 1]!.event)) return
        if (entries.length === PAGE || isTerminal(op.state)) continue
      }
      await bell.wait(options.pollMs, options.signal)
    }
  } finally {
    unwatch()
  }
}

/** Just before the operation's latest event: a stream without a cursor starts by sending it. */
async function latestSeq(source: FollowSource, id: string): Promise<number> {
  let before = 0
  let last = 0
  for (;;) {
    const page = await source.events(id, { after: last, limit: 1_000 })
    if (page.length === 0) return before
    before = page.length > 1 ? page[page.length - 2]!.seq : last
    last = page[page.length - 1]!.seq
    if (page.length < 1_000) return before
  }
}

/** Pages of the feed as they are committed, from `after` (a feed cursor) or from now. */
export async function* followFeed(
  source: FeedSource,
  query: { after?: string; names?: string[] },
  options: FollowOptions,
): AsyncGenerator<FeedPage> {
  const bell = new Doorbell()
  const unwatch = source.watchAll(() => bell.ring())
  try {
    let cursor = query.after ?? (await source.feed({ limit: PAGE, ...query })).cursor
    while (!options.signal.aborted) {
      const page = await source.feed({ ...query, after: cursor, limit: PAGE })
      cursor = page.cursor
      if (page.entries.length > 0) yield page
      if (page.entries.length === PAGE) continue
      await bell.wait(options.pollMs, options.signal)
    }
  } finally {
    unwatch()
  }
}

/**
 * Resolves with the operation once it is finished, or as it is when `timeoutMs` has passed or
 * `signal` aborted, whichever comes first.
 */
export async function waitForOperation(
  source: FollowSource,
  id: string,
  timeoutMs: number,
  options: FollowOptions,
): Promise<Operation> {
  const deadline = Date.now() + timeoutMs
  const bell = new Doorbell()
  const unwatch = source.watch(id, () => bell.ring(), { progress: false })
  try {
    for (;;) {
      const op = await source.get(id)
      const left = deadline - Date.now()
      if (isTerminal(op.state) || left <= 0 || options.signal.aborted) return op
      await bell.wait(Math.min(options.pollMs, left), options.signal)
    }
  } finally {
    unwatch()
  }
}

/** A wake-up that is not lost when it rings before anyone waits. */
class Doorbell {
  #rung = false
  #wake: (() => void) | undefined

  ring(): void {
    this.#rung = true
    this.#wake?.()
  }

  /** Resolves at the next ring (at once if one came since the last wait), after `ms`, or on abort. */
  async wait(ms: number, signal: AbortSignal): Promise<void> {
    if (!this.#rung && !signal.aborted) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer)
          signal.removeEventListener('abort', done)
          this.#wake = undefined
          resolve()
        }
        const timer = setTimeout(done, ms)
        this.#wake = done
        signal.addEventListener('abort', done, { once: true })
      })
    }
    this.#rung = false
  }
}
