import { execFile, spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { freePort } from './helpers/child-server.js'
import { until } from './helpers/until.js'

// The package as a user gets it: `npm pack` (which builds dist/), the tarball installed into a fresh
// project, that project's TypeScript compiled and run with plain `node`: no source paths, no
// `longrun-source` condition.

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  exports: Record<string, Record<string, string>>
  peerDependencies: Record<string, string>
  devDependencies: Record<string, string>
}
const TSC = join(ROOT, 'node_modules/typescript/bin/tsc')
// The oldest fastify the peer range admits: a user on an older 5.x must get no second copy.
const OLDEST_FASTIFY = pkg.peerDependencies.fastify!.replace(/^\^/, '')

// npm hands its scripts npm_* variables (npm_config_local_prefix among them) that would point the
// consumer's npm at this repository; NODE_OPTIONS could carry `--conditions`.
const env = Object.fromEntries(
  Object.entries(process.env).filter(([name]) => !name.startsWith('npm_') && name !== 'NODE_OPTIONS'),
)
const exec = promisify(execFile)

/** Runs a command to its end; when it fails, the error shows its output (tsc reports on stdout). */
async function run(file: string, args: string[], cwd: string): Promise<{ stdout: string }> {
  try {
    return await exec(file, args, { cwd, env, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 })
  } catch (err) {
    const { stdout = '', stderr = '' } = err as { stdout?: string; stderr?: string }
    throw new Error(`${[file, ...args].join(' ')} failed in ${cwd}:\n${stdout}${stderr}`, { cause: err })
  }
}

const CONSUMER: Record<string, string> = {
  'package.json': JSON.stringify({ name: 'consumer', private: true, type: 'module' }),
  'tsconfig.json': JSON.stringify({
    compilerOptions: {
      strict: true,
      target: 'ES2022',
      module: 'nodenext',
      moduleResolution: 'nodenext',
      types: ['node'],
      outDir: 'out',
    },
    include: ['src'],
  }),
  'src/app.ts': `
    import { Type } from '@sinclair/typebox'
    import Fastify from 'fastify'
    import { longrun } from 'longrun/fastify'
    import { sqliteStore } from 'longrun/sqlite'

    export async function buildApp(path: string) {
      const app = Fastify()
      await app.register(longrun, { store: sqliteStore({ path }) })
      app.longrun.route({
        url: '/squares',
        name: 'square',
        schema: { body: Type.Object({ n: Type.Integer() }) },
        async handler(op) {
          await op.progress(50, 'Squaring')
          const n: number = op.input.n
          return { square: n * n }
        },
      })
      return app
    }
  `,
  // Compiled, never run: pg is not installed, its types come with longrun.
  'src/postgres.ts': `
    import { postgresStore } from 'longrun/postgres'

    export const store = postgresStore({ connectionString: process.env.DATABASE_URL, schema: 'longrun', max: 4 })
  `,
  // What `longrun serve` and `longrun worker` run: plain JavaScript, as a user without tsx writes it.
  'routes.js': `
    import { defineAsyncRoute } from 'longrun/http'

    export const routes = [
      defineAsyncRoute({
        url: '/cubes',
        name: 'cube',
        async handler(op) {
          return { cube: op.input.n ** 3 }
        },
      }),
    ]
  `,
  'src/main.ts': `
    import type { AddressInfo } from 'node:net'
    import { setTimeout as sleep } from 'node:timers/promises'
    import { createClient } from 'longrun/client'
    import { buildApp } from './app.js'

    const app = await buildApp(process.argv[2]!)
    await app.listen({ host: '127.0.0.1', port: 0 })
    const base = 'http://127.0.0.1:' + (app.server.address() as AddressInfo).port
    const submitted = await fetch(base + '/squares', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ n: 7 }),
    })
    const location = submitted.headers.get('location')!
    let op: { done: boolean; state: string }
    do {
      await sleep(20)
      op = (await (await fetch(base + location)).json()) as typeof op
    } while (!op.done)
    const result: unknown = await (await fetch(base + location + '/result')).json()
    // The same round trip through the client SDK, which hides the polling.
    const client = createClient({ baseUrl: base })
    const viaClient = await (await client.submit('/squares', { n: 8 })).wait({ timeout: 10_000 })
    const postgres = await import('longrun/postgres').then(
      () => 'loaded',
      (err: Error) => err.message,
    )
    await app.close()
    const resolved = import.meta.resolve('longrun/fastify')
    console.log(JSON.stringify({ status: submitted.status, state: op.state, result, viaClient, postgres, resolved }))
  `,
}

