import rateLimit from '@fastify/rate-limit'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { RawData, WebSocket } from 'ws'
import { CloseCode, closeReason, errors } from '../errors.js'
import type { AuthorizeResult, ResolvedOptions } from '../options.js'
import { refusal, type Room, type RoomOptions } from '../room/room.js'
import { RoomLimitError, type RoomManager } from '../room/room-manager.js'
import { corkingSocket } from './cork.js'
import { ConnectQuery, replyError } from './schemas.js'

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
}

/**
 * The WebSocket route. Checks the query before the upgrade (400), then
 * authorizes and loads the room while queueing, in order and with a bound,
 * the frames the client sends meanwhile.
 */
export const wsRoutes: FastifyPluginAsync<WsRouteOptions> = async (fastify: FastifyInstance, { options, manager, roomOptions, sockets, draining, metrics }) => {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  app.setErrorHandler(replyError)
  const authorize = options.authorize ?? (() => ({ permissions: 'readwrite' as const }))
  const limit = options.connectionRateLimit
  if (limit !== false) {
    // Scoped to this child plugin: only the upgrade route is limited, before the upgrade (HTTP 429).
    await app.register(rateLimit, {
      global: false,
      errorResponseBuilder: (_request, context) => new errors.TOO_MANY_CONNECTIONS(context.after)
    })
  }

  // Heartbeat: one timer for every socket. A socket that did not answer the previous ping is cut.
  const alive = new WeakMap<WebSocket, boolean>()
  if (options.heartbeatInterval > 0) {
    const interval = options.heartbeatInterval
    let lastTick = performance.now()
    const timer = setInterval(() => {
      const now = performance.now()
      // A late tick means this process stalled (GC, a busy loop): the pongs may be unread in the
      // sockets, as timers run before I/O. Cut nobody this round; just ping again.
      const stalled = now - lastTick > interval * 1.5
      lastTick = now
      for (const socket of sockets) {
        if (alive.get(socket) === false && !stalled) {
          socket.terminate()
          continue
        }
        alive.set(socket, false)
        socket.ping()
      }
    }, interval)
    timer.unref()
    app.addHook('onClose', async () => clearInterval(timer))
  }

  app.get(options.path, {
    websocket: true,
    schema: { querystring: ConnectQuery, hide: true },
    config: limit === false ? {} : { rateLimit: { max: limit.max, timeWindow: limit.timeWindow, allowList: limit.allowList } }
  }, (socket, request) => {
    const { roomId, clientId } = request.query
    const token = request.query.token ?? ''
    const log = request.log.child({ roomId, clientId })
    if (draining() || manager.draining) {
      socket.close(CloseCode.TRY_AGAIN_LATER, 'Server restarting: try again')
      return
    }
    sockets.add(socket)
    alive.set(socket, true)
    socket.on('pong', () => alive.set(socket, true))

    let room: Room | undefined
    let sessionId: string | undefined
    let closed = false
    let queue: RawData[] | null = []
    let queuedBytes = 0

    socket.on('message', (data: RawData) => {
      if (sessionId !== undefined) {
        if (byteLength(data) > options.maxPayload) {
          socket.close(CloseCode.MESSAGE_TOO_BIG, 'Frame too big')
          return
        }
        room!.handleSocketMessage(sessionId, data)
        return
      }
      if (queue === null) return
      queuedBytes += byteLength(data)
      if (queue.length >= options.maxQueuedFrames || queuedBytes > options.maxQueuedBytes) {
        log.warn('too many frames before the room was ready')
        queue = null
        socket.close(CloseCode.POLICY_VIOLATION, 'Too many frames before the room was ready')
        return
      }
      queue.push(data)
    })
    socket.on('close', (code: number) => {
      metrics?.closed(code)
      closed = true
      queue = null
      sockets.delete(socket)
      if (sessionId !== undefined) room!.handleSocketClose(sessionId)
    })
    socket.on('error', (err) => {
      log.debug({ err }, 'socket error')
      if (sessionId !== undefined) room!.handleSocketError(sessionId)
    })

    const accept = async (): Promise<void> => {
      let result: AuthorizeResult
      try {
        result = checkResult(await authorize({ roomId, clientId, token, request }))
      } catch (err) {
        const [code, reason] = refusal(err)
        log.info({ code, reason }, 'connection refused by authorize')
        socket.close(code, closeReason(reason))
        return
      }
      if (closed) return
      let loaded: Room
      try {
        loaded = await manager.getOrCreateRoom(roomId, roomOptions(roomId))
      } catch (err) {
        if (err instanceof RoomLimitError) {
          log.warn('room refused: the server is at its maxRooms limit')
          socket.close(CloseCode.TRY_AGAIN_LATER, 'Server at capacity')
          return
        }
        log.error({ err }, 'could not load the room')
        socket.close(CloseCode.INTERNAL_ERROR, 'Could not load the room')
        return
      }
      // Checked in the same turn as the connect, so the room cannot be unloaded in between.
      if (closed) return
      if (manager.draining) {
        socket.close(CloseCode.TRY_AGAIN_LATER, 'Server restarting: try again')
        return
      }
      room = loaded
      sessionId = room.handleSocketConnect({ socket: corkingSocket(socket), clientId, permissions: result.permissions, metadata: result.metadata })
      log.debug({ sessionId }, 'session joined')
      const pending = queue ?? []
      queue = null
      for (const data of pending) room.handleSocketMessage(sessionId, data)
    }
    accept().catch((err: unknown) => {
      log.error({ err }, 'accepting the connection failed')
      socket.close(CloseCode.INTERNAL_ERROR, 'Internal error')
    })
  })
}

/** Refuses an authorize result without valid permissions (a bug in the user's authorize). */
export function checkResult (result: AuthorizeResult | null | undefined): AuthorizeResult {
  const permissions = result?.permissions
  if (permissions !== 'readwrite' && permissions !== 'readonly') {
    throw new Error('authorize returned no valid permissions')
  }
  return result!
}

function byteLength (data: RawData): number {
  if (Array.isArray(data)) return data.reduce((sum, chunk) => sum + chunk.length, 0)
  return data.byteLength
}
