import t from 'tap'
import { Room } from '../lib/index.js'
import fc from 'fast-check'
import type { Patch } from '../lib/protocol/types.js'
import { Document, Presence, applyBufferDelta, growthOf } from '../lib/room/document.js'
import { frameBound, growthBound, jsonSize, keyOverhead, stringSize } from '../lib/room/size.js'

const plain = (value: unknown): unknown => JSON.parse(JSON.stringify(value))

t.test('create, merge per field, counter once per frame', async (t) => {
  const doc = new Document()
  t.equal(doc.timestamp, 0)
  doc.applyFrame([{ 'e1/Pos': { _exists: true, x: 1, y: 2 } }])
  t.equal(doc.timestamp, 1)
  doc.applyFrame([{ 'e1/Pos': { x: 5 } }, { 'e2/Pos': { _exists: true, x: 0 } }])
  t.equal(doc.timestamp, 2, 'several patches in one frame advance the counter once')
  t.same(plain(doc.get('e1/Pos')), { _exists: true, x: 5, y: 2 })
  t.same(plain(doc.getStamps('e1/Pos')), { _exists: 1, x: 2, y: 1 })
  t.equal(doc.applyFrame([{}]), null, 'an empty patch is not a document frame')
  t.equal(doc.applyFrame([]), null)
  t.equal(doc.timestamp, 2)
})

t.test('no deep merge: a field value is replaced whole', async (t) => {
  const doc = new Document()
  doc.applyFrame([{ k: { _exists: true, style: { a: 1, b: 2 } } }])
  doc.applyFrame([{ k: { style: { a: 3 } } }])
  t.same(plain(doc.get('k')), { _exists: true, style: { a: 3 } })
})

t.test('tombstone, partial update after delete, re-create', async (t) => {
  const doc = new Document()
  doc.applyFrame([{ k: { _exists: true, x: 1, y: 1 } }])
  doc.applyFrame([{ k: { _exists: false } }])
  t.same(plain(doc.get('k')), { _exists: false })
  t.same(plain(doc.getStamps('k')), { _exists: 2 }, 'a tombstone resets the field timestamps')
  const stored = doc.applyFrame([{ k: { x: 9 } }])
  t.same(stored, [], 'a late partial update is dropped')
  t.equal(doc.timestamp, 3, 'but the frame still advances the counter')
  t.same(plain(doc.get('k')), { _exists: false }, 'the deletion is not resurrected')
  doc.applyFrame([{ k: { _exists: true, x: 7 } }])
  t.same(plain(doc.get('k')), { _exists: true, x: 7 }, 're-created fresh, no old fields')
  t.same(plain(doc.getStamps('k')), { _exists: 4, x: 4 })
  t.same(doc.applyFrame([{ missing: { x: 1 } }]), [], 'a partial update to a missing key is dropped')
  t.equal(doc.get('missing'), undefined)
})

t.test('buffer deltas: growing, shrinking, out-of-range runs', async (t) => {
  t.same(applyBufferDelta(undefined, { __buf: 1, len: 3, runs: [[1, [5]]] }), [0, 5, 0])
  t.same(applyBufferDelta([1, 2], { __buf: 1, len: 4, runs: [[3, [9]]] }), [1, 2, 0, 9], 'grows with zeros')
  t.same(applyBufferDelta([1, 2, 3, 4], { __buf: 1, len: 2, runs: [] }), [1, 2], 'shrinks')
  t.same(applyBufferDelta([1, 2, 3], { __buf: 1, len: 3, runs: [[-1, [7, 8]], [2, [6, 6, 6]]] }), [8, 2, 6], 'indexes outside [0, len) ignored')
  const doc = new Document()
  doc.applyFrame([{ k: { _exists: true, pts: [1, 2, 3] } }])
  doc.applyFrame([{ k: { pts: { __buf: 1, len: 5, runs: [[1, [20]], [4, [50]]] } } }])
  t.same(plain(doc.get('k')), { _exists: true, pts: [1, 20, 3, 0, 50] }, 'materialized against the stored array')
  doc.applyFrame([{ j: { _exists: true, pts: { __buf: 1, len: 2, runs: [[0, [4, 4]]] } } }])
  t.same(plain(doc.get('j')), { _exists: true, pts: [4, 4] }, 'a delta on create starts from nothing')
  t.same((plain(doc.changesSince(0).patch) as any).k, { _exists: true, pts: [1, 20, 3, 0, 50] }, 'diffs hold whole arrays')
})

