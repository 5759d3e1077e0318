import t from 'tap'
import type { RoomSnapshot, Storage } from '../lib/index.js'
import { COUNTER_RESERVE, MemoryStorage, RoomLimitError, RoomManager, RoomManagerClosedError } from '../lib/index.js'
import { fakeClock } from './fake-clock.js'
import { build, connect, connectReal, gate, listen, write } from './helper.js'

t.test('20 clients connecting to a new room at the same instant end up in one room, loaded once', async (t) => {
  const release = gate()
  const loading = gate()
  let loads = 0
  let storages = 0
  let authorized = 0
  const allAuthorized = gate()
  const app = await build(t, {
    authorize: () => {
      if (++authorized === 20) allAuthorized.open()
      return { permissions: 'readwrite' }
    },
    createStorage: () => {
      storages++
      return {
        load: async () => {
          loads++
          loading.open()
          await release.promise
          return null
        },
        save: async () => {}
      }
    }
  })
  const peers = await Promise.all(Array.from({ length: 20 }, (_, i) => connect(app, { roomId: 'crowd', clientId: `c${i}` })))
  await allAuthorized.promise
  await loading.promise
  t.equal(app.canvasStore.getExistingRoom('crowd'), undefined, 'still loading')
  release.open()
  await Promise.all(peers.map((p) => p.next((f) => f.type === 'clientCount' && f.count === 20)))
  const room = app.canvasStore.getExistingRoom('crowd')!
  t.equal(loads, 1, 'one load call')
  t.equal(storages, 1, 'one storage made')
  t.equal(room.getSessionCount(), 20)
  t.equal(new Set(room.getSessions().map((s) => s.sessionId)).size, 20, 'distinct sessions')
  t.strictSame(app.canvasStore.getRoomIds(), ['crowd'])
  await Promise.all(peers.map((p) => p.join()))
  const onOthers = peers.slice(1).map((p) => p.next((f) => f.type === 'patch' && f.clientId === 'c0'))
  t.equal((await write(peers[0], 'm1', [{ 'e1/A': { _exists: true } }])).timestamp, 1)
  t.equal((await Promise.all(onOthers)).length, 19, 'every other client got the broadcast')
  await Promise.all(peers.map((p) => p.close()))
})

t.test('idle unload: saved, then unloaded after the last session leaves; a new connection reloads the data', async (t) => {
  const store = new MemoryStorage()
  const saves: RoomSnapshot[] = []
  let loads = 0
  let saved = gate<RoomSnapshot>()
  const storage: Storage = {
    load: async () => {
      loads++
      return store.load()
    },
    save: async (snapshot) => {
      await store.save(snapshot)
      saves.push(JSON.parse(JSON.stringify(snapshot)))
      // The unload's last save: the counter itself, not a reservation.
      if (snapshot.timestamp < COUNTER_RESERVE) saved.open(snapshot)
    }
  }
  const app = await build(t, { createStorage: () => storage, idleTimeout: 20, saveThrottleMs: 60_000 })
  const base = await listen(app)
  const a = await connectReal(base, { roomId: 'r', clientId: 'a' })
  await a.join()
  await write(a, 'm1', [{ 'e1/A': { _exists: true, v: 1 }, 'e2/A': { _exists: true } }])
  t.equal(saves.length, 1, 'the first write saved at once, reserving counters')
  t.equal(saves[0].timestamp, 1 + COUNTER_RESERVE)
  await write(a, 'm2', [{ 'e2/A': { _exists: false } }])
  t.equal(saves.length, 1, 'nothing more saved while the throttle runs')
  t.equal(loads, 1)

  await a.close()
  await saved.promise
  t.equal(saves.length, 3, 'saved on unload: the change (with a reservation), then the counter itself')
  t.equal(saves[1].timestamp, 2 + COUNTER_RESERVE)
  t.strictSame(saves[2], {
    timestamp: 2,
    state: { 'e1/A': { _exists: true, v: 1 }, 'e2/A': { _exists: false } },
    timestamps: { 'e1/A': { _exists: 1, v: 1 }, 'e2/A': { _exists: 2 } }
  })
  t.equal(app.canvasStore.getExistingRoom('r'), undefined, 'unloaded')
  await app.canvasStore.closeRoom('r')
  t.strictSame(app.canvasStore.getRoomIds(), [])

  saved = gate<RoomSnapshot>()
  const b = await connectReal(base, { roomId: 'r', clientId: 'b' })
  const diff = b.next((f) => f.type === 'patch' && f.documentPatches !== undefined)
  const synced = await b.join(0)
  t.equal(loads, 2, 'reloaded from storage')
  t.equal(synced.timestamp, 2, 'the counter survived')
  t.strictSame((await diff).documentPatches, [{ 'e1/A': { _exists: true, v: 1 }, 'e2/A': { _exists: false } }], 'data and tombstone survived')
  t.equal((await write(b, 'm3', [{ 'e1/A': { v: 3 } }])).timestamp, 3)
  await b.close()
})

