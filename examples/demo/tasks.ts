import { setTimeout as sleep } from 'node:timers/promises'
import { Type } from '@sinclair/typebox'
import type { FastifyInstance } from 'fastify'
import { defineAsyncRoute, type AnyAsyncRoute } from 'longrun/http'

// The four demo tasks of the Node "async task system" seed, as async routes reporting named steps,
// all streamed by `GET /operations/events?group=demo.tasks`.

const Description = Type.Optional(Type.String({ maxLength: 500 }))
// Where the outcome is called back (docs/webhooks.md), as Pode's async routes read it.
const CallbackUrl = Type.Optional(Type.String({ minLength: 1, maxLength: 2048 }))

const SampleTask = Type.Object(
  {
    delayMs: Type.Integer({ minimum: 0, maximum: 600_000, default: 3_000 }),
    description: Description,
    callbackUrl: CallbackUrl,
    fail: Type.Boolean({ default: false }),
  },
  { additionalProperties: false },
)

const FileProcessingTask = Type.Object(
  {
    filePath: Type.String({ minLength: 1, maxLength: 4096 }),
    fileSize: Type.Integer({ minimum: 0 }),
    description: Description,
    callbackUrl: CallbackUrl,
  },
  { additionalProperties: false },
)

const ApiCallTask = Type.Object(
  {
    endpoint: Type.String({ minLength: 1, maxLength: 2048 }),
    data: Type.Optional(Type.Unknown()),
    description: Description,
    callbackUrl: CallbackUrl,
  },
  { additionalProperties: false },
)

const BatchTask = Type.Object(
  {
    items: Type.Array(Type.Unknown(), { minItems: 1, maxItems: 10_000 }),
    description: Description,
    callbackUrl: CallbackUrl,
  },
  { additionalProperties: false },
)

const FlakyTask = Type.Object(
  {
    failTimes: Type.Integer({ minimum: 0, maximum: 10, default: 2 }),
    description: Description,
    callbackUrl: CallbackUrl,
  },
  { additionalProperties: false },
)

const NoopTask = Type.Object(
  {
    delayMs: Type.Integer({ minimum: 0, maximum: 60_000, default: 0 }),
    callbackUrl: CallbackUrl,
  },
  { additionalProperties: false },
)

/** Sleeps that end early, with an AbortError, when the operation's signal aborts. */
const pause = (ms: number, signal: AbortSignal) => sleep(ms, undefined, { signal })

const prefix = '/api/v1/demo/tasks'

/** The demo's async routes: registered as routes by the API, defined as operations by workers. */
export const demoTasks: AnyAsyncRoute[] = [
  defineAsyncRoute({
    url: `${prefix}/sample`,
    name: 'demo.sample',
    sseGroup: 'demo.tasks',
    callback: { url: '$request.body#/callbackUrl', sendResult: true },
    schema: { body: SampleTask },
    async handler(op) {
      const { delayMs, fail } = op.input
      const steps = [
        ['Initializing', 'Setting up the task environment'],
        ['Processing Data', 'Analyzing input data and preparing output'],
        ['Generating Output', 'Writing the results'],
        ['Finalizing', 'Cleaning up'],
      ] as const
      for (const [i, [step, description]] of steps.entries()) {
        await op.progress(Math.round((i / steps.length) * 100), step, description)
        await pause(delayMs / steps.length, op.signal)
      }
      if (fail) throw new Error('The sample task was asked to fail')
      await op.progress(100, 'Completed', 'Sample task finished')
      return { message: 'Sample task completed', description: op.input.description ?? null, delayMs }
    },
  }),

  defineAsyncRoute({
    url: `${prefix}/file-processing`,
    name: 'demo.file-processing',
    sseGroup: 'demo.tasks',
    callback: { url: '$request.body#/callbackUrl', sendResult: true },
    schema: { body: FileProcessingTask },
    async handler(op) {
      const { filePath, fileSize } = op.input
      // Simulated: about 1 ms per KiB, between 0.5 s and 10 s in all.
      const perStep = Math.min(10_000, Math.max(500, fileSize / 1024)) / 4
      const steps = ['Validating file', 'Reading file', 'Processing content', 'Writing output']
      for (const [i, step] of steps.entries()) {
        await op.progress(Math.round((i / steps.length) * 100), step, `${step}: ${filePath}`)
        await pause(perStep, op.signal)
      }
      await op.progress(100, 'Completed', `Processed ${filePath}`)
      return { filePath, bytesProcessed: fileSize, lines: Math.ceil(fileSize / 80) }
    },
  }),

  defineAsyncRoute({
    url: `${prefix}/api-call`,
    name: 'demo.api-call',
    sseGroup: 'demo.tasks',
    callback: { url: '$request.body#/callbackUrl', sendResult: true },
    schema: { body: ApiCallTask },
    async handler(op) {
      const { endpoint, data } = op.input
      // Simulated: no network traffic leaves the demo.
      await op.progress(10, 'Preparing request', `Building the request to ${endpoint}`)
      await pause(300, op.signal)
      await op.progress(40, 'Sending request', `POST ${endpoint} (simulated)`)
      await pause(700, op.signal)
      await op.progress(80, 'Parsing response', 'Reading the simulated response')
      await pause(300, op.signal)
      await op.progress(100, 'Completed', 'API call finished')
      return { endpoint, status: 200, simulated: true, echo: data ?? null }
    },
  }),

  defineAsyncRoute({
    url: `${prefix}/batch`,
    name: 'demo.batch',
    sseGroup: 'demo.tasks',
    callback: { url: '$request.body#/callbackUrl', sendResult: true },
    schema: { body: BatchTask },
    async handler(op) {
      const { items } = op.input
      const processed: unknown[] = []
      for (const [i, item] of items.entries()) {
        await op.progress(Math.round((i / items.length) * 100), `Processing item ${i + 1} of ${items.length}`)
        await pause(200, op.signal)
        processed.push(item)
      }
      await op.progress(100, 'Completed', `Processed ${items.length} items`)
      return { processed: processed.length, items: processed }
    },
  }),

  defineAsyncRoute({
    url: `${prefix}/flaky`,
    name: 'demo.flaky',
    sseGroup: 'demo.tasks',
    callback: { url: '$request.body#/callbackUrl', sendResult: true },
    schema: { body: FlakyTask },
    // Watch it retry: attempts 1..failTimes fail, each followed by an exponential, jittered pause.
    retry: { attempts: 4, backoff: 'exponential', delay: '500ms', maxDelay: '5s' },
    async handler(op) {
      await op.progress(0, `Attempt ${op.attempt}`, `Will fail the first ${op.input.failTimes} attempts`)
      await pause(300, op.signal)
      if (op.attempt <= op.input.failTimes) {
        throw Object.assign(new Error(`Attempt ${op.attempt} failed on purpose`), { code: 'flaky' })
      }
      await op.progress(100, 'Completed', `Succeeded on attempt ${op.attempt}`)
      return { succeededOnAttempt: op.attempt }
    },
  }),

  defineAsyncRoute({
    url: `${prefix}/noop`,
    name: 'demo.noop',
    sseGroup: 'demo.tasks',
    callback: { url: '$request.body#/callbackUrl', sendResult: true },
    schema: { body: NoopTask },
    // Nothing to do but be stored, claimed and settled: what load and scale-out tests measure.
    concurrency: 20,
    async handler(op) {
      if (op.input.delayMs > 0) await pause(op.input.delayMs, op.signal)
      return { ok: true, attempt: op.attempt }
    },
  }),
]

export function registerDemoTasks(app: FastifyInstance): void {
  for (const task of demoTasks) app.longrun.route(task)
}
