/**
 * Timers for work that may run a little early, such as throttled saves:
 * every room of the process that asks for one due in the same slot shares a
 * single Node timer, instead of each waking the process at its own
 * millisecond. With 500 rooms saving once a second, the event loop woke 500
 * more times a second, each a trip through epoll and, on a busy machine, a
 * context switch; in slots it wakes at most 10 times.
 *
 * A callback asked for in `delay` ms runs at the start of the slot that
 * holds its due time: early by less than one slot, never late. A slot is a
 * tenth of the delay, at most 100 ms. Times come from the monotonic clock
 * (a wall-clock step must not make a callback wait for another slot's
 * timer). The timers are unref'd: waiting for them never holds the process
 * open.
 */
const MAX_SLOT_MS = 100

/** The longest delay setTimeout takes (2^31 - 1 ms, about 24.8 days); Node runs a longer one after 1 ms. */
export const MAX_TIMER_MS = 2_147_483_647

/** A timer armed by a {@link SlotClock}. */
export interface SlotTimer { unref: () => unknown }

/** What slots read time from and arm timers with (a fake one in tests). */
export interface SlotClock {
  /** Milliseconds on a monotonic clock. */
  now: () => number
  setTimeout: (run: () => void, ms: number) => SlotTimer
  clearTimeout: (timer: SlotTimer) => void
}

/** performance.now() and Node's timers. */
export const systemClock: SlotClock = {
  now: () => performance.now(),
  setTimeout: (run, ms) => setTimeout(run, ms),
  clearTimeout: (timer) => clearTimeout(timer as NodeJS.Timeout)
}

interface Slot {
  readonly due: number
  readonly timer: SlotTimer
  readonly entries: Set<SlotEntry>
}

/** A callback waiting in a slot (what {@link SlotTimers.cancel} takes). */
export interface SlotEntry {
  /** When its slot starts (on the clock's `now()`). */
  readonly due: number
}

interface Entry extends SlotEntry {
  readonly run: () => void
  readonly slot: Slot
}

export class SlotTimers {
  readonly #clock: SlotClock
  /** Slots by due time (a multiple of the slot's length). */
  readonly #slots = new Map<number, Slot>()
  #waiting = 0

  constructor (clock: SlotClock = systemClock) {
    this.#clock = clock
  }

  /** Number of timers armed. */
  get armed (): number { return this.#slots.size }

  /** Number of callbacks waiting. */
  get waiting (): number { return this.#waiting }

  /**
   * Runs `run` about `delay` ms from now: at the start of its slot, between
   * `delay` minus a tenth of it (at most 100 ms) and `delay`.
   */
  add (delay: number, run: () => void): SlotEntry {
    const now = this.#clock.now()
    const length = Math.min(MAX_SLOT_MS, Math.max(1, Math.floor(delay / 10)))
    const due = Math.floor((now + delay) / length) * length
    let slot = this.#slots.get(due)
    if (slot === undefined) {
      const timer = this.#clock.setTimeout(() => this.#fire(slot!), Math.max(1, Math.ceil(due - now)))
      timer.unref()
      slot = { due, timer, entries: new Set() }
      this.#slots.set(due, slot)
    }
    const entry: Entry = { due, run, slot }
    slot.entries.add(entry)
    this.#waiting++
    return entry
  }

  /** The clock's time, in ms. */
  now (): number {
    return this.#clock.now()
  }

  /** A timer of its own on the same clock, not unref'd (a retry that must hold the process open). */
  timer (delay: number, run: () => void): SlotTimer {
    return this.#clock.setTimeout(run, delay)
  }

  clearTimer (timer: SlotTimer): void {
    this.#clock.clearTimeout(timer)
  }

  /** Drops a callback that has not run yet, even while its slot is running the others. */
  cancel (entry: SlotEntry): void {
    const { slot } = entry as Entry
    if (!slot.entries.delete(entry)) return
    this.#waiting--
    if (slot.entries.size > 0 || this.#slots.get(slot.due) !== slot) return
    this.#clock.clearTimeout(slot.timer)
    this.#slots.delete(slot.due)
  }

  #fire (slot: Slot): void {
    // Callbacks asked for from here on go to a new slot, even with the same due time.
    this.#slots.delete(slot.due)
    // A callback may cancel another of this slot: a Set's iteration skips what is deleted before it is reached.
    for (const entry of slot.entries) {
      slot.entries.delete(entry)
      this.#waiting--
      try {
        (entry as Entry).run()
      } catch (err) {
        // The callbacks are the rooms' own and catch what they expect; one that throws must not stop the slot's others.
        process.emitWarning(`a timed callback threw: ${err instanceof Error ? err.stack ?? err.message : String(err)}`, 'CanvasStoreSlotWarning')
      }
    }
  }
}

/** The process's slots, shared by every room. */
export const slotTimers = new SlotTimers()
