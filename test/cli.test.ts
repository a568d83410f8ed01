import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { freePort } from './helpers/child-server.js'
import { tempDir } from './helpers/http.js'
import { describePostgres, dropSchema, freshSchemaName } from './helpers/postgres.js'
import { until } from './helpers/until.js'

// The `longrun` command as users run it: a child process with its stdout, stderr and exit code,
// against servers and workers that are `longrun serve` and `longrun worker` child processes too.

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const CLI = ['--conditions=longrun-source', '--import', 'tsx', 'src/cli/main.ts']
const MODULE = 'test/fixtures/cli-routes.ts'

interface Run {
  code: number | null
  stdout: string
  stderr: string
}

/** The environment without the settings the CLI reads, so that only what a test passes applies. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env }
  for (const name of Object.keys(env)) {
    if (/^LONGRUN_|^(DATABASE_URL|PORT|HOST|LOG_LEVEL)$/.test(name)) delete env[name]
  }
  return { ...env, ...extra }
}

/** Runs the command to its end; `onStderr` sees its stderr so far as it comes. */
function longrun(
  args: string[],
  env: Record<string, string> = {},
  input?: string,
  onStderr?: (stderr: string) => void,
): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...CLI, ...args], { cwd: ROOT, env: cleanEnv(env) })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')))
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString('utf8')
      onStderr?.(stderr)
    })
    child.once('error', reject)
    child.once('close', (code) => resolve({ code, stdout, stderr }))
    child.stdin.end(input)
  })
}

interface Daemon {
  child: ChildProcess
  output: () => string
  stop: () => Promise<number | null>
}

const daemons = new Set<Daemon>()

/** `longrun serve|worker ...` until stopped; `ready` says when it is up. */
function daemon(args: string[], env: Record<string, string> = {}): Daemon {
  const child = spawn(process.execPath, [...CLI, ...args], { cwd: ROOT, env: cleanEnv({ LOG_LEVEL: 'warn', ...env }) })
  let output = ''
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')))
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')))
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  const handle: Daemon = {
    child,
    output: () => output,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
      const code = await exited
      clearTimeout(timer)
      daemons.delete(handle)
      return code
    },
  }
  daemons.add(handle)
  return handle
}

async function serve(
  store: string,
  extra: string[] = [],
  module = MODULE,
  probe = '/operations/stats',
): Promise<{ server: string; daemon: Daemon }> {
  const port = await freePort()
  const server = `http://127.0.0.1:${port}`
  const d = daemon(['serve', module, '--store', store, '--port', String(port), ...extra])
  await until(
    async () => {
      if (d.child.exitCode !== null) throw new Error(`serve exited: ${d.output()}`)
      try {
        return (await fetch(`${server}${probe}`)).status === 200
      } catch {
        return false
      }
    },
    30_000,
    { interval: 100 },
  )
  return { server, daemon: d }
}

afterAll(async () => {
  await Promise.all([...daemons].map((d) => d.stop()))
})

