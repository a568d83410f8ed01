import { execFile, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, describe, expect, it } from 'vitest'
import { buildApp } from '../examples/basic/app.js'
import { buildApp as buildRealtimeApp } from '../examples/realtime/app.js'
import { buildDemoApp } from '../examples/demo/app.js'
import { buildApp as buildCustomRoutesApp } from '../examples/custom-routes/app.js'
import { freePort } from './helpers/child-server.js'
import { until } from './helpers/until.js'

describe('the README example (examples/basic)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'longrun-example-'))
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it('accepts a report, runs it in the background and serves its result', async () => {
    const app = await buildApp(join(dir, 'reports.db'))
    try {
      const base = await app.listen({ port: 0, host: '127.0.0.1' })
      const submitted = await fetch(`${base}/reports`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ customer: 'ACME', months: 3 }),
      })
      expect(submitted.status).toBe(202)
      const location = submitted.headers.get('location')!
      let op: { state: string; result?: { customer: string; url: string } }
      const deadline = Date.now() + 20_000
      do {
        await new Promise((resolve) => setTimeout(resolve, 50))
        op = (await (await fetch(base + location)).json()) as typeof op
      } while (!['succeeded', 'failed', 'canceled'].includes(op.state) && Date.now() < deadline)
      expect(op.state).toBe('succeeded')
      expect(op.result?.customer).toBe('ACME')

      const result = await fetch(`${base}${location}/result`)
      expect(result.status).toBe(200)
      expect(await result.json()).toEqual(op.result)

      const invalid = await fetch(`${base}/reports`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ customer: 'ACME', months: 99 }),
      })
      expect(invalid.status).toBe(422)
      expect(invalid.headers.get('content-type')).toMatch(/^application\/problem\+json/)
    } finally {
      await app.close()
    }
  })
})

describe('the real-time example (examples/realtime, docs/realtime.md)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'longrun-example-'))
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it('streams progress, waits, answers Prefer: wait and holds a request', async () => {
    const app = await buildRealtimeApp(join(dir, 'realtime.db'))
    try {
      const base = await app.listen({ port: 0, host: '127.0.0.1' })
      const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
        fetch(base + path, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...headers },
          body: JSON.stringify(body),
        })
      const submitted = await post('/exports', { rows: 50 })
      expect(submitted.status).toBe(202)
      const location = submitted.headers.get('location')!

      // The stream as `curl -N` shows it, read to its end: it closes after the terminal event.
      const stream = await fetch(`${base}${location}/events?after=0`)
      expect(stream.headers.get('content-type')).toBe('text/event-stream; charset=utf-8')
      const text = await stream.text()
      const events = [...text.matchAll(/^event: (.+)$/gm)].map((m) => m[1])
      expect(events[0]).toBe('submitted')
      expect(events).toContain('progress')
      expect(events.at(-1)).toBe('succeeded')

      const waited = await fetch(`${base}${location}/wait?timeout=5`)
      expect(((await waited.json()) as { state: string }).state).toBe('succeeded')

      const fast = await post('/exports', { rows: 10 }, { prefer: 'respond-async, wait=10' })
      expect(fast.status).toBe(200)
      expect(await fast.json()).toEqual({ rows: 10 })

      const held = await post('/thumbnails', { ms: 10 })
      expect(held.status).toBe(200)
      expect(((await held.json()) as { thumbnail: string }).thumbnail).toMatch(/^\/files\/.+\.png$/)
      const late = await post('/thumbnails', { ms: 60_000 }, {})
      expect(late.status).toBe(408)
      expect(late.headers.get('location')).toMatch(/^\/operations\//)
    } finally {
      await app.close()
    }
  }, 30_000)
})

/**
 * Runs a client example (`examples/<name>/main.ts`, as its docs say) against the README's app on
 * a temp SQLite file, and answers what it printed.
 */
async function runAgainstReadmeApp(example: string, dir: string): Promise<string> {
  const app = await buildApp(join(dir, `${example}.db`))
  try {
    const base = await app.listen({ port: 0, host: '127.0.0.1' })
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ['--conditions=longrun-source', '--import', 'tsx', `examples/${example}/main.ts`],
      { cwd: new URL('..', import.meta.url), env: { ...process.env, LONGRUN_URL: base }, timeout: 20_000 },
    )
    return stdout
  } finally {
    await app.close()
  }
}