t.test('a storage whose load throws: the socket closes with 1011 and storage.save is never called', async (t) => {
  let loads = 0
  let saves = 0
  const app = await build(t, {
    createStorage: () => ({
      load: async () => {
        loads++
        throw new Error('disk on fire')
      },
      save: async () => { saves++ }
    })
  })
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  a.send({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 })
  a.send({ type: 'patch', messageId: 'm1', documentPatches: [{ 'e1/A': { _exists: true } }] })
  t.equal((await a.closed).code, 1011)
  t.strictSame(a.frames, [], 'no frame was answered')
  t.equal(app.canvasStore.getExistingRoom('r'), undefined, 'no room was kept')

  const b = await connect(app, { roomId: 'r', clientId: 'b' })
  t.equal((await b.closed).code, 1011, 'the next connection tries again and fails again')
  t.equal(loads, 2)

  await app.close()
  t.equal(saves, 0, 'storage.save never called, not even at shutdown')
})

t.test('a storage whose load does not answer: the socket closes with 1011 after storageFailureTimeoutMs; the load goes on, and once it answers the room is joined', async (t) => {
  let loads = 0
  let answer: (snapshot: null) => void = () => {}
  const app = await build(t, {
    storageFailureTimeoutMs: 100,
    createStorage: () => ({
      load: () => {
        loads++
        return new Promise((resolve) => { answer = resolve })
      },
      save: async () => {}
    })
  })
  const a = await connect(app, { roomId: 'r', clientId: 'a' })
  a.send({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 })
  t.same(await a.closed, { code: 1011, reason: 'Could not load the room' })
  t.strictSame(a.frames, [], 'no frame was answered')
  const b = await connect(app, { roomId: 'r', clientId: 'b' })
  const synced = b.join()
  answer(null)
  await synced
  t.equal(loads, 1, 'the second connection waited for the same load')
  await b.close()
})

/** A storage whose saves wait for `release`; `saveStarted` resolves when the first save begins. */
function slowStorage (failFirstSave: boolean) {
  const store = new MemoryStorage()
  const started = gate()
  const release = gate()
  // Saves go through at once until the test sets `gated` (the first write of a room saves at once: it reserves counters).
  const state = { loads: 0, saves: 0, failFirstSave, gated: false }
  const storage: Storage = {
    load: async () => {
      state.loads++
      return store.load()
    },
    save: async (snapshot) => {
      if (!state.gated) return await store.save(snapshot)
      state.saves++
      started.open()
      await release.promise
      if (state.failFirstSave) {
        state.failFirstSave = false
        throw new Error('disk full')
      }
      await store.save(snapshot)
    }
  }
  return { storage, state, saveStarted: started.promise, releaseSave: () => release.open() }
}

t.test('a connection arriving while the idle unload is saving waits for that save, then loads the saved data', async (t) => {
  const { storage, state, saveStarted, releaseSave } = slowStorage(false)
  const app = await build(t, { createStorage: () => storage, idleTimeout: 20, saveThrottleMs: 60_000 })
  const base = await listen(app)
  const a = await connectReal(base, { roomId: 'r', clientId: 'a' })
  await a.join()
  await write(a, 'm1', [{ 'e1/A': { _exists: true, v: 1 } }])
  state.gated = true
  await a.close()
  await saveStarted
  t.equal(app.canvasStore.getExistingRoom('r'), undefined, 'unloading')
  // By the time the client sees the upgrade, the server has asked the manager for the room.
  const b = await connectReal(base, { roomId: 'r', clientId: 'b' })
  const diff = b.next((f) => f.type === 'patch' && f.documentPatches !== undefined)
  const synced = b.join(0)
  releaseSave()
  t.equal((await synced).timestamp, 1)
  t.strictSame((await diff).documentPatches, [{ 'e1/A': { _exists: true, v: 1 } }])
  t.equal(state.loads, 2, 'loaded afresh after the save')
  t.equal(app.canvasStore.getExistingRoom('r')!.getSessionCount(), 1)
  await b.close()
})

t.test('idle unload whose save fails: the room stays loaded with its data, and a connection arriving during that save joins it', async (t) => {
  const { storage, state, saveStarted, releaseSave } = slowStorage(true)
  const app = await build(t, { createStorage: () => storage, idleTimeout: 20, saveThrottleMs: 60_000 })
  const base = await listen(app)
  const a = await connectReal(base, { roomId: 'r', clientId: 'a' })
  await a.join()
  await write(a, 'm1', [{ 'e1/A': { _exists: true, v: 1 } }])
  state.gated = true
  await a.close()
  await saveStarted
  const b = await connectReal(base, { roomId: 'r', clientId: 'b' })
  const outcome = Promise.race([
    b.join(0).then((synced) => ({ synced })),
    b.closed.then((closed) => ({ closed }))
  ])
  releaseSave()
  const result: any = await outcome
  t.strictSame(result.closed, undefined, 'the connection is not refused')
  t.equal(result.synced?.timestamp, 1, 'it joins the kept room, data intact')
  t.equal(state.loads, 1, 'the kept room was not reloaded')
  const room = app.canvasStore.getExistingRoom('r')
  t.ok(room, 'the room is still loaded')
  t.strictSame(JSON.parse(JSON.stringify(room?.getSnapshot().state ?? null)), { 'e1/A': { _exists: true, v: 1 } })
  b.ws.terminate()
})

