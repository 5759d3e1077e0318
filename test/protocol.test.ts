import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { ACK, CLIENT_COUNT, Peer, build, connect, connectReal, gate, joined, listen, roomOf, serverReceived, snapshotOf, stateOf, throwOnKey, write } from './helper.js'

t.test('connect: the newcomer gets the other clients\' presence, then every session gets clientCount', async (t) => {
  const app = await build(t)
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  await a.next(CLIENT_COUNT(1))
  t.strictSame(a.frames, [{ type: 'clientCount', count: 1 }], 'first client: no presence frame, only clientCount')
  await a.join()
  await write(a, 'm1', undefined, [{ 'cursor/a': { _exists: true, x: 1 } }])

  const b = await connect(app, { roomId: 'r', clientId: 'b' })
  await b.next(CLIENT_COUNT(2))
  t.strictSame(b.frames, [
    { type: 'patch', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 1 } }], clientId: '' },
    { type: 'clientCount', count: 2 }
  ])
  await a.next(CLIENT_COUNT(2))

  const c = await connect(app, { roomId: 'r', clientId: 'c' })
  await c.next(CLIENT_COUNT(3))
  t.strictSame(c.frames, [
    { type: 'patch', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 1 } }], clientId: '' },
    { type: 'clientCount', count: 3 }
  ], 'only the clients that have presence contribute')
  await a.next(CLIENT_COUNT(3))
  await b.next(CLIENT_COUNT(3))
  await Promise.all([a.close(), b.close(), c.close()])
})

t.test('patch: acked with the room counter and broadcast to the other sessions only', async (t) => {
  const app = await build(t)
  const a = await joined(app, 'a', 1)
  const b = await joined(app, 'b', 2)
  const c = await joined(app, 'c', 3)

  const docPatch = { 'e1/Pos': { _exists: true, x: 1 } }
  let onB = b.nextOfType('patch')
  const onC = c.nextOfType('patch')
  t.strictSame(await write(a, 'm1', [docPatch]), { type: 'ack', messageId: 'm1', timestamp: 1 })
  const expected = { type: 'patch', clientId: 'a', documentPatches: [docPatch], timestamp: 1 }
  t.strictSame(await onB, expected)
  t.strictSame(await onC, expected)

  const eph = { 'cursor/a': { _exists: true, x: 5 } }
  onB = b.nextOfType('patch')
  t.strictSame(await write(a, 'm2', undefined, [eph]), { type: 'ack', messageId: 'm2', timestamp: 1 }, 'ephemeral-only: counter unchanged')
  t.strictSame(await onB, { type: 'patch', clientId: 'a', ephemeralPatches: [eph] }, 'no timestamp without document patches')

  const docPatch2 = { 'e1/Pos': { x: 2 } }
  onB = b.nextOfType('patch')
  t.strictSame(await write(a, 'm3', [docPatch2], [eph]), { type: 'ack', messageId: 'm3', timestamp: 2 })
  t.strictSame(await onB, { type: 'patch', clientId: 'a', documentPatches: [docPatch2], timestamp: 2, ephemeralPatches: [eph] })

  t.equal(a.frames.filter((f) => f.type === 'patch').length, 0, 'the sender never gets its own broadcast')
  await Promise.all([a.close(), b.close(), c.close()])
})

t.test('patch: empty or absent patches are ignored, with no ack and no broadcast', async (t) => {
  const app = await build(t)
  const a = await joined(app, 'a', 1)
  const b = await joined(app, 'b', 2)
  const from = a.frames.length
  const fromB = b.frames.length
  a.send({ type: 'patch', messageId: 'e1' })
  a.send({ type: 'patch', messageId: 'e2', documentPatches: [], ephemeralPatches: [] })
  a.send({ type: 'patch', messageId: 'e3', documentPatches: [{}], ephemeralPatches: [{}, {}] })
  t.strictSame(await write(a, 'm4', [{ 'e1/Pos': { _exists: true, x: 1 } }]), { type: 'ack', messageId: 'm4', timestamp: 1 }, 'the empty frames did not advance the counter')
  t.strictSame(a.frames.slice(from), [{ type: 'ack', messageId: 'm4', timestamp: 1 }], 'no ack for the empty frames')
  await b.next((f) => f.type === 'patch' && f.timestamp === 1)
  t.strictSame(b.frames.slice(fromB).map((f) => f.type), ['patch'], 'only the non-empty frame was broadcast')
  await Promise.all([a.close(), b.close()])
})

t.test('counter: +1 per frame with a non-empty document patch; ephemeral-only frames leave it', async (t) => {
  const app = await build(t)
  const a = await joined(app, 'a', 1)
  const ack1 = await write(a, 'm1', [{ 'e1/A': { _exists: true, v: 1 } }, {}, { 'e2/A': { _exists: true, v: 2 }, 'e3/A': { _exists: true, v: 3 } }])
  t.equal(ack1.timestamp, 1, 'several patches in one frame advance the counter once')
  const snap = snapshotOf(app)
  t.strictSame(snap.timestamps['e1/A'], { _exists: 1, v: 1 })
  t.strictSame(snap.timestamps['e2/A'], { _exists: 1, v: 1 })
  t.strictSame(snap.timestamps['e3/A'], { _exists: 1, v: 1 })

  t.equal((await write(a, 'm2', undefined, [{ 'cursor/a': { _exists: true, x: 1 } }])).timestamp, 1, 'ephemeral-only frame')
  t.equal((await write(a, 'm3', [{}], [{ 'cursor/a': { x: 2 } }])).timestamp, 1, 'empty document patch with ephemeral patches')
  t.equal((await write(a, 'm4', [{ 'e1/A': { v: 10 } }, { 'e2/A': { v: 20 } }])).timestamp, 2)
  t.equal((await write(a, 'm5', [{ 'e3/A': { _exists: false } }])).timestamp, 3, 'a deletion counts')
  const synced = await a.join(3, { documentPatches: [{ 'e4/A': { _exists: true, v: 4 } }] })
  t.equal(synced.timestamp, 4, 'document patches carried by reconnect count too')
  t.equal(roomOf(app).timestamp, 4)
  t.strictSame(snapshotOf(app).timestamps['e1/A'], { _exists: 1, v: 2 })
  await a.close()
})

