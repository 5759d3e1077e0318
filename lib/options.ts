import type { FastifyRequest, onRequestHookHandler, preHandlerHookHandler } from 'fastify'
import { errors } from './errors.js'
import type { SessionPermission } from './protocol/types.js'
import { isRecord } from './protocol/frames.js'
import { DEFAULT_LIMITS, DEFAULT_RATE_LIMIT, DEFAULT_SLOW_CLIENT, type RateLimit, type RoomLimits, type SlowClientPolicy } from './room/limits.js'
import type { Durability } from './room/persistence.js'
import type { CreateStorage, RoomStore } from './storage/storage.js'
import { MAX_TIMER_MS } from './room/slots.js'

/** What `authorize` is told about a connection. */
export interface AuthorizeInfo {
  roomId: string
  clientId: string
  /** The `token` query parameter ('' when absent), or the token of an `auth-refresh` frame. */
  token: string
  /** The upgrade request; `undefined` when called for an `auth-refresh` frame. */
  request: FastifyRequest | undefined
}

/** What `authorize` decides for a session. */
export interface AuthorizeResult {
  permissions: SessionPermission
  /** Any JSON-serializable data, shown by the admin routes and `room.getSessions()`. */
  metadata?: unknown
}

/**
 * Decides whether a client may join a room, and with which permissions.
 * Throw (or reject) to refuse: the socket is closed with 1008, or 4401/4403
 * when the error has `statusCode` 401/403, and the error's message as reason.
 */
export type Authorize = (info: AuthorizeInfo) => AuthorizeResult | Promise<AuthorizeResult>

/** The admin REST routes' settings. */
export interface AdminOptions {
  /** Hook(s) run in `onRequest` of every admin route, e.g. `app.auth([verifyAdmin])`. */
  onRequest?: onRequestHookHandler | onRequestHookHandler[]
  /** Hook(s) run in `preHandler` of every admin route (after params and body are parsed). */
  preHandler?: preHandlerHookHandler | preHandlerHookHandler[]
  /**
   * Set `false` to register the admin routes without any hook (trusted
   * networks, tests). Without a hook and without `auth: false`, the admin
   * routes are not registered at all.
   */
  auth?: false
  /**
   * Prefix of the admin routes.
   * @default ''
   */
  prefix?: string
  /**
   * Serve the admin page (rooms, sessions, permission toggles, disconnect
   * buttons; refreshes live) at this path under the prefix, behind the same
   * hooks. `true` means `'/ui'`.
   * @default false
   */
  page?: boolean | string
}

