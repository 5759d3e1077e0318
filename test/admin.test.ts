import fastifyAuth from '@fastify/auth'
import type { FastifyInstance, FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify'
import Fastify from 'fastify'
import t from 'tap'
import canvasStore from '../lib/index.js'
import type { AuthorizeInfo, CanvasStoreOptions } from '../lib/index.js'
import { ACK, CLIENT_COUNT, Peer, build, connect, write } from './helper.js'

async function joined (app: FastifyInstance, roomId: string, clientId: string, token = ''): Promise<Peer> {
  const peer = await connect(app, { roomId, clientId, token })
  await peer.next((f) => f.type === 'clientCount')
  await peer.join()
  return peer
}

/** Sessions get readwrite, or readonly for a 'ro' token, with metadata naming the client. */
const authorize = ({ clientId, token }: AuthorizeInfo) => ({
  permissions: token === 'ro' ? 'readonly' as const : 'readwrite' as const,
  metadata: { name: `user-${clientId}` }
})

const open: CanvasStoreOptions = { authorize, admin: { auth: false } }

function sessionIdOf (app: FastifyInstance, roomId: string, clientId: string): string {
  const session = app.canvasStore.getExistingRoom(roomId)!.getSessions().find((s) => s.clientId === clientId)
  if (session === undefined) throw new Error(`no session for ${clientId}`)
  return session.sessionId
}

t.test('GET /rooms lists the loaded rooms with session count, counter and size', async (t) => {
  const app = await build(t, open)
  let res = await app.inject({ method: 'GET', url: '/rooms' })
  t.equal(res.statusCode, 200)
  t.strictSame(res.json(), [])
  const a = await joined(app, 'r1', 'a')
  const b = await joined(app, 'r1', 'b')
  const c = await joined(app, 'r2', 'c')
  await write(a, 'm1', [{ 'e1/A': { _exists: true, v: 1 }, 'e2/A': { _exists: true } }])
  await write(a, 'm2', [{ 'e2/A': { _exists: false } }])
  res = await app.inject({ method: 'GET', url: '/rooms' })
  t.equal(res.statusCode, 200)
  t.strictSame(res.json().sort((x: any, y: any) => x.roomId.localeCompare(y.roomId)), [
    // Estimated JSON: "e1/A":{"_exists":true,"v":1}, is 8 + 31 (a number counts 8), "e2/A":{"_exists":false}, 8 + 18.
    { roomId: 'r1', sessionCount: 2, timestamp: 2, documentSize: 2, documentBytes: 65 },
    { roomId: 'r2', sessionCount: 1, timestamp: 0, documentSize: 0, documentBytes: 0 }
  ])
  await Promise.all([a.close(), b.close(), c.close()])
})

t.test('GET /rooms/:roomId/sessions lists sessionId, clientId, permissions and metadata', async (t) => {
  const app = await build(t, open)
  const a = await joined(app, 'r1', 'a')
  const b = await joined(app, 'r1', 'b', 'ro')
  const res = await app.inject({ method: 'GET', url: '/rooms/r1/sessions' })
  t.equal(res.statusCode, 200)
  const sessions = res.json().sort((x: any, y: any) => x.clientId.localeCompare(y.clientId))
  t.strictSame(sessions, [
    { sessionId: sessionIdOf(app, 'r1', 'a'), clientId: 'a', permissions: 'readwrite', metadata: { name: 'user-a' } },
    { sessionId: sessionIdOf(app, 'r1', 'b'), clientId: 'b', permissions: 'readonly', metadata: { name: 'user-b' } }
  ])
  t.not(sessions[0].sessionId, sessions[1].sessionId)
  t.type(sessions[0].sessionId, 'string')
  await Promise.all([a.close(), b.close()])
})

t.test('PATCH /rooms/:roomId/sessions/:sessionId changes permissions; the very next frame obeys', async (t) => {
  const app = await build(t, open)
  const a = await joined(app, 'r1', 'a')
  const b = await joined(app, 'r1', 'b')
  const sessionId = sessionIdOf(app, 'r1', 'a')
  t.equal((await write(a, 'm1', [{ 'e1/A': { _exists: true, v: 1 } }])).timestamp, 1)

  let res = await app.inject({ method: 'PATCH', url: `/rooms/r1/sessions/${sessionId}`, payload: { permissions: 'readonly' } })
  t.equal(res.statusCode, 200)
  t.strictSame(res.json(), { sessionId, clientId: 'a', permissions: 'readonly', metadata: { name: 'user-a' } })
  const from = a.frames.length
  const fromB = b.frames.length
  t.strictSame(await write(a, 'm2', [{ 'e1/A': { v: 2 } }]), { type: 'ack', messageId: 'm2', timestamp: 1 }, 'acked, not applied')
  await a.next((f) => f.type === 'patch', from)
  t.ok(a.frames.slice(from).some((f) => f.type === 'error' && f.code === 'CANVAS_STORE_READONLY'))
  t.strictSame(JSON.parse(JSON.stringify(app.canvasStore.getExistingRoom('r1')!.getSnapshot().state)), { 'e1/A': { _exists: true, v: 1 } })
  await write(b, 'probe', undefined, [{ 'cursor/b': { _exists: true } }])
  t.strictSame(b.frames.slice(fromB), [{ type: 'ack', messageId: 'probe', timestamp: 1 }], 'not broadcast')

  res = await app.inject({ method: 'PATCH', url: `/rooms/r1/sessions/${sessionId}`, payload: { permissions: 'readwrite' } })
  t.equal(res.statusCode, 200)
  t.equal(res.json().permissions, 'readwrite')
  t.equal((await write(a, 'm3', [{ 'e1/A': { v: 3 } }])).timestamp, 2, 'readwrite again: applied')
  await Promise.all([a.close(), b.close()])
})

t.test('DELETE /rooms/:roomId/sessions/:sessionId closes the socket with 4000, tells the others, answers 204', async (t) => {
  const app = await build(t, open)
  const a = await joined(app, 'r1', 'a')
  const b = await joined(app, 'r1', 'b')
  const sessionId = sessionIdOf(app, 'r1', 'a')
  const fromB = b.frames.length
  const res = await app.inject({ method: 'DELETE', url: `/rooms/r1/sessions/${sessionId}` })
  t.equal(res.statusCode, 204)
  t.equal(res.body, '')
  t.equal((await a.closed).code, 4000)
  await b.next(CLIENT_COUNT(1), fromB)
  t.equal(app.canvasStore.getExistingRoom('r1')!.getSessionCount(), 1)
  const again = await app.inject({ method: 'DELETE', url: `/rooms/r1/sessions/${sessionId}` })
  t.equal(again.statusCode, 404)
  t.equal(again.json().code, 'CANVAS_STORE_SESSION_NOT_FOUND')
  await b.close()
})

t.test('GET /rooms/:roomId/snapshot returns the document with field timestamps and tombstones', async (t) => {
  const app = await build(t, open)
  const a = await joined(app, 'r1', 'a')
  await write(a, 'm1', [{ 'e1/A': { _exists: true, v: 1, pts: [1, 2] }, 'e2/A': { _exists: true, v: 2 } }])
  await write(a, 'm2', [{ 'e1/A': { v: 5 }, 'e2/A': { _exists: false } }])
  const res = await app.inject({ method: 'GET', url: '/rooms/r1/snapshot' })
  t.equal(res.statusCode, 200)
  t.strictSame(res.json(), {
    timestamp: 2,
    state: { 'e1/A': { _exists: true, v: 5, pts: [1, 2] }, 'e2/A': { _exists: false } },
    timestamps: { 'e1/A': { _exists: 1, v: 2, pts: 1 }, 'e2/A': { _exists: 2 } }
  })
  await a.close()
})

t.test('GET /rooms/:roomId/snapshot keeps keys and fields holding line breaks', async (t) => {
  const app = await build(t, open)
  const a = await joined(app, 'r1', 'a')
  await write(a, 'm1', [{ 'shape/\n2': { _exists: true, x: 2 }, 'shape/3': { _exists: true, 'a\nb': 3, 'c\u2028d': 4 } }])
  const res = await app.inject({ method: 'GET', url: '/rooms/r1/snapshot' })
  t.equal(res.statusCode, 200)
  t.strictSame(res.json().state, { 'shape/\n2': { _exists: true, x: 2 }, 'shape/3': { _exists: true, 'a\nb': 3, 'c\u2028d': 4 } })
  t.strictSame(res.json().timestamps['shape/3'], { _exists: 1, 'a\nb': 1, 'c\u2028d': 1 })
  await a.close()
})

t.test('GET /rooms/:roomId/snapshot shows __proto__ and constructor keys as ordinary keys', async (t) => {
  const app = await build(t, open)
  const a = await joined(app, 'r1', 'a')
  const ack = a.next(ACK('p1'))
  a.send('{"type":"patch","messageId":"p1","documentPatches":[{"__proto__":{"_exists":true,"v":1},"constructor":{"_exists":true,"w":2}}]}')
  await ack
  const res = await app.inject({ method: 'GET', url: '/rooms/r1/snapshot' })
  t.equal(res.statusCode, 200)
  const snap = res.json()
  t.strictSame(Object.keys(snap.state).sort(), ['__proto__', 'constructor'])
  t.strictSame(Object.getOwnPropertyDescriptor(snap.state, '__proto__')?.value, { _exists: true, v: 1 })
  t.strictSame(snap.state.constructor, { _exists: true, w: 2 })
  t.equal(({} as any).v, undefined)
  await a.close()
})

t.test('404 CANVAS_STORE_ROOM_NOT_FOUND for a room that is not loaded, on every room route', async (t) => {
  const app = await build(t, open)
  const routes: Array<{ method: 'GET' | 'PATCH' | 'DELETE', url: string, payload?: object }> = [
    { method: 'GET', url: '/rooms/nope/sessions' },
    { method: 'PATCH', url: '/rooms/nope/sessions/s1', payload: { permissions: 'readonly' } },
    { method: 'DELETE', url: '/rooms/nope/sessions/s1' },
    { method: 'GET', url: '/rooms/nope/snapshot' }
  ]
  for (const route of routes) {
    const res = await app.inject(route)
    t.equal(res.statusCode, 404, `${route.method} ${route.url}`)
    t.equal(res.json().code, 'CANVAS_STORE_ROOM_NOT_FOUND')
  }
})

t.test('404 CANVAS_STORE_SESSION_NOT_FOUND for an unknown session, or a session of another room', async (t) => {
  const app = await build(t, open)
  const a = await joined(app, 'r1', 'a')
  const b = await joined(app, 'r2', 'b')
  const other = sessionIdOf(app, 'r2', 'b')
  for (const sessionId of ['unknown', other]) {
    let res = await app.inject({ method: 'PATCH', url: `/rooms/r1/sessions/${sessionId}`, payload: { permissions: 'readonly' } })
    t.equal(res.statusCode, 404)
    t.equal(res.json().code, 'CANVAS_STORE_SESSION_NOT_FOUND')
    res = await app.inject({ method: 'DELETE', url: `/rooms/r1/sessions/${sessionId}` })
    t.equal(res.statusCode, 404)
    t.equal(res.json().code, 'CANVAS_STORE_SESSION_NOT_FOUND')
  }
  t.equal(app.canvasStore.getExistingRoom('r2')!.getSessionPermissions(other), 'readwrite', 'the other room\'s session is untouched')
  t.equal(app.canvasStore.getExistingRoom('r2')!.getSessionCount(), 1)
  await Promise.all([a.close(), b.close()])
})

const badBodies: Array<[string, Record<string, unknown>]> = [
  ['a wrong permissions value', { payload: { permissions: 'admin' } }],
  ['an extra property', { payload: { permissions: 'readonly', role: 'admin' } }],
  ['permissions missing', { payload: {} }],
  ['no body at all', {}],
  ['a JSON body that is not an object', { payload: '"readonly"', headers: { 'content-type': 'application/json' } }]
]

for (const [name, body] of badBodies) {
  t.test(`PATCH with ${name}: 400 CANVAS_STORE_INVALID_REQUEST, permissions unchanged`, async (t) => {
    const app = await build(t, open)
    const a = await joined(app, 'r1', 'a')
    const sessionId = sessionIdOf(app, 'r1', 'a')
    const res = await app.inject({ method: 'PATCH', url: `/rooms/r1/sessions/${sessionId}`, ...body })
    t.equal(res.statusCode, 400)
    t.equal(res.json().code, 'CANVAS_STORE_INVALID_REQUEST')
    t.equal(app.canvasStore.getExistingRoom('r1')!.getSessionPermissions(sessionId), 'readwrite', 'unchanged')
    await a.close()
  })
}

t.test('bodies that do not parse: 400 CANVAS_STORE_INVALID_REQUEST; an empty body labelled JSON is no body', async (t) => {
  const app = await build(t, open)
  const a = await joined(app, 'r1', 'a')
  const sessionId = sessionIdOf(app, 'r1', 'a')
  const json = { 'content-type': 'application/json' }
  for (const payload of ['{"permissions":', '{"__proto__":{"permissions":"readonly"}}', '{"constructor":{"prototype":{}}}']) {
    const res = await app.inject({ method: 'PATCH', url: `/rooms/r1/sessions/${sessionId}`, payload, headers: json })
    t.equal(res.statusCode, 400, payload)
    t.equal(res.json().code, 'CANVAS_STORE_INVALID_REQUEST')
  }
  const empty = await app.inject({ method: 'PATCH', url: `/rooms/r1/sessions/${sessionId}`, payload: '', headers: json })
  t.equal(empty.statusCode, 400, 'PATCH needs its body')
  t.equal(empty.json().code, 'CANVAS_STORE_INVALID_REQUEST')
  t.equal(app.canvasStore.getExistingRoom('r1')!.getSessionPermissions(sessionId), 'readwrite', 'unchanged')
  t.equal((await app.inject({ method: 'GET', url: '/rooms', headers: json })).statusCode, 200)
  const closed = a.closed
  const del = await app.inject({ method: 'DELETE', url: `/rooms/r1/sessions/${sessionId}`, headers: json })
  t.equal(del.statusCode, 204, 'a DELETE labelled JSON without a body')
  t.equal((await closed).code, 4000)
})

const bearer: onRequestHookHandler = async (request: FastifyRequest, reply: FastifyReply) => {
  if (request.headers.authorization !== 'Bearer s3cret') {
    await reply.code(401).send({ statusCode: 401, code: 'ADMIN_UNAUTHORIZED', error: 'Unauthorized', message: 'bearer token required' })
  }
}

const everyRoute = (sessionId: string): Array<{ method: 'GET' | 'PATCH' | 'DELETE', url: string, payload?: object }> => [
  { method: 'GET', url: '/rooms' },
  { method: 'GET', url: '/rooms/r1/sessions' },
  { method: 'PATCH', url: `/rooms/r1/sessions/${sessionId}`, payload: { permissions: 'readonly' } },
  { method: 'DELETE', url: `/rooms/r1/sessions/${sessionId}` },
  { method: 'GET', url: '/rooms/r1/snapshot' },
  { method: 'GET', url: '/rooms/unknown/snapshot' },
  { method: 'PATCH', url: `/rooms/r1/sessions/${sessionId}`, payload: { permissions: 'bogus' } }
]

t.test('an onRequest admin hook refusing: its own 401 on every route, before 404 or 400; with the header the routes work', async (t) => {
  const app = await build(t, { admin: { onRequest: bearer } })
  const a = await joined(app, 'r1', 'a')
  const sessionId = sessionIdOf(app, 'r1', 'a')
  for (const route of everyRoute(sessionId)) {
    const res = await app.inject({ ...route, headers: { authorization: 'Bearer wrong' } })
    t.equal(res.statusCode, 401, `${route.method} ${route.url}`)
    t.equal(res.json().code, 'ADMIN_UNAUTHORIZED')
  }
  t.equal(app.canvasStore.getExistingRoom('r1')!.getSessionPermissions(sessionId), 'readwrite', 'the refused PATCH did nothing')
  t.equal(app.canvasStore.getExistingRoom('r1')!.getSessionCount(), 1, 'the refused DELETE did nothing')
  const res = await app.inject({ method: 'GET', url: '/rooms', headers: { authorization: 'Bearer s3cret' } })
  t.equal(res.statusCode, 200)
  t.equal(res.json().length, 1)
  const patch = await app.inject({ method: 'PATCH', url: `/rooms/r1/sessions/${sessionId}`, payload: { permissions: 'readonly' }, headers: { authorization: 'Bearer s3cret' } })
  t.equal(patch.statusCode, 200)
  await a.close()
})

t.test('an admin hook\'s own 400 or 404 without a code is answered as it is, not as a 500', async (t) => {
  const app = await build(t, {
    admin: {
      onRequest: async (request, reply) => {
        if (request.headers['x-case'] === 'throw') throw Object.assign(new Error('bad tenant'), { statusCode: 400 })
        if (request.headers['x-case'] === 'reply') return await reply.code(404).send({ statusCode: 404, error: 'Not Found', message: 'no tenant' })
      }
    }
  })
  const thrown = await app.inject({ url: '/rooms/r/sessions', headers: { 'x-case': 'throw' } })
  t.equal(thrown.statusCode, 400)
  t.match(thrown.json(), { statusCode: 400, message: 'bad tenant' })
  const replied = await app.inject({ url: '/rooms/r/sessions', headers: { 'x-case': 'reply' } })
  t.equal(replied.statusCode, 404)
  t.match(replied.json(), { message: 'no tenant' })
})

t.test('a preHandler admin hook that throws a 403 error: 403 with its code', async (t) => {
  const app = await build(t, {
    admin: {
      preHandler: async (request) => {
        if (request.headers['x-admin'] !== 'yes') throw Object.assign(new Error('admins only'), { statusCode: 403, code: 'ADMIN_FORBIDDEN' })
      }
    }
  })
  let res = await app.inject({ method: 'GET', url: '/rooms' })
  t.equal(res.statusCode, 403)
  t.equal(res.json().code, 'ADMIN_FORBIDDEN')
  res = await app.inject({ method: 'GET', url: '/rooms', headers: { 'x-admin': 'yes' } })
  t.equal(res.statusCode, 200)
})

t.test('@fastify/auth as the admin onRequest hook: 401 without credentials, 200 with them', async (t) => {
  const opts: CanvasStoreOptions = { admin: {} }
  const verify = (request: FastifyRequest, _reply: FastifyReply, done: (error?: Error) => void): void => {
    if (request.headers.authorization === 'Bearer s3cret') done()
    else done(new Error('bad admin credentials'))
  }
  const app = await build(t, opts, async (app) => {
    await app.register(fastifyAuth)
    opts.admin!.onRequest = app.auth([verify]) as unknown as onRequestHookHandler
  })
  const a = await joined(app, 'r1', 'a')
  const sessionId = sessionIdOf(app, 'r1', 'a')
  for (const route of everyRoute(sessionId)) {
    const res = await app.inject(route)
    t.equal(res.statusCode, 401, `${route.method} ${route.url}`)
    t.match(res.json(), { statusCode: 401, message: 'bad admin credentials' })
  }
  t.equal(app.canvasStore.getExistingRoom('r1')!.getSessionCount(), 1)
  const ok = await app.inject({ method: 'GET', url: '/rooms/r1/sessions', headers: { authorization: 'Bearer s3cret' } })
  t.equal(ok.statusCode, 200)
  t.equal(ok.json()[0].sessionId, sessionId)
  await a.close()
})

t.test('admin: {} without a hook and without auth:false registers no admin route (404)', async (t) => {
  const app = await build(t, { admin: {} })
  const a = await joined(app, 'r1', 'a')
  for (const route of everyRoute(sessionIdOf(app, 'r1', 'a'))) {
    const res = await app.inject(route)
    t.equal(res.statusCode, 404, `${route.method} ${route.url}`)
    t.match(res.json().message, /^Route .* not found$/, 'the router\'s own 404')
  }
  await a.close()
})

t.test('without the admin option no admin route is registered', async (t) => {
  const app = await build(t)
  const res = await app.inject({ method: 'GET', url: '/rooms' })
  t.equal(res.statusCode, 404)
})

t.test('admin: { auth: false } registers the routes without a hook', async (t) => {
  const app = await build(t, { admin: { auth: false } })
  const res = await app.inject({ method: 'GET', url: '/rooms' })
  t.equal(res.statusCode, 200)
  t.strictSame(res.json(), [])
})

t.test('admin.prefix moves every admin route', async (t) => {
  const app = await build(t, { admin: { auth: false, prefix: '/admin/v1' } })
  const a = await joined(app, 'r1', 'a')
  const sessionId = sessionIdOf(app, 'r1', 'a')
  t.equal((await app.inject({ method: 'GET', url: '/admin/v1/rooms' })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: '/admin/v1/rooms/r1/sessions' })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: '/admin/v1/rooms/r1/snapshot' })).statusCode, 200)
  t.equal((await app.inject({ method: 'PATCH', url: `/admin/v1/rooms/r1/sessions/${sessionId}`, payload: { permissions: 'readonly' } })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: '/rooms' })).statusCode, 404, 'not at the root any more')
  t.equal((await app.inject({ method: 'GET', url: '/rooms/r1/snapshot' })).statusCode, 404)
  t.equal((await app.inject({ method: 'DELETE', url: `/admin/v1/rooms/r1/sessions/${sessionId}` })).statusCode, 204)
  t.equal((await a.closed).code, 4000)
})