describe('longrun, the command, against `longrun serve` on SQLite', () => {
  const dir = tempDir('longrun-cli-')
  let server: string
  const cli = (args: string[], input?: string) => longrun(args, { LONGRUN_SERVER: server }, input)

  let served: Daemon
  beforeAll(async () => {
    ;({ server, daemon: served } = await serve(`sqlite:${join(dir.path, 'cli.db')}`))
  }, 60_000)
  afterAll(async () => {
    expect(await served.stop()).toBe(0)
    dir.remove()
  })

  it('submit --wait prints the result and exits 0 when the operation succeeds', async () => {
    const run = await cli(['submit', '/jobs/steps', '--data', '{"steps":3,"delayMs":300}', '--wait'])
    expect(run.code, run.stderr).toBe(0)
    expect(JSON.parse(run.stdout)).toMatchObject({ done: 3 })
    // Off a terminal, progress is plain lines on stderr, ending with the outcome.
    expect(run.stderr).toMatch(/^\S+Z running \d+% step \d: of 3$/m)
    expect(run.stderr.trimEnd().split('\n').at(-1)).toMatch(/ succeeded 100% /)
  })

  it('submit --wait exits 1 with the error on stderr when the operation fails', async () => {
    const run = await cli(['submit', 'jobs/fail', '--wait'])
    expect(run.code).toBe(1)
    expect(run.stdout).toBe('')
    expect(run.stderr).toContain('failed: handler-error: broken on purpose')
  })

  it('submit --wait exits 2 when the operation is canceled while it waits', async () => {
    const waiting = cli(['submit', '/jobs/hang', '--wait', '--json'])
    let id: string | undefined
    await until(
      async () => {
        const list = await cli(['ls', '--name', 'cli.hang', '--state', 'running', '--json'])
        id = (JSON.parse(list.stdout) as { items: { id: string }[] }).items[0]?.id
        return id !== undefined
      },
      20_000,
      { interval: 200 },
    )
    const cancel = await cli(['cancel', id!])
    expect(cancel.code).toBe(0)
    expect(cancel.stdout).toMatch(new RegExp(`^${id} (running \\(cancel requested\\)|canceled)\\n$`))
    const run = await waiting
    expect(run.code).toBe(2)
    expect(JSON.parse(run.stdout)).toMatchObject({ id, state: 'canceled' })
  })

  it('submit without --wait prints the id; --json the operation; --data reads a file or stdin', async () => {
    const plain = await cli(['submit', '/jobs/steps', '--data', '{"steps":1,"delayMs":0}'])
    expect(plain.code).toBe(0)
    expect(plain.stdout).toMatch(/^[\w-]+\n$/)

    const file = join(dir.path, 'body.json')
    await import('node:fs/promises').then((fs) => fs.writeFile(file, '{"steps":2,"delayMs":0}'))
    const fromFile = await cli(['--json', 'submit', '/jobs/steps', '--data', `@${file}`])
    const submitted = JSON.parse(fromFile.stdout) as { id: string; name: string }
    expect(submitted.name).toBe('cli.steps')
    expect((await cli(['watch', submitted.id, '--json'])).stdout).toContain('"done": 2')

    const fromStdin = await cli(['submit', '/jobs/steps', '--data', '@-', '--wait', '--no-progress'], '{"steps":2}')
    expect(fromStdin.code).toBe(0)
    expect(fromStdin.stderr).toBe('')
    expect(JSON.parse(fromStdin.stdout)).toMatchObject({ done: 2 })
  })

  it('watch follows an operation to its end in plain lines, and exits with its outcome', async () => {
    // The operation waits at its first step until the gate file exists: watch sees it running.
    const gate = join(dir.path, 'watch-gate')
    const id = (await cli(['submit', '/jobs/gated', '--data', JSON.stringify({ gate })])).stdout.trim()
    const run = await longrun(['watch', id], { LONGRUN_SERVER: server }, undefined, (stderr) => {
      if (stderr.includes(' running 25% step 1: of 4')) writeFileSync(gate, '')
    })
    expect(run.code, run.stderr).toBe(0)
    const lines = run.stderr.trimEnd().split('\n')
    expect(lines[0]).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z running 25% step 1: of 4$/)
    for (const line of lines) expect(line).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z (running|succeeded) \d{1,3}%/)
    expect(lines.at(-1)).toMatch(/ succeeded 100% done$/)
    expect(JSON.parse(run.stdout)).toEqual({ gated: true })
  })

  it('get, result -o, ls, stats and delete, in both human and --json forms', async () => {
    const submitted = await cli(['submit', '/jobs/steps', '--data', '{"steps":1,"delayMs":0}', '--wait', '--json'])
    const op = JSON.parse(submitted.stdout) as { id: string; state: string; result: unknown }
    expect(op.state).toBe('succeeded')

    const get = await cli(['get', op.id])
    expect(get.stdout).toMatch(new RegExp(`^id +${op.id}$`, 'm'))
    expect(get.stdout).toMatch(/^state +succeeded$/m)
    expect(JSON.parse((await cli(['--json', 'get', op.id])).stdout)).toMatchObject({ id: op.id, state: 'succeeded' })

    const out = join(dir.path, 'result.json')
    expect((await cli(['result', op.id, '-o', out])).code).toBe(0)
    expect(JSON.parse(readFileSync(out, 'utf8'))).toEqual(op.result)

    const ls = await cli(['ls', '--state', 'succeeded', '--limit', '50'])
    expect(ls.stdout).toContain(op.id)
    expect(ls.stdout).not.toContain('\u001b[') // no colours off a terminal
    const page = JSON.parse((await cli(['ls', '--json', '--limit', '1'])).stdout) as { items: unknown[] }
    expect(page.items).toHaveLength(1)

    const stats = JSON.parse((await cli(['stats', '--json'])).stdout) as { byName: Record<string, { total: number }> }
    expect(stats.byName['cli.steps']!.total).toBeGreaterThanOrEqual(1)
    expect((await cli(['stats'])).stdout).toMatch(/cli\.steps/)

    expect(await cli(['delete', op.id])).toMatchObject({ code: 0, stdout: `${op.id} deleted\n` })
    const gone = await cli(['get', op.id])
    expect(gone.code).toBe(3)
    expect(gone.stderr).toContain('404 operation-not-found')
  })

  it('retry queues a failed operation again', async () => {
    const failed = JSON.parse((await cli(['submit', '/jobs/fail', '--wait', '--json'])).stdout) as { id: string }
    const run = await cli(['--json', 'retry', failed.id])
    expect(run.code).toBe(0)
    expect(JSON.parse(run.stdout)).toMatchObject({
      id: failed.id,
      state: expect.stringMatching(/queued|running|failed/),
    })
  })

  it('ls --where asks the server for the operations meeting the conditions', async () => {
    const id = (await cli(['submit', '/jobs/steps', '--data', '{"steps":3,"delayMs":0}', '--wait', '--json'])).stdout
    const { id: wanted } = JSON.parse(id) as { id: string }
    const run = await cli(['ls', '--json', '--where', 'input.steps eq 3', '--where', 'name like cli.st*'])
    expect(run.code, run.stderr).toBe(0)
    const ids = (JSON.parse(run.stdout) as { items: { id: string; name: string }[] }).items.map((op) => op.id)
    expect(ids).toContain(wanted)
    const none = await cli(['ls', '--json', '--where', 'input.steps eq "3"'])
    expect((JSON.parse(none.stdout) as { items: unknown[] }).items).toEqual([])
    const refused = await cli(['ls', '--where', 'nosuchfield eq 1'])
    expect(refused.code).toBe(3)
    expect(refused.stderr).toContain('invalid-condition')
  })

  it('--timeout stops waiting with exit code 4, and the operation goes on', async () => {
    const run = await cli(['submit', '/jobs/hang', '--wait', '--timeout', '1s', '--no-progress'])
    expect(run.code).toBe(4)
    expect(run.stderr).toMatch(/still not done after the --timeout; it goes on: longrun watch \S+/)
    const id = /longrun watch (\S+)/.exec(run.stderr)![1]!
    expect((await cli(['cancel', id])).code).toBe(0)
  })

  it('refuses bad usage and reports refused requests with exit code 3', async () => {
    const unknown = await cli(['frobnicate'])
    expect(unknown.code).toBe(3)
    expect(unknown.stderr).toContain("unknown command 'frobnicate'")
    const badJson = await cli(['submit', '/jobs/steps', '--data', '{nope'])
    expect(badJson).toMatchObject({ code: 3, stdout: '' })
    expect(badJson.stderr).toContain('--data is not JSON')
    const invalid = await cli(['submit', '/jobs/steps', '--data', '{"steps":"many"}'])
    expect(invalid.code).toBe(3)
    expect(invalid.stderr).toMatch(/^longrun: (400|422) invalid-body: /)
    const badDuration = await cli(['watch', 'x', '--timeout', 'soon'])
    expect(badDuration.code).toBe(3)
    expect((await cli(['--version'])).stdout.trim()).toBe(
      (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version,
    )
    expect((await cli(['--help'])).code).toBe(0)
  })
})

