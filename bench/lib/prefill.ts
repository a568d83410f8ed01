import { createHash } from 'node:crypto'
import {
  closeSync,
  constants,
  copyFileSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  renameSync,
  rmSync,
  statSync,
} from 'node:fs'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import Database from 'better-sqlite3'
import { sqliteStore } from 'longrun/sqlite'
import { v7 as uuidv7 } from 'uuid'
import { MIGRATIONS } from '../../src/stores/sqlite/migrations.js'

/** Bump when the rows written below change, so that stale caches are rebuilt. */
const FORMAT = 2
const DAY = 86_400_000
/** Far enough that the purge timer never deletes prefilled rows during a run, whenever the cache was made. */
const EXPIRES_AT = Date.UTC(2100, 0, 1)

/**
 * A SQLite file holding `count` finished operations and their attempt history, made once and cached
 * under `dir`. The schema comes from the store itself (its migrations run on open); the rows are
 * written with prepared bulk INSERTs in one transaction. The file name carries a hash of the migrations, so a schema change
 * makes a new cache.
 */
export async function ensurePrefill(dir: string, count: number, log: (line: string) => void): Promise<string> {
  const schema = createHash('sha256')
    .update(JSON.stringify(MIGRATIONS))
    .update(String(FORMAT))
    .digest('hex')
    .slice(0, 12)
  const path = join(dir, `prefill-${count}-${schema}.db`)
  if (existsSync(path)) return path
  mkdirSync(dir, { recursive: true })
  const tmp = `${path}.tmp-${process.pid}`
  for (const suffix of ['', '-wal', '-shm', '-journal']) rmSync(tmp + suffix, { force: true })

  const t0 = performance.now()
  log(`prefill: writing ${count.toLocaleString('en-US')} operations to ${path} (once; cached afterwards)`)
  // The store creates the schema exactly as it would for a new deployment.
  const store = sqliteStore({ path: tmp })
  await store.close()
  const db = new Database(tmp)
  try {
    // Bulk load: no journal, no fsync; nothing here needs to survive a crash (the file is renamed
    // into place only when complete).
    db.pragma('journal_mode = OFF')
    db.pragma('synchronous = OFF')
    db.pragma('cache_size = -262144')
    const insert = db.prepare(
      `INSERT INTO operations (id, name, state, owner, input, params, query, headers, progress, result, error, attempt,
         max_attempts, cancelable, cancel_requested, timeout_ms, created_at, started_at, completed_at, expires_at, run_at,
         worker, lease_expires_at)
       VALUES (?, 'noop', ?, NULL, ?, '{}', '{}', ?, '{"percent":0}', ?, ?, ?, 1, 1, ?, 36000000, ?, ?, ?, ?, ?, NULL, NULL)`,
    )
    // The attempt history the store keeps (operation_events): what claim and settle record.
    const event = db.prepare(
      `INSERT INTO operation_events (operation_id, at, event, attempt, worker, actor, has_actor, error)
       VALUES (?, ?, ?, ?, ?, NULL, 0, ?)`,
    )
    // What the bench route stores for a request from the load generator.
    const headers = JSON.stringify({
      host: '127.0.0.1:40000',
      connection: 'keep-alive',
      'content-type': 'application/json',
      'content-length': '2',
    })
    const worker = 'bench-host:4242:a1b2c3'
    const failed = JSON.stringify({
      type: 'handler-error',
      title: 'Handler failed',
      detail: 'Error: upstream timed out',
      retryable: true,
    })
    const canceled = JSON.stringify({ type: 'canceled', title: 'Canceled', detail: 'The operation was canceled.' })
    // Spread over the last 30 days, oldest first, like a service that keeps a month of history.
    const end = Date.now() - DAY
    const step = (30 * DAY) / count
    db.transaction(() => {
      for (let i = 0; i < count; i++) {
        const createdAt = Math.floor(end - 30 * DAY + i * step)
        const id = uuidv7({ msecs: createdAt })
        // 97% succeeded, 2% failed, 1% canceled while queued.
        const r = i % 100
        const state = r < 97 ? 'succeeded' : r < 99 ? 'failed' : 'canceled'
        const ran = state !== 'canceled'
        const error = state === 'failed' ? failed : state === 'canceled' ? canceled : null
        insert.run(
          id,
          state,
          JSON.stringify({ i }),
          headers,
          state === 'succeeded' ? 'null' : null,
          error,
          ran ? 1 : 0,
          state === 'canceled' ? 1 : 0,
          createdAt,
          ran ? createdAt + 2 : null,
          createdAt + 5,
          EXPIRES_AT,
          createdAt,
        )
        if (ran) event.run(id, createdAt + 2, 'started', 1, worker, null)
        event.run(id, createdAt + 5, state, ran ? 1 : 0, ran ? worker : null, error)
      }
    })()
    db.pragma('journal_mode = WAL')
  } finally {
    db.close()
  }
  renameSync(tmp, path)
  const mib = statSync(path).size / 1_048_576
  log(`prefill: done in ${((performance.now() - t0) / 1000).toFixed(1)} s (${mib.toFixed(0)} MiB)`)
  return path
}

/**
 * A private copy of the prefilled file for one run, so that runs never change the cache. The copy is
 * flushed to disk before it is used: otherwise the server's first checkpoint fsync would pay for
 * writing back hundreds of MiB of the copy's dirty pages, which is the copy's cost, not the store's.
 */
export function copyPrefill(source: string, target: string): void {
  for (const suffix of ['', '-wal', '-shm']) rmSync(target + suffix, { force: true })
  copyFileSync(source, target, constants.COPYFILE_FICLONE)
  const fd = openSync(target, 'r+')
  try {
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
}
