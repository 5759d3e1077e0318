import { isRoomMoved } from '../errors.js'
import { COUNTER_RESERVE, isIncremental, storesAsGiven, type IncrementalStorage, type Storage, type StoredEntry } from '../storage/storage.js'
import { sizeOf, type Document } from './document.js'
import type { RoomLogger, RoomObserver } from './session.js'
import { slotTimers, type SlotEntry, type SlotTimer, type SlotTimers } from './slots.js'

/**
 * When an ack may be sent.
 * - `durable`: after the write holding the change has committed (needs a
 *   storage with `append`; writes of one event-loop turn are grouped).
 * - `throttled`: at once; changes are written every `saveThrottleMs` (the
 *   acks of a counter past the stored reservation wait for a write of a new
 *   one, see COUNTER_RESERVE).
 */
export type Durability = 'durable' | 'throttled'

export interface PersistenceOptions {
  storage: Storage | undefined
  document: () => Document
  throttleMs: number
  durability: Durability
  log: RoomLogger
  roomId: string
  /** Called after a write committed (with durable acks: release what waited for it). */
  onCommit: () => void
  /**
   * Called when writes have kept failing for longer than `failureBoundMs`,
   * and when one write has not settled within it (and again each
   * `failureBoundMs` it goes on hanging).
   */
  onGiveUp: (err: unknown) => void
  /**
   * Called once when the storage refused a write because another process
   * loaded the room since (see RoomMovedError): nothing more is written,
   * and flush() resolves at once.
   */
  onMoved: (err: unknown) => void
  failureBoundMs: number
  observer?: RoomObserver | undefined
  /** Where throttled writes wait (tests pass their own, on a fake clock). */
  slots?: SlotTimers
}

const MAX_RETRY_MS = 30_000
/**
 * With durable acks, a write whose changed keys hold more than this many
 * bytes (the document's size estimate) does not go at once: it waits
 * HOLD_MS_PER_MIB per MiB (at most MAX_HOLD_MS), gathering the changes made
 * meanwhile. A storage that writes changed keys whole (SQLite, PostgreSQL)
 * rewrites a large key for every change to any field of it: ten changes a
 * second to one field of a 48 MB key had SQLite serialize and write 480 MB
 * a second on the event loop, stalling every room. The room's acks and
 * broadcasts wait with the write (in order), so the wait is the room's own.
 */
const HOLD_FREE_BYTES = 1024 * 1024
const HOLD_MS_PER_MIB = 64
const MAX_HOLD_MS = 5_000

/**
 * The persistence schedule of one room: whole snapshots for a plain
 * `Storage`, changed keys only for an `IncrementalStorage`. One write is in
 * flight at a time; a failed write keeps its changes pending and is retried
 * with backoff while the room keeps serving.
 *
 * Writes are numbered. `required` is the number of the write that will hold
 * everything applied so far (with throttled acks: that reserves the counter),
 * `committed` the last one that succeeded: while `holding`, a message may
 * leave once `committed >= required` at the time it was produced.
 */
export class Persistence {
  readonly #o: PersistenceOptions
  readonly #incremental: IncrementalStorage | undefined
  readonly #slots: SlotTimers
  /** Durable acks over a storage with `append`: acks wait for the write holding their change. */
  readonly #durable: boolean
  /** Throttled acks over a storage: writes store a reservation past the counter (see COUNTER_RESERVE). */
  readonly #reserving: boolean
  /** A snapshot storage that stores a lower counter as given: a final flush is one save (see STORES_AS_GIVEN). */
  readonly #oneFinalSave: boolean
  /**
   * The highest counter the room may ack (when #reserving): the loaded
   * counter, then below the reservation stored by the last write that
   * committed (the reservation itself is where the next load starts, so it
   * is never acked), or the counter a final write stored.
   */
  #reservedThrough = 0
  /** The same for the write in flight, once it commits. */
  #inFlightThrough = 0
  /** Keys changed since the last write was cut (incremental path). */
  #changed = new Set<string>()
  /**
   * A document frame moved the counter since the last write was cut
   * (incremental path). A frame whose patches stored nothing (a partial
   * update of a deleted key) moves it too, as the protocol says, and its ack
   * carries it: the next write holds the counter even without a key, or a
   * restart would give that counter to another frame, which a client that
   * was acked with it would never be sent.
   */
  #counterMoved = false
  /** Something changed since the last snapshot was cut (snapshot path). */
  #dirty = false
  #seq = 0
  #committed = 0
  #inFlight: Promise<unknown> | null = null
  /** A retry of a failed write (a plain timer on the slots' clock). */
  #timer: SlotTimer | null = null
  /** The throttled write's place in a shared slot (see slots.ts). */
  #slot: SlotEntry | null = null
  /** Fires when the write in flight has not settled within failureBoundMs (see #watch). */
  #watchdog: SlotTimer | null = null
  /** A cut is queued as a microtask (durable path). */
  #queued = false
  #failures = 0
  #failingSince = 0
  #stopped = false
  /** The storage said another process has the room: nothing more may be written. */
  #moved = false

