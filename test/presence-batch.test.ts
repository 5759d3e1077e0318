import t from 'tap'
import fc from 'fast-check'
import { Room } from '../lib/index.js'
import { applyKind, appliedValue, type Fields } from '../lib/room/document.js'
import { PresenceBatch } from '../lib/room/presence-batch.js'
import { fakeClock } from './fake-clock.js'

/** A receiver's state after applying patches in order, with the protocol's rules. */
function receive (patches: any[]): Record<string, unknown> {
  const state = new Map<string, Fields>()
  for (const patch of patches) {
    for (const key of Object.keys(patch)) {
      const kind = applyKind(state.get(key), patch[key])
      if (kind !== 'dropped') state.set(key, appliedValue(kind, state.get(key), patch[key]))
    }
  }
  return JSON.parse(JSON.stringify(Object.fromEntries(state)))
}

const value = fc.oneof(
  fc.constant({ _exists: false }),
  fc.record({ _exists: fc.constant(true), x: fc.integer({ min: 0, max: 9 }) }),
  fc.record({ x: fc.integer({ min: 0, max: 9 }) }, { requiredKeys: [] }),
  fc.record({ y: fc.integer({ min: 0, max: 9 }), pts: fc.constant({ __buf: 1, len: 3, runs: [[1, [7]]] }) }, { requiredKeys: ['y'] })
)
const patch = fc.dictionary(fc.constantFrom('cursor', 'sel', '__proto__'), value, { maxKeys: 3 })

t.test('a merged batch gives a receiver the same state as every patch in order, whatever it held before', async (t) => {
  fc.assert(fc.property(patch, fc.array(patch, { maxLength: 12 }), fc.array(fc.constantFrom('a', 'b'), { minLength: 12, maxLength: 12 }), (initial, patches, senders) => {
    const batch = new PresenceBatch()
    const bySender: Record<string, any[]> = { a: [], b: [] }
    patches.forEach((p, i) => {
      const copy = JSON.parse(JSON.stringify(p))
      batch.add(senders[i], [copy])
      bySender[senders[i]].push(JSON.parse(JSON.stringify(p)))
    })
    const taken = new Map(batch.take().map(({ clientId, json }) => [clientId, JSON.parse(`[${json}]`)]))
    // Every sender is compared, so a batch that lost a sender's patches fails too.
    for (const clientId of ['a', 'b']) {
      t.strictSame(receive([initial, ...(taken.get(clientId) ?? [])]), receive([initial, ...bySender[clientId]]))
    }
  }), { numRuns: 500, seed: 42 })
})

function fakeSocket () {
  const sent: any[] = []
  return { sent, readyState: 1, send (data: string) { sent.push(JSON.parse(data)) }, close () {} }
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

t.test('one presence frame per session per turn, the latest values, never its own', async (t) => {
  const room = new Room({ roomId: 'r', presenceBatching: true })
  const sockets = ['a', 'b', 'c'].map(() => fakeSocket())
  const ids = ['a', 'b', 'c'].map((clientId, i) => room.handleSocketConnect({ socket: sockets[i], clientId, permissions: 'readwrite' }))
  await turn()
  for (const s of sockets) s.sent.length = 0
  for (let i = 0; i < 5; i++) {
    room.handleSocketMessage(ids[0], JSON.stringify({ type: 'patch', messageId: `a${i}`, ephemeralPatches: [{ 'cursor/a': { _exists: true, x: i } }] }))
    room.handleSocketMessage(ids[1], JSON.stringify({ type: 'patch', messageId: `b${i}`, ephemeralPatches: [{ 'cursor/b': { _exists: true, x: 10 + i } }] }))
  }
  t.same(sockets[2].sent, [], 'nothing before the end of the turn')
  t.same(sockets[0].sent.map((f) => f.type), ['ack', 'ack', 'ack', 'ack', 'ack'], 'acks go at once')
  await turn()
  const presence = (s: ReturnType<typeof fakeSocket>) => s.sent.filter((f) => f.type === 'patch')
  t.same(presence(sockets[2]), [{ type: 'patch', clientId: '', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 4 } }, { 'cursor/b': { _exists: true, x: 14 } }] }], 'c: one frame, both senders, latest values')
  t.same(presence(sockets[0]), [{ type: 'patch', clientId: 'b', ephemeralPatches: [{ 'cursor/b': { _exists: true, x: 14 } }] }], 'a: only b\'s presence, with b\'s clientId')
  t.same(presence(sockets[1]), [{ type: 'patch', clientId: 'a', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 4 } }] }], 'b: only a\'s presence')
})

