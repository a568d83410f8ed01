import type pg from 'pg'
import type { Logger } from '../../core/logger.js'
import type { StoreNotice } from '../../core/store.js'
import { driver } from './driver.js'

export interface ListenerHooks {
  notice(origin: string, notice: StoreNotice): void
  reconnected(): void
}

/**
 * Listens on one channel over a connection of its own (a pooled one would be handed to queries and
 * lose its LISTEN), and reconnects with backoff when it drops.
 */
export class NoticeListener {
  readonly #config: pg.ClientConfig
  readonly #channel: string
  readonly #logger: Logger
  readonly #on: ListenerHooks
  #client: pg.Client | undefined
  #timer: NodeJS.Timeout | undefined
  #stopped = false
  #connectedOnce = false
  #backoffMs = 100

  constructor(config: pg.ClientConfig, channel: string, logger: Logger, on: ListenerHooks) {
    // TCP keepalive notices a peer that vanished without closing the connection.
    this.#config = { keepAlive: true, keepAliveInitialDelayMillis: 10_000, ...config }
    this.#channel = channel
    this.#logger = logger
    this.#on = on
  }

  start(): void {
    void this.#connect()
  }

  async #connect(): Promise<void> {
    this.#timer = undefined
    if (this.#stopped) return
    const client = new driver.Client(this.#config)
    this.#client = client
    client.on('error', (err) => this.#lost(client, err))
    client.on('end', () => this.#lost(client))
    client.on('notification', (message) => {
      if (message.channel !== this.#channel || message.payload === undefined) return
      const parsed = parseNotice(message.payload)
      if (parsed) this.#on.notice(parsed.origin, parsed.notice)
    })
    try {
      await client.connect()
      await client.query(`LISTEN "${this.#channel}"`)
    } catch (err) {
      this.#lost(client, err)
      return
    }
    if (this.#client !== client) return
    this.#backoffMs = 100
    if (this.#connectedOnce) {
      this.#logger.info({ channel: this.#channel }, 'longrun: PostgreSQL listener reconnected')
      this.#on.reconnected()
    }
    this.#connectedOnce = true
  }

  #lost(client: pg.Client, err?: unknown): void {
    if (this.#client !== client) return
    this.#client = undefined
    client.end().catch(() => {})
    if (this.#stopped) return
    this.#logger.warn({ err, retryInMs: this.#backoffMs }, 'longrun: PostgreSQL listener connection lost')
    this.#timer = setTimeout(() => void this.#connect(), this.#backoffMs)
    this.#timer.unref()
    this.#backoffMs = Math.min(this.#backoffMs * 2, 5_000)
  }

  async stop(): Promise<void> {
    this.#stopped = true
    clearTimeout(this.#timer)
    const client = this.#client
    this.#client = undefined
    if (!client) return
    // A connection whose peer vanished may never confirm its end: do not hold close() up for it.
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      client.end().catch(() => {}),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, 2_000))),
    ])
    clearTimeout(timer)
  }
}

export function parseNotice(payload: string): { origin: string; notice: StoreNotice } | undefined {
  const first = payload.indexOf(' ')
  const origin = payload.slice(0, first)
  const kind = payload.slice(first + 1, first + 2)
  const value = payload.slice(first + 3)
  if (first < 0 || value === '') return undefined
  if (kind === 'q') return { origin, notice: { kind: 'queued', name: value } }
  if (kind === 'c') return { origin, notice: { kind: 'cancel-requested', id: value } }
  if (kind === 'x') return { origin, notice: { kind: 'changed', id: value } }
  return undefined
}
