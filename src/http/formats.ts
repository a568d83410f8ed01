import Negotiator from 'negotiator'
import { XMLBuilder } from 'fast-xml-parser'
import { stringify as toYaml } from 'yaml'
import { LongrunError } from '../core/errors.js'

/** Media types a route may offer its result in (Pode's ResponseContentType). */
export type ResultType = 'application/json' | 'application/xml' | 'application/yaml'

export const RESULT_TYPES: readonly ResultType[] = ['application/json', 'application/xml', 'application/yaml']

const xml = new XMLBuilder({ format: false, arrayNodeName: 'item' })

/** Picks the first of `offered` that the Accept header allows; a missing Accept takes the first. */
export function negotiate(accept: string | undefined, offered: readonly ResultType[]): ResultType {
  if (!accept) return offered[0]!
  const chosen = new Negotiator({ headers: { accept } }).mediaType([...offered])
  if (!chosen) {
    throw new LongrunError(
      'not-acceptable',
      406,
      'Not acceptable',
      `The result is available as ${offered.join(', ')}.`,
      {
        available: offered,
      },
    )
  }
  return chosen as ResultType
}

export function serialize(value: unknown, type: ResultType): string {
  switch (type) {
    case 'application/json':
      return JSON.stringify(value)
    case 'application/yaml':
      return toYaml(value)
    case 'application/xml':
      return `<?xml version="1.0" encoding="UTF-8"?><result>${xml.build(wrapForXml(value))}</result>`
  }
}

// XML has no bare arrays or scalars at the top: give them an element each.
function wrapForXml(value: unknown): unknown {
  if (Array.isArray(value)) return { item: value }
  if (value === null || typeof value !== 'object') return { value }
  return value
}
