import t from 'tap'
import { COUNTER_RESERVE, FileStorage, MemoryStorage, MemoryStore, Room, type IncrementalStorage, type RoomChanges, type RoomSnapshot } from '../lib/index.js'
import { fakeClock } from './fake-clock.js'

/** A socket double that records what the room sends, synchronously. */
function fakeSocket () {
  const sent: any[] = []
  const closes: Array<[number | undefined, string | undefined]> = []
  return {
    sent,
    closes,
    readyState: 1,
    send (data: string) { sent.push(JSON.parse(data)) },
    close (code?: number, reason?: string) { closes.push([code, reason]); this.readyState = 3 }
  }
}

/** An incremental storage whose appends the test settles by hand. */
function controlledStorage () {
  const calls: Array<{ changes: RoomChanges, resolve: () => void, reject: (e: unknown) => void }> = []
  let notify: (() => void) | null = null
  const storage: IncrementalStorage = {
    load: async (): Promise<RoomSnapshot | null> => null,
    save: async () => {},
    append: (changes) => new Promise((resolve, reject) => {
      calls.push({ changes, resolve, reject })
      notify?.()
    })
  }
  const nextCall = async (n: number) => {
    while (calls.length < n) await new Promise<void>((resolve) => { notify = resolve })
    return calls[n - 1]
  }
  return { storage, calls, nextCall }
}

const patch = (messageId: string, p: Record<string, unknown>) => JSON.stringify({ type: 'patch', messageId, documentPatches: [p] })

/** Loads a throttled room over controlledStorage, connects `a` and lets its first write (the reservation) commit. */
async function afterFirstWrite (room: Room, nextCall: ReturnType<typeof controlledStorage>['nextCall']) {
  await room.load()
  const a = fakeSocket()
  const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  room.handleSocketMessage(sa, patch('m1', { k: { _exists: true, x: 1 } }))
  ;(await nextCall(1)).resolve()
  await new Promise((resolve) => setImmediate(resolve))
  return { room, a, sa }
}

t.test('durable: ack and broadcast wait for the commit, in order', async (t) => {
  const { storage, nextCall } = controlledStorage()
  const room = new Room({ roomId: 'r', createStorage: () => storage })
  await room.load()
  const a = fakeSocket()
  const b = fakeSocket()
  const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  room.handleSocketConnect({ socket: b, clientId: 'b', permissions: 'readwrite' })
  a.sent.length = 0
  b.sent.length = 0

  room.handleSocketMessage(sa, patch('m1', { k: { _exists: true, x: 1 } }))
  room.handleSocketMessage(sa, JSON.stringify({ type: 'patch', messageId: 'm2', ephemeralPatches: [{ cursor: { _exists: true, x: 0 } }] }))
  const first = await nextCall(1)
  t.same(first.changes, { timestamp: 1, entries: [{ key: 'k', value: { _exists: true, x: 1 }, stamps: { _exists: 1, x: 1 } }] }, 'the changed key, whole, with its stamps')
  t.same(a.sent, [], 'no ack before the commit, and later frames wait behind it')
  t.same(b.sent, [], 'no broadcast before the commit')
  first.resolve()
  await room.flush()
  t.same(a.sent.map((f) => [f.type, f.messageId]), [['ack', 'm1'], ['ack', 'm2']])
  t.same(b.sent.map((f) => f.type), ['patch', 'patch'])
  t.equal(b.sent[0].timestamp, 1)
})

t.test('durable: one write per event-loop turn for many frames', async (t) => {
  const { storage, calls, nextCall } = controlledStorage()
  const room = new Room({ roomId: 'r', createStorage: () => storage })
  await room.load()
  const a = fakeSocket()
  const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  for (let i = 0; i < 10; i++) room.handleSocketMessage(sa, patch(`m${i}`, { [`k${i % 3}`]: { _exists: true, v: i } }))
  const call = await nextCall(1)
  t.equal(calls.length, 1, 'ten frames, one append')
  t.equal(call.changes.timestamp, 10)
  t.same(call.changes.entries.map((e) => e.key).sort(), ['k0', 'k1', 'k2'])
  call.resolve()
  await room.flush()
  t.equal(a.sent.filter((f) => f.type === 'ack').length, 10)
})

