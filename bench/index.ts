/**
 * `npm run bench` runs every scenario; `npm run bench -- NAME...` runs some.
 * Not a test: it prints tables of medians.
 */
import { soak } from './soak.js'
import { storageBytes, storageLargeKey, storageThroughput } from './storage.js'
import { syncCursors, syncFanout, syncJoinLarge, syncMemory, syncReconnectLarge, syncReconnectStorm, syncRooms } from './sync.js'

const scenarios: Record<string, () => Promise<void>> = {
  'storage-bytes': storageBytes,
  'storage-throughput': storageThroughput,
  'storage-large-key': storageLargeKey,
  fanout: syncFanout,
  cursors: syncCursors,
  rooms: syncRooms,
  'join-large': syncJoinLarge,
  'reconnect-storm': syncReconnectStorm,
  'reconnect-large': syncReconnectLarge,
  memory: syncMemory,
  soak
}

const wanted = process.argv.slice(2)
const unknown = wanted.filter((name) => !(name in scenarios))
if (unknown.length > 0) {
  console.error(`unknown scenario(s): ${unknown.join(', ')}; known: ${Object.keys(scenarios).join(', ')}`)
  process.exit(2)
}
console.log(`node ${process.version}, ${(await import('node:os')).cpus().length} cores, ${new Date().toISOString()}`)
for (const name of wanted.length > 0 ? wanted : Object.keys(scenarios)) {
  await scenarios[name]()
}
