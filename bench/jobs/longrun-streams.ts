// Streams: BENCH_STREAMS operations reporting progress every BENCH_EVERY_MS, each watched by its own
// SSE stream from this process, on a longrun server in its own process (bench/servers/longrun.ts).
// Then the cost of learning that an operation finished: by its event stream, by one wait, or by
// polling its status once a second, as server CPU and requests per operation.
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { createParser } from 'eventsource-parser'
import { startServer, type RunningServer } from '../lib/proc.js'
import { envInt, report, summarize } from './common.js'

const STREAMS = envInt('BENCH_STREAMS', 2_000)
const EVERY_MS = envInt('BENCH_EVERY_MS', 100)
const STEPS = envInt('BENCH_STEPS', 20)
const OBSERVED = envInt('BENCH_OBSERVED', 200)
const OBSERVED_MS = envInt('BENCH_OBSERVED_MS', 10_000)
const MiB = 1_048_576

async function submit(srv: RunningServer, steps: number, everyMs: number, gated = false): Promise<string> {
  const res = await fetch(`${srv.url}/jobs/progress`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ steps, everyMs, gated }),
  })
  if (res.status !== 202) throw new Error(`submit answered ${res.status}: ${await res.text()}`)
  return ((await res.json()) as { id: string }).id
}

/** Runs `task` on every item, at most `limit` at once: thousands of connects at once overflow the listen backlog. */
async function pool<T, R>(items: T[], limit: number, task: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = []
  let next = 0
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < items.length) {
        const i = next++
        results[i] = await task(items[i]!)
      }
    }),
  )
  return results
}

/**
 * Opens one operation's stream; resolves once it is open, with the promise of its end (wrapped: an
 * async function returning a promise would wait for it). Calls `onEvent` with each event's name and data.
 */
async function open(url: string, onEvent: (event: string, data: string) => void): Promise<{ ended: Promise<void> }> {
  const res = await fetch(url)
  if (res.status !== 200) throw new Error(`stream answered ${res.status}: ${await res.text()}`)
  const parser = createParser({ onEvent: (e) => onEvent(e.event ?? 'message', e.data) })
  const decoder = new TextDecoder()
  const ended = (async () => {
    for await (const chunk of res.body!) parser.feed(decoder.decode(chunk, { stream: true }))
  })()
  return { ended }
}

async function follow(url: string, onEvent: (event: string, data: string) => void): Promise<void> {
  await (
    await open(url, onEvent)
  ).ended
}

async function streams(srv: RunningServer) {
  const idle = await srv.state()
  let peakRss = idle.rss
  const sampling = setInterval(() => {
    srv.state().then(
      (s) => (peakRss = Math.max(peakRss, s.rss)),
      () => {},
    )
  }, 250)
  const delays: number[] = []
  let events = 0
  let progress = 0
  const began = performance.now()
  // Every operation waits at the server's gate until all streams are open: then they all run at once.
  const ends = await pool(Array.from({ length: STREAMS }), 50, async () =>
    open(`${srv.url}/operations/${await submit(srv, STEPS, EVERY_MS, true)}/events?after=0`, (event, data) => {
      events++
      if (event !== 'progress') return
      progress++
      const at = Date.parse((JSON.parse(data) as { event: { at: string } }).event.at)
      delays.push(Date.now() - at)
    }),
  )
  const opened = (performance.now() - began) / 1000
  const running = performance.now()
  await fetch(`${srv.url}/_bench/go`, { method: 'POST' })
  await Promise.all(ends.map((stream) => stream.ended))
  clearInterval(sampling)
  // From the gate's opening: STEPS * EVERY_MS (2 s by default) if nothing fell behind.
  const seconds = (performance.now() - running) / 1000
  const delivery = summarize(delays)
  return {
    streams: STREAMS,
    openedInSec: opened,
    runSec: seconds,
    events,
    // Of STEPS reported by each operation: fewer when the store coalesced some (docs/realtime.md).
    progressPerStream: progress / STREAMS,
    eventsPerSec: events / seconds,
    deliveryMs: { p50: delivery.p50, p99: delivery.p99 },
    rssIdleMiB: idle.rss / MiB,
    rssPeakMiB: peakRss / MiB,
    rssPerStreamKiB: (((peakRss - idle.rss) / STREAMS) * 1024) / MiB,
  }
}

type Observer = (srv: RunningServer, id: string) => Promise<number>

const OBSERVERS: Record<string, Observer> = {
  /** Nobody asks: what running the operations costs by itself, subtracted from the others. */
  async none() {
    return 0
  },
  /** One request: the stream, read to its terminal event. */
  async sse(srv, id) {
    await follow(`${srv.url}/operations/${id}/events`, () => {})
    return 1
  },
  /** Waits of up to 30 s until one answers done. */
  async wait(srv, id) {
    for (let requests = 1; ; requests++) {
      const res = await fetch(`${srv.url}/operations/${id}/wait?timeout=30`)
      if (((await res.json()) as { done: boolean }).done) return requests
    }
  },
  /** A status read, then one every second until done: what a polling client does. */
  async poll(srv, id) {
    for (let requests = 1; ; requests++) {
      const res = await fetch(`${srv.url}/operations/${id}`)
      if (((await res.json()) as { done: boolean }).done) return requests
      await sleep(1_000)
    }
  },
}

/**
 * Server CPU and requests per operation, for OBSERVED operations of OBSERVED_MS (progress 4 times)
 * watched one way, from their submission until the server has finished them all.
 */
async function observe(srv: RunningServer, how: Observer) {
  const before = await srv.state()
  const everyMs = Math.max(1, Math.round(OBSERVED_MS / 4))
  const ids = await pool(Array.from({ length: OBSERVED }), 50, () => submit(srv, 4, everyMs))
  const requests = await Promise.all(ids.map((id) => how(srv, id)))
  let after = await srv.state()
  while (after.done - before.done < OBSERVED) {
    await sleep(100)
    after = await srv.state()
  }
  return {
    requestsPerOp: requests.reduce((a, b) => a + b, 0) / OBSERVED,
    cpuMsPerOp: (after.cpuMicros - before.cpuMicros) / 1000 / OBSERVED,
  }
}

const srv = await startServer('longrun', {
  BENCH_STORE: process.env.BENCH_STORE ?? 'memory',
  BENCH_PROGRESS_CONCURRENCY: String(STREAMS + OBSERVED),
})
try {
  const result: Record<string, unknown> = { streams: await streams(srv) }
  // A first round warms the server up (JIT, caches); its figures are dropped.
  await observe(srv, OBSERVERS.none!)
  const cost: Record<string, { requestsPerOp: number; cpuMsPerOp: number }> = {}
  for (const [name, how] of Object.entries(OBSERVERS)) cost[name] = await observe(srv, how)
  // What observing adds to running: each way's CPU less that of unobserved operations.
  for (const name of ['sse', 'wait', 'poll']) {
    result[name] = { ...cost[name], observeCpuMsPerOp: cost[name]!.cpuMsPerOp - cost.none!.cpuMsPerOp }
  }
  result.none = cost.none
  report(result)
} finally {
  await srv.stop()
}
