/**
 * One room, two processes on one database: a rolling restart whose new
 * process takes a room while the old one still serves it. Each process's
 * storage claims the rooms it loads; the old one's writes to a room claimed
 * since are refused, so it can neither overwrite the new one's keys nor ack
 * what it did not write, and it closes that room's sessions with 1013.
 * (Two storage objects on one database stand for the two processes.)
 */
import { join } from 'node:path'
import Database from 'better-sqlite3'
import pg from 'pg'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { PostgresStorage, SqliteStorage, type RoomStore } from '../lib/index.js'
import { build, connect, write } from './helper.js'

type Store = RoomStore & { close(): Promise<void>, load(roomId: string): unknown }

/** Two storages on one database, each behind an app of its own: the old process and the new one. */
async function twoProcesses (t: Test, open: () => Store): Promise<{ newStore: Store, oldStore: Store, oldApp: FastifyInstance, newApp: FastifyInstance }> {
  const oldStore = open()
  const newStore = open()
  t.teardown(async () => { await oldStore.close(); await newStore.close() })
  return { oldStore, newStore, oldApp: await build(t, { storage: oldStore }), newApp: await build(t, { storage: newStore }) }
}

async function handover (t: Test, open: () => Store): Promise<void> {
  const { newStore, oldApp, newApp } = await twoProcesses(t, open)

  const w1 = await connect(oldApp, { roomId: 'r', clientId: 'w1' })
  await w1.join()
  t.equal((await write(w1, 'a1', [{ 'shape/Pos': { _exists: true, x: 1 } }])).timestamp, 1)

  // The new process loads the room: it reads what the old one committed.
  const w2 = await connect(newApp, { roomId: 'r', clientId: 'w2' })
  const diff = w2.nextOfType('patch')
  t.equal((await w2.join()).timestamp, 1)
  t.strictSame((await diff).documentPatches, [{ 'shape/Pos': { _exists: true, x: 1 } }])

  // The old process's next write is refused by the storage: no ack, and the session is told to reconnect.
  w1.send({ type: 'patch', messageId: 'a2', documentPatches: [{ 'shape/Pos': { x: 100 } }] })
  t.strictSame(await w1.closed, { code: 1013, reason: 'Room moved to another server: reconnect' })
  t.notOk(w1.frames.some((f) => f.type === 'ack' && f.messageId === 'a2'), 'the refused write was never acked')
  t.equal(oldApp.canvasStore.getExistingRoom('r'), undefined, 'the old process forgot the room')

  t.equal((await write(w2, 'b1', [{ 'shape/Pos': { y: 5 } }])).timestamp, 2)
  // The client re-sends what was not acked, to the process that has the room.
  const back = await connect(newApp, { roomId: 'r', clientId: 'w1' })
  await back.join(1, { documentPatches: [{ 'shape/Pos': { x: 100 } }] })
  await newApp.canvasStore.getExistingRoom('r')!.flush()
  const stored = await newStore.load('r') as { state: unknown }
  t.same(stored.state, { 'shape/Pos': { _exists: true, x: 100, y: 5 } }, 'both writes kept')
  await w2.close()
  await back.close()
}

t.test('SQLite: a room loaded by another process is not written by the old one', async (t) => {
  const file = join(t.testdir({}), 'db.sqlite')
  await handover(t, () => new SqliteStorage({ file }))
})

const pgUrl = process.env.CANVAS_STORE_TEST_PG

/** A pool and a table prefix of this test's own; the tables are dropped when it ends. */
function pgTables (t: Test, url: string, name: string): { pool: pg.Pool, prefix: string } {
  const pool = new pg.Pool({ connectionString: url })
  const prefix = `${name}_${process.pid}_${Date.now()}`
  t.teardown(async () => {
    await pool.query(`DROP TABLE IF EXISTS ${prefix}_rooms, ${prefix}_entries`)
    await pool.end()
  })
  return { pool, prefix }
}
if (pgUrl === undefined) {
  t.test('PostgreSQL', { skip: 'PostgreSQL fencing test skipped: set CANVAS_STORE_TEST_PG (e.g. postgres://postgres@127.0.0.1:5432/test)' }, async () => {})
} else {
  t.test('PostgreSQL: a room loaded by another process is not written by the old one', async (t) => {
    const { prefix } = pgTables(t, pgUrl, 'cs_fence')
    await handover(t, () => new PostgresStorage({ connectionString: pgUrl, tablePrefix: prefix }) as unknown as Store)
  })
}

