import Fastify, { type FastifyInstance } from 'fastify'
import t from 'tap'
import canvasStore from '../lib/index.js'
import { ACK, CLIENT_COUNT, Peer, build, connect, connectReal, listen, roomOf, stateOf, write } from './helper.js'

const RATE_LIMITED = 'CANVAS_STORE_RATE_LIMITED'

/**
 * Connects and waits for the clientCount that includes this peer. No
 * `reconnect` is sent: every frame takes a token, and these tests count them.
 */
async function connected (app: FastifyInstance, clientId: string, count: number): Promise<Peer> {
  const peer = await connect(app, { roomId: 'r', clientId })
  await peer.next(CLIENT_COUNT(count))
  return peer
}

// A refill rate this low keeps the tests independent of how fast the machine is.
const SLOW_REFILL = 0.001

t.test('rateLimit: in a burst the first burstFrames frames are applied; the rest get ack, RATE_LIMITED and a corrective, and are not applied or broadcast', async (t) => {
  const app = await build(t, { rateLimit: { framesPerSecond: SLOW_REFILL, burstFrames: 5, closeAfter: 20 } })
  const a = await connected(app, 'a', 1)
  const b = await connected(app, 'b', 2)
  await a.next(CLIENT_COUNT(2))
  const fromA = a.frames.length
  const fromB = b.frames.length

  const last = a.next((f) => f.type === 'patch' && f.clientId === '' && f.documentPatches?.[0]?.k9 !== undefined, fromA)
  for (let i = 0; i < 10; i++) a.send({ type: 'patch', messageId: `m${i}`, documentPatches: [{ [`k${i}`]: { _exists: true, v: i } }] })
  await last

  const expected: any[] = []
  for (let i = 0; i < 5; i++) expected.push({ type: 'ack', messageId: `m${i}`, timestamp: i + 1 })
  for (let i = 5; i < 10; i++) {
    expected.push(
      { type: 'ack', messageId: `m${i}`, timestamp: 5 },
      { type: 'error', code: RATE_LIMITED, message: String, messageId: `m${i}` },
      { type: 'patch', clientId: '', documentPatches: [{ [`k${i}`]: { _exists: false } }], timestamp: 5 }
    )
  }
  const frames = a.frames.slice(fromA)
  t.equal(frames.length, expected.length)
  t.match(frames, expected, 'five applied and acked; five acked, refused and corrected')
  t.strictSame(Object.keys(stateOf(app)).sort(), ['k0', 'k1', 'k2', 'k3', 'k4'], 'only the first five applied')
  t.equal(roomOf(app).timestamp, 5)

  // b is not limited: its probe is acked, and before it b saw exactly the five accepted frames.
  const probe = await write(b, 'probe', undefined, [{ 'cursor/b': { _exists: true } }])
  const seen = b.frames.slice(fromB)
  t.strictSame(seen.map((f) => f.type === 'patch' ? Object.keys(f.documentPatches[0])[0] : f.type), ['k0', 'k1', 'k2', 'k3', 'k4', 'ack'], 'b received the five accepted frames only')
  t.equal(probe.timestamp, 5)
  await Promise.all([a.close(), b.close()])
})

t.test('rateLimit: another session in the same room is unaffected', async (t) => {
  const app = await build(t, { rateLimit: { framesPerSecond: SLOW_REFILL, burstFrames: 5, closeAfter: 20 } })
  const a = await connected(app, 'a', 1)
  const b = await connected(app, 'b', 2)
  await a.next(CLIENT_COUNT(2))
  for (let i = 0; i < 5; i++) await write(a, `a${i}`, [{ [`a${i}`]: { _exists: true } }])
  const refused = a.next((f) => f.type === 'error' && f.messageId === 'a5')
  a.send({ type: 'patch', messageId: 'a5', documentPatches: [{ a5: { _exists: true } }] })
  t.equal((await refused).code, RATE_LIMITED, 'a is over its rate')

  for (let i = 0; i < 5; i++) {
    const fromA = a.frames.length
    const ack = await write(b, `b${i}`, [{ [`b${i}`]: { _exists: true, v: i } }])
    t.equal(ack.timestamp, 6 + i, `b's frame ${i} applied`)
    t.match(await a.next((f) => f.type === 'patch' && f.clientId === 'b', fromA), { documentPatches: [{ [`b${i}`]: { v: i } }], timestamp: 6 + i }, 'and broadcast to a')
  }
  t.notOk(b.frames.some((f) => f.type === 'error'), 'b never refused')
  await Promise.all([a.close(), b.close()])
})

