import { Type } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { PROTOCOL_VERSION, type ClientMessage, type ReconnectRequest } from './types.js'

/**
 * Most items the buffer deltas of one frame may describe, together (more
 * would let a frame of a few bytes make the server allocate gigabytes).
 */
export const MAX_BUFFER_LENGTH = 10_000_000

const BufferDelta = Type.Object({
  __buf: Type.Literal(1),
  len: Type.Integer({ minimum: 0, maximum: MAX_BUFFER_LENGTH }),
  runs: Type.Array(Type.Tuple([Type.Integer(), Type.Array(Type.Unknown())]))
})

/** Any field value; one that claims to be a buffer delta (`__buf: 1`) must be a well-formed one. */
const FieldValue = Type.Union([
  BufferDelta,
  Type.Not(Type.Object({ __buf: Type.Literal(1) }))
])

/**
 * Every key of a record, whatever its characters. (`Type.Record(Type.String())`
 * matches keys against `^(.*)$`, and skips the values of keys holding a line
 * break: a patch key such as `"a\nb"` would carry any value unchecked.)
 */
const AnyKey = Type.String({ pattern: '^[\\s\\S]*$' })
/**
 * Longest document or presence key, in UTF-16 units (as `String.length`
 * counts). SQL storages index keys: PostgreSQL refuses an index entry over
 * 2,704 bytes, which a longer key (with a room id of 256 units) could pass
 * as UTF-8, failing every later write of its room; and an index entry that
 * does not fit its page makes every lookup passing by it read it whole.
 * Keys are ids such as `entity/Component`.
 */
export const MAX_KEY_LENGTH = 512

/**
 * A document or presence key: at most MAX_KEY_LENGTH units of any characters
 * but U+0000, as well-formed UTF-16 (no lone surrogate). Keys reach storages
 * as text: PostgreSQL refuses U+0000 in text, and SQLite would turn a lone
 * surrogate into U+FFFD, merging two keys.
 */
// (A record's key schema is its pattern alone, hence the length as a lookahead.)
const StoredKey = Type.String({ pattern: `^(?=[\\s\\S]{0,${MAX_KEY_LENGTH}}$)(?:[^\\u0000\\uD800-\\uDFFF]|[\\uD800-\\uDBFF][\\uDC00-\\uDFFF])*$` })
/** A component's fields; `_exists`, when there, is a boolean (`true` creates, `false` deletes: anything else is neither). */
const ComponentValue = Type.Intersect([
  Type.Record(AnyKey, FieldValue),
  Type.Object({ _exists: Type.Optional(Type.Boolean()) })
])
// additionalProperties: false, or keys that do not match are let through unchecked.
const PatchSchema = Type.Record(StoredKey, ComponentValue, { additionalProperties: false })
const Patches = Type.Array(PatchSchema)

export const PatchFrame = Type.Object({
  type: Type.Literal('patch'),
  messageId: Type.String({ maxLength: 1024 }),
  documentPatches: Type.Optional(Patches),
  ephemeralPatches: Type.Optional(Patches)
})

export const ReconnectFrame = Type.Object({
  type: Type.Literal('reconnect'),
  lastTimestamp: Type.Number({ minimum: 0 }),
  protocolVersion: Type.Number(),
  documentPatches: Type.Optional(Patches),
  ephemeralPatches: Type.Optional(Patches)
})

export const AuthRefreshFrame = Type.Object({
  type: Type.Literal('auth-refresh'),
  token: Type.String({ maxLength: 16_384 })
})

const checkers = {
  patch: TypeCompiler.Compile(PatchFrame),
  reconnect: TypeCompiler.Compile(ReconnectFrame),
  'auth-refresh': TypeCompiler.Compile(AuthRefreshFrame)
} satisfies Record<ClientMessage['type'], { Check(value: unknown): boolean }>

/**
 * Deepest nesting of arrays and objects allowed in a patch (the patch and
 * its component count as two levels). Deeper values could not be serialized
 * again (JSON.stringify recurses), so one frame could break a room.
 */
export const MAX_DEPTH = 64

/** Outcomes of {@link checkFrame} other than a count of items. */
const WRONG_SHAPE = -1
const TOO_DEEP = -2

/**
 * Checks a parsed frame of a known type against its schema above, and the
 * nesting of its values against MAX_DEPTH, in one pass that allocates
 * nothing. Returns the number of items its buffer deltas describe (the sum
 * of their `len`), or WRONG_SHAPE or TOO_DEEP.
 *
 * The schemas stay the specification (they name the first error of a
 * refused frame, and test/frames.test.ts checks that both agree); this is
 * the hot path, several times faster than the compiled schema, whose record
 * checks build an entries array and run a regular expression per key.
 */
function checkFrame (type: ClientMessage['type'], frame: Record<string, unknown>): number {
  if (type === 'auth-refresh') return typeof frame.token === 'string' && frame.token.length <= 16_384 ? 0 : WRONG_SHAPE
  if (type === 'patch') {
    if (typeof frame.messageId !== 'string' || frame.messageId.length > 1024) return WRONG_SHAPE
  } else {
    const last = frame.lastTimestamp
    if (typeof last !== 'number' || !Number.isFinite(last) || last < 0 || !Number.isFinite(frame.protocolVersion)) return WRONG_SHAPE
  }
  const docs = frame.documentPatches === undefined ? 0 : checkPatches(frame.documentPatches)
  if (docs < 0) return docs
  const ephs = frame.ephemeralPatches === undefined ? 0 : checkPatches(frame.ephemeralPatches)
  return ephs < 0 ? ephs : docs + ephs
}

