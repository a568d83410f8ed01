import { parseCookie } from 'cookie'
import type { FastifyRequest } from 'fastify'
import { LongrunError } from '../../../core/errors.js'
import type { IdLocation } from '../../mounts.js'

const invalidId = (detail: string, id: IdLocation) =>
  new LongrunError('invalid-id', detail, { extra: { in: id.in, name: id.name } })

/** Every value the request gives `name` in each place an id could be, the mount's own and the others. */
function sightings(id: IdLocation, request: FastifyRequest, headerValues: (name: string) => string[]) {
  const query = (request.query ?? {}) as Record<string, unknown>
  const params = (request.params ?? {}) as Record<string, string | undefined>
  const raw = query[id.name]
  const cookies = [request.headers.cookie ?? []]
    .flat()
    .flatMap((header) => header.split(';'))
    .filter((pair) => pair.split('=')[0]!.trim() === id.name)
  return {
    path: params[id.name] === undefined ? [] : [params[id.name]!],
    query: raw === undefined ? [] : [raw].flat().map(String),
    header: headerValues(id.name.toLowerCase()),
    cookie: cookies.map((pair) => parseCookie(pair)[id.name] ?? ''),
  }
}

/**
 * The operation id where the mount reads it (Pode's `-In` and `-TaskIdName`). An id missing, given
 * twice, or given elsewhere too (in the query of a header mount, say) is a 400 `invalid-id`: the
 * request is ambiguous, and answering one of its ids would hide the mistake.
 */
export function idOf(id: IdLocation, request: FastifyRequest, headerValues: (name: string) => string[]): string {
  const seen = sightings(id, request, headerValues)
  for (const place of ['path', 'query', 'header', 'cookie'] as const) {
    if (place !== id.in && seen[place].length > 0) {
      throw invalidId(`The operation id goes in the ${id.in} '${id.name}', not in the ${place}.`, id)
    }
  }
  const values = seen[id.in]
  if (values.length === 0) throw invalidId(`Give the operation id in the ${id.in} '${id.name}'.`, id)
  if (values.length > 1) throw invalidId(`The ${id.in} '${id.name}' is given ${values.length} times: give one id.`, id)
  return values[0]!
}

/** The query string without the id parameter of a query mount: the endpoint reads only its own parameters. */
export function queryWithoutId(id: IdLocation, query: unknown): Record<string, unknown> {
  const all = (query ?? {}) as Record<string, unknown>
  if (id.in !== 'query') return all
  const { [id.name]: _id, ...rest } = all
  return rest
}
