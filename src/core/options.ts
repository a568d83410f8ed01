import { hostname } from 'node:os'
import { randomBytes } from 'node:crypto'
import { toMs, type Duration } from './duration.js'
import { invalidOption } from './errors.js'
import { operationId } from './ids.js'
import { silentLogger, type Logger } from './logger.js'
import { isTrimmable, type KeepCounts, type Store } from './store.js'

export interface EngineOptions {
  store: Store
  /** Run handlers in this process; `false` for an API-only process. @default true */
  worker?: boolean
  /** Names this process in leases and logs. @default `<hostname>:<pid>:<random>` */
  workerId?: string
  /** How long a claim holds without a heartbeat. @default '30s' */
  lease?: Duration
  /** How often running operations renew their lease. @default a third of `lease` */
  heartbeat?: Duration
  /** Fallback poll for due operations, when no wake-up arrives. @default '1s' */
  poll?: Duration
  /** How long a handler has to stop once its signal aborts, before its attempt is recorded without it. @default '10s' */
  grace?: Duration
  /**
   * An operation whose worker died this many times while running it (its lease lapsed each time)
   * ends `failed` with error `lease-lost` instead of running again: a handler that crashes its
   * process must not crash every worker in turn forever. `Infinity` to always run it again. @default 3
   */
  maxLeaseLosses?: number
  /** How long finished operations are kept. @default '7d' */
  retention?: Duration
  /**
   * How often the cleanup runs (docs/query.md): it purges the operations past `retention`, then
   * trims each owner's finished operations to `keep`. @default '1m'
   */
  purgeInterval?: Duration
  /**
   * How many finished operations of each terminal state to keep per owner, besides `retention`:
   * the cleanup removes the oldest beyond these counts (by `completedAt`), e.g.
   * `{ succeeded: 50, failed: 20 }`. Needs a store that can trim (`Trimmable`). @default none: by time only
   */
  keep?: KeepCounts
  /** How long an idempotency key keeps answering with its operation. @default '24h' */
  idempotencyTtl?: Duration
  /** Makes operation ids. @default a UUIDv7 of 74 fresh random bits (`operationId`): time-ordered, unguessable */
  idGenerator?: () => string
  logger?: Logger
  /** Epoch milliseconds; injectable for tests. @default Date.now */
  clock?: () => number
  /** Uniform in [0, 1) for retry jitter; injectable for tests. @default Math.random */
  random?: () => number
}

export interface ResolvedEngineOptions {
  store: Store
  worker: boolean
  workerId: string
  leaseMs: number
  heartbeatMs: number
  pollMs: number
  graceMs: number
  maxLeaseLosses: number
  retentionMs: number
  purgeIntervalMs: number
  keep: KeepCounts | undefined
  idempotencyTtlMs: number
  idGenerator: () => string
  logger: Logger
  clock: () => number
  random: () => number
}

const DEFAULTS = {
  lease: 30_000, // 30 s
  poll: 1_000, // 1 s
  grace: 10_000, // 10 s
  maxLeaseLosses: 3,
  retention: 7 * 86_400_000, // 7 days
  purgeInterval: 60_000, // 1 min
  idempotencyTtl: 86_400_000, // 24 h
} as const

export function resolveEngineOptions(input: EngineOptions): ResolvedEngineOptions {
  if (!input?.store) throw invalidOption('store', 'is required')
  const leaseMs = toMs('lease', input.lease ?? DEFAULTS.lease)
  if (leaseMs < 10) throw invalidOption('lease', 'must be at least 10 ms')
  // Renew at a third of the lease so that one missed tick never loses it.
  const heartbeatMs = toMs('heartbeat', input.heartbeat ?? Math.floor(leaseMs / 3))
  if (heartbeatMs <= 0 || heartbeatMs >= leaseMs)
    throw invalidOption('heartbeat', 'must be positive and shorter than lease')
  const pollMs = toMs('poll', input.poll ?? DEFAULTS.poll)
  if (pollMs <= 0) throw invalidOption('poll', 'must be positive')
  const purgeIntervalMs = toMs('purgeInterval', input.purgeInterval ?? DEFAULTS.purgeInterval)
  if (purgeIntervalMs <= 0) throw invalidOption('purgeInterval', 'must be positive')
  const maxLeaseLosses = input.maxLeaseLosses ?? DEFAULTS.maxLeaseLosses
  if (!(maxLeaseLosses === Infinity || (Number.isInteger(maxLeaseLosses) && maxLeaseLosses >= 1)))
    throw invalidOption('maxLeaseLosses', 'must be a whole number of at least 1, or Infinity')
  const keep = resolveKeep(input.keep)
  if (keep && !isTrimmable(input.store)) {
    throw invalidOption('keep', 'needs a store that can trim (Trimmable); this one cannot')
  }
  return {
    store: input.store,
    worker: input.worker ?? true,
    workerId: input.workerId ?? `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`,
    leaseMs,
    heartbeatMs,
    pollMs,
    graceMs: toMs('grace', input.grace ?? DEFAULTS.grace),
    maxLeaseLosses,
    retentionMs: toMs('retention', input.retention ?? DEFAULTS.retention),
    purgeIntervalMs,
    keep,
    idempotencyTtlMs: toMs('idempotencyTtl', input.idempotencyTtl ?? DEFAULTS.idempotencyTtl),
    idGenerator: input.idGenerator ?? (() => operationId()),
    logger: input.logger ?? silentLogger,
    clock: input.clock ?? Date.now,
    random: input.random ?? Math.random,
  }
}

const KEEP_STATES = ['succeeded', 'failed', 'canceled'] as const

function resolveKeep(keep: KeepCounts | undefined): KeepCounts | undefined {
  if (keep === undefined) return undefined
  if (typeof keep !== 'object' || keep === null || Array.isArray(keep)) {
    throw invalidOption('keep', 'must be an object like { succeeded: 50, failed: 20 }')
  }
  const resolved: KeepCounts = {}
  for (const [state, count] of Object.entries(keep)) {
    if (!(KEEP_STATES as readonly string[]).includes(state)) {
      throw invalidOption(`keep.${state}`, `names no terminal state (one of ${KEEP_STATES.join(', ')})`)
    }
    if (count === undefined) continue
    if (!(Number.isInteger(count) && count >= 0)) throw invalidOption(`keep.${state}`, 'must be a non-negative integer')
    resolved[state as (typeof KEEP_STATES)[number]] = count
  }
  // `{}` keeps everything, like no `keep` at all.
  return Object.keys(resolved).length === 0 ? undefined : resolved
}
