// Latency: operations one after the other, each submitted with engine.submit and awaited until
// settled (see LatencyProbe for counts and bounds). Times, from just before engine.submit: the
// handler starting, and the `operation:settled` event (state succeeded).
import { Engine } from 'longrun'
import { envInt, LatencyProbe, openStore, report } from './common.js'

const probe = new LatencyProbe()
const engine = new Engine({ store: await openStore(process.env.BENCH_STORE ?? 'memory') })
engine.define({
  name: 'noop',
  concurrency: envInt('BENCH_CONCURRENCY', 50),
  handler: async () => probe.started(),
})
engine.on('operation:settled', (op) => probe.settled(op.state === 'succeeded'))
engine.start()

const result = await probe.run((i) => engine.submit('noop', { input: { i } }))
await engine.close()
report(result)
