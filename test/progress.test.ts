import { join } from 'node:path'
import Fastify, { type FastifyInstance } from 'fastify'
import { longrun } from 'longrun/fastify'
import { sqliteStore } from 'longrun/sqlite'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Client, expectJson, listen, tempDir, type Json } from './helpers/http.js'

// op.progress with values out of range or of the wrong type, over a real socket and a SQLite file:
// the operation goes on and succeeds, what can be recorded is, and the engine's logger (here
// Fastify's, captured line by line) warns once per attempt.

/** One call of `op.progress`, as a handler written in JavaScript could make it. */
type Call = [percent: unknown, step?: unknown, description?: unknown]

interface Case {
  /** Made after `progress(40, 'before')` unless `first`. */
  call: Call
  first?: boolean
  /** The operation's progress once it succeeded. */
  recorded: Json
  /** What the warning lists; none: no warning. */
  fixes?: string[]
}

const CASES: Record<string, Case> = {
  'above 100': { call: [150, 'big'], recorded: { percent: 100, step: 'big' }, fixes: ['percent 150: clamped to 100'] },
  'just above 100': { call: [100.5], recorded: { percent: 100 }, fixes: ['percent 100.5: clamped to 100'] },
  'below 0': { call: [-5, 'neg'], recorded: { percent: 0, step: 'neg' }, fixes: ['percent -5: clamped to 0'] },
  'just below 0': { call: [-0.001], recorded: { percent: 0 }, fixes: ['percent -0.001: clamped to 0'] },
  '0': { call: [0, 'start'], recorded: { percent: 0, step: 'start' } },
  '100': { call: [100, 'done', 'All of it'], recorded: { percent: 100, step: 'done', description: 'All of it' } },
  'a fraction': { call: [37.5], recorded: { percent: 37.5 } },
  NaN: {
    call: [Number.NaN, 'nan'],
    recorded: { percent: 40, step: 'nan' },
    fixes: ['percent NaN: not a finite number, kept 40'],
  },
  'NaN first': {
    call: [Number.NaN],
    first: true,
    recorded: { percent: 0 },
    fixes: ['percent NaN: not a finite number, kept 0'],
  },
  Infinity: { call: [Infinity], recorded: { percent: 40 }, fixes: ['percent Infinity: not a finite number, kept 40'] },
  '-Infinity': {
    call: [-Infinity],
    recorded: { percent: 40 },
    fixes: ['percent -Infinity: not a finite number, kept 40'],
  },
  'a numeric string': {
    call: ['50'],
    recorded: { percent: 40 },
    fixes: ['percent "50": not a finite number, kept 40'],
  },
  null: { call: [null], recorded: { percent: 40 }, fixes: ['percent null: not a finite number, kept 40'] },
  'no percent, a step': {
    call: [undefined, 'only a step'],
    recorded: { percent: 40, step: 'only a step' },
    fixes: ['percent undefined: not a finite number, kept 40'],
  },
  'an object': {
    call: [{ percent: 50 }],
    recorded: { percent: 40 },
    fixes: ['percent an object: not a finite number, kept 40'],
  },
  'a number as step': {
    call: [60, 42, 'fine'],
    recorded: { percent: 60, description: 'fine' },
    fixes: ['step 42: not a string, left out'],
  },
  'an object as description and null as step': {
    call: [70, null, { text: 'x' }],
    recorded: { percent: 70 },
    fixes: ['step null: not a string, left out', 'description an object: not a string, left out'],
  },
}

interface Harness {
  app: FastifyInstance
  client: Client
  /** Every line Fastify's logger wrote, parsed. */
  logs: Json[]
  close(): Promise<void>
}

async function start(): Promise<Harness> {
  const dir = tempDir('longrun-progress-')
  const logs: Json[] = []
  const app = Fastify({
    logger: { level: 'warn', stream: { write: (line: string) => void logs.push(JSON.parse(line)) } },
  })
  await app.register(longrun, { store: sqliteStore({ path: join(dir.path, 'ops.db') }), poll: 20 })
  app.longrun.route({
    url: '/jobs/progress',
    name: 'progress',
    concurrency: 8,
    async handler(op) {
      const { name } = op.input as { name: string }
      const { call, first } = CASES[name]!
      if (!first) await op.progress(40, 'before')
      await (op.progress as (...args: unknown[]) => Promise<void>)(...call)
      return { reached: 'after the call' }
    },
  })
  app.longrun.route({
    url: '/jobs/loop',
    name: 'loop',
    retry: { attempts: 2, delay: 10, jitter: false },
    async handler(op) {
      // Every call is out of range; the first attempt then fails on purpose, the second succeeds.
      for (const percent of [150, 250, -1]) await op.progress(percent)
      await op.progress(Number.NaN)
      if (op.attempt === 1) throw new Error('first attempt fails')
      return { attempt: op.attempt }
    },
  })
  const client = new Client(await listen(app))
  return {
    app,
    client,
    logs,
    async close() {
      await app.close()
      dir.remove()
    },
  }
}

const warningsFor = (logs: Json[], id: string) => logs.filter((line) => line.operationId === id && line.level === 40)

describe('op.progress with bad values (SQLite, over HTTP)', () => {
  let h: Harness
  beforeAll(async () => {
    h = await start()
  })
  afterAll(() => h.close())

  it.each(Object.entries(CASES))('records %s without failing the operation', async (name, { recorded, fixes }) => {
    const op = expectJson(await h.client.post('/jobs/progress', { name }), 202)
    const done = await h.client.waitFor(op.id, (o) => o.done, 'done')
    expect(done).toMatchObject({ state: 'succeeded', attempt: 1, result: { reached: 'after the call' } })
    expect(done.progress).toStrictEqual(recorded)
    expect(expectJson(await h.client.get(`/operations/${op.id}/result`), 200)).toEqual({ reached: 'after the call' })
    const warnings = warningsFor(h.logs, op.id)
    if (fixes === undefined) {
      expect(warnings).toEqual([])
    } else {
      expect(warnings).toEqual([
        expect.objectContaining({
          operation: 'progress',
          attempt: 1,
          fixes,
          msg: expect.stringContaining('op.progress()'),
        }),
      ])
    }
  })

  it('warns once per attempt, however many calls it had to fix', async () => {
    const op = expectJson(await h.client.post('/jobs/loop', {}), 202)
    const done = await h.client.waitFor(op.id, (o) => o.done, 'done')
    expect(done).toMatchObject({ state: 'succeeded', attempt: 2, result: { attempt: 2 } })
    // The last call (NaN) kept the percent the calls before it were clamped to.
    expect(done.progress).toStrictEqual({ percent: 0 })
    const warnings = warningsFor(h.logs, op.id)
    expect(warnings.map((line) => [line.attempt, line.fixes])).toEqual([
      [1, ['percent 150: clamped to 100']],
      [2, ['percent 150: clamped to 100']],
    ])
  })
})
