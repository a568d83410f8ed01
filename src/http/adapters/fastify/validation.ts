import { Ajv, type Options } from 'ajv'
import addFormats from 'ajv-formats'
import type { FastifySchemaCompiler } from 'fastify'

// `validation: 'strict'`. Fastify's default validator coerces types ("5" becomes 5) and silently
// drops properties a schema forbids; this one answers 422 instead, so that a stored body is exactly
// what the client sent.
const common: Options = { useDefaults: true, allErrors: false, strict: false }

function validators(shared: readonly object[]) {
  const bodies = addFormats.default(new Ajv({ ...common, coerceTypes: false, removeAdditional: false }))
  // Path and query parameters arrive as strings: coercing them is the point.
  const parameters = addFormats.default(new Ajv({ ...common, coerceTypes: 'array', removeAdditional: true }))
  for (const schema of shared) {
    bodies.addSchema(schema)
    parameters.addSchema(schema)
  }
  const compiler: FastifySchemaCompiler<object> = ({ schema, httpPart }) =>
    (httpPart === 'body' ? bodies : parameters).compile(schema)
  return compiler
}

const unshared = validators([])

/** The strict validator, knowing the schemas the context added (`addSchema`) for `$ref`s. */
export const strictValidator = (shared: Record<string, unknown>): FastifySchemaCompiler<object> => {
  const schemas = Object.values(shared) as object[]
  return schemas.length === 0 ? unshared : validators(schemas)
}
