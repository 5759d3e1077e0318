import type { BufferDelta, ComponentData, FieldTimestamps, Patch, RoomSnapshot } from '../protocol/types.js'
import { ZERO_ITEM_SIZE, fieldSize, itemSize, jsonSize, keyOverhead, knownArraySize, rememberArraySize } from './size.js'
import { isRecord } from '../protocol/frames.js'

/**
 * A record whose prototype chain does not reach `Object.prototype`: a key
 * such as `__proto__` is an ordinary own property here, so nothing a client
 * sends can reach `Object.prototype`.
 */
export type Fields = Record<string, unknown>

/**
 * Records are made with `new SafeRecord()` rather than `Object.create(null)`:
 * V8 keeps the latter in dictionary mode, several times larger, and a room
 * holds two records per document key. The prototype is an empty object with
 * a null prototype, so there is no `__proto__` setter anywhere up the chain.
 */
const SafeRecord = function SafeRecord () {} as unknown as new () => Record<string, unknown>
SafeRecord.prototype = Object.create(null)

/** Creates an empty record that cannot be polluted. */
export function emptyRecord<T = unknown> (): Record<string, T> {
  return new SafeRecord() as Record<string, T>
}

/** True for a `{ __buf: 1, len, runs }` value. The frame validator has already checked its shape. */
export function isBufferDelta (value: unknown): value is BufferDelta {
  return typeof value === 'object' && value !== null && (value as { __buf?: unknown }).__buf === 1
}

/**
 * Materializes a buffer delta against the stored array: keep the first
 * `min(old.length, len)` items, zero-fill to `len`, then write each run,
 * ignoring indexes outside `[0, len)`. When the stored array's estimated size
 * is known (see knownArraySize), the new one's is worked out from the items
 * that change and remembered, so a small delta to a long array costs a copy,
 * not a measurement of every item.
 */
export function applyBufferDelta (base: unknown, delta: BufferDelta): unknown[] {
  const len = delta.len
  const old = Array.isArray(base) ? base as unknown[] : undefined
  const carry = old === undefined ? 0 : Math.min(old.length, len)
  // A copy of a packed array (what JSON.parse makes) is a block copy, and pushing keeps the new one packed.
  const out = carry > 0 ? old!.slice(0, carry) : []
  for (let i = carry; i < len; i++) out.push(0)
  let size = old === undefined ? undefined : knownArraySize(old)
  if (size !== undefined) {
    const removed = old!.length - carry
    if (removed > len) {
      size = undefined // Cut to less than what it drops: measuring what is left is cheaper.
    } else {
      for (let i = carry; i < old!.length; i++) size -= itemSize(old![i])
      size += (len - carry) * ZERO_ITEM_SIZE
    }
  }
  for (const [offset, values] of delta.runs) {
    for (let j = 0; j < values.length; j++) {
      const index = offset + j
      if (index < 0 || index >= len) continue
      if (size !== undefined) size += itemSize(values[j]) - itemSize(out[index])
      out[index] = values[j]
    }
  }
  if (size !== undefined) rememberArraySize(out, size)
  return out
}

/** Outcome of applying one key of a patch to stored state. */
export type ApplyKind = 'dropped' | 'tombstone' | 'create' | 'merge'

/** A stored value that an incoming one merges into: there, and not a tombstone. */
export function isLive (existing: Fields | undefined): boolean {
  return existing !== undefined && existing._exists !== false
}

/**
 * What applying one incoming value to the stored value of a key does,
 * following the protocol's rules; `dropped` leaves the key untouched. For
 * the other kinds, appliedValue gives the new stored value.
 */
export function applyKind (existing: Fields | undefined, incoming: ComponentData): ApplyKind {
  if (incoming._exists === false) return 'tombstone'
  if (isLive(existing)) return 'merge'
  // A partial update to a missing or deleted key must never resurrect it.
  return incoming._exists === true ? 'create' : 'dropped'
}