t.test('reconnect with protocolVersion 1 gets only version-mismatch', async (t) => {
  const app = await build(t)
  const b = await joined(app, 'b', 1)
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  await Promise.all([a.next(CLIENT_COUNT(2)), b.next(CLIENT_COUNT(2))])
  const from = a.frames.length
  const fromB = b.frames.length
  a.send({
    type: 'reconnect',
    lastTimestamp: 0,
    protocolVersion: 1,
    documentPatches: [{ 'e1/A': { _exists: true, v: 1 } }],
    ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 1 } }]
  })
  const probe = await write(a, 'probe', undefined, [{ 'sel/a': { _exists: true, ids: [] } }])
  t.strictSame(a.frames.slice(from), [
    { type: 'version-mismatch', serverProtocolVersion: 2 },
    { type: 'ack', messageId: 'probe', timestamp: 0 }
  ], 'no diff, no synced')
  t.equal(probe.timestamp, 0, 'the carried document patches were not applied')
  t.strictSame(snapshotOf(app).state, {})
  await b.next((f) => f.type === 'patch' && f.clientId === 'a')
  t.strictSame(b.frames.slice(fromB), [
    { type: 'patch', clientId: 'a', ephemeralPatches: [{ 'sel/a': { _exists: true, ids: [] } }] }
  ], 'the carried patches were not broadcast')
  await Promise.all([a.close(), b.close()])
})

/** Builds the history used by the reconnect-diff tests: counter 5, e2/Pos deleted. */
async function history (app: FastifyInstance): Promise<Peer> {
  const w = await joined(app, 'w', 1)
  await write(w, 'h1', [{ 'e1/Pos': { _exists: true, x: 1, y: 1 } }])
  await write(w, 'h2', [{ 'e2/Pos': { _exists: true, x: 2 } }])
  await write(w, 'h3', [{ 'e1/Pos': { x: 10 } }])
  await write(w, 'h4', [{ 'e2/Pos': { _exists: false } }])
  await write(w, 'h5', [{ 'e3/Pos': { _exists: true, x: 3 } }], [{ 'cursor/w': { _exists: true, x: 7 } }])
  return w
}

/** Connects, waits for the connect frames, then sends `reconnect` and returns the frames it caused. */
async function reconnectFrames (app: FastifyInstance, clientId: string, lastTimestamp: number): Promise<any[]> {
  const peer = await connect(app, { roomId: 'r', clientId })
  await peer.next((f) => f.type === 'clientCount')
  const from = peer.frames.length
  await peer.join(lastTimestamp)
  const frames = peer.frames.slice(from)
  await peer.close()
  return frames
}

t.test('reconnect diff: only fields with a timestamp above lastTimestamp, tombstones included, then synced', async (t) => {
  const app = await build(t)
  const w = await history(app)
  t.strictSame(await reconnectFrames(app, 'r', 2), [
    {
      type: 'patch',
      clientId: '',
      documentPatches: [{ 'e1/Pos': { x: 10 }, 'e2/Pos': { _exists: false }, 'e3/Pos': { _exists: true, x: 3 } }],
      timestamp: 5,
      ephemeralPatches: [{ 'cursor/w': { _exists: true, x: 7 } }]
    },
    { type: 'synced', timestamp: 5 }
  ])
  t.strictSame(await reconnectFrames(app, 'r0', 0), [
    {
      type: 'patch',
      clientId: '',
      documentPatches: [{ 'e1/Pos': { _exists: true, x: 10, y: 1 }, 'e2/Pos': { _exists: false }, 'e3/Pos': { _exists: true, x: 3 } }],
      timestamp: 5,
      ephemeralPatches: [{ 'cursor/w': { _exists: true, x: 7 } }]
    },
    { type: 'synced', timestamp: 5 }
  ], 'lastTimestamp 0: the whole document')
  t.strictSame(await reconnectFrames(app, 'r4', 4), [
    {
      type: 'patch',
      clientId: '',
      documentPatches: [{ 'e3/Pos': { _exists: true, x: 3 } }],
      timestamp: 5,
      ephemeralPatches: [{ 'cursor/w': { _exists: true, x: 7 } }]
    },
    { type: 'synced', timestamp: 5 }
  ])
  await w.close()
})

