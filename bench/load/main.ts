/**
 * The load generator: one child process per run, started by bench/sync.ts
 * with a JSON config as its only argument. It drives one scenario against a
 * server already listening on 127.0.0.1 (loopback only), samples that
 * server's CPU time and RSS from /proc, and prints one JSON line:
 * `{"metrics":{...}}`. Every loop is bounded in count and time.
 */
import { monitorEventLoopDelay, performance } from 'node:perf_hooks'
import { Deliveries } from './deliveries.js'
import { connectAll, inBatches, marker, nowMicros, Peer, type PeerOptions, Samples, scanMarkers, shape, sleep, withTimeout } from './peer.js'
import { cpuMs, cpuSplitMs, rssMb } from './proc.js'
import { median } from '../util.js'

export interface LoadConfig {
  scenario: string
  server: 'plugin' | 'reference' | 'raw'
  port: number
  /** The server's process id, for /proc sampling and SIGUSR2 (GC). */
  pid: number
  /** Length of the timed window of the steady-load scenarios (s). */
  seconds: number
  /** Multiplies the send rate of the steady-load scenarios (BENCH_RATE). */
  rate: number
  /** Whether the server acks patches. */
  acks: boolean
  /** The server's idle timeout (ms), for the memory scenario. */
  idleTimeoutMs: number
  /** Rooms of the memory scenario. */
  memoryRooms: number
}

export type Metrics = Record<string, number>

/** Unmeasured load before each timed window, so that both servers are warmed up (JIT, buffers). */
const WARMUP_MS = 2_000
/** Longest wait for the warm-up's backlog to arrive. */
const SETTLE_MAX_MS = 15_000
/** Longest wait, after the last send, for outstanding deliveries and acks. */
const DRAIN_MAX_MS = 15_000
/** A drain that saw nothing arrive for this long gives up: what is missing is lost. */
const DRAIN_STALL_MS = 3_000

const cfg = JSON.parse(process.argv[2] ?? '{}') as LoadConfig
const options: PeerOptions = { port: cfg.port, acks: cfg.acks }

function range (n: number): number[] {
  return Array.from({ length: n }, (_, i) => i)
}

function gcServer (): void {
  try {
    process.kill(cfg.pid, 'SIGUSR2')
  } catch {
    // the server is gone: the next /proc read reports it
  }
}

async function closeAll (peers: Peer[]): Promise<void> {
  await inBatches(peers, 1000, (peer) => peer.close(5_000))
}

function unexpectedCloses (peers: Peer[]): number {
  return peers.reduce((sum, peer) => sum + peer.unexpectedCloses, 0)
}

/** Keys of the document patches in a peer's kept patch frames (after the timed part). */
function documentKeys (frames: Buffer[]): number {
  const keys = new Set<string>()
  for (const frame of frames) {
    const parsed = JSON.parse(frame.toString('utf8')) as { documentPatches?: Array<Record<string, unknown>> }
    for (const patch of parsed.documentPatches ?? []) for (const key of Object.keys(patch)) keys.add(key)
  }
  return keys.size
}

function framesReceived (peers: Peer[]): number {
  let frames = 0
  for (const peer of peers) frames += peer.frames
  return frames
}

/** Waits until no frame has arrived for 300 ms (at most `maxMs`). */
async function settle (peers: Peer[], maxMs: number): Promise<void> {
  const start = performance.now()
  let last = framesReceived(peers)
  let quietSince = performance.now()
  while (performance.now() - start < maxMs) {
    await sleep(50)
    const now = framesReceived(peers)
    if (now !== last) {
      last = now
      quietSince = performance.now()
    } else if (performance.now() - quietSince >= 300) {
      return
    }
  }
}

/** A sender late by more than this many periods skips the excess instead of catching up (counted as skipped). */
const MAX_CATCH_UP = 3

/**
 * Calls `send(seq)` every `period` ms from `first` until `endAt`, seq from 1,
 * at most `maxSeq` times. A late timer (the generator's loop was busy) sends
 * what is due, up to MAX_CATCH_UP in a row, so that the offered load stays
 * the same whatever the server; beyond that it skips ahead.
 * @returns how many sends were skipped
 */
