/**
 * Storage benchmarks (issue: durable storage).
 *
 *   npm run bench -- storage-bytes       bytes and time per persisted patch on a 20,000-component room
 *   npm run bench -- storage-throughput  patches/s of one writer: durable acks vs throttled
 *
 * Medians of several rounds; everything on 127.0.0.1 and in a temp folder.
 */
import Fastify from 'fastify'
import { mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import WebSocket from 'ws'
import canvasStore, { FileStorage, Room, SqliteStorage, type Durability, type Storage } from '../lib/index.js'
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
  const dir = mkdtempSync(join(tmpdir(), 'canvas-bench-'))
  const storage = new SqliteStorage({ file: join(dir, 'bench.db') })
  const app = Fastify()
  await app.register(canvasStore, { storage, durability, rateLimit: false })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const ws = new WebSocket(`ws://127.0.0.1:${port}/sync?roomId=bench&clientId=writer`)
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
  await app.close()
  await storage.close()
  rmSync(dir, { recursive: true, force: true })
  return acked / elapsed
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
