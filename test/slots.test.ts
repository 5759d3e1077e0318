import t from 'tap'
import { COUNTER_RESERVE, Room, type IncrementalStorage, type RoomSnapshot } from '../lib/index.js'
import { Document } from '../lib/room/document.js'
import { Persistence, type PersistenceOptions } from '../lib/room/persistence.js'
import { SlotTimers, slotTimers } from '../lib/room/slots.js'
import { fakeClock } from './fake-clock.js'

/** A room's persistence over `storage`, on `slots`, with the plugin's defaults otherwise. */
function persistenceOf (slots: SlotTimers, doc: Document, storage: PersistenceOptions['storage'], durability: PersistenceOptions['durability'], extra: Partial<PersistenceOptions> = {}): Persistence {
  return new Persistence({
    storage,
    document: () => doc,
    throttleMs: 1000,
    durability,
    log: { error () {}, warn () {}, info () {}, debug () {} } as never,
    roomId: 'r',
    onCommit () {},
    onGiveUp () {},
    onMoved () {},
    failureBoundMs: 60_000,
    slots,
    ...extra
  })
}

t.test('every callback runs within its last slot before the delay, never late; callbacks of one slot share a timer', async (t) => {
  const fake = fakeClock()
  const slots = new SlotTimers(fake.clock)
  // Deterministic pseudo-random delays and request times.
  let seed = 7
  const random = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n }
  const asked: Array<{ at: number, delay: number, due: number, ranAt: number | null }> = []
  let twice = 0
  for (let i = 0; i < 2000; i++) {
    const delay = [0, 1, 5, 37, 300, 1000, 5000, 60_000][random(8)] + random(3)
    const record = { at: fake.now(), delay, due: 0, ranAt: null as number | null }
    record.due = slots.add(delay, () => {
      if (record.ranAt !== null) twice++
      record.ranAt = fake.now()
    }).due
    asked.push(record)
    fake.advance(random(4) * 0.37)
  }
  t.equal(slots.armed, fake.timers.size, 'one Node timer per armed slot')
  t.equal(slots.armed, new Set(asked.filter((a) => a.ranAt === null).map((a) => a.due)).size, 'one timer per distinct slot')
  t.ok(slots.armed < 500, `2,000 callbacks in ${slots.armed} timers`)
  t.ok([...fake.timers].every((timer) => timer.unrefd), 'every timer is unref\'d')
  fake.advance(70_000)
  let late = 0
  let early = 0
  for (const a of asked) {
    const slot = Math.min(100, Math.max(1, Math.floor(a.delay / 10)))
    if (a.ranAt === null || a.ranAt > a.at + a.delay + 1) late++
    if (a.ranAt !== null && (a.ranAt < a.due || a.ranAt <= a.at + a.delay - slot)) early++
  }
  t.equal(twice, 0, 'none ran twice')
  t.equal(late, 0, 'none ran late (beyond rounding to a whole millisecond)')
  t.equal(early, 0, 'none ran before its slot, or more than a slot early')
  t.equal(slots.armed, 0)
  t.equal(slots.waiting, 0)
  t.equal(fake.timers.size, 0, 'no timer left')
})

t.test('a cancelled callback never runs, and the last one cancelled in a slot clears its timer', async (t) => {
  const fake = fakeClock()
  const slots = new SlotTimers(fake.clock)
  const ran: string[] = []
  const a = slots.add(1000, () => ran.push('a'))
  const b = slots.add(1000, () => ran.push('b'))
  t.equal(a.due, b.due)
  slots.cancel(a)
  t.equal(fake.timers.size, 1, 'the slot keeps its timer for b')
  slots.cancel(a)
  t.equal(slots.waiting, 1, 'cancelling twice is harmless')
  slots.cancel(b)
  t.equal(fake.timers.size, 0, 'the timer is cleared with the last callback')
  t.equal(slots.armed, 0)
  fake.advance(2000)
  t.same(ran, [])
})

