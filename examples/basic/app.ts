import { setTimeout as sleep } from 'node:timers/promises'
import { Type } from '@sinclair/typebox'
import Fastify from 'fastify'
import { longrun } from 'longrun/fastify'
import { sqliteStore } from 'longrun/sqlite'

const ReportRequest = Type.Object({
  customer: Type.String({ minLength: 1 }),
  months: Type.Integer({ minimum: 1, maximum: 24 }),
})

/** The README's example: one async route on the embedded SQLite store. */
export async function buildApp(dbPath = './data/reports.db') {
  const app = Fastify()
  await app.register(longrun, { store: sqliteStore({ path: dbPath }) })

  app.longrun.route({
    method: 'POST',
    url: '/reports',
    name: 'report.generate',
    schema: { body: ReportRequest }, // validated before anything is stored
    concurrency: 4, // at most 4 running at once in this process
    timeout: '10m', // default 600 minutes; 'none' to disable
    async handler(op) {
      // op.input is typed from the schema: { customer: string; months: number }
      for (let month = 1; month <= op.input.months; month++) {
        await op.progress((100 * (month - 1)) / op.input.months, `Month ${month}`)
        await sleep(50, undefined, { signal: op.signal }) // stops early on cancel, timeout, shutdown
      }
      return { customer: op.input.customer, url: `/files/${op.id}.pdf` }
    },
  })
  return app
}