  constructor (options: PersistenceOptions) {
    this.#o = options
    this.#slots = options.slots ?? slotTimers
    const storage = options.storage
    this.#incremental = storage !== undefined && isIncremental(storage) ? storage : undefined
    this.#durable = this.#incremental !== undefined && options.durability === 'durable'
    this.#reserving = storage !== undefined && !this.#durable
    this.#oneFinalSave = this.#reserving && this.#incremental === undefined && storesAsGiven(storage!)
  }

  /**
   * The room's document was loaded with this counter (stored, maybe a
   * reservation) and `lastStamp` its highest field stamp.
   * @returns the counters a process that crashed with throttled acks may
   * have acked and not written: above `lastStamp`, below the counter. A gap
   * of COUNTER_RESERVE or more is such a reservation; a counter written as
   * itself is above the last stamp only by frames that stored nothing.
   */
  loaded (counter: number, lastStamp: number): { after: number, before: number } | null {
    this.#reservedThrough = counter
    return counter - lastStamp >= COUNTER_RESERVE ? { after: lastStamp, before: counter } : null
  }

  /**
   * True when what the room sends must wait for a write: always with durable
   * acks; with throttled ones while the counter is past the highest one the
   * committed reservation allows (see #reservedThrough).
   */
  get holding (): boolean {
    return this.#durable || (this.#reserving && this.#o.document().timestamp > this.#reservedThrough)
  }

