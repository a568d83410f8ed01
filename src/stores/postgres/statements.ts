import { DEFERRED_RUN_AT } from '../../core/operation.js'
import type { StatsQuery } from '../../core/types.js'

// Where `delete` and `purge` apply: the states TRANSITIONS.delete lists (src/core/operation.ts).
const FINISHED = `state IN ('succeeded', 'failed', 'canceled')`
// Created to start later and not started yet (isDeferred in src/core/operation.ts).
const DEFERRED = `state = 'queued' AND run_at = ${DEFERRED_RUN_AT}`

// Epoch milliseconds now, on the server's clock.
const DATABASE_NOW = `(extract(epoch from clock_timestamp()) * 1000)::bigint`

/** The SQL of every fixed statement, for one schema; `$n` parameters as each method passes them. */
export function statements(schema: string, leaseClock: 'database' | 'caller') {
  const ops = `${schema}.operations`
  const events = `${schema}.operation_events`
  const keys = `${schema}.idempotency_keys`
  // The fencing token: a write applies only while the operation runs this attempt for this worker.
  const held = `o.id = i.id AND o.state = 'running' AND o.attempt = i.attempt AND o.worker = i.worker`
  const claimNow = leaseClock === 'database' ? DATABASE_NOW : '$4::bigint'
  const heartbeatNow = leaseClock === 'database' ? DATABASE_NOW : 'i.now'
  // Operations as JSON documents (see newRow), inserted in array order so that `seq` follows it.
  const insertRows = `
    INSERT INTO ${ops} (id, name, state, owner, input, params, query, headers, request_id, context, max_attempts,
      cancelable, timeout_ms, created_at, run_at, expires_at, callback, subscriptions, callback_state,
      callback_attempts)
    SELECT e->>'id', e->>'name', 'queued', e->>'owner', e->'input', e->'params', e->'query', e->'headers',
      e->>'requestId', nullif(e->'context', 'null'), (e->>'maxAttempts')::int, (e->>'cancelable')::boolean,
      (e->>'timeoutMs')::bigint, (e->>'createdAt')::bigint,
      CASE WHEN e->>'deferredExpiresAt' IS NULL THEN (e->>'createdAt')::bigint ELSE ${DEFERRED_RUN_AT} END,
      (e->>'deferredExpiresAt')::bigint, nullif(e->'callback', 'null'),
      nullif(e->'subscriptions', 'null'), CASE WHEN jsonb_typeof(e->'callback') = 'object' THEN 'pending' END,
      CASE WHEN jsonb_typeof(e->'callback') = 'object' THEN 0 END`
  // Records `submitted` for each row of the CTE `inserted`; the owner is its actor.
  const submitted = `recorded AS (
        INSERT INTO ${events} (operation_id, at, event, attempt, actor, has_actor)
        SELECT id, created_at, 'submitted', 0, owner, true FROM inserted ORDER BY seq
      )`
  const eventColumns = `seq, at, event, attempt, worker, actor, has_actor, error, progress`
  const outbox = `${schema}.outbox`
  const attempts = `${schema}.delivery_attempts`
  // Removes the messages and attempts of the operations of the CTE `deleted`.
  const forgetMessages = `messages AS (DELETE FROM ${outbox} WHERE operation_id IN (SELECT id FROM deleted)),
      tries AS (DELETE FROM ${attempts} WHERE operation_id IN (SELECT id FROM deleted))`
  // A callback message's operation shows its state: `$state` for the rows of the CTE `changed`.
  const callbackFollows = (state: string) => `followed AS (
        UPDATE ${ops} o SET callback_state = ${state}
        WHERE o.id IN (SELECT operation_id FROM changed WHERE target = 'callback') AND o.callback_state IS NOT NULL
      )`
  return {
    // The `submitted` events in the same statement, in `seq` order as the operations.
    insert: `
      WITH inserted AS (${insertRows}
        FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(e, ord)
        ORDER BY ord
        ON CONFLICT (id) DO NOTHING
        RETURNING *
      ),
      ${submitted}
      SELECT * FROM inserted`,

    // $1 scope, $2 key, $3 fingerprint, $4 expiresAt, $5 now, $6 [operation]. The key is taken
    // first: ON CONFLICT waits for a concurrent taker's commit and then sees its live key.
    insertIdempotent: `
      WITH taken AS (
        INSERT INTO ${keys} AS k (scope, key, fingerprint, operation_id, expires_at)
        VALUES ($1, $2, $3, ($6::jsonb)->0->>'id', $4)
        ON CONFLICT (scope, key) DO UPDATE
          SET fingerprint = EXCLUDED.fingerprint, operation_id = EXCLUDED.operation_id, expires_at = EXCLUDED.expires_at
          WHERE k.expires_at <= $5
        RETURNING 1
      ),
      inserted AS (${insertRows}
        FROM jsonb_array_elements($6::jsonb) AS t(e)
        WHERE EXISTS (SELECT 1 FROM taken)
        RETURNING *
      ),
      ${submitted}
      SELECT * FROM inserted`,

    usedKey: `
      SELECT k.fingerprint, o.* FROM ${keys} k JOIN ${ops} o ON o.id = k.operation_id
      WHERE k.scope = $1 AND k.key = $2 AND k.expires_at > $3`,

    get: `SELECT * FROM ${ops} WHERE id = $1`,

    history: `SELECT ${eventColumns} FROM ${events} WHERE operation_id = $1 AND event <> 'progress' ORDER BY seq`,

    // $1 id, $2 after, $3 limit.
    events: `SELECT ${eventColumns} FROM ${events} WHERE operation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`,

    // $1 names, $2 limits, $3 worker, $4 now, $5 leaseMs. Every name in one statement: operations
    // of dead workers first (they have waited longest), then due ones, oldest first. SKIP LOCKED
    // passes over rows another claim is taking, so concurrent claims neither wait nor overlap.
    claim: `
      WITH clock AS (SELECT ${claimNow} AS now),
      wants AS (SELECT * FROM unnest($1::text[], $2::int[]) WITH ORDINALITY AS w(name, lim, ord)),
      expired AS (
        SELECT w.ord, x.seq, x.attempt, x.worker, x.lease_expires_at AS sort_key
        FROM wants w CROSS JOIN LATERAL (
          SELECT seq, attempt, worker, lease_expires_at FROM ${ops}
          WHERE state = 'running' AND name = w.name AND lease_expires_at <= (SELECT now FROM clock)
          ORDER BY lease_expires_at LIMIT w.lim
          FOR UPDATE SKIP LOCKED
        ) x
      ),
      due AS (
        SELECT w.ord, x.seq, x.seq AS sort_key
        FROM wants w CROSS JOIN LATERAL (
          SELECT seq FROM ${ops}
          WHERE state = 'queued' AND name = w.name AND run_at <= $4
          ORDER BY run_at, seq LIMIT greatest(w.lim - (SELECT count(*) FROM expired e WHERE e.ord = w.ord), 0)
          FOR UPDATE SKIP LOCKED
        ) x
      ),
      picked AS (
        SELECT ord, seq, 0 AS kind, sort_key FROM expired UNION ALL SELECT ord, seq, 1 AS kind, sort_key FROM due
      ),
      claimed AS (
        UPDATE ${ops} o
        SET state = 'running', attempt = o.attempt + 1, worker = $3,
          lease_expires_at = (SELECT now FROM clock) + $5::bigint, started_at = $4,
          progress = '{"percent":0}'
        FROM picked p WHERE o.seq = p.seq
        RETURNING o.*
      ),
      recorded AS (
        INSERT INTO ${events} (operation_id, at, event, attempt, worker)
        SELECT id, $4::bigint, event, attempt, worker FROM (
          SELECT c.id, 'lease-lost' AS event, e.attempt, e.worker, c.seq, 0 AS k FROM claimed c JOIN expired e ON e.seq = c.seq
          UNION ALL
          SELECT c.id, 'started', c.attempt, $3::text, c.seq, 1 FROM claimed c
        ) x
        ORDER BY seq, k
      )
      SELECT c.* FROM claimed c JOIN picked p ON p.seq = c.seq ORDER BY p.ord, p.kind, p.sort_key, c.seq`,

    // Writes under leases take a JSON array of items, each with its `ord`, and answer with the
    // `ord` of each item whose lease held: one statement for all the writes of a batch.
    heartbeat: `
      WITH input AS (
        SELECT * FROM jsonb_to_recordset($1::jsonb)
          AS x(ord int, id text, attempt int, worker text, "leaseMs" bigint, now bigint)
      )
      UPDATE ${ops} o SET lease_expires_at = ${heartbeatNow} + i."leaseMs"
      FROM input i WHERE ${held}
      RETURNING i.ord, o.cancel_requested`,

    // The batch holds the last progress of each lease (see ./lane.ts): one event each.
    progress: `
      WITH input AS (
        SELECT * FROM jsonb_to_recordset($1::jsonb)
          AS x(ord int, id text, attempt int, worker text, progress jsonb, at bigint)
      ),
      updated AS (
        UPDATE ${ops} o SET progress = i.progress FROM input i WHERE ${held}
        RETURNING i.ord, o.id, o.attempt, i.worker AS lease_worker, i.progress AS lease_progress, i.at
      ),
      recorded AS (
        INSERT INTO ${events} (operation_id, at, event, attempt, worker, progress)
        SELECT id, at, 'progress', attempt, lease_worker, lease_progress FROM updated ORDER BY ord
      )
      SELECT ord FROM updated`,

    // An outcome: `queued` again for a retry (keeping the error, due at runAt), or final.
    settle: `
      WITH input AS (
        SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(ord int, id text, attempt int, worker text, state text,
          result jsonb, error jsonb, "runAt" bigint, "expiresAt" bigint, now bigint)
      ),
      settled AS (
        UPDATE ${ops} o SET
          state = i.state,
          result = CASE WHEN i.state = 'queued' THEN o.result WHEN i.state = 'succeeded' THEN coalesce(i.result, 'null') END,
          error = i.error,
          run_at = CASE WHEN i.state = 'queued' THEN i."runAt" ELSE o.run_at END,
          completed_at = CASE WHEN i.state = 'queued' THEN o.completed_at ELSE i.now END,
          expires_at = CASE WHEN i.state = 'queued' THEN o.expires_at ELSE i."expiresAt" END,
          worker = NULL, lease_expires_at = NULL
        FROM input i WHERE ${held}
        RETURNING o.*, i.ord, i.worker AS lease_worker, i.now AS lease_now
      ),
      recorded AS (
        INSERT INTO ${events} (operation_id, at, event, attempt, worker, error)
        SELECT id, lease_now, CASE WHEN state = 'queued' THEN 'retry-scheduled' ELSE state END, attempt, lease_worker,
          CASE WHEN state = 'succeeded' THEN NULL ELSE error END
        FROM settled ORDER BY ord
      )
      SELECT * FROM settled`,

    release: `
      WITH input AS (
        SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(ord int, id text, attempt int, worker text, now bigint)
      ),
      released AS (
        UPDATE ${ops} o SET state = 'queued', worker = NULL, lease_expires_at = NULL
        FROM input i WHERE ${held}
        RETURNING o.id, o.attempt, i.ord, i.worker AS lease_worker, i.now AS lease_now
      ),
      recorded AS (
        INSERT INTO ${events} (operation_id, at, event, attempt, worker)
        SELECT id, lease_now, 'released', attempt, lease_worker FROM released ORDER BY ord
      )
      SELECT ord FROM released`,

    // $1 id, $2 now, $3 expiresAt, $4 the canceled error, $5 actor. A queued operation is canceled,
    // a running one is asked to stop; either way the operation is answered as it now is.
    cancel: `
      WITH changed AS (
        UPDATE ${ops} SET
          state = CASE WHEN state = 'queued' THEN 'canceled' ELSE state END,
          cancel_requested = true,
          completed_at = CASE WHEN state = 'queued' THEN $2 ELSE completed_at END,
          expires_at = CASE WHEN state = 'queued' THEN $3 ELSE expires_at END,
          error = CASE WHEN state = 'queued' THEN $4::jsonb ELSE error END
        WHERE id = $1 AND cancelable AND (state = 'queued' OR (state = 'running' AND NOT cancel_requested))
        RETURNING *
      ),
      recorded AS (
        INSERT INTO ${events} (operation_id, at, event, attempt, actor, has_actor, error)
        SELECT id, $2::bigint, CASE WHEN state = 'canceled' THEN 'canceled' ELSE 'cancel-requested' END, attempt, $5::text, true,
          CASE WHEN state = 'canceled' THEN $4::jsonb END
        FROM changed
      )
      SELECT * FROM changed
      UNION ALL
      SELECT * FROM ${ops} WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM changed)`,

    // $1 id, $2 attempts, $3 now, $4 actor.
    requeue: `
      WITH queued AS (
        UPDATE ${ops} SET state = 'queued', max_attempts = attempt + $2, cancel_requested = false, run_at = $3,
          progress = '{"percent":0}', result = NULL, error = NULL, completed_at = NULL, expires_at = NULL
        WHERE id = $1 AND state IN ('failed', 'canceled')
        RETURNING *
      ),
      recorded AS (
        INSERT INTO ${events} (operation_id, at, event, attempt, actor, has_actor)
        SELECT id, $3::bigint, 'retried', attempt, $4::text, true FROM queued
      )
      SELECT * FROM queued`,

    // $1 id, $2 now, $3 actor. Only the operation it started: the caller reads any other afresh.
    start: `
      WITH started AS (
        UPDATE ${ops} SET run_at = $2, expires_at = NULL WHERE id = $1 AND ${DEFERRED}
        RETURNING *
      ),
      recorded AS (
        INSERT INTO ${events} (operation_id, at, event, attempt, actor, has_actor)
        SELECT id, $2::bigint, 'queued', attempt, $3::text, true FROM started
      )
      SELECT * FROM started`,

    delete: `
      WITH deleted AS (DELETE FROM ${ops} WHERE id = $1 AND ${FINISHED} RETURNING id),
      history AS (DELETE FROM ${events} WHERE operation_id IN (SELECT id FROM deleted)),
      freed AS (DELETE FROM ${keys} WHERE operation_id IN (SELECT id FROM deleted)),
      ${forgetMessages}
      SELECT count(*)::int AS n FROM deleted`,

    // $1 now, $2 limit. SKIP LOCKED: nodes purging at the same time share the work. Finished
    // operations, and deferred ones never started: the rows of the expiry index. FOR UPDATE checks
    // the row again as it is once locked: a deferred operation started meanwhile is no longer due.
    purge: `
      WITH deleted AS (
        DELETE FROM ${ops} WHERE seq IN (
          SELECT seq FROM ${ops} WHERE expires_at <= $1 AND (${FINISHED} OR (${DEFERRED})) LIMIT $2
          FOR UPDATE SKIP LOCKED
        )
        RETURNING id
      ),
      history AS (DELETE FROM ${events} WHERE operation_id IN (SELECT id FROM deleted)),
      freed AS (DELETE FROM ${keys} WHERE expires_at <= $1 OR operation_id IN (SELECT id FROM deleted)),
      ${forgetMessages}
      SELECT count(*)::int AS n FROM deleted`,

    // $1 states, $2 how many of each to keep per owner, $3 limit. Ranks each owner's finished
    // operations of a state newest first (by completedAt, ties by insertion order) and removes those
    // ranked beyond the count kept, oldest first. A row requeued meanwhile is no longer finished when
    // the DELETE rechecks it, and stays.
    trim: `
      WITH kept AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS k(state, n)),
      ranked AS (
        SELECT o.seq, o.completed_at, k.n,
          row_number() OVER (PARTITION BY o.owner, o.state ORDER BY o.completed_at DESC, o.seq DESC) AS newer
        FROM ${ops} o JOIN kept k ON k.state = o.state
        WHERE o.${FINISHED} AND o.completed_at IS NOT NULL
      ),
      deleted AS (
        DELETE FROM ${ops}
        WHERE seq IN (SELECT seq FROM ranked WHERE newer > n ORDER BY completed_at, seq LIMIT $3) AND ${FINISHED}
        RETURNING id
      ),
      history AS (DELETE FROM ${events} WHERE operation_id IN (SELECT id FROM deleted)),
      freed AS (DELETE FROM ${keys} WHERE operation_id IN (SELECT id FROM deleted)),
      ${forgetMessages}
      SELECT count(*)::int AS n FROM deleted`,

    // $1 sender, $2 limit, $3 leaseMs, $4 now. Oldest first; SKIP LOCKED as in claim: concurrent
    // senders neither wait for nor overlap each other. Locks messages before their operations, as
    // every outbox statement does.
    claimMessages: `
      WITH clock AS (SELECT ${claimNow} AS now),
      -- The operation rows too, skipping those locked: a claim then never waits, so it cannot
      -- deadlock with a delete or purge, which lock the operation before its messages.
      picked AS (
        SELECT m.n FROM ${outbox} m JOIN ${ops} o ON o.id = m.operation_id
        WHERE (m.state = 'pending' AND m.due_at <= $4)
          OR (m.state = 'delivering' AND m.lease_expires_at <= (SELECT now FROM clock))
        ORDER BY m.n LIMIT $2
        FOR UPDATE OF m, o SKIP LOCKED
      ),
      changed AS (
        UPDATE ${outbox} m SET state = 'delivering', sender = $1, lease_expires_at = (SELECT now FROM clock) + $3::bigint
        FROM picked p WHERE m.n = p.n
        RETURNING m.n, m.id, m.operation_id, m.seq, m.event, m.at, m.target, m.attempts, m.sender
      ),
      ${callbackFollows(`'delivering'`)}
      SELECT * FROM changed ORDER BY n`,

    // $1 id, $2 sender, $3 attempts before the claim, $4 state after, $5 retryAt, $6 the attempt.
    // The sender and the attempts count fence off a sender whose lease was taken over.
    recordDelivery: `
      WITH changed AS (
        UPDATE ${outbox} SET state = $4, attempts = attempts + 1, due_at = coalesce($5::bigint, due_at), sender = NULL,
          lease_expires_at = NULL
        WHERE id = $1 AND state = 'delivering' AND sender = $2 AND attempts = $3
        RETURNING id, operation_id, target, attempts
      ),
      tried AS (
        INSERT INTO ${attempts} (message_id, n, operation_id, at, duration_ms, ok, status, error)
        SELECT c.id, c.attempts, c.operation_id, a.at, a."durationMs", a.ok, a.status, a.error
        FROM changed c CROSS JOIN jsonb_to_record($6::jsonb) AS a(at bigint, "durationMs" bigint, ok boolean, status int, error text)
      ),
      followed AS (
        UPDATE ${ops} o SET callback_state = $4, callback_attempts = o.callback_attempts + 1,
          callback_last_attempt_at = ($6::jsonb->>'at')::bigint, callback_last_status = ($6::jsonb->>'status')::int
        FROM changed c WHERE o.id = c.operation_id AND c.target = 'callback' AND o.callback_state IS NOT NULL
      )
      SELECT count(*)::int AS n FROM changed`,

    // $1 operation id.
    deliveries: `
      SELECT m.id, m.seq, m.event, m.target, m.state, m.due_at,
        coalesce((
          SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object('at', a.at, 'durationMs', a.duration_ms, 'ok', a.ok,
            'status', a.status, 'error', a.error)) ORDER BY a.n)
          FROM ${attempts} a WHERE a.message_id = m.id
        ), '[]') AS attempts
      FROM ${outbox} m WHERE m.operation_id = $1 ORDER BY m.n`,

    // $1 operation id, $2 now.
    redeliver: `
      WITH changed AS (
        UPDATE ${outbox} SET state = 'pending', due_at = $2
        WHERE operation_id = $1 AND state IN ('delivered', 'failed')
        RETURNING operation_id, target
      ),
      ${callbackFollows(`'pending'`)}
      SELECT count(*)::int AS n FROM changed`,

    // $1 target, $2 now. The target's row first: a message the trigger writes after this commits
    // sees it, and one written before is pending here.
    disableTarget: `
      WITH disabled AS (
        INSERT INTO ${schema}.disabled_targets (target, disabled_at) VALUES ($1, $2) ON CONFLICT (target) DO NOTHING
      ),
      changed AS (
        UPDATE ${outbox} SET state = 'failed' WHERE target = $1 AND state = 'pending'
        RETURNING operation_id, target
      ),
      ${callbackFollows(`'failed'`)}
      SELECT count(*)::int AS n FROM changed`,
  }
}

