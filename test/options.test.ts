import Fastify from 'fastify'
import { Engine, LongrunError, type Operation } from 'longrun'
import { longrun, type LongrunPluginOptions } from 'longrun/fastify'
import { memoryStore } from 'longrun/memory'
import { describe, expect, it } from 'vitest'

// One duration grammar for every option that takes one, and plugin options checked at registration,
// each refusal naming its option.

const register = async (options: Partial<LongrunPluginOptions>) => {
  const app = Fastify()
  try {
    await app.register(longrun, { store: memoryStore(), ...options })
    await app.ready()
  } finally {
    await app.close()
  }
}

async function refusal(options: Partial<LongrunPluginOptions>): Promise<LongrunError> {
  const err = await register(options).then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(err).toBeInstanceOf(LongrunError)
  expect((err as LongrunError).code).toBe('invalid-option')
  return err as LongrunError
}

describe('durations', () => {
  const FORMS: [unknown, number][] = [
    [90_000, 90_000],
    ['90000', 90_000],
    ['500ms', 500],
    ['30s', 30_000],
    ['10m', 600_000],
    ['2h', 7_200_000],
    ['7d', 604_800_000],
    ['1.5h', 5_400_000],
    ['1 minute', 60_000],
    ['2 hours', 7_200_000],
    ['10 seconds', 10_000],
  ]

  it.each(FORMS)('reads %j as %i ms, in the engine and the plugin alike', async (value, ms) => {
    // Retention shows: a finished operation expires that long after it completed.
    const engine = new Engine({ store: memoryStore(), retention: value as never, poll: 10 })
    engine.define({ name: 'noop', handler: async () => 1 })
    engine.start()
    const settled = new Promise<Operation>((resolve) => engine.once('operation:settled', resolve))
    await engine.submit('noop')
    const op = await settled
    await engine.close()
    // Two readings of the clock: the expiry's may come a millisecond or so before the completion's.
    expect(op.expiresAt! - op.completedAt!).toBeGreaterThan(ms - 20)
    expect(op.expiresAt! - op.completedAt!).toBeLessThanOrEqual(ms)
    // A rate-limit window and a held route's timeout take the same forms.
    const app = Fastify()
    await app.register(longrun, { store: memoryStore(), rateLimit: { max: 5, timeWindow: value as never } })
    app.longrun.route({ url: '/held', name: 'held', hold: { timeout: value as never }, handler: async () => 1 })
    await app.ready()
    await app.close()
  })

  it.each(['soon', '1 fortnight', '-1', '-5s', '', 'NaN', '1e3'])('refuses %j, naming the option', async (value) => {
    expect(() => new Engine({ store: memoryStore(), retention: value as never })).toThrow(/Option 'retention'/)
    const err = await refusal({ rateLimit: { max: 5, timeWindow: value as never } })
    expect(err.message).toMatch(/'rateLimit\.timeWindow'/)
  })
})

describe('plugin options', () => {
  const BAD: [Partial<LongrunPluginOptions>, string][] = [
    [{ bodyLimit: 0 }, 'bodyLimit'],
    [{ bodyLimit: 1.5 }, 'bodyLimit'],
    [{ maxPageSize: -1 }, 'maxPageSize'],
    [{ defaultPageSize: 500 }, 'defaultPageSize'],
    [{ retryAfter: 0 }, 'retryAfter'],
    [{ retryAfter: 'later' as never }, 'retryAfter'],
    [{ rateLimit: { max: 0, timeWindow: '1 minute' } }, 'rateLimit.max'],
    [{ rateLimit: { max: 5, timeWindow: 0 } }, 'rateLimit.timeWindow'],
    [{ rateLimit: 'often' as never }, 'rateLimit'],
    [{ basePath: 42 as never }, 'basePath'],
    [{ exposeStack: 'yes' as never }, 'exposeStack'],
    [{ authenticate: 'jwt' as never }, 'authenticate'],
    [{ maxStreamsPerCaller: 0 }, 'maxStreamsPerCaller'],
    [{ streamHeartbeat: 0 }, 'streamHeartbeat'],
    [{ idempotencyHeaders: ['bad header'] }, 'idempotencyHeaders'],
  ]

  it.each(BAD)('refuses %j at registration, naming %s', async (options, name) => {
    const err = await refusal(options)
    expect(err.message).toContain(`'${name}'`)
  })
})

describe('registration', () => {
  it("works as app.register(import('longrun/fastify')), Fastify's way for plugins", async () => {
    const app = Fastify()
    await app.register(import('longrun/fastify'), { store: memoryStore() })
    app.longrun.route({ url: '/jobs', name: 'job', handler: async () => 'done' })
    const res = await app.inject({ method: 'POST', url: '/jobs', payload: {} })
    expect(res.statusCode).toBe(202)
    await app.close()
  })
})
