/**
 * Benchmark server: Fastify + this plugin, in-memory storage, logger off,
 * WebSocket route /sync. Prints {"port":N} once listening.
 *
 * PLUGIN_STORAGE=sqlite puts the rooms in a SqliteStorage instead (a new
 * file in a temp folder, removed at exit; durable acks, as `npm start`).
 *
 * PLUGIN_LIB may name another copy of lib/index.ts (a file path), such as a
 * snapshot of a commit made by bench/sync.ts for BENCH_LIB=<rev>; by default
 * the working tree's lib/ is measured.
 */
import Fastify from 'fastify'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { announce, BACKLOG, handleSignals, HOST, idleTimeout, saveThrottleMs } from './common.js'

type Lib = typeof import('../../lib/index.js')
const lib = (process.env.PLUGIN_LIB === undefined || process.env.PLUGIN_LIB === ''
  ? await import('../../lib/index.js')
  : await import(pathToFileURL(process.env.PLUGIN_LIB).href)) as Lib
const { default: canvasStore, MemoryStorage, SqliteStorage } = lib

const sqliteDir = process.env.PLUGIN_STORAGE === 'sqlite' ? mkdtempSync(join(tmpdir(), 'canvas-bench-')) : null
const sqlite = sqliteDir === null ? null : new SqliteStorage({ file: join(sqliteDir, 'bench.db') })
process.once('exit', () => { if (sqliteDir !== null) rmSync(sqliteDir, { recursive: true, force: true }) })

const app = Fastify({ logger: false })
// Closed after the plugin's final writes (hooks run in reverse order of registration).
app.addHook('onClose', async () => { await sqlite?.close() })
await app.register(canvasStore, {
  path: '/sync',
  ...(sqlite === null ? { createStorage: () => new MemoryStorage() } : { storage: sqlite }),
  idleTimeout,
  saveThrottleMs
})
await app.listen({ host: HOST, port: 0, backlog: BACKLOG })
handleSignals(() => app.close())
announce((app.server.address() as { port: number }).port)
