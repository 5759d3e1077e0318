import t, { type Test } from 'tap'
import type { CanvasStoreOptions } from '../lib/index.js'
import { Document } from '../lib/room/document.js'
import { CLIENT_COUNT, Peer, build, connect, joined, roomOf, stateOf, write } from './helper.js'

/**
 * Sends a patch frame that the server refuses and returns the frames it
 * answered with: ack, error and, when the frame had document patches, the
 * corrective patch (the last frame the server sends for a refusal).
 */
async function refused (peer: Peer, messageId: string, documentPatches?: unknown[], ephemeralPatches?: unknown[]): Promise<any[]> {
  const from = peer.frames.length
  const last = documentPatches === undefined
    ? peer.next((f) => f.type === 'error' && f.messageId === messageId, from)
    : peer.next((f) => f.type === 'patch' && f.clientId === '', from)
  peer.send({ type: 'patch', messageId, documentPatches, ephemeralPatches })
  await last
  return peer.frames.slice(from)
}

/**
 * Asserts that `peer` received nothing since `from`: it writes a probe
 * (presence only) and checks that the probe's ack is the only new frame.
 * The server handled whatever was sent before the probe first, so a
 * broadcast would have arrived before the ack.
 */
async function receivedNothing (t: Test, peer: Peer, from: number, probe: string): Promise<void> {
  const ack = await write(peer, probe, undefined, [{ [`probe/${probe}`]: { _exists: true } }])
  t.strictSame(peer.frames.slice(from), [ack], 'nothing broadcast')
}

const FRAME_TOO_LARGE = 'CANVAS_STORE_FRAME_TOO_LARGE'
const DOCUMENT_FULL = 'CANVAS_STORE_DOCUMENT_FULL'
const PRESENCE_FULL = 'CANVAS_STORE_PRESENCE_FULL'

const small: CanvasStoreOptions = { limits: { maxPatchesPerFrame: 2, maxKeysPerFrame: 3 } }

t.test('maxPatchesPerFrame: ack, FRAME_TOO_LARGE error and corrective patch; nothing applied or broadcast; the connection stays up', async (t) => {
  const app = await build(t, small)
  const a = await joined(app, 'a', 1)
  const b = await joined(app, 'b', 2)
  t.equal((await write(a, 'm1', [{ 'e1/A': { _exists: true, v: 1 } }])).timestamp, 1)
  await b.next((f) => f.type === 'patch' && f.clientId === 'a')
  const fromB = b.frames.length

  const frames = await refused(a, 'm2', [{ 'e1/A': { v: 2 } }, { 'e2/A': { _exists: true, v: 2 } }, { 'e3/A': { _exists: true } }])
  t.strictSame(frames[0], { type: 'ack', messageId: 'm2', timestamp: 1 }, 'acked with the unchanged counter')
  t.match(frames[1], { type: 'error', code: FRAME_TOO_LARGE, messageId: 'm2', message: String })
  t.strictSame(frames[2], {
    type: 'patch',
    clientId: '',
    documentPatches: [{ 'e1/A': { _exists: true, v: 1 }, 'e2/A': { _exists: false }, 'e3/A': { _exists: false } }],
    timestamp: 1
  }, 'the server\'s values of every touched key, tombstones where it has none')
  t.equal(frames.length, 3)
  t.strictSame(stateOf(app), { 'e1/A': { _exists: true, v: 1 } }, 'nothing applied')
  t.equal(roomOf(app).timestamp, 1, 'the counter did not move')

  const eph = await refused(a, 'm3', undefined, [{ 'c/1': { _exists: true } }, { 'c/2': { _exists: true } }, { 'c/3': { _exists: true } }])
  t.strictSame(eph.map((f) => [f.type, f.code, f.messageId]), [['ack', undefined, 'm3'], ['error', FRAME_TOO_LARGE, 'm3']], 'too many ephemeral patches: refused, no corrective')

  await receivedNothing(t, b, fromB, 'probe')
  t.equal((await write(a, 'm4', [{ 'e1/A': { v: 4 } }, { 'e2/A': { _exists: true, v: 4 } }])).timestamp, 2, 'still connected; a frame within the limit is applied')
  t.match(await b.next((f) => f.type === 'patch' && f.clientId === 'a', fromB), { timestamp: 2, documentPatches: [{ 'e1/A': { v: 4 } }, { 'e2/A': { _exists: true, v: 4 } }] })
  await Promise.all([a.close(), b.close()])
})

