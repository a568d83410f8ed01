import { backoffMs, type OperationContext, type ResolvedDefinition } from './definition.js'
import {
  canceledError,
  isRetryable,
  leaseLostError,
  OperationAbortedError,
  resultNotSerializableError,
  timeoutError,
  toOperationError,
  type AbortCause,
} from './errors.js'
import { logs, type Logger } from './logger.js'
import type { ResolvedEngineOptions } from './options.js'
import type { Lease, Operation, OperationError, Outcome, Progress } from './types.js'

type Ending =
  | { kind: 'returned'; result: unknown }
  | { kind: 'threw'; error: unknown }
  /** The handler ignored its aborted signal past the grace period. */
  | { kind: 'abandoned' }
  /** The handler was never called: the run was aborted (e.g. a cancel was requested) before it began. */
  | { kind: 'skipped' }
  /** The handler was not called: workers died running this operation `losses` times already. */
  | { kind: 'too-many-lease-losses'; losses: number }

interface Run {
  op: Operation
  lease: Lease
  def: ResolvedDefinition
  /** Made when the handler first reads `op.signal`: most never do, and one per run is not free. */
  controller?: AbortController
  abortedBy?: AbortCause
  ended: boolean
  /** Its concurrency slot was given back (when the handler ended, before its outcome is written). */
  freed?: boolean
  timers: NodeJS.Timeout[]
}

export interface RunnerHooks {
  started(op: Operation): void
  progressed(op: Operation, progress: Progress): void
  settled(op: Operation): void
}

/**
 * Claims due operations and runs their handlers, at most `concurrency` per definition in this
 * process. Every write it makes carries the run's lease, so a run that lost its lease changes nothing.
 */
export class Runner {
  readonly #opts: ResolvedEngineOptions
  readonly #definitions: ReadonlyMap<string, ResolvedDefinition>
  readonly #hooks: RunnerHooks
  readonly #active = new Map<string, Run>()
  readonly #busy = new Map<string, number>()
  #timers: NodeJS.Timeout[] = []
  #heartbeats: NodeJS.Timeout | undefined
  #ticking = false
  #ticked: Promise<void> = Promise.resolve()
  #again = false
  #started = false
  #stopping = false
  #drained: (() => void) | undefined

  constructor(opts: ResolvedEngineOptions, definitions: ReadonlyMap<string, ResolvedDefinition>, hooks: RunnerHooks) {
    this.#opts = opts
    this.#definitions = definitions
    this.#hooks = hooks
  }

  start(): void {
    this.#started = true
    this.#timers.push(setInterval(() => this.wake(), this.#opts.pollMs))
    this.#heartbeats = setInterval(() => this.#heartbeat(), this.#opts.heartbeatMs)
    this.wake()
  }