/** An array of patches: records of records whose field values are checked by checkField (the patch list is level 0). */
function checkPatches (patches: unknown): number {
  if (!Array.isArray(patches)) return WRONG_SHAPE
  let items = 0
  for (let i = 0; i < patches.length; i++) {
    const patch: unknown = patches[i]
    if (!isRecord(patch)) return WRONG_SHAPE
    for (const key in patch) {
      const component = patch[key]
      if (!isRecord(component) || !isStoredKey(key)) return WRONG_SHAPE
      const exists = component._exists
      if (exists !== undefined && typeof exists !== 'boolean') return WRONG_SHAPE
      for (const field in component) {
        const result = checkField(component[field])
        if (result < 0) return result
        items += result
      }
    }
  }
  return items
}

/** A field value (level 3): anything, but an object with `__buf: 1` must be a well-formed buffer delta. */
function checkField (value: unknown): number {
  if (typeof value !== 'object' || value === null) return 0
  let items = 0
  if (!Array.isArray(value) && (value as { __buf?: unknown }).__buf === 1) {
    const { len, runs } = value as { len?: unknown, runs?: unknown }
    if (typeof len !== 'number' || !Number.isInteger(len) || len < 0 || len > MAX_BUFFER_LENGTH || !Array.isArray(runs)) return WRONG_SHAPE
    for (let i = 0; i < runs.length; i++) {
      const run: unknown = runs[i]
      if (!Array.isArray(run) || run.length !== 2 || !Number.isInteger(run[0]) || !Array.isArray(run[1])) return WRONG_SHAPE
    }
    items = len
  }
  return nestedWithin(value, 3) ? items : TOO_DEEP
}

/** True when no object or array inside `value` (which sits at `depth`) is deeper than MAX_DEPTH. Recursion stops there. */
function nestedWithin (value: object, depth: number): boolean {
  if (depth > MAX_DEPTH) return false
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const item: unknown = value[i]
      if (typeof item === 'object' && item !== null && !nestedWithin(item, depth + 1)) return false
    }
  } else {
    for (const key in value) {
      const item = (value as Record<string, unknown>)[key]
      if (typeof item === 'object' && item !== null && !nestedWithin(item, depth + 1)) return false
    }
  }
  return true
}

/** See StoredKey. */
function isStoredKey (key: string): boolean {
  return key.length <= MAX_KEY_LENGTH && !key.includes('\u0000') && (key as string & { isWellFormed(): boolean }).isWellFormed()
}

/** An object that is not an array (nor null): a JSON object, a record. */
export function isRecord (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** Result of reading one client frame. */
export type ParsedFrame =
  /** `bufferItems`: the items its buffer deltas describe (0 when it has none). */
  | { kind: 'frame', frame: ClientMessage, bufferItems: number }
  /** Not JSON, not an object, or an unknown type: ignored, as the protocol says. */
  | { kind: 'ignore' }
  /** A `reconnect` with another protocol version. */
  | { kind: 'version-mismatch' }
  /** A known type whose fields have the wrong shape: refused, never applied. */
  | InvalidFrame

/** A refused frame, and what can still be answered of it. */
export interface InvalidFrame {
  kind: 'invalid'
  type: string
  message: string
  /** A patch's `messageId`, when that is a string of at most 1024 characters. */
  messageId?: string
  /** The objects among its `documentPatches` (their keys name what the client changed). */
  documentPatches?: Array<Record<string, unknown>>
  /** A `reconnect` whose only fault is in the patches it carries: the reconnect itself, without them. */
  reconnect?: ReconnectRequest
}

/** Parses and validates one text frame from a client. Never throws. */
export function parseClientFrame (raw: string): ParsedFrame {
  let value: unknown
  try {
    value = JSON.parse(raw)
  } catch {
    return { kind: 'ignore' }
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return { kind: 'ignore' }
  const type = (value as { type?: unknown }).type
  if (typeof type !== 'string' || !Object.hasOwn(checkers, type)) return { kind: 'ignore' }
  if (type === 'reconnect' && (value as { protocolVersion?: unknown }).protocolVersion !== PROTOCOL_VERSION) {
    return { kind: 'version-mismatch' }
  }
  const items = checkFrame(type as ClientMessage['type'], value as Record<string, unknown>)
  if (items >= 0 && items <= MAX_BUFFER_LENGTH) return { kind: 'frame', frame: value as ClientMessage, bufferItems: items }
  return refused(type as ClientMessage['type'], value as Record<string, unknown>, items)
}

/** Why a frame of a known type was refused (the first schema error, or the limit it broke), and what of it is usable. */
function refused (type: ClientMessage['type'], frame: Record<string, unknown>, items: number): InvalidFrame {
  let message: string
  if (items === TOO_DEEP) {
    message = `invalid ${type} frame (values nested deeper than ${MAX_DEPTH} levels)`
  } else if (items !== WRONG_SHAPE) {
    message = `invalid ${type} frame (its buffer deltas describe more than ${MAX_BUFFER_LENGTH} items)`
  } else {
    const first = checkers[type].Errors(frame).First()
    const where = first === undefined ? '' : `${first.path || '/'}: ${first.message}`
    message = `invalid ${type} frame${where ? ` (${where})` : ''}`.slice(0, 300)
  }
  const result: InvalidFrame = { kind: 'invalid', type, message }
  const { messageId, documentPatches, lastTimestamp, protocolVersion } = frame
  if (type === 'patch' && typeof messageId === 'string' && messageId.length <= 1024) result.messageId = messageId
  if (Array.isArray(documentPatches)) result.documentPatches = documentPatches.filter(isRecord)
  if (type === 'reconnect' && checkFrame(type, { lastTimestamp, protocolVersion }) === 0) {
    result.reconnect = { type, lastTimestamp: lastTimestamp as number, protocolVersion: protocolVersion as number }
  }
  return result
}
