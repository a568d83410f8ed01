import type pg from 'pg'
import { schemaTooNew } from '../../core/errors.js'

/**
 * Numbered schema migrations, applied in order in one transaction, under an advisory lock so that
 * nodes starting together apply each one once; `<schema>.migrations` records those applied. They run
 * with `search_path` set to the store's schema, so the SQL names no schema. Never edit a released
 * migration: add the next number. The tables mirror the SQLite store's (see ../sqlite/migrations.ts),
 * with PostgreSQL types: BIGINT epoch milliseconds, JSONB documents, BOOLEAN flags.
 */
export const MIGRATIONS: readonly { version: number; name: string; sql: string }[] = [
  {
    version: 1,
    name: 'operations',
    sql: `
      CREATE TABLE operations (
        -- Insertion order: newest-first listing and its cursors use it, whatever the id generator.
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
        owner TEXT,
        input JSONB NOT NULL,
        params JSONB NOT NULL,
        query JSONB NOT NULL,
        headers JSONB NOT NULL,
        progress JSONB NOT NULL DEFAULT '{"percent":0}',
        result JSONB,
        error JSONB,
        attempt INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        cancelable BOOLEAN NOT NULL,
        cancel_requested BOOLEAN NOT NULL DEFAULT false,
        timeout_ms BIGINT,
        created_at BIGINT NOT NULL,
        started_at BIGINT,
        completed_at BIGINT,
        expires_at BIGINT,
        run_at BIGINT NOT NULL,
        worker TEXT,
        -- On the database's clock (unless the store is told to trust its callers' clocks).
        lease_expires_at BIGINT
      );
      -- Partial indexes: claims look only at live rows, however many finished ones are kept.
      CREATE INDEX operations_due ON operations (name, run_at, seq) WHERE state = 'queued';
      CREATE INDEX operations_leased ON operations (name, lease_expires_at) WHERE state = 'running';
      CREATE INDEX operations_by_state ON operations (state, seq);
      CREATE INDEX operations_by_owner ON operations (owner, seq);
      CREATE INDEX operations_expiry ON operations (expires_at) WHERE expires_at IS NOT NULL;
    `,
  },
  {
    version: 2,
    name: 'history and idempotency keys',
    sql: `
      CREATE TABLE operation_events (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        operation_id TEXT NOT NULL,
        at BIGINT NOT NULL,
        event TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        worker TEXT,
        actor TEXT,
        -- true when the actor was recorded (actor NULL then means anonymous), false for worker events.
        has_actor BOOLEAN NOT NULL DEFAULT false,
        error JSONB
      );
      CREATE INDEX operation_events_by_operation ON operation_events (operation_id, seq);
      CREATE TABLE idempotency_keys (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        operation_id TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (scope, key)
      );
      CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
      -- Deleting or purging an operation frees its keys: a live key always has its operation.
      CREATE INDEX idempotency_keys_by_operation ON idempotency_keys (operation_id);
    `,
  },
  {
    version: 3,
    name: 'change notices',
    // A trigger rather than a NOTIFY in each statement: every path that changes an operation, an
    // operator's hand-written UPDATE included, wakes the workers and informs the other nodes. The
    // payload is '<origin> <kind> <name or id>': origin is the connection's `longrun.origin`
    // setting, so that a store can skip the notices of its own writes. NOTIFY is delivered at
    // commit, and identical payloads within a transaction are delivered once.
    sql: `
      CREATE FUNCTION notify_operation_change() RETURNS trigger LANGUAGE plpgsql AS $$
      DECLARE
        channel TEXT := 'longrun_' || TG_TABLE_SCHEMA;
        origin TEXT := coalesce(current_setting('longrun.origin', true), '-');
      BEGIN
        IF NEW.state = 'queued' AND (TG_OP = 'INSERT' OR OLD.state <> 'queued' OR OLD.run_at <> NEW.run_at) THEN
          PERFORM pg_notify(channel, origin || ' q ' || NEW.name);
        END IF;
        IF TG_OP = 'UPDATE' THEN
          IF NEW.state = 'running' AND NEW.cancel_requested AND NOT OLD.cancel_requested THEN
            PERFORM pg_notify(channel, origin || ' c ' || NEW.id);
          END IF;
          IF NEW.state <> OLD.state OR NEW.attempt <> OLD.attempt OR NEW.progress <> OLD.progress
             OR NEW.cancel_requested <> OLD.cancel_requested THEN
            PERFORM pg_notify(channel, origin || ' x ' || NEW.id);
          END IF;
        END IF;
        RETURN NULL;
      END
      $$;
      -- Heartbeats set only lease_expires_at: they do not fire it.
      CREATE TRIGGER operations_notify
        AFTER INSERT OR UPDATE OF state, attempt, progress, cancel_requested, run_at ON operations
        FOR EACH ROW EXECUTE FUNCTION notify_operation_change();
    `,
  },
  {
    version: 4,
    name: 'event log',
    // Progress events carry what the attempt reported; history reads skip them (event <> 'progress').
    // No trigger change: notices come from the operations table, whose progress UPDATE already sends
    // one, so the event row written with it adds none.
    sql: `
      ALTER TABLE operation_events ADD COLUMN progress JSONB;
    `,
  },
  {
    version: 5,
    name: 'event feed',
    // Sequence numbers are taken before commit, so concurrent transactions can commit out of their
    // order. The feed reads only transactions older than every running one (the snapshot's xmin),
    // in (transaction id, seq) order: a position read is never passed by a later commit.
    sql: `
      ALTER TABLE operation_events ADD COLUMN tx xid8 NOT NULL DEFAULT pg_current_xact_id();
      CREATE INDEX operation_events_feed ON operation_events (tx, seq);
    `,
  },
  {
    version: 6,
    name: 'request id',
    sql: `
      ALTER TABLE operations ADD COLUMN request_id TEXT;
    `,
  },
  {
    version: 7,
    name: 'query and retention indexes',
    // Queries by state over a time range (trim reads the finished states through it too), and lists
    // of one route's operations by state, newest first; the states, owner and seq indexes of version 1
    // serve the rest, as in the SQLite store's version 5. No index in trim's (owner, state,
    // completedAt) order: the planner sorts the states it reads rather than use one.
    sql: `
      CREATE INDEX operations_by_state_created ON operations (state, created_at);
      CREATE INDEX operations_by_name_state ON operations (name, state, seq);
    `,
  },
  {
    version: 8,
    name: 'outbox',
    // As the SQLite store's version 6, with the messages written by a trigger: every statement that
    // records events (the one change it reports, its events included) writes their messages in the
    // same transaction, however it is written. Statement-level, over the rows the statement added,
    // so that a batch of a hundred outcomes looks its operations up once. SET search_path: the
    // function names the tables of the schema it was created in, whatever the caller's path is.
    // A NOTIFY '<origin> m <target>' per target with new pending messages lets senders skip their
    // poll (listeners that do not know the kind ignore it).
    sql: `
      ALTER TABLE operations ADD COLUMN callback JSONB;
      ALTER TABLE operations ADD COLUMN subscriptions JSONB;
      ALTER TABLE operations ADD COLUMN callback_state TEXT;
      ALTER TABLE operations ADD COLUMN callback_attempts INTEGER;
      ALTER TABLE operations ADD COLUMN callback_last_attempt_at BIGINT;
      ALTER TABLE operations ADD COLUMN callback_last_status INTEGER;
      CREATE TABLE outbox (
        -- Creation order: claims take the oldest first.
        n BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        operation_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        event TEXT NOT NULL,
        at BIGINT NOT NULL,
        target TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'delivering', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        due_at BIGINT NOT NULL,
        sender TEXT,
        lease_expires_at BIGINT
      );
      CREATE INDEX outbox_due ON outbox (state, due_at);
      CREATE INDEX outbox_leased ON outbox (lease_expires_at) WHERE state = 'delivering';
      CREATE INDEX outbox_by_operation ON outbox (operation_id, n);
      CREATE INDEX outbox_by_target ON outbox (target, state);
      CREATE TABLE delivery_attempts (
        message_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        operation_id TEXT NOT NULL,
        at BIGINT NOT NULL,
        duration_ms BIGINT NOT NULL,
        ok BOOLEAN NOT NULL,
        status INTEGER,
        error TEXT,
        PRIMARY KEY (message_id, n)
      );
      CREATE INDEX delivery_attempts_by_operation ON delivery_attempts (operation_id);
      CREATE TABLE disabled_targets (
        target TEXT PRIMARY KEY,
        disabled_at BIGINT NOT NULL
      );
      CREATE FUNCTION outbox_messages() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
      DECLARE
        channel TEXT := 'longrun_' || TG_TABLE_SCHEMA;
        origin TEXT := coalesce(current_setting('longrun.origin', true), '-');
        notified INTEGER;
      BEGIN
        WITH made AS (
          INSERT INTO outbox (id, operation_id, seq, event, at, target, state, due_at)
          SELECT 'msg_' || e.operation_id || '_' || e.seq || '_' || (s.sub->>'target'), e.operation_id, e.seq,
            e.event, e.at, s.sub->>'target',
            CASE WHEN EXISTS (SELECT 1 FROM disabled_targets d WHERE d.target = s.sub->>'target')
              THEN 'failed' ELSE 'pending' END,
            e.at
          FROM added e
            JOIN operations o ON o.id = e.operation_id
            CROSS JOIN LATERAL jsonb_array_elements(o.subscriptions) WITH ORDINALITY AS s(sub, ord)
          WHERE o.subscriptions IS NOT NULL AND (s.sub->'events') ? e.event
          ORDER BY e.seq, s.ord
          RETURNING target, state
        )
        SELECT count(pg_notify(channel, origin || ' m ' || target)) INTO notified
        FROM (SELECT DISTINCT target FROM made WHERE state = 'pending') AS t;
        RETURN NULL;
      END
      $$;
      CREATE TRIGGER operation_events_outbox
        AFTER INSERT ON operation_events REFERENCING NEW TABLE AS added
        FOR EACH STATEMENT EXECUTE FUNCTION outbox_messages();
    `,
  },
  {
    version: 9,
    name: 'context and deferred operations',
    // The values a hook attached at submit (NULL: none). A deferred operation waits 'queued' with
    // run_at at DEFERRED_RUN_AT (2^53 - 1) and an expires_at: operations_due holds it past every due
    // one, and operations_expiry (every row with an expiry) is where purge finds it. The change
    // notices as in version 3, but for such an operation: its insert wakes no worker, and its start
    // (run_at from DEFERRED_RUN_AT to now) wakes them as an insert does, and informs the other nodes
    // of its new event. Its 'queued' event writes messages as any event does (version 8's trigger).
    sql: `
      ALTER TABLE operations ADD COLUMN context JSONB;
      CREATE OR REPLACE FUNCTION notify_operation_change() RETURNS trigger LANGUAGE plpgsql AS $$
      DECLARE
        channel TEXT := 'longrun_' || TG_TABLE_SCHEMA;
        origin TEXT := coalesce(current_setting('longrun.origin', true), '-');
      BEGIN
        IF NEW.state = 'queued' AND NEW.run_at <> 9007199254740991
           AND (TG_OP = 'INSERT' OR OLD.state <> 'queued' OR OLD.run_at <> NEW.run_at) THEN
          PERFORM pg_notify(channel, origin || ' q ' || NEW.name);
        END IF;
        IF TG_OP = 'UPDATE' THEN
          IF NEW.state = 'running' AND NEW.cancel_requested AND NOT OLD.cancel_requested THEN
            PERFORM pg_notify(channel, origin || ' c ' || NEW.id);
          END IF;
          IF NEW.state <> OLD.state OR NEW.attempt <> OLD.attempt OR NEW.progress <> OLD.progress
             OR NEW.cancel_requested <> OLD.cancel_requested OR NEW.run_at <> OLD.run_at THEN
            PERFORM pg_notify(channel, origin || ' x ' || NEW.id);
          END IF;
        END IF;
        RETURN NULL;
      END
      $$;
    `,
  },
  {
    version: 10,
    name: 'stats counters',
    // How many operations there are of each name, state and owner, kept by statement-level triggers
    // in the transaction of every change (insert, claim, outcome, cancel, retry, delete, purge, trim,
    // and an operator's hand-written statement alike): stats read these rows instead of counting
    // operations, which took 360 ms at 1,000,000 (bench/stats-scale.ts). The owner is a key column,
    // so NULL (anonymous) is anonymous with owner ''. Each group has up to 16 shards, one per
    // backend (pid % 16), that stats add up: the row a change updates stays locked until its
    // transaction commits, and one row per group would make every claim and outcome of a name wait
    // for the commit of the one before. Each statement updates its rows in key order, so that two
    // statements never wait for each other both ways (a deadlock). A group's shards can go negative
    // one by one (a claim on one backend of an operation inserted on another); their sum is exact.
    // Built from the operations already there after the triggers exist: creating them locks the
    // table against writes until the migration commits, so that no change is counted twice or lost.
    sql: `
      CREATE TABLE operation_counts (
        shard SMALLINT NOT NULL,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        anonymous BOOLEAN NOT NULL,
        owner TEXT NOT NULL,
        count BIGINT NOT NULL,
        PRIMARY KEY (shard, name, state, anonymous, owner)
      );
      -- One owner's counts (a quota check on every submission) without reading every owner's. The
      -- count is in no index: its updates stay heap-only.
      CREATE INDEX operation_counts_by_owner ON operation_counts (owner, anonymous);
      -- What each statement changed, by group: +1 for a row it added, -1 for a row it removed (an
      -- UPDATE removes the old version and adds the new: a group it left alone nets 0 and is skipped).
      CREATE FUNCTION count_operations() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
      BEGIN
        IF TG_OP = 'INSERT' THEN
          INSERT INTO operation_counts AS c (shard, name, state, anonymous, owner, count)
          SELECT pg_backend_pid() % 16, name, state, owner IS NULL, coalesce(owner, ''), count(*)
          FROM added GROUP BY name, state, owner IS NULL, coalesce(owner, '')
          ORDER BY 2, 3, 4, 5
          ON CONFLICT (shard, name, state, anonymous, owner) DO UPDATE SET count = c.count + EXCLUDED.count;
        ELSIF TG_OP = 'DELETE' THEN
          INSERT INTO operation_counts AS c (shard, name, state, anonymous, owner, count)
          SELECT pg_backend_pid() % 16, name, state, owner IS NULL, coalesce(owner, ''), -count(*)
          FROM removed GROUP BY name, state, owner IS NULL, coalesce(owner, '')
          ORDER BY 2, 3, 4, 5
          ON CONFLICT (shard, name, state, anonymous, owner) DO UPDATE SET count = c.count + EXCLUDED.count;
        ELSE
          INSERT INTO operation_counts AS c (shard, name, state, anonymous, owner, count)
          SELECT pg_backend_pid() % 16, name, state, owner IS NULL, coalesce(owner, ''), sum(delta)
          FROM (
            SELECT name, state, owner, 1 AS delta FROM added
            UNION ALL
            SELECT name, state, owner, -1 FROM removed
          ) AS changed
          GROUP BY name, state, owner IS NULL, coalesce(owner, '')
          HAVING sum(delta) <> 0
          ORDER BY 2, 3, 4, 5
          ON CONFLICT (shard, name, state, anonymous, owner) DO UPDATE SET count = c.count + EXCLUDED.count;
        END IF;
        RETURN NULL;
      END
      $$;
      CREATE TRIGGER operations_counted AFTER INSERT ON operations REFERENCING NEW TABLE AS added
        FOR EACH STATEMENT EXECUTE FUNCTION count_operations();
      CREATE TRIGGER operations_recounted AFTER UPDATE ON operations
        REFERENCING OLD TABLE AS removed NEW TABLE AS added
        FOR EACH STATEMENT EXECUTE FUNCTION count_operations();
      CREATE TRIGGER operations_uncounted AFTER DELETE ON operations REFERENCING OLD TABLE AS removed
        FOR EACH STATEMENT EXECUTE FUNCTION count_operations();
      INSERT INTO operation_counts (shard, name, state, anonymous, owner, count)
        SELECT 0, name, state, owner IS NULL, coalesce(owner, ''), count(*) FROM operations
        GROUP BY name, state, owner IS NULL, coalesce(owner, '');
    `,
  },
  {
    version: 11,
    name: 'cheaper triggers',
    // Version 8's trigger joined the new events with operations, which the planner (that cannot see
    // that few operations have subscriptions) served with a scan of the whole table: every claim,
    // outcome and insert paid for every operation kept (2 ms at 8,000). A subquery per event probes
    // the id index instead: the cost follows the statement's events, not the table. The same messages.
    // The change notices of version 9, from one call per statement rather than one per row (a
    // fifth of a 500-operation insert): the same notices in the same order, from the rows' old and
    // new versions, which PostgreSQL already keeps for the counters of version 10.
    sql: `
      CREATE FUNCTION notify_operation_changes() RETURNS trigger LANGUAGE plpgsql AS $$
      DECLARE
        channel TEXT := 'longrun_' || TG_TABLE_SCHEMA;
        origin TEXT := coalesce(current_setting('longrun.origin', true), '-');
        notified INTEGER;
      BEGIN
        IF TG_OP = 'INSERT' THEN
          SELECT count(pg_notify(channel, origin || ' q ' || name)) INTO notified
          FROM (SELECT DISTINCT name FROM added WHERE state = 'queued' AND run_at <> 9007199254740991) AS q;
        ELSE
          SELECT count(pg_notify(channel, origin || notice)) INTO notified FROM (
            SELECT n.seq, v.k, v.notice
            FROM removed o JOIN added n ON n.seq = o.seq
              CROSS JOIN LATERAL (VALUES
                (1, CASE WHEN n.state = 'queued' AND n.run_at <> 9007199254740991
                  AND (o.state <> 'queued' OR o.run_at <> n.run_at) THEN ' q ' || n.name END),
                (2, CASE WHEN n.state = 'running' AND n.cancel_requested AND NOT o.cancel_requested
                  THEN ' c ' || n.id END),
                (3, CASE WHEN n.state <> o.state OR n.attempt <> o.attempt OR n.progress <> o.progress
                  OR n.cancel_requested <> o.cancel_requested OR n.run_at <> o.run_at THEN ' x ' || n.id END)
              ) AS v(k, notice)
            WHERE v.notice IS NOT NULL
            ORDER BY n.seq, v.k
          ) AS t;
        END IF;
        RETURN NULL;
      END
      $$;
      DROP TRIGGER operations_notify ON operations;
      DROP FUNCTION notify_operation_change();
      CREATE TRIGGER operations_notify_inserted AFTER INSERT ON operations REFERENCING NEW TABLE AS added
        FOR EACH STATEMENT EXECUTE FUNCTION notify_operation_changes();
      -- Heartbeats fire it too (a trigger with transition tables cannot name columns), and send nothing.
      CREATE TRIGGER operations_notify_updated AFTER UPDATE ON operations
        REFERENCING OLD TABLE AS removed NEW TABLE AS added
        FOR EACH STATEMENT EXECUTE FUNCTION notify_operation_changes();
      CREATE OR REPLACE FUNCTION outbox_messages() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
      DECLARE
        channel TEXT := 'longrun_' || TG_TABLE_SCHEMA;
        origin TEXT := coalesce(current_setting('longrun.origin', true), '-');
        notified INTEGER;
      BEGIN
        WITH subscribed AS MATERIALIZED (
          SELECT e.operation_id, e.seq, e.event, e.at,
            (SELECT o.subscriptions FROM operations o WHERE o.id = e.operation_id) AS subscriptions
          FROM added e
        ),
        made AS (
          INSERT INTO outbox (id, operation_id, seq, event, at, target, state, due_at)
          SELECT 'msg_' || e.operation_id || '_' || e.seq || '_' || (s.sub->>'target'), e.operation_id, e.seq,
            e.event, e.at, s.sub->>'target',
            CASE WHEN EXISTS (SELECT 1 FROM disabled_targets d WHERE d.target = s.sub->>'target')
              THEN 'failed' ELSE 'pending' END,
            e.at
          FROM subscribed e
            CROSS JOIN LATERAL jsonb_array_elements(e.subscriptions) WITH ORDINALITY AS s(sub, ord)
          WHERE e.subscriptions IS NOT NULL AND (s.sub->'events') ? e.event
          ORDER BY e.seq, s.ord
          RETURNING target, state
        )
        SELECT count(pg_notify(channel, origin || ' m ' || target)) INTO notified
        FROM (SELECT DISTINCT target FROM made WHERE state = 'pending') AS t;
        RETURN NULL;
      END
      $$;
    `,
  },
]

