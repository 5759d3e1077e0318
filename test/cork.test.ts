import t, { type Test } from 'tap'
import { once } from 'node:events'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { createServer } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { WebSocket, WebSocketServer } from 'ws'
import websocket from '@fastify/websocket'
import Fastify from 'fastify'
import type { IncomingMessage } from 'node:http'
import { CorkedSocket, closeAbusive } from '../lib/routes/cork.js'
import canvasStore from '../lib/index.js'
import { build, connectReal, gate, listen, write } from './helper.js'

/** A ws server on 127.0.0.1:0 and one client connected to it; both closed at teardown. */
async function pair (t: { teardown: (fn: () => unknown) => void }, perMessageDeflate: boolean): Promise<{ server: WebSocket, client: WebSocket }> {
  const http = createServer()
  const wss = new WebSocketServer({ server: http, perMessageDeflate })
  http.listen(0, '127.0.0.1')
  await once(http, 'listening')
  const client = new WebSocket(`ws://127.0.0.1:${(http.address() as AddressInfo).port}`, { perMessageDeflate })
  const [server] = await once(wss, 'connection') as [WebSocket]
  await once(client, 'open')
  t.teardown(async () => {
    client.terminate()
    server.terminate()
    wss.close()
    await new Promise((resolve) => http.close(resolve))
  })
  return { server, client }
}

function receive (client: WebSocket, count: number): Promise<Array<{ text: string, binary: boolean }>> {
  const got: Array<{ text: string, binary: boolean }> = []
  return new Promise((resolve) => {
    client.on('message', (data, binary) => {
      got.push({ text: data.toString(), binary })
      if (got.length === count) resolve(got)
    })
  })
}

// Payload lengths around the three header forms of RFC 6455 (7-bit, 16-bit, 64-bit), multi-byte characters included.
const texts = ['', 'a', 'é'.repeat(62), 'x'.repeat(125), 'x'.repeat(126), 'ü'.repeat(40_000), 'x'.repeat(65_535), 'x'.repeat(65_536), '{"a":"☃"}'.repeat(30_000)]

const small = ['', 'a', 'é'.repeat(62), 'x'.repeat(125), 'x'.repeat(126)]

