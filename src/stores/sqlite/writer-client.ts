import { Worker } from 'node:worker_threads'
import { LongrunError } from '../../core/errors.js'
import type { Synchronous } from './connection.js'
import {
  decodeOutcome,
  encodeBatch,
  encodeCall,
  fromWireError,
  type BatchOutcome,
  type FromWriter,
  type SqliteWrites,
  type ToWriter,
  type WriteCall,
  type WriteMethod,
} from './writes.js'

// The store's side of its writing connection: in a writer thread for a database file, in the
// store's own thread for `:memory:`.

/** Where the store commits its groups of writes. */
export interface Writer {
  /** The call as `run` takes it; throws for a call that cannot be sent (failing only that write). */
  prepare(method: WriteMethod, args: unknown[]): unknown
  /** Commits the calls in one transaction; resolves once the commit is durable. One group at a time. */
  run(calls: unknown[]): Promise<BatchOutcome>
  /** Closes the writing connection. Called once, with no group in flight. */
  close(): Promise<void>
}

/** Commits on the store's own connection, in the calling thread (for `:memory:`). */
export class InlineWriter implements Writer {
  readonly #writes: SqliteWrites

  constructor(writes: SqliteWrites) {
    this.#writes = writes
  }

  prepare(method: WriteMethod, args: unknown[]): WriteCall {
    return { method, args }
  }

  async run(calls: unknown[]): Promise<BatchOutcome> {
    return this.#writes.runBatch(calls as WriteCall[])
  }

  async close(): Promise<void> {}
}

/**
 * Commits in a writer thread (writer.ts) that owns the writing connection of this store. The thread
 * keeps the process alive only while a group is in flight or a close is under way. If it dies or
 * fails to open the database, the group in flight and every later write fail with `store-failed`:
 * nothing waits for it forever.
 */
export class ThreadWriter implements Writer {
  readonly #thread: WriterThread
  #inFlight: { resolve: (outcome: BatchOutcome) => void; reject: (err: unknown) => void } | undefined
  #closing: { resolve: () => void; reject: (err: unknown) => void } | undefined
  #failure: LongrunError | undefined

  constructor(path: string, synchronous: Synchronous) {
    this.#thread = WriterThread.acquire(this)
    this.#post({ type: 'open', path, synchronous })
  }

  prepare(method: WriteMethod, args: unknown[]): string {
    return encodeCall(method, args)
  }

  run(calls: unknown[]): Promise<BatchOutcome> {
    if (this.#failure) return Promise.reject(this.#failure)
    if (this.#inFlight) return Promise.reject(new Error('longrun: one SQLite write group at a time'))
    return new Promise<BatchOutcome>((resolve, reject) => {
      this.#inFlight = { resolve, reject }
      this.#thread.worker.ref()
      this.#post({ type: 'batch', json: encodeBatch(calls as string[]) })
    })
  }

  /** Asks the thread to close the connection; the thread is then free for another store. */
  close(): Promise<void> {
    if (this.#failure) return Promise.resolve()
    return new Promise<void>((resolve, reject) => {
      this.#closing = { resolve, reject }
      this.#thread.worker.ref()
      this.#post({ type: 'close' })
    })
  }

  /** Called by the thread for each of its messages while this store owns it. */
  onMessage(message: FromWriter): void {
    switch (message.type) {
      case 'results': {
        const inFlight = this.#inFlight
        this.#inFlight = undefined
        if (!this.#closing) this.#thread.worker.unref()
        try {
          inFlight?.resolve(decodeOutcome(message.json))
        } catch (err) {
          inFlight?.reject(err)
        }
        break
      }
      case 'closed':
        this.#thread.release()
        this.#closing?.resolve()
        break
      case 'failed':
        this.fail(fromWireError(message.error))
        break
    }
  }

  /** The thread failed, died or could not open or close the database: no more writes. */
  fail(cause: unknown): void {
    if (this.#failure) return
    const reason = cause instanceof Error ? cause.message : String(cause)
    this.#failure = new LongrunError(
      'store-failed',
      503,
      'Store failed',
      `The SQLite store's writer thread failed: ${reason}`,
      {},
      { cause },
    )
    this.#thread.discard()
    const inFlight = this.#inFlight
    this.#inFlight = undefined
    inFlight?.reject(this.#failure)
    const closing = this.#closing
    this.#closing = undefined
    closing?.reject(this.#failure)
  }

  #post(message: ToWriter): void {
    this.#thread.worker.postMessage(message)
  }
}

/**
 * A writer thread, owned by one store at a time. Starting one costs tens of milliseconds from dist
 * and a few hundred from the sources (tsx compiles the writer in each new thread), so a thread whose
 * store closed waits a few seconds for the next store to open before it ends: opening and closing
 * stores one after another (tests, tools) pays the start once.
 */
class WriterThread {
  static readonly #idle: WriterThread[] = []
  static readonly IDLE_MS = 5_000
  static readonly MAX_IDLE = 2

  readonly worker: Worker
  #owner: ThreadWriter | undefined
  #idleTimer: NodeJS.Timeout | undefined
  #exited = false

  static acquire(owner: ThreadWriter): WriterThread {
    const thread = WriterThread.#idle.pop() ?? new WriterThread()
    clearTimeout(thread.#idleTimer)
    thread.#owner = owner
    return thread
  }

  private constructor() {
    // From the sources (.ts, under tsx or vitest) the thread loads writer.ts through tsx; from dist,
    // writer.js.
    const fromSource = import.meta.url.endsWith('.ts')
    this.worker = new Worker(new URL(fromSource ? './writer-source.mjs' : './writer.js', import.meta.url), {
      execArgv: [],
      name: 'longrun-sqlite-writer',
    })
    this.worker.unref()
    this.worker.on('message', (message: FromWriter) => this.#owner?.onMessage(message))
    // An idle thread has nothing to report to; its 'exit' follows and takes it out of the pool.
    this.worker.on('error', (err) => this.#owner?.fail(err))
    this.worker.on('exit', (code) => {
      this.#exited = true
      this.#forget()
      this.#owner?.fail(new Error(`the thread exited with code ${code}`))
    })
  }

  /** The owner closed its connection: wait for the next store, or end. */
  release(): void {
    this.#owner = undefined
    this.worker.unref()
    if (this.#exited || WriterThread.#idle.length >= WriterThread.MAX_IDLE) {
      void this.worker.terminate()
      return
    }
    WriterThread.#idle.push(this)
    this.#idleTimer = setTimeout(() => {
      this.#forget()
      void this.worker.terminate()
    }, WriterThread.IDLE_MS).unref()
  }

  /** The owner failed: end the thread rather than hand it to another store. */
  discard(): void {
    this.#owner = undefined
    this.#forget()
    void this.worker.terminate()
  }

  #forget(): void {
    clearTimeout(this.#idleTimer)
    const at = WriterThread.#idle.indexOf(this)
    if (at !== -1) WriterThread.#idle.splice(at, 1)
  }
}
