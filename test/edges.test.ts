/**
 * Answers at the edges of the HTTP and close-code contract that no other file
 * pins down: the `code` of a refused upgrade, close reasons cut to what the
 * WebSocket protocol allows, and frames sent just before a close.
 */
import rateLimit from '@fastify/rate-limit'
import { createConnection } from 'node:net'
import { once } from 'node:events'
import Fastify, { type FastifyBaseLogger } from 'fastify'
import t from 'tap'
import WebSocket from 'ws'
import canvasStore from '../lib/index.js'
import { socketError } from '../lib/routes/ws.js'
import { build, connect, connectReal, listen, logLines, write } from './helper.js'

const tooLong = 'r'.repeat(257)

for (const [name, query] of [
  ['a roomId over 256 characters', `roomId=${tooLong}&clientId=a`],
  ['a clientId with a control character', 'roomId=r&clientId=a%0Ab'],
  ['a roomId with a NUL', 'roomId=r%00&clientId=a'],
  // 129 characters outside the BMP: 258 UTF-16 units, over the limit as the admin routes count it too.
  ['a roomId of 129 emoji', `roomId=${encodeURIComponent('\u{1F600}'.repeat(129))}&clientId=a`]
] as const) {
  t.test(`${name}: HTTP 400 with code CANVAS_STORE_INVALID_REQUEST, before any room exists`, async (t) => {
    const app = await build(t)
    const res = await app.inject({ method: 'GET', url: `/sync?${query}` })
    t.equal(res.statusCode, 400)
    t.equal(res.json().code, 'CANVAS_STORE_INVALID_REQUEST')
    t.strictSame(app.canvasStore.getRoomIds(), [])
  })
}

t.test('too many upgrade attempts: HTTP 429 with a code and the retry delay', async (t) => {
  const app = await build(t, { connectionRateLimit: { max: 1, timeWindow: 60_000, allowList: [] } })
  const first = await app.inject({ method: 'GET', url: '/sync?roomId=r&clientId=a' })
  t.not(first.statusCode, 429)
  const res = await app.inject({ method: 'GET', url: '/sync?roomId=r&clientId=b' })
  t.equal(res.statusCode, 429)
  t.match(res.json(), { statusCode: 429, code: 'CANVAS_STORE_TOO_MANY_CONNECTIONS', message: /retry in \d/ })
})

t.test('an app that registered @fastify/rate-limit globally: the upgrade route still answers 429 with its code', async (t) => {
  const app = await build(t, { connectionRateLimit: { max: 1, timeWindow: 60_000, allowList: [] } }, async (app) => {
    await app.register(rateLimit, { global: true })
  })
  await app.inject({ method: 'GET', url: '/sync?roomId=r&clientId=a' })
  const res = await app.inject({ method: 'GET', url: '/sync?roomId=r&clientId=b' })
  t.equal(res.statusCode, 429)
  t.match(res.json(), { statusCode: 429, code: 'CANVAS_STORE_TOO_MANY_CONNECTIONS' })
})

