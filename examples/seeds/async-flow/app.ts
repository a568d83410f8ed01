import { setTimeout as sleep } from 'node:timers/promises'
import { Type, type Static, type TObject } from '@sinclair/typebox'
import Fastify, { type FastifyInstance } from 'fastify'
import type { Duration, Store } from 'longrun'
import { longrun } from 'longrun/fastify'

/**
 * AsyncFlow (seed 004) on longrun: `mapFlow(app, "data", job)` is `app.MapFlow<Job, Req, Res>("data")`,
 * and mounts the five endpoints AsyncFlow creates, in AsyncFlow's shapes. See README.md.
 */

/** AsyncFlow's `ProgressData`, what a job reports through its `IProgress<ProgressData>`. */
export interface ProgressData {
  progress: string
  percentage: number
}

/** AsyncFlow's `IProgress<ProgressData>`; `report` may be awaited, so that a job can pace itself. */
export interface Progress {
  report(value: ProgressData): Promise<void>
}

/** AsyncFlow's `IAsyncFlow<TRequest, TResponse>.ProcessAsync(request, progress, cancellationToken)`. */
export type AsyncFlowJob<Request, Response> = (
  request: Request,
  progress: Progress,
  signal: AbortSignal,
) => Promise<Response>

/** AsyncFlow's `AsyncFlowEndpointConfigurator`: what a flow may change about how its jobs run. */
export interface FlowConfiguration {
  /** Longest run of one job. @default '10m' */
  timeout?: Duration
  /** Jobs of this flow running at once in this process. @default 4 */
  concurrency?: number
}

// Hangfire's state names, which AsyncFlow's status endpoint reports (the seed shows "Processing").
const STATES = {
  queued: 'Enqueued',
  running: 'Processing',
  succeeded: 'Succeeded',
  failed: 'Failed',
  canceled: 'Canceled',
} as const

// The seed's times read "2023-08-14T15:30:45Z": ISO 8601 UTC to the second.
const seconds = (iso: string) => iso.replace(/\.\d{3}Z$/, 'Z')

/**
 * `app.MapFlow<Job, Request, Response>(flowName, configurator)`: the enqueue endpoint
 * `POST /{flowName}` and the status, result, error and delete endpoints under `/{flowName}/{jobId}`.
 */
export function mapFlow<S extends TObject, Response>(
  app: FastifyInstance,
  flowName: string,
  flow: { request: S; job: AsyncFlowJob<Static<S>, Response> },
  configuration: FlowConfiguration = {},
): void {
  const id = { in: 'path', name: 'jobId' } as const
  // Each flow's endpoints serve only its own jobs, as AsyncFlow's do.
  const route = `flow.${flowName}`
  app.longrun.route({
    url: `/${flowName}`,
    name: route,
    schema: { body: flow.request },
    timeout: configuration.timeout ?? '10m',
    concurrency: configuration.concurrency ?? 4,
    states: STATES,
    // The enqueue endpoint's answer: { RequestId, DateTime }.
    present: (job) => ({ RequestId: job.id, DateTime: seconds(job.createdAt) }),
    async handler(op) {
      const progress: Progress = {
        report: ({ progress: step, percentage }) => op.progress(percentage, step),
      }
      return flow.job(op.input as Static<S>, progress, op.signal)
    },
  })
  app.longrun.operationRoute({
    action: 'status',
    url: `/${flowName}/:jobId/status`,
    id,
    route,
    states: STATES,
    present: (job) => ({
      RequestId: job.id,
      Status: job.state,
      CreatedAt: seconds(job.createdAt),
      progressData: { progress: job.progress.step ?? null, percentage: job.progress.percent },
    }),
  })
  app.longrun.operationRoute({ action: 'result', url: `/${flowName}/:jobId/result`, id, route })
  app.longrun.operationRoute({
    action: 'error',
    url: `/${flowName}/:jobId/error`,
    id,
    route,
    present: (job) => ({
      JobId: job.id,
      Error: {
        // The thrown error's class name (its `name`), as .NET's exception type.
        Type: job.error?.title ?? null,
        Message: job.error?.detail ?? job.error?.message ?? null,
        StackTrace: job.error?.stack ?? null,
      },
    }),
  })
  app.longrun.operationRoute({ action: 'delete', method: 'DELETE', url: `/${flowName}/:jobId`, id, route })
}

/** What a job throws: its name is the error endpoint's `Type`. */
export class DataGenerationException extends Error {
  override name = 'DataGenerationException'
}
export class ReportGenerationException extends Error {
  override name = 'ReportGenerationException'
}

// `"fail": true` makes either flow fail at its end, after all its progress.
export const GenerateDataRequest = Type.Object({
  count: Type.Integer({ minimum: 1, maximum: 1_000, default: 5 }),
  delayMs: Type.Integer({ minimum: 0, maximum: 60_000, default: 50 }),
  fail: Type.Optional(Type.Boolean()),
})

/** The seed's `GenerateDataJob`. */
export const generateData: AsyncFlowJob<Static<typeof GenerateDataRequest>, { items: string[] }> = async (
  request,
  progress,
  signal,
) => {
  const items: string[] = []
  for (let i = 0; i < request.count; i++) {
    await progress.report({ progress: 'Generating Data', percentage: Math.round((100 * i) / request.count) })
    await sleep(request.delayMs, undefined, { signal })
    items.push(`item-${i + 1}`)
  }
  await progress.report({ progress: 'Generating Data', percentage: 100 })
  if (request.fail) throw new DataGenerationException(`Data generation failed after ${request.count} items`)
  return { items }
}

export const GenerateReportRequest = Type.Object({
  title: Type.String({ minLength: 1, maxLength: 200 }),
  sections: Type.Integer({ minimum: 1, maximum: 50, default: 3 }),
  delayMs: Type.Integer({ minimum: 0, maximum: 60_000, default: 50 }),
  fail: Type.Optional(Type.Boolean()),
})

/** A second flow, with request and response types of its own. */
export const generateReport: AsyncFlowJob<
  Static<typeof GenerateReportRequest>,
  { title: string; sections: string[] }
> = async (request, progress, signal) => {
  const sections: string[] = []
  for (let i = 1; i <= request.sections; i++) {
    await progress.report({
      progress: `Writing section ${i}`,
      percentage: Math.round((100 * (i - 1)) / request.sections),
    })
    await sleep(request.delayMs, undefined, { signal })
    sections.push(`${request.title}, section ${i}`)
  }
  await progress.report({ progress: 'Done', percentage: 100 })
  if (request.fail) throw new ReportGenerationException(`Report '${request.title}' could not be generated`)
  return { title: request.title, sections }
}

export interface AsyncFlowAppOptions {
  store: Store
  logLevel?: string
}

export async function buildApp(options: AsyncFlowAppOptions) {
  const app = Fastify({ logger: { level: options.logLevel ?? 'info' } })
  await app.register(longrun, {
    store: options.store,
    // AsyncFlow's error endpoint shows the stack trace.
    exposeStack: true,
  })
  mapFlow(app, 'data', { request: GenerateDataRequest, job: generateData })
  mapFlow(app, 'report', { request: GenerateReportRequest, job: generateReport }, { timeout: '2m', concurrency: 2 })
  return app
}