t.test('maxKeysPerFrame: document and ephemeral keys counted together; refused like an oversized frame', async (t) => {
  const app = await build(t, small)
  const a = await joined(app, 'a', 1)
  const b = await joined(app, 'b', 2)
  const fromB = b.frames.length

  const frames = await refused(a, 'm1', [{ k1: { _exists: true }, k2: { _exists: true }, k3: { _exists: true }, k4: { _exists: true } }])
  t.strictSame(frames, [
    { type: 'ack', messageId: 'm1', timestamp: 0 },
    { type: 'error', code: FRAME_TOO_LARGE, message: frames[1].message, messageId: 'm1' },
    { type: 'patch', clientId: '', documentPatches: [{ k1: { _exists: false }, k2: { _exists: false }, k3: { _exists: false }, k4: { _exists: false } }], timestamp: 0 }
  ])

  const mixed = await refused(a, 'm2', [{ k1: { _exists: true }, k2: { _exists: true } }], [{ 'c/1': { _exists: true }, 'c/2': { _exists: true } }])
  t.strictSame(mixed.map((f) => [f.type, f.code]), [['ack', undefined], ['error', FRAME_TOO_LARGE], ['patch', undefined]], '2 document + 2 ephemeral keys > 3')
  t.strictSame(mixed[2].documentPatches, [{ k1: { _exists: false }, k2: { _exists: false } }], 'the corrective covers the document keys')

  t.strictSame(stateOf(app), {}, 'nothing applied')
  t.equal(roomOf(app).timestamp, 0)
  await receivedNothing(t, b, fromB, 'probe')
  const ack = await write(a, 'm3', [{ k1: { _exists: true }, k2: { _exists: true } }], [{ 'c/1': { _exists: true } }])
  t.equal(ack.timestamp, 1, 'exactly 3 keys: applied; the connection stayed up')
  await Promise.all([a.close(), b.close()])
})

t.test('maxDocumentKeys: a full document still takes updates and deletions of its keys, but not a frame adding keys', async (t) => {
  const app = await build(t, { limits: { maxDocumentKeys: 3 } })
  const a = await joined(app, 'a', 1)
  const b = await joined(app, 'b', 2)
  t.equal((await write(a, 'm1', [{ k1: { _exists: true, v: 1 }, k2: { _exists: true, v: 1 } }])).timestamp, 1)

  let fromB = b.frames.length
  const tooMany = await refused(a, 'm2', [{ k3: { _exists: true, v: 2 }, k4: { _exists: true, v: 2 } }])
  t.strictSame(tooMany.map((f) => [f.type, f.code, f.messageId]), [['ack', undefined, 'm2'], ['error', DOCUMENT_FULL, 'm2'], ['patch', undefined, undefined]], '2 keys + 2 new > 3')
  t.strictSame(tooMany[2].documentPatches, [{ k3: { _exists: false }, k4: { _exists: false } }])
  await receivedNothing(t, b, fromB, 'probe1')

  t.equal((await write(a, 'm3', [{ k3: { _exists: true, v: 3 } }])).timestamp, 2, 'the third key fits')
  t.equal(roomOf(app).documentSize, 3)
  t.equal((await write(a, 'm4', [{ k1: { v: 4 } }, { k2: { _exists: false } }])).timestamp, 3, 'full: an update and a deletion of existing keys are applied')
  t.match(await b.next((f) => f.type === 'patch' && f.clientId === 'a' && f.timestamp === 3), { documentPatches: [{ k1: { v: 4 } }, { k2: { _exists: false } }] }, 'and broadcast')

  fromB = b.frames.length
  const full = await refused(a, 'm5', [{ k1: { v: 5 } }, { k4: { _exists: true, v: 5 } }])
  t.strictSame(full, [
    { type: 'ack', messageId: 'm5', timestamp: 3 },
    { type: 'error', code: DOCUMENT_FULL, message: full[1].message, messageId: 'm5' },
    { type: 'patch', clientId: '', documentPatches: [{ k1: { _exists: true, v: 4 }, k4: { _exists: false } }], timestamp: 3 }
  ], 'one new key refuses the whole frame, its update included')
  t.strictSame(stateOf(app), { k1: { _exists: true, v: 4 }, k2: { _exists: false }, k3: { _exists: true, v: 3 } }, 'not applied; the tombstone still counts as a key')
  t.equal(roomOf(app).timestamp, 3)
  await receivedNothing(t, b, fromB, 'probe2')
  t.equal((await write(a, 'm6', [{ k2: { _exists: true, v: 6 } }])).timestamp, 4, 'recreating a tombstoned key adds no key')
  await Promise.all([a.close(), b.close()])
})

