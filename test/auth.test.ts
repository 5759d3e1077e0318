import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import type { AuthorizeInfo, AuthorizeResult } from '../lib/index.js'
import { Bounds } from '../lib/routes/ws.js'
import { ACK, CLIENT_COUNT, Peer, build, connect, gate, roomOf, serverReceived, snapshotOf, throwOnKey, write } from './helper.js'

async function joined (app: FastifyInstance, query: Record<string, string>): Promise<Peer> {
  const peer = await connect(app, { roomId: 'r', ...query })
  await peer.next((f) => f.type === 'clientCount')
  await peer.join()
  return peer
}

function httpError (statusCode: number, message: string): Error {
  return Object.assign(new Error(message), { statusCode })
}

/** token 'ro...' -> readonly, 'rw...' or none -> readwrite, 'bad' -> refused; metadata tells which. */
function byToken ({ token }: AuthorizeInfo): AuthorizeResult {
  if (token === 'bad') throw httpError(403, 'token revoked')
  const permissions = token.startsWith('ro') ? 'readonly' : 'readwrite'
  return { permissions, metadata: { role: permissions === 'readonly' ? 'viewer' : 'editor', token } }
}

t.test('authorize receives roomId, clientId, token and the upgrade request', async (t) => {
  const calls: AuthorizeInfo[] = []
  const app = await build(t, {
    authorize: (info) => {
      calls.push(info)
      return { permissions: 'readwrite' }
    }
  })
  const ws = await app.injectWS('/sync?roomId=room%201&clientId=c1&token=s3cret', { headers: { 'x-tenant': 'acme' } })
  const b = await connect(app, { roomId: 'room 1', clientId: 'c2' })
  await b.next(CLIENT_COUNT(2))
  t.equal(calls.length, 2)
  t.equal(calls[0].roomId, 'room 1')
  t.equal(calls[0].clientId, 'c1')
  t.equal(calls[0].token, 's3cret')
  t.equal(calls[0].request?.headers['x-tenant'], 'acme', 'the request is the upgrade request')
  t.match(calls[0].request?.url, /^\/sync\?/)
  t.equal(calls[1].token, '', 'no token: empty string')
  t.equal(calls[1].clientId, 'c2')
  ws.terminate()
  await b.close()
})

t.test('readonly: patches are acked but not applied or broadcast; error CANVAS_STORE_READONLY and a corrective patch', async (t) => {
  const app = await build(t, { authorize: byToken })
  const w = await joined(app, { clientId: 'w' })
  await write(w, 'w1', [{ 'e1/Pos': { _exists: true, x: 1, y: 1 } }])
  await write(w, 'w2', [{ 'e3/Pos': { _exists: true, x: 3 } }])
  await write(w, 'w3', [{ 'e3/Pos': { _exists: false } }])
  const r = await joined(app, { clientId: 'r', token: 'ro' })
  const fromW = w.frames.length
  const from = r.frames.length
  const before = snapshotOf(app)

  r.send({
    type: 'patch',
    messageId: 'r1',
    documentPatches: [{ 'e1/Pos': { x: 99 }, 'e2/Pos': { _exists: true, x: 5 } }, { 'e3/Pos': { x: 7 } }],
    ephemeralPatches: [{ 'cursor/r': { _exists: true, x: 1 } }]
  })
  const corrective = await r.next((f) => f.type === 'patch', from)
  t.strictSame(r.frames.slice(from).map((f) => f.type), ['ack', 'error', 'patch'])
  t.strictSame(r.frames[from], { type: 'ack', messageId: 'r1', timestamp: 3 }, 'acked with the unchanged counter')
  t.equal(r.frames[from + 1].code, 'CANVAS_STORE_READONLY')
  t.strictSame(corrective, {
    type: 'patch',
    clientId: '',
    documentPatches: [{ 'e1/Pos': { _exists: true, x: 1, y: 1 }, 'e2/Pos': { _exists: false }, 'e3/Pos': { _exists: false } }],
    timestamp: 3
  }, 'the server\'s values, {_exists:false} where it has none')
  t.strictSame(snapshotOf(app), before, 'nothing applied')

  // Anything broadcast to w for r1 was sent before w's own ack for w4.
  await write(w, 'w4', undefined, [{ 'cursor/w': { _exists: true } }])
  t.strictSame(w.frames.slice(fromW), [{ type: 'ack', messageId: 'w4', timestamp: 3 }], 'nothing was broadcast')
  const c = await connect(app, { roomId: 'r', clientId: 'c' })
  await c.next((f) => f.type === 'clientCount')
  t.strictSame(c.frames[0].ephemeralPatches, [{ 'cursor/w': { _exists: true } }], 'the readonly presence was not stored')
  await Promise.all([w.close(), r.close(), c.close()])
})