t.test('durable: a failed write is retried and the acks follow it', async (t) => {
  const { storage, nextCall } = controlledStorage()
  const room = new Room({ roomId: 'r', createStorage: () => storage })
  await room.load()
  const a = fakeSocket()
  const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  a.sent.length = 0
  room.handleSocketMessage(sa, patch('m1', { k: { _exists: true, x: 1 } }))
  ;(await nextCall(1)).reject(new Error('disk full'))
  const retry = await nextCall(2)
  t.same(retry.changes.entries.map((e) => e.key), ['k'], 'the retry holds the same change')
  t.same(a.sent, [], 'still no ack')
  retry.resolve()
  await room.flush()
  t.same(a.sent.map((f) => f.type), ['ack'])
})

t.test('durable: writes failing past the bound close the sessions with 1011', async (t) => {
  const { storage, nextCall } = controlledStorage()
  const room = new Room({ roomId: 'r', createStorage: () => storage, storageFailureTimeoutMs: 0 })
  await room.load()
  const a = fakeSocket()
  const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  a.sent.length = 0
  room.handleSocketMessage(sa, patch('m1', { k: { _exists: true, x: 1 } }))
  ;(await nextCall(1)).reject(new Error('db down'))
  await new Promise<void>((resolve) => setImmediate(resolve))
  t.same(a.sent.map((f) => [f.type, f.code]), [['error', 'CANVAS_STORE_STORAGE_UNAVAILABLE']])
  t.same(a.closes, [[1011, 'Storage unavailable']])
  t.equal(room.getSessionCount(), 0)
  ;(await nextCall(2)).resolve()
  await room.flush()
  t.same(room.getSnapshot().state.k, { _exists: true, x: 1 }, 'the room kept the change and saved it once storage came back')
})

t.test('durable: a write that neither commits nor fails within the bound is reported like failing writes, and again each bound it goes on', async (t) => {
  const { storage, nextCall } = controlledStorage()
  const fake = fakeClock()
  const room = new Room({ roomId: 'r', createStorage: () => storage, storageFailureTimeoutMs: 1000, clock: fake.clock })
  await room.load()
  const a = fakeSocket()
  const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  a.sent.length = 0
  room.handleSocketMessage(sa, patch('m1', { k: { _exists: true, x: 1 } }))
  const hung = await nextCall(1)
  fake.advance(999)
  t.same(a.sent, [], 'nothing within the bound')
  fake.advance(1)
  t.same(a.sent.map((f) => [f.type, f.code]), [['error', 'CANVAS_STORE_STORAGE_UNAVAILABLE']], 'the client is told, not left waiting for its ack')
  t.same(a.closes, [[1011, 'Storage unavailable']])
  // Its client reconnects, re-sends, and waits behind the same write: told again a bound later.
  const b = fakeSocket()
  room.handleSocketConnect({ socket: b, clientId: 'a', permissions: 'readwrite' })
  fake.advance(1000)
  t.same(b.closes, [[1011, 'Storage unavailable']])
  // The write commits after all: nothing more is reported, and the room goes on.
  hung.resolve()
  await room.flush()
  const c = fakeSocket()
  const sc = room.handleSocketConnect({ socket: c, clientId: 'c', permissions: 'readwrite' })
  room.handleSocketMessage(sc, patch('m2', { k: { x: 2 } }))
  ;(await nextCall(2)).resolve()
  await room.flush()
  fake.advance(5000)
  t.same(c.closes, [], 'a write that commits in time reports nothing')
  t.match(c.sent.at(-1), { type: 'ack', messageId: 'm2' })
  t.equal(fake.timers.size, 0, 'no timer left')
  await room.close()
  t.throws(() => new Room({ storageFailureTimeoutMs: 2 ** 31 }), RangeError, 'a bound longer than Node\'s longest timer (which would fire at once) is refused')
})

