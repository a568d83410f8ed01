import type { Deferrable, EventFeed, EventLog, Outbox, Queryable, Stamped, Store, Trimmable } from '../../core/store.js'
import { MemoryStore, type MemoryStoreOptions } from './store.js'

export type { MemoryStoreOptions } from './store.js'

/**
 * Keeps operations in this process's memory: for tests and ephemeral use; nothing survives a
 * restart. Keeps at most `maxFinished` finished operations (10,000 unless told), so that its heap
 * stays flat however many run.
 */
export function memoryStore(
  options: MemoryStoreOptions = {},
): Store & EventLog & EventFeed & Queryable & Trimmable & Outbox & Deferrable & Stamped {
  return new MemoryStore(options)
}
