/**
 * What the three benchmark servers share. Each one is a standalone process
 * that listens on 127.0.0.1, port 0, and prints `{"port":N}` on stdout once
 * it is ready. Settings come from the environment:
 *
 *   IDLE_TIMEOUT_MS   how long an empty room stays loaded (default 30000)
 *   SAVE_THROTTLE_MS  longest delay before a room's snapshot is saved (default 1000, for both servers)
 *
 * SIGTERM closes the server and exits 0 (so `--cpu-prof` writes its profile);
 * SIGUSR2 runs a full garbage collection when node was started with --expose-gc.
 */

export const HOST = '127.0.0.1'
/** Listen backlog of every launcher: 1,000 clients connecting at once must not overflow it. */
export const BACKLOG = 2048
export const idleTimeout = envNumber('IDLE_TIMEOUT_MS', 30_000)
export const saveThrottleMs = envNumber('SAVE_THROTTLE_MS', 1_000)

function envNumber (name: string, fallback: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const value = Number(raw)
  if (!Number.isFinite(value) || value < 0) throw new RangeError(`${name} must be a number >= 0`)
  return value
}

/** Tells the parent process where to connect. */
export function announce (port: number): void {
  process.stdout.write(JSON.stringify({ port }) + '\n')
}

/** SIGTERM/SIGINT: close, then exit 0 (within 10 s); SIGUSR2: full GC if exposed. */
export function handleSignals (close: () => Promise<void>): void {
  let closing = false
  const stop = (): void => {
    if (closing) return
    closing = true
    setTimeout(() => process.exit(0), 10_000).unref()
    close().then(() => process.exit(0), (err: unknown) => {
      console.error(err)
      process.exit(1)
    })
  }
  process.once('SIGTERM', stop)
  process.once('SIGINT', stop)
  process.on('SIGUSR2', () => {
    (globalThis as { gc?: () => void }).gc?.()
  })
}
