import { buildApp } from './app.js'

const app = await buildApp()
await app.listen({ port: Number(process.env.PORT ?? 3000) })
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => void app.close())
