import { CloseCode } from '../errors.js'
import { Room, type RoomOptions } from './room.js'
import { MAX_TIMER_MS } from './slots.js'
import { silentLogger, type RoomLogger } from './session.js'

/** Options of {@link RoomManager}. */
export interface RoomManagerOptions {
  /**
   * How long an empty room stays loaded before it is saved and unloaded (ms).
   * @default 30000
   */
  idleTimeout?: number
  /**
   * Most rooms loaded at once; loading one more throws a {@link RoomLimitError}.
   * @default 100000
   */
  maxRooms?: number
  /** Where the manager and its rooms log (pino-like). Silent by default. */
  logger?: RoomLogger
  /**
   * How long {@link RoomManager.closeAll} waits for loads and final saves
   * still pending (a storage that does not answer) before it gives up on
   * them, logs which rooms, and resolves (ms); `0`: as long as they take.
   * @default 10000
   */
  closeTimeoutMs?: number
}

/** Thrown by `getOrCreateRoom` when `maxRooms` rooms are loaded. */
export class RoomLimitError extends Error {
  readonly code = 'CANVAS_STORE_TOO_MANY_ROOMS'
  constructor (max: number) {
    super(`Server at capacity: ${max} rooms loaded`)
    this.name = 'RoomLimitError'
  }
}

/**
 * Thrown by `getOrCreateRoom` once the manager is shutting down: during a
 * `drain()`, for a room neither loaded nor loading (code
 * `CANVAS_STORE_DRAINING`; the others are still returned until the drain
 * closes them), and after `closeAll()` began, for any room (code
 * `CANVAS_STORE_CLOSED`). Not a storage failure: the client should try
 * again (the plugin closes such a connection with 1013), on this process
 * once it is back or on another.
 */
export class RoomManagerClosedError extends Error {
  readonly code: 'CANVAS_STORE_DRAINING' | 'CANVAS_STORE_CLOSED'
  constructor (state: 'draining' | 'closed') {
    super(`RoomManager is ${state}`)
    this.name = 'RoomManagerClosedError'
    this.code = state === 'draining' ? 'CANVAS_STORE_DRAINING' : 'CANVAS_STORE_CLOSED'
  }
}

/** A loaded room as listed by {@link RoomManager.getRooms}. */
export interface RoomInfo {
  roomId: string
  sessionCount: number
  timestamp: number
  documentSize: number
  documentBytes: number
}

const DEFAULT_IDLE_TIMEOUT = 30_000
const DEFAULT_CLOSE_TIMEOUT = 10_000

/**
 * Owns the rooms of one process: exactly one room per id even when the first
 * connections race, idle unload that saves before it forgets, and shutdown
 * that closes every session before the last save.
 */
export class RoomManager {
  readonly #rooms = new Map<string, Room>()
  /** Rooms being loaded: every concurrent caller awaits the same load. */
  readonly #loading = new Map<string, Promise<Room>>()
  /** Rooms being unloaded: a new connection waits for the final save, then loads afresh. */
  readonly #unloading = new Map<string, Promise<void>>()
  readonly #idleTimers = new Map<string, NodeJS.Timeout>()
  readonly #idleTimeout: number
  readonly #maxRooms: number
  readonly #log: RoomLogger
  readonly #closeTimeoutMs: number
  #closed = false
  #drain: Promise<void> | null = null
  /** The drain's pending session closes, by timer: closeAll runs them at once (see #drainSessions). */
  readonly #drainCloses = new Map<NodeJS.Timeout, () => void>()

  constructor (options: RoomManagerOptions = {}) {
    const idle = options.idleTimeout ?? DEFAULT_IDLE_TIMEOUT
    if (!Number.isFinite(idle) || idle < 0) throw new RangeError('idleTimeout must be a number >= 0')
    this.#idleTimeout = idle
    this.#maxRooms = options.maxRooms ?? 100_000
    this.#log = options.logger ?? silentLogger
    const closeTimeout = options.closeTimeoutMs ?? DEFAULT_CLOSE_TIMEOUT
    if (!(closeTimeout >= 0 && closeTimeout <= MAX_TIMER_MS)) throw new RangeError(`closeTimeoutMs must be a number from 0 to ${MAX_TIMER_MS}`)
    this.#closeTimeoutMs = closeTimeout
  }

