import { describe, expect, it } from 'vitest'
import { Engine } from '../src/core/engine.js'
import { memoryStore } from '../src/stores/memory/index.js'

describe('engine events', () => {
  it('keep a throwing listener from failing a committed submit, and still run the operation', async () => {
    const engine = new Engine({ store: memoryStore(), poll: 10_000 })
    engine.define({ name: 'work', handler: async () => 'done' })
    const errors: Error[] = []
    const changed: string[] = []
    engine.on('error', (err) => errors.push(err))
    engine.on('operation:changed', (id) => changed.push(id))
    engine.on('operation:queued', () => {
      throw new Error('listener bug')
    })
    engine.start()
    const op = await engine.submit('work')
    expect(errors.map((e) => e.message)).toEqual(['listener bug'])
    // With a 10 s poll, only the wake-up after the submit can have started it this soon.
    for (let i = 0; i < 200 && (await engine.get(op.id)).state !== 'succeeded'; i++) {
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
    expect((await engine.get(op.id)).state).toBe('succeeded')
    expect(changed.filter((id) => id === op.id).length).toBeGreaterThanOrEqual(3) // queued, started, settled
    await engine.close()
  })
})
