import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import Fastify, { type FastifyInstance } from 'fastify'
import { Engine, LongrunError, NonRetryableError, type Logger, type Store } from 'longrun'
import { apiKeyAuth, longrun, type LongrunPluginOptions, type Principal } from 'longrun/fastify'
import { memoryStore } from 'longrun/memory'
import { postgresStore } from 'longrun/postgres'
import { sqliteStore } from 'longrun/sqlite'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { Client, expectJson, expectProblem, ISO_UTC, listen, tempDir, type Json } from './helpers/http.js'
import { describePostgres, dropSchema, freshSchemaName } from './helpers/postgres.js'
import { until } from './helpers/until.js'

// The cleanup service (docs/query.md): its status and on-demand runs over a real socket, `keep`
// caps per owner and state, the schedule, its logs, and single-flight in a process and, on
// PostgreSQL, across processes.

const ROOT = fileURLToPath(new URL('..', import.meta.url))

type Who = 'alice' | 'bob' | 'ops' | 'root'

const PRINCIPALS: Record<Who, Principal> = {
  alice: { id: 'alice' },
  bob: { id: 'bob' },
  /** Not an admin: may run the cleanup through the `cleanup.allow` grant. */
  ops: { id: 'ops', roles: ['ops'] },
  root: { id: 'root', roles: ['admin'] },
}

/** A clock that never answers the same millisecond twice: operations finish in a known order. */
function risingClock(): () => number {
  let last = 0
  return () => (last = Math.max(Date.now(), last + 1))
}

interface Harness {
  app: FastifyInstance
  client: Client
  as(who: Who): {
    get(path: string): ReturnType<Client['get']>
    post(path: string, json?: unknown): ReturnType<Client['post']>
  }
  /** Submits as `who` and waits until the operation is done; returns its id. */
  finished(who: Who, outcome: 'ok' | 'fail' | 'cancel'): Promise<string>
  close(): Promise<void>
}

async function start(store: Store, options: Partial<LongrunPluginOptions> = {}): Promise<Harness> {
  const app = Fastify()
  const keys = Object.fromEntries(Object.entries(PRINCIPALS).map(([who, principal]) => [`key-${who}`, principal]))
  await app.register(longrun, {
    store,
    authenticate: apiKeyAuth({ keys }),
    adminRole: 'admin',
    cleanup: { allow: { roles: ['ops'] } },
    poll: 20,
    // Only the runs a test asks for, unless it says otherwise.
    purgeInterval: '1h',
    clock: risingClock(),
    ...options,
  })
  app.longrun.route({
    url: '/jobs',
    name: 'job',
    async handler(op) {
      const { outcome } = op.input as { outcome: string }
      if (outcome === 'fail') throw new NonRetryableError('asked to fail')
      if (outcome === 'cancel') await new Promise((_, reject) => op.signal.addEventListener('abort', reject))
      return { ok: true }
    },
  })
  const client = new Client(await listen(app))
  const as = (who: Who) => ({
    get: (path: string) => client.get(path, { 'x-api-key': `key-${who}` }),
    post: (path: string, json?: unknown) => client.post(path, json, { 'x-api-key': `key-${who}` }),
  })
  return {
    app,
    client,
    as,
    async finished(who, outcome) {
      const op = expectJson(await as(who).post('/jobs', { outcome }), 202)
      if (outcome === 'cancel') {
        await until(async () => (await as(who).get(`/operations/${op.id}`)).body.state === 'running')
        expectJson(await as(who).post(`/operations/${op.id}/cancel`), 200)
      }
      await until(async () => (await as(who).get(`/operations/${op.id}`)).body.done === true)
      return op.id as string
    },
    close: () => app.close(),
  }
}

/** The ids the admin lists, of every state. */
async function everything(h: Harness): Promise<string[]> {
  const page = expectJson(await h.as('root').get('/operations?limit=100'), 200)
  return (page.items as Json[]).map((item) => item.id as string)
}