t.test('changesSince: only newer fields, tombstones included', async (t) => {
  const doc = new Document()
  doc.applyFrame([{ a: { _exists: true, x: 1, y: 1 }, b: { _exists: true, x: 1 } }]) // 1
  doc.applyFrame([{ a: { x: 2 } }]) // 2
  doc.applyFrame([{ b: { _exists: false } }]) // 3
  doc.applyFrame([{ c: { _exists: true, v: 1 } }]) // 4
  t.same(plain(doc.changesSince(4).patch), {})
  t.same(plain(doc.changesSince(3).patch), { c: { _exists: true, v: 1 } })
  t.same(plain(doc.changesSince(2).patch), { b: { _exists: false }, c: { _exists: true, v: 1 } })
  t.same(plain(doc.changesSince(1).patch), { a: { x: 2 }, b: { _exists: false }, c: { _exists: true, v: 1 } })
  t.same(plain(doc.changesSince(0).patch), { a: { _exists: true, x: 2, y: 1 }, b: { _exists: false }, c: { _exists: true, v: 1 } })
  t.equal(doc.changesSince(0).keys, 3)
})

t.test('changesSince: a key created since, or a create merged into it since, is sent whole', async (t) => {
  const doc = new Document()
  doc.applyFrame([{ a: { _exists: true, x: 1, y: 7, color: 'red' } }])
  doc.applyFrame([{ a: { x: 2 } }])
  t.same(plain(doc.changesSince(1).patch), { a: { x: 2 } }, 'an update: the newer fields alone')
  // A create that names some fields of a live key merges into it (the other fields are kept, with their older
  // stamps): the published client would read `{ _exists: true, x: 5 }` as the whole value and reset y and color.
  doc.applyFrame([{ a: { _exists: true, x: 5 } }])
  t.same(plain(doc.get('a')), { _exists: true, x: 5, y: 7, color: 'red' })
  t.same(plain(doc.changesSince(2).patch), { a: { _exists: true, x: 5, y: 7, color: 'red' } })
  t.same(plain(doc.changesSince(1).patch), { a: { _exists: true, x: 5, y: 7, color: 'red' } })
})

t.test('changesSince stays right across many updates (log compaction)', async (t) => {
  const doc = new Document()
  const keys = 50
  for (let i = 0; i < keys; i++) doc.applyFrame([{ [`k${i}`]: { _exists: true, v: 0 } }])
  // The log is built on the first diff since T > 0, then kept up to date.
  t.same(Object.keys(doc.changesSince(keys - 2).patch), ['k48', 'k49'])
  const rounds = 3000 // enough log lines to trigger compaction more than once
  for (let round = 1; round <= rounds; round++) {
    doc.applyFrame([{ [`k${round % keys}`]: { v: round } }])
  }
  const since = doc.timestamp - 10
  const { patch, keys: n } = doc.changesSince(since)
  // The last ten frames each touched a different key.
  const expected: Record<string, unknown> = {}
  for (let round = rounds - 9; round <= rounds; round++) expected[`k${round % keys}`] = { v: round }
  t.same(plain(patch), expected)
  t.equal(n, 10)
  t.equal(doc.changesSince(0).keys, keys)
})