describe("the README's quick start with the longrun command, against the demo module", () => {
  it('runs as written, with npx resolving to this checkout', async () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
    const block = /<!-- quick-start-cli[^>]*-->\s*```sh\n([\s\S]*?)```/.exec(readme)?.[1]
    expect(block, 'README.md has the quick-start-cli block').toBeDefined()
    const dir = tempDir('longrun-cli-readme-')
    try {
      const { server } = await serve(`sqlite:${join(dir.path, 'demo.db')}`, [], 'examples/demo/module.ts', '/')
      // `npx longrun` in this checkout runs the package's own bin; here, its sources.
      const bin = join(dir.path, 'bin')
      mkdirSync(bin)
      writeFileSync(
        join(bin, 'npx'),
        `#!/bin/sh\n[ "$1" = longrun ] && shift\nexec "${process.execPath}" ${CLI.join(' ')} "$@"\n`,
        { mode: 0o755 },
      )
      const run = await new Promise<Run>((resolve, reject) => {
        const child = spawn('bash', ['-euo', 'pipefail', '-c', block!], {
          cwd: ROOT,
          env: cleanEnv({ LONGRUN_SERVER: server, PATH: `${bin}:${process.env.PATH}` }),
        })
        let stdout = ''
        let stderr = ''
        child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')))
        child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')))
        child.once('error', reject)
        child.once('close', (code) => resolve({ code, stdout, stderr }))
      })
      expect(run.code, run.stderr).toBe(0)
      expect(run.stdout).toContain('"message": "Sample task completed"')
      expect(run.stdout).toContain('"processed": 3')
      expect(run.stdout).toMatch(/demo\.batch +│ succeeded/)
      expect(run.stderr).toMatch(/ succeeded 100% Completed: Processed 3 items/)
    } finally {
      dir.remove()
    }
  }, 90_000)
})

