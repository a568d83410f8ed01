import type { Engine } from '../../core/engine.js'
import { invalidOption } from '../../core/errors.js'
import type { Logger } from '../../core/logger.js'
import { hasOutbox, type DeliveryAttempt, type Outbox, type OutboxMessage, type Store } from '../../core/store.js'
import type { Callback, Operation } from '../../core/types.js'
import { serialize } from '../formats.js'
import { toResource } from '../resource.js'
import { resolveWebhookOptions, type ResolvedWebhookOptions, type WebhookOptions } from './options.js'
import { webhookSender, type Send } from './send.js'
import type { Signer } from './sign.js'

export interface DeliveriesOptions {
  /** Where the operations API is, for the links of the operation in messages. @default '/operations' */
  basePath?: string
  /** @default false */
  exposeStack?: boolean
  logger?: Logger
  /** Epoch milliseconds; injectable for tests. @default Date.now */
  clock?: () => number
}

/** A message's body: Standard Webhooks' envelope around the operation. */
export interface WebhookPayload {
  /** `operation.<event>`, e.g. `operation.succeeded`. */
  type: string
  /** When the event happened, ISO 8601. */
  timestamp: string
  /** The operation as it is when the message is sent (its `result` only when the target asks for it). */
  data: ReturnType<typeof toResource>
}

/** How long after a change a sender looks for messages: changes within it share one look. */
const CHANGE_DELAY_MS = 20

interface Target {
  url: string
  method: 'POST' | 'PUT'
  contentType: Callback['contentType']
  headers: Record<string, string>
  sendResult: boolean
  signer: Signer
}

/**
 * Sends the outbox's messages: takes due ones from the store, signs and sends each, and records
 * the attempt with the next one's time, so that any process (and a restarted one) goes on where
 * another left off. Runs beside an engine that runs handlers.
 */
export class Deliveries {
  readonly #store: Store & Outbox
  readonly #engine: Engine
  readonly #webhooks: ResolvedWebhookOptions
  readonly #send: Send
  readonly #options: Required<Omit<DeliveriesOptions, 'logger'>> & { logger: Logger | undefined }
  readonly #inFlight = new Set<Promise<void>>()
  #timer: NodeJS.Timeout | undefined
  #soon: NodeJS.Timeout | undefined
  #unwatch: (() => void) | undefined
  /** The claim in progress, if any. */
  #claiming: Promise<void> | undefined
  #again = false
  #closed = false

