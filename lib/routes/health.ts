import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import { Type } from '@sinclair/typebox'
import type { RoomManager } from '../room/room-manager.js'
import type { RoomStore } from '../storage/storage.js'

/** What the health routes need from the plugin. */
export interface HealthRouteOptions {
  healthPath: string
  readyPath: string
  manager: RoomManager
  storage: RoomStore | undefined
  draining: () => boolean
  /** Longest wait for the storage ping (ms). */
  timeoutMs: number
}

const Status = Type.Object({ status: Type.String(), reason: Type.Optional(Type.String()) })

/**
 * Liveness and readiness, for load balancers and orchestrators; public and
 * cheap. `/health`: the process answers. `/ready`: not draining and the
 * storage answers its ping (when it has one).
 */
export const healthRoutes: FastifyPluginAsync<HealthRouteOptions> = async (fastify: FastifyInstance, opts) => {
  fastify.get(opts.healthPath, {
    schema: { tags: ['canvas-store health'], summary: 'The process is up', response: { 200: Status } }
  }, async () => ({ status: 'ok' }))

  fastify.get(opts.readyPath, {
    schema: { tags: ['canvas-store health'], summary: 'Ready for connections: not draining, storage reachable', response: { 200: Status, 503: Status } }
  }, async (_request, reply) => {
    if (opts.draining() || opts.manager.draining) return reply.code(503).send({ status: 'unavailable', reason: 'draining' })
    if (opts.storage?.ping !== undefined) {
      try {
        await withTimeout(opts.storage.ping(), opts.timeoutMs)
      } catch {
        return reply.code(503).send({ status: 'unavailable', reason: 'storage unreachable' })
      }
    }
    return { status: 'ok' }
  })
}

function withTimeout (promise: Promise<void>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    promise,
    new Promise<void>((_resolve, reject) => { timer = setTimeout(() => reject(new Error('timeout')), ms) })
  ]).finally(() => clearTimeout(timer))
}