for (const [name, headers, message] of [
  ['an unknown WebSocket version', { 'sec-websocket-version': '12' }, /Sec-WebSocket-Version must be 13/],
  ['the draft-8 WebSocket version ws also takes', { 'sec-websocket-version': '8' }, /Sec-WebSocket-Version must be 13/],
  ['a Sec-WebSocket-Key that is not 16 bytes', { 'sec-websocket-key': 'short' }, /Sec-WebSocket-Key/],
  ['another protocol to upgrade to', { upgrade: 'h2c' }, /Upgrade header/]
] as const) {
  t.test(`an upgrade with ${name}: HTTP 400 with code CANVAS_STORE_INVALID_REQUEST, authorize not called`, async (t) => {
    let calls = 0
    const app = await build(t, { authorize: () => { calls++; return { permissions: 'readwrite' } } })
    const base = (await listen(app)).replace('ws://', 'http://')
    const { port } = new URL(base)
    const socket = createConnection({ host: '127.0.0.1', port: Number(port) })
    t.teardown(() => socket.destroy())
    const valid: Record<string, string> = { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' }
    const all = { ...valid, ...(headers as Record<string, string>) }
    socket.write(`GET /sync?roomId=r&clientId=a HTTP/1.1\r\nHost: 127.0.0.1\r\n${Object.entries(all).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`)
    const answer = await new Promise<string>((resolve) => {
      let text = ''
      socket.on('data', (chunk) => {
        text += String(chunk)
        if (text.includes('}')) resolve(text)
      })
    })
    t.match(answer, /^HTTP\/1\.1 400 /)
    t.match(answer, /"code":"CANVAS_STORE_INVALID_REQUEST"/)
    t.match(answer, message)
    t.equal(calls, 0)
  })
}

t.test('a plain GET that carries an Upgrade header but asks for no upgrade gets the 426, not a handshake refusal', async (t) => {
  const app = await build(t)
  const res = await app.inject({ method: 'GET', url: '/sync?roomId=r&clientId=a', headers: { upgrade: 'websocket' } })
  t.equal(res.statusCode, 426)
  t.equal(res.json().code, 'CANVAS_STORE_UPGRADE_REQUIRED')
})

t.test('a close reason longer than 123 bytes of UTF-8 is cut to fit, on a character boundary', async (t) => {
  const message = 'é'.repeat(100) // 200 bytes
  const app = await build(t, { authorize: async () => { throw Object.assign(new Error(message), { statusCode: 403 }) } })
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  const { code, reason } = await a.closed
  t.equal(code, 4403)
  t.ok(Buffer.byteLength(reason) <= 123, `${Buffer.byteLength(reason)} bytes`)
  t.ok(reason.length > 0 && message.startsWith(reason), 'a prefix of the message, no broken character')
})

t.test('a frame the room sends in the turn the server shuts down arrives before the 1001 close', async (t) => {
  const app = await build(t)
  const peer = await connectReal(await listen(app), { roomId: 'r', clientId: 'a' })
  await peer.join()
  const room = app.canvasStore.getExistingRoom('r')!
  const [session] = room.getSessions()
  // Frames of a turn are written at its end; the shutdown closes the socket earlier in the same turn.
  room.setSessionPermissions(session.sessionId, 'readonly')
  const closing = app.close()
  const { code } = await peer.closed
  await closing
  t.equal(code, 1001)
  t.match(peer.frames.at(-1), { type: 'permissions', permissions: 'readonly' })
})

t.test('an app\'s own WebSocket route whose handler throws, on the @fastify/websocket the plugin registered: logged at error level, the connection cut', async (t) => {
  const { stream, lines } = logLines()
  const app = Fastify({ logger: { level: 'info', stream } })
  t.teardown(() => app.close())
  await app.register(canvasStore)
  app.get('/mine', { websocket: true }, () => { throw new Error('app bug') })
  app.get('/later', { websocket: true }, async () => { throw new Error('async app bug') })
  const base = await listen(app)
  for (const [path, message] of [['/mine', 'app bug'], ['/later', 'async app bug']]) {
    const ws = new WebSocket(`${base}${path}`)
    ws.on('error', () => {})
    const [code] = await once(ws, 'close') as [number]
    t.equal(code, 1006, `${path}: cut`)
    t.ok(lines.some((l) => l.level === 50 && l.err?.message === message && l.msg === 'WebSocket handler failed: connection closed'), `${path}: logged at error level`)
  }
})

t.test('socketError: a lost connection (an error of a system call, such as a write to a reset connection that ws\'s sender reports) is logged at debug, not as a server error, and the socket cut', async (t) => {
  const levels: string[] = []
  const log = { debug: () => levels.push('debug'), info: () => levels.push('info'), error: () => levels.push('error') } as unknown as FastifyBaseLogger
  let terminated = 0
  const socket = { terminate: () => { terminated++ } } as unknown as WebSocket
  socketError(Object.assign(new Error('write EPIPE'), { code: 'EPIPE', errno: -32, syscall: 'write' }), socket, log)
  t.strictSame(levels, ['debug'])
  t.equal(terminated, 1)
  socketError(Object.assign(new Error('a bug'), { code: 'ERR_SOMETHING' }), socket, log)
  t.strictSame(levels, ['debug', 'error'], 'an error of no system call is the server\'s: error level')
  t.equal(terminated, 2)
})

t.test('a frame that breaks RFC 6455: ws\'s close code with a reason, logged at info (the client\'s fault), the room unharmed', async (t) => {
  const { stream, lines } = logLines()
  const app = Fastify({ logger: { level: 'debug', stream } })
  await app.register(canvasStore)
  t.teardown(() => app.close())
  const base = await listen(app)
  const calm = await connectReal(base, { roomId: 'r', clientId: 'calm' })
  await calm.join()
  const bad = await connectReal(base, { roomId: 'r', clientId: 'bad' })
  await bad.join()
  // A text frame whose bytes are not UTF-8.
  bad.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false })
  t.strictSame(await bad.closed, { code: 1007, reason: 'Invalid UTF-8 in a text frame' })
  t.equal((await write(calm, 'm1', [{ 'e/A': { _exists: true } }])).timestamp, 1)
  t.ok(lines.some((l) => l.level === 30 && l.msg === 'WebSocket frame refused (protocol error): connection closed'), 'logged at info')
  t.notOk(lines.some((l) => l.level >= 50), 'nothing at error level')
  await calm.close()
})
