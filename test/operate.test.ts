import swagger from '@fastify/swagger'
import Fastify from 'fastify'
import t from 'tap'
import canvasStore from '../lib/index.js'
import { COUNTER_RESERVE, SqliteStorage, type IncrementalStorage, type RoomStore } from '../lib/index.js'
import { Metrics } from '../lib/metrics.js'
import type { RoomManager } from '../lib/room/room-manager.js'
import { build, connect, connectReal, listen } from './helper.js'

const bearer = (token: string) => async (request: { headers: Record<string, unknown> }, reply: { code(n: number): { send(b: unknown): Promise<unknown> | unknown } }) => {
  if (request.headers.authorization !== `Bearer ${token}`) {
    await reply.code(401).send({ statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized', message: 'no' })
  }
}

t.test('health and readiness', async (t) => {
  let reachable = true
  const store: RoomStore = {
    forRoom: () => ({ load: async () => null, save: async () => {} }),
    ping: async () => { if (!reachable) throw new Error('down') }
  }
  const app = await build(t, { storage: store, health: true })
  t.same((await app.inject('/health')).json(), { status: 'ok' })
  t.equal((await app.inject('/ready')).statusCode, 200)
  reachable = false
  const down = await app.inject('/ready')
  t.equal(down.statusCode, 503)
  t.same(down.json(), { status: 'unavailable', reason: 'storage unreachable' })
  reachable = true
  await app.canvasStore.drain({ graceMs: 0, jitterMs: 0 })
  t.same((await app.inject('/ready')).json(), { status: 'unavailable', reason: 'draining' })
  t.equal((await app.inject('/health')).statusCode, 200, 'still alive while draining')
})

t.test('health routes are off unless asked, and paths are options', async (t) => {
  const off = await build(t)
  t.equal((await off.inject('/health')).statusCode, 404)
  const moved = await build(t, { health: { healthPath: '/livez', readyPath: '/readyz' } })
  t.equal((await moved.inject('/livez')).statusCode, 200)
  t.equal((await moved.inject('/readyz')).statusCode, 200)
})

t.test('SqliteStorage answers the readiness ping', async (t) => {
  const storage = new SqliteStorage({ file: ':memory:' })
  const app = await build(t, { storage, health: true })
  t.equal((await app.inject('/ready')).statusCode, 200)
  await storage.close()
  t.equal((await app.inject('/ready')).statusCode, 503, 'a closed database is not ready')
})

t.test('metrics: behind the admin hooks, counting frames, sessions and closes', async (t) => {
  const app = await build(t, { admin: { onRequest: bearer('s3cret'), prefix: '/admin' }, metrics: true })
  t.equal((await app.inject('/admin/metrics')).statusCode, 401, 'refused without the hook')
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  await a.join()
  const ack = a.nextOfType('ack')
  a.send({ type: 'patch', messageId: 'm1', documentPatches: [{ k: { _exists: true } }] })
  await ack
  a.send('not json')
  const res = await app.inject({ url: '/admin/metrics', headers: { authorization: 'Bearer s3cret' } })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/plain/)
  const body = res.body
  t.match(body, /canvas_store_rooms 1/)
  t.match(body, /canvas_store_sessions 1/)
  t.match(body, /canvas_store_document_keys 1/)
  // "k":{"_exists":true}, estimated: 5 for the key, 18 for the value.
  t.match(body, /canvas_store_document_bytes 23\n/)
  t.match(body, /canvas_store_frames_in_total\{type="reconnect"\} 1/)
  t.match(body, /canvas_store_frames_in_total\{type="patch"\} 1/)
  t.match(body, /canvas_store_frame_apply_seconds_count \d+/)
  t.match(body, /canvas_store_frames_out_total \d+/)
  t.match(body, /canvas_store_acks_waiting 0/)
  a.ws.terminate()
})

t.test('metrics: frames and bytes counted between scrapes add up exactly', async (t) => {
  const metrics = new Metrics({ getRooms: () => [], getRoomIds: () => [], getPendingMessages: () => 0 } as unknown as RoomManager)
  const value = async (pattern: RegExp): Promise<number> => Number(pattern.exec(await metrics.registry.metrics())?.[1])
  metrics.frameIn('patch', 100, 0.001)
  metrics.frameIn('patch', 20, 0.001)
  metrics.frameIn('invalid', 3, 0.001)
  for (let i = 0; i < 3; i++) metrics.frameOut(10)
  t.equal(await value(/canvas_store_frames_in_total\{type="patch"\} (\d+)/), 2)
  t.equal(await value(/canvas_store_frames_in_total\{type="invalid"\} (\d+)/), 1)
  t.equal(await value(/canvas_store_bytes_in_total (\d+)/), 123)
  t.equal(await value(/canvas_store_frames_out_total (\d+)/), 3)
  t.equal(await value(/canvas_store_bytes_out_total (\d+)/), 30)
  t.equal(await value(/canvas_store_frames_out_total (\d+)/), 3, 'reading again adds nothing')
  metrics.frameIn('patch', 1, 0.001)
  metrics.frameOut(5)
  t.equal(await value(/canvas_store_frames_in_total\{type="patch"\} (\d+)/), 3, 'later frames add to what was read')
  t.equal(await value(/canvas_store_bytes_in_total (\d+)/), 124)
  t.equal(await value(/canvas_store_frames_out_total (\d+)/), 4)
  t.equal(await value(/canvas_store_bytes_out_total (\d+)/), 35)
  t.equal(await value(/canvas_store_frame_apply_seconds_count (\d+)/), 4)
})

/** The metrics text, once it matches `ready` (closes are counted when the server sees them, after the client's). */
async function metricsOnce (app: { inject: (url: string) => Promise<{ body: string }> }, ready: RegExp): Promise<string> {
  for (;;) {
    const text = (await app.inject('/metrics')).body
    if (ready.test(text)) return text
    await new Promise((resolve) => setImmediate(resolve))
  }
}

t.test('metrics: storage writes and failures, closes by code', async (t) => {
  let fail = true
  const storage: IncrementalStorage = {
    load: async () => null,
    save: async () => {},
    append: async () => { if (fail) { fail = false; throw new Error('flaky') } }
  }
  const app = await build(t, { createStorage: () => storage, admin: { auth: false }, metrics: true })
  const base = await listen(app)
  const a = await connectReal(base, { roomId: 'r', clientId: 'a' })
  await a.join()
  const ack = a.nextOfType('ack')
  a.send({ type: 'patch', messageId: 'm1', documentPatches: [{ k: { _exists: true } }] })
  await ack
  await a.close()
  const body = await metricsOnce(app, /canvas_store_closes_total\{code="1005"\} 1/)
  t.match(body, /canvas_store_storage_write_failures_total 1\n/, 'the failed write is counted')
  t.match(body, /canvas_store_storage_write_seconds_count 2\n/, 'both writes are timed')
})

t.test('metrics: a close code the client picks is counted as other', async (t) => {
  const app = await build(t, { admin: { auth: false }, metrics: true })
  const base = await listen(app)
  for (const code of [3001, 4999, 1000]) {
    const a = await connectReal(base, { roomId: 'r', clientId: `c${code}` })
    await a.join()
    a.ws.close(code)
    await a.closed
  }
  const body = await metricsOnce(app, /canvas_store_closes_total\{code="1000"\} 1/)
  t.match(body, /canvas_store_closes_total\{code="other"\} 2\n/)
  t.notMatch(body, /code="3001"|code="4999"/)
})

t.test('metrics need admin routes', async (t) => {
  await t.rejects(build(t, { metrics: true }), { code: 'CANVAS_STORE_INVALID_OPTION', message: /metrics/ })
})

t.test('OpenAPI: the admin and health routes, with error codes', async (t) => {
  const app = await build(t, { admin: { auth: false, prefix: '/admin' }, health: true, openapi: true })
  const spec = (await app.inject('/openapi.json')).json()
  t.equal(spec.openapi.slice(0, 2), '3.')
  t.same(Object.keys(spec.paths).sort(), [
    '/admin/rooms', '/admin/rooms/{roomId}/sessions', '/admin/rooms/{roomId}/sessions/{sessionId}', '/admin/rooms/{roomId}/snapshot', '/health', '/ready'
  ])
  const patch = spec.paths['/admin/rooms/{roomId}/sessions/{sessionId}'].patch
  t.ok(patch.requestBody, 'the PATCH body is described')
  t.ok(patch.responses['404'].content['application/json'].schema.properties.code, 'error replies list code')
  t.ok(patch.responses['400'].content['application/json'].schema.properties.code, 'and the 400 of a body or param that fails its schema')
  t.notOk(Object.keys(spec.paths).some((p) => p.startsWith('/sync')), 'the WebSocket route is hidden')
})

t.test('OpenAPI: ui serves @fastify/swagger-ui (an optional package, loaded only then) at uiPrefix', async (t) => {
  const app = await build(t, { admin: { auth: false, prefix: '/admin' }, openapi: { ui: true, uiPrefix: '/docs' } })
  const page = await app.inject('/docs')
  t.equal(page.statusCode, 200)
  t.match(page.headers['content-type'], /text\/html/)
  const spec = (await app.inject('/docs/json')).json()
  t.ok(spec.paths['/admin/rooms'], 'the UI reads the plugin\'s spec')
})

t.test('OpenAPI: the plugin\'s own @fastify/swagger describes its routes alone and leaves the app free to register its own', async (t) => {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  await app.register(canvasStore, { admin: { auth: false, prefix: '/admin' }, openapi: true })
  app.get('/internal/billing', async () => 'private')
  // An app's own swagger, registered after the plugin, in the same context.
  await app.register(swagger, { openapi: { info: { title: 'app', version: '1' } } })
  app.get('/app-spec', async () => app.swagger())
  await app.ready()
  const paths = Object.keys((await app.inject('/openapi.json')).json().paths)
  t.ok(paths.includes('/admin/rooms'))
  t.notOk(paths.includes('/internal/billing'), 'not the app\'s routes')
  t.equal((await app.inject('/app-spec')).json().info.title, 'app')
})

t.test('admin page under a parent prefix: its requests go to the whole prefix; it cannot be framed', async (t) => {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  await app.register(async (scope) => {
    await scope.register(canvasStore, { admin: { auth: false, prefix: '/admin', page: true } })
  }, { prefix: '/v1/' })
  const res = await app.inject('/v1/admin/ui')
  t.equal(res.statusCode, 200)
  t.match(res.body, /: "\/v1\/admin"\n/, 'the whole prefix, without a doubled slash')
  t.equal((await app.inject('/v1/admin/rooms')).statusCode, 200, 'where the page looks')
  t.equal(res.headers['x-frame-options'], 'DENY')
  t.match(String(res.headers['content-security-policy']), /frame-ancestors 'none'/)
})

t.test('admin page: behind the hooks, no external assets', async (t) => {
  const app = await build(t, { admin: { onRequest: bearer('s3cret'), prefix: '/admin', page: true } })
  t.equal((await app.inject('/admin/ui')).statusCode, 401)
  const res = await app.inject({ url: '/admin/ui', headers: { authorization: 'Bearer s3cret' } })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /text\/html/)
  t.match(res.body, /const page = "\/ui"/)
  t.match(res.body, /const base = location\.pathname\.endsWith\(page\) \? location\.pathname\.slice\(0, -page\.length\) : "\/admin"/, 'beside the page, else the prefix')
  t.notMatch(res.body, /<script src=|<link [^>]*href="(?!data:)/, 'self-contained: no external script, style or icon')
  t.match(String(res.headers['content-security-policy']), /default-src 'self'/)
  const off = await build(t, { admin: { auth: false } })
  t.equal((await off.inject('/ui')).statusCode, 404, 'off unless asked')
})

t.test('drain: new connections get 1013, sessions 1001 within grace+jitter, rooms saved', async (t) => {
  const saved: Array<[string, number]> = []
  const app = await build(t, {
    createStorage: (roomId) => ({ load: async () => null, save: async (snapshot) => { saved.push([roomId, snapshot.timestamp]) } }),
    saveThrottleMs: 60_000
  })
  const base = await listen(app)
  const a = await connectReal(base, { roomId: 'r1', clientId: 'a' })
  const b = await connectReal(base, { roomId: 'r2', clientId: 'b' })
  await a.join()
  await b.join()
  const ack = a.nextOfType('ack')
  a.send({ type: 'patch', messageId: 'm1', documentPatches: [{ k: { _exists: true } }] })
  await ack
  const drained = app.canvasStore.drain({ graceMs: 20, jitterMs: 50 })
  t.equal(app.canvasStore.draining, true)
  const late = await connectReal(base, { roomId: 'r1', clientId: 'late' })
  t.same(await late.closed, { code: 1013, reason: 'Server restarting: try again' })
  t.same(await a.closed, { code: 1001, reason: 'Server restarting' })
  t.same(await b.closed, { code: 1001, reason: 'Server restarting' })
  await drained
  // The first write reserved counters (saved at once); the drain saved the counter itself.
  t.same(saved, [['r1', 1 + COUNTER_RESERVE], ['r1', 1]], 'the changed room was saved')
})