t.test('reconnect diff: omits the empty part, and the whole frame when both are empty; always ends with synced', async (t) => {
  const app = await build(t)
  const fresh = await connect(app, { roomId: 'empty', clientId: 'first' })
  await fresh.next(CLIENT_COUNT(1))
  const from = fresh.frames.length
  await fresh.join(0)
  t.strictSame(fresh.frames.slice(from), [{ type: 'synced', timestamp: 0 }], 'empty room: only synced')
  await fresh.close()

  const w = await history(app)
  t.strictSame(await reconnectFrames(app, 'up-to-date', 5), [
    { type: 'patch', clientId: '', ephemeralPatches: [{ 'cursor/w': { _exists: true, x: 7 } }] },
    { type: 'synced', timestamp: 5 }
  ], 'nothing new in the document: no documentPatches, no timestamp')

  await write(w, 'bye', undefined, [{ 'cursor/w': { _exists: false } }])
  t.strictSame(await reconnectFrames(app, 'up-to-date-2', 5), [
    { type: 'synced', timestamp: 5 }
  ], 'nothing new and no presence: no patch frame at all')
  t.strictSame(await reconnectFrames(app, 'behind', 3), [
    { type: 'patch', clientId: '', documentPatches: [{ 'e2/Pos': { _exists: false }, 'e3/Pos': { _exists: true, x: 3 } }], timestamp: 5 },
    { type: 'synced', timestamp: 5 }
  ], 'no presence: no ephemeralPatches')
  await w.close()
})

t.test('reconnect with lastTimestamp above the counter: resync{since} before the diff for readwrite, not for readonly', async (t) => {
  const app = await build(t, {
    authorize: ({ token }) => ({ permissions: token === 'ro' ? 'readonly' : 'readwrite' })
  })
  const w = await joined(app, 'w', 1)
  await write(w, 'h1', [{ 'e1/A': { _exists: true, v: 1 } }])
  await write(w, 'h2', [{ 'e1/A': { v: 2 } }], [{ 'cursor/w': { _exists: true, x: 1 } }])

  const rw = await connect(app, { roomId: 'r', clientId: 'rw' })
  await rw.next(CLIENT_COUNT(2))
  let from = rw.frames.length
  await rw.join(7, { documentPatches: [{ 'e9/A': { _exists: true, v: 9 } }] })
  t.strictSame(rw.frames.slice(from), [
    { type: 'resync', since: 2 },
    { type: 'patch', clientId: '', ephemeralPatches: [{ 'cursor/w': { _exists: true, x: 1 } }] },
    { type: 'synced', timestamp: 3 }
  ], 'since is the counter before the carried patches were applied')

  const ro = await connect(app, { roomId: 'r', clientId: 'ro', token: 'ro' })
  await ro.next(CLIENT_COUNT(3))
  from = ro.frames.length
  await ro.join(7)
  t.strictSame(ro.frames.slice(from), [
    { type: 'patch', clientId: '', ephemeralPatches: [{ 'cursor/w': { _exists: true, x: 1 } }] },
    { type: 'synced', timestamp: 3 }
  ], 'readonly: no resync')

  from = rw.frames.length
  await rw.join(3)
  t.notOk(rw.frames.slice(from).some((f) => f.type === 'resync'), 'lastTimestamp equal to the counter: no resync')
  await Promise.all([w.close(), rw.close(), ro.close()])
})

t.test('reconnect: carried documentPatches and ephemeralPatches are applied and broadcast', async (t) => {
  const app = await build(t)
  const a = await joined(app, 'a', 1)
  const b = await connect(app, { roomId: 'r', clientId: 'b' })
  await b.next(CLIENT_COUNT(2))
  const docs = [{ 'e1/A': { _exists: true, v: 1 } }]
  const ephs = [{ 'cursor/b': { _exists: true, x: 4 } }]
  const onA = a.nextOfType('patch')
  const from = b.frames.length
  await b.join(0, { documentPatches: docs, ephemeralPatches: ephs })
  t.strictSame(await onA, { type: 'patch', clientId: 'b', documentPatches: docs, timestamp: 1, ephemeralPatches: ephs })
  t.strictSame(b.frames.slice(from), [
    { type: 'patch', clientId: '', documentPatches: [{ 'e1/A': { _exists: true, v: 1 } }], timestamp: 1 },
    { type: 'synced', timestamp: 1 }
  ], 'no ack for a reconnect; the diff includes the applied patch but not the own presence')
  t.strictSame(snapshotOf(app).state, { 'e1/A': { _exists: true, v: 1 } })

  const c = await connect(app, { roomId: 'r', clientId: 'c' })
  await c.next(CLIENT_COUNT(3))
  t.strictSame(c.frames[0], { type: 'patch', ephemeralPatches: ephs, clientId: '' }, 'the carried presence is stored')
  await Promise.all([a.close(), b.close(), c.close()])
})

t.test('a partial update to a missing key is dropped from state but still acked and broadcast as received', async (t) => {
  const app = await build(t)
  const a = await joined(app, 'a', 1)
  const b = await joined(app, 'b', 2)
  const partial = { 'ghost/Pos': { x: 5 } }
  const onB = b.nextOfType('patch')
  t.strictSame(await write(a, 'm1', [partial]), { type: 'ack', messageId: 'm1', timestamp: 1 })
  t.strictSame(await onB, { type: 'patch', clientId: 'a', documentPatches: [partial], timestamp: 1 })
  t.strictSame(snapshotOf(app), { timestamp: 1, state: {}, timestamps: {} })
  t.strictSame(await reconnectFrames(app, 'c', 0), [{ type: 'synced', timestamp: 1 }], 'nothing to send in the diff')
  await Promise.all([a.close(), b.close()])
})

