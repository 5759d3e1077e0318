import { randomUUID } from 'node:crypto'
import { AuthorizeTimeoutError, CloseCode, closeReason, frameErrorCodes, isRoomMoved } from '../errors.js'
import { isRecord, parseClientFrame, type InvalidFrame } from '../protocol/frames.js'
import { PROTOCOL_VERSION } from '../protocol/types.js'
import type {
  ClientMessage,
  ComponentData,
  FieldTimestamps,
  Patch,
  PatchRequest,
  ReconnectRequest,
  RoomSnapshot,
  ServerMessage,
  SessionInfo,
  SessionPermission
} from '../protocol/types.js'
import type { Storage } from '../storage/storage.js'
import { catchUpAllowance, type CatchUpAllowance } from './catch-up.js'
import { Document, Presence, emptyRecord, hasContent, growthOf, isBufferDelta, isLive, type StoredRecords } from './document.js'
import { DEFAULT_LIMITS, DEFAULT_RATE_LIMIT, DEFAULT_SLOW_CLIENT, TokenBucket, countKeys, ownCount, type RateLimit, type RoomLimits, type SlowClientPolicy } from './limits.js'
import { Persistence, type Durability } from './persistence.js'
import { Pacer } from './pacer.js'
import { MAX_TIMER_MS, SlotTimers, type SlotClock } from './slots.js'
import { PresenceBatch } from './presence-batch.js'
import { frameBound, growthBound } from './size.js'
import { MAX_HELD_BYTES, MAX_HELD_FRAMES, silentLogger, type RoomLogger, type RoomObserver, type Session, type WebSocketLike } from './session.js'

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
  /**
   * Called once the room has closed itself because its storage said another
   * process loaded the room since (see RoomMovedError): forget it (a
   * RoomManager does), so that the next connection loads it afresh.
   */
  onMoved?: (room: Room) => void
  /** Called after document patches from a readwrite session were applied. Their values are the room's own stored values: read them, never change them. */
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
   * How long writes may keep failing, or (with durable acks) one write may
   * stay pending, before the room's sessions are closed with 1011 (their
   * clients reconnect and re-send what was not acked). The room keeps
   * retrying in the background. At most 2147483647; 0 does not watch
   * pending writes.
   * @default 10000
   */
  storageFailureTimeoutMs?: number
  /** Bounds on frames, document and presence size, and sessions; see {@link DEFAULT_LIMITS}. */
  limits?: Partial<RoomLimits>
  /** Per-session frame and byte rates, or `false` for none; see {@link DEFAULT_RATE_LIMIT}. */
  rateLimit?: Partial<RateLimit> | false
  /** What to do with sessions that cannot keep up, or `false` for nothing; see {@link DEFAULT_SLOW_CLIENT}. */
  slowClient?: Partial<SlowClientPolicy> | false
  /** Shared by the rooms of one plugin (slowClient.catchUpBytes across them); by default the room's own. */
  catchUp?: CatchUpAllowance
  /** Where the room logs (pino-like). Silent by default. */
  logger?: RoomLogger
  /** Receives measurements (frames, bytes, apply and storage times). */
  observer?: RoomObserver
  /**
   * Batch presence per event-loop turn: each session gets at most one
   * presence frame per turn with every other client's latest values, instead
   * of one frame per sender frame; `clientCount` goes to the newcomer at once
   * and to the others once per turn. The plugin turns it on; off here,
   * presence frames and counts are sent as they happen, at once.
   * @default false
   */
  presenceBatching?: boolean
  /**
   * Time and timers of the room's paced sends (batched presence, counts) and
   * of its storage writes. Tests pass a clock that moves only when told to;
   * by default performance.now() and Node's timers, throttled writes sharing
   * timers with every other room (see slots.ts).
   */
  clock?: SlotClock
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
/** The longest a join waits for the storage's answer to checkClaim. */
const MAX_CLAIM_CHECK_MS = 1000
const OPEN = 1
/**
 * With presence batching, in a room of at least PACED_SESSIONS sessions,
 * presence goes out at most every PRESENCE_INTERVAL_MS (about 60 batches a
 * second), and clientCount to the sessions that did not cause the change
 * once the count has not moved for COUNT_INTERVAL_MS, or COUNT_SETTLE_MS
 * after the first change it reports (a storm of reconnects in a room of n
 * sessions then costs the others one count each, not one per round while
 * it lasts). Smaller rooms get both at the end of every loop turn: their
 * cost, sessions times changes, stays small.
 */
const PACED_SESSIONS = 32
/** Above this many characters, the diff and the presence a reconnect is answered with go as two frames. */
const JOIN_FRAME_SPLIT_CHARS = 64 * 1024 * 1024
const PRESENCE_INTERVAL_MS = 16
const COUNT_INTERVAL_MS = 100
const COUNT_SETTLE_MS = 1000

/**
 * A session's id: a random UUID, as one flat string. crypto.randomUUID()
 * builds its string by concatenation, a chain of about 14 cons strings that
 * V8 keeps as it is: 480 bytes of heap for the session's life, against 57.
 */
function newSessionId (): string {
  return Buffer.from(randomUUID(), 'latin1').toString('latin1')
}

/**
 * One document and the sessions editing it: applies frames, fans them out
 * (each broadcast serialized once), keeps presence per client and schedules
 * persistence. Usable without Fastify: feed it sockets and text frames.
 */
export class Room {
  /** The room's id ('' when created without one). */
  readonly roomId: string
  #doc = new Document()
  /**
   * Counters acked by a process that crashed and not written (throttled
   * acks): above the loaded document's last stamp and below the reservation
   * it was loaded with (see #handleReconnect).
   */
  #lost: { after: number, before: number } | null = null
  /** clientId -> that client's presence (key -> value, and its size). */
  readonly #ephemeral = new Map<string, Presence>()
  readonly #sessions = new Map<string, Session>()
  /** clientId -> its sessions now (more than one while a reconnect races the old socket's close). */
  readonly #clientSessions = new Map<string, number>()
  readonly #storage: Storage | undefined
  /** A checkClaim under way, shared by the sessions joining meanwhile. */
  #claimCheck: Promise<boolean> | null = null
  /** How long a checkClaim waits for the storage: half the bound on loads, at most a second. */
  readonly #claimCheckMs: number
  readonly #persistence: Persistence
  readonly #log: RoomLogger
  readonly #observer: RoomObserver | undefined
  readonly #options: RoomOptions
  readonly #limits: RoomLimits
  readonly #rateLimit: RateLimit | null
  readonly #slow: SlowClientPolicy | null
  readonly #catchUp: CatchUpAllowance
  /** Presence since the last batch, sent once per session (when batching: see #flushPresence). */
  readonly #presence = new PresenceBatch()
  readonly #batchPresence: boolean
  readonly #presencePacer: Pacer
  /** With batching: a clientCount change some sessions have not been sent yet (see #flushCounts). */
  #countPending = false
  readonly #countPacer: Pacer
  /** With durable acks: messages waiting for the write that holds what they report. */
  #outbox: Array<{ need: number, session: Session, data: string, droppable: boolean, answer: number }> = []
  #closed = false
  /** Serialized full document (diff since 0) for the counter value it was made at. */
  #fullDiff: { timestamp: number, json: string } | null = null

