/**
 * Side-by-side sync benchmarks: this plugin vs the reference server
 * (`@woven-ecs/canvas-store-server`) vs a raw `ws` forwarder (the fan-out
 * cost floor).
 *
 *   npm run bench -- fanout            1 room, 50 clients, 10 writers, document patches at 20 Hz each
 *   npm run bench -- cursors           1 room, 100 clients, presence (ephemeral) at 30 Hz each
 *   npm run bench -- rooms             500 rooms x 4 clients, a document patch at 2 Hz each
 *   npm run bench -- join-large        20,000-component room, 50 clients join at once from 0
 *   npm run bench -- reconnect-storm   1,000 clients in 10 rooms drop and reconnect at once
 *   npm run bench -- reconnect-large   20,000-component room, 10 changes missed, reconnect
 *   npm run bench -- memory            10,000 rooms of 100 components loaded, then unloaded
 *
 * Each run is a fresh server process (bench/servers/*.ts) and a fresh load
 * generator process (bench/load/main.ts), servers in alternation, round after
 * round. Tables show medians over rounds and the ratio plugin / reference
 * (and plugin / raw for CPU and latency). Environment:
 *
 *   BENCH_ROUNDS=3         rounds per scenario
 *   BENCH_SECONDS=10       timed window of fanout, cursors and rooms
 *   BENCH_RATE=1           multiplies the send rate of fanout, cursors and rooms (e.g. 5: fanout's writers at
 *                          100 Hz); 1 is the rates above, the ones the targets are set for
 *   BENCH_SERVERS=a,b      only these servers (plugin, reference, raw)
 *   BENCH_MEMORY_ROOMS=N   rooms of the memory scenario (10000)
 *   BENCH_LIB=<git rev>    measure lib/ as committed at that revision instead of the
 *                          working tree's lib/ (either way lib/ is copied once, when the
 *                          benchmark starts, to node_modules/.cache/canvas-bench/, so
 *                          that edits made meanwhile do not change what is measured)
 *   BENCH_PROFILE_INTERVAL=N  sample the profiles every N microseconds (default 1000)
 *   BENCH_PIN=1            run each server on CPU 1 and the load generator on CPU 0 (taskset), so that the
 *                          scheduler cannot run the generator on the server's core between its writes
 *   BENCH_SERVER_FLAGS=".." extra node flags for the server processes (e.g. --max-semi-space-size=32)
 *   PLUGIN_STORAGE=sqlite  the plugin's rooms in a SqliteStorage (durable acks, as `npm start`) instead of memory
 *   BENCH_PROFILE=1|all    run the plugin server (all: every server) under `node --cpu-prof` (bench/results/profiles/<run>/;
 *                          summarize with `node --import tsx bench/profile-summary.ts FILE`)
 *
 * The machine is shared: before each run the benchmark waits (up to
 * BENCH_QUIET_S=5 seconds) for the other processes to use less than 25% of
 * the CPU, and shows how busy the machine was (`other CPU before the run`).
 *
 * Every run's numbers are also written to bench/results/sync-*.json (ignored by git; BENCH_RESULTS=DIR
 * writes them there instead).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { availableParallelism } from 'node:os'
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { LoadConfig, Metrics } from './load/main.js'
import { median, table } from './util.js'

type ServerKind = 'plugin' | 'reference' | 'raw'

interface Metric {
  key: string
  label: string
  digits: number
  /** Also show plugin / raw. */
  floor?: boolean
}

interface Scenario {
  name: string
  title: string
  servers: ServerKind[]
  metrics: Metric[]
  env?: Record<string, string>
  /** Bound on one load generator run (ms). */
  timeoutMs: number
}

