import type { Deferrable, EventFeed, EventLog, Outbox, Queryable, Store, Trimmable } from '../../core/store.js'
import { MemoryStore } from './store.js'

/** Keeps operations in this process's memory: for tests and ephemeral use; nothing survives a restart. */
export function memoryStore(): Store & EventLog & EventFeed & Queryable & Trimmable & Outbox & Deferrable {
  return new MemoryStore()
}
