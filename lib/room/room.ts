import { randomUUID } from 'node:crypto'
import { CloseCode, closeReason, frameErrorCodes } from '../errors.js'
import { parseClientFrame } from '../protocol/frames.js'
import type {
  ComponentData,
  Patch,
  PatchRequest,
  ReconnectRequest,
  RoomSnapshot,
  ServerMessage,
  SessionInfo,
  SessionPermission
} from '../protocol/types.js'
import type { Storage } from '../storage/storage.js'
import { Document, emptyRecord, hasContent, applyValue, type Fields } from './document.js'
import { Persistence, type Durability } from './persistence.js'
import { MAX_HELD_FRAMES, silentLogger, type RoomLogger, type Session, type WebSocketLike } from './session.js'

/** What an `auth-refresh` decides. */
export interface TokenRefreshResult {
  permissions: SessionPermission
  metadata?: unknown
}

/** Options of one {@link Room}; the seed's names. */
export interface RoomOptions {
  /** Makes this room's storage. Without it the room lives in memory only. */
  createStorage?: (roomId: string) => Storage
  /**
   * Longest time between a document change and the save that holds it.
   * @default 1000
   */
  saveThrottleMs?: number
  /** Called after a session left, with how many remain. */
  onSessionRemoved?: (room: Room, info: { sessionId: string, remaining: number }) => void
  /** Called after document patches from a readwrite session were applied. */
  onDocumentPatch?: (room: Room, patches: Patch[]) => void
  /**
   * Decides an `auth-refresh` frame. Resolve with the new permissions; reject
   * to close the session. Without it, `auth-refresh` frames are ignored.
   */
  onTokenRefresh?: (room: Room, info: { sessionId: string, clientId: string, token: string }) => TokenRefreshResult | Promise<TokenRefreshResult>
  /**
   * With a storage that has `append`: `durable` sends the ack (and the
   * broadcast) of a document patch only once the write holding it committed;
   * `throttled` sends them at once and writes every `saveThrottleMs`. A plain
   * `{ load, save }` storage is always throttled.
   * @default 'durable'
   */
  durability?: Durability
  /**
   * How long writes may keep failing before the room's sessions are closed
   * with 1011 (their clients reconnect and re-send what was not acked). The
   * room keeps retrying in the background.
   * @default 10000
   */
  storageFailureTimeoutMs?: number
  /** Where the room logs (pino-like). Silent by default. */
  logger?: RoomLogger
  /** The room's id, used for storage and logs. */
  roomId?: string
}

/** Options of {@link Room.handleSocketConnect}. */
export interface ConnectOptions {
  socket: WebSocketLike
  clientId: string
  permissions: SessionPermission
  metadata?: unknown
}

const DEFAULT_SAVE_THROTTLE_MS = 1000
const DEFAULT_STORAGE_FAILURE_TIMEOUT_MS = 10_000
const OPEN = 1

/**
 * One document and the sessions editing it: applies frames, fans them out
 * (each broadcast serialized once), keeps presence per client and schedules
 * persistence. Usable without Fastify: feed it sockets and text frames.
 */
export class Room {
  /** The room's id ('' when created without one). */
  readonly roomId: string
  #doc = new Document()
  /** clientId -> key -> value of that client's presence. */
  readonly #ephemeral = new Map<string, Map<string, Fields>>()
  readonly #sessions = new Map<string, Session>()
  readonly #storage: Storage | undefined
  readonly #persistence: Persistence
  readonly #log: RoomLogger
  readonly #options: RoomOptions
  /** With durable acks: messages waiting for the write that holds what they report. */
  #outbox: Array<{ need: number, session: Session, data: string }> = []
  #closed = false
  /** Serialized full document (diff since 0) for the counter value it was made at. */
  #fullDiff: { timestamp: number, json: string } | null = null

