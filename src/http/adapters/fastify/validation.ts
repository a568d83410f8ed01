import { Ajv, type Options } from 'ajv'
import addFormats from 'ajv-formats'
import type { FastifySchemaCompiler } from 'fastify'

// Fastify's default validator coerces types ("5" becomes 5) and silently drops properties a schema
// forbids. A stored operation is a contract: its body must be what the schema says, or a 422.
const common: Options = { useDefaults: true, allErrors: false, strict: false }
const bodies = addFormats.default(new Ajv({ ...common, coerceTypes: false, removeAdditional: false }))
// Path and query parameters arrive as strings: coercing them is the point.
const parameters = addFormats.default(new Ajv({ ...common, coerceTypes: 'array', removeAdditional: true }))

export const validatorCompiler: FastifySchemaCompiler<object> = ({ schema, httpPart }) =>
  (httpPart === 'body' ? bodies : parameters).compile(schema)
