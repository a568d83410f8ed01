import { azurePoller } from './poller.js'

// Against the README's example (examples/basic/main.ts) or any longrun app serving POST /reports.
const base = process.env.LONGRUN_URL ?? 'http://127.0.0.1:3000'
const poller = azurePoller<{ customer: string; url: string }>(base, '/reports', { customer: 'ACME', months: 3 })
poller.onProgress((state) => console.log('status:', state.status))
console.log('result:', await poller.pollUntilDone())
