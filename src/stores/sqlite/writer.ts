import { parentPort } from 'node:worker_threads'
import type Database from 'better-sqlite3'
import { openConnection } from './connection.js'
import { decodeBatch, encodeOutcome, SqliteWrites, toWireError, type FromWriter, type ToWriter } from './writes.js'

// A SQLite store's writer thread: it owns the one connection that writes, so that the fsync of each
// group commit blocks this thread rather than the main thread's event loop. It commits one batch at
// a time, as the store sends them, and answers each with its results once the commit is durable.
// The store has migrated the schema before it opens this connection. After a close, the thread can
// be handed to the next store that opens (see writer-client.ts), so it opens by message.

const port = parentPort
if (!port) throw new Error('longrun: the SQLite writer must run as a worker thread')

let db: Database.Database | undefined
let writes: SqliteWrites | undefined
let openError: unknown

port.on('message', (message: ToWriter) => {
  switch (message.type) {
    case 'open':
      try {
        db = openConnection(message.path, message.synchronous)
        writes = new SqliteWrites(db)
        openError = undefined
      } catch (err) {
        openError = err
        port.postMessage({ type: 'failed', error: toWireError(err) } satisfies FromWriter)
      }
      break
    case 'batch': {
      const outcome = writes
        ? writes.runBatch(decodeBatch(message.json))
        : { ok: false as const, error: openError ?? new Error('longrun: the SQLite writer has no open database') }
      port.postMessage({ type: 'results', json: encodeOutcome(outcome) } satisfies FromWriter)
      break
    }
    case 'close':
      try {
        db?.close()
        port.postMessage({ type: 'closed' } satisfies FromWriter)
      } catch (err) {
        port.postMessage({ type: 'failed', error: toWireError(err) } satisfies FromWriter)
      } finally {
        db = writes = undefined
      }
      break
  }
})
