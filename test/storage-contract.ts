import type { Test } from 'tap'
import type { Storage, RoomSnapshot } from '../lib/index.js'

type T = Test

/** Room ids a backend must keep apart and never turn into paths outside its folder. */
export const ODD_ROOM_IDS = ['../escape', '../../x', 'a/b', '/abs', 'quote\'"`', 'ünïcødé-房间-🎨', 'x'.repeat(200), '.', '..', 'CON', 'a%2Fb']

const snapshot = (n: number): RoomSnapshot => ({
  timestamp: n,
  state: { 'e1/Pos': { _exists: true, x: n }, 'e2/Pos': { _exists: false } },
  timestamps: { 'e1/Pos': { _exists: 1, x: n }, 'e2/Pos': { _exists: n } }
})

/**
 * The storage contract: run it against every backend. `make(roomId)`
 * returns the storage of one room; backends sharing state across rooms must
 * return storages over the same underlying store.
 */
export function storageContract (t: T, name: string, make: (roomId: string) => Storage | Promise<Storage>): void {
  t.test(`${name}: storage contract`, async (t) => {
    await t.test('a room never saved loads as null', async (t) => {
      t.equal(await (await make('never-saved')).load(), null)
    })

    await t.test('round trip keeps state, tombstones, stamps and counter', async (t) => {
      const store = await make('round-trip')
      await store.save(snapshot(7))
      t.same(await store.load(), snapshot(7))
      t.same(await (await make('round-trip')).load(), snapshot(7), 'a new storage object for the same room sees it')
    })

    await t.test('concurrent saves land in order: the last one wins', async (t) => {
      const store = await make('ordered')
      await Promise.all([1, 2, 3, 4, 5].map((n) => store.save(snapshot(n))))
      t.same(await store.load(), snapshot(5))
    })

    await t.test('odd room ids are isolated from each other', async (t) => {
      for (const [i, roomId] of ODD_ROOM_IDS.entries()) await (await make(roomId)).save(snapshot(100 + i))
      for (const [i, roomId] of ODD_ROOM_IDS.entries()) {
        t.same(await (await make(roomId)).load(), snapshot(100 + i), JSON.stringify(roomId.slice(0, 20)))
      }
    })

    await t.test('two rooms never see each other', async (t) => {
      await (await make('room-a')).save(snapshot(1))
      t.equal(await (await make('room-b')).load(), null)
      await (await make('room-b')).save(snapshot(2))
      t.same(await (await make('room-a')).load(), snapshot(1))
    })
  })
}