t.test('an app\'s own 404 handler under the admin prefix keeps answering there', async (t) => {
  const app = await build(t, { admin: { auth: false, prefix: '/admin' } }, async (app) => {
    await app.register(async (scope) => {
      scope.setNotFoundHandler(async (_request, reply) => await reply.code(404).send({ mine: true }))
    }, { prefix: '/admin' })
  })
  const res = await app.inject({ method: 'GET', url: '/admin/roomz' })
  t.equal(res.statusCode, 404)
  t.same(res.json(), { mine: true })
  t.equal((await app.inject({ method: 'GET', url: '/admin/rooms' })).statusCode, 200)
})

t.test('the longest room ids reach the admin routes with routerOptions.maxParamLength 2304, as the README says; 414 without', async (t) => {
  const roomId = '界'.repeat(256)
  for (const [name, fastifyOptions, status] of [['default', {}, 414], ['routerOptions', { routerOptions: { maxParamLength: 2304 } }, 200]] as const) {
    const app = Fastify({ logger: false, ...fastifyOptions })
    await app.register(canvasStore, open)
    await app.ready()
    t.teardown(async () => {
      await app.close()
      for (const client of app.websocketServer.clients) client.terminate()
    })
    const peer = await joined(app, roomId, 'a')
    const res = await app.inject({ method: 'GET', url: `/rooms/${encodeURIComponent(roomId)}/sessions` })
    t.equal(res.statusCode, status, name)
    if (status === 200) t.equal(res.json()[0].clientId, 'a')
    await peer.close()
  }
})

