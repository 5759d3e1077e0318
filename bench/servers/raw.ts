/**
 * Benchmark server: the fan-out cost floor. A bare `ws` server that forwards
 * each frame, unparsed, to the other sockets of the same `roomId`. It keeps
 * no state and never acks; the only thing it answers is a frame that starts
 * with `{"type":"reconnect"` (a prefix check, not a parse), with
 * `{"type":"synced","timestamp":0}`, so that clients can connect and use it
 * as a barrier exactly as with the real servers. Prints {"port":N}.
 *
 * Like the plugin, it corks each destination socket for the rest of the
 * event-loop turn, so that the frames a socket gets in one turn leave in one
 * write: the floor of fan-out with batched writes. RAW_CORK=0 sends each
 * frame at once (one write per frame, as the reference server does).
 */
import { createServer } from 'node:http'
import type { Socket } from 'node:net'
import { WebSocketServer, type RawData, type WebSocket } from 'ws'
import { announce, BACKLOG, handleSignals, HOST } from './common.js'

const RECONNECT = Buffer.from('{"type":"reconnect"')
const SYNCED = '{"type":"synced","timestamp":0}'
const OPEN = 1

const corking = process.env.RAW_CORK !== '0'
const corked = new Set<Socket>()
let scheduled = false

function uncorkAll (): void {
  scheduled = false
  for (const socket of corked) socket.uncork()
  corked.clear()
}

function send (ws: WebSocket, frame: Buffer): void {
  if (corking) {
    const socket = (ws as unknown as { _socket?: Socket })._socket
    if (socket !== undefined && !corked.has(socket)) {
      socket.cork()
      corked.add(socket)
      if (!scheduled) {
        scheduled = true
        setImmediate(uncorkAll)
      }
    }
  }
  ws.send(frame, { binary: false })
}

const rooms = new Map<string, Set<WebSocket>>()
const server = createServer()
const wss = new WebSocketServer({ server, path: '/sync' })

wss.on('connection', (ws, req) => {
  const roomId = new URL(req.url ?? '/', 'http://localhost').searchParams.get('roomId') ?? ''
  let room = rooms.get(roomId)
  if (room === undefined) {
    room = new Set()
    rooms.set(roomId, room)
  }
  const members = room
  members.add(ws)
  ws.on('message', (data: RawData) => {
    const frame = data as Buffer
    if (frame.length >= RECONNECT.length && frame.compare(RECONNECT, 0, RECONNECT.length, 0, RECONNECT.length) === 0) {
      ws.send(SYNCED)
      return
    }
    for (const other of members) {
      if (other !== ws && other.readyState === OPEN) send(other, frame)
    }
  })
  ws.on('close', () => {
    members.delete(ws)
    if (members.size === 0 && rooms.get(roomId) === members) rooms.delete(roomId)
  })
  ws.on('error', () => {})
})

await new Promise<void>((resolve) => server.listen({ host: HOST, port: 0, backlog: BACKLOG }, resolve))
handleSignals(async () => {
  for (const client of wss.clients) client.terminate()
  await new Promise<void>((resolve) => wss.close(() => resolve()))
  await new Promise<void>((resolve) => server.close(() => resolve()))
})
announce((server.address() as { port: number }).port)