/** The new stored value (a fresh record, never the incoming object), for every kind but `dropped`. */
export function appliedValue (kind: Exclude<ApplyKind, 'dropped'>, existing: Fields | undefined, incoming: ComponentData): Fields {
  if (kind === 'tombstone') {
    const tomb = storedRecord()
    tomb._exists = false
    return tomb
  }
  return materialize(kind === 'merge' ? existing : undefined, incoming)
}

function materialize (base: Fields | undefined, incoming: ComponentData): Fields {
  const out = storedRecord()
  if (base !== undefined) {
    for (const field in base) out[field] = base[field]
  }
  for (const field in incoming) {
    if (!Object.hasOwn(incoming, field)) continue
    const value = incoming[field]
    out[field] = isBufferDelta(value) ? applyBufferDelta(base?.[field], value) : value
  }
  return out
}

/** One client's presence: key -> value record, and their estimated size (see size.ts). */
export class Presence extends Map<string, Fields> {
  bytes = 0

  /**
   * Applies presence patches: like the document, but nothing is stamped, and
   * a deleted key is forgotten (presence is never persisted, so no tombstone
   * is kept).
   */
  apply (patches: readonly Patch[]): void {
    this.bytes += applyRecords(this, this.#store, patches, false)
  }

  readonly #store: WriteRecord = (key, value, size) => {
    if (value === null) this.delete(key)
    else this.set(key, withSize(value, size))
  }
}

/**
 * Each key of the document is one value record that also carries its field
 * timestamps and its estimated JSON size (see size.ts), so that a change
 * costs the fields it touches, not the whole record; a separate entry object
 * per key would cost 40 bytes more. Value and stamps records are frozen and
 * replaced, never changed, so snapshots and storages share them without
 * copying, and keys stamped by the same frame with the same fields share one
 * stamps record.
 *
 * Stamps and size are private fields of the record's class: not properties,
 * so no for-in, Object.keys, JSON, spread or deep-equality check sees them,
 * and setting them is an ordinary store (Object.defineProperty of hidden
 * symbol properties, as before, was a call into the runtime for every key
 * stored: a third of the document's apply). Like SafeRecord, the class's
 * prototype is an empty object without a prototype.
 */
class StoredRecord {
  #stamps: Stamps | undefined = undefined
  #size = 0

  /** Sets the stamps (frozen already) and the size of a record made by storedRecord(), and freezes it. */
  static seal (value: Fields, stamps: Stamps, size: number): Fields {
    const record = value as unknown as StoredRecord
    record.#stamps = stamps
    record.#size = size
    return Object.freeze(value)
  }

  /** Sets the size of a record made by storedRecord() (presence records, which are not frozen, too). */
  static withSize (value: Fields, size: number): Fields {
    (value as unknown as StoredRecord).#size = size
    return value
  }

  static stampsOf (value: Fields): Stamps {
    return (value as unknown as StoredRecord).#stamps!
  }

  /** The size stored with the record, or undefined for any other object. */
  static sizeOf (value: object): number | undefined {
    return #size in value ? (value as StoredRecord).#size : undefined
  }
}
Object.setPrototypeOf(StoredRecord.prototype, null)
// A field named `constructor` must not find the class up the chain.
delete (StoredRecord.prototype as { constructor?: unknown }).constructor

/** A new record that can be stored (see StoredRecord): as safe from pollution as emptyRecord()'s. */
function storedRecord (): Fields {
  return new StoredRecord() as unknown as Fields
}

/** Attaches the stamps (frozen already) and the size to a new value record made by storedRecord() and freezes it. */
const seal = StoredRecord.seal

/** Attaches its estimated size to a new record made by storedRecord() (presence records, which are not frozen, too). */
export const withSize = StoredRecord.withSize

/** The estimated JSON size of a stored record (measured when it was stored). */
export function sizeOf (value: Fields): number {
  return StoredRecord.sizeOf(value) ?? jsonSize(value)
}

