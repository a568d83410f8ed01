import { request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { join } from 'node:path'
import fc from 'fast-check'
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildServer } from '../src/cli/server.js'
import { openStore } from '../src/cli/store-url.js'
import { checkJsonLimits, JSON_LIMITS, retryFilterOf } from '../src/http/limits.js'
import { options, routes, setup } from '../examples/demo/module.js'
import { tempDir } from './helpers/http.js'

// Hostile requests against the demo over a real socket, on the SQLite store: whatever is sent,
// never a 5xx, never a hang, and every 4xx a problem. Seeded and reproducible: a failure prints the
// seed, and FUZZ_SEED=<seed> replays the same requests. FUZZ_RUNS scales the number of requests.
// Under CI the seed is fixed, so that a run is the same requests every time; elsewhere each run
// explores new ones.

const CI_SEED = 20_261_203
const SEED = process.env.FUZZ_SEED
  ? Number(process.env.FUZZ_SEED)
  : process.env.CI === 'true'
    ? CI_SEED
    : Date.now() % 2 ** 31
const RUNS = process.env.FUZZ_RUNS ? Number(process.env.FUZZ_RUNS) : 1
// Longest any request may take: the server's waits are capped below, streams are cut after their head.
const REQUEST_TIMEOUT_MS = 10_000
const CONCURRENCY = 4

const TASKS = '/api/v1/demo/tasks'
const OPS = '/operations'

interface FuzzRequest {
  method: string
  path: string
  headers: Record<string, string | string[]>
  body?: string
}

interface Answer {
  status: number
  headers: IncomingHttpHeaders
  text: string
}

/** Sends one request; resolves with the status and body (a stream's first bytes only), or rejects on a hang. */
function send(base: URL, req: FuzzRequest): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const client = httpRequest(
      { host: base.hostname, port: base.port, method: req.method, path: req.path, headers: req.headers, agent: false },
      (res) => {
        const chunks: Buffer[] = []
        const stream = String(res.headers['content-type'] ?? '').startsWith('text/event-stream')
        res.on('data', (chunk: Buffer) => {
          chunks.push(chunk)
          // An event stream stays open: its head and first bytes are the answer.
          if (stream) res.destroy()
        })
        const done = () => {
          clearTimeout(timer)
          resolve({ status: res.statusCode!, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') })
        }
        res.once('end', done)
        res.once('close', done)
        if (stream && req.method !== 'HEAD') setTimeout(() => res.destroy(), 200).unref()
      },
    )
    const timer = setTimeout(() => {
      client.destroy()
      reject(new Error(`no answer within ${REQUEST_TIMEOUT_MS} ms`))
    }, REQUEST_TIMEOUT_MS)
    client.once('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    client.end(req.body)
  })
}

/** What is wrong with an answer: a 5xx, or a 4xx that is not a problem. `undefined`: nothing. */
function fault(req: FuzzRequest, answer: Answer): string | undefined {
  if (answer.status >= 500) return `${answer.status}: ${answer.text.slice(0, 300)}`
  if (answer.status < 400) return undefined
  const type = String(answer.headers['content-type'] ?? '')
  // A problem in the format the client accepts; JSON unless it asked for XML or YAML.
  const format = /^application\/problem\+(json|xml|yaml)\b/.exec(type)?.[1]
  if (!format) return `${answer.status} as '${type}': ${answer.text.slice(0, 200)}`
  if (format !== 'json' && !/(xml|yaml)/.test(String(req.headers.accept))) return `${answer.status} as ${type} unasked`
  if (req.method === 'HEAD') return undefined
  if (format === 'xml')
    return /<type>urn:longrun:problem:[a-z-]+<\/type>/.test(answer.text) ? undefined : 'XML problem without a type'
  if (format === 'yaml')
    return /^type: urn:longrun:problem:[a-z-]+$/m.test(answer.text) ? undefined : 'YAML problem without a type'
  try {
    const problem = JSON.parse(answer.text) as { type?: unknown; status?: unknown }
    if (typeof problem.type !== 'string') return `${answer.status} problem without a type: ${answer.text.slice(0, 200)}`
    if (problem.status !== answer.status) return `${answer.status} problem saying status ${String(problem.status)}`
  } catch {
    return `${answer.status} problem that is not JSON: ${answer.text.slice(0, 200)}`
  }
  return undefined
}