function cleanupSuite(name: string, open: () => { store: Store; cleanup: () => void }) {
  describe(`cleanup over HTTP (${name})`, () => {
    const harnesses: { h: Harness; cleanup: () => void }[] = []
    const started = async (options: Partial<LongrunPluginOptions> = {}) => {
      const opened = open()
      const h = await start(opened.store, options)
      harnesses.push({ h, cleanup: opened.cleanup })
      return h
    }
    afterAll(async () => {
      for (const { h, cleanup } of harnesses.splice(0)) {
        await h.close()
        cleanup()
      }
    })

    it('reports its status to any caller and trims to the keep caps per owner, oldest first', async () => {
      const h = await started({ keep: { succeeded: 2, failed: 1 } })
      const status = expectJson(await h.as('alice').get('/operations/cleanup'), 200)
      expect(status).toEqual({
        active: true,
        running: false,
        exclusive: false,
        options: { interval: 3_600_000, retention: 7 * 86_400_000, keep: { succeeded: 2, failed: 1 } },
        lastRun: null,
      })

      const alice = {
        succeeded: [
          await h.finished('alice', 'ok'),
          await h.finished('alice', 'ok'),
          await h.finished('alice', 'ok'),
          await h.finished('alice', 'ok'),
        ],
        failed: [await h.finished('alice', 'fail'), await h.finished('alice', 'fail')],
        // No cap on canceled operations: they stay, however many.
        canceled: [await h.finished('alice', 'cancel'), await h.finished('alice', 'cancel')],
      }
      // bob is at the caps already: nothing of his goes.
      const bob = [await h.finished('bob', 'ok'), await h.finished('bob', 'ok'), await h.finished('bob', 'fail')]
      const before = await everything(h)
      expect(before).toHaveLength(11)

      for (const who of ['alice', 'bob'] as const) {
        const refused = expectProblem(await h.as(who).post('/operations/cleanup'), 403, 'forbidden')
        expect(refused.detail).toMatch(/administrator/)
      }
      expect(await everything(h)).toEqual(before)

      const run = expectJson(await h.as('root').post('/operations/cleanup'), 200)
      expect(run).toEqual({
        trigger: 'request',
        startedAt: expect.stringMatching(ISO_UTC),
        endedAt: expect.stringMatching(ISO_UTC),
        removed: { expired: 0, trimmed: 3 },
        skipped: false,
        error: null,
      })
      expect(Date.parse(run.endedAt)).toBeGreaterThanOrEqual(Date.parse(run.startedAt))
      const removed = [alice.succeeded[0], alice.succeeded[1], alice.failed[0]]
      expect(new Set(await everything(h))).toEqual(new Set(before.filter((id) => !removed.includes(id))))
      for (const id of removed) {
        expectProblem(await h.as('alice').get(`/operations/${id}`), 404, 'operation-not-found')
      }
      for (const id of [...alice.succeeded.slice(2), alice.failed[1]!, ...alice.canceled, ...bob]) {
        expect((await h.as('root').get(`/operations/${id}`)).status).toBe(200)
      }

      const after = expectJson(await h.as('bob').get('/operations/cleanup'), 200)
      expect(after).toMatchObject({ active: true, running: false, lastRun: run })

      // The `cleanup.allow` grant: ops may run it; the caps hold, so nothing more goes.
      const again = expectJson(await h.as('ops').post('/operations/cleanup'), 200)
      expect(again).toMatchObject({ removed: { expired: 0, trimmed: 0 }, skipped: false, error: null })
      expect(await everything(h)).toHaveLength(8)
    })

    it('purges what is past its retention', async () => {
      const h = await started({ retention: 1 })
      const gone = [await h.finished('alice', 'ok'), await h.finished('bob', 'fail')]
      const run = expectJson(await h.as('root').post('/operations/cleanup'), 200)
      expect(run).toMatchObject({ removed: { expired: 2, trimmed: 0 }, skipped: false, error: null })
      for (const id of gone) expectProblem(await h.as('root').get(`/operations/${id}`), 404, 'operation-not-found')
      const status = expectJson(await h.as('alice').get('/operations/cleanup'), 200)
      expect(status.options).toEqual({ interval: 3_600_000, retention: 1, keep: null })
    })

    it('runs every purgeInterval in a worker, and only on request in an API-only process', async () => {
      const h = await started({ purgeInterval: 20, keep: { succeeded: 1 } })
      const ids = [await h.finished('alice', 'ok'), await h.finished('alice', 'ok'), await h.finished('alice', 'ok')]
      await until(async () => (await everything(h)).length === 1, 10_000, { what: 'the scheduled trim' })
      expect(await everything(h)).toEqual([ids[2]])
      const status = expectJson(await h.as('alice').get('/operations/cleanup'), 200)
      expect(status).toMatchObject({ active: true, options: { interval: 20 }, lastRun: { trigger: 'schedule' } })

      const api = await started({ worker: false, purgeInterval: 20 })
      expect(expectJson(await api.as('root').get('/operations/cleanup'), 200)).toMatchObject({
        active: false,
        lastRun: null,
      })
      expect(expectJson(await api.as('root').post('/operations/cleanup'), 200)).toMatchObject({
        trigger: 'request',
        error: null,
      })
    })
  })
}