t.test('readonly: document patches carried by reconnect are not applied, not broadcast, and corrected', async (t) => {
  const app = await build(t, { authorize: byToken })
  const w = await joined(app, { clientId: 'w' })
  await write(w, 'w1', [{ 'e1/Pos': { _exists: true, x: 1 } }])
  const r = await connect(app, { roomId: 'r', clientId: 'r', token: 'ro' })
  await Promise.all([r.next(CLIENT_COUNT(2)), w.next(CLIENT_COUNT(2))])
  const from = r.frames.length
  const fromW = w.frames.length
  const synced = await r.join(0, { documentPatches: [{ 'e1/Pos': { x: 50 } }], ephemeralPatches: [{ 'cursor/r': { _exists: true } }] })
  t.equal(synced.timestamp, 1)
  t.ok(r.frames.slice(from).some((f) => f.type === 'error' && f.code === 'CANVAS_STORE_READONLY'))
  t.strictSame(snapshotOf(app).state, { 'e1/Pos': { _exists: true, x: 1 } })
  await write(w, 'w2', undefined, [{ 'cursor/w': { _exists: true } }])
  t.strictSame(w.frames.slice(fromW), [{ type: 'ack', messageId: 'w2', timestamp: 1 }], 'nothing was broadcast')
  await Promise.all([w.close(), r.close()])
})

t.test('authorize throwing closes the socket with 1008 and the error message as reason', async (t) => {
  const app = await build(t, {
    authorize: ({ token }) => {
      if (token === 'sync') throw new Error('unknown user')
      return Promise.reject(new Error('expired token'))
    }
  })
  const a = await connect(app, { roomId: 'r', clientId: 'a', token: 'sync' })
  t.strictSame(await a.closed, { code: 1008, reason: 'unknown user' })
  const b = await connect(app, { roomId: 'r', clientId: 'b', token: 'async' })
  t.strictSame(await b.closed, { code: 1008, reason: 'expired token' })
  t.strictSame(a.frames, [], 'nothing sent before the close')
  t.equal(app.canvasStore.getExistingRoom('r'), undefined, 'no room was loaded for a refused connection')
})

t.test('authorize returning no valid permissions refuses the connection with 1008', async (t) => {
  const app = await build(t, { authorize: () => ({ permissions: 'admin' }) as unknown as AuthorizeResult })
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  t.equal((await a.closed).code, 1008)
})