/** Options of the fastify-canvas-store plugin. */
export interface CanvasStoreOptions {
  /**
   * URL path of the WebSocket route.
   * @default '/sync'
   */
  path?: string
  /**
   * Decides each connection and each `auth-refresh`.
   * @default every connection is `readwrite` (a warning is logged once)
   */
  authorize?: Authorize
  /**
   * How long `authorize` may take to decide a connection or an
   * `auth-refresh` (ms). A connection still undecided is closed with 1013
   * (the client retries); a refresh still undecided closes its session with
   * 1013 (the frames it held are not applied). At most 2147483647; 0: no bound.
   * @default 10000
   */
  authorizeTimeoutMs?: number
  /**
   * Makes the storage of a room.
   * @default an in-memory store per room, kept for the life of the process
   */
  createStorage?: CreateStorage
  /**
   * One store for every room, such as `new SqliteStorage({ file })` or
   * `new PostgresStorage({ pool })`. Use either this or `createStorage`. The
   * plugin never closes it: close it after `app.close()`.
   */
  storage?: RoomStore
  /**
   * With a storage that has `append` (SQLite, PostgreSQL): `durable` sends the
   * ack and broadcast of a document patch only after the write holding it has
   * committed; `throttled` sends them at once and writes every `saveThrottleMs`
   * (lower latency, but a crash loses up to that much acked work). Plain
   * `{ load, save }` storages are always throttled.
   * @default 'durable'
   */
  durability?: Durability
  /**
   * How long a room's load may stay pending before the connection is closed
   * with 1011, and how long storage writes may keep failing, or (with
   * durable acks) one write may stay pending, before a room's sessions are
   * told (`CANVAS_STORE_STORAGE_UNAVAILABLE`) and closed with 1011 (ms).
   * At most 2147483647; 0 does not watch loads or pending writes.
   * @default 10000
   */
  storageFailureTimeoutMs?: number
  /**
   * Longest delay between a document change and the save holding it (ms).
   * @default 1000
   */
  saveThrottleMs?: number
  /**
   * How long an empty room stays loaded before it is saved and unloaded (ms).
   * @default 30000
   */
  idleTimeout?: number
  /**
   * Largest frame accepted (bytes); a bigger one closes the socket with 1009.
   * @default 1048576
   */
  maxPayload?: number
  /**
   * Most frames a socket may send before its room is ready (authorize and
   * load still running); one more closes it with 1008.
   * @default 64
   */
  maxQueuedFrames?: number
  /**
   * Most bytes a socket may send before its room is ready.
   * @default 4194304
   */
  maxQueuedBytes?: number
  /** The admin REST routes; see {@link AdminOptions}. Not registered unless given. */
  admin?: AdminOptions
  /**
   * Bounds on frames, documents, presence and sessions per room.
   * @default { maxPatchesPerFrame: 1000, maxKeysPerFrame: 50000, maxDocumentKeys: 1000000, maxDocumentBytes: 64 MiB, maxEphemeralKeys: 1000, maxEphemeralBytes: 128 KiB, maxSessions: 1000, maxFieldCopiesPerFrame: 200000 }
   */
  limits?: Partial<RoomLimits>
  /**
   * Most rooms loaded at once; a connection needing one more is closed with 1013.
   * @default 100000
   */
  maxRooms?: number
  /**
   * Per-session token buckets for frames and bytes; `false` to turn off.
   * @default { framesPerSecond: 200, burstFrames: 400, bytesPerSecond: 4 MiB, burstBytes: 16 MiB, closeAfter: 100 }
   */
  rateLimit?: Partial<RateLimit> | false
  /**
   * Connection attempts per client IP on the WebSocket route (`@fastify/rate-limit`,
   * answered with HTTP 429 before the upgrade); `false` to turn off.
   * @default { max: 120, timeWindow: 60000, allowList: ['127.0.0.1', '::1', '::ffff:127.0.0.1'] }
   */
  connectionRateLimit?: { max?: number, timeWindow?: number, allowList?: string[] } | false
  /**
   * Policy for sessions that cannot keep up; `false` to turn off.
   * @default { softBytes: 1 MiB, hardBytes: 64 MiB, maxSlowMs: 30000, catchUpBytes: 256 MiB }
   */
  slowClient?: Partial<SlowClientPolicy> | false
  /**
   * `/health` (the process answers) and `/ready` (not draining, storage
   * reachable) routes, public and cheap. `true` for the default paths.
   * @default false
   */
  health?: boolean | { healthPath?: string, readyPath?: string }
  /**
   * Prometheus metrics at `path` under the admin prefix, behind the admin
   * hooks (needs `admin`). `true` means `'/metrics'`.
   * @default false
   */
  metrics?: boolean | { path?: string }
  /**
   * OpenAPI description of the plugin's HTTP routes (`@fastify/swagger`,
   * registered unless the app already has it), served as JSON at `path`;
   * `ui: true` also serves `@fastify/swagger-ui` at `uiPrefix` (install it).
   * `true` means `{ path: '/openapi.json' }`.
   * @default false
   */
  openapi?: boolean | { path?: string, ui?: boolean, uiPrefix?: string }
  /**
   * Batch presence (ephemeral patches) per event-loop turn: each session gets
   * at most one presence frame per turn holding every other client's latest
   * values (never its own), instead of one frame per sender frame. Exact
   * (applying the batch equals applying every frame in order) and what keeps
   * a room of 100 cursors at 30 Hz cheap. `clientCount` frames are batched
   * the same way (the newcomer gets its count at once, the others once per
   * turn), which keeps a reconnect storm linear. `false` forwards each frame
   * as received, at once.
   * @default true
   */
  presenceBatching?: boolean
  /**
   * Ping interval (ms). A socket that has not answered the previous ping by the
   * next one is terminated and its session removed. `0` turns heartbeats off.
   * @default 30000
   */
  heartbeatInterval?: number
}

