import t from 'tap'
import { readdir, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { FileStorage, MemoryStorage, roomFileName } from '../lib/index.js'
import { ODD_ROOM_IDS, storageContract } from './storage-contract.js'

const memory = new Map<string, MemoryStorage>()
storageContract(t, 'MemoryStorage', (roomId) => {
  let store = memory.get(roomId)
  if (store === undefined) memory.set(roomId, store = new MemoryStorage())
  return store
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

t.test('FileStorage leaves no temp files and makes the folder', async (t) => {
  const base = join(t.testdir({}), 'nested', 'dir')
  const store = new FileStorage({ dir: base, roomId: 'r' })
  await Promise.all([1, 2, 3].map((n) => store.save({ timestamp: n, state: {}, timestamps: {} })))
  t.same(await readdir(base), ['r.json'])
})

t.test('FileStorage refuses to load a corrupt file instead of starting empty', async (t) => {
  const base = t.testdir({})
  await writeFile(join(base, 'bad.json'), '{"timestamp": 3, "sta')
  await t.rejects(new FileStorage({ dir: base, roomId: 'bad' }).load())
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
  t.same((await store.load())!.state.k, { _exists: true, x: 1 })
})
