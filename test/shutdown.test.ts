/**
 * Shutdown is bounded: a storage that never answers (a load, a durable
 * write) is waited for `storageFailureTimeoutMs` at most, then logged, and
 * `app.close()` resolves, so a process that exits after it does exit.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import type { Socket } from 'node:net'
import t, { type Test } from 'tap'
import canvasStore, { RoomManager, type CanvasStoreOptions, type IncrementalStorage, type WebSocketLike } from '../lib/index.js'
import { connectReal, listen, logLines } from './helper.js'

/** An app whose error logs are kept as parsed lines. */
async function appWithLogs (t: Test, opts: CanvasStoreOptions): Promise<{ app: FastifyInstance, logs: any[], base: string }> {
  const { stream, lines: logs } = logLines()
  const app = Fastify({ logger: { level: 'error', stream } })
  await app.register(canvasStore, opts)
  t.teardown(() => app.close())
  // A real server: it holds the event loop open while the plugin's (unref'd) timers run out.
  const base = await listen(app)
  return { app, logs, base }
}

const never = new Promise<never>(() => {})

t.test('a load that never settles: the connection gets 1011, and app.close() resolves after the bound, naming the room', async (t) => {
  let loads = 0
  const { app, logs, base } = await appWithLogs(t, {
    storageFailureTimeoutMs: 100,
    createStorage: () => ({ load: async () => { loads++; return await never }, save: async () => {} })
  })
  const peer = await connectReal(base, { roomId: 'stuck', clientId: 'a' })
  t.strictSame(await peer.closed, { code: 1011, reason: 'Could not load the room' })
  t.equal(loads, 1)
  await app.close()
  t.ok(logs.some((l) => l.msg === 'load still pending at shutdown after closeTimeoutMs: not waited for' && l.roomIds.includes('stuck')), 'the hung load is logged')
})

t.test('a durable write that never settles: not acked, and app.close() resolves after the bound, naming the room', async (t) => {
  const storage: IncrementalStorage = {
    load: async () => null,
    save: async () => {},
    append: async () => await never
  }
  const { app, logs, base } = await appWithLogs(t, { storageFailureTimeoutMs: 100, createStorage: () => storage })
  const ok = await connectReal(base, { roomId: 'fine', clientId: 'b' })
  await ok.join()
  const peer = await connectReal(base, { roomId: 'stuck', clientId: 'a' })
  await peer.join()
  peer.send({ type: 'patch', messageId: 'm1', documentPatches: [{ 'e/Pos': { _exists: true, x: 1 } }] })
  t.equal((await peer.closed).code, 1011, 'the write stayed pending past the bound: storage unavailable')
  t.notOk(peer.frames.some((f) => f.type === 'ack'), 'never acked')
  await app.close()
  const pending = logs.find((l) => l.msg === 'final save still pending at shutdown after closeTimeoutMs: not waited for')
  t.strictSame(pending?.roomIds, ['stuck'], 'only the room whose write hangs')
})

t.test('a hung load does not use up the final saves\' time: another room\'s save that takes a while is still made', async (t) => {
  let saved = false
  const { app, base } = await appWithLogs(t, {
    storageFailureTimeoutMs: 400,
    durability: 'throttled',
    saveThrottleMs: 60_000,
    createStorage: (roomId) => roomId === 'stuck'
      ? { load: async () => await never, save: async () => {} }
      : {
          load: async () => null,
          // A slow disk: within the bound, but not at once.
          save: async () => { await new Promise((resolve) => setTimeout(resolve, 150)); saved = true }
        }
  })
  const a = await connectReal(base, { roomId: 'a', clientId: 'a' })
  await a.join()
  a.send({ type: 'patch', messageId: 'm1', documentPatches: [{ 'e/Pos': { _exists: true, x: 1 } }] })
  await a.next((f) => f.type === 'ack')
  const stuck = await connectReal(base, { roomId: 'stuck', clientId: 's' })
  await stuck.closed
  // The stuck load is still pending (its connection gave up at the bound), and so is room a's throttled save.
  await app.close()
  t.ok(saved, 'the acked write of room a was saved before close resolved')
})

