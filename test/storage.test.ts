import t, { type Test } from 'tap'
import Database from 'better-sqlite3'
import { existsSync } from 'node:fs'
import { readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import pg from 'pg'
import { COUNTER_RESERVE, FileStorage, MemoryStorage, MemoryStore, PostgresStorage, SqliteStorage, roomFileName } from '../lib/index.js'
import { build, connect, stateOf, write } from './helper.js'
import { ODD_ROOM_IDS, storageContract as contractCases } from '../lib/testing.js'
import type { IncrementalStorage, Storage } from '../lib/index.js'
import { MAX_KEY_LENGTH } from '../lib/protocol/frames.js'
import { MAX_ID_LENGTH } from '../lib/routes/schemas.js'
import { requirePeer } from '../lib/peer.js'

/** `length` UTF-16 units of CJK characters in no order (3 bytes each as UTF-8, nothing for a compressor to find). */
function wideText (length: number, seed: number): string {
  let x = seed
  let text = ''
  for (let i = 0; i < length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0
    text += String.fromCharCode(0x4e00 + (x >>> 8) % 20000)
  }
  return text
}

/** Runs the exported contract as one tap subtest per case. */
function storageContract (t: Test, name: string, make: (roomId: string) => Storage | Promise<Storage>): void {
  t.test(`${name}: storage contract`, async (t) => {
    for (const c of contractCases(make)) await t.test(c.name, c.run)
  })
}

const memory = new Map<string, MemoryStorage>()
storageContract(t, 'MemoryStorage', (roomId) => {
  let store = memory.get(roomId)
  if (store === undefined) memory.set(roomId, store = new MemoryStorage())
  return store
})

storageContract(t, 'MemoryStore', (() => {
  const store = new MemoryStore()
  return (roomId: string) => store.forRoom(roomId)
})())

t.test('MemoryStore remembers only rooms that saved something; the plugin\'s default keeps a saved room across unloads', async (t) => {
  const store = new MemoryStore()
  const app = await build(t, { storage: store, saveThrottleMs: 0 })
  for (let i = 0; i < 20; i++) {
    const peer = await connect(app, { roomId: `visit-${i}`, clientId: 'v' })
    await peer.join()
    await peer.close()
    await app.canvasStore.closeRoom(`visit-${i}`)
  }
  t.equal(store.size, 0, 'rooms that were only visited leave nothing behind')

  const writer = await connect(app, { roomId: 'kept', clientId: 'w' })
  await writer.join()
  await write(writer, 'm1', [{ 'e1/Shape': { _exists: true, x: 1 } }])
  await writer.close()
  await app.canvasStore.closeRoom('kept')
  t.equal(store.size, 1)
  const back = await connect(app, { roomId: 'kept', clientId: 'w' })
  await back.join()
  t.same(stateOf(app, 'kept'), { 'e1/Shape': { _exists: true, x: 1 } }, 'loaded back after the unload')
  await back.close()

  // Handles of one room made before its first save share what either saves.
  const h1 = store.forRoom('x')
  const h2 = store.forRoom('x')
  await h1.save({ timestamp: 1, state: { k: { _exists: true } }, timestamps: { k: { _exists: 1 } } })
  t.same((await h2.load())?.timestamp, 1, 'a second handle sees the first one\'s save')
  await h2.save({ timestamp: 2, state: {}, timestamps: {} })
  t.same((await h1.load())?.timestamp, 2, 'and the other way round')
  t.same((await store.forRoom('x').load())?.timestamp, 2)

  // The same with the plugin's own default storage.
  const plain = await build(t, { saveThrottleMs: 0 })
  const a = await connect(plain, { roomId: 'd', clientId: 'a' })
  await a.join()
  await write(a, 'm1', [{ 'e1/Shape': { _exists: true, x: 2 } }])
  await a.close()
  await plain.canvasStore.closeRoom('d')
  const b = await connect(plain, { roomId: 'd', clientId: 'b' })
  await b.join()
  t.same(stateOf(plain, 'd'), { 'e1/Shape': { _exists: true, x: 2 } })
  await b.close()
})

const dir = t.testdir({})
storageContract(t, 'FileStorage', (roomId) => new FileStorage({ dir, roomId }))

t.test('FileStorage keeps every room file inside its folder', async (t) => {
  const base = t.testdir({})
  for (const roomId of ODD_ROOM_IDS) {
    const store = new FileStorage({ dir: base, roomId })
    t.equal(resolve(store.file, '..'), resolve(base), `${JSON.stringify(roomId.slice(0, 20))} stays in the folder`)
    t.ok(roomFileName(roomId).length <= 255, 'fits a file name')
  }
  t.equal(roomFileName('../../x'), '%2E%2E%2F%2E%2E%2Fx.json')
  t.not(roomFileName('a/b'), roomFileName('a%2Fb'), 'encoding is injective')
})

t.test('FileStorage reads a folder written by the reference server\'s FileStorage, and never another room\'s file', async (t) => {
  const { FileStorage: ReferenceFileStorage } = await import('@woven-ecs/canvas-store-server')
  const base = t.testdir({})
  const ids = ['room-1', 'board.v2', 'team:alpha', 'doc 7', 'a@b.c', 'émoji 🎨']
  for (const [i, roomId] of ids.entries()) {
    await new ReferenceFileStorage({ dir: base, roomId }).save({ timestamp: i + 1, state: { 'e/Pos': { _exists: true, x: i } }, timestamps: { 'e/Pos': { _exists: 1, x: i + 1 } } })
  }
  for (const [i, roomId] of ids.entries()) {
    const store = new FileStorage({ dir: base, roomId })
    t.same(await store.load(), { timestamp: i + 1, state: { 'e/Pos': { _exists: true, x: i } }, timestamps: { 'e/Pos': { _exists: 1, x: i + 1 } } }, roomId)
    // The next save writes this storage's own file, which is read from then on; the reference's is left alone.
    await store.save({ timestamp: 50, state: {}, timestamps: {} })
    t.equal((await new FileStorage({ dir: base, roomId }).load())?.timestamp, 50)
  }
  t.ok(existsSync(join(base, 'board.v2.json')), 'the reference\'s file is left in place')
  // A room whose id, as a file name, is another room's own file (a.b is written to a%2Eb.json): never read for it.
  await new FileStorage({ dir: base, roomId: 'a.b' }).save({ timestamp: 7, state: { 'secret/S': { _exists: true } }, timestamps: { 'secret/S': { _exists: 7 } } })
  t.equal(await new FileStorage({ dir: base, roomId: 'a%2Eb' }).load(), null)
  const hashed = 'x~' + 'a'.repeat(40)
  await writeFile(join(base, `${hashed}.json`), '{"timestamp":3,"state":{},"timestamps":{}}')
  t.equal(await new FileStorage({ dir: base, roomId: hashed }).load(), null, 'nor a name a long id is cut to')
  for (const roomId of ['x~1', '50%', '%zz']) {
    await new ReferenceFileStorage({ dir: base, roomId }).save({ timestamp: 4, state: {}, timestamps: {} })
    t.equal((await new FileStorage({ dir: base, roomId }).load())?.timestamp, 4, `${roomId}: no room's own name, so read`)
  }
  // Nor a path out of the folder, or a name too long to be a file.
  await writeFile(join(base, 'outside.json'), '{"timestamp":9,"state":{},"timestamps":{}}')
  t.equal(await new FileStorage({ dir: join(base, 'rooms'), roomId: '../outside' }).load(), null)
  t.equal(await new FileStorage({ dir: base, roomId: 'é'.repeat(200) }).load(), null, 'too long: no ENAMETOOLONG, just no file')
  // A damaged reference file refuses the load, as a damaged own file does.
  await writeFile(join(base, 'torn.v1.json'), '{"timestamp":')
  await t.rejects(new FileStorage({ dir: base, roomId: 'torn.v1' }).load())
})

t.test('FileStorage leaves no temp files and makes the folder', async (t) => {
  const base = join(t.testdir({}), 'nested', 'dir')
  const store = new FileStorage({ dir: base, roomId: 'r' })
  await Promise.all([1, 2, 3].map((n) => store.save({ timestamp: n, state: {}, timestamps: {} })))
  t.same(await readdir(base), ['r.json'])
})

t.test('FileStorage: the first load in a folder removes temp files a crash left there long ago, not a save in progress', async (t) => {
  const base = t.testdir({
    'r.json': JSON.stringify({ timestamp: 2, state: {}, timestamps: {} }),
    'r.json.0b6e1a2c-1f1d-4a43-9a43-5d0e6a2b9f10.tmp': '{"timestamp": 3, "sta',
    'other.json.5d0e6a2b-9f10-4a43-9a43-0b6e1a2c1f1d.tmp': '{',
    'r.json.2c1f1d0b-6e1a-4a43-9a43-9f105d0e6a2b.tmp': '{"timestamp": 4',
    'notes.tmp': 'not a save'
  })
  const old = new Date(Date.now() - 3_600_000)
  await utimes(join(base, 'r.json.0b6e1a2c-1f1d-4a43-9a43-5d0e6a2b9f10.tmp'), old, old)
  await utimes(join(base, 'other.json.5d0e6a2b-9f10-4a43-9a43-0b6e1a2c1f1d.tmp'), old, old)
  t.equal((await new FileStorage({ dir: base, roomId: 'r' }).load())?.timestamp, 2)
  t.same((await readdir(base)).sort(), ['notes.tmp', 'r.json', 'r.json.2c1f1d0b-6e1a-4a43-9a43-9f105d0e6a2b.tmp'], 'recent temp files and other files stay')
})

t.test('FileStorage refuses to load a corrupt file instead of starting empty', async (t) => {
  const base = t.testdir({})
  await writeFile(join(base, 'bad.json'), '{"timestamp": 3, "sta')
  await t.rejects(new FileStorage({ dir: base, roomId: 'bad' }).load())
})

t.test('a stored snapshot without a state object of objects is refused (1011), not loaded as a room whose save would replace it', async (t) => {
  const base = t.testdir({})
  const file = join(base, roomFileName('r'))
  for (const text of ['{"timestamp":100,"stbte":{"e/A":{"_exists":true}},"timestamps":{}}', '[]', '5', 'null', '{"timestamp":1,"state":[]}', '{"timestamp":2,"state":{"e/A":{"_exists":true},"e/B":"damaged"},"timestamps":{}}']) {
    await writeFile(file, text)
    const app = await build(t, { createStorage: (roomId) => new FileStorage({ dir: base, roomId }), saveThrottleMs: 0 })
    const peer = await connect(app, { roomId: 'r', clientId: 'a' })
    t.same(await peer.closed, { code: 1011, reason: 'Could not load the room' }, text)
    t.strictSame(app.canvasStore.getRoomIds(), [])
    await app.close()
    t.equal(await readFile(file, 'utf8'), text, 'the file is left as it was')
  }
})

t.test('FileStorage validates its options', async (t) => {
  t.throws(() => new FileStorage({ dir: '', roomId: 'r' }))
  t.throws(() => new FileStorage({ dir: '/tmp', roomId: 5 as any }))
})

t.test('MemoryStorage hands out copies', async (t) => {
  const store = new MemoryStorage()
  const snap = { timestamp: 1, state: { k: { _exists: true, x: 1 } }, timestamps: { k: { _exists: 1, x: 1 } } }
  await store.save(snap)
  snap.state.k.x = 99
  snap.timestamps.k.x = 99
  const loaded = (await store.load())!
  t.same(loaded.state.k, { _exists: true, x: 1 })
  t.same(loaded.timestamps.k, { _exists: 1, x: 1 })
  t.equal(loaded.timestamp, 1)
})

t.test('MemoryStorage copies records it is given as JSON would, and does not read inherited timestamps', async (t) => {
  const store = new MemoryStorage()
  await store.save({ timestamp: 2, state: { toString: { _exists: true, f: () => 1, n: 1 } as any }, timestamps: {} })
  const loaded = (await store.load())!
  t.same(loaded.state.toString, { _exists: true, n: 1 })
  t.same(loaded.timestamps.toString, {})
})

const sqlite = new SqliteStorage({ file: ':memory:' })
t.teardown(() => sqlite.close())
storageContract(t, 'SqliteStorage', (roomId) => sqlite.forRoom(roomId))

/** The counter a storage with append keeps: the highest one given, except that a final append stores its own (RoomChanges.final). */
async function finalCounter (t: Test, storage: IncrementalStorage): Promise<void> {
  await storage.load()
  const entry = { key: 'k', value: { _exists: true, x: 1 }, stamps: { _exists: 1, x: 1 } }
  await storage.append({ timestamp: 1 + COUNTER_RESERVE, entries: [entry] })
  await storage.append({ timestamp: 1, entries: [] })
  t.equal((await storage.load())!.timestamp, 1 + COUNTER_RESERVE, 'a lower counter does not replace a reservation')
  await Promise.all([
    storage.append({ timestamp: 2 + COUNTER_RESERVE, entries: [] }),
    storage.append({ timestamp: 2, entries: [{ ...entry, value: { _exists: true, x: 2 }, stamps: { _exists: 1, x: 2 } }], final: true })
  ])
  t.same(await storage.load(), { timestamp: 2, state: { k: { _exists: true, x: 2 } }, timestamps: { k: { _exists: 1, x: 2 } } }, 'a final append stores its counter, below the reservation, in the same turn as another append')
  // The room loaded again (from counter 2) reserved past 3; a final append of the earlier room arriving late does not undo that.
  await storage.append({ timestamp: 3 + COUNTER_RESERVE, entries: [] })
  await storage.append({ timestamp: 2, entries: [], final: true })
  t.equal((await storage.load())!.timestamp, 3 + COUNTER_RESERVE, 'a final append never lowers the counter below a later reservation')
}

t.test('SqliteStorage: appends of one turn commit together and load back', async (t) => {
  const store = new SqliteStorage({ file: join(t.testdir({}), 'sub', 'db.sqlite') })
  t.teardown(() => store.close())
  const a = store.forRoom('a')
  const b = store.forRoom('b')
  await Promise.all([
    a.append({ timestamp: 1, entries: [{ key: 'k', value: { _exists: true, x: 1 }, stamps: { _exists: 1, x: 1 } }] }),
    b.append({ timestamp: 4, entries: [{ key: 'k', value: { _exists: false }, stamps: { _exists: 4 } }] }),
    a.append({ timestamp: 2, entries: [{ key: 'k', value: { _exists: true, x: 2 }, stamps: { _exists: 1, x: 2 } }] })
  ])
  t.same(await a.load(), { timestamp: 2, state: { k: { _exists: true, x: 2 } }, timestamps: { k: { _exists: 1, x: 2 } } })
  t.same(await b.load(), { timestamp: 4, state: { k: { _exists: false } }, timestamps: { k: { _exists: 4 } } })
  await a.save({ timestamp: 9, state: { z: { _exists: true } }, timestamps: { z: { _exists: 9 } } })
  t.same(await a.load(), { timestamp: 9, state: { z: { _exists: true } }, timestamps: { z: { _exists: 9 } } }, 'save replaces the whole room')
})

t.test('SqliteStorage: a final append stores its counter below a reservation', async (t) => {
  const store = new SqliteStorage({ file: join(t.testdir({}), 'db.sqlite') })
  t.teardown(() => store.close())
  await finalCounter(t, store.forRoom('final'))
})

t.test('SqliteStorage: cost of an append follows the patch, not the document', async (t) => {
  const store = new SqliteStorage({ file: ':memory:' })
  t.teardown(() => store.close())
  const room = store.forRoom('big')
  const entries = Array.from({ length: 2000 }, (_, i) => ({ key: `e${i}/Pos`, value: { _exists: true, x: i, y: i }, stamps: { _exists: 1, x: 1, y: 1 } }))
  await room.append({ timestamp: 1, entries })
  const before = store.bytesWritten
  await room.append({ timestamp: 2, entries: [{ key: 'e7/Pos', value: { _exists: true, x: 0, y: 7 }, stamps: { _exists: 1, x: 2, y: 1 } }] })
  t.ok(store.bytesWritten - before < 100, `one key written: ${store.bytesWritten - before} bytes`)
  t.equal(Object.keys((await room.load())!.state).length, 2000)
})

t.test('SqliteStorage: a database of the earlier layout (entries WITHOUT ROWID) is moved to the current one, rows kept', async (t) => {
  const file = join(t.testdir({}), 'old.sqlite')
  const old = new Database(file)
  old.exec(`
    CREATE TABLE canvas_store_rooms (room_id TEXT PRIMARY KEY, timestamp INTEGER NOT NULL);
    CREATE TABLE canvas_store_entries (room_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, stamps TEXT NOT NULL,
      PRIMARY KEY (room_id, key)) WITHOUT ROWID;
    INSERT INTO canvas_store_rooms VALUES ('r', 3);
    INSERT INTO canvas_store_entries VALUES ('r', 'k', '{"_exists":true,"x":1}', '{"_exists":1,"x":3}'), ('r', 'gone', '{"_exists":false}', '{"_exists":2}');
  `)
  old.close()
  const layout = (): string => {
    const db = new Database(file, { readonly: true })
    try {
      return (db.prepare("SELECT sql FROM sqlite_master WHERE name = 'canvas_store_entries' COLLATE NOCASE").get() as { sql: string }).sql
    } finally {
      db.close()
    }
  }
  t.match(layout(), /WITHOUT ROWID/)
  for (let open = 1; open <= 2; open++) {
    const store = new SqliteStorage({ file, tablePrefix: open === 1 ? 'Canvas_Store' : 'canvas_store' })
    const room = store.forRoom('r')
    t.same(await room.load(), { timestamp: open === 1 ? 3 : 4, state: { k: { _exists: true, x: open }, gone: { _exists: false } }, timestamps: { k: { _exists: 1, x: open === 1 ? 3 : 4 }, gone: { _exists: 2 } } }, `open ${open}: rows kept`)
    if (open === 1) await room.append({ timestamp: 4, entries: [{ key: 'k', value: { _exists: true, x: 2 }, stamps: { _exists: 1, x: 4 } }] })
    await store.close()
    t.notMatch(layout(), /WITHOUT ROWID/, `open ${open}: the current layout`)
  }
  const db = new Database(file, { readonly: true })
  t.teardown(() => db.close())
  t.equal((db.prepare('SELECT count(*) AS n FROM canvas_store_entries').get() as { n: number }).n, 2, 'an update replaced its row: (room_id, key) is still unique')
})

t.test('SqliteStorage: opening a database in the current layout takes no write lock, and finds its tables whatever the case of tablePrefix', async (t) => {
  const file = join(t.testdir({}), 'shared.sqlite')
  const first = new SqliteStorage({ file })
  await first.forRoom('r').append({ timestamp: 1, entries: [{ key: 'k', value: { _exists: true }, stamps: { _exists: 1 } }] })
  // Another process is in the middle of a write: opening must not wait for it (nor fail after the busy timeout).
  const writer = new Database(file)
  t.teardown(() => writer.close())
  writer.exec('BEGIN IMMEDIATE')
  const second = new SqliteStorage({ file, tablePrefix: 'CANVAS_STORE' })
  writer.exec('ROLLBACK')
  t.same(await second.forRoom('r').load(), { timestamp: 1, state: { k: { _exists: true } }, timestamps: { k: { _exists: 1 } } }, 'SQLite table names ignore case')
  await Promise.all([first.close(), second.close()])
})

t.test('SqliteStorage: while another process holds the write lock, a write waits for it between event-loop turns (never inside a write), and fails with SQLITE_BUSY if it is held for over about a second', async (t) => {
  const file = join(t.testdir({}), 'locked.sqlite')
  const storage = new SqliteStorage({ file })
  t.teardown(() => storage.close())
  const room = storage.forRoom('r')
  const entry = (v: number) => ({ timestamp: v, entries: [{ key: 'k', value: { _exists: true, v }, stamps: { _exists: 1, v } }] })
  await room.append(entry(1))
  const other = new Database(file)
  t.teardown(() => other.close())
  // better-sqlite3's default busy timeout held the event loop (every room) 5,000 ms inside such a write.
  let ticks = 0
  const ticker = setInterval(() => { ticks++ }, 5)
  t.teardown(() => clearInterval(ticker))
  other.exec('BEGIN IMMEDIATE')
  const waiting = room.append(entry(2))
  let settled = false
  waiting.then(() => { settled = true }, () => { settled = true })
  // Ten ticks of the interval pass while the write waits.
  await new Promise<void>((resolve) => {
    const check = setInterval(() => { if (ticks >= 10) { clearInterval(check); resolve() } }, 5)
  })
  t.notOk(settled, 'the write waits while the lock is held, and the event loop runs meanwhile')
  other.exec('COMMIT')
  await waiting
  t.same((await room.load())?.state, { k: { _exists: true, v: 2 } }, 'and goes through once it is released')
  other.exec('BEGIN IMMEDIATE')
  await t.rejects(room.append(entry(3)), { code: 'SQLITE_BUSY' }, 'a lock held on fails the write: the room retries it later')
  other.exec('ROLLBACK')
  await room.append(entry(4))
  t.same((await room.load())?.state, { k: { _exists: true, v: 4 } })
})

for (const removed of ['database file', 'WAL file', 'folder']) {
  t.test(`SqliteStorage: once its ${removed} is removed, writes fail (SQLite would commit them to the removed file), and so does ping`, async (t) => {
    const dir = join(t.testdir({}), 'data')
    const file = join(dir, 'gone.sqlite')
    const storage = new SqliteStorage({ file })
    t.teardown(() => storage.close())
    const room = storage.forRoom('r')
    const entry = (v: number) => ({ timestamp: v, entries: [{ key: 'k', value: { _exists: true, v }, stamps: { _exists: 1, v } }] })
    await room.append(entry(1))
    await storage.ping()
    await rm(removed === 'database file' ? file : removed === 'WAL file' ? `${file}-wal` : dir, { recursive: true })
    await t.rejects(room.append(entry(2)), /removed or replaced/)
    await t.rejects(room.save({ timestamp: 3, state: {}, timestamps: {} }), /removed or replaced/)
    await t.rejects(storage.ping(), /removed or replaced/)
  })
}

t.test('SqliteStorage: a database passed in by a relative name that the working directory no longer finds is written to as usual (not watched)', async (t) => {
  const cwd = process.cwd()
  process.chdir(t.testdir({}))
  const database = new Database('relative.sqlite', { timeout: 0 })
  process.chdir(cwd)
  t.teardown(() => database.close())
  const storage = new SqliteStorage({ database })
  await storage.forRoom('r').append({ timestamp: 1, entries: [{ key: 'k', value: { _exists: true }, stamps: { _exists: 1 } }] })
  await storage.ping()
  t.same((await storage.forRoom('r').load())?.timestamp, 1)
  await storage.close()
})

t.test('storages refuse a room id they would keep as another room\'s (a lone surrogate), before reading or writing', async (t) => {
  // Without the check, FileStorage gave '\uD800' and '\uDBFF' one file (both U+FFFD as UTF-8), PostgreSQL failed
  // every write of such a room, SQLite stored invalid UTF-8.
  const sqlite = new SqliteStorage({ file: ':memory:' })
  t.teardown(() => sqlite.close())
  await sqlite.forRoom('\uFFFD').save({ timestamp: 1, state: { 'e/C': { a: 1 } }, timestamps: { 'e/C': { a: 1 } } })
  t.throws(() => sqlite.forRoom('\uD800'), { name: 'TypeError', message: /lone surrogate/ })
  t.throws(() => sqlite.load('x\uDC00'), TypeError)
  await t.rejects(sqlite.append('\uDBFF', { timestamp: 2, entries: [] }), TypeError)
  t.throws(() => new FileStorage({ dir: '/tmp', roomId: '\uD83D' }), TypeError)
  const postgres = new PostgresStorage({ connectionString: 'postgres://127.0.0.1:1/none' })
  t.teardown(() => postgres.close())
  t.throws(() => postgres.forRoom('a\u0000b'), { name: 'TypeError', message: /U\+0000/ })
  t.throws(() => postgres.forRoom('\uDFFF'), TypeError)
  t.same(sqlite.load('\uFFFD')?.timestamp, 1, 'the room of U+FFFD itself is untouched')
  t.equal(sqlite.load('ok-🎨'), null, 'well-formed ids, astral characters included, are taken')
})

t.test('SqliteStorage: closed storage refuses work; a user database stays open', async (t) => {
  const store = new SqliteStorage({ file: ':memory:' })
  await store.close()
  await store.close()
  await t.rejects(store.forRoom('x').append({ timestamp: 1, entries: [] }))
  await t.rejects(store.forRoom('x').load())
  t.throws(() => new SqliteStorage({ file: ':memory:', tablePrefix: 'x; drop table' }))

  const database = new Database(':memory:')
  t.teardown(() => database.close())
  const shared = new SqliteStorage({ database, tablePrefix: 'mine' })
  await shared.forRoom('r').append({ timestamp: 1, entries: [] })
  await shared.close()
  t.equal(database.open, true, 'a database passed in is left open')
  t.same(database.prepare('SELECT room_id, timestamp FROM mine_rooms').all(), [{ room_id: 'r', timestamp: 1 }])
})

const pgUrl = process.env.CANVAS_STORE_TEST_PG
if (pgUrl === undefined || pgUrl === '') {
  t.test('PostgreSQL', { skip: 'PostgresStorage tests skipped: set CANVAS_STORE_TEST_PG (e.g. postgres://postgres@127.0.0.1:5432/test)' }, async () => {})
} else {
  const prefix = `cs_test_${process.pid}_${Date.now()}`
  const pool = new pg.Pool({ connectionString: pgUrl })
  const postgres = new PostgresStorage({ pool, tablePrefix: prefix })
  t.teardown(async () => {
    await postgres.close()
    await pool.query(`DROP TABLE IF EXISTS ${prefix}_rooms, ${prefix}_entries`)
    await pool.end()
  })
  storageContract(t, 'PostgresStorage', (roomId) => postgres.forRoom(roomId))

  t.test('PostgresStorage: a final append stores its counter below a reservation', async (t) => {
    await finalCounter(t, postgres.forRoom('pg-final'))
  })

  t.test('PostgresStorage: appends from many rooms in one turn, newest value wins', async (t) => {
    const a = postgres.forRoom('pg-a')
    const b = postgres.forRoom('pg-b')
    await Promise.all([
      a.append({ timestamp: 1, entries: [{ key: 'k', value: { _exists: true, x: 1 }, stamps: { _exists: 1, x: 1 } }] }),
      b.append({ timestamp: 3, entries: [{ key: 'k', value: { _exists: false }, stamps: { _exists: 3 } }] }),
      a.append({ timestamp: 2, entries: [{ key: 'k', value: { _exists: true, x: 2, s: 'nul\u0000"\\' }, stamps: { _exists: 1, x: 2, s: 2 } }] })
    ])
    t.same(await a.load(), { timestamp: 2, state: { k: { _exists: true, x: 2, s: 'nul\u0000"\\' } }, timestamps: { k: { _exists: 1, x: 2, s: 2 } } })
    t.same(await b.load(), { timestamp: 3, state: { k: { _exists: false } }, timestamps: { k: { _exists: 3 } } })
    await a.append({ timestamp: 1, entries: [] })
    t.equal((await a.load())!.timestamp, 2, 'the stored counter never goes back')
  })

  t.test('PostgresStorage: a room whose rows PostgreSQL refuses fails alone; the other rooms of the same turn commit', async (t) => {
    const good = postgres.forRoom('pg-good')
    const bad = postgres.forRoom('pg-bad')
    // PostgreSQL refuses U+0000 in text. The frame check keeps such keys out of rooms; a storage caller may not.
    const results = await Promise.allSettled([
      good.append({ timestamp: 1, entries: [{ key: 'k', value: { _exists: true, x: 1 }, stamps: { _exists: 1, x: 1 } }] }),
      bad.append({ timestamp: 1, entries: [{ key: 'nul\u0000key', value: { _exists: true }, stamps: { _exists: 1 } }] }),
      good.append({ timestamp: 2, entries: [{ key: 'k', value: { _exists: true, x: 2 }, stamps: { _exists: 1, x: 2 } }] })
    ])
    t.strictSame(results.map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled'])
    t.same(await good.load(), { timestamp: 2, state: { k: { _exists: true, x: 2 } }, timestamps: { k: { _exists: 1, x: 2 } } })
    t.equal(await bad.load(), null, 'nothing of the failing room was written')
  })

  t.test('PostgresStorage: the longest room id and key the server lets through, in the widest UTF-8, are stored', async (t) => {
    // PostgreSQL refuses an index entry over 2,704 bytes: a longer key would fail every later write of its room.
    const roomId = wideText(MAX_ID_LENGTH, 1)
    const key = wideText(MAX_KEY_LENGTH, 2)
    const room = postgres.forRoom(roomId)
    await room.append({ timestamp: 1, entries: [{ key, value: { _exists: true }, stamps: { _exists: 1 } }] })
    t.same(await room.load(), { timestamp: 1, state: { [key]: { _exists: true } }, timestamps: { [key]: { _exists: 1 } } })
  })

  t.test('PostgresStorage: a connection lost in the middle of a write fails that write, not the process; the next write goes through', async (t) => {
    const room = postgres.forRoom('pg-lost')
    await room.append({ timestamp: 1, entries: [{ key: 'k', value: { _exists: true, x: 1 }, stamps: { _exists: 1, x: 1 } }] })
    // Another session locks the table, so that the storage's INSERT waits inside its transaction; its backend is then killed.
    const locker = new pg.Client({ connectionString: pgUrl })
    await locker.connect()
    t.teardown(() => locker.end())
    await locker.query('BEGIN')
    await locker.query(`LOCK TABLE ${prefix}_entries IN ACCESS EXCLUSIVE MODE`)
    const write = room.append({ timestamp: 2, entries: [{ key: 'k', value: { _exists: true, x: 2 }, stamps: { _exists: 1, x: 2 } }] })
    let pid: number | undefined
    for (let attempt = 0; attempt < 1000 && pid === undefined; attempt++) {
      const waiting = await pool.query<{ pid: number }>(`SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO ${prefix}_entries%'`)
      pid = waiting.rows[0]?.pid
    }
    t.ok(pid !== undefined, 'the write waits for the lock')
    await pool.query('SELECT pg_terminate_backend($1)', [pid])
    await t.rejects(write, 'the write in flight fails')
    await locker.query('ROLLBACK')
    await room.append({ timestamp: 3, entries: [{ key: 'k', value: { _exists: true, x: 3 }, stamps: { _exists: 1, x: 3 } }] })
    t.same(await room.load(), { timestamp: 3, state: { k: { _exists: true, x: 3 } }, timestamps: { k: { _exists: 1, x: 3 } } })
  })

  t.test('PostgresStorage: values full of quotes, backslashes and escapes round-trip', async (t) => {
    const room = postgres.forRoom('pg-escapes')
    const value = { _exists: true, q: '"\\'.repeat(1000), u: '\\u0000 \\" {"a":[1]} \u2028 \ud83d\ude00 \ud800', '"\\k': 'NULL' }
    await room.append({ timestamp: 1, entries: [{ key: 'e"\\/K{}', value, stamps: { _exists: 1, q: 1, u: 1, '"\\k': 1 } }] })
    t.same((await room.load())!.state, { 'e"\\/K{}': value })
  })

  t.test('PostgresStorage: a database not in UTF8 is refused with the reason, before anything is written', async (t) => {
    const name = `cs_latin1_${process.pid}`
    await pool.query(`CREATE DATABASE ${name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`)
    t.teardown(() => pool.query(`DROP DATABASE IF EXISTS ${name}`))
    const url = new URL(pgUrl)
    url.pathname = `/${name}`
    const latin1 = new PostgresStorage({ connectionString: url.href })
    await t.rejects(latin1.forRoom('r').load(), { message: /needs a UTF8 database; this one's encoding is LATIN1/ })
    await t.rejects(latin1.forRoom('r').append({ timestamp: 1, entries: [{ key: '\u4e2d', value: { _exists: true }, stamps: { _exists: 1 } }] }), { message: /UTF8/ })
    await latin1.close()
  })

  t.test('PostgresStorage: owns and ends a pool made from a connection string', async (t) => {
    const own = new PostgresStorage({ connectionString: pgUrl, tablePrefix: prefix })
    t.equal(await own.forRoom('nobody').load(), null)
    await own.close()
    await own.close()
    await t.rejects(own.forRoom('x').append({ timestamp: 1, entries: [] }))
    t.throws(() => new PostgresStorage({}))
  })

  t.test('PostgresStorage: processes that create the tables at the same moment on a new database all succeed', async (t) => {
    // Without the migration's lock, all but one of them failed most rounds (a duplicate key in pg_type).
    for (let round = 0; round < 5; round++) {
      const fresh = `${prefix}_new${round}`
      t.teardown(() => pool.query(`DROP TABLE IF EXISTS ${fresh}_rooms, ${fresh}_entries`))
      // Prefixes that differ only in case name the same tables (PostgreSQL folds them): they share the lock.
      const storages = Array.from({ length: 4 }, (_, i) => new PostgresStorage({ connectionString: pgUrl, tablePrefix: i % 2 === 0 ? fresh : fresh.toUpperCase() }))
      const results = await Promise.allSettled(storages.map((storage) => storage.migrate()))
      await Promise.all(storages.map((storage) => storage.close()))
      t.strictSame(results.map((r) => r.status === 'rejected' ? String(r.reason) : r.status), ['fulfilled', 'fulfilled', 'fulfilled', 'fulfilled'], `round ${round}`)
    }
  })
}

t.test('an optional package that is not installed is named with what to install; an installed one loads; other failures pass through', async (t) => {
  t.throws(() => requirePeer('canvas-store-no-such-package', '3', 'SomeStorage'), {
    message: 'SomeStorage needs the optional package canvas-store-no-such-package: npm install canvas-store-no-such-package@3'
  })
  t.equal(requirePeer<typeof Database>('better-sqlite3', '12', 'SqliteStorage'), Database)
  const dir = t.testdir({ broken: { 'package.json': '{"name":"broken","main":"index.js"}', 'index.js': "require('./missing-inside')" } })
  t.throws(() => requirePeer(join(dir, 'broken'), '1', 'SomeStorage'), { code: 'MODULE_NOT_FOUND', message: /missing-inside/ }, 'a module missing inside the package is its own error')
})
