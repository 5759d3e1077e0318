/**
 * The load generator's client: a `ws` socket speaking protocol v2 with as
 * little work per received frame as possible (frames are classified by
 * their prefix; patches are scanned for markers rather than parsed), so that
 * the generator stays cheaper than the servers it measures.
 */
import { performance } from 'node:perf_hooks'
import { MiniSocket } from './wsclient.js'

const TYPE_PREFIX = Buffer.from('{"type":"')
const TIMESTAMP = Buffer.from('"timestamp":')
const MARK = Buffer.from('"bm":"')
const QUOTE = 34
const COLON = 58

/** Microseconds on this process's monotonic clock (senders and receivers share the process). */
export function nowMicros (): number {
  return Math.round(performance.now() * 1000)
}

export function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Rejects after `ms` with a message naming what was awaited. */
export function withTimeout<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/**
 * The marker written into every measured value: sender index, sequence
 * number (from 1) and send time. It is one string field, so it survives any
 * merge a server may do (field-level last writer wins) intact.
 */
export function marker (sender: number, seq: number, micros: number): string {
  return `${sender}:${seq}:${micros}`
}

/** Calls `found` for every marker in a frame, wherever it sits (document or presence, one key or many). */
export function scanMarkers (data: Buffer, found: (sender: number, seq: number, micros: number) => void): number {
  let count = 0
  let at = data.indexOf(MARK)
  const end = data.length
  while (at !== -1) {
    let i = at + MARK.length
    let sender = 0
    while (i < end && data[i] !== COLON) sender = sender * 10 + data[i++] - 48
    i++
    let seq = 0
    while (i < end && data[i] !== COLON) seq = seq * 10 + data[i++] - 48
    i++
    let micros = 0
    while (i < end && data[i] !== QUOTE) micros = micros * 10 + data[i++] - 48
    if (i >= end) break
    found(sender, seq, micros)
    count++
    at = data.indexOf(MARK, i)
  }
  return count
}

/** The `type` of a server frame, read from its prefix (falls back to a parse). */
export function frameType (data: Buffer): string {
  if (data.length > TYPE_PREFIX.length && data.compare(TYPE_PREFIX, 0, TYPE_PREFIX.length, 0, TYPE_PREFIX.length) === 0) {
    const end = data.indexOf(QUOTE, TYPE_PREFIX.length)
    if (end !== -1) return data.toString('latin1', TYPE_PREFIX.length, end)
  }
  try {
    const parsed = JSON.parse(data.toString('utf8')) as { type?: unknown }
    return typeof parsed.type === 'string' ? parsed.type : ''
  } catch {
    return ''
  }
}

/** The last `"timestamp":N` of a frame (a patch's counter), or -1. */
function lastTimestamp (data: Buffer): number {
  const at = data.lastIndexOf(TIMESTAMP)
  if (at === -1) return -1
  let i = at + TIMESTAMP.length
  let value = 0
  let digits = 0
  while (i < data.length && data[i] >= 48 && data[i] <= 57) {
    value = value * 10 + data[i++] - 48
    digits++
  }
  return digits === 0 ? -1 : value
}

export interface PeerOptions {
  port: number
  /** Whether the server acks patches (the raw server does not). */
  acks: boolean
}

/**
 * One simulated client. `connect` opens a socket and sends `reconnect` the
 * instant it opens (as the published client does), resolving at `synced`.
 */
export class Peer {
  ws: MiniSocket | null = null
  /** Highest room counter seen (synced, acks, patch broadcasts). */
  timestamp = 0
  frames = 0
  bytes = 0
  acks = 0
  clientCounts = 0
  /** performance.now() when the last socket opened (and sent its `reconnect`). */
  openedAt = 0
  /** performance.now() of the last `synced`. */
  syncedAt = 0
  /** Sockets closed by the server or failing, not by us. */
  unexpectedCloses = 0
  /** Measured phase: called with every patch frame. */
  onPatch: ((data: Buffer) => void) | null = null
  /** Measured phase: called with the messageId of every ack. */
  onAck: ((messageId: string) => void) | null = null
  /** When set, every patch frame is kept here (for checks after the timed part). */
  keptPatches: Buffer[] | null = null
  #setupSeq = 0
  #syncWaiter: (() => void) | null = null
  readonly #ackWaiters = new Map<string, () => void>()

  constructor (readonly index: number, readonly roomId: string, readonly clientId: string, readonly options: PeerOptions) {}

  get path (): string {
    return `/sync?roomId=${encodeURIComponent(this.roomId)}&clientId=${encodeURIComponent(this.clientId)}&token=bench`
  }

