import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { ERRORS, LongrunError, OPERATION_ERROR_CODES, type ErrorCode } from '../src/core/errors.js'

const protocolDoc = readFileSync(new URL('../docs/protocol.md', import.meta.url), 'utf8')

describe('the error catalogue', () => {
  it.each(Object.keys(ERRORS))('documents %s in docs/protocol.md', (code) => {
    expect(protocolDoc).toContain(`\`${code}\``)
  })

  it.each(OPERATION_ERROR_CODES)('documents the operation error %s in docs/protocol.md', (code) => {
    expect(protocolDoc).toContain(`\`${code}\``)
  })

  it('gives every error the status and title of its code', () => {
    for (const code of Object.keys(ERRORS) as ErrorCode[]) {
      const err = new LongrunError(code, 'detail')
      expect([err.status, err.title, err.type]).toEqual([
        ERRORS[code].status,
        ERRORS[code].title,
        `urn:longrun:problem:${code}`,
      ])
    }
  })
})
