/**
 * Delivery accounting that holds whether a server forwards every value or
 * coalesces (latest value per key per tick): each receiver keeps, per
 * sender, the sequence numbers it saw and the highest one. From that:
 *   unique / duplicates   values seen once / again
 *   lost values           expected (sent x other members) minus unique; only
 *                         meaningful for a server that forwards every value
 *   final missing         (receiver, sender) pairs whose last value never
 *                         arrived: zero for any correct server, coalescing or not
 */
import { Samples } from './peer.js'

interface Track {
  max: number
  seen: Uint8Array
}

export class Deliveries {
  readonly latency = new Samples()
  unique = 0
  duplicates = 0
  outOfOrder = 0
  /** Frames that carried at least one marker. */
  frames = 0
  /** Per sender: its last sequence number sent (0 = nothing sent). */
  readonly lastSeq: Int32Array
  readonly #tracks: Array<Map<number, Track>>
  readonly #groups: number[][]
  readonly #maxSeq: number

  /** @param groups peers' indexes per room; @param peers number of peers; @param maxSeq highest sequence number a sender may use */
  constructor (groups: number[][], peers: number, maxSeq: number) {
    this.#groups = groups
    this.#maxSeq = maxSeq
    this.lastSeq = new Int32Array(peers)
    this.#tracks = Array.from({ length: peers }, () => new Map<number, Track>())
  }

  /** @returns false for a value outside the measured window (sequence number 0) */
  record (receiver: number, sender: number, seq: number, micros: number, nowMicros: number): boolean {
    if (seq < 1 || seq > this.#maxSeq || receiver >= this.#tracks.length) return false
    const tracks = this.#tracks[receiver]
    let track = tracks.get(sender)
    if (track === undefined) {
      track = { max: 0, seen: new Uint8Array(this.#maxSeq + 1) }
      tracks.set(sender, track)
    }
    if (track.seen[seq] === 1) {
      this.duplicates++
      return true
    }
    track.seen[seq] = 1
    this.unique++
    this.latency.push((nowMicros - micros) / 1000)
    if (seq < track.max) this.outOfOrder++
    else track.max = seq
    return true
  }

  /** Values that a forwarding server must deliver: each one sent, to every other member of its room. */
  expected (): number {
    let total = 0
    for (const group of this.#groups) {
      for (const sender of group) total += this.lastSeq[sender] * (group.length - 1)
    }
    return total
  }

  /** (receiver, sender) pairs whose sender's last value has not arrived. */
  finalMissing (): number {
    let missing = 0
    for (const group of this.#groups) {
      for (const sender of group) {
        const last = this.lastSeq[sender]
        if (last === 0) continue
        for (const receiver of group) {
          if (receiver === sender) continue
          const track = this.#tracks[receiver].get(sender)
          if (track === undefined || track.seen[last] !== 1) missing++
        }
      }
    }
    return missing
  }
}