t.test('SQLite: a database of an earlier version gets the owner column; its rooms load, are claimed and written', async (t) => {
  const file = join(t.testdir({}), 'old.sqlite')
  const old = new Database(file)
  old.exec(`CREATE TABLE canvas_store_rooms (room_id TEXT PRIMARY KEY, timestamp INTEGER NOT NULL);
    CREATE TABLE canvas_store_entries (room_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, stamps TEXT NOT NULL, UNIQUE (room_id, key));
    INSERT INTO canvas_store_rooms VALUES ('r', 3);
    INSERT INTO canvas_store_entries VALUES ('r', 'a/Pos', '{"_exists":true,"x":1}', '{"_exists":3,"x":3}');`)
  old.close()
  const storage = new SqliteStorage({ file })
  t.teardown(() => storage.close())
  const room = storage.forRoom('r')
  t.same((await room.load())?.state, { 'a/Pos': { _exists: true, x: 1 } })
  await room.append({ timestamp: 4, entries: [] })
  const check = new Database(file, { readonly: true })
  t.teardown(() => check.close())
  t.match(check.prepare('SELECT timestamp, owner FROM canvas_store_rooms WHERE room_id = ?').get('r'), { timestamp: 4, owner: /^[0-9a-f-]{36}$/ })
})

if (pgUrl !== undefined) {
  t.test('PostgreSQL: a table of an earlier version gets the owner column; its rooms load, are claimed and written', async (t) => {
    const { pool, prefix } = pgTables(t, pgUrl, 'cs_fence_old')
    await pool.query(`CREATE TABLE ${prefix}_rooms (room_id text PRIMARY KEY, timestamp bigint NOT NULL);
      CREATE TABLE ${prefix}_entries (room_id text NOT NULL, key text NOT NULL, value text NOT NULL, stamps text NOT NULL, PRIMARY KEY (room_id, key));
      INSERT INTO ${prefix}_rooms VALUES ('r', 3);
      INSERT INTO ${prefix}_entries VALUES ('r', 'a/Pos', '{"_exists":true,"x":1}', '{"_exists":3,"x":3}');`)
    const storage = new PostgresStorage({ pool, tablePrefix: prefix })
    const room = storage.forRoom('r')
    t.same((await room.load())?.state, { 'a/Pos': { _exists: true, x: 1 } })
    await room.append({ timestamp: 4, entries: [] })
    t.match((await pool.query(`SELECT timestamp, owner FROM ${prefix}_rooms WHERE room_id = 'r'`)).rows[0], { timestamp: '4', owner: /^[0-9a-f-]{36}$/ })
  })
}

/**
 * The old process still has the room loaded, with a session in it, when the new one claims it and writes. A
 * client joining the old process is not served the stale document (nor asked for a resync by a counter that is
 * only stale): the join finds the claim moved, the old sessions get 1013, and the room is loaded afresh.
 */