t.test('throttled: a write that hangs while a frame waits behind it (its counter past the stored one) is reported at the bound', async (t) => {
  const { storage, nextCall } = controlledStorage()
  const fake = fakeClock()
  const { room, sa } = await afterFirstWrite(new Room({ roomId: 'r', createStorage: () => storage, durability: 'throttled', storageFailureTimeoutMs: 1000, clock: fake.clock }), nextCall)
  room.disconnectSession(sa)
  // Nobody connected: the counter alone, written as itself; it hangs.
  const flushed = room.flush()
  const hung = await nextCall(2)
  t.equal(hung.changes.final, true)
  const b = fakeSocket()
  const sb = room.handleSocketConnect({ socket: b, clientId: 'b', permissions: 'readwrite' })
  b.sent.length = 0
  room.handleSocketMessage(sb, patch('m2', { k: { x: 2 } }))
  t.same(b.sent, [], 'counter 2 is past the counter being written: its ack waits')
  fake.advance(1000)
  t.same(b.sent.map((f) => [f.type, f.code]), [['error', 'CANVAS_STORE_STORAGE_UNAVAILABLE']], 'told at the bound, not left waiting')
  t.same(b.closes, [[1011, 'Storage unavailable']])
  hung.resolve()
  // The flush goes on: m2's change (with a reservation), then, nobody being connected any more, the counter alone.
  ;(await nextCall(3)).resolve()
  const last = await nextCall(4)
  t.same(last.changes, { timestamp: 2, entries: [], final: true })
  last.resolve()
  await flushed
  await room.close({ flush: false })
})

t.test('throttled: a slow write that nothing waits for is not reported (its acks went at once)', async (t) => {
  const { storage, nextCall } = controlledStorage()
  const fake = fakeClock()
  const { room, a, sa } = await afterFirstWrite(new Room({ roomId: 'r', createStorage: () => storage, durability: 'throttled', storageFailureTimeoutMs: 1000, saveThrottleMs: 60_000, clock: fake.clock }), nextCall)
  room.handleSocketMessage(sa, patch('m2', { k: { x: 2 } }))
  const flushed = room.flush()
  const slow = await nextCall(2)
  t.equal(slow.changes.timestamp, 2 + COUNTER_RESERVE, 'a write with sessions connected: a reservation')
  fake.advance(5000)
  t.same(a.closes, [], 'acks do not wait for it: nobody is told')
  t.match(a.sent.at(-1), { type: 'ack', messageId: 'm2' })
  slow.resolve()
  await flushed
  const closing = room.close()
  ;(await nextCall(3)).resolve()
  await closing
})

t.test('writes that keep failing are reported when they have failed for the bound, not at a later step of the backoff', async (t) => {
  const fake = fakeClock()
  const failures: number[] = []
  const storage: IncrementalStorage = {
    load: async () => null,
    save: async () => {},
    append: async () => {
      failures.push(fake.now())
      throw new Error('disk full')
    }
  }
  const room = new Room({ roomId: 'r', createStorage: () => storage, storageFailureTimeoutMs: 1000, clock: fake.clock })
  await room.load()
  const a = fakeSocket()
  const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  a.sent.length = 0
  room.handleSocketMessage(sa, patch('m1', { k: { _exists: true } }))
  const settle = () => new Promise((resolve) => setImmediate(resolve))
  await settle()
  const start = failures[0]
  for (let ms = 0; ms < 999; ms++) {
    fake.advance(1)
    await settle()
  }
  t.same(a.closes, [], 'nothing within the bound')
  // Retries back off (200, 400 ms, then 800: at 1,400 ms, where the report came before) but one falls on the bound.
  t.same(failures.map((at) => at - start), [0, 200, 600], 'backing off')
  fake.advance(1)
  await settle()
  t.same(failures.map((at) => at - start), [0, 200, 600, 1000])
  t.same(a.sent.map((f) => [f.type, f.code]), [['error', 'CANVAS_STORE_STORAGE_UNAVAILABLE']])
  t.same(a.closes, [[1011, 'Storage unavailable']])
  await room.close({ flush: false })
  t.equal(fake.timers.size, 0, 'no timer left')
})

t.test('durable: a write still hanging when the room is closed is not reported any more', async (t) => {
  const { storage, nextCall } = controlledStorage()
  const fake = fakeClock()
  const logged: string[] = []
  const log = { error: (_o: unknown, msg: string) => { logged.push(msg) }, warn () {}, info () {}, debug () {} }
  const room = new Room({ roomId: 'r', createStorage: () => storage, storageFailureTimeoutMs: 1000, clock: fake.clock, logger: log as never })
  await room.load()
  const a = fakeSocket()
  const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  room.handleSocketMessage(sa, patch('m1', { k: { _exists: true } }))
  const hung = await nextCall(1)
  const closing = room.close()
  fake.advance(5000)
  t.same(logged.filter((m) => m.includes('not settled')), [], 'nothing reported after close')
  t.equal(fake.timers.size, 0, 'no timer left')
  hung.resolve()
  await closing
})

