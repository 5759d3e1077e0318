import t from 'tap'
import { Room, type RoomSnapshot } from '../lib/index.js'
import { armedSlots, cancelSlot, inSlot } from '../lib/room/slots.js'

/**
 * Resolves with Date.now() when `run` is called. Slot timers are unref'd:
 * until then a timer of the test's own keeps the process running.
 */
function ran () {
  let resolve!: (at: number) => void
  const keepAlive = setInterval(() => {}, 60_000)
  const at = new Promise<number>((_resolve) => { resolve = _resolve }).finally(() => clearInterval(keepAlive))
  return { at, run: () => resolve(Date.now()) }
}

t.test('callbacks due in the same slot share one timer, run early by less than a slot and not before', async (t) => {
  t.equal(armedSlots(), 0)
  const asked = Date.now()
  const waits = Array.from({ length: 200 }, () => ran())
  const entries = waits.map((w) => inSlot(300, w.run))
  // 200 requests within a few ms: a 30 ms slot holds all of them, or they straddle two.
  t.ok(armedSlots() <= 2, `200 callbacks, ${armedSlots()} timer(s)`)
  const dues = new Set(entries.map((e) => e.due))
  t.equal(armedSlots(), dues.size, 'one timer per slot')
  for (const e of entries) {
    t.equal(e.due % 30, 0, 'slots are a tenth of the delay')
    t.ok(e.due <= asked + 300 + 5 && e.due > asked + 300 - 30 - 5, 'due within a slot before the delay')
  }
  const times = await Promise.all(waits.map((w) => w.at))
  // Node may fire a timer up to a millisecond before its due time (it rounds).
  t.ok(times.every((at) => at >= Math.min(...dues) - 1), 'none ran before its slot')
  t.equal(armedSlots(), 0, 'no timer left')
})

t.test('slots are at most 100 ms long', async (t) => {
  const entry = inSlot(60_000, () => t.fail('cancelled'))
  t.equal(entry.due % 100, 0)
  t.ok(entry.due > Date.now() + 60_000 - 101)
  cancelSlot(entry)
  t.equal(armedSlots(), 0)
})

t.test('a cancelled callback never runs; its slot\'s timer goes when its last callback does', async (t) => {
  const kept = ran()
  const dropped = inSlot(40, () => t.fail('a cancelled callback ran'))
  const sameSlot = inSlot(40, kept.run)
  if (sameSlot.due === dropped.due) {
    cancelSlot(dropped)
    t.equal(armedSlots(), 1, 'the slot keeps its timer for the other callback')
  } else {
    cancelSlot(dropped)
  }
  cancelSlot(dropped) // twice is harmless
  await kept.at
  t.equal(armedSlots(), 0)
  const alone = inSlot(40, () => t.fail('a cancelled callback ran'))
  cancelSlot(alone)
  t.equal(armedSlots(), 0, 'cancelling the only callback clears the timer')
  // A later slot's callback runs after the cancelled one would have.
  const later = ran()
  inSlot(80, later.run)
  await later.at
})

t.test('a callback that throws does not stop the others of its slot', async (t) => {
  const warned = new Promise<Error>((resolve) => process.once('warning', resolve))
  const after = ran()
  // Two requests fall in different slots when a slot boundary passes between them: ask again.
  for (;;) {
    const first = inSlot(20, () => { throw new Error('boom') })
    const second = inSlot(20, after.run)
    if (second.due === first.due) break
    cancelSlot(first)
    cancelSlot(second)
  }
  await after.at
  t.match((await warned).message, 'boom', 'reported as a process warning')
})

t.test('a room\'s throttled save waits in a slot, which its close cancels', async (t) => {
  const saves: RoomSnapshot[] = []
  const rooms = [0, 1, 2].map((i) => new Room({ roomId: `r${i}`, createStorage: () => ({ load: async () => null, save: async (s) => { saves.push(s) } }), saveThrottleMs: 60_000 }))
  const socket = () => ({ readyState: 1, send () {}, close () { this.readyState = 3 } })
  for (const [i, room] of rooms.entries()) {
    await room.load()
    const session = room.handleSocketConnect({ socket: socket(), clientId: 'a', permissions: 'readwrite' })
    room.handleSocketMessage(session, JSON.stringify({ type: 'patch', messageId: 'm', documentPatches: [{ [`k${i}`]: { _exists: true } }] }))
  }
  t.ok(armedSlots() >= 1 && armedSlots() <= 2, 'three rooms\' saves share a slot (or two, across a boundary)')
  t.equal(saves.length, 0, 'nothing saved before the throttle')
  for (const room of rooms) await room.close()
  t.equal(saves.length, 3, 'each close saved its room')
  t.equal(armedSlots(), 0, 'and cancelled its slot')
})
