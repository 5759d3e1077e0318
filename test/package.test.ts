// The package as an application installs it: its type declarations (as `npm run build` emits them) compile
// in an app that has fastify and the plugin's dependencies but neither optional storage driver nor its
// @types, with skipLibCheck off, under each module resolution an app may use.
import t from 'tap'
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { cp, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { promisify } from 'node:util'

const root = join(import.meta.dirname, '..')
const run = promisify(execFile)
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
/**
 * What an app that installs the package has: the package's dependencies, fastify (the peer), @types/node,
 * and what they depend on, as installed in the repo (not its devDependencies, nor the optional peers).
 */
async function installed (): Promise<Set<string>> {
  const manifest = async (name: string): Promise<Record<string, Record<string, unknown> | undefined>> =>
    JSON.parse(await readFile(join(root, 'node_modules', name, 'package.json'), 'utf8'))
  const own = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as { dependencies: Record<string, string> }
  const names = new Set<string>()
  const todo = [...Object.keys(own.dependencies), 'fastify', '@types/node']
  for (let name = todo.pop(); name !== undefined; name = todo.pop()) {
    if (names.has(name) || !existsSync(join(root, 'node_modules', name, 'package.json'))) continue
    names.add(name)
    const { dependencies = {}, peerDependencies = {}, peerDependenciesMeta = {} } = await manifest(name)
    todo.push(...Object.keys(dependencies))
    todo.push(...Object.keys(peerDependencies).filter((peer) => (peerDependenciesMeta[peer] as { optional?: boolean } | undefined)?.optional !== true))
  }
  return names
}

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
  for (const name of await installed()) {
    await mkdir(dirname(join(modules, name)), { recursive: true })
    await symlink(join(root, 'node_modules', name), join(modules, name))
  }
  for (const [mode, options] of Object.entries(modes)) {
    const compilerOptions = { strict: true, skipLibCheck: false, noEmit: true, target: 'es2022', types: ['node'], ...options }
    await writeFile(join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions, files: ['app.ts'] }))
    const result = await run(process.execPath, [tsc, '-p', dir]).then(() => '', (err: { stdout?: string }) => err.stdout ?? String(err))
    t.equal(result, '', mode)
  }
})

t.test('an app bundled to CommonJS (esbuild --format=cjs, where import.meta is empty) loads the plugin and its optional packages, and serves', async (t) => {
  // Inside the repo, so that the bundle's require() of the dependencies finds them.
  const dir = t.testdir({})
  const bundle = join(dir, 'bundle.cjs')
  await run(join(root, 'node_modules', '.bin', 'esbuild'), [join(root, 'lib', 'index.ts'), '--bundle', '--platform=node', '--format=cjs',
    '--packages=external', '--log-level=error', `--outfile=${bundle}`])
  const script = `
    const Fastify = require('fastify')
    const { default: canvasStore, SqliteStorage } = require(${JSON.stringify(bundle)})
    const app = Fastify()
    app.register(canvasStore, { path: '/sync', storage: new SqliteStorage({ file: ':memory:' }) })
    app.ready().then(() => app.inject('/sync?roomId=r&clientId=c')).then((res) => { console.log(res.statusCode); return app.close() })
  `
  const { stdout } = await run(process.execPath, ['-e', script], { cwd: root })
  t.equal(stdout.trim(), '426', 'the WebSocket route answers a plain GET with 426')
})
