import { resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import Fastify, { type FastifyInstance } from 'fastify'
import { Engine } from '../core/engine.js'
import type { EngineOptions } from '../core/options.js'
import type { Store } from '../core/store.js'
import {
  longrun,
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
}

/**
 * A Fastify app serving async routes on `store`, with the defaults a public server wants: every
 * error as problem+json, and sockets of slow or stalled clients bounded in time.
 */
export async function buildServer(options: ServerOptions, module?: RoutesModule): Promise<FastifyInstance> {
  const { store, logLevel = 'info', ...plugin } = options
  const app = Fastify({
    logger: { level: logLevel },
    connectionTimeout: 60_000,
    requestTimeout: 30_000,
    frameworkErrors: problemFrameworkErrors,
  })
  app.server.headersTimeout = 10_000
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
