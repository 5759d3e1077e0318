/**
 * Storage benchmarks (issue: durable storage).
 *
 *   npm run bench -- storage-bytes       bytes and time per persisted patch on a 20,000-component room
 *   npm run bench -- storage-throughput  patches/s of one writer: durable acks vs throttled
 *   npm run bench -- storage-large-key   SqliteStorage: time of small writes before and after one room holds a 32 MiB key;
 *                                        then, on a server, another room's ack latency while a 48 MiB key changes 10 times a second
 *
 * Medians of several rounds; everything on 127.0.0.1 and in a temp folder.
 */
import Fastify from 'fastify'
import { mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import WebSocket from 'ws'
import canvasStore, { FileStorage, Room, SqliteStorage, type CanvasStoreOptions, type Durability, type Storage } from '../lib/index.js'
import { median, table } from './util.js'

const COMPONENTS = 20_000
const PATCHES = 40

function fakeSocket () {
  return { readyState: 1, send () {}, close () {} }
}

/** A room of 20,000 components, then PATCHES one-key patches, each flushed: bytes and ms per flush. */
async function persistCost (storage: Storage, bytesWritten: () => number): Promise<{ bytes: number, ms: number }> {
  const room = new Room({ roomId: 'big', createStorage: () => storage, saveThrottleMs: 3_600_000 })
  await room.load()
  const session = room.handleSocketConnect({ socket: fakeSocket(), clientId: 'w', permissions: 'readwrite' })
  const seed: Record<string, unknown> = {}
  for (let i = 0; i < COMPONENTS; i++) seed[`e${i}/Shape`] = { _exists: true, x: i, y: i * 2, w: 100, h: 50, color: '#336699', label: `shape ${i}` }
  room.handleSocketMessage(session, JSON.stringify({ type: 'patch', messageId: 'seed', documentPatches: [seed] }))
  await room.flush()
  const bytes: number[] = []
  const times: number[] = []
  for (let i = 0; i < PATCHES; i++) {
    const before = bytesWritten()
    room.handleSocketMessage(session, JSON.stringify({ type: 'patch', messageId: `m${i}`, documentPatches: [{ [`e${i * 37}/Shape`]: { x: i, y: i } }] }))
    const start = process.hrtime.bigint()
    await room.flush()
    times.push(Number(process.hrtime.bigint() - start) / 1e6)
    bytes.push(bytesWritten() - before)
  }
  await room.close()
  return { bytes: median(bytes), ms: median(times) }
}

export async function storageBytes (): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'canvas-bench-'))
  try {
    const file = new FileStorage({ dir, roomId: 'big' })
    let fileBytes = 0
    const counted: Storage = {
      load: () => file.load(),
      save: async (snapshot) => {
        await file.save(snapshot)
        fileBytes += statSync(file.file).size
      }
    }
    const fileCost = await persistCost(counted, () => fileBytes)
    const sqlite = new SqliteStorage({ file: join(dir, 'bench.db') })
    const sqliteCost = await persistCost(sqlite.forRoom('big'), () => sqlite.bytesWritten)
    await sqlite.close()
    table(`Persisting one patch on a room of ${COMPONENTS.toLocaleString('en')} components (median of ${PATCHES})`, ['storage', 'bytes written', 'ms per write'], [
      ['FileStorage (full snapshot)', fileCost.bytes.toLocaleString('en'), fileCost.ms.toFixed(2)],
      ['SqliteStorage (changed keys)', sqliteCost.bytes.toLocaleString('en'), sqliteCost.ms.toFixed(2)],
      ['ratio file / sqlite', (fileCost.bytes / sqliteCost.bytes).toFixed(0) + 'x', (fileCost.ms / sqliteCost.ms).toFixed(1) + 'x']
    ])
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** One writer keeps `window` patches in flight for `seconds`; returns acked patches per second. */
async function writerThroughput (durability: Durability, window: number, seconds: number): Promise<number> {
  const server = await sqliteServer({ durability })
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/sync?roomId=bench&clientId=writer`)
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  let acked = 0
  let sent = 0
  const deadline = Date.now() + seconds * 1000
  const send = (): void => {
    const i = sent++
    ws.send(JSON.stringify({ type: 'patch', messageId: `m${i}`, documentPatches: [{ [`e${i % 500}/Shape`]: { _exists: true, x: i } }] }))
  }
  const start = process.hrtime.bigint()
  await new Promise<void>((resolve) => {
    ws.on('message', (data) => {
      if (!String(data).startsWith('{"type":"ack"')) return
      acked++
      if (Date.now() < deadline) send()
      else if (acked === sent) resolve()
    })
    for (let i = 0; i < window; i++) send()
  })
  const elapsed = Number(process.hrtime.bigint() - start) / 1e9
  ws.close()
  await server.close()
  return acked / elapsed
}

/** The plugin on a SqliteStorage in a temp folder, listening on 127.0.0.1; close() removes it all. */
async function sqliteServer (options: CanvasStoreOptions): Promise<{ port: number, close: () => Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'canvas-bench-'))
  const storage = new SqliteStorage({ file: join(dir, 'bench.db') })
  const app = Fastify()
  await app.register(canvasStore, { storage, rateLimit: false, ...options })
  await app.listen({ port: 0, host: '127.0.0.1' })
  return {
    port: (app.server.address() as { port: number }).port,
    close: async () => {
      await app.close()
      await storage.close()
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

export async function storageThroughput (): Promise<void> {
  const rounds = 3
  const rows: string[][] = []
  for (const window of [1, 32]) {
    const durable: number[] = []
    const throttled: number[] = []
    for (let r = 0; r < rounds; r++) {
      durable.push(await writerThroughput('durable', window, 3))
      throttled.push(await writerThroughput('throttled', window, 3))
    }
    const d = median(durable)
    const th = median(throttled)
    rows.push([String(window), Math.round(th).toLocaleString('en'), Math.round(d).toLocaleString('en'), (d / th).toFixed(2)])
  }
  table(`One writer on SqliteStorage (synchronous=FULL), patches acked per second, median of ${rounds} rounds of 3 s`, ['patches in flight', 'throttled', 'durable', 'durable / throttled'], rows)
}

/** ms of one small append (awaited, so one commit each) to key `keyOf(i)` of room `roomOf(i)`, for `count` writes: median, largest, how many over 10 ms. */
async function smallWrites (storage: SqliteStorage, count: number, roomOf: (i: number) => string, keyOf: (i: number) => string, first: number): Promise<{ median: number, max: number, slow: number }> {
  const times: number[] = []
  for (let i = 0; i < count; i++) {
    const key = keyOf(i)
    const start = process.hrtime.bigint()
    await storage.forRoom(roomOf(i)).append({ timestamp: first + i, entries: [{ key, value: { _exists: true, x: i }, stamps: { _exists: 1, x: first + i } }] })
    times.push(Number(process.hrtime.bigint() - start) / 1e6)
  }
  return { median: median(times), max: Math.max(...times), slow: times.filter((ms) => ms > 10).length }
}

/**
 * 200 rooms of 50 small keys in one SQLite file; small writes to them are
 * timed, then one room is given a 32 MiB key and they are timed again, in
 * that room and in the others. What a large value costs the writes that do
 * not touch it.
 */
export async function storageLargeKey (): Promise<void> {
  const ROOMS = 200
  const WRITES = 100
  const dir = mkdtempSync(join(tmpdir(), 'canvas-bench-'))
  const storage = new SqliteStorage({ file: join(dir, 'bench.db') })
  try {
    const rows: string[][] = []
    for (let r = 0; r < ROOMS; r++) {
      const entries = Array.from({ length: 50 }, (_, k) => ({ key: `e${k}/Shape`, value: { _exists: true, x: k, label: `shape ${k}` }, stamps: { _exists: 1, x: 1, label: 1 } }))
      await storage.forRoom(`room-${r}`).append({ timestamp: 1, entries })
    }
    const big = 'room-100'
    const others = (i: number): string => `room-${(i * 13) % ROOMS === 100 ? 101 : (i * 13) % ROOMS}`
    const row = (label: string, t: { median: number, max: number, slow: number }): string[] => [label, t.median.toFixed(2), t.max.toFixed(1), String(t.slow)]
    const anyKey = (i: number): string => `e${(i * 7) % 50}/Shape`
    rows.push(row('before: other rooms', await smallWrites(storage, WRITES, others, anyKey, 10)))
    rows.push(row('before: the room', await smallWrites(storage, WRITES, () => big, anyKey, 10)))
    const start = process.hrtime.bigint()
    await storage.forRoom(big).append({ timestamp: 1000, entries: [{ key: 'e25x/Blob', value: { _exists: true, data: 'x'.repeat(32 * 1024 * 1024) }, stamps: { _exists: 1000, data: 1000 } }] })
    const bigMs = Number(process.hrtime.bigint() - start) / 1e6
    rows.push(row('after: other rooms', await smallWrites(storage, WRITES, others, anyKey, 2000)))
    rows.push(row('after: the room', await smallWrites(storage, WRITES, () => big, anyKey, 2000)))
    table(`SqliteStorage (synchronous=FULL): one-key writes, each its own commit, ${WRITES} per row; the 32 MiB write took ${bigMs.toFixed(0)} ms`, ['writes to (every key of 50, twice)', 'ms p50', 'ms max', 'writes over 10 ms'], rows)
  } finally {
    await storage.close()
    rmSync(dir, { recursive: true, force: true })
  }
  await largeKeyOnServer()
}

interface BenchClient {
  ws: WebSocket
  write: (messageId: string, patch: Record<string, unknown>) => Promise<void>
}

async function benchClient (port: number, roomId: string): Promise<BenchClient> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/sync?roomId=${roomId}&clientId=${roomId}-writer`, { maxPayload: 256 * 1024 * 1024 })
  const acks = new Map<string, () => void>()
  await new Promise<void>((resolve, reject) => {
    ws.on('message', (data) => {
      const text = String(data)
      if (text.startsWith('{"type":"ack"')) {
        const { messageId } = JSON.parse(text) as { messageId: string }
        acks.get(messageId)?.()
        acks.delete(messageId)
      } else if (text.startsWith('{"type":"synced"')) {
        resolve()
      }
    })
    ws.once('open', () => ws.send(JSON.stringify({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 })))
    ws.once('error', reject)
  })
  return {
    ws,
    write: (messageId, patch) => new Promise((resolve) => {
      acks.set(messageId, resolve)
      ws.send(JSON.stringify({ type: 'patch', messageId, documentPatches: [patch] }))
    })
  }
}

