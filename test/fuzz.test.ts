/**
 * Property-based fuzzing of one Room: random sequences of valid, malformed
 * and hostile frames from several sessions (readwrite and readonly, shared
 * clientIds), joins and leaves, with the protocol's invariants checked after
 * every step against a small independent model of PROTOCOL.md's data rules.
 *
 * The room has no storage, so acks are immediate and everything is
 * synchronous. Reproduce a failure with the seed fast-check prints
 * (FUZZ_SEED=<seed> FUZZ_RUNS=<n> node --import tsx test/fuzz.test.ts).
 */
import t from 'tap'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { Room } from '../lib/room/room.js'

const SEED = Number(process.env.FUZZ_SEED ?? 0x5eed2)
const RUNS = Number(process.env.FUZZ_RUNS ?? 1000)

// ------------------------------------------------------------ JSON builder
// Frames are built as text from a small JSON tree so that hostile keys such as
// `__proto__` become own properties (as JSON.parse makes them) instead of being
// swallowed by an object literal, and so that counterexamples print as JSON.

/** An object as an ordered list of entries (duplicates allowed: JSON.parse keeps the last). */
class Obj {
  constructor (readonly entries: Array<[string, J]>) {}
  [fc.toStringMethod] (): string { return short(encode(this, 0)) }
}

/** Literal JSON (or non-JSON) text; `depth` is its nesting when it is a deeply nested value. */
class Raw {
  constructor (readonly text: string, readonly depth = 0) {}
  [fc.toStringMethod] (): string { return `Raw(${short(JSON.stringify(this.text))})` }
}

/** A `lastTimestamp` relative to the room counter when the frame is sent (floored at 0). */
class Lts {
  constructor (readonly delta: number) {}
  [fc.toStringMethod] (): string { return `counter${this.delta < 0 ? '' : '+'}${this.delta}` }
}

type J = null | boolean | number | string | J[] | Obj | Raw | Lts

/** Encoded objects that hold no Lts (an Lts only ever sits directly in a frame). */
const encoded = new WeakMap<Obj, string>()

function encode (j: J, counter: number): string {
  if (j instanceof Obj) {
    let text = encoded.get(j)
    if (text !== undefined) return text
    text = `{${j.entries.map(([k, v]) => `${JSON.stringify(k)}:${encode(v, counter)}`).join(',')}}`
    if (!j.entries.some(([, v]) => v instanceof Lts)) encoded.set(j, text)
    return text
  }
  if (j instanceof Raw) return j.text
  if (j instanceof Lts) return String(Math.max(0, counter + j.delta))
  if (Array.isArray(j)) return `[${j.map((v) => encode(v, counter)).join(',')}]`
  return JSON.stringify(j)
}

function short (text: string, max = 400): string {
  return text.length <= max ? text : `${text.slice(0, max)}... (${text.length} chars)`
}

// -------------------------------------------------------------- generators

type Perm = 'readwrite' | 'readonly'
/** What the frame is, decided by how it was generated (never by asking the server). */
type Cls = 'patch' | 'reconnect' | 'invalid' | 'mismatch' | 'ignore'
interface FrameGen { cls: Cls, body: J }
interface JoinAction { k: 'join', clientId: string, perm: Perm }
/** How the frame reaches the room: a string, or the Buffer, ArrayBuffer or Buffer[] (fragments) that ws hands over. */
type Wire = 'string' | 'buffer' | 'arraybuffer' | 'fragments'
type Action = JoinAction | { k: 'leave', s: number, how: 'close' | 'error' } | { k: 'send', s: number, f: FrameGen, wire: Wire }
interface Scenario { initial: JoinAction[], steps: Action[] }

const HOSTILE = ['__proto__', 'constructor', 'prototype']
/** Keys with line terminators: a `^(.*)$` key pattern does not match them, so a validator built on it skips their values. */
const LINE_BREAKS = ['e3\nPos', 'a\u2028b']
const KEYS = ['e1/Pos', 'e2/Pos', 'e1/Color', 'SINGLETON/camera', '', 'toString', ...HOSTILE, ...LINE_BREAKS]
const FIELDS = ['x', 'y', 'pts', 'label', 'polluted', 'hasOwnProperty', ...HOSTILE, ...LINE_BREAKS]

const scalar: fc.Arbitrary<J> = fc.oneof(
  fc.integer({ min: -100, max: 100 }),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.string({ maxLength: 6 }),
  fc.boolean(),
  fc.constant(null)
)

/** Plain nested values, with hostile keys inside (never `__buf`). */
const nested: fc.Arbitrary<J> = fc.letrec<{ node: J }>((tie) => ({
  node: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    scalar,
    fc.array(tie('node'), { maxLength: 3 }),
    fc.array(fc.tuple(fc.constantFrom(...FIELDS), tie('node')), { maxLength: 3 }).map((e) => new Obj(e))
  )
})).node

/**
 * Deeply nested arrays or `{"__proto__":{"__proto__":...}}`: mostly a few
 * levels, sometimes thousands (arrays only past 1000 levels, to keep frames small).
 */
const deep: fc.Arbitrary<J> = fc.tuple(
  fc.oneof(
    { weight: 8, arbitrary: fc.integer({ min: 2, max: 40 }) },
    { weight: 1, arbitrary: fc.integer({ min: 40, max: 400 }) },
    { weight: 1, arbitrary: fc.integer({ min: 1000, max: 6000 }) }
  ),
  fc.boolean()
).map(([depth, arrays]) => new Raw(arrays || depth > 1000 ? '['.repeat(depth) + ']'.repeat(depth) : '{"__proto__":'.repeat(depth) + '1' + '}'.repeat(depth), depth))

/**
 * Nesting past which a server may refuse a value instead of storing it (with
 * an `error` frame, applying nothing); storing it is fine too, crashing is not.
 */
const MAY_REFUSE_DEPTH = 32

/** Deepest Raw value in a frame body. */
function rawDepth (j: J): number {
  if (j instanceof Raw) return j.depth
  if (j instanceof Obj) return Math.max(0, ...j.entries.map(([, v]) => rawDepth(v)))
  if (Array.isArray(j)) return Math.max(0, ...j.map(rawDepth))
  return 0
}

