import { createClient, OperationFailedError } from 'longrun/client'

// Submits a report to the README's example (examples/basic) and waits for it, showing progress.
const client = createClient({
  baseUrl: process.env.LONGRUN_URL ?? 'http://127.0.0.1:3000',
  headers: (): Record<string, string> =>
    process.env.LONGRUN_TOKEN ? { authorization: `Bearer ${process.env.LONGRUN_TOKEN}` } : {},
})

const op = await client.submit('/reports', { customer: 'ACME', months: 3 })
console.log('submitted:', op.id)
try {
  const result = await op.wait({
    timeout: 60_000,
    onProgress: (progress) => console.log(`progress: ${Math.round(progress.percent)}% ${progress.step ?? ''}`),
  })
  console.log('result:', result)
} catch (err) {
  if (err instanceof OperationFailedError) console.error('failed:', err.error?.code, err.error?.detail)
  throw err
}
