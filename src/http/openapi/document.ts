import { ERRORS, type ErrorCode } from '../../core/errors.js'
import type { HistoryEvent } from '../../core/types.js'
import { RESULT_TYPES, type ResultType } from '../formats.js'
import type { ApiDescription, JsonSchema, Presentation, ResolvedMount } from '../mounts.js'
import type { ResolvedProtocolOptions } from '../options.js'
import { PROBLEM_CONTENT_TYPE } from '../problem.js'
import type { ResolvedAsyncRoute } from '../route.js'
import type { SchemaPart } from '../schema.js'
import {
  COMPONENTS,
  failureSchema,
  operationSchema,
  pageSchema,
  problemSchema,
  ref,
  webhookPayloadSchema,
} from './schemas.js'
import { securityOf, type SecurityScheme } from './security.js'

// The OpenAPI 3.1 document of an API, made from longrun's own description of it (its async routes
// and the operations API where it is served): docs/openapi.md says why not from Fastify's routes.

export interface OpenApiDocument {
  openapi: '3.1.0'
  info: { title: string; version: string; description?: string }
  tags: { name: string; description: string }[]
  paths: Record<string, PathItem>
  webhooks?: Record<string, PathItem>
  components: { schemas: Record<string, JsonSchema>; securitySchemes?: Record<string, SecurityScheme> }
  security?: Record<string, string[]>[]
}

type PathItem = Partial<Record<'get' | 'post' | 'put' | 'patch' | 'delete', Operation>>

interface Operation {
  operationId: string
  summary: string
  description?: string
  tags: string[]
  parameters?: Parameter[]
  requestBody?: { required: boolean; content: Content }
  responses: Record<string, Response>
  callbacks?: Record<string, Record<string, PathItem>>
}

interface Parameter {
  name: string
  in: 'path' | 'query' | 'header' | 'cookie'
  required: boolean
  description?: string
  schema: JsonSchema
}

interface Response {
  description: string
  headers?: Record<string, { description: string; schema: JsonSchema }>
  content?: Content
}

type Content = Record<string, { schema: JsonSchema }>

const DEFAULT_INFO = { title: 'longrun API', version: '1.0.0' }
const TAGS = {
  routes: 'async routes',
  operations: 'operations',
  mounted: 'mounted operations',
}

const header = (description: string, schema: JsonSchema = { type: 'string' }) => ({ description, schema })
const STATUS_HEADERS = {
  Location: header('The status URL of the operation.'),
  'Operation-Location': header('The same URL, for Azure pollers.'),
  'Retry-After': header('Seconds to wait before polling.', { type: 'integer' }),
}
const ETAG = { ETag: header('A strong tag of the exact bytes: send it back as `If-None-Match`.') }
const NOT_MODIFIED: Response = { description: 'Not modified: `If-None-Match` matched.', headers: ETAG }
const IF_NONE_MATCH = parameter(
  'If-None-Match',
  'header',
  'Entity tags of copies the client has: `304` when one matches.',
)
const LAST_EVENT_ID = parameter('Last-Event-ID', 'header', 'Resumes after the event of this id.')

function parameter(name: string, where: Parameter['in'], description: string, schema: JsonSchema = { type: 'string' }) {
  return { name, in: where, required: where === 'path', description, schema } satisfies Parameter
}

const content = (types: readonly string[], schema: JsonSchema): Content =>
  Object.fromEntries(types.map((type) => [type, { schema }]))