/** Big, but not so big that a thousand runs get slow. */
const hugeString: fc.Arbitrary<J> = fc.tuple(fc.integer({ min: 1000, max: 4000 }), fc.constantFrom('x', 'é', '"', '\u2028', '\\'))
  .map(([n, c]) => c.repeat(n))

/** Objects that look a bit like buffer deltas but are plain values (`__buf` is not 1). */
const fakeBuffer: fc.Arbitrary<J> = fc.constantFrom<J>(
  new Obj([['__buf', 2], ['len', 3], ['runs', []]]),
  new Obj([['__buf', '1'], ['len', 3]]),
  new Obj([['__buf', true]]),
  new Obj([['__buf', 0], ['len', -1], ['runs', 'x']]),
  new Obj([['__buf', null]])
)

const bufferDelta: fc.Arbitrary<J> = fc.record({
  len: fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 0, max: 10 }) }, { weight: 1, arbitrary: fc.constantFrom(0, 64, 300) }),
  runs: fc.array(fc.tuple(
    fc.oneof({ weight: 5, arbitrary: fc.integer({ min: -4, max: 12 }) }, { weight: 1, arbitrary: fc.constantFrom(-1e15, 1e15, 2 ** 31, -(2 ** 53), 1e300) }),
    fc.array(fc.oneof({ weight: 4, arbitrary: fc.integer({ min: -9, max: 9 }) }, { weight: 1, arbitrary: scalar }), { maxLength: 5 })
  ), { maxLength: 3 }),
  extra: fc.boolean()
}).map(({ len, runs, extra }) => new Obj([
  ['__buf', 1],
  ['len', len],
  ['runs', runs.map(([offset, values]): J => [offset, values])],
  ...(extra ? [['note', 'extra'] as [string, J]] : [])
]))

/** Claims to be a buffer delta (`__buf: 1`) but is not a well-formed one. */
const badBufferDelta: fc.Arbitrary<J> = fc.constantFrom(
  '{"__buf":1,"len":-1,"runs":[]}',
  '{"__buf":1,"len":10000001,"runs":[]}',
  '{"__buf":1,"len":1e12,"runs":[[0,[1]]]}',
  '{"__buf":1,"len":2.5,"runs":[]}',
  '{"__buf":1,"len":"3","runs":[]}',
  '{"__buf":1,"len":null,"runs":[]}',
  '{"__buf":1,"runs":[]}',
  '{"__buf":1,"len":2}',
  '{"__buf":1}',
  '{"__buf":1,"len":2,"runs":{}}',
  '{"__buf":1,"len":2,"runs":"[[0,[1]]]"}',
  '{"__buf":1,"len":2,"runs":null}',
  '{"__buf":1,"len":2,"runs":[[0]]}',
  '{"__buf":1,"len":2,"runs":[[0,5]]}',
  '{"__buf":1,"len":2,"runs":[["0",[1]]]}',
  '{"__buf":1,"len":2,"runs":[[0.5,[1]]]}',
  '{"__buf":1,"len":2,"runs":[[0,[1],2]]}',
  '{"__buf":1,"len":2,"runs":[null]}',
  '{"__buf":1,"len":2,"runs":[{"0":0,"1":[1]}]}'
).map((text) => new Raw(text))

const fieldValue: fc.Arbitrary<J> = fc.oneof(
  { weight: 12, arbitrary: scalar },
  { weight: 4, arbitrary: nested },
  { weight: 8, arbitrary: bufferDelta },
  { weight: 2, arbitrary: fakeBuffer },
  { weight: 1, arbitrary: deep },
  { weight: 1, arbitrary: hugeString }
)

const component: fc.Arbitrary<Obj> = fc.tuple(
  fc.constantFrom<'true' | 'false' | 'absent'>('true', 'false', 'absent'),
  fc.array(fc.tuple(fc.constantFrom(...FIELDS), fieldValue), { maxLength: 3 })
).map(([exists, fields]) => new Obj(exists === 'absent' ? fields : [['_exists', exists === 'true'], ...fields]))

const patch: fc.Arbitrary<Obj> = fc.array(fc.tuple(fc.constantFrom(...KEYS), component), { maxLength: 3 }).map((e) => new Obj(e))
const patches: fc.Arbitrary<J[]> = fc.array(patch, { maxLength: 3 })

const messageId: fc.Arbitrary<string> = fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom(...HOSTILE))

/** Extra top-level fields a hostile client adds; the schema lets unknown fields through. */
const hostileTop: fc.Arbitrary<Array<[string, J]>> = fc.constantFrom<Array<[string, J]>>(
  [],
  [['__proto__', new Obj([['polluted', 'yes']])]],
  [['constructor', new Obj([['prototype', new Obj([['polluted', 'yes']])]])], ['prototype', new Obj([['polluted', 'yes']])]]
)

function optional (name: string, value: J | undefined): Array<[string, J]> {
  return value === undefined ? [] : [[name, value]]
}

const validPatch: fc.Arbitrary<FrameGen> = fc.record({
  id: messageId,
  docs: fc.option(patches, { nil: undefined }),
  ephs: fc.option(patches, { nil: undefined }),
  extra: hostileTop
}).map(({ id, docs, ephs, extra }) => ({
  cls: 'patch',
  body: new Obj([['type', 'patch'], ['messageId', id], ...optional('documentPatches', docs), ...optional('ephemeralPatches', ephs), ...extra])
}))

const lastTimestamp: fc.Arbitrary<J> = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: -3, max: 3 }).map((d) => new Lts(d)) },
  { weight: 1, arbitrary: fc.constantFrom<J>(0, 0.5, 1e308) }
)

const validReconnect: fc.Arbitrary<FrameGen> = fc.record({
  lts: lastTimestamp,
  docs: fc.option(patches, { nil: undefined }),
  ephs: fc.option(patches, { nil: undefined }),
  extra: hostileTop
}).map(({ lts, docs, ephs, extra }) => ({
  cls: 'reconnect',
  body: new Obj([['type', 'reconnect'], ['lastTimestamp', lts], ['protocolVersion', 2], ...optional('documentPatches', docs), ...optional('ephemeralPatches', ephs), ...extra])
}))

