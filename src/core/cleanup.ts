import type { ResolvedEngineOptions } from './options.js'
import { isExclusive, isTrimmable, type KeepCounts } from './store.js'

// Small purge batches, with the event loop let go between them: a store whose writes block the
// process (SQLite) serves requests between batches instead of stalling for the whole run. A trim
// call ranks every finished operation of its states however few it removes: fewer, larger calls.
const PURGE_BATCH = 200
const TRIM_BATCH = 5_000
const yieldToRequests = () => new Promise<void>((resolve) => setImmediate(resolve))

/** The name of the cross-process lock of the cleanup (`Exclusive.exclusively`). */
export const CLEANUP_LOCK = 'cleanup'

/** What started a run: the interval timer, or a caller (`POST {base}/cleanup`, `engine.cleanup()`). */
export type CleanupTrigger = 'schedule' | 'request'

/** One run of the cleanup; times are epoch milliseconds. */
export interface CleanupRun {
  trigger: CleanupTrigger
  startedAt: number
  endedAt: number
  /** Operations removed: past their `expiresAt` (retention), and beyond the `keep` counts. */
  removed: { expired: number; trimmed: number }
  /** Another process held the cleanup lock of a shared store: this one removed nothing. */
  skipped: boolean
  /** Why the run failed (what it removed before is counted), `null` when it did not. */
  error: string | null
}

export interface CleanupStatus {
  /** Whether runs are scheduled every `interval` in this process (it is a started worker). */
  active: boolean
  /** Whether a run is in progress in this process. */
  running: boolean
  /** Whether runs are single-flight across the processes sharing the store (`Exclusive`). */
  exclusive: boolean
  options: {
    /** Milliseconds between scheduled runs (`purgeInterval`). */
    interval: number
    /** Milliseconds finished operations are kept (`retention`). */
    retention: number
    /** Finished operations kept per owner and state, `null` for none (by time only). */
    keep: KeepCounts | null
  }
  /** The last run that ended in this process, `null` before the first. */
  lastRun: CleanupRun | null
}

/**
 * Removes finished operations that are no longer kept: those past their `expiresAt`, then, with
 * `keep`, each owner's oldest beyond the counts. Runs every `purgeInterval` once started, and on
 * request. Single-flight: a run asked for while one is in progress in this process is that run;
 * on a store shared by processes that is `Exclusive`, a run while another process holds the lock
 * is skipped and says so.
 */
export class Cleanup {
  readonly #opts: ResolvedEngineOptions
  #timer: NodeJS.Timeout | undefined
  #running: Promise<CleanupRun> | undefined
  #lastRun: CleanupRun | null = null

  constructor(opts: ResolvedEngineOptions) {
    this.#opts = opts
  }

  start(): void {
    this.#timer ??= setInterval(() => void this.run('schedule'), this.#opts.purgeIntervalMs)
  }

  /** Stops the schedule and waits for a run in progress: the store must not close under it. */
  async stop(): Promise<void> {
    clearInterval(this.#timer)
    this.#timer = undefined
    await this.#running
  }

  status(): CleanupStatus {
    const { purgeIntervalMs, retentionMs, keep, store } = this.#opts
    return {
      active: this.#timer !== undefined,
      running: this.#running !== undefined,
      exclusive: isExclusive(store),
      options: { interval: purgeIntervalMs, retention: retentionMs, keep: keep ? { ...keep } : null },
      lastRun: this.#lastRun && { ...this.#lastRun, removed: { ...this.#lastRun.removed } },
    }
  }

  /** Runs now, or answers the run in progress in this process once it ends. Never rejects. */
  run(trigger: CleanupTrigger = 'request'): Promise<CleanupRun> {
    this.#running ??= this.#run(trigger).finally(() => (this.#running = undefined))
    return this.#running
  }

  async #run(trigger: CleanupTrigger): Promise<CleanupRun> {
    const { store, clock, logger } = this.#opts
    const run: CleanupRun = {
      trigger,
      startedAt: clock(),
      endedAt: 0,
      removed: { expired: 0, trimmed: 0 },
      skipped: false,
      error: null,
    }
    try {
      if (isExclusive(store)) {
        run.skipped = (await store.exclusively(CLEANUP_LOCK, () => this.#remove(run))) === undefined
      } else {
        await this.#remove(run)
      }
    } catch (err) {
      run.error = err instanceof Error ? err.message : String(err)
      logger.error({ err, trigger, removed: run.removed }, 'longrun: cleanup failed')
    }
    run.endedAt = clock()
    const fields = { trigger, ...run.removed, durationMs: run.endedAt - run.startedAt }
    if (run.skipped) logger.info(fields, 'longrun: cleanup skipped: another process is running it')
    else if (run.error === null) {
      logger.info(
        fields,
        `longrun: cleanup removed ${run.removed.expired} expired and ${run.removed.trimmed} trimmed operations`,
      )
    }
    this.#lastRun = run
    return run
  }

  // Counts land in `run` as they are made: a failure halfway still reports what went.
  async #remove(run: CleanupRun): Promise<void> {
    const { store, clock, keep } = this.#opts
    const now = clock()
    for (let removed = PURGE_BATCH; removed === PURGE_BATCH; await yieldToRequests()) {
      removed = await store.purge(now, PURGE_BATCH)
      run.removed.expired += removed
    }
    if (!keep || !isTrimmable(store)) return
    for (let removed = TRIM_BATCH; removed === TRIM_BATCH; await yieldToRequests()) {
      removed = await store.trim(keep, TRIM_BATCH)
      run.removed.trimmed += removed
    }
  }
}
