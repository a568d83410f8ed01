import { createServer } from 'node:http'
import { Webhook } from 'standardwebhooks'

// A callback receiver: verifies each message's Standard Webhooks signature over the raw body, then
// answers 204. Messages may come more than once (at least once): deduplicate by `webhook-id`.
//   WEBHOOK_SECRET=whsec_... PORT=4000 node --import tsx examples/webhooks/receiver.ts
const webhook = new Webhook(process.env.WEBHOOK_SECRET!)
const seen = new Set<string>()

createServer((request, response) => {
  const chunks: Buffer[] = []
  request.on('data', (chunk: Buffer) => chunks.push(chunk))
  request.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8')
    let message: { type: string; data: { id: string; state: string; result?: unknown } }
    try {
      message = webhook.verify(body, request.headers as Record<string, string>) as typeof message
    } catch {
      response.writeHead(401).end()
      return
    }
    const id = request.headers['webhook-id'] as string
    if (!seen.has(id)) {
      seen.add(id)
      console.log(`verified ${message.type} ${message.data.id} ${JSON.stringify(message.data.result ?? null)}`)
    }
    response.writeHead(204).end()
  })
}).listen(Number(process.env.PORT ?? 4000), '127.0.0.1')
