import { closeOnSignals } from 'longrun/cli'
import { buildApp } from './app.js'

// PORT=3000 npm run example -- node-tasks
const app = await buildApp()
await app.listen({ port: Number(process.env.PORT ?? 3000), host: process.env.HOST ?? '127.0.0.1' })
closeOnSignals(() => app.close(), app.log)