/** The OpenAPI 3.1 document of everything `description` serves. */
export function openApiDocument(description: ApiDescription): OpenApiDocument {
  const { options, routes, mounts } = description
  const doc: OpenApiDocument = {
    openapi: '3.1.0',
    info: options.docs?.info ?? DEFAULT_INFO,
    tags: [
      { name: TAGS.routes, description: 'Each accepts a request as an operation, answered `202 Accepted`.' },
      { name: TAGS.operations, description: `The operations API under \`${options.basePath}\` (docs/protocol.md).` },
      { name: TAGS.mounted, description: 'Actions of the operations API at URLs of the app.' },
    ],
    paths: {},
    components: { schemas: { ...COMPONENTS } },
  }
  const ids = new Set<string>()
  // Operation ids must be unique: a name taken twice gets a number.
  const unique = (base: string) => {
    let id = base
    for (let n = 2; ids.has(id); n++) id = `${base}-${n}`
    ids.add(id)
    return id
  }
  const add = (method: string, url: string, operation: Operation) => {
    const { path } = templated(url)
    const item = (doc.paths[path] ??= {})
    item[method.toLowerCase() as keyof PathItem] = operation
  }
  for (const route of routes) add(route.method, route.prefix + route.url, routeOperation(route, options, unique))
  const resultTypes = RESULT_TYPES.filter((type) => routes.some((route) => route.resultTypes.includes(type)))
  for (const mount of mounts) {
    const id = unique(mount.builtIn ? mount.action : `${mount.action}:${mount.url}`)
    add(
      mount.method,
      mount.url,
      mountOperation(mount, options, id, resultTypes.length ? resultTypes : ['application/json']),
    )
  }
  if (options.webhooks && options.webhooks.endpoints.size > 0) {
    doc.webhooks = Object.fromEntries(
      [...options.webhooks.endpoints.values()].map((endpoint) => [
        endpoint.id,
        {
          post: messageOperation(
            unique(`webhook:${endpoint.id}`),
            `Messages to the app-wide endpoint '${endpoint.id}'`,
            endpoint.events,
            endpoint.contentType,
            endpoint.sendResult,
            Object.keys(endpoint.headers),
          ),
        },
      ]),
    )
  }
  const security = securityOf(options.authenticate)
  if (security) {
    const schemes: Record<string, SecurityScheme> = {}
    for (const way of security) Object.assign(schemes, way)
    if (Object.keys(schemes).length > 0) doc.components.securitySchemes = schemes
    doc.security = security.map((way) => Object.fromEntries(Object.keys(way).map((name) => [name, []])))
    if (options.allowAnonymous && !doc.security.some((way) => Object.keys(way).length === 0)) doc.security.push({})
  }
  return doc
}

/** `/a/:id` as OpenAPI writes it, `/a/{id}`, with its path parameters. */
function templated(url: string): { path: string; names: string[] } {
  const names: string[] = []
  // Fastify's `:name(regex)` keeps its regex out of the template.
  const path = url.replace(/:([A-Za-z0-9_]+)(\([^)]*\))?/g, (_, name: string) => {
    names.push(name)
    return `{${name}}`
  })
  return { path, names }
}

/** The JSON Schema of one part of a route's request: its own, or a Standard Schema's that can say it. */
function partSchema(route: ResolvedAsyncRoute, part: SchemaPart): JsonSchema | undefined {
  const json = route.schema[part]
  if (json) return json as JsonSchema
  const standard = route.standard[part] as
    { '~standard': { jsonSchema?: { input(o: object): JsonSchema } } } | undefined
  try {
    return standard?.['~standard'].jsonSchema?.input({ target: 'draft-2020-12' })
  } catch {
    // A schema its library cannot express in JSON Schema: documented as any value.
    return {}
  }
}

/** The members of an object schema as parameters (path or query). */
function parametersOf(schema: JsonSchema | undefined, where: 'path' | 'query', names?: string[]): Parameter[] {
  const properties = (schema?.properties ?? {}) as Record<string, JsonSchema>
  const required = new Set((schema?.required ?? []) as string[])
  return (names ?? Object.keys(properties)).map((name) => ({
    name,
    in: where,
    required: where === 'path' || required.has(name),
    schema: properties[name] ?? { type: 'string' },
  }))
}

/** Problem responses by status, each with the codes it may carry. */
function problems(codes: readonly ErrorCode[]): Record<string, Response> {
  const byStatus = new Map<number, ErrorCode[]>()
  for (const code of new Set(codes)) {
    const { status } = ERRORS[code]
    byStatus.set(status, [...(byStatus.get(status) ?? []), code])
  }
  // XML when the client prefers it (RFC 9457 Appendix B).
  const types = [PROBLEM_CONTENT_TYPE, 'application/problem+xml']
  const responses: Record<string, Response> = {}
  for (const [status, list] of [...byStatus].sort(([a], [b]) => a - b)) {
    responses[status] = {
      description: list.map((code) => `\`${code}\`: ${ERRORS[code].title}`).join('; '),
      ...(status === 401 ? { headers: { 'WWW-Authenticate': header('The challenge.') } } : {}),
      ...(status === 429 || status === 503
        ? { headers: { 'Retry-After': header('Seconds.', { type: 'integer' }) } }
        : {}),
      content: content(types, problemSchema(status, list)),
    }
  }
  return responses
}