t.test('maxEphemeralKeys: PRESENCE_FULL past the limit; updates and deletions of presence keys still allowed', async (t) => {
  const app = await build(t, { limits: { maxEphemeralKeys: 2 } })
  const a = await joined(app, 'a', 1)
  const b = await joined(app, 'b', 2)
  await write(a, 'm1', undefined, [{ 'cursor/a': { _exists: true, x: 1 }, 'sel/a': { _exists: true, ids: [] } }])
  await b.next((f) => f.type === 'patch' && f.clientId === 'a')

  let fromB = b.frames.length
  const frames = await refused(a, 'm2', undefined, [{ 'hover/a': { _exists: true } }])
  t.strictSame(frames, [
    { type: 'ack', messageId: 'm2', timestamp: 0 },
    { type: 'error', code: PRESENCE_FULL, message: frames[1].message, messageId: 'm2' }
  ], 'a third presence key: ack and error, no corrective')
  await receivedNothing(t, b, fromB, 'probe1')
  fromB = b.frames.length
  const error = a.next((f) => f.type === 'error' && f.messageId === 'm3')
  t.equal((await write(a, 'm3', [{ 'e1/A': { _exists: true } }], [{ 'hover/a': { _exists: true } }])).timestamp, 1, 'a frame with document patches too: they are applied')
  t.match(await error, { code: PRESENCE_FULL, message: /presence patches were not applied/ }, 'and the presence alone refused')
  t.strictSame(stateOf(app), { 'e1/A': { _exists: true } })
  t.strictSame(await b.next((f) => f.type === 'patch' && f.clientId === 'a', fromB), { type: 'patch', clientId: 'a', documentPatches: [{ 'e1/A': { _exists: true } }], timestamp: 1 }, 'the others get the document patches without the presence')
  t.notOk(a.frames.some((f) => f.type === 'patch' && f.clientId === ''), 'no corrective: the document patches were applied')

  fromB = b.frames.length
  await write(a, 'm4', undefined, [{ 'cursor/a': { x: 2 } }])
  t.strictSame(await b.next((f) => f.type === 'patch' && f.clientId === 'a', fromB), { type: 'patch', clientId: 'a', ephemeralPatches: [{ 'cursor/a': { x: 2 } }] }, 'full: an update passes')
  fromB = b.frames.length
  const del = await write(a, 'm5', undefined, [{ 'sel/a': { _exists: false } }])
  t.equal(del.type, 'ack')
  t.strictSame(await b.next((f) => f.type === 'patch' && f.clientId === 'a', fromB), { type: 'patch', clientId: 'a', ephemeralPatches: [{ 'sel/a': { _exists: false } }] }, 'full: a deletion passes')
  t.notOk(a.frames.some((f) => f.type === 'error' && (f.messageId === 'm4' || f.messageId === 'm5')))
  fromB = b.frames.length
  await write(a, 'm6', undefined, [{ 'hover/a': { _exists: true } }])
  t.strictSame(await b.next((f) => f.type === 'patch' && f.clientId === 'a', fromB), { type: 'patch', clientId: 'a', ephemeralPatches: [{ 'hover/a': { _exists: true } }] }, 'after the deletion a new key fits again')

  const c = await joined(app, 'c', 3)
  const presence = c.frames.find((f) => f.type === 'patch' && f.clientId === '')
  t.strictSame(Object.keys(presence.ephemeralPatches[0]).filter((k) => k.endsWith('/a')).sort(), ['cursor/a', 'hover/a'], 'the room holds exactly the accepted presence of a')
  await Promise.all([a.close(), b.close(), c.close()])
})

