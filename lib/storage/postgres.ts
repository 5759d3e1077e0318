import { randomUUID } from 'node:crypto'
import type pg from 'pg'
import type { RoomSnapshot } from '../protocol/types.js'
import { requirePeer } from '../peer.js'
import { checkOwner, entryRows, rowsToSnapshot, settle, snapshotRows, type EntryRow } from './rows.js'
import { COUNTER_RESERVE, checkRoomId, type IncrementalStorage, type PendingAppend as Pending, type RoomChanges, type RoomStore } from './storage.js'

/**
 * A `pg.Pool`, as the storage's options name it: by the methods it uses, so
 * that the package's type declarations do not need `@types/pg` (an
 * application without it, and without `skipLibCheck`, still compiles). A
 * real `pg.Pool` fits.
 */
export interface PgPool {
  connect(): Promise<PgPoolClient>
  query(text: string, values?: unknown[]): Promise<unknown>
}

/** A client checked out of a {@link PgPool} (a `pg.PoolClient`), by the members the storage uses. */
export interface PgPoolClient {
  query(text: string, values?: unknown[]): Promise<unknown>
  on(event: 'error', listener: (err: Error) => void): unknown
  off(event: 'error', listener: (err: Error) => void): unknown
  release(destroy?: boolean | Error): void
}

/** Options of {@link PostgresStorage}: give `pool` or `connectionString`. */
export interface PostgresStorageOptions {
  /** A pool you own (a `pg.Pool`): the storage never ends it. */
  pool?: PgPool
  /** Or a connection string: the storage makes its own pool and ends it in `close()`. */
  connectionString?: string
  /**
   * Prefix of the two tables.
   * @default 'canvas_store'
   */
  tablePrefix?: string
}

/**
 * One PostgreSQL database for every room (`pg`): one row per document key
 * (value and field timestamps as JSON text) plus each room's counter. Changes
 * appended during one event-loop turn, from every room, are upserted in one
 * transaction; while it commits, the next batch gathers. Tables are created
 * on first use, or ahead of time with {@link migrate}.
 */
export class PostgresStorage implements RoomStore {
  readonly #pool: pg.Pool
  readonly #owned: boolean
  readonly #rooms: string
  readonly #entries: string
  #migrated: Promise<void> | null = null
  #queue: Pending[] = []
  #scheduled: NodeJS.Immediate | null = null
  /** Every write (append batch or whole-room save) runs after the previous one, in order of issue. */
  #tail: Promise<void> = Promise.resolve()
  #closed = false
  /**
   * This storage's mark in the rooms it loads and writes (see forRoom): a
   * room loaded by another storage since (another process, on the same
   * database) is not written by this one.
   */
  readonly #owner = randomUUID()

  constructor (options: PostgresStorageOptions) {
    const prefix = options.tablePrefix ?? 'canvas_store'
    if (!/^[A-Za-z_][A-Za-z0-9_]{0,40}$/.test(prefix)) throw new TypeError('PostgresStorage: tablePrefix must be a plain SQL identifier')
    this.#rooms = `${prefix}_rooms`
    this.#entries = `${prefix}_entries`
    if (options.pool !== undefined) {
      this.#pool = options.pool as pg.Pool
      this.#owned = false
    } else if (typeof options.connectionString === 'string') {
      const { Pool } = requirePeer<typeof pg>('pg', '8', 'PostgresStorage')
      // TCP keep-alive: a connection whose peer vanished without a reset is found out, not waited on forever.
      this.#pool = new Pool({ connectionString: options.connectionString, keepAlive: true })
      // An idle connection that dies emits 'error' on the pool; unhandled, it would end the process.
      this.#pool.on('error', () => {})
      this.#owned = true
    } else {
      throw new TypeError('PostgresStorage: give a pool or a connectionString')
    }
  }