const here = dirname(fileURLToPath(import.meta.url))
const resultsDir = process.env.BENCH_RESULTS ?? join(here, 'results')
const rounds = positive('BENCH_ROUNDS', 3)
const seconds = positive('BENCH_SECONDS', 10)
const rate = positive('BENCH_RATE', 1)
/** `base` (a rate, or a count per second, at BENCH_RATE=1) at BENCH_RATE, formatted for a title. */
const hz = (base: number): string => fmt(base * rate)
const fmt = (n: number): string => n.toLocaleString('en', { maximumFractionDigits: 1 })
const memoryRooms = positive('BENCH_MEMORY_ROOMS', 10_000)
const profile = process.env.BENCH_PROFILE === '1' || process.env.BENCH_PROFILE === 'all'
const profileAll = process.env.BENCH_PROFILE === 'all'
/** Sampling interval of the profiles in microseconds (node's default: 1000). */
const profileInterval = process.env.BENCH_PROFILE_INTERVAL ?? ''
const onlyServers = (process.env.BENCH_SERVERS ?? '').split(',').map((s) => s.trim()).filter((s) => s !== '')
const MEMORY_IDLE_MS = 2_000
const quietSeconds = Number(process.env.BENCH_QUIET_S ?? 5)
const pin = process.env.BENCH_PIN === '1'
const serverFlags = (process.env.BENCH_SERVER_FLAGS ?? '').split(' ').filter((flag) => flag !== '')

/** BENCH_PIN=1 needs two CPUs and taskset (util-linux). */
function checkPinning (): void {
  if (availableParallelism() < 2) throw new Error('BENCH_PIN=1 needs at least 2 CPUs')
  try {
    execFileSync('taskset', ['--version'], { stdio: 'ignore' })
  } catch {
    throw new Error('BENCH_PIN=1 needs taskset (util-linux) on the PATH')
  }
}

if (pin) checkPinning()

/** The command and arguments that run node with `args`, on one CPU when pinning. */
function nodeOn (cpu: number, args: string[]): [string, string[]] {
  return pin ? ['taskset', ['--cpu-list', String(cpu), process.execPath, ...args]] : [process.execPath, args]
}

const root = join(here, '..')
const libRev = process.env.BENCH_LIB ?? ''
let libSnapshot: { index: string, label: string } | undefined

function positive (name: string, fallback: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const value = Number(raw)
  if (!Number.isFinite(value) || value <= 0) throw new RangeError(`${name} must be a positive number`)
  return value
}

const steady: Metric[] = [
  { key: 'sentPerSec', label: 'patches sent/s', digits: 0 },
  { key: 'deliveredPerSec', label: 'values delivered/s', digits: 0 },
  { key: 'framesPerSec', label: 'frames received/s', digits: 0 },
  { key: 'lostValues', label: 'values lost (forwarding servers: must be 0)', digits: 0 },
  { key: 'finalMissing', label: 'final values missing (receiver x sender)', digits: 0 },
  { key: 'duplicates', label: 'duplicates', digits: 0 },
  { key: 'latencyP50', label: 'delivery latency p50 (ms)', digits: 2, floor: true },
  { key: 'latencyP99', label: 'delivery latency p99 (ms)', digits: 2, floor: true },
  { key: 'ackP50', label: 'ack latency p50 (ms)', digits: 2 },
  { key: 'ackP99', label: 'ack latency p99 (ms)', digits: 2 },
  { key: 'unacked', label: 'unacked patches', digits: 0 },
  { key: 'serverCpuPct', label: 'server CPU (% of a core)', digits: 1, floor: true },
  { key: 'serverCpuPer1kSent', label: 'server CPU ms per 1k patches sent', digits: 1, floor: true },
  { key: 'serverUserPer1kSent', label: '  of which user (JavaScript, ws)', digits: 1, floor: true },
  { key: 'serverSystemPer1kSent', label: '  of which system (write calls, loopback TCP)', digits: 1, floor: true },
  { key: 'serverRssMb', label: 'server RSS after (MB)', digits: 0 },
  { key: 'loadCpuPct', label: 'load generator CPU (% of a core)', digits: 1 },
  { key: 'loadLoopDelayP99', label: 'load generator event-loop delay p99 (ms)', digits: 1 },
  { key: 'skippedSends', label: 'sends skipped (generator > 3 periods late)', digits: 0 },
  { key: 'drainMs', label: 'drain after last send (ms)', digits: 0 },
  { key: 'unexpectedCloses', label: 'sockets closed by the server', digits: 0 }
]

