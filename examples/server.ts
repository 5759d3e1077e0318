/**
 * The example server that `npm start` runs: the demo app of examples/demo-app.ts
 * (one WebSocket route on SQLite, ./data/canvas-store.db, durable acks, and the
 * whiteboard page on `/`), with a demo token policy:
 *   no token -> refused; `deny-...` -> refused; `ro-...` -> readonly; anything else -> readwrite.
 * The admin routes and page use ADMIN_TOKEN (a random one is made and printed when unset or empty).
 * SIGTERM/SIGINT drain the server: readiness flips, new connections get 1013,
 * sessions are closed with 1001 over a few seconds, every room is saved, then it exits.
 */
import { randomBytes } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import { buildDemoServer } from './demo-app.js'

const port = Number(process.env.PORT ?? 8087)
const host = process.env.HOST ?? '127.0.0.1'
// Set but empty counts as unset: an empty token would let every request in.
const adminToken = process.env.ADMIN_TOKEN !== undefined && process.env.ADMIN_TOKEN !== '' ? process.env.ADMIN_TOKEN : randomBytes(12).toString('base64url')

const app = await buildDemoServer({
  dbFile: process.env.DB_FILE ?? './data/canvas-store.db',
  adminToken,
  logger: {
    level: process.env.LOG_LEVEL ?? 'info',
    // Fastify logs each request's URL: keep the tokens of ?token= (clients' and the admin page's) out of the log.
    serializers: {
      req: (request) => ({
        method: request.method,
        url: request.url.replace(/([?&]token=)[^&]*/g, '$1[redacted]'),
        host: request.host,
        remoteAddress: request.ip,
        remotePort: request.socket?.remotePort
      })
    }
  }
})

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    app.log.info({ signal }, 'draining: closing sessions over a few seconds, saving rooms')
    app.canvasStore.drain({ graceMs: 1_000, jitterMs: 2_000 }).then(() => app.close()).then(() => process.exit(0), (err) => {
      app.log.error({ err }, 'shutdown failed')
      process.exit(1)
    })
  })
}

await app.listen({ port, host })
// The port the server got (PORT=0 picks a free one).
const { port: bound } = app.server.address() as AddressInfo
console.log(`canvas-store sync server: ws://${host}:${bound}/sync?roomId=myRoom&clientId=myClient&token=demo`)
console.log(`whiteboard demo: http://${host}:${bound}/?room=demo (open it in two windows; add &token=ro-me for a read-only view)`)
console.log(`admin page: http://${host}:${bound}/admin/ui?token=${adminToken}`)