// ---- The hostile parts of a request ------------------------------------------------------------

const deep = (depth: number, open: string, close: string, inner = '0') =>
  open.repeat(depth) + inner + close.repeat(depth)

/** JSON texts meant to break whatever reads them deeply or widely. */
const hostileJson: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(10, 65, 200, 1_000, 5_000, 50_000).map((d) => deep(d, '[', ']')),
  fc.constantFrom(65, 1_000, 5_000, 20_000).map((d) => deep(d, '{"a":', '}')),
  fc.constantFrom(1_000, 100_001, 150_000).map((n) => `[${'0,'.repeat(n - 1)}0]`),
  fc.constantFrom(50_000, 120_000).map((n) => `{${Array.from({ length: n }, (_, i) => `"k${i}":1`).join(',')}}`),
  fc.constantFrom(
    '"\\ud800"',
    '"a\\udfffb"',
    '{"\\udc00":1}',
    '["\\ud83d\\ude00"]',
    '{"__proto__":{"polluted":true}}',
    '{"constructor":{"prototype":{"polluted":true}}}',
    '{"toString":1,"valueOf":{},"hasOwnProperty":null}',
    '1e309',
    '-1e309',
    '123456789012345678901234567890',
    '0.0000000000000000000000000000001',
    '-0',
    'null',
    'true',
    '""',
    '[]',
    '{}',
  ),
  fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v)),
)

/** A JSON member value: hostile, or plausible. */
const memberJson: fc.Arbitrary<string> = fc.oneof(
  hostileJson,
  fc.constantFrom('0', '1', '-1', '10000', '10001', '"failed"', '"canceled"', '"demo.flaky"', '["failed"]', '"x"'),
)

const TASK_FIELDS = [
  'delayMs',
  'description',
  'callbackUrl',
  'fail',
  'filePath',
  'fileSize',
  'endpoint',
  'data',
  'items',
]
const QUERY_FIELDS = ['state', 'name', 'input.delayMs', 'input.data.x', 'createdAt', 'owner', 'sseGroup', 'x', '']
const RETRY_FIELDS = ['state', 'name', 'limit', '__proto__', 'constructor', 'states']

const objectOf = (fields: string[]) =>
  fc
    .uniqueArray(fc.tuple(fc.constantFrom(...fields), memberJson), { maxLength: 4, selector: ([key]) => key })
    .map((members) => `{${members.map(([key, value]) => `${JSON.stringify(key)}:${value}`).join(',')}}`)

const conditionJson = fc
  .uniqueArray(
    fc.tuple(
      fc.constantFrom(...QUERY_FIELDS),
      fc.constantFrom('eq', 'ne', 'gt', 'LIKE', 'notlike', 'in', 'toString', '__proto__'),
      memberJson,
    ),
    { maxLength: 3, selector: ([field]) => field },
  )
  .map(
    (conditions) =>
      `{${conditions.map(([field, op, value]) => `${JSON.stringify(field)}:{"op":"${op}","value":${value}}`).join(',')}}`,
  )

/**
 * Bodies that pass the route's schema but for one hostile value `$` where the schema lets anything
 * through (`data`, `items`) or checks only the type (strings): what reaches the code behind it.
 */