/**
 * A server on SqliteStorage (durable acks). Room `big` holds a 48 MiB key;
 * room `other` writes one key every 50 ms for 5 s, and the latency of each
 * ack is taken from when the write was due (the clients share the server's
 * process, so a stalled event loop delays the sends too). Once with the key
 * left alone, once with one of its fields changed ten times a second.
 */
async function largeKeyOnServer (): Promise<void> {
  const server = await sqliteServer({ maxPayload: 16 * 1024 * 1024 })
  const big = await benchClient(server.port, 'big')
  const other = await benchClient(server.port, 'other')
  const keys = (n: number): Record<string, unknown> => Object.fromEntries(Array.from({ length: n }, (_, i) => [`e${i}/Shape`, { _exists: true, x: i }]))
  await other.write('seed', keys(200))
  await big.write('seed', keys(200))
  for (let i = 0; i < 8; i++) await big.write(`blob${i}`, { 'e100x/Blob': { _exists: true, [`part${i}`]: 'y'.repeat(6 * 1024 * 1024) } })
  const rows: string[][] = []
  for (const changing of [false, true]) {
    let n = 0
    const attack = changing
      ? setInterval(() => big.ws.send(JSON.stringify({ type: 'patch', messageId: `change${n++}`, documentPatches: [{ 'e100x/Blob': { small: n } }] })), 100)
      : undefined
    const latencies: number[] = []
    const acked: Array<Promise<void>> = []
    const start = performance.now()
    for (let i = 0; i < 100; i++) {
      const due = start + i * 50
      const wait = due - performance.now()
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))
      acked.push(other.write(`w${changing ? 1 : 0}-${i}`, { [`e${i % 200}/Shape`]: { x: i } }).then(() => { latencies.push(performance.now() - due) }))
    }
    await Promise.all(acked)
    clearInterval(attack)
    latencies.sort((a, b) => a - b)
    rows.push([changing ? 'changed 10 times a second' : 'left alone', latencies[49].toFixed(1), latencies[98].toFixed(0), latencies[99].toFixed(0)])
  }
  big.ws.close()
  other.ws.close()
  await server.close()
  table('A server on SqliteStorage: another room\'s ack latency (ms, 100 writes 50 ms apart) while one room holds a 48 MiB key', ['the 48 MiB key', 'p50', 'p99', 'max'], rows)
}