for (const deflate of [false, true]) {
  t.test(`frames arrive whole and in order, batched per turn (${deflate ? 'permessage-deflate: through ws' : 'written as ready-made frames'})`, async (t) => {
    const { server, client } = await pair(t, deflate)
    t.equal(server.extensions === '', !deflate)
    const socket = new CorkedSocket(server)
    let throughWs = 0
    const send = server.send.bind(server)
    server.send = ((...args: Parameters<WebSocket['send']>) => { throughWs++; send(...args) }) as WebSocket['send']
    const raw = (server as unknown as { _socket: { writableCorked: number, bytesWritten: number } })._socket
    const got = receive(client, small.length + texts.length + 2)
    let pings = 0
    client.on('ping', () => { pings++ })
    // One turn of small frames (copied into one buffer), then one with big ones (written as they are).
    const before = raw.bytesWritten
    for (const text of small) socket.send(text)
    if (deflate) {
      t.equal(raw.writableCorked, 1, 'corked once for the rest of the turn')
    } else {
      t.equal(raw.bytesWritten, before, 'nothing written before the end of the turn')
      t.ok(socket.bufferedAmount >= small.length * 2, 'frames held count as buffered')
    }
    t.equal(throughWs, deflate ? small.length : 0, deflate ? 'through ws.send' : 'written as ready-made frames, not through ws.send')
    await new Promise((resolve) => setImmediate(resolve))
    t.equal(raw.writableCorked, 0, 'nothing left corked at the end of the turn')
    // (permessage-deflate compresses asynchronously, after the turn)
    if (!deflate) t.ok(raw.bytesWritten > before, 'written at the end of the turn')
    for (const text of texts) socket.send(text)
    // ws's own frames (a ping) may go out between ours; never a data frame out of order.
    server.ping()
    socket.send('after the ping')
    socket.send(texts[2])
    await new Promise((resolve) => setImmediate(resolve))
    t.equal(raw.writableCorked, 0, 'nothing left corked at the end of the turn')
    const frames = await got
    t.same(frames.map((f) => f.text), [...small, ...texts, 'after the ping', texts[2]])
    t.ok(frames.every((f) => !f.binary), 'text frames')
    t.equal(pings, 1, 'the ping arrived')
    t.equal(socket.readyState, WebSocket.OPEN)
    t.equal(typeof socket.bufferedAmount, 'number')
    socket.close(1000, 'bye')
    socket.send('after the close')
    let late = false
    client.on('message', () => { late = true })
    const [code] = await once(client, 'close') as [number]
    t.equal(code, 1000)
    t.notOk(late, 'no data frame after the close frame')
  })

  t.test(`frames sent in the turn of a close leave before the close frame (${deflate ? 'permessage-deflate' : 'ready-made frames'})`, async (t) => {
    const { server, client } = await pair(t, deflate)
    const socket = new CorkedSocket(server)
    const got: string[] = []
    client.on('message', (data) => got.push(data.toString()))
    socket.send('one')
    socket.send('two')
    socket.close(4000, 'kicked')
    socket.send('after the close')
    const [code] = await once(client, 'close') as [number]
    t.equal(code, 4000)
    t.same(got, ['one', 'two'])
  })

  t.test(`frames sent before a close that does not go through the room (ws, the route, shutdown) arrive before it (${deflate ? 'permessage-deflate' : 'ready-made frames'})`, async (t) => {
    const { server, client } = await pair(t, deflate)
    const socket = new CorkedSocket(server)
    const got: string[] = []
    client.on('message', (data) => got.push(data.toString()))
    socket.send('held')
    // As when the peer's close frame arrives: ws answers it at once, not through this socket.
    server.close(1000, 'peer')
    const [code] = await once(client, 'close') as [number]
    t.equal(code, 1000)
    // It was sent while the socket was open: it arrives, ahead of the close frame.
    t.same(got, ['held'])
  })
}

t.test('a peer that stops reading: frames wait here behind the unfinished write, not as a stream write per turn; all arrive, in order, once it reads again', async (t) => {
  const { server, client } = await pair(t, false)
  const socket = new CorkedSocket(server)
  const peer = (client as unknown as { _socket: Socket })._socket
  const raw = (server as unknown as { _socket: Socket })._socket
  peer.pause()
  const count = 20_000
  const payload = 'z'.repeat(1000)
  const got = receive(client, count)
  let mostQueued = 0
  for (let i = 0; i < count; i++) {
    socket.send(`${i}:${payload}`)
    await new Promise((resolve) => setImmediate(resolve))
    mostQueued = Math.max(mostQueued, (raw as unknown as { writableBuffer: unknown[] }).writableBuffer.length)
  }
  t.ok(raw.writableLength > 0, 'the kernel\'s buffers are full: the stream holds a write')
  t.ok(mostQueued <= 1, `the stream never held more than one write (${mostQueued})`)
  t.ok(socket.bufferedAmount >= raw.writableLength + 1_000_000, 'the frames held here count as buffered')
  peer.resume()
  const frames = await got
  t.ok(frames.every((f, i) => f.text === `${i}:${payload}`), 'every frame, in order')
  t.equal(socket.bufferedAmount, 0)
})