const SLOTS: Record<string, string[]> = {
  sample: ['{"delayMs":0,"description":$}', '{"delayMs":$}', '{"delayMs":0,"fail":$}', '{"delayMs":0,"callbackUrl":$}'],
  'file-processing': ['{"filePath":$,"fileSize":1}', '{"filePath":"/tmp/a","fileSize":$}'],
  'api-call': ['{"endpoint":"https://example.com","data":$}', '{"endpoint":$}', '{"endpoint":"x","data":{"a":[$]}}'],
  batch: ['{"items":[$]}', '{"items":$}', '{"items":[1,$,{"k":$}]}'],
  flaky: ['{"failTimes":$}', '{"failTimes":0,"description":$}'],
  noop: ['{"delayMs":0,"callbackUrl":$}', '{"delayMs":$}'],
  query: [
    '{"input.data":{"op":"eq","value":$}}',
    '{"name":{"op":"like","value":$}}',
    '{"name":{"op":$,"value":"x"}}',
    '{"state":$}',
    '{"input.description":{"op":"ne","value":$},"state":{"op":"eq","value":"failed"}}',
  ],
  retry: ['{"state":$}', '{"name":$}', '{"limit":$}', '{"state":["failed",$]}', '{"state":"failed","name":$}'],
}

/** `n` conditions on as many fields, as a query body and as a query string. */
const manyConditions = (n: number) =>
  `{${Array.from({ length: n }, (_, i) => `"input.a${i}":{"op":"eq","value":1}`).join(',')}}`
const manyParameters = (n: number) => '?' + Array.from({ length: n }, (_, i) => `input.a${i}=1`).join('&')

/** Hostile strings and values for a slot, as JSON text. */
const slotValue = fc.oneof(
  hostileJson,
  fc.constantFrom('"\\ud800"', '"x\\udbff"', `"${'a'.repeat(600)}"`, '"https://example.com/\\ud800"', '{"toString":1}'),
)

/** Bodies, mostly JSON; some not JSON at all. */
const body = (kind: string): fc.Arbitrary<string | undefined> =>
  fc.oneof(
    {
      weight: SLOTS[kind] ? 6 : 0,
      arbitrary: fc
        .tuple(fc.constantFrom(...(SLOTS[kind] ?? ['$'])), slotValue)
        .map(([slot, value]) => slot.replaceAll('$', value)),
    },
    {
      weight: 2,
      arbitrary: kind === 'query' ? conditionJson : objectOf(kind === 'retry' ? RETRY_FIELDS : TASK_FIELDS),
    },
    { weight: kind === 'query' ? 1 : 0, arbitrary: fc.constantFrom(100, 1_000, 5_000).map(manyConditions) },
    { weight: 1, arbitrary: hostileJson },
    { weight: 1, arbitrary: fc.constantFrom(undefined, '', '{', '{"a":1,}', "{'a':1}", '\u0000', 'nul', '[1,2') },
    { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 64 }) },
  )

/** Path segments and query values as a hostile client writes them, already in URL form. */
const urlText = fc.oneof(
  fc.constantFrom(
    '%ED%A0%80', // a surrogate, UTF-8-encoded: invalid UTF-8
    '%FF%FE',
    '%ZZ',
    '%',
    '%00',
    '%2F',
    '..',
    '%2e%2e',
    '__proto__',
    'constructor',
    'toString',
    '',
    'x'.repeat(101),
    'a'.repeat(5_000),
    '%F0%9F%98%80',
    '-1',
    '1e999',
    '0x10',
    'NaN',
    "'",
    '"',
    '<script>',
    '*',
    '[]',
  ),
  fc.string({ maxLength: 20 }).map((s) => encodeURIComponent(s)),
  fc.stringMatching(/^[A-Za-z0-9._~-]{1,40}$/),
)

const query = fc
  .array(
    fc.tuple(
      fc.oneof(
        fc.constantFrom(
          'state',
          'name',
          'limit',
          'cursor',
          'sort',
          'timeout',
          'group',
          'input.delayMs',
          'input.data.x[gt]',
          'createdAt[ge]',
          'state[like]',
          'sseGroup',
          'a[b][c]',
          '__proto__',
          'constructor',
          'hasOwnProperty',
          'lastEventId',
        ),
        urlText,
      ),
      urlText,
    ),
    { maxLength: 4 },
  )
  .map((pairs) => (pairs.length === 0 ? '' : '?' + pairs.map(([k, v]) => `${k}=${v}`).join('&')))

