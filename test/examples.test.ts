import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { buildApp } from '../examples/basic/app.js'

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