  constructor (options: RoomOptions = {}) {
    this.#options = options
    this.roomId = options.roomId ?? ''
    this.#storage = options.createStorage?.(this.roomId)
    const throttle = options.saveThrottleMs ?? DEFAULT_SAVE_THROTTLE_MS
    if (!Number.isFinite(throttle) || throttle < 0 || throttle > MAX_TIMER_MS) throw new RangeError(`saveThrottleMs must be a number from 0 to ${MAX_TIMER_MS}`)
    const failureBound = options.storageFailureTimeoutMs ?? DEFAULT_STORAGE_FAILURE_TIMEOUT_MS
    if (!(failureBound >= 0 && failureBound <= MAX_TIMER_MS)) throw new RangeError(`storageFailureTimeoutMs must be a number from 0 to ${MAX_TIMER_MS}`)
    this.#log = options.logger ?? silentLogger
    this.#claimCheckMs = failureBound > 0 ? Math.min(MAX_CLAIM_CHECK_MS, failureBound / 2) : MAX_CLAIM_CHECK_MS
    this.#observer = options.observer
    this.#batchPresence = options.presenceBatching === true
    this.#limits = { ...DEFAULT_LIMITS, ...options.limits }
    this.#rateLimit = options.rateLimit === false ? null : { ...DEFAULT_RATE_LIMIT, ...options.rateLimit }
    this.#slow = options.slowClient === false ? null : { ...DEFAULT_SLOW_CLIENT, ...options.slowClient }
    this.#catchUp = options.catchUp ?? catchUpAllowance(options.slowClient)
    const durability = options.durability ?? 'durable'
    if (durability !== 'durable' && durability !== 'throttled') throw new RangeError("durability must be 'durable' or 'throttled'")
    const clock = options.clock
    this.#presencePacer = new Pacer(PRESENCE_INTERVAL_MS, () => this.#guarded('sending batched presence', () => this.#flushPresence()), clock)
    this.#countPacer = new Pacer(COUNT_INTERVAL_MS, () => this.#guarded('sending clientCount', () => this.#flushCounts()), clock, COUNT_SETTLE_MS)
    this.#persistence = new Persistence({
      storage: this.#storage,
      document: () => this.#doc,
      throttleMs: throttle,
      durability,
      log: this.#log,
      roomId: this.roomId,
      onCommit: () => this.#releaseOutbox(),
      onGiveUp: (err) => this.#storageUnavailable(err),
      onMoved: (err) => this.#moved(err),
      observer: options.observer,
      failureBoundMs: failureBound,
      slots: clock === undefined ? undefined : new SlotTimers(clock)
    })
  }

  /**
   * Loads the document from storage. Call once, before connecting sessions.
   * @throws when storage fails to load; the room must then not be used
   */
  async load (): Promise<void> {
    if (this.#storage === undefined) return
    const snapshot = await this.#storage.load()
    // A damaged snapshot (a file edited by hand, a custom storage's bug) must not load as an empty room, whose
    // next save would replace what is stored: refuse it, like one that cannot be read.
    if (snapshot !== null && snapshot !== undefined && !isSnapshotShaped(snapshot)) {
      throw new Error(`the stored snapshot of room ${JSON.stringify(this.roomId)} is malformed (not an object whose state is an object of objects): not loaded, so that nothing overwrites it`)
    }
    this.#doc = Document.fromSnapshot(snapshot)
    this.#lost = this.#persistence.loaded(this.#doc.timestamp, this.#doc.loadedStamp)
    this.#fullDiff = null
  }

  /** True when the room's storage can tell whether another process has loaded the room since (see checkClaim). */
  get checksClaim (): boolean { return this.#storage?.checkClaim !== undefined }

  /**
   * Before a session joins the room while it is loaded: asks the storage
   * whether another process has loaded (claimed) the room since this one
   * did. If it has, what this process holds is stale: the room closes as
   * when a write is refused (sessions get 1013) and false is returned, so
   * that the caller loads the room afresh. Checks made at the same time
   * share one question. A storage that fails to answer is logged and the
   * room kept (true): its writes would find the claim.
   */
  checkClaim (): Promise<boolean> {
    const storage = this.#storage
    if (storage?.checkClaim === undefined || this.#closed) return Promise.resolve(!this.#closed)
    if (this.#claimCheck !== null) return this.#claimCheck
    let timer: NodeJS.Timeout | undefined
    // A check the storage does not answer soon (a lock, an exhausted pool) must not hold the joins: before the
    // bound on loads, it counts as one that failed.
    const late = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${this.#claimCheckMs} ms`)), this.#claimCheckMs)
      timer.unref()
    })
    this.#claimCheck = Promise.race([storage.checkClaim(), late]).then(() => !this.#closed, (err: unknown) => {
      if (isRoomMoved(err)) {
        this.#moved(err)
        return false
      }
      this.#log.warn({ err, roomId: this.roomId }, 'could not check whether another process has loaded the room; kept')
      return !this.#closed
    }).finally(() => {
      clearTimeout(timer)
      this.#claimCheck = null
    })
    return this.#claimCheck
  }

  /** The room counter. */
  get timestamp (): number { return this.#doc.timestamp }

  /** True once {@link close} was called. */
  get closed (): boolean { return this.#closed }

  /** Number of document keys, tombstones included. */
  get documentSize (): number { return this.#doc.size }

  /** Estimated size of the document as JSON text, in bytes (see `limits.maxDocumentBytes`). */
  get documentBytes (): number { return this.#doc.bytes }

  // ---------------------------------------------------------------- sessions

  /**
   * Adds a session: sends it the other clients' presence, then the new
   * `clientCount` to everyone.
   * @returns the new session's id
   */
  handleSocketConnect (options: ConnectOptions): string {
    const sessionId = newSessionId()
    if (this.#closed) {
      safeClose(options.socket, CloseCode.GOING_AWAY, 'Room closed')
      return sessionId
    }
    if (this.#sessions.size >= this.#limits.maxSessions) {
      safeClose(options.socket, CloseCode.TRY_AGAIN_LATER, 'Room is full')
      return sessionId
    }
    const session: Session = {
      sessionId,
      clientId: options.clientId,
      socket: options.socket,
      permissions: options.permissions,
      permissionsSet: 0,
      metadata: options.metadata,
      held: null,
      heldBytes: 0,
      bucket: this.#rateLimit === null ? null : new TokenBucket(this.#rateLimit, performance.now()),
      refusedInRow: 0,
      lastRefusedAt: Number.NEGATIVE_INFINITY,
      slowSince: 0,
      catchUpBytes: 0,
      answers: 0,
      presenceStale: false,
      // With batching the newcomer gets the count right after its presence, below: nothing to catch up before that.
      countSeen: this.#batchPresence ? this.#sessions.size + 1 : 0,
      joined: false
    }
    this.#sessions.set(sessionId, session)
    this.#clientSessions.set(session.clientId, (this.#clientSessions.get(session.clientId) ?? 0) + 1)
    const presence = this.#presenceFrame(session.clientId)
    if (presence !== null) this.#send(session, presence)
    // The newcomer always learns the count at once; with batching, the others get it at the end of the turn.
    if (this.#batchPresence) this.#sendCount(session)
    this.#broadcastClientCount()
    return sessionId
  }

  /** Handles one text frame of a session. Frames of unknown sessions are dropped. */
  handleSocketMessage (sessionId: string, data: string | Buffer | ArrayBuffer | Buffer[]): void {
    const session = this.#sessions.get(sessionId)
    if (session === undefined) return
    const text = typeof data === 'string' ? data : toText(data)
    const bytes = byteSize(data, text)
    const start = performance.now()
    // Taken on arrival, so that frames held during an auth-refresh are rate limited too.
    const limited = session.bucket !== null && !session.bucket.take(bytes, start)
    if (session.held !== null) {
      session.heldBytes += bytes
      if (session.held.length >= MAX_HELD_FRAMES || session.heldBytes > MAX_HELD_BYTES) {
        this.disconnectSession(sessionId, CloseCode.POLICY_VIOLATION, 'Too many frames while auth-refresh is pending')
        return
      }
      session.held.push([text, limited, bytes, session.permissionsSet])
      return
    }
    const type = this.#handleGuarded(session, text, limited)
    this.#observer?.frameIn(type, bytes, (performance.now() - start) / 1000)
  }

  /** Handles one frame; a throw closes only that session (1011). @returns its type, for metrics */
  #handleGuarded (session: Session, text: string, limited: boolean, permissionsSet = session.permissionsSet): string {
    try {
      return this.#handleFrame(session, text, limited, permissionsSet)
    } catch (err) {
      // A bug must cost one session, never the room or the process.
      this.#log.error({ err, roomId: this.roomId, sessionId: session.sessionId }, 'handling a frame failed; closing the session')
      this.#guarded('closing a failed session', () => this.disconnectSession(session.sessionId, CloseCode.INTERNAL_ERROR, 'Internal error'))
      return 'failed'
    }
  }

  /** Runs a callback scheduled by the room (setImmediate, a promise): a throw is logged, never left to crash the process. */
  #guarded (what: string, fn: () => void): void {
    try {
      fn()
    } catch (err) {
      this.#log.error({ err, roomId: this.roomId }, `${what} failed`)
    }
  }

  /** Frames waiting for a write before they can be sent (durable acks, or a throttled room's reservation). */
  get pendingMessages (): number { return this.#outbox.length }

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

  /** Sessions connected to the room now. */
  getSessionCount (): number { return this.#sessions.size }

  /** A session's permissions, or undefined for an unknown session. */
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
    if (session.permissions !== permissions) session.permissionsSet++
    this.#changePermissions(session, permissions)
    return true
  }

  /** Sets a session's permissions and, when they change, tells its client. */
  #changePermissions (session: Session, permissions: SessionPermission): void {
    if (session.permissions === permissions) return
    session.permissions = permissions
    this.#sendMessage(session, { type: 'permissions', permissions })
  }

  /** What `authorize` (or {@link setSessionMetadata}) gave the session, or undefined. */
  getSessionMetadata (sessionId: string): unknown {
    return this.#sessions.get(sessionId)?.metadata
  }

  /** Replaces a session's metadata (shown by the admin routes); nothing for an unknown session. Not sent to clients. */
  setSessionMetadata (sessionId: string, metadata: unknown): void {
    const session = this.#sessions.get(sessionId)
    if (session !== undefined) session.metadata = metadata
  }

  /** One session's public description, or undefined. */
  getSession (sessionId: string): SessionInfo | undefined {
    const session = this.#sessions.get(sessionId)
    return session === undefined ? undefined : describe(session)
  }

  /** Every connected session's public description, in the order they joined. */
  getSessions (): SessionInfo[] {
    return Array.from(this.#sessions.values(), describe)
  }

  /** A copy of the document (plain objects the caller may change, arrays and nested objects included): state and per-field timestamps, tombstones included. */
  getSnapshot (): RoomSnapshot {
    const shared = this.#doc.toSnapshot()
    const state = emptyRecord<ComponentData>()
    const timestamps = emptyRecord<FieldTimestamps>()
    for (const key in shared.state) {
      // Deep: a stored array is the room's own (and its size is remembered), never to be changed in place.
      state[key] = structuredClone(shared.state[key])
      timestamps[key] = { ...shared.timestamps[key] }
    }
    return { timestamp: shared.timestamp, state, timestamps }
  }

  // ------------------------------------------------------------- persistence

  /**
   * Writes every pending change now and waits for storage. Cancels the
   * pending throttled write; writes nothing when nothing changed, except
   * that with throttled acks and no session connected it stores the counter
   * itself in place of the reservation stored before (see
   * COUNTER_RESERVE).
   * @throws when storage fails
   */
  async flush (): Promise<void> {
    await this.#persistence.flush(() => this.#sessions.size === 0)
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
      this.#countPacer.cancel()
      this.#presencePacer.cancel()
      const sessions = Array.from(this.#sessions.values())
      this.#sessions.clear()
      this.#clientSessions.clear()
      this.#ephemeral.clear()
      for (const session of sessions) {
        this.#catchUp.release(session)
        safeClose(session.socket, CloseCode.GOING_AWAY, 'Server closing the room')
      }
    }
    if (options.flush === false) return
    try {
      await this.flush()
    } catch (err) {
      this.#log.error({ err, roomId: this.roomId }, 'final save of the room failed')
    }
  }

  // ---------------------------------------------------------------- protocol

  /**
   * Handles one frame. `permissionsSet`: the session's count of permission
   * changes when the frame arrived (see #handleAuthRefresh).
   * @returns its type, for metrics
   */
  #handleFrame (session: Session, text: string, limited = false, permissionsSet = session.permissionsSet): string {
    const parsed = parseClientFrame(text)
    let frame: ClientMessage
    let bufferItems = 0
    switch (parsed.kind) {
      case 'ignore':
      case 'version-mismatch':
        // Over the rate, a frame the protocol ignores, or one of another version, is refused for the rate like
        // any other and counts toward closeAfter: garbage must not be a way around the limit.
        if (limited) {
          this.#refuse(session, undefined, undefined, RATE_LIMITED)
          this.#overRate(session, false)
          return 'rate-limited'
        }
        if (parsed.kind === 'ignore') return 'ignored'
        this.#sendMessage(session, { type: 'version-mismatch', serverProtocolVersion: PROTOCOL_VERSION })
        return 'version-mismatch'
      case 'invalid':
        this.#log.debug({ roomId: this.roomId, sessionId: session.sessionId, reason: parsed.message }, 'frame refused')
        this.#refuseInvalid(session, parsed, limited)
        if (parsed.reconnect === undefined) {
          if (limited) this.#overRate(session, false)
          return 'invalid'
        }
        // Only the patches it carries are wrong: they were refused, and the reconnect is still answered (diff,
        // synced), or a client whose offline changes hold a bad key could never sync again.
        frame = parsed.reconnect
        break
      default:
        frame = parsed.frame
        bufferItems = parsed.bufferItems
    }
    if (limited) {
      this.#rateLimited(session, frame)
      if (frame.type !== 'reconnect' || !this.#sessions.has(session.sessionId)) return 'rate-limited'
    }
    switch (frame.type) {
      case 'patch':
        this.#handlePatch(session, frame, bufferItems, text.length)
        break
      case 'reconnect':
        // The protocol promises every reconnect a diff and `synced`: a rate-limited one only loses its carried patches.
        this.#handleReconnect(session, limited ? { ...frame, documentPatches: undefined, ephemeralPatches: undefined } : frame, bufferItems, text.length)
        break
      case 'auth-refresh':
        this.#handleAuthRefresh(session, frame.token, permissionsSet)
    }
    return parsed.kind === 'invalid' ? 'invalid' : frame.type
  }

  /**
   * A frame of the wrong shape is never applied, and is refused like any
   * other write (see #refuse): a patch that names its message is acked (the
   * published client keeps a write in flight, masking its fields, until it
   * is), and it, or a reconnect that is answered all the same, gets the
   * server's values of the keys it touched, unless the session is over its
   * rate. Other frames get the error alone.
   */
  #refuseInvalid (session: Session, parsed: InvalidFrame, limited: boolean): void {
    const answered = parsed.messageId !== undefined || parsed.reconnect !== undefined
    this.#refuse(session, parsed.messageId, answered && !limited ? parsed.documentPatches : undefined, [frameErrorCodes.INVALID_FRAME, parsed.message])
  }

  #handlePatch (session: Session, frame: PatchRequest, bufferItems: number, chars: number): void {
    const docs = hasContent(frame.documentPatches) ? frame.documentPatches : undefined
    const ephs = hasContent(frame.ephemeralPatches) ? frame.ephemeralPatches : undefined
    if (docs === undefined && ephs === undefined) return
    if (session.permissions === 'readwrite') {
      this.#applyWithinLimits(session, docs, ephs, bufferItems, chars, frame.messageId)
      return
    }
    if (docs !== undefined) this.#refuse(session, frame.messageId, docs, READONLY)
    else this.#sendAck(session, frame.messageId)
  }

  #handleReconnect (session: Session, frame: ReconnectRequest, bufferItems: number, chars: number): void {
    const counter = this.#doc.timestamp
    const docs = hasContent(frame.documentPatches) ? frame.documentPatches : undefined
    const ephs = hasContent(frame.ephemeralPatches) ? frame.ephemeralPatches : undefined
    const readwrite = session.permissions === 'readwrite'
    const seen = frame.lastTimestamp
    // The client saw a counter we never reached: we lost acked work (crash, restore). Or one that a process
    // which crashed with throttled acks gave and never wrote (see #lost): no counter of this process's is
    // below the loaded one, it only gives higher ones. It re-sends what it holds after the last one stored.
    const lostAfter = this.#lost !== null && seen > this.#lost.after && seen < this.#lost.before ? this.#lost.after : null
    const resync = readwrite && (seen > counter || lostAfter !== null)
    const since = lostAfter ?? counter
    if (readwrite) {
      if (docs !== undefined || ephs !== undefined) this.#applyWithinLimits(session, docs, ephs, bufferItems, chars, undefined)
    } else if (docs !== undefined) {
      this.#refuse(session, undefined, docs, READONLY)
    }
    if (resync) {
      // The counter here may be stale rather than lost: another process may have loaded the room and written
      // past it. A resync would then have the client write old values over newer acked ones. With durable acks
      // it waits for a write of the counter, which such a storage refuses (RoomMovedError: the session is closed
      // with 1013 and reconnects where the room is).
      this.#persistence.confirm()
      this.#sendMessage(session, { type: 'resync', since })
    }

    const timestamp = this.#doc.timestamp
    const diff = this.#diffJson(frame.lastTimestamp)
    const merged = this.#presenceExcept(session.clientId)
    const presence = merged === null ? null : JSON.stringify(merged)
    const head = '{"type":"patch","clientId":""'
    const documentPart = diff === null ? '' : `,"documentPatches":[${diff}],"timestamp":${timestamp}`
    const presencePart = presence === null ? '' : `,"ephemeralPatches":[${presence}]`
    // Only the latest answer is exempt from the slow-client limits: a client that reconnects again and again
    // without reading is not.
    const answer = ++session.answers
    this.#endCatchUp(session)
    // One frame, or two when together they would be large: each part is bounded (limits.maxDocumentBytes,
    // limits.maxEphemeralBytes per client), their sum could pass the longest string V8 can build.
    const frames = documentPart.length + presencePart.length > JOIN_FRAME_SPLIT_CHARS
      ? [documentPart, presencePart].filter((part) => part !== '').map((part) => head + part + '}')
      : documentPart === '' && presencePart === '' ? [] : [head + documentPart + presencePart + '}']
    for (const frame of frames) {
      // The first reconnect of a session is its join: only the ones after it are charged.
      if (session.joined) this.#charge(session, frame.length)
      this.#send(session, frame, false, answer)
    }
    session.joined = true
    this.#sendMessage(session, { type: 'synced', timestamp })
  }

  /**
   * Applies a readwrite session's patches, or refuses them (see #refuse). A
   * presence limit refuses the presence alone: the document patches, checked
   * without it, are applied, then the error follows (presence has no
   * corrective). A `patch` (it has a messageId) is acked after the apply.
   */
  #applyWithinLimits (session: Session, docs: Patch[] | undefined, ephs: Patch[] | undefined, bufferItems: number, chars: number, messageId: string | undefined): void {
    const violation = this.#checkLimits(session, docs, ephs, bufferItems, chars)
    if (violation !== null && !(isPresenceOnly(violation) && docs !== undefined)) {
      this.#refuse(session, messageId, docs, violation)
      return
    }
    this.#apply(session, docs, violation === null ? ephs : undefined)
    if (messageId !== undefined) this.#sendAck(session, messageId)
    if (violation !== null) this.#sendMessage(session, { type: 'error', code: violation[0], message: violation[1], ...(messageId === undefined ? {} : { messageId }) })
  }

  /**
   * `set`: the session's count of permission changes when the frame arrived.
   * A change made since (by an administrator) is the later decision: the
   * refresh may then only make the session stricter (readonly), never undo it.
   */
  #handleAuthRefresh (session: Session, token: string, set: number): void {
    const refresh = this.#options.onTokenRefresh
    if (refresh === undefined) return
    const { sessionId, clientId } = session
    session.held = []
    session.heldBytes = 0
    Promise.resolve()
      .then(() => refresh(this, { sessionId, clientId, token }))
      .then((result) => {
        const target = this.#sessions.get(sessionId)
        if (target === undefined) return
        if (target.permissionsSet === set || result.permissions === 'readonly') this.#changePermissions(target, result.permissions)
        if (result.metadata !== undefined) target.metadata = result.metadata
        this.#releaseHeld(target)
      }, (err: unknown) => {
        if (!this.#sessions.has(sessionId)) return
        this.#log.info({ roomId: this.roomId, sessionId, err }, 'auth-refresh refused')
        const [code, reason] = refusal(err)
        this.disconnectSession(sessionId, code, reason)
      })
      .catch((err: unknown) => {
        // A throw above (the user's result, a bug) closes that session; it must never become an unhandled rejection.
        this.#log.error({ err, roomId: this.roomId, sessionId }, 'auth-refresh failed; closing the session')
        this.#guarded('closing a failed session', () => this.disconnectSession(sessionId, CloseCode.INTERNAL_ERROR, 'Internal error'))
      })
  }

  #releaseHeld (session: Session): void {
    const frames = session.held ?? []
    session.held = null
    for (let i = 0; i < frames.length; i++) {
      if (!this.#sessions.has(session.sessionId)) return
      const held = session.held as Session['held']
      if (held !== null) {
        // One of the frames was another auth-refresh: the rest wait for it too, and count against its bound.
        for (let j = i; j < frames.length; j++) {
          held.push(frames[j])
          session.heldBytes += frames[j][2]
        }
        return
      }
      this.#handleGuarded(session, frames[i][0], frames[i][1], frames[i][3])
    }
  }

  /** Applies the patches of a readwrite session and forwards them to the other sessions. */
  #apply (session: Session, docs: Patch[] | undefined, ephs: Patch[] | undefined): void {
    let timestamp: number | undefined
    let forwarded: Patch[] | undefined
    if (docs !== undefined) {
      forwarded = this.#forwardable(docs)
      const stored = this.#doc.applyFrame(docs)
      timestamp = this.#doc.timestamp
      // The cached full document is stale from now on: do not keep it alive.
      this.#fullDiff = null
      // Even when it stored nothing, the frame moved the counter its ack carries: that is written too.
      if (stored !== null) this.#persistence.noteChanges(stored)
    }
    if (ephs !== undefined) this.#applyPresence(session.clientId, ephs)

    if (docs === undefined && this.#batchPresence) {
      // Presence only: batched (see #flushPresence).
      if (this.#sessions.size > 1) {
        this.#presence.add(session.clientId, ephs!)
        this.#presencePacer.request(this.#sessions.size >= PACED_SESSIONS)
      }
      return
    }
    // Presence batched earlier in this turn leaves first, so that no older value overtakes a newer one.
    this.#flushPresence()
    if (this.#sessions.size > 1) {
      const broadcast: ServerMessage = { type: 'patch', clientId: session.clientId }
      if (docs !== undefined) {
        broadcast.documentPatches = forwarded
        broadcast.timestamp = timestamp
      }
      if (ephs !== undefined) broadcast.ephemeralPatches = ephs
      const data = JSON.stringify(broadcast)
      // Presence-only frames without deletions may be dropped for a slow session (it gets fresh presence later).
      const droppable = docs === undefined && this.#slow !== null && !ephs!.some((patch) => Object.keys(patch).some((key) => patch[key]._exists === false))
      this.#fanout(session, data, droppable)
    }
    if (docs !== undefined) this.#options.onDocumentPatch?.(this, docs)
  }

  /**
   * The patches to forward: as received, except a create (`_exists: true`)
   * of a key that is live when it applies, which merges into the key
   * (PROTOCOL.md): it is forwarded as the update it is, without `_exists`.
   * The published client takes a value with `_exists: true` as the whole
   * component (and merges a frame's patches of one key into one value), so
   * a forwarded create naming some fields reset the others to their
   * defaults. Every session that gets the broadcast has had every earlier
   * one, so it holds the key live too. To be called before the frame is
   * applied; the patches themselves are returned when nothing changes (no
   * creates of live keys: the usual case).
   */
  #forwardable (docs: Patch[]): Patch[] {
    let out: Patch[] | null = null
    // Whether each key a create names is live, as the frame's patches apply one after another.
    let live: Map<string, boolean> | null = null
    for (let i = 0; i < docs.length; i++) {
      const patch = docs[i]
      for (const key in patch) {
        const exists = patch[key]._exists
        // An update never makes a key live or not (see applyKind, the rule this follows patch by patch).
        if (exists === undefined) continue
        live ??= new Map()
        const wasLive = live.get(key) ?? isLive(this.#doc.get(key))
        live.set(key, exists === true)
        if (exists !== true || !wasLive) continue
        out ??= docs.slice()
        if (out[i] === patch) {
          // Records without a prototype, as the document's are: a `__proto__` key or field stays data.
          const copy = emptyRecord<ComponentData>()
          for (const k in patch) copy[k] = patch[k]
          out[i] = copy
        }
        const update = emptyRecord()
        const value = patch[key]
        for (const field in value) if (field !== '_exists') update[field] = value[field]
        out[i][key] = update as ComponentData
      }
    }
    return out ?? docs
  }

  /**
   * Sends the presence batched since the last batch (this loop turn, or up
   * to PRESENCE_INTERVAL_MS in a big room): at most one frame per session,
   * holding every other client's latest values, never the session's own. A
   * frame with one sender carries its clientId, as a forwarded frame would.
   * Frames without deletions may be dropped for a slow session (it gets
   * fresh presence once it catches up).
   */
  #flushPresence (): void {
    if (this.#presence.size === 0) return
    this.#presencePacer.ran()
    const senders = this.#presence.take()
    const slow = this.#slow !== null
    if (senders.length === 1) {
      const { clientId, json, deletes } = senders[0]
      const data = `{"type":"patch","clientId":${JSON.stringify(clientId)},"ephemeralPatches":[${json}]}`
      for (const session of this.#sessions.values()) {
        if (session.clientId !== clientId) this.#send(session, data, slow && !deletes)
      }
      return
    }
    // A sender gets everyone else's: the senders before it, then the ones after it. Joined once for all
    // (prefix[i]: senders 0..i-1, suffix[i]: i+1..), so a batch of k senders to n sessions costs k + n, not k * n.
    const k = senders.length
    const index = new Map<string, number>()
    const prefix: string[] = new Array(k + 1)
    const prefixDeletes: boolean[] = new Array(k + 1)
    prefix[0] = ''
    prefixDeletes[0] = false
    for (let i = 0; i < k; i++) {
      index.set(senders[i].clientId, i)
      prefix[i + 1] = i === 0 ? senders[0].json : `${prefix[i]},${senders[i].json}`
      prefixDeletes[i + 1] = prefixDeletes[i] || senders[i].deletes
    }
    const suffix: string[] = new Array(k)
    const suffixDeletes: boolean[] = new Array(k)
    suffix[k - 1] = ''
    suffixDeletes[k - 1] = false
    for (let i = k - 2; i >= 0; i--) {
      suffix[i] = i === k - 2 ? senders[k - 1].json : `${senders[i + 1].json},${suffix[i + 1]}`
      suffixDeletes[i] = suffixDeletes[i + 1] || senders[i + 1].deletes
    }
    const all = `{"type":"patch","clientId":"","ephemeralPatches":[${prefix[k]}]}`
    for (const session of this.#sessions.values()) {
      const own = index.get(session.clientId)
      if (own === undefined) {
        this.#send(session, all, slow && !prefixDeletes[k])
        continue
      }
      // With two senders, the other one's clientId, as a forwarded frame would carry.
      const only = k === 2 ? JSON.stringify(senders[1 - own].clientId) : '""'
      const others = own === 0 ? suffix[0] : own === k - 1 ? prefix[k - 1] : `${prefix[own]},${suffix[own]}`
      this.#send(session, `{"type":"patch","clientId":${only},"ephemeralPatches":[${others}]}`, slow && !(prefixDeletes[own] || suffixDeletes[own]))
    }
  }

  /**
   * A write that is not applied (readonly session, a limit, the rate limit, a
   * wrong shape): ack it when it has a messageId (the published client needs
   * the ack to settle its in-flight write), say why, and send the server's
   * current values of the keys it touched (a tombstone where the server has
   * none), so that the client's copy converges back.
   */
  #refuse (session: Session, messageId: string | undefined, docs: ReadonlyArray<Readonly<Record<string, unknown>>> | undefined, reason: readonly [code: string, message: string]): void {
    if (messageId !== undefined) this.#sendAck(session, messageId)
    this.#sendMessage(session, { type: 'error', code: reason[0], message: reason[1], ...(messageId === undefined ? {} : { messageId }) })
    if (docs === undefined) return
    const corrective = emptyRecord<ComponentData>()
    let any = false
    for (const patch of docs) {
      for (const key of Object.keys(patch)) {
        const value = this.#doc.get(key)
        corrective[key] = (value === undefined ? { _exists: false } : value) as ComponentData
        any = true
      }
    }
    if (!any) return
    const data = JSON.stringify({
      type: 'patch',
      clientId: '',
      documentPatches: [corrective],
      timestamp: this.#doc.timestamp
    })
    // Refusals for the rate itself are bounded by closeAfter; charging their correctives would keep a client
    // that has slowed down in debt, refused, forever.
    if (reason !== RATE_LIMITED) this.#charge(session, data.length)
    this.#send(session, data)
  }

  /**
   * Which limit a readwrite frame would break, or null. After a presence
   * limit (PRESENCE_FULL, PRESENCE_TOO_BIG) the document patches are checked
   * without the presence, which alone is refused (see #applyWithinLimits: the
   * published client carries its presence in the frames that carry its
   * edits, and in every reconnect with its offline edits). The fields
   * merges copy and the arrays buffer deltas write are paid from the
   * session's byte rate (see fieldCopies, bufferCost) before the sizes are
   * checked, since the exact size check does that work once more: a frame
   * that passes, or breaks a size limit or a presence limit, has been charged.
   */
  #checkLimits (session: Session, docs: Patch[] | undefined, ephs: Patch[] | undefined, bufferItems: number, chars: number): Violation | null {
    const limits = this.#limits
    if ((docs?.length ?? 0) > limits.maxPatchesPerFrame || (ephs?.length ?? 0) > limits.maxPatchesPerFrame) return FRAME_TOO_LARGE
    const docKeys = countKeys(docs, limits.maxKeysPerFrame)
    const ephKeys = countKeys(ephs, limits.maxKeysPerFrame)
    if (docKeys + ephKeys > limits.maxKeysPerFrame) return FRAME_TOO_LARGE
    if (docs !== undefined && this.#doc.size + docKeys > limits.maxDocumentKeys) {
      const added = new Set<string>()
      for (const patch of docs) {
        for (const key of Object.keys(patch)) if (this.#doc.get(key) === undefined) added.add(key)
      }
      if (this.#doc.size + added.size > limits.maxDocumentKeys) return DOCUMENT_FULL
    }
    const presence = this.#ephemeral.get(session.clientId)
    let presenceViolation: Violation | null = null
    if (ephs !== undefined && (presence?.size ?? 0) + ephKeys > limits.maxEphemeralKeys) {
      const keys = new Set(presence?.keys())
      for (const patch of ephs) {
        for (const key of Object.keys(patch)) if (patch[key]._exists !== false) keys.add(key)
      }
      if (keys.size > limits.maxEphemeralKeys) presenceViolation = PRESENCE_FULL
    }
    const eph = presenceViolation === null ? ephs : undefined
    // Merging into a key copies its stored fields: a few bytes naming a key of many fields, repeated, must not cost the server seconds.
    const most = limits.maxFieldCopiesPerFrame
    const copies = fieldCopies(docs, this.#doc, most) + fieldCopies(eph, presence, most)
    if (copies > most) return FRAME_TOO_LARGE
    let cost = copies * BYTES_PER_FIELD_COPY
    if (bufferItems > 0) cost += bufferCost(docs, this.#doc) + bufferCost(eph, presence)
    if (cost > 0 && session.bucket !== null) {
      // More than a whole burst could never be paid: not worth retrying.
      if (cost > this.#rateLimit!.burstBytes) return COSTS_MORE_THAN_BURST
      if (!session.bucket.takeBytes(cost, performance.now())) return BUFFERS_LIMITED
    }
    // Sizes: bounds from the frame's length, then from its values; applied to copies only when those could pass the limit.
    const ceiling = frameBound(chars, bufferItems)
    if (docs !== undefined) {
      const bytes = this.#doc.bytes
      if (bytes + ceiling > limits.maxDocumentBytes && bytes + growthBound(docs) > limits.maxDocumentBytes) {
        const growth = this.#doc.growth(docs)
        if (growth > 0 && bytes + growth > limits.maxDocumentBytes) return DOCUMENT_TOO_BIG
      }
    }
    if (eph !== undefined) {
      const bytes = presence?.bytes ?? 0
      if (bytes + ceiling > limits.maxEphemeralBytes && bytes + growthBound(eph) > limits.maxEphemeralBytes) {
        const growth = growthOf(presence, eph, false)
        if (growth > 0 && bytes + growth > limits.maxEphemeralBytes) presenceViolation = PRESENCE_TOO_BIG
      }
    }
    return presenceViolation
  }

  /** A frame over the session's rate: refused; a long run of them closes the session. */
  #rateLimited (session: Session, frame: ClientMessage): void {
    if (frame.type === 'patch') {
      const docs = hasContent(frame.documentPatches) ? frame.documentPatches : undefined
      this.#refuse(session, frame.messageId, docs, RATE_LIMITED)
    } else if (frame.type === 'reconnect') {
      this.#refuse(session, undefined, hasContent(frame.documentPatches) ? frame.documentPatches : undefined, RATE_LIMITED)
    } else {
      this.#refuse(session, undefined, undefined, RATE_LIMITED)
    }
    this.#overRate(session, frame.type === 'reconnect')
  }

  /** Counts a frame refused for the rate; closeAfter of them, with less than a second between any two, close the session (4429). */
  #overRate (session: Session, reconnect: boolean): void {
    // A reconnect is answered with a diff of the document: one over the rate while the session still owes
    // for earlier diffs and correctives (see #charge) closes it instead of costing another.
    const now = performance.now()
    const owing = reconnect && session.bucket!.owing(now)
    // The count starts again after a second without a refusal, and not at the first frame that passes: a client
    // over its rate could stay connected by slipping a frame through now and then (the byte bucket lets a few
    // large frames a second pass while it refuses dozens).
    if (now - session.lastRefusedAt > REFUSALS_FORGOTTEN_MS) session.refusedInRow = 0
    session.lastRefusedAt = now
    if ((++session.refusedInRow >= this.#rateLimit!.closeAfter || owing) && this.#sessions.has(session.sessionId)) {
      this.#log.warn({ roomId: this.roomId, sessionId: session.sessionId }, 'session closed for sustained rate-limit abuse')
      this.disconnectSession(session.sessionId, CloseCode.RATE_LIMITED, 'Rate limit exceeded')
    }
  }

  /**
   * Replies that carry stored values (a reconnect's diff, a corrective) can be
   * far larger than the frame that asked for them: their bytes are taken from
   * the session's byte bucket too, which may go into debt. Frames are then
   * refused until the debt is paid back, so asking for them cannot be used to
   * make the server serialize and send without bound.
   */
  #charge (session: Session, bytes: number): void {
    session.bucket?.charge(bytes, performance.now())
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
      state = new Presence()
      this.#ephemeral.set(clientId, state)
    }
    state.apply(patches)
    if (state.size === 0) this.#ephemeral.delete(clientId)
  }

  /** The other clients' presence as one patch frame, or null when there is none. */
  #presenceFrame (clientId: string): string | null {
    const presence = this.#presenceExcept(clientId)
    return presence === null ? null : JSON.stringify({ type: 'patch', ephemeralPatches: [presence], clientId: '' })
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
    this.#catchUp.release(session)
    const clientId = session.clientId
    // Another live session of the same client (a reconnect that raced the old socket's close) keeps the presence.
    const others = this.#clientSessions.get(clientId)! - 1
    const state = others > 0 ? undefined : this.#ephemeral.get(clientId)
    if (state !== undefined && this.#countPending) {
      // Counts owed from earlier in this turn (they include the leaver) go before its tombstones; the new count follows them.
      this.#flushCounts()
      // A send there cut this session (a slow client): that removal did everything.
      if (this.#sessions.get(sessionId) !== session) return
    }
    this.#sessions.delete(sessionId)
    if (others > 0) this.#clientSessions.set(clientId, others)
    else this.#clientSessions.delete(clientId)
    if (state !== undefined) {
      // Its presence still batched for this turn would only follow its tombstones: drop it; the rest of the batch waits.
      this.#presence.drop(clientId)
      this.#ephemeral.delete(clientId)
      const deletion = emptyRecord<ComponentData>()
      for (const key of state.keys()) deletion[key] = { _exists: false }
      this.#broadcast(JSON.stringify({ type: 'patch', ephemeralPatches: [deletion], clientId }))
    }
    this.#broadcastClientCount()
    this.#options.onSessionRemoved?.(this, { sessionId, remaining: this.#sessions.size })
  }

  // --------------------------------------------------------------- transport

  /**
   * Tells every session the new number of sessions. With batching, the
   * others learn it at the end of the loop turn, once whatever the number of
   * joins and leaves in that turn; in a room of PACED_SESSIONS or
   * more, once the count has settled (see COUNT_INTERVAL_MS: a reconnect
   * storm would otherwise send each of n sessions up to n counts, one write
   * each). A session about to get any other frame first gets the count it
   * is missing, so that the order of events is kept; the newcomer gets its
   * count at once.
   */
  #broadcastClientCount (): void {
    if (!this.#batchPresence) {
      for (const session of this.#sessions.values()) this.#sendCount(session)
      return
    }
    // Asked again while pending too: a settling count waits for the changes to stop.
    this.#countPending = true
    this.#countPacer.request(this.#sessions.size >= PACED_SESSIONS)
  }

  #flushCounts (): void {
    if (!this.#countPending) return
    this.#countPacer.ran()
    const count = this.#sessions.size
    for (const session of this.#sessions.values()) {
      if (session.countSeen !== count) this.#sendCount(session)
    }
    // Cleared once they are out: should one throw, the others still get theirs before their next frame.
    this.#countPending = false
  }

  #sendCount (session: Session): void {
    const count = this.#sessions.size
    session.countSeen = count
    this.#enqueue(session, `{"type":"clientCount","count":${count}}`, false, 0)
  }

  #broadcast (data: string): void {
    this.#fanout(null, data, false)
  }

  /** Sends one frame to every session but `except`: the checks that do not depend on the session are made once. */
  #fanout (except: Session | null, data: string, droppable: boolean): void {
    const held = this.#persistence.holding
    for (const session of this.#sessions.values()) {
      if (session === except) continue
      if (held || this.#countPending) this.#send(session, data, droppable)
      else this.#deliver(session, data, droppable)
    }
  }

  #sendMessage (session: Session, message: ServerMessage): void {
    this.#send(session, JSON.stringify(message))
  }

  /** Acks a patch with the counter now: written as text, the one frame sent for every write (the counter is an integer). */
  #sendAck (session: Session, messageId: string): void {
    this.#send(session, `{"type":"ack","messageId":${JSON.stringify(messageId)},"timestamp":${this.#doc.timestamp}}`)
  }

  /**
   * Sends now, or, with durable acks, once what the message reports is
   * committed (order kept). `droppable`: presence that a slow session may
   * miss; `answer`: the number of the reconnect it answers, 0 for other
   * frames (see Session.catchUpBytes).
   */
  #send (session: Session, data: string, droppable = false, answer = 0): void {
    if (this.#countPending && session.countSeen !== this.#sessions.size) this.#sendCount(session)
    this.#enqueue(session, data, droppable, answer)
  }

  #enqueue (session: Session, data: string, droppable: boolean, answer: number): void {
    const persistence = this.#persistence
    if (persistence.holding) {
      const need = persistence.required
      if (this.#outbox.length > 0 || need > persistence.committed) {
        this.#outbox.push({ need, session, data, droppable, answer })
        return
      }
    }
    this.#deliver(session, data, droppable, answer)
  }

  #deliver (session: Session, data: string, droppable = false, answer = 0): void {
    const socket = session.socket
    const state = socket.readyState
    if (state !== undefined && state !== OPEN) return
    if (this.#slow !== null) {
      const buffered = socket.bufferedAmount
      if (buffered !== undefined && !this.#keepsUp(session, buffered, droppable)) return
      // Answers to earlier reconnects, delivered late (durable acks wait for a commit), count like any frame.
      if (answer !== 0 && answer === session.answers) {
        // Past the allowance shared by the plugin's rooms, the answer counts like any frame.
        const bytes = Buffer.byteLength(data)
        if (this.#catchUp.admit(session, bytes, this.#slow.softBytes)) session.catchUpBytes += bytes
      }
    }
    this.#observer?.frameOut(data.length)
    try {
      socket.send(data)
    } catch (err) {
      this.#log.debug({ err, roomId: this.roomId, sessionId: session.sessionId }, 'send failed')
    }
  }

  /** The session's answer is no longer exempt (it caught up, or asked for another). */
  #endCatchUp (session: Session): void {
    session.catchUpBytes = 0
    this.#catchUp.release(session)
  }

  /**
   * Slow-client policy, checked before each send. Returns false when the
   * frame must not be sent: a droppable presence frame to a session that is
   * behind, or any frame to a session just closed for being too slow.
   */
  #keepsUp (session: Session, buffered: number, droppable: boolean): boolean {
    const policy = this.#slow!
    if (buffered > policy.softBytes) {
      // What it asked for with a reconnect is not held against it: only what the room sent it besides.
      buffered -= session.catchUpBytes
    } else if (session.catchUpBytes !== 0) {
      this.#endCatchUp(session)
    }
    if (buffered <= policy.softBytes) {
      session.slowSince = 0
      if (session.presenceStale) {
        // Caught up: replace the presence frames it missed with the current presence.
        session.presenceStale = false
        const presence = this.#presenceFrame(session.clientId)
        if (presence !== null) this.#deliver(session, presence)
      }
      return true
    }
    const now = performance.now()
    if (session.slowSince === 0) session.slowSince = now
    if (buffered > policy.hardBytes || now - session.slowSince > policy.maxSlowMs) {
      this.#log.warn({ roomId: this.roomId, sessionId: session.sessionId, buffered }, 'closing a session that cannot keep up')
      const socket = session.socket as WebSocketLike & { terminate?: () => void }
      if (typeof socket.terminate === 'function') socket.terminate()
      else safeClose(socket, CloseCode.TOO_SLOW, 'Too slow: reconnect to catch up')
      // Removed once the frames being sent are out, never in the middle of a loop over the sessions (a batch
      // of presence or counts): its tombstones and the new count must follow every frame of that loop.
      const { sessionId } = session
      queueMicrotask(() => this.#guarded('removing a slow session', () => this.#removeSession(sessionId)))
      return false
    }
    if (droppable) {
      session.presenceStale = true
      this.#observer?.presenceDropped()
      return false
    }
    return true
  }

  // ------------------------------------------------------------- durability

  #releaseOutbox (): void {
    const committed = this.#persistence.committed
    let i = 0
    while (i < this.#outbox.length && this.#outbox[i].need <= committed) {
      const { session, data, droppable, answer } = this.#outbox[i++]
      this.#deliver(session, data, droppable, answer)
    }
    if (i > 0) this.#outbox = this.#outbox.slice(i)
  }

  /**
   * The storage refused a write, or a join's checkClaim found another
   * process has loaded the room since.
   * What this one holds is stale, and its pending acks and broadcasts report
   * writes that were not made: they are dropped, the room closes without
   * writing anything more, and every session is closed with 1013 (its client
   * reconnects, to the process that has the room, and re-sends what was not
   * acked).
   */
  #moved (err: unknown): void {
    if (this.#closed) return
    this.#log.warn({ err, roomId: this.roomId }, 'another process loaded the room: closing it here')
    // Found by a refused write (Persistence marked itself) or by a join's check: nothing more is written either way.
    this.#persistence.markMoved()
    this.#outbox = []
    // Closed with 1013 first: close() below then finds them closing already.
    for (const session of this.#sessions.values()) safeClose(session.socket, CloseCode.TRY_AGAIN_LATER, 'Room moved to another server: reconnect')
    this.close({ flush: false }).catch(() => {})
    this.#options.onMoved?.(this)
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

/** A snapshot has at least its shape: an object whose `state` is an object of objects (the values' fields are checked when loaded). */
function isSnapshotShaped (snapshot: unknown): boolean {
  if (!isRecord(snapshot)) return false
  const state = (snapshot as { state?: unknown }).state
  if (!isRecord(state)) return false
  for (const key in state) {
    if (Object.hasOwn(state, key) && !isRecord(state[key])) return false
  }
  return true
}

function describe (session: Session): SessionInfo {
  return {
    sessionId: session.sessionId,
    clientId: session.clientId,
    permissions: session.permissions,
    metadata: session.metadata
  }
}

const READONLY = [frameErrorCodes.READONLY, 'This session is readonly: its changes were not applied'] as const
const FRAME_TOO_LARGE = [frameErrorCodes.FRAME_TOO_LARGE, 'Too many patches or keys in one frame: not applied'] as const
const COSTS_MORE_THAN_BURST = [frameErrorCodes.FRAME_TOO_LARGE, 'The frame makes the server copy more fields or array items than a whole burst of the byte rate limit (rateLimit.burstBytes) pays for: not applied'] as const
const DOCUMENT_FULL = [frameErrorCodes.DOCUMENT_FULL, 'The document has reached its key limit: not applied'] as const
const PRESENCE_FULL = [frameErrorCodes.PRESENCE_FULL, 'Too many presence keys for this client: its presence patches were not applied'] as const
const DOCUMENT_TOO_BIG = [frameErrorCodes.DOCUMENT_FULL, 'The document would pass its size limit: not applied'] as const
const PRESENCE_TOO_BIG = [frameErrorCodes.PRESENCE_FULL, "This client's presence would pass its size limit: its presence patches were not applied"] as const
const RATE_LIMITED = [frameErrorCodes.RATE_LIMITED, 'Too many frames or bytes per second: not applied'] as const
const BUFFERS_LIMITED = [frameErrorCodes.RATE_LIMITED, 'The frame makes the server copy more fields or array items than the byte rate limit allows: not applied'] as const
/** Why a frame is refused: an error code and its message. */
type Violation = readonly [code: string, message: string]

/** A presence limit refuses a frame's presence patches only (see #applyWithinLimits). */
function isPresenceOnly (violation: Violation): boolean {
  return violation === PRESENCE_FULL || violation === PRESENCE_TOO_BIG
}

/** Byte-rate cost of one stored field copied by a merge beyond FREE_FIELDS_PER_MENTION (about 1 µs of the server's time for a wide key). */
const BYTES_PER_FIELD_COPY = 16
/** Fields a merge copies for free per mention of a key: ordinary components have far fewer. */
const FREE_FIELDS_PER_MENTION = 32
/** Byte-rate cost of an item a buffer delta adds to an array: a zero and its comma, as if sent in full. */
const BYTES_PER_ADDED_ITEM = 2
/**
 * Byte-rate cost of each item of the array a buffer delta makes: the server copies
 * them all (about 6-15 ns each here, a long array's allocation and collection
 * included) and stores the whole key again.
 */
const BYTES_PER_WRITTEN_ITEM = 1

/**
 * Fields a merge of `patches` copies beyond FREE_FIELDS_PER_MENTION: for each
 * mention of a key, the fields it holds by then (stored now, plus those
 * earlier patches of the frame add). Counting stops past `most`.
 */
function fieldCopies (patches: Patch[] | undefined, stored: StoredRecords | undefined, most: number): number {
  if (patches === undefined) return 0
  // Running field counts, only needed when a key can come back in a later patch of the frame.
  const counts = patches.length > 1 ? new Map<string, number>() : null
  let copies = 0
  for (const patch of patches) {
    for (const key in patch) {
      let held = counts?.get(key)
      if (held === undefined) {
        const value = stored?.get(key)
        held = value === undefined ? 0 : ownCount(value)
      }
      if (held > FREE_FIELDS_PER_MENTION) copies += held - FREE_FIELDS_PER_MENTION
      if (copies > most) return copies
      if (counts !== null) counts.set(key, held + ownCount(patch[key]))
    }
  }
  return copies
}

/**
 * Byte-rate cost of the buffer deltas of `patches` against the arrays stored
 * now. Sent as a delta, a million items cost a few bytes, but the server
 * writes a whole new array of `len` items for each (stored records are never
 * changed in place). Items beyond the length of the array stored now cost
 * what sending them in full would (a zero and a comma), so that a small frame
 * cannot grow memory faster than literal data could; every item written
 * costs a byte, so that deltas against a huge array cannot keep the event
 * loop busy for free: at the default 4 MiB/s, one session can make the
 * server copy about 4 million items a second (some 25-60 ms of its time).
 */
function bufferCost (patches: Patch[] | undefined, stored: StoredRecords | undefined): number {
  if (patches === undefined) return 0
  let cost = 0
  for (const patch of patches) {
    for (const key of Object.keys(patch)) {
      const incoming = patch[key]
      for (const field of Object.keys(incoming)) {
        const value = incoming[field]
        if (!isBufferDelta(value)) continue
        const old = stored?.get(key)?.[field]
        const added = Math.max(0, value.len - (Array.isArray(old) ? old.length : 0))
        cost += added * BYTES_PER_ADDED_ITEM + value.len * BYTES_PER_WRITTEN_ITEM
      }
    }
  }
  return cost
}

/** A session's count of frames refused for the rate starts again after this long without a refusal. */
const REFUSALS_FORGOTTEN_MS = 1000

function byteSize (data: string | Buffer | ArrayBuffer | Buffer[], text: string): number {
  if (typeof data === 'string') return text.length
  if (Array.isArray(data)) return data.reduce((sum, chunk) => sum + chunk.length, 0)
  return data.byteLength
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
 * error carries statusCode 401/403, 1013 when authorize timed out, 1008
 * otherwise.
 */
export function refusal (err: unknown): [number, string] {
  const status = (err as { statusCode?: unknown } | null)?.statusCode
  const message = err instanceof Error && err.message !== '' ? err.message : 'Unauthorized'
  if (err instanceof AuthorizeTimeoutError) return [CloseCode.TRY_AGAIN_LATER, message]
  if (status === 401) return [CloseCode.UNAUTHORIZED, message]
  if (status === 403) return [CloseCode.FORBIDDEN, message]
  return [CloseCode.POLICY_VIOLATION, message]
}
