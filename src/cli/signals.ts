import type { Logger } from '../core/logger.js'

/**
 * Two-stage shutdown for servers and workers: the first SIGINT or SIGTERM calls `close` (stop
 * taking work, let running handlers finish or give their operations back), then exits 0, or 1 if
 * closing failed; a second signal exits 1 at once, for an operator who will not wait.
 */
export function closeOnSignals(close: () => Promise<unknown>, logger: Pick<Logger, 'info' | 'warn' | 'error'>): void {
  let closing = false
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (closing) {
        logger.warn(`${signal} again: exiting at once`)
        process.exit(1)
      }
      closing = true
      logger.info(`${signal}: stopping (send it again to exit at once)`)
      close().then(
        () => process.exit(0),
        (err: unknown) => {
          logger.error({ err }, 'error while stopping')
          process.exit(1)
        },
      )
    })
  }
}
