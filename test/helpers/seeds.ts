import { spawn } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { freePort, listensOn, type Exit } from './child-server.js'

// Starts a seed example (examples/seeds/<name>/main.ts) as `npm run example -- <name>` does, without
// npm's own start-up: the same node arguments as the `example` script, on a free port and a store
// of the test's choosing.

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const OUTPUT_LIMIT = 256 * 1024

export interface SeedServer {
  readonly pid: number
  readonly url: string
  /** The child's stdout and stderr, interleaved (the last 256 KiB). */
  output(): string
  readonly exit: Exit | undefined
  /** Sends `signal` (when still running) and waits for the exit; SIGKILLs it after `timeoutMs`. */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<Exit>
}

export interface SeedOptions {
  /** `LONGRUN_STORE`, e.g. `sqlite:/tmp/x/seed.db`. */
  store: string
  env?: Record<string, string>
  readyTimeoutMs?: number
}

/** The environment without settings the examples read, so that only what a test passes applies. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env = { ...process.env }
  for (const name of Object.keys(env)) {
    if (/^LONGRUN_|^(DATABASE_URL|PORT|HOST|LOG_LEVEL|ASYNC_TIMEOUT)$/.test(name)) delete env[name]
  }
  return { ...env, ...extra }
}

/** Starts the example and resolves once it answers `GET /operations/stats`. */
export async function startSeed(name: string, options: SeedOptions): Promise<SeedServer> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort()
    const server = spawnSeed(name, port, options)
    try {
      await waitReady(server, port, options.readyTimeoutMs ?? 20_000)
      return server
    } catch (err) {
      await server.stop('SIGKILL')
      if (attempt < 3 && server.output().includes('EADDRINUSE')) continue
      throw new Error(`${(err as Error).message}\n--- child output ---\n${server.output()}`, { cause: err })
    }
  }
}

function spawnSeed(name: string, port: number, options: SeedOptions): SeedServer {
  const child = spawn(
    process.execPath,
    ['--conditions=longrun-source', '--import', 'tsx', 'examples/seeds/run.ts', name],
    {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: cleanEnv({ PORT: String(port), LONGRUN_STORE: options.store, LOG_LEVEL: 'warn', ...options.env }),
    },
  )
  let output = ''
  const collect = (chunk: Buffer) => {
    output += chunk.toString('utf8')
    if (output.length > OUTPUT_LIMIT) output = output.slice(-OUTPUT_LIMIT)
  }
  child.stdout.on('data', collect)
  child.stderr.on('data', collect)
  let exit: Exit | undefined
  const exited = new Promise<Exit>((resolve) => {
    child.once('exit', (code, signal) => resolve((exit = { code, signal })))
    child.once('error', (err) => {
      collect(Buffer.from(`spawn error: ${err.message}\n`))
      resolve((exit = { code: null, signal: null }))
    })
  })
  return {
    pid: child.pid ?? -1,
    url: `http://127.0.0.1:${port}`,
    output: () => output,
    get exit() {
      return exit
    },
    async stop(signal = 'SIGTERM', timeoutMs = 15_000) {
      if (!exit) child.kill(signal)
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
      try {
        return await exited
      } finally {
        clearTimeout(timer)
      }
    },
  }
}

async function waitReady(server: SeedServer, port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (server.exit) throw new Error(`the example exited before answering: ${JSON.stringify(server.exit)}`)
    try {
      const res = await fetch(`${server.url}/operations/stats`, { signal: AbortSignal.timeout(2_000) })
      await res.arrayBuffer()
      if (res.status === 200 && listensOn(server.pid, port) !== false) return
    } catch {
      // Not listening yet.
    }
    await sleep(50)
  }
  throw new Error(`${server.url} did not answer within ${timeoutMs} ms`)
}

/** A JSON request; `body` is sent as given when a string (the seed's bodies verbatim). */
export async function call(
  base: string,
  method: string,
  path: string,
  options: { body?: unknown; headers?: Record<string, string>; signal?: AbortSignal } = {},
): Promise<{ status: number; headers: Headers; text: string; json: Json }> {
  const headers: Record<string, string> = { ...options.headers }
  let body: string | undefined
  if (options.body !== undefined) {
    body = typeof options.body === 'string' ? options.body : JSON.stringify(options.body)
    headers['content-type'] ??= 'application/json'
  }
  const res = await fetch(base + path, {
    method,
    headers,
    ...(body === undefined ? {} : { body }),
    ...(options.signal ? { signal: options.signal } : {}),
  })
  const text = await res.text()
  let json: Json
  try {
    json = text === '' ? undefined : JSON.parse(text)
  } catch {
    json = undefined
  }
  return { status: res.status, headers: res.headers, text, json }
}

/** A parsed JSON body: tests look into it freely. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Json = any
