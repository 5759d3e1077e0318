/**
 * Summarizes a V8 .cpuprofile (from `node --cpu-prof`, e.g. BENCH_PROFILE=1):
 * the functions with the most self time, and self time per source file.
 *
 *   node --import tsx bench/profile-summary.ts FILE.cpuprofile|FOLDER [TOP=30]
 *
 * Given a folder (one BENCH_PROFILE=1 run), it reads the largest profile in
 * it: the main thread's (the other is tsx's module loader thread).
 *
 * Self time of a node is the sum of the time deltas of the samples that hit
 * it; inclusive time (for lib/ functions) counts the samples with the
 * function anywhere on the stack. Positions in JavaScript that has a source map beside it (BENCH_PROFILE
 * compiles lib/ with tsc for that) are shown as the .ts file and line.
 * Samples taken before the server was listening (startup, module loading)
 * are left out when the folder has the `ready.json` that bench/sync.ts writes.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { SourceMap } from 'node:module'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

interface CallFrame {
  functionName: string
  url: string
  lineNumber: number
  columnNumber: number
}

interface ProfileNode {
  id: number
  callFrame: CallFrame
  children?: number[]
}

interface Profile {
  nodes: ProfileNode[]
  startTime: number
  endTime: number
  samples: number[]
  timeDeltas: number[]
}

const given = process.argv[2]
if (given === undefined) {
  console.error('usage: node --import tsx bench/profile-summary.ts FILE.cpuprofile|FOLDER [TOP]')
  process.exit(2)
}
const file = statSync(given).isDirectory()
  ? readdirSync(given).filter((name) => name.endsWith('.cpuprofile')).map((name) => join(given, name))
    .sort((a, b) => statSync(b).size - statSync(a).size)[0]
  : given
if (file === undefined) {
  console.error(`no .cpuprofile in ${given}`)
  process.exit(2)
}
const top = Number(process.argv[3] ?? 30)
const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile

const readyFile = join(dirname(file), 'ready.json')
const skipUs = existsSync(readyFile) ? (JSON.parse(readFileSync(readyFile, 'utf8')) as { readyAfterMs: number }).readyAfterMs * 1000 : 0

const byId = new Map(profile.nodes.map((node) => [node.id, node]))
const parent = new Map<number, number>()
for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id)
const selfUs = new Map<number, number>()
let elapsed = 0
for (let i = 0; i < profile.samples.length; i++) {
  elapsed += profile.timeDeltas[i] ?? 0
  if (elapsed < skipUs) continue
  const delta = profile.timeDeltas[i + 1] ?? 0
  selfUs.set(profile.samples[i], (selfUs.get(profile.samples[i]) ?? 0) + delta)
}

const sourceMaps = new Map<string, SourceMap | null>()
/** `path:line` of a position, through the file's source map when it has one (0-based in, 1-based out). */
function position (path: string, line: number, column: number): string {
  let map = sourceMaps.get(path)
  if (map === undefined) {
    map = null
    if (path.endsWith('.js') && existsSync(path + '.map')) map = new SourceMap(JSON.parse(readFileSync(path + '.map', 'utf8')))
    sourceMaps.set(path, map)
  }
  if (map !== null) {
    const entry = map.findEntry(line, column) as { originalSource?: string, originalLine?: number }
    if (entry.originalSource !== undefined && entry.originalLine !== undefined) {
      const source = entry.originalSource.startsWith('file://') ? fileURLToPath(entry.originalSource) : resolve(dirname(path), entry.originalSource)
      return `${shorten(source)}:${entry.originalLine + 1}`
    }
  }
  return `${shorten(path)}:${line + 1}`
}

/** lib/... for a lib copy, the package path for node_modules, else relative to the cwd. */
function shorten (path: string): string {
  const lib = path.lastIndexOf('/lib/')
  if (path.includes('/.cache/canvas-bench/') && lib !== -1) return path.slice(lib + 1)
  const modules = path.lastIndexOf('node_modules/')
  if (modules !== -1) return path.slice(modules + 'node_modules/'.length)
  return relative(process.cwd(), path)
}

/** The file of a call frame, and its position (source-mapped when possible). */
function where (frame: CallFrame): { file: string, at: string } {
  if (frame.url === '') return { file: '', at: '' }
  if (!frame.url.startsWith('file://')) return { file: frame.url, at: `${frame.url}:${frame.lineNumber + 1}` }
  const path = fileURLToPath(frame.url)
  const at = position(path, frame.lineNumber, frame.columnNumber)
  return { file: at.slice(0, at.lastIndexOf(':')), at }
}

const byFunction = new Map<string, number>()
const byFile = new Map<string, number>()
let total = 0
let idle = 0
for (const [id, us] of selfUs) {
  const frame = byId.get(id)!.callFrame
  total += us
  if (frame.functionName === '(idle)') idle += us
  const name = frame.functionName === '' ? '(anonymous)' : frame.functionName
  const place = where(frame)
  const key = place.at === '' ? name : `${name}  ${place.at}`
  byFunction.set(key, (byFunction.get(key) ?? 0) + us)
  const fileKey = place.file === '' ? name : place.file
  byFile.set(fileKey, (byFile.get(fileKey) ?? 0) + us)
}

/** Time with the function anywhere on the stack (each sample counted once per function). */
const inclusive = new Map<string, number>()
for (const [id, us] of selfUs) {
  const seen = new Set<string>()
  for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
    const frame = byId.get(at)!.callFrame
    const place = where(frame)
    if (!place.file.startsWith('lib/')) continue
    const key = `${frame.functionName === '' ? '(anonymous)' : frame.functionName}  ${place.at}`
    if (seen.has(key)) continue
    seen.add(key)
    inclusive.set(key, (inclusive.get(key) ?? 0) + us)
  }
}

const busy = total - idle
const ms = (us: number): string => (us / 1000).toFixed(0).padStart(7)
const pct = (us: number): string => `${((us / busy) * 100).toFixed(1).padStart(5)}%`
console.log(`${file}\nsampled ${(total / 1e6).toFixed(1)} s${skipUs > 0 ? ` (after skipping the first ${(skipUs / 1e6).toFixed(1)} s: startup)` : ''}, of which ${(busy / 1e6).toFixed(1)} s not idle; percentages are of the non-idle time\n`)
console.log(`top ${top} functions by self time:`)
for (const [key, us] of [...byFunction].filter(([k]) => !k.startsWith('(idle)')).sort((a, b) => b[1] - a[1]).slice(0, top)) {
  console.log(`${ms(us)} ms ${pct(us)}  ${key}`)
}
console.log('\nself time by file:')
for (const [key, us] of [...byFile].filter(([k]) => k !== '(idle)').sort((a, b) => b[1] - a[1]).slice(0, top)) {
  console.log(`${ms(us)} ms ${pct(us)}  ${key}`)
}
console.log('\nlib/ functions by inclusive time (self + callees):')
for (const [key, us] of [...inclusive].sort((a, b) => b[1] - a[1]).slice(0, top)) {
  console.log(`${ms(us)} ms ${pct(us)}  ${key}`)
}
