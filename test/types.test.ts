// Compile-time checks of the public types: `npm run typecheck` fails if any
// expected error below stops being an error. The runtime part only checks
// that the function exists; it is never called with these bad options.
import type BetterSqlite3 from 'better-sqlite3'
import Fastify from 'fastify'
import type pg from 'pg'
import t from 'tap'
import canvasStore, { RoomManager, FileStorage, type CanvasStoreOptions, type PostgresStorageOptions, type SqliteStorageOptions, type Storage } from '../lib/index.js'

/** Marks values as used, for the compiler. */
function use (..._values: unknown[]): void {}

async function typeChecks (): Promise<void> {
  const app = Fastify()
  await app.register(canvasStore, {
    path: '/sync',
    authorize: async ({ token, request }) => ({ permissions: token === '' || request === undefined ? 'readonly' : 'readwrite', metadata: { a: 1 } }),
    createStorage: (roomId) => new FileStorage({ dir: './data', roomId }),
    admin: { onRequest: async () => {}, prefix: '/admin' }
  })
  const manager: RoomManager = app.canvasStore
  manager.getRoomIds()

  // @ts-expect-error the decorator is read-only
  app.canvasStore = new RoomManager()
  // @ts-expect-error permissions are 'readwrite' or 'readonly'
  const bad: CanvasStoreOptions = { authorize: () => ({ permissions: 'admin' }) }
  // @ts-expect-error path is a string
  const badPath: CanvasStoreOptions = { path: 8087 }
  // @ts-expect-error admin.auth can only be false
  const badAdmin: CanvasStoreOptions = { admin: { auth: true } }
  // @ts-expect-error a Storage needs save
  const badStorage: Storage = { load: async () => null }
  use(bad, badPath, badAdmin, badStorage)

  // The storages' options name the pool and the database by their members (the package's declarations do not
  // import @types/pg or @types/better-sqlite3): the real ones fit, other objects do not.
  const pool = null as unknown as pg.Pool
  const database = null as unknown as BetterSqlite3.Database
  const pgOptions: PostgresStorageOptions = { pool }
  const sqliteOptions: SqliteStorageOptions = { database }
  // @ts-expect-error not a pool
  const badPool: PostgresStorageOptions = { pool: { query: async () => ({}) } }
  // @ts-expect-error a pg.Client is not a pool: its connect() gives no client to release
  const clientAsPool: PostgresStorageOptions = { pool: null as unknown as pg.Client }
  // @ts-expect-error not a database
  const badDatabase: SqliteStorageOptions = { database: { prepare: () => null } }
  use(pgOptions, sqliteOptions, badPool, clientAsPool, badDatabase)
}

t.test('type checks compile', async (t) => {
  t.type(typeChecks, 'function')
})