/** A patch that breaks the schema. */
const badPatch: fc.Arbitrary<J> = fc.oneof(
  fc.constantFrom<J>(5, null, 'x', true, [], [new Obj([])]),
  // a component value that is not an object (placed last: it wins over a duplicate key)
  fc.tuple(patch, fc.constantFrom(...KEYS), fc.constantFrom<J>(5, null, 'x', true, [1], []))
    .map(([p, k, v]) => new Obj([...p.entries, [k, v]])),
  // a malformed buffer delta among valid fields
  fc.tuple(patch, fc.constantFrom(...KEYS), fc.constantFrom(...FIELDS), badBufferDelta, fc.boolean())
    .map(([p, k, f, b, exists]) => new Obj([...p.entries, [k, new Obj([...(exists ? [['_exists', true] as [string, J]] : []), ['x', 1], [f, b]])]]))
)

/** A patch list that breaks the schema, possibly after valid patches. */
const badPatches: fc.Arbitrary<J> = fc.oneof(
  fc.constantFrom<J>(new Obj([]), 'x', 5, null, true, new Obj([['0', new Obj([])]])),
  fc.tuple(patches, badPatch, patches).map(([a, b, c]) => [...a, b, ...c])
)

const invalidFrame: fc.Arbitrary<FrameGen> = fc.oneof(
  // patch: messageId missing or not a string
  fc.tuple(fc.constantFrom<J | 'absent'>('absent', 5, null, true, new Obj([]), ['m']), fc.option(patches, { nil: undefined }), fc.option(patches, { nil: undefined }))
    .map(([id, docs, ephs]) => new Obj([['type', 'patch'], ...(id === 'absent' ? [] : [['messageId', id] as [string, J]]), ...optional('documentPatches', docs), ...optional('ephemeralPatches', ephs)])),
  // patch: a bad document or ephemeral patch list, the other one valid
  fc.tuple(messageId, fc.boolean(), badPatches, fc.option(patches, { nil: undefined }))
    .map(([id, inDocs, bad, other]) => new Obj([
      ['type', 'patch'], ['messageId', id],
      ...optional(inDocs ? 'documentPatches' : 'ephemeralPatches', bad),
      ...optional(inDocs ? 'ephemeralPatches' : 'documentPatches', other)
    ])),
  // reconnect (version 2): bad lastTimestamp
  fc.tuple(fc.constantFrom<J | 'absent'>('absent', '3', -1, -0.5, null, true, new Obj([]), [1]), fc.option(patches, { nil: undefined }))
    .map(([lts, docs]) => new Obj([['type', 'reconnect'], ['protocolVersion', 2], ...(lts === 'absent' ? [] : [['lastTimestamp', lts] as [string, J]]), ...optional('documentPatches', docs)])),
  // reconnect (version 2): bad patches
  fc.tuple(lastTimestamp, fc.boolean(), badPatches)
    .map(([lts, inDocs, bad]) => new Obj([['type', 'reconnect'], ['lastTimestamp', lts], ['protocolVersion', 2], [inDocs ? 'documentPatches' : 'ephemeralPatches', bad]])),
  // auth-refresh: token missing or not a string
  fc.constantFrom<J | 'absent'>('absent', 5, null, new Obj([]), ['t'])
    .map((token) => new Obj([['type', 'auth-refresh'], ...(token === 'absent' ? [] : [['token', token] as [string, J]])]))
).map((body) => ({ cls: 'invalid', body }))

/** A reconnect with another protocol version, whatever its other fields. */
const mismatch: fc.Arbitrary<FrameGen> = fc.tuple(
  fc.constantFrom<J | 'absent'>('absent', 1, 3, '2', null, 2.5, 0, -2, new Obj([]), [2]),
  fc.oneof(lastTimestamp, fc.constantFrom<J>('x', -1, null)),
  fc.oneof(patches, badPatches)
).map(([pv, lts, docs]) => ({
  cls: 'mismatch',
  body: new Obj([['type', 'reconnect'], ['lastTimestamp', lts], ...(pv === 'absent' ? [] : [['protocolVersion', pv] as [string, J]]), ['documentPatches', docs]])
}))

/** Not JSON, not an object, an unknown or missing type, or an auth-refresh without a refresh hook. */
const ignored: fc.Arbitrary<FrameGen> = fc.oneof(
  fc.string({ maxLength: 30 }).filter((s) => !s.trimStart().startsWith('{')).map((s): J => new Raw(s)),
  fc.constantFrom('null', '1', '"patch"', 'true', '[]', '[{"type":"patch","messageId":"m","documentPatches":[{"k":{"_exists":true}}]}]')
    .map((s): J => new Raw(s)),
  // a strict prefix of a valid frame is never valid JSON
  fc.tuple(validPatch, fc.nat()).map(([f, n]): J => {
    const text = encode(f.body, 0)
    return new Raw(text.slice(0, n % text.length))
  }),
  fc.tuple(fc.constantFrom<J | 'absent'>('absent', 'Patch', 'patches', 'ack', 'synced', 'resync', '', 5, null, ['patch'], new Obj([]), ...HOSTILE, 'toString', 'hasOwnProperty'), messageId, patches)
    .map(([type, id, docs]): J => new Obj([...(type === 'absent' ? [] : [['type', type] as [string, J]]), ['messageId', id], ['documentPatches', docs]])),
  fc.string({ maxLength: 8 }).map((token): J => new Obj([['type', 'auth-refresh'], ['token', token]]))
).map((body) => ({ cls: 'ignore', body }))

const frame: fc.Arbitrary<FrameGen> = fc.oneof(
  { weight: 10, arbitrary: validPatch },
  { weight: 3, arbitrary: validReconnect },
  { weight: 3, arbitrary: invalidFrame },
  { weight: 1, arbitrary: mismatch },
  { weight: 2, arbitrary: ignored }
)

const join: fc.Arbitrary<JoinAction> = fc.record({
  k: fc.constant('join' as const),
  clientId: fc.constantFrom('a', 'b', 'c', '__proto__', 'constructor'),
  perm: fc.constantFrom<Perm>('readwrite', 'readwrite', 'readonly')
})