t.test('authorize metadata that JSON cannot hold refuses the connection (1008); metadata is kept as its JSON copy', async (t) => {
  const circular: Record<string, unknown> = {}
  circular.self = circular
  const byClient: Record<string, unknown> = { big: 10n, circular, fn: () => 1, date: new Date(0), nested: { keep: 1, drop: () => 2 } }
  const app = await build(t, { authorize: ({ clientId }) => ({ permissions: 'readwrite', metadata: byClient[clientId] }), admin: { auth: false } })
  for (const clientId of ['big', 'circular']) {
    const peer = await connect(app, { roomId: 'r', clientId })
    const { code, reason } = await peer.closed
    t.equal(code, 1008, clientId)
    t.match(reason, /^authorize returned metadata that JSON cannot hold/, clientId)
  }
  for (const clientId of ['fn', 'date', 'nested']) await joined(app, { clientId })
  const sessions = (await app.inject('/rooms/r/sessions')).json()
  t.strictSame(sessions.map((s: any) => [s.clientId, s.metadata]), [['fn', undefined], ['date', '1970-01-01T00:00:00.000Z'], ['nested', { keep: 1 }]])
  const [fn] = roomOf(app).getSessions()
  t.equal(fn.metadata, undefined, 'a function is no metadata')
  t.equal((await app.inject({ method: 'PATCH', url: `/rooms/r/sessions/${fn.sessionId}`, payload: { permissions: 'readonly' } })).statusCode, 200)
})

t.test('authorize that does not decide within authorizeTimeoutMs: the connection is closed with 1013, and the room is not loaded', async (t) => {
  const never = new Promise<AuthorizeResult>(() => {})
  const app = await build(t, { authorize: () => never, authorizeTimeoutMs: 20 })
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  t.strictSame(await a.closed, { code: 1013, reason: 'Authorization timed out after 20 ms: try again' })
  t.strictSame(app.canvasStore.getRoomIds(), [])
})

t.test('app.close() drops the bound of an authorize still pending: the process exits without waiting for it', async (t) => {
  // A child process whose authorize never decides (bound: 10 minutes) connects a client, then closes its app.
  const child = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'fixtures', 'pending-authorize.ts')], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => child.kill('SIGKILL'))
  let out = ''
  child.stdout.on('data', (chunk) => { out += String(chunk) })
  const [code] = await once(child, 'exit') as [number | null]
  t.equal(code, 0)
  t.match(out, /closed\n/, 'the app closed while authorize was pending')
})

t.test('an auth-refresh that authorize does not decide in time closes its session with 1013; its held frames are not applied', async (t) => {
  const app = await build(t, {
    authorize: (info) => info.request === undefined ? new Promise<AuthorizeResult>(() => {}) : { permissions: 'readwrite' },
    authorizeTimeoutMs: 50
  })
  const a = await joined(app, { clientId: 'a' })
  a.send({ type: 'auth-refresh', token: 'slow' })
  a.send({ type: 'patch', messageId: 'm1', documentPatches: [{ 'e1/A': { _exists: true } }] })
  t.strictSame(await a.closed, { code: 1013, reason: 'Authorization timed out after 50 ms: try again' })
  t.equal(roomOf(app).getSessionCount(), 0)
  t.strictSame(snapshotOf(app).state, {})
})

for (const [status, code] of [[401, 4401], [403, 4403]]) {
  t.test(`authorize throwing an error with statusCode ${status} closes with ${code}`, async (t) => {
    const app = await build(t, { authorize: async () => { throw httpError(status, `refused with ${status}`) } })
    const a = await connect(app, { roomId: 'r', clientId: 'a' })
    t.strictSame(await a.closed, { code, reason: `refused with ${status}` })
  })
}

const badQueries: Array<[string, Record<string, string>]> = [
  ['roomId missing', { clientId: 'a' }],
  ['clientId missing', { roomId: 'r' }],
  ['roomId empty', { roomId: '', clientId: 'a' }],
  ['clientId empty', { roomId: 'r', clientId: '' }],
  // The admin routes could never name such a room: URL parsers remove these path segments.
  ['roomId "."', { roomId: '.', clientId: 'a' }],
  ['roomId ".."', { roomId: '..', clientId: 'a' }]
]

for (const [name, query] of badQueries) {
  t.test(`${name}: HTTP 400 before the upgrade, authorize not called`, async (t) => {
    let calls = 0
    const app = await build(t, { authorize: () => { calls++; return { permissions: 'readwrite' } } })
    await t.rejects(connect(app, query), { message: 'Unexpected server response: 400' })
    t.equal(calls, 0)
    t.strictSame(app.canvasStore.getRoomIds(), [])
  })
}