t.test('rateLimit: closeAfter refused frames in a row close the session with 4429', async (t) => {
  const app = await build(t, { rateLimit: { framesPerSecond: SLOW_REFILL, burstFrames: 5, closeAfter: 20 } })
  const a = await connected(app, 'a', 1)
  const b = await connected(app, 'b', 2)
  const fromB = b.frames.length
  await write(a, 'cursor', undefined, [{ 'cursor/a': { _exists: true } }])
  for (let i = 0; i < 30; i++) a.send({ type: 'patch', messageId: `m${i}`, ephemeralPatches: [{ 'cursor/a': { x: i } }] })
  t.strictSame(await a.closed, { code: 4429, reason: 'Rate limit exceeded' })
  const errors = a.frames.filter((f) => f.type === 'error')
  t.equal(errors.length, 20, 'closed at the 20th refused frame in a row')
  t.ok(errors.every((f) => f.code === RATE_LIMITED))
  t.equal(errors.at(-1).messageId, 'm23', 'the cursor frame and m0..m3 took the five tokens; m4..m23 were refused')
  t.equal(a.frames.filter((f) => f.type === 'ack').length, 25, 'every handled frame was acked')

  await b.next(CLIENT_COUNT(1), fromB)
  t.strictSame(b.frames.slice(fromB).filter((f) => f.clientId === 'a').at(-1), { type: 'patch', clientId: 'a', ephemeralPatches: [{ 'cursor/a': { _exists: false } }] }, 'the others got its presence tombstone')
  t.equal(roomOf(app).getSessionCount(), 1)
  await b.close()
})

for (const [name, frame, answered] of [
  ['not JSON', 'not json at all', 0],
  ['of an unknown type', JSON.stringify({ type: 'shout', text: 'x' }), 0],
  ['of another protocol version', JSON.stringify({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 99 }), 1],
  ['of the wrong shape', JSON.stringify({ type: 'patch', messageId: 'bad', documentPatches: [{ 'k\u0000': { _exists: true } }] }), 2]
] as const) {
  t.test(`rateLimit: frames ${name} count toward closeAfter once over the rate (4429), not only valid ones`, async (t) => {
    const app = await build(t, { rateLimit: { framesPerSecond: SLOW_REFILL, burstFrames: 3, closeAfter: 10 } })
    const a = await connected(app, 'a', 1)
    const b = await connected(app, 'b', 2)
    for (let i = 0; i < 30; i++) a.send(frame)
    t.strictSame(await a.closed, { code: 4429, reason: 'Rate limit exceeded' })
    // The first 3 frames were within the rate and answered as before (nothing, version-mismatch, or ack and
    // error); the next 10 were refused, and the 10th closed the session.
    const errors = a.frames.filter((f) => f.type === 'error')
    t.equal(errors.length, answered === 2 ? 13 : 10)
    t.ok(errors.every((f) => f.code === (answered === 2 ? 'CANVAS_STORE_INVALID_FRAME' : RATE_LIMITED)))
    t.equal(a.frames.filter((f) => f.type === 'version-mismatch').length, answered === 1 ? 3 : 0)
    t.equal(a.frames.filter((f) => f.type === 'ack').length, answered === 2 ? 13 : 0)
    t.equal(roomOf(app).getSessionCount(), 1, 'the other session stays')
    await b.close()
  })
}

t.test('rateLimit: frames that pass between refusals do not reset the count toward closeAfter (only a second without a refusal does)', async (t) => {
  const app = await build(t, { rateLimit: { bytesPerSecond: SLOW_REFILL, burstBytes: 5000, closeAfter: 10 } })
  const a = await connected(app, 'a', 1)
  // Each 6 KB frame is over what is left of the byte bucket; each small one after it still fits.
  for (let i = 0; i < 30; i++) {
    a.send({ type: 'patch', messageId: `big${i}`, ephemeralPatches: [{ 'c/a': { _exists: true, pad: 'x'.repeat(6000) } }] })
    a.send({ type: 'patch', messageId: `small${i}`, ephemeralPatches: [{ 'c/a': { _exists: true, x: i } }] })
  }
  t.strictSame(await a.closed, { code: 4429, reason: 'Rate limit exceeded' })
  const refused = a.frames.filter((f) => f.type === 'error' && f.code === RATE_LIMITED).map((f) => f.messageId)
  t.equal(refused.length, 10, 'closed at the 10th refusal')
  t.ok(refused.every((id) => id.startsWith('big')))
  t.ok(a.frames.some((f) => f.type === 'ack' && f.messageId === 'small8'), 'small frames passed in between')
})

