/**
 * Drives the published client `@woven-ecs/canvas-store` in Node: one ECS
 * world and one CanvasStore per client, ticked on a short interval, with
 * `ws` as the global WebSocket (recording every frame sent and received).
 */
import {
  addComponent,
  createEntity,
  field,
  hasComponent,
  removeEntity,
  World,
  type Context,
  type EntityId
} from '@woven-ecs/core'
import { CanvasStore, Synced, defineCanvasComponent, type AnyCanvasComponentDef } from '@woven-ecs/canvas-store'
import WebSocket from 'ws'

type Test = { teardown(fn: () => unknown): void }

/** Longest a wait may take before the test fails with a message. */
export const WAIT_MS = 10_000

/** A persistent shape: plain fields. */
export const Shape = defineCanvasComponent({ name: 'Shape', sync: 'document' }, {
  x: field.float64(),
  y: field.float64(),
  color: field.string().max(16)
})

/** A cursor: presence, never persisted. */
export const Cursor = defineCanvasComponent({ name: 'Cursor', sync: 'ephemeral' }, {
  x: field.float64(),
  y: field.float64()
})

/** A stroke: a numeric buffer field, sent as buffer deltas once it exists. */
export const STROKE_LENGTH = 16
export const Stroke = defineCanvasComponent({ name: 'Stroke', sync: 'document' }, {
  points: field.buffer(field.int32()).size(STROKE_LENGTH)
})

const COMPONENTS: AnyCanvasComponentDef[] = [Shape, Cursor, Stroke]

// ------------------------------------------------------------------ wire log

/** Every frame one client's sockets sent and received, parsed, in order. */
export interface WireLog {
  sent: any[]
  received: any[]
  sockets: Set<WebSocket>
}

const wireLogs = new Map<string, WireLog>()
const wireKey = (roomId: string, clientId: string): string => `${roomId}\u0000${clientId}`

function wireLog (roomId: string, clientId: string): WireLog {
  const key = wireKey(roomId, clientId)
  let log = wireLogs.get(key)
  if (log === undefined) {
    log = { sent: [], received: [], sockets: new Set() }
    wireLogs.set(key, log)
  }
  return log
}

/** The `ws` WebSocket, recording its frames into the wire log of its room and client. */
class RecordingWebSocket extends WebSocket {
  readonly #log: WireLog

