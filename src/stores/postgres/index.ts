import { PgStore } from './store.js'
import type { PostgresStore, PostgresStoreOptions } from './options.js'

export type { PostgresStore, PostgresStoreOptions } from './options.js'

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
