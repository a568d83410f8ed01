import type { EventFeed, EventLog, Store } from '../../core/store.js'
import { MemoryStore } from './store.js'

/** Keeps operations in this process's memory: for tests and ephemeral use; nothing survives a restart. */
export function memoryStore(): Store & EventLog & EventFeed {
  return new MemoryStore()
}