/** A pair whose peer has stopped reading, with a write of `inFlight` bytes the stream cannot finish. */
async function stalled (t: Test, inFlight: number): Promise<{ socket: CorkedSocket, client: WebSocket, peer: Socket, raw: Socket, writes: () => number }> {
  const { server, client } = await pair(t, false)
  const socket = new CorkedSocket(server)
  const peer = (client as unknown as { _socket: Socket })._socket
  const raw = (server as unknown as { _socket: Socket })._socket
  let count = 0
  const write = raw.write.bind(raw) as (chunk: Buffer, cb?: () => void) => boolean
  raw.write = ((chunk: Buffer, cb?: () => void) => { count++; return write(chunk, cb) }) as typeof raw.write
  peer.pause()
  socket.send('x'.repeat(inFlight))
  await new Promise((resolve) => setImmediate(resolve))
  t.ok(raw.writableLength > 0, 'a write the stream has not finished')
  return { socket, client, peer, raw, writes: () => count }
}

const queued = (raw: Socket): number => (raw as unknown as { writableBuffer: unknown[] }).writableBuffer.length

/** Sends `${i}:` and 1,000 `fill` characters for i below count, `perTurn` frames an event-loop turn. */
async function sendOverTurns (socket: CorkedSocket, count: number, fill: string, perTurn: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    socket.send(`${i}:${fill.repeat(1000)}`)
    if (i % perTurn === perTurn - 1) await new Promise((resolve) => setImmediate(resolve))
  }
}

t.test('frames held back leave in a few writes of up to 1 MiB once the stream takes them, in order', async (t) => {
  const { socket, client, peer, writes } = await stalled(t, 32 * 1024 * 1024)
  const count = 3000
  const got = receive(client, count + 1)
  await sendOverTurns(socket, count, 'b', 10)
  await new Promise((resolve) => setImmediate(resolve))
  const before = writes()
  peer.resume()
  const frames = await got
  t.ok(frames.slice(1).every((f, i) => f.text === `${i}:${'b'.repeat(1000)}`), 'every frame, in order')
  t.ok(writes() - before <= 4, `3 MB held back left in ${writes() - before} writes`)
})

t.test('a close with a little held back: it leaves ahead of the close frame', async (t) => {
  const { socket, client, peer, raw } = await stalled(t, 32 * 1024 * 1024)
  const count = 500
  const got = receive(client, count + 1)
  await sendOverTurns(socket, count, 'q', 1)
  socket.close(4000, 'kicked')
  t.ok(queued(raw) <= 3, `the stream holds a few writes (${queued(raw)})`)
  const closed = once(client, 'close')
  peer.resume()
  t.equal((await got).length, count + 1)
  t.equal((await closed)[0], 4000)
})

t.test('a close with much held back behind a stalled write: dropped, the stream holds a few writes, the close frame follows the write in flight', async (t) => {
  const { socket, client, peer, raw } = await stalled(t, 32 * 1024 * 1024)
  const texts: string[] = []
  client.on('message', (data) => texts.push(String(data).slice(0, 10)))
  await sendOverTurns(socket, 3000, 'd', 10)
  t.ok(socket.bufferedAmount > 3_000_000)
  socket.close(1001, 'bye')
  t.ok(queued(raw) <= 2, `the stream holds the write in flight and the close frame (${queued(raw)})`)
  const closed = once(client, 'close')
  peer.resume()
  t.equal((await closed)[0], 1001)
  t.same(texts, ['x'.repeat(10)], 'the frame in flight, then the close')
})

t.test('CorkedSocket.close stops reading for 4429 and 1009, not for 1008 (a refused auth-refresh) nor ordinary closes', async (t) => {
  for (const [code, paused] of [[4429, true], [1009, true], [1008, false], [1001, false], [4000, false]] as const) {
    const { server, client } = await pair(t, false)
    const raw = (server as unknown as { _socket: Socket })._socket
    const closed = once(client, 'close')
    new CorkedSocket(server).close(code, 'reason')
    t.equal(raw.isPaused(), paused, `${code}`)
    t.equal((await closed)[0], code)
  }
})

