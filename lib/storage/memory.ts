import type { ComponentData, FieldTimestamps, RoomSnapshot } from '../protocol/types.js'
import { STORES_AS_GIVEN, type RoomStore, type Storage } from './storage.js'

/**
 * Keeps one room's snapshot in process memory (development, tests, the
 * default). It holds the snapshot as three arrays of the same length (keys,
 * values, timestamps) rather than two objects keyed by document key: a third
 * of the memory. Values and timestamps are kept as they are when frozen
 * (the room's own records, which it replaces and never changes) and copied
 * otherwise, so that later changes by the caller can never leak in.
 */
export class MemoryStorage implements Storage {
  readonly [STORES_AS_GIVEN] = true
  #data: { timestamp: number, keys: string[], values: ComponentData[], stamps: FieldTimestamps[] } | null = null

  async load (): Promise<RoomSnapshot | null> {
    const data = this.#data
    if (data === null) return null
    const state: Record<string, ComponentData> = Object.create(null)
    const timestamps: Record<string, FieldTimestamps> = Object.create(null)
    for (let i = 0; i < data.keys.length; i++) {
      state[data.keys[i]] = data.values[i]
      timestamps[data.keys[i]] = data.stamps[i]
    }
    return { timestamp: data.timestamp, state, timestamps }
  }

  async save (snapshot: RoomSnapshot): Promise<void> {
    const keys = Object.keys(snapshot.state)
    const values: ComponentData[] = new Array(keys.length)
    const stamps: FieldTimestamps[] = new Array(keys.length)
    for (let i = 0; i < keys.length; i++) {
      values[i] = kept(snapshot.state[keys[i]])
      stamps[i] = kept(Object.hasOwn(snapshot.timestamps, keys[i]) ? snapshot.timestamps[keys[i]] : {})
    }
    this.#data = { timestamp: snapshot.timestamp, keys, values, stamps }
  }
}

/** The room's own frozen records as they are; anything else as a frozen JSON copy, as a storage on disk would keep it. */
function kept<T extends object> (record: T): T {
  return Object.isFrozen(record) ? record : Object.freeze(JSON.parse(JSON.stringify(record)) as T)
}

/**
 * In-memory snapshots of every room, for the process's lifetime (the
 * plugin's default storage). It remembers a room only once the room saved
 * something, so connections to ever new room ids that write nothing leave
 * nothing behind.
 */
export class MemoryStore implements RoomStore {
  readonly #saved = new Map<string, MemoryStorage>()

  /** Number of rooms that have a snapshot. */
  get size (): number { return this.#saved.size }

  forRoom (roomId: string): Storage {
    const saved = this.#saved.get(roomId)
    if (saved !== undefined) return saved
    // Until this room's first save: another handle of the same id may save first, and then both use its store.
    const mine = new MemoryStorage()
    const rooms = this.#saved
    const storage: Storage & { [STORES_AS_GIVEN]: boolean } = {
      [STORES_AS_GIVEN]: true,
      load: async () => await (rooms.get(roomId) ?? mine).load(),
      save: async (snapshot) => {
        let store = rooms.get(roomId)
        if (store === undefined) rooms.set(roomId, store = mine)
        await store.save(snapshot)
      }
    }
    return storage
  }
}
