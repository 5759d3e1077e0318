import { createHash, randomUUID } from 'node:crypto'
import { mkdir, open, readFile, readdir, rename, stat, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import type { RoomSnapshot } from '../protocol/types.js'
import { STORES_AS_GIVEN, checkRoomId, type Storage } from './storage.js'

/** Options of {@link FileStorage}. */
export interface FileStorageOptions {
  /** Folder that holds one JSON file per room; created on first save. */
  dir: string
  /** The room this storage belongs to. Any well-formed string: it is encoded into a safe file name. */
  roomId: string
}

/**
 * Turns a room id into a file name that stays inside the folder: every byte
 * outside `[A-Za-z0-9_-]` is percent-encoded (so `../x` becomes `%2E%2E%2Fx`),
 * and a long id is cut and suffixed with its hash to fit file-name limits.
 */
export function roomFileName (roomId: string): string {
  let name = ''
  for (const byte of Buffer.from(roomId, 'utf8')) {
    const c = String.fromCharCode(byte)
    name += /[A-Za-z0-9_-]/.test(c) ? c : '%' + byte.toString(16).toUpperCase().padStart(2, '0')
  }
  if (name.length > 180) {
    name = name.slice(0, 120) + '~' + createHash('sha256').update(roomId).digest('hex').slice(0, 40)
  }
  return name + '.json'
}

/** A name roomFileName can make (before `.json`): whole, or cut and suffixed with a hash. */
const OWN_NAME = /^(?:[A-Za-z0-9_-]|%[0-9A-F]{2})*$|^[A-Za-z0-9_%-]{0,120}~[0-9a-f]{40}$/

/**
 * The file name the reference server's FileStorage gives a room (its id as
 * it is, then `.json`), when it cannot be this storage's own file of any
 * room; otherwise null, and it is never read:
 * - ids roomFileName could have made (`a%2Eb` is the name of room `a.b`);
 * - names of a path elsewhere (a separator, NUL), or too long for a file.
 */
function referenceFileName (roomId: string): string | null {
  const name = roomId + '.json'
  if (OWN_NAME.test(roomId) || /[/\\]/.test(roomId) || roomId.includes('\u0000') || Buffer.byteLength(name) > 255) return null
  return name
}

/** A temp file of a save (see FileStorage#write): the room's file name, a UUID, `.tmp`. */
const TEMP_FILE = /\.json\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.tmp$/
/** A temp file older than this is a leftover, not a save in progress. */
const STALE_TEMP_MS = 10 * 60_000
/** Folders this process has swept of leftover temp files (once each, at the first load). */
const swept = new Map<string, Promise<void>>()

/**
 * Removes the temp files that saves cut short by a crash left behind (each
 * would stay forever otherwise, one more per crash, as large as the room).
 * Only old ones: a save in progress, of this process or another, keeps its
 * own. Failures are ignored: a leftover costs disk space, never data.
 */
async function sweepTempFiles (dir: string): Promise<void> {
  let names: string[]
  try {
    names = await readdir(dir)
  } catch {
    return
  }
  const before = Date.now() - STALE_TEMP_MS
  for (const name of names) {
    if (!TEMP_FILE.test(name)) continue
    const path = join(dir, name)
    try {
      if ((await stat(path)).mtimeMs < before) await unlink(path)
    } catch {
      // gone already, or not ours to remove
    }
  }
}

/**
 * One JSON file per room. Saves are atomic (write a temp file, fsync, rename)
 * and serialized, so a crash leaves either the old or the new snapshot and the
 * last save issued is the last one written. The first load in a folder
 * removes the temp files that crashes left there more than ten minutes ago.
 */
export class FileStorage implements Storage {
  readonly [STORES_AS_GIVEN] = true
  readonly #dir: string
  readonly #file: string
  /** Where a folder written by the reference server keeps this room, read when #file does not exist yet. */
  readonly #referenceFile: string | null
  #chain: Promise<void> = Promise.resolve()

  constructor (options: FileStorageOptions) {
    if (typeof options?.dir !== 'string' || options.dir === '') throw new TypeError('FileStorage: dir must be a non-empty string')
    checkRoomId(options.roomId, 'FileStorage')
    this.#dir = options.dir
    this.#file = join(options.dir, roomFileName(options.roomId))
    const reference = referenceFileName(options.roomId)
    this.#referenceFile = reference === null ? null : join(options.dir, reference)
  }

  /** Path of this room's file. */
  get file (): string { return this.#file }

  /**
   * Reads the room's file. A room that has none yet, in a folder written by
   * the reference server's FileStorage (which names the file after the room
   * id as it is: `board.v2.json` where this one writes `board%2Ev2.json`), is
   * read from that file instead; the next save writes this storage's own
   * file, and the old one is left as it is.
   * @returns the saved snapshot, or null when the room has no file yet
   * @throws when the file exists but cannot be read or parsed
   */
  async load (): Promise<RoomSnapshot | null> {
    let sweep = swept.get(this.#dir)
    if (sweep === undefined) {
      sweep = sweepTempFiles(this.#dir)
      swept.set(this.#dir, sweep)
    }
    await sweep
    return await readSnapshot(this.#file) ??
      (this.#referenceFile === null ? null : await readSnapshot(this.#referenceFile))
  }

  save (snapshot: RoomSnapshot): Promise<void> {
    const data = JSON.stringify(snapshot)
    const run = this.#chain.then(() => this.#write(data))
    this.#chain = run.catch(() => {})
    return run
  }

  async #write (data: string): Promise<void> {
    await mkdir(this.#dir, { recursive: true })
    const tmp = `${this.#file}.${randomUUID()}.tmp`
    try {
      const handle = await open(tmp, 'w')
      try {
        await handle.writeFile(data, 'utf8')
        await handle.sync()
      } finally {
        await handle.close()
      }
      await rename(tmp, this.#file)
    } catch (err) {
      await unlink(tmp).catch(() => {})
      throw err
    }
  }
}

/**
 * A snapshot file's content, or null when there is no such file.
 * @throws when the file exists but cannot be read, parsed, or holds no object
 */
async function readSnapshot (file: string): Promise<RoomSnapshot | null> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw err
  }
  const snapshot: unknown = JSON.parse(text)
  // `null` means "never saved" to a room: a file holding it (or another non-object) is damaged, not empty.
  if (typeof snapshot !== 'object' || snapshot === null || Array.isArray(snapshot)) {
    throw new Error(`FileStorage: ${file} does not hold a snapshot object`)
  }
  return snapshot as RoomSnapshot
}
