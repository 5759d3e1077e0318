/**
 * The storage contract, for authors of custom backends. Framework-neutral:
 * each case is a name and an async function that throws on failure.
 *
 * ```ts
 * import { test } from 'node:test'
 * import { storageContract } from 'fastify-canvas-store/testing'
 * for (const c of storageContract((roomId) => myStore.forRoom(roomId))) test(c.name, c.run)
 * ```
 */
import assert from 'node:assert/strict'
import type { RoomSnapshot } from './protocol/types.js'
import type { Storage } from './storage/storage.js'

/** One case of the contract. */
export interface ContractCase {
  name: string
  run: () => Promise<void>
}

/** Room ids a backend must keep apart (and, for files, never turn into paths outside its folder). */
export const ODD_ROOM_IDS: readonly string[] = ['../escape', '../../x', 'a/b', '/abs', 'quote\'"`', 'ünïcødé-房间-🎨', 'x'.repeat(200), '.', '..', 'CON', 'a%2Fb']

/** A small snapshot with a live key and a tombstone, distinct for each `n`. */
export function sampleSnapshot (n: number): RoomSnapshot {
  return {
    timestamp: n,
    state: { 'e1/Pos': { _exists: true, x: n, label: `n=${n}` }, 'e2/Pos': { _exists: false } },
    timestamps: { 'e1/Pos': { _exists: 1, x: n, label: n }, 'e2/Pos': { _exists: n } }
  }
}

/** Compares as JSON: prototypes (null-prototype records) do not matter, values do. */
function sameJson (actual: unknown, expected: unknown, message: string): void {
  assert.deepStrictEqual(JSON.parse(JSON.stringify(actual)), JSON.parse(JSON.stringify(expected)), message)
}

/**
 * The cases every backend must pass. `make(roomId)` returns the storage of
 * one room; a backend that keeps all rooms in one store must return storages
 * over that same store. Use a fresh store (or table prefix) per run: the
 * cases write fixed room ids.
 */
export function storageContract (make: (roomId: string) => Storage | Promise<Storage>): ContractCase[] {
  return [
    {
      name: 'a room never saved loads as null',
      run: async () => {
        assert.equal(await (await make('never-saved')).load(), null)
      }
    },
    {
      name: 'round trip keeps state, tombstones, field timestamps and the counter',
      run: async () => {
        const store = await make('round-trip')
        await store.save(sampleSnapshot(7))
        sameJson(await store.load(), sampleSnapshot(7), 'same storage')
        sameJson(await (await make('round-trip')).load(), sampleSnapshot(7), 'a new storage object for the same room')
      }
    },
    {
      name: 'concurrent saves land in order: the last one wins',
      run: async () => {
        const store = await make('ordered')
        await Promise.all([1, 2, 3, 4, 5].map((n) => store.save(sampleSnapshot(n))))
        sameJson(await store.load(), sampleSnapshot(5), 'last save')
      }
    },
    {
      name: 'odd room ids are isolated from each other',
      run: async () => {
        for (const [i, roomId] of ODD_ROOM_IDS.entries()) await (await make(roomId)).save(sampleSnapshot(100 + i))
        for (const [i, roomId] of ODD_ROOM_IDS.entries()) {
          sameJson(await (await make(roomId)).load(), sampleSnapshot(100 + i), JSON.stringify(roomId.slice(0, 20)))
        }
      }
    },
    {
      name: 'two rooms never see each other',
      run: async () => {
        await (await make('room-a')).save(sampleSnapshot(1))
        assert.equal(await (await make('room-b')).load(), null)
        await (await make('room-b')).save(sampleSnapshot(2))
        sameJson(await (await make('room-a')).load(), sampleSnapshot(1), 'room-a unchanged')
      }
    },
    {
      name: 'keys and fields named __proto__ round-trip as data',
      run: async () => {
        const snapshot = JSON.parse('{"timestamp":2,"state":{"__proto__":{"_exists":true,"__proto__":{"x":1}}},"timestamps":{"__proto__":{"_exists":2,"__proto__":2}}}') as RoomSnapshot
        const store = await make('proto')
        await store.save(snapshot)
        const loaded = await store.load()
        assert.equal(({} as Record<string, unknown>).x, undefined, 'Object.prototype untouched')
        assert.ok(loaded !== null && Object.hasOwn(loaded.state, '__proto__'), 'the key is an own property')
      }
    }
  ]
}
