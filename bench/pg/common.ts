import pg from 'pg'

/** The PostgreSQL server the PostgreSQL benches use: BENCH_PG_URL, else the test database. */
export const PG_URL = process.env.BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test'

/** Runs one statement on a connection of its own (schema set-up and tear-down). */
export async function sql(text: string): Promise<void> {
  const client = new pg.Client({ connectionString: PG_URL })
  await client.connect()
  try {
    await client.query(text)
  } finally {
    await client.end()
  }
}

export const dropSchema = (schema: string) => sql(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
