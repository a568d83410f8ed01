/**
 * Numbered schema migrations, applied in order inside one transaction each; `PRAGMA user_version`
 * records the last one applied. Never edit a released migration: add the next number.
 */
export const MIGRATIONS: readonly { version: number; name: string; sql: string }[] = [
  {
    version: 1,
    name: 'operations',
    sql: `
      CREATE TABLE operations (
        -- Insertion order: newest-first listing and its cursors use it, whatever the id generator.
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
        owner TEXT,
        input TEXT NOT NULL,
        params TEXT NOT NULL,
        query TEXT NOT NULL,
        headers TEXT NOT NULL,
        progress TEXT NOT NULL DEFAULT '{"percent":0}',
        result TEXT,
        error TEXT,
        attempt INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        cancelable INTEGER NOT NULL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        timeout_ms INTEGER,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        completed_at INTEGER,
        expires_at INTEGER,
        run_at INTEGER NOT NULL,
        worker TEXT,
        lease_expires_at INTEGER
      );
      -- Partial indexes: claims look only at live rows, however many finished ones are kept.
      CREATE INDEX operations_due ON operations (name, run_at) WHERE state = 'queued';
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
        seq INTEGER PRIMARY KEY,
        operation_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        event TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        worker TEXT,
        actor TEXT,
        -- 1 when the actor was recorded (actor NULL then means anonymous), 0 for worker events.
        has_actor INTEGER NOT NULL DEFAULT 0,
        error TEXT
      );
      CREATE INDEX operation_events_by_operation ON operation_events (operation_id, seq);
      CREATE TABLE idempotency_keys (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        operation_id TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (scope, key)
      ) WITHOUT ROWID;
      CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
    `,
  },
  {
    version: 3,
    name: 'event log',
    // Progress events carry what the attempt reported; history reads skip them (event <> 'progress').
    sql: `
      ALTER TABLE operation_events ADD COLUMN progress TEXT;
    `,
  },
  {
    version: 4,
    name: 'request id',
    sql: `
      ALTER TABLE operations ADD COLUMN request_id TEXT;
    `,
  },
  {
    version: 5,
    name: 'query and retention indexes',
    // Queries by state over a time range (trim reads the finished states through it too), and lists
    // of one route's operations by state, newest first; the states, owner and seq indexes of version 1
    // serve the rest (version 7 adds trim's own, led by the state so that the planner takes it).
    // Deleting an operation frees its idempotency keys.
    sql: `
      CREATE INDEX operations_by_state_created ON operations (state, created_at);
      CREATE INDEX operations_by_name_state ON operations (name, state, seq);
      CREATE INDEX idempotency_keys_by_operation ON idempotency_keys (operation_id);
    `,
  },
  {
    version: 6,
    name: 'outbox',
    // Each event an operation's subscriptions name makes one message per target, written in the
    // event's transaction (see SqliteWrites.#record). A message is `pending` until due_at, then
    // `delivering` for one sender until lease_expires_at, and ends `delivered` or `failed`; its
    // attempts are rows of delivery_attempts, numbered from 1. The callback_* columns show how the
    // operation's own callback is doing (NULL when it has none). Targets an endpoint disabled (410
    // Gone) get their later messages `failed`.
    sql: `
      ALTER TABLE operations ADD COLUMN callback TEXT;
      ALTER TABLE operations ADD COLUMN subscriptions TEXT;
      ALTER TABLE operations ADD COLUMN callback_state TEXT;
      ALTER TABLE operations ADD COLUMN callback_attempts INTEGER;
      ALTER TABLE operations ADD COLUMN callback_last_attempt_at INTEGER;
      ALTER TABLE operations ADD COLUMN callback_last_status INTEGER;
      CREATE TABLE outbox (
        -- Creation order: claims take the oldest first.
        n INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        operation_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event TEXT NOT NULL,
        at INTEGER NOT NULL,
        target TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'delivering', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        due_at INTEGER NOT NULL,
        sender TEXT,
        lease_expires_at INTEGER
      );
      CREATE INDEX outbox_due ON outbox (state, due_at);
      CREATE INDEX outbox_leased ON outbox (lease_expires_at) WHERE state = 'delivering';
      CREATE INDEX outbox_by_operation ON outbox (operation_id, n);
      CREATE INDEX outbox_by_target ON outbox (target, state);
      CREATE TABLE delivery_attempts (
        message_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        operation_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        status INTEGER,
        error TEXT,
        PRIMARY KEY (message_id, n)
      ) WITHOUT ROWID;
      CREATE INDEX delivery_attempts_by_operation ON delivery_attempts (operation_id);
      CREATE TABLE disabled_targets (
        target TEXT PRIMARY KEY,
        disabled_at INTEGER NOT NULL
      ) WITHOUT ROWID;
    `,
  },
  {
    version: 7,
    name: 'cleanup and stats indexes',
    // Measured on 1,000,000 operations (bench/results/query.md): trim ranks each owner's finished
    // operations of a state newest first, which this index serves in order and covers (1.3 s a call
    // before, 0.9 s after); stats group a state's operations by name, which the second covers.
    sql: `
      CREATE INDEX operations_trim ON operations (state, owner, completed_at DESC, seq DESC)
        WHERE completed_at IS NOT NULL;
      CREATE INDEX operations_by_state_name ON operations (state, name);
    `,
  },
  {
    version: 8,
    name: 'context and deferred operations',
    // The values a hook attached at submit, JSON as given (NULL: none). A deferred operation waits
    // `queued` with run_at at DEFERRED_RUN_AT and an expires_at: operations_due holds it past every
    // due one, and operations_expiry (every row with an expiry, whatever its state) is where purge
    // finds it, so no index changes.
    sql: `
      ALTER TABLE operations ADD COLUMN context TEXT;
    `,
  },
  {
    version: 9,
    name: 'stats counters',
    // How many operations there are of each name, state and owner, kept by triggers in the
    // transaction of every change (insert, claim, outcome, cancel, retry, delete, purge, trim, and an
    // operator's hand-written statement alike): stats read these rows instead of counting operations,
    // which took 140 ms at 1,000,000 (bench/stats-scale.ts). The owner is a key column, so NULL
    // (anonymous) is anonymous = 1 with owner ''. A group back at 0 is removed. Built from the
    // operations already there, in the migration's transaction.
    sql: `
      CREATE TABLE operation_counts (
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        anonymous INTEGER NOT NULL,
        owner TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (name, state, anonymous, owner)
      ) WITHOUT ROWID;
      -- One owner's counts (a quota check on every submission) without reading every owner's.
      CREATE INDEX operation_counts_by_owner ON operation_counts (owner, anonymous);
      INSERT INTO operation_counts (name, state, anonymous, owner, count)
        SELECT name, state, owner IS NULL, coalesce(owner, ''), count(*) FROM operations
        GROUP BY name, state, owner IS NULL, coalesce(owner, '');
      CREATE TRIGGER operations_counted AFTER INSERT ON operations BEGIN
        INSERT INTO operation_counts (name, state, anonymous, owner, count)
          VALUES (NEW.name, NEW.state, NEW.owner IS NULL, coalesce(NEW.owner, ''), 1)
          ON CONFLICT (name, state, anonymous, owner) DO UPDATE SET count = count + 1;
      END;
      CREATE TRIGGER operations_recounted AFTER UPDATE OF name, state, owner ON operations
        WHEN OLD.name IS NOT NEW.name OR OLD.state IS NOT NEW.state OR OLD.owner IS NOT NEW.owner
      BEGIN
        UPDATE operation_counts SET count = count - 1
          WHERE name = OLD.name AND state = OLD.state AND anonymous = (OLD.owner IS NULL)
            AND owner = coalesce(OLD.owner, '');
        DELETE FROM operation_counts
          WHERE name = OLD.name AND state = OLD.state AND anonymous = (OLD.owner IS NULL)
            AND owner = coalesce(OLD.owner, '') AND count = 0;
        INSERT INTO operation_counts (name, state, anonymous, owner, count)
          VALUES (NEW.name, NEW.state, NEW.owner IS NULL, coalesce(NEW.owner, ''), 1)
          ON CONFLICT (name, state, anonymous, owner) DO UPDATE SET count = count + 1;
      END;
      CREATE TRIGGER operations_uncounted AFTER DELETE ON operations BEGIN
        UPDATE operation_counts SET count = count - 1
          WHERE name = OLD.name AND state = OLD.state AND anonymous = (OLD.owner IS NULL)
            AND owner = coalesce(OLD.owner, '');
        DELETE FROM operation_counts
          WHERE name = OLD.name AND state = OLD.state AND anonymous = (OLD.owner IS NULL)
            AND owner = coalesce(OLD.owner, '') AND count = 0;
      END;
    `,
  },
]
