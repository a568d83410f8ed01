import { setTimeout as sleep } from 'node:timers/promises'
import { Type } from '@sinclair/typebox'
import Fastify, { type FastifyServerOptions } from 'fastify'
import type { OperationContext, Store } from 'longrun'
import { openStore, storeUrl } from 'longrun/cli'
import { longrun, sessionAuth, type PresentedResource } from 'longrun/fastify'

// The Node "async task system" (seed 001) on longrun: its URLs, bodies, state names and envelope,
// with longrun's durable store in place of its in-memory one. README.md maps the seed to longrun.

/** The seed's names for longrun's states. */
const states = { queued: 'pending', succeeded: 'completed', canceled: 'cancelled' } as const

/** Epoch milliseconds, as the seed's times are; `null` for none. */
const epoch = (iso: string | null) => (iso === null ? null : Date.parse(iso))

/** A task as the seed shows it in lists and envelopes: a demo task by its title, a created one by its name. */
const taskView = (task: PresentedResource) => ({
  id: task.id,
  name: TITLES.get(task.name) ?? (task.input as { name?: string }).name ?? task.name,
  status: task.state,
  progress: task.progress.percent,
  sessionKey: task.owner,
  createdAt: epoch(task.createdAt),
  startedAt: epoch(task.startedAt),
  completedAt: epoch(task.completedAt),
})

/** The seed's log lines: start, each progress, end, with the caller's session. */
async function execute(
  op: OperationContext<unknown, unknown, Record<string, string>, Record<string, unknown>>,
  steps: readonly (readonly [step: string, description: string])[],
  stepMs: number,
  fail = false,
): Promise<{ steps: number }> {
  const session = op.user?.id ?? 'anonymous'
  op.log.info(`Starting execution of task ${op.id} for session ${session}`)
  for (const [i, [step, description]] of steps.entries()) {
    const percent = Math.round((i / steps.length) * 100)
    await op.progress(percent, step, description)
    op.log.debug(`Task ${op.id} progress: ${percent}%`)
    await sleep(stepMs, undefined, { signal: op.signal })
  }
  if (fail) throw new Error('The task was asked to fail')
  await op.progress(100, 'Completed', 'All steps done')
  op.log.debug(`Task ${op.id} progress: 100%`)
  op.log.info(`Completed execution of task ${op.id} for session ${session}`)
  return { steps: steps.length }
}

const Description = Type.Optional(Type.String({ maxLength: 500 }))
const Fail = Type.Optional(Type.Boolean())

/** The four demo tasks: URL, display name, body, steps. */
const DEMO_TASKS = [
  {
    path: 'sample',
    message: 'Sample task created and started',
    title: 'Sample Long-Running Task',
    body: Type.Object({
      delayMs: Type.Integer({ minimum: 0, maximum: 600_000, default: 3_000 }),
      description: Description,
      fail: Fail,
    }),
    steps: [
      ['Initializing', 'Setting up the task environment'],
      ['Processing Data', 'Analyzing input data and preparing output'],
      ['Generating Output', 'Writing the results'],
      ['Finalizing', 'Cleaning up'],
    ],
    stepMs: (input: { delayMs?: number }) => (input.delayMs ?? 3_000) / 4,
  },
  {
    path: 'file-processing',
    message: 'File processing task created and started',
    title: 'File Processing Task',
    body: Type.Object({
      filePath: Type.String({ minLength: 1 }),
      fileSize: Type.Integer({ minimum: 0 }),
      description: Description,
      fail: Fail,
    }),
    steps: [
      ['Validating file', 'Checking that the file exists and is readable'],
      ['Reading file', 'Reading the file contents'],
      ['Processing content', 'Transforming the content'],
      ['Writing output', 'Saving the processed file'],
    ],
    stepMs: (input: { fileSize?: number }) => Math.min(2_500, Math.max(125, (input.fileSize ?? 0) / 4096)),
  },
  {
    path: 'api-call',
    message: 'API call task created and started',
    title: 'API Call Task',
    body: Type.Object({
      endpoint: Type.String({ minLength: 1 }),
      data: Type.Optional(Type.Unknown()),
      description: Description,
      fail: Fail,
    }),
    steps: [
      ['Preparing request', 'Building the request'],
      ['Sending request', 'Calling the endpoint (simulated: nothing leaves the server)'],
      ['Parsing response', 'Reading the response'],
    ],
    stepMs: () => 300,
  },
  {
    path: 'batch',
    message: 'Batch processing task created and started',
    title: 'Batch Processing Task',
    body: Type.Object({
      items: Type.Array(Type.Unknown(), { minItems: 1, maxItems: 10_000 }),
      description: Description,
      fail: Fail,
    }),
    steps: (items: number) =>
      Array.from({ length: items }, (_, i) => [`Processing item ${i + 1}`, `Item ${i + 1} of ${items}`] as const),
    stepMs: () => 200,
  },
] as const

const TITLES = new Map<string, string>(DEMO_TASKS.map((task) => [`demo.${task.path}`, task.title]))