t.test('closeAbusive: the close frame leaves, nothing more is read, and the connection is cut when the peer does not answer', async (t) => {
  const { server, client } = await pair(t, false)
  const peer = (client as unknown as { _socket: Socket })._socket
  const raw = (server as unknown as { _socket: Socket })._socket
  let code = 0
  client.on('close', (c) => { code = c })
  // The peer floods frames and never reads the close frame, so never answers it.
  peer.pause()
  for (let i = 0; i < 1000; i++) client.send('flood')
  closeAbusive(server, 4429, 'Rate limit exceeded')
  t.ok(raw.isPaused(), 'reading stopped')
  await once(server, 'close')
  peer.resume()
  await once(client, 'close')
  t.equal(code, 4429, 'the close frame had left')
})

t.test('terminate drops the frames held for the turn', async (t) => {
  const { server, client } = await pair(t, false)
  const socket = new CorkedSocket(server)
  const got: string[] = []
  client.on('message', (data) => got.push(data.toString()))
  socket.send('held')
  socket.terminate()
  await once(client, 'close')
  await new Promise((resolve) => setImmediate(resolve))
  t.same(got, [])
  t.equal(socket.bufferedAmount, 0)
})

t.test('one string to sockets with and without permessage-deflate in the same turn, in either order', async (t) => {
  const plain = await pair(t, false)
  const deflated = await pair(t, true)
  const a = new CorkedSocket(plain.server)
  const b = new CorkedSocket(deflated.server)
  // Payloads with each header size: 2 bytes (under 126), 4 (under 65,536) and 10.
  const texts = ['{"type":"patch","x":"é"}', 'é'.repeat(500), 'ü'.repeat(70_000), '']
  const gotPlain = receive(plain.client, texts.length * 2)
  const gotDeflated = receive(deflated.client, texts.length * 2)
  for (const text of texts) {
    a.send(text)
    b.send(text)
  }
  await new Promise((resolve) => setImmediate(resolve))
  for (const text of texts) {
    b.send(text)
    a.send(text)
  }
  t.same((await gotPlain).map((f) => f.text), [...texts, ...texts])
  t.same((await gotDeflated).map((f) => f.text), [...texts, ...texts])
})

t.test('a turn with a single frame, then turns with several, on the same socket', async (t) => {
  const { server, client } = await pair(t, false)
  const socket = new CorkedSocket(server)
  const got = receive(client, 6)
  socket.send('solo')
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(socket.bufferedAmount, server.bufferedAmount, 'nothing held after the turn')
  socket.send('a')
  socket.send('b')
  await new Promise((resolve) => setImmediate(resolve))
  socket.send('again')
  await new Promise((resolve) => setImmediate(resolve))
  socket.send('c')
  socket.send('d')
  t.same((await got).map((f) => f.text), ['solo', 'a', 'b', 'again', 'c', 'd'])
})

t.test('a large frame is written as the same bytes in a later turn while a socket still holds it; other texts get their own', async (t) => {
  const one = await pair(t, false)
  const two = await pair(t, false)
  const written: Buffer[] = []
  for (const { server } of [one, two]) {
    const raw = (server as unknown as { _socket: { write: (chunk: Buffer, cb?: () => void) => boolean } })._socket
    const write = raw.write.bind(raw)
    // The spy keeps every written buffer alive, as a socket that has not sent it yet would.
    raw.write = (chunk: Buffer, cb?: () => void) => { written.push(chunk); return write(chunk, cb) }
  }
  const a = new CorkedSocket(one.server)
  const b = new CorkedSocket(two.server)
  const big = (c: string): string => c.repeat(100_000)
  const gotA = receive(one.client, 1)
  const gotB = receive(two.client, 2)
  a.send(big('x'))
  await new Promise((resolve) => setImmediate(resolve))
  // Equal text, another string, in a later turn: the same frame.
  b.send(big('x'))
  await new Promise((resolve) => setImmediate(resolve))
  b.send(big('y'))
  await new Promise((resolve) => setImmediate(resolve))
  t.same((await gotA).map((f) => f.text.length), [100_000])
  t.same((await gotB).map((f) => f.text), [big('x'), big('y')])
  t.equal(written.length, 3)
  t.equal(written[1], written[0], 'the second joiner\'s frame is the first one\'s buffer')
  t.not(written[2], written[0], 'a different text is framed anew')
})

