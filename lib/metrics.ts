import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import { CloseCode } from './errors.js'
import type { RoomManager } from './room/room-manager.js'
import type { RoomObserver } from './room/session.js'

/** A counter added to as a plain number (`pending`), handed to prom-client when the registry is read. */
class DeferredCounter {
  pending = 0

  constructor (registry: Registry, name: string, help: string) {
    const deferred = this
    // eslint-disable-next-line no-new
    new Counter({ name, help, registers: [registry], collect () { this.inc(deferred.pending); deferred.pending = 0 } })
  }
}

/**
 * Prometheus metrics of one plugin instance, in a registry of its own (so
 * two instances, or the app's own default registry, never collide).
 */
export class Metrics implements RoomObserver {
  readonly registry = new Registry()
  /**
   * Frames and bytes are counted in plain numbers on the hot path (a
   * prom-client `inc` per frame sent doubled the cost of a broadcast to 50
   * sessions) and handed to the counters when they are read (`collect`).
   */
  #framesInByType: Record<string, number> = Object.create(null)
  readonly #framesIn = new Counter({
    name: 'canvas_store_frames_in_total',
    help: 'Client frames received, by type (patch, reconnect, auth-refresh, invalid, ignored, version-mismatch, rate-limited)',
    labelNames: ['type'] as const,
    registers: [this.registry],
    collect: () => {
      const counts = this.#framesInByType
      this.#framesInByType = Object.create(null)
      for (const type in counts) this.#framesIn.inc({ type }, counts[type])
    }
  })

  readonly #bytesIn = new DeferredCounter(this.registry, 'canvas_store_bytes_in_total', 'Bytes of client frames received')
  readonly #framesOut = new DeferredCounter(this.registry, 'canvas_store_frames_out_total', 'Frames sent to clients')
  readonly #bytesOut = new DeferredCounter(this.registry, 'canvas_store_bytes_out_total', 'Bytes of frames sent to clients')
  readonly #apply = new Histogram({ name: 'canvas_store_frame_apply_seconds', help: 'Time to handle one client frame', buckets: [0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1], registers: [this.registry] })
  readonly #storageWrite = new Histogram({ name: 'canvas_store_storage_write_seconds', help: 'Time of one storage write (append batch or snapshot save)', buckets: [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5], registers: [this.registry] })
  readonly #storageFailures = new Counter({ name: 'canvas_store_storage_write_failures_total', help: 'Storage writes that failed (they are retried)', registers: [this.registry] })
  readonly #presenceDropped = new Counter({ name: 'canvas_store_presence_dropped_total', help: 'Presence frames not sent to a slow session (it gets fresh presence once it catches up)', registers: [this.registry] })
  readonly #closes = new Counter({ name: 'canvas_store_closes_total', help: 'WebSocket closes, by close code', labelNames: ['code'] as const, registers: [this.registry] })

  constructor (manager: RoomManager) {
    const rooms = (): ReturnType<RoomManager['getRooms']> => manager.getRooms()
    /* eslint-disable no-new */
    new Gauge({ name: 'canvas_store_rooms', help: 'Rooms loaded', registers: [this.registry], collect () { this.set(manager.getRoomIds().length) } })
    new Gauge({ name: 'canvas_store_sessions', help: 'Sessions connected', registers: [this.registry], collect () { this.set(rooms().reduce((n, r) => n + r.sessionCount, 0)) } })
    new Gauge({ name: 'canvas_store_document_keys', help: 'Document keys held by loaded rooms, tombstones included', registers: [this.registry], collect () { this.set(rooms().reduce((n, r) => n + r.documentSize, 0)) } })
    new Gauge({ name: 'canvas_store_document_bytes', help: 'Estimated size of the documents of loaded rooms as JSON text', registers: [this.registry], collect () { this.set(rooms().reduce((n, r) => n + r.documentBytes, 0)) } })
    new Gauge({ name: 'canvas_store_acks_waiting', help: 'Frames (acks, broadcasts) waiting for a durable write to commit', registers: [this.registry], collect () { this.set(manager.getPendingMessages()) } })
    /* eslint-enable no-new */
  }

  frameIn (type: string, bytes: number, seconds: number): void {
    this.#framesInByType[type] = (this.#framesInByType[type] ?? 0) + 1
    this.#bytesIn.pending += bytes
    this.#apply.observe(seconds)
  }

  frameOut (bytes: number): void {
    this.#framesOut.pending++
    this.#bytesOut.pending += bytes
  }

  presenceDropped (): void {
    this.#presenceDropped.inc()
  }

  storageWrite (seconds: number, ok: boolean): void {
    this.#storageWrite.observe(seconds)
    if (!ok) this.#storageFailures.inc()
  }

  closed (code: number): void {
    this.#closes.inc({ code: COUNTED_CLOSE_CODES.has(code) ? String(code) : 'other' })
  }
}

/**
 * Close codes counted under their own label: RFC 6455's and the plugin's.
 * A client picks its own close code (3000-4999): those are counted as
 * `other`, or any client could add some two thousand series.
 */
const COUNTED_CLOSE_CODES = new Set<number>([...Array.from({ length: 16 }, (_, i) => 1000 + i), ...Object.values(CloseCode)])