export interface NodeTasksOptions {
  store?: Store
  env?: NodeJS.ProcessEnv
  logger?: FastifyServerOptions['logger']
}

export async function buildApp(options: NodeTasksOptions = {}) {
  const env = options.env ?? process.env
  const maxCompleted = Number(env.MAX_COMPLETED_TASKS ?? 50)
  const maxFailed = Number(env.MAX_FAILED_TASKS ?? 20)
  const interval = Number(env.TASK_CLEANUP_INTERVAL ?? 300_000)
  const store =
    options.store ?? (await openStore(storeUrl({ LONGRUN_STORE: env.LONGRUN_STORE ?? 'sqlite:./data/node-tasks.db' })))
  const app = Fastify({ logger: options.logger ?? { level: env.LOG_LEVEL ?? 'debug' } })
  // Every caller is its session (its X-Session-Key, else its IP address), which may run the cleanup.
  const session = sessionAuth({ header: 'x-session-key' })
  await app.register(longrun, {
    store,
    authenticate: async (request) => {
      const principal = await session(request)
      return principal && { ...principal, roles: ['session'] }
    },
    cleanup: { allow: { roles: ['session'] } },
    keep: { succeeded: maxCompleted, failed: maxFailed },
    purgeInterval: interval,
  })

  const api = '/api/v1/tasks'
  const envelope = (message: string) => (task: PresentedResource) => ({ success: true, message, task: taskView(task) })

  // Created, then started by POST /api/v1/tasks/:id/start.
  app.longrun.route({
    url: api,
    name: 'task',
    schema: {
      body: Type.Object({
        name: Type.String({ minLength: 1, maxLength: 200 }),
        description: Description,
        metadata: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
      }),
    },
    start: 'manual',
    states,
    present: envelope('Task created'),
    handler: (op) =>
      execute(
        op,
        [
          ['Preparing', op.input.description ?? 'Preparing the task'],
          ['Running', `Running ${op.input.name}`],
          ['Finishing', 'Saving the result'],
        ],
        200,
      ),
  })

  for (const task of DEMO_TASKS) {
    app.longrun.route({
      url: `/api/v1/demo/tasks/${task.path}`,
      name: `demo.${task.path}`,
      schema: { body: task.body },
      states,
      present: (op) => ({
        success: true,
        message: task.message,
        task: { id: op.id, name: task.title, status: op.state, progress: op.progress.percent, sessionKey: op.owner },
        note: 'Task is running in the background. Use the task ID to check progress.',
      }),
      handler: (op) => {
        const input = op.input as { items?: unknown[]; fail?: boolean }
        const steps = typeof task.steps === 'function' ? task.steps(input.items!.length) : task.steps
        return execute(op, steps, task.stepMs(op.input as never), input.fail === true)
      },
    })
  }

  app.longrun.operationRoute({
    action: 'list',
    url: api,
    states,
    present: (page) => ({ success: true, tasks: page.items.map((task) => taskView(task)), count: page.items.length }),
  })
  app.longrun.operationRoute({
    action: 'status',
    url: `${api}/:id`,
    states,
    present: (task) => ({ success: true, task: taskView(task) }),
  })
  app.longrun.operationRoute({ action: 'start', url: `${api}/:id/start`, states, present: envelope('Task started') })
  app.longrun.operationRoute({
    action: 'cancel',
    url: `${api}/:id/cancel`,
    states,
    present: envelope('Task cancelled'),
  })
  app.longrun.operationRoute({
    action: 'retry',
    url: `${api}/:id/retry`,
    states,
    present: envelope('Task queued for retry'),
  })
  app.longrun.operationRoute({
    action: 'status',
    url: `${api}/:id/status`,
    states,
    present: (task) => ({
      success: true,
      status: task.state,
      progress: task.progress.percent,
      currentStep: task.progress.step ?? null,
      currentStepDescription: task.progress.description ?? null,
      startedAt: epoch(task.startedAt),
      completedAt: epoch(task.completedAt),
      error: task.error?.message ?? null,
    }),
  })
  app.longrun.operationRoute({
    action: 'stats',
    url: `${api}/stats`,
    present: (stats) => ({
      success: true,
      stats: {
        total: stats.total,
        pending: stats.queued,
        running: stats.running,
        completed: stats.succeeded,
        failed: stats.failed,
        cancelled: stats.canceled,
      },
    }),
  })
  app.longrun.operationRoute({
    action: 'cleanupStatus',
    url: `${api}/cleanup/status`,
    present: (status) => ({
      success: true,
      status: {
        isRunning: status.running,
        isActive: status.active,
        options: { maxCompletedTasks: maxCompleted, maxFailedTasks: maxFailed, cleanupInterval: interval },
        lastRun: status.lastRun ?? 'idle',
      },
    }),
  })
  app.longrun.operationRoute({
    action: 'cleanup',
    url: `${api}/cleanup/run`,
    present: (run) => ({ success: true, message: 'Cleanup completed', result: run }),
  })
  return app
}