cleanupSuite('memory', () => ({ store: memoryStore(), cleanup: () => {} }))

cleanupSuite('sqlite', () => {
  const dir = tempDir('longrun-cleanup-')
  return { store: sqliteStore({ path: join(dir.path, 'ops.db') }), cleanup: dir.remove }
})

/** A logger that keeps what it was given. */
function recordingLogger(): Logger & { lines: { level: string; obj: unknown; msg: string | undefined }[] } {
  const lines: { level: string; obj: unknown; msg: string | undefined }[] = []
  const log =
    (level: string) =>
    (obj: object | string, msg?: string): void =>
      void lines.push({ level, obj, msg })
  const logger = {
    lines,
    debug: log('debug'),
    info: log('info'),
    warn: log('warn'),
    error: log('error'),
    child: () => logger,
  }
  return logger
}

/** `store` with some methods replaced; the others stay bound to it (stores keep private fields). */
function withMethods<S extends object>(store: S, methods: Record<string, unknown>): S {
  return new Proxy(store, {
    get(target, prop) {
      if (typeof prop === 'string' && Object.hasOwn(methods, prop)) return methods[prop]
      const value: unknown = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    },
  })
}

describe('the cleanup service in the engine', () => {
  const engines: Engine[] = []
  afterEach(async () => {
    await Promise.all(engines.splice(0).map((engine) => engine.close()))
  })
  const engine = (options: ConstructorParameters<typeof Engine>[0]) => {
    const made = new Engine(options)
    engines.push(made)
    return made
  }

  it('refuses keep caps that are not non-negative integers, or a store that cannot trim', () => {
    const code = (make: () => unknown) => {
      try {
        make()
      } catch (err) {
        return err instanceof LongrunError ? err.code : err
      }
      return 'no error'
    }
    for (const keep of [{ succeeded: -1 }, { failed: 1.5 }, { canceled: Infinity }, { queued: 3 }, [1], 'all']) {
      expect(
        code(() => new Engine({ store: memoryStore(), keep: keep as never })),
        JSON.stringify(keep),
      ).toBe('invalid-option')
    }
    const untrimmable = withMethods(memoryStore(), { trim: undefined })
    expect(code(() => new Engine({ store: untrimmable, keep: { succeeded: 5 } }))).toBe('invalid-option')
    // Without caps, any store does: retention alone needs only `purge`.
    expect(code(() => new Engine({ store: untrimmable }))).toBe('no error')
    expect(code(() => new Engine({ store: memoryStore(), keep: { succeeded: 0, failed: 20 } }))).toBe('no error')
  })

  it('logs each run with its counts, and a failure as an error that the status reports', async () => {
    const logger = recordingLogger()
    const ok = engine({ store: memoryStore(), logger, keep: { succeeded: 0 }, worker: false })
    ok.define({ name: 'job', handler: async () => 'done' })
    const run = await ok.cleanup()
    expect(run).toMatchObject({ trigger: 'request', removed: { expired: 0, trimmed: 0 }, error: null })
    expect(logger.lines).toContainEqual({
      level: 'info',
      obj: expect.objectContaining({ trigger: 'request', expired: 0, trimmed: 0 }),
      msg: 'longrun: cleanup removed 0 expired and 0 trimmed operations',
    })

    const failing = engine({
      store: withMethods(memoryStore(), { purge: async () => Promise.reject(new Error('disk full')) }),
      logger,
      worker: false,
    })
    const failed = await failing.cleanup()
    expect(failed).toMatchObject({ error: 'disk full', skipped: false, removed: { expired: 0, trimmed: 0 } })
    expect(logger.lines).toContainEqual({
      level: 'error',
      obj: expect.objectContaining({ err: expect.objectContaining({ message: 'disk full' }) }),
      msg: 'longrun: cleanup failed',
    })
    expect(failing.cleanupStatus()).toMatchObject({ running: false, lastRun: { error: 'disk full' } })
  })

  it('runs once at a time in a process: a run asked for meanwhile is the run in progress', async () => {
    const store = memoryStore()
    let purges = 0
    let release!: () => void
    const gate = new Promise<void>((resolve) => (release = resolve))
    const gated = engine({
      store: withMethods(store, {
        purge: async (now: number, limit: number) => {
          purges++
          await gate
          return store.purge(now, limit)
        },
      }),
      worker: false,
    })
    const first = gated.cleanup()
    const second = gated.cleanup()
    await until(() => purges > 0)
    expect(gated.cleanupStatus().running).toBe(true)
    release()
    expect(await second).toBe(await first)
    expect(purges).toBe(1)
    expect(gated.cleanupStatus().running).toBe(false)
    // The next one is a run of its own.
    expect(await gated.cleanup()).not.toBe(await first)
    expect(purges).toBe(2)
  })
})

