import { ERRORS, OPERATION_ERROR_CODES, PROBLEM_TYPE_PREFIX, type ErrorCode } from '../../core/errors.js'
import { OPERATION_STATES } from '../../core/operation.js'
import { OPERATORS, QUERY_FIELDS, type FieldType } from '../../core/query.js'
import type { DeliveryState, HistoryEvent } from '../../core/types.js'
import type { JsonSchema, Presentation } from '../mounts.js'

// JSON Schemas (2020-12, as OpenAPI 3.1 takes them) of what longrun answers: docs/protocol.md.

/** A reference to one of `COMPONENTS`. */
export const ref = (name: keyof typeof COMPONENTS): JsonSchema => ({ $ref: `#/components/schemas/${name}` })

// Records over the unions, so that the compiler names any value the lists below miss.
const HISTORY_EVENTS = Object.keys({
  submitted: 1,
  started: 1,
  progress: 1,
  'cancel-requested': 1,
  'retry-scheduled': 1,
  'lease-lost': 1,
  released: 1,
  retried: 1,
  queued: 1,
  succeeded: 1,
  failed: 1,
  canceled: 1,
} satisfies Record<HistoryEvent, 1>)
const DELIVERY_STATES = Object.keys({ pending: 1, delivering: 1, delivered: 1, failed: 1 } satisfies Record<
  DeliveryState,
  1
>)

const TIME: JsonSchema = { type: 'string', format: 'date-time' }
const TIME_OR_NULL: JsonSchema = { type: ['string', 'null'], format: 'date-time' }
const COUNT: JsonSchema = { type: 'integer', minimum: 0 }
const object = (properties: Record<string, JsonSchema>, required = Object.keys(properties)): JsonSchema => ({
  type: 'object',
  required,
  properties,
})

/** The operation resource, with its states under the names a presentation gives them. */
export function operationSchema(states: Presentation['states'] = {}): JsonSchema {
  const { attempts, history, ...optional } = {
    nextAttemptAt: { ...TIME, description: 'While queued after a failed attempt: when the next one is due.' },
    awaitingStart: {
      const: true,
      description: "Created by a route with `start: 'manual'` and not started yet: `POST links.start` queues it.",
    },
    result: { description: 'Once succeeded (not in lists): what the handler returned.' },
    resourceLocation: { type: 'string', description: 'Once succeeded: the URL of its result.' },
    error: {
      allOf: [ref('OperationError')],
      properties: { message: { type: 'string', description: 'Its `detail`, else its `title` (for Azure pollers).' } },
      required: ['message'],
    },
    callback: object({
      url: { type: 'string' },
      method: { enum: ['POST', 'PUT'] },
      state: { enum: DELIVERY_STATES },
      attempts: COUNT,
      lastAttemptAt: TIME_OR_NULL,
      lastStatus: { type: ['integer', 'null'] },
    }),
    attempts: {
      type: 'array',
      description: 'Only on the single-operation view.',
      items: object(
        {
          attempt: { type: 'integer', minimum: 1 },
          worker: { type: 'string' },
          startedAt: TIME,
          endedAt: TIME_OR_NULL,
          outcome: { type: ['string', 'null'] },
          error: ref('OperationError'),
        },
        ['attempt', 'worker', 'startedAt', 'endedAt', 'outcome'],
      ),
    },
    history: {
      type: 'array',
      description: 'Only on the single-operation view: who did what, oldest first.',
      items: object(
        {
          at: TIME,
          event: { enum: HISTORY_EVENTS },
          attempt: { type: 'integer', minimum: 0 },
          worker: { type: 'string' },
          actor: { type: ['string', 'null'] },
          error: ref('OperationError'),
        },
        ['at', 'event', 'attempt'],
      ),
    },
  } satisfies Record<string, JsonSchema>
  const link = { type: 'string' }
  const required = {
    id: { type: 'string' },
    name: { type: 'string', description: 'The name of the route that made it.' },
    state: { enum: OPERATION_STATES.map((state) => states[state] ?? state) },
    status: {
      enum: ['NotStarted', 'Running', 'Succeeded', 'Failed', 'Canceled'],
      description: '`state` in the words of Azure pollers.',
    },
    done: { type: 'boolean' },
    owner: { type: ['string', 'null'], description: "The submitter's principal id; `null` for an anonymous one." },
    progress: object(
      {
        percent: { type: 'number', minimum: 0, maximum: 100 },
        step: { type: 'string' },
        description: { type: 'string' },
      },
      ['percent'],
    ),
    createdAt: TIME,
    startedAt: TIME_OR_NULL,
    completedAt: TIME_OR_NULL,
    expiresAt: TIME_OR_NULL,
    attempt: { type: 'integer', minimum: 0 },
    maxAttempts: { type: 'integer', minimum: 1 },
    cancelable: { type: 'boolean' },
    cancelRequested: { type: 'boolean' },
    links: object({ self: link, result: link, error: link, cancel: link, start: link }, ['self']),
  } satisfies Record<string, JsonSchema>
  return {
    type: 'object',
    required: Object.keys(required),
    properties: { ...required, ...optional, attempts, history },
  }
}

