import t from 'tap'
import { Room, type RoomOptions } from '../lib/index.js'
import { resolveOptions } from '../lib/options.js'
import { CatchUpAllowance } from '../lib/room/catch-up.js'

interface FakeSocket {
  sent: any[]
  closes: Array<[number | undefined, string | undefined]>
  terminated: number
  readyState: number
  /** Set by the test: what the slow-client policy reads. */
  bufferedAmount: number
  send (data: string): void
  close (code?: number, reason?: string): void
  terminate?: () => void
}

/** A socket double that records what the room sends, synchronously, with a settable bufferedAmount. */
function fakeSocket ({ terminate = true } = {}): FakeSocket {
  const socket: FakeSocket = {
    sent: [],
    closes: [],
    terminated: 0,
    readyState: 1,
    bufferedAmount: 0,
    send (data: string) { this.sent.push(JSON.parse(data)) },
    close (code?: number, reason?: string) { this.closes.push([code, reason]); this.readyState = 3 }
  }
  if (terminate) socket.terminate = function () { this.terminated++; this.readyState = 3 }
  return socket
}

const SOFT = 1000
const HARD = 10_000
const options: RoomOptions = { roomId: 'r', rateLimit: false, slowClient: { softBytes: SOFT, hardBytes: HARD } }

/** A room with readwrite sessions a, b, c, ...; every socket's record is cleared after the joins. */
function setup (clients: string[], socketOptions: Record<string, { terminate?: boolean }> = {}) {
  const room = new Room(options)
  const sockets: Record<string, FakeSocket> = {}
  const ids: Record<string, string> = {}
  for (const client of clients) {
    sockets[client] = fakeSocket(socketOptions[client])
    ids[client] = room.handleSocketConnect({ socket: sockets[client], clientId: client, permissions: 'readwrite' })
  }
  for (const socket of Object.values(sockets)) socket.sent.length = 0
  let n = 0
  const send = (client: string, frame: { documentPatches?: unknown[], ephemeralPatches?: unknown[] }): string => {
    const messageId = `m${++n}`
    room.handleSocketMessage(ids[client], JSON.stringify({ type: 'patch', messageId, ...frame }))
    return messageId
  }
  const clear = (): void => { for (const socket of Object.values(sockets)) socket.sent.length = 0 }
  return { room, sockets, ids, send, clear }
}

t.test('above softBytes: presence-only broadcasts to the slow session are dropped; document broadcasts and acks still go', async (t) => {
  const { room, sockets: { a, b }, send } = setup(['a', 'b'])
  a.bufferedAmount = SOFT + 1

  send('b', { ephemeralPatches: [{ 'cursor/b': { _exists: true, x: 1 } }] })
  send('b', { ephemeralPatches: [{ 'cursor/b': { x: 2 } }] })
  t.strictSame(a.sent, [], 'presence-only frames dropped')

  send('b', { documentPatches: [{ k: { _exists: true, v: 1 } }] })
  t.strictSame(a.sent, [{ type: 'patch', clientId: 'b', documentPatches: [{ k: { _exists: true, v: 1 } }], timestamp: 1 }], 'a document broadcast is sent')
  send('b', { documentPatches: [{ k: { v: 2 } }], ephemeralPatches: [{ 'cursor/b': { x: 3 } }] })
  t.strictSame(a.sent[1], { type: 'patch', clientId: 'b', documentPatches: [{ k: { v: 2 } }], timestamp: 2, ephemeralPatches: [{ 'cursor/b': { x: 3 } }] }, 'presence riding with document patches is sent too')

  a.sent.length = 0
  const id = send('a', { documentPatches: [{ j: { _exists: true } }] })
  t.strictSame(a.sent, [{ type: 'ack', messageId: id, timestamp: 3 }], 'the slow session\'s own ack is sent')
  const eph = send('a', { ephemeralPatches: [{ 'cursor/a': { _exists: true } }] })
  t.strictSame(a.sent[1], { type: 'ack', messageId: eph, timestamp: 3 }, 'also for a presence-only frame')

  t.equal(b.sent.filter((f) => f.type === 'ack').length, 4, 'the sender got every ack')
  t.equal(room.getSessionCount(), 2, 'soft limit: nobody closed')
  t.equal(a.closes.length + a.terminated, 0)
})