t.test('batched presence leaves before a later document frame; a leaver\'s batched presence is replaced by its tombstones', async (t) => {
  const room = new Room({ roomId: 'r', presenceBatching: true })
  const a = fakeSocket()
  const b = fakeSocket()
  const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  room.handleSocketConnect({ socket: b, clientId: 'b', permissions: 'readwrite' })
  await turn()
  b.sent.length = 0
  room.handleSocketMessage(sa, JSON.stringify({ type: 'patch', messageId: 'm1', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 1 } }] }))
  room.handleSocketMessage(sa, JSON.stringify({ type: 'patch', messageId: 'm2', documentPatches: [{ k: { _exists: true } }], ephemeralPatches: [{ 'cursor/a': { x: 2 } }] }))
  t.same(b.sent, [
    { type: 'patch', clientId: 'a', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 1 } }] },
    { type: 'patch', clientId: 'a', documentPatches: [{ k: { _exists: true } }], timestamp: 1, ephemeralPatches: [{ 'cursor/a': { x: 2 } }] }
  ], 'the presence first, then the document frame as received')
  b.sent.length = 0
  room.handleSocketMessage(sa, JSON.stringify({ type: 'patch', messageId: 'm3', ephemeralPatches: [{ 'cursor/a': { x: 3 } }] }))
  room.handleSocketClose(sa)
  t.same(b.sent, [
    { type: 'patch', clientId: 'a', ephemeralPatches: [{ 'cursor/a': { _exists: false } }] }
  ], 'the leaver\'s tombstones at once, its pending presence dropped')
  await turn()
  t.same(b.sent.slice(1), [{ type: 'clientCount', count: 1 }], 'then the new count, at the end of the turn; nothing else')
})

t.test('a leave does not cut the turn\'s batch of the others', async (t) => {
  const room = new Room({ roomId: 'r', presenceBatching: true })
  const [a, b, c] = ['a', 'b', 'c'].map(() => fakeSocket())
  const [sa, sb] = ['a', 'b', 'c'].map((clientId, i) => room.handleSocketConnect({ socket: [a, b, c][i], clientId, permissions: 'readwrite' }))
  await turn()
  c.sent.length = 0
  room.handleSocketMessage(sa, JSON.stringify({ type: 'patch', messageId: 'm1', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 1 } }] }))
  room.handleSocketMessage(sb, JSON.stringify({ type: 'patch', messageId: 'm2', ephemeralPatches: [{ 'cursor/b': { _exists: true, x: 1 } }] }))
  room.handleSocketClose(sa)
  room.handleSocketMessage(sb, JSON.stringify({ type: 'patch', messageId: 'm3', ephemeralPatches: [{ 'cursor/b': { x: 2 } }] }))
  t.same(c.sent, [{ type: 'patch', clientId: 'a', ephemeralPatches: [{ 'cursor/a': { _exists: false } }] }], 'only the tombstones during the turn')
  await turn()
  t.same(c.sent.slice(1), [
    { type: 'clientCount', count: 2 },
    { type: 'patch', clientId: 'b', ephemeralPatches: [{ 'cursor/b': { _exists: true, x: 2 } }] }
  ], 'then b\'s presence of the whole turn in one frame')
})

