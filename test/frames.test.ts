/**
 * parseClientFrame validates with a hand-written, allocation-free check; the
 * TypeBox schemas in lib/protocol/frames.ts stay the specification. This
 * property test generates frames near the edges of those schemas (hostile
 * keys, line breaks in keys, almost-buffer-deltas, deep nesting, wrong types)
 * and checks that a frame is accepted exactly when the schema, the nesting
 * bound and the per-frame buffer item bound all accept it.
 */
import t from 'tap'
import fc from 'fast-check'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { AuthRefreshFrame, MAX_BUFFER_LENGTH, MAX_DEPTH, MAX_KEY_LENGTH, PatchFrame, ReconnectFrame, parseClientFrame } from '../lib/protocol/frames.js'

const RUNS = Number(process.env.FUZZ_RUNS ?? 3000)
const schemas = {
  patch: TypeCompiler.Compile(PatchFrame),
  reconnect: TypeCompiler.Compile(ReconnectFrame),
  'auth-refresh': TypeCompiler.Compile(AuthRefreshFrame)
}

/** An object as ordered entries, encoded by hand so that keys such as `__proto__` become own properties, as JSON.parse makes them. */
class Obj {
  constructor (readonly entries: Array<[string, J]>) {}
}
/** Literal JSON text (deep nesting). */
class Raw {
  constructor (readonly text: string) {}
}
type J = null | boolean | number | string | J[] | Obj | Raw

function encode (j: J): string {
  if (j instanceof Obj) return `{${j.entries.map(([k, v]) => `${JSON.stringify(k)}:${encode(v)}`).join(',')}}`
  if (j instanceof Raw) return j.text
  if (Array.isArray(j)) return `[${j.map(encode).join(',')}]`
  return JSON.stringify(j)
}

const NAMES = ['x', 'e1/A', '', 'a\nb', 'a\u2028b', 'c\rd', 'n\u0000', '\ud800', 'x\udc00y', '\ud83d\ude00', '__proto__', 'constructor', '__buf', 'len', 'runs', 'toString', '_exists', '_exists',
  // Keys at the length bound and past it (field names have none), in UTF-16 units.
  'k'.repeat(MAX_KEY_LENGTH), 'k'.repeat(MAX_KEY_LENGTH + 1), '\ud83d\ude00'.repeat(MAX_KEY_LENGTH / 2), 'x' + '\ud83d\ude00'.repeat(MAX_KEY_LENGTH / 2)]

const scalar: fc.Arbitrary<J> = fc.oneof(
  fc.integer({ min: -3, max: 12 }),
  fc.constantFrom<J>(0.5, -1, 1e300, 2 ** 53, 10_000_000, 10_000_001, '1', '', null, true, false)
)

const plain: fc.Arbitrary<J> = fc.letrec<{ node: J }>((tie) => ({
  node: fc.oneof(
    { depthSize: 'small' },
    scalar,
    fc.array(tie('node'), { maxLength: 3 }),
    fc.array(fc.tuple(fc.constantFrom(...NAMES), tie('node')), { maxLength: 3 }).map((e) => new Obj(e))
  )
})).node

/** Buffer deltas, well-formed or not in one of many ways. */
const delta: fc.Arbitrary<J> = fc.record({
  buf: fc.constantFrom<J | 'absent'>(1, 1, 1, '1', 2, true, 'absent'),
  len: fc.oneof(fc.integer({ min: 0, max: 8 }), fc.constantFrom<J | 'absent'>(-1, 2.5, '3', null, 'absent', 10_000_000, 10_000_001, 6_000_000)),
  runs: fc.oneof(
    fc.array(fc.oneof(
      { weight: 4, arbitrary: fc.tuple(fc.oneof({ weight: 6, arbitrary: fc.integer({ min: -2, max: 9 }) }, fc.constantFrom<J>(0.5, '0', null)), fc.array(fc.integer(), { maxLength: 3 })).map(([a, b]): J => [a, b]) },
      fc.tuple(fc.oneof(fc.integer({ min: -2, max: 9 }), fc.constantFrom<J>(0.5, '0', 1e15)), fc.oneof(fc.array(plain, { maxLength: 3 }), fc.constantFrom<J>(5, null, new Obj([])))).map(([a, b]): J => [a, b]),
      fc.constantFrom<J>([0], [0, [1], 2], null, 5, new Obj([['0', 0], ['1', [1]]]))
    ), { maxLength: 3 }),
    fc.constantFrom<J | 'absent'>('absent', new Obj([]), 'x', null)
  ),
  extra: fc.option(fc.tuple(fc.constantFrom(...NAMES), plain), { nil: undefined })
}).map(({ buf, len, runs, extra }) => new Obj([
  ...(buf === 'absent' ? [] : [['__buf', buf] as [string, J]]),
  ...(len === 'absent' ? [] : [['len', len] as [string, J]]),
  ...(runs === 'absent' ? [] : [['runs', runs] as [string, J]]),
  ...(extra === undefined ? [] : [extra])
]))

