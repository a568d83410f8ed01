// graphile-worker as the graphile-*.ts benches run it: a few settings from the environment, its
// defaults for the rest (prepared statements on, `useNodeTime` off: Node and PostgreSQL share a
// clock here, which its docs say makes that setting moot). BENCH_CONCURRENCY is `concurrentJobs`
// (default 50); BENCH_GW_LOCAL_QUEUE is `localQueue.size` and BENCH_GW_BATCH_DELAY is
// `completeJobBatchDelay` and `failJobBatchDelay`, both -1 (off, its default) unless set.
import type { Runner, TaskList, WorkerUtils } from 'graphile-worker'
import { envInt } from '../jobs/common.js'
import { PG_URL } from './common.js'

// Per-job success logging off, as graphile-worker's own perfTest/run.sh runs it; it reads
// NO_LOG_SUCCESS when it loads, hence the import after setting it.
process.env.NO_LOG_SUCCESS ??= '1'
const { Logger, makeWorkerUtils, run } = await import('graphile-worker')

function setting(name: string): number {
  const value = Number(process.env[name] ?? -1)
  if (!Number.isInteger(value) || value < -1) throw new Error(`${name} must be an integer >= -1`)
  return value
}

export const concurrency = envInt('BENCH_CONCURRENCY', 50)
export const localQueueSize = setting('BENCH_GW_LOCAL_QUEUE')
export const batchDelay = setting('BENCH_GW_BATCH_DELAY')

// Warnings and errors only, on stderr: stdout carries the job script's JSON line.
const logger = new Logger(() => (level, message) => {
  if (level === 'error' || level === 'warning') process.stderr.write(`graphile-worker ${level}: ${message}\n`)
})

/** A worker pool on `schema` (installed on first use) running `taskList`. */
export function startWorker(schema: string, taskList: TaskList): Promise<Runner> {
  return run({
    taskList,
    preset: {
      worker: {
        connectionString: PG_URL,
        schema,
        logger,
        concurrentJobs: concurrency,
        // Its `maxPoolSize` doc: "10 or concurrentJobs + 2, whichever is larger".
        maxPoolSize: Math.max(10, concurrency + 2),
        localQueue: { size: localQueueSize },
        completeJobBatchDelay: batchDelay,
        failJobBatchDelay: batchDelay,
      },
    },
  })
}

/** The job-adding side, on a pool of its own. */
export function openUtils(schema: string): Promise<WorkerUtils> {
  return makeWorkerUtils({ connectionString: PG_URL, schema, logger })
}