// Advisory lock class for migrations; the schema's hash is the other half of the key.
const MIGRATION_LOCK = 0x6c6f6e67 // 'long'

/**
 * Brings `schema` to the latest migration, creating it when missing; refuses with `schema-too-new`
 * a schema a newer longrun migrated.
 */
export async function migrate(pool: pg.Pool, schema: string): Promise<void> {
  const client = await pool.connect()
  try {
    await client.query('BEGIN')
    // Nodes starting together queue here; each finds what the first one applied.
    await client.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [MIGRATION_LOCK, schema])
    const { rows: found } = await client.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema])
    // CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege even when the schema exists.
    if (found.length === 0) await client.query(`CREATE SCHEMA ${schema}`)
    await client.query(`SET LOCAL search_path TO ${schema}`)
    await client.query(
      `CREATE TABLE IF NOT EXISTS migrations (
         version INTEGER PRIMARY KEY,
         name TEXT NOT NULL,
         applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
       )`,
    )
    const { rows } = await client.query<{ version: number | null }>('SELECT max(version) AS version FROM migrations')
    const current = rows[0]?.version ?? 0
    const latest = MIGRATIONS[MIGRATIONS.length - 1]!.version
    if (current > latest) {
      throw schemaTooNew(` '${schema}'`, current, latest)
    }
    for (const migration of MIGRATIONS) {
      if (migration.version <= current) continue
      await client.query(migration.sql)
      await client.query('INSERT INTO migrations (version, name) VALUES ($1, $2)', [migration.version, migration.name])
    }
    await client.query('COMMIT')
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {})
    throw err
  } finally {
    client.release()
  }
}