const action: fc.Arbitrary<Action> = fc.oneof(
  {
    weight: 14,
    arbitrary: fc.record({
      k: fc.constant('send' as const),
      s: fc.nat(15),
      f: frame,
      wire: fc.constantFrom<Wire>('string', 'string', 'string', 'buffer', 'arraybuffer', 'fragments')
    })
  },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('leave' as const), s: fc.nat(15), how: fc.constantFrom<'close' | 'error'>('close', 'error') }) },
  { weight: 1, arbitrary: join }
)

const scenario: fc.Arbitrary<Scenario> = fc.record({
  initial: fc.array(join, { minLength: 1, maxLength: 4 }),
  steps: fc.array(action, { minLength: 1, maxLength: 20, size: 'medium' })
})

// ------------------------------------------------------------------- model
// An independent reading of PROTOCOL.md's data rules, on Maps.

type Fields = Map<string, unknown>
type Parsed = Record<string, any>

function isObject (value: unknown): value is Parsed {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** True when at least one patch of the list has a key. */
function hasKeys (list: unknown): boolean {
  return Array.isArray(list) && list.some((p) => isObject(p) && Object.keys(p).length > 0)
}

function isBuffer (value: unknown): value is { __buf: 1, len: number, runs: Array<[number, unknown[]]> } {
  return isObject(value) && Object.hasOwn(value, '__buf') && value.__buf === 1
}

/** Copy the first min(old.length, len) items, zero-fill to len, write the runs inside [0, len). */
function materialize (stored: unknown, delta: { len: number, runs: Array<[number, unknown[]]> }): unknown[] {
  const old: unknown[] = Array.isArray(stored) ? stored : []
  const out: unknown[] = []
  for (let i = 0; i < delta.len; i++) out.push(i < old.length ? old[i] : 0)
  for (const [offset, values] of delta.runs) {
    values.forEach((v, j) => {
      const i = offset + j
      if (i >= 0 && i < delta.len) out[i] = v
    })
  }
  return out
}

type Outcome = { kind: 'drop' } | { kind: 'tombstone' } | { kind: 'create' | 'merge', value: Fields, written: string[] }

function applyRule (existing: Fields | undefined, incoming: Parsed): Outcome {
  const fields = Object.entries(incoming)
  const exists = Object.hasOwn(incoming, '_exists') ? incoming._exists : undefined
  if (exists === false) return { kind: 'tombstone' }
  const live = existing !== undefined && existing.get('_exists') !== false
  if (!live && exists !== true) return { kind: 'drop' }
  const base: Fields = live ? existing : new Map()
  const value = new Map(base)
  for (const [field, v] of fields) value.set(field, isBuffer(v) ? materialize(base.get(field), v) : v)
  return { kind: live ? 'merge' : 'create', value, written: fields.map(([f]) => f) }
}

class Model {
  counter = 0
  /** Bumped on every document change (the snapshot comparison is skipped while neither side changed). */
  version = 0
  readonly doc = new Map<string, { value: Fields, stamps: Map<string, number> }>()
  /** clientId -> key -> fields */
  readonly eph = new Map<string, Map<string, Fields>>()

  applyDocument (list: Parsed[]): void {
    this.version++
    const ts = ++this.counter
    for (const p of list) {
      for (const [key, incoming] of Object.entries(p)) {
        const entry = this.doc.get(key)
        const out = applyRule(entry?.value, incoming)
        if (out.kind === 'drop') continue
        if (out.kind === 'tombstone') {
          this.doc.set(key, { value: new Map([['_exists', false]]), stamps: new Map([['_exists', ts]]) })
          continue
        }
        const stamps = out.kind === 'merge' ? new Map(entry!.stamps) : new Map<string, number>()
        for (const f of out.written) stamps.set(f, ts)
        this.doc.set(key, { value: out.value, stamps })
      }
    }
  }

  applyEphemeral (clientId: string, list: Parsed[]): void {
    const state = this.eph.get(clientId) ?? new Map<string, Fields>()
    for (const p of list) {
      for (const [key, incoming] of Object.entries(p)) {
        const out = applyRule(state.get(key), incoming)
        if (out.kind === 'drop') continue
        if (out.kind === 'tombstone') state.delete(key)
        else state.set(key, out.value)
      }
    }
    if (state.size === 0) this.eph.delete(clientId)
    else this.eph.set(clientId, state)
  }

  /** Every field stamped after `since`, as key -> fields (the whole value of a key whose `_exists: true` is), or null. */
  diff (since: number): Map<string, Fields> | null {
    const out = new Map<string, Fields>()
    for (const [key, { value, stamps }] of this.doc) {
      const fields: Fields = new Map()
      const whole = value.get('_exists') === true && (stamps.get('_exists') ?? 0) > since
      for (const [f, ts] of stamps) if (whole || ts > since) fields.set(f, value.get(f))
      if (fields.size > 0) out.set(key, fields)
    }
    return out.size > 0 ? out : null
  }

  /** The other clients' presence states, or null when none. */
  othersPresence (clientId: string): Array<Map<string, Fields>> | null {
    const out = Array.from(this.eph).filter(([owner]) => owner !== clientId).map(([, state]) => state)
    return out.length > 0 ? out : null
  }

  snapshotCanon (): string {
    const state = new Map<string, unknown>()
    const timestamps = new Map<string, unknown>()
    for (const [key, { value, stamps }] of this.doc) {
      state.set(key, value)
      timestamps.set(key, stamps)
    }
    return canon(new Map<string, unknown>([['timestamp', this.counter], ['state', state], ['timestamps', timestamps]]), 3)
  }
}

/**
 * JSON.stringify for the test's own comparisons, with an iterative fallback:
 * values nested close to the stack limit must not make the oracle itself fail.
 */
function stringify (value: unknown): string {
  try {
    return JSON.stringify(value)
  } catch (err) {
    if (!(err instanceof RangeError)) throw err
  }
  const out: string[] = []
  const work: Array<{ v: unknown } | string> = [{ v: value }]
  while (work.length > 0) {
    const item = work.pop()!
    if (typeof item === 'string') {
      out.push(item)
      continue
    }
    const v = item.v
    if (Array.isArray(v)) {
      const parts: Array<{ v: unknown } | string> = ['[']
      v.forEach((x, i) => parts.push(...(i > 0 ? [','] : []), { v: x === undefined ? null : x }))
      parts.push(']')
      work.push(...parts.reverse())
    } else if (typeof v === 'object' && v !== null) {
      const parts: Array<{ v: unknown } | string> = ['{']
      Object.entries(v).filter(([, x]) => x !== undefined).forEach(([k, x], i) => parts.push(`${i > 0 ? ',' : ''}${JSON.stringify(k)}:`, { v: x }))
      parts.push('}')
      work.push(...parts.reverse())
    } else {
      out.push(JSON.stringify(v))
    }
  }
  return out.join('')
}

/**
 * Canonical text of a JSON-ish value whose first `levels` object levels may
 * be Maps or plain objects (own keys, sorted); below that, JSON text (user
 * values keep the key order they arrived with on both sides).
 */
/** A list of patches, keys and fields in sorted order. */
function canonPatches (list: unknown): string {
  return Array.isArray(list) ? `[${list.map((p) => canon(p, 2)).join(',')}]` : stringify(list)
}

/**
 * The document patches a broadcast carries, from the model before it applies
 * them: as received, except that a create (`_exists: true`) of a key that is
 * live when it applies goes without `_exists` (it merges, as an update).
 */
function forwarded (list: Parsed[], model: Model): Parsed[] {
  const out = list.slice()
  const live = new Map<string, boolean>()
  list.forEach((patch, i) => {
    if (!isObject(patch)) return
    for (const [key, value] of Object.entries(patch)) {
      if (!isObject(value) || !Object.hasOwn(value, '_exists')) continue
      const wasLive = live.get(key) ?? (model.doc.get(key)?.value.get('_exists') === true)
      live.set(key, value._exists === true)
      if (value._exists !== true || !wasLive) continue
      const copy: Parsed = Object.create(null)
      for (const [k, v] of Object.entries(out[i])) copy[k] = v
      const update: Parsed = Object.create(null)
      for (const [f, v] of Object.entries(value)) if (f !== '_exists') update[f] = v
      copy[key] = update
      out[i] = copy
    }
  })
  return out
}

function canon (value: unknown, levels: number): string {
  if (levels > 0 && (value instanceof Map || isObject(value))) {
    const entries: Array<[string, unknown]> = value instanceof Map ? Array.from(value) : Object.entries(value)
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canon(v, levels - 1)}`).join(',')}}`
  }
  return stringify(value)
}

