/**
 * Benchmark server: the reference `@woven-ecs/canvas-store-server` (its
 * RoomManager on a `ws` WebSocketServer, as in its README), in memory.
 * Connections go through its `acceptConnection`, which queues the frames that
 * arrive while the room loads (the client sends `reconnect` the instant the
 * socket opens; the README's bare example would drop it). Prints {"port":N}.
 */
import { createServer } from 'node:http'
import { acceptConnection, MemoryStorage, RoomManager } from '@woven-ecs/canvas-store-server'
import { WebSocketServer, type RawData } from 'ws'
import { announce, BACKLOG, handleSignals, HOST, idleTimeout, saveThrottleMs } from './common.js'

const manager = new RoomManager({ idleTimeout })
const server = createServer()
const wss = new WebSocketServer({ server, path: '/sync' })

wss.on('connection', (ws, req) => {
  const connection = acceptConnection({
    socket: ws,
    url: req.url ?? '',
    request: req,
    manager,
    authorize: () => ({ permissions: 'readwrite' }),
    roomOptions: () => ({ createStorage: () => new MemoryStorage(), saveThrottleMs })
  })
  ws.on('message', (data: RawData) => connection.onMessage(String(data)))
  ws.on('close', () => connection.onClose())
  ws.on('error', () => connection.onError())
  connection.ready.catch((err: unknown) => {
    ws.close(1008, err instanceof Error ? err.message.slice(0, 120) : 'Refused')
  })
})

await new Promise<void>((resolve) => server.listen({ host: HOST, port: 0, backlog: BACKLOG }, resolve))
handleSignals(async () => {
  for (const client of wss.clients) client.terminate()
  await manager.closeAll()
  await new Promise<void>((resolve) => wss.close(() => resolve()))
  await new Promise<void>((resolve) => server.close(() => resolve()))
})
announce((server.address() as { port: number }).port)