t.test('a plain HTTP request to the WebSocket route is answered 426 with its code, authorize not called', async (t) => {
  let calls = 0
  const app = await build(t, { authorize: () => { calls++; return { permissions: 'readwrite' } } })
  const res = await app.inject({ method: 'GET', url: '/sync?roomId=r&clientId=a' })
  t.equal(res.statusCode, 426)
  t.equal(res.headers.upgrade, 'websocket')
  t.match(res.json(), { statusCode: 426, code: 'CANVAS_STORE_UPGRADE_REQUIRED' })
  t.equal((await app.inject({ method: 'HEAD', url: '/sync?roomId=r&clientId=a' })).statusCode, 426)
  t.equal(calls, 0)
  t.strictSame(app.canvasStore.getRoomIds(), [])
})

t.test('room ids that only start with dots, or have three, are taken', async (t) => {
  const app = await build(t, {})
  for (const roomId of ['...', '.a', '..b', 'a..']) {
    const peer = await connect(app, { roomId, clientId: 'a' })
    await peer.join()
    await peer.close()
  }
  t.strictSame(app.canvasStore.getRoomIds().sort(), ['...', '..b', '.a', 'a..'])
})

t.test('auth-refresh success replaces permissions (the next patch obeys) and metadata', async (t) => {
  const refreshes: AuthorizeInfo[] = []
  const app = await build(t, {
    authorize: (info) => {
      if (info.request === undefined) refreshes.push(info)
      return byToken(info)
    }
  })
  const a = await joined(app, { clientId: 'a', token: 'ro-1' })
  const sessionId = roomOf(app).getSessions()[0].sessionId
  t.strictSame(roomOf(app).getSessions()[0], { sessionId, clientId: 'a', permissions: 'readonly', metadata: { role: 'viewer', token: 'ro-1' } })

  a.send({ type: 'auth-refresh', token: 'rw-2' })
  t.equal((await write(a, 'm1', [{ 'e1/A': { _exists: true, v: 1 } }])).timestamp, 1, 'readwrite now: applied')
  t.strictSame(snapshotOf(app).state, { 'e1/A': { _exists: true, v: 1 } })
  t.strictSame(roomOf(app).getSessions()[0], { sessionId, clientId: 'a', permissions: 'readwrite', metadata: { role: 'editor', token: 'rw-2' } })
  t.equal(refreshes.length, 1)
  t.equal(refreshes[0].roomId, 'r')
  t.equal(refreshes[0].clientId, 'a')
  t.equal(refreshes[0].token, 'rw-2')

  const from = a.frames.length
  a.send({ type: 'auth-refresh', token: 'ro-3' })
  t.equal((await write(a, 'm2', [{ 'e1/A': { v: 2 } }])).timestamp, 1, 'readonly again: not applied')
  await a.next((f) => f.type === 'patch', from)
  t.ok(a.frames.slice(from).some((f) => f.type === 'error' && f.code === 'CANVAS_STORE_READONLY'))
  t.strictSame(snapshotOf(app).state, { 'e1/A': { _exists: true, v: 1 } })
  t.strictSame(roomOf(app).getSessions()[0].metadata, { role: 'viewer', token: 'ro-3' })
  t.equal(roomOf(app).getSessions()[0].sessionId, sessionId, 'same session')
  await a.close()
})