t.test('presence frames with deletions are never dropped', async (t) => {
  const { sockets: { a }, send } = setup(['a', 'b'])
  send('b', { ephemeralPatches: [{ 'cursor/b': { _exists: true }, 'sel/b': { _exists: true } }] })
  a.sent.length = 0
  a.bufferedAmount = SOFT + 1
  send('b', { ephemeralPatches: [{ 'sel/b': { _exists: false } }] })
  send('b', { ephemeralPatches: [{ 'cursor/b': { x: 1 }, 'hover/b': { _exists: false } }] })
  t.strictSame(a.sent, [
    { type: 'patch', clientId: 'b', ephemeralPatches: [{ 'sel/b': { _exists: false } }] },
    { type: 'patch', clientId: 'b', ephemeralPatches: [{ 'cursor/b': { x: 1 }, 'hover/b': { _exists: false } }] }
  ])
})

t.test('back under softBytes: the next frame is preceded by a fresh presence snapshot', async (t) => {
  const { sockets: { a }, send } = setup(['a', 'b', 'c'])
  send('b', { ephemeralPatches: [{ 'cursor/b': { _exists: true, x: 0 } }] })
  a.sent.length = 0
  a.bufferedAmount = SOFT + 1
  send('b', { ephemeralPatches: [{ 'cursor/b': { x: 1 } }] })
  send('b', { ephemeralPatches: [{ 'cursor/b': { x: 2 } }] })
  send('c', { ephemeralPatches: [{ 'cursor/c': { _exists: true, y: 1 } }] })
  send('a', { ephemeralPatches: [{ 'cursor/a': { _exists: true } }] })
  t.strictSame(a.sent.map((f) => f.type), ['ack'], 'only its own ack while slow')

  a.sent.length = 0
  a.bufferedAmount = SOFT
  send('b', { documentPatches: [{ k: { _exists: true } }] })
  t.strictSame(a.sent, [
    { type: 'patch', ephemeralPatches: [{ 'cursor/b': { _exists: true, x: 2 }, 'cursor/c': { _exists: true, y: 1 } }], clientId: '' },
    { type: 'patch', clientId: 'b', documentPatches: [{ k: { _exists: true } }], timestamp: 1 }
  ], 'the other clients\' current presence (not its own), then the frame')

  a.sent.length = 0
  send('b', { ephemeralPatches: [{ 'cursor/b': { x: 3 } }] })
  t.strictSame(a.sent, [{ type: 'patch', clientId: 'b', ephemeralPatches: [{ 'cursor/b': { x: 3 } }] }], 'once only: later frames come as usual')
})

t.test('back under softBytes: the snapshot also precedes the session\'s own ack', async (t) => {
  const { sockets: { a }, send } = setup(['a', 'b'])
  a.bufferedAmount = SOFT + 1
  send('b', { ephemeralPatches: [{ 'cursor/b': { _exists: true, x: 1 } }] })
  t.strictSame(a.sent, [])
  a.bufferedAmount = 0
  const id = send('a', { documentPatches: [{ k: { _exists: true } }] })
  t.strictSame(a.sent, [
    { type: 'patch', ephemeralPatches: [{ 'cursor/b': { _exists: true, x: 1 } }], clientId: '' },
    { type: 'ack', messageId: id, timestamp: 1 }
  ])
})

t.test('above hardBytes: the session is terminated and removed; the others get its tombstones and clientCount', async (t) => {
  const { room, sockets: { a, b, c }, send, clear } = setup(['a', 'b', 'c'])
  send('a', { ephemeralPatches: [{ 'cursor/a': { _exists: true } }] })
  clear()
  a.bufferedAmount = HARD + 1
  send('b', { documentPatches: [{ k: { _exists: true } }] })
  t.equal(a.terminated, 1, 'terminated')
  t.strictSame(a.closes, [], 'terminate, not close')
  t.strictSame(a.sent, [], 'the frame was not sent to it')
  t.equal(room.getSessionCount(), 3, 'removed once the frame being sent is out, not during it')
  await Promise.resolve()
  t.equal(room.getSessionCount(), 2, 'removed')
  for (const [name, socket] of [['b', b], ['c', c]] as const) {
    t.ok(socket.sent.some((f) => f.type === 'clientCount' && f.count === 2), `${name} got clientCount 2`)
    t.ok(socket.sent.some((f) => f.type === 'patch' && f.clientId === 'a' && f.ephemeralPatches?.[0]?.['cursor/a']?._exists === false), `${name} got a's presence tombstone`)
  }
  t.ok(c.sent.some((f) => f.type === 'patch' && f.clientId === 'b' && f.timestamp === 1), 'c still got the document broadcast')
  t.ok(b.sent.some((f) => f.type === 'ack'), 'b got its ack')

  clear()
  send('b', { documentPatches: [{ k: { v: 2 } }] })
  t.strictSame(a.sent, [], 'nothing more is sent to it')
  t.equal(a.terminated, 1)
})