function runSender (first: number, period: number, endAt: number, maxSeq: number, send: (seq: number) => void): Promise<number> {
  return new Promise((resolve) => {
    let seq = 0
    let next = first
    let skipped = 0
    const tick = (): void => {
      const now = performance.now()
      if (now >= endAt || seq >= maxSeq) {
        resolve(skipped)
        return
      }
      for (let burst = 0; now >= next && burst < MAX_CATCH_UP && seq < maxSeq && next < endAt; burst++) {
        send(++seq)
        next += period
      }
      if (next <= now) {
        const behind = Math.floor((now - next) / period) + 1
        skipped += behind
        next += behind * period
      }
      setTimeout(tick, Math.max(0, next - performance.now()))
    }
    setTimeout(tick, Math.max(0, first - performance.now()))
  })
}

interface WindowSpec {
  peers: Peer[]
  /** Peers' indexes per room. */
  groups: number[][]
  senders: Peer[]
  hz: number
  seconds: number
  /** The text of one patch frame; must carry `marker(sender.index, seq, micros)` and messageId `<idPrefix><seq>:<micros>`. */
  frame: (sender: Peer, seq: number, micros: number, idPrefix: string) => string
}

/** Steady load: senders at `hz` for `seconds`, then a bounded drain; deliveries, latency, acks, server CPU. */
async function runWindow (spec: WindowSpec): Promise<Metrics> {
  const { peers, senders, seconds } = spec
  const hz = spec.hz * cfg.rate
  const period = 1000 / hz
  const maxSeq = Math.ceil(hz * seconds) + 2
  // Warm-up: the same load, sequence number 0 (ignored by the accounting), messageIds `w...` (not timed);
  // then wait (bounded) until what it caused has arrived, so the timed window starts from an empty pipe.
  const warmEnd = performance.now() + WARMUP_MS
  await Promise.all(senders.map((sender, k) => runSender(performance.now() + (k / senders.length) * period, period, warmEnd, Number.MAX_SAFE_INTEGER, () => {
    sender.send(spec.frame(sender, 0, nowMicros(), 'w'))
  })))
  await settle(peers, SETTLE_MAX_MS)
  const deliveries = new Deliveries(spec.groups, peers.length, maxSeq)
  const ackLatency = new Samples()
  let acked = 0
  for (const peer of peers) {
    peer.resetCounters()
    const receiver = peer.index
    peer.onPatch = (data) => {
      const now = nowMicros()
      let measured = false
      scanMarkers(data, (sender, seq, micros) => {
        if (deliveries.record(receiver, sender, seq, micros, now)) measured = true
      })
      if (measured) deliveries.frames++
    }
    peer.onAck = (messageId) => {
      if (messageId.charCodeAt(0) !== 109) return // 'm': measured sends only
      acked++
      ackLatency.push((nowMicros() - Number(messageId.slice(messageId.indexOf(':') + 1))) / 1000)
    }
  }
  let sent = 0
  const loopDelay = monitorEventLoopDelay({ resolution: 10 })
  loopDelay.enable()
  const split0 = cpuSplitMs(cfg.pid)
  const cpu0 = split0.user + split0.system
  const load0 = process.cpuUsage()
  const t0 = performance.now()
  const endAt = t0 + seconds * 1000
  const skipped = await Promise.all(senders.map((sender, k) => runSender(t0 + (k / senders.length) * period, period, endAt, maxSeq, (seq) => {
    const micros = nowMicros()
    sender.send(spec.frame(sender, seq, micros, 'm'))
    deliveries.lastSeq[sender.index] = seq
    sent++
  })))
  const sendEnd = performance.now()

  let lastProgressAt = sendEnd
  let lastSeen = -1
  while (performance.now() - sendEnd < DRAIN_MAX_MS) {
    await sleep(50)
    const now = performance.now()
    const seen = framesReceived(peers)
    if (seen !== lastSeen) {
      lastSeen = seen
      lastProgressAt = now
    }
    const acksDone = !cfg.acks || acked >= sent
    if (acksDone && deliveries.finalMissing() === 0 && (deliveries.unique >= deliveries.expected() || now - lastProgressAt > 500)) break
    if (now - lastProgressAt > DRAIN_STALL_MS) break
  }
  const end = performance.now()
  const split1 = cpuSplitMs(cfg.pid)
  const cpu = split1.user + split1.system - cpu0
  const load = process.cpuUsage(load0)
  loopDelay.disable()
  for (const peer of peers) {
    peer.onPatch = null
    peer.onAck = null
  }
  const wallMs = end - t0
  const expected = deliveries.expected()
  const [p50, p99] = deliveries.latency.percentiles(50, 99)
  const [ack50, ack99] = ackLatency.percentiles(50, 99)
  return {
    sentPerSec: sent / seconds,
    deliveredPerSec: deliveries.unique / seconds,
    framesPerSec: deliveries.frames / seconds,
    lostValues: expected - deliveries.unique,
    finalMissing: deliveries.finalMissing(),
    duplicates: deliveries.duplicates,
    outOfOrder: deliveries.outOfOrder,
    latencyP50: p50,
    latencyP99: p99,
    ackP50: cfg.acks ? ack50 : Number.NaN,
    ackP99: cfg.acks ? ack99 : Number.NaN,
    unacked: cfg.acks ? sent - acked : Number.NaN,
    serverCpuPct: (cpu / wallMs) * 100,
    serverCpuPer1kSent: (cpu / sent) * 1000,
    serverUserPer1kSent: ((split1.user - split0.user) / sent) * 1000,
    serverSystemPer1kSent: ((split1.system - split0.system) / sent) * 1000,
    serverRssMb: rssMb(cfg.pid),
    loadCpuPct: ((load.user + load.system) / 1000 / wallMs) * 100,
    loadLoopDelayP99: loopDelay.percentile(99) / 1e6,
    skippedSends: skipped.reduce((a, b) => a + b, 0),
    drainMs: end - sendEnd,
    unexpectedCloses: unexpectedCloses(peers)
  }
}