t.test('rateLimit: the byte bucket refuses a frame larger than what is left of burstBytes', async (t) => {
  const app = await build(t, { rateLimit: { bytesPerSecond: SLOW_REFILL, burstBytes: 300 } })
  const a = await connected(app, 'a', 1)
  const b = await connected(app, 'b', 2)
  await a.next(CLIENT_COUNT(2))
  const fromB = b.frames.length
  t.equal((await write(a, 'm1', [{ k1: { _exists: true } }])).timestamp, 1, 'a small frame passes')

  const from = a.frames.length
  const done = a.next((f) => f.type === 'patch' && f.clientId === '', from)
  a.send({ type: 'patch', messageId: 'big', documentPatches: [{ k2: { _exists: true, text: 'x'.repeat(400) } }] })
  await done
  t.match(a.frames.slice(from), [
    { type: 'ack', messageId: 'big', timestamp: 1 },
    { type: 'error', code: RATE_LIMITED, messageId: 'big' },
    { type: 'patch', clientId: '', documentPatches: [{ k2: { _exists: false } }], timestamp: 1 }
  ])
  t.equal(a.frames.length - from, 3)
  t.strictSame(stateOf(app), { k1: { _exists: true } }, 'not applied')

  t.equal((await write(a, 'm3', [{ k3: { _exists: true } }])).timestamp, 2, 'the refused frame took no bytes: a small one still passes')
  const seen = b.frames.slice(fromB).filter((f) => f.type === 'patch')
  t.strictSame(seen.map((f) => f.timestamp), [1, 2], 'b saw the two accepted frames, not the big one')
  await Promise.all([a.close(), b.close()])
})

t.test('rateLimit: buffer deltas pay from the byte bucket: 2 bytes per item added to a stored array, 1 per item written', async (t) => {
  const app = await build(t, { rateLimit: { bytesPerSecond: SLOW_REFILL, burstBytes: 20_000 } })
  const a = await connected(app, 'a', 1)
  const grow = (id: string, key: string, len: number): Promise<unknown> => {
    const from = a.frames.length
    a.send({ type: 'patch', messageId: id, documentPatches: [{ [key]: { _exists: true, pts: { __buf: 1, len, runs: [[0, [7]]] } } }] })
    return a.next(ACK(id), from).then(() => a.frames.slice(from))
  }
  const refused = async (id: string, key: string, len: number): Promise<boolean> => (await grow(id, key, len) as Array<{ type: string }>).some((f) => f.type === 'error')
  // Frames are about 120 bytes each (taken on arrival); the deltas cost on top of that.
  t.notOk(await refused('m1', 'k1', 2000), '2,000 new items (4,000 + 2,000 bytes) pass')
  t.equal((stateOf(app).k1 as { pts: number[] }).pts.length, 2000)
  t.match(await grow('m3', 'k2', 6000), [
    { type: 'ack', messageId: 'm3' },
    { type: 'error', code: RATE_LIMITED, messageId: 'm3' }
  ], '6,000 new items (18,000 bytes) from a frame of a few bytes are more than what is left: refused')
  t.notOk('k2' in stateOf(app), 'not applied')
  t.notOk(await refused('m4', 'k3', 1000), 'what is left of the bucket still pays for a smaller one')
  t.match(await grow('m5', 'k4', 1_000_000), [{ type: 'ack', messageId: 'm5' }, { type: 'error', code: 'CANVAS_STORE_FRAME_TOO_LARGE', messageId: 'm5', message: /burstBytes/ }], 'a million new items cost more than the whole burst (20,000 bytes): never payable, too large')
  // Rewriting the stored 2,000 items costs 2,000 bytes (plus the frame): the bucket runs out after a few.
  let passed = 0
  while (passed < 100 && !(await refused(`r${passed}`, 'k1', 2000))) passed++
  t.ok(passed > 0 && passed < 10, `rewrites of a stored array are paid too (${passed} passed)`)
  await a.close()
})

