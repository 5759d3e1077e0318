import type { BufferDelta, Patch } from '../protocol/types.js'

/**
 * Sizes of stored values, in characters of their JSON text as an estimate:
 * strings, keys and field names exactly (quotes and escapes included), every
 * number as 8, `true`/`false`/`null` as 5. The estimate bounds what a room
 * holds (limits.maxDocumentBytes, limits.maxEphemeralBytes), and with it what
 * the full-document diff, the presence sent to a joiner and a storage's
 * snapshot can grow to: V8 cannot build a string of more than about 536
 * million characters, and a document past that could no longer be sent to
 * anyone. Only numbers are estimated: a number prints in 1 to 24 characters,
 * so the real JSON is at most 3 times the estimate, and a snapshot, which
 * repeats each field name with its stamp, at most about 4 times.
 */

/** Bytes counted per number: most coordinates and sizes print in fewer, long fractions in up to 24. */
const NUMBER_BYTES = 8
/** Nesting below which a value is no longer walked (frames are checked to 64 levels; a storage might hold deeper). */
const MAX_DEPTH = 256

/** Arrays of at least this many items keep their estimated size once measured. */
const REMEMBERED_ITEMS = 1024
/**
 * Estimated sizes of long arrays, by identity. A stored value is never
 * changed in place (a change makes a new record, and a buffer delta a new
 * array), so a size measured once stays true; a buffer delta against a long
 * array is then measured in the items it changes, not the whole array (a
 * 100-byte frame changing one item of millions must not walk them all).
 */
const arraySizes = new WeakMap<readonly unknown[], number>()

/** The estimated size of a long array if it is known. */
export function knownArraySize (array: readonly unknown[]): number | undefined {
  return array.length >= REMEMBERED_ITEMS ? arraySizes.get(array) : undefined
}

/** Records the estimated size of an array that will not change (only long ones are kept). */
export function rememberArraySize (array: readonly unknown[], size: number): void {
  if (array.length >= REMEMBERED_ITEMS) arraySizes.set(array, size)
}

/** Estimated size of an item of an array, with its comma. */
export function itemSize (value: unknown): number {
  return jsonSize(value, 1) + 1
}

/** Estimated size of an item a buffer delta adds as zero fill. */
export const ZERO_ITEM_SIZE = NUMBER_BYTES + 1

/** Characters that JSON.stringify escapes, and surrogates (a lone one is escaped, a pair is not). */
// eslint-disable-next-line no-control-regex
const ESCAPED = /[\u0000-\u001f"\\\ud800-\udfff]/

/** Length of a string as JSON.stringify writes it, quotes included. */
export function stringSize (text: string): number {
  if (!ESCAPED.test(text)) return text.length + 2
  let n = 2
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c < 0x20) n += c === 0x08 || c === 0x09 || c === 0x0a || c === 0x0c || c === 0x0d ? 2 : 6
    else if (c === 0x22 || c === 0x5c) n += 2
    else if (c >= 0xd800 && c <= 0xdbff && isLowSurrogate(text.charCodeAt(i + 1))) {
      n += 2
      i++
    } else if (c >= 0xd800 && c <= 0xdfff) n += 6
    else n += 1
  }
  return n
}

function isLowSurrogate (c: number): boolean {
  return c >= 0xdc00 && c <= 0xdfff
}

/** What a key adds to a record's size besides its value: `"key":` and a comma. */
export function keyOverhead (key: string): number {
  return stringSize(key) + 2
}

/** Estimated JSON size of any value. */
export function jsonSize (value: unknown, depth = 0): number {
  switch (typeof value) {
    case 'string': return stringSize(value)
    case 'number': return NUMBER_BYTES
    case 'boolean': return 5
    case 'object': break
    default: return 0
  }
  if (value === null || depth > MAX_DEPTH) return 5
  if (Array.isArray(value)) {
    const known = knownArraySize(value)
    if (known !== undefined) return known
    let n = 2
    for (let i = 0; i < value.length; i++) n += jsonSize(value[i], depth + 1) + 1
    rememberArraySize(value, n)
    return n
  }
  let n = 2
  const record = value as Record<string, unknown>
  for (const name in record) {
    if (Object.hasOwn(record, name)) n += fieldSize(name, record[name], depth + 1)
  }
  return n
}

/** Estimated size of one `"name":value,` member of a record. */
export function fieldSize (name: string, value: unknown, depth = 0): number {
  return keyOverhead(name) + jsonSize(value, depth)
}

/** Estimated size of a buffer delta's `{ __buf, len, runs }` as the array it becomes, at most: `len` zeros, plus every run's values. */
function bufferBound (delta: BufferDelta): number {
  let n = 2 + delta.len * (NUMBER_BYTES + 1)
  for (const run of delta.runs) {
    const values = run[1]
    for (let i = 0; i < values.length; i++) n += jsonSize(values[i], 1) + 1
  }
  return n
}

/**
 * An upper bound on growthBound (so on any growth) from a frame's length in
 * characters and the items its buffer deltas describe, without reading it:
 * no part of the estimate is more than NUMBER_BYTES times the JSON that
 * carries it (a one-digit number), and an item a buffer delta adds counts
 * NUMBER_BYTES + 1.
 */
export function frameBound (chars: number, bufferItems: number): number {
  return NUMBER_BYTES * chars + (NUMBER_BYTES + 1) * bufferItems
}

/**
 * An upper bound on what applying `patches` can add to the stored size,
 * from the frame alone: each key's new size is at most its old one plus what
 * it is sent (fields it replaces only make it smaller), and a buffer delta
 * adds at most its new items and the values of its runs.
 */
export function growthBound (patches: readonly Patch[]): number {
  let n = 0
  for (const patch of patches) {
    for (const key in patch) {
      if (!Object.hasOwn(patch, key)) continue
      const incoming = patch[key] as Record<string, unknown>
      n += keyOverhead(key) + 2
      for (const field in incoming) {
        if (!Object.hasOwn(incoming, field)) continue
        const value = incoming[field]
        // The frame validator has checked the shape of every `{ __buf: 1 }` value.
        n += typeof value === 'object' && value !== null && (value as { __buf?: unknown }).__buf === 1
          ? keyOverhead(field) + bufferBound(value as BufferDelta)
          : fieldSize(field, value, 1)
      }
    }
  }
  return n
}