function documentFrame (sender: Peer, seq: number, micros: number, idPrefix: string): string {
  const i = sender.index
  return `{"type":"patch","messageId":"${idPrefix}${seq}:${micros}","documentPatches":[{"e${i}/Shape":{"x":${seq},"y":${seq * 2},"bm":"${marker(i, seq, micros)}"}}]}`
}

function presenceFrame (sender: Peer, seq: number, micros: number, idPrefix: string): string {
  const i = sender.index
  return `{"type":"patch","messageId":"${idPrefix}${seq}:${micros}","ephemeralPatches":[{"c${i}/Cursor":{"x":${seq % 1920},"y":${(seq * 7) % 1080},"bm":"${marker(i, seq, micros)}"}}]}`
}

/** 1 room, 50 clients, 10 of them writing a document patch at 20 Hz. */
async function fanout (): Promise<Metrics> {
  const peers = range(50).map((i) => new Peer(i, 'fanout', `c${i}`, options))
  await connectAll(peers, 25)
  const writers = peers.slice(0, 10)
  await Promise.all(writers.map((w) => w.write({ documentPatches: [{ [`e${w.index}/Shape`]: { ...shape(w.index), bm: marker(w.index, 0, 0) } }] })))
  await sleep(500)
  const metrics = await runWindow({ peers, groups: [range(peers.length)], senders: writers, hz: 20, seconds: cfg.seconds, frame: documentFrame })
  await closeAll(peers)
  return metrics
}

/** 1 room, 100 clients, each sending its cursor (ephemeral) at 30 Hz. */
async function cursors (): Promise<Metrics> {
  const peers = range(100).map((i) => new Peer(i, 'cursors', `c${i}`, options))
  await connectAll(peers, 25)
  await Promise.all(peers.map((p) => p.write({ ephemeralPatches: [{ [`c${p.index}/Cursor`]: { _exists: true, x: 0, y: 0, bm: marker(p.index, 0, 0) } }] })))
  await sleep(500)
  const metrics = await runWindow({ peers, groups: [range(peers.length)], senders: peers, hz: 30, seconds: cfg.seconds, frame: presenceFrame })
  await closeAll(peers)
  return metrics
}

/** 500 rooms x 4 clients, every client writing a document patch at 2 Hz. */
async function rooms (): Promise<Metrics> {
  const ROOMS = 500
  const PER_ROOM = 4
  const peers = range(ROOMS * PER_ROOM).map((i) => new Peer(i, `r${Math.floor(i / PER_ROOM)}`, `c${i}`, options))
  await connectAll(peers, 100)
  await inBatches(peers, 200, (p) => p.write({ documentPatches: [{ [`e${p.index}/Shape`]: { ...shape(p.index), bm: marker(p.index, 0, 0) } }] }))
  await sleep(500)
  const groups = range(ROOMS).map((r) => range(PER_ROOM).map((k) => r * PER_ROOM + k))
  const metrics = await runWindow({ peers, groups, senders: peers, hz: 2, seconds: cfg.seconds, frame: documentFrame })
  await closeAll(peers)
  return metrics
}

