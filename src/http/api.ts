import type { OperationAccess } from '../core/access.js'
import { LongrunError } from '../core/errors.js'
import { OPERATION_STATES, type Operation, type OperationState } from '../core/types.js'
import { negotiate, serialize, type ResultType } from './formats.js'
import { isDone, operationUrl, publicError, toDetailedResource, toResource, type ResourceOptions } from './resource.js'

/** A framework-neutral answer: adapters copy it onto their own reply object. */
export interface HttpReply {
  status: number
  headers: Record<string, string>
  /** A string is sent as is; anything else as JSON. */
  body?: unknown
}

export interface ProtocolOptions extends ResourceOptions {
  /** Seconds a client should wait before polling again. */
  retryAfterSeconds: number
  /** Page size when the client asks for none. */
  defaultPageSize: number
  /** Larger requested pages are cut to this. */
  maxPageSize: number
  /** Media types each operation name offers its result in; JSON when absent. */
  resultTypes: (name: string) => readonly ResultType[]
}

const JSON_TYPE = 'application/json; charset=utf-8'
const CURSOR = /^[A-Za-z0-9_-]{1,200}$/

/**
 * The operations API of DESIGN §2, independent of any HTTP framework: each method takes what the
 * request carries and returns the reply, or throws a LongrunError that the adapter turns into a problem.
 * Operations are reached only through the caller's `OperationAccess`, never through the engine: no
 * endpoint can skip the permission check.
 */
export class OperationsProtocol {
  readonly #opts: ProtocolOptions

  constructor(options: ProtocolOptions) {
    this.#opts = options
  }