t.test('above hardBytes, a socket without terminate() is closed with 4002', async (t) => {
  const { room, sockets: { a, b }, send } = setup(['a', 'b'], { a: { terminate: false } })
  a.bufferedAmount = HARD + 1
  send('b', { ephemeralPatches: [{ 'cursor/b': { _exists: true } }] })
  t.strictSame(a.closes, [[4002, 'Too slow: reconnect to catch up']])
  await Promise.resolve()
  t.equal(room.getSessionCount(), 1)
  t.ok(b.sent.some((f) => f.type === 'clientCount' && f.count === 1), 'b got clientCount 1')
})

t.test('one slow session never delays the others: they receive everything', async (t) => {
  const { room, sockets: { a, b, c }, send } = setup(['a', 'b', 'c'])
  b.bufferedAmount = SOFT + 1
  const expected: any[] = []
  for (let i = 0; i < 20; i++) {
    const frame = i % 2 === 0
      ? { ephemeralPatches: [{ 'cursor/a': i === 0 ? { _exists: true, x: i } : { x: i } }] }
      : { documentPatches: [{ [`k${i}`]: { _exists: true, v: i } }] }
    send('a', frame)
    expected.push({ type: 'patch', clientId: 'a', ...('documentPatches' in frame ? { documentPatches: frame.documentPatches, timestamp: (i + 1) / 2 } : frame) })
  }
  t.strictSame(c.sent, expected, 'c got every frame, in order, at once')
  t.equal(a.sent.filter((f) => f.type === 'ack').length, 20, 'a got every ack')
  t.equal(b.sent.length, 10, 'b got the document frames only')
  t.equal(room.getSessionCount(), 3)
})

t.test('with batched presence, a sender of the batch closed for being slow while the batch goes out leaves nobody with its presence', async (t) => {
  const room = new Room({ ...options, presenceBatching: true })
  const sockets = ['a', 'b', 'c'].map(() => fakeSocket())
  const ids = ['a', 'b', 'c'].map((clientId, i) => room.handleSocketConnect({ socket: sockets[i], clientId, permissions: 'readwrite' }))
  await new Promise((resolve) => setImmediate(resolve))
  for (const socket of sockets) socket.sent.length = 0
  room.handleSocketMessage(ids[0], JSON.stringify({ type: 'patch', messageId: 'm1', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 1 } }] }))
  room.handleSocketMessage(ids[1], JSON.stringify({ type: 'patch', messageId: 'm2', ephemeralPatches: [{ 'cursor/b': { _exists: true, x: 2 } }] }))
  // a is first in line for the batch, and is closed by it: b and c get the batch (with a's cursor) after a's tombstones.
  sockets[0].bufferedAmount = HARD + 1
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(sockets[0].terminated, 1, 'a was cut')
  const state = (socket: FakeSocket): Record<string, unknown> => {
    const cursors: Record<string, unknown> = {}
    for (const frame of socket.sent) {
      for (const patch of frame.ephemeralPatches ?? []) {
        for (const [key, value] of Object.entries(patch as Record<string, { _exists?: boolean }>)) {
          if (value._exists === false) delete cursors[key]
          else cursors[key] = { ...(cursors[key] as object), ...value }
        }
      }
    }
    return cursors
  }
  t.same(state(sockets[1]), {}, 'b: a\'s cursor is gone in the end')
  t.same(state(sockets[2]), { 'cursor/b': { _exists: true, x: 2 } }, 'c: only b\'s cursor')
  t.same(sockets[2].sent.at(-1), { type: 'patch', ephemeralPatches: [{ 'cursor/a': { _exists: false } }], clientId: 'a' }, 'the tombstones come last')
  await room.close()
})

