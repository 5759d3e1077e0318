/**
 * Bytes a server allocates per patch during a scenario, by allocating
 * function: V8's sampling heap profiler, counting the objects that young and
 * old collections freed as well as the live ones. Allocation drives how often
 * the young generation is collected, and so the CPU and the latency tail;
 * unlike CPU time on a shared machine, it hardly varies from run to run
 * (within about 1%).
 *
 *   node --import tsx bench/alloc.ts SCENARIO [plugin|reference|raw] [TOP=25]
 *
 * SCENARIO is a steady-load scenario of bench/load/main.ts (fanout, cursors,
 * rooms). The server runs as in `npm run bench` (PLUGIN_LIB picks another
 * copy of lib/index.ts); sampling starts once the warm-up is over and lasts
 * ALLOC_SECONDS (default 5). STACK=1 groups by the three callers too.
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createInterface } from 'node:readline'
import { WebSocket } from 'ws'
import type { LoadConfig } from './load/main.js'

interface SampledNode {
  callFrame: { functionName: string, url: string, lineNumber: number }
  selfSize: number
  children: SampledNode[]
}

const [scenario = 'rooms', server = 'plugin', topRaw = '25'] = process.argv.slice(2)
if (!['fanout', 'cursors', 'rooms'].includes(scenario) || !['plugin', 'reference', 'raw'].includes(server)) {
  console.error('usage: bench/alloc.ts fanout|cursors|rooms [plugin|reference|raw] [TOP]')
  process.exit(2)
}
const seconds = Number(process.env.ALLOC_SECONDS ?? 5)
/** The load generator's warm-up (2 s) and a margin, before sampling starts. */
const START_AFTER_MS = 4_000

const child = spawn(process.execPath, ['--inspect=127.0.0.1:0', '--import', 'tsx', `bench/servers/${server}.ts`], { stdio: ['ignore', 'pipe', 'pipe'] })
const inspectorUrl = new Promise<string>((resolve, reject) => {
  const lines = createInterface({ input: child.stderr! })
  lines.on('line', (line) => {
    const match = /Debugger listening on (ws:\/\/\S+)/.exec(line)
    if (match !== null) resolve(match[1])
  })
  child.once('exit', () => reject(new Error('the server exited before its inspector listened')))
})
const [line] = await once(createInterface({ input: child.stdout! }), 'line') as [string]
const { port } = JSON.parse(line) as { port: number }

const inspector = new WebSocket(await inspectorUrl)
await once(inspector, 'open')
let lastId = 0
const replies = new Map<number, (result: unknown) => void>()
inspector.on('message', (data) => {
  const message = JSON.parse(String(data)) as { id?: number, result?: unknown }
  if (message.id !== undefined) replies.get(message.id)?.(message.result)
})
async function call<T> (method: string, params: object = {}): Promise<T> {
  const id = ++lastId
  const reply = new Promise<T>((resolve) => replies.set(id, resolve as (result: unknown) => void))
  inspector.send(JSON.stringify({ id, method, params }))
  return await reply
}

const config: LoadConfig = { scenario, server: server as LoadConfig['server'], port, pid: child.pid!, seconds: seconds + 6, rate: 1, acks: server !== 'raw', idleTimeoutMs: 30_000, memoryRooms: 10_000 }
const load = spawn(process.execPath, ['--import', 'tsx', 'bench/load/main.ts', JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'inherit'] })
let output = ''
load.stdout!.on('data', (chunk: Buffer) => { output += chunk.toString() })
const loadDone = once(load, 'exit')

await new Promise((resolve) => setTimeout(resolve, START_AFTER_MS))
await call('HeapProfiler.startSampling', { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true })
await new Promise((resolve) => setTimeout(resolve, seconds * 1000))
const { profile } = await call<{ profile: { head: SampledNode } }>('HeapProfiler.stopSampling')
inspector.close()
await loadDone
child.kill('SIGTERM')
await once(child, 'exit')

const metrics = (JSON.parse(output.trim().split('\n').pop()!) as { metrics: Record<string, number> }).metrics
const bySite = new Map<string, number>()
let total = 0
function walk (node: SampledNode, callers: string[]): void {
  const { functionName, url, lineNumber } = node.callFrame
  const name = `${functionName === '' ? '(anonymous)' : functionName} ${url.split('/').slice(-2).join('/')}:${lineNumber + 1}`
  total += node.selfSize
  const site = process.env.STACK === '1' ? [name, ...callers.slice(0, 3)].join(' < ') : name
  bySite.set(site, (bySite.get(site) ?? 0) + node.selfSize)
  for (const child of node.children) walk(child, [name, ...callers])
}
walk(profile.head, [])
const patches = metrics.sentPerSec * seconds
console.log(`${server}, ${scenario}: ${(total / 1e6).toFixed(1)} MB allocated in ${seconds} s, ${Math.round(total / patches)} bytes per patch sent (${Math.round(metrics.sentPerSec)} patches/s)`)
for (const [site, bytes] of [...bySite].sort((a, b) => b[1] - a[1]).slice(0, Number(topRaw))) {
  console.log(`${String(Math.round(bytes / patches)).padStart(7)} B/patch  ${site}`)
}