t.test('changesSince: the first diff since T > 0 after updates in any order (the log is built by sorting on last stamps)', async (t) => {
  const doc = new Document()
  const keys = 40
  doc.applyFrame([Object.fromEntries(Array.from({ length: keys }, (_, i) => [`k${i}`, { _exists: true, v: 0 }]))])
  // Keys change in an order unrelated to the order they were created in, some of them twice.
  const order = Array.from({ length: 60 }, (_, i) => (i * 17) % keys)
  for (const [n, i] of order.entries()) doc.applyFrame([{ [`k${i}`]: { v: n + 1 } }])
  for (const since of [1, 20, 45, 60]) {
    const expected: Record<string, unknown> = {}
    for (const [n, i] of order.entries()) if (n + 2 > since) expected[`k${i}`] = { v: n + 1 }
    const fresh = Document.fromSnapshot(plain(doc.toSnapshot()) as any)
    t.same(plain(fresh.changesSince(since).patch), expected, `since ${since}, on a reloaded copy whose log is built now`)
  }
  t.same(plain(doc.changesSince(45).patch), Object.fromEntries(order.slice(44).map((i, n) => [`k${i}`, { v: n + 45 }])))
})

t.test('changesSince: the log is right with a counter too large to sort by counter * keys exactly', async (t) => {
  const big = 2 ** 52
  const doc = Document.fromSnapshot({
    timestamp: big,
    state: { a: { _exists: true }, b: { _exists: true }, c: { _exists: true } },
    timestamps: { a: { _exists: big }, b: { _exists: big - 2 }, c: { _exists: big - 1 } }
  })
  t.same(Object.keys(doc.changesSince(big - 2).patch).sort(), ['a', 'c'])
  t.same(Object.keys(doc.changesSince(big - 1).patch), ['a'])
})

t.test('snapshot round trip keeps tombstones, stamps and the counter', async (t) => {
  const doc = new Document()
  doc.applyFrame([{ a: { _exists: true, x: 1 }, b: { _exists: true, x: 1 } }])
  doc.applyFrame([{ b: { _exists: false } }])
  doc.applyFrame([{ a: { x: 3 } }])
  const snap = plain(doc.toSnapshot()) as any
  t.same(snap, {
    timestamp: 3,
    state: { a: { _exists: true, x: 3 }, b: { _exists: false } },
    timestamps: { a: { _exists: 1, x: 3 }, b: { _exists: 2 } }
  })
  const back = Document.fromSnapshot(snap)
  t.equal(back.timestamp, 3)
  t.same(plain(back.changesSince(1).patch), { b: { _exists: false }, a: { x: 3 } }, 'diff order and content survive the reload')
  back.applyFrame([{ b: { x: 1 } }])
  t.same(plain(back.get('b')), { _exists: false }, 'a reloaded deletion still refuses partial updates')
})

t.test('fromSnapshot tolerates odd input', async (t) => {
  t.equal(Document.fromSnapshot(null).timestamp, 0)
  const doc = Document.fromSnapshot({ timestamp: 2, state: { a: { _exists: true, x: 1 }, bad: 5 as any }, timestamps: { a: { x: 9 } } })
  t.equal(doc.timestamp, 9, 'the counter is never behind a stored stamp')
  t.same(plain(doc.getStamps('a')), { _exists: 2, x: 9 }, 'missing stamps take the snapshot counter')
  t.equal(doc.get('bad'), undefined)
})

t.test('__proto__ keys and fields stay ordinary data', async (t) => {
  const doc = new Document()
  const patch = JSON.parse('{"__proto__":{"_exists":true,"polluted":1},"k":{"_exists":true,"__proto__":{"polluted":2}}}')
  doc.applyFrame([patch])
  t.equal(({} as any).polluted, undefined, 'Object.prototype untouched')
  t.same(Object.keys(doc.get('__proto__')!), ['_exists', 'polluted'])
  t.ok(Object.hasOwn(doc.get('k')!, '__proto__'))
  const snap = JSON.parse(JSON.stringify(doc.toSnapshot()))
  const back = Document.fromSnapshot(snap)
  t.equal(({} as any).polluted, undefined)
  t.equal(back.size, 2)
})

