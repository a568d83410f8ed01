// The framework-neutral side of HTTP: what a worker needs to define its routes without loading an
// HTTP framework, and what an adapter builds on.
export { defineAsyncRoute, type AnyAsyncRoute, type AsyncRouteOptions, type AsyncRouteSchema } from './route.js'
export type { ProtocolOptions } from './options.js'
export type { ResultType } from './formats.js'
export type { OperationResource } from './resource.js'
export type { Problem } from './problem.js'
export type { RequestHead } from './request.js'
export type { Authenticate } from './auth.js'