t.test('rateLimit: diffs after the first reconnect are paid from the byte bucket; a reconnect over the rate while in debt closes the session (4429)', async (t) => {
  const app = await build(t, { rateLimit: { bytesPerSecond: SLOW_REFILL, burstBytes: 100_000 } })
  const a = await connected(app, 'a', 1)
  await write(a, 'm1', [{ big: { _exists: true, text: 'x'.repeat(60_000) } }])
  const b = await connected(app, 'b', 2)
  const diffs = (): number => b.frames.filter((f) => f.type === 'patch' && f.clientId === '' && f.documentPatches !== undefined).length
  const reconnect = async (): Promise<void> => {
    const from = b.frames.length
    b.send({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 })
    await b.next((f) => f.type === 'synced', from)
  }
  await reconnect() // the join: free
  await reconnect() // about 60 KB taken: 40 KB left
  await reconnect() // about 60 KB more: in debt
  t.equal(diffs(), 3, 'three full diffs, the last one into debt')
  b.send({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 })
  t.strictSame(await b.closed, { code: 4429, reason: 'Rate limit exceeded' })
  t.equal(diffs(), 3, 'no fourth diff')
  t.equal((await write(a, 'm2', [{ k: { _exists: true } }])).timestamp, 2, 'the other session is unaffected')
  await a.close()
})

/** Sends a patch touching key `k` (padded to about `size` bytes) and returns the error code it got, or 'ok'. */
async function codeOf (peer: Peer, messageId: string, size: number): Promise<string> {
  const from = peer.frames.length
  peer.send({ type: 'patch', messageId, documentPatches: [{ k: { pad: 'p'.repeat(size) } }] })
  await peer.next(ACK(messageId), from)
  const error = await Promise.race([
    peer.next((f) => f.type === 'error' && f.messageId === messageId, from),
    // the server answers a frame's error right after its ack, before anything it is sent later
    write(peer, `${messageId}-probe`, undefined, [{ probe: { _exists: true } }]).then(() => null)
  ])
  return error === null ? 'ok' : error.code
}

t.test('rateLimit: correctives of refusals are paid from the byte bucket, but not those of rate-limit refusals (a client that slows down gets through)', async (t) => {
  const app = await build(t, { authorize: ({ clientId }) => ({ permissions: clientId === 'viewer' ? 'readonly' : 'readwrite' }), rateLimit: { bytesPerSecond: SLOW_REFILL, burstBytes: 20_000 } })
  const a = await connected(app, 'a', 1)
  await write(a, 'm1', [{ k: { _exists: true, big: 'x'.repeat(15_000) } }])
  // a: about 5 KB left. A 6 KB frame is over the rate: refused with a 15 KB corrective that is not charged.
  t.equal(await codeOf(a, 'm2', 6000), RATE_LIMITED)
  t.equal(await codeOf(a, 'm3', 100), 'ok', 'the 5 KB left still pay for a small frame')

  // A readonly session's refusals get correctives too, and those are charged: the second puts it in debt.
  const v = await connected(app, 'viewer', 2)
  t.equal(await codeOf(v, 'v1', 100), 'CANVAS_STORE_READONLY')
  t.equal(await codeOf(v, 'v2', 100), 'CANVAS_STORE_READONLY')
  t.equal(await codeOf(v, 'v3', 100), RATE_LIMITED, 'two 15 KB correctives were more than its 20 KB')
  await Promise.all([a.close(), v.close()])
})

t.test('rateLimit: false turns the per-session limit off', async (t) => {
  const app = await build(t, { rateLimit: false })
  const a = await connected(app, 'a', 1)
  const n = 1000 // more than the default burst of 400 frames
  const last = a.next(ACK(`m${n - 1}`))
  for (let i = 0; i < n; i++) a.send({ type: 'patch', messageId: `m${i}`, documentPatches: [{ [`k${i % 10}`]: { _exists: true, v: i } }] })
  t.equal((await last).timestamp, n)
  t.equal(a.frames.filter((f) => f.type === 'ack').length, n)
  t.notOk(a.frames.some((f) => f.type === 'error'), 'no frame refused')
  await a.close()
})

t.test('connectionRateLimit: past max attempts the upgrade is answered with HTTP 429', async (t) => {
  const app = await build(t, { connectionRateLimit: { max: 2, timeWindow: 60_000, allowList: [] } })
  const a = await connected(app, 'a', 1)
  const b = await connected(app, 'b', 2)
  await t.rejects(app.injectWS('/sync?roomId=r&clientId=c'), { message: 'Unexpected server response: 429' })
  t.equal(roomOf(app).getSessionCount(), 2, 'no session for the refused attempt')
  t.equal((await write(a, 'm1', [{ k: { _exists: true } }])).timestamp, 1, 'the accepted sockets keep working')
  await Promise.all([a.close(), b.close()])
})

