import type { Socket } from 'node:net'
import type { WebSocket } from 'ws'
import type { WebSocketLike } from '../room/session.js'

/**
 * Sockets corked during this event-loop turn. Every frame a socket is sent
 * in one turn leaves in one write at the end of the turn (setImmediate),
 * instead of one system call per frame: the main cost of fan-out.
 */
let corked: CorkedSocket[] = []
/** Counts the turns in which something was corked; a socket corked in the current one has `turn === currentTurn`. */
let currentTurn = 1
let scheduled = false

/**
 * A broadcast hands the same string to every socket of a room in a row:
 * encode it to UTF-8 and frame it once, and write the same bytes to every
 * socket, instead of once per socket.
 */
const EMPTY = Buffer.alloc(0)
let lastText: string | null = null
let lastBytes: Buffer = EMPTY
let lastFrame: Buffer | null = null
const TEXT = { binary: false }
const OPEN = 1

function encoded (data: string): Buffer {
  if (data !== lastText) {
    lastText = data
    lastBytes = Buffer.from(data, 'utf8')
    lastFrame = null
  }
  return lastBytes
}

/** The string as one complete, unmasked, unfragmented WebSocket text frame (RFC 6455 section 5.2). */
function framed (data: string): Buffer {
  const payload = encoded(data)
  if (lastFrame !== null) return lastFrame
  const length = payload.length
  const headerLength = length < 126 ? 2 : length < 65536 ? 4 : 10
  const frame = Buffer.allocUnsafe(headerLength + length)
  frame[0] = 0x81 // FIN, text
  if (length < 126) {
    frame[1] = length
  } else if (length < 65536) {
    frame[1] = 126
    frame.writeUInt16BE(length, 2)
  } else {
    frame[1] = 127
    frame.writeUInt32BE(Math.floor(length / 0x100000000), 2)
    frame.writeUInt32BE(length >>> 0, 6)
  }
  payload.copy(frame, headerLength)
  lastFrame = frame
  return frame
}

function uncorkAll (): void {
  scheduled = false
  currentTurn++
  const sockets = corked
  corked = []
  for (let i = 0; i < sockets.length; i++) sockets[i].raw!.uncork()
  // Do not keep the turn's last frame (it may be a whole document) alive.
  lastText = null
  lastBytes = EMPTY
  lastFrame = null
}

/**
 * A room's view of a ws socket whose frames of one event-loop turn are
 * written together. One class for every socket, so that the room's send
 * path sees a single shape.
 */
export class CorkedSocket implements WebSocketLike {
  readonly ws: WebSocket
  /** ws keeps its net.Socket private; without one (tests, other transports) frames go out as usual. */
  readonly raw: Socket | null
  /** The turn this socket was last corked in. */
  turn = 0
  /**
   * Frames can be written to the net.Socket as ready-made bytes: no
   * extension (permessage-deflate) was negotiated, so ws would write exactly
   * these bytes itself, in order with its own writes (pings, close).
   */
  readonly #direct: boolean

  constructor (ws: WebSocket) {
    this.ws = ws
    const raw = (ws as unknown as { _socket?: Socket | null })._socket
    this.raw = raw !== undefined && raw !== null && typeof raw.cork === 'function' ? raw : null
    this.#direct = this.raw !== null && ws.extensions === ''
  }

  send (data: string): void {
    const raw = this.raw
    if (raw === null) {
      // Nothing to cork, so no turn end to forget the shared bytes at: let ws encode them.
      this.ws.send(data)
      return
    }
    if (this.turn !== currentTurn) {
      raw.cork()
      this.turn = currentTurn
      corked.push(this)
      if (!scheduled) {
        scheduled = true
        setImmediate(uncorkAll)
      }
    }
    if (!this.#direct) this.ws.send(encoded(data), TEXT)
    // As ws.send would: never a data frame after the close frame.
    else if (this.ws.readyState === OPEN) raw.write(framed(data))
  }

  close (code?: number, reason?: string): void {
    this.ws.close(code, reason)
  }

  terminate (): void {
    this.ws.terminate()
  }

  get readyState (): number { return this.ws.readyState }

  get bufferedAmount (): number { return this.ws.bufferedAmount }
}