  constructor (address: string | URL, protocols?: string | string[]) {
    super(address, protocols)
    const url = new URL(String(address))
    this.#log = wireLog(url.searchParams.get('roomId') ?? '', url.searchParams.get('clientId') ?? '')
    this.#log.sockets.add(this)
    this.on('message', (data, isBinary) => {
      if (!isBinary) this.#log.received.push(JSON.parse(String(data)))
    })
    this.on('close', () => this.#log.sockets.delete(this))
  }

  override send (data: any, ...rest: any[]): void {
    this.#log.sent.push(JSON.parse(String(data)))
    ;(super.send as (...args: any[]) => void)(data, ...rest)
  }
}

// The client reads `WebSocket` from the global scope (browsers); Node 20 has none.
;(globalThis as any).WebSocket = RecordingWebSocket

// -------------------------------------------------------------------- waits

/** Polls `check` every few ms until it returns something other than undefined/false; fails after WAIT_MS. */
export function until<T> (what: string, check: () => T | undefined | false, timeoutMs = WAIT_MS): Promise<T> {
  return new Promise((resolve, reject) => {
    const poll = (): boolean => {
      let value: T | undefined | false
      try {
        value = check()
      } catch (err) {
        finish()
        reject(err)
        return true
      }
      if (value === undefined || value === false) return false
      finish()
      resolve(value)
      return true
    }
    const finish = (): void => {
      clearInterval(interval)
      clearTimeout(deadline)
    }
    const interval = setInterval(poll, 5)
    const deadline = setTimeout(() => {
      finish()
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`))
    }, timeoutMs)
    poll()
  })
}

// ------------------------------------------------------------------- client

export interface ClientOptions {
  /** ws:// base URL of the listening app, without path. */
  base: string
  roomId: string
  clientId: string
  token?: string
  startOffline?: boolean
  /** Route path; '/sync' by default. */
  path?: string
}

interface Waiter {
  what: string
  check: (ctx: Context) => unknown
  resolve: (value: any) => void
  reject: (err: Error) => void
  deadline: NodeJS.Timeout
}

/** One published client: its world, its store and a tick loop. */
export class Client {
  readonly world: World
  readonly store: CanvasStore
  readonly wire: WireLog
  readonly clientId: string
  readonly roomId: string
  /** How many times the store's `websocket.onSync` fired. */
  syncCalls = 0
  /** Last connectivity reported by `websocket.onConnectivityChange`. */
  online = false
  /** Errors thrown inside a tick (sync, edit or check). */
  readonly errors: unknown[] = []
  #interval: NodeJS.Timeout | null = null
  #edits: Array<{ fn: (ctx: Context) => unknown, resolve: (value: any) => void, reject: (err: unknown) => void }> = []
  readonly #waiters = new Set<Waiter>()
  #closed = false

  private constructor (opts: ClientOptions) {
    this.clientId = opts.clientId
    this.roomId = opts.roomId
    this.wire = wireLog(opts.roomId, opts.clientId)
    this.world = new World([...COMPONENTS, Synced], { threads: 1, maxEntities: 256, maxEvents: 4096 })
    this.store = new CanvasStore({
      websocket: {
        documentId: opts.roomId,
        url: `${opts.base}${opts.path ?? '/sync'}`,
        clientId: opts.clientId,
        token: opts.token,
        startOffline: opts.startOffline,
        onSync: () => { this.syncCalls++ },
        onConnectivityChange: (online) => { this.online = online }
      }
    })
  }

  /** Creates the client, connects it (unless startOffline) and starts ticking. Closed when the test ends. */
  static async open (t: Test, opts: ClientOptions): Promise<Client> {
    const client = new Client(opts)
    t.teardown(() => client.close())
    await client.store.initialize({ components: COMPONENTS, singletons: [] })
    client.#interval = setInterval(() => client.#tick(), 2)
    return client
  }

  #tick (): void {
    this.world.execute((ctx) => this.#frame(ctx)).catch((err: unknown) => this.errors.push(err))
  }

  #frame (ctx: Context): void {
    try {
      this.store.sync(ctx)
    } catch (err) {
      this.errors.push(err)
    }
    for (const edit of this.#edits.splice(0)) {
      try {
        edit.resolve(edit.fn(ctx))
      } catch (err) {
        edit.reject(err)
      }
    }
    for (const waiter of this.#waiters) {
      let value: unknown
      try {
        value = waiter.check(ctx)
      } catch (err) {
        this.#settle(waiter)
        waiter.reject(err as Error)
        continue
      }
      if (value === undefined || value === false) continue
      this.#settle(waiter)
      waiter.resolve(value)
    }
  }

  #settle (waiter: Waiter): void {
    clearTimeout(waiter.deadline)
    this.#waiters.delete(waiter)
  }

  /**
   * Runs `fn` inside the next frame, after `store.sync`, and resolves with
   * what it returns; the store picks the change up on the next frame.
   */
  edit<T> (fn: (ctx: Context) => T): Promise<T> {
    if (this.#closed) return Promise.reject(new Error(`${this.clientId} is closed`))
    return new Promise((resolve, reject) => this.#edits.push({ fn, resolve, reject }))
  }

  /**
   * Resolves with the first value of `check` that is neither undefined nor
   * false, evaluated after `store.sync` on every frame; fails after WAIT_MS.
   */
  waitFor<T> (what: string, check: (ctx: Context) => T | undefined | false, timeoutMs = WAIT_MS): Promise<T> {
    if (this.#closed) return Promise.reject(new Error(`${this.clientId} is closed`))
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        what,
        check,
        resolve,
        reject,
        deadline: setTimeout(() => {
          this.#waiters.delete(waiter)
          reject(new Error(`${this.clientId}: timed out after ${timeoutMs} ms waiting for ${what}` +
            `\n  last frames received: ${JSON.stringify(this.wire.received.slice(-6))}` +
            `\n  last frames sent: ${JSON.stringify(this.wire.sent.slice(-4))}`))
        }, timeoutMs)
      }
      this.#waiters.add(waiter)
    })
  }

  // ------------------------------------------------------------- world access

  /**
   * The live entity holding `Synced.id === id`, or undefined. Scans the entity
   * table rather than a query: a query only sees entities created before the
   * current frame, and the store creates remote entities inside `store.sync`.
   */
  find (ctx: Context, id: string): EntityId | undefined {
    for (let eid = 0; eid < ctx.maxEntities; eid++) {
      if (ctx.entityBuffer.has(eid) && hasComponent(ctx, eid, Synced) && Synced.read(ctx, eid).id === id) return eid
    }
    return undefined
  }

  /** Plain copy of the entity's component, or undefined when the entity or the component is missing. */
  read (ctx: Context, id: string, def: AnyCanvasComponentDef): Record<string, any> | undefined {
    const eid = this.find(ctx, id)
    if (eid === undefined || !hasComponent(ctx, eid, def)) return undefined
    const { _exists, _version, ...fields } = def.snapshot(ctx, eid) as Record<string, any>
    return fields
  }

  // ------------------------------------------------------------------ edits

  /** Creates an entity with a stable id and one component. */
  create (id: string, def: AnyCanvasComponentDef, data: Record<string, any>): Promise<void> {
    return this.edit((ctx) => {
      const eid = createEntity(ctx)
      addComponent(ctx, eid, Synced, { id })
      addComponent(ctx, eid, def, data)
    })
  }

  /** Writes some fields of an entity's component. */
  update (id: string, def: AnyCanvasComponentDef, data: Record<string, any>): Promise<void> {
    return this.edit((ctx) => def.patch(ctx, this.#mustFind(ctx, id), data))
  }

  /** Removes the entity. */
  remove (id: string): Promise<void> {
    return this.edit((ctx) => removeEntity(ctx, this.#mustFind(ctx, id)))
  }

  #mustFind (ctx: Context, id: string): EntityId {
    const eid = this.find(ctx, id)
    if (eid === undefined) throw new Error(`${this.clientId}: no entity ${id}`)
    return eid
  }

  // ------------------------------------------------------------ connectivity

  /** `store.disconnect()`, then waits until the socket is fully closed: nothing more can arrive on it. */
  async disconnect (): Promise<void> {
    const sockets = Array.from(this.wire.sockets)
    this.store.disconnect()
    await Promise.all(sockets.map(closed))
  }

  /** `store.connect()`: opens a new socket and sends `reconnect`. */
  connect (): Promise<void> {
    return this.store.connect()
  }

  /** Stops the loop, closes the store and waits for its sockets to close. Idempotent. */
  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    if (this.#interval !== null) clearInterval(this.#interval)
    for (const waiter of this.#waiters) {
      this.#settle(waiter)
      waiter.reject(new Error(`${this.clientId} closed while waiting for ${waiter.what}`))
    }
    this.store.close()
    // A socket still connecting is not known to the store yet: close it here too.
    const sockets = Array.from(this.wire.sockets)
    for (const socket of sockets) {
      if (socket.readyState === WebSocket.CONNECTING) socket.terminate()
      else socket.close()
    }
    await Promise.all(sockets.map(closed))
    this.world.dispose()
    wireLogs.delete(wireKey(this.roomId, this.clientId))
  }
}

function closed (socket: WebSocket): Promise<void> {
  if (socket.readyState === WebSocket.CLOSED) return Promise.resolve()
  return new Promise((resolve) => socket.once('close', () => resolve()))
}