/** Responses, with a presentation's status codes added: the same body, when the operation is in that state. */
function withStatusCodes(
  responses: Record<string, Response>,
  presentation: Presentation | undefined,
  body: Content,
): Record<string, Response> {
  for (const [state, code] of Object.entries(presentation?.statusCodes ?? {})) {
    const status = String(code)
    const existing = responses[status]
    const when = `The operation, when ${state}.`
    responses[status] = existing
      ? { ...existing, description: `${existing.description} ${when}`, content: { ...existing.content, ...body } }
      : { description: when, content: body }
  }
  return responses
}

/** What is answered for every request: authentication, rate limits, a broken or closing store. */
function commonProblems(options: ResolvedProtocolOptions): ErrorCode[] {
  return [
    ...(options.authenticate ? (['unauthorized'] as const) : []),
    ...(options.rateLimit ? (['rate-limited'] as const) : []),
    'internal-error',
    'store-closed',
    'store-unavailable',
  ]
}

function routeOperation(
  route: ResolvedAsyncRoute,
  options: ResolvedProtocolOptions,
  unique: (id: string) => string,
): Operation {
  const { names } = templated(route.url)
  const presentation = route.presentation
  const resource = content(options.formats, presentation?.presentSchema ?? resourceSchema(presentation))
  const keys = options.idempotencyHeaders
  const parameters: Parameter[] = [
    ...parametersOf(partSchema(route, 'params'), 'path', names),
    ...parametersOf(partSchema(route, 'querystring'), 'query'),
    ...keys.map((name) => ({
      ...parameter(name, 'header', 'An idempotency key: the same request again answers what the first one did.'),
      // With several headers any one of them will do: none is required by itself.
      required: route.idempotency === 'required' && keys.length === 1,
    })),
  ]
  if (!route.hold) {
    parameters.push(
      parameter(
        'Prefer',
        'header',
        `\`wait=N\`: wait up to N seconds (at most ${options.maxWaitMs / 1000}) for the outcome; \`respond-async\`: answer 202 at once.`,
      ),
    )
  }
  const body = partSchema(route, 'body')
  const codes: ErrorCode[] = [
    'malformed-json',
    'invalid-body',
    'invalid-params',
    'invalid-querystring',
    'invalid-headers',
    'unsupported-media-type',
    'body-too-large',
    'invalid-idempotency-key',
    'idempotency-key-mismatch',
    ...(route.idempotency === 'required' ? (['idempotency-key-required'] as const) : []),
    ...(route.callback ? (['invalid-callback'] as const) : []),
    ...(options.maxActivePerOwner ? (['quota-exceeded'] as const) : []),
    ...(route.hold ? (['too-many-streams'] as const) : []),
    ...(route.hold?.onTimeout === 'timeout' ? (['hold-timeout'] as const) : []),
    // The outcome of a request that waited: the result, or why there is none.
    'operation-failed',
    'operation-canceled',
    'not-acceptable',
    'shutting-down',
    'duplicate-operation-id',
    'unsupported-value',
    'storage-full',
    ...commonProblems(options),
  ]
  const waited = route.hold
    ? route.hold.respond
      ? `Held until the operation ends (at most ${route.hold.timeoutMs / 1000} s): the route's own answer (\`hold.respond\`), whose status and body it chooses.`
      : `Held until the operation ends (at most ${route.hold.timeoutMs / 1000} s): its result.`
    : 'With `Prefer: wait=N`, when the operation succeeded in time: its result.'
  const responses: Record<string, Response> = {
    '200': {
      description: waited,
      headers: {
        'Content-Location': header('The status URL of the operation.'),
        ...(route.hold ? {} : { 'Preference-Applied': header('`wait=N`, the preference applied.') }),
      },
      content: content(route.resultTypes, {}),
    },
    '202': {
      description: !route.hold
        ? 'Accepted: the operation is stored and will run; poll `Location`.'
        : route.hold.onTimeout === 'accepted'
          ? 'Accepted: the operation did not end within the hold; poll `Location`.'
          : 'Not answered to a client that waits: one still held at the end gets `408 hold-timeout`.',
      headers: STATUS_HEADERS,
      content: resource,
    },
    ...problems(codes),
  }
  return {
    operationId: unique(route.name),
    summary: `Submit '${route.name}'`,
    description: `Starts the operation '${route.name}'${route.start === 'manual' ? ', to be started by its `start` action' : ''}. Its result is offered as ${route.resultTypes.join(', ')}.`,
    tags: [TAGS.routes],
    parameters,
    ...(['GET', 'HEAD', 'DELETE'].includes(route.method)
      ? {}
      : { requestBody: { required: body !== undefined, content: content(['application/json'], body ?? {}) } }),
    responses: withStatusCodes(responses, presentation, resource),
    ...(route.callback
      ? {
          callbacks: {
            [`${route.name}.callback`]: {
              // A whole-value runtime expression takes braces in a callback key; embedded ones have them.
              [route.callback.url.startsWith('$') ? `{${route.callback.url}}` : route.callback.url]: {
                [route.callback.method.toLowerCase()]: messageOperation(
                  unique(`${route.name}.callback`),
                  `The callback of '${route.name}'`,
                  route.callback.events,
                  route.callback.contentType,
                  route.callback.sendResult,
                  Object.keys(route.callback.headers),
                ),
              },
            },
          },
        }
      : {}),
  }
}