t.test('a partial update to a deleted key is dropped (no resurrection) but still acked and broadcast', async (t) => {
  const app = await build(t)
  const a = await joined(app, 'a', 1)
  const b = await joined(app, 'b', 2)
  await write(a, 'm1', [{ 'e1/Pos': { _exists: true, x: 1, y: 1 } }])
  await write(a, 'm2', [{ 'e1/Pos': { _exists: false } }])
  const partial = { 'e1/Pos': { x: 9 } }
  const onB = b.next((f) => f.type === 'patch' && f.timestamp === 3)
  t.strictSame(await write(a, 'm3', [partial]), { type: 'ack', messageId: 'm3', timestamp: 3 })
  t.strictSame(await onB, { type: 'patch', clientId: 'a', documentPatches: [partial], timestamp: 3 })
  const snap = snapshotOf(app)
  t.strictSame(snap.state, { 'e1/Pos': { _exists: false } })
  t.strictSame(snap.timestamps, { 'e1/Pos': { _exists: 2 } })
  t.strictSame(await reconnectFrames(app, 'c', 0), [
    { type: 'patch', clientId: '', documentPatches: [{ 'e1/Pos': { _exists: false } }], timestamp: 3 },
    { type: 'synced', timestamp: 3 }
  ])
  await Promise.all([a.close(), b.close()])
})

t.test('a key can be re-created after a delete; old fields do not come back', async (t) => {
  const app = await build(t)
  const a = await joined(app, 'a', 1)
  await write(a, 'm1', [{ 'e1/Pos': { _exists: true, x: 1, y: 1 } }])
  await write(a, 'm2', [{ 'e1/Pos': { _exists: false } }])
  t.strictSame(snapshotOf(app).timestamps['e1/Pos'], { _exists: 2 }, 'a tombstone resets the field timestamps')
  await write(a, 'm3', [{ 'e1/Pos': { _exists: true, x: 3 } }])
  const snap = snapshotOf(app)
  t.strictSame(snap.state['e1/Pos'], { _exists: true, x: 3 })
  t.strictSame(snap.timestamps['e1/Pos'], { _exists: 3, x: 3 })
  const created = { type: 'patch', clientId: '', documentPatches: [{ 'e1/Pos': { _exists: true, x: 3 } }], timestamp: 3 }
  t.strictSame(await reconnectFrames(app, 'b', 0), [created, { type: 'synced', timestamp: 3 }])
  t.strictSame(await reconnectFrames(app, 'c', 1), [created, { type: 'synced', timestamp: 3 }], 'a client that saw the old value gets the new one whole')
  await a.close()
})

t.test('ephemeral state follows the same rules: partial to a missing key dropped, merge, tombstone removes', async (t) => {
  const app = await build(t)
  const a = await joined(app, 'a', 1)
  const b = await joined(app, 'b', 2)
  const presenceSeenBy = async (clientId: string): Promise<any[]> => {
    const peer = await connect(app, { roomId: 'r', clientId })
    await peer.next((f) => f.type === 'clientCount')
    const frames = peer.frames.filter((f) => f.type === 'patch')
    peer.ws.terminate()
    return frames
  }
  const onB = b.nextOfType('patch')
  t.equal((await write(a, 'm1', undefined, [{ 'cursor/a': { x: 1 } }])).timestamp, 0)
  t.strictSame(await onB, { type: 'patch', clientId: 'a', ephemeralPatches: [{ 'cursor/a': { x: 1 } }] }, 'broadcast as received')
  t.strictSame(await presenceSeenBy('c1'), [], 'a partial update to a missing key is not stored')
  await write(a, 'm2', undefined, [{ 'cursor/a': { _exists: true, x: 1 } }])
  await write(a, 'm3', undefined, [{ 'cursor/a': { y: 2 } }])
  t.strictSame(await presenceSeenBy('c2'), [
    { type: 'patch', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 1, y: 2 } }], clientId: '' }
  ], 'fields merged')
  await write(a, 'm4', undefined, [{ 'cursor/a': { _exists: false } }])
  await write(a, 'm5', undefined, [{ 'cursor/a': { x: 5 } }])
  t.strictSame(await presenceSeenBy('c3'), [], 'a tombstone removes the key and a late update does not bring it back')
  t.equal(roomOf(app).timestamp, 0, 'ephemeral frames never advance the counter')
  t.strictSame(snapshotOf(app).state, {}, 'and never reach the document')
  await Promise.all([a.close(), b.close()])
})