// ------------------------------------------------------------------ runner

interface FakeSocket {
  /** What the room sent since the step began, as text. */
  readonly raw: string[]
  /** The same, parsed. */
  readonly sent: Parsed[]
  readyState: number
  send(data: string): void
  close(code?: number, reason?: string): void
}

/** Frames parsed during this step: a broadcast (one string for every receiver) is parsed once. */
const parsedFrames = new Map<string, Parsed>()

function parseFrame (data: string): Parsed {
  let frame = parsedFrames.get(data)
  if (frame === undefined) {
    frame = JSON.parse(data) as Parsed
    parsedFrames.set(data, frame)
  }
  return frame
}

/** A socket double that records what the room sends, synchronously. Stays OPEN after a leave, to catch sends to removed sessions. */
function fakeSocket (): FakeSocket {
  return {
    raw: [],
    get sent () { return this.raw.map(parseFrame) },
    readyState: 1,
    send (data: string) { this.raw.push(data) },
    close () { this.readyState = 3 }
  }
}

interface Sess { id: string, clientId: string, perm: Perm, socket: FakeSocket, live: boolean, n: number }

const INVALID_FRAME = 'CANVAS_STORE_INVALID_FRAME'
const READONLY = 'CANVAS_STORE_READONLY'

/** Own property names and symbols of the prototypes a hostile frame could reach, as they were before any run. */
const PROTOTYPES: Array<[string, object, Array<string | symbol>]> = [
  ['Object.prototype', Object.prototype, Reflect.ownKeys(Object.prototype)],
  ['Array.prototype', Array.prototype, Reflect.ownKeys(Array.prototype)],
  ['Function.prototype', Function.prototype, Reflect.ownKeys(Function.prototype)]
]

function checkNoPollution (): void {
  for (const [name, proto, before] of PROTOTYPES) {
    const now = Reflect.ownKeys(proto)
    if (now.length !== before.length || now.some((k, i) => k !== before[i])) {
      assert.deepEqual(now.map(String), before.map(String), `${name} gained or lost a property`)
    }
  }
  assert.equal(Object.getPrototypeOf(Object.prototype), null, 'Object.prototype got a prototype')
  const probe: any = {}
  for (const name of ['polluted', '_exists', '__buf', 'len', 'runs', 'x', 'prototype']) {
    assert.equal(probe[name], undefined, `({}).${name} is defined`)
  }
  assert.equal(Object.getPrototypeOf(probe), Object.prototype)
}

/** The patch frame a live session receives when `sender` sends these parts. */
function checkBroadcast (f: Parsed, sender: Sess, want: { docs?: string, ephs?: string }, counter: number): void {
  assert.equal(f.type, 'patch', 'broadcast is a patch')
  assert.equal(f.clientId, sender.clientId, 'broadcast names the sender')
  if (want.docs !== undefined) {
    assert.equal(canonPatches(f.documentPatches), want.docs, 'broadcast forwards the document patches as received (a create of a live key: as an update)')
    assert.equal(f.timestamp, counter, 'broadcast timestamp is the counter')
  } else {
    assert.ok(!hasKeys(f.documentPatches), 'no document patches in the broadcast')
    assert.equal(f.timestamp, undefined, 'no timestamp without document patches')
  }
  if (want.ephs !== undefined) assert.equal(stringify(f.ephemeralPatches), want.ephs, 'broadcast forwards the ephemeral patches as received')
  else assert.ok(!hasKeys(f.ephemeralPatches), 'no ephemeral patches in the broadcast')
}

