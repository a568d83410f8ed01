import { XMLParser, XMLValidator } from 'fast-xml-parser'
import { describe, expect, it } from 'vitest'
import { serialize } from '../src/http/formats.js'

const parse = (xml: string) => new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '@' }).parse(xml).result

describe('XML results', () => {
  it('gives well-formed XML for keys that are not element names, keeping each key and value', () => {
    const result = {
      title: 'ok',
      'a b': 1,
      '1st': 'first',
      '<x>&"': { nested: true, 'z z': [1, 2] },
      entry: 'a key named like the escape element',
      '@_id': 3,
      '#text': 4,
      xmlish: 5,
    }
    const xml = serialize(result, 'application/xml')
    expect(XMLValidator.validate(xml)).toBe(true)
    const parsed = parse(xml)
    expect(parsed.title).toBe('ok')
    expect(parsed.entry).toEqual([
      { '@key': 'a b', '#text': 1 },
      { '@key': '1st', '#text': 'first' },
      { '@key': '<x>&"', nested: true, entry: { '@key': 'z z', item: [1, 2] } },
      { '@key': 'entry', '#text': 'a key named like the escape element' },
      { '@key': '@_id', '#text': 3 },
      { '@key': '#text', '#text': 4 },
      { '@key': 'xmlish', '#text': 5 },
    ])
  })

  it('wraps top-level arrays and scalars, and escapes text', () => {
    expect(parse(serialize([1, 2], 'application/xml'))).toEqual({ item: [1, 2] })
    const text = serialize('a<b & "c"', 'application/xml')
    expect(XMLValidator.validate(text)).toBe(true)
    expect(parse(text)).toEqual({ value: 'a<b & "c"' })
  })
})