t.test('throttled: the first write reserves counters (its ack waits for it), later acks go at once and changes are written later', async (t) => {
  const { storage, calls, nextCall } = controlledStorage()
  const room = new Room({ roomId: 'r', createStorage: () => storage, durability: 'throttled', saveThrottleMs: 60_000 })
  await room.load()
  const a = fakeSocket()
  const b = fakeSocket()
  const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  room.handleSocketConnect({ socket: b, clientId: 'b', permissions: 'readwrite' })
  a.sent.length = 0
  b.sent.length = 0
  room.handleSocketMessage(sa, patch('m1', { k: { _exists: true, x: 1 } }))
  room.handleSocketMessage(sa, patch('m2', { k: { x: 2 } }))
  const reserve = await nextCall(1)
  t.same(reserve.changes, { timestamp: 2 + COUNTER_RESERVE, entries: [{ key: 'k', value: { _exists: true, x: 2 }, stamps: { _exists: 1, x: 2 } }] }, 'the frames of the turn written at once, with a reservation past the counter')
  t.same(a.sent, [], 'the acks wait for the reservation')
  t.same(b.sent, [], 'and so do the broadcasts')
  reserve.resolve()
  await new Promise((resolve) => setImmediate(resolve))
  t.same(a.sent.map((f) => [f.type, f.timestamp]), [['ack', 1], ['ack', 2]])
  t.same(b.sent.map((f) => [f.type, f.timestamp]), [['patch', 1], ['patch', 2]])

  a.sent.length = 0
  room.handleSocketMessage(sa, patch('m3', { k: { x: 3 } }))
  t.same(a.sent.map((f) => [f.type, f.timestamp]), [['ack', 3]], 'acked at once below the reservation')
  t.equal(calls.length, 1, 'nothing more written yet (the throttle)')
  const flushed = room.flush()
  const second = await nextCall(2)
  t.same(second.changes.timestamp, 3 + COUNTER_RESERVE, 'a flush with sessions connected stores a reservation')
  second.resolve()
  await flushed

  const closed = room.close()
  const last = await nextCall(3)
  t.same(last.changes, { timestamp: 3, entries: [], final: true }, 'the close stores the counter itself')
  last.resolve()
  await closed
  t.equal(calls.length, 3)
})

t.test('throttled: after a write of the counter itself (nobody connected), the next frame waits for a new reservation', async (t) => {
  const { storage, calls, nextCall } = controlledStorage()
  storage.load = async () => ({ timestamp: 5, state: {}, timestamps: {} })
  const { room, a, sa } = await afterFirstWrite(new Room({ roomId: 'r', createStorage: () => storage, durability: 'throttled', saveThrottleMs: 60_000 }), nextCall)
  t.equal(a.sent.at(-1).timestamp, 6, 'the loaded counter goes on')
  // Nobody connected: a flush stores the counter itself (as an unload does); the session below then writes again.
  room.disconnectSession(sa)
  const flushed = room.flush()
  const final = await nextCall(2)
  t.same(final.changes, { timestamp: 6, entries: [], final: true }, 'written for the counter alone')
  final.resolve()
  await flushed
  const c = fakeSocket()
  const sc = room.handleSocketConnect({ socket: c, clientId: 'c', permissions: 'readwrite' })
  c.sent.length = 0
  room.handleSocketMessage(sc, patch('m2', { k: { x: 2 } }))
  const again = await nextCall(3)
  t.equal(again.changes.timestamp, 7 + COUNTER_RESERVE, 'reserved again at once')
  t.same(c.sent, [], 'the ack waits for it')
  again.resolve()
  await new Promise((resolve) => setImmediate(resolve))
  t.same(c.sent.map((f) => [f.type, f.timestamp]), [['ack', 7]])
  t.equal(calls.length, 3)
  await room.close({ flush: false })
})

