import { connect, type Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildServer, type ServerOptions } from '../src/cli/server.js'
import { openStore } from '../src/cli/store-url.js'
import { options, routes, setup } from '../examples/demo/module.js'

// What Node's HTTP parser refuses before Fastify sees a request, and requests that come too slowly,
// over raw sockets against the server `longrun serve` builds: answered as problems, then closed.

interface RawAnswer {
  status: number
  headers: Record<string, string>
  body: string
  /** Milliseconds from the first byte sent until the server closed the connection. */
  closedAfterMs: number
}

/** Writes `chunks` (a function: writes them over time) and reads everything until the server closes. */
function raw(
  port: number,
  chunks: string | Buffer | ((socket: Socket) => void),
  timeoutMs = 10_000,
): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    const received: Buffer[] = []
    const started = Date.now()
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new Error(`the server did not close the connection within ${timeoutMs} ms`))
    }, timeoutMs)
    socket.on('data', (chunk: Buffer) => received.push(chunk))
    // The server may reset the connection once it has answered: what was received counts.
    socket.on('error', () => {})
    socket.once('close', () => {
      clearTimeout(timer)
      const text = Buffer.concat(received).toString('latin1')
      const [head = '', ...rest] = text.split('\r\n\r\n')
      const [statusLine = '', ...lines] = head.split('\r\n')
      const headers: Record<string, string> = {}
      for (const line of lines) {
        const colon = line.indexOf(':')
        headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
      }
      resolve({
        status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? 0),
        headers,
        body: rest.join('\r\n\r\n'),
        closedAfterMs: Date.now() - started,
      })
    })
    socket.once('connect', () => {
      if (typeof chunks === 'function') chunks(socket)
      else socket.write(chunks)
    })
  })
}

/** The stable code of each status these answers have. */
const CODES: Record<number, string> = { 400: 'bad-request', 408: 'request-timeout', 431: 'headers-too-large' }

function expectProblem(answer: RawAnswer, status: number, code = CODES[status]!) {
  expect(answer.status, answer.body).toBe(status)
  expect(answer.headers['content-type']).toMatch(/^application\/problem\+json(;|$)/)
  const problem = JSON.parse(answer.body)
  expect(problem).toMatchObject({ type: `urn:longrun:problem:${code}`, status, code })
  expect(typeof problem.detail).toBe('string')
  return problem
}

async function start(extra: Partial<ServerOptions> = {}): Promise<{ app: FastifyInstance; port: number }> {
  const store = await openStore('memory')
  const app = await buildServer({ store, logLevel: 'silent', ...extra }, { routes, options, setup })
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, port: Number(new URL(address).port) }
}

