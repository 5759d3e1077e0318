/**
 * The demo application that `npm start` runs (examples/server.ts) and that the
 * browser tests start in-process (test/browser.test.ts):
 *
 * - the plugin on `/sync`, on SQLite (durable acks), with the demo token
 *   policy: no token -> refused (4401); `deny-...` -> refused (4403);
 *   `ro-...` -> readonly; anything else -> readwrite;
 * - the whiteboard page on `/` (examples/whiteboard/index.html), whose script
 *   `/app.js` is bundled in memory with esbuild when the server is built
 *   (examples/whiteboard/app.ts + the published client; nothing is written to disk);
 * - the admin routes, the admin page (`/admin/ui`) and metrics (`/admin/metrics`)
 *   under `/admin` when `adminToken` is set (Bearer auth, or `?token=`);
 * - `/health`, `/ready` and the OpenAPI description at `/openapi.json`.
 */
import { timingSafeEqual } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { build as esbuild } from 'esbuild'
import Fastify, { type FastifyInstance, type FastifyRequest, type FastifyServerOptions } from 'fastify'
import canvasStore, { SqliteStorage } from '../lib/index.js'

export interface DemoServerOptions {
  /** SQLite file; ':memory:' for a throwaway document. Default './data/canvas-store.db'. */
  dbFile?: string
  /** Enables the admin routes under /admin, guarded by `Authorization: Bearer <adminToken>`. */
  adminToken?: string
  /** Fastify's logger option. Default `{ level: 'info' }`. */
  logger?: FastifyServerOptions['logger']
  /** Minify the page's bundle. Default true. */
  minify?: boolean
}

const whiteboardDir = fileURLToPath(new URL('./whiteboard/', import.meta.url))

/** The page's script and its source map, bundled in memory. */
export async function bundleWhiteboard (minify = true): Promise<{ js: string, map: string }> {
  const result = await esbuild({
    entryPoints: [`${whiteboardDir}app.ts`],
    bundle: true,
    write: false,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    minify,
    sourcemap: 'linked',
    outfile: `${whiteboardDir}app.js`,
    logLevel: 'silent'
  })
  let js: string | undefined
  let map: string | undefined
  for (const file of result.outputFiles) {
    if (file.path.endsWith('.js.map')) map = file.text
    else if (file.path.endsWith('.js')) js = file.text
  }
  if (js === undefined || map === undefined) throw new Error('esbuild produced no bundle for the whiteboard')
  return { js, map }
}

/**
 * The demo's admin check: `Authorization: Bearer <token>`, or `?token=<token>`
 * so that a browser can open the admin page itself (the page then sends the
 * header on its API calls).
 */
function isAdmin (request: FastifyRequest, adminToken: string): boolean {
  const header = request.headers.authorization
  const query = (request.query as Record<string, unknown> | undefined)?.token
  const given = typeof header === 'string' && header.startsWith('Bearer ') ? header.slice(7) : typeof query === 'string' ? query : ''
  const a = Buffer.from(given)
  const b = Buffer.from(adminToken)
  // An empty admin token (a misconfiguration) lets nobody in, rather than everybody.
  return b.length > 0 && a.length === b.length && timingSafeEqual(a, b)
}

/** Builds (does not start) the demo server. Close it with `app.close()`: that also closes the SQLite file. */
export async function buildDemoServer (options: DemoServerOptions = {}): Promise<FastifyInstance> {
  const [bundle, html] = await Promise.all([
    bundleWhiteboard(options.minify ?? true),
    readFile(`${whiteboardDir}index.html`, 'utf8')
  ])

  const app = Fastify({ logger: options.logger ?? { level: 'info' } })
  const storage = new SqliteStorage({ file: options.dbFile ?? './data/canvas-store.db' })
  // The plugin never closes a storage it was given. onClose hooks run last-added
  // first, so this one, added before the plugin, runs after its final saves.
  app.addHook('onClose', async () => storage.close())

  const adminToken = options.adminToken
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
          page: true,
          onRequest: async (request, reply) => {
            if (!isAdmin(request, adminToken)) {
              await reply.code(401).send({ statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized', message: 'Bearer token required' })
            }
          }
        },
    metrics: adminToken !== undefined,
    health: true,
    openapi: true
  })

  app.get('/', async (_request, reply) => reply
    .type('text/html; charset=utf-8')
    .header('cache-control', 'no-cache')
    .send(html))
  app.get('/app.js', async (_request, reply) => reply
    .type('text/javascript; charset=utf-8')
    .header('cache-control', 'no-cache')
    .send(bundle.js))
  app.get('/app.js.map', async (_request, reply) => reply
    .type('application/json; charset=utf-8')
    .header('cache-control', 'no-cache')
    .send(bundle.map))

  return app
}
