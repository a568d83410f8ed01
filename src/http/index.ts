// The framework-neutral side of HTTP: what a worker needs to define its routes without loading an
// HTTP framework, and what an adapter builds on.
export {
  defineAsyncRoute,
  type AnyAsyncRoute,
  type AsyncRouteOptions,
  type AsyncRouteSchema,
  type HeldAnswer,
  type HoldOptions,
} from './route.js'
export type { ProtocolOptions } from './options.js'
export type { ResultType } from './formats.js'
export type { IdLocation, OperationAction, OperationRouteOptions, PresentedPage, PresentedResource } from './mounts.js'
export type { JsonSchema, Presentation } from './present.js'
export type { OperationResource } from './resource.js'
export type { Problem } from './problem.js'
export type { RequestHead } from './request.js'
export type { Authenticate } from './auth.js'
export { withSecurity, type SecurityAlternative, type SecurityScheme } from './openapi/security.js'
export { openApiDocument, type OpenApiDocument } from './openapi/document.js'
export type { DocsOptions } from './openapi/options.js'
export type { CallbackOptions } from './callback.js'
export type { WebhookEndpoint, WebhookOptions } from './webhooks/options.js'
export { startDeliveries, type Deliveries, type DeliveriesOptions, type WebhookPayload } from './webhooks/deliveries.js'
