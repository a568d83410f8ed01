import { Type, type Static } from '@sinclair/typebox'
import Fastify from 'fastify'
import { Engine, type Operation, type OperationContext, type Progress } from 'longrun'
import { defineAsyncRoute, longrun, type AsyncRouteOptions } from 'longrun/fastify'
import { memoryStore } from 'longrun/memory'
import { afterEach, describe, expectTypeOf, it } from 'vitest'

// These tests are checked by `tsc --noEmit` (part of `npm test`), not by running them: an inference
// that regresses, or a `@ts-expect-error` that no longer finds its error, fails the type check.

const Body = Type.Object(
  {
    n: Type.Integer(),
    label: Type.String(),
    tags: Type.Optional(Type.Array(Type.String())),
    mode: Type.Union([Type.Literal('fast'), Type.Literal('slow')]),
    nested: Type.Object({ at: Type.Number() }),
  },
  { additionalProperties: false },
)

interface Expected {
  n: number
  label: string
  tags?: string[]
  mode: 'fast' | 'slow'
  nested: { at: number }
}

const closers: (() => Promise<void>)[] = []
afterEach(async () => {
  await Promise.all(closers.splice(0).map((close) => close()))
})

describe('op.input is inferred from the TypeBox body schema', () => {
  it('types it with defineAsyncRoute', () => {
    defineAsyncRoute({
      url: '/typed',
      name: 'typed',
      schema: { body: Body },
      handler: (op) => {
        expectTypeOf(op.input).toEqualTypeOf<Expected>()
        expectTypeOf(op.input).toEqualTypeOf<Static<typeof Body>>()
        expectTypeOf(op.input.tags).toEqualTypeOf<string[] | undefined>()
        expectTypeOf(op.input.mode).toEqualTypeOf<'fast' | 'slow'>()
        // @ts-expect-error: the schema has no `missing` field
        void op.input.missing
        // @ts-expect-error: `label` is a string
        const _n: number = op.input.label
        return { doubled: op.input.n * 2 }
      },
    })
  })

  it('types it with app.longrun.route', async () => {
    const app = Fastify()
    closers.push(() => app.close())
    await app.register(longrun, { store: memoryStore(), worker: false })
    app.longrun.route({
      url: '/typed',
      name: 'typed',
      schema: { body: Body },
      handler: async (op) => {
        expectTypeOf(op.input).toEqualTypeOf<Expected>()
        // @ts-expect-error: the schema has no `missing` field
        void op.input.missing
        return op.input.label
      },
    })
  })

  it('leaves it unknown without a body schema', () => {
    defineAsyncRoute({
      url: '/untyped',
      name: 'untyped',
      handler: (op) => {
        expectTypeOf(op.input).toBeUnknown()
        // @ts-expect-error: nothing is known of an unvalidated body
        void op.input.n
        return null
      },
    })
  })

  it('hands the same context type to engine.define', () => {
    const route = defineAsyncRoute({ url: '/typed', name: 'typed', schema: { body: Body }, handler: () => 1 })
    expectTypeOf(route.handler).parameter(0).toEqualTypeOf<OperationContext<Expected, undefined>>()
    const engine = new Engine({ store: memoryStore(), worker: false })
    closers.push(() => engine.close())
    // What a worker process does with the API's list of routes.
    engine.define(route)
  })
})

describe('the result type of an async route', () => {
  it('is inferred from the handler', () => {
    const route = defineAsyncRoute({
      url: '/typed',
      name: 'typed',
      schema: { body: Body },
      handler: async (op) => ({ doubled: op.input.n * 2 }),
    })
    expectTypeOf(route).toEqualTypeOf<AsyncRouteOptions<{ body: typeof Body }, { doubled: number }, undefined>>()
  })

  it('is enforced when the route declares it', () => {
    defineAsyncRoute<{ body: typeof Body }, { doubled: number }>({
      url: '/typed',
      name: 'typed',
      schema: { body: Body },
      handler: (op) => ({ doubled: op.input.n * 2 }),
    })
    defineAsyncRoute<{ body: typeof Body }, { doubled: number }>({
      url: '/typed',
      name: 'typed',
      schema: { body: Body },
      // @ts-expect-error: the route says it returns `{ doubled: number }`
      handler: (op) => op.input.label,
    })
    defineAsyncRoute<{ body: typeof Body }, { doubled: number }>({
      url: '/typed',
      name: 'typed',
      schema: { body: Body },
      // @ts-expect-error: a promise of the wrong type is wrong too
      handler: async (op) => ({ doubled: op.input.label }),
    })
  })
})

describe('engine events', () => {
  it("pass the operation after the change, and its progress, to 'operation:progress'", () => {
    const engine = new Engine({ store: memoryStore(), worker: false })
    closers.push(() => engine.close())
    engine.on('operation:progress', (op, progress) => {
      expectTypeOf(op).toEqualTypeOf<Operation>()
      expectTypeOf(progress).toEqualTypeOf<Progress>()
      // @ts-expect-error: the payload is the operation, no longer its id
      const _id: string = op
    })
    engine.on('operation:changed', (id) => expectTypeOf(id).toEqualTypeOf<string>())
  })
})
