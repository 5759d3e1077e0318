import t from 'tap'
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { WebSocket, WebSocketServer } from 'ws'
import { CorkedSocket } from '../lib/routes/cork.js'

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

for (const deflate of [false, true]) {
  t.test(`frames arrive whole and in order, batched per turn (${deflate ? 'permessage-deflate: through ws' : 'written as ready-made frames'})`, async (t) => {
    const { server, client } = await pair(t, deflate)
    t.equal(server.extensions === '', !deflate)
    const socket = new CorkedSocket(server)
    let throughWs = 0
    const send = server.send.bind(server)
    server.send = ((...args: Parameters<WebSocket['send']>) => { throughWs++; send(...args) }) as WebSocket['send']
    const raw = (server as unknown as { _socket: { writableCorked: number } })._socket
    const got = receive(client, texts.length + 2)
    for (const text of texts) socket.send(text)
    t.equal(raw.writableCorked, 1, 'corked once for the rest of the turn')
    t.equal(throughWs, deflate ? texts.length : 0, deflate ? 'through ws.send' : 'written as ready-made frames, not through ws.send')
    // ws's own writes (a ping) keep their place between ours.
    server.ping()
    socket.send('after the ping')
    socket.send(texts[2])
    await new Promise((resolve) => setImmediate(resolve))
    t.equal(raw.writableCorked, 0, 'uncorked at the end of the turn')
    const frames = await got
    t.same(frames.map((f) => f.text), [...texts, 'after the ping', texts[2]])
    t.ok(frames.every((f) => !f.binary), 'text frames')
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
}