/** The operation resource as a presentation names its states. */
function resourceSchema(presentation: Presentation | undefined): JsonSchema {
  return presentation?.states ? operationSchema(presentation.states) : ref('Operation')
}

/** A signed webhook message (docs/webhooks.md), as its receiver gets it. */
function messageOperation(
  id: string,
  summary: string,
  events: readonly HistoryEvent[],
  contentType: string,
  sendResult: boolean,
  headers: string[],
): Operation {
  return {
    operationId: id,
    summary,
    description: `Sent for the events ${events.join(', ')}, at least once, signed per Standard Webhooks: deduplicate by \`webhook-id\`.`,
    tags: [TAGS.routes],
    parameters: [
      parameter('webhook-id', 'header', 'The message id: the same on every attempt.'),
      parameter('webhook-timestamp', 'header', 'When this attempt was signed, in seconds since the epoch.'),
      parameter('webhook-signature', 'header', '`v1,<base64 HMAC-SHA256>` per secret, space-separated.'),
      ...headers.map((name) => parameter(name, 'header', 'Set by the configuration.')),
    ].map((p) => ({ ...p, required: !headers.includes(p.name) })),
    requestBody: { required: true, content: content([contentType], webhookPayloadSchema(events, sendResult)) },
    responses: {
      '2XX': { description: 'Delivered.' },
      '410': { description: 'Gone: no more messages are sent to this target.' },
      default: { description: 'Retried on the schedule (docs/webhooks.md).' },
    },
  }
}

