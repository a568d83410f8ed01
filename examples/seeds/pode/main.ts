import { closeOnSignals, openStore, storeUrl } from 'longrun/cli'
import { buildApp } from './app.js'

// `npm run example -- pode`: PORT (default 3000), HOST (127.0.0.1), LONGRUN_STORE (default
// sqlite:./data/pode.db), LOG_LEVEL (info), LONGRUN_WEBHOOK_SECRET (signs callbacks),
// LONGRUN_CALLBACK_ALLOW (hosts callbacks may reach besides public ones, comma-separated), and
// PODE_SECOND_MS (how long the examples' seconds of sleep last, in ms; default 1000).
const env = process.env
const store = await openStore(storeUrl({ LONGRUN_STORE: env.LONGRUN_STORE || 'sqlite:./data/pode.db' }))
const app = await buildApp({
  store,
  logLevel: env.LOG_LEVEL ?? 'info',
  secondMs: Number(env.PODE_SECOND_MS ?? 1000),
  ...(env.LONGRUN_WEBHOOK_SECRET ? { webhookSecret: env.LONGRUN_WEBHOOK_SECRET } : {}),
  callbackAllow: (env.LONGRUN_CALLBACK_ALLOW ?? '').split(',').filter(Boolean),
})
closeOnSignals(() => app.close(), app.log)
await app.listen({ port: Number(env.PORT ?? 3000), host: env.HOST ?? '127.0.0.1' })