describe('the packed package, installed into a new project', () => {
  let dir: string
  let consumer: string
  let packed: string[]

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'longrun-pack-'))
    const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', dir], ROOT)
    const [tarball] = JSON.parse(stdout) as [{ filename: string; files: { path: string }[] }]
    packed = tarball.files.map((file) => file.path)

    consumer = join(dir, 'consumer')
    for (const [path, text] of Object.entries(CONSUMER)) {
      await mkdir(join(consumer, path, '..'), { recursive: true })
      await writeFile(join(consumer, path), text)
    }
    await run(
      'npm',
      [
        'install',
        '--prefer-offline',
        '--no-audit',
        '--no-fund',
        // Compiling better-sqlite3 takes minutes on two cores: the consumer links the copy this
        // repository's install built for this Node, and so runs no install script at all.
        '--ignore-scripts',
        join(dir, tarball.filename),
        `file:${join(ROOT, 'node_modules/better-sqlite3')}`,
        `fastify@${OLDEST_FASTIFY}`,
        `@sinclair/typebox@${pkg.devDependencies['@sinclair/typebox']}`,
        `@types/node@${pkg.devDependencies['@types/node']}`,
      ],
      consumer,
    )
  }, 180_000)

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true })
  })

  it('holds the built JavaScript with declarations and source maps, every export target, LICENSE and README', () => {
    expect(packed).toEqual(
      expect.arrayContaining([
        'LICENSE',
        'README.md',
        'package.json',
        'dist/index.js',
        'dist/index.js.map',
        'dist/index.d.ts',
        'dist/index.d.ts.map',
      ]),
    )
    const targets = Object.values(pkg.exports).flatMap((conditions) => Object.values(conditions))
    expect(targets.map((target) => target.replace(/^\.\//, '')).filter((path) => !packed.includes(path))).toEqual([])
    expect(packed.filter((path) => path.endsWith('.test.ts'))).toEqual([])
  })

  it('uses the project’s own fastify, installs no optional peer and brings the types pg lacks', () => {
    const installed = (name: string) => join(consumer, 'node_modules', name)
    const fastify = JSON.parse(readFileSync(join(installed('fastify'), 'package.json'), 'utf8')) as { version: string }
    expect(fastify.version).toBe(OLDEST_FASTIFY)
    expect(existsSync(join(installed('longrun'), 'node_modules/fastify'))).toBe(false)
    expect(existsSync(installed('pg'))).toBe(false)
    expect(existsSync(installed('@types/pg'))).toBe(true)
  })

  it('compiles a strict TypeScript app (nodenext) and runs it with plain node over a real socket', async () => {
    await run(process.execPath, [TSC, '-p', '.'], consumer)
    const { stdout } = await run(process.execPath, ['out/main.js', join(dir, 'app.db')], consumer)
    expect(JSON.parse(stdout)).toEqual({
      status: 202,
      state: 'succeeded',
      result: { square: 49 },
      viaClient: { square: 64 },
      postgres: expect.stringContaining('npm install pg'),
      resolved: expect.stringMatching(/\/node_modules\/longrun\/dist\/http\/adapters\/fastify\/index\.js$/),
    })
  }, 120_000)

  it('has the longrun bin: serve a routes module on SQLite, then submit --wait to it', async () => {
    const bin = join(consumer, 'node_modules/.bin/longrun')
    expect((await run(bin, ['--version'], consumer)).stdout.trim()).toBe(
      (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version,
    )
    const port = await freePort()
    const server = spawn(
      bin,
      ['serve', 'routes.js', '--store', `sqlite:${join(dir, 'cli.db')}`, '--port', String(port)],
      {
        cwd: consumer,
        env: { ...env, LOG_LEVEL: 'warn' },
        stdio: 'ignore',
      },
    )
    try {
      const submit = () =>
        run(bin, ['submit', '/cubes', '--data', '{"n":3}', '--wait', '-s', `http://127.0.0.1:${port}`], consumer)
      const { stdout } = await until(() => submit().catch(() => undefined), 30_000, { interval: 200 })
      expect(JSON.parse(stdout)).toEqual({ cube: 27 })
    } finally {
      server.kill('SIGTERM')
    }
  }, 60_000)

  it('type-checks the same app under node16 and bundler resolution', async () => {
    const check = (module: string, resolution: string) =>
      run(
        process.execPath,
        [TSC, '-p', '.', '--noEmit', '--module', module, '--moduleResolution', resolution],
        consumer,
      )
    await Promise.all([check('node16', 'node16'), check('preserve', 'bundler')])
  }, 120_000)
})
