import { Writable } from 'node:stream'
import Fastify from 'fastify'
import { longrun } from 'longrun/fastify'
import { memoryStore } from 'longrun/memory'
import { expect, it } from 'vitest'
import { until } from './helpers/until.js'

// What an operator reads in the app's log (Fastify's pino): each start, retry and outcome at info,
// progress at debug, and a handler's own lines tagged with the operation and with the request that
// submitted it.

interface Line {
  level: number
  msg: string
  operationId?: string
  reqId?: string
  attempt?: number
  progress?: unknown
  durationMs?: number
  error?: { code: string }
}

it('logs each start, retry and outcome at info, progress at debug, and tags the handler log with the submitting request', async () => {
  const lines: Line[] = []
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const text of chunk.toString('utf8').split('\n')) if (text) lines.push(JSON.parse(text) as Line)
      done()
    },
  })
  const app = Fastify({ logger: { level: 'debug', stream }, requestIdHeader: 'x-request-id' })
  await app.register(longrun, { store: memoryStore(), poll: 20 })
  let calls = 0
  app.longrun.route({
    url: '/jobs',
    name: 'report',
    retry: { attempts: 2, delay: 10 },
    async handler(op) {
      op.log.info('building the report')
      await op.progress(50, 'half')
      if (++calls === 1) throw new Error('first attempt fails')
      return 'done'
    },
  })
  try {
    const res = await app.inject({ method: 'POST', url: '/jobs', payload: {}, headers: { 'x-request-id': 'rq-7' } })
    const id = (JSON.parse(res.body) as { id: string }).id
    await until(() => lines.some((l) => l.operationId === id && l.msg.endsWith(' succeeded')) || undefined, 10_000)
    const mine = lines.filter((l) => l.operationId === id)
    const INFO = 30
    const DEBUG = 20
    expect(mine.filter((l) => l.msg.startsWith('longrun: starting report')).map((l) => [l.level, l.attempt])).toEqual([
      [INFO, 1],
      [INFO, 2],
    ])
    const retry = mine.find((l) => l.msg.includes('failed attempt 1; retrying at'))
    expect(retry).toMatchObject({ level: INFO, error: { code: 'handler-error' } })
    const done = mine.find((l) => l.msg === `longrun: report ${id} succeeded`)
    expect(done).toMatchObject({ level: INFO, attempt: 2 })
    expect(done!.durationMs).toBeGreaterThanOrEqual(0)
    const progress = mine.filter((l) => l.msg === 'longrun: progress')
    expect(progress.map((l) => [l.level, l.progress])).toEqual([
      [DEBUG, { percent: 50, step: 'half' }],
      [DEBUG, { percent: 50, step: 'half' }],
    ])
    // The handler's own line carries the operation and its attempt.
    expect(mine.filter((l) => l.msg === 'building the report').map((l) => l.attempt)).toEqual([1, 2])
    // Every line of the work, the handler's own included, joins up with the request's lines.
    expect(lines.find((l) => l.msg === 'incoming request')?.reqId).toBe('rq-7')
    expect(mine.length).toBeGreaterThan(6)
    expect(new Set(mine.map((l) => l.reqId))).toEqual(new Set(['rq-7']))
  } finally {
    await app.close()
  }
})