t.test('maxDocumentBytes: a frame that would make the document larger than the limit is refused; one that keeps it the same size or shrinks it passes', async (t) => {
  const app = await build(t, { limits: { maxDocumentBytes: 300 } })
  const a = await joined(app, 'a', 1)
  const b = await joined(app, 'b', 2)
  const bytes = (): number => roomOf(app).documentBytes
  // "kN":{"_exists":true,"text":"<100>"}, is 6 + 2 + 16 + 110 = 134 estimated bytes.
  await write(a, 'm1', [{ k1: { _exists: true, text: 'a'.repeat(100) } }, { k2: { _exists: true, text: 'b'.repeat(100) } }])
  t.equal(bytes(), 268)

  let fromB = b.frames.length
  const big = await refused(a, 'm2', [{ k3: { _exists: true, text: 'c'.repeat(10) } }])
  t.strictSame(big, [
    { type: 'ack', messageId: 'm2', timestamp: 1 },
    { type: 'error', code: DOCUMENT_FULL, message: big[1].message, messageId: 'm2' },
    { type: 'patch', clientId: '', documentPatches: [{ k3: { _exists: false } }], timestamp: 1 }
  ], 'a new key of 44 bytes would pass 300: ack, DOCUMENT_FULL, corrective')
  t.match(big[1].message, /size limit/)
  t.equal(bytes(), 268, 'nothing applied')
  await receivedNothing(t, b, fromB, 'probe1')

  t.equal((await write(a, 'm3', [{ k1: { text: 'A'.repeat(100) } }])).timestamp, 2, 'near the limit, a change of the same size passes')
  t.equal((await write(a, 'm4', [{ k1: { text: 'A'.repeat(132) } }])).timestamp, 3, 'and one that grows it to exactly the limit')
  t.equal(bytes(), 300)
  const grow = await refused(a, 'm5', [{ k1: { text: 'A'.repeat(133) } }])
  t.strictSame(grow.map((f) => [f.type, f.code]), [['ack', undefined], ['error', DOCUMENT_FULL], ['patch', undefined]], 'one byte more is refused')
  t.strictSame(grow[2].documentPatches, [{ k1: { _exists: true, text: 'A'.repeat(132) } }], 'the corrective holds the stored value')
  t.equal((await write(a, 'm6', [{ k1: { text: 'A'.repeat(200) } }, { k2: { _exists: false } }])).timestamp, 4, 'a frame that grows one key but deletes another, smaller overall, passes')
  t.equal(bytes(), 234 + 24, 'k1 with 200 characters, k2 a tombstone')
  const buffer = await refused(a, 'm7', [{ k4: { _exists: true, pts: { __buf: 1, len: 1000, runs: [] } } }])
  t.equal(buffer[1].code, DOCUMENT_FULL, 'a buffer delta is counted as the array it becomes: 1,000 zeros')
  fromB = b.frames.length
  await write(a, 'm8', [{ k1: { _exists: false } }])
  t.match(await b.next((f) => f.type === 'patch' && f.clientId === 'a', fromB), { documentPatches: [{ k1: { _exists: false } }] }, 'deletions pass and are broadcast')
  t.strictSame(stateOf(app), { k1: { _exists: false }, k2: { _exists: false } })
  t.equal(bytes(), 48, 'two tombstones')
  await Promise.all([a.close(), b.close()])
})