t.test('auth-refresh failure closes that socket and removes the session; the others get its tombstones and clientCount', async (t) => {
  const app = await build(t, { authorize: byToken })
  const a = await joined(app, { clientId: 'a' })
  const b = await joined(app, { clientId: 'b' })
  await write(a, 'm1', undefined, [{ 'cursor/a': { _exists: true, x: 1 } }])
  await b.next((f) => f.type === 'patch' && f.clientId === 'a')
  const fromB = b.frames.length
  a.send({ type: 'auth-refresh', token: 'bad' })
  t.strictSame(await a.closed, { code: 4403, reason: 'token revoked' })
  await b.next(CLIENT_COUNT(1), fromB)
  t.strictSame(b.frames.slice(fromB), [
    { type: 'patch', ephemeralPatches: [{ 'cursor/a': { _exists: false } }], clientId: 'a' },
    { type: 'clientCount', count: 1 }
  ])
  t.equal(roomOf(app).getSessionCount(), 1)
  t.strictSame(roomOf(app).getSessions().map((s) => s.clientId), ['b'])
  await b.close()
})

t.test('frames sent right after an auth-refresh wait for its result', async (t) => {
  const decide = gate()
  let refreshCalls = 0
  const app = await build(t, {
    authorize: async (info) => {
      if (info.request === undefined) {
        refreshCalls++
        await decide.promise
      }
      return byToken(info)
    }
  })
  const received = serverReceived(app)
  const a = await joined(app, { clientId: 'a', token: 'rw' })
  const b = await joined(app, { clientId: 'b', token: 'rw' })
  const from = a.frames.length
  const fromB = b.frames.length
  await received(2)
  a.send({ type: 'auth-refresh', token: 'ro' })
  a.send({ type: 'patch', messageId: 'm1', documentPatches: [{ 'e1/A': { _exists: true, v: 1 } }] })
  a.send({ type: 'patch', messageId: 'm2', ephemeralPatches: [{ 'cursor/a': { _exists: true } }] })
  await received(5)
  t.equal(refreshCalls, 1)
  t.strictSame(a.frames.slice(from), [], 'nothing answered while the refresh is pending')
  decide.open()
  await a.next(ACK('m2'), from)
  t.strictSame(a.frames.slice(from).map((f) => f.type), ['permissions', 'ack', 'error', 'patch', 'ack'], 'the new permissions are pushed, then the frames are handled as readonly, in order')
  t.strictSame(a.frames[from], { type: 'permissions', permissions: 'readonly' })
  t.strictSame(a.frames[from + 1], { type: 'ack', messageId: 'm1', timestamp: 0 })
  t.strictSame(snapshotOf(app).state, {})
  await write(b, 'probe', undefined, [{ 'cursor/b': { _exists: true } }])
  t.strictSame(b.frames.slice(fromB), [{ type: 'ack', messageId: 'probe', timestamp: 0 }], 'nothing from the readonly session was broadcast')
  await Promise.all([a.close(), b.close()])
})

/** The admin routes open, connections decided at once (byToken), every auth-refresh held until `decide.open()`. */
async function refreshWaitsForGate (t: Test) {
  const decide = gate()
  const app = await build(t, {
    admin: { auth: false },
    authorize: async (info) => {
      if (info.request === undefined) await decide.promise
      return byToken(info)
    }
  })
  return { app, decide, received: serverReceived(app) }
}

t.test('a permission change made by an administrator while an auth-refresh is pending is kept; the frames held meanwhile obey it', async (t) => {
  const { app, decide, received } = await refreshWaitsForGate(t)
  const a = await joined(app, { clientId: 'a', token: 'rw' })
  await received(1)
  const sessionId = roomOf(app).getSessions()[0].sessionId
  const from = a.frames.length
  a.send({ type: 'auth-refresh', token: 'rw-new' })
  await received(2)
  const res = await app.inject({ method: 'PATCH', url: `/rooms/r/sessions/${sessionId}`, payload: { permissions: 'readonly' } })
  t.equal(res.statusCode, 200)
  // Sent after the administrator was told the session is read-only.
  a.send({ type: 'patch', messageId: 'm1', documentPatches: [{ 'e1/A': { _exists: true, v: 1 } }] })
  await received(3)
  decide.open()
  await a.next(ACK('m1'), from)
  t.strictSame(a.frames.slice(from).map((f) => f.type), ['permissions', 'ack', 'error', 'patch'], 'the refresh (readwrite, decided from an older state) does not undo the change')
  t.strictSame(a.frames[from], { type: 'permissions', permissions: 'readonly' })
  t.equal(roomOf(app).getSessionPermissions(sessionId), 'readonly')
  t.strictSame(roomOf(app).getSession(sessionId)?.metadata, { role: 'editor', token: 'rw-new' }, 'the refresh\'s metadata is still taken')
  t.strictSame(snapshotOf(app).state, {}, 'the patch was not applied')

  // A refresh asked for after the change decides as usual.
  const later = a.frames.length
  a.send({ type: 'auth-refresh', token: 'rw-again' })
  await a.next((f) => f.type === 'permissions', later)
  t.equal(roomOf(app).getSessionPermissions(sessionId), 'readwrite')
  await a.close()
})