t.test('above softBytes for longer than maxSlowMs: terminated at the next frame sent to it; catching up in between resets the clock', async (t) => {
  const room = new Room({ ...options, slowClient: { softBytes: SOFT, hardBytes: HARD, maxSlowMs: 5 } })
  const a = fakeSocket()
  const b = fakeSocket()
  room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  const sb = room.handleSocketConnect({ socket: b, clientId: 'b', permissions: 'readwrite' })
  let n = 0
  const write = (): void => room.handleSocketMessage(sb, JSON.stringify({ type: 'patch', messageId: `m${++n}`, documentPatches: [{ k: { _exists: true, v: n } }] }))
  // The policy reads the clock when a frame is sent: let it move past maxSlowMs without timers.
  const pass = (ms: number): void => {
    const start = performance.now()
    while (performance.now() - start < ms);
  }
  a.bufferedAmount = SOFT + 1
  write()
  pass(10)
  a.bufferedAmount = 0
  write()
  t.equal(room.getSessionCount(), 2, 'back under softBytes in time: kept')
  a.bufferedAmount = SOFT + 1
  write()
  t.equal(room.getSessionCount(), 2, 'slow again: a new clock starts')
  pass(10)
  write()
  t.equal(a.terminated, 1, 'slow for longer than maxSlowMs: terminated')
  await Promise.resolve()
  t.equal(room.getSessionCount(), 1)
  t.equal(a.sent.filter((f) => f.type === 'patch').length, 3, 'the frame that found it too slow was not sent')
  await room.close()
})

t.test('with batched counts, a session closed for being slow while the counts go out: the others get the count that includes it, its tombstones, then the new count', async (t) => {
  const room = new Room({ ...options, presenceBatching: true })
  const sockets = ['a', 'b', 'c'].map(() => fakeSocket())
  const ids = ['a', 'b', 'c'].map((clientId, i) => room.handleSocketConnect({ socket: sockets[i], clientId, permissions: 'readwrite' }))
  room.handleSocketMessage(ids[0], JSON.stringify({ type: 'patch', messageId: 'm1', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 1 } }] }))
  await new Promise((resolve) => setImmediate(resolve))
  for (const socket of sockets) socket.sent.length = 0
  const d = fakeSocket()
  room.handleSocketConnect({ socket: d, clientId: 'd', permissions: 'readwrite' })
  // a is first in line for the count of 4, and is closed by it.
  sockets[0].bufferedAmount = HARD + 1
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(sockets[0].terminated, 1, 'a was cut')
  // The count without a goes at the end of the turn its removal happened in.
  await new Promise((resolve) => setImmediate(resolve))
  const tombstones = { type: 'patch', ephemeralPatches: [{ 'cursor/a': { _exists: false } }], clientId: 'a' }
  for (const [name, socket] of [['b', sockets[1]], ['c', sockets[2]]] as const) {
    t.same(socket.sent, [{ type: 'clientCount', count: 4 }, tombstones, { type: 'clientCount', count: 3 }], `${name}: the count with a, a's tombstones, the count without`)
  }
  t.same(d.sent.filter((f) => f.type === 'clientCount'), [{ type: 'clientCount', count: 4 }, { type: 'clientCount', count: 3 }])
  await room.close()
})

t.test('the answer to a reconnect is not held against the session: a document larger than hardBytes can be joined, even slowly; what the room sends besides still is', async (t) => {
  const room = new Room({ ...options, slowClient: { softBytes: SOFT, hardBytes: HARD, maxSlowMs: 5 } })
  const w = fakeSocket()
  const sw = room.handleSocketConnect({ socket: w, clientId: 'w', permissions: 'readwrite' })
  let n = 0
  const write = (patch: Record<string, unknown>): void => room.handleSocketMessage(sw, JSON.stringify({ type: 'patch', messageId: `m${++n}`, documentPatches: [patch] }))
  write({ big: { _exists: true, text: 'x'.repeat(3 * HARD) } })

  // A joiner that reads nothing: every frame sent to it stays buffered.
  const j = fakeSocket()
  j.send = function (data: string) { this.sent.push(JSON.parse(data)); this.bufferedAmount += Buffer.byteLength(data) }
  const sj = room.handleSocketConnect({ socket: j, clientId: 'j', permissions: 'readwrite' })
  room.handleSocketMessage(sj, JSON.stringify({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 }))
  t.ok(j.bufferedAmount > 3 * HARD, 'the diff is out, three times hardBytes')
  t.match(j.sent.at(-1), { type: 'synced', timestamp: 1 }, 'and synced after it')
  const pass = (ms: number): void => {
    const start = performance.now()
    while (performance.now() - start < ms);
  }
  pass(10)
  write({ k: { _exists: true, v: 1 } })
  t.equal(j.terminated, 0, 'still receiving its diff after maxSlowMs: kept')
  t.match(j.sent.at(-1), { type: 'patch', timestamp: 2 })

  // Beyond its diff, the room's own frames count as always.
  for (let i = 0; i < 12 && j.terminated === 0; i++) write({ k: { v: 'y'.repeat(1000) } })
  t.equal(j.terminated, 1, 'more than hardBytes beyond the diff: terminated')
  await Promise.resolve()
  t.equal(room.getSessionCount(), 1)
  await room.close()
})