  /** Claims due work now rather than at the next poll. */
  wake(): void {
    // Before start() there are no heartbeats: a handler started then would lose its lease.
    if (this.#stopping || !this.#started) return
    this.#again = true
    if (this.#ticking) return
    this.#ticking = true
    this.#ticked = this.#tick()
  }

  /** A cancel was requested for `id`; aborts its run when this process holds it. */
  cancelRequested(id: string): void {
    const run = this.#active.get(id)
    if (run) this.#abort(run, 'cancel')
  }

  /** Stops claiming, aborts running handlers, waits up to the grace period, gives back what remains. */
  async stop(): Promise<void> {
    this.#stopping = true
    for (const timer of this.#timers.splice(0)) clearInterval(timer)
    await this.#ticked
    if (this.#active.size > 0) {
      const drained = new Promise<void>((resolve) => (this.#drained = resolve))
      for (const run of this.#active.values()) this.#abort(run, 'shutdown')
      await drained
    }
    // Only now: a handler winding down during the grace period must keep its lease.
    clearInterval(this.#heartbeats)
  }

  // Claims until no wake-up arrived during the last claim. `#ticking` is cleared with no await after
  // the loop's last check, so a wake-up is either seen by the loop or starts a new one: never lost.
  async #tick(): Promise<void> {
    try {
      while (this.#again && !this.#stopping) {
        // Let the rest of this turn free its slots first (outcomes settled together end together):
        // one claim for all of them, not one for the first and another for the rest.
        await new Promise<void>((resolve) => setImmediate(resolve))
        this.#again = false
        const wants = []
        for (const def of this.#definitions.values()) {
          const free = def.concurrency - (this.#busy.get(def.name) ?? 0)
          if (free > 0) wants.push({ name: def.name, limit: free })
        }
        if (wants.length === 0) return
        const { store, workerId, leaseMs, clock } = this.#opts
        const ops = await store.claim(workerId, wants, leaseMs, clock())
        if (this.#stopping) {
          // Claimed while stop() began: give them straight back rather than start them.
          await Promise.all(
            ops.map((op) => store.release({ id: op.id, attempt: op.attempt, worker: workerId }, clock())),
          )
          return
        }
        for (const op of ops) this.#start(op)
      }
    } catch (err) {
      this.#opts.logger.error({ err }, 'longrun: claiming operations failed')
    } finally {
      this.#ticking = false
    }
  }

  #start(op: Operation): void {
    const def = this.#definitions.get(op.name)
    if (!def) return
    const run: Run = {
      op,
      lease: { id: op.id, attempt: op.attempt, worker: this.#opts.workerId },
      def,
      ended: false,
      timers: [],
    }
    // This worker's own earlier attempt, whose lease lapsed (e.g. heartbeats failed): it is stale now.
    const previous = this.#active.get(op.id)
    if (previous) this.#abort(previous, 'lease-lost')
    this.#active.set(op.id, run)
    this.#busy.set(def.name, (this.#busy.get(def.name) ?? 0) + 1)
    this.#hooks.started(op)
    if (op.cancelRequested) {
      // Its previous worker died after a cancel was requested: settle without running it again.
      run.abortedBy = 'cancel'
      void this.#end(run, { kind: 'skipped' })
      return
    }
    // Only an operation that ran before can have lost a lease: the others skip the history read.
    if (op.attempt > 1 && this.#opts.maxLeaseLosses !== Infinity) {
      this.#leaseLosses(op.id).then(
        (losses) =>
          losses >= this.#opts.maxLeaseLosses
            ? this.#end(run, { kind: 'too-many-lease-losses', losses })
            : this.#invoke(run),
        (err: unknown) => {
          // Not knowing how often it crashed is no reason to fail it: run it.
          this.#opts.logger.error({ err, operationId: op.id }, 'longrun: reading the history failed')
          this.#invoke(run)
        },
      )
      return
    }
    this.#invoke(run)
  }

  /** Lease losses since the operation was last retried by hand (a manual retry starts afresh). */
  async #leaseLosses(id: string): Promise<number> {
    let losses = 0
    for (const entry of await this.#opts.store.history(id)) {
      if (entry.event === 'retried') losses = 0
      else if (entry.event === 'lease-lost') losses++
    }
    return losses
  }

  #invoke(run: Run): void {
    if (run.ended) return
    if (run.abortedBy) return void this.#end(run, { kind: 'skipped' })
    const { op, def } = run
    if (op.timeoutMs !== null) run.timers.push(setTimeout(() => this.#abort(run, 'timeout'), op.timeoutMs))
    if (logs(this.#opts.logger, 'info')) {
      this.#opts.logger.info(
        { ...logFields(op), owner: op.owner },
        `longrun: starting ${op.name} ${op.id} (attempt ${op.attempt})`,
      )
    }

    let pending: Promise<unknown>
    try {
      pending = Promise.resolve(def.handler(this.#context(run)))
    } catch (error) {
      pending = Promise.reject(error)
    }
    pending.then(
      (result) => this.#end(run, { kind: 'returned', result }),
      (error: unknown) => this.#end(run, { kind: 'threw', error }),
    )
  }

  #context(run: Run): OperationContext<unknown, unknown> {
    const { op, lease, def } = run
    const logger = this.#opts.logger
    let log: Logger | undefined
    let progressWarned = false
    let progressDropped = false
    return {
      id: op.id,
      name: op.name,
      attempt: op.attempt,
      input: op.input,
      params: op.params,
      query: op.query,
      headers: op.headers,
      context: op.context ?? {},
      user: op.owner === null ? undefined : { id: op.owner },
      args: def.args,
      get signal() {
        return signalOf(run)
      },
      // Made on first use: most handlers never log, and a child logger per run is not free.
      get log() {
        return (log ??= logger.child(logFields(op)))
      },
      progress: async (percent, step, description) => {
        if (run.ended) return
        const { progress, fixes } = checkedProgress(op.progress.percent, percent, step, description)
        // Once per attempt: a handler reporting in a loop would otherwise flood the log.
        if (fixes.length > 0 && !progressWarned) {
          progressWarned = true
          logger.warn(
            { ...logFields(op), fixes },
            'longrun: op.progress() got a value out of range or of the wrong type (not logged again this attempt)',
          )
        }
        let recorded: boolean
        try {
          recorded = await this.#opts.store.progress(lease, progress, this.#opts.clock())
        } catch (err) {
          // A report may be lost by design (it is a losable write): a store that cannot take it
          // now (a full disk, a database away) must not fail the work that made it.
          if (!progressDropped) {
            progressDropped = true
            logger.warn(
              { ...logFields(op), err },
              'longrun: recording progress failed; the report is dropped (not logged again this attempt)',
            )
          }
          return
        }
        if (recorded) {
          op.progress = progress
          if (logs(logger, 'debug')) logger.debug({ ...logFields(op), progress }, 'longrun: progress')
          this.#hooks.progressed(op, progress)
        }
      },
    }
  }

  #abort(run: Run, cause: AbortCause): void {
    if (run.abortedBy || run.ended) return
    run.abortedBy = cause
    run.controller?.abort(new OperationAbortedError(cause))
    // A handler that ignores its signal does not hold the operation (or its slot) past the grace period.
    run.timers.push(setTimeout(() => this.#end(run, { kind: 'abandoned' }), this.#opts.graceMs))
  }

  async #end(run: Run, ending: Ending): Promise<void> {
    if (run.ended) return
    run.ended = true
    for (const timer of run.timers) clearTimeout(timer)
    if (ending.kind === 'abandoned') {
      this.#opts.logger.warn(
        { operationId: run.op.id, cause: run.abortedBy },
        'longrun: handler ignored its abort signal; its late result will be discarded',
      )
    }
    const { store, clock } = this.#opts
    try {
      // Once the outcome is on its way, the handler's slot claims the next operation (#free), so
      // that the two overlap (two round trips at once on PostgreSQL) rather than take turns. The
      // lease stays this run's until the outcome is in.
      const outcome = this.#outcome(run, ending)
      if (outcome === 'release') {
        const releasing = store.release(run.lease, clock())
        this.#free(run)
        await releasing
      } else if (outcome) {
        const settling = store.settle(run.lease, outcome, clock())
        this.#free(run)
        const settled = await settling
        if (settled) {
          this.#logOutcome(settled)
          this.#hooks.settled(settled)
        }
        if (outcome.state === 'queued') this.#wakeAt(outcome.runAt)
      }
    } catch (err) {
      // The lease will expire and the operation will be claimed again: nothing is lost.
      this.#opts.logger.error({ err, operationId: run.op.id }, 'longrun: recording an outcome failed')
    } finally {
      // A later attempt of the same operation may hold the entry by now: leave it to that one.
      if (this.#active.get(run.op.id) === run) this.#active.delete(run.op.id)
      this.#free(run)
      if (this.#stopping && this.#active.size === 0) this.#drained?.()
    }
  }

  /** Gives the run's concurrency slot back, once, and claims for it. */
  #free(run: Run): void {
    if (run.freed) return
    run.freed = true
    this.#busy.set(run.def.name, (this.#busy.get(run.def.name) ?? 1) - 1)
    this.wake()
  }

  #logOutcome(op: Operation): void {
    if (!logs(this.#opts.logger, 'info')) return
    const fields = {
      ...logFields(op),
      owner: op.owner,
      ...(op.startedAt !== undefined && op.completedAt !== undefined
        ? { durationMs: op.completedAt - op.startedAt }
        : {}),
      ...(op.error ? { error: { code: op.error.code, detail: op.error.detail } } : {}),
    }
    const message =
      op.state === 'queued'
        ? `longrun: ${op.name} ${op.id} failed attempt ${op.attempt}; retrying at ${new Date(op.runAt).toISOString()}`
        : `longrun: ${op.name} ${op.id} ${op.state}`
    this.#opts.logger.info(fields, message)
  }

  #outcome(run: Run, ending: Ending): Outcome | 'release' | undefined {
    const now = this.#opts.clock()
    const expiresAt = now + this.#opts.retentionMs
    if (ending.kind === 'too-many-lease-losses') {
      return { state: 'failed', error: leaseLostError(ending.losses), expiresAt }
    }
    switch (run.abortedBy) {
      case 'lease-lost':
        return undefined
      case 'shutdown':
        if (ending.kind !== 'returned') return 'release'
        break
      case 'cancel':
        return { state: 'canceled', error: canceledError(), expiresAt }
      case 'timeout':
        return this.#failure(run, timeoutError(run.op.timeoutMs), true)
    }
    if (ending.kind === 'returned') {
      let result: unknown
      try {
        // Every store keeps the JSON value of the result, never a live object.
        result = JSON.parse(JSON.stringify(ending.result ?? null))
      } catch (err) {
        return this.#failure(run, resultNotSerializableError((err as Error).message), false)
      }
      return { state: 'succeeded', result, expiresAt }
    }
    const error = ending.kind === 'threw' ? ending.error : new Error('abandoned')
    return this.#failure(run, toOperationError(error), isRetryable(error))
  }

  #failure(run: Run, error: OperationError, retryable: boolean): Outcome {
    const now = this.#opts.clock()
    const { op, def } = run
    if (retryable && op.attempt < op.maxAttempts) {
      return { state: 'queued', error, runAt: now + backoffMs(def.retry, op.attempt, this.#opts.random) }
    }
    return { state: 'failed', error, expiresAt: now + this.#opts.retentionMs }
  }

  #wakeAt(at: number): void {
    const timer = setTimeout(() => this.wake(), Math.max(0, at - this.#opts.clock()))
    timer.unref()
  }

  #heartbeat(): void {
    const { store, leaseMs, clock, logger } = this.#opts
    for (const run of this.#active.values()) {
      if (run.ended) continue
      store.heartbeat(run.lease, leaseMs, clock()).then(
        (status) => {
          if (!status.held) this.#abort(run, 'lease-lost')
          else if (status.cancelRequested) this.#abort(run, 'cancel')
        },
        (err: unknown) => logger.error({ err, operationId: run.op.id }, 'longrun: heartbeat failed'),
      )
    }
  }
}

/**
 * What a call of `op.progress(percent, step, description)` records, and what it had to fix. It
 * never throws: a mistake in reporting progress must not fail the work being reported on. A finite
 * `percent` is clamped to 0-100; any other (NaN, an infinity, not a number) keeps `previous`; a
 * `step` or `description` that is not a string is left out.
 */
function checkedProgress(
  previous: number,
  percent: unknown,
  step: unknown,
  description: unknown,
): { progress: Progress; fixes: string[] } {
  const fixes: string[] = []
  const progress: Progress = { percent: previous }
  if (typeof percent === 'number' && Number.isFinite(percent)) {
    progress.percent = Math.min(100, Math.max(0, percent))
    if (progress.percent !== percent) fixes.push(`percent ${percent}: clamped to ${progress.percent}`)
  } else {
    fixes.push(`percent ${shown(percent)}: not a finite number, kept ${previous}`)
  }
  if (typeof step === 'string') progress.step = cut(step, MAX_STEP, 'step', fixes)
  else if (step !== undefined) fixes.push(`step ${shown(step)}: not a string, left out`)
  if (typeof description === 'string') progress.description = cut(description, MAX_DESCRIPTION, 'description', fixes)
  else if (description !== undefined) fixes.push(`description ${shown(description)}: not a string, left out`)
  return { progress, fixes }
}

// Progress is in every list item and event of the operation: its texts are kept short.
const MAX_STEP = 200
const MAX_DESCRIPTION = 1_000

function cut(text: string, max: number, what: string, fixes: string[]): string {
  if (text.length <= max) return text
  fixes.push(`${what} of ${text.length} characters: cut to ${max}`)
  return text.slice(0, max)
}

/** A value a handler passed, as the warning shows it: short, and never the content of an object. */
function shown(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.slice(0, 40))
  if (typeof value === 'function') return 'a function'
  if (typeof value === 'object' && value !== null) return 'an object'
  return String(value)
}

/**
 * What every log line about an attempt carries. `reqId` is the submitting request's, under the name
 * Fastify's request logs use, so that a search for it finds the request and all its work.
 */
function logFields(op: Operation) {
  const fields = { operationId: op.id, operation: op.name, attempt: op.attempt }
  return op.requestId === undefined ? fields : { ...fields, reqId: op.requestId }
}

/** The run's abort signal, already aborted when the run was before the handler first asked. */
function signalOf(run: Run): AbortSignal {
  if (!run.controller) {
    run.controller = new AbortController()
    if (run.abortedBy) run.controller.abort(new OperationAbortedError(run.abortedBy))
  }
  return run.controller.signal
}
