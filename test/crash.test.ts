import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import pg from 'pg'
import { connectReal, write, type Peer } from './helper.js'

const server = join(import.meta.dirname, 'fixtures', 'crash-server.ts')

async function start (env: Record<string, string>): Promise<{ child: ChildProcess, base: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', server], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] })
  const lines = createInterface({ input: child.stdout! })
  const [line] = await once(lines, 'line') as [string]
  lines.close()
  return { child, base: `ws://127.0.0.1:${JSON.parse(line).port}` }
}

async function kill (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = once(child, 'exit')
  child.kill('SIGKILL')
  await exited
}

/**
 * Sends patches (a window of 16 in flight, each creating its own key) until
 * `target` acks came back, then SIGKILLs the server while more are in flight.
 * @returns the acked patch numbers
 */
async function writeUntilKilled (peer: Peer, child: ChildProcess, target: number): Promise<number[]> {
  const acked: number[] = []
  let sent = 0
  const window = 16
  await new Promise<void>((resolve) => {
    const sendNext = (): void => {
      const i = sent++
      peer.send({ type: 'patch', messageId: `m${i}`, documentPatches: [{ [`e${i}/Item`]: { _exists: true, n: i } }] })
    }
    peer.ws.on('message', (data) => {
      const frame = JSON.parse(String(data))
      if (frame.type !== 'ack') return
      acked.push(Number(frame.messageId.slice(1)))
      if (acked.length === target) {
        child.kill('SIGKILL')
        resolve()
      } else if (acked.length < target) {
        sendNext()
      }
    })
    for (let i = 0; i < window; i++) sendNext()
  })
  return acked
}

async function crashAndCheck (t: Test, env: Record<string, string>): Promise<void> {
  const first = await start(env)
  t.teardown(() => kill(first.child))
  const writer = await connectReal(first.base, { roomId: 'crash-room', clientId: 'writer' })
  await writer.join()
  const acked = await writeUntilKilled(writer, first.child, 2000)
  await once(first.child, 'exit')
  await writer.closed

  const second = await start(env)
  t.teardown(() => kill(second.child))
  const reader = await connectReal(second.base, { roomId: 'crash-room', clientId: 'reader' })
  const synced = await reader.join(0)
  const diff = reader.frames.find((f) => f.type === 'patch' && f.documentPatches !== undefined)
  const state = diff?.documentPatches[0] ?? {}
  const missing = acked.filter((i) => state[`e${i}/Item`]?.n !== i)
  t.ok(acked.length >= 2000, `at least 2,000 acked patches (${acked.length})`)
  t.same(missing, [], 'zero acked patches lost')
  t.ok(synced.timestamp >= 2000, `the counter survived (${synced.timestamp})`)
  await reader.close()
}

/**
 * Throttled acks: a crash loses what was acked since the last write, but
 * the next process never gives those counters again. A client that saw them
 * is asked to resync what it holds past what storage held, and is sent the
 * writes made since the restart (the counters of which it has seen before,
 * when they are given again).
 */
async function throttledCrash (t: Test, env: Record<string, string>): Promise<void> {
  const throttled = { ...env, CRASH_DURABILITY: 'throttled', CRASH_SAVE_THROTTLE_MS: '600000' }
  const first = await start(throttled)
  t.teardown(() => kill(first.child))
  const writer = await connectReal(first.base, { roomId: 'throttled-room', clientId: 'writer' })
  await writer.join()
  let seen = 0
  for (let i = 0; i < 20; i++) seen = (await write(writer, `m${i}`, [{ [`e${i}/Item`]: { _exists: true, n: i } }])).timestamp
  t.equal(seen, 20, 'acked 20 patches, of which only the first is written (the throttle is 10 minutes)')
  await kill(first.child)
  await writer.closed

  const second = await start(throttled)
  t.teardown(() => kill(second.child))
  const other = await connectReal(second.base, { roomId: 'throttled-room', clientId: 'other' })
  await other.join()
  const after = (await write(other, 'n1', [{ 'after/Item': { _exists: true, n: 1 } }])).timestamp
  t.ok(after > seen, `the write after the crash gets a counter nobody saw before (${after})`)

  const back = await connectReal(second.base, { roomId: 'throttled-room', clientId: 'writer' })
  const resync = back.nextOfType('resync')
  const diff = back.next((f) => f.type === 'patch' && f.documentPatches !== undefined)
  await back.join(seen)
  t.same(await resync, { type: 'resync', since: 1 }, 'asked for what it holds past the stored counter 1')
  t.same((await diff).documentPatches, [{ 'after/Item': { _exists: true, n: 1 } }], 'sent the write made since the restart')
  await back.close()
  await other.close()
}

t.test('SQLite, throttled acks: after a SIGKILL, no acked counter is given again', async (t) => {
  const dir = t.testdir({})
  await throttledCrash(t, { CRASH_STORAGE: 'sqlite', CRASH_SQLITE_FILE: join(dir, 'crash.db') })
})

t.test('SQLite: SIGKILL mid-stream loses no acked patch', async (t) => {
  const dir = t.testdir({})
  await crashAndCheck(t, { CRASH_STORAGE: 'sqlite', CRASH_SQLITE_FILE: join(dir, 'crash.db') })
})

const pgUrl = process.env.CANVAS_STORE_TEST_PG
if (pgUrl === undefined || pgUrl === '') {
  t.test('PostgreSQL', { skip: 'PostgreSQL crash test skipped: set CANVAS_STORE_TEST_PG (e.g. postgres://postgres@127.0.0.1:5432/test)' }, async () => {})
} else {
  t.test('PostgreSQL: SIGKILL mid-stream loses no acked patch', async (t) => {
    const prefix = `cs_crash_${process.pid}_${Date.now()}`
    t.teardown(async () => {
      const pool = new pg.Pool({ connectionString: pgUrl })
      await pool.query(`DROP TABLE IF EXISTS ${prefix}_rooms, ${prefix}_entries`)
      await pool.end()
    })
    await crashAndCheck(t, { CRASH_STORAGE: 'postgres', CRASH_PG_URL: pgUrl, CRASH_PG_PREFIX: prefix })
  })

  t.test('PostgreSQL, throttled acks: after a SIGKILL, no acked counter is given again', async (t) => {
    const prefix = `cs_crash_t_${process.pid}_${Date.now()}`
    t.teardown(async () => {
      const pool = new pg.Pool({ connectionString: pgUrl })
      await pool.query(`DROP TABLE IF EXISTS ${prefix}_rooms, ${prefix}_entries`)
      await pool.end()
    })
    await throttledCrash(t, { CRASH_STORAGE: 'postgres', CRASH_PG_URL: pgUrl, CRASH_PG_PREFIX: prefix })
  })
}
