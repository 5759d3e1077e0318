/**
 * Wire types of the canvas-store sync protocol, version 2.
 * They match what the published client `@woven-ecs/canvas-store` sends and expects.
 */

/** The protocol version this server speaks. */
export const PROTOCOL_VERSION = 2

/** Permission level of one session. */
export type SessionPermission = 'readwrite' | 'readonly'

/** Fields of one component (or singleton) value. `_exists` marks creates and tombstones. */
export type ComponentData = Record<string, unknown> & { _exists?: boolean }

/** Key (`"<entityId>/<component>"` or `"SINGLETON/<name>"`) -> component data. */
export type Patch = Record<string, ComponentData>

/** Per-field timestamps of one key. */
export type FieldTimestamps = Record<string, number>

/** A sparse update of a numeric array field. */
export interface BufferDelta {
  __buf: 1
  len: number
  runs: Array<[offset: number, values: unknown[]]>
}

/** What storage keeps of a room. State and timestamps include tombstones. */
export interface RoomSnapshot {
  timestamp: number
  state: Record<string, ComponentData>
  timestamps: Record<string, FieldTimestamps>
}

export interface PatchRequest {
  type: 'patch'
  messageId: string
  documentPatches?: Patch[]
  ephemeralPatches?: Patch[]
}

export interface ReconnectRequest {
  type: 'reconnect'
  lastTimestamp: number
  protocolVersion: number
  documentPatches?: Patch[]
  ephemeralPatches?: Patch[]
}

export interface AuthRefreshRequest {
  type: 'auth-refresh'
  token: string
}

export type ClientMessage = PatchRequest | ReconnectRequest | AuthRefreshRequest

export interface AckResponse { type: 'ack', messageId: string, timestamp: number }
export interface PatchBroadcast {
  type: 'patch'
  clientId: string
  documentPatches?: Patch[]
  ephemeralPatches?: Patch[]
  timestamp?: number
}
export interface ClientCountBroadcast { type: 'clientCount', count: number }
export interface VersionMismatchResponse { type: 'version-mismatch', serverProtocolVersion: number }
export interface ResyncRequest { type: 'resync', since: number }
export interface SyncedResponse { type: 'synced', timestamp: number }
/** Sent when a frame is refused. The published client ignores it; other clients may show it. */
export interface ErrorResponse { type: 'error', code: string, message: string, messageId?: string }

/** Sent when the session's permissions change (admin PATCH, auth-refresh). The published client ignores it. */
export interface PermissionsMessage { type: 'permissions', permissions: SessionPermission }

export type ServerMessage =
  | AckResponse
  | PatchBroadcast
  | ClientCountBroadcast
  | VersionMismatchResponse
  | ResyncRequest
  | SyncedResponse
  | ErrorResponse
  | PermissionsMessage

/** Session as listed by `room.getSessions()` and the admin routes. */
export interface SessionInfo {
  sessionId: string
  clientId: string
  permissions: SessionPermission
  metadata?: unknown
}