t.test('an administrator\'s change is not undone by a refresh held behind a pending one; a refresh that decides readonly still makes the session readonly', async (t) => {
  const { app, decide, received } = await refreshWaitsForGate(t)
  const a = await joined(app, { clientId: 'a', token: 'rw' })
  const b = await joined(app, { clientId: 'b', token: 'ro' })
  await received(2)
  const [sa, sb] = ['a', 'b'].map((c) => roomOf(app).getSessions().find((s) => s.clientId === c)!.sessionId)
  const fromA = a.frames.length
  // a: two refreshes, the second held behind the first; then the administrator makes a readonly; then a patch.
  a.send({ type: 'auth-refresh', token: 'rw-1' })
  a.send({ type: 'auth-refresh', token: 'rw-2' })
  // b (readonly): an administrator grants readwrite while b's refresh, with a revoked-looking token, decides readonly.
  b.send({ type: 'auth-refresh', token: 'ro-again' })
  await received(5)
  const patch = (id: string, permissions: string) => app.inject({ method: 'PATCH', url: `/rooms/r/sessions/${id}`, payload: { permissions } })
  t.equal((await patch(sa, 'readonly')).statusCode, 200)
  t.equal((await patch(sb, 'readwrite')).statusCode, 200)
  a.send({ type: 'patch', messageId: 'm1', documentPatches: [{ 'e1/A': { _exists: true, v: 1 } }] })
  await received(6)
  decide.open()
  await a.next(ACK('m1'), fromA)
  t.equal(roomOf(app).getSessionPermissions(sa), 'readonly', 'neither refresh of a (both sent before the change) undid it')
  t.strictSame(snapshotOf(app).state, {}, 'the patch sent after the change was not applied')
  await b.next((f) => f.type === 'permissions' && f.permissions === 'readonly')
  t.equal(roomOf(app).getSessionPermissions(sb), 'readonly', 'the stricter decision of b\'s refresh is kept')
  await Promise.all([a.close(), b.close()])
})

t.test('without an authorize option every session is readwrite', async (t) => {
  const app = await build(t)
  const a = await joined(app, { clientId: 'a', token: 'anything' })
  t.equal(roomOf(app).getSessions()[0].permissions, 'readwrite')
  t.equal((await write(a, 'm1', [{ 'e1/A': { _exists: true } }])).timestamp, 1)
  t.strictSame(snapshotOf(app).state, { 'e1/A': { _exists: true } })
  await a.close()
})

t.test('without an authorize option, auth-refresh is ignored and the session keeps working', async (t) => {
  const app = await build(t)
  const a = await joined(app, { clientId: 'a' })
  a.send({ type: 'auth-refresh', token: 'whatever' })
  t.equal((await write(a, 'm1', [{ 'e1/A': { _exists: true } }])).timestamp, 1)
  t.equal(roomOf(app).getSessions()[0].permissions, 'readwrite')
  await a.close()
})