t.test('a large frame reused in a later turn, in a turn that also encodes other texts for a permessage-deflate socket: each socket gets its own text', async (t) => {
  const plain = await pair(t, false)
  const deflated = await pair(t, true)
  const a = new CorkedSocket(plain.server)
  const b = new CorkedSocket(deflated.server)
  const x = 'x'.repeat(100_000)
  const y = 'y'.repeat(50)
  const gotA = receive(plain.client, 2)
  const gotB = receive(deflated.client, 2)
  a.send(x)
  await new Promise((resolve) => setImmediate(resolve))
  b.send(y)
  a.send('x'.repeat(100_000))
  b.send(x)
  t.same((await gotA).map((f) => f.text.length), [100_000, 100_000])
  t.same((await gotB).map((f) => f.text), [y, x])
})

/** Records each write an upgraded connection's net.Socket makes (one system call each): a lone chunk, or several at once. */
function recordWrites (app: Awaited<ReturnType<typeof build>>): Array<{ path: string, chunks: string[] }> {
  const writes: Array<{ path: string, chunks: string[] }> = []
  app.websocketServer.on('headers', (_headers: string[], req: IncomingMessage) => {
    const socket = req.socket as Socket & {
      _write: (chunk: unknown, encoding: string, cb: () => void) => void
      _writev: (chunks: Array<{ chunk: unknown }>, cb: () => void) => void
    }
    const path = String(req.url).split('?')[0]
    const write = socket._write
    const writev = socket._writev
    socket._write = function (chunk, encoding, cb) {
      writes.push({ path, chunks: [String(chunk)] })
      write.call(this, chunk, encoding, cb)
    }
    socket._writev = function (chunks, cb) {
      writes.push({ path, chunks: chunks.map((c) => String(c.chunk)) })
      writev.call(this, chunks, cb)
    }
  })
  return writes
}

t.test('the 101 response and the new session\'s first frame (its clientCount) leave in one write', async (t) => {
  const app = await build(t)
  const writes = recordWrites(app)
  const peer = await connectReal(await listen(app), { roomId: 'r', clientId: 'a' })
  t.teardown(() => peer.ws.terminate())
  await peer.next((f) => f.type === 'clientCount')
  t.equal(writes.length, 1, 'one write so far')
  t.equal(writes[0].chunks.length, 2, 'of two chunks')
  t.match(writes[0].chunks[0], /^HTTP\/1\.1 101 Switching Protocols\r\n/)
  t.match(writes[0].chunks[1], /\{"type":"clientCount","count":1\}$/)
  await peer.join()
  t.equal(writes.length, 2, 'synced in a write of its own')
})

t.test('the 101 response is not held for an authorize that takes its time, nor for the app\'s own WebSocket routes', async (t) => {
  const decision = gate<{ permissions: 'readwrite' }>()
  let asked!: () => void
  const authorizing = new Promise<void>((resolve) => { asked = resolve })
  const app = await build(t, {
    authorize: async () => {
      asked()
      return await decision.promise
    }
  }, async (app) => {
    // The app registers @fastify/websocket itself, for a route of its own: the plugin shares it.
    await app.register(websocket)
    app.get('/other', { websocket: true }, (socket) => socket.send('hello'))
  })
  const writes = recordWrites(app)
  const base = await listen(app)
  const peer = await connectReal(base, { roomId: 'r', clientId: 'a' })
  t.teardown(() => peer.ws.terminate())
  await authorizing
  t.equal(writes.length, 1, 'the 101 left while authorize is pending')
  t.match(writes[0].chunks.join(''), /^HTTP\/1\.1 101 Switching Protocols\r\n[^]*\r\n\r\n$/, 'alone')
  decision.open({ permissions: 'readwrite' })
  await peer.next((f) => f.type === 'clientCount')
  await peer.join()

  const other = new WebSocket(`${base}/other`)
  t.teardown(() => other.terminate())
  const [hello] = await once(other, 'message') as [Buffer]
  t.equal(String(hello), 'hello')
  const mine = writes.filter((w) => w.path === '/other')
  t.match(mine[0].chunks.join(''), /^HTTP\/1\.1 101 Switching Protocols\r\n[^]*\r\n\r\n$/, 'another route\'s 101 is written at once, alone')
})

