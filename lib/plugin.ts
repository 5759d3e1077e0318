import websocket from '@fastify/websocket'
import swagger from '@fastify/swagger'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import type { WebSocket } from 'ws'
import { CloseCode } from './errors.js'
import { Metrics } from './metrics.js'
import { resolveOptions, type CanvasStoreOptions, type ResolvedOptions } from './options.js'
import { requirePeer } from './peer.js'
import { catchUpAllowance } from './room/catch-up.js'
import type { RoomOptions } from './room/room.js'
import { RoomManager } from './room/room-manager.js'
import { Bounds, socketError } from './routes/ws.js'
import { adminRoutes } from './routes/admin.js'
import { healthRoutes } from './routes/health.js'
import { wsRoutes } from './routes/ws.js'
import { MemoryStore } from './storage/memory.js'
import type { CreateStorage } from './storage/storage.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The plugin's RoomManager: rooms, sessions, snapshots. Read-only. */
    readonly canvasStore: RoomManager
  }
}

/** How long a socket closed at shutdown has to answer the close frame before it is cut. */
const SHUTDOWN_CLOSE_MS = 1000

const canvasStore: FastifyPluginAsync<CanvasStoreOptions> = async (fastify, opts) => {
  const options = resolveOptions(opts)
  const log = fastify.log.child({ plugin: 'fastify-canvas-store' })
  // Shutdown waits for a storage that does not answer as long as a room waits for one write.
  const manager = new RoomManager({ idleTimeout: options.idleTimeout, maxRooms: options.maxRooms, logger: log, closeTimeoutMs: options.storageFailureTimeoutMs })
  const metrics = options.metrics === undefined ? undefined : new Metrics(manager)
  const sockets = new Set<WebSocket>()
  const bounds = new Bounds()
  let draining = false

  if (options.authorize === undefined) {
    log.warn('no authorize option: every connection gets readwrite access')
  }
  const createStorage: CreateStorage = options.createStorage ?? defaultStorage()
  // One allowance for every room of this registration: the bound is on the process's memory, not a room's.
  const catchUp = catchUpAllowance(options.slowClient)
  const roomOptions = (roomId: string): RoomOptions => ({
    createStorage,
    saveThrottleMs: options.saveThrottleMs,
    durability: options.durability,
    storageFailureTimeoutMs: options.storageFailureTimeoutMs,
    limits: options.limits,
    rateLimit: options.rateLimit,
    slowClient: options.slowClient,
    catchUp,
    observer: metrics,
    presenceBatching: options.presenceBatching,
    logger: log,
    onTokenRefresh: options.authorize === undefined
      ? undefined
      : async (_room, { clientId, token }) => await bounds.authorize(options.authorize!, { roomId, clientId, token, request: undefined }, options.authorizeTimeoutMs)
  })

  // Turn new sockets away and close open ones with 1001 before the server stops listening. A client that does
  // not answer the close frame (it stopped reading, or vanished) would hold app.close() for ws's 30 s close
  // timeout, past many orchestrators' grace period: those still open a second later are cut.
  let cutLate: NodeJS.Timeout | undefined
  const closeSockets = (): void => {
    draining = true
    for (const socket of sockets) socket.close(CloseCode.GOING_AWAY, 'Server shutting down')
    if (cutLate === undefined && sockets.size > 0) {
      cutLate = setTimeout(() => { for (const socket of sockets) socket.terminate() }, SHUTDOWN_CLOSE_MS)
      cutLate.unref()
    }
  }

  // When the plugin registers @fastify/websocket, errors on its sockets are the plugin's to handle (socketError);
  // an app that registered it gets them in its own errorHandler.
  const ownsSocketErrors = !fastify.hasDecorator('websocketServer')
  if (!ownsSocketErrors) {
    fastify.addHook('preClose', async () => closeSockets())
  } else {
    await fastify.register(websocket, {
      options: { maxPayload: options.maxPayload },
      errorHandler: (error, socket, request) => socketError(error, socket, request.log),
      preClose (done) {
        closeSockets()
        const server = this.websocketServer
        for (const client of server.clients) client.close(CloseCode.GOING_AWAY, 'Server shutting down')
        // Like the default preClose: stop the server without waiting for every close handshake.
        server.close()
        done()
      }
    })
  }

  fastify.decorate('canvasStore', { getter: () => manager })
  // Sessions are closed by now, so the snapshots taken here are final.
  fastify.addHook('onClose', async () => {
    // A hung authorize or load must not keep the process alive until its bound: its socket is closed already.
    bounds.clear()
    clearTimeout(cutLate)
    await manager.closeAll()
  })

  // The routes in a scope of their own (the prefix and hooks of the app's context still apply): @fastify/swagger,
  // when the plugin registers it, then describes them alone, and its decorator stays out of the app's context.
  await fastify.register(async (scope) => {
    if (options.openapi !== undefined) await registerOpenapi(scope, options.openapi)
    await scope.register(wsRoutes, { options, manager, roomOptions, sockets, draining: () => draining, metrics, bounds, ownsSocketErrors })
    if (options.health !== undefined) {
      await scope.register(healthRoutes, {
        ...options.health,
        manager,
        storage: opts.storage,
        draining: () => draining,
        timeoutMs: 2000
      })
    }
    if (options.admin !== undefined) {
      await scope.register(adminRoutes, { admin: options.admin, manager, metrics, metricsPath: options.metrics?.path, prefix: options.admin.prefix })
    } else if (opts.admin !== undefined) {
      log.warn('admin routes not registered: give admin.onRequest (or preHandler) hooks, or admin.auth: false')
    }
  })
}

/** Registers @fastify/swagger (unless the app has it) and serves the spec; optionally the UI. */
async function registerOpenapi (fastify: FastifyInstance, openapi: NonNullable<ResolvedOptions['openapi']>): Promise<void> {
  if (!fastify.hasDecorator('swagger')) {
    await fastify.register(swagger, {
      openapi: {
        info: { title: 'fastify-canvas-store', description: 'Admin and health routes of the canvas-store sync server', version: '1' }
      }
    })
  }
  fastify.get(openapi.path, { schema: { hide: true } }, async () => fastify.swagger())
  if (openapi.ui) {
    const swaggerUi = requirePeer<typeof import('@fastify/swagger-ui')>('@fastify/swagger-ui', '5', 'openapi.ui')
    await fastify.register(swaggerUi, { routePrefix: openapi.uiPrefix })
  }
}

/** The default storage: every room's snapshot in memory, for the process's lifetime. */
function defaultStorage (): CreateStorage {
  const store = new MemoryStore()
  return (roomId) => store.forRoom(roomId)
}

/** The Fastify plugin. Register it with `app.register(canvasStore, options)`. */
export default fp(canvasStore, { fastify: '5.x', name: 'fastify-canvas-store' })
