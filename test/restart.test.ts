import t from 'tap'
import { FileStorage } from '../lib/index.js'
import { build, connect } from './helper.js'

t.test('edits and deletions survive a restart on FileStorage', async (t) => {
  const dir = t.testdir({})
  const opts = { createStorage: (roomId: string) => new FileStorage({ dir, roomId }), saveThrottleMs: 60_000 }

  const first = await build(t, opts)
  const writer = await connect(first, { roomId: 'doc/1', clientId: 'w' })
  await writer.join()
  const send = async (messageId: string, patch: Record<string, unknown>): Promise<number> => {
    const ack = writer.next((f) => f.type === 'ack' && f.messageId === messageId)
    writer.send({ type: 'patch', messageId, documentPatches: [patch] })
    return (await ack).timestamp
  }
  await send('1', { 'a/Pos': { _exists: true, x: 1 }, 'b/Pos': { _exists: true, x: 1 } })
  const seenByOldClient = await send('2', { 'c/Pos': { _exists: true, x: 1 } })
  await send('3', { 'b/Pos': { _exists: false } })
  await send('4', { 'a/Pos': { x: 2 } })
  await send('5', { 'd/Pos': { _exists: true, v: [1, 2] } })
  await send('6', { 'd/Pos': { v: { __buf: 1, len: 3, runs: [[2, [3]]] } } })
  // The save throttle is a minute long: only the shutdown save can have written this.
  await first.close()

  const second = await build(t, opts)
  const late = await connect(second, { roomId: 'doc/1', clientId: 'late' })
  const diff = late.nextOfType('patch')
  const synced = await late.join(seenByOldClient)
  t.equal(synced.timestamp, 6, 'the counter survived')
  const frame = await diff
  t.same(frame.documentPatches, [{
    'b/Pos': { _exists: false },
    'a/Pos': { x: 2 },
    'd/Pos': { _exists: true, v: [1, 2, 3] }
  }], 'the deletion and every later edit, arrays whole')
  t.equal(frame.timestamp, 6)
  await late.close()
})
