import type { BufferDelta, Patch } from '../protocol/types.js'

/**
 * Sizes of stored values, in bytes of their JSON text as an estimate:
 * strings and names by their length plus quotes and separators, every
 * number as 8 bytes, `true`/`false`/`null` as 5. The estimate bounds what a
 * room holds (limits.maxDocumentBytes, limits.maxEphemeralBytes), and with
 * it what the full-document diff, the presence sent to a joiner and a
 * storage's snapshot can grow to: V8 cannot build a string of more than
 * about 512 million characters, and a document past that could no longer be
 * sent to anyone.
 */

/** Bytes counted per number: most coordinates and sizes print in fewer, long fractions in up to 24. */
const NUMBER_BYTES = 8
/** Nesting below which a value is no longer walked (frames are checked to 64 levels; a storage might hold deeper). */
const MAX_DEPTH = 256

/** Estimated JSON size of any value. */
export function jsonSize (value: unknown, depth = 0): number {
  switch (typeof value) {
    case 'string': return value.length + 2
    case 'number': return NUMBER_BYTES
    case 'boolean': return 5
    case 'object': break
    default: return 0
  }
  if (value === null || depth > MAX_DEPTH) return 5
  if (Array.isArray(value)) {
    let n = 2
    for (let i = 0; i < value.length; i++) n += jsonSize(value[i], depth + 1) + 1
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
  return name.length + 4 + jsonSize(value, depth)
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
      n += key.length + 6
      for (const field in incoming) {
        if (!Object.hasOwn(incoming, field)) continue
        const value = incoming[field]
        // The frame validator has checked the shape of every `{ __buf: 1 }` value.
        n += typeof value === 'object' && value !== null && (value as { __buf?: unknown }).__buf === 1
          ? field.length + 4 + bufferBound(value as BufferDelta)
          : fieldSize(field, value, 1)
      }
    }
  }
  return n
}
