import { systemClock, type SlotClock, type SlotTimer } from './slots.js'

/**
 * One pending run of a room's batched sending (presence, clientCount): at
 * the end of the current event-loop turn or, when the caller asks for
 * spacing, no sooner than `interval` ms after the previous run. At most one
 * run is pending at a time.
 */
export class Pacer {
  readonly #interval: number
  readonly #run: () => void
  #lastRun = Number.NEGATIVE_INFINITY
  readonly #clock: SlotClock
  #immediate: ReturnType<typeof setImmediate> | null = null
  #timer: SlotTimer | null = null

  /** `clock`: where the spacing is measured and waited for (a fake one in tests). */
  constructor (interval: number, run: () => void, clock: SlotClock = systemClock) {
    this.#interval = interval
    this.#run = run
    this.#clock = clock
  }

  get pending (): boolean { return this.#immediate !== null || this.#timer !== null }

  /** Asks for a run, unless one is pending; `spaced` puts it `interval` ms after the previous one. */
  request (spaced: boolean): void {
    if (this.pending) return
    const wait = spaced ? this.#lastRun + this.#interval - this.#clock.now() : 0
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
    this.#immediate = null
    this.#timer = null
    this.#run()
  }
}
