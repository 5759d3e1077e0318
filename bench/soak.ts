/**
 * Soak (`npm run bench -- soak`): 2,000 sessions across 500 rooms for
 * SOAK_SECONDS (default 300), 1% of them misbehaving: oversized frames,
 * garbage and hostile frames, floods over the rate limit, and clients that
 * never answer pings. Checks that the server process stays up, that
 * well-behaved sessions lose no ack and no broadcast, and that the server's
 * memory returns to within 10% of its starting value once every session has
 * left and every room has unloaded. Server on 127.0.0.1; every loop is
 * bounded in count and time.
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import WebSocket from 'ws'
import { table } from './util.js'

const here = dirname(fileURLToPath(import.meta.url))
const ROOMS = Number(process.env.SOAK_ROOMS ?? 500)
const PER_ROOM = 4
const SECONDS = Number(process.env.SOAK_SECONDS ?? 300)
const BAD_EVERY = 100 // 1% of the sessions misbehave

function rssMb (pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmRSS:'))
  return Number(line?.split(/\s+/)[1] ?? 0) / 1024
}

const until = async (what: string, check: () => boolean, ms: number): Promise<void> => {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`soak: timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

interface Good {
  ws: WebSocket
  room: number
  id: string
  sent: number
  acked: number
  /** Highest sequence received from each roommate. */
  seen: Map<string, number>
  closedUnexpectedly: boolean
}