async function staleJoin (t: Test, open: () => Store): Promise<void> {
  const { oldStore, oldApp, newApp } = await twoProcesses(t, open)
  const w = await connect(oldApp, { roomId: 'r', clientId: 'w' })
  await w.join()
  await write(w, 'a1', [{ 'shape/Pos': { _exists: true, x: 1 } }])
  const idle = await connect(oldApp, { roomId: 'idle', clientId: 'i' })
  await idle.join()
  // The new process claims the room and writes counters 2 and 3; the old one has not written since.
  const c = await connect(newApp, { roomId: 'r', clientId: 'c' })
  await c.join()
  await write(c, 'c1', [{ 'shape/Pos': { x: 5 } }])
  t.equal((await write(c, 'c2', [{ 'shape/Pos': { x: 7 } }])).timestamp, 3)
  const stale = oldApp.canvasStore.getExistingRoom('r')
  t.equal(stale?.timestamp, 1, 'the old process still holds counter 1')

  // A new client on the old process: served the current document.
  const fresh = await connect(oldApp, { roomId: 'r', clientId: 'f' })
  const diff = fresh.nextOfType('patch')
  t.equal((await fresh.join()).timestamp, 3)
  t.strictSame((await diff).documentPatches, [{ 'shape/Pos': { _exists: true, x: 7 } }])
  t.strictSame(await w.closed, { code: 1013, reason: 'Room moved to another server: reconnect' }, 'the stale room\'s session is told to reconnect')
  t.not(oldApp.canvasStore.getExistingRoom('r'), stale, 'loaded afresh')
  t.equal(oldApp.canvasStore.getExistingRoom('r')?.timestamp, 3)

  // A client that saw counter 3 elsewhere and lands on the old process: synced at 3, no resync asked.
  const back = await connect(oldApp, { roomId: 'r', clientId: 'c' })
  t.equal((await back.join(3)).timestamp, 3)
  t.notOk(back.frames.some((f) => f.type === 'resync'), 'no resync asked')
  // The old process now holds the claim: the new one's write is refused, and the value is kept once.
  t.equal((await write(back, 'b1', [{ 'shape/Pos': { y: 1 } }])).timestamp, 4)
  await oldApp.canvasStore.getExistingRoom('r')!.flush()
  t.same((await oldStore.load('r') as { state: unknown }).state, { 'shape/Pos': { _exists: true, x: 7, y: 1 } })
  t.equal(idle.ws.readyState, idle.ws.OPEN, 'another room of the old process is untouched')
  await Promise.all([fresh.close(), back.close(), idle.close(), c.close()])
}

t.test('SQLite: a client joining a room that another process has loaded since gets the current document', async (t) => {
  const file = join(t.testdir({}), 'db.sqlite')
  await staleJoin(t, () => new SqliteStorage({ file }))
})

if (pgUrl !== undefined) {
  t.test('PostgreSQL: a client joining a room that another process has loaded since gets the current document', async (t) => {
    const { prefix } = pgTables(t, pgUrl, 'cs_stale')
    await staleJoin(t, () => new PostgresStorage({ connectionString: pgUrl, tablePrefix: prefix }) as unknown as Store)
  })
}

t.test('joins at the same moment share one check of the claim', async (t) => {
  const file = join(t.testdir({}), 'db.sqlite')
  const store = new SqliteStorage({ file })
  t.teardown(() => store.close())
  let checks = 0
  const counting: RoomStore = {
    forRoom (roomId) {
      const storage = store.forRoom(roomId)
      const check = storage.checkClaim!
      return Object.assign(storage, { checkClaim: async () => { checks++; await check() } })
    }
  }
  const app = await build(t, { storage: counting })
  const first = await connect(app, { roomId: 'r', clientId: 'first' })
  await first.join()
  t.equal(checks, 0, 'the join that loads the room does not check it')
  const peers = await Promise.all(['a', 'b', 'c', 'd'].map(async (clientId) => await connect(app, { roomId: 'r', clientId })))
  await Promise.all(peers.map(async (p) => await p.join()))
  t.ok(checks >= 1 && checks < 4, `4 joins, ${checks} checks`)
  await Promise.all([first, ...peers].map(async (p) => await p.close()))
})

t.test('a storage that cannot answer the check is logged and the session joins the room as it is', async (t) => {
  const file = join(t.testdir({}), 'db.sqlite')
  const store = new SqliteStorage({ file })
  t.teardown(() => store.close())
  const failing: RoomStore = {
    forRoom (roomId) {
      return Object.assign(store.forRoom(roomId), { checkClaim: async () => { throw new Error('connection reset') } })
    }
  }
  const app = await build(t, { storage: failing })
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  await a.join()
  await write(a, 'a1', [{ 'shape/Pos': { _exists: true, x: 1 } }])
  const room = app.canvasStore.getExistingRoom('r')
  const b = await connect(app, { roomId: 'r', clientId: 'b' })
  t.equal((await b.join()).timestamp, 1)
  t.equal(app.canvasStore.getExistingRoom('r'), room, 'the same room')
  t.equal(a.ws.readyState, a.ws.OPEN)
  await Promise.all([a.close(), b.close()])
})

t.test('a join to a room the app closed by hand answers 1001 at once (the claim check does not loop on it)', async (t) => {
  const store = new SqliteStorage({ file: join(t.testdir({}), 'db.sqlite') })
  t.teardown(() => store.close())
  const app = await build(t, { storage: store })
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  await a.join()
  await app.canvasStore.getExistingRoom('r')!.close()
  const b = await connect(app, { roomId: 'r', clientId: 'b' })
  t.equal((await b.closed).code, 1001)
})

