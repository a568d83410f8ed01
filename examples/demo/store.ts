import type { Logger, Store } from 'longrun'

// Which store the demo's processes (API server and worker) use, from the same environment, so that
// they share it: LONGRUN_STORE first, then DATABASE_URL, then a SQLite file.

export interface StoreEnvironment {
  LONGRUN_STORE?: string
  DATABASE_URL?: string
  /** PostgreSQL schema holding longrun's tables. @default 'longrun' */
  LONGRUN_PG_SCHEMA?: string
}

/** `memory`, `sqlite:<path>` or a `postgres://` URL, as named by the environment. */
export function storeSpec(env: StoreEnvironment = process.env): string {
  return env.LONGRUN_STORE || env.DATABASE_URL || 'sqlite:./data/longrun.db'
}

export interface OpenStoreOptions {
  /** PostgreSQL only. @default 'longrun' */
  pgSchema?: string
  logger?: Logger
}

const isPostgresUrl = (spec: string) => /^postgres(ql)?:\/\//.test(spec)

/** Opens the store named by a `LONGRUN_STORE`-style string; drivers load only when named. */
export async function openStore(spec: string, options: OpenStoreOptions = {}): Promise<Store> {
  if (spec === 'memory') {
    const { memoryStore } = await import('longrun/memory')
    return memoryStore()
  }
  if (spec.startsWith('sqlite:')) {
    const { sqliteStore } = await import('longrun/sqlite')
    return sqliteStore({ path: spec.slice('sqlite:'.length) })
  }
  if (isPostgresUrl(spec)) {
    const { postgresStore } = await import('longrun/postgres')
    const store = postgresStore({
      connectionString: spec,
      ...(options.pgSchema ? { schema: options.pgSchema } : {}),
      ...(options.logger ? { logger: options.logger } : {}),
    })
    try {
      // Refuse to start on an unreachable database or a schema newer than this code.
      await store.ready()
    } catch (err) {
      await store.close()
      throw err
    }
    return store
  }
  throw new Error(`LONGRUN_STORE must be 'memory', 'sqlite:<path>' or a postgres:// URL, got '${redact(spec)}'`)
}

/** A connection string without its password, for messages. */
function redact(spec: string): string {
  return spec.replace(/\/\/([^:/@]*):[^@/]*@/, '//$1:***@')
}