const LARGE = 20_000
const SEED_CHUNK = 1_000

/** Seeds `roomId` with LARGE components through `seeder`, in frames of SEED_CHUNK components (under the plugin's 1 MiB frame limit). */
async function seedLarge (seeder: Peer): Promise<void> {
  for (let start = 0; start < LARGE; start += SEED_CHUNK) {
    const patch: Record<string, unknown> = {}
    for (let i = start; i < Math.min(LARGE, start + SEED_CHUNK); i++) patch[`e${i}/Shape`] = shape(i)
    await seeder.write({ documentPatches: [patch] })
  }
}

/** A room of 20,000 components, then 50 clients join at once with lastTimestamp 0: time until all are synced. */
async function joinLarge (): Promise<Metrics> {
  const seeder = new Peer(0, 'big', 'seeder', options)
  await seeder.connect(0)
  await seedLarge(seeder)
  await sleep(300)
  const joiners = range(50).map((i) => new Peer(i + 1, 'big', `j${i}`, options))
  for (const joiner of joiners) joiner.keptPatches = []
  const rssBefore = rssMb(cfg.pid)
  const cpu0 = cpuMs(cfg.pid)
  const t0 = performance.now()
  const times = await Promise.all(joiners.map(async (joiner) => {
    await joiner.connect(0, 120_000)
    return performance.now() - t0
  }))
  const allMs = performance.now() - t0
  const cpu = cpuMs(cfg.pid) - cpu0
  const rssAfter = rssMb(cfg.pid)
  const keys = joiners.map((joiner) => documentKeys(joiner.keptPatches ?? []))
  const metrics: Metrics = {
    allSyncedMs: allMs,
    medianClientMs: median(times),
    mbPerJoiner: median(joiners.map((j) => j.bytes)) / 1024 / 1024,
    minKeys: Math.min(...keys),
    serverCpuMs: cpu,
    rssBeforeMb: rssBefore,
    rssAfterMb: rssAfter,
    unexpectedCloses: unexpectedCloses([seeder, ...joiners])
  }
  await closeAll([seeder, ...joiners])
  return metrics
}

/** 1,000 clients in 10 rooms, all drop and reconnect at once with their lastTimestamp: time until all are synced. */
async function reconnectStorm (): Promise<Metrics> {
  const ROOMS = 10
  const PER_ROOM = 100
  const peers = range(ROOMS * PER_ROOM).map((i) => new Peer(i, `s${Math.floor(i / PER_ROOM)}`, `c${i}`, options))
  await connectAll(peers, 100)
  await inBatches(peers, 100, (p) => p.write({ documentPatches: [{ [`e${p.index}/Shape`]: shape(p.index) }] }))
  await sleep(1000)
  const cpu0 = cpuMs(cfg.pid)
  const t0 = performance.now()
  const times = await Promise.all(peers.map(async (peer) => {
    peer.drop()
    peer.resetCounters()
    await peer.connect(peer.timestamp, 120_000)
    return performance.now() - t0
  }))
  const allMs = performance.now() - t0
  const cpuSynced = cpuMs(cfg.pid) - cpu0
  const framesPerClient = peers.reduce((sum, p) => sum + p.frames, 0) / peers.length
  await sleep(1000)
  const cpuSettled = cpuMs(cfg.pid) - cpu0
  const sorted = [...times].sort((a, b) => a - b)
  const metrics: Metrics = {
    allSyncedMs: allMs,
    p50ClientMs: sorted[Math.floor(sorted.length * 0.5)],
    p99ClientMs: sorted[Math.floor(sorted.length * 0.99)],
    framesPerClient,
    serverCpuMs: cpuSynced,
    serverCpuSettledMs: cpuSettled,
    serverRssMb: rssMb(cfg.pid),
    unexpectedCloses: unexpectedCloses(peers)
  }
  await closeAll(peers)
  return metrics
}