/** Nesting around MAX_DEPTH, as arrays or objects, somewhere inside a field value. */
const deep: fc.Arbitrary<J> = fc.tuple(fc.integer({ min: MAX_DEPTH - 6, max: MAX_DEPTH + 3 }), fc.boolean())
  .map(([n, arrays]) => new Raw(arrays ? '['.repeat(n) + ']'.repeat(n) : '{"a":'.repeat(n) + '1' + '}'.repeat(n)))

const fieldValue: fc.Arbitrary<J> = fc.oneof({ weight: 3, arbitrary: scalar }, plain, { weight: 2, arbitrary: delta }, deep)
const component: fc.Arbitrary<J> = fc.oneof(
  { weight: 8, arbitrary: fc.array(fc.tuple(fc.constantFrom(...NAMES), fieldValue), { maxLength: 4 }).map((e) => new Obj(e)) },
  { weight: 1, arbitrary: fc.constantFrom<J>(null, 5, 'x', [], [new Obj([])]) }
)
const patch: fc.Arbitrary<J> = fc.oneof(
  { weight: 8, arbitrary: fc.array(fc.tuple(fc.constantFrom(...NAMES), component), { maxLength: 3 }).map((e) => new Obj(e)) },
  { weight: 1, arbitrary: fc.constantFrom<J>(null, 5, [], 'x') }
)
const patches: fc.Arbitrary<J | 'absent'> = fc.oneof(
  { weight: 2, arbitrary: fc.constant<'absent'>('absent') },
  { weight: 8, arbitrary: fc.array(patch, { maxLength: 3 }) },
  { weight: 1, arbitrary: fc.constantFrom<J>(null, new Obj([]), 'x') }
)

const frame: fc.Arbitrary<Obj> = fc.record({
  type: fc.constantFrom('patch', 'patch', 'reconnect', 'auth-refresh'),
  messageId: fc.constantFrom<J | 'absent'>('m', '', 'x'.repeat(1024), 'x'.repeat(1025), 5, null, 'absent'),
  lastTimestamp: fc.constantFrom<J | 'absent'>(0, 3, 0.5, -1, '1', null, 'absent'),
  token: fc.constantFrom<J | 'absent'>('t', '', 'x'.repeat(16_385), 5, 'absent'),
  docs: patches,
  ephs: patches
}).map(({ type, messageId, lastTimestamp, token, docs, ephs }) => {
  const entries: Array<[string, J]> = [['type', type]]
  if (type === 'reconnect') entries.push(['protocolVersion', 2])
  for (const [name, value] of [['messageId', messageId], ['lastTimestamp', lastTimestamp], ['token', token], ['documentPatches', docs], ['ephemeralPatches', ephs]] as const) {
    if (value !== 'absent') entries.push([name, value])
  }
  return new Obj(entries)
})

/** Nesting of the deepest object or array in a value, the value itself at `depth`. */
function deepest (value: unknown, depth: number): number {
  if (typeof value !== 'object' || value === null) return -1
  let max = depth
  for (const item of Object.values(value)) max = Math.max(max, deepest(item, depth + 1))
  return max
}

/** What the schemas, MAX_DEPTH and MAX_BUFFER_LENGTH together say of a parsed frame. */
function expected (value: Record<string, unknown>): boolean {
  const type = value.type as keyof typeof schemas
  const data: unknown = value // Check narrows its argument; keep `value` a plain record for the walk below.
  if (!schemas[type].Check(data)) return false
  if (type === 'auth-refresh') return true
  let items = 0
  for (const list of [value.documentPatches, value.ephemeralPatches] as Array<Array<Record<string, Record<string, unknown>>> | undefined>) {
    if (list === undefined) continue
    if (deepest(list, 0) > MAX_DEPTH) return false
    for (const patch of list) {
      for (const component of Object.values(patch)) {
        for (const field of Object.values(component)) {
          if (typeof field === 'object' && field !== null && (field as { __buf?: unknown }).__buf === 1) items += (field as { len: number }).len
        }
      }
    }
  }
  return items <= MAX_BUFFER_LENGTH
}

