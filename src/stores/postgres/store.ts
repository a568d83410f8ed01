import { createHash, randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type pg from 'pg'
import { canceledError, duplicateOperationId, invalidOption, LongrunError, storeClosed } from '../../core/errors.js'
import { silentLogger, type Logger } from '../../core/logger.js'
import type { Condition } from '../../core/query.js'
import type {
  Delivery,
  DeliveryAttempt,
  FeedPage,
  FeedQuery,
  KeepCounts,
  OutboxMessage,
  QuerySort,
  StoreNotice,
} from '../../core/store.js'
import type {
  ClaimRequest,
  DeliveryState,
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
  Outcome,
  Page,
  Progress,
  StatsQuery,
  StatsRow,
} from '../../core/types.js'
import { cursorPosition } from '../cursor.js'
import { stateAfter, toMessage, type MessageRow } from '../outbox.js'
import { keptCounts } from '../query.js'
import { driver } from './driver.js'
import { postgresFault, storeUnavailable } from './faults.js'
import { Batch, Lane } from './lane.js'
import { NoticeListener } from './listener.js'
import { migrate } from './migrations.js'
import { conditionTerms } from './query.js'
import type { PostgresStore, PostgresStoreOptions } from './options.js'
import {
  escapeNul,
  isDataError,
  newRow,
  NUL_ESCAPE,
  storable,
  storableOutcome,
  storeError,
  toHistoryEntry,
  toOperation,
  unsupportedValue,
  type EventRow,
  type Row,
} from './rows.js'
import { filters, statements } from './statements.js'

interface PendingInsert {
  op: NewOperation
  resolve: (op: Operation) => void
  reject: (reason: unknown) => void
}

// How long a feed read waits for transactions older than events already committed: see #feedHorizon.
const FEED_PATIENCE_MS = 250
const SCHEMA_PATTERN = /^[a-z_][a-z0-9_]{0,47}$/
const INT8_OID = 20
// How long a call waits for a connection (a new one, or a free one of the pool) unless the options say otherwise.
const CONNECT_TIMEOUT_MS = 10_000
// How long `ping` waits for `SELECT 1`.
const PING_TIMEOUT_MS = 2_000

export class PgStore implements PostgresStore {
  readonly schema: string
  readonly #pool: pg.Pool
  readonly #clientConfig: pg.ClientConfig
  readonly #logger: Logger
  readonly #maxBatch: number
  /** Tags this store's connections so that it can tell its own notices from other nodes'. */
  readonly #origin = randomBytes(6).toString('hex')
  readonly #channel: string
  readonly #sql: ReturnType<typeof statements>
  /** The name each fixed statement is prepared under, on each connection that runs it: see #query. */
  readonly #prepared: ReadonlyMap<string, string>
  #prepare = true
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
    // Named after their text: a name met on a connection (a pooler's shared one too) is this statement.
    this.#prepared = new Map(
      Object.values(this.#sql).map((text) => [
        text,
        `longrun_${createHash('sha256').update(text).digest('hex').slice(0, 24)}`,
      ]),
    )
    const userTypes = config.types
    this.#clientConfig = {
      ...config,
      // BIGINT epoch milliseconds and counts as numbers, for this store's connections only.
      types: {
        getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
          oid === INT8_OID && format !== 'binary'
            ? (value: string) => Number(value)
            : (userTypes ?? driver.types).getTypeParser(oid, format)) as typeof pg.types.getTypeParser,
      },
      options: [config.options, `-c longrun.origin=${this.#origin}`].filter(Boolean).join(' '),
    }
    this.#pool = new driver.Pool({
      // A server that vanished without closing its sockets must not hold requests forever.
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      ...config,
      ...this.#clientConfig,
    })
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
    const migrating = migrate(this.#pool, this.schema)
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
    return (await this.#run<EventRow>(this.#sql.history, [id])).map(toHistoryEntry)
  }

  async events(id: string, range: { after?: number; limit: number }): Promise<HistoryEntry[]> {
    return (await this.#run<EventRow>(this.#sql.events, [id, range.after ?? 0, range.limit])).map(toHistoryEntry)
  }

  async feed(query: FeedQuery): Promise<FeedPage> {
    const after = query.after === undefined ? undefined : feedPosition(query.after)
    const horizon = await this.#feedHorizon(after !== undefined)
    const present = { tx: BigInt(horizon), seq: 0 }
    if (after === undefined) return { entries: [], cursor: feedCursor(present) }
    const { where, args, arg } = filters(query)
    if (query.names) where.push(`name = ANY(${arg(query.names)}::text[])`)
    const sql = `SELECT ${FEED_COLUMNS} FROM ${this.schema}.operation_events e
      JOIN ${this.schema}.operations o ON o.id = e.operation_id
      WHERE (e.tx, e.seq) > (${arg(String(after.tx))}::xid8, ${arg(after.seq)}::bigint) AND e.tx < ${arg(horizon)}::xid8
      ${where.map((w) => `AND ${w}`).join(' ')} ORDER BY e.tx, e.seq LIMIT ${arg(query.limit)}`
    const rows = await this.#run<EventRow & { operation_id: string; tx: string }>(sql, args)
    const last = rows[rows.length - 1]
    // A page cut short by the filters still moves the cursor past what it read: up to the horizon.
    const next =
      rows.length === query.limit ? { tx: BigInt(last!.tx), seq: last!.seq } : after.tx < present.tx ? present : after
    return {
      entries: rows.map((row) => ({
        ...toHistoryEntry(row),
        operationId: row.operation_id,
        cursor: feedCursor({ tx: BigInt(row.tx), seq: row.seq }),
      })),
      cursor: feedCursor(next),
    }
  }

  /**
   * Every transaction below the horizon has ended: what it wrote is all there, and nothing later can
   * land below it. Read in a statement of its own, so that the rows' snapshot sees all of it. Events
   * already committed above it wait for an older transaction still running (anywhere in the
   * cluster); for a moment, the feed waits with them, so that it holds what was committed before
   * the call unless a transaction runs long.
   */
  async #feedHorizon(patient: boolean): Promise<string> {
    const deadline = Date.now() + FEED_PATIENCE_MS
    for (;;) {
      const [{ horizon, held }] = (await this.#run<{ horizon: string; held: boolean }>(
        `SELECT h::text AS horizon, EXISTS (SELECT 1 FROM ${this.schema}.operation_events WHERE tx >= h) AS held
         FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS h) AS snapshot`,
        [],
      )) as [{ horizon: string; held: boolean }]
      if (!patient || !held || Date.now() >= deadline) return horizon
      await sleep(2)
    }
  }

  async list(query: ListQuery): Promise<Page> {
    return this.#page(query, [], 'newest')
  }

  async query(query: ListQuery & { where: Condition[]; sort?: QuerySort }): Promise<Page> {
    return this.#page(query, query.where, query.sort ?? 'newest')
  }

  async #page(query: ListQuery, conditions: readonly Condition[], sort: QuerySort): Promise<Page> {
    const { where, args, arg } = filters(query)
    if (query.name !== undefined) where.push(`name = ${arg(query.name)}`)
    where.push(...conditionTerms(conditions, arg))
    if (query.cursor !== undefined) {
      const from = cursorPosition(query.cursor)
      if (from === undefined) return { items: [] }
      where.push(`seq ${sort === 'newest' ? '<' : '>'} ${arg(from)}`)
    }
    const sql = `SELECT * FROM ${this.schema}.operations ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
      ORDER BY seq ${sort === 'newest' ? 'DESC' : 'ASC'} LIMIT ${arg(query.limit + 1)}`
    const rows = await this.#run<Row>(sql, args)
    const more = rows.length > query.limit
    const page = rows.slice(0, query.limit)
    return { items: page.map(toOperation), ...(more ? { nextCursor: String(page[page.length - 1]!.seq) } : {}) }
  }

  async stats(query: StatsQuery): Promise<StatsRow[]> {
    return this.#stats(query, [])
  }

  async queryStats(query: StatsQuery & { where: Condition[] }): Promise<StatsRow[]> {
    return this.#stats(query, query.where)
  }

  async #stats(query: StatsQuery, conditions: readonly Condition[]): Promise<StatsRow[]> {
    if (conditions.length === 0) {
      // The counters the triggers of migration 10 keep: a few rows per group, whatever the operations.
      const { where, args } = filters(query, { counters: true })
      const sql = `SELECT name, state, sum(count)::int AS count FROM ${this.schema}.operation_counts
        ${where.length ? `WHERE ${where.join(' AND ')}` : ''} GROUP BY name, state HAVING sum(count) > 0`
      return this.#run<StatsRow>(sql, args)
    }
    const { where, args, arg } = filters(query)
    where.push(...conditionTerms(conditions, arg))
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

  progress(lease: Lease, progress: Progress, now: number): Promise<boolean> {
    return this.#held(this.#progresses, { ...lease, progress: storable(progress), at: now })
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
    const progress = new Batch<Lease & { progress: Progress; at: number }, boolean>(
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

  async start(id: string, now: number, actor: string | null = null): Promise<Operation | undefined> {
    const [started] = await this.#run<Row>(this.#sql.start, [id, now, actor])
    // Not deferred (or no longer: a concurrent start won): read in a statement of its own, which
    // sees what that start committed.
    return started ? toOperation(started) : this.get(id)
  }

  async delete(id: string): Promise<boolean> {
    const [row] = await this.#run<{ n: number }>(this.#sql.delete, [id])
    return row!.n === 1
  }

  async purge(now: number, limit: number): Promise<number> {
    const [row] = await this.#run<{ n: number }>(this.#sql.purge, [now, limit])
    return row!.n
  }

  async trim(keep: KeepCounts, limit: number): Promise<number> {
    const kept = keptCounts(keep)
    if (kept.length === 0 || !(limit > 0)) return 0
    const [row] = await this.#run<{ n: number }>(this.#sql.trim, [
      kept.map(([state]) => state),
      kept.map(([, count]) => count),
      limit,
    ])
    return row!.n
  }

  async claimMessages(sender: string, limit: number, leaseMs: number, now: number): Promise<OutboxMessage[]> {
    if (!(limit > 0)) return []
    const rows = await this.#run<MessageRow>(this.#sql.claimMessages, [sender, limit, leaseMs, now])
    return rows.map(toMessage)
  }

  async recordDelivery(message: OutboxMessage, attempt: DeliveryAttempt, retryAt?: number): Promise<boolean> {
    const [row] = await this.#run<{ n: number }>(this.#sql.recordDelivery, [
      message.id,
      message.sender,
      message.attempts,
      stateAfter(attempt.ok, retryAt),
      retryAt ?? null,
      JSON.stringify(storable(attempt)),
    ])
    return row!.n === 1
  }

  async deliveries(operationId: string): Promise<Delivery[]> {
    const rows = await this.#run<DeliveryRow>(this.#sql.deliveries, [operationId])
    return rows.map(({ due_at, ...delivery }) => ({
      ...delivery,
      ...(delivery.state === 'pending' ? { nextAttemptAt: due_at } : {}),
    }))
  }

  async redeliver(operationId: string, now: number): Promise<number> {
    const [row] = await this.#run<{ n: number }>(this.#sql.redeliver, [operationId, now])
    return row!.n
  }

  async disableTarget(target: string, now: number): Promise<void> {
    await this.#run(this.#sql.disableTarget, [target, now])
  }

  /**
   * A session-level advisory lock on a connection of its own, held while `task` runs: it outlives
   * any transaction of the task, and dies with the connection if this process does.
   */
  exclusively<T>(name: string, task: () => Promise<T>): Promise<{ value: T } | undefined> {
    if (this.#closing) return Promise.reject(storeClosed())
    return this.#track(this.#exclusively(name, task))
  }

  async #exclusively<T>(name: string, task: () => Promise<T>): Promise<{ value: T } | undefined> {
    // One 64-bit key per schema and name: the two-integer keys of the migration lock never meet it.
    const key = [`longrun ${this.schema} ${name}`]
    let client: pg.PoolClient
    try {
      client = await this.#pool.connect()
    } catch (err) {
      throw storeError(postgresFault(err))
    }
    // A connection whose unlock failed is closed rather than pooled: closing it frees the lock.
    let broken: Error | undefined
    try {
      let locked: boolean
      try {
        const { rows } = await client.query<{ locked: boolean }>(
          'SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS locked',
          key,
        )
        locked = rows[0]!.locked
      } catch (err) {
        broken = err as Error
        throw storeError(postgresFault(err))
      }
      if (!locked) return undefined
      try {
        return { value: await task() }
      } finally {
        await client.query('SELECT pg_advisory_unlock(hashtextextended($1, 0))', key).catch((err: unknown) => {
          broken = err as Error
        })
      }
    } finally {
      client.release(broken)
    }
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

  /**
   * Every statement of this store but those of `exclusively` runs here: a failure for want of the
   * database (down, restarting, unreachable, full) leaves as `store-unavailable` or `storage-full`
   * (./faults.ts), whichever call issued it.
   */
  async #query<R>(text: string, values: unknown[]): Promise<R[]> {
    try {
      await this.#whenMigrated()
      // The fixed statements are prepared: each connection parses and plans them once, not at
      // every call (a third of a one-operation insert). Where that cannot work, the statement runs
      // unprepared, then and from then on; it had not run (see unpreparable).
      const name = this.#prepare ? this.#prepared.get(text) : undefined
      if (name !== undefined) {
        try {
          return (await this.#pool.query({ name, text, values })).rows as R[]
        } catch (err) {
          if (!unpreparable(err)) throw err
          this.#prepare = false
          this.#logger.warn({ err }, 'longrun: prepared statements fail here; running them unprepared')
        }
      }
      const result = await this.#pool.query(text, values)
      return result.rows as R[]
    } catch (err) {
      throw postgresFault(err)
    }
  }

  /**
   * Resolves when the database answers `SELECT 1` within 2 s on a migrated schema; rejects with
   * `store-unavailable` otherwise (or with the migration's own error, e.g. `schema-too-new`).
   */
  async ping(): Promise<void> {
    if (this.#closing) throw storeClosed()
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(storeUnavailable(new Error(`no answer to SELECT 1 within ${PING_TIMEOUT_MS} ms`))),
        PING_TIMEOUT_MS,
      )
    })
    try {
      await Promise.race([this.#track(this.#query('SELECT 1', [])), timeout])
    } catch (err) {
      throw postgresFault(err)
    } finally {
      clearTimeout(timer)
    }
  }
}