t.test('a socket destroyed in the turn of its upgrade (ws.terminate() in the app\'s connection listener) still sends its 101 first', async (t) => {
  const app = await build(t, {}, async (app) => {
    await app.register(websocket)
    app.websocketServer.on('connection', (ws: WebSocket) => ws.terminate())
  })
  const ws = new WebSocket(`${await listen(app)}/sync?roomId=r&clientId=a`)
  const events: string[] = []
  ws.on('open', () => events.push('open'))
  ws.on('error', (err) => events.push(`error: ${err.message}`))
  const [code] = await once(ws, 'close') as [number]
  t.strictSame(events, ['open'], 'the client saw the upgrade')
  t.equal(code, 1006, 'then the connection end')
})

t.test('registrations sharing one WebSocket server add one headers listener between them, removed at close', async (t) => {
  const warnings: Error[] = []
  const onWarning = (warning: Error): void => { warnings.push(warning) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  await app.register(websocket)
  for (let i = 0; i < 11; i++) await app.register(async (scope) => { await scope.register(canvasStore, { path: `/sync${i}` }) })
  await app.ready()
  const wss = app.websocketServer
  t.equal(wss.listenerCount('headers'), 1)
  const base = await listen(app)
  const writes = recordWrites(app)
  for (const path of ['/sync0', '/sync10']) {
    const peer = await connectReal(base, { roomId: 'r', clientId: 'a' }, path)
    await peer.next((f) => f.type === 'clientCount')
    t.equal(writes.filter((w) => w.path === path)[0].chunks.length, 2, `${path}: the 101 and clientCount in one write`)
    peer.ws.terminate()
    await peer.closed
  }
  await app.close()
  t.equal(wss.listenerCount('headers'), 1, 'the plugin\'s is gone (the test\'s own recorder is left)')
  t.strictSame(warnings.filter((w) => w.name === 'MaxListenersExceededWarning'), [])
})

t.test('a socket whose destroy is its own (a wrapper the app installs) is not held: its 101 is written at once', async (t) => {
  const app = await build(t)
  app.server.on('connection', (socket: Socket) => {
    const destroy = socket.destroy
    socket.destroy = function (this: Socket, err?: Error) { return destroy.call(this, err) }
  })
  const writes = recordWrites(app)
  const peer = await connectReal(await listen(app), { roomId: 'r', clientId: 'a' })
  t.teardown(() => peer.ws.terminate())
  await peer.next((f) => f.type === 'clientCount')
  t.match(writes[0].chunks.join(''), /^HTTP\/1\.1 101 Switching Protocols\r\n[^]*\r\n\r\n$/, 'the 101 alone')
  await peer.join()
})

t.test('a socket released from the hold keeps fast properties (its destroy is assigned back, not deleted)', async (t) => {
  setFlagsFromString('--allow-natives-syntax')
  // eslint-disable-next-line no-new-func
  const hasFastProperties = new Function('object', 'return %HasFastProperties(object)') as (object: object) => boolean
  const app = await build(t)
  const peer = await connectReal(await listen(app), { roomId: 'r', clientId: 'a' })
  t.teardown(() => peer.ws.terminate())
  await peer.join()
  const [server] = app.websocketServer.clients
  const raw = (server as unknown as { _socket: Socket })._socket
  t.equal(raw.writableCorked, 0, 'uncorked')
  t.ok(hasFastProperties(raw))
  let destroyed = false
  raw.once('close', () => { destroyed = true })
  const closed = once(raw, 'close')
  raw.destroy()
  await closed
  t.ok(destroyed, 'destroy still works')
})

t.test('an open connection keeps neither the Fastify request and reply of its upgrade nor the HTTP response made for it, nor closures of its own', async (t) => {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const refs: Array<WeakRef<object>> = []
  const app = await build(t, {}, (app) => {
    app.addHook('onRequest', async (request, reply) => {
      refs.push(new WeakRef(request), new WeakRef(reply), new WeakRef(reply.raw), new WeakRef(request.raw))
    })
  })
  const base = await listen(app)
  const peers = []
  for (const clientId of ['a', 'b', 'c']) {
    const peer = await connectReal(base, { roomId: 'r', clientId })
    t.teardown(() => peer.ws.terminate())
    await peer.join()
    peers.push(peer)
  }
  t.equal(refs.length, 12)
  for (let round = 0; round < 3; round++) {
    await new Promise((resolve) => setImmediate(resolve))
    gc()
  }
  t.equal(refs.filter((ref) => ref.deref() !== undefined).length, 0, 'all collected')
  // Nor closures of its own: every socket shares the route's listeners and close.
  const [x, y] = app.websocketServer.clients
  for (const event of ['message', 'close', 'error', 'pong']) t.equal(x.listeners(event).at(-1), y.listeners(event).at(-1), `one ${event} listener for every socket`)
  t.equal(x.close, y.close, 'one close for every socket')
  const ids = app.canvasStore.getExistingRoom('r')!.getSessions().map((s) => s.sessionId)
  t.equal(new Set(ids).size, 3)
  for (const id of ids) t.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'session ids are random (version 4) UUIDs')
  t.equal((await write(peers[0], 'm1', [{ 'e/A': { _exists: true } }])).timestamp, 1, 'the connections work on')
  t.match(await peers[1].next((f) => f.type === 'patch'), { documentPatches: [{ 'e/A': { _exists: true } }] })
})

