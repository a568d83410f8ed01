import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import autocannon from 'autocannon'
import Fastify from 'fastify'
import { longrun } from 'longrun/fastify'
import { defineAsyncRoute } from 'longrun/http'
import { sqliteStore } from 'longrun/sqlite'
import { envInt, report } from './common.js'

// Callbacks: how fast a process sends them to a local receiver, and what a callback costs a submit.
// One SQLite-backed app (synchronous=FULL, as users run it) with two no-op routes that differ only in
// `callback`; a receiver on 127.0.0.1 answering 204. Prints one JSON line.
//   BENCH_OPS: callbacks queued for the delivery measure (default 2000)
//   BENCH_DURATION: seconds of each submit run (default 5); BENCH_CONNECTIONS (default 32)

const OPS = envInt('BENCH_OPS', 2_000)
const DURATION = envInt('BENCH_DURATION', 5)
const CONNECTIONS = envInt('BENCH_CONNECTIONS', 32)
const SECRET = `whsec_${Buffer.from('bench secret of at least 24 bytes').toString('base64')}`

let received = 0
/** The count at which the delivery measure starts: its first callback. */
let measureFrom = 0
let firstAt = 0
let lastAt = 0
const receiver = createServer((request, response) => {
  request.resume().on('end', () => {
    received++
    lastAt = performance.now()
    if (received === measureFrom) firstAt = lastAt
    response.writeHead(204).end()
  })
})
await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve))
const callbackUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`

const dir = mkdtempSync(join(tmpdir(), 'longrun-bench-hooks-'))
const route = (url: string, callback: boolean) =>
  defineAsyncRoute({
    url,
    name: url.slice(1),
    concurrency: 32,
    ...(callback ? { callback: true as const } : {}),
    schema: { body: { type: 'object', properties: { callbackUrl: { type: 'string' } } } },
    handler: () => ({ ok: true }),
  })

/** The app on `file`; `worker: false` accepts and stores, and runs and sends nothing. */
async function start(file: string, worker: boolean) {
  const app = Fastify()
  await app.register(longrun, {
    store: sqliteStore({ path: join(dir, file) }),
    worker,
    webhooks: { secret: SECRET, allow: ['127.0.0.1'], poll: '50ms' },
    retention: '1h',
  })
  app.longrun.route(route('/plain', false))
  app.longrun.route(route('/called', true))
  return { app, base: await app.listen({ port: 0, host: '127.0.0.1' }) }
}

const withBody = JSON.stringify({ callbackUrl })

// 1. Submit throughput with and without a callback, the handlers and deliveries running in the same
// process as users run it; alternated, so that neither gets the warmer machine.
const served = await start('submit.db', true)
async function submitRun(path: string, body: string): Promise<{ perSec: number; total: number }> {
  const result = await autocannon({
    url: served.base + path,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body,
    connections: CONNECTIONS,
    duration: DURATION,
  })
  if (result.non2xx > 0 || result.errors > 0)
    throw new Error(`${path}: ${result.non2xx} non-2xx, ${result.errors} errors`)
  return { perSec: result.requests.average, total: result.requests.total }
}
const waitFor = async (done: () => boolean) => {
  while (!done()) await new Promise((resolve) => setTimeout(resolve, 50))
}
const plain: number[] = []
const called: number[] = []
let expected = 0
for (let i = 0; i < 2; i++) {
  plain.push((await submitRun('/plain', '{}')).perSec)
  const run = await submitRun('/called', withBody)
  called.push(run.perSec)
  expected += run.total
  // Every callback of the run is sent before the next run starts.
  await waitFor(() => received >= expected)
}
await served.app.close()
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!

// 2. Callbacks per second from a backlog: OPS operations accepted by an API-only process, then a
// process that runs them and sends their callbacks; from the first callback received to the last.
const api = await start('backlog.db', false)
for (let i = 0; i < OPS; i += 50) {
  await Promise.all(
    Array.from({ length: Math.min(50, OPS - i) }, () =>
      fetch(`${api.base}/called`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: withBody }),
    ),
  )
}
await api.app.close()
const before = received
measureFrom = before + 1
const worker = await start('backlog.db', true)
await waitFor(() => received - before >= OPS)
const seconds = (lastAt - firstAt) / 1_000
await worker.app.close()

receiver.close()
rmSync(dir, { recursive: true, force: true })
report({
  submitPlainPerSec: median(plain),
  submitCalledPerSec: median(called),
  ratio: median(called) / median(plain),
  deliveries: OPS,
  deliverySeconds: seconds,
  deliveriesPerSec: OPS / seconds,
})