describe('longrun watch on a terminal', () => {
  it('draws a live progress bar with percent, step, elapsed and time left', async () => {
    const dir = tempDir('longrun-cli-tty-')
    try {
      const { server } = await serve(`sqlite:${join(dir.path, 'tty.db')}`)
      // The operation waits at its first step until the gate file exists: the bar is seen running.
      const gate = join(dir.path, 'gate')
      const body = JSON.stringify({ gate })
      const id = (await longrun(['submit', '/jobs/gated', '--data', body], { LONGRUN_SERVER: server })).stdout.trim()
      // `script` gives the command a pseudo-terminal, as a user's shell would.
      const command = [process.execPath, ...CLI, 'watch', id].join(' ')
      let stdout = ''
      const run = await new Promise<Run>((resolve, reject) => {
        const child = spawn('script', ['-qec', command, '/dev/null'], {
          cwd: ROOT,
          env: cleanEnv({ LONGRUN_SERVER: server }),
        })
        child.stdout.on('data', (chunk: Buffer) => {
          stdout += chunk.toString('utf8')
          if (stdout.includes('| running step 1')) writeFileSync(gate, '')
        })
        child.once('error', reject)
        child.once('close', (code) => resolve({ code, stdout, stderr: '' }))
      })
      expect(run.code).toBe(0)
      const frames = run.stdout
        .replaceAll('\u001b[1G', '\r')
        .split('\r')
        .filter((frame) => frame.includes('% |'))
      expect(
        frames.some((frame) => /[█░]{10,} 25% \| running step 1: of 4 \| \d+s elapsed \| (\?|\d+s) left/.test(frame)),
      ).toBe(true)
      expect(frames.at(-1)).toMatch(/█{40} 100% \| succeeded done \| \d+s elapsed/)
    } finally {
      dir.remove()
    }
  }, 60_000)
})

describe('longrun, the command, without a server', () => {
  it('exits 3 naming the connection error', async () => {
    const port = await freePort()
    const run = await longrun(['get', 'abc'], { LONGRUN_SERVER: `http://127.0.0.1:${port}` })
    expect(run.code).toBe(3)
    expect(run.stderr).toMatch(/^longrun: fetch failed \(ECONNREFUSED\)$/m)
  })

  it('serve refuses a module without routes, and a store it cannot open', async () => {
    const noRoutes = await longrun(['serve', 'test/helpers/until.ts', '--store', 'memory', '--port', '0'])
    expect(noRoutes.code).toBe(3)
    expect(noRoutes.stderr).toContain('exports no routes')
    const badStore = await longrun(['serve', MODULE, '--store', 'mysql://x', '--port', '0'])
    expect(badStore.code).toBe(3)
    expect(badStore.stderr).toContain("a store is 'memory', 'sqlite:<path>' or a postgres:// URL")
  })
})

/** An API-only server and a separate worker on one store: the worker runs what the API accepted. */
async function apiAndWorker(store: string, extra: string[] = []): Promise<void> {
  const { server, daemon: api } = await serve(store, ['--role', 'api', ...extra])
  const cli = (args: string[]) => longrun(args, { LONGRUN_SERVER: server })
  const id = (await cli(['submit', '/jobs/steps', '--data', '{"steps":2,"delayMs":0}'])).stdout.trim()
  await sleep(300)
  // No worker yet: an API-only server runs nothing.
  expect(JSON.parse((await cli(['get', id, '--json'])).stdout)).toMatchObject({ state: 'queued' })
  const worker = daemon(['worker', MODULE, '--store', store, '--poll', '50ms', '--lease', '2s', ...extra])
  const run = await cli(['watch', id, '--timeout', '30s'])
  expect(run.code, `${run.stderr}\n${worker.output()}`).toBe(0)
  const result = JSON.parse(run.stdout) as { done: number; pid: number }
  expect(result.done).toBe(2)
  expect(result.pid).toBe(worker.child.pid)
  expect(await worker.stop()).toBe(0)
  expect(await api.stop()).toBe(0)
}

describe('longrun serve --role api with longrun worker', () => {
  it('on SQLite', async () => {
    const dir = tempDir('longrun-cli-')
    try {
      await apiAndWorker(`sqlite:${join(dir.path, 'shared.db')}`)
    } finally {
      dir.remove()
    }
  }, 90_000)
})

describePostgres('longrun migrate, serve --role api and worker', (url) => {
  const schema = freshSchemaName('lrcli')
  afterAll(() => dropSchema(url, schema))

  it('on PostgreSQL', async () => {
    const migrate = await longrun(['migrate', '--store', url, '--pg-schema', schema])
    expect(migrate.code, migrate.stderr).toBe(0)
    expect(migrate.stdout).toContain('is ready')
    await apiAndWorker(url, ['--pg-schema', schema])
  }, 90_000)
})
