import type { EventEmitter } from 'node:events'
import { ServerResponse, type IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import type { WebSocket } from 'ws'
import type { WebSocketLike } from '../room/session.js'

/**
 * Sockets sent something during this event-loop turn. The frames a socket is
 * sent in one turn are written together at the end of the turn
 * (setImmediate), in one write where the socket's stream is idle, instead of
 * one system call per frame: the main cost of fan-out.
 */
let held: Array<CorkedSocket | undefined> = []
let heldCount = 0
/** The other turn's list: the two are swapped at every turn end and reused, cleared but not shrunk. */
let spare: Array<CorkedSocket | undefined> = []
/** Counts the turns in which something was held; a socket held in the current one has `turn === currentTurn`. */
let currentTurn = 1
let scheduled = false
/**
 * Sockets whose upgrade was answered this turn (see holdHandshake): corked
 * until the turn's frames are written, then uncorked, after them; a socket
 * destroyed meanwhile leaves the set then (see release).
 */
const holding = new Set<Socket>()

/**
 * A broadcast hands the same string to every socket of a room in a row:
 * encode it to UTF-8 and frame it once, and write the same bytes to every
 * socket, instead of once per socket.
 */
let lastText: string | null = null
/** The last string as a frame (header, then the UTF-8 payload), or null. */
let lastFrame: Buffer | null = null
/** The last string's UTF-8 bytes alone (for ws.send), or null until asked for. */
let lastBytes: Buffer | null = null
const TEXT = { binary: false }
const OPEN = 1
/** Up to this many bytes, a turn's frames to one socket are copied into one buffer; above, written as they are. */
const CONCAT_BYTES = 16 * 1024
/** Frames held back are joined into writes of up to this many bytes (a frame this size or larger goes alone). */
const CHUNK_BYTES = 1024 * 1024
/** A close finding more than this held back behind an unfinished write drops it (see flush). */
const CLOSE_BACKLOG_BYTES = 1024 * 1024

/**
 * The last large frame, kept across turns for as long as some socket still
 * holds it unsent (a weak reference): the same diff answers every joiner of
 * a room at one counter value, and joiners arrive in different turns.
 * Without it, clients that join a large document and read nothing each
 * kept their own copy of its bytes in memory.
 */
let sticky: { text: string, frame: WeakRef<Buffer> } | null = null
/** Frames from this size are kept in `sticky`. */
const STICKY_BYTES = 64 * 1024
/** Lets go of the sticky frame's text once the frame is collected, even on a server that sends nothing more. */
const stickyCollected = new FinalizationRegistry<WeakRef<Buffer>>((frame) => {
  if (sticky !== null && sticky.frame === frame) sticky = null
})

/**
 * Close codes that refuse a peer for what it sends (rate limits, floods, oversized frames): see closeAbusive.
 * Not 1008, which also refuses an auth-refresh: the route calls closeAbusive itself for its floods.
 */
const ABUSE_CODES = new Set([1009, 4429])
/** How long a peer closed by closeAbusive has to end the connection before it is cut. */
const ABUSE_CLOSE_MS = 1000

/**
 * Closes a socket whose peer is refused for what it sends, and stops
 * reading from it: ws would otherwise go on reading and parsing whatever
 * the peer floods until the close handshake ends (30 s), at the cost of
 * every other room. The close frame still leaves; the connection is cut a
 * second later, or at once if the peer ends it first.
 */
export function closeAbusive (ws: WebSocket, code: number, reason: string): void {
  ws.close(code, reason)
  stopReading(ws)
}

/**
 * The stream under a ws socket (ws keeps it private): a net.Socket, another
 * stream (injectWS), or null once ws let go of it.
 */
function streamOf (ws: WebSocket): Socket | null {
  return (ws as unknown as { _socket?: Socket | null })._socket ?? null
}

/** After a close frame was sent (see closeAbusive): reads nothing more, and cuts the connection a second later. */
export function stopReading (ws: WebSocket): void {
  const raw = streamOf(ws)
  if (raw === null || ws.readyState === ws.CLOSED) return
  raw.pause()
  const timer = setTimeout(() => ws.terminate(), ABUSE_CLOSE_MS)
  timer.unref()
  ws.once('close', () => clearTimeout(timer))
}

/** The string as UTF-8 bytes, for sockets whose frames ws builds itself (an extension such as permessage-deflate). */
function encoded (data: string): Buffer {
  if (data !== lastText) {
    lastText = data
    lastFrame = null
    lastBytes = Buffer.from(data, 'utf8')
  } else if (lastBytes === null) {
    lastBytes = lastFrame!.subarray(payloadStart(lastFrame!))
  }
  return lastBytes
}

/** Where a frame made by framed() starts its payload: after a 2, 4 or 10 byte header, as its second byte says. */
function payloadStart (frame: Buffer): number {
  return frame[1] === 127 ? 10 : frame[1] === 126 ? 4 : 2
}

/**
 * The string as one complete, unmasked, unfragmented WebSocket text frame
 * (RFC 6455 section 5.2), encoded straight into the frame's buffer.
 */
function framed (data: string): Buffer {
  if (data === lastText && lastFrame !== null) return lastFrame
  if (sticky !== null && sticky.text.length === data.length) {
    const frame = sticky.frame.deref()
    if (frame === undefined) {
      sticky = null
    } else if (sticky.text === data) {
      lastText = data
      lastFrame = frame
      lastBytes = null
      return frame
    }
  }
  const length = data === lastText ? lastBytes!.length : Buffer.byteLength(data, 'utf8')
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
  if (data === lastText) {
    lastBytes!.copy(frame, headerLength)
  } else {
    frame.write(data, headerLength, length, 'utf8')
    lastText = data
    lastBytes = null
  }
  lastFrame = frame
  if (frame.length >= STICKY_BYTES) {
    sticky = { text: data, frame: new WeakRef(frame) }
    stickyCollected.register(frame, sticky.frame)
  }
  return frame
}

function flushAll (): void {
  scheduled = false
  currentTurn++
  const sockets = held
  const count = heldCount
  // A socket sent something while these are written is listed on the other list, for the next turn end.
  held = spare
  heldCount = 0
  spare = sockets
  for (let i = 0; i < count; i++) {
    const socket = sockets[i]!
    sockets[i] = undefined
    try {
      socket.flush()
    } catch (err) {
      // Not expected (a failed write is reported asynchronously); it must cost that connection, not the process.
      socket.raw!.destroy(err as Error)
    }
  }
  if (holding.size > 0) {
    // Each leaves the set as it is visited (a Set allows that while iterating).
    for (const socket of holding) {
      release(socket)
      try {
        socket.uncork()
      } catch (err) {
        socket.destroy(err as Error)
      }
    }
  }
  // Do not keep the turn's last frame (it may be a whole document) alive; nor its text once no socket holds the frame.
  lastText = null
  lastFrame = null
  lastBytes = null
  if (sticky !== null && sticky.frame.deref() === undefined) sticky = null
}

/**
 * Holds what is written to a socket until the end of this event-loop turn:
 * called as ws is about to write its 101 response, so that the response and
 * the frames the room sends the new session in the same turn (its client
 * count; with a synchronous authorize and a loaded room, the session joins
 * in this turn) leave in one system call, not two. Under a storm of
 * reconnects that is a third of the server's writes. The stream's own
 * cork: ws's close frame queues behind the 101; a destroy in the same turn
 * (ws.terminate(), an app's error handler) first writes what is held, so
 * that the client still sees the upgrade, then the connection end, as it
 * did before the hold (unless the destroy is for an error of the stream).
 */
function holdHandshake (socket: Socket): void {
  // A socket with a destroy of its own (a wrapper's) is not held: the hold could not write first on its destroy.
  if (Object.hasOwn(socket, 'destroy')) return
  socket.cork()
  holding.add(socket)
  socket.destroy = destroyHeld
  if (!scheduled) {
    scheduled = true
    setImmediate(flushAll)
  }
}

/** A held socket's destroy: lets the 101 (and what followed it) go first, unless the stream failed. */
function destroyHeld (this: Socket, err?: Error): Socket {
  if (release(this) && err === undefined) this.uncork()
  return destroyInherited.call(this, err)
}

/**
 * Ends a socket's hold (it stays corked: the caller uncorks it, or destroys
 * it). False when it was released already. A destroy of the app's,
 * installed since the hold, is left in place.
 */
function release (socket: Socket): boolean {
  if (socket.destroy === destroyHeld) socket.destroy = destroyInherited
  return holding.delete(socket)
}

/**
 * What a released socket's destroy becomes: the inherited one, looked up at
 * each call. Assigned rather than deleted, as deleting a property that is
 * not the last one added (ws adds its own after the hold) turns the object's
 * properties into a dictionary, slower on every later write.
 */
function destroyInherited (this: Socket, err?: Error): Socket {
  return (Object.getPrototypeOf(this) as Socket).destroy.call(this, err)
}

/** Upgrade requests of the plugin's route whose 101 is to be held (see holdHandshake); marked before the upgrade. */
const upgrades = new WeakSet<IncomingMessage>()
/** ws servers listening to 'headers' for the plugin, with the number of registrations that asked. */
const watching = new WeakMap<EventEmitter, number>()

/** Marks an upgrade request whose 101 response is to be held. */
export function holdUpgrade (req: IncomingMessage): void {
  upgrades.add(req)
}

/** ws's 'headers' event, just before it writes the 101 response: holds it for a marked request. */
function onHeaders (_headers: string[], req: IncomingMessage): void {
  if (!upgrades.delete(req)) return
  // A socket of Node's (injectWS hands ws a stream and a request with no socket).
  const socket = req.socket as Socket | null | undefined
  if (socket !== undefined && socket !== null && typeof socket.cork === 'function') holdHandshake(socket)
}

/**
 * Has a ws server hold the 101 of the upgrades marked by holdUpgrade (one
 * listener per server, however many registrations share it); returns what
 * undoes it, for the app's close.
 */
export function watchHandshakes (wss: EventEmitter): () => void {
  const count = watching.get(wss) ?? 0
  if (count === 0) wss.on('headers', onHeaders)
  watching.set(wss, count + 1)
  let undone = false
  return () => {
    if (undone) return
    undone = true
    const left = watching.get(wss)! - 1
    if (left > 0) {
      watching.set(wss, left)
    } else {
      watching.delete(wss)
      wss.off('headers', onHeaders)
    }
  }
}

/**
 * Lets go of the HTTP response @fastify/websocket made to route an upgrade
 * through Fastify (Node makes none for an upgrade). Assigned to the socket,
 * it stays referenced by it for the socket's life, with the request it
 * answers and a 'close' listener that runs when the socket closes; nothing
 * writes to it once the socket is upgraded. Unless the app listens for that
 * 'close' (a hook counting open requests by `reply.raw`'s close, say): the
 * response then stays attached, and still tells it when the connection ends.
 */
export function detachUpgradeResponse (ws: WebSocket): void {
  const raw = streamOf(ws)
  if (raw === null) return
  const response = (raw as Socket & { _httpMessage?: unknown })._httpMessage
  if (response instanceof ServerResponse && response.socket === raw && response.listenerCount('close') === 0) response.detachSocket(raw)
}

/** Where a direct socket (see CorkedSocket) keeps its CorkedSocket, for closeAfterFlush. */
const kCorked = Symbol('fastify-canvas-store corked')
type CorkedWebSocket = WebSocket & { [kCorked]: CorkedSocket }

/** A direct socket's close (one function for every socket, `this` the socket): what is held is written first. */
function closeAfterFlush (this: WebSocket, code?: number, data?: string | Buffer): void {
  (this as CorkedWebSocket)[kCorked].closeFlushed(code, data)
}

/**
 * A room's view of a ws socket whose frames of one event-loop turn are
 * written together. One class for every socket, so that the room's send
 * path sees a single shape.
 *
 * Where no extension was negotiated, the turn's frames are kept here as
 * ready-made bytes and handed to the socket as one buffer at the end of the
 * turn, without corking the stream (a corked stream queues an entry per
 * write and rebuilds its queue when uncorked, garbage on every frame). ws's
 * own control frames (pings, pongs) may then leave before them, which
 * RFC 6455 allows; a close frame never does: every close of the socket,
 * whoever starts it (the room, the route, the plugin's shutdown, or ws
 * itself answering the peer's close frame or refusing a frame), first
 * writes the frames held, which were sent while the socket was open. Where
 * an extension was negotiated, ws frames each string and the stream is
 * corked for the turn, so its close frame queues behind them too.
 */
export class CorkedSocket implements WebSocketLike {
  readonly ws: WebSocket
  /** ws keeps its net.Socket private; without one (tests, other transports) frames go out as usual. */
  readonly raw: Socket | null
  /** The turn this socket was last sent something in. */
  turn = 0
  /**
   * Frames can be written to the net.Socket as ready-made bytes: no
   * extension (permessage-deflate) was negotiated, so ws would write exactly
   * these bytes itself.
   */
  readonly #direct: boolean
  /** This turn's ready-made frames (direct sockets): the first (a socket mostly gets one per turn), */
  #first: Buffer | null = null
  /** and every frame of the turn once there are several. */
  #several: Buffer[] | null = null
  #pendingBytes = 0
  /**
   * Frames of earlier turns held back while a write to the stream has not
   * finished (the peer reads slowly, or not at all): written together once
   * it has. The stream so holds one queued write per socket, not one per
   * turn: a stalled socket that is then destroyed does not make Node build
   * an error for each of thousands of writes (seconds of a blocked event
   * loop when many stalled clients are cut at once), and the frames held
   * are the shared broadcast buffers, not a copy per socket.
   */
  #backlog: Buffer[] | null = null
  #backlogBytes = 0
  /** Writes handed to the stream whose callback has not come yet. */
  #unfinished = 0
  /** The socket's close before closeAfterFlush replaced it (direct sockets). */
  #close: WebSocket['close'] | null = null
  /** The callback of every write (one function per socket, which Node batches). */
  readonly #written = (): void => {
    if (--this.#unfinished === 0 && this.#backlog !== null) this.#writeBacklog()
  }

  constructor (ws: WebSocket) {
    this.ws = ws
    const raw = streamOf(ws)
    this.raw = raw !== null && typeof raw.cork === 'function' ? raw : null
    this.#direct = this.raw !== null && ws.extensions === ''
    if (this.#direct) {
      // Every close goes through the socket's own close method (ws calls it on itself too): write what is held first.
      this.#close = ws.close
      ;(ws as CorkedWebSocket)[kCorked] = this
      ws.close = closeAfterFlush
    }
  }

  /** The socket's close, through closeAfterFlush: the frames held first. */
  closeFlushed (code?: number, data?: string | Buffer): void {
    this.flush(true)
    this.#close!.call(this.ws, code, data)
  }

  send (data: string): void {
    const raw = this.raw
    if (raw === null) {
      // No turn end to write at, and none to forget the shared bytes at: let ws encode them.
      this.ws.send(data)
      return
    }
    // As ws.send would: never a data frame after the close frame.
    if (this.#direct && this.ws.readyState !== OPEN) return
    if (this.turn !== currentTurn) {
      if (!this.#direct) raw.cork()
      this.turn = currentTurn
      held[heldCount++] = this
      if (!scheduled) {
        scheduled = true
        setImmediate(flushAll)
      }
    }
    if (this.#direct) {
      const frame = framed(data)
      if (this.#first === null) this.#first = frame
      else if (this.#several === null) this.#several = [this.#first, frame]
      else this.#several.push(frame)
      this.#pendingBytes += frame.length
    } else {
      this.ws.send(encoded(data), TEXT)
    }
  }

  /**
   * Writes what this turn sent the socket: at the end of the turn, and
   * before a close (`all`: the frames held back too, whatever the stream
   * holds, so that they leave ahead of the close frame).
   */
  flush (all = false): void {
    const raw = this.raw!
    if (!this.#direct) {
      raw.uncork()
      return
    }
    const first = this.#first
    const frames = this.#several
    if (first === null && !(all && this.#backlog !== null)) return
    const bytes = this.#pendingBytes
    this.#clear()
    // Closed or closing without passing through close() (the socket ended, was destroyed): nothing more to write.
    if (this.ws.readyState !== OPEN) {
      this.#dropBacklog()
      return
    }
    if (this.#unfinished > 0 || this.#backlog !== null) {
      // The stream has not taken the last write yet: these wait behind it, here.
      if (first !== null) {
        const backlog = this.#backlog ??= []
        if (frames === null) backlog.push(first)
        else for (let i = 0; i < frames.length; i++) backlog.push(frames[i])
        this.#backlogBytes += bytes
      }
      if (all) {
        if (this.#unfinished > 0 && this.#backlogBytes > CLOSE_BACKLOG_BYTES) {
          // Closing while the peer has not read the last write, with much more held: it is stalled, and the
          // frames would sit in the stream until the socket is destroyed (then Node fails each write in turn).
          // They are dropped: the client catches up when it reconnects, and re-sends what was not acked.
          this.#dropBacklog()
        } else {
          this.#writeBacklog()
        }
      }
      return
    }
    this.#write(frames ?? first!, bytes)
  }

  /** Hands frames to the stream as one write where they are small, else corked (one system call either way). */
  #write (frames: Buffer | Buffer[], bytes: number): void {
    const raw = this.raw!
    if (!Array.isArray(frames)) {
      this.#unfinished++
      raw.write(frames, this.#written)
    } else if (bytes <= CONCAT_BYTES) {
      this.#unfinished++
      raw.write(Buffer.concat(frames, bytes), this.#written)
    } else {
      // Corked: one system call. A big frame (a whole document, shared by every joiner) is written as it is;
      // runs of smaller ones are joined into chunks, so that the stream holds a few writes, not one per frame
      // (a backlog can be thousands of frames).
      raw.cork()
      let start = 0
      let run = 0
      const end = (i: number): void => {
        if (i > start) {
          this.#unfinished++
          raw.write(i - start === 1 ? frames[start] : Buffer.concat(frames.slice(start, i), run), this.#written)
        }
        start = i
        run = 0
      }
      for (let i = 0; i < frames.length; i++) {
        const length = frames[i].length
        if (length >= CHUNK_BYTES) {
          end(i)
          end(i + 1)
        } else {
          if (run + length > CHUNK_BYTES) end(i)
          run += length
        }
      }
      end(frames.length)
      raw.uncork()
    }
  }

  #writeBacklog (): void {
    const backlog = this.#backlog!
    const bytes = this.#backlogBytes
    this.#backlog = null
    this.#backlogBytes = 0
    if (this.ws.readyState !== OPEN) return
    this.#write(backlog.length === 1 ? backlog[0] : backlog, bytes)
  }

  #dropBacklog (): void {
    this.#backlog = null
    this.#backlogBytes = 0
  }

  close (code?: number, reason?: string): void {
    // The frames held leave first (see the constructor).
    if (code !== undefined && ABUSE_CODES.has(code) && this.raw !== null) closeAbusive(this.ws, code, reason ?? '')
    else this.ws.close(code, reason)
  }

  terminate (): void {
    this.#clear()
    this.#dropBacklog()
    this.ws.terminate()
  }

  #clear (): void {
    this.#first = null
    this.#several = null
    this.#pendingBytes = 0
  }

  get readyState (): number { return this.ws.readyState }

  /** Bytes not yet sent: ws's and the stream's, and the frames still held here (this turn's, and those held back). */
  get bufferedAmount (): number { return this.ws.bufferedAmount + this.#pendingBytes + this.#backlogBytes }
}
