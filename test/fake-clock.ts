import type { SlotClock } from '../lib/room/slots.js'

interface FakeTimer {
  at: number
  run: () => void
  unrefd: boolean
  unref: () => void
}

/** A clock that moves only when told to, running the timers that fall due on the way. */
export function fakeClock (start = 1000.25) {
  let now = start
  const timers = new Set<FakeTimer>()
  const clock: SlotClock = {
    now: () => now,
    setTimeout: (run, ms) => {
      const timer: FakeTimer = { at: now + ms, run, unrefd: false, unref () { this.unrefd = true } }
      timers.add(timer)
      return timer
    },
    clearTimeout: (timer) => { timers.delete(timer as FakeTimer) }
  }
  const advance = (ms: number): void => {
    const end = now + ms
    for (;;) {
      let next: FakeTimer | undefined
      for (const timer of timers) if (timer.at <= end && (next === undefined || timer.at < next.at)) next = timer
      if (next === undefined) break
      timers.delete(next)
      now = next.at
      next.run()
    }
    now = end
  }
  return { clock, timers, advance, now: () => now }
}