t.test('only the answer to the latest reconnect is exempt: a session that reconnects again without reading the last answer is terminated', async (t) => {
  const room = new Room(options)
  const w = fakeSocket()
  const sw = room.handleSocketConnect({ socket: w, clientId: 'w', permissions: 'readwrite' })
  room.handleSocketMessage(sw, JSON.stringify({ type: 'patch', messageId: 'm1', documentPatches: [{ big: { _exists: true, text: 'x'.repeat(3 * HARD) } }] }))
  const j = fakeSocket()
  j.send = function (data: string) { this.sent.push(JSON.parse(data)); this.bufferedAmount += Buffer.byteLength(data) }
  const sj = room.handleSocketConnect({ socket: j, clientId: 'j', permissions: 'readwrite' })
  const reconnect = JSON.stringify({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 })
  room.handleSocketMessage(sj, reconnect)
  t.equal(j.terminated, 0, 'the join is out')
  room.handleSocketMessage(sj, reconnect)
  t.equal(j.terminated, 1, 'the first answer, unread, now counts: terminated')
  await room.close()
})

t.test('a session that caught up after its reconnect has no allowance left', async (t) => {
  const { room, sockets: { a }, ids, send } = setup(['a', 'b'])
  send('b', { documentPatches: [{ big: { _exists: true, text: 'x'.repeat(3 * HARD) } }] })
  room.handleSocketMessage(ids.a, JSON.stringify({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 }))
  a.bufferedAmount = 0
  send('b', { documentPatches: [{ k: { _exists: true } }] })
  a.bufferedAmount = HARD + 1
  send('b', { documentPatches: [{ k: { v: 1 } }] })
  t.equal(a.terminated, 1, 'caught up, then behind by more than hardBytes: terminated')
  await room.close()
})

t.test('slowClient.catchUpBytes: exempt answers waiting unsent are bounded across the rooms sharing an allowance; past it an answer counts like any frame', async (t) => {
  const allowance = new CatchUpAllowance(5 * HARD)
  const slowClient = { softBytes: SOFT, hardBytes: HARD, catchUpBytes: 5 * HARD }
  const rooms = ['r1', 'r2'].map((roomId) => new Room({ ...options, roomId, slowClient, catchUp: allowance }))
  // Each room holds a document of about 3 * HARD.
  for (const room of rooms) {
    const w = fakeSocket()
    const sw = room.handleSocketConnect({ socket: w, clientId: 'w', permissions: 'readwrite' })
    room.handleSocketMessage(sw, JSON.stringify({ type: 'patch', messageId: 'm1', documentPatches: [{ big: { _exists: true, text: 'x'.repeat(3 * HARD) } }] }))
  }
  const join = (room: Room, clientId: string) => {
    const socket = fakeSocket()
    socket.send = function (data: string) { this.sent.push(JSON.parse(data)); this.bufferedAmount += Buffer.byteLength(data) }
    room.handleSocketConnect({ socket, clientId, permissions: 'readwrite' })
    const sessionId = room.getSessions().find((s) => s.clientId === clientId)!.sessionId
    room.handleSocketMessage(sessionId, JSON.stringify({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 }))
    return socket
  }
  const a = join(rooms[0], 'a')
  t.equal(a.terminated, 0, 'a\'s answer (3 * hardBytes) fits the allowance')
  t.equal(allowance.holders, 1)
  const b = join(rooms[1], 'b')
  t.equal(b.terminated, 1, 'b\'s, in another room, would pass it while a has not read: it counts, and is over hardBytes')
  t.match(b.sent.at(-1), { type: 'patch' }, 'b was sent its answer, then cut before synced')
  a.bufferedAmount = 0
  const c = join(rooms[1], 'c')
  t.equal(c.terminated, 0, 'once a has read its answer, the allowance is free again')
  t.match(c.sent.at(-1), { type: 'synced' })
  t.equal(allowance.holders, 1, 'a was let go, c holds it')
  await rooms[1].close()
  t.equal(allowance.holders, 0, 'a closed session releases it')
  await rooms[0].close()
})