/** A merged presence patch: exactly the other clients' keys, each with one of their values. */
function checkPresence (p: unknown, others: Array<Map<string, Fields>>): void {
  assert.ok(isObject(p), 'presence is an object')
  const want = new Map<string, Set<string>>()
  for (const state of others) {
    for (const [key, fields] of state) {
      if (!want.has(key)) want.set(key, new Set())
      want.get(key)!.add(canon(fields, 1))
    }
  }
  assert.deepEqual(Object.keys(p).sort(), Array.from(want.keys()).sort(), 'presence keys are the other clients\' keys')
  for (const key of Object.keys(p)) {
    const got = canon(p[key], 1)
    if (!want.get(key)!.has(got)) assert.fail(`presence of ${JSON.stringify(key)} is ${short(got)}, none of ${short(Array.from(want.get(key)!).join(' | '))}`)
  }
}

/**
 * A refused write (readonly session: `CANVAS_STORE_READONLY`; a value nested
 * too deep: any code) may be answered with an error and a corrective patch
 * holding the server's values of the keys it touched.
 */
function checkRefusalExtra (f: Parsed, model: Model, touched: Set<string>, code?: string): void {
  if (f.type === 'error') {
    if (code !== undefined) assert.equal(f.code, code, `a refused write is answered with ${code}`)
    return
  }
  assert.equal(f.type, 'patch', `unexpected ${String(f.type)} frame for a refused write`)
  assert.equal(f.clientId, '', 'corrective patch comes from the server')
  assert.equal(f.timestamp, model.counter, 'corrective patch timestamp is the counter')
  assert.ok(Array.isArray(f.documentPatches) && f.documentPatches.length === 1, 'one corrective patch')
  const fix = f.documentPatches[0] as Parsed
  for (const key of Object.keys(fix)) {
    assert.ok(touched.has(key), `corrective patch holds ${JSON.stringify(key)}, not touched by the frame`)
    const value = model.doc.get(key)?.value ?? new Map([['_exists', false]])
    assert.equal(canon(fix[key], 1), canon(value, 1), `corrective value of ${JSON.stringify(key)} is the server's`)
  }
}

function touchedKeys (list: unknown): Set<string> {
  const keys = new Set<string>()
  if (Array.isArray(list)) {
    for (const p of list) if (typeof p === 'object' && p !== null && !Array.isArray(p)) for (const key of Object.keys(p)) keys.add(key)
  }
  return keys
}

/** Runs checks; on failure, appends a description that is only built then. */
function explain (checks: () => void, why: () => string): void {
  try {
    checks()
  } catch (err) {
    if (err instanceof Error) err.message += `\n${why()}`
    throw err
  }
}

function onWire (text: string, wire: Wire): string | Buffer | ArrayBuffer | Buffer[] {
  if (wire === 'string') return text
  const bytes = Buffer.from(text, 'utf8')
  if (wire === 'buffer') return bytes
  if (wire === 'arraybuffer') return new Uint8Array(bytes).buffer
  // three fragments, cut at byte offsets that may split a UTF-8 sequence
  const a = Math.floor(bytes.length / 3)
  const b = Math.floor((2 * bytes.length) / 3) + 1
  return [bytes.subarray(0, a), bytes.subarray(a, Math.min(b, bytes.length)), bytes.subarray(Math.min(b, bytes.length))]
}

function receivesNothing (s: Sess): void {
  if (s.socket.raw.length > 0) assert.fail(`#${s.n} must receive nothing, got ${short(s.socket.raw.join(' '))}`)
}

