import rateLimit from '@fastify/rate-limit'
import { randomBytes } from 'node:crypto'
import { TypeBoxValidatorCompiler, type TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { FastifyBaseLogger, FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { RawData, WebSocket } from 'ws'
import { AuthorizeTimeoutError, CloseCode, closeReason, errors } from '../errors.js'
import type { Authorize, AuthorizeInfo, AuthorizeResult, ResolvedOptions } from '../options.js'
import { refusal, type Room, type RoomOptions } from '../room/room.js'
import { RoomLimitError, type RoomManager } from '../room/room-manager.js'
import { CorkedSocket, closeAbusive, detachUpgradeResponse, holdUpgrade, stopReading, watchHandshakes } from './cork.js'
import { ConnectQuery, replyError } from './schemas.js'

/**
 * Pongs a peer may send in a second (an answer to each heartbeat ping, and
 * unsolicited ones as a one-way heartbeat, RFC 6455 5.5.3, are a few a
 * minute); more closes the connection with 4429. A heartbeat faster than
 * 150 ms raises it to three pongs per interval.
 */
const MAX_PONGS_PER_SECOND = 20

/** Reasons of the closes ws makes for a frame it refuses (with no reason of its own). */
const PROTOCOL_CLOSE_REASONS: Partial<Record<number, string>> = {
  1002: 'Protocol error: a frame that breaks RFC 6455',
  1007: 'Invalid UTF-8 in a text frame',
  1008: 'Too many message fragments',
  1009: 'Frame too big'
}

/** What the WebSocket route needs from the plugin. */
export interface WsRouteOptions {
  options: ResolvedOptions
  manager: RoomManager
  /** Room options for a room created by a connection. */
  roomOptions: (roomId: string) => RoomOptions
  /** Every socket the route accepted and that is still open. */
  sockets: Set<WebSocket>
  /** True once the server is shutting down: new sockets are turned away. */
  draining: () => boolean
  /** Counts closes by code, when metrics are on. */
  metrics?: { closed(code: number): void } | undefined
  /** The plugin's pending time bounds (authorize, room loads). */
  bounds: Bounds
  /** Whether the plugin registered @fastify/websocket (with socketError): not when the app did, with its own errorHandler. */
  ownsSocketErrors: boolean
}

/**
 * The WebSocket route. Checks the query before the upgrade (400), then
 * authorizes and loads the room while queueing, in order and with a bound,
 * the frames the client sends meanwhile.
 */
export const wsRoutes: FastifyPluginAsync<WsRouteOptions> = async (fastify: FastifyInstance, { options, manager, roomOptions, sockets, draining, metrics, bounds, ownsSocketErrors }) => {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  app.setErrorHandler(replyError)
  // The admin routes' validator, so that ids are measured the same way (UTF-16 units) on both: with Fastify's
  // Ajv, which counts code points, a room could be joined here under an id the admin routes refuse to name.
  app.setValidatorCompiler(TypeBoxValidatorCompiler)
  const authorize = options.authorize ?? (() => ({ permissions: 'readwrite' as const }))
  const limit = options.connectionRateLimit
  const tooMany = (_request: unknown, context: { after: string }): Error => new errors.TOO_MANY_CONNECTIONS(context.after)
  if (limit !== false) {
    // Scoped to this child plugin: only the upgrade route is limited, before the upgrade (HTTP 429).
    await app.register(rateLimit, { global: false, errorResponseBuilder: tooMany })
  }

  // Heartbeat: one timer for every socket. A socket that did not answer the previous ping is cut.
  // Each ping carries a random payload of its own socket, which a pong must echo (RFC 6455 5.5.3;
  // browsers, ws and undici do): a client cannot look alive without reading what was sent before the
  // ping, so one that stops reading (and keeps the server holding its unsent data) is cut, even if it
  // sends pongs blindly, or with a payload another of its sockets was sent. The previous round's payload
  // still counts: a late pong, after a stalled round, is still an answer.
  // A heartbeat of under 150 ms asks for more pongs a second than the bound: three per ping interval then.
  const maxPongs = options.heartbeatInterval > 0 ? Math.max(MAX_PONGS_PER_SECOND, Math.ceil(3000 / options.heartbeatInterval)) : MAX_PONGS_PER_SECOND
  const alive = new WeakMap<WebSocket, boolean>()
  const pings = new WeakMap<WebSocket, { current: Buffer, previous: Buffer | null }>()
  if (options.heartbeatInterval > 0) {
    const interval = options.heartbeatInterval
    let lastTick = performance.now()
    const timer = setInterval(() => {
      const now = performance.now()
      // A late tick means this process stalled (GC, a busy loop): the pongs may be unread in the
      // sockets, as timers run before I/O. Cut nobody this round; just ping again.
      const stalled = now - lastTick > interval * 1.5
      lastTick = now
      const random = randomBytes(8 * sockets.size)
      let i = 0
      for (const socket of sockets) {
        if (alive.get(socket) === false && !stalled) {
          socket.terminate()
          continue
        }
        const token = random.subarray(8 * i, 8 * ++i)
        pings.set(socket, { current: token, previous: pings.get(socket)?.current ?? null })
        alive.set(socket, false)
        socket.ping(token)
      }
    }, interval)
    timer.unref()
    app.addHook('onClose', async () => clearInterval(timer))
  }

  // The listeners of every socket of the route: `this` is the socket, its state the Connection it carries.
  function onError (this: WebSocket, err: Error): void {
    const conn = (this as RouteSocket)[kConnection]
    if (ownsSocketErrors) socketError(err, this, conn.log)
    else conn.log.debug({ err }, 'socket error')
    if (conn.sessionId !== undefined) conn.room!.handleSocketError(conn.sessionId)
  }

  // Pongs cost ws a frame each and are not frames the room counts: a peer that floods them is cut.
  function onPong (this: WebSocket, data: Buffer): void {
    const conn = (this as RouteSocket)[kConnection]
    const now = performance.now()
    if (now - conn.pongWindow > 1000) {
      conn.pongWindow = now
      conn.pongs = 0
    }
    if (++conn.pongs > maxPongs) {
      if (conn.pongs === maxPongs + 1) {
        conn.log.warn('connection closed for a flood of pong frames')
        closeAbusive(this, CloseCode.RATE_LIMITED, 'Too many pong frames')
      }
      return
    }
    const sent = pings.get(this)
    if (sent !== undefined && (data.equals(sent.current) || (sent.previous !== null && data.equals(sent.previous)))) alive.set(this, true)
  }

  function onMessage (this: WebSocket, data: RawData): void {
    const conn = (this as RouteSocket)[kConnection]
    // ws enforces maxPayload itself unless the application registered @fastify/websocket with its own.
    const bytes = byteLength(data)
    if (bytes > options.maxPayload) {
      closeAbusive(this, CloseCode.MESSAGE_TOO_BIG, 'Frame too big')
      return
    }
    if (conn.sessionId !== undefined) {
      conn.room!.handleSocketMessage(conn.sessionId, data)
      return
    }
    if (conn.queue === null) return
    conn.queuedBytes += bytes
    if (conn.queue.length >= options.maxQueuedFrames || conn.queuedBytes > options.maxQueuedBytes) {
      conn.log.warn('too many frames before the room was ready')
      conn.queue = null
      closeAbusive(this, CloseCode.POLICY_VIOLATION, 'Too many frames before the room was ready')
      return
    }
    conn.queue.push(data)
  }

  function onClose (this: WebSocket, code: number): void {
    const conn = (this as RouteSocket)[kConnection]
    metrics?.closed(code)
    conn.queue = null
    sockets.delete(this)
    if (conn.sessionId !== undefined) conn.room!.handleSocketClose(conn.sessionId)
  }

  // ws's 101 response to this route's upgrades is held until the end of the turn, to leave with the new
  // session's first frames (see holdHandshake). The server may be the app's own: other routes' are left alone.
  const unwatch = watchHandshakes(app.websocketServer)
  app.addHook('onClose', async () => unwatch())

  app.route({
    method: 'GET',
    url: options.path,
    schema: { querystring: ConnectQuery, hide: true },
    // The route's own errorResponseBuilder too: an app that registered @fastify/rate-limit globally answers first.
    config: limit === false ? {} : { rateLimit: { max: limit.max, timeWindow: limit.timeWindow, allowList: limit.allowList, errorResponseBuilder: tooMany } },
    // An upgrade that ws would refuse with a bare 400 of its own is refused here, with a code.
    preValidation: async (request, reply) => {
      // request.ws: @fastify/websocket's mark of an upgrade request (a plain GET with an Upgrade header gets the 426).
      if ((request as { ws?: boolean }).ws !== true) return
      const problem = handshakeProblem(request.headers)
      if (problem === null) {
        holdUpgrade(request.raw)
        return
      }
      if (problem.startsWith('Sec-WebSocket-Version')) reply.header('sec-websocket-version', '13')
      throw new errors.INVALID_REQUEST(problem)
    },
    // A request without the upgrade (a browser tab, a health check pointed at the wrong path): 426, with its code.
    handler: async (_request, reply) => {
      reply.header('upgrade', 'websocket')
      throw new errors.UPGRADE_REQUIRED()
    },
    wsHandler: (socket, request) => {
      const { roomId, clientId } = request.query
      const token = request.query.token ?? ''
      const log = request.log.child({ roomId, clientId })
      // The socket's listeners read this state, not the request: an open socket must not keep its upgrade request
      // alive. They are the route's, one of each for every socket (`this` is the socket): no closures per connection.
      const conn: Connection = { room: undefined, sessionId: undefined, queue: [], queuedBytes: 0, log, pongs: 0, pongWindow: 0, close: socket.close }
      ;(socket as RouteSocket)[kConnection] = conn
      // Nor anything else: the upgrade's HTTP response, and @fastify/websocket's error listener, which holds the
      // request and the reply for the socket's life (about 2.7 KB a connection, kept through the young generation's
      // collections: a storm of reconnects paid for it in GC time). That listener, added just before this handler is
      // called, calls socketError when the plugin registered @fastify/websocket: onError does the same.
      detachUpgradeResponse(socket)
      if (ownsSocketErrors) {
        const listeners = socket.listeners('error')
        if (listeners.length > 0) socket.removeListener('error', listeners[listeners.length - 1] as (err: Error) => void)
      }
      socket.on('error', onError)
      if (draining() || manager.draining) {
        socket.close(CloseCode.TRY_AGAIN_LATER, 'Server restarting: try again')
        return
      }
      sockets.add(socket)
      alive.set(socket, true)
      socket.close = closeWithReason
      socket.on('pong', onPong)
      socket.on('message', onMessage)
      socket.on('close', onClose)

      const authorization = bounds.authorize(authorize, { roomId, clientId, token, request }, options.authorizeTimeoutMs)
      accept(conn, socket, authorization, { roomId, clientId, log, manager, roomOptions, bounds, loadTimeoutMs: options.storageFailureTimeoutMs }).catch((err: unknown) => {
        log.error({ err }, 'accepting the connection failed')
        socket.close(CloseCode.INTERNAL_ERROR, 'Internal error')
      })
    }
  })
}

/**
 * An error on an open WebSocket, when the plugin registered
 * @fastify/websocket (so for the app's own WebSocket routes too): a frame
 * that breaks RFC 6455 (ws has sent its close frame: 1002, 1007, 1009,
 * 1008), or the connection lost, both caused by the client and logged at
 * info and debug, not as server errors; anything else (a route's handler
 * that threw or rejected) is logged at error level, as @fastify/websocket's
 * own handler does. A lost connection and a failed handler are cut at once;
 * after a protocol error ws ends the connection itself once its close frame
 * is out, and stopReading cuts it a second later if it has not.
 */
export function socketError (error: Error, socket: WebSocket, log: FastifyBaseLogger): void {
  const code = (error as { code?: unknown }).code
  if (typeof code === 'string' && code.startsWith('WS_ERR_')) {
    log.info({ err: { code, message: error.message } }, 'WebSocket frame refused (protocol error): connection closed')
    stopReading(socket)
    return
  }
  // A system call's failure (ECONNRESET, EPIPE...) carries the call's name.
  if (typeof (error as { syscall?: unknown }).syscall === 'string') log.debug({ err: error }, 'WebSocket connection error')
  else log.error({ err: error }, 'WebSocket handler failed: connection closed')
  socket.terminate()
}

/** What ws would refuse in an upgrade request's handshake headers (RFC 6455 4.2.1), or null. */
function handshakeProblem (headers: Record<string, string | string[] | undefined>): string | null {
  if (String(headers.upgrade).toLowerCase() !== 'websocket') return 'Upgrade header must be "websocket"'
  const version = String(headers['sec-websocket-version'])
  // ws would also take draft 8 (hybi-08, from 2011 browsers); the plugin speaks RFC 6455 alone.
  if (version !== '13') return 'Sec-WebSocket-Version must be 13'
  if (!/^[+/0-9A-Za-z]{22}==$/.test(String(headers['sec-websocket-key']))) return 'Sec-WebSocket-Key must be 16 bytes in base64'
  return null
}

/** What the route keeps per socket. */
interface Connection {
  room: Room | undefined
  sessionId: string | undefined
  /** Frames received before the session exists; null once drained or refused. */
  queue: RawData[] | null
  queuedBytes: number
  log: FastifyBaseLogger
  /** Pongs received in the current one-second window, and when it began. */
  pongs: number
  pongWindow: number
  /** The socket's close before closeWithReason replaced it. */
  close: WebSocket['close']
}

/** Where a socket of the route keeps its Connection. */
const kConnection = Symbol('fastify-canvas-store connection')
type RouteSocket = WebSocket & { [kConnection]: Connection }

/** ws closes a connection whose frame breaks RFC 6455 with a code alone: the client is told why. */
function closeWithReason (this: WebSocket, code?: number, reason?: string | Buffer): void {
  (this as RouteSocket)[kConnection].close.call(this, code, reason ?? (code === undefined ? undefined : PROTOCOL_CLOSE_REASONS[code]))
}

/** Awaits authorize, loads the room, joins the session and replays the frames queued meanwhile. */
async function accept (
  conn: Connection,
  socket: WebSocket,
  authorization: Promise<AuthorizeResult>,
  ctx: { roomId: string, clientId: string, log: FastifyBaseLogger, manager: RoomManager, roomOptions: (roomId: string) => RoomOptions, bounds: Bounds, loadTimeoutMs: number }
): Promise<void> {
  const { roomId, clientId, log, manager } = ctx
  let result: AuthorizeResult
  try {
    result = await authorization
  } catch (err) {
    const [code, reason] = refusal(err)
    if (err instanceof AuthorizeTimeoutError) log.warn('authorize did not decide in time: connection closed')
    else log.info({ code, reason }, 'connection refused by authorize')
    socket.close(code, closeReason(reason))
    return
  }
  // Closed or closing (by the peer, or by us for a frame flood): no room to load.
  if (socket.readyState !== socket.OPEN) return
  // Draining since the upgrade (authorize took a while): no room is loaded, which would claim it from the
  // process taking over.
  if (manager.draining) {
    socket.close(CloseCode.TRY_AGAIN_LATER, 'Server restarting: try again')
    return
  }
  let loaded: Room
  try {
    // A loaded room (the usual case) is taken as it is, unless its storage can say whether another process
    // loaded it since; only a load or that check is given a bound.
    const existing = manager.getExistingRoom(roomId)
    loaded = existing !== undefined && !existing.checksClaim
      ? existing
      : await boundedLoad(ctx.bounds, manager.getOrCreateRoom(roomId, ctx.roomOptions(roomId)), ctx.loadTimeoutMs)
  } catch (err) {
    if (err instanceof RoomLimitError) {
      log.warn('room refused: the server is at its maxRooms limit')
      socket.close(CloseCode.TRY_AGAIN_LATER, 'Server at capacity')
      return
    }
    if (manager.draining) {
      // Shut down or drained meanwhile: not a storage failure.
      socket.close(CloseCode.TRY_AGAIN_LATER, 'Server restarting: try again')
      return
    }
    log.error({ err }, 'could not load the room')
    socket.close(CloseCode.INTERNAL_ERROR, 'Could not load the room')
    return
  }
  // Checked in the same turn as the connect, so the room cannot be unloaded in between.
  if (socket.readyState !== socket.OPEN) return
  if (manager.draining) {
    socket.close(CloseCode.TRY_AGAIN_LATER, 'Server restarting: try again')
    return
  }
  conn.room = loaded
  const sessionId = loaded.handleSocketConnect({ socket: new CorkedSocket(socket), clientId, permissions: result.permissions, metadata: result.metadata })
  conn.sessionId = sessionId
  log.debug({ sessionId }, 'session joined')
  const pending = conn.queue ?? []
  conn.queue = null
  for (const data of pending) loaded.handleSocketMessage(sessionId, data)
}

/** Where a bounded piece of work reports its outcome; emptied once settled (by the work or by its bound). */
interface Outcome<T> {
  settle: ((ok: boolean, value: T | unknown) => void) | null
}

/** Reports `work`'s outcome to `cell`. Its own scope: all that the reactions on `work` keep is the cell. */
function watch<T> (work: Promise<T>, cell: Outcome<T>): void {
  work.then((value) => cell.settle?.(true, value), (err: unknown) => cell.settle?.(false, err))
}

/**
 * The room, or a failure once the load has been pending for `ms`: a storage
 * that does not answer (a lock held elsewhere, a connection gone silent)
 * must not keep the client waiting for `synced` in silence. The load goes
 * on, and later connections to the room wait for the same one.
 */
async function boundedLoad (bounds: Bounds, load: Promise<Room>, ms: number): Promise<Room> {
  return await bounds.within(load, ms, () => new Error(`storage has not answered the room's load for ${ms} ms`))
}

/**
 * The time bounds the plugin has pending (authorize, auth-refresh, room
 * loads). Each holds the process open while it runs, as the work it bounds
 * does; clear() drops them when the app closes, so that a hung authorize
 * does not keep a closing process alive until its bound.
 */
export class Bounds {
  readonly #timers = new Set<NodeJS.Timeout>()

  /**
   * authorize's decision for a connection or an auth-refresh, checked (see
   * checkResult), or an AuthorizeTimeoutError once it has been pending for
   * `ms` (0: no bound).
   */
  async authorize (authorize: Authorize, info: AuthorizeInfo, ms: number): Promise<AuthorizeResult> {
    // A throw becomes this call's rejection; a decision made at once (the default, a token checked in
    // memory) has nothing to bound: no timer per connection.
    const decided = authorize(info)
    if (!isThenable(decided)) return checkResult(decided)
    return checkResult(await this.within(Promise.resolve(decided), ms, () => new AuthorizeTimeoutError(ms)))
  }

  /**
   * `work`'s result, or the error `late` makes once it has been pending for
   * `ms` (0: no bound; it goes on unwatched). Once the bound has won, what
   * `work` still holds of this call is one small closure: an authorize that
   * hands every call the same promise, pending for good (a hung fetch of
   * keys), must not keep each refused connection's error and frames.
   */
  within<T> (work: Promise<T>, ms: number, late: () => Error): Promise<T> {
    // 0: no bound (the options are checked to be a timer's delay, 0 to 2^31 - 1).
    if (ms === 0) return work
    return new Promise<T>((resolve, reject) => {
      const cell: Outcome<T> = { settle: null }
      const timer = setTimeout(() => cell.settle?.(false, late()), ms)
      this.#timers.add(timer)
      cell.settle = (ok, value) => {
        cell.settle = null
        clearTimeout(timer)
        this.#timers.delete(timer)
        if (ok) resolve(value as T)
        else reject(value)
      }
      watch(work, cell)
    })
  }

  /** Drops every pending bound (the app is closing; its sockets are closed): what they bound may stay pending. */
  clear (): void {
    for (const timer of this.#timers) clearTimeout(timer)
    this.#timers.clear()
  }
}

/**
 * Checks an authorize result (a bug in the user's authorize is refused):
 * valid permissions, and metadata that JSON can hold, kept as its JSON copy
 * (what the admin routes show is what was decided, and later changes to the
 * app's object do not leak in).
 */
function checkResult (result: AuthorizeResult | null | undefined): AuthorizeResult {
  const permissions = result?.permissions
  if (permissions !== 'readwrite' && permissions !== 'readonly') {
    throw new Error('authorize returned no valid permissions')
  }
  const metadata = result!.metadata
  if (metadata === undefined) return { permissions }
  let text: string | undefined
  try {
    text = JSON.stringify(metadata)
  } catch (err) {
    throw new Error(`authorize returned metadata that JSON cannot hold (${err instanceof Error ? err.message : String(err)})`)
  }
  return text === undefined ? { permissions } : { permissions, metadata: JSON.parse(text) as unknown }
}

function isThenable<T> (value: T | PromiseLike<T>): value is PromiseLike<T> {
  return typeof (value as { then?: unknown } | null)?.then === 'function'
}

function byteLength (data: RawData): number {
  if (Array.isArray(data)) return data.reduce((sum, chunk) => sum + chunk.length, 0)
  return data.byteLength
}
