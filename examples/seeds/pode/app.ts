import { randomBytes, randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify from 'fastify'
import type { OperationState, Store } from 'longrun'
import { apiKeyAuth, longrun, type PresentedResource } from 'longrun/fastify'

// Pode's async routes (seed 000) on longrun: its routes, its AsyncTask object, its get, stop and
// query routes, callbacks, SSE, permissions. README.md maps each part of the seed to longrun.

/** Pode's state names: NotStarted, Running, Failed, Completed, and Aborted for a stopped task. */
const STATES = {
  queued: 'NotStarted',
  running: 'Running',
  succeeded: 'Completed',
  failed: 'Failed',
  canceled: 'Aborted',
} as const satisfies Record<OperationState, string>

const ALL_TYPES = ['application/json', 'application/xml', 'application/yaml'] as const

/** The read and write permissions of `/asyncSecure` (users, groups, roles, scopes). */
const SECURE_PERMISSIONS = {
  read: { users: ['bob'], groups: ['auditors'], roles: ['reader'], scopes: ['tasks:read'] },
  write: { users: ['wendy'], roles: ['operator'] },
}

/** Pode's `AsyncTask` object, from the operation as longrun shows it (with `state` already in Pode's names). */
export function asyncTask(task: PresentedResource) {
  return {
    Id: task.id,
    Name: task.name,
    User: task.owner,
    State: task.state,
    Cancelable: task.cancelable,
    CreationTime: task.createdAt,
    StartingTime: task.startedAt,
    CompletedTime: task.completedAt,
    ExpireTime: task.expiresAt,
    Progress: task.progress.percent,
    ...(task.result !== undefined ? { Result: task.result } : {}),
    ...(task.error ? { Error: task.error.message } : {}),
    ...(task.callback
      ? {
          CallbackSettings: { UrlField: '$request.body#/callbackUrl', Method: task.callback.method, SendResult: true },
          CallbackInfo: {
            State: CALLBACK_STATES[task.callback.state],
            Tentative: task.callback.attempts,
            Url: task.callback.url,
          },
        }
      : {}),
    ...(task.name === 'asyncSecure' ? { Permission: podePermission(SECURE_PERMISSIONS) } : {}),
  }
}

/** A callback's delivery in Pode's words. */
const CALLBACK_STATES = {
  pending: 'NotStarted',
  delivering: 'Running',
  delivered: 'Completed',
  failed: 'Failed',
} as const

const capitalized = (list: Record<string, string[]>) =>
  Object.fromEntries(Object.entries(list).map(([kind, names]) => [kind[0]!.toUpperCase() + kind.slice(1), names]))

const podePermission = (permissions: typeof SECURE_PERMISSIONS) => ({
  Read: capitalized(permissions.read),
  Write: capitalized(permissions.write),
})

/** Pode's query properties, and longrun's fields they are. */
const QUERY_FIELDS: Record<string, string> = {
  Id: 'id',
  Name: 'name',
  State: 'state',
  User: 'owner',
  Cancelable: 'cancelable',
  CreationTime: 'createdAt',
  StartingTime: 'startedAt',
  CompletedTime: 'completedAt',
  ExpireTime: 'expiresAt',
  Progress: 'progress.percent',
  Timeout: 'timeout',
  SseGroup: 'sseGroup',
  Error: 'error.code',
}

// PowerShell's default (en-US) date format, as Pode's documented query writes it: 7/5/2024 1:20:00 PM.
const PS_DATE = /^(\d{1,2})\/(\d{1,2})\/(\d{4}) (\d{1,2}):(\d{2}):(\d{2}) ([AP]M)$/i

/** A time as Pode's clients write it, as ISO 8601 (UTC); other values unchanged. */
function isoTime(value: unknown): unknown {
  const m = typeof value === 'string' ? PS_DATE.exec(value) : null
  if (!m) return value
  const [, month, day, year, hour, minute, second, half] = m
  const h24 = (Number(hour) % 12) + (half!.toUpperCase() === 'PM' ? 12 : 0)
  return new Date(
    Date.UTC(Number(year), Number(month) - 1, Number(day), h24, Number(minute), Number(second)),
  ).toISOString()
}

/** Pode's query body (`{ "<Property>": { "value", "op" } }`) in longrun's terms; unknown properties stay, and are refused as such. */
export function fromPodeQuery(body: unknown): unknown {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return body
  return Object.fromEntries(
    Object.entries(body as Record<string, { value?: unknown; op?: unknown }>).map(([property, condition]) => {
      const field = QUERY_FIELDS[property] ?? property
      const isTime = field.endsWith('At')
      const value = typeof condition === 'object' && condition !== null && isTime ? isoTime(condition.value) : undefined
      return [field, value === undefined ? condition : { ...condition, value }]
    }),
  )
}

export interface PodeOptions {
  store: Store
  /** How long one of Pode's seconds (`Start-Sleep`) lasts here, in ms: tests shorten it. @default 1000 */
  secondMs?: number
  /** Signs callbacks. @default a random secret, logged */
  webhookSecret?: string
  /** Hosts callbacks may reach besides public ones (e.g. 127.0.0.1 for a local receiver). */
  callbackAllow?: string[]
  logLevel?: string
}

export async function buildApp(options: PodeOptions) {
  const second = options.secondMs ?? 1000
  const app = Fastify({ logger: { level: options.logLevel ?? 'info' } })
  const webhookSecret = options.webhookSecret ?? `whsec_${randomBytes(32).toString('base64')}`
  if (!options.webhookSecret)
    app.log.warn({ webhookSecret }, 'no webhook secret set: callbacks are signed with this one')
  await app.register(longrun, {
    store: options.store,
    formats: [...ALL_TYPES],
    // Pode's examples call without credentials; the permission example names its callers by key.
    authenticate: apiKeyAuth({
      keys: {
        'key-alice': { id: 'alice' },
        'key-bob': { id: 'bob' },
        'key-ann': { id: 'ann', groups: ['auditors'] },
        'key-rita': { id: 'rita', roles: ['reader'] },
        'key-sam': { id: 'sam', scopes: ['tasks:read'] },
        'key-wendy': { id: 'wendy' },
        'key-otto': { id: 'otto', roles: ['operator'] },
        'key-carol': { id: 'carol' },
      },
    }),
    allowAnonymous: true,
    webhooks: { secret: webhookSecret, allow: options.callbackAllow ?? [] },
    docs: { info: { title: 'Pode async routes on longrun', version: '1.0.0' } },
  })
  const pause = (seconds: number, signal: AbortSignal) => sleep(seconds * second, undefined, { signal })
  const common = { states: STATES, present: asyncTask, sseGroup: 'pode' } as const

  // Example 1: -ArgumentList, given to every run as op.args.
  app.longrun.route({
    ...common,
    method: 'PUT',
    url: '/asyncParam',
    name: 'asyncParam',
    args: { sleepTime2: 2, Message: 'coming as argument' },
    resultTypes: ['application/json', 'application/xml'],
    async handler(op) {
      const { sleepTime2, Message } = op.args
      op.log.info(`sleepTime2=${sleepTime2}`)
      op.log.info(`Message=${Message}`)
      for (let i = 0; i < 20; i++) {
        await op.progress(i * 5)
        await pause(sleepTime2 / 20, op.signal)
      }
      return { InnerValue: Message }
    },
  })

  // Example 2: $using variables are the closure's.
  const uSleepTime = 5
  const uMessage = 'coming from using'
  app.longrun.route({
    ...common,
    method: 'PUT',
    url: '/asyncUsing',
    name: 'asyncUsing',
    resultTypes: ['application/json', 'application/yaml'],
    async handler(op) {
      op.log.info(`sleepTime=${uSleepTime}`)
      op.log.info(`Message=${uMessage}`)
      await pause(uSleepTime, op.signal)
      return { InnerValue: uMessage }
    },
  })

  // Example 3: Set-PodeState is state the app shares with its handlers.
  const state = { data: { sleepTime: 5, Message: 'coming from a PodeState' } }
  app.longrun.route({
    ...common,
    method: 'PUT',
    url: '/asyncState',
    name: 'asyncState',
    resultTypes: ['application/json', 'application/yaml'],
    async handler(op) {
      op.log.info(`state:sleepTime=${state.data.sleepTime}`)
      op.log.info(`state:MessageTest=${state.data.Message}`)
      await pause(state.data.sleepTime, op.signal)
      return { InnerValue: state.data.Message }
    },
  })

  // -Timeout 300: an attempt longer than 300 s ends `timeout` (Pode's -1 is longrun's 'none').
  app.longrun.route({
    ...common,
    method: 'PUT',
    url: '/asyncWait',
    name: 'asyncWait',
    timeout: '300s',
    resultTypes: ['application/json', 'application/yaml'],
    async handler(op) {
      await pause(20, op.signal)
      return null
    },
  })

  // Callbacks: the URL from the body, POST, with the result and a header of the route's.
  app.longrun.route({
    ...common,
    method: 'PUT',
    url: '/asyncCallback',
    name: 'asyncCallback',
    callback: {
      url: '$request.body#/callbackUrl',
      method: 'POST',
      sendResult: true,
      headers: { 'x-pode': 'callback' },
    },
    async handler(op) {
      await pause(1, op.signal)
      return { InnerValue: 'called back' }
    },
  })

  // Read and write permissions for users, groups, roles and scopes.
  app.longrun.route({
    ...common,
    method: 'PUT',
    url: '/asyncSecure',
    name: 'asyncSecure',
    permissions: SECURE_PERMISSIONS,
    async handler(op) {
      await pause(20, op.signal)
      return { InnerValue: 'secure' }
    },
  })

  // -NotCancelable, and -AsyncIdGenerator: ids of the app's own making.
  app.longrun.route({
    ...common,
    method: 'PUT',
    url: '/asyncNotCancelable',
    name: 'asyncNotCancelable',
    cancelable: false,
    idGenerator: () => `pode-${randomUUID()}`,
    async handler(op) {
      await pause(2, op.signal)
      return { InnerValue: 'not cancelable' }
    },
  })

  // Add-PodeAsyncGetRoute: the id in the path or the query (taskId), in JSON, XML or YAML.
  const task = { states: STATES, present: asyncTask } as const
  app.longrun.operationRoute({ ...task, action: 'status', url: '/task', id: { in: 'query', name: 'taskId' } })
  app.longrun.operationRoute({ ...task, action: 'status', url: '/task/:taskId', id: { in: 'path', name: 'taskId' } })
  // Add-PodeAsyncStopRoute: the task ends Aborted.
  app.longrun.operationRoute({
    ...task,
    action: 'cancel',
    method: 'DELETE',
    url: '/task',
    id: { in: 'query', name: 'taskId' },
  })
  // Add-PodeAsyncQueryRoute: Pode's body, its property names and state names; an array of tasks.
  app.longrun.operationRoute({
    action: 'query',
    url: '/tasks/query',
    states: STATES,
    readQuery: fromPodeQuery,
    present: (page) => page.items.map(asyncTask),
  })
  // SSE: one task's events (also at /operations/{id}/events), and the group's at /operations/events?group=pode.
  app.longrun.operationRoute({ action: 'events', url: '/task/events', id: { in: 'query', name: 'taskId' } })
  return app
}
