/**
 * The plugin with its admin REST routes behind @fastify/bearer-auth.
 *
 *   ADMIN_TOKEN=secret npx tsx examples/admin-bearer.ts
 *   curl -H 'authorization: Bearer secret' http://127.0.0.1:8088/admin/rooms
 */
import bearerAuth from '@fastify/bearer-auth'
import { randomBytes } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import canvasStore, { MemoryStorage } from '../lib/index.js'

const port = Number(process.env.PORT ?? 8088)
const host = process.env.HOST ?? '127.0.0.1'
// No guessable default: without ADMIN_TOKEN a random one is made and printed below.
const adminToken = process.env.ADMIN_TOKEN !== undefined && process.env.ADMIN_TOKEN !== '' ? process.env.ADMIN_TOKEN : randomBytes(16).toString('hex')

const app = Fastify({ logger: true })

// addHook: false -> bearer-auth only decorates `verifyBearerAuth`; it guards nothing by itself.
await app.register(bearerAuth, { keys: new Set([adminToken]), addHook: false })

await app.register(canvasStore, {
  path: '/sync',
  authorize: async ({ token }) => ({ permissions: token.startsWith('ro-') ? 'readonly' : 'readwrite' }),
  createStorage: () => new MemoryStorage(),
  admin: { prefix: '/admin', onRequest: app.verifyBearerAuth! }
})

await app.listen({ port, host })
const { port: listening } = app.server.address() as AddressInfo
console.log(`admin routes: curl -H 'authorization: Bearer ${adminToken}' http://${host}:${listening}/admin/rooms`)
