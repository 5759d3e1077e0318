import type { SessionPermission } from '../protocol/types.js'

/**
 * The least a socket must offer to join a room: a `ws` WebSocket, a
 * `@fastify/websocket` socket or a test double all fit.
 */
export interface WebSocketLike {
  send(data: string): void
  close(code?: number, reason?: string): void
  /** When present, frames are only sent while it equals 1 (OPEN). */
  readonly readyState?: number
}

/** A pino-like logger; every method optional in spirit, all no-ops by default. */
export interface RoomLogger {
  debug(obj: object, msg?: string): void
  info(obj: object, msg?: string): void
  warn(obj: object, msg?: string): void
  error(obj: object, msg?: string): void
}

/** Logger that drops everything. */
export const silentLogger: RoomLogger = {
  debug () {},
  info () {},
  warn () {},
  error () {}
}

/** One connected client in a room. */
export interface Session {
  readonly sessionId: string
  readonly clientId: string
  readonly socket: WebSocketLike
  permissions: SessionPermission
  metadata: unknown
  /** Frames held while an `auth-refresh` is being decided, handled in order afterwards. */
  held: string[] | null
}

/** Most frames held for one session while its `auth-refresh` is pending. */
export const MAX_HELD_FRAMES = 1024