function runScenario (sc: Scenario): void {
  const room = new Room({ roomId: 'fuzz' })
  const model = new Model()
  const sessions: Sess[] = []
  const trace: string[] = []
  /** The last snapshot text found equal to the model at that model version. */
  let compared = { snapshot: '', version: -1 }
  const live = () => sessions.filter((s) => s.live)

  /** Calls the Room: anything thrown is a failure. */
  const call = (what: string, fn: () => void) => {
    try {
      fn()
    } catch (err) {
      throw new Error(`Room API threw from ${what}: ${(err as Error)?.stack ?? String(err)}`)
    }
  }

  const doJoin = (a: JoinAction) => {
    const socket = fakeSocket()
    const others = model.othersPresence(a.clientId)
    const before = live()
    let id = ''
    call('handleSocketConnect', () => { id = room.handleSocketConnect({ socket, clientId: a.clientId, permissions: a.perm }) })
    const sess: Sess = { id, clientId: a.clientId, perm: a.perm, socket, live: true, n: sessions.length }
    sessions.push(sess)
    trace.push(`join #${sess.n} clientId=${JSON.stringify(a.clientId)} ${a.perm}`)
    const count = before.length + 1
    const got = socket.sent
    explain(() => assert.equal(got.length, others === null ? 1 : 2, 'newcomer frames'), () => short(stringify(got)))
    if (others !== null) {
      assert.equal(got[0].type, 'patch')
      assert.equal(got[0].clientId, '')
      assert.ok(Array.isArray(got[0].ephemeralPatches) && got[0].ephemeralPatches.length === 1)
      checkPresence(got[0].ephemeralPatches[0], others)
    }
    assert.deepEqual(got.at(-1), { type: 'clientCount', count })
    for (const s of before) assert.deepEqual(s.socket.sent, [{ type: 'clientCount', count }], `#${s.n} gets the clientCount`)
  }

  const doLeave = (s: Sess, how: 'close' | 'error') => {
    trace.push(`leave #${s.n} (socket ${how})${s.live ? '' : ' (already gone)'}`)
    const wasLive = s.live
    if (how === 'close') call('handleSocketClose', () => room.handleSocketClose(s.id))
    else call('handleSocketError', () => room.handleSocketError(s.id))
    if (!wasLive) return
    s.live = false
    const remaining = live()
    const stillHere = remaining.some((o) => o.clientId === s.clientId)
    const state = model.eph.get(s.clientId)
    const deletes = state !== undefined && !stillHere
    if (deletes) model.eph.delete(s.clientId)
    for (const o of remaining) {
      const got = o.socket.sent
      explain(() => assert.equal(got.length, deletes ? 2 : 1, `#${o.n} frames after a leave`), () => short(stringify(got)))
      if (deletes) {
        assert.equal(got[0].type, 'patch')
        assert.equal(got[0].clientId, s.clientId, 'presence deletion names the leaver')
        assert.ok(Array.isArray(got[0].ephemeralPatches) && got[0].ephemeralPatches.length === 1)
        const del = got[0].ephemeralPatches[0]
        assert.deepEqual(Object.keys(del).sort(), Array.from(state.keys()).sort(), 'deletes exactly the leaver\'s presence keys')
        for (const key of Object.keys(del)) assert.equal(canon(del[key], 1), '{"_exists":false}')
      }
      assert.deepEqual(got.at(-1), { type: 'clientCount', count: remaining.length })
    }
  }

  const doSend = (s: Sess, f: FrameGen, wire: Wire) => {
    const text = encode(f.body, model.counter)
    trace.push(`send #${s.n} (${JSON.stringify(s.clientId)} ${s.perm}${s.live ? '' : ', gone'}) [${f.cls}${wire === 'string' ? '' : `, as ${wire}`}] ${short(text)}`)
    call('handleSocketMessage', () => room.handleSocketMessage(s.id, onWire(text, wire)))
    const others = sessions.filter((o) => o !== s)
    const nothingElse = () => { for (const o of others) receivesNothing(o) }
    if (!s.live || f.cls === 'ignore') {
      receivesNothing(s)
      nothingElse()
      return
    }
    const got = s.socket.sent
    let parsed: Parsed = JSON.parse(text)
    const touched = touchedKeys(parsed.documentPatches)
    /** An invalid reconnect whose only fault is in its patches: refused (INVALID_FRAME), then answered without them. */
    let refusedPatches = false
    if (f.cls === 'invalid') {
      nothingElse()
      const lts: unknown = parsed.lastTimestamp
      const messageId: unknown = parsed.messageId
      if (parsed.type === 'patch' && typeof messageId === 'string' && messageId.length <= 1024) {
        // Refused like any write: ack (the published client settles its in-flight write), error, corrective.
        explain(() => {
          assert.ok(got.length === 2 || got.length === 3, 'ack, error and at most one corrective patch')
          assert.deepEqual(got[0], { type: 'ack', messageId, timestamp: model.counter }, 'ack of a refused frame')
          assert.equal(got[1].type, 'error')
          assert.equal(got[1].code, INVALID_FRAME)
          assert.equal(got[1].messageId, messageId, 'the error names the refused message')
          for (const m of got.slice(2)) checkRefusalExtra(m, model, touched)
        }, () => short(stringify(got)))
        return
      }
      if (parsed.type !== 'reconnect' || typeof lts !== 'number' || !Number.isFinite(lts) || lts < 0) {
        explain(() => assert.equal(got.length, 1, 'one error frame for a malformed frame'), () => short(stringify(got)))
        assert.equal(got[0].type, 'error')
        assert.equal(got[0].code, INVALID_FRAME)
        return
      }
      refusedPatches = true
      parsed = { type: 'reconnect', lastTimestamp: lts, protocolVersion: 2 }
    }
    if (f.cls === 'mismatch') {
      assert.deepEqual(got, [{ type: 'version-mismatch', serverProtocolVersion: 2 }])
      nothingElse()
      return
    }
    if (!refusedPatches && got.some((m) => m.type === 'error' && m.code !== READONLY) && rawDepth(f.body) > MAY_REFUSE_DEPTH) {
      // refused for its nesting: nothing applied (the snapshot check below), nothing forwarded
      trace[trace.length - 1] += '  -> refused (nesting)'
      nothingElse()
      if (parsed.type !== 'reconnect') {
        for (const m of got) {
          if (m.type === 'ack') assert.deepEqual(m, { type: 'ack', messageId: parsed.messageId, timestamp: model.counter }, 'ack of a refused frame')
          else checkRefusalExtra(m, model, touched)
        }
        return
      }
      // a reconnect: its patches are refused, the reconnect itself is answered
      refusedPatches = true
      parsed = { type: 'reconnect', lastTimestamp: parsed.lastTimestamp, protocolVersion: 2 }
    }
    const docs = hasKeys(parsed.documentPatches)
    const ephs = hasKeys(parsed.ephemeralPatches)
    const rw = s.perm === 'readwrite'
    const since = model.counter
    const forward = docs ? forwarded(parsed.documentPatches, model) : undefined
    if (rw) {
      if (docs) model.applyDocument(parsed.documentPatches)
      if (ephs) model.applyEphemeral(s.clientId, parsed.ephemeralPatches)
    }
    const broadcast = rw && (docs || ephs)
    const want = {
      docs: docs ? canonPatches(forward) : undefined,
      ephs: ephs ? stringify(parsed.ephemeralPatches) : undefined
    }
    const checked = new Set<string>()
    for (const o of others) {
      if (!o.live || !broadcast) {
        receivesNothing(o)
        continue
      }
      explain(() => assert.equal(o.socket.raw.length, 1, `#${o.n} gets exactly one broadcast`), () => short(stringify(o.socket.sent)))
      // the same text as another receiver's passes the same checks
      if (checked.has(o.socket.raw[0])) continue
      checkBroadcast(o.socket.sent[0], s, want, model.counter)
      checked.add(o.socket.raw[0])
    }

    if (f.cls === 'patch') {
      if (!docs && !ephs) {
        explain(() => assert.equal(got.length, 0, 'an empty patch is ignored'), () => short(stringify(got)))
        return
      }
      const ack = { type: 'ack', messageId: parsed.messageId, timestamp: model.counter }
      if (rw) {
        assert.deepEqual(got, [ack], 'exactly one ack')
        return
      }
      const acks = got.filter((m) => m.type === 'ack')
      assert.deepEqual(acks, [ack], 'a readonly write gets exactly one ack')
      for (const m of got) if (m.type !== 'ack') checkRefusalExtra(m, model, touched, READONLY)
      return
    }

    // reconnect, version 2: [READONLY error and corrective patch, readonly writes only] [resync] [catch-up patch] synced
    const lts: number = parsed.lastTimestamp
    const diff = model.diff(lts)
    const presence = model.othersPresence(s.clientId)
    const extra = refusedPatches || (!rw && docs)
    const refusal = refusedPatches ? INVALID_FRAME : READONLY
    const resync = rw && lts > since
    const tail: Array<(m: Parsed) => void> = []
    if (resync) tail.push((m) => assert.deepEqual(m, { type: 'resync', since }, 'resync names the counter before the frame'))
    if (diff !== null || presence !== null) {
      tail.push((m) => {
        assert.equal(m.type, 'patch', 'catch-up patch')
        assert.equal(m.clientId, '', 'catch-up patch from the server')
        if (diff !== null) {
          assert.ok(Array.isArray(m.documentPatches) && m.documentPatches.length === 1, 'one diff patch')
          assert.equal(canon(m.documentPatches[0], 2), canon(diff, 2), `diff since ${lts}`)
          assert.equal(m.timestamp, model.counter, 'diff timestamp is the counter')
        } else {
          assert.ok(!hasKeys(m.documentPatches), 'no document diff expected')
          assert.ok(m.timestamp === undefined || m.timestamp === model.counter, 'timestamp of the catch-up patch')
        }
        if (presence !== null) {
          assert.ok(Array.isArray(m.ephemeralPatches) && m.ephemeralPatches.length === 1, 'one presence patch')
          checkPresence(m.ephemeralPatches[0], presence)
        } else {
          assert.ok(!hasKeys(m.ephemeralPatches), 'no presence expected')
        }
      })
    }
    tail.push((m) => assert.deepEqual(m, { type: 'synced', timestamp: model.counter }, 'reconnect ends with synced at the counter'))
    const why = () => {
      const parts = [
        ...(extra ? [`[${refusal} error, corrective patch]`] : []),
        ...(resync ? [`resync since ${since}`] : []),
        diff === null && presence === null
          ? 'no catch-up patch (no field changed after lastTimestamp, no other presence)'
          : `one catch-up patch (document diff: ${diff === null ? 'none' : short(canon(diff, 2), 200)}; presence: ${presence === null ? 'none' : 'yes'})`,
        `synced at ${model.counter}`
      ]
      return `reconnect answer: expected ${parts.join(', ')}; got ${short(stringify(got), 600)}`
    }
    explain(() => {
      assert.ok(got.length >= tail.length, 'answer too short')
      const head = got.slice(0, got.length - tail.length)
      got.slice(got.length - tail.length).forEach((m, i) => tail[i](m))
      if (refusedPatches) assert.ok(head.some((m) => m.type === 'error' && m.code === INVALID_FRAME), 'its refused patches get an INVALID_FRAME error')
      if (head.length > 0) {
        assert.ok(extra, 'unexpected frames')
        for (const m of head) checkRefusalExtra(m, model, touched, refusal)
      }
    }, why)
  }

  try {
    checkNoPollution()
    for (const a of [...sc.initial, ...sc.steps]) {
      for (const s of sessions) s.socket.raw.length = 0
      parsedFrames.clear()
      if (a.k === 'join') doJoin(a)
      else if (sessions.length > 0) {
        const s = sessions[a.s % sessions.length]
        if (a.k === 'leave') doLeave(s, a.how)
        else doSend(s, a.f, a.wire)
      }
      checkNoPollution()
      assert.equal(room.timestamp, model.counter, 'room counter')
      assert.equal(room.getSessionCount(), live().length, 'session count')
      let snapshot: string
      try {
        snapshot = JSON.stringify(room.getSnapshot())
      } catch (err) {
        throw new Error(`room.getSnapshot() does not survive JSON.stringify (no storage could save it): ${String(err)}`)
      }
      if (snapshot !== compared.snapshot || model.version !== compared.version) {
        assert.equal(canon(JSON.parse(snapshot), 3), model.snapshotCanon(), 'snapshot equals the model')
        compared = { snapshot, version: model.version }
      }
    }
  } catch (err) {
    const e = err instanceof Error ? err : new Error(String(err))
    e.message += `\n--- steps (last one failed) ---\n${trace.join('\n')}`
    throw e
  } finally {
    room.close({ flush: false }).catch(() => {})
  }
}