t.test('with batching, clientCount goes out once per turn; the newcomer gets its count at once; no frame overtakes a count', async (t) => {
  const room = new Room({ roomId: 'r', presenceBatching: true })
  const sockets = ['a', 'b', 'c', 'd'].map(() => fakeSocket())
  const counts = (s: ReturnType<typeof fakeSocket>) => s.sent.filter((f) => f.type === 'clientCount').map((f) => f.count)
  const ids = ['a', 'b', 'c'].map((clientId, i) => room.handleSocketConnect({ socket: sockets[i], clientId, permissions: 'readwrite' }))
  t.same(sockets.slice(0, 3).map(counts), [[1], [2], [3]], 'each newcomer learns the count when it joins')
  await turn()
  t.same(sockets.slice(0, 3).map(counts), [[1, 3], [2, 3], [3]], 'the others learn the latest count once, at the end of the turn')
  room.handleSocketConnect({ socket: sockets[3], clientId: 'd', permissions: 'readwrite' })
  room.handleSocketMessage(ids[1], JSON.stringify({ type: 'patch', messageId: 'm1', documentPatches: [{ k: { _exists: true } }] }))
  t.same(sockets[0].sent.slice(-2), [{ type: 'clientCount', count: 4 }, { type: 'patch', clientId: 'b', documentPatches: [{ k: { _exists: true } }], timestamp: 1 }], 'a gets the count it missed before the next frame')
  t.same(sockets[1].sent.slice(-2), [{ type: 'clientCount', count: 4 }, { type: 'ack', messageId: 'm1', timestamp: 1 }], 'and so does the sender, before its ack')
  room.handleSocketClose(ids[2])
  t.same(counts(sockets[3]), [4], 'd: its count at join')
  await turn()
  t.same(sockets.map(counts), [[1, 3, 4, 3], [2, 3, 4, 3], [3, 4], [4, 3]], 'the count after c left, once, at the end of the turn')
})

t.test('without presenceBatching (the Room default) presence is forwarded at once', async (t) => {
  const room = new Room({ roomId: 'r' })
  const a = fakeSocket()
  const b = fakeSocket()
  const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  room.handleSocketConnect({ socket: b, clientId: 'b', permissions: 'readwrite' })
  b.sent.length = 0
  room.handleSocketMessage(sa, JSON.stringify({ type: 'patch', messageId: 'm1', ephemeralPatches: [{ c: { _exists: true } }] }))
  t.same(b.sent, [{ type: 'patch', clientId: 'a', ephemeralPatches: [{ c: { _exists: true } }] }])
})

t.test('with batching, a newcomer gets presence then one count; a leaver\'s tombstones come after the counts owed and before the new one', async (t) => {
  const room = new Room({ roomId: 'r', presenceBatching: true })
  const [a, b, c, d] = ['a', 'b', 'c', 'd'].map(() => fakeSocket())
  const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  room.handleSocketMessage(sa, JSON.stringify({ type: 'patch', messageId: 'm1', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 1 } }] }))
  await turn()
  room.handleSocketConnect({ socket: b, clientId: 'b', permissions: 'readwrite' })
  room.handleSocketConnect({ socket: c, clientId: 'c', permissions: 'readwrite' })
  t.same(c.sent, [
    { type: 'patch', clientId: '', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 1 } }] },
    { type: 'clientCount', count: 3 }
  ], 'presence first, then the count, once')
  await turn()
  for (const s of [a, b, c]) s.sent.length = 0
  room.handleSocketConnect({ socket: d, clientId: 'd', permissions: 'readwrite' })
  room.handleSocketClose(sa)
  t.same(b.sent, [
    { type: 'clientCount', count: 4 },
    { type: 'patch', clientId: 'a', ephemeralPatches: [{ 'cursor/a': { _exists: false } }] }
  ], 'the count owed (d joined), then a\'s tombstones')
  await turn()
  t.same(b.sent.slice(2), [{ type: 'clientCount', count: 3 }], 'then the count after a left')
})

