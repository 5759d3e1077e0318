/**
 * Benchmark server: Fastify + this plugin, in-memory storage, logger off,
 * WebSocket route /sync. Prints {"port":N} once listening.
 *
 * PLUGIN_LIB may name another copy of lib/index.ts (a file path), such as a
 * snapshot of a commit made by bench/sync.ts for BENCH_LIB=<rev>; by default
 * the working tree's lib/ is measured.
 */
import Fastify from 'fastify'
import { pathToFileURL } from 'node:url'
import { announce, BACKLOG, handleSignals, HOST, idleTimeout, saveThrottleMs } from './common.js'

type Lib = typeof import('../../lib/index.js')
const lib = (process.env.PLUGIN_LIB === undefined || process.env.PLUGIN_LIB === ''
  ? await import('../../lib/index.js')
  : await import(pathToFileURL(process.env.PLUGIN_LIB).href)) as Lib
const { default: canvasStore, MemoryStorage } = lib

const app = Fastify({ logger: false })
await app.register(canvasStore, {
  path: '/sync',
  createStorage: () => new MemoryStorage(),
  idleTimeout,
  saveThrottleMs
})
await app.listen({ host: HOST, port: 0, backlog: BACKLOG })
handleSignals(() => app.close())
announce((app.server.address() as { port: number }).port)
