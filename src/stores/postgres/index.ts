import { randomBytes } from 'node:crypto'
import pg from 'pg'
import {
  canceledError,
  duplicateOperationId,
  invalidOption,
  LongrunError,
  operationError,
  schemaTooNew,
  storeClosed,
} from '../../core/errors.js'
import { silentLogger, type Logger } from '../../core/logger.js'
import type { Store, StoreNotice } from '../../core/store.js'
import type {
  ClaimRequest,
  HistoryEntry,
  HistoryEvent,
  IdempotencyKey,
  IdempotencyLookup,
  IdempotentInsert,
  IdempotentUse,
  Lease,
  LeaseStatus,
  ListQuery,
  NewOperation,
  Operation,
  OperationError,
  OperationState,
  Outcome,
  Page,
  Progress,
  StatsQuery,
  StatsRow,
} from '../../core/types.js'
import { Batch, Lane } from './lane.js'
import { MIGRATIONS } from './migrations.js'

export interface PostgresStoreOptions extends pg.PoolConfig {
  /**
   * The schema holding longrun's tables, created and migrated when missing: lowercase letters,
   * digits and `_`, at most 48 characters. Several longrun deployments can share one database
   * under different schemas; their notices never mix.
   * @default 'longrun'
   */
  schema?: string
  /**
   * Whose clock leases run on. `'database'`: claims and heartbeats compute and compare lease expiry
   * with the PostgreSQL server's clock, so that nodes whose clocks disagree still agree on which
   * leases lapsed. `'caller'`: the `now` the engine passes, like the other stores (e.g. for tests
   * with an injected clock). Every other time is the caller's in both modes.
   * @default 'database'
   */
  leaseClock?: 'database' | 'caller'
  /** Most operations one INSERT statement carries when inserts arrive together. @default 500 */
  maxBatch?: number
  /** Reports listener reconnects and errors of idle connections. @default silent */
  logger?: Logger
}

/** A PostgreSQL store; `ready()` surfaces a failed migration (e.g. `schema-too-new`) at startup. */
export interface PostgresStore extends Store {
  readonly schema: string
  /** Resolves once the schema is migrated; rejects as every other call would (e.g. `schema-too-new`). */
  ready(): Promise<void>
  /**
   * Delivers other nodes' changes (LISTEN/NOTIFY on a connection of its own, opened by the first
   * subscriber, closed with the last), never this store's own.
   */
  subscribe(listener: (notice: StoreNotice) => void): () => void
}

/**
 * The shared store for several processes and machines. Claims lock with `FOR UPDATE SKIP LOCKED`,
 * leases run on the database's clock, every state change is one statement (its history entry
 * included), inserts that arrive together share one INSERT, and `subscribe` delivers other nodes'
 * changes through LISTEN/NOTIFY on a dedicated connection that reconnects when it drops.
 * The factory returns at once; the schema is migrated in the background and every call waits for it.
 */
export function postgresStore(options: PostgresStoreOptions = {}): PostgresStore {
  return new PgStore(options)
}

interface Row {
  seq: number
  id: string
  name: string
  state: OperationState
  owner: string | null
  input: unknown
  params: Record<string, string>
  query: Record<string, unknown>
  headers: Record<string, string>
  progress: Progress
  result: unknown
  error: OperationError | null
  attempt: number
  max_attempts: number
  cancelable: boolean
  cancel_requested: boolean
  timeout_ms: number | null
  created_at: number
  started_at: number | null
  completed_at: number | null
  expires_at: number | null
  run_at: number
  worker: string | null
  lease_expires_at: number | null
}

interface EventRow {
  seq: number | string
  at: number
  event: HistoryEvent
  attempt: number
  worker: string | null
  actor: string | null
  has_actor: boolean
  error: OperationError | null
}

interface PendingInsert {
  op: NewOperation
  resolve: (op: Operation) => void
  reject: (reason: unknown) => void
}

const SCHEMA_PATTERN = /^[a-z_][a-z0-9_]{0,47}$/
const FINISHED = `state IN ('succeeded', 'failed', 'canceled')`
// Advisory lock class for migrations; the schema's hash is the other half of the key.
const MIGRATION_LOCK = 0x6c6f6e67 // 'long'
const INT8_OID = 20
const UNIQUE_VIOLATION = '23505'
const UNTRANSLATABLE_CHARACTER = '22P05'
const CHARACTER_NOT_IN_REPERTOIRE = '22021'
// U+0000 as JSON.stringify writes it: `\u0000` after an even number of backslashes.
const NUL_ESCAPE = /(?<!\\)(?:\\\\)*\\u0000/
const NUL_ESCAPES = /(?<!\\)((?:\\\\)*)\\u0000/g

