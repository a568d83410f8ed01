import { spawn, type ChildProcess } from 'node:child_process'
import { readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { createServer } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'

// Starts the demo server (examples/demo/main.ts), or a seed example (examples/seeds/<name>), as a
// real child process on a SQLite file, for crash, shutdown and seed tests: what they kill is a
// process, not an in-process Fastify instance.

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const OUTPUT_LIMIT = 256 * 1024

export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

export interface ChildServer {
  readonly pid: number
  readonly port: number
  /** `http://127.0.0.1:<port>` */
  readonly url: string
  readonly dbPath: string
  /** Resolves when the process has exited, however it did. */
  readonly exited: Promise<Exit>
  /** `undefined` while the process runs. */
  readonly exit: Exit | undefined
  /** The child's stdout and stderr, interleaved (the last 256 KiB). */
  output(): string
  /** Sends `signal` (when still running) and waits for the exit, up to `timeoutMs`. */
  kill(signal: NodeJS.Signals, timeoutMs?: number): Promise<Exit>
  /** Sends `signal` without waiting. */
  signal(signal: NodeJS.Signals): void
  /** Waits for the exit without sending anything; SIGKILLs the child and throws after `timeoutMs`. */
  waitExit(timeoutMs?: number): Promise<Exit>
}

export interface StartOptions {
  /** The SQLite file: `LONGRUN_STORE=sqlite:<dbPath>`. */
  dbPath: string
  /** Added to, or overriding, the default environment. */
  env?: Record<string, string>
  /** How long the server may take to answer. @default 20000 */
  readyTimeoutMs?: number
  /**
   * Starts this seed example as `npm run example -- <name>` does (the same node arguments, without
   * npm's own start-up) rather than the demo; it is ready once `GET /operations/stats` answers 200,
   * since the examples serve no index.
   */
  example?: string
}

const live = new Set<ChildServer>()

/** A port that was free a moment ago: listen on port 0, note the port, close. */
export async function freePort(): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      if (address === null || typeof address === 'string') {
        server.close()
        reject(new Error('no port'))
        return
      }
      server.close(() => resolve(address.port))
    })
  })
}

/**
 * Starts the demo server and resolves once `GET /` answers 200. Retries with another port when
 * the one picked was taken in the meantime.
 */
export async function startServer(options: StartOptions): Promise<ChildServer> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort()
    if (port === 3000) continue
    const server = spawnServer(port, options)
    try {
      await waitReady(server, options.readyTimeoutMs ?? 20_000, options.example ? '/operations/stats' : '/')
      return server
    } catch (err) {
      await server.kill('SIGKILL')
      if (attempt < 3 && server.output().includes('EADDRINUSE')) continue
      throw new Error(`${(err as Error).message}\n--- child output ---\n${server.output()}`, { cause: err })
    }
  }
}

/** SIGKILLs every child still running; for `afterEach`, so that a failed test leaves nothing behind. */
export async function killAllServers(): Promise<void> {
  await Promise.all([...live].map((server) => server.kill('SIGKILL')))
}