const TOMBSTONE_SIZE = jsonSize({ _exists: false })

/**
 * The estimated size of the record appliedValue made: a merge costs the
 * fields it replaces and writes, not the ones it copies unchanged.
 */
export function appliedSize (kind: Exclude<ApplyKind, 'dropped'>, existing: Fields | undefined, incoming: ComponentData, value: Fields): number {
  if (kind === 'tombstone') return TOMBSTONE_SIZE
  if (kind === 'create') return jsonSize(value)
  let size = sizeOf(existing!)
  for (const field in incoming) {
    if (!Object.hasOwn(incoming, field)) continue
    if (Object.hasOwn(existing!, field)) size -= fieldSize(field, existing![field], 1)
    size += fieldSize(field, value[field], 1)
  }
  return size
}

/** The records a frame's patches apply to: a document, or one client's presence. */
export interface StoredRecords { get(key: string): Fields | undefined }

/**
 * How much applying `patches` would change the estimated size of `stored`
 * (negative when it shrinks), computed exactly by applying them to copies.
 * `keepTombstones`: a deleted key stays as a tombstone (the document), or is
 * forgotten (presence).
 */
export function growthOf (stored: StoredRecords | undefined, patches: readonly Patch[], keepTombstones: boolean): number {
  // Records this frame has already changed; null for a key it deleted from presence.
  const pending = new Map<string, Fields | null>()
  const current: StoredRecords = {
    get (key) {
      const held = pending.get(key)
      return held === undefined ? stored?.get(key) : held ?? undefined
    }
  }
  return applyRecords(current, (key, value, size) => pending.set(key, value === null ? null : withSize(value, size)), patches, keepTombstones)
}

/** Stores one applied key: its new record (null: forgotten) and that record's estimated size, how, and what it replaces. */
type WriteRecord = (key: string, value: Fields | null, size: number, kind: Exclude<ApplyKind, 'dropped'>, existing: Fields | undefined, incoming: ComponentData) => void

/**
 * Applies patches to records read from `stored` and written through `write`:
 * the one place that decides what each key of a patch does (the document,
 * presence and the size check all go through it). `keepTombstones`: a
 * deleted key is stored as a tombstone (the document), or forgotten, written
 * as null (presence).
 * @returns how much the estimated size changed
 */
function applyRecords (stored: StoredRecords, write: WriteRecord, patches: readonly Patch[], keepTombstones: boolean): number {
  let growth = 0
  for (const patch of patches) {
    for (const key in patch) {
      if (!Object.hasOwn(patch, key)) continue
      const incoming = patch[key]
      const existing = stored.get(key)
      const kind = applyKind(existing, incoming)
      // An empty update of a live key changes nothing.
      if (kind === 'dropped' || (kind === 'merge' && !isNonEmpty(incoming))) continue
      if (existing !== undefined) growth -= keyOverhead(key) + sizeOf(existing)
      if (kind === 'tombstone' && !keepTombstones) {
        write(key, null, 0, kind, existing, incoming)
        continue
      }
      const value = appliedValue(kind, existing, incoming)
      const size = appliedSize(kind, existing, incoming, value)
      growth += keyOverhead(key) + size
      write(key, value, size, kind, existing, incoming)
    }
  }
  return growth
}

const stampsOf = StoredRecord.stampsOf

type Stamps = Readonly<Record<string, number>>

/** Frozen stamps records made by one frame, by previous stamps and field list, for sharing between its keys. */
class StampsCache {
  readonly #byBase = new Map<Stamps | null, Map<string, Stamps>>()

  get (base: Stamps | null, fields: string[], ts: number): Stamps {
    // Field names may hold any character: JSON keeps two different lists apart.
    const signature = JSON.stringify(fields)
    let bySignature = this.#byBase.get(base)
    if (bySignature === undefined) {
      bySignature = new Map()
      this.#byBase.set(base, bySignature)
    }
    let stamps = bySignature.get(signature)
    if (stamps === undefined) {
      stamps = makeStamps(base, fields, ts)
      bySignature.set(signature, stamps)
    }
    return stamps
  }
}

