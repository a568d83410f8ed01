import fastifyCors, { type FastifyCorsOptions } from '@fastify/cors'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { EXPOSED_HEADERS } from '../../routes.js'

/**
 * The `cors` option: @fastify/cors's options, less those longrun sets itself (the methods of each
 * URL, answering preflights in `onRequest`, before authentication). @default origin '*'
 */
export type LongrunCorsOptions = Omit<
  FastifyCorsOptions,
  'methods' | 'hook' | 'delegator' | 'preflight' | 'preflightContinue' | 'strictPreflight' | 'hideOptionsRoute'
>

/** The methods a request's URL answers; empty for a URL that is not longrun's. */
export type MethodsOf = (request: FastifyRequest) => string[]

/**
 * Adds CORS to `scope` (an encapsulated context): @fastify/cors answers its preflights with the
 * methods of the very URL asked about, and exposes the headers longrun's clients read.
 */
export async function addCors(scope: FastifyInstance, options: LongrunCorsOptions, methodsOf: MethodsOf) {
  const exposed = [options.exposedHeaders ?? []].flat()
  const base: FastifyCorsOptions = {
    origin: '*',
    ...options,
    exposedHeaders: [...EXPOSED_HEADERS, ...exposed.filter((name) => !EXPOSED_HEADERS.includes(name))],
    // A plain OPTIONS request (no Origin) is answered too, with `Allow`, rather than refused.
    strictPreflight: false,
  }
  scope.addHook('onRequest', async (request, reply) => {
    if (request.method !== 'OPTIONS') return
    const methods = methodsOf(request)
    if (methods.length > 0) reply.header('allow', [...methods, 'OPTIONS'].join(', '))
  })
  await scope.register(fastifyCors, {
    hook: 'onRequest',
    delegator: (request, callback) => {
      const methods = methodsOf(request)
      // @fastify/cors's preflight route (`<prefix>*`) also sees URLs that only begin like ours.
      callback(null, methods.length === 0 ? { origin: false } : { ...base, methods })
    },
  })
}
