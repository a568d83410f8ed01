// The second process of the query scenario's cleanup runs: submits operations with `engine.submit`
// (API-only engine, its own connection to BENCH_STORE's file) in a closed loop of BENCH_SUBMITTERS
// until its stdin closes, then prints when each submit was acknowledged (epoch ms) and how long it took.
import { performance } from 'node:perf_hooks'
import { Engine } from 'longrun'
import { envInt, openStore } from './common.js'
import { SUBMITTED, submitLoop } from './query-common.js'

const engine = new Engine({ store: await openStore(process.env.BENCH_STORE ?? 'memory'), worker: false })
engine.define({ name: SUBMITTED, handler: async () => undefined })
const loop = submitLoop(engine, envInt('BENCH_SUBMITTERS', 8), () => performance.timeOrigin + performance.now())
process.stdout.write('BENCH-READY\n')
process.stdin.resume()
await new Promise<void>((resolve) => process.stdin.once('end', () => resolve()))
const { acks, latencies, errors } = await loop.stop()
await engine.close()
process.stdout.write(`${JSON.stringify({ acks, latencies, errors })}\n`)
