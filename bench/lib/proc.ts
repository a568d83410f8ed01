import { spawn, type ChildProcess } from 'node:child_process'
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

function nodeProcess(script: string, env: Record<string, string>): ChildProcess {
  const child = spawn(process.execPath, [...NODE_ARGS, script], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
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

/** Starts `bench/servers/<name>.ts` in its own process and resolves once it prints its ready line. */
export async function startServer(
  name: string,
  env: Record<string, string> = {},
  timeoutMs = 60_000,
): Promise<RunningServer> {
  const port = await freePort()
  const child = nodeProcess(`bench/servers/${name}.ts`, { ...env, PORT: String(port) })
  let stdout = ''
  let stderr = ''
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-20_000)))
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`server ${name} not ready after ${timeoutMs} ms\n${tail(stderr)}`))
    }, timeoutMs)
    child.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString()
      if (stdout.includes(READY)) {
        clearTimeout(timer)
        resolve()
      }
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
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

/** Runs `bench/jobs/<name>.ts` to its end and returns the JSON line it printed. */
export async function runJob<T>(name: string, env: Record<string, string>, timeoutMs: number): Promise<T> {
  const child = nodeProcess(`bench/jobs/${name}.ts`, env)
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
