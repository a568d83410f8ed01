import Database from 'better-sqlite3'
import { canceledError, duplicateOperationId } from '../../core/errors.js'
import type { DeliveryAttempt, OutboxMessage } from '../../core/store.js'
import type {
  ClaimRequest,
  DeliveryState,
  HistoryEntry,
  IdempotencyKey,
  IdempotencyLookup,
  IdempotentInsert,
  IdempotentUse,
  Lease,
  LeaseStatus,
  NewOperation,
  Operation,
  Outcome,
  Progress,
} from '../../core/types.js'
import { DEFERRED_RUN_AT, type TerminalState } from '../../core/operation.js'
import { CALLBACK_TARGET, stateAfter, toMessage, type MessageRow } from '../outbox.js'
import { operationQueries, statementCache, type Row, type Synchronous } from './connection.js'

// Every write the SQLite store makes. `runBatch` commits a group of writes in one transaction.

const HELD = `id = @id AND state = 'running' AND attempt = @attempt AND worker = @worker`
// Where `delete` and `purge` apply: the states TRANSITIONS.delete lists (src/core/operation.ts).
const FINISHED = `state IN ('succeeded', 'failed', 'canceled')`
// Created to start later and not started yet (isDeferred in src/core/operation.ts).
const DEFERRED = `state = 'queued' AND run_at = ${DEFERRED_RUN_AT}`

/** One write of a batch: a call on the writes object, and whether a power loss may undo it. */
export interface WriteCall {
  run: (writes: SqliteWrites) => unknown
  losable: boolean
}

/**
 * Writes a power loss may undo without breaking a promise: a lost claim, heartbeat or release leaves
 * the operation to be claimed again once its lease expires, a lost progress shows the one before, a
 * lost purge is done again. Groups of only these skip the fsync; the next durable commit syncs them
 * too, as the WAL is one file written in order.
 */
export const LOSABLE = { losable: true } as const
/** Every other write: submissions, outcomes, cancels, retries and deletes. */
export const DURABLE = { losable: false } as const

export type Settled = { ok: true; value: unknown } | { ok: false; error: unknown }

/** One result per call, in order; or the error that failed the whole transaction (e.g. its COMMIT). */
export type BatchOutcome = { ok: true; results: Settled[] } | { ok: false; error: unknown }

export class SqliteWrites {
  readonly #db: Database.Database
  readonly #sql: ReturnType<typeof statementCache>
  readonly #ops: ReturnType<typeof operationQueries>
  readonly #synchronous: Synchronous
  #current: Synchronous

  constructor(db: Database.Database, synchronous: Synchronous) {
    this.#db = db
    this.#sql = statementCache(db)
    this.#ops = operationQueries(db)
    this.#synchronous = this.#current = synchronous
  }

