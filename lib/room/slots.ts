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
 * tenth of the delay, at most 100 ms. The timers are unref'd: waiting for
 * them never holds the process open.
 */
const MAX_SLOT_MS = 100

/** A callback waiting in a slot (what {@link cancelSlot} takes). */
export interface SlotEntry {
  readonly due: number
  readonly run: () => void
}

interface Slot {
  timer: NodeJS.Timeout
  entries: Set<SlotEntry>
}

/** Slots by due time (ms since the epoch, a multiple of the slot's length). */
const slots = new Map<number, Slot>()

/** Number of timers armed for slots (for tests). */
export function armedSlots (): number {
  return slots.size
}

/**
 * Runs `run` about `delay` ms from now: at the start of its slot, between
 * `delay` minus a tenth of it (at most 100 ms) and `delay`.
 */
export function inSlot (delay: number, run: () => void): SlotEntry {
  const now = Date.now()
  const length = Math.min(MAX_SLOT_MS, Math.max(1, Math.floor(delay / 10)))
  const due = Math.max(now + 1, Math.floor((now + delay) / length) * length)
  const entry: SlotEntry = { due, run }
  let slot = slots.get(due)
  if (slot === undefined) {
    const timer = setTimeout(fire, due - now, due)
    timer.unref()
    slots.set(due, slot = { timer, entries: new Set() })
  }
  slot.entries.add(entry)
  return entry
}

/** Drops a callback that has not run yet (and the slot's timer once it has none left). */
export function cancelSlot (entry: SlotEntry): void {
  const slot = slots.get(entry.due)
  if (slot === undefined || !slot.entries.delete(entry)) return
  if (slot.entries.size > 0) return
  clearTimeout(slot.timer)
  slots.delete(entry.due)
}

function fire (due: number): void {
  const slot = slots.get(due)
  if (slot === undefined) return
  slots.delete(due)
  for (const entry of slot.entries) {
    try {
      entry.run()
    } catch (err) {
      // The callbacks are the rooms' own and catch what they expect; one that throws must not stop the slot's others.
      process.emitWarning(err instanceof Error ? err : new Error(String(err)), 'CanvasStoreSlotWarning')
    }
  }
}