t.test('throttled: after a crash, counters acked but never written are not given again; a client that saw them is asked to resync and gets every later write', async (t) => {
  // The storage keeps what committed; "crashing" is dropping the room without its final write.
  const store = new MemoryStorage()
  const first = new Room({ roomId: 'r', createStorage: () => store, durability: 'throttled', saveThrottleMs: 60_000 })
  await first.load()
  const a = fakeSocket()
  const b = fakeSocket()
  const sa = first.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  first.handleSocketConnect({ socket: b, clientId: 'b', permissions: 'readwrite' })
  first.handleSocketMessage(sa, patch('m1', { k1: { _exists: true, x: 1 } }))
  await first.flush()
  first.handleSocketMessage(sa, patch('m2', { k2: { _exists: true, x: 2 } }))
  first.handleSocketMessage(sa, patch('m3', { k2: { x: 3 } }))
  const seen = b.sent.filter((f) => f.type === 'patch').at(-1).timestamp
  t.equal(seen, 3, 'b saw counter 3; only counter 1 was written')
  await first.close({ flush: false })

  const second = new Room({ roomId: 'r', createStorage: () => store, durability: 'throttled', saveThrottleMs: 60_000 })
  await second.load()
  const x = fakeSocket()
  const sx = second.handleSocketConnect({ socket: x, clientId: 'x', permissions: 'readwrite' })
  second.handleSocketMessage(sx, patch('m4', { k3: { _exists: true, y: 1 } }))
  await second.flush()
  const ack = x.sent.find((f) => f.type === 'ack')
  t.ok(ack.timestamp > seen, `the write after the crash gets a counter b never saw (${ack.timestamp})`)

  const b2 = fakeSocket()
  const sb = second.handleSocketConnect({ socket: b2, clientId: 'b', permissions: 'readwrite' })
  second.handleSocketMessage(sb, JSON.stringify({ type: 'reconnect', lastTimestamp: seen, protocolVersion: 2 }))
  t.same(b2.sent.filter((f) => f.type === 'resync'), [{ type: 'resync', since: 1 }], 'asked for what it holds past what storage held')
  const diff = b2.sent.find((f) => f.type === 'patch')
  t.same(diff?.documentPatches, [{ k3: { _exists: true, y: 1 } }], 'sent the write made after the crash')

  // A client that saw nothing lost is not asked.
  const c = fakeSocket()
  const sc = second.handleSocketConnect({ socket: c, clientId: 'c', permissions: 'readwrite' })
  second.handleSocketMessage(sc, JSON.stringify({ type: 'reconnect', lastTimestamp: 1, protocolVersion: 2 }))
  t.same(c.sent.filter((f) => f.type === 'resync'), [])
  await second.close()
  t.equal((await store.load())?.timestamp, ack.timestamp, 'the close stored the counter itself')
})

t.test('throttled: a write of the counter itself after a failed reservation (nobody connected) leaves nothing waiting: a new session is answered', async (t) => {
  let fail = 1
  const saves: number[] = []
  const storage = { load: async (): Promise<RoomSnapshot | null> => null, save: async (s: RoomSnapshot) => { if (fail-- > 0) throw new Error('disk full'); saves.push(s.timestamp) } }
  const room = new Room({ roomId: 'r', createStorage: () => storage, saveThrottleMs: 60_000 })
  await room.load()
  const a = fakeSocket()
  const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  room.handleSocketMessage(sa, patch('m1', { k: { _exists: true, x: 1 } }))
  await new Promise((resolve) => setImmediate(resolve))
  t.notOk(a.sent.some((f) => f.type === 'ack'), 'the reservation failed: no ack')
  room.disconnectSession(sa)
  await room.flush()
  t.same(saves, [1 + COUNTER_RESERVE, 1], 'the change, then the counter itself')
  const b = fakeSocket()
  const sb = room.handleSocketConnect({ socket: b, clientId: 'b', permissions: 'readonly' })
  room.handleSocketMessage(sb, JSON.stringify({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 }))
  t.same(b.sent.map((f) => f.type), ['clientCount', 'patch', 'synced'], 'answered at once')
  await room.close({ flush: false })
})

