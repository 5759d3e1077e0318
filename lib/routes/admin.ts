import { TypeBoxValidatorCompiler, type TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import { CloseCode, errors } from '../errors.js'
import type { Metrics } from '../metrics.js'
import type { ResolvedOptions } from '../options.js'
import { adminPage } from './admin-page.js'
import type { Room } from '../room/room.js'
import type { RoomManager } from '../room/room-manager.js'
import { ErrorReply, PermissionsBody, RoomInfo, RoomParams, SessionInfo, SessionParams, Snapshot, replyError } from './schemas.js'

/** What the admin routes need from the plugin. */
export interface AdminRouteOptions {
  admin: NonNullable<ResolvedOptions['admin']>
  manager: RoomManager
  /** Prometheus metrics, served at `metricsPath` when given. */
  metrics?: Metrics | undefined
  metricsPath?: string | undefined
}

const tags = ['canvas-store admin']
/** What a route with params answers besides 200: a param or body that fails its schema, an unknown room or session. */
const refused = { 400: ErrorReply, 404: ErrorReply }

/**
 * The admin REST routes. Every route runs the user's hooks first
 * (`onRequest`, then `preHandler`), so an unauthenticated request never
 * reaches a handler.
 */
export const adminRoutes: FastifyPluginAsync<AdminRouteOptions> = async (fastify: FastifyInstance, { admin, manager, metrics, metricsPath }) => {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  app.setErrorHandler(replyError)
  // TypeBox's own checker: unlike Fastify's default Ajv setup it refuses extra
  // body properties instead of quietly removing them.
  app.setValidatorCompiler(TypeBoxValidatorCompiler)
  // An empty body sent as JSON (some HTTP clients label every request so, a DELETE included) is no body,
  // not Fastify's 400: the routes' schemas decide. Any other body goes to Fastify's own JSON parser.
  const json = app.getDefaultJsonParser('error', 'error')
  app.removeContentTypeParser('application/json')
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    if (body === '') done(null, undefined)
    else json(request, body as string, done)
  })
  for (const hook of admin.onRequest) app.addHook('onRequest', hook)
  for (const hook of admin.preHandler) app.addHook('preHandler', hook)

  const roomOf = (roomId: string): Room => {
    const room = manager.getExistingRoom(roomId)
    if (room === undefined) throw new errors.ROOM_NOT_FOUND(roomId)
    return room
  }

  app.get('/rooms', {
    schema: {
      tags,
      summary: 'Rooms loaded now, with session count and counter',
      response: { 200: Type.Array(RoomInfo) }
    }
  }, async () => manager.getRooms())

  app.get('/rooms/:roomId/sessions', {
    schema: {
      tags,
      summary: 'Sessions of a room',
      params: RoomParams,
      response: { 200: Type.Array(SessionInfo), ...refused }
    }
  }, async (request) => roomOf(request.params.roomId).getSessions())

  app.patch('/rooms/:roomId/sessions/:sessionId', {
    schema: {
      tags,
      summary: "Change a session's permissions; its next frame obeys them",
      params: SessionParams,
      body: PermissionsBody,
      response: { 200: SessionInfo, ...refused }
    }
  }, async (request) => {
    const { roomId, sessionId } = request.params
    const room = roomOf(roomId)
    if (!room.setSessionPermissions(sessionId, request.body.permissions)) throw new errors.SESSION_NOT_FOUND(sessionId, roomId)
    request.log.info({ roomId, sessionId, permissions: request.body.permissions }, 'session permissions changed')
    return room.getSession(sessionId)!
  })

  app.delete('/rooms/:roomId/sessions/:sessionId', {
    schema: {
      tags,
      summary: 'Disconnect a session (close code 4000)',
      params: SessionParams,
      response: { 204: Type.Null(), ...refused }
    }
  }, async (request, reply) => {
    const { roomId, sessionId } = request.params
    if (!roomOf(roomId).disconnectSession(sessionId, CloseCode.KICKED, 'Disconnected by an administrator')) {
      throw new errors.SESSION_NOT_FOUND(sessionId, roomId)
    }
    request.log.info({ roomId, sessionId }, 'session disconnected by an administrator')
    return reply.code(204).send(null)
  })

  if (metrics !== undefined && metricsPath !== undefined) {
    app.get(metricsPath, {
      schema: { tags, summary: 'Prometheus metrics (text exposition format)', produces: ['text/plain'] }
    }, async (_request, reply) => {
      reply.type(metrics.registry.contentType)
      return await metrics.registry.metrics()
    })
  }

  if (admin.page !== undefined) {
    // The whole prefix, the app's own included (the plugin registered under a prefix), for the page's requests.
    const html = adminPage(fastify.prefix.replace(/\/+$/, ''), admin.page)
    app.get(admin.page, { schema: { hide: true } }, async (_request, reply) => {
      // Not to be framed: its buttons act with the administrator's cookies (clickjacking).
      reply.type('text/html; charset=utf-8')
        .header('content-security-policy', "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'")
        .header('x-frame-options', 'DENY')
      return html
    })
  }

  app.get('/rooms/:roomId/snapshot', {
    schema: {
      tags,
      summary: "The room's document (state and field timestamps, tombstones included)",
      params: RoomParams,
      response: { 200: Snapshot, ...refused }
    }
  }, async (request) => roomOf(request.params.roomId).getSnapshot())
}