/** Header values: visible ASCII and Latin-1 (what an HTTP client can send at all), hostile ones first. */
const headerText = fc.oneof(
  fc.constantFrom('', ' ', '*', 'x'.repeat(4_000), '\u00ff\u00fe', 'null', '-1', '1e999', 'W/"x", "y"', ',,,,'),
  fc.string({ maxLength: 40 }).map((s) => s.replace(/[^\t\x20-\x7e]/g, '')),
)

const headers = fc
  .record(
    {
      accept: fc.oneof(
        fc.constantFrom(
          'application/json',
          'application/xml',
          'application/yaml',
          'text/event-stream',
          'text/html',
          '*/*;q=garbage',
          'application/*;q=0, */*;q=0',
          'application/json;q=2',
          ';;;',
        ),
        headerText,
      ),
      prefer: fc.oneof(
        fc.constantFrom(
          'wait=1',
          'wait=0',
          'wait=-1',
          'wait=1e999',
          'wait=abc',
          'respond-async',
          'respond-async, wait=1',
          'wait',
        ),
        headerText,
      ),
      'if-none-match': fc.oneof(fc.constantFrom('*', '"x"', 'W/"x"', '"', 'W/'), headerText),
      'idempotency-key': fc.oneof(
        fc.constantFrom('k1', 'k2', 'x'.repeat(256), '\u00e9', ''),
        fc.constant<string[]>(['k1', 'k2']),
        headerText,
      ),
      'content-type': fc.oneof(
        { weight: 6, arbitrary: fc.constant('application/json') },
        fc.constantFrom(
          'application/json',
          'application/json; charset=utf-8',
          'application/json; charset=utf-16',
          'application/merge-patch+json',
          'text/plain',
          'application/x-www-form-urlencoded',
          'multipart/form-data; boundary=x',
          'application/xml',
          'application/json;;',
          'json',
        ),
        headerText,
      ),
      'x-session-key': fc.oneof({ weight: 6, arbitrary: fc.constant('fuzz') }, fc.constant('other'), headerText),
      'last-event-id': headerText,
      origin: fc.constantFrom('https://example.com', 'null'),
    },
    { requiredKeys: [] },
  )
  // Each header half the time, the session key and the content type most of the time.
  .chain((all) =>
    fc.record(
      Object.fromEntries(
        Object.entries(all).map(([name, value]) => [
          name,
          fc.option(fc.constant(value), {
            nil: undefined,
            freq: name === 'x-session-key' || name === 'content-type' ? 8 : 2,
          }),
        ]),
      ),
    ),
  )
  .map(
    (picked) =>
      Object.fromEntries(Object.entries(picked).filter(([, value]) => value !== undefined)) as Record<
        string,
        string | string[]
      >,
  )

/** The routes of the demo, with a place for an id. */
const ROUTES: { method: string; path: (id: string) => string; body: string }[] = [
  ...['sample', 'file-processing', 'api-call', 'batch', 'flaky', 'noop', 'nope'].map((task) => ({
    method: 'POST',
    path: () => `${TASKS}/${task}`,
    body: task,
  })),
  { method: 'GET', path: () => OPS, body: 'any' },
  { method: 'GET', path: () => `${OPS}/stats`, body: 'any' },
  { method: 'POST', path: () => `${OPS}/query`, body: 'query' },
  { method: 'GET', path: () => `${OPS}/cleanup`, body: 'any' },
  { method: 'POST', path: () => `${OPS}/cleanup`, body: 'any' },
  { method: 'GET', path: () => `${OPS}/events`, body: 'any' },
  { method: 'POST', path: () => `${OPS}/retry`, body: 'retry' },
  ...['', '/events', '/wait', '/result', '/error', '/deliveries'].map((suffix) => ({
    method: 'GET',
    path: (id: string) => `${OPS}/${id}${suffix}`,
    body: 'any',
  })),
  ...['/cancel', '/retry', '/start', '/deliveries/retry'].map((suffix) => ({
    method: 'POST',
    path: (id: string) => `${OPS}/${id}${suffix}`,
    body: 'any',
  })),
  { method: 'DELETE', path: (id: string) => `${OPS}/${id}`, body: 'any' },
  { method: 'GET', path: () => '/', body: 'any' },
  { method: 'GET', path: () => '/docs', body: 'any' },
  { method: 'GET', path: () => '/docs/openapi.json', body: 'any' },
  { method: 'GET', path: (id: string) => `/${id}`, body: 'any' },
]

