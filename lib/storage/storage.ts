import type { RoomSnapshot } from '../protocol/types.js'

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
   * the room waits for one save to settle before it starts the next.
   */
  save(snapshot: RoomSnapshot): Promise<void>
}

/** Makes the storage of one room. */
export type CreateStorage = (roomId: string) => Storage