const scenarios: Scenario[] = [
  {
    name: 'fanout',
    title: `fanout: 1 room, 50 clients, 10 writers x document patch at ${hz(20)} Hz, ${seconds} s (expected ${hz(200)} patches/s, ${hz(9_800)} values/s)`,
    servers: ['plugin', 'reference', 'raw'],
    metrics: steady,
    timeoutMs: 120_000 + seconds * 1000
  },
  {
    name: 'cursors',
    title: `cursors: 1 room, 100 clients x presence at ${hz(30)} Hz, ${seconds} s (expected ${hz(3_000)} patches/s, ${hz(297_000)} values/s without coalescing)`,
    servers: ['plugin', 'reference', 'raw'],
    metrics: steady,
    timeoutMs: 120_000 + seconds * 1000
  },
  {
    name: 'rooms',
    title: `rooms: 500 rooms x 4 clients, each a document patch at ${hz(2)} Hz, ${seconds} s (expected ${hz(4_000)} patches/s, ${hz(12_000)} values/s)`,
    servers: ['plugin', 'reference', 'raw'],
    metrics: steady,
    timeoutMs: 180_000 + seconds * 1000
  },
  {
    name: 'join-large',
    title: 'join-large: a room of 20,000 components (seeded by one client), then 50 clients join at once with lastTimestamp 0',
    servers: ['plugin', 'reference'],
    metrics: [
      { key: 'allSyncedMs', label: 'time until all 50 synced (ms)', digits: 0 },
      { key: 'medianClientMs', label: 'median client time to synced (ms)', digits: 0 },
      { key: 'mbPerJoiner', label: 'MB received per joiner', digits: 2 },
      { key: 'minKeys', label: 'document keys received (min over joiners)', digits: 0 },
      { key: 'serverCpuMs', label: 'server CPU during the join (ms)', digits: 0 },
      { key: 'rssBeforeMb', label: 'server RSS before the join (MB)', digits: 0 },
      { key: 'rssAfterMb', label: 'server RSS after the join (MB)', digits: 0 },
      { key: 'unexpectedCloses', label: 'sockets closed by the server', digits: 0 }
    ],
    timeoutMs: 180_000
  },
  {
    name: 'reconnect-storm',
    title: 'reconnect-storm: 1,000 clients in 10 rooms (one entity each) drop and reconnect at once with their lastTimestamp',
    servers: ['plugin', 'reference', 'raw'],
    metrics: [
      { key: 'allSyncedMs', label: 'time until all synced (ms)', digits: 0, floor: true },
      { key: 'p50ClientMs', label: 'client time to synced p50 (ms)', digits: 0, floor: true },
      { key: 'p99ClientMs', label: 'client time to synced p99 (ms)', digits: 0, floor: true },
      { key: 'framesPerClient', label: 'frames received per client (until all synced)', digits: 1 },
      { key: 'serverCpuMs', label: 'server CPU until all synced (ms)', digits: 0, floor: true },
      { key: 'serverCpuSettledMs', label: 'server CPU incl. 1 s settle (ms)', digits: 0, floor: true },
      { key: 'serverRssMb', label: 'server RSS after (MB)', digits: 0 },
      { key: 'unexpectedCloses', label: 'sockets closed by the server', digits: 0 }
    ],
    timeoutMs: 240_000
  },
  {
    name: 'reconnect-large',
    title: 'reconnect-large: a room of 20,000 components; a client that saw everything leaves, 10 changes, it reconnects (median of 20)',
    servers: ['plugin', 'reference'],
    metrics: [
      { key: 'connectToSyncedMs', label: 'connect -> synced (ms)', digits: 2 },
      { key: 'reconnectToSyncedMs', label: 'reconnect frame -> synced (ms)', digits: 2 },
      { key: 'bytesUntilSynced', label: 'bytes received until synced', digits: 0 },
      { key: 'diffKeys', label: 'document keys in the diff', digits: 0 },
      { key: 'serverCpuMsPerReconnect', label: 'server CPU per reconnect (ms, 10 ms ticks)', digits: 1 },
      { key: 'serverRssMb', label: 'server RSS after (MB)', digits: 0 },
      { key: 'unexpectedCloses', label: 'sockets closed by the server', digits: 0 }
    ],
    timeoutMs: 180_000
  },
  {
    name: 'memory',
    title: `memory: ${memoryRooms.toLocaleString('en')} rooms x 100 components, one client per room seeds then stays; then all leave (idle timeout ${MEMORY_IDLE_MS} ms)`,
    servers: ['plugin', 'reference', 'raw'],
    env: { IDLE_TIMEOUT_MS: String(MEMORY_IDLE_MS) },
    metrics: [
      { key: 'rssBaselineMb', label: 'server RSS at start (MB)', digits: 0 },
      { key: 'rssLoadedMb', label: 'server RSS with every room loaded (MB)', digits: 0 },
      { key: 'kbPerRoom', label: 'RSS per room (KB)', digits: 1, floor: true },
      { key: 'rssEarlyMb', label: 'server RSS 5 s after the rooms unloaded, before V8 returns free pages (MB)', digits: 0 },
      { key: 'rssAfterUnloadMb', label: 'server RSS 20 s later (MB)', digits: 0 },
      { key: 'retainedMb', label: 'RSS retained after unload (MB)', digits: 0 },
      { key: 'retainedRatio', label: 'RSS after unload / RSS at start', digits: 2 },
      { key: 'loadSeconds', label: 'time to connect and seed every room (s)', digits: 1 },
      { key: 'serverCpuLoadS', label: 'server CPU to load (s)', digits: 1, floor: true },
      { key: 'unexpectedCloses', label: 'sockets closed by the server', digits: 0 }
    ],
    timeoutMs: 600_000
  }
]

