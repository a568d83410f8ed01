import type { StandardSchemaV1 } from '@standard-schema/spec'
import { LongrunError } from '../core/errors.js'

/**
 * The schema of one part of a request: a JSON Schema (TypeBox's are), validated by the framework,
 * or a Standard Schema (Zod, Valibot, ArkType...), validated by longrun with its own `validate`.
 */
export type PartSchema = object

export interface AsyncRouteSchema {
  body?: PartSchema
  params?: PartSchema
  querystring?: PartSchema
}

/**
 * Maps a schema to the type it validates, the way Fastify's type providers do
 * (`@fastify/type-provider-typebox` for TypeBox 1.x, `fastify-type-provider-zod`...): any of them
 * fits, since only its shape counts (Fastify's `FastifyTypeProvider`).
 */
export interface SchemaTypeProvider {
  readonly schema: unknown
  readonly validator: unknown
  readonly serializer: unknown
}

/** No type provider: types come from the schema itself. */
export type SchemaTypes = SchemaTypeProvider

type OwnType<S> =
  S extends StandardSchemaV1<unknown, infer Output> ? Output : S extends { static: infer T } ? T : undefined

/**
 * The type a schema validates: the type provider's when it knows the schema, else the schema's own
 * (a Standard Schema's output, TypeBox 0.34's `static`), else `Otherwise`.
 */
export type Validated<S, TP extends SchemaTypeProvider, Otherwise> = unknown extends (TP & { schema: S })['validator']
  ? OwnType<S> extends undefined
    ? Otherwise
    : OwnType<S>
  : (TP & { schema: S })['validator']

/** `op.input`, `op.params` and `op.query` of a route with schema `S`. */
export interface RequestTypes<S extends AsyncRouteSchema, TP extends SchemaTypeProvider> {
  body: Validated<S['body'], TP, unknown>
  params: Validated<S['params'], TP, Record<string, string>>
  query: Validated<S['querystring'], TP, Record<string, unknown>>
}

const PARTS = {
  body: { code: 'invalid-body', what: 'body' },
  params: { code: 'invalid-params', what: 'params' },
  querystring: { code: 'invalid-querystring', what: 'querystring' },
} as const

export type SchemaPart = keyof typeof PARTS

function isStandard(schema: PartSchema | undefined): schema is StandardSchemaV1 {
  const props = (schema as { '~standard'?: { validate?: unknown } } | undefined)?.['~standard']
  return typeof props?.validate === 'function'
}

/** A route's schema split: JSON Schemas for the framework, Standard Schemas for longrun. */
export function splitSchema(schema: AsyncRouteSchema): {
  json: AsyncRouteSchema
  standard: Partial<Record<SchemaPart, StandardSchemaV1>>
} {
  const json: AsyncRouteSchema = {}
  const standard: Partial<Record<SchemaPart, StandardSchemaV1>> = {}
  for (const part of Object.keys(PARTS) as SchemaPart[]) {
    const given = schema[part]
    if (given === undefined) continue
    if (isStandard(given)) standard[part] = given
    else json[part] = given
  }
  return { json, standard }
}

/** A JSON Pointer (RFC 6901) to where a Standard Schema issue lies, as Ajv's `instancePath` is. */
function pointer(path: StandardSchemaV1.Issue['path']): string {
  if (!path?.length) return '/'
  return path
    .map((segment) => {
      const key = typeof segment === 'object' ? segment.key : segment
      return '/' + String(key).replaceAll('~', '~0').replaceAll('/', '~1')
    })
    .join('')
}

/**
 * Validates one part with its Standard Schema and answers the schema's output (defaults and
 * transforms applied), or throws the problem the framework's validation would give.
 */
export async function validateStandard(part: SchemaPart, schema: StandardSchemaV1, value: unknown): Promise<unknown> {
  const result = await schema['~standard'].validate(value)
  if (!result.issues) return result.value
  const { code, what } = PARTS[part]
  throw new LongrunError(code, `The request ${what} does not match the schema.`, {
    extra: { errors: result.issues.map((issue) => ({ path: pointer(issue.path), message: issue.message })) },
  })
}
