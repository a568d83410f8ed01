// What the driver, the servers and the job scripts agree on.

/** The BullMQ queue every BullMQ variant uses; the driver deletes its keys before and after each run. */
export const QUEUE_NAME = 'longrun-bench'
/** BullMQ's default key prefix. */
export const QUEUE_PREFIX = 'bull'

/** The line a server prints on stdout once it accepts requests. */
export const READY = 'BENCH-READY'

/** ioredis connection options from a redis:// URL (BullMQ takes them as `connection`). */
export function redisConnection(url: string): { host: string; port: number; db: number; password?: string } {
  const u = new URL(url)
  const db = Number(u.pathname.replace(/^\//, '') || 0)
  return {
    host: u.hostname || '127.0.0.1',
    port: Number(u.port || 6379),
    db,
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
  }
}

const iso = (ms: number) => new Date(ms).toISOString()

/**
 * The body longrun answers for an operation (see src/http/resource.ts), built without any store:
 * the 202 of a submit, or (succeeded) a status read with its attempts and history. The raw-Fastify
 * ceiling and the BullMQ endpoint send it so that every variant puts about the same bytes on the
 * wire.
 */
export function operationBody(id: string, state: 'queued' | 'succeeded', createdAt: number): Record<string, unknown> {
  const self = `/operations/${encodeURIComponent(id)}`
  const done = state === 'succeeded'
  return {
    id,
    name: 'noop',
    state,
    done,
    owner: null,
    progress: { percent: 0 },
    createdAt: iso(createdAt),
    startedAt: done ? iso(createdAt + 1) : null,
    completedAt: done ? iso(createdAt + 2) : null,
    expiresAt: done ? iso(createdAt + 7 * 86_400_000) : null,
    attempt: done ? 1 : 0,
    maxAttempts: 1,
    cancelable: true,
    cancelRequested: false,
    links: { self, result: `${self}/result`, error: `${self}/error`, cancel: `${self}/cancel` },
    ...(done ? { result: null, ...attemptHistory(createdAt) } : {}),
  }
}

/** The attempts and history longrun's status reads carry for an operation that ran once. */
function attemptHistory(createdAt: number): Record<string, unknown> {
  const worker = 'bench-host:4242:a1b2c3'
  return {
    attempts: [
      { attempt: 1, worker, startedAt: iso(createdAt + 1), endedAt: iso(createdAt + 2), outcome: 'succeeded' },
    ],
    history: [
      { at: iso(createdAt), event: 'submitted', attempt: 0, actor: null },
      { event: 'started', attempt: 1, worker, at: iso(createdAt + 1) },
      { event: 'succeeded', attempt: 1, worker, at: iso(createdAt + 2) },
    ],
  }
}

export const JSON_TYPE = 'application/json; charset=utf-8'
