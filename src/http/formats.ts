import Negotiator from 'negotiator'
import { XMLBuilder } from 'fast-xml-parser'
import { stringify as toYaml } from 'yaml'
import { LongrunError } from '../core/errors.js'

/** Media types a route may offer its result in. */
export type ResultType = 'application/json' | 'application/xml' | 'application/yaml'

export const RESULT_TYPES: readonly ResultType[] = ['application/json', 'application/xml', 'application/yaml']

const xml = new XMLBuilder({ format: false, arrayNodeName: 'item', ignoreAttributes: false, attributeNamePrefix: '@_' })

/** Picks the first of `offered` that the Accept header allows; a missing Accept takes the first. */
export function negotiate(accept: string | undefined, offered: readonly ResultType[]): ResultType {
  if (!accept) return offered[0]!
  const chosen = new Negotiator({ headers: { accept } }).mediaType([...offered])
  if (!chosen) {
    throw new LongrunError('not-acceptable', `This is available as ${offered.join(', ')}.`, {
      extra: { available: offered },
    })
  }
  return chosen as ResultType
}

/** `value` as `type`; an XML document's root element is `root`. */
export function serialize(value: unknown, type: ResultType, root = 'result'): string {
  switch (type) {
    case 'application/json':
      return JSON.stringify(value)
    case 'application/yaml':
      return toYaml(value)
    case 'application/xml':
      return `<?xml version="1.0" encoding="UTF-8"?><${root}>${xml.build(wrapForXml(value))}</${root}>`
  }
}

// XML has no bare arrays or scalars at the top: give them an element each.
function wrapForXml(value: unknown): unknown {
  const tree = toXmlTree(value)
  if (Array.isArray(value)) return { item: tree }
  if (value === null || typeof value !== 'object') return { value: tree }
  return tree
}

/** Element names as XML allows them; names starting with `xml` are reserved. */
const ELEMENT_NAME = /^(?!xml)[A-Za-z_][A-Za-z0-9_.-]*$/i

/**
 * Keys that are not element names (`"a b"`, `"1st"`, `"<x>"`), and `entry` itself, become
 * `<entry key="...">` elements, so that any JSON result gives well-formed XML and loses no key.
 */
function toXmlTree(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(toXmlTree)
  if (value === null || typeof value !== 'object') return value
  const tree: Record<string, unknown> = {}
  const entries: Record<string, unknown>[] = []
  for (const [key, child] of Object.entries(value)) {
    const converted = toXmlTree(child)
    if (key !== 'entry' && ELEMENT_NAME.test(key)) tree[key] = converted
    else entries.push({ '@_key': key, ...contentOf(converted) })
  }
  if (entries.length > 0) tree.entry = entries
  return tree
}

function contentOf(converted: unknown): Record<string, unknown> {
  if (Array.isArray(converted)) return { item: converted }
  if (converted !== null && typeof converted === 'object') return converted as Record<string, unknown>
  return converted === null ? {} : { '#text': converted }
}
