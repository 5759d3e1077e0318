import { join } from 'node:path'
import t from 'tap'
import { FileStorage, SqliteStorage } from '../lib/index.js'
import { build, connect, write } from './helper.js'

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

for (const kind of ['SqliteStorage (append)', 'FileStorage (save)'] as const) {
  t.test(`${kind}: frames that store nothing still move the counter, and it survives a restart`, async (t) => {
    const dir = t.testdir({})
    const sqlite = kind.startsWith('Sqlite') ? new SqliteStorage({ file: join(dir, 'db.sqlite') }) : undefined
    t.teardown(() => sqlite?.close())
    const opts = sqlite !== undefined ? { storage: sqlite } : { createStorage: (roomId: string) => new FileStorage({ dir, roomId }), saveThrottleMs: 60_000 }
    const first = await build(t, opts)
    const writer = await connect(first, { roomId: 'r', clientId: 'w' })
    await writer.join()
    await write(writer, 'create', [{ 'a/Pos': { _exists: true, x: 1 } }])
    await write(writer, 'delete', [{ 'a/Pos': { _exists: false } }])
    // A drag of a shape someone deleted, and an empty update: acked with a new counter, nothing stored.
    t.equal((await write(writer, 'late', [{ 'a/Pos': { x: 2 } }])).timestamp, 3)
    t.equal((await write(writer, 'ghost', [{ 'b/Pos': { x: 2 } }])).timestamp, 4)
    await write(writer, 'live', [{ 'c/Pos': { _exists: true } }])
    t.equal((await write(writer, 'empty', [{ 'c/Pos': {} }])).timestamp, 6, 'the writer was told 6')
    await first.close()

    const second = await build(t, opts)
    const other = await connect(second, { roomId: 'r', clientId: 'o' })
    t.equal((await other.join()).timestamp, 6, 'the counter the writer was told survived')
    t.equal((await write(other, 'next', [{ 'd/Pos': { _exists: true } }])).timestamp, 7, 'the next write gets a new counter')
    const back = await connect(second, { roomId: 'r', clientId: 'w' })
    const diff = back.nextOfType('patch')
    t.equal((await back.join(6)).timestamp, 7)
    t.strictSame((await diff).documentPatches, [{ 'd/Pos': { _exists: true } }], 'the writer, back with 6, gets what came after')
  })
}