t.test('a claim check the storage does not answer: logged, and the session joins the room as it is', async (t) => {
  const store = new SqliteStorage({ file: join(t.testdir({}), 'db.sqlite') })
  t.teardown(() => store.close())
  let checks = 0
  const hanging: RoomStore = {
    forRoom (roomId) {
      return Object.assign(store.forRoom(roomId), { checkClaim: async () => { checks++; await new Promise(() => {}) } })
    }
  }
  // Loads are bounded at 400 ms: the check gives up at half of it, so the join is not refused as a load that hung.
  const app = await build(t, { storage: hanging, storageFailureTimeoutMs: 400 })
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  await a.join()
  await write(a, 'a1', [{ 'shape/Pos': { _exists: true, x: 1 } }])
  const b = await connect(app, { roomId: 'r', clientId: 'b' })
  const c = await connect(app, { roomId: 'r', clientId: 'c' })
  const [sb, sc] = await Promise.all([b.join(), c.join()])
  t.equal(sb.timestamp, 1)
  t.equal(sc.timestamp, 1)
  t.equal(checks, 1, 'the two joins shared one check')
  t.equal(a.ws.readyState, a.ws.OPEN)
  await Promise.all([a.close(), b.close(), c.close()])
})

t.test('a connection authorized after drain() began loads nothing (no claim taken from the process replacing this one): 1013', async (t) => {
  const store = new SqliteStorage({ file: join(t.testdir({}), 'db.sqlite') })
  t.teardown(() => store.close())
  let loads = 0
  let decide = (): void => {}
  const decided = new Promise<void>((resolve) => { decide = resolve })
  const counting: RoomStore = {
    forRoom (roomId) {
      const storage = store.forRoom(roomId)
      return Object.assign(storage, { load: async () => { loads++; return await store.forRoom(roomId).load() } })
    }
  }
  const app = await build(t, { storage: counting, authorize: async () => { await decided; return { permissions: 'readwrite' } } })
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  const draining = app.canvasStore.drain({ graceMs: 0, jitterMs: 0 })
  decide()
  t.strictSame(await a.closed, { code: 1013, reason: 'Server restarting: try again' })
  await draining
  t.equal(loads, 0, 'the room was never loaded')
  await t.rejects(app.canvasStore.getOrCreateRoom('other'), /closed|draining/)
})

t.test('SQLite: a process that lost acked work (the counter it has is lower) still asks for the resync', async (t) => {
  const file = join(t.testdir({}), 'db.sqlite')
  const store = new SqliteStorage({ file })
  t.teardown(() => store.close())
  const app = await build(t, { storage: store })
  const c = await connect(app, { roomId: 'r', clientId: 'c' })
  const resync = c.nextOfType('resync')
  await c.join(5)
  t.strictSame(await resync, { type: 'resync', since: 0 })
  await c.close()
})

t.test('SQLite: a room\'s claim waits for another process\'s write lock (between event-loop turns), then loads', async (t) => {
  const file = join(t.testdir({}), 'db.sqlite')
  // The storage's own connection, traced: each try of the claim begins with BEGIN IMMEDIATE.
  let tries = 0
  let triedTwice: () => void = () => {}
  const db = new Database(file, { timeout: 0, verbose: (sql) => { if (sql === 'BEGIN IMMEDIATE' && ++tries === 3) triedTwice() } })
  const storage = new SqliteStorage({ database: db })
  t.teardown(async () => {
    await storage.close()
    db.close()
  })
  await storage.forRoom('r').append({ timestamp: 1, entries: [{ key: 'k', value: { _exists: true }, stamps: { _exists: 1 } }] })
  const other = new Database(file)
  t.teardown(() => other.close())
  other.exec('BEGIN IMMEDIATE')
  tries = 0
  const retried = new Promise<void>((resolve) => { triedTwice = resolve })
  let loaded = false
  const load = storage.forRoom('r').load().then((snapshot) => { loaded = true; return snapshot })
  // The first try and two retries of the claim, refused while the lock is held.
  await retried
  t.notOk(loaded, 'the claim waits while the lock is held')
  other.exec('COMMIT')
  t.same((await load)?.state, { k: { _exists: true } })
})
