import Fastify, { type FastifyInstance } from 'fastify'
import type { AddressInfo } from 'node:net'
import { Writable } from 'node:stream'
import WebSocket from 'ws'
import canvasStore, { type CanvasStoreOptions, type Room } from '../lib/index.js'
import { Document } from '../lib/room/document.js'

type Test = { teardown(fn: () => unknown): void }

/** Registers the plugin on a fresh app (no logs) and closes it when the test ends. */
export async function build (t: Test, opts: CanvasStoreOptions = {}, setup?: (app: FastifyInstance) => Promise<void> | void): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  if (setup !== undefined) await setup(app)
  await app.register(canvasStore, opts)
  await app.ready()
  t.teardown(async () => {
    await app.close()
    // injectWS sockets never see their stream end, so ws would keep a 30 s close timer: cut them.
    for (const client of app.websocketServer.clients) client.terminate()
  })
  return app
}

/** A pino destination that keeps every log line, parsed, in `lines`. */
export function logLines (): { stream: Writable, lines: any[] } {
  const lines: any[] = []
  const stream = new Writable({
    write (chunk, _encoding, done) {
      for (const line of String(chunk).split('\n')) if (line !== '') lines.push(JSON.parse(line))
      done()
    }
  })
  return { stream, lines }
}

/** Starts the app on 127.0.0.1, port 0, and returns its ws:// base URL. */
export async function listen (app: FastifyInstance): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  return `ws://127.0.0.1:${port}`
}

/**
 * A protocol-level test client: records every frame it receives and lets a
 * test await the next frame matching a predicate.
 */
export class Peer {
  readonly frames: any[] = []
  readonly #waiters: Array<{ match: (f: any) => boolean, resolve: (f: any) => void }> = []
  closed: Promise<{ code: number, reason: string }>

  constructor (readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const frame = JSON.parse(String(data))
      this.frames.push(frame)
      for (let i = 0; i < this.#waiters.length; i++) {
        if (this.#waiters[i].match(frame)) {
          this.#waiters[i].resolve(frame)
          this.#waiters.splice(i, 1)
          i--
        }
      }
    })
    this.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: String(reason) })))
  }

  send (frame: unknown): void {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame))
  }

  /** Resolves with the first frame, already received or still to come, after `from`, that matches. */
  next (match: (f: any) => boolean, from = 0): Promise<any> {
    for (let i = from; i < this.frames.length; i++) {
      if (match(this.frames[i])) return Promise.resolve(this.frames[i])
    }
    return new Promise((resolve) => this.#waiters.push({ match, resolve }))
  }

  /** Waits for a frame of that type received after this call. */
  nextOfType (type: string): Promise<any> {
    return this.next((f) => f.type === type, this.frames.length)
  }

  /** Sends `reconnect` and waits for `synced`. */
  async join (lastTimestamp = 0, extra: Record<string, unknown> = {}): Promise<any> {
    const synced = this.nextOfType('synced')
    this.send({ type: 'reconnect', lastTimestamp, protocolVersion: 2, ...extra })
    return synced
  }

  close (): Promise<{ code: number, reason: string }> {
    this.ws.close()
    return this.closed
  }
}

/** Opens an in-process socket with `app.injectWS`; frames sent before the handshake ends are queued by ws. */
export async function connect (app: FastifyInstance, query: Record<string, string>, path = '/sync'): Promise<Peer> {
  const qs = new URLSearchParams(query).toString()
  let peer: Peer | undefined
  await app.injectWS(`${path}?${qs}`, {}, { onInit: (ws) => { peer = new Peer(ws) } })
  return peer!
}

/** Opens a real socket to a listening app. */
export function connectReal (base: string, query: Record<string, string>, path = '/sync'): Promise<Peer> {
  const qs = new URLSearchParams(query).toString()
  const ws = new WebSocket(`${base}${path}?${qs}`)
  const peer = new Peer(ws)
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(peer))
    ws.once('error', reject)
  })
}

// ------------------------------------------------- shared frame matchers and steps

/** Matches a `clientCount` frame with that count. */
export const CLIENT_COUNT = (count: number) => (f: any) => f.type === 'clientCount' && f.count === count
/** Matches the `ack` of that messageId. */
export const ACK = (messageId: string) => (f: any) => f.type === 'ack' && f.messageId === messageId

/** The loaded room, or an error naming it. */
export function roomOf (app: FastifyInstance, roomId = 'r'): Room {
  const room = app.canvasStore.getExistingRoom(roomId)
  if (room === undefined) throw new Error(`room ${roomId} is not loaded`)
  return room
}

/** The room's snapshot as plain JSON objects (the live one has prototype-less records). */
export function snapshotOf (app: FastifyInstance, roomId = 'r'): any {
  return JSON.parse(JSON.stringify(roomOf(app, roomId).getSnapshot()))
}

/** The room's document state as plain JSON objects. */
export function stateOf (app: FastifyInstance, roomId = 'r'): any {
  return snapshotOf(app, roomId).state
}

/** Sends a patch frame and waits for its ack. */
export async function write (peer: Peer, messageId: string, documentPatches?: unknown[], ephemeralPatches?: unknown[]): Promise<any> {
  const ack = peer.next(ACK(messageId), peer.frames.length)
  peer.send({ type: 'patch', messageId, documentPatches, ephemeralPatches })
  return ack
}

/** Counts the frames the server received on any socket, and lets a test wait until it saw `n`. */
export function serverReceived (app: FastifyInstance): (n: number) => Promise<void> {
  let count = 0
  const waiters: Array<{ n: number, resolve: () => void }> = []
  app.websocketServer.on('connection', (socket) => {
    socket.on('message', () => {
      count++
      for (const w of waiters.filter((w) => w.n <= count)) {
        waiters.splice(waiters.indexOf(w), 1)
        w.resolve()
      }
    })
  })
  return (n) => n <= count ? Promise.resolve() : new Promise((resolve) => waiters.push({ n, resolve }))
}

/** A promise and the function that resolves it. */
export function gate<T = void> (): { promise: Promise<T>, open: (value: T) => void } {
  let open!: (value: T) => void
  const promise = new Promise<T>((resolve) => { open = resolve })
  return { promise, open }
}

/** Connects, waits for the clientCount that includes this peer, and sends `reconnect`. */
export async function joined (app: FastifyInstance, clientId: string, count: number, roomId = 'r'): Promise<Peer> {
  const peer = await connect(app, { roomId, clientId })
  const first = await peer.next((f) => f.type === 'clientCount')
  if (first.count !== count) throw new Error(`${clientId} joined with clientCount ${first.count}, expected ${count}`)
  await peer.join()
  return peer
}

/** A bug stand-in until the test ends: applying a document patch that holds `key` throws. */
export function throwOnKey (t: { teardown: (fn: () => void) => void }, key: string): void {
  const applyFrame = Document.prototype.applyFrame
  t.teardown(() => { Document.prototype.applyFrame = applyFrame })
  Document.prototype.applyFrame = function (patches) {
    if (patches.some((patch) => Object.hasOwn(patch, key))) throw new Error('bug')
    return applyFrame.call(this, patches)
  }
}