t.test('throttled: a flush begun with nobody connected writes no counter-only write once a session has joined and written', async (t) => {
  const { storage, calls, nextCall } = controlledStorage()
  const { room, sa } = await afterFirstWrite(new Room({ roomId: 'r', createStorage: () => storage, durability: 'throttled', saveThrottleMs: 60_000 }), nextCall)
  room.disconnectSession(sa)
  const flushed = room.flush()
  const final = await nextCall(2)
  t.same(final.changes, { timestamp: 1, entries: [], final: true })
  const b = fakeSocket()
  const sb = room.handleSocketConnect({ socket: b, clientId: 'b', permissions: 'readwrite' })
  room.handleSocketMessage(sb, patch('m2', { k: { x: 2 } }))
  final.resolve()
  const reserve = await nextCall(3)
  t.equal(reserve.changes.timestamp, 2 + COUNTER_RESERVE, 'b\'s change, with a reservation')
  reserve.resolve()
  await flushed
  t.equal(calls.length, 3, 'then nothing: b is connected')
  t.match(b.sent.at(-1), { type: 'ack', messageId: 'm2', timestamp: 2 })
  await room.close({ flush: false })
})

t.test('a clean restart after frames that stored nothing (counter above the last stamp) asks nobody to resync', async (t) => {
  const store = new MemoryStorage()
  for (const durability of ['throttled', 'durable'] as const) {
    const room = new Room({ roomId: 'r', createStorage: () => store, durability })
    await room.load()
    const a = fakeSocket()
    const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
    room.handleSocketMessage(sa, patch('m1', { [durability]: { _exists: true, x: 1 } }))
    room.handleSocketMessage(sa, patch('m2', { [durability]: { _exists: false } }))
    room.handleSocketMessage(sa, patch('m3', { [durability]: { x: 5 } }))
    await room.close()
    const counter = (await store.load())!.timestamp
    const again = new Room({ roomId: 'r', createStorage: () => store, durability })
    await again.load()
    const c = fakeSocket()
    const sc = again.handleSocketConnect({ socket: c, clientId: 'a', permissions: 'readwrite' })
    again.handleSocketMessage(sc, JSON.stringify({ type: 'reconnect', lastTimestamp: counter - 1, protocolVersion: 2 }))
    t.same(c.sent.filter((f) => f.type === 'resync'), [], `${durability}: nothing was lost`)
    await again.close()
  }
})

t.test('MemoryStorage and FileStorage store a lower counter as given: a throttled room\'s last save holds its changes and the counter itself in one write', async (t) => {
  for (const store of [new MemoryStorage(), new FileStorage({ dir: t.testdir({}), roomId: 'r' }), new MemoryStore().forRoom('r')]) {
    const saves: Array<[number, unknown]> = []
    const save = store.save.bind(store)
    store.save = async (snapshot) => {
      saves.push([snapshot.timestamp, snapshot.state.k])
      await save(snapshot)
    }
    const room = new Room({ roomId: 'r', createStorage: () => store, saveThrottleMs: 60_000 })
    await room.load()
    const a = fakeSocket()
    const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
    room.handleSocketMessage(sa, patch('m1', { k: { _exists: true, x: 1 } }))
    await new Promise((resolve) => setImmediate(resolve))
    room.handleSocketMessage(sa, patch('m2', { k: { x: 2 } }))
    await room.close()
    t.same(saves, [[1 + COUNTER_RESERVE, { _exists: true, x: 1 }], [2, { _exists: true, x: 2 }]], store.constructor.name)
    t.equal((await store.load())?.timestamp, 2)
  }
})

t.test('a plain { load, save } storage: the first save reserves counters, then acks go at once', async (t) => {
  const saves: RoomSnapshot[] = []
  const room = new Room({ roomId: 'r', createStorage: () => ({ load: async () => null, save: async (s) => { saves.push(s) } }), saveThrottleMs: 60_000 })
  await room.load()
  const a = fakeSocket()
  const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  a.sent.length = 0
  room.handleSocketMessage(sa, patch('m1', { k: { _exists: true, x: 1 } }))
  t.same(a.sent, [])
  await new Promise((resolve) => setImmediate(resolve))
  t.same(a.sent.map((f) => f.type), ['ack'])
  t.same(saves.map((s) => s.timestamp), [1 + COUNTER_RESERVE])
  room.handleSocketMessage(sa, patch('m2', { k: { x: 2 } }))
  t.same(a.sent.map((f) => f.type), ['ack', 'ack'], 'at once')
  await room.close()
  t.same(saves.map((s) => [s.timestamp, s.state.k]), [
    [1 + COUNTER_RESERVE, { _exists: true, x: 1 }],
    [2 + COUNTER_RESERVE, { _exists: true, x: 2 }],
    [2, { _exists: true, x: 2 }]
  ], 'the close saved the change (with a reservation, as any write), then the counter itself')
  t.same(a.closes, [[1001, 'Server closing the room']])
})