/** Minimal counterexamples the fuzzer found (shrunk by fast-check), replayed as their own tests. */
const FOUND: Array<{ name: string, scenario: Scenario }> = [
  {
    // A merge that writes no field (`{}`) still marks the key changed, so the
    // reconnect diff holds `{"SINGLETON/camera":{}}` although no field is newer than lastTimestamp.
    name: 'a merge of {} adds an empty key to the reconnect diff',
    scenario: {
      initial: [{ k: 'join', clientId: 'a', perm: 'readwrite' }],
      steps: [
        { k: 'send', s: 0, wire: 'string', f: { cls: 'patch', body: new Obj([['type', 'patch'], ['messageId', 'm1'], ['documentPatches', [new Obj([['SINGLETON/camera', new Obj([['_exists', true]])]])]]]) } },
        { k: 'send', s: 0, wire: 'string', f: { cls: 'reconnect', body: new Obj([['type', 'reconnect'], ['lastTimestamp', new Lts(0)], ['protocolVersion', 2], ['documentPatches', [new Obj([['SINGLETON/camera', new Obj([])]])]]]) } }
      ]
    }
  },
  {
    // A value nested ~4,200 levels deep (an 8 KB frame) passes validation and
    // is stored; JSON.stringify then overflows the stack in the broadcast (and
    // in every later diff, presence send and snapshot of that room).
    name: 'a value nested 5000 levels deep makes the room throw',
    scenario: {
      initial: [{ k: 'join', clientId: 'a', perm: 'readwrite' }, { k: 'join', clientId: 'b', perm: 'readwrite' }],
      steps: [
        { k: 'send', s: 0, wire: 'string', f: { cls: 'patch', body: new Obj([['type', 'patch'], ['messageId', 'm1'], ['ephemeralPatches', [new Obj([['cursor', new Obj([['_exists', true], ['x', new Raw('['.repeat(5000) + ']'.repeat(5000), 5000)]])]])]]]) } }
      ]
    }
  }
]

for (const { name, scenario } of FOUND) {
  t.test(`fuzz counterexample: ${name}`, (t) => {
    runScenario(scenario)
    t.pass('the room keeps every invariant')
    t.end()
  })
}

t.test('fuzz: random valid, malformed and hostile frames keep the room consistent', (t) => {
  const started = performance.now()
  fc.assert(fc.property(scenario, runScenario), { numRuns: RUNS, seed: SEED })
  t.pass(`${RUNS} runs (seed ${SEED}) in ${Math.round(performance.now() - started)} ms`)
  t.end()
})
