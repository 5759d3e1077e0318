import websocket from '@fastify/websocket'
import Fastify from 'fastify'
import t from 'tap'
import canvasStore, { COUNTER_RESERVE, RoomManager, type CanvasStoreOptions, type RoomSnapshot, type Storage } from '../lib/index.js'
import { build, connect, connectReal, listen, write } from './helper.js'

const invalid: Array<[string, string, unknown]> = [
  ['path not starting with "/"', 'path', { path: 'sync' }],
  ['path not a string', 'path', { path: 42 }],
  ['authorize not a function', 'authorize', { authorize: 'yes' }],
  ['createStorage not a function', 'createStorage', { createStorage: {} }],
  ['negative saveThrottleMs', 'saveThrottleMs', { saveThrottleMs: -1 }],
  ['saveThrottleMs not a number', 'saveThrottleMs', { saveThrottleMs: '10' }],
  ['negative idleTimeout', 'idleTimeout', { idleTimeout: -5 }],
  // Node arms a longer timer for 1 ms: every room load and durable write would be reported as hanging at once.
  ['storageFailureTimeoutMs over the longest timer', 'storageFailureTimeoutMs', { storageFailureTimeoutMs: 3e9 }],
  ['heartbeatInterval over the longest timer', 'heartbeatInterval', { heartbeatInterval: 2 ** 31 }],
  ['maxPayload too small', 'maxPayload', { maxPayload: 10 }],
  ['maxPayload not finite', 'maxPayload', { maxPayload: Infinity }],
  ['maxQueuedFrames 0', 'maxQueuedFrames', { maxQueuedFrames: 0 }],
  ['admin.auth true', 'admin.auth', { admin: { auth: true } }],
  ['admin.prefix without a leading "/"', 'admin.prefix', { admin: { auth: false, prefix: 'admin' } }],
  ['admin.prefix not a string', 'admin.prefix', { admin: { auth: false, prefix: 7 } }],
  ['admin.onRequest not a function', 'admin.onRequest', { admin: { onRequest: 'hook' } }],
  ['admin not an object', 'admin', { admin: true }],
  ['admin an array', 'admin', { admin: [] }],
  ['a misspelt limit', 'limits.maxSesions', { limits: { maxSesions: 5 } }],
  ['limits an array', 'limits', { limits: [] }],
  ['a fractional limit', 'limits.maxSessions', { limits: { maxSessions: 0.5 } }],
  ['a misspelt rate limit', 'rateLimit.framesPerSec', { rateLimit: { framesPerSec: 5 } }],
  ['a fractional closeAfter', 'rateLimit.closeAfter', { rateLimit: { closeAfter: 1.5 } }],
  ['a fractional burstFrames', 'rateLimit.burstFrames', { rateLimit: { burstFrames: 1.5 } }],
  ['a fractional burstBytes', 'rateLimit.burstBytes', { rateLimit: { burstBytes: 1024.5 } }],
  ['a fractional softBytes', 'slowClient.softBytes', { slowClient: { softBytes: 1.5 } }],
  ['a fractional hardBytes', 'slowClient.hardBytes', { slowClient: { hardBytes: 1.5 } }],
  ['a fractional catchUpBytes', 'slowClient.catchUpBytes', { slowClient: { catchUpBytes: 1.5 } }],
  ['a misspelt slow-client setting', 'slowClient.soft', { slowClient: { soft: 5 } }],
  ['a fractional maxRooms', 'maxRooms', { maxRooms: 1.5 }],
  ['negative authorizeTimeoutMs', 'authorizeTimeoutMs', { authorizeTimeoutMs: -1 }],
  ['health a string', 'health', { health: 'yes' }],
  ['metrics a number', 'metrics', { admin: { auth: false }, metrics: 5 }],
  ['openapi.ui a string', 'openapi.ui', { openapi: { ui: 'no' } }],
  ['a path with a query', 'path', { path: '/sync?v=1' }],
  ['a health path with a query', 'health.healthPath', { health: { healthPath: '/h?x' } }],
  ['an admin prefix with a space', 'admin.prefix', { admin: { auth: false, prefix: '/ad min' } }]
]