describe('the client examples, against the README app', () => {
  const dir = mkdtempSync(join(tmpdir(), 'longrun-example-'))
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it("gets the report with @azure/core-lro's poller (examples/azure, docs/protocol.md's 'Using longrun from standard clients')", async () => {
    const stdout = await runAgainstReadmeApp('azure', dir)
    expect(stdout).toContain('status: running')
    expect(stdout).toMatch(/result: \{\s+customer: 'ACME',\s+url: '\/files\/.+\.pdf'\s+\}/)
  }, 30_000)

  it('gets the report with longrun/client, showing progress (examples/client, docs/client.md)', async () => {
    const stdout = await runAgainstReadmeApp('client', dir)
    expect(stdout).toContain('progress:')
    expect(stdout).toMatch(/result: \{\s+customer: 'ACME'/)
  }, 30_000)
})

describe('the curl examples of docs/query.md, against the demo', () => {
  it('answer 2xx, as written', async () => {
    const docs = readFileSync(new URL('../docs/query.md', import.meta.url), 'utf8')
    // Blocks that start the server themselves or hold a placeholder (`...`) are illustrations.
    const blocks = [...docs.matchAll(/```sh\n([\s\S]*?)```/g)]
      .map((match) => match[1]!)
      .filter((block) => !block.includes('npm start') && !/\.\.\.['"&]/.test(block))
    expect(blocks.length).toBeGreaterThanOrEqual(5)
    const app = await buildDemoApp({ store: 'memory', logLevel: 'silent', poll: 20 })
    try {
      const base = await app.listen({ port: 0, host: '127.0.0.1' })
      for (const block of blocks) {
        // Every curl of the block must get a 2xx: --fail-with-body turns anything else into an exit code.
        const script = `curl() { command curl --fail-with-body -w '\n' "$@"; }\n${block.replaceAll('http://127.0.0.1:3000', base)}`
        const { stdout } = await promisify(execFile)('bash', ['-euo', 'pipefail', '-c', script], { timeout: 20_000 })
        for (const line of stdout.split('\n').filter(Boolean)) expect(() => JSON.parse(line), line).not.toThrow()
        await new Promise((resolve) => setTimeout(resolve, 300))
      }
    } finally {
      await app.close()
    }
  }, 60_000)
})

describe('the curl examples of docs/custom-routes.md, against examples/custom-routes', () => {
  const dir = mkdtempSync(join(tmpdir(), 'longrun-example-'))
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it('answer 2xx, as written, and the deferred task completes', async () => {
    const docs = readFileSync(new URL('../docs/custom-routes.md', import.meta.url), 'utf8')
    const blocks = [...docs.matchAll(/```sh\n([\s\S]*?)```/g)].map((match) => match[1]!)
    expect(blocks.length).toBe(4)
    const app = await buildCustomRoutesApp(join(dir, 'custom.db'))
    try {
      const base = await app.listen({ port: 0, host: '127.0.0.1' })
      const outputs: string[] = []
      for (const block of blocks) {
        const script = `curl() { command curl --fail-with-body -w '\n' "$@"; }\n${block.replaceAll('http://127.0.0.1:3000', base)}`
        const { stdout } = await promisify(execFile)('bash', ['-euo', 'pipefail', '-c', script], { timeout: 20_000 })
        outputs.push(stdout)
      }
      expect(outputs[0]).toContain('items:')
      expect(outputs[0]).toContain('<stats>')
      expect(outputs[2]).toContain('"errors":["name must not be \\"bad\\""]')
      const lines = outputs[3]!
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line))
      expect(lines[0]).toMatchObject({ success: true, status: 'pending', progress: 0 })
      expect(lines[2]).toMatchObject({ status: 'completed', currentStep: 'step-3' })
      expect(lines[3].stats.completed).toBeGreaterThanOrEqual(1)
    } finally {
      await app.close()
    }
  }, 60_000)
})

describe("the README's callback round trip", () => {
  it('runs as written: the demo calls the receiver back, which verifies the signature', async () => {
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
    const block = /<!-- callback-round-trip[^>]*-->\s*```sh\n([\s\S]*?)```/.exec(readme)?.[1]
    expect(block, 'README.md has the callback-round-trip block').toBeDefined()
    const dir = mkdtempSync(join(tmpdir(), 'longrun-callback-'))
    const [api, hooks] = [await freePort(), await freePort()]
    // Other ports than the README's, a store of its own, and curl waiting for the servers to listen.
    const script = [
      'curl() { command curl --retry 60 --retry-connrefused --retry-delay 1 --fail-with-body "$@"; }',
      block!
        .replaceAll('npm start', `LONGRUN_STORE=sqlite:${join(dir, 'demo.db')} PORT=${api} LOG_LEVEL=warn npm start`)
        .replaceAll('3000', String(api))
        .replaceAll('4000', String(hooks)),
      'wait',
    ].join('\n')
    const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('LONGRUN_')))
    const child = spawn('bash', ['-c', script], { cwd: new URL('..', import.meta.url), env, detached: true })
    let output = ''
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')))
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')))
    try {
      await until(() => /verified operation\.succeeded \S+ \{"message":"Sample task completed"/.test(output), 60_000, {
        interval: 100,
        describe: () => output,
      })
    } finally {
      process.kill(-child.pid!, 'SIGKILL')
      rmSync(dir, { recursive: true, force: true })
    }
  }, 90_000)
})
