import { createError } from '@fastify/error'

/** Prefix of every error code this plugin produces. */
export const ERROR_PREFIX = 'CANVAS_STORE_'

/** HTTP errors of the admin routes and of the upgrade request. */
export const errors = {
  /** The room is not loaded on this server. */
  ROOM_NOT_FOUND: createError('CANVAS_STORE_ROOM_NOT_FOUND', 'Room %s is not loaded', 404),
  /** No session with that id in the room. */
  SESSION_NOT_FOUND: createError('CANVAS_STORE_SESSION_NOT_FOUND', 'Session %s not found in room %s', 404),
  /** A request's params, query or body failed its schema. */
  INVALID_REQUEST: createError('CANVAS_STORE_INVALID_REQUEST', '%s', 400),
  /** A plain HTTP request (no WebSocket upgrade) to the WebSocket route. */
  UPGRADE_REQUIRED: createError('CANVAS_STORE_UPGRADE_REQUIRED', 'This route speaks WebSocket only: send an upgrade request', 426),
  /** Too many requests to the WebSocket route from one IP, upgrades or not (`connectionRateLimit`). */
  TOO_MANY_CONNECTIONS: createError('CANVAS_STORE_TOO_MANY_CONNECTIONS', 'Too many connection attempts, retry in %s', 429),
  /** An option passed at registration is invalid. */
  INVALID_OPTION: createError('CANVAS_STORE_INVALID_OPTION', 'Invalid option %s: %s', 500, TypeError)
} as const

/**
 * `authorize` did not decide within `authorizeTimeoutMs`: the connection, or
 * the session whose `auth-refresh` it was deciding, is closed with 1013, and
 * the client tries again.
 */
export class AuthorizeTimeoutError extends Error {
  constructor (ms: number) {
    super(`Authorization timed out after ${ms} ms: try again`)
    this.name = 'AuthorizeTimeoutError'
  }
}

/**
 * A storage refused a room's write because another process has loaded the
 * room since (SqliteStorage and PostgreSQL record which storage loaded each
 * room last): two processes serving one room would hand out the same
 * counters and overwrite each other's keys. The room closes its sessions
 * with 1013 without writing anything more; their clients reconnect, to the
 * process that has the room. A custom storage may throw any error with this
 * `code`.
 */
export class RoomMovedError extends Error {
  readonly code = 'CANVAS_STORE_ROOM_MOVED'
  constructor (roomId: string) {
    super(`room ${JSON.stringify(roomId)} was loaded by another process since this one loaded it: not written`)
    this.name = 'RoomMovedError'
  }
}

/** True for a RoomMovedError, or any error with its code (a custom storage's). */
export function isRoomMoved (err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === 'CANVAS_STORE_ROOM_MOVED'
}

/** Codes of the `{ type: 'error', code, message }` frames sent over the WebSocket. */
export const frameErrorCodes = {
  /** A frame of a known type whose fields have the wrong shape; it was not applied. */
  INVALID_FRAME: 'CANVAS_STORE_INVALID_FRAME',
  /** A readonly session sent document or ephemeral patches; they were not applied. */
  READONLY: 'CANVAS_STORE_READONLY',
  /** Too many patches or keys in one frame (`limits.maxPatchesPerFrame`, `limits.maxKeysPerFrame`). */
  FRAME_TOO_LARGE: 'CANVAS_STORE_FRAME_TOO_LARGE',
  /**
   * The frame would take the room's document past `limits.maxDocumentKeys`
   * keys or `limits.maxDocumentBytes` bytes; it was not applied.
   */
  DOCUMENT_FULL: 'CANVAS_STORE_DOCUMENT_FULL',
  /**
   * The frame would take the client's presence past `limits.maxEphemeralKeys`
   * keys or `limits.maxEphemeralBytes` bytes; its presence patches were not
   * applied (its document patches were, when they passed every other limit).
   */
  PRESENCE_FULL: 'CANVAS_STORE_PRESENCE_FULL',
  /** The session sent more frames or bytes per second than `rateLimit` allows. */
  RATE_LIMITED: 'CANVAS_STORE_RATE_LIMITED',
  /** Writes to storage kept failing: the session is closed (1011) and its client re-sends what was not acked. */
  STORAGE_UNAVAILABLE: 'CANVAS_STORE_STORAGE_UNAVAILABLE'
} as const

/**
 * WebSocket close codes. 1000-1015 are the standard ones; 4000-4999 are ours.
 * The published client reconnects after any close it did not ask for.
 */
export const CloseCode = {
  /** Server shutting down (or the room is being closed). */
  GOING_AWAY: 1001,
  /** Bad query, refused authorization, or a pre-room queue overflow. */
  POLICY_VIOLATION: 1008,
  /** A frame larger than `maxPayload`. */
  MESSAGE_TOO_BIG: 1009,
  /** The room could not be loaded from storage, or storage writes kept failing. */
  INTERNAL_ERROR: 1011,
  /** The room has `limits.maxSessions` sessions, or the process `maxRooms` rooms. */
  TRY_AGAIN_LATER: 1013,
  /** An administrator removed the session (DELETE admin route). */
  KICKED: 4000,
  /** The session could not keep up with what the room sends (slow-client policy). */
  TOO_SLOW: 4002,
  /** The session kept sending over its rate limit. */
  RATE_LIMITED: 4429,
  /** authorize threw an error with statusCode 401. */
  UNAUTHORIZED: 4401,
  /** authorize threw an error with statusCode 403. */
  FORBIDDEN: 4403
} as const

/** Close reasons must fit in 123 bytes of UTF-8. */
export function closeReason (text: string): string {
  let out = text
  while (Buffer.byteLength(out) > 123) out = out.slice(0, -1)
  return out
}
