/** The subset of pino's interface longrun logs through; Fastify's `app.log` fits as it is. */
export interface Logger {
  debug(obj: object | string, msg?: string): void
  info(obj: object | string, msg?: string): void
  warn(obj: object | string, msg?: string): void
  error(obj: object | string, msg?: string): void
  child(bindings: Record<string, unknown>): Logger
  /** pino's: whether a line at `level` would be written. Without it, every level is taken as on. */
  isLevelEnabled?(level: string): boolean
}

/** Whether `logger` writes lines at `level`: what lets a hot path skip building a line nobody reads. */
export const logs = (logger: Logger, level: 'debug' | 'info'): boolean => logger.isLevelEnabled?.(level) ?? true

export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
  child() {
    return silentLogger
  },
  isLevelEnabled() {
    return false
  },
}