t.test('idle unload whose save fails: a later connection finds the room still loaded with its data', async (t) => {
  const { storage, state, saveStarted, releaseSave } = slowStorage(true)
  const app = await build(t, { createStorage: () => storage, idleTimeout: 60_000, saveThrottleMs: 60_000 })
  const base = await listen(app)
  const a = await connectReal(base, { roomId: 'r', clientId: 'a' })
  await a.join()
  await write(a, 'm1', [{ 'e1/A': { _exists: true, v: 1 } }])
  state.gated = true
  await a.close()
  const unload = app.canvasStore.closeRoom('r')
  await saveStarted
  releaseSave()
  await t.rejects(unload, /disk full/, 'closeRoom reports the failed save')
  t.ok(app.canvasStore.getExistingRoom('r'), 'kept loaded')
  const b = await connectReal(base, { roomId: 'r', clientId: 'b' })
  const diff = b.next((f) => f.type === 'patch' && f.documentPatches !== undefined)
  t.equal((await b.join(0)).timestamp, 1)
  t.strictSame((await diff).documentPatches, [{ 'e1/A': { _exists: true, v: 1 } }])
  t.equal(state.loads, 1, 'not reloaded: the unsaved data is still in memory')
  await b.close()
})

/** A room of the manager with one change made by a session that left: its unload has something to save. */
async function changedRoom (manager: RoomManager, roomId: string, storage: Storage, clock?: ReturnType<typeof fakeClock>['clock']) {
  const room = await manager.getOrCreateRoom(roomId, { createStorage: () => storage, saveThrottleMs: 60_000, ...(clock === undefined ? {} : { clock }) })
  const socket = { readyState: 1, send () {}, close () { this.readyState = 3 } }
  const sessionId = room.handleSocketConnect({ socket, clientId: 'a', permissions: 'readwrite' })
  room.handleSocketMessage(sessionId, JSON.stringify({ type: 'patch', messageId: 'm1', documentPatches: [{ 'e1/A': { _exists: true, v: 1 } }] }))
  room.handleSocketClose(sessionId)
  return room
}

t.test('shutdown during an unload whose final save fails: the room stops retrying (the process can exit)', async (t) => {
  const fake = fakeClock()
  const { storage, state, saveStarted, releaseSave } = slowStorage(true)
  const manager = new RoomManager({ idleTimeout: 60_000 })
  await changedRoom(manager, 'r', storage, fake.clock)
  state.gated = true
  const unload = manager.closeRoom('r')
  await saveStarted
  const closing = manager.closeAll()
  releaseSave()
  await t.rejects(unload, /disk full/)
  await closing
  t.equal(state.saves, 1)
  t.equal(fake.timers.size, 0, 'no retry left armed')
  fake.advance(10 * 60_000)
  t.equal(state.saves, 1, 'no save after the shutdown')
})

t.test('maxRooms counts a room being unloaded: a failed final save puts it back without passing the limit', async (t) => {
  const { storage, state, saveStarted, releaseSave } = slowStorage(true)
  const manager = new RoomManager({ idleTimeout: 60_000, maxRooms: 1 })
  t.teardown(() => manager.closeAll())
  await changedRoom(manager, 'a', storage)
  state.gated = true
  const unload = manager.closeRoom('a')
  await saveStarted
  await t.rejects(manager.getOrCreateRoom('b', { createStorage: () => new MemoryStorage() }), RoomLimitError, 'no room while a is unloading')
  releaseSave()
  await t.rejects(unload, /disk full/)
  t.strictSame(manager.getRoomIds(), ['a'], 'a is back, alone')
})

t.test('getOrCreateRoom once the manager is shutting down: a RoomManagerClosedError with a code, for a room not loaded while draining, for any once closed', async (t) => {
  const storage = () => new MemoryStorage()
  const draining = new RoomManager({ idleTimeout: 60_000 })
  const loaded = await draining.getOrCreateRoom('x', { createStorage: storage })
  const drained = draining.drain({ graceMs: 0, jitterMs: 0 })
  t.equal(await draining.getOrCreateRoom('x', { createStorage: storage }), loaded, 'a loaded room is still returned during the drain')
  const refused = await draining.getOrCreateRoom('a', { createStorage: storage }).catch((err: unknown) => err)
  t.ok(refused instanceof RoomManagerClosedError)
  t.match(refused, { name: 'RoomManagerClosedError', code: 'CANVAS_STORE_DRAINING', message: 'RoomManager is draining' })
  await drained

  const closed = new RoomManager({ idleTimeout: 60_000 })
  await closed.closeAll()
  const late = await closed.getOrCreateRoom('a', { createStorage: storage }).catch((err: unknown) => err)
  t.ok(late instanceof RoomManagerClosedError)
  t.match(late, { code: 'CANVAS_STORE_CLOSED', message: 'RoomManager is closed' })
})
