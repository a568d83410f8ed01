import type { FastifyInstance } from 'fastify'
import { READY } from '../lib/shared.js'

export interface Counters {
  /** Requests answered 202 (jobs or operations stored). */
  accepted: number
  /** Jobs or operations finished (any outcome). */
  done: number
}

/** `GET /_bench/state`: the driver's only window into the server; never hit by the load generator. */
export function addStateRoute(app: FastifyInstance, counters: Counters): void {
  app.get('/_bench/state', async () => {
    const cpu = process.cpuUsage()
    return { ...counters, rss: process.memoryUsage.rss(), cpuMicros: cpu.user + cpu.system }
  })
}

/** Listens on $PORT (loopback only), prints the ready line, and stops cleanly on SIGTERM/SIGINT. */
export async function serve(app: FastifyInstance, beforeReady?: () => Promise<void>): Promise<void> {
  const port = Number(process.env.PORT)
  if (!Number.isInteger(port) || port <= 0 || port === 3000) throw new Error(`bad PORT '${process.env.PORT}'`)
  let stopping = false
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      if (stopping) process.exit(1)
      stopping = true
      // Nothing here needs to outlive the run: never let a slow close hold the driver up.
      setTimeout(() => process.exit(0), 3_000).unref()
      app.close().then(
        () => process.exit(0),
        () => process.exit(1),
      )
    })
  }
  await app.listen({ port, host: '127.0.0.1' })
  await beforeReady?.()
  process.stdout.write(`${READY}\n`)
}
