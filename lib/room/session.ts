import type { SessionPermission } from '../protocol/types.js'
import type { TokenBucket } from './limits.js'

/**
 * The least a socket must offer to join a room: a `ws` WebSocket, a
 * `@fastify/websocket` socket or a test double all fit.
 */
export interface WebSocketLike {
  send(data: string): void
  close(code?: number, reason?: string): void
  /** When present, frames are only sent while it equals 1 (OPEN). */
  readonly readyState?: number
  /** When present, bytes queued but not yet sent: the slow-client policy reads it. */
  readonly bufferedAmount?: number
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

/** Receives measurements from rooms (the plugin's Prometheus metrics implement it). */
export interface RoomObserver {
  /** A client frame was handled: its type (or 'invalid', 'ignored', 'version-mismatch'), size and handling time. */
  frameIn(type: string, bytes: number, seconds: number): void
  /** A frame was handed to a socket. */
  frameOut(bytes: number): void
  /** A presence frame was not sent to a slow session. */
  presenceDropped(): void
  /** A storage write settled. */
  storageWrite(seconds: number, ok: boolean): void
}

/** One connected client in a room. */
export interface Session {
  readonly sessionId: string
  readonly clientId: string
  readonly socket: WebSocketLike
  permissions: SessionPermission
  /** Counts the changes of `permissions` made with setSessionPermissions (the admin route): a pending auth-refresh started before one must not undo it. */
  permissionsSet: number
  metadata: unknown
  /** Frames held while an `auth-refresh` is being decided (with their rate-limit verdict and the permissionsSet at arrival), handled in order afterwards. */
  held: Array<[text: string, limited: boolean, bytes: number, permissionsSet: number]> | null
  /** Bytes of the frames held since the pending `auth-refresh`. */
  heldBytes: number
  /** Rate limit of the session's frames, or null for none. */
  bucket: TokenBucket | null
  /** Frames refused by the rate limit since the last second without a refusal (see REFUSALS_FORGOTTEN_MS). */
  refusedInRow: number
  /** When (performance.now()) the last frame was refused by the rate limit. */
  lastRefusedAt: number
  /** When (performance.now()) the session went above the slow-client soft limit; 0 when it is not. */
  slowSince: number
  /**
   * Bytes of the answer to its latest reconnect (the diff it asked for),
   * which may still be unsent: not counted against the slow-client limits
   * until it catches up, or a document larger than hardBytes could never be
   * joined (nor, over a slow link, one that takes longer than maxSlowMs).
   */
  catchUpBytes: number
  /** Reconnects answered so far: the number of the latest, whose answer alone catchUpBytes counts. */
  answers: number
  /** Presence frames were dropped for it: send fresh presence once it catches up. */
  presenceStale: boolean
  /** The last clientCount sent to it. */
  countSeen: number
  /** Its first reconnect (the join) was answered: the diffs of later ones are charged to its byte rate. */
  joined: boolean
}

/** Most frames held for one session while its `auth-refresh` is pending. */
export const MAX_HELD_FRAMES = 1024
/** Most bytes of frames held for one session while its `auth-refresh` is pending. */
export const MAX_HELD_BYTES = 16 * 1024 * 1024