  /** Number of the write that will hold everything applied so far (with throttled acks: that reserves the counter). */
  get required (): number {
    if (this.#durable) return this.#pending() ? this.#seq + 1 : this.#seq
    const counter = this.#o.document().timestamp
    if (counter <= this.#reservedThrough) return this.#committed
    return this.#inFlight !== null && counter <= this.#inFlightThrough ? this.#seq : this.#seq + 1
  }

  /** Number of the last write that committed. */
  get committed (): number { return this.#committed }

  /** Records the keys a document frame stored (maybe none: it moved the counter all the same) and schedules their write. */
  noteChanges (keys: readonly string[]): void {
    if (this.#o.storage === undefined) return
    if (this.#incremental !== undefined) {
      for (const key of keys) this.#changed.add(key)
      this.#counterMoved = true
    } else {
      this.#dirty = true
    }
    if (!this.#pending()) return
    if (!this.holding) {
      this.#schedule(this.#o.throttleMs)
      return
    }
    // Throttled acks past the reservation: the throttled write, if armed, goes now (a reservation is due). A
    // durable write's slot is a large key's wait (see #holdMs): it stays.
    if (!this.#durable && this.#slot !== null) {
      this.#slots.cancel(this.#slot)
      this.#slot = null
    }
    this.#schedule(0)
  }

  /**
   * Writes the counter as it is (incremental path): with durable acks what
   * the room sends next waits for that write, so it leaves only if the
   * storage still takes the room's writes (no RoomMovedError).
   */
  confirm (): void {
    if (this.#incremental !== undefined) this.noteChanges([])
  }

  /** How long the durable write about to be cut waits to gather changes: 0 unless its keys are large. */
  #holdMs (): number {
    const doc = this.#o.document()
    let bytes = 0
    for (const key of this.#changed) {
      const value = doc.get(key)
      if (value !== undefined) bytes += sizeOf(value)
    }
    return bytes <= HOLD_FREE_BYTES ? 0 : Math.min(MAX_HOLD_MS, Math.ceil(bytes / (1024 * 1024) * HOLD_MS_PER_MIB))
  }

  /**
   * Writes everything pending now and waits for it. `final`: nobody can
   * write to the room now (no session): with throttled acks, once the
   * changes are written (with a reservation, as usual), one more write
   * stores the counter itself in place of the reservation (see
   * COUNTER_RESERVE). It holds no change: a storage that refuses or ignores
   * a counter lower than the stored one loses nothing by it. (A snapshot
   * storage marked STORES_AS_GIVEN gets one save holding both.) Asked again
   * before each write: a session may join meanwhile.
   * @throws the storage's error when the write fails
   */
  async flush (final: () => boolean = () => false): Promise<void> {
    this.#clearTimers()
    for (;;) {
      if (this.#moved) return
      if (this.#inFlight !== null) {
        await this.#inFlight
        continue
      }
      const changes = this.#pending()
      let last: boolean
      if (changes) last = this.#oneFinalSave && final()
      else if (this.#reserving && this.#reservedThrough > this.#o.document().timestamp && final()) last = true
      else return
      const err = await this.#write(last)
      if (err !== undefined) throw err
    }
  }

  /** Another process has loaded the room (found before a write): nothing more is written, flush included. */
  markMoved (): void {
    this.#moved = true
    this.stop()
  }

  /** No more scheduled writes (flush still works), and no more reports of a write that hangs: the room is closed. */
  stop (): void {
    this.#stopped = true
    this.#clearTimers()
    this.#unwatch()
  }

  #pending (): boolean {
    return this.#incremental !== undefined ? this.#counterMoved : this.#dirty
  }

  #schedule (delay: number): void {
    if (this.#stopped || this.#inFlight !== null || this.#timer !== null || this.#slot !== null || this.#queued) return
    this.#arm(delay)
  }

  /** Separate from #schedule, which runs on every document frame: its closure is only made when a write is armed. */
  #arm (delay: number): void {
    const run = (): void => {
      this.#timer = null
      this.#slot = null
      if (!this.#queued && delay === 0) return
      this.#queued = false
      if (this.#inFlight !== null || !this.#pending()) return
      // Decided when the write is cut, from the sizes of the keys it would write.
      const hold = delay === 0 && this.#durable ? this.#holdMs() : 0
      if (hold > 0) this.#arm(hold)
      else this.#write().catch(() => {})
    }
    if (delay === 0) {
      // Every frame of the socket read being handled goes into one write; the
      // storage then groups the writes of every room of this loop turn into one
      // commit. While a write is in flight, changes gather for the next one.
      this.#queued = true
      queueMicrotask(run)
    } else if (this.#failures === 0) {
      // The throttle: may run up to a tenth early, in a timer shared with other rooms; does not hold the process open.
      this.#slot = this.#slots.add(delay, run)
    } else {
      // A retry of a failed write holds the process open.
      this.#timer = this.#slots.timer(delay, run)
    }
  }

  #clearTimers (): void {
    if (this.#timer !== null) this.#slots.clearTimer(this.#timer)
    if (this.#slot !== null) this.#slots.cancel(this.#slot)
    this.#timer = null
    this.#slot = null
    this.#queued = false
  }

  /**
   * Cuts and runs one write. `final` (throttled acks only, see flush): it
   * stores the counter itself, not a reservation. Resolves with the error,
   * if any; never rejects.
   */
  #write (final = false): Promise<unknown> {
    const storage = this.#o.storage!
    const doc = this.#o.document()
    const id = ++this.#seq
    const start = performance.now()
    const counter = doc.timestamp
    const through = this.#reserving && !final ? Math.min(counter + COUNTER_RESERVE, Number.MAX_SAFE_INTEGER) : counter
    this.#inFlightThrough = final ? through : through - 1
    // A final write lowers the stored counter: from now on, a counter past it waits for a new reservation.
    if (final) this.#reservedThrough = Math.min(this.#reservedThrough, through)
    let keys: Set<string> | undefined
    let work: Promise<void>
    try {
      if (this.#incremental !== undefined) {
        keys = this.#changed
        this.#changed = new Set()
        this.#counterMoved = false
        const entries: StoredEntry[] = []
        for (const key of keys) {
          entries.push({ key, value: doc.get(key)! as StoredEntry['value'], stamps: doc.getStamps(key) as StoredEntry['stamps'] })
        }
        work = this.#incremental.append(final ? { timestamp: through, entries, final } : { timestamp: through, entries })
      } else {
        this.#dirty = false
        const snapshot = doc.toSnapshot()
        snapshot.timestamp = through
        work = storage.save(snapshot)
      }
    } catch (err) {
      work = Promise.reject(err)
    }
    // Every write is watched: with throttled acks too, a frame may come to wait for the write in flight (its
    // counter passes the stored one), and a write that never settles would hold the room's messages for good
    // (it is reported only then, see #watch).
    if (!this.#stopped) this.#watch()
    const run = work.then(() => {
      this.#o.observer?.storageWrite((performance.now() - start) / 1000, true)
      this.#committed = id
      // What storage holds now (a final write's counter is below the reservation stored before).
      if (this.#reserving) this.#reservedThrough = final ? through : Math.max(this.#reservedThrough, through - 1)
      this.#failures = 0
      this.#o.onCommit()
      return undefined
    }, (err: unknown) => {
      this.#o.observer?.storageWrite((performance.now() - start) / 1000, false)
      if (isRoomMoved(err)) {
        // Not a failure to retry: what this process holds of the room is stale, and writing it would overwrite.
        this.markMoved()
        this.#o.onMoved(err)
        return undefined
      }
      // Keep the changes pending: the next write reads their current values.
      if (keys !== undefined) {
        for (const key of keys) this.#changed.add(key)
        this.#counterMoved = true
      } else {
        this.#dirty = true
      }
      if (this.#failures++ === 0) this.#failingSince = this.#slots.now()
      this.#o.log.error({ err, roomId: this.#o.roomId, failures: this.#failures }, 'writing the room to storage failed; will retry')
      if (this.#slots.now() - this.#failingSince >= this.#o.failureBoundMs) this.#o.onGiveUp(err)
      return err
    }).finally(() => {
      this.#unwatch()
      this.#inFlight = null
      if (this.#pending() && !this.#moved) this.#schedule(this.#retryDelay())
    })
    this.#inFlight = run
    return run
  }

  /**
   * A write that neither commits nor fails (a lock held elsewhere, a
   * connection that went silent) would keep the room's clients waiting for
   * acks, told nothing: past failureBoundMs it is reported as a failure
   * would be. The write itself goes on; if it commits later, so be it.
   */
  #watch (periods = 1): void {
    const bound = this.#o.failureBoundMs
    // 0 gives up at the first failure; it does not call every write in flight a hang.
    if (bound === 0) return
    this.#watchdog = this.#slots.timer(bound, () => {
      // A throttled write that nothing waits for (no counter past the stored one) is only slow: looked at again
      // a bound later, and reported once something waits for it.
      if (!this.#durable && !this.holding) {
        this.#watch(periods + 1)
        return
      }
      const waitedMs = bound * periods
      this.#o.log.error({ roomId: this.#o.roomId, waitedMs }, 'a write to storage has not settled; telling the room\'s sessions')
      this.#o.onGiveUp(new Error(`storage has not answered a write for ${waitedMs} ms`))
      // Giving up may have closed the room (stop() cleared the watchdog this callback replaces).
      if (!this.#stopped) this.#watch(periods + 1)
    })
    this.#watchdog.unref()
  }

  #unwatch (): void {
    if (this.#watchdog !== null) this.#slots.clearTimer(this.#watchdog)
    this.#watchdog = null
  }

  #retryDelay (): number {
    // With durable acks the next write is queued at once; a large one's wait is decided when it is cut, and never
    // multiplied into the backoff of a failed write.
    const base = this.holding ? 0 : this.#o.throttleMs
    if (this.#failures === 0) return base
    const backoff = Math.min(MAX_RETRY_MS, Math.max(base, 100) * 2 ** Math.min(this.#failures, 10))
    // A retry falls on the failure bound, so that writes failing that long are reported then, not at the next
    // step of the backoff (12.6 s instead of 10 with the defaults).
    const untilBound = this.#failingSince + this.#o.failureBoundMs - this.#slots.now()
    return untilBound > 0 && untilBound < backoff ? untilBound : backoff
  }
}
