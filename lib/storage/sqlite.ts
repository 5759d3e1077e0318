import { randomUUID } from 'node:crypto'
import { mkdirSync, statSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import type BetterSqlite3 from 'better-sqlite3'
import type { RoomSnapshot } from '../protocol/types.js'
import { requirePeer } from '../peer.js'
import { checkOwner, entryRows, rowsToSnapshot, settle, snapshotRows, type EntryRow } from './rows.js'
import { COUNTER_RESERVE, checkRoomId, type IncrementalStorage, type PendingAppend as Pending, type RoomChanges, type RoomStore } from './storage.js'

/**
 * A better-sqlite3 `Database`, as the storage's options name it: by the
 * members it uses, so that the package's type declarations do not need
 * `@types/better-sqlite3` (an application without it, and without
 * `skipLibCheck`, still compiles). A real `Database` fits.
 */
export interface SqliteDatabase {
  readonly name: string
  readonly memory: boolean
  prepare(source: string): unknown
  exec(source: string): unknown
  pragma(source: string, options?: { simple?: boolean }): unknown
  transaction(fn: (...args: any[]) => unknown): unknown
}

/** Options of {@link SqliteStorage}. */
export interface SqliteStorageOptions {
  /**
   * Database file, created with its folder if missing; `':memory:'` for a
   * throw-away database.
   * @default './data/canvas-store.db'
   */
  file?: string
  /**
   * An open better-sqlite3 database you own (then `file` is ignored and
   * `close()` leaves it open). Open it with `timeout: 0`: better-sqlite3's
   * default busy timeout (5 s) blocks the event loop, every room with it,
   * while another process holds the write lock.
   */
  database?: SqliteDatabase
  /**
   * SQLite `synchronous` setting. `FULL` survives power loss; `NORMAL`
   * (with WAL) survives a process crash and is faster.
   * @default 'FULL'
   */
  synchronous?: 'FULL' | 'NORMAL'
  /**
   * Prefix of the two tables.
   * @default 'canvas_store'
   */
  tablePrefix?: string
}

/**
 * One SQLite database (better-sqlite3, WAL mode) for every room: one row per
 * document key with its value and field timestamps as JSON, plus the counter
 * of each room. Changes appended during one event-loop turn, from every room,
 * are written in one transaction (group commit), so a durable ack costs one
 * commit shared by everything that arrived with it.
 *
 * Use it as the plugin's `storage` option, or call `forRoom(roomId)`.
 */
export class SqliteStorage implements RoomStore {
  readonly #db: BetterSqlite3.Database
  readonly #owned: boolean
  readonly #stmt: {
    getRoom: BetterSqlite3.Statement<[string], { timestamp: number }>
    getEntries: BetterSqlite3.Statement<[string], { key: string, value: string, stamps: string }>
    upsertEntry: BetterSqlite3.Statement<[string, string, string, string]>
    upsertRoom: BetterSqlite3.Statement<[string, number, string]>
    setCounter: BetterSqlite3.Statement<[number, string, number]>
    claimRoom: BetterSqlite3.Statement<[string, string]>
    getOwner: BetterSqlite3.Statement<[string], { owner: string | null }>
    replaceRoom: BetterSqlite3.Statement<[string, number, string]>
    deleteEntries: BetterSqlite3.Statement<[string]>
  }

  /**
   * This storage's mark in the rooms it loads and writes (see forRoom): a
   * room loaded by another storage since (another process, on the same
   * database) is not written by this one.
   */
  readonly #owner = randomUUID()
  /** @returns the rooms of the batch not written: another storage has loaded them since. */
  readonly #writeBatch: (batch: Pending[]) => Set<string>
  readonly #claim: (roomId: string) => RoomSnapshot | null
  readonly #replace: (roomId: string, snapshot: RoomSnapshot) => void
  #queue: Pending[] = []
  #scheduled: NodeJS.Immediate | null = null
  /** The next try of a group commit that found another process holding the write lock, and how many in a row. */
  #busyRetry: NodeJS.Timeout | null = null
  #busyTries = 0
  /** The database file and its WAL as opened (device and inode), to find out when they are removed or replaced; null for a database in memory. */
  readonly #files: { path: string, db: string, wal: string | null } | null
  #closed = false
  /** Bytes of JSON written by appends and saves (for benchmarks). */
  bytesWritten = 0

  constructor (options: SqliteStorageOptions = {}) {
    const prefix = options.tablePrefix ?? 'canvas_store'
    if (!/^[A-Za-z_][A-Za-z0-9_]{0,40}$/.test(prefix)) throw new TypeError('SqliteStorage: tablePrefix must be a plain SQL identifier')
    if (options.database !== undefined) {
      this.#db = options.database as BetterSqlite3.Database
      this.#owned = false
    } else {
      // Loaded first: without the package, nothing is created on disk.
      const Database = requirePeer<typeof BetterSqlite3>('better-sqlite3', '12', 'SqliteStorage')
      const file = options.file ?? './data/canvas-store.db'
      if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true })
      this.#db = new Database(file)
      this.#owned = true
    }
    const db = this.#db
    db.pragma('journal_mode = WAL')
    db.pragma(`synchronous = ${options.synchronous === 'NORMAL' ? 'NORMAL' : 'FULL'}`)
    const rooms = `${prefix}_rooms`
    const entries = `${prefix}_entries`
    // The entries are a rowid table with an index on (room_id, key), not a WITHOUT ROWID table keyed by them:
    // there a row is a B-tree key, and SQLite reads a row's whole record to compare keys with it, so once a
    // large value sat on a search path (a 48 MB key in one room), every write passing by it read it whole.
    const createEntries = (name: string): string => `
      CREATE TABLE IF NOT EXISTS ${name} (
        room_id TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        stamps TEXT NOT NULL,
        UNIQUE (room_id, key)
      )`
    // SQLite's table names ignore case, as the lookup must.
    const layout = db.prepare('SELECT sql FROM sqlite_master WHERE type = \'table\' AND name = ? COLLATE NOCASE')
    const hasOwner = (): boolean => (db.prepare(`PRAGMA table_info(${rooms})`).all() as Array<{ name: string }>).some((column) => column.name === 'owner')
    const current = (): boolean => {
      if (layout.get(rooms) === undefined || !hasOwner()) return false
      const found = layout.get(entries) as { sql: string } | undefined
      return found !== undefined && !/WITHOUT\s+ROWID/i.test(found.sql)
    }
    // Opening a database already in the current layout takes no write lock (another process may be writing).
    if (!current()) {
      db.transaction(() => {
        db.exec(`CREATE TABLE IF NOT EXISTS ${rooms} (
          room_id TEXT PRIMARY KEY,
          timestamp INTEGER NOT NULL,
          owner TEXT
        )`)
        // A database written by an earlier version: rooms without an owner, which any storage may write and claim.
        if (!hasOwner()) db.exec(`ALTER TABLE ${rooms} ADD COLUMN owner TEXT`)
        const existing = layout.get(entries) as { sql: string } | undefined
        if (existing === undefined) {
          db.exec(createEntries(entries))
        } else if (/WITHOUT\s+ROWID/i.test(existing.sql)) {
          // A database written by an earlier version: copy its rows into the current layout.
          db.exec(`${createEntries(`${entries}_new`)};
            INSERT INTO ${entries}_new (room_id, key, value, stamps) SELECT room_id, key, value, stamps FROM ${entries};
            DROP TABLE ${entries};
            ALTER TABLE ${entries}_new RENAME TO ${entries};`)
        }
      }).immediate()
    }
    // Set up (above) waits for a lock as long as better-sqlite3's default allows: it runs once, at start.
    // From here on every write runs on the event loop: one that finds another process holding the write lock
    // fails at once (SQLITE_BUSY) and is retried later, instead of stopping every room while it waits.
    if (this.#owned) db.pragma('busy_timeout = 0')
    // Resolved now: a later change of the working directory must not look like a removed file. A database passed
    // in whose file cannot be found from here (opened by a relative name before a chdir) is not watched.
    const path = db.memory || db.name === '' ? '' : resolve(db.name)
    const found = path === '' ? null : identity(path)
    this.#files = found === null ? null : { path, db: found, wal: identity(`${path}-wal`) }
    this.#stmt = {
      getRoom: db.prepare(`SELECT timestamp FROM ${rooms} WHERE room_id = ?`),
      getEntries: db.prepare(`SELECT key, value, stamps FROM ${entries} WHERE room_id = ?`),
      upsertEntry: db.prepare(`INSERT INTO ${entries} (room_id, key, value, stamps) VALUES (?, ?, ?, ?)
        ON CONFLICT (room_id, key) DO UPDATE SET value = excluded.value, stamps = excluded.stamps`),
      // No change (0) when another storage has claimed the room since: then nothing of the append is written.
      upsertRoom: db.prepare(`INSERT INTO ${rooms} (room_id, timestamp, owner) VALUES (?, ?, ?)
        ON CONFLICT (room_id) DO UPDATE SET timestamp = max(timestamp, excluded.timestamp), owner = excluded.owner
        WHERE owner IS NULL OR owner = excluded.owner`),
      // A throttled room's last write: its counter, below the reservation it stored before (see RoomChanges.final);
      // not below a later one (a room loaded again meanwhile in this process, the late final write of a shutdown).
      setCounter: db.prepare(`UPDATE ${rooms} SET timestamp = ? WHERE room_id = ? AND timestamp <= ?`),
      claimRoom: db.prepare(`UPDATE ${rooms} SET owner = ? WHERE room_id = ?`),
      getOwner: db.prepare(`SELECT owner FROM ${rooms} WHERE room_id = ?`),
      replaceRoom: db.prepare(`INSERT INTO ${rooms} (room_id, timestamp, owner) VALUES (?, ?, ?)
        ON CONFLICT (room_id) DO UPDATE SET timestamp = max(timestamp, excluded.timestamp), owner = excluded.owner`),
      deleteEntries: db.prepare(`DELETE FROM ${entries} WHERE room_id = ?`)
    }
    this.#writeBatch = db.transaction((batch: Pending[]) => {
      const moved = new Set<string>()
      for (const { roomId, changes } of batch) {
        // The counter first: it says whether the room is still this storage's to write.
        if (moved.has(roomId) || this.#stmt.upsertRoom.run(roomId, changes.timestamp, this.#owner).changes === 0) {
          moved.add(roomId)
          continue
        }
        if (changes.final === true) this.#stmt.setCounter.run(changes.timestamp, roomId, changes.timestamp + COUNTER_RESERVE)
        this.#upsertRows(roomId, entryRows(changes.entries))
      }
      return moved
    })
    this.#replace = db.transaction((roomId: string, snapshot: RoomSnapshot) => {
      this.#stmt.deleteEntries.run(roomId)
      this.#upsertRows(roomId, snapshotRows(snapshot))
      this.#stmt.replaceRoom.run(roomId, snapshot.timestamp, this.#owner)
    })
    // Immediate: the write lock is taken first, so no other storage's commit falls between the claim and the read.
    const claim = db.transaction((roomId: string) => {
      this.#stmt.claimRoom.run(this.#owner, roomId)
      return this.#read(roomId)
    })
    this.#claim = (roomId) => claim.immediate(roomId)
  }

  #upsertRows (roomId: string, rows: EntryRow[]): void {
    for (const row of rows) {
      this.bytesWritten += row.value.length + row.stamps.length + row.key.length
      this.#stmt.upsertEntry.run(roomId, row.key, row.value, row.stamps)
    }
  }

  /**
   * The storage of one room, over this database. Its `load` claims the room
   * for this storage: from then on, appends to the room by another storage
   * on the same database (another process) fail with a RoomMovedError
   * instead of overwriting what this one writes, and the room that made
   * them closes its sessions.
   */
  forRoom (roomId: string): IncrementalStorage {
    checkRoomId(roomId, 'SqliteStorage')
    return {
      load: async () => await this.#claimAndLoad(roomId),
      save: async (snapshot) => this.save(roomId, snapshot),
      // The id was checked above: not again at every write.
      append: (changes) => this.#enqueue(roomId, changes),
      checkClaim: async () => {
        this.#assertOpen()
        checkOwner(roomId, this.#stmt.getOwner.get(roomId)?.owner, this.#owner)
      }
    }
  }

  /** Checks that the database answers, and that its files are still the ones opened. */
  async ping (): Promise<void> {
    this.#assertOpen()
    this.#db.prepare('SELECT 1').get()
    this.#checkFiles()
  }

  /** Reads a room (without claiming it, unlike `forRoom(roomId).load()`); null when it was never written. */
  load (roomId: string): RoomSnapshot | null {
    this.#assertOpen()
    checkRoomId(roomId, 'SqliteStorage')
    return this.#read(roomId)
  }

  /**
   * Claims the room and reads it, in one transaction. Another process
   * holding the write lock (SQLITE_BUSY: the storage does not wait inside a
   * write) is waited for in short steps, up to about a second.
   */
  async #claimAndLoad (roomId: string): Promise<RoomSnapshot | null> {
    for (let attempt = 1; ; attempt++) {
      this.#assertOpen()
      try {
        return this.#claim(roomId)
      } catch (err) {
        if (!isBusy(err) || attempt >= CLAIM_ATTEMPTS) throw err
      }
      await new Promise((resolve) => setTimeout(resolve, CLAIM_RETRY_MS))
    }
  }

  #read (roomId: string): RoomSnapshot | null {
    const room = this.#stmt.getRoom.get(roomId)
    const rows = this.#stmt.getEntries.all(roomId)
    if (room === undefined && rows.length === 0) return null
    return rowsToSnapshot(room?.timestamp ?? 0, rows)
  }

  /** Replaces a room's whole document (import). Waits for queued appends first, so order is kept. */
  save (roomId: string, snapshot: RoomSnapshot): void {
    this.#assertOpen()
    checkRoomId(roomId, 'SqliteStorage')
    this.#drain(false)
    this.#replace(roomId, snapshot)
    this.#checkFiles()
  }

  /** Queues a room's changes for the next group commit; resolves once committed. */
  append (roomId: string, changes: RoomChanges): Promise<void> {
    try {
      checkRoomId(roomId, 'SqliteStorage')
    } catch (err) {
      return Promise.reject(err)
    }
    return this.#enqueue(roomId, changes)
  }

  #enqueue (roomId: string, changes: RoomChanges): Promise<void> {
    if (this.#closed) return Promise.reject(new Error('SqliteStorage is closed'))
    return new Promise((resolve, reject) => {
      this.#queue.push({ roomId, changes, resolve, reject })
      // While a commit waits out another process's lock, these join it.
      if (this.#busyRetry === null) this.#scheduled ??= setImmediate(() => this.#drain())
    })
  }

  /** Writes what is queued, then closes the database if this object opened it. Idempotent. */
  async close (): Promise<void> {
    if (this.#closed) return
    this.#drain(false)
    this.#closed = true
    if (this.#owned) this.#db.close()
  }

  /**
   * Commits what is queued. `waitForLock`: when another process holds the
   * write lock (SQLITE_BUSY; the storage does not wait inside a write, on the
   * event loop), try again a few milliseconds later, up to about a second,
   * rather than fail the appends (which rooms would retry after 200 ms, and
   * log as storage failures): another process loading rooms takes the lock
   * for a moment each time (see forRoom).
   */
  #drain (waitForLock = true): void {
    if (this.#scheduled !== null) {
      clearImmediate(this.#scheduled)
      this.#scheduled = null
    }
    if (this.#busyRetry !== null) {
      clearTimeout(this.#busyRetry)
      this.#busyRetry = null
    }
    const batch = this.#queue
    if (batch.length === 0) return
    this.#queue = []
    let moved: Set<string>
    try {
      moved = this.#writeBatch(batch)
      // After the commit: one made to a file removed meanwhile is not acked.
      this.#checkFiles()
    } catch (err) {
      if (waitForLock && isBusy(err) && ++this.#busyTries < BUSY_TRIES) {
        this.#queue = batch.concat(this.#queue)
        this.#busyRetry = setTimeout(() => this.#drain(), BUSY_RETRY_MS)
        return
      }
      this.#busyTries = 0
      settle(batch, err)
      return
    }
    this.#busyTries = 0
    settle(batch, undefined, moved)
  }

  /**
   * Throws when the database file or its WAL is no longer the one opened
   * (deleted, or replaced by another file): SQLite goes on writing to the
   * removed file without an error, and what it commits there is gone at the
   * next start. Costs two stat calls per group commit.
   */
  #checkFiles (): void {
    const files = this.#files
    if (files === null) return
    if (identity(files.path) !== files.db) {
      throw new Error(`SqliteStorage: the database file ${files.path} was removed or replaced while open; writes to it would be lost: restart the server`)
    }
    const wal = identity(`${files.path}-wal`)
    // The WAL exists from the first write on (and, this connection open, is never removed by SQLite).
    if (files.wal === null) files.wal = wal
    else if (wal !== files.wal) throw new Error(`SqliteStorage: the WAL file ${files.path}-wal was removed or replaced while open; commits in it would be lost: restart the server`)
  }

  #assertOpen (): void {
    if (this.#closed) throw new Error('SqliteStorage is closed')
  }
}

/** How often, and how far apart, a room's claim is tried while another process holds the write lock. */
const CLAIM_ATTEMPTS = 50
const CLAIM_RETRY_MS = 20
/** The same for a group commit: every 5 ms, up to about a second. */
const BUSY_TRIES = 200
const BUSY_RETRY_MS = 5

/** SQLITE_BUSY (or one of its extended codes): another connection holds the lock. */
function isBusy (err: unknown): boolean {
  return String((err as { code?: unknown } | null)?.code).startsWith('SQLITE_BUSY')
}

/** A file's device and inode, or null when it does not exist. */
function identity (path: string): string | null {
  const stat = statSync(path, { throwIfNoEntry: false })
  return stat === undefined ? null : `${stat.dev}:${stat.ino}`
}