export async function soak (): Promise<void> {
  const server = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', join(here, 'servers', 'plugin.ts')], {
    env: { ...process.env, IDLE_TIMEOUT_MS: '2000' },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const lines = createInterface({ input: server.stdout! })
  const [line] = await once(lines, 'line') as [string]
  const base = `ws://127.0.0.1:${JSON.parse(line).port}/sync`
  const state = { serverExited: false }
  server.once('exit', () => { state.serverExited = true })
  const gc = async (): Promise<void> => {
    server.kill('SIGUSR2')
    await new Promise((resolve) => setTimeout(resolve, 500))
  }
  await gc()
  const rssStart = rssMb(server.pid!)

  const good: Good[] = []
  const bad: WebSocket[] = []
  let badCloses = 0
  let stopping = false
  const openGood = (room: number, id: string): Promise<Good> => new Promise((resolve, reject) => {
    const ws = new WebSocket(`${base}?roomId=soak-${room}&clientId=${id}`)
    const g: Good = { ws, room, id, sent: 0, acked: 0, seen: new Map(), closedUnexpectedly: false }
    ws.on('message', (data) => {
      const frame = JSON.parse(String(data))
      if (frame.type === 'ack') g.acked++
      if (frame.type === 'patch' && frame.documentPatches !== undefined && frame.clientId !== '') {
        const value = frame.documentPatches[0][`e-${frame.clientId}/Item`]
        if (value !== undefined) g.seen.set(frame.clientId, Math.max(g.seen.get(frame.clientId) ?? 0, value.seq))
      }
    })
    ws.on('close', () => { if (!stopping) g.closedUnexpectedly = true })
    ws.once('open', () => {
      ws.send(JSON.stringify({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 }))
      resolve(g)
    })
    ws.once('error', reject)
  })
  /** A misbehaving client of one of four kinds; it comes back after being closed. */
  const openBad = (room: number, n: number): void => {
    if (stopping) return
    const kind = n % 4
    const ws = new WebSocket(`${base}?roomId=soak-${room}&clientId=bad-${n}`, { autoPong: kind !== 3 })
    bad.push(ws)
    let timer: NodeJS.Timeout | undefined
    ws.on('error', () => {})
    ws.on('close', () => {
      clearInterval(timer)
      badCloses++
      if (!stopping) setTimeout(() => openBad(room, n), 1000)
    })
    ws.once('open', () => {
      timer = setInterval(() => {
        if (ws.readyState !== WebSocket.OPEN) return
        if (kind === 0) ws.send('x'.repeat(2 * 1024 * 1024)) // over maxPayload
        if (kind === 1) for (let i = 0; i < 5; i++) ws.send(['{not json', '[]', '{"type":"patch","messageId":5}', '{"type":"patch","messageId":"m","documentPatches":[{"__proto__":{"polluted":1}}]}', '{"type":"hack"}'][i])
        if (kind === 2) for (let i = 0; i < 100; i++) ws.send(JSON.stringify({ type: 'patch', messageId: `f${i}`, ephemeralPatches: [{ flood: { _exists: true, i } }] }))
      }, kind === 0 ? 5000 : 100)
    })
  }

  let n = 0
  for (let room = 0; room < ROOMS; room++) {
    for (let k = 0; k < PER_ROOM; k++) {
      if (++n % BAD_EVERY === 0) openBad(room, n)
      else good.push(await openGood(room, `g${n}`))
    }
  }
  const rssLoaded = rssMb(server.pid!)

  // Well-behaved writers: a document patch every 2 s each, spread over time.
  const writer = setInterval(() => {
    for (let i = 0; i < good.length; i += 1) {
      const g = good[(Date.now() / 10 + i) % good.length | 0]
      if (Math.random() > 0.05 || g.ws.readyState !== WebSocket.OPEN) continue
      g.sent++
      g.ws.send(JSON.stringify({ type: 'patch', messageId: `${g.id}-${g.sent}`, documentPatches: [{ [`e-${g.id}/Item`]: { _exists: true, seq: g.sent } }] }))
    }
  }, 100)
  const end = Date.now() + SECONDS * 1000
  let rssPeak = rssLoaded
  while (Date.now() < end && !state.serverExited) {
    await new Promise((resolve) => setTimeout(resolve, 1000))
    rssPeak = Math.max(rssPeak, rssMb(server.pid!))
  }
  clearInterval(writer)
  stopping = true
  const alive = !state.serverExited
  // Let the last acks and broadcasts arrive.
  await until('the last acks', () => good.every((g) => g.acked >= g.sent || g.closedUnexpectedly), 30_000).catch(() => {})
  await new Promise((resolve) => setTimeout(resolve, 1000))

  let lostAcks = 0
  let lostBroadcasts = 0
  for (const g of good) {
    lostAcks += Math.max(0, g.sent - g.acked)
    for (const other of good) {
      if (other.room !== g.room || other === g || other.sent === 0) continue
      if ((g.seen.get(other.id) ?? 0) !== other.sent) lostBroadcasts++
    }
  }
  const unexpected = good.filter((g) => g.closedUnexpectedly).length

  for (const g of good) g.ws.close()
  for (const b of bad) b.terminate()
  // Rooms unload 2 s after their last session leaves; then let V8 collect and give memory back.
  await new Promise((resolve) => setTimeout(resolve, 5000))
  for (let i = 0; i < 5; i++) await gc()
  const rssEnd = rssMb(server.pid!)
  server.kill('SIGTERM')
  await once(server, 'exit')

  table(`soak: ${ROOMS * PER_ROOM} sessions in ${ROOMS} rooms for ${SECONDS} s, 1% misbehaving (oversized frames, garbage, floods, no pongs)`, ['metric', 'value'], [
    ['server process stayed up', alive ? 'yes' : 'NO'],
    ['well-behaved sessions', String(good.length)],
    ['patches sent by them', good.reduce((s, g) => s + g.sent, 0).toLocaleString('en')],
    ['acks lost', String(lostAcks)],
    ['final broadcasts missing (receiver x roommate)', String(lostBroadcasts)],
    ['well-behaved sessions closed by the server', String(unexpected)],
    ['misbehaving sessions closed by the server (they come back)', String(badCloses)],
    ['server RSS at start (MB)', rssStart.toFixed(1)],
    ['server RSS with every session connected (MB)', rssLoaded.toFixed(1)],
    ['server RSS peak (MB)', rssPeak.toFixed(1)],
    ['server RSS after every session left and rooms unloaded (MB)', rssEnd.toFixed(1)],
    ['after / start', `${(rssEnd / rssStart).toFixed(2)}x`]
  ])
}
