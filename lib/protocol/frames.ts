import { Type } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { PROTOCOL_VERSION, type ClientMessage } from './types.js'

/** Longest array a buffer delta may describe (a bigger one would let one frame allocate gigabytes). */
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

const ComponentValue = Type.Record(Type.String(), FieldValue)
const PatchSchema = Type.Record(Type.String(), ComponentValue)
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

/** True when no value in the patches is nested deeper than MAX_DEPTH. Iterative, so it cannot overflow itself. */
function withinDepth (patches: unknown[] | undefined): boolean {
  if (patches === undefined) return true
  const stack: Array<[unknown, number]> = [[patches, 0]]
  while (stack.length > 0) {
    const [value, depth] = stack.pop()!
    if (typeof value !== 'object' || value === null) continue
    if (depth > MAX_DEPTH) return false
    if (Array.isArray(value)) {
      for (const item of value) if (typeof item === 'object' && item !== null) stack.push([item, depth + 1])
    } else {
      for (const key in value) {
        const item = (value as Record<string, unknown>)[key]
        if (typeof item === 'object' && item !== null) stack.push([item, depth + 1])
      }
    }
  }
  return true
}

/** Result of reading one client frame. */
export type ParsedFrame =
  | { kind: 'frame', frame: ClientMessage }
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
    if (frame.type === 'auth-refresh' || (withinDepth(frame.documentPatches) && withinDepth(frame.ephemeralPatches))) return { kind: 'frame', frame }
    const messageId = (frame as { messageId?: unknown }).messageId
    return {
      kind: 'invalid',
      type,
      message: `invalid ${type} frame (values nested deeper than ${MAX_DEPTH} levels)`,
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