t.test('parseClientFrame accepts a frame exactly when its schema, the nesting bound and the buffer item bound do', async (t) => {
  let accepted = 0
  let refused = 0
  fc.assert(fc.property(frame, (body) => {
    const text = encode(body)
    const parsed = parseClientFrame(text)
    const want = expected(JSON.parse(text) as Record<string, unknown>)
    if (parsed.kind === 'frame') accepted++
    else refused++
    if (want !== (parsed.kind === 'frame')) throw new Error(`${want ? 'refused' : 'accepted'} ${text.slice(0, 300)}: ${JSON.stringify(parsed).slice(0, 300)}`)
    if (parsed.kind === 'invalid' && parsed.message === '') throw new Error(`no message for ${text.slice(0, 300)}`)
  }), { numRuns: RUNS, seed: 0xf4a3e5 })
  // Both sides of the boundary were exercised.
  t.ok(accepted > RUNS / 10, `accepted ${accepted}`)
  t.ok(refused > RUNS / 10, `refused ${refused}`)
})

t.test('a refused frame names its first schema error, its nesting or its buffer items', async (t) => {
  const bad = parseClientFrame(JSON.stringify({ type: 'patch', messageId: 'm', documentPatches: [{ k: { _exists: true, a: { __buf: 1, len: -1, runs: [] } } }] }))
  t.match(bad, { kind: 'invalid', type: 'patch', messageId: 'm', message: /documentPatches/ })
  const deepValue = JSON.parse('{"a":'.repeat(MAX_DEPTH) + '1' + '}'.repeat(MAX_DEPTH)) as unknown
  t.match(parseClientFrame(JSON.stringify({ type: 'patch', messageId: 'm', documentPatches: [{ k: { v: deepValue } }] })), { kind: 'invalid', message: /nested deeper than 64/ })
  t.match(parseClientFrame(JSON.stringify({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2, ephemeralPatches: [{ k: { a: { __buf: 1, len: MAX_BUFFER_LENGTH, runs: [] }, b: { __buf: 1, len: 1, runs: [] } } }] })), { kind: 'invalid', type: 'reconnect', message: /more than 10000000 items/ })
  t.match(parseClientFrame(JSON.stringify({ type: 'patch', messageId: 'm', documentPatches: [{ k: { a: { __buf: 1, len: 3, runs: [[0, [1]]] } } }], ephemeralPatches: [{ c: { b: { __buf: 1, len: 4, runs: [] } } }] })), { kind: 'frame', bufferItems: 7 })
  // A negative len must not hide behind a larger one in the sum.
  t.match(parseClientFrame(JSON.stringify({ type: 'patch', messageId: 'm', documentPatches: [{ k: { a: { __buf: 1, len: -1, runs: [] }, b: { __buf: 1, len: 5, runs: [] } } }] })), { kind: 'invalid' })
})

t.test('`_exists` is a boolean or absent: anything else is refused, not stored as a field of a live key', async (t) => {
  for (const exists of [1, 0, 'true', null, {}, []]) {
    const frame = parseClientFrame(JSON.stringify({ type: 'patch', messageId: 'm', documentPatches: [{ k: { _exists: exists, x: 1 } }] }))
    t.match(frame, { kind: 'invalid', type: 'patch', messageId: 'm', message: /documentPatches/ }, `_exists: ${JSON.stringify(exists)}`)
    t.match(parseClientFrame(JSON.stringify({ type: 'patch', messageId: 'm', ephemeralPatches: [{ k: { _exists: exists } }] })), { kind: 'invalid' })
  }
  for (const exists of [true, false]) {
    t.match(parseClientFrame(JSON.stringify({ type: 'patch', messageId: 'm', documentPatches: [{ k: { _exists: exists } }] })), { kind: 'frame' })
  }
  t.match(parseClientFrame(JSON.stringify({ type: 'patch', messageId: 'm', documentPatches: [{ k: { x: { _exists: 1 } } }] })), { kind: 'frame' }, 'a field value may hold anything')
})