const METHODS = ['GET', 'POST', 'DELETE', 'HEAD', 'PUT', 'PATCH', 'OPTIONS']

function requests(ids: string[]): fc.Arbitrary<FuzzRequest> {
  const id = fc.oneof({ weight: 2, arbitrary: fc.constantFrom(...ids) }, urlText)
  return fc
    .integer({ min: 0, max: ROUTES.length - 1 })
    .chain((index) => {
      const route = ROUTES[index]!
      return fc.record({
        method: fc.oneof(
          { weight: 9, arbitrary: fc.constant(route.method) },
          { weight: 1, arbitrary: fc.constantFrom(...METHODS) },
        ),
        path: fc
          .tuple(id, fc.oneof(fc.constant(''), query, fc.constantFrom(100, 1_000).map(manyParameters)))
          .map(([i, q]) => route.path(i) + q),
        headers,
        body: body(route.body),
      })
    })
    .map((req) => {
      const noBody = req.body === undefined || req.method === 'GET' || req.method === 'HEAD'
      const sent: FuzzRequest = { method: req.method, path: req.path, headers: { ...req.headers } }
      if (!noBody) {
        sent.body = req.body
        // Framed, whatever the method: Node sends a DELETE's body unframed otherwise, a parser error.
        sent.headers['content-length'] = String(Buffer.byteLength(req.body!))
      }
      // Most bodies say they are JSON, as a client that means it would.
      if (!noBody && sent.headers['content-type'] === undefined) sent.headers['content-type'] = 'application/json'
      return sent
    })
}

describe('JSON limits', () => {
  const nested = (depth: number) => JSON.parse(deep(depth - 1, '[', ']', '[]'))
  const refusal = (value: unknown, where: 'body' | 'params' | 'querystring' = 'body') => {
    try {
      checkJsonLimits(value, where)
      return undefined
    } catch (err) {
      return err as { code: string; status: number; message: string; extra: { path: string } }
    }
  }

  it('admits 64 levels of nesting and refuses 65, without recursing', () => {
    expect(refusal(nested(JSON_LIMITS.maxDepth))).toBeUndefined()
    expect(refusal(nested(JSON_LIMITS.maxDepth + 1))).toMatchObject({ code: 'invalid-body', status: 422 })
    expect(refusal(nested(500_000))?.message).toMatch(/nested deeper than 64/)
    expect(refusal({ a: nested(65) }, 'querystring')).toMatchObject({ code: 'invalid-querystring', status: 400 })
  })

  it('refuses more than 100,000 values, however wide', () => {
    expect(refusal(new Array(JSON_LIMITS.maxNodes - 1).fill(0))).toBeUndefined()
    expect(refusal(new Array(JSON_LIMITS.maxNodes).fill(0))?.message).toMatch(/more than 100000 JSON values/)
    expect(refusal([new Array(60_000).fill(0), new Array(60_000).fill(0)])?.code).toBe('invalid-body')
  })

  it('refuses lone surrogates in strings and member names, and takes pairs', () => {
    expect(refusal({ text: 'emoji \ud83d\ude00' })).toBeUndefined()
    expect(refusal({ a: ['x', 'bad \ud800'] })).toMatchObject({ code: 'invalid-body', extra: { path: '/a/1' } })
    expect(refusal({ a: { '\udfff': 1 } })).toMatchObject({ extra: { path: '/a' } })
    expect(refusal('\ud83d', 'params')).toMatchObject({ code: 'invalid-params' })
  })

  it('reads the bulk-retry body by its schema', () => {
    expect(retryFilterOf(undefined)).toEqual({})
    expect(retryFilterOf({ state: ['failed'], name: 'x', limit: 5 })).toEqual({
      state: ['failed'],
      name: 'x',
      limit: 5,
    })
    for (const body of [
      { state: { toString: 1 } },
      { state: [['failed']] },
      { states: 'failed' },
      { limit: Number.POSITIVE_INFINITY }, // what JSON.parse makes of 1e400
      { limit: '5' },
      { name: 7 },
      [],
      'failed',
    ]) {
      expect(() => retryFilterOf(body), JSON.stringify(body)).toThrow(expect.objectContaining({ code: 'invalid-body' }))
    }
  })
})

