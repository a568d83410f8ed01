import type pg from 'pg'
import type { Logger } from '../../core/logger.js'
import type {
  Deferrable,
  EventFeed,
  EventLog,
  Exclusive,
  Outbox,
  Pingable,
  Queryable,
  Store,
  StoreNotice,
  Trimmable,
} from '../../core/store.js'

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
export interface PostgresStore
  extends Store, EventLog, EventFeed, Queryable, Trimmable, Exclusive, Outbox, Deferrable, Pingable {
  readonly schema: string
  /** Resolves once the schema is migrated; rejects as every other call would (e.g. `schema-too-new`). */
  ready(): Promise<void>
  /**
   * Delivers other nodes' changes (LISTEN/NOTIFY on a connection of its own, opened by the first
   * subscriber, closed with the last), never this store's own.
   */
  subscribe(listener: (notice: StoreNotice) => void): () => void
}