t.test('buffer deltas are materialized in state and diffs, and broadcast as received', async (t) => {
  const app = await build(t)
  const a = await joined(app, 'a', 1)
  const b = await joined(app, 'b', 2)
  await write(a, 'm1', [{ 'e1/Path': { _exists: true, pts: [1, 2, 3, 4] } }])
  const grow = { 'e1/Path': { pts: { __buf: 1, len: 6, runs: [[1, [9]], [5, [7]], [8, [1]], [-1, [5]]] } } }
  const onB = b.next((f) => f.type === 'patch' && f.timestamp === 2)
  await write(a, 'm2', [grow])
  t.strictSame(await onB, { type: 'patch', clientId: 'a', documentPatches: [grow], timestamp: 2 }, 'the delta is forwarded as received')
  t.strictSame(snapshotOf(app).state['e1/Path'], { _exists: true, pts: [1, 9, 3, 4, 0, 7] }, 'copied, zero-filled, runs written, out-of-range indexes ignored')
  await write(a, 'm3', [{ 'e1/Path': { pts: { __buf: 1, len: 2, runs: [] } } }])
  t.strictSame(snapshotOf(app).state['e1/Path'], { _exists: true, pts: [1, 9] }, 'shrunk to len')
  await write(a, 'm4', [{ 'e2/Path': { _exists: true, pts: { __buf: 1, len: 3, runs: [[0, [5, 6]]] } } }])
  t.strictSame(snapshotOf(app).state['e2/Path'], { _exists: true, pts: [5, 6, 0] }, 'a delta on a missing array starts from zeros')
  t.strictSame(await reconnectFrames(app, 'c', 1), [
    { type: 'patch', clientId: '', documentPatches: [{ 'e1/Path': { pts: [1, 9] }, 'e2/Path': { _exists: true, pts: [5, 6, 0] } }], timestamp: 4 },
    { type: 'synced', timestamp: 4 }
  ], 'diffs hold whole arrays')
  await Promise.all([a.close(), b.close()])
})

t.test('leaving: tombstones for the client\'s ephemeral keys, then the new clientCount, to the others (real sockets)', async (t) => {
  const app = await build(t)
  const base = await listen(app)
  const join = async (clientId: string, count: number): Promise<Peer> => {
    const peer = await connectReal(base, { roomId: 'r', clientId })
    await peer.next(CLIENT_COUNT(count))
    await peer.join()
    return peer
  }
  const a = await join('a', 1)
  const b = await join('b', 2)
  const c = await join('c', 3)
  await write(a, 'm1', undefined, [{ 'cursor/a': { _exists: true, x: 1 }, 'sel/a': { _exists: true, ids: [1] } }])
  await write(a, 'm2', undefined, [{ 'tmp/a': { _exists: true } }])
  await write(a, 'm3', undefined, [{ 'tmp/a': { _exists: false } }])
  const deleted = (f: any) => f.type === 'patch' && f.ephemeralPatches?.[0]?.['tmp/a']?._exists === false
  await b.next(deleted)
  await c.next(deleted)
  const fromB = b.frames.length
  const fromC = c.frames.length
  await a.close()
  const tombstones = { type: 'patch', ephemeralPatches: [{ 'cursor/a': { _exists: false }, 'sel/a': { _exists: false } }], clientId: 'a' }
  await b.next(CLIENT_COUNT(2), fromB)
  await c.next(CLIENT_COUNT(2), fromC)
  t.strictSame(b.frames.slice(fromB), [tombstones, { type: 'clientCount', count: 2 }], 'only keys still present get a tombstone')
  t.strictSame(c.frames.slice(fromC), [tombstones, { type: 'clientCount', count: 2 }])

  const fromC2 = c.frames.length
  await b.close()
  await c.next(CLIENT_COUNT(1), fromC2)
  const d = await connectReal(base, { roomId: 'r', clientId: 'd' })
  await d.next(CLIENT_COUNT(2))
  t.strictSame(d.frames, [{ type: 'clientCount', count: 2 }], 'the departed client\'s presence is gone')
  await c.next(CLIENT_COUNT(2), fromC2)
  t.strictSame(c.frames.slice(fromC2), [{ type: 'clientCount', count: 1 }, { type: 'clientCount', count: 2 }], 'a client without presence leaves with only a clientCount')
  t.equal(roomOf(app).getSessionCount(), 2)
  await Promise.all([c.close(), d.close()])
})

t.test('invalid JSON and unknown types are ignored; the connection stays up', async (t) => {
  const app = await build(t)
  const a = await joined(app, 'a', 1)
  const b = await joined(app, 'b', 2)
  const from = a.frames.length
  const fromB = b.frames.length
  for (const raw of ['not json', '{"type":"patch"', '{"type":"bogus","messageId":"x"}', '{"no":"type"}', '[1,2]', '42', '"patch"', 'null']) a.send(raw)
  t.strictSame(await write(a, 'ok', [{ 'e1/A': { _exists: true } }]), { type: 'ack', messageId: 'ok', timestamp: 1 })
  t.strictSame(a.frames.slice(from), [{ type: 'ack', messageId: 'ok', timestamp: 1 }], 'no error frame, no ack for ignored frames')
  await b.next((f) => f.type === 'patch', fromB)
  t.strictSame(b.frames.slice(fromB).map((f) => f.type), ['patch'])
  t.strictSame(snapshotOf(app).state, { 'e1/A': { _exists: true } })
  await Promise.all([a.close(), b.close()])
})

