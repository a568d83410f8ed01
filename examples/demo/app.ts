import Fastify, { type FastifyInstance } from 'fastify'
import {
  jwtAuth,
  longrun,
  problemErrorHandler,
  problemFrameworkErrors,
  problemNotFoundHandler,
  sessionAuth,
  type LongrunPluginOptions,
} from 'longrun/fastify'
import { openStore } from './store.js'
import { registerDemoTasks } from './tasks.js'

export { openStore, storeSpec } from './store.js'

export interface DemoOptions extends Omit<LongrunPluginOptions, 'store'> {
  /** `memory`, `sqlite:<path>` or a `postgres://` URL (see ./store.ts). */
  store: string
  /** PostgreSQL schema. @default 'longrun' */
  pgSchema?: string
  logLevel?: string
  /**
   * HS256 secret: every route then needs a bearer JWT (role `admin` sees everything). Without it,
   * callers are isolated by their `X-Session-Key` header, or by IP address without one.
   */
  jwtSecret?: string
}

export async function buildDemoApp(options: DemoOptions): Promise<FastifyInstance> {
  const { store: spec, pgSchema, logLevel = 'info', jwtSecret, ...plugin } = options
  const app = Fastify({
    logger: { level: logLevel },
    // Slow or stalled clients must not hold sockets: bound the headers and the whole request.
    connectionTimeout: 60_000,
    requestTimeout: 30_000,
    frameworkErrors: problemFrameworkErrors,
  })
  app.server.headersTimeout = 10_000
  app.setErrorHandler(problemErrorHandler)
  app.setNotFoundHandler(problemNotFoundHandler)
  await app.register(longrun, {
    authenticate: jwtSecret ? jwtAuth({ secret: jwtSecret }) : sessionAuth({ header: 'x-session-key' }),
    adminRole: 'admin',
    ...plugin,
    store: await openStore(spec, { ...(pgSchema ? { pgSchema } : {}), logger: app.log }),
  })
  registerDemoTasks(app)

  app.get('/', async () => ({
    name: 'longrun demo',
    about: 'Each POST below answers 202 Accepted at once; the task runs in the background.',
    identity: jwtSecret
      ? 'Send Authorization: Bearer <JWT> (HS256, LONGRUN_JWT_SECRET); mint one with npm run token -- <user>.'
      : 'Callers are isolated by their X-Session-Key header, or by IP address without one.',
    tasks: {
      sample: 'POST /api/v1/demo/tasks/sample {"delayMs":3000,"description":"...","fail":false}',
      fileProcessing: 'POST /api/v1/demo/tasks/file-processing {"filePath":"/tmp/a.txt","fileSize":1024}',
      apiCall: 'POST /api/v1/demo/tasks/api-call {"endpoint":"https://api.example.com/data","data":{}}',
      batch: 'POST /api/v1/demo/tasks/batch {"items":["a","b","c"]}',
      flaky: 'POST /api/v1/demo/tasks/flaky {"failTimes":2} (retried with backoff)',
      noop: 'POST /api/v1/demo/tasks/noop {"delayMs":0} (does nothing: for load and scale tests)',
    },
    operations: {
      list: 'GET /operations?state=&name=&limit=&cursor=',
      stats: 'GET /operations/stats',
      status: 'GET /operations/{id}',
      result: 'GET /operations/{id}/result',
      error: 'GET /operations/{id}/error',
      cancel: 'POST /operations/{id}/cancel',
      retry: 'POST /operations/{id}/retry',
      retryAll: 'POST /operations/retry {"state":"failed","name":"..."}',
      delete: 'DELETE /operations/{id}',
    },
  }))
  return app
}
