import type { Logger } from '../core/logger.js'
import type { Store } from '../core/store.js'

// A store named by one string, so that every process of a deployment (API servers, workers, the
// migration step) can be pointed at the same one by one setting: `--store`, LONGRUN_STORE or
// DATABASE_URL.

/** `memory`, `sqlite:<path>` or a `postgres://` URL; `sqlite:./data/longrun.db` when none is set. */
export function storeUrl(env: { LONGRUN_STORE?: string; DATABASE_URL?: string } = process.env): string {
  return env.LONGRUN_STORE || env.DATABASE_URL || 'sqlite:./data/longrun.db'
}

export interface OpenStoreOptions {
  /** PostgreSQL only: the schema holding longrun's tables. @default 'longrun' */
  pgSchema?: string
  logger?: Logger
}

const isPostgresUrl = (url: string) => /^postgres(ql)?:\/\//.test(url)

/**
 * Opens the store `url` names, its schema migrated. Drivers load only when named, so that a SQLite
 * deployment needs no `pg`. An unreachable database or a schema newer than this code rejects.
 */
export async function openStore(url: string, options: OpenStoreOptions = {}): Promise<Store> {
  if (url === 'memory') {
    const { memoryStore } = await import('../stores/memory/index.js')
    return memoryStore()
  }
  if (url.startsWith('sqlite:')) {
    const { sqliteStore } = await import('../stores/sqlite/index.js')
    return sqliteStore({ path: url.slice('sqlite:'.length) })
  }
  if (isPostgresUrl(url)) {
    const { postgresStore } = await import('../stores/postgres/index.js')
    const store = postgresStore({
      connectionString: url,
      ...(options.pgSchema ? { schema: options.pgSchema } : {}),
      ...(options.logger ? { logger: options.logger } : {}),
    })
    try {
      await store.ready()
    } catch (err) {
      await store.close()
      throw err
    }
    return store
  }
  throw new Error(`a store is 'memory', 'sqlite:<path>' or a postgres:// URL, got '${redact(url)}'`)
}

/** A connection string without its password, for messages. */
export function redact(url: string): string {
  return url.replace(/\/\/([^:/@]*):[^@/]*@/, '//$1:***@')
}
