/**
 * How many bytes of reconnect answers may wait unsent, exempt from the
 * slow-client limits, at once: across every room of a plugin (one allowance
 * per registration; a Room made on its own has its own).
 *
 * The answer to a session's latest reconnect (the diff it asked for) is not
 * held against it until it has caught up, so that a document larger than
 * `slowClient.hardBytes`, or a link too slow to send it in `maxSlowMs`, can
 * still be joined. Without a bound on the sum, clients that join a large
 * document and never read would each keep a copy of it in server memory
 * until the heartbeat cut them: 40 sockets joining a 16 MB document held
 * 640 MB. Answers up to `slowClient.softBytes` are exempt freely; larger ones
 * only while the larger answers still unsent fit in the allowance, and
 * beyond it they count like any frame.
 */

import { DEFAULT_SLOW_CLIENT, type SlowClientPolicy } from './limits.js'

/** The allowance of a slow-client policy (unbounded when there is none). */
export function catchUpAllowance (policy: Partial<SlowClientPolicy> | false | undefined): CatchUpAllowance {
  return new CatchUpAllowance(policy === false ? Number.POSITIVE_INFINITY : policy?.catchUpBytes ?? DEFAULT_SLOW_CLIENT.catchUpBytes)
}

/** What the allowance reads of a session holding an exempt answer. */
export interface CatchUpHolder {
  /** Bytes of its latest reconnect answer still exempt. */
  catchUpBytes: number
  socket: { readonly readyState?: number, readonly bufferedAmount?: number }
}

/** A socket that is closing still holds what it has not sent (ws waits up to 30 s for the peer's close); a closed one nothing. */
const CLOSED = 3

export class CatchUpAllowance {
  readonly #limit: number
  readonly #holders = new Set<CatchUpHolder>()

  constructor (limit: number) {
    this.#limit = limit
  }

  /**
   * May `bytes` more of `holder`'s latest answer be exempt? Answers up to
   * `free` bytes always may. Holders that have caught up (no more unsent
   * than `free`) or closed are dropped on the way.
   */
  admit (holder: CatchUpHolder, bytes: number, free: number): boolean {
    if (bytes <= free) return true
    let held = 0
    for (const other of this.#holders) {
      if (other === holder) {
        // An answer sent as two frames: its first is held already.
        held += other.catchUpBytes
        continue
      }
      const unsent = other.socket.readyState === CLOSED ? 0 : other.socket.bufferedAmount ?? 0
      if (unsent <= free) {
        this.#holders.delete(other)
        continue
      }
      held += Math.min(other.catchUpBytes, unsent)
    }
    if (held + bytes > this.#limit) return false
    this.#holders.add(holder)
    return true
  }

  /** The holder caught up, reconnected again, or left. */
  release (holder: CatchUpHolder): void {
    this.#holders.delete(holder)
  }

  /** Sessions holding an exempt answer larger than the free size (for tests). */
  get holders (): number { return this.#holders.size }
}
