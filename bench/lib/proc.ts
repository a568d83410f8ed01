import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, openSync, readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { fileURLToPath } from 'node:url'
import { READY } from './shared.js'

/** The repository root: servers and jobs run from it so that `longrun` resolves to src/. */
export const ROOT = fileURLToPath(new URL('../..', import.meta.url))

const NODE_ARGS = ['--conditions=longrun-source', '--import', 'tsx']
const live = new Set<ChildProcess>()

// Whatever happens to the driver, no server or job outlives it.
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL')
})

function nodeProcess(
  script: string,
  env: Record<string, string>,
  options: { nodeArgs?: string[]; stdoutFd?: number; unsetEnv?: readonly string[] } = {},
): ChildProcess {
  const merged: NodeJS.ProcessEnv = { ...process.env, ...env }
  for (const name of options.unsetEnv ?? []) delete merged[name]
  const child = spawn(process.execPath, [...NODE_ARGS, ...(options.nodeArgs ?? []), script], {
    cwd: ROOT,
    env: merged,
    stdio: ['ignore', options.stdoutFd ?? 'pipe', 'pipe'],
  })
  live.add(child)
  child.once('exit', () => live.delete(child))
  return child
}

/** A free loopback port (never 3000). */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = createServer()
      srv.once('error', reject)
      srv.listen(0, '127.0.0.1', () => {
        const address = srv.address()
        srv.close(() => resolve(typeof address === 'object' && address ? address.port : 0))
      })
    })
    if (port > 0 && port !== 3000) return port
  }
}

export interface ServerState {
  accepted: number
  done: number
  rss: number
  /** CPU time the server process has used, user and system, in microseconds. */
  cpuMicros: number
}

export interface RunningServer {
  readonly port: number
  readonly pid: number
  readonly url: string
  state(): Promise<ServerState>
  stop(): Promise<void>
}

function tail(text: string): string {
  const lines = text.trim().split('\n')
  return lines.slice(-20).join('\n')
}

export interface ServerOptions {
  /** The script to run, relative to the repository root. @default `bench/servers/<name>.ts` */
  script?: string
  /**
   * Send the server's stdout to this file instead of a pipe: for servers that log every request, so
   * that nobody has to read (or hold) their output and a full pipe can never stall them. The ready
   * line is then looked for in the file.
   */
  logFile?: string
  /** What the server prints on stdout once it accepts requests. @default READY */
  ready?: string
  /**
   * Whether the server has the `GET /_bench/state` route; without it, `state()` reads RSS and CPU
   * time from /proc and has no counters (NaN).
   */
  stateRoute?: boolean
  /** Variables of the driver's environment the server must not see (an empty one is not unset). */
  unsetEnv?: readonly string[]
  timeoutMs?: number
}

/** RSS and CPU time of a process from /proc (Linux), for servers without a state route. */
function procState(pid: number): ServerState {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const rssKiB = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? NaN)
  // Fields 14 and 15 of /proc/<pid>/stat (utime, stime) in clock ticks, after the `(comm)` field.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const ticks = Number(fields[11]) + Number(fields[12])
  return { accepted: NaN, done: NaN, rss: rssKiB * 1024, cpuMicros: ticks * 10_000 }
}

/**
 * Starts a server (`bench/servers/<name>.ts` unless `options.script` says otherwise) in its own
 * process and resolves once it prints its ready line.
 */
export async function startServer(
  name: string,
  env: Record<string, string> = {},
  options: ServerOptions = {},
): Promise<RunningServer> {
  const {
    script = `bench/servers/${name}.ts`,
    logFile,
    ready = READY,
    stateRoute = true,
    unsetEnv = [],
    timeoutMs = 60_000,
  } = options
  const port = await freePort()
  const fd = logFile !== undefined ? openSync(logFile, 'w') : undefined
  let child: ChildProcess
  try {
    child = nodeProcess(
      script,
      { ...env, PORT: String(port) },
      { unsetEnv, ...(fd !== undefined ? { stdoutFd: fd } : {}) },
    )
  } finally {
    // The child has its own copy of the descriptor.
    if (fd !== undefined) closeSync(fd)
  }
  let stdout = ''
  let stderr = ''
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-20_000)))
  let poll: NodeJS.Timeout | undefined
  await new Promise<void>((resolve, reject) => {
    const done = () => {
      clearTimeout(timer)
      clearInterval(poll)
    }
    const timer = setTimeout(() => {
      done()
      child.kill('SIGKILL')
      reject(new Error(`server ${name} not ready after ${timeoutMs} ms\n${tail(stderr)}`))
    }, timeoutMs)
    if (logFile !== undefined) {
      poll = setInterval(() => {
        if (readFileSync(logFile, 'utf8').includes(ready)) {
          done()
          resolve()
        }
      }, 50)
    } else {
      const onData = (d: Buffer) => {
        stdout += d.toString()
        if (stdout.includes(ready)) {
          done()
          // From now on the output is read and dropped, never kept.
          child.stdout!.off('data', onData)
          child.stdout!.resume()
          stdout = ''
          resolve()
        }
      }
      child.stdout!.on('data', onData)
    }
    child.once('exit', (code, signal) => {
      done()
      reject(new Error(`server ${name} exited before ready (code ${code}, signal ${signal})\n${tail(stderr)}`))
    })
  })
  const url = `http://127.0.0.1:${port}`
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve()
    else child.once('exit', () => resolve())
  })
  return {
    port,
    pid: child.pid!,
    url,
    async state() {
      if (!stateRoute) return procState(child.pid!)
      const res = await fetch(`${url}/_bench/state`)
      if (!res.ok) throw new Error(`server ${name}: /_bench/state answered ${res.status}`)
      return (await res.json()) as ServerState
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM')
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000)
        await exited
        clearTimeout(timer)
      }
    },
  }
}

/** Runs `bench/jobs/<name>.ts` (with `nodeArgs`, e.g. `--expose-gc`) to its end and returns the JSON line it printed. */
export async function runJob<T>(
  name: string,
  env: Record<string, string>,
  timeoutMs: number,
  nodeArgs: string[] = [],
): Promise<T> {
  const child = nodeProcess(`bench/jobs/${name}.ts`, env, { nodeArgs })
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()))
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-20_000)))
  const code = await new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => {
      stderr += `\n(killed after ${timeoutMs} ms)`
      child.kill('SIGKILL')
    }, timeoutMs)
    child.once('exit', (c) => {
      clearTimeout(timer)
      resolve(c)
    })
  })
  const line = stdout
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .pop()
  if (code !== 0 || !line) throw new Error(`job ${name} failed (exit ${code})\n${tail(stderr || stdout)}`)
  return JSON.parse(line) as T
}