/** The body of `GET .../error`: a failed operation's error, `failed` under the name a presentation gives it. */
export function failureSchema(failed = 'failed'): JsonSchema {
  return object({
    id: { type: 'string' },
    state: { const: failed },
    attempt: { type: 'integer', minimum: 1 },
    error: ref('OperationError'),
  })
}

/** How many operations there are in each state, and in all. */
const COUNTS = { ...Object.fromEntries(OPERATION_STATES.map((state) => [state, COUNT])), total: COUNT }

export const pageSchema = (item: JsonSchema): JsonSchema =>
  object({
    items: { type: 'array', items: item },
    nextCursor: { type: ['string', 'null'], description: 'Gives the next page as `cursor`; `null` on the last.' },
  })

/** A problem of one status, with the codes an endpoint may answer with it. */
export function problemSchema(status: number, codes: readonly ErrorCode[]): JsonSchema {
  return {
    allOf: [ref('Problem')],
    properties: {
      type: { enum: codes.map((code) => PROBLEM_TYPE_PREFIX + code) },
      code: { enum: [...codes] },
      status: { const: status },
    },
  }
}

/** The messages of a callback or endpoint: Standard Webhooks' envelope around the operation. */
export function webhookPayloadSchema(events: readonly HistoryEvent[], sendResult: boolean): JsonSchema {
  return {
    allOf: [ref('WebhookPayload')],
    properties: { type: { enum: events.map((event) => `operation.${event}`) } },
    description: sendResult ? 'The operation carries its result.' : 'The operation comes without its result.',
  }
}

const conditionValue: Record<FieldType, JsonSchema> = {
  string: { type: ['string', 'null'] },
  state: { enum: [...OPERATION_STATES, null] },
  time: { type: ['string', 'integer', 'null'], description: 'ISO 8601, or epoch milliseconds' },
  number: { type: ['number', 'null'] },
  boolean: { type: ['boolean', 'null'] },
}
const condition = (value: JsonSchema): JsonSchema => ({
  type: 'object',
  required: ['op', 'value'],
  additionalProperties: false,
  properties: {
    // Case-insensitive: both spellings in use are listed.
    op: { enum: [...OPERATORS, ...OPERATORS.map((op) => op.toUpperCase())] },
    value,
  },
})

/** The body of `POST {base}/query`: one condition per field (docs/query.md). */
const queryBody: JsonSchema = {
  type: 'object',
  description: 'Conditions, all of which an operation meets: `{ "<field>": { "op": "<operator>", "value": ... } }`.',
  properties: {
    ...Object.fromEntries(
      Object.entries(QUERY_FIELDS).map(([field, type]) => [field, condition(conditionValue[type])]),
    ),
    sseGroup: condition({ type: 'string' }),
  },
  patternProperties: {
    '^input(\\.[A-Za-z_$][\\w$-]{0,63}){1,16}$': condition({ type: ['string', 'number', 'boolean', 'null'] }),
  },
  additionalProperties: false,
}