t.test('maxDocumentBytes: a document loaded above the limit (the limit was lowered) takes any change that does not grow it', async (t) => {
  const snapshot = { timestamp: 1, state: { k1: { _exists: true, text: 'a'.repeat(400) } }, timestamps: { k1: { _exists: 1, text: 1 } } }
  const app = await build(t, { limits: { maxDocumentBytes: 100 }, createStorage: () => ({ load: async () => snapshot, save: async () => {} }) })
  const a = await joined(app, 'a', 1)
  const before = roomOf(app).documentBytes
  t.ok(before > 400)
  t.equal((await write(a, 'm1', [{ k1: { text: 'b'.repeat(400) } }])).timestamp, 2, 'same size: passes')
  const grow = await refused(a, 'm2', [{ k1: { text: 'b'.repeat(401) } }])
  t.equal(grow[1].code, DOCUMENT_FULL, 'larger: refused')
  t.equal((await write(a, 'm3', [{ k1: { text: 'c' } }])).timestamp, 3, 'smaller: passes')
  t.equal(roomOf(app).documentBytes, before - 399)
  await a.close()
})

t.test('maxDocumentBytes: the exact size check, which applies the frame to copies, runs only once the frame has been charged for that work', async (t) => {
  const growth = Document.prototype.growth
  let calls = 0
  t.teardown(() => { Document.prototype.growth = growth })
  Document.prototype.growth = function (patches) {
    calls++
    return growth.call(this, patches)
  }
  const app = await build(t, { limits: { maxDocumentBytes: 1000 } })
  const a = await joined(app, 'a', 1)
  const huge = await refused(a, 'm1', [{ k: { _exists: true, pts: { __buf: 1, len: 7_500_000, runs: [] } } }])
  t.equal(huge[1].code, FRAME_TOO_LARGE, '7,500,000 new items cost more than a whole burst of the byte rate')
  t.equal(calls, 0, 'refused before any array was built')
  const big = await refused(a, 'm2', [{ k: { _exists: true, pts: { __buf: 1, len: 10_000, runs: [] } } }])
  t.equal(big[1].code, DOCUMENT_FULL, 'paid for, then too large for the document')
  t.equal(calls, 1)
  await a.close()
})

t.test('a reconnect whose diff and presence are large together gets them as two frames, then synced', async (t) => {
  // 65 million characters of document (loaded from storage) and a little presence: past 64 MiB together.
  const text = 'x'.repeat(65 * 1024 * 1024)
  const snapshot = { timestamp: 1, state: { big: { _exists: true, text } }, timestamps: { big: { _exists: 1, text: 1 } } }
  const app = await build(t, { limits: { maxDocumentBytes: 128 * 1024 * 1024 }, createStorage: () => ({ load: async () => snapshot, save: async () => {} }) })
  const a = await joined(app, 'a', 1)
  await write(a, 'm1', undefined, [{ 'cursor/a': { _exists: true, x: 1 } }])
  const b = await connect(app, { roomId: 'r', clientId: 'b' })
  await b.next(CLIENT_COUNT(2))
  const from = b.frames.length
  const synced = await b.join(0)
  const frames = b.frames.slice(from)
  t.equal(frames.length, 3)
  t.equal(frames[0].documentPatches[0].big.text.length, text.length, 'first the document')
  t.equal(frames[0].timestamp, 1)
  t.notOk('ephemeralPatches' in frames[0])
  t.strictSame(frames[1], { type: 'patch', clientId: '', ephemeralPatches: [{ 'cursor/a': { _exists: true, x: 1 } }] }, 'then the presence')
  t.equal(synced.timestamp, 1)
  await Promise.all([a.close(), b.close()])
})