t.test('records are frozen; keys stamped by one frame with the same fields share one stamps record', async (t) => {
  const doc = new Document()
  doc.applyFrame([{ a: { _exists: true, x: 1 }, b: { _exists: true, x: 2 }, c: { _exists: true, y: 3 } }])
  t.ok(Object.isFrozen(doc.get('a')) && Object.isFrozen(doc.getStamps('a')))
  t.equal(doc.getStamps('a'), doc.getStamps('b'), 'same fields, same frame: one record')
  t.not(doc.getStamps('a'), doc.getStamps('c'), 'other fields: another record')
  doc.applyFrame([{ a: { x: 5 }, b: { x: 6 } }, { c: { _exists: false } }])
  t.equal(doc.getStamps('a'), doc.getStamps('b'), 'merged from the same record with the same fields: shared again')
  t.same(plain(doc.getStamps('a')), { _exists: 1, x: 2 })
  t.same(plain(doc.getStamps('c')), { _exists: 2 })
  const before = doc.getStamps('b')
  doc.applyFrame([{ b: { x: 7 } }])
  t.same(plain(doc.getStamps('a')), { _exists: 1, x: 2 }, 'changing one key never changes a record it shared')
  t.same(plain(before), { _exists: 1, x: 2 })
  t.same(plain(doc.getStamps('b')), { _exists: 1, x: 3 })
  const snap = doc.toSnapshot()
  t.equal(snap.state.a, doc.get('a'), 'snapshots share the frozen records')
  doc.applyFrame([{ a: { x: 8 } }])
  t.same(plain(snap.state.a), { _exists: true, x: 5 }, 'and later changes do not reach them')
})

t.test('a stored record holds its fields and nothing else: its stamps and size are invisible to enumeration, JSON and deep equality', async (t) => {
  const doc = new Document()
  doc.applyFrame([{ k: { _exists: true, x: 1, constructor: { __buf: 1, len: 2, runs: [[1, [7]]] } } }])
  const value = doc.get('k')!
  t.strictSame(Reflect.ownKeys(value), ['_exists', 'x', 'constructor'], 'own keys: the fields, no symbols')
  t.strictSame(value.constructor, [0, 7], 'a field named constructor is data (a buffer delta applied to nothing)')
  t.equal(Object.getPrototypeOf(Object.getPrototypeOf(value)), null, 'nothing but an empty object up the chain')
  t.equal(JSON.stringify(value), '{"_exists":true,"x":1,"constructor":[0,7]}')
  t.strictSame(Reflect.ownKeys({ ...value }), ['_exists', 'x', 'constructor'], 'a spread copies the fields alone')
  t.ok(Object.isFrozen(value))
  t.same(plain(doc.getStamps('k')), { _exists: 1, x: 1, constructor: 1 }, 'the stamps are still there')
  doc.applyFrame([{ k: { x: 2 } }])
  t.same(plain(doc.getStamps('k')), { _exists: 1, x: 2, constructor: 1 })
  t.equal(doc.bytes, jsonSize(plain(doc.toSnapshot().state)) - 2, 'and the size, as JSON measures it')
})

t.test('Room#getSnapshot hands out plain copies: changing one never reaches the room', async (t) => {
  const room = new Room({ roomId: 'r' })
  const socket = { send () {}, close () {} }
  const id = room.handleSocketConnect({ socket, clientId: 'a', permissions: 'readwrite' })
  const pts = Array.from({ length: 2000 }, (_, i) => i)
  room.handleSocketMessage(id, JSON.stringify({ type: 'patch', messageId: 'm', documentPatches: [{ k: { _exists: true, x: 1, pts, o: { y: 1 } } }] }))
  const bytes = room.documentBytes
  const copy = room.getSnapshot()
  t.notOk(Object.isFrozen(copy.state.k))
  copy.state.k.x = 99
  copy.timestamps.k.x = 99
  // Arrays and nested objects too: the room's own arrays are never changed in place (their sizes are remembered).
  ;(copy.state.k.pts as string[]).fill('x'.repeat(50))
  ;(copy.state.k.o as { y: number }).y = 2
  t.same(room.getSnapshot(), { timestamp: 1, state: { k: { _exists: true, x: 1, pts, o: { y: 1 } } }, timestamps: { k: { _exists: 1, x: 1, pts: 1, o: 1 } } })
  t.equal(room.documentBytes, bytes)
})