  constructor(engine: Engine, webhooks: ResolvedWebhookOptions, options: DeliveriesOptions = {}) {
    if (!hasOutbox(engine.store))
      throw invalidOption('webhooks', 'needs a store with an outbox (the bundled ones have one)')
    this.#store = engine.store
    this.#engine = engine
    this.#webhooks = webhooks
    this.#send = webhookSender({
      policy: webhooks.policy,
      connectTimeout: webhooks.connectTimeout,
      timeout: webhooks.timeout,
    })
    this.#options = {
      basePath: options.basePath ?? '/operations',
      exposeStack: options.exposeStack ?? false,
      logger: options.logger,
      clock: options.clock ?? Date.now,
    }
  }

  start(): void {
    if (this.#timer || this.#closed) return
    // Any change may have written a message: look soon rather than at the next poll, but once for a
    // burst of changes, so that a busy server does not pay a claim per change.
    this.#unwatch = this.#engine.watchAll(() => {
      this.#soon ??= setTimeout(() => {
        this.#soon = undefined
        this.wake()
      }, CHANGE_DELAY_MS)
    })
    this.#timer = setInterval(() => this.wake(), this.#webhooks.pollMs)
    this.#timer.unref()
    this.wake()
  }

  /** Looks for due messages now. */
  wake(): void {
    if (this.#closed) return
    if (this.#claiming) {
      this.#again = true
      return
    }
    this.#claiming = this.#claim().finally(() => {
      this.#claiming = undefined
      if (this.#again) {
        this.#again = false
        this.wake()
      }
    })
  }

  /** Stops taking messages and waits for the attempts in flight; what is left is sent by others or later. */
  async close(): Promise<void> {
    this.#closed = true
    clearInterval(this.#timer)
    clearTimeout(this.#soon)
    this.#unwatch?.()
    // A claim under way still starts what it took: wait for it, then for every attempt.
    await this.#claiming
    await Promise.all(this.#inFlight)
  }

  async #claim(): Promise<void> {
    const free = this.#webhooks.concurrency - this.#inFlight.size
    if (free <= 0) return
    let messages: OutboxMessage[]
    try {
      messages = await this.#store.claimMessages(
        this.#engine.workerId,
        free,
        this.#webhooks.leaseMs,
        this.#options.clock(),
      )
    } catch (err) {
      this.#options.logger?.warn({ err }, 'longrun: could not take webhook messages; trying again at the next poll')
      return
    }
    for (const message of messages) {
      const attempt = this.#deliver(message).catch((err: unknown) => {
        this.#options.logger?.error({ err, webhookId: message.id }, 'longrun: webhook delivery failed to record')
      })
      const tracked = attempt.finally(() => {
        this.#inFlight.delete(tracked)
        // A slot is free: more may be due.
        if (messages.length === free) this.wake()
      })
      this.#inFlight.add(tracked)
    }
  }

  async #deliver(message: OutboxMessage): Promise<void> {
    const clock = this.#options.clock
    const op = await this.#store.get(message.operationId)
    const target = op && this.#target(op, message.target)
    if (!op || !target) {
      const error = op ? `no endpoint '${message.target}' is configured` : 'the operation was deleted'
      await this.#store.recordDelivery(message, { at: clock(), durationMs: 0, ok: false, error })
      return
    }
    const payload: WebhookPayload = {
      type: `operation.${message.event}`,
      timestamp: new Date(message.at).toISOString(),
      data: this.#resource(op, target.sendResult),
    }
    const body = serialize(payload, target.contentType)
    const at = clock()
    const result = await this.#send({
      url: target.url,
      method: target.method,
      body,
      contentType: target.contentType,
      headers: target.headers,
      signature: target.signer.sign(message.id, at, body),
    })
    const attempt: DeliveryAttempt = {
      at,
      durationMs: result.durationMs,
      ok: result.ok,
      ...(result.status === undefined ? {} : { status: result.status }),
      ...(result.error === undefined ? {} : { error: result.error }),
    }
    const next = this.#webhooks.schedule.nextAttempt(message.attempts + 1, result, clock())
    const fields = {
      webhookId: message.id,
      operationId: message.operationId,
      target: message.target,
      attempt: message.attempts + 1,
      status: result.status,
    }
    if (next.action === 'retry') {
      await this.#store.recordDelivery(message, attempt, next.retryAt)
      this.#options.logger?.info(
        { ...fields, error: result.error, retryAt: next.retryAt },
        'longrun: webhook retry scheduled',
      )
      return
    }
    await this.#store.recordDelivery(message, attempt)
    if (next.action === 'done') {
      this.#options.logger?.info(fields, 'longrun: webhook delivered')
      return
    }
    this.#options.logger?.warn({ ...fields, error: result.error, reason: next.reason }, 'longrun: webhook given up')
    if (next.reason === 'gone' && message.target !== 'callback') {
      await this.#store.disableTarget(message.target, clock())
      this.#options.logger?.warn({ target: message.target }, 'longrun: webhook endpoint answered 410 Gone: disabled')
    }
  }

  #target(op: Operation, name: string): Target | undefined {
    if (name === 'callback') {
      return op.callback && { ...op.callback, signer: this.#webhooks.signer }
    }
    const endpoint = this.#webhooks.endpoints.get(name)
    return endpoint && { ...endpoint, method: 'POST', signer: endpoint.signer ?? this.#webhooks.signer }
  }

  #resource(op: Operation, sendResult: boolean): WebhookPayload['data'] {
    const { basePath, exposeStack } = this.#options
    const resource = toResource(op, { basePath, exposeStack })
    if (!sendResult) {
      delete resource.result
      delete resource.resourceLocation
    }
    return resource
  }
}

/**
 * Sends an engine's webhook messages, for a process that runs handlers without the Fastify plugin
 * (`longrun worker`): `webhooks` as the plugin takes it. Call `close()` before closing the engine.
 */
export function startDeliveries(engine: Engine, webhooks: WebhookOptions, options: DeliveriesOptions = {}): Deliveries {
  const deliveries = new Deliveries(engine, resolveWebhookOptions(webhooks), options)
  deliveries.start()
  return deliveries
}