function spawnServer(port: number, options: StartOptions): ChildServer {
  const child: ChildProcess = spawn(
    process.execPath,
    [
      '--conditions=longrun-source',
      '--import',
      'tsx',
      ...(options.example ? ['examples/seeds/run.ts', options.example] : ['examples/demo/main.ts']),
    ],
    {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...inheritedEnv(),
        PORT: String(port),
        HOST: '127.0.0.1',
        LONGRUN_STORE: `sqlite:${options.dbPath}`,
        LONGRUN_LEASE_MS: '1000',
        LONGRUN_POLL_MS: '50',
        LONGRUN_GRACE_MS: '500',
        LOG_LEVEL: 'warn',
        ...options.env,
      },
    },
  )
  let output = ''
  const collect = (chunk: Buffer) => {
    output += chunk.toString('utf8')
    if (output.length > OUTPUT_LIMIT) output = output.slice(-OUTPUT_LIMIT)
  }
  child.stdout!.on('data', collect)
  child.stderr!.on('data', collect)

  let exit: Exit | undefined
  const exited = new Promise<Exit>((resolve) => {
    const done = (code: number | null, signal: NodeJS.Signals | null) => {
      if (exit) return
      exit = { code, signal }
      live.delete(server)
      resolve(exit)
    }
    child.once('exit', done)
    // A failed spawn emits 'error' and never 'exit'.
    child.once('error', (err) => {
      collect(Buffer.from(`spawn error: ${err.message}\n`))
      done(null, null)
    })
  })

  const server: ChildServer = {
    pid: child.pid ?? -1,
    port,
    url: `http://127.0.0.1:${port}`,
    dbPath: options.dbPath,
    exited,
    get exit() {
      return exit
    },
    output: () => output,
    signal(signal) {
      if (!exit) child.kill(signal)
    },
    async kill(signal, timeoutMs = 15_000) {
      if (!exit) child.kill(signal)
      return server.waitExit(timeoutMs)
    },
    async waitExit(timeoutMs = 15_000) {
      let timer: NodeJS.Timeout | undefined
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          // Never leave a process behind, even when the test is about to fail.
          child.kill('SIGKILL')
          reject(new Error(`pid ${child.pid} did not exit within ${timeoutMs} ms`))
        }, timeoutMs)
      })
      try {
        return await Promise.race([exited, timeout])
      } finally {
        clearTimeout(timer)
      }
    },
  }
  live.add(server)
  return server
}

/** Settings the demo or an example reads besides `LONGRUN_*`: a child must not inherit them. */
const SETTINGS = new Set(['DATABASE_URL', 'PORT', 'HOST', 'LOG_LEVEL', 'ASYNC_TIMEOUT'])

/** The environment of this process without the servers' own settings, which a child must not inherit. */
function inheritedEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env }
  for (const name of Object.keys(env)) if (name.startsWith('LONGRUN_') || SETTINGS.has(name)) delete env[name]
  return env
}

/**
 * Whether process `pid` holds a TCP socket listening on `port`, from /proc (Linux); `undefined`
 * where that cannot be told.
 */
export function listensOn(pid: number, port: number): boolean | undefined {
  try {
    const inodes = new Set<string>()
    let tables = 0
    for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
      let text: string
      try {
        text = readFileSync(table, 'utf8')
        tables++
      } catch {
        continue
      }
      for (const line of text.split('\n').slice(1)) {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        const fields = line.trim().split(/\s+/)
        const local = fields[1]
        if (fields[3] !== '0A' || !local) continue // 0A: LISTEN
        if (parseInt(local.slice(local.lastIndexOf(':') + 1), 16) === port && fields[9]) inodes.add(fields[9])
      }
    }
    if (tables === 0) return undefined
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      let link: string
      try {
        link = readlinkSync(`/proc/${pid}/fd/${fd}`)
      } catch {
        continue
      }
      const inode = /^socket:\[(\d+)\]$/.exec(link)?.[1]
      if (inode && inodes.has(inode)) return true
    }
    return false
  } catch {
    return undefined
  }
}

async function waitReady(server: ChildServer, timeoutMs: number, path: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (server.exit) throw new Error(`the server exited before answering: ${JSON.stringify(server.exit)}`)
    try {
      const res = await fetch(server.url + path, { signal: AbortSignal.timeout(2_000) })
      await res.arrayBuffer()
      // Someone else may have taken the port between freePort() and the child's listen: then the
      // answer is theirs, and the child will soon exit with EADDRINUSE.
      if (res.status === 200 && listensOn(server.pid, server.port) !== false) return
    } catch {
      // Not listening yet.
    }
    await sleep(50)
  }
  throw new Error(`GET ${server.url}${path} did not answer within ${timeoutMs} ms`)
}

// Transitional: test/postgres.test.ts still imports it from here. Everything else imports './until.js'.
export { until } from './until.js'
