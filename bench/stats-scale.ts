// Stats and state-filtered list pages at scale, on SQLite and PostgreSQL (issue #18, finding 6).
// Not part of `npm test` nor of `npm run bench`:
//
//   node --conditions=longrun-source --import tsx bench/stats-scale.ts [--count 1000000] [--runs 50]
//     [--only sqlite,postgres] [--pg postgres://postgres@127.0.0.1:5432/test]
//
// Each store gets a fresh database filled with `count` operations straight through SQL, in one
// transaction, on the schema as it was before the stats counters (SQLite version 7, PostgreSQL
// version 8, the last ones that predate them); the store then opens it and applies whatever later
// migrations it has, which is what an upgraded deployment goes through (the time is reported). So
// the same script measures the code before and after the counters. Before measuring, it checks that
// the store's stats equal a full count of the operations.

import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { parseArgs } from 'node:util'
import Database from 'better-sqlite3'
import pg from 'pg'
import type { Store } from '../src/core/store.js'
import type { ListQuery, StatsQuery } from '../src/core/types.js'
import { postgresStore } from '../src/stores/postgres/index.js'
import { MIGRATIONS as PG_MIGRATIONS } from '../src/stores/postgres/migrations.js'
import { sqliteStore } from '../src/stores/sqlite/index.js'
import { MIGRATIONS as SQLITE_MIGRATIONS } from '../src/stores/sqlite/migrations.js'

