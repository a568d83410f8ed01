import { randomBytes } from 'node:crypto'
import { userInfo } from 'node:os'
import pg from 'pg'
import { describe, it } from 'vitest'

// Finds the PostgreSQL server the tests use, once per test file: LONGRUN_TEST_PG_URL when set,
// otherwise 127.0.0.1:5432, database `test`, as `postgres` or as the current OS user (trust auth).

export interface PostgresProbe {
  /** A connection string that answered, or `undefined`. */
  url: string | undefined
  /** Why no server answered, for the skip or failure message. */
  reason: string
}

async function probe(): Promise<PostgresProbe> {
  const candidates = process.env.LONGRUN_TEST_PG_URL
    ? [process.env.LONGRUN_TEST_PG_URL]
    : [
        'postgres://postgres@127.0.0.1:5432/test',
        `postgres://${encodeURIComponent(userInfo().username)}@127.0.0.1:5432/test`,
      ]
  const failures: string[] = []
  for (const url of candidates) {
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3_000 })
    try {
      await client.connect()
      await client.query('SELECT 1')
      return { url, reason: '' }
    } catch (err) {
      failures.push(`${url.replace(/:[^:@/]*@/, ':***@')}: ${(err as Error).message}`)
    } finally {
      await client.end().catch(() => {})
    }
  }
  return {
    url: undefined,
    reason: `PostgreSQL is unreachable (${failures.join('; ')}). Start it, or set LONGRUN_TEST_PG_URL.`,
  }
}

export const postgres: PostgresProbe = await probe()

/**
 * `describe` when PostgreSQL answers. Otherwise the suite is skipped with the reason, except under
 * `CI=true`, where it fails with the reason: CI must never pass by skipping the PostgreSQL tests.
 */
export function describePostgres(name: string, suite: (url: string) => void): void {
  const url = postgres.url
  if (url !== undefined) {
    describe(name, () => suite(url))
  } else if (process.env.CI === 'true') {
    describe(name, () => {
      it('needs a reachable PostgreSQL server', () => {
        throw new Error(postgres.reason)
      })
    })
  } else {
    console.warn(`[longrun tests] skipping '${name}': ${postgres.reason}`)
    describe.skip(`${name} (skipped: ${postgres.reason})`, () => {
      it('needs a reachable PostgreSQL server', () => {})
    })
  }
}

/** A schema name no other test (or test process) uses. */
export function freshSchemaName(prefix = 'lrt'): string {
  return `${prefix}_${process.pid}_${randomBytes(4).toString('hex')}`
}

/** Drops `schema` and everything in it. */
export async function dropSchema(url: string, schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
  } finally {
    await client.end()
  }
}

/** Runs one query on a connection of its own. */
export async function sql<R extends pg.QueryResultRow = pg.QueryResultRow>(
  url: string,
  text: string,
  values: unknown[] = [],
): Promise<R[]> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return (await client.query<R>(text, values)).rows
  } finally {
    await client.end()
  }
}