  /** 202 for a just-accepted (or re-queued) operation. */
  accepted(op: Operation, headers: Record<string, string> = {}): HttpReply {
    return {
      status: 202,
      headers: {
        'content-type': JSON_TYPE,
        location: operationUrl(this.#opts.basePath, op.id),
        'retry-after': String(this.#opts.retryAfterSeconds),
        ...headers,
      },
      body: toResource(op, this.#opts),
    }
  }

  async status(access: OperationAccess, id: string): Promise<HttpReply> {
    const { op, history } = await access.details(id)
    return { status: 200, headers: this.#headers(op), body: toDetailedResource(op, history, this.#opts) }
  }

  async result(access: OperationAccess, id: string, accept: string | undefined): Promise<HttpReply> {
    const op = await access.get(id)
    if (op.state === 'succeeded') {
      const type = negotiate(accept, this.#opts.resultTypes(op.name))
      return {
        status: 200,
        headers: { 'content-type': `${type}; charset=utf-8`, vary: 'Accept' },
        body: serialize(op.result, type),
      }
    }
    if (!isDone(op)) {
      throw new LongrunError('operation-not-done', 409, 'Operation not done', `The operation is '${op.state}'.`, {
        state: op.state,
        retryAfter: this.#opts.retryAfterSeconds,
      })
    }
    throw new LongrunError(
      `operation-${op.state}`,
      409,
      `Operation ${op.state}`,
      `The operation ended '${op.state}'.`,
      {
        state: op.state,
        ...(op.error ? { error: publicError(op.error, this.#opts.exposeStack) } : {}),
      },
    )
  }

  async error(access: OperationAccess, id: string): Promise<HttpReply> {
    const op = await access.get(id)
    if (op.state !== 'failed' || !op.error) {
      throw new LongrunError('no-error', 404, 'No error', `The operation is '${op.state}', not failed.`, {
        state: op.state,
      })
    }
    return {
      status: 200,
      headers: { 'content-type': JSON_TYPE },
      body: { id: op.id, state: op.state, attempt: op.attempt, error: publicError(op.error, this.#opts.exposeStack) },
    }
  }

  async cancel(access: OperationAccess, id: string): Promise<HttpReply> {
    return this.#resource(await access.cancel(id))
  }

  async retry(access: OperationAccess, id: string): Promise<HttpReply> {
    return this.accepted(await access.retry(id))
  }

  async remove(access: OperationAccess, id: string): Promise<HttpReply> {
    await access.delete(id)
    return { status: 204, headers: {} }
  }

  async list(access: OperationAccess, query: Record<string, unknown>): Promise<HttpReply> {
    const states = parseStates(query.state)
    const name = single(query.name, 'name')
    const cursorText = single(query.cursor, 'cursor')
    const cursor = cursorText === undefined ? undefined : decodeCursor(cursorText)
    const limitText = single(query.limit, 'limit')
    let limit = this.#opts.defaultPageSize
    if (limitText !== undefined) {
      limit = Number(limitText)
      if (!/^\d+$/.test(limitText) || limit < 1) throw invalidQuery('limit', 'must be a positive integer')
      limit = Math.min(limit, this.#opts.maxPageSize)
    }
    const page = await access.list({
      ...(states ? { states } : {}),
      ...(name !== undefined ? { name } : {}),
      ...(cursor !== undefined ? { cursor } : {}),
      limit,
    })
    return {
      status: 200,
      headers: { 'content-type': JSON_TYPE },
      body: {
        items: page.items.map((op) => toResource(op, this.#opts)),
        nextCursor: page.nextCursor === undefined ? null : encodeCursor(page.nextCursor),
      },
    }
  }

  /** Retries failed (or canceled) operations in bulk: `{ state?, name?, limit? }` in the body. */
  async retryAll(access: OperationAccess, body: unknown): Promise<HttpReply> {
    const filter = (body ?? {}) as { state?: unknown; name?: unknown; limit?: unknown }
    if (typeof filter !== 'object' || Array.isArray(filter)) throw invalidFilter('(body)', 'must be a JSON object')
    const states = parseStates(filter.state, invalidFilter)
    if (states?.some((state) => state !== 'failed' && state !== 'canceled')) {
      throw invalidFilter('state', 'must be failed or canceled')
    }
    if (filter.name !== undefined && typeof filter.name !== 'string') throw invalidFilter('name', 'must be a string')
    const limit = filter.limit ?? 1_000
    if (typeof limit !== 'number' || !Number.isInteger(limit) || limit < 1 || limit > 10_000) {
      throw invalidFilter('limit', 'must be an integer from 1 to 10000')
    }
    const ids = await access.retryAll({
      ...(states ? { states: states as ('failed' | 'canceled')[] } : {}),
      ...(filter.name !== undefined ? { name: filter.name } : {}),
      limit,
    })
    return { status: 200, headers: { 'content-type': JSON_TYPE }, body: { retried: ids.length, ids } }
  }

  async stats(access: OperationAccess): Promise<HttpReply> {
    return { status: 200, headers: { 'content-type': JSON_TYPE }, body: await access.stats() }
  }

  #resource(op: Operation): HttpReply {
    return { status: 200, headers: this.#headers(op), body: toResource(op, this.#opts) }
  }

  #headers(op: Operation): Record<string, string> {
    const headers: Record<string, string> = { 'content-type': JSON_TYPE }
    if (!isDone(op)) headers['retry-after'] = String(this.#opts.retryAfterSeconds)
    return headers
  }
}

const invalidFilter = (field: string, why: string) =>
  new LongrunError('invalid-body', 422, 'Invalid request body', `Field '${field}' ${why}.`, { field })

const invalidQuery = (parameter: string, why: string) =>
  new LongrunError('invalid-query', 400, 'Invalid query', `Query parameter '${parameter}' ${why}.`, { parameter })

// Clients get the store's cursor wrapped, so that a cursor the API never issued is refused here
// rather than passed to the store, which may read it as anything (an empty page, the first page).
function encodeCursor(storeCursor: string): string {
  return Buffer.from(JSON.stringify({ after: storeCursor })).toString('base64url')
}

function decodeCursor(text: string): string {
  if (CURSOR.test(text)) {
    try {
      const value: unknown = JSON.parse(Buffer.from(text, 'base64url').toString('utf8'))
      const after = typeof value === 'object' && value !== null ? (value as { after?: unknown }).after : undefined
      if (typeof after === 'string') return after
    } catch {
      // not one of ours
    }
  }
  throw invalidQuery('cursor', 'is not a cursor from a previous page')
}

function single(value: unknown, parameter: string): string | undefined {
  if (value === undefined) return undefined
  if (typeof value !== 'string') throw invalidQuery(parameter, 'must be given once')
  return value
}

function parseStates(value: unknown, invalid = invalidQuery): OperationState[] | undefined {
  if (value === undefined) return undefined
  const parts = (Array.isArray(value) ? value : [value]).flatMap((v) => String(v).split(','))
  for (const part of parts) {
    if (!OPERATION_STATES.includes(part as OperationState)) {
      throw invalid('state', `must be one of ${OPERATION_STATES.join(', ')}`)
    }
  }
  return parts as OperationState[]
}