t.test('a roomId with an encoded slash or .. reaches only the room with exactly that id', async (t) => {
  const app = await build(t, open)
  const secret = await joined(app, 'secret', 's')
  await write(secret, 'm1', [{ 'e1/Secret': { _exists: true, v: 'classified' } }])
  const team = await joined(app, 'team/a', 't')
  await write(team, 'm1', [{ 'e1/Team': { _exists: true, v: 'team' } }])
  const secretSession = sessionIdOf(app, 'secret', 's')

  for (const id of ['..%2Fsecret', '%2E%2E%2Fsecret', 'x%2F..%2Fsecret', 'team%2F..%2Fsecret', 'team%2Fa%2F..%2F..%2Fsecret', '%2E%2E', 'secret%2F', 'secret%2F.', 'team%2F..']) {
    for (const path of ['snapshot', 'sessions']) {
      const res = await app.inject({ method: 'GET', url: `/rooms/${id}/${path}` })
      t.equal(res.statusCode, 404, `GET /rooms/${id}/${path}`)
      // Either no such room, or (a bare `..` segment normalized away) no such route: never another room.
      t.ok(res.json().code === 'CANVAS_STORE_ROOM_NOT_FOUND' || /^Route .* not found$/.test(res.json().message), res.body)
      t.notMatch(res.body, /classified/)
    }
    const del = await app.inject({ method: 'DELETE', url: `/rooms/${id}/sessions/${secretSession}` })
    t.equal(del.statusCode, 404, `DELETE /rooms/${id}/sessions/...`)
  }
  t.equal(app.canvasStore.getExistingRoom('secret')!.getSessionCount(), 1, 'the secret room\'s session survived')

  const res = await app.inject({ method: 'GET', url: '/rooms/team%2Fa/snapshot' })
  t.equal(res.statusCode, 200, 'an encoded slash is part of the id')
  t.strictSame(Object.keys(res.json().state), ['e1/Team'])
  const cross = await app.inject({ method: 'DELETE', url: `/rooms/team%2Fa/sessions/${secretSession}` })
  t.equal(cross.statusCode, 404, 'a session of another room is not reachable through this one')
  t.equal(cross.json().code, 'CANVAS_STORE_SESSION_NOT_FOUND')
  await Promise.all([secret.close(), team.close()])
})