/** A room of 20,000 components; a client that saw everything leaves, 10 changes happen, it comes back: time and bytes until synced. */
async function reconnectLarge (): Promise<Metrics> {
  const ITERATIONS = 20
  const CHANGES = 10
  const seeder = new Peer(0, 'big', 'seeder', options)
  await seeder.connect(0)
  await seedLarge(seeder)
  const client = new Peer(1, 'big', 'returning', options)
  await client.connect(0, 120_000)
  const connectMs: number[] = []
  const serverMs: number[] = []
  const bytes: number[] = []
  const keys: number[] = []
  let cpu = 0
  for (let it = 0; it < ITERATIONS; it++) {
    await client.close()
    await Promise.all(range(CHANGES).map((k) => seeder.write({ documentPatches: [{ [`e${((it * CHANGES + k) * 97) % LARGE}/Shape`]: { x: it, y: k } }] })))
    client.resetCounters()
    client.keptPatches = []
    const cpu0 = cpuMs(cfg.pid)
    const t0 = performance.now()
    await client.connect(client.timestamp, 60_000)
    const t1 = performance.now()
    cpu += cpuMs(cfg.pid) - cpu0
    connectMs.push(t1 - t0)
    serverMs.push(client.syncedAt - client.openedAt)
    bytes.push(client.bytes)
    keys.push(documentKeys(client.keptPatches))
    client.keptPatches = null
  }
  const metrics: Metrics = {
    connectToSyncedMs: median(connectMs),
    reconnectToSyncedMs: median(serverMs),
    bytesUntilSynced: median(bytes),
    diffKeys: median(keys),
    serverCpuMsPerReconnect: cpu / ITERATIONS,
    serverRssMb: rssMb(cfg.pid),
    unexpectedCloses: unexpectedCloses([seeder, client])
  }
  await closeAll([seeder, client])
  return metrics
}

/** How long the memory scenario waits after the rooms unloaded before it measures what is retained. */
const UNLOAD_SETTLE_MS = 20_000

/** 10,000 rooms of 100 components (one client each seeds, then stays): RSS per room; then all leave and the rooms unload: RSS after. */
async function memory (): Promise<Metrics> {
  const ROOMS = cfg.memoryRooms
  const COMPONENTS = 100
  gcServer()
  await sleep(500)
  const rss0 = rssMb(cfg.pid)
  const peers = range(ROOMS).map((i) => new Peer(i, `m${i}`, `c${i}`, options))
  const cpu0 = cpuMs(cfg.pid)
  const t0 = performance.now()
  await inBatches(peers, 200, async (peer) => {
    await peer.connect(0)
    const patch: Record<string, unknown> = {}
    for (let k = 0; k < COMPONENTS; k++) patch[`e${k}/Shape`] = shape(peer.index * COMPONENTS + k)
    await peer.write({ documentPatches: [patch] })
  })
  const loadS = (performance.now() - t0) / 1000
  const cpuLoad = cpuMs(cfg.pid) - cpu0
  // Let the throttled saves happen (both servers run with SAVE_THROTTLE_MS=1000), then measure.
  await sleep(2500)
  gcServer()
  await sleep(1000)
  const rss1 = rssMb(cfg.pid)
  const closes = unexpectedCloses(peers)
  await closeAll(peers)
  await sleep(cfg.idleTimeoutMs + 3000)
  gcServer()
  await sleep(1000)
  const rssEarly = rssMb(cfg.pid)
  // V8 hands freed heap pages back to the system only once its memory reducer
  // has run (about 8 s after the heap goes quiet): measure what is retained after that.
  await sleep(UNLOAD_SETTLE_MS)
  gcServer()
  await sleep(1000)
  const rss2 = rssMb(cfg.pid)
  return {
    rssBaselineMb: rss0,
    rssLoadedMb: rss1,
    kbPerRoom: ((rss1 - rss0) * 1024) / ROOMS,
    rssEarlyMb: rssEarly,
    rssAfterUnloadMb: rss2,
    retainedMb: rss2 - rss0,
    retainedRatio: rss2 / rss0,
    loadSeconds: loadS,
    serverCpuLoadS: cpuLoad / 1000,
    unexpectedCloses: closes
  }
}

const scenarios: Record<string, () => Promise<Metrics>> = {
  fanout,
  cursors,
  rooms,
  'join-large': joinLarge,
  'reconnect-storm': reconnectStorm,
  'reconnect-large': reconnectLarge,
  memory
}

const run = scenarios[cfg.scenario]
if (run === undefined) {
  console.error(`load: unknown scenario ${cfg.scenario}`)
  process.exit(2)
}
try {
  const metrics = await withTimeout(run(), 15 * 60_000, `scenario ${cfg.scenario}`)
  process.stdout.write(JSON.stringify({ metrics }) + '\n')
  process.exit(0)
} catch (err) {
  console.error(`load (${cfg.scenario} on ${cfg.server}):`, err)
  process.exit(1)
}