  constructor (options: RoomOptions = {}) {
    this.#options = options
    this.roomId = options.roomId ?? ''
    this.#storage = options.createStorage?.(this.roomId)
    const throttle = options.saveThrottleMs ?? DEFAULT_SAVE_THROTTLE_MS
    if (!Number.isFinite(throttle) || throttle < 0) throw new RangeError('saveThrottleMs must be a number >= 0')
    this.#log = options.logger ?? silentLogger
    const durability = options.durability ?? 'durable'
    if (durability !== 'durable' && durability !== 'throttled') throw new RangeError("durability must be 'durable' or 'throttled'")
    this.#persistence = new Persistence({
      storage: this.#storage,
      document: () => this.#doc,
      throttleMs: throttle,
      durability,
      log: this.#log,
      roomId: this.roomId,
      onCommit: () => this.#releaseOutbox(),
      onGiveUp: (err) => this.#storageUnavailable(err),
      failureBoundMs: options.storageFailureTimeoutMs ?? DEFAULT_STORAGE_FAILURE_TIMEOUT_MS
    })
  }

  /**
   * Loads the document from storage. Call once, before connecting sessions.
   * @throws when storage fails to load; the room must then not be used
   */
  async load (): Promise<void> {
    if (this.#storage === undefined) return
    const snapshot = await this.#storage.load()
    this.#doc = Document.fromSnapshot(snapshot)
    this.#fullDiff = null
  }

  /** The room counter. */
  get timestamp (): number { return this.#doc.timestamp }

  /** True once {@link close} was called. */
  get closed (): boolean { return this.#closed }

  /** Number of document keys, tombstones included. */
  get documentSize (): number { return this.#doc.size }

  // ---------------------------------------------------------------- sessions

  /**
   * Adds a session: sends it the other clients' presence, then the new
   * `clientCount` to everyone.
   * @returns the new session's id
   */
  handleSocketConnect (options: ConnectOptions): string {
    const sessionId = randomUUID()
    if (this.#closed) {
      safeClose(options.socket, CloseCode.GOING_AWAY, 'Room closed')
      return sessionId
    }
    const session: Session = {
      sessionId,
      clientId: options.clientId,
      socket: options.socket,
      permissions: options.permissions,
      metadata: options.metadata,
      held: null
    }
    this.#sessions.set(sessionId, session)
    const presence = this.#presenceExcept(session.clientId)
    if (presence !== null) {
      this.#send(session, JSON.stringify({ type: 'patch', ephemeralPatches: [presence], clientId: '' }))
    }
    this.#broadcastClientCount()
    return sessionId
  }

  /** Handles one text frame of a session. Frames of unknown sessions are dropped. */
  handleSocketMessage (sessionId: string, data: string | Buffer | ArrayBuffer | Buffer[]): void {
    const session = this.#sessions.get(sessionId)
    if (session === undefined) return
    const text = typeof data === 'string' ? data : toText(data)
    if (session.held !== null) {
      if (session.held.length >= MAX_HELD_FRAMES) {
        this.disconnectSession(sessionId, CloseCode.POLICY_VIOLATION, 'Too many frames while auth-refresh is pending')
        return
      }
      session.held.push(text)
      return
    }
    this.#handleFrame(session, text)
  }

  /** The session's socket closed. */
  handleSocketClose (sessionId: string): void {
    this.#removeSession(sessionId)
  }

  /** The session's socket failed. */
  handleSocketError (sessionId: string): void {
    this.#removeSession(sessionId)
  }

  /** Closes one session's socket and removes it. @returns false for an unknown session */
  disconnectSession (sessionId: string, code: number = CloseCode.KICKED, reason = 'Disconnected by the server'): boolean {
    const session = this.#sessions.get(sessionId)
    if (session === undefined) return false
    safeClose(session.socket, code, reason)
    this.#removeSession(sessionId)
    return true
  }

  /** Closes every session's socket and removes the sessions; the room stays usable. */
  disconnectAll (code: number = CloseCode.GOING_AWAY, reason = 'Disconnected by the server'): void {
    for (const sessionId of Array.from(this.#sessions.keys())) this.disconnectSession(sessionId, code, reason)
  }

  getSessionCount (): number { return this.#sessions.size }

  getSessionPermissions (sessionId: string): SessionPermission | undefined {
    return this.#sessions.get(sessionId)?.permissions
  }

  /**
   * Changes a session's permissions; its very next frame obeys them.
   * @returns false for an unknown session
   */
  setSessionPermissions (sessionId: string, permissions: SessionPermission): boolean {
    const session = this.#sessions.get(sessionId)
    if (session === undefined) return false
    session.permissions = permissions
    return true
  }

  getSessionMetadata (sessionId: string): unknown {
    return this.#sessions.get(sessionId)?.metadata
  }

  setSessionMetadata (sessionId: string, metadata: unknown): void {
    const session = this.#sessions.get(sessionId)
    if (session !== undefined) session.metadata = metadata
  }

  /** One session's public description, or undefined. */
  getSession (sessionId: string): SessionInfo | undefined {
    const session = this.#sessions.get(sessionId)
    return session === undefined ? undefined : describe(session)
  }

  getSessions (): SessionInfo[] {
    return Array.from(this.#sessions.values(), describe)
  }

  /** A copy of the document: state and per-field timestamps, tombstones included. */
  getSnapshot (): RoomSnapshot {
    return this.#doc.toSnapshot()
  }

  // ------------------------------------------------------------- persistence

  /**
   * Writes every pending change now and waits for storage. Cancels the
   * pending throttled write; writes nothing when nothing changed.
   * @throws when storage fails
   */
  async flush (): Promise<void> {
    await this.#persistence.flush()
  }

  /**
   * Closes every session (1001), stops accepting frames and, unless
   * `flush: false`, saves. The returned promise never rejects: a failed final
   * save is logged (call {@link flush} to handle it yourself). Idempotent.
   */
  async close (options: { flush?: boolean } = {}): Promise<void> {
    if (!this.#closed) {
      this.#closed = true
      this.#persistence.stop()
      const sessions = Array.from(this.#sessions.values())
      this.#sessions.clear()
      this.#ephemeral.clear()
      for (const session of sessions) safeClose(session.socket, CloseCode.GOING_AWAY, 'Server closing the room')
    }
    if (options.flush === false) return
    try {
      await this.flush()
    } catch (err) {
      this.#log.error({ err, roomId: this.roomId }, 'final save of the room failed')
    }
  }

  // ---------------------------------------------------------------- protocol

  #handleFrame (session: Session, text: string): void {
    const parsed = parseClientFrame(text)
    switch (parsed.kind) {
      case 'ignore':
        return
      case 'version-mismatch':
        this.#sendMessage(session, { type: 'version-mismatch', serverProtocolVersion: 2 })
        return
      case 'invalid':
        this.#log.debug({ roomId: this.roomId, sessionId: session.sessionId, reason: parsed.message }, 'frame refused')
        this.#sendMessage(session, {
          type: 'error',
          code: frameErrorCodes.INVALID_FRAME,
          message: parsed.message,
          ...(parsed.messageId === undefined ? {} : { messageId: parsed.messageId })
        })
        return
    }
    const frame = parsed.frame
    switch (frame.type) {
      case 'patch':
        this.#handlePatch(session, frame)
        return
      case 'reconnect':
        this.#handleReconnect(session, frame)
        return
      case 'auth-refresh':
        this.#handleAuthRefresh(session, frame.token)
    }
  }

  #handlePatch (session: Session, frame: PatchRequest): void {
    const docs = hasContent(frame.documentPatches) ? frame.documentPatches : undefined
    const ephs = hasContent(frame.ephemeralPatches) ? frame.ephemeralPatches : undefined
    if (docs === undefined && ephs === undefined) return
    if (session.permissions === 'readwrite') {
      this.#apply(session, docs, ephs)
      this.#sendMessage(session, { type: 'ack', messageId: frame.messageId, timestamp: this.#doc.timestamp })
      return
    }
    // Nothing is applied, but the published client needs the ack to settle its in-flight write.
    this.#sendMessage(session, { type: 'ack', messageId: frame.messageId, timestamp: this.#doc.timestamp })
    if (docs !== undefined) this.#refuseReadonly(session, docs)
  }

  #handleReconnect (session: Session, frame: ReconnectRequest): void {
    const since = this.#doc.timestamp
    const docs = hasContent(frame.documentPatches) ? frame.documentPatches : undefined
    const ephs = hasContent(frame.ephemeralPatches) ? frame.ephemeralPatches : undefined
    const readwrite = session.permissions === 'readwrite'
    // The client saw a counter we never reached: we lost acked work (crash, restore).
    const resync = readwrite && frame.lastTimestamp > since
    if (readwrite) {
      if (docs !== undefined || ephs !== undefined) this.#apply(session, docs, ephs)
    } else if (docs !== undefined) {
      this.#refuseReadonly(session, docs)
    }
    if (resync) this.#sendMessage(session, { type: 'resync', since })

    const timestamp = this.#doc.timestamp
    const diff = this.#diffJson(frame.lastTimestamp)
    const presence = this.#presenceExcept(session.clientId)
    if (diff !== null || presence !== null) {
      let out = '{"type":"patch","clientId":""'
      if (diff !== null) out += `,"documentPatches":[${diff}],"timestamp":${timestamp}`
      if (presence !== null) out += `,"ephemeralPatches":[${JSON.stringify(presence)}]`
      this.#send(session, out + '}')
    }
    this.#sendMessage(session, { type: 'synced', timestamp })
  }

  #handleAuthRefresh (session: Session, token: string): void {
    const refresh = this.#options.onTokenRefresh
    if (refresh === undefined) return
    const { sessionId, clientId } = session
    session.held = []
    Promise.resolve()
      .then(() => refresh(this, { sessionId, clientId, token }))
      .then((result) => {
        const target = this.#sessions.get(sessionId)
        if (target === undefined) return
        target.permissions = result.permissions
        if (result.metadata !== undefined) target.metadata = result.metadata
        this.#releaseHeld(target)
      }, (err: unknown) => {
        if (!this.#sessions.has(sessionId)) return
        this.#log.info({ roomId: this.roomId, sessionId, err }, 'auth-refresh refused')
        const [code, reason] = refusal(err)
        this.disconnectSession(sessionId, code, reason)
      })
  }

  #releaseHeld (session: Session): void {
    const frames = session.held ?? []
    session.held = null
    for (let i = 0; i < frames.length; i++) {
      if (!this.#sessions.has(session.sessionId)) return
      const held = session.held as string[] | null
      if (held !== null) {
        // One of the frames was another auth-refresh: the rest wait for it too.
        held.push(...frames.slice(i))
        return
      }
      this.#handleFrame(session, frames[i])
    }
  }

  /** Applies the patches of a readwrite session and forwards them to the other sessions. */
  #apply (session: Session, docs: Patch[] | undefined, ephs: Patch[] | undefined): void {
    let timestamp: number | undefined
    if (docs !== undefined) {
      const stored = this.#doc.applyFrame(docs)
      timestamp = this.#doc.timestamp
      if (stored !== null && stored.length > 0) this.#persistence.noteChanges(stored)
    }
    if (ephs !== undefined) this.#applyPresence(session.clientId, ephs)

    if (this.#sessions.size > 1) {
      const broadcast: ServerMessage = { type: 'patch', clientId: session.clientId }
      if (docs !== undefined) {
        broadcast.documentPatches = docs
        broadcast.timestamp = timestamp
      }
      if (ephs !== undefined) broadcast.ephemeralPatches = ephs
      const data = JSON.stringify(broadcast)
      for (const other of this.#sessions.values()) {
        if (other !== session) this.#send(other, data)
      }
    }
    if (docs !== undefined) this.#options.onDocumentPatch?.(this, docs)
  }

  /**
   * A readonly session tried to write: tell it why, and send the server's
   * current values of the keys it touched (a tombstone where the server has
   * none), so that its local copy converges back.
   */
  #refuseReadonly (session: Session, docs: Patch[]): void {
    this.#sendMessage(session, {
      type: 'error',
      code: frameErrorCodes.READONLY,
      message: 'This session is readonly: its changes were not applied'
    })
    const corrective = emptyRecord<ComponentData>()
    for (const patch of docs) {
      for (const key of Object.keys(patch)) {
        const value = this.#doc.get(key)
        corrective[key] = (value === undefined ? { _exists: false } : value) as ComponentData
      }
    }
    this.#send(session, JSON.stringify({
      type: 'patch',
      clientId: '',
      documentPatches: [corrective],
      timestamp: this.#doc.timestamp
    }))
  }

  /** The document diff since `since` as JSON, or null when nothing changed. The full document is cached per counter value. */
  #diffJson (since: number): string | null {
    const timestamp = this.#doc.timestamp
    if (since >= timestamp) return null
    if (since === 0 && this.#fullDiff !== null && this.#fullDiff.timestamp === timestamp) return this.#fullDiff.json
    const { patch, keys } = this.#doc.changesSince(since)
    if (keys === 0) return null
    const json = JSON.stringify(patch)
    if (since === 0) this.#fullDiff = { timestamp, json }
    return json
  }

  // ---------------------------------------------------------------- presence

  #applyPresence (clientId: string, patches: Patch[]): void {
    let state = this.#ephemeral.get(clientId)
    if (state === undefined) {
      state = new Map()
      this.#ephemeral.set(clientId, state)
    }
    for (const patch of patches) {
      for (const key of Object.keys(patch)) {
        const [kind, value] = applyValue(state.get(key), patch[key])
        if (kind === 'dropped') continue
        // Presence is never persisted, so a deleted key is simply forgotten.
        if (kind === 'tombstone') state.delete(key)
        else state.set(key, value!)
      }
    }
    if (state.size === 0) this.#ephemeral.delete(clientId)
  }

  /** Every other client's presence merged into one patch, or null when there is none. */
  #presenceExcept (clientId: string): Patch | null {
    let merged: Patch | null = null
    for (const [owner, state] of this.#ephemeral) {
      if (owner === clientId) continue
      for (const [key, value] of state) {
        merged ??= emptyRecord<ComponentData>()
        merged[key] = value as ComponentData
      }
    }
    return merged
  }

  #removeSession (sessionId: string): void {
    const session = this.#sessions.get(sessionId)
    if (session === undefined) return
    this.#sessions.delete(sessionId)
    const clientId = session.clientId
    // Another live session of the same client (a reconnect that raced the old socket's close) keeps the presence.
    const stillHere = Array.from(this.#sessions.values()).some((s) => s.clientId === clientId)
    const state = this.#ephemeral.get(clientId)
    if (state !== undefined && !stillHere) {
      this.#ephemeral.delete(clientId)
      const deletion = emptyRecord<ComponentData>()
      for (const key of state.keys()) deletion[key] = { _exists: false }
      this.#broadcast(JSON.stringify({ type: 'patch', ephemeralPatches: [deletion], clientId }))
    }
    this.#broadcastClientCount()
    this.#options.onSessionRemoved?.(this, { sessionId, remaining: this.#sessions.size })
  }

  // --------------------------------------------------------------- transport

  #broadcastClientCount (): void {
    this.#broadcast(`{"type":"clientCount","count":${this.#sessions.size}}`)
  }

  #broadcast (data: string): void {
    for (const session of this.#sessions.values()) this.#send(session, data)
  }

  #sendMessage (session: Session, message: ServerMessage): void {
    this.#send(session, JSON.stringify(message))
  }

  /** Sends now, or, with durable acks, once what the message reports is committed (order kept). */
  #send (session: Session, data: string): void {
    const persistence = this.#persistence
    if (persistence.holding) {
      const need = persistence.required
      if (this.#outbox.length > 0 || need > persistence.committed) {
        this.#outbox.push({ need, session, data })
        return
      }
    }
    this.#deliver(session, data)
  }

  #deliver (session: Session, data: string): void {
    const socket = session.socket
    if (socket.readyState !== undefined && socket.readyState !== OPEN) return
    try {
      socket.send(data)
    } catch (err) {
      this.#log.debug({ err, roomId: this.roomId, sessionId: session.sessionId }, 'send failed')
    }
  }

  // ------------------------------------------------------------- durability

  #releaseOutbox (): void {
    const committed = this.#persistence.committed
    let i = 0
    while (i < this.#outbox.length && this.#outbox[i].need <= committed) {
      const { session, data } = this.#outbox[i++]
      this.#deliver(session, data)
    }
    if (i > 0) this.#outbox = this.#outbox.slice(i)
  }

  /** Writes have failed for too long: tell the sessions and let their clients reconnect and re-send. */
  #storageUnavailable (err: unknown): void {
    if (this.#sessions.size === 0) return
    this.#log.error({ err, roomId: this.roomId }, 'storage unavailable: closing the sessions of the room')
    this.#outbox = []
    for (const session of Array.from(this.#sessions.values())) {
      this.#deliver(session, JSON.stringify({ type: 'error', code: frameErrorCodes.STORAGE_UNAVAILABLE, message: 'Storage unavailable: changes not yet acked were not saved' }))
      this.disconnectSession(session.sessionId, CloseCode.INTERNAL_ERROR, 'Storage unavailable')
    }
  }
}

function describe (session: Session): SessionInfo {
  return {
    sessionId: session.sessionId,
    clientId: session.clientId,
    permissions: session.permissions,
    metadata: session.metadata
  }
}

function toText (data: Buffer | ArrayBuffer | Buffer[]): string {
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8')
  if (data instanceof ArrayBuffer) return Buffer.from(data).toString('utf8')
  return data.toString('utf8')
}

/** Closes a socket, ignoring a socket that is already gone. */
export function safeClose (socket: WebSocketLike, code: number, reason: string): void {
  try {
    socket.close(code, closeReason(reason))
  } catch {
    // already closed or never opened: nothing left to release
  }
}

/**
 * Close code and reason for a refused authorization: 4401/4403 when the
 * error carries statusCode 401/403, 1008 otherwise.
 */
export function refusal (err: unknown): [number, string] {
  const status = (err as { statusCode?: unknown } | null)?.statusCode
  const message = err instanceof Error && err.message !== '' ? err.message : 'Unauthorized'
  if (status === 401) return [CloseCode.UNAUTHORIZED, message]
  if (status === 403) return [CloseCode.FORBIDDEN, message]
  return [CloseCode.POLICY_VIOLATION, message]
}
