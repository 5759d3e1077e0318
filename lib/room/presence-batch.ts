import type { ComponentData, Patch } from '../protocol/types.js'
import { emptyRecord, isBufferDelta } from './document.js'

/**
 * Presence (ephemeral) patches of one event-loop turn, per sender, merged so
 * that each recipient gets at most one frame per turn, holding the latest
 * value of every key, instead of one frame per sender frame.
 *
 * Merging is exact: applying the merged list of patches gives a recipient the
 * same state as applying every received patch in order, whatever the
 * receiver holds. A change that cannot be folded into the last patch (a
 * create after a delete or after a partial update, a buffer delta over a
 * pending field) starts a new patch in the sender's list.
 */
export class PresenceBatch {
  /** clientId -> patches to send, in order. */
  readonly #senders = new Map<string, Patch[]>()

  get size (): number { return this.#senders.size }

  add (clientId: string, patches: Patch[]): void {
    let list = this.#senders.get(clientId)
    if (list === undefined) {
      list = [emptyRecord<ComponentData>()]
      this.#senders.set(clientId, list)
    }
    for (const patch of patches) {
      for (const key of Object.keys(patch)) {
        const incoming = patch[key]
        let last = list[list.length - 1]
        const pending = last[key]
        if (pending === undefined || incoming._exists === false) {
          last[key] = incoming._exists === false ? { _exists: false } : { ...incoming }
          continue
        }
        if (pending._exists === false) {
          // After a delete, a partial update is dropped by everyone; a create must follow the delete.
          if (incoming._exists !== true) continue
        } else if ((incoming._exists !== true || pending._exists === true) && !hasDeltaOver(pending, incoming)) {
          // A create folds only into a pending create: a receiver that lacks the key drops a pending partial update.
          last[key] = { ...pending, ...incoming }
          continue
        }
        last = emptyRecord<ComponentData>()
        last[key] = { ...incoming }
        list.push(last)
      }
    }
  }

  /** Drops what one sender had pending (it left: its presence is deleted anyway). */
  drop (clientId: string): void {
    this.#senders.delete(clientId)
  }

  /**
   * Takes everything pending, serialized once per sender.
   * @returns per sender: its clientId, its patches as JSON array items, and whether they delete a key
   */
  take (): Array<{ clientId: string, json: string, deletes: boolean }> {
    const out: Array<{ clientId: string, json: string, deletes: boolean }> = []
    for (const [clientId, list] of this.#senders) {
      let deletes = false
      for (const patch of list) {
        for (const key in patch) if (patch[key]._exists === false) deletes = true
      }
      out.push({ clientId, json: list.map((patch) => JSON.stringify(patch)).join(','), deletes })
    }
    this.#senders.clear()
    return out
  }
}

/** True when a field of `incoming` is a buffer delta over a field `pending` also sets (deltas do not merge). */
function hasDeltaOver (pending: ComponentData, incoming: ComponentData): boolean {
  for (const field of Object.keys(incoming)) {
    if (field in pending && (isBufferDelta(incoming[field]) || isBufferDelta(pending[field]))) return true
  }
  return false
}
