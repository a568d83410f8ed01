import { randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import type { Duration } from 'longrun'
import { jwtAuth, sessionAuth, type LongrunPluginOptions } from 'longrun/fastify'
import { demoTasks } from './tasks.js'

// The demo as a routes module, which the `longrun` command serves and works:
//   npx longrun serve examples/demo/module.ts --store sqlite:./data/longrun.db
//   npx longrun worker examples/demo/module.ts --store sqlite:./data/longrun.db
// `npm start` (./main.ts) serves the same app, configured from the environment.

export const routes = demoTasks

export interface DemoSettings {
  /**
   * HS256 secret (LONGRUN_JWT_SECRET): every route then needs a bearer JWT (role `admin` sees
   * everything). Without it, callers are isolated by their `X-Session-Key` header, or by IP address.
   */
  jwtSecret?: string | undefined
  /** Signs callbacks (LONGRUN_WEBHOOK_SECRET, `whsec_...`). @default a random one, logged at start */
  webhookSecret?: string | undefined
  /** Hosts and CIDRs callbacks may reach besides public ones (LONGRUN_CALLBACK_ALLOW, comma-separated). */
  callbackAllow?: string[]
  /**
   * The senders' waiting periods, shortened by crash tests: LONGRUN_WEBHOOK_POLL_MS,
   * LONGRUN_WEBHOOK_LEASE_MS and LONGRUN_WEBHOOK_RETRY (comma-separated durations, e.g. `100ms,1s`).
   */
  webhookTimings?: { poll?: number; lease?: number; retry?: string[] }
}

/** The demo's settings from the environment. */
export const settingsFromEnv = (env: NodeJS.ProcessEnv = process.env): DemoSettings => ({
  jwtSecret: env.LONGRUN_JWT_SECRET,
  webhookSecret: env.LONGRUN_WEBHOOK_SECRET,
  callbackAllow: list(env.LONGRUN_CALLBACK_ALLOW),
  webhookTimings: {
    ...(env.LONGRUN_WEBHOOK_POLL_MS ? { poll: Number(env.LONGRUN_WEBHOOK_POLL_MS) } : {}),
    ...(env.LONGRUN_WEBHOOK_LEASE_MS ? { lease: Number(env.LONGRUN_WEBHOOK_LEASE_MS) } : {}),
    ...(env.LONGRUN_WEBHOOK_RETRY ? { retry: list(env.LONGRUN_WEBHOOK_RETRY) } : {}),
  },
})

const list = (text: string | undefined) =>
  text
    ?.split(',')
    .map((entry) => entry.trim())
    .filter(Boolean) ?? []

/** A random signing secret, for a demo started without one. */
export const randomWebhookSecret = () => `whsec_${randomBytes(32).toString('base64')}`

export function demoOptions(settings: DemoSettings): Omit<LongrunPluginOptions, 'store'> {
  const { jwtSecret, webhookSecret = randomWebhookSecret(), callbackAllow = [], webhookTimings = {} } = settings
  const { retry, ...timings } = webhookTimings
  return {
    authenticate: jwtSecret ? jwtAuth({ secret: jwtSecret }) : sessionAuth({ header: 'x-session-key' }),
    adminRole: 'admin',
    // Every endpoint answers JSON, XML or YAML by Accept, and the API documents itself at /docs.
    formats: ['application/json', 'application/xml', 'application/yaml'],
    docs: { info: { title: 'longrun demo', version: '1.0.0' } },
    webhooks: {
      secret: webhookSecret,
      allow: callbackAllow,
      ...timings,
      ...(retry ? { retry: retry as Duration[] } : {}),
    },
  }
}

const settings = settingsFromEnv()
export const options = demoOptions(settings)

export const setup = (app: FastifyInstance) => {
  demoIndex(app, settings.jwtSecret)
  if (!settings.webhookSecret) logGeneratedSecret(app.log, options)
}

/** Receivers need the secret to verify callbacks: show the one the demo made up. */
export function logGeneratedSecret(log: { warn(obj: object, msg: string): void }, made: typeof options): void {
  log.warn(
    { webhookSecret: made.webhooks!.secret },
    'LONGRUN_WEBHOOK_SECRET is not set: callbacks are signed with this one',
  )
}

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
      callback: 'any task body may carry "callbackUrl": the outcome is POSTed there, signed (LONGRUN_WEBHOOK_SECRET)',
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