t.test('an onTokenRefresh whose result is unusable closes that session (1011); nothing escapes as an unhandled rejection', async (t) => {
  const room = new Room({ roomId: 'r', onTokenRefresh: async () => null as never })
  const closed: Array<[number | undefined, string | undefined]> = []
  const a = { ...fakeSocket(), close (code?: number, reason?: string) { closed.push([code, reason]) } }
  const b = fakeSocket()
  const ida = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  room.handleSocketConnect({ socket: b, clientId: 'b', permissions: 'readwrite' })
  room.handleSocketMessage(ida, JSON.stringify({ type: 'auth-refresh', token: 't' }))
  // The refresh settles over a few microtasks.
  for (let i = 0; i < 10 && closed.length === 0; i++) await turn()
  t.strictSame(closed, [[1011, 'Internal error']])
  t.equal(room.getSessionCount(), 1, 'only that session is gone')
})

t.test('in a room of 32 sessions or more, the others get clientCount once it settles (100 ms without a change, at most 1 s after the first): the latest count, before any other frame; close stops the wait', async (t) => {
  const fake = fakeClock()
  const room = new Room({ roomId: 'r', presenceBatching: true, clock: fake.clock })
  const sockets = Array.from({ length: 36 }, () => fakeSocket())
  const counts = (s: ReturnType<typeof fakeSocket>) => s.sent.filter((f) => f.type === 'clientCount').map((f) => f.count)
  const ids = sockets.slice(0, 32).map((socket, i) => room.handleSocketConnect({ socket, clientId: `c${i}`, permissions: 'readwrite' }))
  await turn()
  t.same(counts(sockets[0]), [1, 32], 'below the bound, once per turn')
  // Each join is in its own turn.
  fake.advance(10)
  const firstChange = fake.now()
  room.handleSocketConnect({ socket: sockets[32], clientId: 'c32', permissions: 'readwrite' })
  await turn()
  t.same(counts(sockets[32]), [33], 'the newcomer learns its count at once')
  t.same(counts(sockets[0]), [1, 32], 'the others wait')
  fake.advance(10)
  room.handleSocketConnect({ socket: sockets[33], clientId: 'c33', permissions: 'readwrite' })
  await turn()
  room.handleSocketMessage(ids[1], JSON.stringify({ type: 'patch', messageId: 'm1', documentPatches: [{ k: { _exists: true } }] }))
  t.same(sockets[0].sent.slice(-2), [{ type: 'clientCount', count: 34 }, { type: 'patch', clientId: 'c1', documentPatches: [{ k: { _exists: true } }], timestamp: 1 }], 'a session about to get another frame gets the latest count first')
  t.same(counts(sockets[2]), [3, 32, 34], 'skipping the counts between')
  t.same(counts(sockets[32]), [33, 34])

  // Leaves wait the same way, then every session gets the latest count once, from the timer, 100 ms after the last change.
  fake.advance(30)
  const lastChange = fake.now()
  room.handleSocketClose(ids[3])
  room.handleSocketClose(ids[4])
  await turn()
  t.same(counts(sockets[0]), [1, 32, 34], 'no count while the count moves')
  t.equal(fake.timers.size, 1, 'one timer holds the count')
  fake.advance(lastChange + 99 - fake.now())
  t.same(counts(sockets[0]), [1, 32, 34], 'not a millisecond before 100 ms without a change')
  t.ok(fake.now() > firstChange + 100, '(past 100 ms after the first change)')
  fake.advance(1)
  t.same(counts(sockets[0]), [1, 32, 34, 32])
  t.same(counts(sockets[33]), [34, 32])
  t.equal(fake.timers.size, 0)

  // A count that keeps moving (a join every 50 ms) still goes out, 1 s after the first change it reports.
  const start = fake.now()
  for (let at = 0; at <= 1200; at += 50) {
    room.handleSocketConnect({ socket: fakeSocket(), clientId: `j${at}`, permissions: 'readwrite' })
    await turn()
    t.equal(counts(sockets[0]).length, at < 1000 ? 4 : 5, `at ${at} ms`)
    fake.advance(50)
  }
  t.ok(fake.now() > start + 1000)
  t.same(counts(sockets[0]).slice(4), [52], 'one count, at 1 s (after 20 joins), none before nor for the next 200 ms')

  room.handleSocketConnect({ socket: sockets[35], clientId: 'c35', permissions: 'readwrite' })
  await turn()
  t.equal(fake.timers.size, 1, 'waiting again')
  await room.close()
  t.equal(fake.timers.size, 0, 'closing the room clears the timer')
})