  /** Opens a socket, sends `reconnect` with `lastTimestamp` at once, resolves at `synced`. */
  connect (lastTimestamp = this.timestamp, timeoutMs = 60_000): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let settled = false
      const fail = (err: Error): void => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        this.#syncWaiter = null
        reject(err)
      }
      const timer = setTimeout(() => {
        fail(new Error(`${this.clientId}: no synced within ${timeoutMs} ms`))
        ws.terminate()
      }, timeoutMs)
      this.#syncWaiter = () => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        resolve()
      }
      const ws: MiniSocket = new MiniSocket('127.0.0.1', this.options.port, this.path, {
        open: () => {
          this.openedAt = performance.now()
          ws.send(JSON.stringify({ type: 'reconnect', lastTimestamp, protocolVersion: 2 }))
        },
        message: (data) => {
          if (this.ws === ws) this.#onMessage(data)
        },
        error: (err) => fail(err),
        close: (code) => {
          if (this.ws !== ws) return
          this.ws = null
          this.unexpectedCloses++
          fail(new Error(`${this.clientId}: closed with ${code} before synced`))
        }
      })
      this.ws = ws
    })
  }

  /** Drops the socket abruptly (no close handshake); its events are ignored from now on. */
  drop (): void {
    const ws = this.ws
    this.ws = null
    ws?.terminate()
  }

  /** Closes the socket cleanly and resolves once it is closed (bounded). */
  close (timeoutMs = 10_000): Promise<void> {
    const ws = this.ws
    this.ws = null
    if (ws === null) return Promise.resolve()
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        ws.terminate()
        resolve()
      }, timeoutMs)
      ws.onClosed(() => {
        clearTimeout(timer)
        resolve()
      })
      ws.close(1000)
    })
  }

  send (text: string): void {
    this.ws?.send(text)
  }

  /**
   * Sends a setup patch and waits until the server has handled it: its ack,
   * or, with the raw server, a `reconnect` -> `synced` round trip behind it.
   */
  async write (parts: { documentPatches?: unknown[], ephemeralPatches?: unknown[] }, timeoutMs = 60_000): Promise<void> {
    const messageId = `setup-${++this.#setupSeq}`
    const text = JSON.stringify({ type: 'patch', messageId, ...parts })
    if (this.options.acks) {
      const acked = new Promise<void>((resolve) => this.#ackWaiters.set(messageId, resolve))
      this.send(text)
      await withTimeout(acked, timeoutMs, `${this.clientId}: ack of ${messageId}`)
      return
    }
    this.send(text)
    await this.barrier(timeoutMs)
  }

  /** A `reconnect` on the open socket and its `synced`: everything sent before it was handled. */
  async barrier (timeoutMs = 60_000): Promise<void> {
    const synced = new Promise<void>((resolve) => { this.#syncWaiter = resolve })
    this.send(JSON.stringify({ type: 'reconnect', lastTimestamp: this.timestamp, protocolVersion: 2 }))
    await withTimeout(synced, timeoutMs, `${this.clientId}: synced`)
  }

  resetCounters (): void {
    this.frames = 0
    this.bytes = 0
    this.acks = 0
    this.clientCounts = 0
  }

  #onMessage (data: Buffer): void {
    this.frames++
    this.bytes += data.length
    const type = frameType(data)
    switch (type) {
      case 'patch': {
        const ts = lastTimestamp(data)
        if (ts > this.timestamp) this.timestamp = ts
        this.keptPatches?.push(data)
        this.onPatch?.(data)
        return
      }
      case 'ack': {
        this.acks++
        const ack = JSON.parse(data.toString('utf8')) as { messageId: string, timestamp: number }
        if (ack.timestamp > this.timestamp) this.timestamp = ack.timestamp
        const waiter = this.#ackWaiters.get(ack.messageId)
        if (waiter !== undefined) {
          this.#ackWaiters.delete(ack.messageId)
          waiter()
        }
        this.onAck?.(ack.messageId)
        return
      }
      case 'synced': {
        const synced = JSON.parse(data.toString('utf8')) as { timestamp: number }
        if (synced.timestamp > this.timestamp) this.timestamp = synced.timestamp
        this.syncedAt = performance.now()
        const waiter = this.#syncWaiter
        this.#syncWaiter = null
        waiter?.()
        return
      }
      case 'clientCount':
        this.clientCounts++
    }
  }
}

/** Connects peers, `concurrency` at a time (each resolves at its `synced`). */
export async function connectAll (peers: Peer[], concurrency: number, timeoutMs = 60_000): Promise<void> {
  for (let i = 0; i < peers.length; i += concurrency) {
    await Promise.all(peers.slice(i, i + concurrency).map((peer) => peer.connect(0, timeoutMs)))
  }
}

/** Runs `fn` over items, `concurrency` at a time. */
export async function inBatches<T> (items: T[], concurrency: number, fn: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += concurrency) {
    await Promise.all(items.slice(i, i + concurrency).map(fn))
  }
}

/** The component value used to seed rooms (same shape as the storage benchmark's). */
export function shape (i: number): Record<string, unknown> {
  return { _exists: true, x: i, y: i * 2, w: 100, h: 50, color: '#336699', label: `shape ${i}` }
}

/** Growable list of latency samples (ms) with percentiles. */
export class Samples {
  #values = new Float64Array(1024)
  #count = 0
  static readonly MAX = 32_000_000

  push (value: number): void {
    if (this.#count === this.#values.length) {
      if (this.#count >= Samples.MAX) return
      const grown = new Float64Array(Math.min(Samples.MAX, this.#values.length * 2))
      grown.set(this.#values)
      this.#values = grown
    }
    this.#values[this.#count++] = value
  }

  get count (): number { return this.#count }

  /** Percentiles (0..100) of the samples, NaN when empty. */
  percentiles (...ps: number[]): number[] {
    if (this.#count === 0) return ps.map(() => Number.NaN)
    const sorted = this.#values.slice(0, this.#count).sort()
    return ps.map((p) => sorted[Math.min(this.#count - 1, Math.floor((p / 100) * this.#count))])
  }
}
