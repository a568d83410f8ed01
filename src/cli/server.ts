import { resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import Fastify, { type FastifyInstance } from 'fastify'
import { Engine } from '../core/engine.js'
import { invalidOption } from '../core/errors.js'
import type { EngineOptions } from '../core/options.js'
import type { Store } from '../core/store.js'
import {
  longrun,
  problemClientErrorHandler,
  problemErrorHandler,
  problemFrameworkErrors,
  problemNotFoundHandler,
  type AnyAsyncRoute,
  type LongrunPluginOptions,
} from '../http/adapters/fastify/index.js'

/**
 * What `longrun serve` and `longrun worker` run: a module exporting its async routes (the same list
 * in API and worker processes), and optionally the plugin's options and its own Fastify routes.
 * A default export of this shape, or of the routes alone, works too.
 */
export interface RoutesModule {
  routes: readonly AnyAsyncRoute[]
  /** The longrun plugin's options besides the store: authentication, permissions, paths, CORS... */
  options?: Omit<LongrunPluginOptions, 'store'>
  /** Adds the app's own routes, hooks and plugins, after longrun's. */
  setup?(app: FastifyInstance): void | Promise<void>
}

/** Imports a routes module by path (relative to the working directory) and checks its shape. */
export async function loadRoutesModule(path: string): Promise<RoutesModule> {
  const loaded = await importModule(pathToFileURL(resolve(path)).href)
  const candidate = (loaded.routes !== undefined ? loaded : loaded.default) as unknown
  const module = (Array.isArray(candidate) ? { routes: candidate } : candidate) as Partial<RoutesModule> | undefined
  const routes = module?.routes
  if (!Array.isArray(routes) || routes.length === 0) {
    throw new Error(`${path} exports no routes: export const routes = [defineAsyncRoute({ ... }), ...]`)
  }
  for (const route of routes as unknown[]) {
    const { url, handler } = (route ?? {}) as Partial<AnyAsyncRoute>
    if (typeof url !== 'string' || typeof handler !== 'function') {
      throw new Error(`${path}: every route needs a url and a handler (made with defineAsyncRoute)`)
    }
  }
  if (module!.setup !== undefined && typeof module!.setup !== 'function') {
    throw new Error(`${path}: setup must be a function of the Fastify app`)
  }
  return module as RoutesModule
}

/**
 * Imports a module; a TypeScript one that Node cannot load by itself goes through tsx when the app
 * has it installed (an optional peer: only `.ts` route modules need it).
 */
async function importModule(url: string): Promise<Record<string, unknown>> {
  try {
    return (await import(url)) as Record<string, unknown>
  } catch (err) {
    if ((err as { code?: string }).code !== 'ERR_UNKNOWN_FILE_EXTENSION' || !/\.[cm]?ts$/.test(url)) throw err
    let tsx: { register(): unknown }
    try {
      tsx = (await import('tsx/esm/api')) as { register(): unknown }
    } catch {
      throw new Error(`${url} is TypeScript: install tsx (npm install -D tsx), or give a .js module`, { cause: err })
    }
    tsx.register()
    // Another URL: Node remembers the failed import of the first one.
    return (await import(`${url}?tsx`)) as Record<string, unknown>
  }
}

export interface ServerOptions extends Omit<LongrunPluginOptions, 'store'> {
  store: Store
  /** Fastify's log level. @default 'info' */
  logLevel?: string
  /** How long a client may take to send a request's line and headers; then `408`. @default 10000 (10 s) */
  headersTimeout?: number
  /** How long a client may take to send a whole request, body included; then `408`. @default 30000 (30 s) */
  requestTimeout?: number
  /** How long a connection may stay without any traffic before it is closed. @default 60000 (60 s) */
  connectionTimeout?: number
  /** Largest request line and headers together, in bytes; more is `431`. @default 16384 (16 KiB, Node's) */
  maxHeaderSize?: number
}

const TIMEOUTS = {
  headersTimeout: 10_000, // 10 s
  requestTimeout: 30_000, // 30 s
  connectionTimeout: 60_000, // 60 s
  maxHeaderSize: 16_384, // 16 KiB
} as const

/**
 * A Fastify app serving async routes on `store`, with the defaults a public server wants: every
 * error as problem+json, parser-level ones too, and sockets of slow or stalled clients bounded in time.
 */
export async function buildServer(options: ServerOptions, module?: RoutesModule): Promise<FastifyInstance> {
  const {
    store,
    logLevel = 'info',
    headersTimeout = TIMEOUTS.headersTimeout,
    requestTimeout = TIMEOUTS.requestTimeout,
    connectionTimeout = TIMEOUTS.connectionTimeout,
    maxHeaderSize = TIMEOUTS.maxHeaderSize,
    ...plugin
  } = options
  for (const [name, ms] of Object.entries({ headersTimeout, requestTimeout, connectionTimeout, maxHeaderSize })) {
    if (!Number.isInteger(ms) || ms <= 0) throw invalidOption(name, 'must be a positive whole number')
  }
  if (headersTimeout > requestTimeout) throw invalidOption('headersTimeout', 'must not exceed requestTimeout')
  const app = Fastify({
    logger: { level: logLevel },
    connectionTimeout,
    requestTimeout,
    http: {
      headersTimeout,
      requestTimeout,
      maxHeaderSize,
      // Node enforces both timeouts only when it checks its connections (every 30 s by default): a
      // tenth of the shorter one, at most a second, makes a 10 s limit fire near 10 s, not 30 s.
      connectionsCheckingInterval: Math.max(10, Math.min(1_000, Math.floor(headersTimeout / 10))),
    },
    frameworkErrors: problemFrameworkErrors,
    clientErrorHandler: problemClientErrorHandler,
  })
  app.setErrorHandler(problemErrorHandler)
  app.setNotFoundHandler(problemNotFoundHandler)
  await app.register(longrun, { ...module?.options, ...plugin, store })
  for (const route of module?.routes ?? []) app.longrun.route(route)
  await module?.setup?.(app)
  return app
}

/**
 * An engine that runs the module's handlers and serves no HTTP. The module's options apply as in
 * its API servers (the engine reads its own: retention, cleanup, ids...), `options` over them.
 */
export function buildWorker(options: EngineOptions, module: RoutesModule): Engine {
  const engine = new Engine({ ...module.options, ...options, worker: true })
  for (const route of module.routes) engine.define(route)
  return engine
}