// The bound is the test's timeout, a hang guard: before, app.close() waited for ws's 30 s close timeout.
t.test('a client that never answers the close frame does not hold app.close() for ws\'s 30 s close timeout', { timeout: 15_000 }, async (t) => {
  const { app, base } = await appWithLogs(t, {})
  const stalled = await connectReal(base, { roomId: 'r', clientId: 'stalled' })
  await stalled.join()
  const healthy = await connectReal(base, { roomId: 'r', clientId: 'healthy' })
  await healthy.join()
  // It stops reading: the close frame is never read, so never answered.
  ;(stalled.ws as unknown as { _socket: Socket })._socket.pause()
  await app.close()
  t.equal((await healthy.closed).code, 1001, 'the healthy client got its close frame')
})

t.test('RoomManager: closeTimeoutMs 0 waits for the final save as long as it takes; a negative one is refused', async (t) => {
  t.throws(() => new RoomManager({ closeTimeoutMs: -1 }), RangeError)
  let release = (): void => {}
  const saved = new Promise<void>((resolve) => { release = resolve })
  let saves = 0
  const manager = new RoomManager({ closeTimeoutMs: 0 })
  const room = await manager.getOrCreateRoom('r', {
    durability: 'throttled',
    saveThrottleMs: 60_000,
    // The first save (it reserves counters) goes through; the final one hangs until released.
    createStorage: () => ({ load: async () => null, save: async () => { if (++saves > 1) await saved } })
  })
  const { socket, sent } = fakeSocket()
  const sessionId = room.handleSocketConnect({ socket, clientId: 'a', permissions: 'readwrite' })
  room.handleSocketMessage(sessionId, JSON.stringify({ type: 'patch', messageId: 'm1', documentPatches: [{ k: { _exists: true } }] }))
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(sent.at(-1)?.type, 'ack')
  let closed = false
  const closing = manager.closeAll().then(() => { closed = true })
  // The final save has started; closeAll is still waiting for it (no bound to give up at).
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(saves, 2)
  t.notOk(closed)
  release()
  await closing
  t.ok(closed)
})

function fakeSocket (): { socket: WebSocketLike, sent: any[] } {
  const sent: any[] = []
  return { sent, socket: { send: (data: string) => { sent.push(JSON.parse(data)) }, close () {} } }
}

t.test('app.close() during a drain closes its sessions at once and settles the drain, instead of holding the process for grace + jitter', async (t) => {
  const app = Fastify({ logger: false })
  await app.register(canvasStore, {})
  const base = await listen(app)
  const peer = await connectReal(base, { roomId: 'r', clientId: 'a' })
  await peer.next((f) => f.type === 'clientCount')
  // Ten minutes: on code that waits for the drain's own timers, this test times out.
  const drained = app.canvasStore.drain({ graceMs: 600_000, jitterMs: 0 })
  await app.close()
  await drained
  t.equal((await peer.closed).code, 1001)
  t.equal(app.canvasStore.getRoomIds().length, 0, 'the room was saved and unloaded')
})

t.test('app.close(): an upgrade that arrives while the app closes gets Fastify\'s 503 (return503OnClosing), as the README says', async (t) => {
  const app = Fastify({ logger: false })
  await app.register(canvasStore, {})
  let base = ''
  let late: Promise<unknown> | undefined
  // Runs after the plugin's own preClose (which closes the sockets), while the server still listens.
  app.addHook('preClose', async () => {
    late = connectReal(base, { roomId: 'r', clientId: 'late' }).then(async (peer) => await peer.closed, (err: Error) => err.message)
    await late
  })
  base = await listen(app)
  await app.close()
  t.equal(await late, 'Unexpected server response: 503')
})