t.test('slowClient.catchUpBytes: answers up to softBytes never count toward it; the option is checked', async (t) => {
  // An allowance large enough for anything: only the size rule keeps small answers out of it.
  const allowance = new CatchUpAllowance(Number.POSITIVE_INFINITY)
  const room = new Room({ ...options, catchUp: allowance })
  const w = fakeSocket()
  const sw = room.handleSocketConnect({ socket: w, clientId: 'w', permissions: 'readwrite' })
  room.handleSocketMessage(sw, JSON.stringify({ type: 'patch', messageId: 'm1', documentPatches: [{ small: { _exists: true, text: 'x'.repeat(SOFT / 2) } }] }))
  for (let i = 0; i < 5; i++) {
    const j = fakeSocket()
    j.send = function (data: string) { this.sent.push(JSON.parse(data)); this.bufferedAmount += Buffer.byteLength(data) }
    const sj = room.handleSocketConnect({ socket: j, clientId: `j${i}`, permissions: 'readwrite' })
    room.handleSocketMessage(sj, JSON.stringify({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 }))
    t.equal(j.terminated, 0)
  }
  t.equal(allowance.holders, 0, 'none of the five small answers holds any of it')
  // The same rule on the allowance itself (in a room the next frame, synced, would release it anyway).
  const holder = { catchUpBytes: 0, socket: { readyState: 1, bufferedAmount: SOFT } }
  t.ok(allowance.admit(holder, SOFT, SOFT))
  t.equal(allowance.holders, 0, 'an answer of softBytes is not held')
  t.ok(allowance.admit(holder, SOFT + 1, SOFT))
  t.equal(allowance.holders, 1, 'a larger one is')
  await room.close()
  t.throws(() => resolveOptions({ slowClient: { catchUpBytes: -1 } }), /slowClient\.catchUpBytes/)
})

t.test('slowClient.catchUpBytes: a holder is let go when it reconnects again, when it is disconnected, and counted while its socket is closing', async (t) => {
  const allowance = new CatchUpAllowance(5 * HARD)
  const room = new Room({ ...options, slowClient: { softBytes: SOFT, hardBytes: HARD }, catchUp: allowance })
  const w = fakeSocket()
  const sw = room.handleSocketConnect({ socket: w, clientId: 'w', permissions: 'readwrite' })
  room.handleSocketMessage(sw, JSON.stringify({ type: 'patch', messageId: 'm1', documentPatches: [{ big: { _exists: true, text: 'x'.repeat(3 * HARD) } }] }))
  const reconnect = JSON.stringify({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 })
  const join = (clientId: string) => {
    const socket = fakeSocket()
    socket.send = function (data: string) { this.sent.push(JSON.parse(data)); this.bufferedAmount += Buffer.byteLength(data) }
    const sessionId = room.handleSocketConnect({ socket, clientId, permissions: 'readwrite' })
    room.handleSocketMessage(sessionId, reconnect)
    return { socket, sessionId }
  }
  const a = join('a')
  t.equal(allowance.holders, 1)
  // a reads its answer, then reconnects: the new answer is admitted against nothing held by a before.
  a.socket.bufferedAmount = 0
  room.handleSocketMessage(a.sessionId, reconnect)
  t.equal(a.socket.terminated, 0)
  t.equal(allowance.holders, 1, 'a holds one answer, not two')
  room.disconnectSession(a.sessionId)
  t.equal(allowance.holders, 0, 'disconnecting releases it')

  const b = join('b')
  b.socket.readyState = 2 // closing, its answer still unsent
  const c = join('c')
  t.equal(c.socket.terminated, 1, 'b\'s unsent answer still counts while its socket is closing: c\'s does not fit')
  await room.close()
})