describe('the demo under hostile requests (seeded fuzzing)', () => {
  const dir = tempDir('longrun-fuzz-')
  let app: FastifyInstance
  let base: URL
  const ids: string[] = []

  beforeAll(async () => {
    const store = await openStore(`sqlite:${join(dir.path, 'fuzz.db')}`)
    // Waits capped at 100 ms: a request that waits is not a hang, and thousands of them stay fast.
    app = await buildServer(
      { store, logLevel: process.env.FUZZ_LOG ?? 'silent', maxWait: '100ms' },
      { routes, options, setup },
    )
    base = new URL(await app.listen({ port: 0, host: '127.0.0.1' }))
    // Real operations to aim at: done, failed and running ones.
    for (const [task, input] of [
      ['noop', { delayMs: 0 }],
      ['sample', { delayMs: 0, fail: true }],
      ['sample', { delayMs: 60_000 }],
    ] as const) {
      const res = await send(base, {
        method: 'POST',
        path: `${TASKS}/${task}`,
        headers: { 'content-type': 'application/json', 'x-session-key': 'fuzz' },
        body: JSON.stringify(input),
      })
      expect(res.status, res.text).toBe(202)
      ids.push((JSON.parse(res.text) as { id: string }).id)
    }
    console.log(`fuzz seed ${SEED} (replay: FUZZ_SEED=${SEED} npx vitest run test/fuzz.test.ts)`)
  })
  afterAll(async () => {
    await app?.close()
    dir.remove()
  })

  it('answers every request below 500, in time, with a problem for every 4xx', async () => {
    const started = Date.now()
    const count = 2_000 * RUNS
    const all = fc.sample(requests(ids), { seed: SEED, numRuns: count })
    const faults = new Map<string, { req: FuzzRequest; why: string; times: number }>()
    const statuses = new Map<number, number>()
    let next = 0
    const worker = async () => {
      while (next < all.length) {
        const req = all[next++]!
        let why: string | undefined
        try {
          const answer = await send(base, req)
          statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1)
          why = fault(req, answer)
        } catch (err) {
          // The client itself refused to send it (a header Node will not write): not the server's doing.
          if ((err as { code?: string }).code?.startsWith('ERR_')) continue
          why = String(err)
        }
        if (why === undefined) continue
        // One entry per kind of fault and route, with the first request that showed it.
        const key = `${req.method} ${req.path.split('?')[0]!.replace(/[^/]{20,}/g, '<long>')} ${why.slice(0, 80)}`
        const seen = faults.get(key)
        if (seen) seen.times++
        else faults.set(key, { req, why, times: 1 })
      }
    }
    await Promise.all(Array.from({ length: CONCURRENCY }, worker))
    console.log(
      `fuzz seed ${SEED}: ${count} requests in ${Date.now() - started} ms, statuses ${JSON.stringify(Object.fromEntries(statuses))}`,
    )
    const report = [...faults.values()].map(
      ({ req, why, times }) =>
        `${times}x ${why}\n   ${req.method} ${req.path.slice(0, 200)} ${JSON.stringify(req.headers).slice(0, 300)}\n   body: ${String(req.body).slice(0, 200)}`,
    )
    expect(report, `seed ${SEED}`).toEqual([])
  }, 120_000)
})
