/**
 * The position a list cursor names: the `seq` of the last operation of the previous page, written
 * in decimal as every store issues it. Anything else (`'NaN'`, `'-1'`, `'1.5'`, `'abc'`) names no
 * position and answers `undefined`; the stores then answer an empty page, all alike.
 */
export function cursorPosition(cursor: string): number | undefined {
  if (!/^(0|[1-9][0-9]*)$/.test(cursor)) return undefined
  const seq = Number(cursor)
  return Number.isSafeInteger(seq) ? seq : undefined
}
