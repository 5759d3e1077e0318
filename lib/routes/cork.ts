import type { Socket } from 'node:net'
import type { WebSocket } from 'ws'
import type { WebSocketLike } from '../room/session.js'

/**
 * Sockets corked during this event-loop turn. Every frame a socket is sent
 * in one turn leaves in one write at the end of the turn (setImmediate),
 * instead of one system call per frame: the main cost of fan-out.
 */
const corked = new Set<Socket>()
let scheduled = false

/**
 * A broadcast hands the same string to every socket of a room in a row:
 * encode it to UTF-8 once and send the same Buffer (as a text frame) to all
 * of them, instead of once per socket.
 */
const EMPTY = Buffer.alloc(0)
let lastText: string | null = null
let lastBytes: Buffer = EMPTY
const TEXT = { binary: false }

function encoded (data: string): Buffer {
  if (data !== lastText) {
    lastText = data
    lastBytes = Buffer.from(data, 'utf8')
  }
  return lastBytes
}

function uncorkAll (): void {
  scheduled = false
  for (const socket of corked) socket.uncork()
  corked.clear()
  // Do not keep the turn's last frame (it may be a whole document) alive.
  lastText = null
  lastBytes = EMPTY
}

function cork (ws: WebSocket): void {
  // ws keeps its net.Socket private; without one (tests, other transports) frames go out as usual.
  const socket = (ws as unknown as { _socket?: Socket })._socket
  if (socket === undefined || socket === null || corked.has(socket) || typeof socket.cork !== 'function') return
  socket.cork()
  corked.add(socket)
  if (!scheduled) {
    scheduled = true
    setImmediate(uncorkAll)
  }
}

/** A room's view of a ws socket whose frames of one event-loop turn are written together. */
export function corkingSocket (ws: WebSocket): WebSocketLike & { terminate(): void } {
  return {
    send (data: string) {
      cork(ws)
      ws.send(encoded(data), TEXT)
    },
    close (code?: number, reason?: string) {
      ws.close(code, reason)
    },
    terminate () {
      ws.terminate()
    },
    get readyState () { return ws.readyState },
    get bufferedAmount () { return ws.bufferedAmount }
  }
}