t.test('in a room of 32 sessions or more, presence goes out at most every 16 ms: one frame per session with every other sender\'s latest values, never its own; a document frame still carries it first', async (t) => {
  const fake = fakeClock()
  const room = new Room({ roomId: 'r', presenceBatching: true, clock: fake.clock })
  const n = 40
  const sockets = Array.from({ length: n }, () => fakeSocket())
  const ids = sockets.map((socket, i) => room.handleSocketConnect({ socket, clientId: `c${i}`, permissions: 'readwrite' }))
  const cursor = (i: number, x: number) => ({ [`cursor/c${i}`]: { _exists: true, x } })
  const presence = (s: ReturnType<typeof fakeSocket>) => s.sent.filter((f) => f.type === 'patch')
  // The first batch goes at the end of the turn.
  room.handleSocketMessage(ids[0], JSON.stringify({ type: 'patch', messageId: 'p0', ephemeralPatches: [cursor(0, 0)] }))
  await turn()
  t.same(presence(sockets[1]), [{ type: 'patch', clientId: 'c0', ephemeralPatches: [cursor(0, 0)] }])
  for (const s of sockets) s.sent.length = 0

  // The next ones, in later turns within 16 ms (on the room's clock), wait for one batch.
  for (let round = 1; round <= 2; round++) {
    fake.advance(5)
    for (let i = 0; i < n; i++) room.handleSocketMessage(ids[i], JSON.stringify({ type: 'patch', messageId: `p${round}-${i}`, ephemeralPatches: [cursor(i, round)] }))
    await turn()
  }
  t.same(presence(sockets[5]), [], 'nothing yet')
  fake.advance(5)
  t.same(presence(sockets[5]), [], 'nothing a millisecond early')
  fake.advance(1)
  for (let i = 0; i < n; i++) {
    const frames = presence(sockets[i])
    t.equal(frames.length, 1, `c${i}: one frame`)
    const expected = Object.assign({}, ...Array.from({ length: n }, (_, j) => j).filter((j) => j !== i).map((j) => cursor(j, 2)))
    t.same(Object.assign({}, ...frames[0].ephemeralPatches), expected, `c${i}: every other sender's latest value, not its own`)
    t.equal(frames[0].clientId, '')
  }

  // A document frame does not wait: the batch pending so far leaves first.
  for (const s of sockets) s.sent.length = 0
  room.handleSocketMessage(ids[1], JSON.stringify({ type: 'patch', messageId: 'q1', ephemeralPatches: [cursor(1, 3)] }))
  await turn()
  room.handleSocketMessage(ids[2], JSON.stringify({ type: 'patch', messageId: 'q2', documentPatches: [{ k: { _exists: true } }] }))
  t.same(sockets[3].sent, [
    { type: 'patch', clientId: 'c1', ephemeralPatches: [cursor(1, 3)] },
    { type: 'patch', clientId: 'c2', documentPatches: [{ k: { _exists: true } }], timestamp: 1 }
  ], 'presence, then the document frame, at once')
  await room.close()
})