const { values: args } = parseArgs({
  options: {
    count: { type: 'string', default: '1000000' },
    runs: { type: 'string', default: '50' },
    only: { type: 'string', default: 'sqlite,postgres' },
    pg: { type: 'string', default: process.env.LONGRUN_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test' },
  },
})
const COUNT = Number(args.count)
const RUNS = Number(args.runs)
const ONLY = new Set(args.only!.split(','))

/** The schema versions the fill writes to: the last ones before the stats counters. */
const SQLITE_BASE = 7
const PG_BASE = 8

const T0 = Date.UTC(2026, 0, 1)
const OWNERS = 1_000
// The mix of states: mostly finished, a few live, none running (the "empty state" of the issue).
// Expressed on i % 1000: [0, 10) queued, [10, 60) failed, [60, 90) canceled, the rest succeeded.
const STATE_OF = (i: string) =>
  `CASE WHEN ${i} % 1000 < 10 THEN 'queued' WHEN ${i} % 1000 < 60 THEN 'failed'
        WHEN ${i} % 1000 < 90 THEN 'canceled' ELSE 'succeeded' END`
const NAMES = ['report.generate', 'invoice.send', 'export.csv', 'image.resize', 'crm.sync']
// Every 7th operation anonymous, the others spread over OWNERS owners.
const OWNER_OF = (i: string) => `CASE WHEN ${i} % 7 = 0 THEN NULL ELSE 'user-' || (${i} % ${OWNERS}) END`
const NAME_OF = (i: string) => `CASE ${i} % 5 ${NAMES.map((name, n) => `WHEN ${n} THEN '${name}'`).join(' ')} END`

interface Case {
  label: string
  run: (store: Store) => Promise<unknown>
}

const reader: StatsQuery['readable'] = { owners: ['user-42'], names: ['crm.sync'] }
const page = (query: Omit<ListQuery, 'limit'>) => (store: Store) => store.list({ limit: 20, ...query })

const CASES: Case[] = [
  { label: 'stats (all)', run: (store) => store.stats({}) },
  {
    label: 'stats (one owner, live states)',
    run: (store) => store.stats({ owner: 'user-7', states: ['queued', 'running'] }),
  },
  { label: 'stats (a reader: owner or name)', run: (store) => store.stats({ readable: reader }) },
  { label: 'list page, state running (empty)', run: page({ states: ['running'] }) },
  { label: 'list page, state queued (1%)', run: page({ states: ['queued'] }) },
  { label: 'list page, state failed (5%)', run: page({ states: ['failed'] }) },
  { label: 'list page, state running, a reader', run: page({ states: ['running'], readable: reader }) },
  { label: 'list page, state queued, a reader', run: page({ states: ['queued'], readable: reader }) },
]

const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!

const rowsText = (rows: { name: string; state: string; count: number }[]) =>
  JSON.stringify(
    rows
      .map(({ name, state, count }) => ({ name, state, count: Number(count) }))
      .sort((a, b) => `${a.name}/${a.state}`.localeCompare(`${b.name}/${b.state}`)),
  )

/** Fails unless the store's stats equal a count of every operation, as the migrations left them. */
async function checkStats(store: Store, counted: { name: string; state: string; count: number }[]): Promise<void> {
  const stats = rowsText(await store.stats({}))
  if (stats !== rowsText(counted)) throw new Error(`stats differ from a full count:\n${stats}\n${rowsText(counted)}`)
}

async function measure(store: Store): Promise<string[]> {
  const lines: string[] = []
  for (const c of CASES) {
    await c.run(store) // warm: statement caches, pages
    const times: number[] = []
    for (let i = 0; i < RUNS; i++) {
      const t = performance.now()
      await c.run(store)
      times.push(performance.now() - t)
    }
    times.sort((a, b) => a - b)
    lines.push(`| ${c.label} | ${percentile(times, 0.5).toFixed(2)} | ${percentile(times, 0.99).toFixed(2)} |`)
  }
  return lines
}

async function sqlite(): Promise<string[]> {
  const dir = mkdtempSync(join(tmpdir(), 'longrun-stats-scale-'))
  const path = join(dir, 'stats.db')
  try {
    const db = new Database(path)
    db.pragma('journal_mode = WAL')
    for (const migration of SQLITE_MIGRATIONS.filter((m) => m.version <= SQLITE_BASE)) db.exec(migration.sql)
    db.pragma(`user_version = ${SQLITE_BASE}`)
    const t0 = performance.now()
    db.transaction(() => {
      db.prepare(
        `WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
         INSERT INTO operations (id, name, state, owner, input, params, query, headers, attempt, max_attempts, cancelable,
           created_at, started_at, completed_at, expires_at, run_at, result)
         SELECT 'op-' || i, ${NAME_OF('i')}, s, ${OWNER_OF('i')}, '{"n":' || i || '}', '{}', '{}', '{}',
           iif(s = 'queued', 0, 1), 1, 1, ${T0} + i, iif(s = 'queued', NULL, ${T0} + i + 10),
           iif(s = 'queued', NULL, ${T0} + i + 20), iif(s = 'queued', NULL, ${T0} + i + 86400000), ${T0} + i,
           iif(s = 'succeeded', '{"ok":true}', NULL)
         FROM (SELECT i, ${STATE_OF('i')} AS s FROM n)`,
      ).run(COUNT)
    }).immediate()
    const fill = (performance.now() - t0) / 1000
    db.close()
    const t1 = performance.now()
    const store = sqliteStore({ path })
    const migrated = (performance.now() - t1) / 1000
    try {
      const reading = new Database(path, { readonly: true })
      const counted = reading
        .prepare(`SELECT name, state, count(*) AS count FROM operations GROUP BY name, state`)
        .all()
      reading.close()
      await checkStats(store, counted as { name: string; state: string; count: number }[])
      return [
        `SQLite, ${COUNT.toLocaleString('en-US')} operations (fill ${fill.toFixed(1)} s, opening with migrations ` +
          `after version ${SQLITE_BASE}: ${migrated.toFixed(2)} s)`,
        ...(await measure(store)),
      ]
    } finally {
      await store.close()
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

async function postgres(): Promise<string[]> {
  const schema = `bench_stats_${process.pid}`
  const client = new pg.Client({ connectionString: args.pg })
  await client.connect()
  try {
    await client.query(`CREATE SCHEMA ${schema}`)
    await client.query('BEGIN')
    await client.query(`SET LOCAL search_path TO ${schema}`)
    await client.query(
      `CREATE TABLE migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
         applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
    )
    for (const migration of PG_MIGRATIONS.filter((m) => m.version <= PG_BASE)) {
      await client.query(migration.sql)
      await client.query('INSERT INTO migrations (version, name) VALUES ($1, $2)', [migration.version, migration.name])
    }
    const t0 = performance.now()
    await client.query(
      `INSERT INTO operations (id, name, state, owner, input, params, query, headers, attempt, max_attempts, cancelable,
         created_at, started_at, completed_at, expires_at, run_at, result)
       SELECT 'op-' || i, ${NAME_OF('i')}, s, ${OWNER_OF('i')}, jsonb_build_object('n', i), '{}', '{}', '{}',
         CASE WHEN s = 'queued' THEN 0 ELSE 1 END, 1, true, ${T0} + i,
         CASE WHEN s <> 'queued' THEN ${T0} + i + 10 END, CASE WHEN s <> 'queued' THEN ${T0} + i + 20 END,
         CASE WHEN s <> 'queued' THEN ${T0} + i + 86400000 END, ${T0} + i,
         CASE WHEN s = 'succeeded' THEN '{"ok":true}'::jsonb END
       FROM (SELECT i, ${STATE_OF('i')} AS s FROM generate_series(1, $1::int) AS i) AS n`,
      [COUNT],
    )
    await client.query('COMMIT')
    // What autovacuum would have done by the time anyone asks.
    await client.query(`VACUUM ANALYZE ${schema}.operations`)
    const fill = (performance.now() - t0) / 1000
    const t1 = performance.now()
    const store = postgresStore({ connectionString: args.pg, schema })
    try {
      await store.ready()
      const migrated = (performance.now() - t1) / 1000
      const { rows: counted } = await client.query(
        `SELECT name, state, count(*)::int AS count FROM ${schema}.operations GROUP BY name, state`,
      )
      await checkStats(store, counted)
      return [
        `PostgreSQL, ${COUNT.toLocaleString('en-US')} operations (fill and analyze ${fill.toFixed(1)} s, ` +
          `migrations after version ${PG_BASE}: ${migrated.toFixed(2)} s)`,
        ...(await measure(store)),
      ]
    } finally {
      await store.close()
    }
  } finally {
    await client.query('ROLLBACK').catch(() => {})
    await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
    await client.end()
  }
}

const header = ['| case | p50 ms | p99 ms |', '|---|---:|---:|']
for (const [name, run] of [
  ['sqlite', sqlite],
  ['postgres', postgres],
] as const) {
  if (!ONLY.has(name)) continue
  const [title, ...rows] = await run()
  console.log(`\n${title}, ${RUNS} runs each\n`)
  console.log([...header, ...rows].join('\n'))
}
