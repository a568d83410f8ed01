import type { FastifyInstance } from 'fastify'
import { jwtAuth, sessionAuth, type LongrunPluginOptions } from 'longrun/fastify'
import { demoTasks } from './tasks.js'

// The demo as a routes module, which the `longrun` command serves and works:
//   npx longrun serve examples/demo/module.ts --store sqlite:./data/longrun.db
//   npx longrun worker examples/demo/module.ts --store sqlite:./data/longrun.db
// `npm start` (./main.ts) serves the same app, configured from the environment.

export const routes = demoTasks

/**
 * With an HS256 `jwtSecret` (LONGRUN_JWT_SECRET), every route needs a bearer JWT (role `admin` sees
 * everything). Without it, callers are isolated by their `X-Session-Key` header, or by IP address.
 */
export function demoOptions(jwtSecret: string | undefined): Omit<LongrunPluginOptions, 'store'> {
  return {
    authenticate: jwtSecret ? jwtAuth({ secret: jwtSecret }) : sessionAuth({ header: 'x-session-key' }),
    adminRole: 'admin',
  }
}

export const options = demoOptions(process.env.LONGRUN_JWT_SECRET)

export const setup = (app: FastifyInstance) => demoIndex(app, process.env.LONGRUN_JWT_SECRET)

/** `GET /`: what the demo offers. */
export function demoIndex(app: FastifyInstance, jwtSecret: string | undefined): void {
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
      list: 'GET /operations?state=&name=&limit=&cursor=&sort= and conditions: createdAt[ge]=...&input.delayMs[gt]=1000',
      query:
        'POST /operations/query {"state":{"op":"EQ","value":"failed"},"input.description":{"op":"LIKE","value":"acme*"}}',
      stats: 'GET /operations/stats (takes the list conditions)',
      cleanup: 'GET /operations/cleanup (status), POST /operations/cleanup (run now: admin)',
      status: 'GET /operations/{id}',
      result: 'GET /operations/{id}/result',
      error: 'GET /operations/{id}/error',
      cancel: 'POST /operations/{id}/cancel',
      retry: 'POST /operations/{id}/retry',
      retryAll: 'POST /operations/retry {"state":"failed","name":"..."}',
      delete: 'DELETE /operations/{id}',
    },
  }))
}