describe('requests Node cannot parse', () => {
  let server: { app: FastifyInstance; port: number }
  beforeAll(async () => {
    server = await start()
  })
  afterAll(() => server.app.close())

  const cases: [string, string, number][] = [
    ['a malformed request line', 'GET /operations HTTP/1.1 extra\r\nHost: x\r\n\r\n', 400],
    ['an unknown method token', 'G@T /operations HTTP/1.1\r\nHost: x\r\n\r\n', 400],
    ['an unknown HTTP version', 'GET /operations HTTP/7.1\r\nHost: x\r\n\r\n', 400],
    ['a control character in a header value', 'GET /operations HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n', 400],
    ['a space in a header name', 'GET /operations HTTP/1.1\r\nHost: x\r\nBad Name: b\r\n\r\n', 400],
    [
      'two different Content-Lengths',
      'POST /operations/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}',
      400,
    ],
    [
      'a negative Content-Length',
      'POST /operations/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: -1\r\n\r\n{}',
      400,
    ],
    [
      'both Content-Length and Transfer-Encoding',
      'POST /operations/query HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
      400,
    ],
    [
      'a malformed chunk size',
      'POST /operations/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n',
      400,
    ],
    ['a URL over the header size limit', `GET /operations?${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`, 431],
    ['headers over the size limit', `GET /operations HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(20_000)}\r\n\r\n`, 431],
    [
      'too many headers in all',
      `GET /operations HTTP/1.1\r\nHost: x\r\n${Array.from({ length: 400 }, (_, i) => `X-H${i}: ${'v'.repeat(50)}\r\n`).join('')}\r\n`,
      431,
    ],
  ]
  for (const [what, request, status] of cases) {
    it(`answers ${what} with a ${status} problem and closes`, async () => {
      const answer = await raw(server.port, request)
      expectProblem(answer, status)
      expect(answer.headers.connection).toBe('close')
      expect(Number(answer.headers['content-length'])).toBe(Buffer.byteLength(answer.body))
    })
  }

  it('answers a HEAD it cannot read without a body', async () => {
    const answer = await raw(
      server.port,
      `HEAD /operations HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(20_000)}\r\n\r\n`,
    )
    expect(answer.status).toBe(431)
    expect(answer.headers['content-type']).toBe('application/problem+json')
    expect(answer.body).toBe('')
  })

  it('answers a URL that is not valid percent-encoding with a bad-url problem', async () => {
    expectProblem(
      await raw(server.port, 'GET /operations/%E0%A4%A HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'),
      400,
      'bad-url',
    )
  })

  it('answers a malformed request after a good one on the same connection', async () => {
    const answer = await raw(server.port, 'GET /operations/cleanup HTTP/1.1\r\nHost: x\r\n\r\nG@T / HTTP/1.1\r\n\r\n')
    expect(answer.status).toBe(200)
    const second = answer.body.slice(answer.body.indexOf('HTTP/1.1 '))
    expect(second).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/)
    expect(second).toContain('Content-Type: application/problem+json')
  })
})

describe('slow clients', () => {
  // Short limits, so that the test is quick; the default ones are ten times as long or more.
  const headersTimeout = 500
  const requestTimeout = 1_000
  let server: { app: FastifyInstance; port: number }
  beforeAll(async () => {
    server = await start({ headersTimeout, requestTimeout })
  })
  afterAll(() => server.app.close())

  // Machines are noisy: only "well before Node's own 30 s check, and not before the limit" is asserted.
  it('cuts a client that sends its headers a byte at a time near headersTimeout, with a 408 problem', async () => {
    const answer = await raw(server.port, (socket) => {
      socket.write('GET /operations HTTP/1.1\r\nHost: x\r\n')
      const drip = setInterval(() => {
        if (socket.writable) socket.write('X-Slow: 1\r\n')
      }, 50)
      socket.once('close', () => clearInterval(drip))
    })
    expectProblem(answer, 408)
    expect(answer.closedAfterMs).toBeGreaterThanOrEqual(headersTimeout * 0.9)
    expect(answer.closedAfterMs).toBeLessThan(headersTimeout * 3)
  })

  it('cuts a client that sends its body a byte at a time near requestTimeout, with a 408 problem', async () => {
    const answer = await raw(server.port, (socket) => {
      socket.write(
        'POST /api/v1/demo/tasks/noop HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n',
      )
      const drip = setInterval(() => {
        if (socket.writable) socket.write(' ')
      }, 50)
      socket.once('close', () => clearInterval(drip))
    })
    expect(answer.closedAfterMs).toBeGreaterThanOrEqual(requestTimeout * 0.9)
    expect(answer.closedAfterMs).toBeLessThan(requestTimeout * 3)
    // Once Fastify reads the body, the answer is its own: a problem either way.
    expect([400, 408]).toContain(answer.status)
    expect(answer.headers['content-type']).toMatch(/^application\/problem\+json/)
  })

  it('refuses limits that Node cannot apply', async () => {
    const store = await openStore('memory')
    await expect(buildServer({ store, headersTimeout: 2_000, requestTimeout: 1_000 })).rejects.toMatchObject({
      code: 'invalid-option',
    })
    await expect(buildServer({ store, headersTimeout: 0 })).rejects.toMatchObject({ code: 'invalid-option' })
    await store.close()
  })
})