const badFrames: Array<[string, unknown, string | undefined]> = [
  ['documentPatches not an array', { type: 'patch', messageId: 'bad1', documentPatches: { 'e1/A': { _exists: true, v: 1 } } }, 'bad1'],
  ['messageId missing', { type: 'patch', documentPatches: [{ 'e1/A': { _exists: true, v: 1 } }] }, undefined],
  ['a buffer delta with a negative len', { type: 'patch', messageId: 'bad3', documentPatches: [{ 'e1/A': { _exists: true, data: { __buf: 1, len: -1, runs: [] } } }] }, 'bad3'],
  ['a buffer delta with runs not an array', { type: 'patch', messageId: 'bad4', documentPatches: [{ 'e1/A': { _exists: true, data: { __buf: 1, len: 2, runs: 5 } } }] }, 'bad4'],
  ['a component value that is not an object', { type: 'patch', messageId: 'bad5', documentPatches: [{ 'e1/A': 5 }] }, 'bad5'],
  ['ephemeralPatches holding a non-object', { type: 'patch', messageId: 'bad6', ephemeralPatches: ['cursor'] }, 'bad6'],
  ['reconnect with lastTimestamp not a number', { type: 'reconnect', lastTimestamp: 'x', protocolVersion: 2, documentPatches: [{ 'e1/A': { _exists: true, v: 1 } }] }, undefined],
  ['auth-refresh without a token', { type: 'auth-refresh' }, undefined],
  // Keys holding line breaks once escaped validation (a `^(.*)$` key pattern does not match them): a tiny
  // frame could then make the server zero-fill a billion-item array and run out of memory.
  ['a huge buffer delta under a field name with a line break', { type: 'patch', messageId: 'bad7', documentPatches: [{ 'e1/A': { _exists: true, 'da\nta': { __buf: 1, len: 1e9, runs: [] } } }] }, 'bad7'],
  ['buffer deltas describing more than 10,000,000 items in one frame', { type: 'patch', messageId: 'bad9', documentPatches: [{ 'e1/A': { _exists: true, a: { __buf: 1, len: 6_000_000, runs: [] }, b: { __buf: 1, len: 4_000_001, runs: [] } } }] }, 'bad9'],
  // PostgreSQL refuses U+0000 in text (and failed the other rooms' writes of the same commit); SQLite turns a lone surrogate into U+FFFD.
  ['a key holding U+0000', { type: 'patch', messageId: 'bad10', documentPatches: [{ 'e\u0000': { _exists: true } }] }, 'bad10'],
  ['a presence key holding a lone surrogate', { type: 'patch', messageId: 'bad11', ephemeralPatches: [{ 'cursor\ud800': { _exists: true } }] }, 'bad11'],
  // SQL storages index keys: PostgreSQL refuses an index entry over 2,704 bytes, and would fail every later write of the room.
  ['a key longer than 512 UTF-16 units', { type: 'patch', messageId: 'bad12', documentPatches: [{ ['e/'.padEnd(513, '\u4e00')]: { _exists: true } }] }, 'bad12'],
  ['a component value that is not an object, under a key with a line separator', { type: 'patch', messageId: 'bad8', documentPatches: [{ 'e1\u2028A': null }] }, 'bad8']
]

for (const [name, frame, messageId] of badFrames) {
  t.test(`wrong shape (${name}): error CANVAS_STORE_INVALID_FRAME (with a messageId: ack and corrective too), not applied, connection stays up`, async (t) => {
    const app = await build(t)
    const a = await joined(app, 'a', 1)
    const b = await joined(app, 'b', 2)
    const from = a.frames.length
    const fromB = b.frames.length
    const error = a.nextOfType('error')
    a.send(frame)
    const err = await error
    t.equal(err.code, 'CANVAS_STORE_INVALID_FRAME')
    t.type(err.message, 'string')
    if (messageId !== undefined) t.equal(err.messageId, messageId, 'the error names the refused message')
    t.equal(roomOf(app).timestamp, 0, 'not applied')
    t.strictSame(snapshotOf(app).state, {})
    t.strictSame(await write(a, 'ok', [{ 'e2/A': { _exists: true } }]), { type: 'ack', messageId: 'ok', timestamp: 1 }, 'later frames still work')
    const answer = a.frames.slice(from, -1)
    // The document keys it names get the server's values back (none here: tombstones).
    const docs = (frame as { documentPatches?: unknown }).documentPatches
    const keys = Array.isArray(docs) ? docs.flatMap((p) => Object.keys(p as object)) : []
    if (messageId === undefined) {
      t.strictSame(answer.map((f) => f.type), ['error'], 'without a messageId, the error alone')
    } else {
      t.strictSame(answer[0], { type: 'ack', messageId, timestamp: 0 }, 'acked like any refused write, so that the client settles it')
      t.strictSame(answer.slice(1).map((f) => f.type), keys.length > 0 ? ['error', 'patch'] : ['error'])
      if (keys.length > 0) {
        t.strictSame(answer[2], { type: 'patch', clientId: '', documentPatches: [Object.fromEntries(keys.map((k) => [k, { _exists: false }]))], timestamp: 0 }, 'corrective patch')
      }
    }
    await b.next((f) => f.type === 'patch', fromB)
    t.strictSame(b.frames.slice(fromB), [{ type: 'patch', clientId: 'a', documentPatches: [{ 'e2/A': { _exists: true } }], timestamp: 1 }], 'the refused frame was not broadcast')
    t.equal(roomOf(app).getSessionCount(), 2)
    await Promise.all([a.close(), b.close()])
  })
}