// Epoch milliseconds now, on the server's clock.
const DATABASE_NOW = `(extract(epoch from clock_timestamp()) * 1000)::bigint`

class PgStore implements PostgresStore {
  readonly schema: string
  readonly #pool: pg.Pool
  readonly #clientConfig: pg.ClientConfig
  readonly #logger: Logger
  readonly #maxBatch: number
  /** Tags this store's connections so that it can tell its own notices from other nodes'. */
  readonly #origin = randomBytes(6).toString('hex')
  readonly #channel: string
  readonly #sql: ReturnType<typeof statements>
  #ready: Promise<void>
  #migrationFailedAt = 0
  readonly #inFlight = new Set<Promise<unknown>>()
  readonly #progresses
  readonly #heartbeats
  readonly #settles
  readonly #releases
  /** Writes under leases, one statement at a time: see ./lane.ts. */
  readonly #lane: Lane
  #inserts: PendingInsert[] = []
  #flushScheduled = false
  readonly #listeners = new Set<(notice: StoreNotice) => void>()
  #listener: NoticeListener | undefined
  /** Names this store has claimed: after a listener reconnect they are worth a claim at once. */
  readonly #names = new Set<string>()
  #closing: Promise<void> | undefined

  constructor(options: PostgresStoreOptions) {
    const { schema = 'longrun', leaseClock = 'database', maxBatch = 500, logger, ...config } = options
    if (!SCHEMA_PATTERN.test(schema)) {
      throw invalidOption('schema', 'must be 1-48 lowercase letters, digits or underscores, not starting with a digit')
    }
    if (leaseClock !== 'database' && leaseClock !== 'caller') {
      throw invalidOption('leaseClock', "must be 'database' or 'caller'")
    }
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw invalidOption('maxBatch', 'must be a positive integer')
    this.schema = schema
    this.#maxBatch = maxBatch
    this.#logger = logger ?? silentLogger
    this.#channel = `longrun_${schema}`
    this.#sql = statements(schema, leaseClock)
    const userTypes = config.types
    this.#clientConfig = {
      ...config,
      // BIGINT epoch milliseconds and counts as numbers, for this store's connections only.
      types: {
        getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
          oid === INT8_OID && format !== 'binary'
            ? (value: string) => Number(value)
            : (userTypes ?? pg.types).getTypeParser(oid, format)) as typeof pg.types.getTypeParser,
      },
      options: [config.options, `-c longrun.origin=${this.#origin}`].filter(Boolean).join(' '),
    }
    this.#pool = new pg.Pool({ ...config, ...this.#clientConfig })
    // An idle connection that breaks is dropped by the pool; without a listener it would crash the process.
    this.#pool.on('error', (err) => this.#logger.warn({ err }, 'longrun: idle PostgreSQL connection failed'))
    const batches = this.#batches()
    this.#progresses = batches.progress
    this.#heartbeats = batches.heartbeat
    this.#settles = batches.settle
    this.#releases = batches.release
    // Progress first: a handler's last progress, issued with its return, lands before its outcome.
    this.#lane = new Lane([batches.progress, batches.heartbeat, batches.settle, batches.release] as Batch<
      never,
      unknown
    >[])
    this.#ready = this.#startMigration()
  }

  ready(): Promise<void> {
    return this.#whenMigrated()
  }

  #startMigration(): Promise<void> {
    const migrating = this.#migrate()
    // Surfaced by ready() and by every call; never an unhandled rejection.
    migrating.catch(() => (this.#migrationFailedAt = Date.now()))
    return migrating
  }

  /**
   * The migration's outcome. One that failed for want of the database (not reachable yet, say) is
   * tried again, at most once a second, so that a node started before its database recovers;
   * `schema-too-new` is final.
   */
  #whenMigrated(): Promise<void> {
    if (this.#migrationFailedAt !== 0 && Date.now() - this.#migrationFailedAt >= 1_000) {
      const last = this.#ready
      this.#migrationFailedAt = 0
      this.#ready = last.then(
        () => undefined,
        (err: unknown) => (err instanceof LongrunError ? Promise.reject(err) : this.#startMigration()),
      )
      this.#ready.catch(() => {})
    }
    return this.#ready
  }

  insert(op: NewOperation): Promise<Operation> {
    if (this.#closing) return Promise.reject(storeClosed())
    return new Promise<Operation>((resolve, reject) => {
      this.#inserts.push({ op, resolve, reject })
      if (!this.#flushScheduled) {
        this.#flushScheduled = true
        setImmediate(() => this.#flushInserts())
      }
    })
  }

  /** Inserts every insert issued in the same event-loop turn with one statement per `maxBatch`. */
  #flushInserts(): void {
    this.#flushScheduled = false
    const pending = this.#inserts
    this.#inserts = []
    for (let i = 0; i < pending.length; i += this.#maxBatch) {
      this.#track(this.#insertBatch(pending.slice(i, i + this.#maxBatch)))
    }
  }

  async #insertBatch(pending: PendingInsert[]): Promise<void> {
    const batch: PendingInsert[] = []
    const documents: string[] = []
    for (const write of pending) {
      const document = JSON.stringify(newRow(write.op))
      // JSONB and TEXT cannot hold U+0000: refuse that operation alone, before the statement does.
      if (NUL_ESCAPE.test(document)) write.reject(unsupportedValue())
      else {
        batch.push(write)
        documents.push(document)
      }
    }
    if (batch.length === 0) return
    let rows: Row[]
    try {
      rows = await this.#query<Row>(this.#sql.insert, [`[${documents.join(',')}]`])
    } catch (err) {
      if (batch.length === 1 || !isDataError(err)) {
        for (const write of batch) write.reject(storeError(err))
        return
      }
      // Whatever failed the statement must fail only its own operation: halve until it is alone,
      // one half after the other so that `seq` still follows the order of submission.
      const half = Math.ceil(batch.length / 2)
      await this.#insertBatch(batch.slice(0, half))
      await this.#insertBatch(batch.slice(half))
      return
    }
    // ON CONFLICT DO NOTHING: an id already taken, in the table or earlier in this batch, has no row.
    const byId = new Map(rows.map((row) => [row.id, row]))
    for (const write of batch) {
      const row = byId.get(write.op.id)
      byId.delete(write.op.id)
      if (row) write.resolve(toOperation(row))
      else write.reject(duplicateOperationId(write.op.id))
    }
  }

  async insertIdempotent(op: NewOperation, key: IdempotencyKey, now: number): Promise<IdempotentInsert> {
    // Takes the key (or a lapsed one) and inserts in one statement; a live key, even one another
    // node is taking at this moment, makes the INSERT wait for that node's commit and then skip.
    if (NUL_ESCAPE.test(JSON.stringify(newRow(op)))) throw unsupportedValue()
    for (let tries = 0; ; tries++) {
      const [row] = await this.#run<Row>(this.#sql.insertIdempotent, [
        escapeNul(key.scope),
        escapeNul(key.key),
        key.fingerprint,
        key.expiresAt,
        now,
        JSON.stringify([newRow(op)]),
      ])
      if (row) return { kind: 'inserted', op: toOperation(row) }
      const used = await this.findIdempotent(key, now)
      if (used) return used
      // The key lapsed, or its operation was deleted, between the two statements: take it afresh.
      if (tries === 5) throw new Error(`idempotency key '${key.key}' kept changing under concurrent use`)
    }
  }

  async findIdempotent(key: IdempotencyLookup, now: number): Promise<IdempotentUse | undefined> {
    const [used] = await this.#run<Row & { fingerprint: string }>(this.#sql.usedKey, [
      escapeNul(key.scope),
      escapeNul(key.key),
      now,
    ])
    if (!used) return undefined
    return used.fingerprint === key.fingerprint ? { kind: 'replayed', op: toOperation(used) } : { kind: 'mismatch' }
  }

  async get(id: string): Promise<Operation | undefined> {
    const [row] = await this.#run<Row>(this.#sql.get, [id])
    return row && toOperation(row)
  }

  async history(id: string): Promise<HistoryEntry[]> {
    const rows = await this.#run<EventRow>(this.#sql.history, [id])
    return rows.map((row) => {
      const entry: HistoryEntry = { seq: Number(row.seq), at: row.at, event: row.event, attempt: row.attempt }
      if (row.worker !== null) entry.worker = row.worker
      if (row.has_actor) entry.actor = row.actor
      if (row.error !== null) entry.error = row.error
      return entry
    })
  }

  async list(query: ListQuery): Promise<Page> {
    const { where, args, arg } = filters(query)
    if (query.name !== undefined) where.push(`name = ${arg(query.name)}`)
    if (query.cursor !== undefined) {
      const before = Number(query.cursor)
      // Like SQLite comparing with NULL: a cursor that is no position matches nothing.
      if (!Number.isSafeInteger(before)) return { items: [] }
      where.push(`seq < ${arg(before)}`)
    }
    const sql = `SELECT * FROM ${this.schema}.operations ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
      ORDER BY seq DESC LIMIT ${arg(query.limit + 1)}`
    const rows = await this.#run<Row>(sql, args)
    const more = rows.length > query.limit
    const page = rows.slice(0, query.limit)
    return { items: page.map(toOperation), ...(more ? { nextCursor: String(page[page.length - 1]!.seq) } : {}) }
  }

  async stats(query: StatsQuery): Promise<StatsRow[]> {
    const { where, args } = filters(query)
    const sql = `SELECT name, state, count(*)::int AS count FROM ${this.schema}.operations
      ${where.length ? `WHERE ${where.join(' AND ')}` : ''} GROUP BY name, state`
    return this.#run<StatsRow>(sql, args)
  }

  async claim(worker: string, wants: ClaimRequest[], leaseMs: number, now: number): Promise<Operation[]> {
    const asked = wants.filter((want) => want.limit > 0)
    if (asked.length === 0) return []
    for (const { name } of asked) this.#names.add(name)
    const rows = await this.#run<Row>(this.#sql.claim, [
      asked.map((want) => want.name),
      asked.map((want) => want.limit),
      worker,
      now,
      leaseMs,
    ])
    return rows.map(toOperation)
  }

  heartbeat(lease: Lease, leaseMs: number, now: number): Promise<LeaseStatus> {
    return this.#held(this.#heartbeats, { ...lease, leaseMs, now })
  }

  progress(lease: Lease, progress: Progress): Promise<boolean> {
    return this.#held(this.#progresses, { ...lease, progress: storable(progress) })
  }

  settle(lease: Lease, outcome: Outcome, now: number): Promise<Operation | undefined> {
    return this.#held(this.#settles, { ...lease, outcome: storableOutcome(outcome), now })
  }

  release(lease: Lease, now: number): Promise<boolean> {
    return this.#held(this.#releases, { ...lease, now })
  }

  /** Queues a write under a lease for the next statement of its kind. */
  #held<In, Out>(batch: Batch<In, Out>, item: In): Promise<Out> {
    if (this.#closing) return Promise.reject(storeClosed())
    return this.#track(this.#lane.push(batch, item))
  }

  #batches() {
    const leaseKey = (lease: Lease) => `${lease.id}\u0000${lease.attempt}\u0000${lease.worker}`
    const error = storeError
    const rows = <R>(text: string, items: object[]) =>
      this.#query<R & { ord: number }>(text, [JSON.stringify(items.map((item, ord) => ({ ...item, ord })))])
    /** The answer for each item, from the rows RETURNING its `ord`. */
    const answers = <R, Out>(found: (R & { ord: number })[], count: number, answer: (row: R | undefined) => Out) => {
      const byOrd = new Map(found.map((row) => [row.ord, row]))
      return Array.from({ length: count }, (_, ord) => answer(byOrd.get(ord)))
    }
    const splittable = isDataError
    const progress = new Batch<Lease & { progress: Progress }, boolean>(
      {
        key: leaseKey,
        duplicates: 'coalesce',
        error,
        splittable,
        run: async (items) => answers(await rows(this.#sql.progress, items), items.length, (row) => row !== undefined),
      },
      this.#maxBatch,
    )
    const heartbeat = new Batch<Lease & { leaseMs: number; now: number }, LeaseStatus>(
      {
        key: leaseKey,
        duplicates: 'coalesce',
        error,
        splittable,
        run: async (items) =>
          answers(await rows<{ cancel_requested: boolean }>(this.#sql.heartbeat, items), items.length, (row) => ({
            held: row !== undefined,
            cancelRequested: row?.cancel_requested === true,
          })),
      },
      this.#maxBatch,
    )
    const settle = new Batch<Lease & { outcome: Outcome; now: number }, Operation | undefined>(
      {
        key: leaseKey,
        duplicates: 'defer',
        error,
        splittable,
        run: async (items) =>
          answers(
            await rows<Row>(
              this.#sql.settle,
              items.map(({ outcome, ...item }) => ({
                ...item,
                state: outcome.state,
                result: outcome.state === 'succeeded' ? (outcome.result ?? null) : null,
                error: outcome.state === 'succeeded' ? null : outcome.error,
                runAt: outcome.state === 'queued' ? outcome.runAt : null,
                expiresAt: outcome.state === 'queued' ? null : outcome.expiresAt,
              })),
            ),
            items.length,
            (row) => row && toOperation(row),
          ),
      },
      this.#maxBatch,
    )
    const release = new Batch<Lease & { now: number }, boolean>(
      {
        key: leaseKey,
        duplicates: 'defer',
        error,
        splittable,
        run: async (items) => answers(await rows(this.#sql.release, items), items.length, (row) => row !== undefined),
      },
      this.#maxBatch,
    )
    return { progress, heartbeat, settle, release }
  }

  async cancel(
    id: string,
    now: number,
    expiresAt: number,
    actor: string | null = null,
  ): Promise<Operation | undefined> {
    const [row] = await this.#run<Row>(this.#sql.cancel, [id, now, expiresAt, JSON.stringify(canceledError()), actor])
    return row && toOperation(row)
  }

  async requeue(
    id: string,
    attempts: number,
    now: number,
    actor: string | null = null,
  ): Promise<Operation | undefined> {
    const [row] = await this.#run<Row>(this.#sql.requeue, [id, attempts, now, actor])
    return row && toOperation(row)
  }

  async delete(id: string): Promise<boolean> {
    const [row] = await this.#run<{ n: number }>(this.#sql.delete, [id])
    return row!.n === 1
  }

  async purge(now: number, limit: number): Promise<number> {
    const [row] = await this.#run<{ n: number }>(this.#sql.purge, [now, limit])
    return row!.n
  }

  subscribe(listener: (notice: StoreNotice) => void): () => void {
    this.#listeners.add(listener)
    if (!this.#listener && !this.#closing) {
      this.#listener = new NoticeListener(this.#clientConfig, this.#channel, this.#logger, {
        notice: (origin, notice) => {
          if (origin !== this.#origin) this.#deliver(notice)
        },
        // Notices sent while the connection was down are lost: claim what may have come meanwhile.
        reconnected: () => {
          for (const name of this.#names) this.#deliver({ kind: 'queued', name })
        },
      })
      // LISTEN on a schema that does not exist yet is fine: the channel is only a name.
      this.#listener.start()
    }
    return () => {
      this.#listeners.delete(listener)
      if (this.#listeners.size === 0 && this.#listener) {
        void this.#listener.stop()
        this.#listener = undefined
      }
    }
  }

  #deliver(notice: StoreNotice): void {
    for (const listener of this.#listeners) {
      try {
        listener(notice)
      } catch (err) {
        this.#logger.error({ err }, 'longrun: a store notice listener threw')
      }
    }
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      const steps = [
        async () => {
          // Inserts already issued still commit.
          if (this.#flushScheduled) this.#flushInserts()
        },
        () => this.#listener?.stop(),
        async () => {
          while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight])
        },
        () => this.#pool.end(),
      ]
      for (const step of steps) {
        try {
          await step()
        } catch (err) {
          this.#logger.error({ err }, 'longrun: error while closing the PostgreSQL store')
        }
      }
      this.#listener = undefined
    })()
    return this.#closing
  }

  /** Runs one statement unless the store is closing; close() waits for it. */
  #run<R>(text: string, values: unknown[]): Promise<R[]> {
    if (this.#closing) return Promise.reject(storeClosed())
    return this.#track(this.#query<R>(text, values).catch((err: unknown) => Promise.reject(storeError(err))))
  }

  #track<T>(promise: Promise<T>): Promise<T> {
    this.#inFlight.add(promise)
    const forget = () => this.#inFlight.delete(promise)
    promise.then(forget, forget)
    return promise
  }

  async #query<R>(text: string, values: unknown[]): Promise<R[]> {
    await this.#whenMigrated()
    const result = await this.#pool.query(text, values)
    return result.rows as R[]
  }

  async #migrate(): Promise<void> {
    const client = await this.#pool.connect()
    try {
      await client.query('BEGIN')
      // Nodes starting together queue here; each finds what the first one applied.
      await client.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [MIGRATION_LOCK, this.schema])
      const { rows: found } = await client.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [this.schema])
      // CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege even when the schema exists.
      if (found.length === 0) await client.query(`CREATE SCHEMA ${this.schema}`)
      await client.query(`SET LOCAL search_path TO ${this.schema}`)
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
        throw schemaTooNew(` '${this.schema}'`, current, latest)
      }
      for (const migration of MIGRATIONS) {
        if (migration.version <= current) continue
        await client.query(migration.sql)
        await client.query('INSERT INTO migrations (version, name) VALUES ($1, $2)', [
          migration.version,
          migration.name,
        ])
      }
      await client.query('COMMIT')
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {})
      throw err
    } finally {
      client.release()
    }
  }
}

