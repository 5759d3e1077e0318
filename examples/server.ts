/**
 * The example server that `npm start` runs: one WebSocket route on
 * SQLite (./data/canvas-store.db, durable acks), with a demo token policy:
 *   no token -> refused; `deny-...` -> refused; `ro-...` -> readonly; anything else -> readwrite.
 * Admin routes are enabled when ADMIN_TOKEN is set (Bearer auth).
 */
import Fastify from 'fastify'
import canvasStore, { SqliteStorage } from '../lib/index.js'

const port = Number(process.env.PORT ?? 8087)
const host = process.env.HOST ?? '127.0.0.1'
const dbFile = process.env.DB_FILE ?? './data/canvas-store.db'
const adminToken = process.env.ADMIN_TOKEN

const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })
const storage = new SqliteStorage({ file: dbFile })
// The plugin never closes a storage it was given. onClose hooks run last-added
// first, so this one, added before the plugin, runs after its final saves.
app.addHook('onClose', async () => storage.close())

await app.register(canvasStore, {
  path: '/sync',
  authorize: async ({ token }) => {
    if (token === '') throw Object.assign(new Error('A token is required'), { statusCode: 401 })
    if (token.startsWith('deny-')) throw Object.assign(new Error('Access denied'), { statusCode: 403 })
    return { permissions: token.startsWith('ro-') ? 'readonly' : 'readwrite' }
  },
  storage,
  saveThrottleMs: 1_000,
  idleTimeout: 30_000,
  admin: adminToken === undefined
    ? undefined
    : {
        prefix: '/admin',
        onRequest: async (request, reply) => {
          if (request.headers.authorization !== `Bearer ${adminToken}`) {
            await reply.code(401).send({ statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized', message: 'Bearer token required' })
          }
        }
      }
})

app.get('/', async () => ({ name: 'fastify-canvas-store example', sync: '/sync?roomId=ROOM&clientId=CLIENT&token=TOKEN' }))

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    app.log.info({ signal }, 'shutting down: closing sessions, saving rooms')
    app.close().then(() => process.exit(0), (err) => {
      app.log.error({ err }, 'shutdown failed')
      process.exit(1)
    })
  })
}

await app.listen({ port, host })
console.log(`canvas-store sync server: ws://${host}:${port}/sync?roomId=myRoom&clientId=myClient&token=demo`)