/** Reads the first line of a child's stdout, bounded in time. */
function firstLine (child: ChildProcess, timeoutMs: number, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let buffered = ''
    const timer = setTimeout(() => finish(new Error(`${what}: no output within ${timeoutMs} ms`)), timeoutMs)
    const onData = (chunk: Buffer): void => {
      buffered += chunk.toString('utf8')
      const newline = buffered.indexOf('\n')
      if (newline !== -1) finish(null, buffered.slice(0, newline))
    }
    const onExit = (code: number | null, signal: string | null): void => finish(new Error(`${what} exited (${code ?? signal}) before printing`))
    function finish (err: Error | null, line?: string): void {
      clearTimeout(timer)
      child.stdout?.off('data', onData)
      child.off('exit', onExit)
      if (err !== null) reject(err)
      else resolve(line!)
    }
    child.stdout?.on('data', onData)
    child.once('exit', onExit)
  })
}

function exited (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => child.once('exit', () => resolve()))
}

/** SIGTERM, then SIGKILL after `graceMs`. */
async function stop (child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await exited(child)
  clearTimeout(timer)
}

async function runOnce (scenario: Scenario, server: ServerKind): Promise<Metrics> {
  const nodeFlags = ['--expose-gc', ...serverFlags]
  let profileDir: string | null = null
  if (profile && (server === 'plugin' || profileAll)) {
    // One folder per run: node writes a profile per thread (main, and tsx's module loader thread).
    const dir = join(resultsDir, 'profiles', `${scenario.name}-${server}-${new Date().toISOString().replace(/[:.]/g, '-')}`)
    mkdirSync(dir, { recursive: true })
    profileDir = dir
    nodeFlags.push('--cpu-prof', `--cpu-prof-dir=${dir}`)
    if (profileInterval !== '') nodeFlags.push(`--cpu-prof-interval=${profileInterval}`)
    console.error(`  profiling the ${server} server into ${relative(root, dir)}/ (the largest .cpuprofile is the main thread)`)
  }
  // taskset execs node: the pid is the server's own (its CPU time is read from /proc).
  const serverProcess = spawn(...nodeOn(1, [...nodeFlags, '--import', 'tsx', join(here, 'servers', `${server}.ts`)]), {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, SAVE_THROTTLE_MS: '1000', PLUGIN_LIB: pluginLib().index, ...scenario.env }
  })
  const spawnedAt = Date.now()
  try {
    const { port } = JSON.parse(await firstLine(serverProcess, 30_000, `${server} server`)) as { port: number }
    if (profileDir !== null) writeFileSync(join(profileDir, 'ready.json'), JSON.stringify({ readyAfterMs: Date.now() - spawnedAt }))
    const config: LoadConfig = {
      scenario: scenario.name,
      server,
      port,
      pid: serverProcess.pid!,
      seconds,
      rate,
      acks: server !== 'raw',
      idleTimeoutMs: Number(scenario.env?.IDLE_TIMEOUT_MS ?? 30_000),
      memoryRooms
    }
    const load = spawn(...nodeOn(0, ['--import', 'tsx', join(here, 'load', 'main.ts'), JSON.stringify(config)]), {
      stdio: ['ignore', 'pipe', 'inherit']
    })
    try {
      const line = await firstLine(load, scenario.timeoutMs, `load generator (${scenario.name} on ${server})`)
      return (JSON.parse(line) as { metrics: Metrics }).metrics
    } finally {
      await stop(load, 5_000)
    }
  } finally {
    await stop(serverProcess, 30_000)
  }
}

