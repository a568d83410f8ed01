import type { FastifyInstance } from 'fastify'
import { buildServer, consoleLogger, openStore } from 'longrun/cli'
import type { LongrunPluginOptions } from 'longrun/fastify'
import { demoIndex, demoOptions, logGeneratedSecret, routes, type DemoSettings } from './module.js'

export interface DemoOptions extends Omit<LongrunPluginOptions, 'store'>, Omit<DemoSettings, 'jwtSecret'> {
  /** `memory`, `sqlite:<path>` or a `postgres://` URL. */
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

/** The demo app, as `npm start` serves it (./main.ts) and tests build it. */
export async function buildDemoApp(options: DemoOptions): Promise<FastifyInstance> {
  const {
    store: url,
    pgSchema,
    logLevel = 'info',
    jwtSecret,
    webhookSecret,
    callbackAllow,
    webhookTimings,
    ...plugin
  } = options
  const store = await openStore(url, { ...(pgSchema ? { pgSchema } : {}), logger: consoleLogger(logLevel) })
  const made = demoOptions({
    jwtSecret,
    webhookSecret,
    ...(callbackAllow ? { callbackAllow } : {}),
    ...(webhookTimings ? { webhookTimings } : {}),
  })
  return buildServer(
    { store, logLevel, ...plugin },
    {
      routes,
      options: made,
      setup(app) {
        demoIndex(app, jwtSecret)
        if (!webhookSecret) logGeneratedSecret(app.log, made)
      },
    },
  )
}
