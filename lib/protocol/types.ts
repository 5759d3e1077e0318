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

/** A client's change: document patches and/or its presence. A readwrite session's, within the limits, is applied (document patches with the next counter value) and broadcast; every non-empty one is answered with an `ack`. */
export interface PatchRequest {
  type: 'patch'
  messageId: string
  documentPatches?: Patch[]
  ephemeralPatches?: Patch[]
}

/** A client's first frame on each connection: what it saw last (`lastTimestamp`, 0 for nothing) and what it changed offline; answered with the diff since, then `synced`. */
export interface ReconnectRequest {
  type: 'reconnect'
  lastTimestamp: number
  protocolVersion: number
  documentPatches?: Patch[]
  ephemeralPatches?: Patch[]
}

/** A new token for the session: `authorize` decides again (frames after it wait for the decision). */
export interface AuthRefreshRequest {
  type: 'auth-refresh'
  token: string
}

/** Every frame a client sends. */
export type ClientMessage = PatchRequest | ReconnectRequest | AuthRefreshRequest

/** Answers a `patch` (applied, or refused: an `error` frame follows): `timestamp` is the room's counter then. */
export interface AckResponse { type: 'ack', messageId: string, timestamp: number }
/** Another client's change (its `clientId`), or from the server (`clientId: ''`): a reconnect's diff and the others' presence, or a refused patch's corrective (the stored values of its keys); `timestamp` with document patches. */
export interface PatchBroadcast {
  type: 'patch'
  clientId: string
  documentPatches?: Patch[]
  ephemeralPatches?: Patch[]
  timestamp?: number
}
/** Sessions connected to the room. */
export interface ClientCountBroadcast { type: 'clientCount', count: number }
/** A `reconnect` with another `protocolVersion`: nothing else is answered. */
export interface VersionMismatchResponse { type: 'version-mismatch', serverProtocolVersion: number }
/** The server lost acked work after `since` (a crash, a restore): the client re-sends what it holds after it. */
export interface ResyncRequest { type: 'resync', since: number }
/** Ends the answer to a `reconnect`: the client is up to date with counter `timestamp`. */
export interface SyncedResponse { type: 'synced', timestamp: number }
/** Sent when a frame is refused. The published client ignores it; other clients may show it. */
export interface ErrorResponse { type: 'error', code: string, message: string, messageId?: string }

/** Sent when the session's permissions change (admin PATCH, auth-refresh). The published client ignores it. */
export interface PermissionsMessage { type: 'permissions', permissions: SessionPermission }

/** Every frame the server sends. */
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