function format (value: number, digits: number): string {
  if (!Number.isFinite(value)) return '–'
  return value.toLocaleString('en', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

function ratio (a: number, b: number): string {
  if (!Number.isFinite(a) || !Number.isFinite(b)) return '–'
  if (b === 0) return a === 0 ? '=' : '–'
  return `${(a / b).toFixed(2)}x`
}

/**
 * The lib/ that the plugin server runs, copied once per process so that
 * every run measures the same code while lib/ is being edited: with
 * BENCH_LIB, lib/ as committed at that revision; without, the working tree's
 * lib/ as it was when the benchmark started.
 */
function pluginLib (): { index: string, label: string } {
  if (libSnapshot !== undefined) return libSnapshot
  // (esm/: copies made before the package.json below were run as CommonJS.)
  const cache = join(root, 'node_modules', '.cache', 'canvas-bench', 'esm')
  if (libRev !== '') {
    const sha = execFileSync('git', ['rev-parse', '--verify', `${libRev}^{commit}`], { cwd: root, encoding: 'utf8' }).trim()
    const dir = join(cache, `lib-${sha}`)
    if (!existsSync(join(dir, 'lib', 'index.ts'))) {
      mkdirSync(dir, { recursive: true })
      const archive = execFileSync('git', ['archive', sha, 'lib'], { cwd: root, maxBuffer: 256 * 1024 * 1024 })
      execFileSync('tar', ['-x', '-C', dir], { input: archive })
    }
    libSnapshot = { index: forProfile(asModule(dir)), label: `lib at ${sha.slice(0, 7)} (BENCH_LIB=${libRev})` }
    return libSnapshot
  }
  const hash = createHash('sha256')
  for (const file of filesUnder(join(root, 'lib'))) hash.update(file).update('\0').update(readFileSync(join(root, 'lib', file))).update('\0')
  const digest = hash.digest('hex').slice(0, 12)
  const dir = join(cache, `worktree-${digest}`)
  if (!existsSync(join(dir, 'lib', 'index.ts'))) cpSync(join(root, 'lib'), join(dir, 'lib'), { recursive: true })
  libSnapshot = { index: forProfile(asModule(dir)), label: `lib working tree: ${gitState()}, copied as ${digest}` }
  return libSnapshot
}

/**
 * Marks a copy of lib/ as ES modules, as lib/ is in this package. Under
 * node_modules/ a file's package scope stops at the node_modules folder, so
 * without it tsx loaded the copy as CommonJS, every import turned into a
 * getter call on an exports object, which cost the plugin 10-20% CPU and
 * most of its p99 in `rooms`, compared with the same code run from lib/ by
 * `npm start`. (tsc, for profiles, already emitted ES modules, which Node
 * loaded by syntax detection; with the mark both paths agree.)
 */
function asModule (dir: string): string {
  writeFileSync(join(dir, 'package.json'), '{ "type": "module" }\n')
  return dir
}

/** Paths (relative, sorted) of the files under `dir`. */
function filesUnder (dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath ?? entry.path, entry.name)))
    .sort()
}

