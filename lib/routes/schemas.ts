import { Type } from '@sinclair/typebox'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { errors } from '../errors.js'
import { ID_PATTERN, ROOM_ID_PATTERN } from '../options.js'

/** Longest room or client id, in UTF-16 units. */
export const MAX_ID_LENGTH = 256

const Id = (description: string, pattern = ID_PATTERN) => Type.String({ minLength: 1, maxLength: MAX_ID_LENGTH, pattern, description })
const RoomId = (description: string) => Id(description, ROOM_ID_PATTERN)

export const ConnectQuery = Type.Object({
  roomId: RoomId('Room to join'),
  clientId: Id('Stable id of the client (one per browser tab)'),
  token: Type.Optional(Type.String({ maxLength: 8192, description: 'Handed to authorize' }))
})

export const Permissions = Type.Union([Type.Literal('readwrite'), Type.Literal('readonly')], { description: "'readwrite' or 'readonly'" })

export const RoomParams = Type.Object({ roomId: RoomId('Room id') })
export const SessionParams = Type.Object({
  roomId: RoomId('Room id'),
  sessionId: Type.String({ minLength: 1, maxLength: 64, description: 'Session id' })
})

export const PermissionsBody = Type.Object({ permissions: Permissions }, { additionalProperties: false })

export const SessionInfo = Type.Object({
  sessionId: Type.String(),
  clientId: Type.String(),
  permissions: Permissions,
  metadata: Type.Optional(Type.Unknown())
})

export const RoomInfo = Type.Object({
  roomId: Type.String(),
  sessionCount: Type.Integer(),
  timestamp: Type.Integer({ description: 'The room counter' }),
  documentSize: Type.Integer({ description: 'Document keys, tombstones included' }),
  documentBytes: Type.Integer({ description: 'Estimated size of the document as JSON text (see limits.maxDocumentBytes)' })
})

/**
 * Any key. `Type.String()` as a record key becomes the pattern `^(.*)$`, which
 * does not match keys holding a line break: the serializer would silently
 * leave those keys out of a snapshot.
 */
const AnyKey = Type.String({ pattern: '^[\\s\\S]*$' })

export const Snapshot = Type.Object({
  timestamp: Type.Integer(),
  state: Type.Record(AnyKey, Type.Record(AnyKey, Type.Unknown())),
  timestamps: Type.Record(AnyKey, Type.Record(AnyKey, Type.Integer()))
})

export const ErrorReply = Type.Object({
  statusCode: Type.Integer(),
  // Optional: an admin hook's own error (a 400 or 404 without a code) must still be answered, not turned into a 500.
  code: Type.Optional(Type.String()),
  error: Type.String(),
  message: Type.String()
})

/**
 * Error handler of the plugin's routes: schema failures and bodies that do
 * not parse get the stable `CANVAS_STORE_INVALID_REQUEST` code; other errors (auth hooks' 401/403,
 * our 404s) keep their own status and code.
 */
export function replyError (error: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  // A body Fastify's parser refused (JSON that does not parse, or a poisoned `__proto__`) is a bad request too.
  if (error.validation !== undefined || (error.statusCode === 400 && error.code?.startsWith('FST_ERR_CTP_') === true)) {
    reply.code(400).send(new errors.INVALID_REQUEST(error.message))
    return
  }
  // A hook that set the status before failing (as @fastify/auth does with 401) keeps it.
  const status = error.statusCode ?? (reply.statusCode >= 400 ? reply.statusCode : 500)
  if (status >= 500) request.log.error({ err: error }, 'canvas-store route failed')
  reply.code(status).send(error)
}
