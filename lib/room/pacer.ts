import { systemClock, type SlotClock, type SlotTimer } from './slots.js'

/**
 * One pending run of a room's batched sending (presence, clientCount): at
 * the end of the current event-loop turn or, when the caller asks for
 * spacing, later. At most one run is pending at a time.
 *
 * Spaced runs come no sooner than `interval` ms after the previous run;
 * with a `settle` time, they wait instead for the requests to stop: the run
 * comes once `interval` ms have passed without a request, or `settle` ms
 * after the first request it answers, whichever is sooner.
 */
export class Pacer {
  readonly #interval: number
  readonly #settle: number
  readonly #run: () => void
  #lastRun = Number.NEGATIVE_INFINITY
  /** With a settle time: when the pending run was first asked for, and last. */
  #firstAsk = 0
  #lastAsk = 0
  readonly #clock: SlotClock
  #immediate: ReturnType<typeof setImmediate> | null = null
  #timer: SlotTimer | null = null

  /** `clock`: where the spacing is measured and waited for (a fake one in tests); `settle`: see the class (0: none). */
  constructor (interval: number, run: () => void, clock: SlotClock = systemClock, settle = 0) {
    this.#interval = interval
    this.#settle = settle
    this.#run = run
    this.#clock = clock
  }

  get pending (): boolean { return this.#immediate !== null || this.#timer !== null }

  /** Asks for a run, unless one is pending; `spaced`: see the class. */
  request (spaced: boolean): void {
    if (this.pending) {
      if (spaced && this.#timer !== null && this.#settle > 0) this.#lastAsk = this.#clock.now()
      return
    }
    if (!spaced) {
      this.#immediate = setImmediate(this.#fire)
      return
    }
    const now = this.#clock.now()
    if (this.#settle > 0) {
      this.#firstAsk = this.#lastAsk = now
      this.#timer = this.#clock.setTimeout(this.#fire, this.#interval)
      return
    }
    const wait = this.#lastRun + this.#interval - now
    if (wait <= 0) this.#immediate = setImmediate(this.#fire)
    else this.#timer = this.#clock.setTimeout(this.#fire, wait)
  }

  /** Notes a run made now, by the pacer or early by its owner: the pending one is dropped. */
  ran (): void {
    this.cancel()
    this.#lastRun = this.#clock.now()
  }

  cancel (): void {
    if (this.#immediate !== null) clearImmediate(this.#immediate)
    if (this.#timer !== null) this.#clock.clearTimeout(this.#timer)
    this.#immediate = null
    this.#timer = null
  }

  readonly #fire = (): void => {
    if (this.#timer !== null && this.#settle > 0) {
      // Asked for again since the timer was set: wait for the quiet interval, within the settle time.
      const now = this.#clock.now()
      const due = Math.min(this.#lastAsk + this.#interval, this.#firstAsk + this.#settle)
      if (due > now) {
        this.#timer = this.#clock.setTimeout(this.#fire, due - now)
        return
      }
    }
    this.#immediate = null
    this.#timer = null
    this.#run()
  }
}