t.test('a client with two sessions (a reconnect racing the old socket\'s close) keeps its presence until its last session leaves; the counts of other clients are kept apart', async (t) => {
  const room = new Room({ roomId: 'r', presenceBatching: true })
  const [a1, a2, b, watcher] = [fakeSocket(), fakeSocket(), fakeSocket(), fakeSocket()]
  const ida1 = room.handleSocketConnect({ socket: a1, clientId: 'a', permissions: 'readwrite' })
  const idb = room.handleSocketConnect({ socket: b, clientId: 'b', permissions: 'readwrite' })
  room.handleSocketConnect({ socket: watcher, clientId: 'w', permissions: 'readwrite' })
  room.handleSocketMessage(ida1, JSON.stringify({ type: 'patch', messageId: 'p', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 1 } }] }))
  room.handleSocketMessage(idb, JSON.stringify({ type: 'patch', messageId: 'q', ephemeralPatches: [{ 'cursor/b': { _exists: true, x: 2 } }] }))
  await turn()
  const ida2 = room.handleSocketConnect({ socket: a2, clientId: 'a', permissions: 'readwrite' })
  await turn()
  const tombstones = () => watcher.sent.filter((f) => f.type === 'patch' && f.ephemeralPatches?.some((p: any) => Object.values(p).some((v: any) => v._exists === false)))
  room.handleSocketClose(ida1)
  await turn()
  t.same(tombstones(), [], 'a is still here through its second session')
  room.handleSocketClose(idb)
  await turn()
  t.same(tombstones().map((f) => f.clientId), ['b'], 'b left: its presence is deleted')
  room.handleSocketClose(ida2)
  await turn()
  t.same(tombstones().map((f) => f.clientId), ['b', 'a'], 'a\'s last session left')
  // a joins again: one session, whose close deletes its presence at once.
  const ida3 = room.handleSocketConnect({ socket: fakeSocket(), clientId: 'a', permissions: 'readwrite' })
  room.handleSocketMessage(ida3, JSON.stringify({ type: 'patch', messageId: 'r', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 3 } }] }))
  await turn()
  room.handleSocketClose(ida3)
  await turn()
  t.same(tombstones().map((f) => f.clientId), ['b', 'a', 'a'])
  await room.close()
})

t.test('a leave whose count flush cuts the leaving session (a slow transport that reports its close at once) is made once: one set of tombstones', async (t) => {
  const room = new Room({ roomId: 'r', presenceBatching: true })
  let idA = ''
  // Far behind (past hardBytes), and a close that the transport reports synchronously, as a custom one may.
  const a = { sent: [] as any[], readyState: 1, bufferedAmount: 0, send (data: string) { this.sent.push(JSON.parse(data)) }, close () { room.handleSocketClose(idA) } }
  const watcher = fakeSocket()
  idA = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  room.handleSocketConnect({ socket: watcher, clientId: 'w', permissions: 'readwrite' })
  room.handleSocketMessage(idA, JSON.stringify({ type: 'patch', messageId: 'p', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 1 } }] }))
  await turn()
  a.bufferedAmount = 100 * 1024 * 1024
  // A join in the same turn leaves a count owed, which the leave flushes first (to a too).
  room.handleSocketConnect({ socket: fakeSocket(), clientId: 'c', permissions: 'readwrite' })
  room.handleSocketClose(idA)
  await turn()
  const tombstones = watcher.sent.filter((f) => f.type === 'patch' && f.clientId === 'a' && f.ephemeralPatches?.[0]?.['cursor/a']?._exists === false)
  t.equal(tombstones.length, 1, 'one set of tombstones')
  t.equal(room.getSessionCount(), 2)
  // a comes back: its presence is its own again, and its next leave deletes it once more.
  const idA2 = room.handleSocketConnect({ socket: fakeSocket(), clientId: 'a', permissions: 'readwrite' })
  room.handleSocketMessage(idA2, JSON.stringify({ type: 'patch', messageId: 'q', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 2 } }] }))
  await turn()
  room.handleSocketClose(idA2)
  await turn()
  t.equal(watcher.sent.filter((f) => f.type === 'patch' && f.clientId === 'a' && f.ephemeralPatches?.[0]?.['cursor/a']?._exists === false).length, 2)
  await room.close()
})