  /**
   * Creates the tables if they are missing. Safe to call many times.
   * @throws when the database's encoding is neither UTF8 nor SQL_ASCII
   * (which keeps bytes as they come): it could not store every string a
   * client sends, and the writes of rooms holding others would fail for good
   */
  migrate (): Promise<void> {
    // Under a lock of the database's, in a transaction: processes starting together on a new database would
    // otherwise create the tables at once, and all but one fail (a duplicate key in PostgreSQL's catalog).
    this.#migrated ??= this.#transaction(async (client) => {
      const { rows } = await client.query<{ server_encoding: string }>('SHOW server_encoding')
      const encoding = rows[0]?.server_encoding
      if (encoding !== 'UTF8' && encoding !== 'SQL_ASCII') throw new Error(`PostgresStorage needs a UTF8 database; this one's encoding is ${String(encoding)}`)
      await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`fastify-canvas-store:${this.#rooms.toLowerCase()}`])
      await client.query(`
        CREATE TABLE IF NOT EXISTS ${this.#rooms} (
          room_id text PRIMARY KEY,
          timestamp bigint NOT NULL,
          owner text
        );
        CREATE TABLE IF NOT EXISTS ${this.#entries} (
          room_id text NOT NULL,
          key text NOT NULL,
          value text NOT NULL,
          stamps text NOT NULL,
          PRIMARY KEY (room_id, key)
        );
      `)
      // A table of an earlier version has no owner column. Looked up first: ALTER TABLE locks the table
      // against every other process's writes, even when the column is there already.
      const column = await client.query(`SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = $1 AND column_name = 'owner'`, [this.#rooms.toLowerCase()])
      if (column.rows.length === 0) await client.query(`ALTER TABLE ${this.#rooms} ADD COLUMN IF NOT EXISTS owner text`)
    }).catch((err: unknown) => {
      this.#migrated = null
      throw err
    })
    return this.#migrated
  }

  /**
   * The storage of one room, over this database. Its `load` claims the room
   * for this storage: from then on, appends to the room by another storage
   * on the same database (another process) fail with a RoomMovedError
   * instead of overwriting what this one writes, and the room that made
   * them closes its sessions.
   */
  forRoom (roomId: string): IncrementalStorage {
    checkRoomId(roomId, 'PostgresStorage', true)
    return {
      load: () => this.#claimAndLoad(roomId),
      save: (snapshot) => this.save(roomId, snapshot),
      // The id was checked above: not again at every write.
      append: (changes) => this.#enqueue(roomId, changes),
      checkClaim: async () => {
        this.#assertOpen()
        const room = await this.#pool.query<{ owner: string | null }>(`SELECT owner FROM ${this.#rooms} WHERE room_id = $1`, [roomId])
        checkOwner(roomId, room.rows[0]?.owner, this.#owner)
      }
    }
  }

  /** Checks that the database answers. */
  async ping (): Promise<void> {
    this.#assertOpen()
    await this.#pool.query('SELECT 1')
  }

  /**
   * Claims the room and reads it, in one transaction. The claim locks the
   * room's row: a commit of another storage's appends under way ends first,
   * and is read; its later ones fail.
   */
  async #claimAndLoad (roomId: string): Promise<RoomSnapshot | null> {
    this.#assertOpen()
    await this.migrate()
    let snapshot: RoomSnapshot | null = null
    await this.#transaction(async (client) => {
      const room = await client.query<{ timestamp: string }>(`UPDATE ${this.#rooms} SET owner = $2 WHERE room_id = $1 RETURNING timestamp`, [roomId, this.#owner])
      const rows = await client.query<{ key: string, value: string, stamps: string }>(`SELECT key, value, stamps FROM ${this.#entries} WHERE room_id = $1`, [roomId])
      if (room.rows.length > 0 || rows.rows.length > 0) snapshot = rowsToSnapshot(room.rows.length > 0 ? Number(room.rows[0].timestamp) : 0, rows.rows)
    })
    return snapshot
  }

  /** Reads a room (without claiming it, unlike `forRoom(roomId).load()`); null when it was never written. */
  async load (roomId: string): Promise<RoomSnapshot | null> {
    this.#assertOpen()
    checkRoomId(roomId, 'PostgresStorage', true)
    await this.migrate()
    const room = await this.#pool.query<{ timestamp: string }>(`SELECT timestamp FROM ${this.#rooms} WHERE room_id = $1`, [roomId])
    const rows = await this.#pool.query<{ key: string, value: string, stamps: string }>(
      `SELECT key, value, stamps FROM ${this.#entries} WHERE room_id = $1`, [roomId])
    if (room.rows.length === 0 && rows.rows.length === 0) return null
    return rowsToSnapshot(room.rows.length > 0 ? Number(room.rows[0].timestamp) : 0, rows.rows)
  }

  /** Replaces a room's whole document (import), after the writes already issued. */
  async save (roomId: string, snapshot: RoomSnapshot): Promise<void> {
    this.#assertOpen()
    checkRoomId(roomId, 'PostgresStorage', true)
    const rows = snapshotRows(snapshot)
    await this.#serial(async () => {
      await this.#writeBatch()
      await this.migrate()
      await this.#replace(roomId, snapshot, rows)
    })
  }

  async #replace (roomId: string, snapshot: RoomSnapshot, rows: EntryRow[]): Promise<void> {
    await this.#transaction(async (client) => {
      await client.query(`DELETE FROM ${this.#entries} WHERE room_id = $1`, [roomId])
      await this.#upsertEntries(client, rows.map((row) => ({ roomId, row })))
      await client.query(`INSERT INTO ${this.#rooms} (room_id, timestamp, owner) VALUES ($1, $2, $3)
        ON CONFLICT (room_id) DO UPDATE SET timestamp = EXCLUDED.timestamp, owner = EXCLUDED.owner`, [roomId, snapshot.timestamp, this.#owner])
    })
  }

  /** Queues a room's changes for the next group commit; resolves once committed. */
  append (roomId: string, changes: RoomChanges): Promise<void> {
    try {
      checkRoomId(roomId, 'PostgresStorage', true)
    } catch (err) {
      return Promise.reject(err)
    }
    return this.#enqueue(roomId, changes)
  }

  #enqueue (roomId: string, changes: RoomChanges): Promise<void> {
    if (this.#closed) return Promise.reject(new Error('PostgresStorage is closed'))
    return new Promise((resolve, reject) => {
      this.#queue.push({ roomId, changes, resolve, reject })
      this.#kick()
    })
  }

  /** Writes what is queued, then ends the pool if this object made it. Idempotent. */
  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#serial(() => this.#writeBatch())
    if (this.#owned) await this.#pool.end()
  }

  /** Runs a write after every write issued before it. */
  #serial (task: () => Promise<void>): Promise<void> {
    const run = this.#tail.then(task)
    this.#tail = run.catch(() => {})
    return run
  }

  /** Queues a batch write for this loop turn; appends arriving while it waits or runs join the next one. */
  #kick (): void {
    if (this.#scheduled !== null || this.#queue.length === 0) return
    this.#scheduled = setImmediate(() => {
      this.#scheduled = null
      this.#serial(() => this.#writeBatch()).catch(() => {})
    })
  }

  async #writeBatch (): Promise<void> {
    const batch = this.#queue
    this.#queue = []
    if (batch.length === 0) return
    let moved: Set<string>
    try {
      await this.migrate()
      moved = await this.#commit(batch)
    } catch (err) {
      const rooms = new Map<string, Pending[]>()
      for (const pending of batch) {
        const own = rooms.get(pending.roomId)
        if (own === undefined) rooms.set(pending.roomId, [pending])
        else own.push(pending)
      }
      if (rooms.size === 1) {
        settle(batch, err)
        return
      }
      // One room's rows must not fail the others': commit each room alone, and let only the failing ones fail.
      for (const own of rooms.values()) {
        try {
          settle(own, undefined, await this.#commit(own))
        } catch (roomErr) {
          settle(own, roomErr)
        }
      }
      return
    }
    settle(batch, undefined, moved)
  }

  /**
   * Writes the appends in one transaction: the newest value of each (room,
   * key), the highest counter of each room. The counters go first: they say
   * which rooms are still this storage's to write (their rows stay locked to
   * the commit, so a claim waits for it).
   * @returns the rooms not written: another storage has loaded them since
   */
  async #commit (batch: readonly Pending[]): Promise<Set<string>> {
    const latest = new Map<string, { roomId: string, row: EntryRow }>()
    const counters = new Map<string, number>()
    // A throttled room's last write: its counter, below the reservation stored before (see RoomChanges.final).
    const finals = new Map<string, number>()
    for (const { roomId, changes } of batch) {
      for (const row of entryRows(changes.entries)) latest.set(JSON.stringify([roomId, row.key]), { roomId, row })
      counters.set(roomId, Math.max(counters.get(roomId) ?? 0, changes.timestamp))
      if (changes.final === true) finals.set(roomId, changes.timestamp)
      else finals.delete(roomId)
    }
    // In one order, so that two processes' commits lock rooms' rows without deadlocking.
    const roomIds = Array.from(counters.keys()).sort()
    const moved = new Set<string>()
    await this.#transaction(async (client) => {
      const written = await client.query<{ room_id: string }>(`INSERT INTO ${this.#rooms} (room_id, timestamp, owner)
        SELECT u.room_id, u.timestamp, $3 FROM unnest($1::text[], $2::bigint[]) AS u(room_id, timestamp)
        ON CONFLICT (room_id) DO UPDATE SET timestamp = GREATEST(${this.#rooms}.timestamp, EXCLUDED.timestamp), owner = EXCLUDED.owner
        WHERE ${this.#rooms}.owner IS NULL OR ${this.#rooms}.owner = EXCLUDED.owner
        RETURNING room_id`,
      [roomIds, roomIds.map((roomId) => counters.get(roomId)!), this.#owner])
      const owned = new Set(written.rows.map((row) => row.room_id))
      for (const roomId of roomIds) if (!owned.has(roomId)) moved.add(roomId)
      for (const [roomId, counter] of finals) {
        // Not below a later reservation (a room loaded again meanwhile in this process, the late final write of a shutdown).
        if (!moved.has(roomId)) await client.query(`UPDATE ${this.#rooms} SET timestamp = $2 WHERE room_id = $1 AND timestamp <= $3`, [roomId, counter, counter + COUNTER_RESERVE])
      }
      await this.#upsertEntries(client, moved.size === 0 ? Array.from(latest.values()) : Array.from(latest.values()).filter(({ roomId }) => !moved.has(roomId)))
    })
    return moved
  }

  async #upsertEntries (client: pg.PoolClient, rows: Array<{ roomId: string, row: EntryRow }>): Promise<void> {
    if (rows.length === 0) return
    // The rows travel as one JSON text, which JSON.stringify escapes natively. As text[] parameters, pg built
    // each array literal by escaping quotes and backslashes with regular expressions on the event loop: a 13 MB
    // value made of them took about 6 s, during which every room of the process stood still.
    await client.query(`INSERT INTO ${this.#entries} (room_id, key, value, stamps)
      SELECT r.room_id, r.key, r.value, r.stamps FROM json_to_recordset($1::json) AS r(room_id text, key text, value text, stamps text)
      ON CONFLICT (room_id, key) DO UPDATE SET value = EXCLUDED.value, stamps = EXCLUDED.stamps`,
    [JSON.stringify(rows.map(({ roomId, row }) => ({ room_id: roomId, key: row.key, value: row.value, stamps: row.stamps })))])
  }

  async #transaction (work: (client: pg.PoolClient) => Promise<void>): Promise<void> {
    const client = await this.#pool.connect()
    let broken = false
    // While a client is checked out, the pool does not listen to its errors: a connection lost now (a failover,
    // a killed backend, a proxy restart) would be an unhandled 'error' event, which ends the process. The query
    // under way fails with it, and the client is dropped instead of going back to the pool.
    const lost = (): void => { broken = true }
    client.on('error', lost)
    try {
      await client.query('BEGIN')
      await work(client)
      await client.query('COMMIT')
    } catch (err) {
      if (!broken) await client.query('ROLLBACK').catch(() => { broken = true })
      throw err
    } finally {
      // A lost connection keeps the listener: it may still report errors while it is torn down.
      if (!broken) client.off('error', lost)
      // A connection that was lost or could not even roll back is dropped, not reused.
      client.release(broken)
    }
  }

  #assertOpen (): void {
    if (this.#closed) throw new Error('PostgresStorage is closed')
  }
}