t.test('an error listener the app adds on connection still sees the errors of the plugin\'s sockets', async (t) => {
  const app = await build(t)
  const seen: string[] = []
  app.websocketServer.on('connection', (ws: WebSocket) => {
    ws.on('error', (err: Error & { code?: string }) => seen.push(err.code ?? err.message))
  })
  const peer = await connectReal(await listen(app), { roomId: 'r', clientId: 'a' })
  await peer.join()
  peer.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false })
  t.strictSame(await peer.closed, { code: 1007, reason: 'Invalid UTF-8 in a text frame' })
  t.strictSame(seen, ['WS_ERR_INVALID_UTF8'])
})

t.test('an app that registered @fastify/websocket with an errorHandler gets the errors of the plugin\'s sockets in it, with the request', async (t) => {
  const seen: Array<{ code: string | undefined, roomId: string }> = []
  const app = await build(t, {}, async (app) => {
    await app.register(websocket, {
      errorHandler: (error, socket, request) => {
        seen.push({ code: (error as { code?: string }).code, roomId: (request.query as { roomId: string }).roomId })
        socket.terminate()
      }
    })
  })
  const peer = await connectReal(await listen(app), { roomId: 'r', clientId: 'a' })
  await peer.join()
  peer.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false })
  await peer.closed
  t.strictSame(seen, [{ code: 'WS_ERR_INVALID_UTF8', roomId: 'r' }])
})

t.test('an app that listens for the close of reply.raw in a hook still hears it when the WebSocket connection ends', async (t) => {
  let open = 0
  const app = await build(t, {}, (app) => {
    app.addHook('onRequest', async (_request, reply) => {
      open++
      reply.raw.on('close', () => { open-- })
    })
  })
  const peer = await connectReal(await listen(app), { roomId: 'r', clientId: 'a' })
  await peer.join()
  t.equal(open, 1)
  const [server] = app.websocketServer.clients
  const serverClosed = once(server, 'close')
  peer.ws.close()
  await peer.closed
  await serverClosed
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(open, 0)
})