t.test('maxEphemeralBytes: presence that would pass the limit is refused (PRESENCE_FULL, no corrective); updates that fit, deletions and a rejoin start over', async (t) => {
  const app = await build(t, { limits: { maxEphemeralBytes: 200 } })
  const a = await joined(app, 'a', 1)
  const b = await joined(app, 'b', 2)
  // "cursor/a":{"_exists":true,"x":1,"y":1}, is 12 + 2 + 16 + 13 + 13 = 56.
  await write(a, 'm1', undefined, [{ 'cursor/a': { _exists: true, x: 1, y: 1 } }])
  await b.next((f) => f.type === 'patch' && f.clientId === 'a')

  let fromB = b.frames.length
  const ids = Array.from({ length: 20 }, (_, i) => `shape-${i}`)
  const frames = await refused(a, 'm2', undefined, [{ 'sel/a': { _exists: true, ids } }])
  t.strictSame(frames, [
    { type: 'ack', messageId: 'm2', timestamp: 0 },
    { type: 'error', code: PRESENCE_FULL, message: frames[1].message, messageId: 'm2' }
  ], 'a selection of 20 ids would pass 200 bytes')
  t.match(frames[1].message, /size limit/)
  await receivedNothing(t, b, fromB, 'probe1')

  // Selecting many shapes and moving them: the move is applied, the selection alone refused.
  fromB = b.frames.length
  const error = a.next((f) => f.type === 'error' && f.messageId === 'drag')
  t.equal((await write(a, 'drag', [{ 'e1/Pos': { _exists: true, x: 5 } }], [{ 'sel/a': { _exists: true, ids } }])).timestamp, 1)
  t.match(await error, { code: PRESENCE_FULL })
  t.strictSame(await b.next((f) => f.type === 'patch' && f.clientId === 'a', fromB), { type: 'patch', clientId: 'a', documentPatches: [{ 'e1/Pos': { _exists: true, x: 5 } }], timestamp: 1 })

  // A reconnect carrying offline edits and a presence too large: the edits are applied, then the diff and synced.
  const c = await connect(app, { roomId: 'r', clientId: 'c' })
  await c.next(CLIENT_COUNT(3))
  await b.next(CLIENT_COUNT(3))
  const fromC = c.frames.length
  const synced = await c.join(0, { documentPatches: [{ 'e2/Pos': { _exists: true, x: 1 } }], ephemeralPatches: [{ 'sel/c': { _exists: true, ids } }] })
  t.match(c.frames.slice(fromC).find((f) => f.type === 'error'), { code: PRESENCE_FULL }, 'the reconnect gets the presence error')
  t.equal(synced.timestamp, 2, 'its document patch was applied')
  t.strictSame(stateOf(app)['e2/Pos'], { _exists: true, x: 1 })
  fromB = b.frames.length
  // Closed by the server: an injectWS socket's own close reaches the server only after ws's 30 s timer.
  const leave = (clientId: string): void => { roomOf(app).disconnectSession(roomOf(app).getSessions().find((s) => s.clientId === clientId)!.sessionId) }
  leave('c')
  await Promise.all([c.closed, b.next(CLIENT_COUNT(2), fromB)])

  fromB = b.frames.length
  await write(a, 'm3', undefined, [{ 'sel/a': { _exists: true, ids: ids.slice(0, 5) } }])
  t.match(await b.next((f) => f.type === 'patch' && f.clientId === 'a', fromB), { ephemeralPatches: [{ 'sel/a': { ids: ids.slice(0, 5) } }] }, 'a smaller selection fits')
  for (let i = 0; i < 3; i++) await write(a, `move${i}`, undefined, [{ 'cursor/a': { x: i, y: i } }])
  t.notOk(a.frames.some((f) => f.type === 'error' && String(f.messageId).startsWith('move')), 'cursor moves keep passing')
  await write(a, 'm4', undefined, [{ 'sel/a': { _exists: false } }])
  await write(a, 'm5', undefined, [{ 'sel/a': { _exists: true, ids: ids.slice(0, 8) } }])
  t.notOk(a.frames.some((f) => f.type === 'error' && f.messageId === 'm5'), 'after a deletion, a larger selection fits')

  fromB = b.frames.length
  leave('a')
  await Promise.all([a.closed, b.next(CLIENT_COUNT(1), fromB)])
  const again = await joined(app, 'a', 2)
  const last = await refused(again, 'm6', undefined, [{ 'sel/a': { _exists: true, ids } }])
  t.equal(last[1].code, PRESENCE_FULL, 'still refused after a rejoin')
  await write(again, 'm7', undefined, [{ 'sel/a': { _exists: true, ids: ids.slice(0, 10) } }])
  t.notOk(again.frames.some((f) => f.type === 'error' && f.messageId === 'm7'), 'the presence of the session that left no longer counts')
  await Promise.all([again.close(), b.close()])
})

