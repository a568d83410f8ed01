import { attemptsOf } from '../core/history.js'
import { isDeferred, isTerminal } from '../core/operation.js'
import type { DeliveryState, HistoryEntry, Operation, OperationError } from '../core/types.js'

/** The operation as clients see it (docs/protocol.md): camelCase, ISO 8601 UTC times, links. */
export interface OperationResource {
  id: string
  name: string
  state: Operation['state']
  /** `state` in the words of Azure's async request-reply pattern, which its pollers read. */
  status: AzureStatus
  done: boolean
  owner: string | null
  progress: Operation['progress']
  createdAt: string
  startedAt: string | null
  completedAt: string | null
  expiresAt: string | null
  attempt: number
  maxAttempts: number
  nextAttemptAt?: string
  cancelable: boolean
  cancelRequested: boolean
  /** Created by a route with `start: 'manual'` and not started yet: `POST {links.start}` queues it. */
  awaitingStart?: true
  /** Once succeeded, except in lists (fetch it from `resourceLocation`): what the handler returned. */
  result?: unknown
  /** Once succeeded: where the result is, the URL Azure's pollers fetch last. */
  resourceLocation?: string
  /** With `message` (its `detail`, else its `title`), which Azure's pollers show. */
  error?: OperationError & { message: string }
  /**
   * Where to poll it and act on it (`start`: while `awaitingStart`). Without the built-in
   * operations API (`operationsApi: false`), the app's mounts that take the id in the path or query.
   */
  links: { self: string; result?: string; error?: string; cancel?: string; start?: string }
  /** For an operation with a callback: where it goes and how it is doing (Pode's `CallbackInfo`). */
  callback?: {
    url: string
    method: 'POST' | 'PUT'
    state: DeliveryState
    attempts: number
    lastAttemptAt: string | null
    lastStatus: number | null
  }
  /** Only on the single-operation view. */
  attempts?: {
    attempt: number
    worker: string
    startedAt: string
    endedAt: string | null
    outcome: string | null
    error?: OperationError
  }[]
  /** Only on the single-operation view: who did what, oldest first. */
  history?: (Omit<HistoryEntry, 'at' | 'seq' | 'progress'> & { at: string })[]
}

export type AzureStatus = 'NotStarted' | 'Running' | 'Succeeded' | 'Failed' | 'Canceled'

const AZURE_STATUS: Record<Operation['state'], AzureStatus> = {
  queued: 'NotStarted',
  running: 'Running',
  succeeded: 'Succeeded',
  failed: 'Failed',
  canceled: 'Canceled',
}

export interface ResourceOptions {
  basePath: string
  exposeStack: boolean
  /** Where clients poll and act on an operation. @default under `basePath` */
  linksOf?: (id: string) => OperationResource['links']
}

/** What a resource leaves out: a list's items carry no result, so that a page's size stays bounded. */
export interface ResourceView {
  result?: boolean
}

/** Epoch milliseconds as clients see times: ISO 8601 UTC, `null` for none. */
export const iso = (ms: number | undefined) => (ms === undefined ? null : new Date(ms).toISOString())

export function operationUrl(basePath: string, id: string): string {
  return `${basePath}/${encodeURIComponent(id)}`
}

/** The links of an operation under the built-in operations API. */
export function builtInLinks(basePath: string, id: string): OperationResource['links'] {
  const self = operationUrl(basePath, id)
  return { self, result: `${self}/result`, error: `${self}/error`, cancel: `${self}/cancel`, start: `${self}/start` }
}

export function publicError(error: OperationError, exposeStack: boolean): OperationError {
  if (exposeStack || error.stack === undefined) return error
  const { stack: _stack, ...rest } = error
  return rest
}

export function toResource(op: Operation, options: ResourceOptions, view: ResourceView = {}): OperationResource {
  const links = options.linksOf?.(op.id) ?? builtInLinks(options.basePath, op.id)
  const resource: OperationResource = {
    id: op.id,
    name: op.name,
    state: op.state,
    status: AZURE_STATUS[op.state],
    done: isTerminal(op.state),
    owner: op.owner,
    progress: op.progress,
    createdAt: iso(op.createdAt)!,
    startedAt: iso(op.startedAt),
    completedAt: iso(op.completedAt),
    expiresAt: iso(op.expiresAt),
    attempt: op.attempt,
    maxAttempts: op.maxAttempts,
    cancelable: op.cancelable,
    cancelRequested: op.cancelRequested,
    links: { ...links },
  }
  if (isDeferred(op)) resource.awaitingStart = true
  else delete resource.links.start
  // A queued operation that already ran once is waiting for its next attempt.
  if (op.state === 'queued' && op.attempt > 0) resource.nextAttemptAt = iso(op.runAt)!
  if (op.state === 'succeeded') {
    if (view.result !== false) resource.result = op.result
    if (resource.links.result) resource.resourceLocation = resource.links.result
  }
  if (op.error && op.state !== 'succeeded') {
    resource.error = { ...publicError(op.error, options.exposeStack), message: op.error.detail ?? op.error.title }
  }
  if (op.callback) {
    // Not its headers: they may carry the receiver's credentials.
    const { url, method, state, attempts, lastAttemptAt, lastStatus } = op.callback
    resource.callback = {
      url,
      method,
      state,
      attempts,
      lastAttemptAt: iso(lastAttemptAt),
      lastStatus: lastStatus ?? null,
    }
  }
  return resource
}

/** The single-operation view: the resource with its attempts and history. */
export function toDetailedResource(
  op: Operation,
  history: HistoryEntry[],
  options: ResourceOptions,
): OperationResource {
  const resource = toResource(op, options)
  resource.attempts = attemptsOf(history).map((a) => {
    const attempt: NonNullable<OperationResource['attempts']>[number] = {
      attempt: a.attempt,
      worker: a.worker,
      startedAt: iso(a.startedAt)!,
      endedAt: iso(a.endedAt),
      outcome: a.outcome ?? null,
    }
    if (a.error) attempt.error = publicError(a.error, options.exposeStack)
    return attempt
  })
  const shown: NonNullable<OperationResource['history']> = []
  // Operations stored before submissions were recorded have no `submitted` entry: show one anyway.
  if (history[0]?.event !== 'submitted')
    shown.push({ at: resource.createdAt, event: 'submitted', attempt: 0, actor: op.owner })
  for (const { at, error, seq: _seq, progress: _progress, ...entry } of history) {
    const item: NonNullable<OperationResource['history']>[number] = { ...entry, at: iso(at)! }
    if (error) item.error = publicError(error, options.exposeStack)
    shown.push(item)
  }
  resource.history = shown
  return resource
}