t.test('a callback may cancel another of its slot, or ask for a new one, while the slot runs', async (t) => {
  const fake = fakeClock()
  const slots = new SlotTimers(fake.clock)
  const ran: string[] = []
  // eslint-disable-next-line prefer-const
  let b: ReturnType<SlotTimers['add']>
  slots.add(100, () => {
    ran.push('a')
    slots.cancel(b)
    // Same delay, same due time: it must still wait for a timer of its own, not run in this loop.
    slots.add(0, () => ran.push('c'))
  })
  b = slots.add(100, () => ran.push('b'))
  fake.advance(100)
  t.same(ran, ['a'], 'b was cancelled before its turn; c waits for its own timer')
  fake.advance(1)
  t.same(ran, ['a', 'c'])
  t.equal(slots.waiting, 0)
  t.equal(fake.timers.size, 0)
})

t.test('a callback that throws does not stop the others of its slot', async (t) => {
  const fake = fakeClock()
  const slots = new SlotTimers(fake.clock)
  const warnings: Error[] = []
  const onWarning = (w: Error): void => { if (w.name === 'CanvasStoreSlotWarning') warnings.push(w) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  const ran: string[] = []
  slots.add(50, () => { throw new Error('boom') })
  slots.add(50, () => ran.push('after'))
  fake.advance(50)
  t.same(ran, ['after'])
  await new Promise<void>((resolve) => setImmediate(resolve))
  t.equal(warnings.length, 1)
  t.match(warnings[0].message, 'boom', 'reported as a process warning')
})

t.test('a room\'s throttled writes: one waiting at a time, run on its slot, cancelled by stop and flush', async (t) => {
  const fake = fakeClock()
  const slots = new SlotTimers(fake.clock)
  const saves: RoomSnapshot[] = []
  const doc = new Document()
  const persistence = persistenceOf(slots, doc, { load: async () => null, save: async (s) => { saves.push(s) } }, 'throttled')
  // Loaded with counters reserved (as after the first write): changes below the reservation wait for the throttle.
  persistence.loaded(COUNTER_RESERVE, COUNTER_RESERVE)
  for (let i = 0; i < 20; i++) persistence.noteChanges(doc.applyFrame([{ [`k${i}`]: { _exists: true } }])!)
  t.equal(slots.waiting, 1, '20 changes, one write waiting')
  fake.advance(899)
  t.equal(saves.length, 0, 'not before its slot')
  fake.advance(101)
  t.equal(saves.length, 1, 'written by the throttle\'s deadline')
  await persistence.flush()
  t.equal(Object.keys(saves[0].state).length, 20)

  persistence.noteChanges(doc.applyFrame([{ late: { _exists: true } }])!)
  t.equal(slots.waiting, 1)
  await persistence.flush()
  t.equal(saves.length, 2, 'flush wrote at once')
  t.equal(slots.waiting, 0, 'and dropped the waiting write')
  fake.advance(2000)
  t.equal(saves.length, 2, 'nothing written twice')

  persistence.noteChanges(doc.applyFrame([{ stopped: { _exists: true } }])!)
  persistence.stop()
  t.equal(slots.waiting, 0, 'stop drops the waiting write')
  fake.advance(2000)
  t.equal(saves.length, 2)
  t.equal(fake.timers.size, 0)
})

t.test('a room saves on the process\'s shared slots without being closed', async (t) => {
  let saved!: (s: RoomSnapshot) => void
  let save = new Promise<RoomSnapshot>((resolve) => { saved = resolve })
  const room = new Room({ roomId: 'r', createStorage: () => ({ load: async () => null, save: async (s) => { saved(s) } }), saveThrottleMs: 30 })
  await room.load()
  const socket = { readyState: 1, send () {}, close () { socket.readyState = 3 } }
  const session = room.handleSocketConnect({ socket, clientId: 'a', permissions: 'readwrite' })
  room.handleSocketMessage(session, JSON.stringify({ type: 'patch', messageId: 'm0', documentPatches: [{ k: { _exists: true, x: 0 } }] }))
  t.equal(slotTimers.waiting, 0, 'the first write goes at once: it reserves counters')
  t.equal((await save).timestamp, 1 + COUNTER_RESERVE)
  save = new Promise<RoomSnapshot>((resolve) => { saved = resolve })
  await new Promise((resolve) => setImmediate(resolve))
  room.handleSocketMessage(session, JSON.stringify({ type: 'patch', messageId: 'm', documentPatches: [{ k: { _exists: true, x: 1 } }] }))
  t.equal(slotTimers.waiting, 1)
  // The slot's timer is unref'd: keep the process running until it fires.
  const keepAlive = setInterval(() => {}, 60_000)
  const snapshot = await save.finally(() => clearInterval(keepAlive))
  t.same(snapshot.state.k, { _exists: true, x: 1 })
  t.equal(slotTimers.waiting, 0)
  await room.close()
})

t.test('throttled: a change past the stored reservation has the waiting throttled write go at once, and what the room sends waits for it', async (t) => {
  const fake = fakeClock()
  const slots = new SlotTimers(fake.clock)
  const saves: RoomSnapshot[] = []
  const doc = new Document()
  const persistence = persistenceOf(slots, doc, { load: async () => null, save: async (s) => { saves.push(s) } }, 'throttled')
  t.same(persistence.loaded(5 + COUNTER_RESERVE, 5), { after: 5, before: 5 + COUNTER_RESERVE }, 'a reservation left by a crash: the counters in between may have been acked')
  t.equal(persistence.loaded(7, 5), null, 'a counter stored as itself (frames that stored nothing): nothing lost')
  persistence.loaded(3, 3)
  for (let i = 0; i < 3; i++) persistence.noteChanges(doc.applyFrame([{ [`k${i}`]: { _exists: true } }])!)
  t.equal(slots.waiting, 1, 'below the reservation: the throttle')
  t.notOk(persistence.holding)
  persistence.noteChanges(doc.applyFrame([{ k3: { _exists: true } }])!)
  t.ok(persistence.holding, 'counter 4 is past the stored 3')
  t.ok(persistence.required > persistence.committed)
  t.equal(slots.waiting, 0, 'the throttled write no longer waits')
  await new Promise<void>((resolve) => setImmediate(resolve))
  t.same(saves.map((s) => [s.timestamp, Object.keys(s.state).length]), [[4 + COUNTER_RESERVE, 4]])
  t.notOk(persistence.holding)
  t.equal(persistence.required, persistence.committed)
})

t.test('throttled: the reservation itself is never acked (the next load starts there); the counter below it is', async (t) => {
  const fake = fakeClock()
  const slots = new SlotTimers(fake.clock)
  let current = new Document()
  const persistence = persistenceOf(slots, current, { load: async () => null, save: async () => {} }, 'throttled', { document: () => current })
  persistence.noteChanges(current.applyFrame([{ k: { _exists: true } }])!)
  await persistence.flush()
  const stored = 1 + COUNTER_RESERVE
  current = Document.fromSnapshot({ timestamp: stored - 1, state: {}, timestamps: {} })
  t.notOk(persistence.holding, 'up to the reservation minus one: acked at once')
  current = Document.fromSnapshot({ timestamp: stored, state: {}, timestamps: {} })
  t.ok(persistence.holding, 'the reservation: waits for a new one')
})

t.test('a watchdog whose report closed the room (stop) is not armed again', async (t) => {
  const fake = fakeClock()
  const slots = new SlotTimers(fake.clock)
  const doc = new Document()
  const storage: IncrementalStorage = { load: async () => null, save: async () => {}, append: () => new Promise(() => {}) }
  let reports = 0
  const persistence: Persistence = persistenceOf(slots, doc, storage, 'durable', { failureBoundMs: 1000, onGiveUp: () => { reports++; persistence.stop() } })
  persistence.noteChanges(doc.applyFrame([{ k: { _exists: true } }])!)
  await new Promise<void>((resolve) => setImmediate(resolve))
  fake.advance(1000)
  t.equal(reports, 1)
  t.equal(fake.timers.size, 0, 'no timer left')
  fake.advance(10_000)
  t.equal(reports, 1, 'not reported again')
})

t.test('durable writes of large keys wait to gather changes (64 ms per MiB, at most 5 s); small ones go at once', async (t) => {
  const fake = fakeClock()
  const slots = new SlotTimers(fake.clock)
  const appends: string[][] = []
  const doc = new Document()
  const storage: IncrementalStorage = { load: async () => null, save: async () => {}, append: async (changes) => { appends.push(changes.entries.map((e) => e.key)) } }
  const persistence = persistenceOf(slots, doc, storage, 'durable')
  t.ok(persistence.holding)
  const settle = () => new Promise<void>((resolve) => setImmediate(resolve))

  persistence.noteChanges(doc.applyFrame([{ small: { _exists: true, v: 1 } }])!)
  await settle()
  t.same(appends, [['small']], 'a small change is written at once')

  // About 4 MiB of estimate: a 256 ms wait.
  persistence.noteChanges(doc.applyFrame([{ big: { _exists: true, blob: 'x'.repeat(4 * 1024 * 1024) } }])!)
  await settle()
  t.same(appends.length, 1, 'not at once')
  t.equal(slots.waiting, 1)
  for (let i = 0; i < 10; i++) persistence.noteChanges(doc.applyFrame([{ big: { n: i } }, { small: { v: i } }])!)
  t.ok(persistence.required > persistence.committed, 'acks of these changes wait for the write')
  // Its slot is 25 ms: it may go up to 25 ms early.
  fake.advance(230)
  await settle()
  t.same(appends.length, 1, 'still gathering')
  fake.advance(26)
  await settle()
  t.same(appends, [['small'], ['big', 'small']], 'eleven changes of the large key, one write')
  t.equal(persistence.required, persistence.committed)

  // A huge key waits at most 5 s (its slot is 100 ms: it may go up to 100 ms early).
  persistence.noteChanges(doc.applyFrame([{ huge: { _exists: true, blob: 'y'.repeat(200 * 1024 * 1024) } }])!)
  await settle()
  t.equal(slots.waiting, 1, 'the wait is armed when the write would have been cut')
  fake.advance(4899)
  await settle()
  t.equal(appends.length, 2)
  fake.advance(101)
  await settle()
  t.same(appends.at(-1), ['huge'])
  await persistence.flush()
})

t.test('durable writes of large keys: decided when the write is cut, forgotten once written, kept out of the retry backoff', async (t) => {
  const fake = fakeClock()
  const slots = new SlotTimers(fake.clock)
  const calls: Array<{ keys: string[], settle: (err?: Error) => void }> = []
  const storage: IncrementalStorage = {
    load: async () => null,
    save: async () => {},
    append: (changes) => new Promise<void>((resolve, reject) => {
      calls.push({ keys: changes.entries.map((e) => e.key), settle: (err) => { if (err === undefined) resolve(); else reject(err) } })
    })
  }
  const doc = new Document()
  const gaveUp: unknown[] = []
  const persistence = persistenceOf(slots, doc, storage, 'durable', { onGiveUp (err) { gaveUp.push(err) }, failureBoundMs: 10_000 })
  const settle = () => new Promise<void>((resolve) => setImmediate(resolve))
  const blob = 'x'.repeat(4 * 1024 * 1024)

  // A small change, then a large one, in the same turn: the write waits for the large one.
  persistence.noteChanges(doc.applyFrame([{ small: { _exists: true, v: 0 } }])!)
  persistence.noteChanges(doc.applyFrame([{ big: { _exists: true, blob } }])!)
  await settle()
  t.equal(calls.length, 0, 'not written in the turn')
  fake.advance(257)
  await settle()
  t.same(calls.map((c) => c.keys), [['small', 'big']])

  // Changes of the large key while that write is in flight: the next write waits too.
  persistence.noteChanges(doc.applyFrame([{ big: { n: 1 } }])!)
  calls[0].settle()
  await settle()
  t.equal(calls.length, 1, 'the next write waits')
  fake.advance(257)
  await settle()
  t.same(calls[1].keys, ['big'])
  calls[1].settle()
  await settle()

  // Once written, a small change goes at once again.
  persistence.noteChanges(doc.applyFrame([{ small: { v: 1 } }])!)
  await settle()
  t.same(calls[2]?.keys, ['small'], 'the large key\'s size was forgotten with its write')
  calls[2].settle()
  await settle()

  // A failed write of the large key is retried after the usual backoff (200 ms), not its wait doubled.
  persistence.noteChanges(doc.applyFrame([{ big: { n: 2 } }])!)
  await settle()
  fake.advance(257)
  await settle()
  t.same(calls[3].keys, ['big'])
  calls[3].settle(new Error('SQLITE_BUSY'))
  await settle()
  t.notOk([...fake.timers].at(-1)?.unrefd, 'the retry\'s timer holds the process open')
  fake.advance(199)
  await settle()
  t.equal(calls.length, 4)
  fake.advance(1)
  await settle()
  t.same(calls[4]?.keys, ['big'], 'retried after 200 ms')
  calls[4].settle()
  await settle()
  t.same(gaveUp, [], 'one failure does not give up')
  t.equal(persistence.required, persistence.committed)
})