t.test('PATCH that changes permissions pushes {type:permissions} to that session only; a PATCH to the same value pushes nothing', async (t) => {
  const app = await build(t, open)
  const a = await joined(app, 'r1', 'a')
  const b = await joined(app, 'r1', 'b')
  const sessionId = sessionIdOf(app, 'r1', 'a')
  const from = a.frames.length
  const fromB = b.frames.length

  const pushed = a.next((f) => f.type === 'permissions', from)
  let res = await app.inject({ method: 'PATCH', url: `/rooms/r1/sessions/${sessionId}`, payload: { permissions: 'readonly' } })
  t.equal(res.statusCode, 200)
  t.strictSame(await pushed, { type: 'permissions', permissions: 'readonly' })

  res = await app.inject({ method: 'PATCH', url: `/rooms/r1/sessions/${sessionId}`, payload: { permissions: 'readonly' } })
  t.equal(res.statusCode, 200)
  t.equal(res.json().permissions, 'readonly')
  // A presence-only write of a readonly session is just acked: the ack is the only frame after the push.
  const ack = await write(a, 'probe', undefined, [{ 'cursor/a': { _exists: true } }])
  t.strictSame(a.frames.slice(from), [{ type: 'permissions', permissions: 'readonly' }, ack], 'one push for two PATCHes')

  res = await app.inject({ method: 'PATCH', url: `/rooms/r1/sessions/${sessionId}`, payload: { permissions: 'readwrite' } })
  t.equal(res.statusCode, 200)
  t.strictSame(await a.next((f) => f.type === 'permissions' && f.permissions === 'readwrite', from), { type: 'permissions', permissions: 'readwrite' }, 'back to readwrite: pushed again')

  const probe = await write(b, 'probe-b', undefined, [{ 'cursor/b': { _exists: true } }])
  t.strictSame(b.frames.slice(fromB), [probe], 'the other session got no permissions frame')
  await Promise.all([a.close(), b.close()])
})
