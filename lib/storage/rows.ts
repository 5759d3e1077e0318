import type { ComponentData, FieldTimestamps, RoomSnapshot } from '../protocol/types.js'
import { RoomMovedError } from '../errors.js'
import type { PendingAppend, StoredEntry } from './storage.js'

/** One document key as the SQL storages keep it: the JSON of its value and of its field timestamps. */
export interface EntryRow {
  key: string
  value: string
  stamps: string
}

/** The rows of the keys an append carries. */
export function entryRows (entries: readonly StoredEntry[]): EntryRow[] {
  return entries.map((entry) => ({ key: entry.key, value: JSON.stringify(entry.value), stamps: JSON.stringify(entry.stamps) }))
}

/** The rows of a whole snapshot (a key without timestamps gets `{}`). */
export function snapshotRows (snapshot: RoomSnapshot): EntryRow[] {
  return Object.keys(snapshot.state).map((key) => ({
    key,
    value: JSON.stringify(snapshot.state[key]),
    stamps: JSON.stringify(Object.hasOwn(snapshot.timestamps, key) ? snapshot.timestamps[key] : {})
  }))
}

/** A snapshot read back from rows. */
export function rowsToSnapshot (timestamp: number, rows: readonly EntryRow[]): RoomSnapshot {
  const state: Record<string, ComponentData> = Object.create(null)
  const timestamps: Record<string, FieldTimestamps> = Object.create(null)
  for (const row of rows) {
    state[row.key] = JSON.parse(row.value)
    timestamps[row.key] = JSON.parse(row.stamps)
  }
  return { timestamp, state, timestamps }
}

/**
 * Settles every append of a group commit: rejected with the commit's error,
 * or resolved; those of the rooms in `moved` (loaded by another storage
 * since, so not written) rejected with a RoomMovedError.
 */
export function settle (batch: readonly PendingAppend[], err?: unknown, moved?: ReadonlySet<string>): void {
  for (const pending of batch) {
    if (err !== undefined) pending.reject(err)
    else if (moved?.has(pending.roomId) === true) pending.reject(new RoomMovedError(pending.roomId))
    else pending.resolve()
  }
}

/**
 * Rejects with a RoomMovedError when the room's row names another owner
 * than `mine`: another storage loaded (claimed) the room since this one did.
 * A room without a row (never written) or without an owner (written by an
 * earlier version) is nobody's yet.
 */
export function checkOwner (roomId: string, owner: string | null | undefined, mine: string): void {
  if (owner !== null && owner !== undefined && owner !== mine) throw new RoomMovedError(roomId)
}
