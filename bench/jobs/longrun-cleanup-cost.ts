// Where a cleanup run's time goes on the query scenario's seeded file, store calls only (no
// submits): each `store.purge(now, 1000)` batch of purging the 100,000 expired operations, then what
// a scheduled run costs when there is nothing to remove (purge, and trim with counts nobody exceeds).
// Every one of these calls holds the store's only connection, and the event loop, while it runs.
// Prints one JSON line. Env: BENCH_QUERY_SEED (the seeded file), BENCH_QUERY_DIR (scratch folder).
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { sqliteStore } from 'longrun/sqlite'
import { copyPrefill } from '../lib/prefill.js'
import { envInt, percentile, report } from './common.js'

const SEED = process.env.BENCH_QUERY_SEED
const DIR = process.env.BENCH_QUERY_DIR
if (!SEED || !DIR) throw new Error('BENCH_QUERY_SEED and BENCH_QUERY_DIR are required')
const IDLE_RUNS = envInt('BENCH_IDLE_RUNS', 5)
const BATCH = 1_000

const path = join(DIR, `cleanup-cost-${process.pid}.db`)
copyPrefill(SEED, path)
const store = sqliteStore({ path })
const timed = async (call: () => Promise<number>) => {
  const t = performance.now()
  const n = await call()
  return { n, ms: performance.now() - t }
}
try {
  const now = Date.now()
  const batches: number[] = []
  let removed = 0
  for (let n = BATCH; n === BATCH;) {
    const r = await timed(() => store.purge(now, BATCH))
    n = r.n
    removed += n
    batches.push(r.ms)
  }
  const sorted = [...batches].sort((a, b) => a - b)
  const idle = async (call: () => Promise<number>) => {
    const ms: number[] = []
    for (let i = 0; i < IDLE_RUNS; i++) {
      const r = await timed(call)
      if (r.n !== 0) throw new Error(`an idle cleanup call removed ${r.n}`)
      ms.push(r.ms)
    }
    return percentile(
      ms.sort((a, b) => a - b),
      50,
    )
  }
  report({
    purge: {
      removed,
      batches: batches.length,
      seconds: batches.reduce((a, b) => a + b, 0) / 1000,
      batchP50Ms: percentile(sorted, 50),
      batchMaxMs: sorted[sorted.length - 1]!,
      // The batch that finds fewer than 1,000: it reads every finished operation to know there are no more.
      lastBatchMs: batches[batches.length - 1]!,
      // The slowest of the first 90 batches, while expired operations are still found at once.
      first90MaxMs: Math.max(...batches.slice(0, 90)),
    },
    idle: {
      purgeMs: await idle(() => store.purge(Date.now(), BATCH)),
      trimMs: await idle(() => store.trim({ succeeded: 1_000_000, failed: 1_000_000, canceled: 1_000_000 }, BATCH)),
    },
  })
} finally {
  await store.close()
  for (const suffix of ['', '-wal', '-shm']) rmSync(path + suffix, { force: true })
}