/** An action of the operations API where `mount` serves it. */
function mountOperation(
  mount: ResolvedMount,
  options: ResolvedProtocolOptions,
  id: string,
  resultTypes: readonly ResultType[],
): Operation {
  const { names } = templated(mount.url)
  const { formats, presentation } = mount
  const parameters: Parameter[] = names
    .filter((name) => !(mount.id?.in === 'path' && mount.id.name === name))
    .map((name) => parameter(name, 'path', 'A parameter of the mount URL.'))
  if (mount.id) parameters.unshift({ ...parameter(mount.id.name, mount.id.in, 'The operation id.'), required: true })
  const one = presentation?.presentSchema ?? resourceSchema(presentation)
  const page =
    presentation?.presentSchema ?? (presentation?.states ? pageSchema(resourceSchema(presentation)) : ref('Page'))
  const ok = (description: string, schema: JsonSchema, headers?: Response['headers']): Response => ({
    description,
    ...(headers ? { headers } : {}),
    content: content(formats, schema),
  })
  const codes: ErrorCode[] = [...commonProblems(options), ...(mount.id ? (['operation-not-found'] as const) : [])]
  // A mount's id may be missing, given twice, or given in another place too.
  if (mount.id && !mount.builtIn) codes.push('invalid-id')
  let spec: Pick<Operation, 'summary' | 'description'> & {
    responses: Record<string, Response>
    problems?: ErrorCode[]
    parameters?: Parameter[]
    body?: JsonSchema
    /** The presentation's status codes apply: an answer about one operation. */
    single?: boolean
  }
  const pageParameters = [
    parameter('limit', 'query', `At most this many (${options.defaultPageSize} by default).`, {
      type: 'integer',
      minimum: 1,
      maximum: options.maxPageSize,
    }),
    parameter('cursor', 'query', 'The `nextCursor` of the previous page.'),
    parameter('sort', 'query', 'Newest first by default.', { enum: ['newest', 'oldest'] }),
  ]
  const state = parameter('state', 'query', 'States, comma-separated.')
  const conditions = 'Any other parameter is a condition `field[op]=value` (docs/query.md).'
  const stream = (description: string): Response => ({
    description,
    content: { 'text/event-stream': { schema: { type: 'string' } } },
  })
  const streamNote =
    'Server-sent events: `id:` the event, `event:` its name, `data:` the operation resource with the event under `event`.'
  const action = mount.action
  switch (action) {
    case 'status':
      spec = {
        summary: 'Read an operation',
        description: 'The operation with its attempts and history.',
        parameters: [
          parameter(
            'Prefer',
            'header',
            `\`wait=N\`: answer once done, or after N seconds (at most ${options.maxWaitMs / 1000}).`,
          ),
          IF_NONE_MATCH,
        ],
        responses: { '200': ok('The operation.', one, ETAG), '304': NOT_MODIFIED },
        problems: ['too-many-streams', 'shutting-down'],
        single: true,
      }
      break
    case 'wait':
      spec = {
        summary: 'Wait for an operation',
        parameters: [
          parameter('timeout', 'query', 'Seconds to wait at most.', { type: 'integer', minimum: 0 }),
          IF_NONE_MATCH,
        ],
        responses: {
          '200': ok('The operation once done, or as it is at the timeout.', one, ETAG),
          '304': NOT_MODIFIED,
        },
        problems: ['invalid-query', 'too-many-streams', 'shutting-down'],
        single: true,
      }
      break
    case 'result':
      spec = {
        summary: 'Read the result',
        description: "In the first of its route's `resultTypes` that `Accept` allows.",
        parameters: [IF_NONE_MATCH],
        responses: {
          '200': { description: 'The result.', headers: ETAG, content: content(resultTypes, {}) },
          '304': NOT_MODIFIED,
        },
        problems: ['not-acceptable', 'operation-not-done', 'operation-failed', 'operation-canceled'],
      }
      break
    case 'error':
      spec = {
        summary: 'Read the error of a failed operation',
        parameters: [IF_NONE_MATCH],
        responses: {
          '200': ok(
            'The error.',
            presentation?.presentSchema ??
              (presentation?.states?.failed ? failureSchema(presentation.states.failed) : ref('OperationFailure')),
            ETAG,
          ),
          '304': NOT_MODIFIED,
        },
        problems: ['no-error'],
      }
      break
    case 'cancel':
      spec = {
        summary: 'Cancel an operation',
        responses: { '200': ok('The operation, canceled or with `cancelRequested`.', one) },
        problems: ['forbidden', 'operation-not-cancelable', 'operation-finished'],
        single: true,
      }
      break
    case 'retry':
      spec = {
        summary: 'Retry a failed or canceled operation',
        responses: { '202': ok('The operation, queued again.', one, STATUS_HEADERS) },
        problems: ['forbidden', 'operation-not-retryable', 'quota-exceeded'],
        single: true,
      }
      break
    case 'start':
      spec = {
        summary: 'Start an operation created to start later',
        responses: { '202': ok('The operation, queued.', one, STATUS_HEADERS) },
        problems: ['forbidden', 'operation-started'],
        single: true,
      }
      break
    case 'delete':
      spec = {
        summary: 'Delete a finished operation',
        responses: { '204': { description: 'Deleted, with its history.' } },
        problems: ['forbidden', 'operation-not-finished'],
      }
      break
    case 'events':
      spec = {
        summary: "Stream an operation's events",
        description: `${streamNote} Ends after the terminal event.`,
        parameters: [
          parameter('after', 'query', 'Replays the events after this sequence number.', {
            type: 'integer',
            minimum: 0,
          }),
          LAST_EVENT_ID,
        ],
        responses: { '200': stream('The event stream.') },
        problems: ['invalid-headers', 'too-many-streams', 'not-supported', 'shutting-down'],
      }
      break
    case 'feed':
      spec = {
        summary: 'Stream the events of a group, or of all of your operations',
        description: streamNote,
        parameters: [parameter('group', 'query', 'An `sseGroup` of the routes.'), LAST_EVENT_ID],
        responses: { '200': stream('The event stream.') },
        problems: ['invalid-query', 'too-many-streams', 'not-supported', 'shutting-down'],
      }
      break
    case 'list':
      spec = {
        summary: 'List operations',
        description: `Newest first. ${conditions}`,
        parameters: [state, parameter('name', 'query', 'The route name.'), ...pageParameters, IF_NONE_MATCH],
        responses: { '200': ok('A page of operations.', page, ETAG), '304': NOT_MODIFIED },
        problems: ['invalid-query', 'invalid-condition', 'not-supported'],
      }
      break
    case 'query':
      spec = {
        summary: 'Query operations',
        description: mount.readQuery
          ? "The operations that meet every condition of the body, in the app's own form (its `readQuery` turns it into docs/query.md's)."
          : 'The operations that meet every condition of the body (docs/query.md).',
        parameters: pageParameters,
        // The app's form is the app's: only longrun's own can be described here.
        body: mount.readQuery ? { type: 'object' } : ref('QueryConditions'),
        responses: { '200': ok('A page of operations.', page) },
        problems: [
          'invalid-query',
          'invalid-condition',
          'malformed-json',
          'unsupported-media-type',
          'body-too-large',
          'not-supported',
        ],
      }
      break
    case 'stats':
      spec = {
        summary: 'Count operations by state and name',
        description: conditions,
        parameters: [state, IF_NONE_MATCH],
        responses: {
          '200': ok('The counts of what you may read.', presentation?.presentSchema ?? ref('Stats'), ETAG),
          '304': NOT_MODIFIED,
        },
        problems: ['invalid-query', 'invalid-condition', 'not-supported'],
      }
      break
    case 'cleanupStatus':
      spec = {
        summary: 'Read the cleanup service',
        responses: { '200': ok('Its status and last run.', ref('CleanupStatus')) },
      }
      break
    case 'cleanup':
      spec = {
        summary: 'Run the cleanup now',
        description: 'Admin role, or the `cleanup.allow` grant.',
        responses: { '200': ok('The run.', ref('CleanupRun')) },
        problems: ['forbidden'],
      }
      break
    case 'retryAll':
      spec = {
        summary: 'Retry failed or canceled operations',
        body: ref('RetryAllRequest'),
        responses: { '200': ok('How many were queued again.', ref('RetryAllResult')) },
        problems: ['invalid-body', 'malformed-json', 'unsupported-media-type', 'body-too-large'],
      }
      break
    case 'deliveries':
      spec = {
        summary: "List an operation's webhook messages",
        parameters: [IF_NONE_MATCH],
        responses: { '200': ok('Its messages with every attempt.', ref('Deliveries'), ETAG), '304': NOT_MODIFIED },
        problems: ['not-supported'],
      }
      break
    case 'redeliver':
      spec = {
        summary: "Send an operation's delivered and failed messages again",
        responses: { '202': ok('How many are pending again.', ref('Redelivered')) },
        problems: ['forbidden', 'not-supported'],
      }
      break
    case 'health':
      spec = {
        summary: 'Liveness',
        description: 'Answers while the process serves; the store is not asked.',
        responses: { '200': ok('Alive.', ref('Health')) },
      }
      break
    case 'ready':
      spec = {
        summary: 'Readiness',
        description: 'Answers `200` when the store answers, `503` when it does not or the server is closing.',
        responses: { '200': ok('Ready.', ref('Health')) },
        problems: ['shutting-down'],
      }
      break
    default:
      // The compiler names an endpoint added without documentation here.
      throw new Error(`OpenAPI: no documentation of the action '${action satisfies never}'`)
  }
  const responses = { ...spec.responses, ...problems([...codes, ...(spec.problems ?? [])]) }
  const limited = mount.route === undefined ? undefined : `Only the operations of the route \`${mount.route}\`.`
  const description = [spec.description, limited].filter(Boolean).join(' ')
  return {
    operationId: id,
    summary: spec.summary,
    ...(description ? { description } : {}),
    tags: [mount.builtIn ? TAGS.operations : TAGS.mounted],
    parameters: [...parameters, ...(spec.parameters ?? [])],
    ...(spec.body ? { requestBody: { required: false, content: content(['application/json'], spec.body) } } : {}),
    responses: spec.single ? withStatusCodes(responses, presentation, content(formats, one)) : responses,
  }
}
