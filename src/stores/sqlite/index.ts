import type {
  Deferrable,
  EventFeed,
  EventLog,
  Outbox,
  Pingable,
  Queryable,
  Stamped,
  Store,
  Trimmable,
} from '../../core/store.js'
import type { SqliteStoreOptions } from './options.js'
import { SqliteStore } from './store.js'

export type { SqliteStoreOptions } from './options.js'

/**
 * The embedded default store: one SQLite file in WAL mode, on one connection. Writes are committed in
 * groups: the writes issued during one event-loop turn make one transaction and one fsync, and each
 * resolves only after its group's commit, so concurrent submissions share the cost of durability.
 * `':memory:'` gives a throwaway database.
 */
export function sqliteStore(
  options: SqliteStoreOptions,
): Store & EventLog & EventFeed & Queryable & Trimmable & Outbox & Deferrable & Pingable & Stamped {
  return new SqliteStore(options)
}