t.test('limits on a reconnect carrying patches: error and corrective for the refused part, still ending with synced', async (t) => {
  const app = await build(t, small)
  const w = await joined(app, 'w', 1)
  await write(w, 'm1', [{ 'e1/A': { _exists: true, v: 1 } }])
  const b = await joined(app, 'b', 2)

  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  await a.next(CLIENT_COUNT(3))
  await b.next(CLIENT_COUNT(3))
  const fromB = b.frames.length
  const from = a.frames.length
  const synced = await a.join(0, { documentPatches: [{ 'e1/A': { v: 9 } }, { 'e2/A': { _exists: true } }, { 'e3/A': { _exists: true } }] })
  const frames = a.frames.slice(from)
  t.match(frames[0], { type: 'error', code: FRAME_TOO_LARGE, message: String })
  t.notOk('messageId' in frames[0], 'a reconnect has no messageId')
  t.strictSame(frames[1], {
    type: 'patch',
    clientId: '',
    documentPatches: [{ 'e1/A': { _exists: true, v: 1 }, 'e2/A': { _exists: false }, 'e3/A': { _exists: false } }],
    timestamp: 1
  }, 'corrective')
  t.strictSame(frames[2], { type: 'patch', clientId: '', documentPatches: [{ 'e1/A': { _exists: true, v: 1 } }], timestamp: 1 }, 'the diff since 0')
  t.strictSame(frames[3], { type: 'synced', timestamp: 1 })
  t.equal(frames.length, 4)
  t.equal(synced.timestamp, 1)
  t.strictSame(stateOf(app), { 'e1/A': { _exists: true, v: 1 } }, 'nothing applied')

  const fromA = a.frames.length
  const synced2 = await a.join(1, { ephemeralPatches: [{ 'c/1': { _exists: true }, 'c/2': { _exists: true }, 'c/3': { _exists: true }, 'c/4': { _exists: true } }] })
  t.strictSame(a.frames.slice(fromA).map((f) => [f.type, f.code]), [['error', FRAME_TOO_LARGE], ['synced', undefined]], 'too many presence keys on a reconnect: error, no corrective, still synced')
  t.equal(synced2.timestamp, 1)

  await receivedNothing(t, b, fromB, 'probe')
  t.equal((await write(a, 'm2', [{ 'e2/A': { _exists: true } }])).timestamp, 2, 'the session works afterwards')
  await Promise.all([a.close(), b.close(), w.close()])
})

t.test('maxSessions: one more socket is closed with 1013 Room is full; the others are untouched', async (t) => {
  const app = await build(t, { limits: { maxSessions: 2 } })
  const a = await joined(app, 'a', 1)
  const b = await joined(app, 'b', 2)
  const fromA = a.frames.length
  const fromB = b.frames.length

  const c = await connect(app, { roomId: 'r', clientId: 'c' })
  t.strictSame(await c.closed, { code: 1013, reason: 'Room is full' })
  t.strictSame(c.frames, [], 'the refused socket got no frame')
  t.equal(roomOf(app).getSessionCount(), 2)
  await receivedNothing(t, a, fromA, 'probe-a')
  t.equal((await write(a, 'm1', [{ 'e1/A': { _exists: true } }])).timestamp, 1)
  t.match(await b.next((f) => f.type === 'patch' && f.clientId === 'a' && f.documentPatches !== undefined, fromB), { timestamp: 1 }, 'the room keeps working')
  t.notOk(b.frames.some((f) => f.type === 'clientCount' && f.count !== 2), 'no clientCount change seen by the others')

  // Freed by the server: an injectWS socket's own close reaches the server only after ws's 30 s timer.
  const sessionA = roomOf(app).getSessions().find((s) => s.clientId === 'a')!.sessionId
  roomOf(app).disconnectSession(sessionA)
  await b.next(CLIENT_COUNT(1), fromB)
  const d = await joined(app, 'd', 2)
  t.pass('a freed place is taken again')
  await Promise.all([a.closed, b.close(), d.close()])
})