t.test('stamps records are shared only between identical field lists, whatever characters field names hold', async (t) => {
  const doc = new Document()
  doc.applyFrame([{ 'e1/A': { _exists: true, 'a\u0000b': 1 }, 'e2/A': { _exists: true, a: 1, b: 2 } }])
  t.same(plain(doc.getStamps('e2/A')), { _exists: 1, a: 1, b: 1 })
  doc.applyFrame([{ other: { _exists: true } }])
  t.same(plain(doc.changesSince(0).patch), plain(doc.toSnapshot().state), 'diff since 0 is the whole document')
  t.same(Object.keys(doc.changesSince(0.5).patch).sort(), ['e1/A', 'e2/A', 'other'])
})

t.test('fromSnapshot stamps every field at least 1, so that a diff since 0 holds it; values without fields are skipped', async (t) => {
  const doc = Document.fromSnapshot({ timestamp: 0, state: { k: { _exists: true, v: 1 }, empty: {} }, timestamps: {} } as any)
  t.equal(doc.timestamp, 1)
  t.same(plain(doc.getStamps('k')), { _exists: 1, v: 1 })
  t.equal(doc.get('empty'), undefined)
  t.same(plain(doc.changesSince(0).patch), { k: { _exists: true, v: 1 } })
})

t.test('sizes: document and presence bytes always equal a fresh count, growth predicts each frame exactly, growthBound and frameBound never underestimate it', async (t) => {
  const keys = fc.constantFrom('a', 'b', 'e1/Shape', '__proto__')
  // One-digit numbers are where the estimate (8 per number) is furthest above the text that carries it.
  const scalar = fc.oneof(fc.integer(), fc.nat(9), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.string({ maxLength: 12 }), fc.boolean(), fc.constant(null))
  const value = fc.oneof(scalar, fc.array(scalar, { maxLength: 6 }), fc.array(fc.nat(9), { maxLength: 40 }), fc.dictionary(fc.string({ maxLength: 4 }), scalar, { maxKeys: 3 }))
  const buffer = fc.record({
    __buf: fc.constant(1),
    len: fc.nat(12),
    runs: fc.array(fc.tuple(fc.integer({ min: -2, max: 14 }), fc.array(scalar, { maxLength: 4 })), { maxLength: 3 })
  })
  const fields = fc.dictionary(fc.constantFrom('x', 'y', 'pts', 'style', 'constructor'), fc.oneof(value, buffer), { maxKeys: 4 })
  const component = fc.oneof(
    fields.map((f) => ({ ...f, _exists: true })),
    fields,
    fc.constant({ _exists: false })
  )
  const frame = fc.array(fc.dictionary(keys, component, { maxKeys: 3 }), { minLength: 1, maxLength: 3 })
  fc.assert(fc.property(fc.array(frame, { maxLength: 12 }), (frames) => {
    const doc = new Document()
    const presence = new Presence()
    for (const raw of frames) {
      // As the server sees frames: parsed JSON, where __proto__ is an ordinary key.
      const patches = JSON.parse(JSON.stringify(raw)) as Patch[]
      const before = doc.bytes
      const predicted = doc.growth(patches)
      if (growthBound(patches) < predicted) return false
      // The cheaper bound, from the frame's length alone, is never below the one read from its values.
      let items = 0
      for (const patch of patches) {
        for (const component of Object.values(patch)) {
          for (const field of Object.values(component) as any[]) if (field?.__buf === 1) items += field.len
        }
      }
      if (frameBound(JSON.stringify(patches).length, items) < growthBound(patches)) return false
      doc.applyFrame(patches)
      if (doc.bytes - before !== predicted) return false
      let recount = 0
      for (const [key, stored] of Object.entries(doc.toSnapshot().state)) recount += keyOverhead(key) + jsonSize(plain(stored))
      if (doc.bytes !== recount) return false
      // The same frames as presence, where a deleted key is forgotten rather than kept.
      const growth = growthOf(presence, patches, false)
      if (growth > growthBound(patches)) return false
      const presenceBefore = presence.bytes
      presence.apply(patches)
      if (presence.bytes - presenceBefore !== growth) return false
      let presenceRecount = 0
      for (const [key, stored] of presence) presenceRecount += keyOverhead(key) + jsonSize(plain(stored))
      if (presence.bytes !== presenceRecount) return false
    }
    // Only numbers are estimated (8 for 1 to 24 characters): the real JSON is never more than 3 times the estimate.
    if (JSON.stringify(doc.changesSince(0).patch).length > 3 * doc.bytes + 2) return false
    const reloaded = Document.fromSnapshot(JSON.parse(JSON.stringify(doc.toSnapshot())))
    return reloaded.bytes === doc.bytes
  }), { seed: 7, numRuns: 500 })
  t.pass('500 random frame sequences')
})