t.test('durable: of several reconnect answers waiting for a commit, only the latest is exempt from the slow-client limits', async (t) => {
  const { storage, calls, nextCall } = controlledStorage()
  const room = new Room({ roomId: 'r', createStorage: () => storage, rateLimit: false, slowClient: { softBytes: 1000, hardBytes: 10_000 } })
  await room.load()
  const w = fakeSocket()
  const sw = room.handleSocketConnect({ socket: w, clientId: 'w', permissions: 'readwrite' })
  room.handleSocketMessage(sw, patch('m1', { big: { _exists: true, text: 'x'.repeat(30_000) } }))
  ;(await nextCall(1)).resolve()
  await room.flush()

  // A joiner that reads nothing, reconnecting twice with an edit each time: both answers wait for the commit.
  const j = { ...fakeSocket(), bufferedAmount: 0, terminated: 0 }
  j.send = function (data: string) { j.sent.push(JSON.parse(data)); j.bufferedAmount += Buffer.byteLength(data) }
  const terminate = (): void => { j.terminated++; j.readyState = 3 }
  const sj = room.handleSocketConnect({ socket: Object.assign(j, { terminate }), clientId: 'j', permissions: 'readwrite' })
  for (const key of ['e1', 'e2']) room.handleSocketMessage(sj, JSON.stringify({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2, documentPatches: [{ [key]: { _exists: true } }] }))
  t.notOk(j.sent.some((f) => f.type === 'synced'), 'nothing answered before the commit')
  for (let n = 2; n <= calls.length || j.sent.every((f) => f.type !== 'synced'); n++) {
    ;(await nextCall(n)).resolve()
    await room.flush()
    if (j.terminated > 0) break
  }
  t.equal(j.terminated, 1, 'the first answer, unread, counted: terminated when the second went out')
  t.equal(j.sent.filter((f) => f.type === 'patch' && f.documentPatches?.[0]?.big !== undefined).length, 1, 'the second whole document was never sent')
  await room.close()
})

t.test('rateLimit: the count toward closeAfter starts again after a second without a refusal, whatever comes first after it', async (t) => {
  // The room reads the time from performance.now(): a clock the test moves by hand.
  const realNow = performance.now.bind(performance)
  let clock = realNow()
  performance.now = () => clock
  t.teardown(() => { performance.now = realNow })
  const room = new Room({ roomId: 'r', rateLimit: { framesPerSecond: 0.001, burstFrames: 1, closeAfter: 3 } })
  await room.load()
  const a = fakeSocket()
  const sa = room.handleSocketConnect({ socket: a, clientId: 'a', permissions: 'readwrite' })
  const send = (id: string) => room.handleSocketMessage(sa, patch(id, { k: { _exists: true, v: id } }))
  send('m1')
  send('m2')
  send('m3')
  t.equal(a.sent.filter((f) => f.type === 'error').length, 2, 'm1 passed, m2 and m3 refused')
  clock += 999
  send('m4')
  t.same(a.closes, [[4429, 'Rate limit exceeded']], 'a third refusal within a second of the last closes the session')

  const b = fakeSocket()
  const sb = room.handleSocketConnect({ socket: b, clientId: 'b', permissions: 'readwrite' })
  const sendB = (id: string) => room.handleSocketMessage(sb, patch(id, { k: { v: id } }))
  sendB('n1')
  sendB('n2')
  sendB('n3')
  clock += 1001
  sendB('n4')
  t.same(b.closes, [], 'after a second without a refusal, the next refusal counts from one, though no frame passed in between')
  sendB('n5')
  sendB('n6')
  t.same(b.closes, [[4429, 'Rate limit exceeded']])
  await room.close()
})