/**
 * The filters list and stats share (states, owner, what the caller may read), as SQL with `$n`
 * arguments; on the columns of `operations`, or with `counters` on those of `operation_counts`.
 */
export function filters(query: StatsQuery, { counters = false } = {}) {
  const where: string[] = []
  const args: unknown[] = []
  const arg = (value: unknown) => {
    args.push(value)
    return `$${args.length}`
  }
  // `owner = $n` rather than IS NOT DISTINCT FROM, which no index serves.
  const ownerIs = counters
    ? // Anonymous counts have owner '': named too, so that the owner index serves either.
      (owner: string | null) =>
        owner === null ? `(anonymous AND owner = '')` : `(NOT anonymous AND owner = ${arg(owner)})`
    : (owner: string | null) => (owner === null ? 'owner IS NULL' : `owner = ${arg(owner)}`)
  // One state as `=`, so that its (state, seq) index gives a page in order: with ANY the planner
  // cannot count on that order, and reads the whole table backwards past the other states instead
  // (24 ms rather than 0.4 ms for a page of the 1% queued among 1,000,000).
  if (query.states?.length === 1) where.push(`state = ${arg(query.states[0])}::text`)
  else if (query.states?.length) where.push(`state = ANY(${arg(query.states)}::text[])`)
  if (query.owner !== undefined) where.push(ownerIs(query.owner))
  if (query.readable) {
    const { owners, names } = query.readable
    const anyName = names.length ? [`name = ANY(${arg(names)}::text[])`] : []
    where.push(`(${[...owners.map(ownerIs), ...anyName].join(' OR ') || 'FALSE'})`)
  }
  return { where, args, arg }
}
