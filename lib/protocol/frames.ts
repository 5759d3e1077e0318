import { Type } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { PROTOCOL_VERSION, type ClientMessage } from './types.js'

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
const ComponentValue = Type.Record(AnyKey, FieldValue)
const PatchSchema = Type.Record(AnyKey, ComponentValue)
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

/**
 * Walks the patches of a frame the schema accepted: -1 when a value is nested
 * deeper than MAX_DEPTH, otherwise the number of items its buffer deltas
 * describe (the sum of their `len`). Iterative, so it cannot overflow itself.
 */
function scanPatches (patches: unknown[] | undefined): number {
  if (patches === undefined) return 0
  let items = 0
  const stack: Array<[unknown, number]> = [[patches, 0]]
  while (stack.length > 0) {
    const [value, depth] = stack.pop()!
    if (typeof value !== 'object' || value === null) continue
    if (depth > MAX_DEPTH) return -1
    if (Array.isArray(value)) {
      for (const item of value) if (typeof item === 'object' && item !== null) stack.push([item, depth + 1])
    } else {
      // Field values (depth 3) claiming `__buf: 1` were checked to be well-formed deltas.
      if (depth === 3 && (value as { __buf?: unknown }).__buf === 1) items += (value as { len: number }).len
      for (const key in value) {
        const item = (value as Record<string, unknown>)[key]
        if (typeof item === 'object' && item !== null) stack.push([item, depth + 1])
      }
    }
  }
  return items
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
  | { kind: 'invalid', type: string, message: string, messageId?: string }

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
  const checker = checkers[type as ClientMessage['type']]
  if (checker.Check(value)) {
    const frame = value as ClientMessage
    if (frame.type === 'auth-refresh') return { kind: 'frame', frame, bufferItems: 0 }
    const docs = scanPatches(frame.documentPatches)
    const ephs = docs < 0 ? -1 : scanPatches(frame.ephemeralPatches)
    if (docs >= 0 && ephs >= 0 && docs + ephs <= MAX_BUFFER_LENGTH) return { kind: 'frame', frame, bufferItems: docs + ephs }
    const messageId = (frame as { messageId?: unknown }).messageId
    return {
      kind: 'invalid',
      type,
      message: docs < 0 || ephs < 0
        ? `invalid ${type} frame (values nested deeper than ${MAX_DEPTH} levels)`
        : `invalid ${type} frame (its buffer deltas describe more than ${MAX_BUFFER_LENGTH} items)`,
      ...(typeof messageId === 'string' ? { messageId } : {})
    }
  }
  const first = checker.Errors(value).First()
  const where = first === undefined ? '' : `${first.path || '/'}: ${first.message}`
  const messageId = (value as { messageId?: unknown }).messageId
  return {
    kind: 'invalid',
    type,
    message: `invalid ${type} frame${where ? ` (${where})` : ''}`.slice(0, 300),
    ...(typeof messageId === 'string' && messageId.length <= 1024 ? { messageId } : {})
  }
}