function tsFiles (dir: string): string[] {
  return filesUnder(dir).filter((file) => file.endsWith('.ts') && !file.endsWith('.d.ts')).map((file) => join(dir, file))
}

/**
 * The entry point of a lib/ copy: its index.ts, run through tsx; or, when
 * profiling, JavaScript compiled by tsc next to it with source maps, so that
 * bench/profile-summary.ts can name the .ts lines (tsx's output is on one line).
 */
function forProfile (dir: string): string {
  if (!profile) return join(dir, 'lib', 'index.ts')
  const out = join(dir, 'dist')
  if (!existsSync(join(out, 'index.js'))) {
    console.error(`compiling ${relative(root, join(dir, 'lib'))} for profiling`)
    try {
      execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'),
        '--outDir', out, '--rootDir', join(dir, 'lib'), '--sourceMap', '--target', 'ES2022', '--module', 'NodeNext',
        '--moduleResolution', 'NodeNext', '--esModuleInterop', '--skipLibCheck', '--types', 'node',
        // Every file as a root: tsc does not emit files it only reaches through imports under node_modules/.
        ...tsFiles(join(dir, 'lib'))
      ], { cwd: root, stdio: 'ignore' })
    } catch {
      // type errors still emit; a missing index.js is caught below
    }
    if (!existsSync(join(out, 'index.js'))) throw new Error(`tsc did not compile ${join(dir, 'lib')}`)
  }
  return join(out, 'index.js')
}

/** CPU use of the whole machine over `ms` (0..100), from /proc/stat. */
async function machineBusy (ms: number): Promise<number> {
  const sample = (): [number, number] => {
    const cpu = readFileSync('/proc/stat', 'latin1').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
    const idle = cpu[3] + (cpu[4] ?? 0)
    return [cpu.reduce((a, b) => a + b, 0), idle]
  }
  const [total0, idle0] = sample()
  await new Promise((resolve) => setTimeout(resolve, ms))
  const [total1, idle1] = sample()
  return total1 === total0 ? 0 : (1 - (idle1 - idle0) / (total1 - total0)) * 100
}

/** Waits (at most BENCH_QUIET_S seconds) for the other processes to quiet down; returns the last busy %. */
async function waitForQuiet (): Promise<number> {
  let busy = await machineBusy(500)
  for (let i = 0; i < quietSeconds && busy >= 25; i++) {
    busy = await machineBusy(1000)
  }
  return busy
}

/** The lib/ measured. */
function libState (): string {
  return pluginLib().label
}

/** HEAD and the number of changed files under lib/. */
function gitState (): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim()
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'lib'], { cwd: root, encoding: 'utf8' }).trim()
    return dirty === '' ? `HEAD ${head}, clean` : `HEAD ${head} + ${dirty.split('\n').length} changed file(s)`
  } catch {
    return 'git state unknown'
  }
}