t.test('a reconnect whose carried patches have the wrong shape is still answered: error, corrective, diff, synced', async (t) => {
  // The published client carries its offline changes in every reconnect: one bad key in them must not keep it from syncing.
  const app = await build(t)
  const a = await joined(app, 'a', 1)
  await write(a, 'w1', [{ 'e1/A': { _exists: true, v: 1 } }])
  const b = await connect(app, { roomId: 'r', clientId: 'b' })
  await b.next(CLIENT_COUNT(2))
  const from = b.frames.length
  const fromA = a.frames.length
  const synced = b.nextOfType('synced')
  b.send({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2, documentPatches: [{ 'e1/A': { v: 2 }, 'e\u0000': { _exists: true } }], ephemeralPatches: [{ 'cursor/b': { _exists: true } }] })
  t.strictSame(await synced, { type: 'synced', timestamp: 1 })
  const got = b.frames.slice(from)
  t.equal(got[0].type, 'error')
  t.equal(got[0].code, 'CANVAS_STORE_INVALID_FRAME')
  t.strictSame(got.slice(1), [
    { type: 'patch', clientId: '', documentPatches: [{ 'e1/A': { _exists: true, v: 1 }, 'e\u0000': { _exists: false } }], timestamp: 1 },
    { type: 'patch', clientId: '', documentPatches: [{ 'e1/A': { _exists: true, v: 1 } }], timestamp: 1 },
    { type: 'synced', timestamp: 1 }
  ], 'the corrective, then the diff since 0 and synced, as for any reconnect')
  t.strictSame(stateOf(app), { 'e1/A': { _exists: true, v: 1 } }, 'nothing of the refused patches applied')
  t.equal(roomOf(app).timestamp, 1)
  // The client then sends its offline changes again, as a patch: refused, and acked so that it stops waiting for them.
  const refused = await write(b, 'b-1', [{ 'e\u0000': { _exists: true } }])
  t.strictSame(refused, { type: 'ack', messageId: 'b-1', timestamp: 1 })
  t.strictSame(await write(b, 'b-2', [{ 'e1/A': { v: 3 } }]), { type: 'ack', messageId: 'b-2', timestamp: 2 }, 'its later writes apply')
  await a.next((f) => f.type === 'patch' && f.timestamp === 2, fromA)
  t.strictSame(a.frames.slice(fromA).filter((f) => f.type === 'patch'), [{ type: 'patch', clientId: 'b', documentPatches: [{ 'e1/A': { v: 3 } }], timestamp: 2 }], 'a saw only the write that applied')
  await Promise.all([a.close(), b.close()])
})

t.test('__proto__ keys and fields never pollute Object.prototype and are stored as ordinary keys', async (t) => {
  const app = await build(t)
  const a = await joined(app, 'a', 1)
  const b = await joined(app, 'b', 2)
  const onB = b.nextOfType('patch')
  const ack = a.nextOfType('ack')
  a.send('{"type":"patch","messageId":"p1","documentPatches":[{"__proto__":{"_exists":true,"polluted":"doc-key"},' +
    '"e1/C":{"_exists":true,"__proto__":{"polluted":"doc-field"},"constructor":{"prototype":{"polluted":"ctor"}}}}],' +
    '"ephemeralPatches":[{"__proto__":{"_exists":true,"polluted":"eph-key"}}]}')
  t.strictSame(await ack, { type: 'ack', messageId: 'p1', timestamp: 1 })
  const bcast = await onB
  t.ok(Object.hasOwn(bcast.documentPatches[0], '__proto__'), 'broadcast as received')
  t.equal(({} as any).polluted, undefined)
  t.equal(Object.hasOwn(Object.prototype, 'polluted'), false)

  await write(a, 'p2', [JSON.parse('{"__proto__":{"x":1}}')])
  t.equal(({} as any).polluted, undefined)
  t.equal(({} as any).x, undefined)

  const snap = roomOf(app).getSnapshot()
  t.ok(Object.hasOwn(snap.state, '__proto__'), 'the __proto__ key is an own key of the state')
  t.strictSame(Object.getOwnPropertyDescriptor(snap.state, '__proto__')?.value, { _exists: true, polluted: 'doc-key', x: 1 }, 'and merges like any key')
  t.strictSame(Object.getOwnPropertyDescriptor(snap.state['e1/C'], '__proto__')?.value, { polluted: 'doc-field' })
  t.strictSame(snap.state['e1/C'].constructor, { prototype: { polluted: 'ctor' } })
  t.strictSame(Object.getOwnPropertyDescriptor(snap.timestamps, '__proto__')?.value, { _exists: 1, polluted: 1, x: 2 })

  const c = await connect(app, { roomId: 'r', clientId: 'c' })
  await c.next(CLIENT_COUNT(3))
  const presence = c.frames[0]
  t.equal(presence.type, 'patch')
  t.strictSame(Object.getOwnPropertyDescriptor(presence.ephemeralPatches[0], '__proto__')?.value, { _exists: true, polluted: 'eph-key' })
  const synced = c.nextOfType('synced')
  const diff = c.next((f) => f.type === 'patch' && f.documentPatches !== undefined)
  c.send({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 })
  await synced
  const patch = (await diff).documentPatches[0]
  t.strictSame(Object.keys(patch).sort(), ['__proto__', 'e1/C'])
  t.strictSame(Object.getOwnPropertyDescriptor(patch, '__proto__')?.value, { _exists: true, polluted: 'doc-key', x: 1 })
  t.equal(({} as any).polluted, undefined)
  await Promise.all([a.close(), b.close(), c.close()])
})