t.test('connectionRateLimit: real sockets from 127.0.0.1 are limited with an empty allowList', async (t) => {
  const app = await build(t, { connectionRateLimit: { max: 2, timeWindow: 60_000, allowList: [] } })
  const base = await listen(app)
  const a = await connectReal(base, { roomId: 'r', clientId: 'a' })
  const b = await connectReal(base, { roomId: 'r', clientId: 'b' })
  await t.rejects(connectReal(base, { roomId: 'r', clientId: 'c' }), { message: 'Unexpected server response: 429' })
  await Promise.all([a.close(), b.close()])
})

t.test('connectionRateLimit: with the default allowList, loopback is exempt', async (t) => {
  const app = await build(t, { connectionRateLimit: { max: 2, timeWindow: 60_000 } })
  const base = await listen(app)
  const peers: Peer[] = []
  for (let i = 0; i < 10; i++) {
    const peer = await connectReal(base, { roomId: 'r', clientId: `c${i}` })
    await peer.next(CLIENT_COUNT(i + 1))
    peers.push(peer)
  }
  t.equal(roomOf(app).getSessionCount(), 10, 'ten connections from 127.0.0.1 with max 2')
  await Promise.all(peers.map((p) => p.close()))
})

t.test('connectionRateLimit behind a proxy Fastify trusts (trustProxy): a bucket per forwarded client, as the README says', async (t) => {
  // The proxy's own address, not `true`: with every hop trusted, request.ip is the left-most X-Forwarded-For
  // entry, which the client writes.
  const app = Fastify({ logger: false, trustProxy: '127.0.0.1' })
  t.teardown(() => app.close())
  await app.register(canvasStore, { connectionRateLimit: { max: 2, timeWindow: 60_000 } })
  // Plain GETs count too (426): every request reaches the route through the proxy on 127.0.0.1.
  const from = async (client?: string): Promise<number> => (await app.inject({
    url: '/sync?roomId=r&clientId=c',
    remoteAddress: '127.0.0.1',
    headers: client === undefined ? {} : { 'x-forwarded-for': client }
  })).statusCode
  t.same([await from('203.0.113.1'), await from('203.0.113.1'), await from('203.0.113.1')], [426, 426, 429], 'one client past max')
  t.equal(await from('203.0.113.2'), 426, 'another client behind the same proxy has its own bucket')
  t.same([await from(), await from(), await from()], [426, 426, 426], 'the proxy itself (loopback) is exempt')
  t.same([await from('127.0.0.1, 203.0.113.3'), await from('127.0.0.1, 203.0.113.3'), await from('127.0.0.1, 203.0.113.3')], [426, 426, 429],
    'a client that writes a loopback address into X-Forwarded-For is still counted by the address the proxy added')
})

t.test('connectionRateLimit: false turns the connection limit off', async (t) => {
  const app = await build(t, { connectionRateLimit: false })
  const n = 130 // more than the default max of 120 (injectWS requests have no loopback address to exempt)
  const peers: Peer[] = []
  for (let i = 0; i < n; i++) peers.push(await connect(app, { roomId: `r${i}`, clientId: 'c' }))
  await Promise.all(peers.map((p) => p.next(CLIENT_COUNT(1))))
  t.equal(app.canvasStore.getRoomIds().length, n, `${n} connections accepted`)
})

t.test('rateLimit: a rate-limited reconnect still gets its diff and synced; only its carried patches are refused', async (t) => {
  const app = await build(t, { rateLimit: { framesPerSecond: SLOW_REFILL, burstFrames: 1, closeAfter: 20 } })
  const a = await connected(app, 'a', 1)
  await write(a, 'm1', [{ k: { _exists: true, v: 1 } }])
  const from = a.frames.length
  const synced = a.next((f) => f.type === 'synced', from)
  a.send({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2, documentPatches: [{ j: { _exists: true } }] })
  t.same(await synced, { type: 'synced', timestamp: 1 })
  const types = a.frames.slice(from).map((f) => f.type)
  t.same(types, ['error', 'patch', 'patch', 'synced'], 'error, corrective, diff, synced')
  t.equal(a.frames[from].code, RATE_LIMITED)
  t.same(a.frames[from + 2].documentPatches, [{ k: { _exists: true, v: 1 } }])
  t.same(stateOf(app), { k: { _exists: true, v: 1 } }, 'the carried patch was not applied')
})

