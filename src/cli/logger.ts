import type { Logger } from '../core/logger.js'

const LEVELS = { debug: 20, info: 30, warn: 40, error: 50 } as const

/**
 * One JSON object per line on stdout, in the shape of Fastify's (pino's) logs, for processes that
 * have no Fastify logger: workers and the migration step. `silent` writes nothing.
 */
export function consoleLogger(level = 'info', bindings: Record<string, unknown> = {}): Logger {
  const threshold = level === 'silent' ? Infinity : (LEVELS[level as keyof typeof LEVELS] ?? LEVELS.info)
  const write =
    (name: keyof typeof LEVELS) =>
    (obj: object | string, msg?: string): void => {
      if (LEVELS[name] < threshold) return
      const fields = typeof obj === 'string' ? { msg: obj } : { ...serialise(obj), ...(msg ? { msg } : {}) }
      process.stdout.write(
        `${JSON.stringify({ level: LEVELS[name], time: Date.now(), pid: process.pid, ...bindings, ...fields })}\n`,
      )
    }
  return {
    debug: write('debug'),
    info: write('info'),
    warn: write('warn'),
    error: write('error'),
    child: (more) => consoleLogger(level, { ...bindings, ...more }),
  }
}

/** Errors do not survive JSON.stringify: keep their message and stack. */
function serialise(obj: object): Record<string, unknown> {
  const out: Record<string, unknown> = { ...obj }
  for (const [key, value] of Object.entries(out)) {
    if (value instanceof Error) out[key] = { type: value.name, message: value.message, stack: value.stack }
  }
  return out
}