for (const [name, option, opts] of invalid) {
  t.test(`invalid option (${name}): registration throws CANVAS_STORE_INVALID_OPTION naming ${option}`, async (t) => {
    const app = Fastify({ logger: false })
    t.teardown(() => app.close())
    const err: any = await app.register(canvasStore, opts as CanvasStoreOptions).ready().then(() => null, (err: unknown) => err)
    t.ok(err instanceof Error, 'registration failed')
    t.equal(err?.code, 'CANVAS_STORE_INVALID_OPTION')
    t.ok(String(err?.message).includes(option), `the message names ${option}: ${err?.message}`)
  })
}

t.test('valid edge values register fine', async (t) => {
  const app = await build(t, { path: '/x', saveThrottleMs: 0, idleTimeout: 0, maxPayload: 1024, maxQueuedFrames: 1, admin: { auth: false, prefix: '' }, openapi: { ui: undefined }, health: { readyPath: undefined } })
  t.equal((await app.inject('/ready')).statusCode, 200, 'a setting given as undefined keeps its default')
  t.equal((await app.inject({ method: 'GET', url: '/rooms' })).statusCode, 200)
})

t.test('rates and times may be fractions', async (t) => {
  const app = await build(t, { rateLimit: { framesPerSecond: 0.5, bytesPerSecond: 1024.5 }, slowClient: { maxSlowMs: 1.5 } })
  t.ok(app.canvasStore)
})

t.test('the path option moves the WebSocket route', async (t) => {
  const app = await build(t, { path: '/collab/ws' })
  const a = await connect(app, { roomId: 'r', clientId: 'a' }, '/collab/ws')
  t.equal((await a.join()).timestamp, 0)
  await a.close()
  await t.rejects(connect(app, { roomId: 'r', clientId: 'b' }), /Unexpected server response: 404/, 'nothing at the default path')
})

t.test('app.canvasStore is the RoomManager, and read-only', async (t) => {
  const app = await build(t)
  const manager = app.canvasStore
  t.ok(manager instanceof RoomManager)
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  await a.join()
  t.equal(manager.getExistingRoom('r')?.getSessionCount(), 1, 'it holds the plugin\'s rooms')
  t.strictSame(manager.getRoomIds(), ['r'])
  t.throws(() => { (app as any).canvasStore = new RoomManager() }, TypeError, 'assignment throws a TypeError')
  t.equal(app.canvasStore, manager, 'assigning has no effect')
  await a.close()
})

t.test('works when @fastify/websocket was registered by the user first', async (t) => {
  const app = await build(t, {}, async (app) => { await app.register(websocket) })
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  const b = await connect(app, { roomId: 'r', clientId: 'b' })
  await a.join()
  await b.join()
  const onB = b.nextOfType('patch')
  t.strictSame(await write(a, 'm1', [{ 'e1/A': { _exists: true } }]), { type: 'ack', messageId: 'm1', timestamp: 1 })
  t.strictSame(await onB, { type: 'patch', clientId: 'a', documentPatches: [{ 'e1/A': { _exists: true } }], timestamp: 1 })
  await Promise.all([a.close(), b.close()])
})

t.test('a frame bigger than maxPayload closes the socket with 1009 (real socket)', async (t) => {
  const app = await build(t, { maxPayload: 2048 })
  const base = await listen(app)
  const a = await connectReal(base, { roomId: 'r', clientId: 'a' })
  await a.join()
  t.equal((await write(a, 'small', [{ 'e1/A': { _exists: true, s: 'x'.repeat(1500) } }])).timestamp, 1, 'a frame under the limit is fine')
  a.send({ type: 'patch', messageId: 'big', documentPatches: [{ 'e1/A': { _exists: true, s: 'x'.repeat(4096) } }] })
  t.equal((await a.closed).code, 1009)
  t.notOk(a.frames.some((f) => f.messageId === 'big'), 'the big frame was not acked')
  t.equal(app.canvasStore.getExistingRoom('r')!.timestamp, 1, 'nor applied')
})

