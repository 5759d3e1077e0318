import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import type { CanvasStoreOptions } from '../lib/index.js'
import { CLIENT_COUNT, Peer, build, listen, write } from './helper.js'

// Small, but not so small that a busy machine descheduling the process for one
// interval between a ping and its pong gets a healthy client cut.
const INTERVAL = 250

/** Opens a real socket with `ws` options (autoPong) and waits for this peer's clientCount. */
async function open (base: string, clientId: string, count: number, options: WebSocket.ClientOptions = {}, onCreate?: (ws: WebSocket) => void): Promise<Peer> {
  const ws = new WebSocket(`${base}/sync?roomId=r&clientId=${clientId}`, options)
  onCreate?.(ws)
  const peer = new Peer(ws)
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve())
    ws.once('error', reject)
  })
  await peer.next(CLIENT_COUNT(count))
  return peer
}

/** Resolves once the socket has received `n` pings (counted from now). */
function pings (ws: WebSocket, n: number): Promise<void> {
  let seen = 0
  return new Promise((resolve) => {
    const onPing = (): void => {
      if (++seen < n) return
      ws.off('ping', onPing)
      resolve()
    }
    ws.on('ping', onPing)
  })
}

/**
 * Records the intervals created and cleared while the test runs (the plugin
 * creates its heartbeat timer with the global setInterval at registration).
 */
function spyIntervals (t: Test): { created: Array<{ delay: number | undefined, handle: NodeJS.Timeout }>, cleared: Set<unknown> } {
  const created: Array<{ delay: number | undefined, handle: NodeJS.Timeout }> = []
  const cleared = new Set<unknown>()
  const realSet = globalThis.setInterval
  const realClear = globalThis.clearInterval
  globalThis.setInterval = ((fn: (...args: any[]) => void, delay?: number, ...args: any[]) => {
    const handle = realSet(fn, delay, ...args)
    created.push({ delay, handle })
    return handle
  }) as unknown as typeof setInterval
  globalThis.clearInterval = ((handle: NodeJS.Timeout | string | number | undefined) => {
    cleared.add(handle)
    realClear(handle)
  }) as typeof clearInterval
  t.teardown(() => {
    globalThis.setInterval = realSet
    globalThis.clearInterval = realClear
  })
  return { created, cleared }
}

async function app (t: Test, opts: CanvasStoreOptions): Promise<{ app: FastifyInstance, base: string }> {
  const app = await build(t, opts)
  return { app, base: await listen(app) }
}

t.test('a client that does not answer pings is terminated and its session removed; the others are told', async (t) => {
  const { app: server, base } = await app(t, { heartbeatInterval: INTERVAL })
  const a = await open(base, 'a', 1)
  await a.join()
  // Without autoPong, the client answers by hand until its presence is in place, then falls silent.
  let stop = (): void => {}
  const mute = await open(base, 'mute', 2, { autoPong: false }, (ws) => {
    const onPing = (data: Buffer): void => ws.pong(data)
    ws.on('ping', onPing)
    stop = () => ws.off('ping', onPing)
  })
  await mute.join()
  await write(mute, 'm1', undefined, [{ 'cursor/mute': { _exists: true, x: 1 }, 'sel/mute': { _exists: true } }])
  await a.next((f) => f.type === 'patch' && f.clientId === 'mute')
  const fromA = a.frames.length
  stop()

  const closed = await mute.closed
  t.equal(closed.code, 1006, 'terminated: no close frame')
  const tombstones = await a.next((f) => f.type === 'patch' && f.clientId === 'mute', fromA)
  t.strictSame(tombstones, { type: 'patch', clientId: 'mute', ephemeralPatches: [{ 'cursor/mute': { _exists: false }, 'sel/mute': { _exists: false } }] }, 'its presence tombstones')
  await a.next(CLIENT_COUNT(1), fromA)
  t.equal(server.canvasStore.getExistingRoom('r')!.getSessionCount(), 1)
  t.equal(a.ws.readyState, WebSocket.OPEN, 'the answering client stays')
  await a.close()
})

