import { setTimeout as sleep } from 'node:timers/promises'
import { Type } from '@sinclair/typebox'
import Fastify from 'fastify'
import { OperationFailure, type Store } from 'longrun'
import { longrun } from 'longrun/fastify'

/**
 * AsyncEndpoints (seed 003) on longrun: `app.MapAsyncPost<Request, Response>("/{resourceId}", delegate)`
 * with its handler `AsyncEndpointHandler<Request, Response>`. See README.md.
 */

/** The request id headers, first match wins: AsyncEndpoints' `Async-Job-Id`, and `X-Request-Id`. */
export const REQUEST_ID_HEADERS = ['async-job-id', 'x-request-id']

/** The seed's `Request`: what `POST /{resourceId}` takes. */
export const Request = Type.Object({
  message: Type.Optional(Type.String({ maxLength: 1_000 })),
  /** Attempts that throw before one succeeds, to watch the retries. */
  failAttempts: Type.Optional(Type.Integer({ minimum: 0, maximum: 10 })),
  /** `true`: `Process` answers a failure with its list of errors. */
  fail: Type.Optional(Type.Boolean()),
  delayMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 60_000 })),
})

/** The seed's `ApiOperationResult<Response>`. */
type ApiOperationResult<T> = { isSucceeded: true; data: T } | { isSucceeded: false; errors: string[] }

interface Response {
  resourceId: string
  message: string | null
  query: Record<string, unknown>
  headers: Record<string, string>
  attempt: number
}

/** The seed's `Process(resourceId, queryCollection, headers)`: the app's own work. */
async function processRequest(
  resourceId: string,
  query: Record<string, unknown>,
  headers: Record<string, string>,
  request: typeof Request.static,
  attempt: number,
  signal: AbortSignal,
): Promise<ApiOperationResult<Response>> {
  await sleep(request.delayMs ?? 20, undefined, { signal })
  // A transient fault: thrown, so retried; each attempt's error shows in the job's attempts.
  if (attempt <= (request.failAttempts ?? 0)) throw new Error(`Attempt ${attempt} of '${resourceId}' failed`)
  if (request.fail) {
    return {
      isSucceeded: false,
      errors: [`Resource '${resourceId}' could not be processed`, `Attempt ${attempt} gave up`],
    }
  }
  return { isSucceeded: true, data: { resourceId, message: request.message ?? null, query, headers, attempt } }
}

/** The warning a request without a request id gets, in the job it made. */
export const MISSING_REQUEST_ID =
  'Send an Async-Job-Id (or X-Request-Id) header: a request sent again with the same id makes no second job.'

export interface AsyncEndpointsAppOptions {
  store: Store
  logLevel?: string
}

export async function buildApp(options: AsyncEndpointsAppOptions) {
  const app = Fastify({ logger: { level: options.logLevel ?? 'info' } })
  // AddAsyncEndpoints() with a store (LONGRUN_STORE) and the request id header as idempotency key.
  await app.register(longrun, { store: options.store, idempotencyHeaders: REQUEST_ID_HEADERS })

  app.longrun.route({
    url: '/:resourceId',
    name: 'async-endpoint',
    schema: { params: Type.Object({ resourceId: Type.String() }), body: Request },
    // Workers pick jobs up as available: 4 at once in this process.
    concurrency: 4,
    // "It will also retry based on configurations": 3 attempts in all, 200 ms apart.
    retry: { attempts: 3, backoff: 'fixed', delay: '200ms', jitter: false },
    // MapAsyncPost's delegate: validation before anything is queued; returning is `await next()`.
    async beforeQueue(request, reply) {
      const { resourceId } = request.params as { resourceId: string }
      const errors: string[] = []
      if (!/^[A-Za-z0-9_-]{1,64}$/.test(resourceId)) errors.push('resourceId must be 1-64 letters, digits, - or _')
      const body = request.body as typeof Request.static
      if (body.message !== undefined && body.message.trim() === '') errors.push('message must not be blank')
      if (errors.length > 0) return reply.code(400).send({ errors })
      // "Request send without request id will have a warning to use that header."
      const identified = REQUEST_ID_HEADERS.some((header) => request.headers[header] !== undefined)
      return identified ? undefined : { warning: MISSING_REQUEST_ID }
    },
    // The job as longrun shows it, with the warning of a request sent without a request id.
    present: ({ input: _input, context, ...job }) => ({ ...job, ...context }),
    // AsyncEndpointHandler<Request, Response>.HandleAsync(context)
    async handler(op) {
      const resourceId = op.params.resourceId
      const queryCollection = op.query
      const headers = op.headers
      op.log.info(`Handling request for resourceId ${resourceId}`)
      await op.progress(0, 'Processing')

      const result = await processRequest(resourceId, queryCollection, headers, op.input, op.attempt, op.signal)

      if (!result.isSucceeded) {
        op.log.warn(`Request failed: ${result.errors.join(', ')}`)
        // ApiOperationResult<Response>.Failure(result.Errors): the job's error carries the list.
        throw new OperationFailure('Request failed', { errors: result.errors })
      }
      op.log.info('Request processed successfully.')
      await op.progress(100, 'Done')
      return result.data
    },
  })
  return app
}