t.test('rateLimit: frames held during an auth-refresh are rate limited too', async (t) => {
  let open: () => void = () => {}
  const gate = new Promise<void>((resolve) => { open = resolve })
  const app = await build(t, {
    rateLimit: { framesPerSecond: SLOW_REFILL, burstFrames: 3, closeAfter: 100 },
    authorize: async ({ request }) => {
      if (request === undefined) await gate
      return { permissions: 'readwrite' }
    }
  })
  // Count frames as the server's socket receives them.
  let received = 0
  let allIn: () => void = () => {}
  const arrived = new Promise<void>((resolve) => { allIn = resolve })
  app.websocketServer.on('connection', (socket) => socket.on('message', () => { if (++received === 6) allIn() }))
  const a = await connected(app, 'a', 1)
  const from = a.frames.length
  a.send({ type: 'auth-refresh', token: 't' })
  for (let i = 0; i < 5; i++) a.send({ type: 'patch', messageId: `m${i}`, documentPatches: [{ [`k${i}`]: { _exists: true } }] })
  const lastAck = a.next(ACK('m4'), from)
  // Every frame reached the server while the refresh was still pending, so all five patches were held.
  await arrived
  t.same(a.frames.slice(from), [], 'nothing answered while held')
  open()
  await lastAck
  const errors = a.frames.slice(from).filter((f) => f.type === 'error' && f.code === RATE_LIMITED).map((f) => f.messageId)
  t.same(errors, ['m2', 'm3', 'm4'], 'the refresh took one token, two patches passed, three were refused')
  t.same(Object.keys(stateOf(app)).sort(), ['k0', 'k1'])
})

t.test('rateLimit: a frame of the wrong shape over the rate gets its ack and error, no corrective; a reconnect is still answered', async (t) => {
  const app = await build(t, { rateLimit: { framesPerSecond: SLOW_REFILL, burstFrames: 2, closeAfter: 20 } })
  const a = await connected(app, 'a', 1)
  t.strictSame(await write(a, 'w1', [{ k: { _exists: true, v: 1 } }]), { type: 'ack', messageId: 'w1', timestamp: 1 })
  // Under the rate, a malformed patch naming k gets k's value back (and it costs the reply's bytes).
  const fromA = a.frames.length
  t.strictSame(await write(a, 'bad1', [{ k: { v: 2 }, 'k\u0000': { _exists: true } }]), { type: 'ack', messageId: 'bad1', timestamp: 1 })
  await a.next((f) => f.type === 'patch', fromA)
  t.match(a.frames.slice(fromA), [
    { type: 'ack', messageId: 'bad1' },
    { type: 'error', code: 'CANVAS_STORE_INVALID_FRAME', messageId: 'bad1' },
    { type: 'patch', clientId: '', documentPatches: [{ k: { _exists: true, v: 1 }, 'k\u0000': { _exists: false } }] }
  ])
  // Over it, no corrective: a stream of malformed frames cannot make the server send stored values without bound.
  const from = a.frames.length
  t.strictSame(await write(a, 'bad2', [{ k: { v: 3 }, 'k\u0000': { _exists: true } }]), { type: 'ack', messageId: 'bad2', timestamp: 1 })
  const synced = a.next((f) => f.type === 'synced', a.frames.length)
  a.send({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2, documentPatches: [{ 'k\u0000': { _exists: true } }] })
  await synced
  t.match(a.frames.slice(from), [
    { type: 'ack', messageId: 'bad2' },
    { type: 'error', code: 'CANVAS_STORE_INVALID_FRAME', messageId: 'bad2' },
    { type: 'error', code: 'CANVAS_STORE_INVALID_FRAME' },
    { type: 'error', code: RATE_LIMITED },
    { type: 'patch', clientId: '', documentPatches: [{ k: { _exists: true, v: 1 } }], timestamp: 1 },
    { type: 'synced', timestamp: 1 }
  ], 'the reconnect over the rate: both refusals, then its diff and synced')
  t.equal(a.frames.slice(from).length, 6)
  t.strictSame(stateOf(app), { k: { _exists: true, v: 1 } })
  await a.close()
})