/** Defaults of every optional setting. */
export const DEFAULTS = {
  path: '/sync',
  saveThrottleMs: 1000,
  storageFailureTimeoutMs: 10_000,
  authorizeTimeoutMs: 10_000,
  idleTimeout: 30_000,
  maxPayload: 1024 * 1024,
  maxQueuedFrames: 64,
  maxQueuedBytes: 4 * 1024 * 1024,
  maxRooms: 100_000,
  heartbeatInterval: 30_000
} as const

/** The default connection rate limit: loopback is exempt so local load tests and same-host proxies work. */
export const DEFAULT_CONNECTION_RATE_LIMIT = { max: 120, timeWindow: 60_000, allowList: ['127.0.0.1', '::1', '::ffff:127.0.0.1'] }

/** Options with every default filled in. */
export interface ResolvedOptions {
  path: string
  authorize: Authorize | undefined
  createStorage: CreateStorage | undefined
  durability: Durability
  saveThrottleMs: number
  storageFailureTimeoutMs: number
  authorizeTimeoutMs: number
  idleTimeout: number
  maxPayload: number
  maxQueuedFrames: number
  maxQueuedBytes: number
  maxRooms: number
  heartbeatInterval: number
  limits: Partial<RoomLimits> | undefined
  rateLimit: Partial<RateLimit> | false | undefined
  slowClient: Partial<SlowClientPolicy> | false | undefined
  connectionRateLimit: { max: number, timeWindow: number, allowList: string[] } | false
  presenceBatching: boolean
  health: { healthPath: string, readyPath: string } | undefined
  metrics: { path: string } | undefined
  openapi: { path: string, ui: boolean, uiPrefix: string } | undefined
  admin: { onRequest: onRequestHookHandler[], preHandler: preHandlerHookHandler[], prefix: string, page: string | undefined } | undefined
}

/**
 * Checks the options and fills in the defaults.
 * @throws {TypeError} `CANVAS_STORE_INVALID_OPTION`, naming the option
 */