function makeStamps (base: Stamps | null, fields: string[], ts: number): Stamps {
  const stamps = copyStamps(base)
  for (const field of fields) stamps[field] = ts
  return Object.freeze(stamps)
}

/** makeStamps for the own fields of a record (one key's incoming value), without listing them first. */
function stampFields (base: Stamps | null, incoming: object, ts: number): Stamps {
  const stamps = copyStamps(base)
  for (const field in incoming) {
    if (Object.hasOwn(incoming, field)) stamps[field] = ts
  }
  return Object.freeze(stamps)
}

function copyStamps (base: Stamps | null): Record<string, number> {
  const stamps = emptyRecord<number>()
  if (base !== null) {
    for (const field in base) stamps[field] = base[field]
  }
  return stamps
}

/** The highest stamp of a key: the counter of the last frame that stored something under it. */
function lastStamp (stamps: Stamps): number {
  let last = 0
  for (const field in stamps) if (stamps[field] > last) last = stamps[field]
  return last
}

const TOMBSTONE_FIELDS = ['_exists']
/** The keys stored outside of applyFrame: none (never added to). */
const NO_KEYS: string[] = []

/**
 * The persistent document of one room: pure, synchronous state with a
 * counter, per-field last-writer-wins timestamps and tombstones.
 *
 * `changesSince(T)` costs what changed after T, not the document size: a log
 * of (counter, key) pairs, ordered because the counter only grows, is binary
 * searched for T and read forward.
 */
export class Document {
  #timestamp = 0
  /**
   * Key -> value record (with its stamps). A changed key keeps its place:
   * moving it to the end (delete, then set) made V8 rebuild a small room's
   * table on every change, garbage that outlived young collections.
   */
  readonly #entries = new Map<string, Fields>()
  /**
   * (counter, key) lines in counter order, for changesSince(T > 0). Built on
   * the first such call (sorting the keys by their last stamp), so that rooms
   * nobody reconnects to with a counter do not pay for it.
   */
  #logKeys: string[] | null = null
  #logStamps: number[] | null = null
  /** Estimated JSON size of every key and value held (see size.ts). */
  #bytes = 0
  /** The highest field stamp of the snapshot the document was built from. */
  #loadedStamp = 0