  /**
   * Runs `calls` in one `BEGIN IMMEDIATE` transaction: a call that throws fails only itself, a
   * failed COMMIT (or BEGIN) fails them all. Returns once committed: durably, unless all are losable.
   */
  runBatch(calls: readonly WriteCall[]): BatchOutcome {
    const results: Settled[] = []
    try {
      this.#sync(calls.every((call) => call.losable) ? 'NORMAL' : this.#synchronous)
      this.#db
        .transaction(() => {
          for (const call of calls) {
            try {
              results.push({ ok: true, value: call.run(this) })
            } catch (error) {
              // SQLite rolled the whole transaction back (e.g. SQLITE_FULL while spilling its cache):
              // the calls after this one must not commit one by one, nor those before seem committed.
              if (!this.#db.inTransaction) throw error
              results.push({ ok: false, error })
            }
          }
        })
        .immediate()
    } catch (error) {
      return { ok: false, error }
    }
    return { ok: true, results }
  }

  #sync(level: Synchronous): void {
    if (level === this.#current) return
    this.#db.pragma(`synchronous = ${level}`)
    this.#current = level
  }

  insert(op: NewOperation): Operation {
    let inserted: Operation
    try {
      inserted = this.#ops(
        `INSERT INTO operations (id, name, state, owner, input, params, query, headers, request_id, context,
             max_attempts, cancelable, timeout_ms, created_at, run_at, expires_at, callback, subscriptions,
             callback_state, callback_attempts)
           VALUES (@id, @name, 'queued', @owner, @input, @params, @query, @headers, @requestId, @context, @maxAttempts,
             @cancelable, @timeoutMs, @createdAt, @runAt, @expiresAt, @callback, @subscriptions,
             iif(@callback IS NULL, NULL, 'pending'), iif(@callback IS NULL, NULL, 0))
           RETURNING *`,
      ).get({
        id: op.id,
        name: op.name,
        owner: op.owner,
        input: JSON.stringify(op.input ?? null),
        params: JSON.stringify(op.params),
        query: JSON.stringify(op.query),
        headers: JSON.stringify(op.headers),
        requestId: op.requestId ?? null,
        context: op.context === undefined ? null : JSON.stringify(op.context),
        maxAttempts: op.maxAttempts,
        cancelable: op.cancelable ? 1 : 0,
        timeoutMs: op.timeoutMs,
        createdAt: op.createdAt,
        // A deferred operation waits past any clock until started, and is purged if never started.
        runAt: op.deferred ? DEFERRED_RUN_AT : op.createdAt,
        expiresAt: op.deferred ? op.deferred.expiresAt : null,
        callback: op.callback ? JSON.stringify(op.callback) : null,
        subscriptions: op.subscriptions ? JSON.stringify(op.subscriptions) : null,
      })!
    } catch (err) {
      if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE') throw duplicateOperationId(op.id)
      throw err
    }
    this.#record(
      op.id,
      { at: op.createdAt, event: 'submitted', attempt: 0, actor: op.owner },
      !!op.subscriptions?.length,
    )
    return inserted
  }

  insertIdempotent(op: NewOperation, key: IdempotencyKey, now: number): IdempotentInsert {
    const used = findIdempotent(this.#ops, key, now)
    if (used) return used
    const inserted = this.insert(op)
    this.#sql(
      `INSERT OR REPLACE INTO idempotency_keys (scope, key, fingerprint, operation_id, expires_at) VALUES (?, ?, ?, ?, ?)`,
    ).run(key.scope, key.key, key.fingerprint, inserted.id, key.expiresAt)
    return { kind: 'inserted', op: inserted }
  }

  claim(worker: string, wants: ClaimRequest[], leaseMs: number, now: number): Operation[] {
    const claimed: Operation[] = []
    const params = { worker, leaseUntil: now + leaseMs, now }
    const take = (where: string, args: object) => {
      const rows = this.#ops(
        `UPDATE operations
         SET state = 'running', attempt = attempt + 1, worker = @worker, lease_expires_at = @leaseUntil, started_at = @now,
           progress = '{"percent":0}'
         WHERE ${where}
         RETURNING *`,
      )
      const taken = rows.statement.all({ ...params, ...args }) as unknown[][]
      // RETURNING gives rows in no set order: oldest first, as they were due.
      taken.sort((a, b) => (rows.column(a, 'seq') as number) - (rows.column(b, 'seq') as number))
      return taken.map((values) => rows.operation(values))
    }
    for (const { name, limit } of wants) {
      // Operations of dead workers first: they have waited longest.
      const expired = this.#sql(
        `SELECT seq, id, attempt, worker FROM operations
         WHERE state = 'running' AND name = ? AND lease_expires_at <= ? ORDER BY lease_expires_at LIMIT ?`,
      ).all(name, now, limit) as Pick<Row, 'seq' | 'id' | 'attempt' | 'worker'>[]
      for (const lost of expired) {
        this.#record(lost.id, { at: now, event: 'lease-lost', attempt: lost.attempt, worker: lost.worker! })
        claimed.push(...take('seq = @seq', { seq: lost.seq }))
      }
      if (expired.length < limit) {
        const due = take(
          `seq IN (SELECT seq FROM operations WHERE state = 'queued' AND name = @name AND run_at <= @now
                   ORDER BY run_at, seq LIMIT @limit)`,
          { name, limit: limit - expired.length },
        )
        claimed.push(...due)
      }
    }
    for (const op of claimed) {
      this.#record(op.id, { at: now, event: 'started', attempt: op.attempt, worker }, !!op.subscriptions?.length)
    }
    return claimed
  }

  heartbeat(lease: Lease, leaseMs: number, now: number): LeaseStatus {
    const row = this.#sql(
      `UPDATE operations SET lease_expires_at = @leaseUntil WHERE ${HELD} RETURNING cancel_requested`,
    ).get({ ...lease, leaseUntil: now + leaseMs }) as { cancel_requested: number } | undefined
    return { held: row !== undefined, cancelRequested: row?.cancel_requested === 1 }
  }

  progress(lease: Lease, progress: Progress, at: number): boolean {
    const held = this.#sql(`UPDATE operations SET progress = @progress WHERE ${HELD} RETURNING subscriptions`).get({
      ...lease,
      progress: JSON.stringify(progress),
    }) as Pick<Row, 'subscriptions'> | undefined
    if (!held) return false
    const entry = { at, event: 'progress', attempt: lease.attempt, worker: lease.worker, progress } as const
    this.#record(lease.id, entry, held.subscriptions !== null)
    return true
  }

  settle(lease: Lease, outcome: Outcome, now: number): Operation | undefined {
    const settled =
      outcome.state === 'queued'
        ? this.#ops(
            `UPDATE operations SET state = 'queued', error = @error, run_at = @runAt, worker = NULL, lease_expires_at = NULL
             WHERE ${HELD} RETURNING *`,
          ).get({ ...lease, error: JSON.stringify(outcome.error), runAt: outcome.runAt })
        : this.#ops(
            `UPDATE operations SET state = @state, result = @result, error = @error, completed_at = @now,
               expires_at = @expiresAt, worker = NULL, lease_expires_at = NULL
             WHERE ${HELD} RETURNING *`,
          ).get({
            ...lease,
            state: outcome.state,
            result: outcome.state === 'succeeded' ? JSON.stringify(outcome.result ?? null) : null,
            error: outcome.state === 'succeeded' ? null : JSON.stringify(outcome.error),
            now,
            expiresAt: outcome.expiresAt,
          })
    if (settled === undefined) return undefined
    this.#record(
      lease.id,
      {
        at: now,
        event: outcome.state === 'queued' ? 'retry-scheduled' : outcome.state,
        attempt: lease.attempt,
        worker: lease.worker,
        ...(outcome.state === 'succeeded' ? {} : { error: outcome.error }),
      },
      !!settled.subscriptions?.length,
    )
    return settled
  }

  release(lease: Lease, now: number): boolean {
    const released =
      this.#sql(`UPDATE operations SET state = 'queued', worker = NULL, lease_expires_at = NULL WHERE ${HELD}`).run({
        ...lease,
        now,
      }).changes === 1
    if (released) this.#record(lease.id, { at: now, event: 'released', attempt: lease.attempt, worker: lease.worker })
    return released
  }

  cancel(id: string, now: number, expiresAt: number, actor: string | null = null): Operation | undefined {
    const error = canceledError()
    const canceled = this.#sql(
      `UPDATE operations SET state = 'canceled', cancel_requested = 1, completed_at = @now, expires_at = @expiresAt,
         error = @error
       WHERE id = @id AND state = 'queued' AND cancelable = 1 RETURNING attempt`,
    ).get({ id, now, expiresAt, error: JSON.stringify(error) }) as { attempt: number } | undefined
    if (canceled) this.#record(id, { at: now, event: 'canceled', attempt: canceled.attempt, actor, error })
    const requested = this.#sql(
      `UPDATE operations SET cancel_requested = 1
       WHERE id = ? AND state = 'running' AND cancelable = 1 AND cancel_requested = 0 RETURNING attempt`,
    ).get(id) as { attempt: number } | undefined
    if (requested) this.#record(id, { at: now, event: 'cancel-requested', attempt: requested.attempt, actor })
    return this.#ops(`SELECT * FROM operations WHERE id = ?`).get(id)
  }

  requeue(id: string, attempts: number, now: number, actor: string | null = null): Operation | undefined {
    const requeued = this.#ops(
      `UPDATE operations SET state = 'queued', max_attempts = attempt + @attempts, cancel_requested = 0, run_at = @now,
         progress = '{"percent":0}', result = NULL, error = NULL, completed_at = NULL, expires_at = NULL
       WHERE id = @id AND state IN ('failed', 'canceled') RETURNING *`,
    ).get({ id, attempts, now })
    if (requeued) this.#record(id, { at: now, event: 'retried', attempt: requeued.attempt, actor })
    return requeued
  }

  start(id: string, now: number, actor: string | null = null): Operation | undefined {
    const started = this.#ops(
      `UPDATE operations SET run_at = @now, expires_at = NULL WHERE id = @id AND ${DEFERRED} RETURNING *`,
    ).get({ id, now })
    if (!started) return this.#ops(`SELECT * FROM operations WHERE id = ?`).get(id)
    this.#record(id, { at: now, event: 'queued', attempt: started.attempt, actor })
    return started
  }

  delete(id: string): boolean {
    const deleted = this.#sql(`DELETE FROM operations WHERE id = ? AND ${FINISHED}`).run(id).changes === 1
    if (deleted) this.#forget([id])
    return deleted
  }

  purge(now: number, limit: number): number {
    const ids = this.#sql(
      // The expiry index, named: without statistics the planner takes the state index, and reads every
      // finished operation (0.45 s at 1,000,000) to find that none is due. It holds every row with an
      // expiry: finished ones, and deferred ones never started.
      `DELETE FROM operations WHERE seq IN (
         SELECT seq FROM operations INDEXED BY operations_expiry
         WHERE expires_at <= ? AND (${FINISHED} OR (${DEFERRED})) LIMIT ?
       )
       RETURNING id`,
    )
      .pluck()
      .all(now, limit) as string[]
    this.#forget(ids)
    this.#sql(`DELETE FROM idempotency_keys WHERE expires_at <= ?`).run(now)
    return ids.length
  }

  /**
   * Removes the finished operations of each owner and state beyond the newest `count` of that state
   * (by completedAt, ties by insertion order), oldest first, at most `limit`; `kept` as keptCounts
   * makes it.
   */
  trim(all: readonly [TerminalState, number][], limit: number): number {
    // Ranking every finished operation of a state costs about a second at 1,000,000; finding that no
    // owner is over its count, a fifth of that on the covering index, and nothing once one is found.
    const overCount = this.#sql(
      `SELECT 1 FROM operations WHERE state = ? AND completed_at IS NOT NULL GROUP BY owner HAVING count(*) > ? LIMIT 1`,
    )
    const kept = all.filter(([state, count]) => overCount.get(state, count) !== undefined)
    if (kept.length === 0) return 0
    const states = kept.map(() => '?').join(', ')
    const counts = kept.map(() => 'WHEN ? THEN ?').join(' ')
    const ids = this.#sql(
      `DELETE FROM operations WHERE seq IN (
         SELECT seq FROM (
           SELECT seq, completed_at, CASE state ${counts} END AS kept,
             row_number() OVER (PARTITION BY owner, state ORDER BY completed_at DESC, seq DESC) AS newer
           FROM operations
           WHERE ${FINISHED} AND state IN (${states}) AND completed_at IS NOT NULL
         )
         WHERE newer > kept ORDER BY completed_at, seq LIMIT ?
       )
       RETURNING id`,
    )
      .pluck()
      .all(...kept.flat(), ...kept.map(([state]) => state), limit) as string[]
    this.#forget(ids)
    return ids.length
  }

  /** Removes the history, events, idempotency keys and outbox messages of operations just deleted. */
  #forget(ids: readonly string[]): void {
    const forget = [
      this.#sql(`DELETE FROM operation_events WHERE operation_id = ?`),
      this.#sql(`DELETE FROM idempotency_keys WHERE operation_id = ?`),
      this.#sql(`DELETE FROM outbox WHERE operation_id = ?`),
      this.#sql(`DELETE FROM delivery_attempts WHERE operation_id = ?`),
    ]
    for (const id of ids) for (const statement of forget) statement.run(id)
  }

  claimMessages(sender: string, limit: number, leaseMs: number, now: number): OutboxMessage[] {
    const rows = this.#sql(
      `UPDATE outbox SET state = 'delivering', sender = @sender, lease_expires_at = @leaseUntil
       WHERE n IN (
         SELECT n FROM outbox
         WHERE (state = 'pending' AND due_at <= @now) OR (state = 'delivering' AND lease_expires_at <= @now)
         ORDER BY n LIMIT @limit
       )
       RETURNING n, id, operation_id, seq, event, at, target, attempts, sender`,
    ).all({ sender, leaseUntil: now + leaseMs, now, limit }) as (MessageRow & { n: number })[]
    // RETURNING gives rows in no set order.
    rows.sort((a, b) => a.n - b.n)
    const callbacks = this.#sql(
      `UPDATE operations SET callback_state = 'delivering' WHERE id = ? AND callback_state IS NOT NULL`,
    )
    for (const row of rows) if (row.target === CALLBACK_TARGET) callbacks.run(row.operation_id)
    return rows.map(toMessage)
  }

  recordDelivery(message: OutboxMessage, attempt: DeliveryAttempt, retryAt: number | undefined): boolean {
    const state = stateAfter(attempt.ok, retryAt)
    // The sender and the attempts made before its claim fence off a sender whose lease was taken over.
    const recorded = this.#sql(
      `UPDATE outbox SET state = @state, attempts = attempts + 1, due_at = coalesce(@retryAt, due_at), sender = NULL,
         lease_expires_at = NULL
       WHERE id = @id AND state = 'delivering' AND sender = @sender AND attempts = @attempts
       RETURNING operation_id, target, attempts`,
    ).get({ id: message.id, sender: message.sender, attempts: message.attempts, state, retryAt: retryAt ?? null }) as
      { operation_id: string; target: string; attempts: number } | undefined
    if (!recorded) return false
    this.#sql(
      `INSERT INTO delivery_attempts (message_id, n, operation_id, at, duration_ms, ok, status, error)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(
      message.id,
      recorded.attempts,
      recorded.operation_id,
      attempt.at,
      attempt.durationMs,
      attempt.ok ? 1 : 0,
      attempt.status ?? null,
      attempt.error ?? null,
    )
    if (recorded.target === CALLBACK_TARGET) {
      this.#sql(
        `UPDATE operations SET callback_state = @state, callback_attempts = callback_attempts + 1,
           callback_last_attempt_at = @at, callback_last_status = @status
         WHERE id = @id AND callback_state IS NOT NULL`,
      ).run({ id: recorded.operation_id, state, at: attempt.at, status: attempt.status ?? null })
    }
    return true
  }

  redeliver(operationId: string, now: number): number {
    const targets = this.#sql(
      `UPDATE outbox SET state = 'pending', due_at = ? WHERE operation_id = ? AND state IN ('delivered', 'failed')
       RETURNING target`,
    )
      .pluck()
      .all(now, operationId) as string[]
    if (targets.includes(CALLBACK_TARGET)) this.#callbackState([operationId], 'pending')
    return targets.length
  }

  disableTarget(target: string, now: number): void {
    this.#sql(`INSERT OR IGNORE INTO disabled_targets (target, disabled_at) VALUES (?, ?)`).run(target, now)
    const ids = this.#sql(
      `UPDATE outbox SET state = 'failed' WHERE target = ? AND state = 'pending' RETURNING operation_id`,
    )
      .pluck()
      .all(target) as string[]
    if (target === CALLBACK_TARGET) this.#callbackState(ids, 'failed')
  }

  #callbackState(ids: readonly string[], state: DeliveryState): void {
    const update = this.#sql(`UPDATE operations SET callback_state = ? WHERE id = ? AND callback_state IS NOT NULL`)
    for (const id of ids) update.run(state, id)
  }

  /**
   * Appends an event to the operation's log, and one outbox message for each target its
   * subscriptions name for the event: the single place every write records history, so that every
   * message is in the transaction of its event. `subscribed`: false when the caller read the
   * operation in this transaction and it has no subscriptions, which spares the lookup of the
   * operation that would find none (most events of most operations).
   */
  #record(id: string, entry: Omit<HistoryEntry, 'seq'>, subscribed = true): void {
    const { lastInsertRowid: seq } = this.#sql(
      `INSERT INTO operation_events (operation_id, at, event, attempt, worker, actor, has_actor, error, progress)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(
      id,
      entry.at,
      entry.event,
      entry.attempt,
      entry.worker ?? null,
      entry.actor ?? null,
      entry.actor === undefined ? 0 : 1,
      entry.error === undefined ? null : JSON.stringify(entry.error),
      entry.progress === undefined ? null : JSON.stringify(entry.progress),
    )
    if (!subscribed) return
    this.#sql(
      `INSERT INTO outbox (id, operation_id, seq, event, at, target, state, due_at)
       SELECT 'msg_' || @id || '_' || CAST(@seq AS INTEGER) || '_' || target, @id, CAST(@seq AS INTEGER), @event, @at, target,
         iif(EXISTS (SELECT 1 FROM disabled_targets d WHERE d.target = t.target), 'failed', 'pending'), @at
       FROM (
         SELECT s.key AS ord, json_extract(s.value, '$.target') AS target, json_extract(s.value, '$.events') AS events
         FROM operations o, json_each(o.subscriptions) s WHERE o.id = @id
       ) t
       WHERE EXISTS (SELECT 1 FROM json_each(t.events) e WHERE e.value = @event)
       ORDER BY ord`,
    ).run({ id, seq, event: entry.event, at: entry.at })
  }
}

/** The use a live key already had, on whichever connection asks. */
export function findIdempotent(
  ops: ReturnType<typeof operationQueries>,
  key: IdempotencyLookup,
  now: number,
): IdempotentUse | undefined {
  const query = ops(
    `SELECT k.fingerprint, o.* FROM idempotency_keys k JOIN operations o ON o.id = k.operation_id
     WHERE k.scope = ? AND k.key = ? AND k.expires_at > ?`,
  )
  const used = query.statement.get(key.scope, key.key, now) as unknown[] | undefined
  if (!used) return undefined
  return query.column(used, 'fingerprint') === key.fingerprint
    ? { kind: 'replayed', op: query.operation(used) }
    : { kind: 'mismatch' }
}