t.test('a pong must echo its ping: a client answering every ping with other data (as one sending pongs blindly, without reading) is terminated', async (t) => {
  const { app: server, base } = await app(t, { heartbeatInterval: INTERVAL })
  const a = await open(base, 'a', 1)
  await a.join()
  let answered = 0
  const blind = await open(base, 'blind', 2, { autoPong: false }, (ws) => {
    ws.on('ping', () => {
      answered++
      ws.pong(Buffer.from('alive'))
    })
  })
  await blind.join()
  const closed = await blind.closed
  t.equal(closed.code, 1006, 'terminated')
  t.ok(answered >= 1, 'after answering pings with the wrong data')
  await a.next(CLIENT_COUNT(1), a.frames.findIndex(CLIENT_COUNT(2)))
  t.equal(server.canvasStore.getExistingRoom('r')!.getSessionCount(), 1, 'its session removed')
  t.equal(a.ws.readyState, WebSocket.OPEN, 'the client that echoes stays')
  await a.close()
})

t.test('each socket has its own ping payload: a client answering with the payload another of its sockets was sent is terminated', async (t) => {
  const { base } = await app(t, { heartbeatInterval: INTERVAL })
  const a = await open(base, 'a', 1)
  await a.join()
  let borrowed: Buffer = Buffer.alloc(0)
  a.ws.on('ping', (data: Buffer) => { borrowed = data })
  let answered = 0
  const other = await open(base, 'other', 2, { autoPong: false }, (ws) => {
    ws.on('ping', () => {
      answered++
      ws.pong(borrowed)
    })
  })
  await other.join()
  const closed = await other.closed
  t.equal(closed.code, 1006, 'terminated')
  t.ok(answered >= 1)
  t.equal(a.ws.readyState, WebSocket.OPEN, 'the socket whose payload was borrowed stays')
  await a.close()
})

t.test('a client that answers pings stays connected across many intervals', async (t) => {
  const { app: server, base } = await app(t, { heartbeatInterval: INTERVAL })
  const a = await open(base, 'a', 1)
  await a.join()
  await pings(a.ws, 10)
  t.equal(a.ws.readyState, WebSocket.OPEN, 'still open after 10 pings')
  t.equal(server.canvasStore.getExistingRoom('r')!.getSessionCount(), 1)
  t.equal((await write(a, 'm1', [{ k: { _exists: true } }])).timestamp, 1, 'and still served')
  t.notOk(a.frames.some((f) => f.type === 'clientCount' && f.count !== 1))
  await a.close()
})

t.test('a flood of pong frames closes the connection with 4429, and the rest of the room stays', async (t) => {
  const { base } = await app(t, { heartbeatInterval: 60_000 })
  const calm = await open(base, 'calm', 1)
  const flood = await open(base, 'flood', 2)
  for (let i = 0; i < 200; i++) flood.ws.pong()
  t.strictSame(await flood.closed, { code: 4429, reason: 'Too many pong frames' })
  await calm.next(CLIENT_COUNT(1))
  t.equal((await write(calm, 'm1', [{ 'e/A': { _exists: true } }])).timestamp, 1, 'the room goes on')
  await calm.close()
})

t.test('a heartbeat faster than the pong bound allows: healthy clients answering every ping stay', async (t) => {
  const { base } = await app(t, { heartbeatInterval: 40 })
  const peer = await open(base, 'fast', 1)
  await pings(peer.ws, 40)
  t.equal(peer.ws.readyState, WebSocket.OPEN)
  await peer.close()
})

t.test('heartbeatInterval: 0 sends no pings', async (t) => {
  const { created } = spyIntervals(t)
  const off = await app(t, { heartbeatInterval: 0 })
  t.strictSame(created, [], 'no interval timer created')
  // A second server pinging every INTERVAL ms serves as the clock.
  const clock = await app(t, { heartbeatInterval: INTERVAL })
  const a = await open(off.base, 'a', 1)
  const ref = await open(clock.base, 'ref', 1)
  let received = 0
  a.ws.on('ping', () => { received++ })
  await pings(ref.ws, 5)
  t.equal(received, 0, 'no ping while the other server sent five')
  await Promise.all([a.close(), ref.close()])
})

t.test('app.close() clears the heartbeat timer', async (t) => {
  const { created, cleared } = spyIntervals(t)
  const { app: server, base } = await app(t, { heartbeatInterval: INTERVAL })
  const timers = created.filter((c) => c.delay === INTERVAL)
  t.equal(timers.length, 1, 'one heartbeat timer for every socket')
  const a = await open(base, 'a', 1)
  await pings(a.ws, 2)
  await server.close()
  t.ok(cleared.has(timers[0].handle), 'cleared on close')
  t.equal(timers[0].handle.hasRef(), false, 'and never kept the process alive')
  await a.closed
})