interface ListenerHooks {
  notice(origin: string, notice: StoreNotice): void
  reconnected(): void
}

/**
 * Listens on one channel over a connection of its own (a pooled one would be handed to queries and
 * lose its LISTEN), and reconnects with backoff when it drops.
 */
class NoticeListener {
  readonly #config: pg.ClientConfig
  readonly #channel: string
  readonly #logger: Logger
  readonly #on: ListenerHooks
  #client: pg.Client | undefined
  #timer: NodeJS.Timeout | undefined
  #stopped = false
  #connectedOnce = false
  #backoffMs = 100

  constructor(config: pg.ClientConfig, channel: string, logger: Logger, on: ListenerHooks) {
    // TCP keepalive notices a peer that vanished without closing the connection.
    this.#config = { keepAlive: true, keepAliveInitialDelayMillis: 10_000, ...config }
    this.#channel = channel
    this.#logger = logger
    this.#on = on
  }

  start(): void {
    void this.#connect()
  }

  async #connect(): Promise<void> {
    this.#timer = undefined
    if (this.#stopped) return
    const client = new pg.Client(this.#config)
    this.#client = client
    client.on('error', (err) => this.#lost(client, err))
    client.on('end', () => this.#lost(client))
    client.on('notification', (message) => {
      if (message.channel !== this.#channel || message.payload === undefined) return
      const parsed = parseNotice(message.payload)
      if (parsed) this.#on.notice(parsed.origin, parsed.notice)
    })
    try {
      await client.connect()
      await client.query(`LISTEN "${this.#channel}"`)
    } catch (err) {
      this.#lost(client, err)
      return
    }
    if (this.#client !== client) return
    this.#backoffMs = 100
    if (this.#connectedOnce) {
      this.#logger.info({ channel: this.#channel }, 'longrun: PostgreSQL listener reconnected')
      this.#on.reconnected()
    }
    this.#connectedOnce = true
  }

  #lost(client: pg.Client, err?: unknown): void {
    if (this.#client !== client) return
    this.#client = undefined
    client.end().catch(() => {})
    if (this.#stopped) return
    this.#logger.warn({ err, retryInMs: this.#backoffMs }, 'longrun: PostgreSQL listener connection lost')
    this.#timer = setTimeout(() => void this.#connect(), this.#backoffMs)
    this.#timer.unref()
    this.#backoffMs = Math.min(this.#backoffMs * 2, 5_000)
  }

  async stop(): Promise<void> {
    this.#stopped = true
    clearTimeout(this.#timer)
    const client = this.#client
    this.#client = undefined
    if (!client) return
    // A connection whose peer vanished may never confirm its end: do not hold close() up for it.
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      client.end().catch(() => {}),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, 2_000))),
    ])
    clearTimeout(timer)
  }
}

function parseNotice(payload: string): { origin: string; notice: StoreNotice } | undefined {
  const first = payload.indexOf(' ')
  const origin = payload.slice(0, first)
  const kind = payload.slice(first + 1, first + 2)
  const value = payload.slice(first + 3)
  if (first < 0 || value === '') return undefined
  if (kind === 'q') return { origin, notice: { kind: 'queued', name: value } }
  if (kind === 'c') return { origin, notice: { kind: 'cancel-requested', id: value } }
  if (kind === 'x') return { origin, notice: { kind: 'changed', id: value } }
  return undefined
}

/** The SQL of every fixed statement, for one schema; `$n` parameters as each method passes them. */
function statements(schema: string, leaseClock: 'database' | 'caller') {
  const ops = `${schema}.operations`
  const events = `${schema}.operation_events`
  const keys = `${schema}.idempotency_keys`
  // The fencing token: a write applies only while the operation runs this attempt for this worker.
  const held = `o.id = i.id AND o.state = 'running' AND o.attempt = i.attempt AND o.worker = i.worker`
  const claimNow = leaseClock === 'database' ? DATABASE_NOW : '$4::bigint'
  const heartbeatNow = leaseClock === 'database' ? DATABASE_NOW : 'i.now'
  // Operations as JSON documents (see newRow), inserted in array order so that `seq` follows it.
  const insertRows = `
    INSERT INTO ${ops} (id, name, state, owner, input, params, query, headers, max_attempts, cancelable,
      timeout_ms, created_at, run_at)
    SELECT e->>'id', e->>'name', 'queued', e->>'owner', e->'input', e->'params', e->'query', e->'headers',
      (e->>'maxAttempts')::int, (e->>'cancelable')::boolean, (e->>'timeoutMs')::bigint,
      (e->>'createdAt')::bigint, (e->>'createdAt')::bigint`
  return {
    insert: `${insertRows}
      FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(e, ord)
      ORDER BY ord
      ON CONFLICT (id) DO NOTHING
      RETURNING *`,

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
      )
      ${insertRows}
      FROM jsonb_array_elements($6::jsonb) AS t(e)
      WHERE EXISTS (SELECT 1 FROM taken)
      RETURNING *`,

    usedKey: `
      SELECT k.fingerprint, o.* FROM ${keys} k JOIN ${ops} o ON o.id = k.operation_id
      WHERE k.scope = $1 AND k.key = $2 AND k.expires_at > $3`,

    get: `SELECT * FROM ${ops} WHERE id = $1`,

    history: `SELECT seq, at, event, attempt, worker, actor, has_actor, error FROM ${events} WHERE operation_id = $1 ORDER BY seq`,

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

    progress: `
      WITH input AS (
        SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(ord int, id text, attempt int, worker text, progress jsonb)
      )
      UPDATE ${ops} o SET progress = i.progress FROM input i WHERE ${held} RETURNING i.ord`,

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

    delete: `
      WITH deleted AS (DELETE FROM ${ops} WHERE id = $1 AND ${FINISHED} RETURNING id),
      history AS (DELETE FROM ${events} WHERE operation_id IN (SELECT id FROM deleted)),
      freed AS (DELETE FROM ${keys} WHERE operation_id IN (SELECT id FROM deleted))
      SELECT count(*)::int AS n FROM deleted`,

    // $1 now, $2 limit. SKIP LOCKED: nodes purging at the same time share the work.
    purge: `
      WITH deleted AS (
        DELETE FROM ${ops} WHERE seq IN (
          SELECT seq FROM ${ops} WHERE expires_at <= $1 AND ${FINISHED} LIMIT $2 FOR UPDATE SKIP LOCKED
        )
        RETURNING id
      ),
      history AS (DELETE FROM ${events} WHERE operation_id IN (SELECT id FROM deleted)),
      freed AS (DELETE FROM ${keys} WHERE expires_at <= $1 OR operation_id IN (SELECT id FROM deleted))
      SELECT count(*)::int AS n FROM deleted`,
  }
}

/** The filters list and stats share (states, owner, what the caller may read), as SQL with `$n` arguments. */
function filters(query: StatsQuery) {
  const where: string[] = []
  const args: unknown[] = []
  const arg = (value: unknown) => {
    args.push(value)
    return `$${args.length}`
  }
  // `owner = $n` rather than IS NOT DISTINCT FROM, which no index serves.
  const ownerIs = (owner: string | null) => (owner === null ? 'owner IS NULL' : `owner = ${arg(owner)}`)
  if (query.states?.length) where.push(`state = ANY(${arg(query.states)}::text[])`)
  if (query.owner !== undefined) where.push(ownerIs(query.owner))
  if (query.readable) {
    const { owners, names } = query.readable
    const anyName = names.length ? [`name = ANY(${arg(names)}::text[])`] : []
    where.push(`(${[...owners.map(ownerIs), ...anyName].join(' OR ') || 'FALSE'})`)
  }
  return { where, args, arg }
}

/** An operation as the JSON document the insert statements read. */
function newRow(op: NewOperation) {
  return {
    id: op.id,
    name: op.name,
    owner: op.owner,
    input: op.input ?? null,
    params: op.params,
    query: op.query,
    headers: op.headers,
    maxAttempts: op.maxAttempts,
    cancelable: op.cancelable,
    timeoutMs: op.timeoutMs,
    createdAt: op.createdAt,
  }
}

/** Maps the driver's errors that callers can act on to longrun's; passes the others through. */
function storeError(err: unknown): unknown {
  const { code, constraint } = err as { code?: string; constraint?: string }
  if (code === UNIQUE_VIOLATION && constraint === 'operations_id_key') {
    const id = /\(id\)=\((.*)\)/.exec((err as { detail?: string }).detail ?? '')?.[1] ?? ''
    return duplicateOperationId(id)
  }
  if (code === UNTRANSLATABLE_CHARACTER || code === CHARACTER_NOT_IN_REPERTOIRE) return unsupportedValue(err)
  return err
}

/**
 * A statement failed because of one row's data (SQLSTATE classes 22 and 23), rather than for want of
 * the database: worth retrying the other rows without it.
 */
function isDataError(err: unknown): boolean {
  const code = (err as { code?: unknown }).code
  return typeof code === 'string' && (code.startsWith('22') || code.startsWith('23'))
}

const unsupportedValue = (cause?: unknown) =>
  new LongrunError(
    'unsupported-value',
    'The PostgreSQL store cannot keep the character U+0000 (NUL) in text or JSON.',
    {
      cause,
    },
  )

/** The same text with U+0000 written as U+FFFD, for what is only shown (progress, errors). */
function storable<T>(value: T): T {
  const json = JSON.stringify(value)
  return NUL_ESCAPE.test(json) ? (JSON.parse(json.replace(NUL_ESCAPES, '$1\\ufffd')) as T) : value
}

/** An outcome PostgreSQL can keep: a result it cannot store fails the operation instead of losing it. */
function storableOutcome(outcome: Outcome): Outcome {
  if (outcome.state === 'succeeded' && NUL_ESCAPE.test(JSON.stringify(outcome.result ?? null))) {
    const detail = 'The result contains the character U+0000 (NUL), which the PostgreSQL store cannot keep.'
    return {
      state: 'failed',
      error: operationError('result-not-storable', 'Result not storable', detail),
      expiresAt: outcome.expiresAt,
    }
  }
  return outcome.state === 'succeeded' ? outcome : { ...outcome, error: storable(outcome.error) }
}

/**
 * Idempotency scopes join owner and name with NUL, which PostgreSQL text cannot hold: escape it,
 * and the escape character, so that distinct scopes stay distinct.
 */
function escapeNul(text: string): string {
  return text.includes('\0') || text.includes('\\') ? text.replaceAll('\\', '\\\\').replaceAll('\0', '\\0') : text
}

function toOperation(row: Row): Operation {
  const op: Operation = {
    id: row.id,
    name: row.name,
    state: row.state,
    owner: row.owner,
    input: row.input,
    params: row.params,
    query: row.query,
    headers: row.headers,
    progress: row.progress,
    attempt: row.attempt,
    maxAttempts: row.max_attempts,
    cancelable: row.cancelable,
    cancelRequested: row.cancel_requested,
    timeoutMs: row.timeout_ms,
    createdAt: row.created_at,
    runAt: row.run_at,
  }
  // JSONB null and SQL NULL read back alike: a result exists exactly when the operation succeeded.
  if (row.state === 'succeeded') op.result = row.result
  if (row.error !== null) op.error = row.error
  if (row.started_at !== null) op.startedAt = row.started_at
  if (row.completed_at !== null) op.completedAt = row.completed_at
  if (row.expires_at !== null) op.expiresAt = row.expires_at
  if (row.worker !== null) op.worker = row.worker
  if (row.lease_expires_at !== null) op.leaseExpiresAt = row.lease_expires_at
  return op
}