  /**
   * Returns the loaded room, or creates and loads it. Options only apply to
   * the call that creates the room. A loaded room whose storage can check its
   * claim (Storage.checkClaim) is checked first: one that another process
   * has loaded since is closed (its sessions get 1013) and loaded afresh.
   * @throws the storage's error when it fails to load the room (nothing is
   * overwritten); {@link RoomLimitError} past `maxRooms`;
   * {@link RoomManagerClosedError} after `closeAll()` began, and during a
   * `drain()` for a room neither loaded nor loading
   */
  async getOrCreateRoom (roomId: string, options: RoomOptions = {}): Promise<Room> {
    for (;;) {
      if (this.#closed) throw new RoomManagerClosedError('closed')
      // An idle timer left armed is harmless: it unloads only a room that is still empty when it fires.
      const existing = this.#rooms.get(roomId)
      if (existing !== undefined) {
        if (!existing.checksClaim || existing.closed) return existing
        // Another process may have loaded the room since (a shared storage's claim): the check then closes this
        // copy, which is forgotten, and the room is loaded afresh below. A room still here is returned as it is.
        await existing.checkClaim()
        if (this.#rooms.get(roomId) === existing) return existing
        continue
      }
      const loading = this.#loading.get(roomId)
      if (loading !== undefined) return await loading
      const unloading = this.#unloading.get(roomId)
      if (unloading === undefined) break
      // A failed unload keeps the room loaded: look again rather than fail.
      await unloading.catch(() => {})
    }
    // Loading claims the room in a shared storage: a draining process would take it from the one replacing it.
    if (this.#drain !== null) throw new RoomManagerClosedError('draining')
    // A room being unloaded holds its place: a failed final save puts it back.
    if (this.#rooms.size + this.#loading.size + this.#unloading.size >= this.#maxRooms) throw new RoomLimitError(this.#maxRooms)
    const load = this.#load(roomId, options)
    this.#loading.set(roomId, load)
    try {
      return await load
    } finally {
      this.#loading.delete(roomId)
    }
  }

  /** @deprecated use {@link getOrCreateRoom} */
  getRoom (roomId: string): Promise<Room> {
    return this.getOrCreateRoom(roomId)
  }

  /** The room if it is loaded now; never loads. */
  getExistingRoom (roomId: string): Room | undefined {
    return this.#rooms.get(roomId)
  }

  /** Ids of the loaded rooms. */
  getRoomIds (): string[] {
    return Array.from(this.#rooms.keys())
  }

  /** Frames waiting for durable writes, over every loaded room. */
  getPendingMessages (): number {
    let n = 0
    for (const room of this.#rooms.values()) n += room.pendingMessages
    return n
  }

  /** The loaded rooms with their session count, counter and size. */
  getRooms (): RoomInfo[] {
    return Array.from(this.#rooms, ([roomId, room]) => ({
      roomId,
      sessionCount: room.getSessionCount(),
      timestamp: room.timestamp,
      documentSize: room.documentSize,
      documentBytes: room.documentBytes
    }))
  }

  /**
   * Closes one room now (its sessions get 1001), saves it and unloads it.
   * Resolves once the final save settled.
   */
  async closeRoom (roomId: string): Promise<void> {
    this.#clearIdleTimer(roomId)
    const room = this.#rooms.get(roomId)
    if (room === undefined) return await this.#unloading.get(roomId)
    await this.#unload(roomId, room)
  }

  /** True once {@link drain} (or {@link closeAll}) started: new connections should be turned away. */
  get draining (): boolean {
    return this.#drain !== null || this.#closed
  }

  /**
   * Graceful drain for a restart or a scale-down: from now on `draining` is
   * true (the plugin refuses new connections with 1013 and `/ready` answers
   * 503); each session is closed with 1001 at a random moment between
   * `graceMs` and `graceMs + jitterMs`, so that clients do not all reconnect
   * in one wave; then every room is saved as in {@link closeAll}. Idempotent.
   */
  drain (options: { graceMs?: number, jitterMs?: number } = {}): Promise<void> {
    this.#drain ??= this.#drainSessions(options.graceMs ?? 1000, options.jitterMs ?? 2000).then(() => this.closeAll())
    return this.#drain
  }

  async #drainSessions (graceMs: number, jitterMs: number): Promise<void> {
    const closes: Array<Promise<void>> = []
    for (const room of this.#rooms.values()) {
      for (const { sessionId } of room.getSessions()) {
        closes.push(new Promise((resolve) => {
          const close = (): void => {
            this.#drainCloses.delete(timer)
            room.disconnectSession(sessionId, CloseCode.GOING_AWAY, 'Server restarting')
            resolve()
          }
          const timer = setTimeout(close, graceMs + Math.random() * jitterMs)
          this.#drainCloses.set(timer, close)
        }))
      }
    }
    await Promise.all(closes)
  }

  /**
   * Closes every session of every room first, then awaits a final save of
   * each room, so no patch is acked after the last snapshot is taken.
   * Failures of one room do not stop the others. Loads and saves still
   * pending after `closeTimeoutMs` (a storage that does not answer) are
   * logged and no longer waited for: shutdown is bounded. Idempotent.
   */
  async closeAll (): Promise<void> {
    this.#closed = true
    for (const timer of this.#idleTimers.values()) clearTimeout(timer)
    this.#idleTimers.clear()
    // Closed during a drain (app.close() before the drain's end): its sessions close now, not up to
    // grace + jitter later with the process held open for them, and the drain's promise settles.
    for (const [timer, close] of this.#drainCloses) {
      clearTimeout(timer)
      close()
    }
    // A load that fails (or ends after the close: 'RoomManager is closed') was reported to its connection.
    await this.#settleBy(Array.from(this.#loading, ([roomId, load]) => [roomId, load.catch(() => {})]), 'load')
    const rooms = Array.from(this.#rooms)
    for (const [, room] of rooms) await room.close({ flush: false })
    // A bound of their own: a hung load must not use up the time of the final saves.
    await this.#settleBy([
      ...rooms.map(([roomId, room]): [string, Promise<unknown>] => [roomId, room.flush()]),
      ...this.#unloading
    ], 'final save')
    this.#rooms.clear()
  }

  /**
   * Waits for the rooms' work to settle, for closeTimeoutMs at most:
   * failures are logged (`<what> failed at shutdown`), and so are the rooms
   * whose work is still pending then, which is not waited for any longer.
   */
  async #settleBy (work: Array<[string, Promise<unknown>]>, what: string): Promise<void> {
    if (work.length === 0) return
    const pending = new Set(work.map(([roomId]) => roomId))
    const settled = Promise.all(work.map(async ([roomId, promise]) => {
      try {
        await promise
      } catch (err) {
        this.#log.error({ err, roomId }, `${what} failed at shutdown`)
      }
      pending.delete(roomId)
    }))
    let timer: NodeJS.Timeout | undefined
    const late = this.#closeTimeoutMs === 0 ? null : new Promise<void>((resolve) => { timer = setTimeout(resolve, this.#closeTimeoutMs) })
    try {
      await (late === null ? settled : Promise.race([settled, late]))
    } finally {
      clearTimeout(timer)
    }
    if (pending.size > 0) {
      this.#log.error({ roomIds: Array.from(pending), closeTimeoutMs: this.#closeTimeoutMs }, `${what} still pending at shutdown after closeTimeoutMs: not waited for`)
    }
  }

  async #load (roomId: string, options: RoomOptions): Promise<Room> {
    const userOnRemoved = options.onSessionRemoved
    const room = new Room({
      logger: this.#log,
      ...options,
      roomId,
      onSessionRemoved: (r, info) => {
        userOnRemoved?.(r, info)
        if (info.remaining === 0 && this.#rooms.get(roomId) === r) this.#scheduleIdleClose(roomId)
      },
      onMoved: (r) => {
        options.onMoved?.(r)
        // Closed already, nothing to save: the next connection loads the room afresh.
        if (this.#rooms.get(roomId) !== r) return
        this.#rooms.delete(roomId)
        this.#clearIdleTimer(roomId)
      }
    })
    await room.load()
    if (this.#closed) {
      throw new RoomManagerClosedError('closed')
    }
    this.#rooms.set(roomId, room)
    // A room that nobody joins (a failed connect after the load) must not stay loaded forever.
    this.#scheduleIdleClose(roomId)
    return room
  }

  #scheduleIdleClose (roomId: string): void {
    this.#clearIdleTimer(roomId)
    if (this.#closed) return
    const timer = setTimeout(() => {
      this.#idleTimers.delete(roomId)
      const room = this.#rooms.get(roomId)
      if (room !== undefined && room.getSessionCount() === 0) {
        this.#unload(roomId, room).catch(() => {})
      }
    }, this.#idleTimeout)
    timer.unref()
    this.#idleTimers.set(roomId, timer)
  }

  #clearIdleTimer (roomId: string): void {
    const timer = this.#idleTimers.get(roomId)
    if (timer !== undefined) {
      clearTimeout(timer)
      this.#idleTimers.delete(roomId)
    }
  }

  /**
   * Saves, then forgets. A room whose final save fails stays loaded, with its
   * data, and tries again after another idle period.
   */
  #unload (roomId: string, room: Room): Promise<void> {
    const pending = this.#unloading.get(roomId)
    if (pending !== undefined) return pending
    // From here on, new connections wait for this unload and then load afresh.
    this.#rooms.delete(roomId)
    const run = (async () => {
      room.disconnectAll(CloseCode.GOING_AWAY, 'Room closed by the server')
      try {
        await room.flush()
      } catch (err) {
        if (!this.#closed) {
          this.#log.error({ err, roomId }, 'could not save the room while unloading it; it stays loaded')
          this.#rooms.set(roomId, room)
          this.#scheduleIdleClose(roomId)
        } else {
          // Shut down meanwhile: nobody will unload it again, so its retries must stop (closeAll reports the failure).
          await room.close({ flush: false })
        }
        throw err
      }
      await room.close({ flush: false })
    })().finally(() => {
      this.#unloading.delete(roomId)
    })
    this.#unloading.set(roomId, run)
    return run
  }
}
