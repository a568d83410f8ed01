import { setTimeout as sleep } from 'node:timers/promises'
import { Type } from '@sinclair/typebox'
import Fastify from 'fastify'
import { OperationFailure } from 'longrun'
import { longrun } from 'longrun/fastify'
import { sqliteStore } from 'longrun/sqlite'

/**
 * docs/custom-routes.md's example: an API with its own URLs and shapes on longrun's guarantees.
 * `npx tsx examples/custom-routes/main.ts` serves it on port 3000.
 */
export async function buildApp(dbPath = './data/custom-routes.db') {
  const app = Fastify()
  await app.register(longrun, {
    store: sqliteStore({ path: dbPath }),
    // Every endpoint answers JSON, XML or YAML by Accept.
    formats: ['application/json', 'application/xml', 'application/yaml'],
  })

  // The task system's names for longrun's states.
  const states = { queued: 'pending', succeeded: 'completed', canceled: 'cancelled' } as const

  app.longrun.route({
    url: '/api/v1/tasks',
    name: 'task',
    schema: { body: Type.Object({ name: Type.String(), steps: Type.Integer({ minimum: 1, maximum: 20 }) }) },
    // Created now, run when someone calls its start action.
    start: 'manual',
    // Runs before anything is stored: refuse, or attach values the handler gets as op.context.
    async beforeQueue(request, reply) {
      const tenant = request.headers['x-tenant']
      if (typeof tenant !== 'string') return reply.code(400).send({ success: false, message: 'x-tenant is required' })
      return { tenant }
    },
    async handler(op) {
      for (let step = 1; step <= op.input.steps; step++) {
        await op.progress((100 * (step - 1)) / op.input.steps, `step-${step}`, `Step ${step} of ${op.input.steps}`)
        await sleep(10, undefined, { signal: op.signal })
      }
      if (op.input.name === 'bad') {
        // Its `details` are shown in the operation's error; nothing else of the error is.
        throw new OperationFailure('Validation failed', { errors: ['name must not be "bad"'] }, { retryable: false })
      }
      return { name: op.input.name, tenant: op.context.tenant }
    },
    states,
    present: (task) => ({ success: true, task: { id: task.id, status: task.state } }),
  })

  // The task system's own status endpoint and body.
  app.longrun.operationRoute({
    action: 'status',
    url: '/api/v1/tasks/:id/status',
    states,
    present: (task) => ({
      success: true,
      status: task.state,
      progress: task.progress.percent,
      currentStep: task.progress.step ?? null,
      currentStepDescription: task.progress.description ?? null,
      createdAt: Date.parse(task.createdAt),
    }),
  })
  app.longrun.operationRoute({ action: 'start', url: '/api/v1/tasks/:id/start' })

  // Pode's style: the id in the query string, under a name of its own; a stop route; a query route.
  app.longrun.operationRoute({ action: 'status', url: '/task', id: { in: 'query', name: 'taskId' } })
  app.longrun.operationRoute({ action: 'cancel', method: 'DELETE', url: '/task', id: { in: 'query', name: 'taskId' } })
  app.longrun.operationRoute({ action: 'query', url: '/tasks/query' })
  app.longrun.operationRoute({
    action: 'stats',
    url: '/api/v1/tasks/stats',
    present: (stats) => ({
      success: true,
      stats: {
        pending: stats.queued,
        running: stats.running,
        completed: stats.succeeded,
        failed: stats.failed,
        cancelled: stats.canceled,
      },
    }),
  })
  return app
}