export function resolveOptions (opts: CanvasStoreOptions = {}): ResolvedOptions {
  const fail = (name: string, why: string): never => { throw new errors.INVALID_OPTION(name, why) }
  if (typeof opts !== 'object' || opts === null) fail('options', 'must be an object')
  const path = opts.path ?? DEFAULTS.path
  checkPath('path', path, fail)
  if (opts.authorize !== undefined && typeof opts.authorize !== 'function') fail('authorize', 'must be a function')
  if (opts.createStorage !== undefined && typeof opts.createStorage !== 'function') fail('createStorage', 'must be a function (roomId) => Storage')
  if (opts.storage !== undefined) {
    if (typeof opts.storage?.forRoom !== 'function') fail('storage', 'must have a forRoom(roomId) method (e.g. new SqliteStorage())')
    if (opts.createStorage !== undefined) fail('storage', 'give either storage or createStorage, not both')
  }
  if (opts.presenceBatching !== undefined && typeof opts.presenceBatching !== 'boolean') fail('presenceBatching', 'must be a boolean')
  const durability = opts.durability ?? 'durable'
  if (durability !== 'durable' && durability !== 'throttled') fail('durability', "must be 'durable' or 'throttled'")
  const number = (name: Exclude<keyof typeof DEFAULTS, 'path'>, min: number, max = Number.MAX_VALUE): number => {
    const value = opts[name] ?? DEFAULTS[name]
    if (typeof value !== 'number' || !Number.isFinite(value) || value < min) fail(name, `must be a number >= ${min}`)
    if ((value as number) > max) fail(name, `must be at most ${max} ms (the longest timer Node arms; longer ones fire at once)`)
    return value as number
  }
  /** A count or a size in bytes. */
  const integer = (name: Exclude<keyof typeof DEFAULTS, 'path'>, min: number): number => {
    const value = number(name, min)
    if (!Number.isInteger(value)) fail(name, 'must be an integer')
    return value
  }
  let admin: ResolvedOptions['admin']
  if (opts.admin !== undefined) {
    if (!isRecord(opts.admin as unknown)) fail('admin', 'must be an object')
    const onRequest = hooks('admin.onRequest', opts.admin.onRequest, fail)
    const preHandler = hooks('admin.preHandler', opts.admin.preHandler, fail)
    const prefix = opts.admin.prefix ?? ''
    if (prefix !== '') checkPath('admin.prefix', prefix, fail, 'must be "" or a path starting with "/"')
    if (opts.admin.auth !== undefined && opts.admin.auth !== false) fail('admin.auth', 'can only be false')
    const page = opts.admin.page === true ? '/ui' : opts.admin.page === false ? undefined : opts.admin.page
    if (page !== undefined) checkPath('admin.page', page, fail, 'must be a boolean or a path starting with "/"')
    // Fail closed: no hook and no explicit opt-out means no admin routes.
    if (onRequest.length > 0 || preHandler.length > 0 || opts.admin.auth === false) {
      admin = { onRequest, preHandler, prefix: prefix.replace(/\/$/, ''), page }
    }
  }
  const health = feature('health', opts.health, { healthPath: '/health', readyPath: '/ready' }, fail)
  if (health !== undefined) {
    for (const key of ['healthPath', 'readyPath'] as const) checkPath(`health.${key}`, health[key], fail)
  }
  const metrics = feature('metrics', opts.metrics, { path: '/metrics' }, fail)
  if (metrics !== undefined) {
    checkPath('metrics.path', metrics.path, fail)
    if (admin === undefined) fail('metrics', 'is served behind the admin hooks: give admin.onRequest (or admin.auth: false)')
  }
  const openapi = feature('openapi', opts.openapi, { path: '/openapi.json', ui: false, uiPrefix: '/documentation' }, fail)
  if (openapi !== undefined) {
    checkPath('openapi.path', openapi.path, fail)
    checkPath('openapi.uiPrefix', openapi.uiPrefix, fail)
    if (typeof openapi.ui !== 'boolean') fail('openapi.ui', 'must be a boolean')
  }
  return {
    path,
    authorize: opts.authorize,
    createStorage: opts.storage !== undefined ? (roomId) => opts.storage!.forRoom(roomId) : opts.createStorage,
    durability,
    saveThrottleMs: number('saveThrottleMs', 0, MAX_TIMER_MS),
    storageFailureTimeoutMs: number('storageFailureTimeoutMs', 0, MAX_TIMER_MS),
    authorizeTimeoutMs: number('authorizeTimeoutMs', 0, MAX_TIMER_MS),
    idleTimeout: number('idleTimeout', 0, MAX_TIMER_MS),
    maxPayload: integer('maxPayload', 1024),
    maxQueuedFrames: integer('maxQueuedFrames', 1),
    maxQueuedBytes: integer('maxQueuedBytes', 1024),
    maxRooms: integer('maxRooms', 1),
    heartbeatInterval: number('heartbeatInterval', 0, MAX_TIMER_MS),
    // Every limit is a count or a size in bytes.
    limits: numbers('limits', opts.limits, DEFAULT_LIMITS, Object.keys(DEFAULT_LIMITS), fail),
    // Rates may be fractions (one frame every two seconds); bursts, counts and sizes are whole.
    rateLimit: opts.rateLimit === false ? false : numbers('rateLimit', opts.rateLimit, DEFAULT_RATE_LIMIT, ['burstFrames', 'burstBytes', 'closeAfter'], fail),
    slowClient: opts.slowClient === false ? false : numbers('slowClient', opts.slowClient, DEFAULT_SLOW_CLIENT, ['softBytes', 'hardBytes', 'catchUpBytes'], fail),
    connectionRateLimit: connectionRateLimit(opts.connectionRateLimit, fail),
    presenceBatching: opts.presenceBatching ?? true,
    health,
    metrics,
    openapi,
    admin
  }
}