t.test('maxRooms: a connection needing one more room is closed with 1013 Server at capacity; existing rooms keep working', async (t) => {
  const app = await build(t, { maxRooms: 2 })
  const a = await joined(app, 'a', 1, 'r1')
  const b = await joined(app, 'b', 1, 'r2')

  const c = await connect(app, { roomId: 'r3', clientId: 'c' })
  t.strictSame(await c.closed, { code: 1013, reason: 'Server at capacity' })
  t.strictSame(c.frames, [])
  t.strictSame(app.canvasStore.getRoomIds().sort(), ['r1', 'r2'], 'no third room loaded')

  const a2 = await joined(app, 'a2', 2, 'r1')
  t.pass('a new connection to a loaded room is accepted')
  t.equal((await write(a, 'm1', [{ 'e1/A': { _exists: true } }])).timestamp, 1)
  t.match(await a2.next((f) => f.type === 'patch' && f.clientId === 'a'), { timestamp: 1 })
  t.equal((await write(b, 'm1', [{ 'e1/B': { _exists: true } }])).timestamp, 1)
  t.strictSame(stateOf(app, 'r2'), { 'e1/B': { _exists: true } })

  await app.canvasStore.closeRoom('r2')
  t.equal((await b.closed).code, 1001)
  const d = await joined(app, 'd', 1, 'r3')
  t.pass('once a room is unloaded another one can be loaded')
  await Promise.all([a.close(), a2.close(), d.close()])
})

t.test('limits.maxFieldCopiesPerFrame: merging into a key copies its fields; a frame that would copy more is refused (FRAME_TOO_LARGE), fields added earlier in the same frame counted', async (t) => {
  const app = await build(t, { rateLimit: false, limits: { maxEphemeralBytes: 1024 * 1024 } })
  const a = await joined(app, 'a', 1)
  const wide: Record<string, unknown> = { _exists: true }
  for (let i = 0; i < 20_000; i++) wide[`f${i}`] = 0
  t.equal((await write(a, 'm1', [{ K: wide }])).timestamp, 1, 'a key of 20,000 fields is stored')

  const touch = (key: string, n: number): unknown[] => Array.from({ length: n }, (_, i) => ({ [key]: { x: i } }))
  t.equal((await write(a, 'm2', touch('K', 9))).timestamp, 2, '9 mentions copy about 180,000 fields: applied')
  const frames = await refused(a, 'm3', touch('K', 11))
  t.match(frames[1], { type: 'error', code: FRAME_TOO_LARGE, messageId: 'm3' }, '11 mentions would copy about 220,000 (default limit 200,000): refused')
  t.equal(roomOf(app).timestamp, 2, 'not applied')

  // The same within one frame: the first patch creates the wide key, the next ones merge into it.
  const inOne = await refused(a, 'm4', [{ L: wide }, ...touch('L', 11)])
  t.match(inOne[1], { type: 'error', code: FRAME_TOO_LARGE, messageId: 'm4' })
  t.notOk('L' in stateOf(app), 'not applied')

  // Presence merges copy fields too (a presence of 20,000 fields, about 360 KB, needs a limit above the default 128 KiB).
  t.equal((await write(a, 'e1', undefined, [{ cursor: wide }])).timestamp, 2)
  const eph = await refused(a, 'e2', undefined, touch('cursor', 11))
  t.match(eph[1], { type: 'error', code: FRAME_TOO_LARGE, messageId: 'e2' })
  await a.close()
})

t.test('limits.maxFieldCopiesPerFrame can be raised; copies of stored fields are paid from the byte bucket (16 bytes per field)', async (t) => {
  const app = await build(t, { limits: { maxFieldCopiesPerFrame: 1_000_000 }, rateLimit: { bytesPerSecond: 0.001, burstBytes: 6_000_000 } })
  const a = await joined(app, 'a', 1)
  const wide: Record<string, unknown> = { _exists: true }
  for (let i = 0; i < 20_000; i++) wide[`f${i}`] = 0
  await write(a, 'm1', [{ K: wide }])
  const touch = Array.from({ length: 15 }, (_, i) => ({ K: { x: i } }))
  t.equal((await write(a, 'm2', touch)).timestamp, 2, '300,000 copies (4,800,000 bytes): paid')
  const frames = await refused(a, 'm3', touch)
  t.match(frames[1], { type: 'error', code: 'CANVAS_STORE_RATE_LIMITED', messageId: 'm3' }, 'the next 4,800,000 are more than what is left')
  await a.close()
})
