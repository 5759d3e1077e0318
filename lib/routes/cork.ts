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

function uncorkAll (): void {
  scheduled = false
  for (const socket of corked) socket.uncork()
  corked.clear()
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
      ws.send(data)
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