async function runScenario (scenario: Scenario): Promise<void> {
  const servers = scenario.servers.filter((s) => onlyServers.length === 0 || onlyServers.includes(s))
  const results = new Map<ServerKind, Metrics[]>(servers.map((s) => [s, []]))
  const failures: string[] = []
  const started = Date.now()
  console.error(`\n${scenario.name}: ${rounds} round(s) x ${servers.join(', ')}; ${libState()}`)
  const load0 = readFileSync('/proc/loadavg', 'latin1').split(' ').slice(0, 3).join(' ')
  for (let round = 1; round <= rounds; round++) {
    for (const server of servers) {
      const busy = await waitForQuiet()
      const t0 = Date.now()
      try {
        const metrics = { ...await runOnce(scenario, server), machineBusyPct: busy }
        results.get(server)!.push(metrics)
        console.error(`  round ${round} ${server}: ${((Date.now() - t0) / 1000).toFixed(1)} s (machine ${busy.toFixed(0)}% busy before)`)
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err)
        failures.push(`round ${round} ${server}: ${message}`)
        console.error(`  round ${round} ${server}: FAILED ${message}`)
      }
    }
  }
  mkdirSync(resultsDir, { recursive: true })
  const file = join(resultsDir, `sync-${scenario.name}-${new Date(started).toISOString().replace(/[:.]/g, '-')}.json`)
  writeFileSync(file, JSON.stringify({ scenario: scenario.name, rounds, seconds, rate, lib: libState(), results: Object.fromEntries(results), failures }, null, 2))

  const med = (server: ServerKind, key: string): number => {
    const values = (results.get(server) ?? []).map((m) => m[key]).filter((v) => Number.isFinite(v))
    return median(values)
  }
  const hasRaw = servers.includes('raw')
  const head = ['metric', ...servers, ...(servers.includes('plugin') && servers.includes('reference') ? ['plugin / reference'] : []), ...(hasRaw && servers.includes('plugin') ? ['plugin / raw'] : [])]
  const metrics: Metric[] = [...scenario.metrics, { key: 'machineBusyPct', label: 'other CPU before the run (% of the machine)', digits: 0 }]
  const rows = metrics.map((metric) => {
    const row = [metric.label, ...servers.map((s) => format(med(s, metric.key), metric.digits))]
    if (servers.includes('plugin') && servers.includes('reference')) row.push(ratio(med('plugin', metric.key), med('reference', metric.key)))
    if (hasRaw && servers.includes('plugin')) row.push(metric.floor === true ? ratio(med('plugin', metric.key), med('raw', metric.key)) : '')
    return row
  })
  const runs = servers.map((s) => `${s} ${results.get(s)!.length}`).join(', ')
  const load1 = readFileSync('/proc/loadavg', 'latin1').split(' ').slice(0, 3).join(' ')
  table(`${scenario.title}\nmedians of ${runs} run(s); ${libState()};${pin ? ' servers pinned to CPU 1, load generator to CPU 0;' : ''}${serverFlags.length > 0 ? ` server flags ${serverFlags.join(' ')};` : ''} ${((Date.now() - started) / 1000).toFixed(0)} s; load average ${load0} -> ${load1}`, head, rows)
  if (failures.length > 0) console.log(`\nfailed runs:\n${failures.map((f) => `- ${f}`).join('\n')}`)
}

function byName (name: string): () => Promise<void> {
  const scenario = scenarios.find((s) => s.name === name)
  if (scenario === undefined) throw new Error(`no sync scenario ${name}`)
  return () => runScenario(scenario)
}

export const syncFanout = byName('fanout')
export const syncCursors = byName('cursors')
export const syncRooms = byName('rooms')
export const syncJoinLarge = byName('join-large')
export const syncReconnectStorm = byName('reconnect-storm')
export const syncReconnectLarge = byName('reconnect-large')
export const syncMemory = byName('memory')
