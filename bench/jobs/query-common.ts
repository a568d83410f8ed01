import type { Engine } from 'longrun'
import { CUSTOMER_PREFIXES, CUSTOMERS_PER_PREFIX, OWNERS, ownerId, REGIONS } from '../lib/query-seed.js'
import { percentile } from './common.js'

/** The definition the submit loops use. */
export const SUBMITTED = 'report.generate'

export interface SubmitLog {
  /** When each submit was acknowledged, on the loop's clock (ms). */
  acks: number[]
  /** How long each took, ms, in the order of `acks`. */
  latencies: number[]
  errors: number
}

/**
 * `submitters` closed loops of `engine.submit('report.generate', ...)`, each awaiting its submit
 * before the next, with inputs and owners like the seeded ones. `stop()` ends them and answers the log.
 */
export function submitLoop(engine: Engine, submitters: number, clock: () => number) {
  const log: SubmitLog = { acks: [], latencies: [], errors: 0 }
  let running = true
  let n = 0
  const one = async () => {
    while (running) {
      const i = n++
      const input = {
        customer: `${CUSTOMER_PREFIXES[i % CUSTOMER_PREFIXES.length]}-${(i * 7919) % CUSTOMERS_PER_PREFIX}`,
        amount: 1 + (i % 1000),
        region: REGIONS[i % REGIONS.length],
      }
      const t = clock()
      try {
        await engine.submit(SUBMITTED, { input, owner: ownerId((i * 31) % OWNERS) })
        const at = clock()
        log.acks.push(at)
        log.latencies.push(at - t)
      } catch {
        log.errors++
      }
    }
  }
  const loops = Array.from({ length: submitters }, one)
  return {
    async stop(): Promise<SubmitLog> {
      running = false
      await Promise.all(loops)
      return log
    },
  }
}

/** Submits acknowledged in [from, to): per second, and their latency p50/p99 (ms). */
export function window(log: SubmitLog, from: number, to: number) {
  const latencies: number[] = []
  log.acks.forEach((at, i) => {
    if (at >= from && at < to) latencies.push(log.latencies[i]!)
  })
  latencies.sort((a, b) => a - b)
  return {
    perSec: latencies.length / ((to - from) / 1000),
    count: latencies.length,
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
  }
}