t.test('frames sent the instant the socket opens, before a slow authorize finishes, are handled in order', async (t) => {
  const auth = gate()
  let calls = 0
  const app = await build(t, {
    authorize: async () => {
      calls++
      await auth.promise
      return { permissions: 'readwrite' }
    }
  })
  const received = serverReceived(app)
  let peer!: Peer
  await app.injectWS('/sync?roomId=r&clientId=a', {}, {
    onInit: (ws) => { peer = new Peer(ws) },
    onOpen: (ws) => {
      ws.send(JSON.stringify({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 }))
      ws.send(JSON.stringify({ type: 'patch', messageId: 'm1', documentPatches: [{ 'e1/A': { _exists: true, v: 1 } }] }))
      ws.send(JSON.stringify({ type: 'patch', messageId: 'm2', documentPatches: [{ 'e1/A': { v: 2 } }] }))
      ws.send(JSON.stringify({ type: 'patch', messageId: 'm3', ephemeralPatches: [{ 'cursor/a': { _exists: true } }] }))
    }
  })
  await received(4)
  t.equal(calls, 1)
  t.equal(peer.frames.length, 0, 'nothing was answered before authorize finished')
  auth.open()
  await peer.next(ACK('m3'))
  t.strictSame(peer.frames, [
    { type: 'clientCount', count: 1 },
    { type: 'synced', timestamp: 0 },
    { type: 'ack', messageId: 'm1', timestamp: 1 },
    { type: 'ack', messageId: 'm2', timestamp: 2 },
    { type: 'ack', messageId: 'm3', timestamp: 2 }
  ])
  t.strictSame(snapshotOf(app).state, { 'e1/A': { _exists: true, v: 2 } })
  await peer.close()
})

t.test('frames sent right after connect, while the room is still loading, are handled in order', async (t) => {
  const load = gate()
  const app = await build(t, {
    createStorage: () => ({
      load: async () => {
        await load.promise
        return { timestamp: 4, state: { 'e1/A': { _exists: true, v: 0 } }, timestamps: { 'e1/A': { _exists: 4, v: 4 } } }
      },
      save: async () => {}
    })
  })
  const received = serverReceived(app)
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  a.send({ type: 'reconnect', lastTimestamp: 4, protocolVersion: 2 })
  a.send({ type: 'patch', messageId: 'm1', documentPatches: [{ 'e1/A': { v: 1 } }] })
  a.send({ type: 'patch', messageId: 'm2', documentPatches: [{ 'e1/A': { v: 2 } }] })
  await received(3)
  load.open()
  await a.next(ACK('m2'))
  t.strictSame(a.frames, [
    { type: 'clientCount', count: 1 },
    { type: 'synced', timestamp: 4 },
    { type: 'ack', messageId: 'm1', timestamp: 5 },
    { type: 'ack', messageId: 'm2', timestamp: 6 }
  ])
  t.strictSame(snapshotOf(app).state, { 'e1/A': { _exists: true, v: 2 } })
  await a.close()
})

t.test('exactly maxQueuedFrames frames before the room is ready are all handled', async (t) => {
  const auth = gate()
  const app = await build(t, {
    maxQueuedFrames: 3,
    authorize: async () => {
      await auth.promise
      return { permissions: 'readwrite' }
    }
  })
  const received = serverReceived(app)
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  for (let i = 1; i <= 3; i++) a.send({ type: 'patch', messageId: `m${i}`, documentPatches: [{ [`e${i}/A`]: { _exists: true } }] })
  await received(3)
  auth.open()
  t.equal((await a.next(ACK('m3'))).timestamp, 3)
  await a.close()
})

t.test('more than maxQueuedFrames frames before the room is ready closes the socket with 1008', async (t) => {
  const auth = gate()
  const app = await build(t, {
    maxQueuedFrames: 3,
    authorize: async () => {
      await auth.promise
      return { permissions: 'readwrite' }
    }
  })
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  for (let i = 1; i <= 4; i++) a.send({ type: 'patch', messageId: `m${i}`, documentPatches: [{ [`e${i}/A`]: { _exists: true } }] })
  const closed = await a.closed
  t.strictSame(closed, { code: 1008, reason: 'Too many frames before the room was ready' })
  auth.open()
  await new Promise((resolve) => setImmediate(resolve))
  t.strictSame(app.canvasStore.getRoomIds(), [], 'no room was loaded for the refused connection')
  t.notOk(a.frames.some((f) => f.type === 'ack'), 'none of the queued frames was handled')
})

t.test('a frame whose handling throws closes only its session (1011): the room, its other sessions and other rooms go on, acked data kept', async (t) => {
  throwOnKey(t, 'boom')
  const app = await build(t)
  const a = await joined(app, 'a', 1)
  const b = await joined(app, 'b', 2)
  await b.next(CLIENT_COUNT(2))
  const other = await joined(app, 'o', 1, 'other')
  await write(a, 'm1', [{ 'e1/A': { _exists: true, v: 1 } }], [{ 'cursor/a': { _exists: true } }])
  a.send({ type: 'patch', messageId: 'm2', documentPatches: [{ boom: { _exists: true } }] })
  t.strictSame(await a.closed, { code: 1011, reason: 'Internal error' })
  await b.next((f) => f.type === 'patch' && f.ephemeralPatches?.[0]?.['cursor/a']?._exists === false)
  await b.next(CLIENT_COUNT(1))
  const ack = await write(b, 'm3', [{ 'e1/A': { v: 2 } }])
  t.equal(ack.timestamp, 2, 'the room goes on')
  t.equal((await write(other, 'o1', [{ 'e9/A': { _exists: true } }])).timestamp, 1, 'another room goes on')
  t.strictSame(snapshotOf(app).state, { 'e1/A': { _exists: true, v: 2 } }, 'acked data kept, nothing of the failed frame')
  await Promise.all([b.close(), other.close()])
})
