import { Type, type Static } from '@sinclair/typebox'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import T1, { type Static as Static1 } from 'typebox'
import { z } from 'zod'
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

// TypeBox 1.x (the `typebox` package) carries no type on its schemas: Fastify apps type it with a
// type provider, and so does longrun. Zod (and any Standard Schema) carries its own.
describe('TypeBox 1.x schemas, through a type provider', () => {
  const Body1 = T1.Object({ n: T1.Integer(), label: T1.String(), tags: T1.Optional(T1.Array(T1.String())) })
  const Params1 = T1.Object({ region: T1.String() })
  const Query1 = T1.Object({ dryRun: T1.Boolean() })
  interface Expected1 {
    n: number
    label: string
    tags?: string[]
  }

  it('types op.input, op.params and op.query with app.withTypeProvider()', async () => {
    const app = Fastify().withTypeProvider<TypeBoxTypeProvider>()
    closers.push(() => app.close())
    await app.register(longrun, { store: memoryStore(), worker: false })
    app.longrun.route({
      url: '/typed/:region',
      name: 'typed1',
      schema: { body: Body1, params: Params1, querystring: Query1 },
      handler: async (op) => {
        expectTypeOf(op.input).toEqualTypeOf<Static1<typeof Body1>>()
        expectTypeOf(op.input).toMatchTypeOf<Expected1>()
        expectTypeOf(op.params).toEqualTypeOf<{ region: string }>()
        expectTypeOf(op.query).toEqualTypeOf<{ dryRun: boolean }>()
        // @ts-expect-error: the schema has no `missing` field
        void op.input.missing
        return op.input.n
      },
    })
  })

  it('types them with defineAsyncRoute.withTypeProvider(), for a worker too', () => {
    const route = defineAsyncRoute.withTypeProvider<TypeBoxTypeProvider>()({
      url: '/typed/:region',
      name: 'typed1',
      schema: { body: Body1, params: Params1 },
      handler: (op) => {
        expectTypeOf(op.input.label).toEqualTypeOf<string>()
        expectTypeOf(op.params.region).toEqualTypeOf<string>()
        // No querystring schema: what any query string parses to.
        expectTypeOf(op.query).toEqualTypeOf<Record<string, unknown>>()
        return { n: op.input.n }
      },
    })
    const engine = new Engine({ store: memoryStore(), worker: false })
    closers.push(() => engine.close())
    engine.define(route)
  })

  it('leaves them unknown without the type provider', () => {
    defineAsyncRoute({
      url: '/typed1',
      name: 'typed1',
      schema: { body: Body1 },
      handler: (op) => {
        expectTypeOf(op.input).toBeUnknown()
        return null
      },
    })
  })
})

describe('Zod schemas, as Standard Schemas', () => {
  const Body = z.object({ n: z.number().int(), label: z.string().default('none'), at: z.iso.datetime() })
  const Params = z.object({ id: z.coerce.number() })

  it('types op.input with the schema output (defaults applied) and op.params', async () => {
    const app = Fastify()
    closers.push(() => app.close())
    await app.register(longrun, { store: memoryStore(), worker: false })
    app.longrun.route({
      url: '/zod/:id',
      name: 'zod',
      schema: { body: Body, params: Params },
      handler: async (op) => {
        expectTypeOf(op.input).toEqualTypeOf<z.output<typeof Body>>()
        expectTypeOf(op.input.label).toEqualTypeOf<string>()
        expectTypeOf(op.params).toEqualTypeOf<{ id: number }>()
        // @ts-expect-error: the schema has no `missing` field
        void op.input.missing
        return op.input.n
      },
    })
  })

  it('types them with defineAsyncRoute', () => {
    defineAsyncRoute({
      url: '/zod',
      name: 'zod',
      schema: { body: Body },
      handler: (op) => {
        expectTypeOf(op.input.at).toEqualTypeOf<string>()
        return null
      },
    })
  })
})