t.test('a frame bigger than maxPayload closes with 1009 when @fastify/websocket was registered by the user (real socket)', async (t) => {
  const app = await build(t, { maxPayload: 2048 }, async (app) => { await app.register(websocket) })
  const base = await listen(app)
  const a = await connectReal(base, { roomId: 'r', clientId: 'a' })
  await a.join()
  a.send({ type: 'patch', messageId: 'big', documentPatches: [{ 'e1/A': { _exists: true, s: 'x'.repeat(4096) } }] })
  t.equal((await a.closed).code, 1009)
  t.equal(app.canvasStore.getExistingRoom('r')!.timestamp, 0, 'not applied')
})

t.test('a frame bigger than maxPayload sent before the room is ready closes with 1009 too (@fastify/websocket registered by the user)', async (t) => {
  let release: () => void = () => {}
  const ready = new Promise<void>((resolve) => { release = resolve })
  t.teardown(() => release())
  const app = await build(t, { maxPayload: 2048, authorize: async () => { await ready; return { permissions: 'readwrite' } } }, async (app) => { await app.register(websocket) })
  const base = await listen(app)
  const a = await connectReal(base, { roomId: 'r', clientId: 'a' })
  a.send({ type: 'patch', messageId: 'big', documentPatches: [{ 'e1/A': { _exists: true, s: 'x'.repeat(4096) } }] })
  t.equal((await a.closed).code, 1009, 'closed while authorize is still pending')
  release()
  t.notOk(a.frames.some((f) => f.messageId === 'big'), 'never acked')
})

/** A storage per room that records every save. */
function recordingStorage (): { createStorage: (roomId: string) => Storage, saves: Map<string, RoomSnapshot[]> } {
  const saves = new Map<string, RoomSnapshot[]>()
  return {
    saves,
    createStorage: (roomId) => ({
      load: async () => null,
      save: async (snapshot) => {
        const list = saves.get(roomId) ?? []
        list.push(JSON.parse(JSON.stringify(snapshot)))
        saves.set(roomId, list)
      }
    })
  }
}

t.test('app.close() closes open sockets with 1001 and saves every room', async (t) => {
  const { createStorage, saves } = recordingStorage()
  const app = await build(t, { createStorage, saveThrottleMs: 60_000 })
  const a = await connect(app, { roomId: 'r1', clientId: 'a' })
  const b = await connect(app, { roomId: 'r2', clientId: 'b' })
  await a.join()
  await b.join()
  await write(a, 'm1', [{ 'e1/A': { _exists: true, v: 1 } }])
  await write(a, 'm2', [{ 'e1/A': { v: 2 } }])
  await write(b, 'm1', [{ 'e9/B': { _exists: true, w: 'x' } }])
  // The first write of each room saved at once (it reserves counters); the second one waits for the throttle.
  t.same([...saves].map(([roomId, list]) => [roomId, list.map((snapshot) => snapshot.timestamp)]), [['r1', [1 + COUNTER_RESERVE]], ['r2', [1 + COUNTER_RESERVE]]], 'nothing more saved yet (long throttle)')
  const closedA = a.closed
  const closedB = b.closed
  await app.close()
  t.equal((await closedA).code, 1001)
  t.equal((await closedB).code, 1001)
  t.strictSame(saves.get('r1')?.at(-1), { timestamp: 2, state: { 'e1/A': { _exists: true, v: 2 } }, timestamps: { 'e1/A': { _exists: 1, v: 2 } } })
  t.strictSame(saves.get('r2')?.at(-1), { timestamp: 1, state: { 'e9/B': { _exists: true, w: 'x' } }, timestamps: { 'e9/B': { _exists: 1, w: 1 } } })
})

t.test('app.close() with real sockets: 1001 and a final save', async (t) => {
  const { createStorage, saves } = recordingStorage()
  const app = await build(t, { createStorage, saveThrottleMs: 60_000 })
  const base = await listen(app)
  const a = await connectReal(base, { roomId: 'r1', clientId: 'a' })
  await a.join()
  await write(a, 'm1', [{ 'e1/A': { _exists: true, v: 1 } }])
  await app.close()
  t.equal((await a.closed).code, 1001)
  t.equal(saves.get('r1')?.at(-1)?.timestamp, 1)
})
