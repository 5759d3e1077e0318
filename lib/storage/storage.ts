import type { ComponentData, FieldTimestamps, RoomSnapshot } from '../protocol/types.js'

/**
 * Where one room's document lives between loads. Implement it for a custom
 * backend; the seed's `{ load, save }` shape.
 */
export interface Storage {
  /**
   * Reads the room's last saved snapshot, or `null` for a room never saved.
   * @throws when the stored data cannot be read: the room then refuses to load
   * rather than start empty and overwrite what storage holds
   */
  load(): Promise<RoomSnapshot | null>
  /**
   * Replaces the room's stored snapshot. Calls for one room never overlap:
   * the room waits for one write to settle before it starts the next. The
   * snapshot's value and timestamp records are frozen and shared with the
   * room (they are replaced, never changed): keep them without copying.
   * With `durability: 'throttled'` (always, for a storage without `append`)
   * its `timestamp` is a reservation above the counter while the room is
   * loaded, and the counter itself in the room's last save (see
   * RoomChanges).
   */
  save(snapshot: RoomSnapshot): Promise<void>
  /**
   * Optional, for storages shared by several processes that claim a room at
   * load (as SqliteStorage and PostgresStorage do): rejects with an error
   * whose `code` is `CANVAS_STORE_ROOM_MOVED` (such as a RoomMovedError)
   * when another process has loaded the room since this storage did. The
   * room calls it before a session joins it while loaded, so that the
   * client is not served a stale document: a moved room closes its
   * sessions with 1013 and the joining one loads it afresh. Any other
   * rejection is logged and the session joins as usual.
   */
  checkClaim?(): Promise<void>
}

/** One document key as stored: its whole current value and field timestamps. */
export interface StoredEntry {
  key: string
  /** The whole current value; `{ _exists: false }` for a tombstone. Never mutated afterwards. */
  value: ComponentData
  /** Field timestamps. Frozen and never changed afterwards: it may be kept as is. */
  stamps: FieldTimestamps
}

/**
 * With throttled acks, each write stores the counter plus this many values
 * (a reservation), and the room acks only counters below the reservation
 * that has committed: a write of a new one goes at once and the acks wait for it
 * (the first document frame after a load, then only if a room moves the
 * counter this much between two throttled writes). A process that crashes
 * has acked counters it never wrote, but none past the stored reservation,
 * where the next load starts: those counters are never given again, so a
 * client that saw them is sent every later write (and is asked to resync
 * what it holds of the lost ones, see Room). The room's last write (it
 * unloads, or shuts down) stores the counter itself: only a crash skips
 * counter values.
 */
export const COUNTER_RESERVE = 1_000_000

/**
 * Marks a storage whose `save` stores any snapshot as given, a counter lower
 * than the stored one included (MemoryStorage, MemoryStore's, FileStorage):
 * a throttled room's last save then holds its changes and the counter itself
 * in one write, instead of the changes with a reservation, then the counter.
 */
export const STORES_AS_GIVEN: unique symbol = Symbol('fastify-canvas-store.storesAsGiven')

/** True when `storage` is marked with STORES_AS_GIVEN. */
export function storesAsGiven (storage: Storage): boolean {
  return (storage as { [STORES_AS_GIVEN]?: boolean })[STORES_AS_GIVEN] === true
}

/** What changed in a room since its previous `append`. */
export interface RoomChanges {
  /**
   * The room counter after these changes. With `durability: 'throttled'`, a
   * reservation above it (the counter plus COUNTER_RESERVE): the room acks
   * only counters below the stored one, so a crash never has the next load give
   * an acked counter again. Keep the highest one stored, except on a
   * `final` write.
   */
  timestamp: number
  /**
   * Set on the last write of a throttled room (it unloads or shuts down):
   * `timestamp` is the counter itself, below the reservation stored before;
   * store it as given.
   */
  final?: boolean
  /**
   * Every key that changed, with its whole current value. May be empty: a
   * frame whose patches stored nothing (a partial update of a deleted key)
   * still moved the counter, which must be kept.
   */
  entries: StoredEntry[]
}

/**
 * A storage that can persist only what changed, so that the cost of a write
 * follows the size of the patch, not the size of the document. Rooms use
 * `append` when it is there (and `save` only for a whole-document import).
 */
export interface IncrementalStorage extends Storage {
  /**
   * Durably writes the changed keys and the new counter. Resolves once they
   * are committed: with `durability: 'durable'` the room holds the acks of
   * these changes until then. Calls for one room never overlap.
   */
  append(changes: RoomChanges): Promise<void>
}

/** An append waiting for the next group commit of a shared store (SQLite, PostgreSQL). */
export interface PendingAppend {
  roomId: string
  changes: RoomChanges
  resolve: () => void
  reject: (err: unknown) => void
}

/** True when the storage offers the incremental path. */
export function isIncremental (storage: Storage): storage is IncrementalStorage {
  return typeof (storage as Partial<IncrementalStorage>).append === 'function'
}

/**
 * Refuses a room id a storage cannot keep as it is: one that is not a
 * string, or not well-formed Unicode (a lone surrogate), which UTF-8 cannot
 * encode. FileStorage's file name would turn every lone surrogate into
 * U+FFFD (two such rooms would share a file), PostgreSQL refuses the row
 * (every write of the room fails), SQLite is handed invalid UTF-8. With
 * `noNul`, U+0000 too (PostgreSQL's text cannot hold it). The plugin's
 * routes never let such ids in; this guards the classes used directly.
 * @throws TypeError
 */
export function checkRoomId (roomId: unknown, storage: string, noNul = false): void {
  if (typeof roomId !== 'string') throw new TypeError(`${storage}: roomId must be a string`)
  if (!(roomId as string & { isWellFormed(): boolean }).isWellFormed()) {
    throw new TypeError(`${storage}: roomId must be well-formed Unicode (it holds a lone surrogate, which UTF-8 cannot encode)`)
  }
  if (noNul && roomId.includes('\u0000')) throw new TypeError(`${storage}: roomId must not hold U+0000`)
}

/** Makes the storage of one room. */
export type CreateStorage = (roomId: string) => Storage

/** One store for every room (SQLite, PostgreSQL): hands out each room's storage. */
export interface RoomStore {
  forRoom(roomId: string): Storage
  /** Resolves when the store can be reached (used by the readiness route); rejects otherwise. */
  ping?(): Promise<void>
}