describePostgres('cleanup across processes on PostgreSQL', (url) => {
  const schema = freshSchemaName('lrc')
  let h: Harness
  const children: ChildProcess[] = []
  beforeAll(async () => {
    const store = postgresStore({ connectionString: url, schema, max: 4 })
    await store.ready()
    h = await start(store, { keep: { succeeded: 1 } })
  })
  afterEach(() => {
    for (const child of children.splice(0)) if (child.exitCode === null) child.kill('SIGKILL')
  })
  afterAll(async () => {
    await h?.close()
    await dropSchema(url, schema)
  })

  /**
   * Another process on the same schema that takes the cleanup lock and holds it until told (a line
   * on its stdin). Resolves once it holds it.
   */
  async function lockHolder(): Promise<{ release: () => Promise<string> }> {
    const script = `
      import { postgresStore } from 'longrun/postgres'
      const store = postgresStore({ connectionString: process.env.PG_URL, schema: process.env.PG_SCHEMA, max: 2 })
      await store.ready()
      const held = await store.exclusively('cleanup', () => new Promise((resolve) => {
        process.stdout.write('held\\n')
        process.stdin.once('data', resolve)
      }))
      process.stdout.write(held ? 'released\\n' : 'busy\\n')
      await store.close()
    `
    const child = spawn(
      process.execPath,
      ['--conditions=longrun-source', '--import', 'tsx', '--input-type=module', '-e', script],
      { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, PG_URL: url, PG_SCHEMA: schema } },
    )
    children.push(child)
    let output = ''
    child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')))
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')))
    await until(() => output.includes('held\n') || child.exitCode !== null, 20_000, {
      what: 'the other process to take the lock',
      describe: () => `its output: ${output}`,
    })
    expect(output).toContain('held\n')
    return {
      async release() {
        child.stdin!.end('go\n')
        if (child.exitCode === null) await once(child, 'exit')
        return output
      },
    }
  }

  it('skips a run while another process holds the lock, and says so', async () => {
    expect(expectJson(await h.as('root').get('/operations/cleanup'), 200).exclusive).toBe(true)
    const ids = [await h.finished('alice', 'ok'), await h.finished('alice', 'ok')]

    const other = await lockHolder()
    const skipped = expectJson(await h.as('root').post('/operations/cleanup'), 200)
    expect(skipped).toMatchObject({ skipped: true, removed: { expired: 0, trimmed: 0 }, error: null })
    expect(expectJson(await h.as('alice').get('/operations/cleanup'), 200).lastRun).toEqual(skipped)
    expect(await everything(h)).toHaveLength(2)
    expect(await other.release()).toContain('released\n')

    const ran = expectJson(await h.as('root').post('/operations/cleanup'), 200)
    expect(ran).toMatchObject({ skipped: false, removed: { expired: 0, trimmed: 1 }, error: null })
    expect(await everything(h)).toEqual([ids[1]])
  })

  it('lets one of two engines with pools of their own run at a time', async () => {
    const store = postgresStore({ connectionString: url, schema, max: 2 })
    let release!: () => void
    const gate = new Promise<void>((resolve) => (release = resolve))
    let purging = false
    const first = new Engine({
      store: withMethods(store, {
        purge: async (now: number, limit: number) => {
          purging = true
          await gate
          return store.purge(now, limit)
        },
      }),
      worker: false,
    })
    const second = new Engine({ store: postgresStore({ connectionString: url, schema, max: 2 }), worker: false })
    try {
      const running = first.cleanup()
      await until(() => purging, 10_000, { what: 'the first engine to start purging' })
      expect(await second.cleanup()).toMatchObject({ skipped: true, error: null })
      release()
      expect(await running).toMatchObject({ skipped: false, error: null })
      expect(await second.cleanup()).toMatchObject({ skipped: false, error: null })
    } finally {
      release()
      await Promise.all([first.close(), second.close()])
    }
  })
})