t.test('stringSize is the length JSON.stringify writes: escapes, quotes, surrogate pairs and lone surrogates', async (t) => {
  const unit = fc.oneof(
    fc.integer({ min: 0x20, max: 0x7e }),
    fc.integer({ min: 0, max: 0x1f }),
    fc.constantFrom(0x22, 0x5c, 0x2028, 0xe9, 0xffff),
    fc.integer({ min: 0xd800, max: 0xdfff })
  ).map((c) => String.fromCharCode(c))
  fc.assert(fc.property(fc.string({ unit, maxLength: 20 }), (text) => stringSize(text) === JSON.stringify(text).length), { seed: 3, numRuns: 2000 })
  t.equal(stringSize('\u{1F600}'), 4, 'a surrogate pair is written as is')
  t.equal(stringSize('\u0001'), 8)
  t.pass('2,000 random strings')
})

t.test('a buffer delta to a long array is sized from the items it changes: the same size a full measurement gives, the same array the rules give', async (t) => {
  /** The rules, written plainly: carry min(old, len) items, zero-fill to len, write the runs inside [0, len). */
  const byTheRules = (old: unknown[], len: number, runs: Array<[number, unknown[]]>): unknown[] => {
    const out: unknown[] = []
    for (let i = 0; i < len; i++) out.push(i < old.length ? old[i] : 0)
    for (const [offset, values] of runs) values.forEach((v, j) => { if (offset + j >= 0 && offset + j < len) out[offset + j] = v })
    return out
  }
  const item = fc.oneof(fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.string({ maxLength: 6 }), fc.constant(null), fc.boolean(), fc.array(fc.integer(), { maxLength: 3 }))
  const delta = fc.record({
    len: fc.integer({ min: 0, max: 4000 }),
    runs: fc.array(fc.tuple(fc.integer({ min: -50, max: 4100 }), fc.array(item, { maxLength: 40 })), { maxLength: 6 })
  })
  fc.assert(fc.property(fc.array(item, { minLength: 1024, maxLength: 3000 }), fc.array(delta, { minLength: 1, maxLength: 6 }), (start, deltas) => {
    let current: unknown[] = start
    jsonSize(current) // measured once, as storing it does
    for (const { len, runs } of deltas) {
      const next = applyBufferDelta(current, { __buf: 1, len, runs })
      const expected = byTheRules(current, len, runs)
      if (JSON.stringify(next) !== JSON.stringify(expected)) return false
      // A copy is not remembered: measured item by item.
      if (jsonSize(next) !== jsonSize(expected)) return false
      current = next
    }
    return true
  }), { numRuns: 150, seed: 5 })
  t.pass('sizes and arrays agree over 150 runs of deltas (growing, cutting, runs out of range)')
})
