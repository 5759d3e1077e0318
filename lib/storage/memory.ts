import type { RoomSnapshot } from '../protocol/types.js'
import type { Storage } from './storage.js'

/**
 * Keeps one room's snapshot in process memory (development, tests). The
 * snapshot is stored serialized, so later changes to the live room can never
 * leak into it.
 */
export class MemoryStorage implements Storage {
  #data: string | null = null

  async load (): Promise<RoomSnapshot | null> {
    return this.#data === null ? null : JSON.parse(this.#data) as RoomSnapshot
  }

  async save (snapshot: RoomSnapshot): Promise<void> {
    this.#data = JSON.stringify(snapshot)
  }
}
