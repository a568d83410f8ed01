import { setTimeout as sleep } from 'node:timers/promises'
import { Type } from '@sinclair/typebox'
import Fastify from 'fastify'
import { longrun } from 'longrun/fastify'
import { sqliteStore } from 'longrun/sqlite'

/** docs/realtime.md's example: a route whose progress clients stream, and a held route. */
export async function buildApp(dbPath = './data/realtime.db') {
  const app = Fastify()
  await app.register(longrun, {
    store: sqliteStore({ path: dbPath }),
    streamHeartbeat: '15s', // a comment line on idle streams, so that proxies keep them open
    maxStreamsPerCaller: 16, // streams and waits one caller may hold open (429 beyond)
    maxWait: '60s', // longest ?timeout= or Prefer: wait= honoured
  })

  app.longrun.route({
    url: '/exports',
    name: 'export',
    schema: { body: Type.Object({ rows: Type.Integer({ minimum: 1, maximum: 1_000 }) }) },
    sseGroup: 'exports', // GET /operations/events?group=exports streams every export the caller may read
    async handler(op) {
      for (let done = 0; done < op.input.rows; done += 10) {
        await op.progress((100 * done) / op.input.rows, `Row ${done}`)
        await sleep(20, undefined, { signal: op.signal })
      }
      return { rows: op.input.rows }
    },
  })

  // The request stays open until the work ends (qbm-http's async handlers): 200 with the result,
  // or, after 5 s, 408 with a Location to poll; a client that hangs up cancels the work.
  app.longrun.route({
    url: '/thumbnails',
    name: 'thumbnail',
    schema: { body: Type.Object({ ms: Type.Integer({ minimum: 0, maximum: 60_000 }) }) },
    hold: { timeout: '5s', onTimeout: 'timeout', cancelOnDisconnect: true },
    async handler(op) {
      await sleep(op.input.ms, undefined, { signal: op.signal })
      return { thumbnail: `/files/${op.id}.png` }
    },
  })
  return app
}