/**
 * Failures of a prepared statement before it ran, that the same statement unprepared does not
 * meet: a pooler that runs each transaction on any server connection (the name is missing there,
 * or taken: 26000, 42P05), and a plan whose rows changed shape under it (a newer node added a
 * column: 0A000).
 */
function unpreparable(err: unknown): boolean {
  const { code, message } = (err ?? {}) as { code?: unknown; message?: unknown }
  if (code === '26000' || code === '42P05') return true
  return code === '0A000' && typeof message === 'string' && message.includes('cached plan must not change result type')
}

interface DeliveryRow {
  id: string
  seq: number
  event: HistoryEvent
  target: string
  state: DeliveryState
  due_at: number
  attempts: DeliveryAttempt[]
}

const FEED_COLUMNS = `e.seq, e.at, e.event, e.attempt, e.worker, e.actor, e.has_actor, e.error, e.progress,
  e.operation_id, e.tx::text AS tx`

interface FeedPosition {
  tx: bigint
  seq: number
}

const feedCursor = ({ tx, seq }: FeedPosition) => `${tx}-${seq}`

/** The position a feed cursor names, `<transaction id>-<seq>` as `feed` issues it; `undefined` for anything else. */
function feedPosition(cursor: string): FeedPosition | undefined {
  const match = /^(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]*)$/.exec(cursor)
  if (!match) return undefined
  const seq = Number(match[2])
  return Number.isSafeInteger(seq) ? { tx: BigInt(match[1]!), seq } : undefined
}
