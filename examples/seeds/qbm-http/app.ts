import { setTimeout as sleep } from 'node:timers/promises'
import { Type } from '@sinclair/typebox'
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify'
import { OperationFailure, type Store } from 'longrun'
import { longrun } from 'longrun/fastify'

/**
 * qbm-http's asynchronous request handling (seed 002) on longrun: `GET /async-task` is a held
 * route, the request kept open until its work ends (`ctx.make_async()` ... `completion->complete()`),
 * answered 408 after the async timeout. See README.md.
 */

export interface QbmAppOptions {
  store: Store
  /** `router.configure_async_timeout(seconds)`. @default 60 */
  asyncTimeoutSeconds?: number
  logLevel?: string
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by the async middleware: `ctx.set<bool>("check_passed", true)`. */
    checkPassed?: boolean
  }
}

/** `perform_async_check(ctx.request.header("Some-Header"), ...)`: passes unless the header says `fail`. */
async function performAsyncCheck(header: string | undefined): Promise<boolean> {
  await sleep(5)
  return header?.toLowerCase() !== 'fail'
}

/** `fetch_user_data_from_db(user_id)`, as JSON. */
async function fetchUserDataFromDb(userId: string, delayMs: number, signal: AbortSignal) {
  await sleep(delayMs, undefined, { signal })
  return { user_id: userId, name: `User ${userId}`, fetchedAfterMs: delayMs }
}

export async function buildApp(options: QbmAppOptions) {
  const asyncTimeout = options.asyncTimeoutSeconds ?? 60
  const app = Fastify({ logger: { level: options.logLevel ?? 'info' } })
  // Each held request counts against its caller's open streams and waits (default 16).
  await app.register(longrun, { store: options.store, maxStreamsPerCaller: 64 })
  app.decorateRequest('checkPassed', undefined)

  // The router's context: its middleware applies to every route declared in it.
  await app.register(async (router) => {
    // `router.use(make_middleware(...))`: an async middleware that continues the chain or stops it.
    router.addHook('preHandler', async (request: FastifyRequest, reply: FastifyReply) => {
      const header = request.headers['some-header']
      const checkPassed = await performAsyncCheck(typeof header === 'string' ? header : undefined)
      if (checkPassed) {
        request.checkPassed = true // next(MiddlewareResult::Continue())
        return
      }
      // ctx.mark_handled(); next(MiddlewareResult::Stop()): nothing runs after it, nothing is stored.
      return reply.code(400).type('text/plain; charset=utf-8').send('Async check failed')
    })

    router.longrun.route({
      method: 'GET',
      url: '/async-task',
      name: 'qbm.async-task',
      schema: {
        querystring: Type.Object({
          delayMs: Type.Integer({ minimum: 0, maximum: 3_600_000, default: 100 }),
          /** `true`: the work ends with an error answer (`completion->cancel(status_code, message)`). */
          fail: Type.Optional(Type.Boolean()),
        }),
      },
      // ctx.make_async(): answer when the work ends; 408 after the async timeout; a client that
      // hangs up cancels the work (its signal aborts: `is_session_connected()` is false).
      hold: {
        timeout: `${asyncTimeout}s`,
        onTimeout: 'timeout',
        cancelOnDisconnect: true,
        // completion->status(code).header(name, value).body(...).complete(), and
        // completion->cancel(status_code, message): the answer's status, headers and body.
        respond: (op) =>
          op.state === 'succeeded'
            ? { status: 200, headers: { 'x-completed-by': 'async-worker' }, body: op.result }
            : op.state === 'failed'
              ? { status: Number(op.error?.statusCode ?? 500), body: op.error?.detail ?? 'failed' }
              : undefined,
      },
      timeout: 'none',
      // Held requests are cheap to wait on: many may be pending at once.
      concurrency: 64,
      // What the handler may read of the request, as `ctx.get<std::string>("user_id")` does.
      async beforeQueue(request) {
        const user = request.headers['x-user-id']
        return { user_id: typeof user === 'string' ? user : 'anonymous', check_passed: request.checkPassed === true }
      },
      async handler(op) {
        const { user_id: userId, check_passed: checkPassed } = op.context as { user_id: string; check_passed: boolean }
        // qb::io::async::callback(...): the work runs on a worker, not in the request.
        const result = {
          ...(await fetchUserDataFromDb(userId, op.query.delayMs, op.signal)),
          check_passed: checkPassed,
        }
        // Before sending: is the client still there? A cancel or a hang-up aborts the signal.
        op.signal.throwIfAborted()
        // completion->cancel(status_code, message): an error answer instead of the result.
        if (op.query.fail) {
          throw new OperationFailure(`No data for user ${userId}`, { statusCode: 404 }, { retryable: false })
        }
        // completion->status(200).header("Content-Type", "application/json").body(result).complete()
        return result
      },
    })
  })

  // router.force_timeout_all_requests(): every pending async request times out now (408).
  app.post('/admin/force-timeout', async (_request, reply) => {
    app.longrun.timeoutHeld()
    return reply.code(204).send()
  })
  return app
}