/**
 * Checks an object of positive numbers (limits, rates) against the keys of
 * its defaults, so that a misspelt key fails instead of being ignored;
 * `integers`: the keys that only take whole numbers.
 */
function numbers<T extends object> (name: string, value: Partial<T> | undefined, defaults: T, integers: readonly string[], fail: (name: string, why: string) => never): Partial<T> | undefined {
  if (value === undefined) return undefined
  if (!isRecord(value)) fail(name, 'must be an object')
  for (const [key, v] of Object.entries(value)) {
    if (!Object.hasOwn(defaults, key)) fail(`${name}.${key}`, `is not an option (known: ${Object.keys(defaults).join(', ')})`)
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(`${name}.${key}`, 'must be a number > 0')
    if (integers.includes(key) && !Number.isInteger(v)) fail(`${name}.${key}`, 'must be an integer')
  }
  return value
}

/** An option that is off (undefined, false), on with its defaults (true), or on with some settings (an object). */
function feature<T extends object> (name: string, value: boolean | Partial<T> | undefined, defaults: T, fail: (name: string, why: string) => never): T | undefined {
  if (value === undefined || value === false) return undefined
  if (value === true) return { ...defaults }
  if (!isRecord(value)) fail(name, 'must be a boolean or an object')
  // A setting given as undefined keeps its default, as an absent one does.
  const given = Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined))
  return { ...defaults, ...given }
}

/** A route path: starts with "/", and holds nothing a request's path cannot (a query, a fragment, spaces). */
function checkPath (name: string, value: unknown, fail: (name: string, why: string) => never, why = 'must be a path starting with "/"'): void {
  if (typeof value !== 'string' || !value.startsWith('/')) fail(name, why)
  if (/[?#\s]/.test(value as string)) fail(name, 'must be a path without "?", "#" or spaces')
}

function connectionRateLimit (value: CanvasStoreOptions['connectionRateLimit'], fail: (name: string, why: string) => never): ResolvedOptions['connectionRateLimit'] {
  if (value === false) return false
  if (value !== undefined && !isRecord(value)) fail('connectionRateLimit', 'must be an object or false')
  const merged = { ...DEFAULT_CONNECTION_RATE_LIMIT, ...value }
  if (!Number.isInteger(merged.max) || merged.max < 1) fail('connectionRateLimit.max', 'must be an integer >= 1')
  if (typeof merged.timeWindow !== 'number' || !(merged.timeWindow > 0)) fail('connectionRateLimit.timeWindow', 'must be a number of ms > 0')
  if (!Array.isArray(merged.allowList) || !merged.allowList.every((ip) => typeof ip === 'string')) fail('connectionRateLimit.allowList', 'must be an array of IP strings')
  return merged
}

function hooks<T> (name: string, value: T | T[] | undefined, fail: (name: string, why: string) => never): T[] {
  if (value === undefined) return []
  const list = Array.isArray(value) ? value : [value]
  if (!list.every((hook) => typeof hook === 'function')) fail(name, 'must be a hook function or an array of them')
  return list
}

/** Room ids and client ids: 1 to 256 characters, no control characters. */
export const ID_PATTERN = '^[^\\u0000-\\u001F\\u007F]{1,256}$'
/**
 * Room ids: as ID_PATTERN, but not `.` or `..`, which the admin routes could
 * never be asked about (URL parsers, fetch's included, remove such path segments).
 */
export const ROOM_ID_PATTERN = '^(?!\\.\\.?$)' + ID_PATTERN.slice(1)
