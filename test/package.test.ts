// The package as an application installs it: its type declarations (as `npm run build` emits them) compile
// in an app that has fastify and the plugin's dependencies but neither optional storage driver nor its
// @types, with skipLibCheck off, under each module resolution an app may use.
import t from 'tap'
import { execFile } from 'node:child_process'
import { cp, mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'

const root = join(import.meta.dirname, '..')
const run = promisify(execFile)
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
/** Left out of the app: the optional storage drivers, their types, and the repo's own name. */
const absent = new Set(['pg', 'better-sqlite3', '@types/pg', '@types/better-sqlite3', 'fastify-canvas-store'])

const app = `
import Fastify from 'fastify'
import canvasStore, { FileStorage, PostgresStorage, SqliteStorage, errors, type PgPool, type SqliteDatabase } from 'fastify-canvas-store'
import { storageContract } from 'fastify-canvas-store/testing'

export async function main (pool: PgPool, database: SqliteDatabase): Promise<void> {
  const app = Fastify()
  await app.register(canvasStore, { path: '/sync', createStorage: (roomId) => new FileStorage({ dir: './data', roomId }) })
  const rooms: string[] = app.canvasStore.getRoomIds()
  const storages = [new PostgresStorage({ pool }), new SqliteStorage({ database })]
  const code: string = new errors.ROOM_NOT_FOUND('r').code
  console.log(rooms, storages, code, storageContract)
}
`

/** tsc's options for each kind of app. */
const modes: Record<string, Record<string, unknown>> = {
  nodenext: { module: 'nodenext', moduleResolution: 'nodenext' },
  bundler: { module: 'esnext', moduleResolution: 'bundler' },
  'commonjs (node10)': { module: 'commonjs', moduleResolution: 'node10', esModuleInterop: true }
}

t.test('the type declarations compile in an app without pg, better-sqlite3 or their types, skipLibCheck off', async (t) => {
  // Outside the repo: a package the app lacks must not be found in the repo's node_modules further up.
  const dir = await mkdtemp(join(tmpdir(), 'canvas-store-app-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  await writeFile(join(dir, 'package.json'), '{ "name": "app", "type": "module" }')
  await writeFile(join(dir, 'app.ts'), app)
  const modules = join(dir, 'node_modules')
  const pkg = join(modules, 'fastify-canvas-store')
  await mkdir(pkg, { recursive: true })
  await cp(join(root, 'package.json'), join(pkg, 'package.json'))
  await run(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json'), '--outDir', join(pkg, 'dist'),
    '--declaration', '--emitDeclarationOnly', '--sourceMap', 'false', '--inlineSources', 'false'])
  for (const name of await readdir(join(root, 'node_modules'))) {
    if (name.startsWith('.')) continue
    if (!name.startsWith('@')) {
      if (!absent.has(name)) await symlink(join(root, 'node_modules', name), join(modules, name))
      continue
    }
    await mkdir(join(modules, name), { recursive: true })
    for (const inner of await readdir(join(root, 'node_modules', name))) {
      if (!absent.has(`${name}/${inner}`)) await symlink(join(root, 'node_modules', name, inner), join(modules, name, inner))
    }
  }
  for (const [mode, options] of Object.entries(modes)) {
    const compilerOptions = { strict: true, skipLibCheck: false, noEmit: true, target: 'es2022', types: ['node'], ...options }
    await writeFile(join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions, files: ['app.ts'] }))
    const result = await run(process.execPath, [tsc, '-p', dir]).then(() => '', (err: { stdout?: string }) => err.stdout ?? String(err))
    t.equal(result, '', mode)
  }
})