  /** The room counter: how many document frames have been applied. */
  get timestamp (): number { return this.#timestamp }

  /**
   * The highest field stamp of the snapshot the document was built from (0
   * for none): every counter above it that a client saw before the load,
   * up to the loaded counter, belongs to a write that storage does not hold.
   */
  get loadedStamp (): number { return this.#loadedStamp }

  /** Number of keys held, tombstones included. */
  get size (): number { return this.#entries.size }

  /** Estimated size in bytes of the document as JSON, tombstones included (see size.ts). */
  get bytes (): number { return this.#bytes }

  /** How much applying `patches` would change {@link bytes}, without applying them. */
  growth (patches: readonly Patch[]): number {
    return growthOf(this.#entries, patches, true)
  }

  /**
   * Applies the document patches of one client frame. A frame that carries
   * at least one non-empty patch advances the counter by exactly one, and
   * every field it stores is stamped with the new value.
   * @returns the keys actually stored, or `null` when the frame had nothing to apply
   */
  applyFrame (patches: readonly Patch[]): string[] | null {
    if (!hasContent(patches)) return null
    ++this.#timestamp
    const stored: string[] = []
    this.#stored = stored
    // Only a frame with several keys can share stamps records between them.
    this.#stampsCache = patches.length > 1 || !hasOneKey(patches[0]) ? new StampsCache() : null
    // Every field stored is stamped; an empty update of a live key stores nothing (no stamp, no change to report).
    this.#bytes += applyRecords(this.#entries, this.#store, patches, true)
    this.#stored = NO_KEYS
    this.#stampsCache = null
    return stored
  }

  /** The frame being applied: the keys it stored, and its shared stamps records (see applyFrame). */
  #stored: string[] = NO_KEYS
  #stampsCache: StampsCache | null = null

  /** Stores one key of the frame being applied, stamped with the counter (made once, not per frame). */
  readonly #store: WriteRecord = (key, value, size, kind, entry, incoming) => {
    const ts = this.#timestamp
    const base = kind === 'merge' ? stampsOf(entry!) : null
    const cache = this.#stampsCache
    let stamps: Stamps
    if (cache !== null) stamps = cache.get(base, kind === 'tombstone' ? TOMBSTONE_FIELDS : Object.keys(incoming), ts)
    else if (kind === 'tombstone') stamps = makeStamps(null, TOMBSTONE_FIELDS, ts)
    else stamps = stampFields(base, incoming, ts)
    this.#touch(key, seal(value!, stamps, size), ts)
    this.#stored.push(key)
  }

  /** Current value of a key (tombstones included), or undefined. Frozen. */
  get (key: string): Fields | undefined {
    return this.#entries.get(key)
  }

  /** Field timestamps of a key, or undefined. Frozen. */
  getStamps (key: string): Readonly<Record<string, number>> | undefined {
    const value = this.#entries.get(key)
    return value === undefined ? undefined : stampsOf(value)
  }

  /**
   * Every field whose timestamp is greater than `since`, with its current
   * value (whole arrays, tombstones included), as one patch.
   * @returns the patch and its number of keys
   */
  changesSince (since: number): { patch: Patch, keys: number } {
    const patch = emptyRecord<ComponentData>()
    let keys = 0
    if (since >= this.#timestamp) return { patch, keys }
    if (since <= 0) {
      // Every stored field has a stamp of at least 1: the whole document.
      for (const [key, value] of this.#entries) {
        patch[key] = value as ComponentData
        keys++
      }
      return { patch, keys }
    }
    if (this.#logKeys === null) this.#compactLog()
    const logKeys = this.#logKeys!
    const stamps = this.#logStamps!
    // First log position whose counter is greater than `since`.
    let lo = 0
    let hi = stamps.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (stamps[mid] <= since) lo = mid + 1
      else hi = mid
    }
    for (let i = lo; i < stamps.length; i++) {
      const key = logKeys[i]
      // A key changed several times since `since` has several lines: the first one reads its current fields.
      if (key in patch) continue
      const value = this.#entries.get(key)!
      const stamps = stampsOf(value)
      if (value._exists === true && stamps._exists > since) {
        // Created since (or a create merged into the live key): whole. The published client takes a value with
        // `_exists: true` as the whole component, so the fields older than `since` would fall back to defaults.
        patch[key] = value as ComponentData
        keys++
        continue
      }
      const out = emptyRecord()
      let fields = 0
      for (const field in stamps) {
        if (stamps[field] > since && field in value) {
          out[field] = value[field]
          fields++
        }
      }
      if (fields === 0) continue
      patch[key] = out as ComponentData
      keys++
    }
    return { patch, keys }
  }

  /**
   * The whole document, for storage and export. It shares the document's
   * records, which are frozen: they are never changed afterwards.
   */
  toSnapshot (): RoomSnapshot {
    const state = emptyRecord<ComponentData>()
    const timestamps = emptyRecord<FieldTimestamps>()
    for (const [key, value] of this.#entries) {
      state[key] = value as ComponentData
      timestamps[key] = stampsOf(value)
    }
    return { timestamp: this.#timestamp, state, timestamps }
  }

  /**
   * Builds a document from a stored snapshot. Malformed entries are skipped,
   * keys without timestamps are stamped with the snapshot's counter, and the
   * counter is never lower than any stored stamp.
   */
  static fromSnapshot (snapshot: RoomSnapshot | null | undefined): Document {
    const doc = new Document()
    if (snapshot === null || snapshot === undefined) return doc
    let counter = Number.isSafeInteger(snapshot.timestamp) && snapshot.timestamp > 0 ? snapshot.timestamp : 0
    // Every stored field has a stamp of at least 1, so that a diff since 0 holds it.
    const fallback = Math.max(counter, 1)
    const loaded: Array<[string, Fields, number]> = []
    const state = isRecord(snapshot.state) ? snapshot.state : {}
    const allStamps = isRecord(snapshot.timestamps) ? snapshot.timestamps : {}
    for (const key of Object.keys(state)) {
      const raw = state[key]
      if (!isRecord(raw)) continue
      const fields = Object.keys(raw)
      // A value without fields stores nothing (every stored key has at least `_exists`).
      if (fields.length === 0) continue
      const value = storedRecord()
      for (const field of fields) value[field] = raw[field]
      const rawStamps = Object.hasOwn(allStamps, key) && isRecord(allStamps[key]) ? allStamps[key] : {}
      const stamps = emptyRecord<number>()
      for (const field of fields) {
        const s = rawStamps[field]
        stamps[field] = typeof s === 'number' && Number.isSafeInteger(s) && s > 0 ? s : fallback
      }
      const last = lastStamp(stamps)
      if (last > counter) counter = last
      // A record this process stored before (MemoryStorage shares them) knows its size already.
      const size = sizeOf(raw)
      doc.#bytes += keyOverhead(key) + size
      loaded.push([key, seal(value, Object.freeze(stamps), size), last])
    }
    doc.#timestamp = counter
    loaded.sort((a, b) => a[2] - b[2])
    for (const [key, value, last] of loaded) doc.#touch(key, value, last)
    if (loaded.length > 0) doc.#loadedStamp = loaded[loaded.length - 1][2]
    return doc
  }

  #touch (key: string, value: Fields, last: number): void {
    this.#entries.set(key, value)
    if (this.#logKeys === null) return
    this.#logKeys.push(key)
    this.#logStamps!.push(last)
    if (this.#logKeys.length > 1024 && this.#logKeys.length > 2 * this.#entries.size) this.#compactLog()
  }

  /** (Re)writes the log with one line per key, in the order of their last change. */
  #compactLog (): void {
    const n = this.#entries.size
    const keys: string[] = new Array(n)
    const lasts = new Float64Array(n)
    let i = 0
    for (const [key, value] of this.#entries) {
      keys[i] = key
      lasts[i] = lastStamp(stampsOf(value))
      i++
    }
    // Sorted as numbers `last * n + index`, without a comparator (several times faster), while that stays exact.
    const order = new Float64Array(n)
    if (this.#timestamp * n + n <= Number.MAX_SAFE_INTEGER) {
      for (let j = 0; j < n; j++) order[j] = lasts[j] * n + j
      order.sort()
      for (let j = 0; j < n; j++) order[j] = order[j] % n
    } else {
      const indexes = Array.from({ length: n }, (_, j) => j).sort((a, b) => lasts[a] - lasts[b])
      for (let j = 0; j < n; j++) order[j] = indexes[j]
    }
    const logKeys: string[] = new Array(n)
    const logStamps: number[] = new Array(n)
    for (let j = 0; j < n; j++) {
      logKeys[j] = keys[order[j]]
      logStamps[j] = lasts[order[j]]
    }
    this.#logKeys = logKeys
    this.#logStamps = logStamps
  }
}

/** True when at least one patch of the list has a key. */
export function hasContent (patches: readonly Patch[] | undefined): patches is Patch[] {
  if (patches === undefined) return false
  return patches.some(isNonEmpty)
}

function hasOneKey (patch: Patch): boolean {
  let n = 0
  for (const key in patch) {
    if (Object.hasOwn(patch, key) && ++n > 1) return false
  }
  return true
}

function isNonEmpty (patch: object): boolean {
  for (const key in patch) {
    if (Object.hasOwn(patch, key)) return true
  }
  return false
}