t.test('a frame held during an auth-refresh whose handling throws closes only its session (1011), not the process', async (t) => {
  throwOnKey(t, 'boom')
  const decide = gate()
  const app = await build(t, {
    authorize: async (info) => {
      if (info.request === undefined) await decide.promise
      return byToken(info)
    }
  })
  const received = serverReceived(app)
  const a = await joined(app, { clientId: 'a', token: 'rw' })
  const b = await joined(app, { clientId: 'b', token: 'rw' })
  await received(2)
  a.send({ type: 'auth-refresh', token: 'rw-2' })
  a.send({ type: 'patch', messageId: 'm1', documentPatches: [{ boom: { _exists: true } }] })
  a.send({ type: 'patch', messageId: 'm2', documentPatches: [{ 'e1/A': { _exists: true } }] })
  await received(5)
  decide.open()
  t.strictSame(await a.closed, { code: 1011, reason: 'Internal error' })
  t.equal((await write(b, 'b1', [{ 'e2/A': { _exists: true } }])).timestamp, 1, 'the room goes on')
  t.strictSame(snapshotOf(app).state, { 'e2/A': { _exists: true } }, 'nothing of the held frames after the failing one was applied')
  await b.close()
})

t.test('frames held during a pending auth-refresh are bounded in bytes: past 16 MiB the session is closed (1008)', async (t) => {
  const decide = gate()
  t.teardown(() => decide.open())
  const app = await build(t, {
    rateLimit: false,
    authorize: async (info) => {
      if (info.request === undefined) await decide.promise
      return byToken(info)
    }
  })
  const a = await joined(app, { clientId: 'a', token: 'rw' })
  const b = await joined(app, { clientId: 'b', token: 'rw' })
  a.send({ type: 'auth-refresh', token: 'rw-2' })
  const big = 'x'.repeat(900_000)
  for (let i = 0; i < 20; i++) a.send({ type: 'patch', messageId: `m${i}`, documentPatches: [{ [`k${i}`]: { _exists: true, big } }] })
  t.strictSame(await a.closed, { code: 1008, reason: 'Too many frames while auth-refresh is pending' })
  t.equal((await write(b, 'b1', [{ e: { _exists: true } }])).timestamp, 1, 'the room goes on, nothing of the held frames applied')
  await b.close()
})

t.test('a bound that wins lets go of the call it refused: a promise that authorize hands every call, and that never settles, keeps none of them', async (t) => {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const bounds = new Bounds()
  const never = new Promise<never>(() => {})
  const refs: Array<WeakRef<object>> = []
  for (let i = 0; i < 20; i++) {
    const marker = { i }
    refs.push(new WeakRef(marker))
    try {
      await bounds.within(never, 1, () => Object.assign(new Error('late'), { marker }))
      t.fail('the bound should win')
    } catch {}
  }
  for (let round = 0; round < 3; round++) {
    await new Promise((resolve) => setImmediate(resolve))
    gc()
  }
  t.equal(refs.filter((ref) => ref.deref() !== undefined).length, 0, 'every refused call was collected')
})

t.test('a decision made at once sets no timer: only an authorize that returns a promise is bounded', async (t) => {
  const bounds = new Bounds()
  const info = { roomId: 'r', clientId: 'a', token: '', request: undefined }
  const timers = () => process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length
  const before = timers()
  const sync = bounds.authorize(() => ({ permissions: 'readonly' }), info, 60_000)
  t.equal(timers(), before, 'no timer for a synchronous decision')
  t.same(await sync, { permissions: 'readonly' })
  const thrown = bounds.authorize(() => { throw httpError(403, 'no') }, info, 60_000)
  t.equal(timers(), before, 'nor for a synchronous throw')
  await t.rejects(thrown, { message: 'no' }, 'which rejects the call')
  const decision = gate<AuthorizeResult>()
  const later = bounds.authorize(async () => await decision.promise, info, 60_000)
  t.equal(timers(), before + 1, 'a promise is bounded')
  decision.open({ permissions: 'readwrite' })
  t.same(await later, { permissions: 'readwrite' })
  t.equal(timers(), before, 'and its timer cleared once it settles')
})