const cleanupRun: JsonSchema = object({
  trigger: { enum: ['schedule', 'request'] },
  startedAt: TIME,
  endedAt: TIME,
  removed: object({ expired: COUNT, trimmed: COUNT }),
  skipped: { type: 'boolean', description: 'Another process held the cleanup lock: this one removed nothing.' },
  error: { type: ['string', 'null'] },
})

/** The schemas every document holds, by name; `$ref`s written out, as `ref` takes its names from here. */
export const COMPONENTS = {
  Operation: operationSchema(),
  OperationError: {
    ...object(
      {
        type: { type: 'string', description: '`urn:longrun:problem:<code>`' },
        code: {
          type: 'string',
          description: `longrun's own (${OPERATION_ERROR_CODES.join(', ')}), or the code of the handler's error`,
        },
        title: { type: 'string' },
        detail: { type: 'string' },
        stack: { type: 'string', description: 'Only with the `exposeStack` option.' },
      },
      ['type', 'code', 'title'],
    ),
    description: 'What went wrong, as a problem without `status`.',
  },
  Problem: {
    ...object(
      {
        type: { type: 'string', description: '`urn:longrun:problem:<code>`' },
        title: { type: 'string' },
        status: { type: 'integer' },
        detail: { type: 'string' },
        instance: { type: 'string', description: 'The path of the request it answers.' },
        code: { enum: Object.keys(ERRORS) },
      },
      ['type', 'title', 'status', 'code'],
    ),
    description: 'RFC 9457; some problems carry more members (docs/protocol.md).',
  },
  Page: pageSchema({ $ref: '#/components/schemas/Operation' }),
  StateCounts: object(COUNTS),
  Stats: object({
    ...COUNTS,
    byName: { type: 'object', additionalProperties: { $ref: '#/components/schemas/StateCounts' } },
  }),
  OperationFailure: failureSchema(),
  Deliveries: object({
    items: {
      type: 'array',
      items: object({
        id: { type: 'string', description: 'The `webhook-id`: the same on every attempt.' },
        seq: { type: 'integer' },
        event: { enum: HISTORY_EVENTS },
        target: { type: 'string', description: '`callback`, or the id of an app-wide endpoint.' },
        state: { enum: DELIVERY_STATES },
        nextAttemptAt: TIME_OR_NULL,
        attempts: {
          type: 'array',
          items: object({
            at: TIME,
            durationMs: COUNT,
            ok: { type: 'boolean' },
            status: { type: ['integer', 'null'] },
            error: { type: ['string', 'null'] },
          }),
        },
      }),
    },
  }),
  Redelivered: object({ redelivered: COUNT }),
  Health: object({ status: { const: 'ok' } }),
  RetryAllRequest: {
    type: 'object',
    additionalProperties: false,
    properties: {
      state: {
        anyOf: [
          { type: 'string', description: '`failed`, `canceled`, or both comma-separated' },
          { type: 'array', items: { enum: ['failed', 'canceled'] } },
        ],
      },
      name: { type: 'string' },
      limit: { type: 'integer', minimum: 1, maximum: 10_000, default: 1_000 },
    },
  },
  RetryAllResult: object({ retried: COUNT, ids: { type: 'array', items: { type: 'string' } } }),
  QueryConditions: queryBody,
  CleanupRun: cleanupRun,
  CleanupStatus: object({
    active: { type: 'boolean', description: 'Runs are scheduled in this process.' },
    running: { type: 'boolean' },
    exclusive: { type: 'boolean', description: 'Runs are single-flight across the processes sharing the store.' },
    options: object({
      interval: { ...COUNT, description: 'milliseconds' },
      retention: { ...COUNT, description: 'milliseconds' },
      keep: {
        type: ['object', 'null'],
        properties: { succeeded: COUNT, failed: COUNT, canceled: COUNT },
        additionalProperties: false,
      },
    }),
    lastRun: { anyOf: [{ $ref: '#/components/schemas/CleanupRun' }, { type: 'null' }] },
  }),
  WebhookPayload: object({
    type: { type: 'string', description: '`operation.<event>`' },
    timestamp: { ...TIME, description: 'When the event happened.' },
    data: { $ref: '#/components/schemas/Operation' },
  }),
} satisfies Record<string, JsonSchema>
