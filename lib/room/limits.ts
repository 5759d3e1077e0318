import type { Patch } from '../protocol/types.js'

/** Bounds on what one room accepts. Every field optional; see {@link DEFAULT_LIMITS}. */
export interface RoomLimits {
  /** Most patches in one frame's `documentPatches` or `ephemeralPatches`. */
  maxPatchesPerFrame: number
  /** Most keys in one frame, document and ephemeral patches together. */
  maxKeysPerFrame: number
  /** Most document keys a room holds, tombstones included. */
  maxDocumentKeys: number
  /**
   * Largest document, as the length of its JSON text in characters, with
   * every number counted as 8 (see size.ts). A frame that would make a
   * document larger than this, and larger than it is, is refused.
   */
  maxDocumentBytes: number
  /** Most presence (ephemeral) keys one client holds. */
  maxEphemeralKeys: number
  /** Largest presence of one client, measured like {@link maxDocumentBytes}; over it, a frame's presence patches are refused. */
  maxEphemeralBytes: number
  /** Most sessions in one room; one more is refused with 1013. */
  maxSessions: number
  /**
   * Most stored fields one frame may make the server copy: merging into a key
   * copies the fields it holds, once per mention of the key (about 1 µs each).
   */
  maxFieldCopiesPerFrame: number
}

export const DEFAULT_LIMITS: RoomLimits = {
  maxPatchesPerFrame: 1000,
  maxKeysPerFrame: 50_000,
  maxDocumentKeys: 1_000_000,
  maxDocumentBytes: 64 * 1024 * 1024,
  maxEphemeralKeys: 1000,
  maxEphemeralBytes: 128 * 1024,
  maxSessions: 1000,
  maxFieldCopiesPerFrame: 200_000
}

/** Frame and byte rates allowed per session (token buckets). */
export interface RateLimit {
  /** Sustained frames per second. */
  framesPerSecond: number
  /** Frames allowed in a burst above the sustained rate. */
  burstFrames: number
  /** Sustained bytes per second. */
  bytesPerSecond: number
  /** Bytes allowed in a burst. Must be at least the largest frame you accept. */
  burstBytes: number
  /**
   * Frames refused for the rate after which the session is closed with
   * 4429. The count starts again after a second without a refusal; frames
   * that pass in between do not reset it.
   */
  closeAfter: number
}

export const DEFAULT_RATE_LIMIT: RateLimit = {
  framesPerSecond: 200,
  burstFrames: 400,
  bytesPerSecond: 4 * 1024 * 1024,
  burstBytes: 16 * 1024 * 1024,
  closeAfter: 100
}

/** When a session's socket cannot keep up with what the room sends it. */
export interface SlowClientPolicy {
  /** Above this many unsent bytes, presence frames to the session are dropped (it gets fresh presence once it catches up). */
  softBytes: number
  /** Above this many unsent bytes the session is closed (4002); its client reconnects and the diff catches it up. */
  hardBytes: number
  /** A session above `softBytes` for this long (ms) is closed too. */
  maxSlowMs: number
  /**
   * Most bytes of reconnect answers larger than `softBytes` that may wait
   * unsent, exempt from `hardBytes` and `maxSlowMs`, at once across the
   * plugin's rooms; beyond it an answer counts like any frame (see catch-up.ts).
   */
  catchUpBytes: number
}

export const DEFAULT_SLOW_CLIENT: SlowClientPolicy = {
  softBytes: 1024 * 1024,
  hardBytes: 64 * 1024 * 1024,
  maxSlowMs: 30_000,
  catchUpBytes: 256 * 1024 * 1024
}

/** Two token buckets (frames and bytes) of one session. */
export class TokenBucket {
  #frames: number
  #bytes: number
  #last: number
  readonly #limit: RateLimit

  constructor (limit: RateLimit, now: number) {
    this.#limit = limit
    this.#frames = limit.burstFrames
    this.#bytes = limit.burstBytes
    this.#last = now
  }

  #refill (now: number): void {
    const elapsed = (now - this.#last) / 1000
    this.#last = now
    const limit = this.#limit
    this.#frames = Math.min(limit.burstFrames, this.#frames + elapsed * limit.framesPerSecond)
    this.#bytes = Math.min(limit.burstBytes, this.#bytes + elapsed * limit.bytesPerSecond)
  }

  /** Takes one frame of `bytes`; false when either bucket is empty (nothing is taken then). */
  take (bytes: number, now: number): boolean {
    this.#refill(now)
    if (this.#frames < 1 || this.#bytes < bytes) return false
    this.#frames -= 1
    this.#bytes -= bytes
    return true
  }

  /**
   * Takes `bytes` from the byte bucket even when it holds fewer: the debt is
   * paid back by the refill before frames pass again. The debt never passes
   * `burstBytes`, so a session is never refused for longer than a full refill.
   */
  charge (bytes: number, now: number): void {
    this.#refill(now)
    this.#bytes = Math.max(-this.#limit.burstBytes, this.#bytes - bytes)
  }

  /** Takes `bytes` from the byte bucket only; false when it holds fewer (nothing is taken then). */
  takeBytes (bytes: number, now: number): boolean {
    this.#refill(now)
    if (this.#bytes < bytes) return false
    this.#bytes -= bytes
    return true
  }

  /** True while the byte bucket is in debt. */
  owing (now: number): boolean {
    this.#refill(now)
    return this.#bytes < 0
  }
}

/** Number of keys across patches, stopping early once past `max`. */
export function countKeys (patches: readonly Patch[] | undefined, max: number): number {
  if (patches === undefined) return 0
  let n = 0
  for (const patch of patches) {
    n += ownCount(patch)
    if (n > max) return n
  }
  return n
}

/** Number of own enumerable keys of a record, without listing them (Object.keys allocates an array). */
export function ownCount (record: object): number {
  let n = 0
  for (const key in record) {
    if (Object.hasOwn(record, key)) n++
  }
  return n
}
