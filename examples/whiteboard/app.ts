/**
 * The whiteboard page of the demo (bundled by examples/demo-app.ts with esbuild).
 *
 * Built on the published client only: an ECS world from `@woven-ecs/core`
 * and a `CanvasStore` from `@woven-ecs/canvas-store` with its websocket
 * adapter, synced once per animation frame inside `world.execute`.
 *
 *   ?room=demo          room id (default 'demo')
 *   &token=...          'ro-...' is read-only; default 'demo-' + random (read-write)
 *   &name=...           label of your cursor, 24 characters at most (default a random animal)
 *
 * Rectangles are `Shape` entities (document sync: stored by the server);
 * cursors are `Cursor` entities (ephemeral sync: presence, never stored).
 * No IndexedDB persistence: the page's copy lives in memory, edits made while
 * offline are kept by the websocket adapter and sent on reconnect; a reload
 * starts from the server's document.
 */
import { CanvasStore, Synced, defineCanvasComponent } from '@woven-ecs/canvas-store'
import { World, addComponent, createEntity, field, hasComponent, removeEntity, type Context, type EntityId } from '@woven-ecs/core'

export const Shape = defineCanvasComponent({ name: 'Shape', sync: 'document' }, {
  x: field.float64(),
  y: field.float64(),
  w: field.float64(),
  h: field.float64(),
  color: field.string().max(16)
})

export const Cursor = defineCanvasComponent({ name: 'Cursor', sync: 'ephemeral' }, {
  x: field.float64(),
  y: field.float64(),
  name: field.string().max(96), // bytes: 24 code points of up to 4 UTF-8 bytes
  color: field.string().max(16)
})

export interface ShapeView { id: string, x: number, y: number, w: number, h: number, color: string }
export interface CursorView { id: string, name: string, color: string, x: number, y: number }
export interface DemoStatus {
  /** The websocket is open. */
  online: boolean
  /** The user pressed "Go offline" (no automatic reconnect until "Go online"). */
  paused: boolean
  /** The store got the server's document at least once (`onSync`). */
  synced: boolean
  /** Sessions in the room, from the server's `clientCount` frames; null while offline. */
  clientCount: number | null
  /** Codes of the server's `error` frames (e.g. CANVAS_STORE_READONLY). */
  refusals: string[]
  /** Code and reason of the last close the server initiated (4xxx), if any. */
  closedBy: string | null
}

/**
 * What the page exposes as `window.demo` (for the browser tests and the
 * devtools console). `addShape` and `moveShape` are raw edits: unlike the
 * page's own button and drags, they ignore read-only, so that a test can play a
 * tampered client and show the server refusing it.
 */
export interface DemoApi {
  readonly clientId: string
  readonly room: string
  readonly name: string
  readonly readonly: boolean
  shapes(): ShapeView[]
  cursors(): CursorView[]
  status(): DemoStatus
  /** Animation frames run so far (each one ran `store.sync`). */
  frames(): number
  addShape(init?: Partial<Omit<ShapeView, 'id'>>): string
  moveShape(id: string, x: number, y: number): void
  goOffline(): void
  goOnline(): Promise<void>
}

declare global {
  interface Window { demo: DemoApi }
}

// ------------------------------------------------------------------ settings

const SHAPE_COLORS = ['#ffd43b', '#74c0fc', '#8ce99a', '#ffa8a8', '#d0bfff', '#ffc078', '#63e6be']
const CURSOR_COLORS = ['#e03131', '#1971c2', '#e8590c', '#9c36b5', '#2f9e44', '#0c8599', '#5f3dc4']
const ANIMALS = ['Otter', 'Heron', 'Lynx', 'Puffin', 'Badger', 'Gecko', 'Koala', 'Marten', 'Ibis', 'Tapir']

/** Hex id from crypto.getRandomValues (crypto.randomUUID needs a secure context, a LAN address over http is not). */
function randomId (bytes = 6): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, '0')).join('')
}

function pick<T> (items: readonly T[]): T {
  return items[crypto.getRandomValues(new Uint32Array(1))[0] % items.length]
}

const params = new URLSearchParams(location.search)
const room = params.get('room') || 'demo'
const token = params.get('token') || `demo-${randomId()}`
const readonly = token.startsWith('ro-')
const name = Array.from(params.get('name') || `${pick(ANIMALS)} ${10 + (crypto.getRandomValues(new Uint8Array(1))[0] % 90)}`).slice(0, 24).join('')
const clientId = randomId(8)
const cursorId = `cursor-${clientId}`
/** The cursor's color follows the name: the same person keeps a color across reloads. */
const cursorColor = CURSOR_COLORS[Array.from(name).reduce((hash, c) => (hash * 31 + c.codePointAt(0)!) >>> 0, 0) % CURSOR_COLORS.length]

// ----------------------------------------------------------- DOM references

function element<T extends Element> (id: string): T {
  const found = document.getElementById(id)
  if (found === null) throw new Error(`#${id} is missing from the page`)
  return found as unknown as T
}

const board = element<SVGSVGElement>('board')
const shapesLayer = element<SVGGElement>('shapes')
const cursorsLayer = element<SVGGElement>('cursors')
const addButton = element<HTMLButtonElement>('add')
const toggleButton = element<HTMLButtonElement>('toggle')
const statusLabel = element<HTMLElement>('status')
const notice = element<HTMLElement>('notice')
const SVG_NS = 'http://www.w3.org/2000/svg'

document.body.classList.toggle('readonly', readonly)
element<HTMLElement>('who').textContent = `room ${room} · you are ${name}${readonly ? '' : ' (editor)'}`
addButton.disabled = readonly
element<HTMLAnchorElement>('editor-link').href = `?${new URLSearchParams({ room })}`
element<HTMLAnchorElement>('readonly-link').href = `?${new URLSearchParams({ room, token: `ro-${randomId()}` })}`

// --------------------------------------------- what the server tells the socket

let online = false
let everOnline = false
let paused = false
let clientCount: number | null = null
let closedBy: string | null = null
const refusals: string[] = []
const liveSockets = new Set<WebSocket>()

/**
 * The global WebSocket, watched: the store keeps its socket private, and the
 * page wants the room's `clientCount` frames, the server's `error` frames and
 * close codes. The store reads `WebSocket` from the global scope, so it gets this one.
 */
const NativeWebSocket = window.WebSocket
class WatchedWebSocket extends NativeWebSocket {
  constructor (url: string | URL, protocols?: string | string[]) {
    super(url, protocols)
    liveSockets.add(this)
    this.addEventListener('message', (event) => {
      if (typeof event.data !== 'string' || !(event.data.includes('"clientCount"') || event.data.includes('"error"'))) return
      const frame = JSON.parse(event.data) as { type: string, count?: number, code?: string }
      if (frame.type === 'clientCount' && typeof frame.count === 'number') clientCount = frame.count
      if (frame.type === 'error') {
        refusals.push(String(frame.code))
        notice.textContent = frame.code === 'CANVAS_STORE_READONLY'
          ? 'the server refused an edit: this session is read-only'
          : `the server refused an edit (${frame.code})`
      }
      renderStatus()
    })
    this.addEventListener('close', (event) => {
      liveSockets.delete(this)
      if (event.code >= 4000) closedBy = `${event.code}${event.reason === '' ? '' : ` ${event.reason}`}`
      renderStatus()
    })
  }
}
window.WebSocket = WatchedWebSocket

function renderStatus (): void {
  let state: 'online' | 'offline' | 'connecting'
  let text: string
  if (online) {
    state = 'online'
    text = clientCount === null ? 'online' : `online · ${clientCount} ${clientCount === 1 ? 'client' : 'clients'}`
  } else if (paused) {
    state = 'offline'
    text = 'offline (edits are kept and sent when you go online)'
  } else if (closedBy !== null) {
    state = 'offline'
    text = closedBy.startsWith('4000')
      ? 'offline · disconnected by an administrator · reconnecting'
      : `offline · refused by the server (${closedBy}) · retrying`
  } else {
    state = everOnline ? 'offline' : 'connecting'
    text = everOnline ? 'offline · reconnecting…' : 'connecting…'
  }
  statusLabel.dataset.state = state
  statusLabel.textContent = text
  toggleButton.textContent = paused ? 'Go online' : 'Go offline'
}

// ------------------------------------------------------------ store and world

const world = new World([Synced, Shape, Cursor], { threads: 1, maxEntities: 4096, maxEvents: 65_536 })
const store = new CanvasStore({
  websocket: {
    url: `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/sync`,
    documentId: room,
    clientId,
    token,
    onConnectivityChange: (isOnline) => {
      online = isOnline
      if (isOnline) {
        everOnline = true
        closedBy = null
      } else {
        clientCount = null
      }
      renderStatus()
    },
    onVersionMismatch: (version) => {
      notice.textContent = `the server speaks protocol ${version}: reload the page`
    }
  }
})

type Edit = (ctx: Context, index: Map<string, EntityId>) => void
const edits: Edit[] = []
/** The shape being dragged, and where the pointer grabbed it. */
let drag: { id: string, dx: number, dy: number } | null = null
/** Latest drag position, applied once per frame. */
let dragTo: { id: string, x: number, y: number } | null = null
/** Latest pointer position over the board: null to remove the cursor, undefined when unchanged. */
let pointer: { x: number, y: number } | null | undefined
let frameCount = 0
let shapes: ShapeView[] = []
let cursors: CursorView[] = []

/** Stable id -> entity of every synced entity. A scan, not a query: the store creates remote entities inside `store.sync`. */
function indexEntities (ctx: Context): Map<string, EntityId> {
  const index = new Map<string, EntityId>()
  for (let eid = 0; eid < ctx.maxEntities; eid++) {
    if (ctx.entityBuffer.has(eid) && hasComponent(ctx, eid, Synced)) index.set(Synced.read(ctx, eid).id, eid)
  }
  return index
}

function frame (ctx: Context): void {
  store.sync(ctx)
  const index = indexEntities(ctx)
  for (const edit of edits.splice(0)) edit(ctx, index)
  if (dragTo !== null) {
    const eid = index.get(dragTo.id)
    if (eid !== undefined && hasComponent(ctx, eid, Shape)) Shape.patch(ctx, eid, { x: dragTo.x, y: dragTo.y })
    dragTo = null
  }
  if (pointer !== undefined && !readonly) {
    const eid = index.get(cursorId)
    if (pointer === null) {
      if (eid !== undefined) {
        removeEntity(ctx, eid)
        index.delete(cursorId)
      }
    } else if (eid === undefined) {
      const created = createEntity(ctx)
      addComponent(ctx, created, Synced, { id: cursorId })
      addComponent(ctx, created, Cursor, { x: pointer.x, y: pointer.y, name, color: cursorColor })
      index.set(cursorId, created)
    } else {
      Cursor.patch(ctx, eid, pointer)
    }
    pointer = undefined
  }
  collect(ctx, index)
  render()
  frameCount++
}

function collect (ctx: Context, index: Map<string, EntityId>): void {
  const nextShapes: ShapeView[] = []
  const nextCursors: CursorView[] = []
  for (const [id, eid] of index) {
    if (hasComponent(ctx, eid, Shape)) {
      const s = Shape.read(ctx, eid)
      nextShapes.push({ id, x: s.x, y: s.y, w: s.w, h: s.h, color: s.color })
    } else if (hasComponent(ctx, eid, Cursor) && id !== cursorId) {
      const c = Cursor.read(ctx, eid)
      nextCursors.push({ id, name: c.name, color: c.color, x: c.x, y: c.y })
    }
  }
  const byId = (a: { id: string }, b: { id: string }): number => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
  shapes = nextShapes.sort(byId)
  cursors = nextCursors.sort(byId)
}

// ------------------------------------------------------------------ drawing

const shapeNodes = new Map<string, SVGRectElement>()
const cursorNodes = new Map<string, { group: SVGGElement, label: SVGTextElement, tag: SVGRectElement, name: string }>()

function svg<K extends keyof SVGElementTagNameMap> (tag: K, attributes: Record<string, string | number> = {}): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG_NS, tag)
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value))
  return node
}

function render (): void {
  const seenShapes = new Set<string>()
  for (const s of shapes) {
    seenShapes.add(s.id)
    let node = shapeNodes.get(s.id)
    if (node === undefined) {
      node = svg('rect', { class: 'shape', rx: 6, 'data-id': s.id })
      shapeNodes.set(s.id, node)
      shapesLayer.append(node)
    }
    node.setAttribute('x', String(s.x))
    node.setAttribute('y', String(s.y))
    node.setAttribute('width', String(s.w))
    node.setAttribute('height', String(s.h))
    node.setAttribute('fill', s.color)
    node.classList.toggle('dragging', drag?.id === s.id)
  }
  for (const [id, node] of shapeNodes) {
    if (!seenShapes.has(id)) {
      node.remove()
      shapeNodes.delete(id)
    }
  }

  const seenCursors = new Set<string>()
  for (const c of cursors) {
    seenCursors.add(c.id)
    let entry = cursorNodes.get(c.id)
    if (entry === undefined) {
      const group = svg('g', { class: 'cursor', 'data-id': c.id })
      group.append(svg('path', { d: 'M0 0 L0 17 L4.5 13 L8 20.5 L10.8 19.3 L7.4 12 L13 12 Z', fill: c.color, stroke: '#fff', 'stroke-width': 1.2 }))
      const tag = svg('rect', { x: 12, y: 17, rx: 4, height: 19, fill: c.color })
      const label = svg('text', { x: 18, y: 31 })
      group.append(tag, label)
      cursorsLayer.append(group)
      entry = { group, label, tag, name: '' }
      cursorNodes.set(c.id, entry)
    }
    if (entry.name !== c.name) {
      entry.name = c.name
      entry.label.textContent = c.name
      entry.tag.setAttribute('width', String(Math.ceil(entry.label.getComputedTextLength()) + 12))
    }
    entry.group.setAttribute('transform', `translate(${c.x} ${c.y})`)
  }
  for (const [id, entry] of cursorNodes) {
    if (!seenCursors.has(id)) {
      entry.group.remove()
      cursorNodes.delete(id)
    }
  }
}

// ------------------------------------------------------------------- editing

function addShape (init: Partial<Omit<ShapeView, 'id'>> = {}): string {
  const id = `shape-${randomId()}`
  const w = init.w ?? 120
  const h = init.h ?? 80
  const x = init.x ?? Math.round(20 + Math.random() * Math.max(0, board.clientWidth - w - 40))
  const y = init.y ?? Math.round(20 + Math.random() * Math.max(0, board.clientHeight - h - 40))
  const color = init.color ?? pick(SHAPE_COLORS)
  edits.push((ctx, index) => {
    const eid = createEntity(ctx)
    addComponent(ctx, eid, Synced, { id })
    addComponent(ctx, eid, Shape, { x, y, w, h, color })
    index.set(id, eid)
  })
  return id
}

function moveShape (id: string, x: number, y: number): void {
  edits.push((ctx, index) => {
    const eid = index.get(id)
    if (eid !== undefined && hasComponent(ctx, eid, Shape)) Shape.patch(ctx, eid, { x, y })
  })
}

function goOffline (): void {
  if (paused) return
  paused = true
  store.disconnect()
  renderStatus()
}

async function goOnline (): Promise<void> {
  if (!paused) return
  paused = false
  toggleButton.disabled = true
  renderStatus()
  try {
    // The adapter clears its socket when the old one reports closed: let it finish closing first.
    await Promise.all(Array.from(liveSockets, (socket) => new Promise((resolve) => {
      if (socket.readyState === NativeWebSocket.CLOSED) resolve(null)
      else socket.addEventListener('close', resolve, { once: true })
    })))
    await store.connect()
  } catch {
    // The adapter keeps retrying on its own (renderStatus shows it).
  } finally {
    toggleButton.disabled = false
  }
}

/** Pointer position in board coordinates (one unit = one CSS pixel, origin at the board's top left). */
function boardPoint (event: PointerEvent): { x: number, y: number } {
  const rect = board.getBoundingClientRect()
  return { x: Math.round(event.clientX - rect.left), y: Math.round(event.clientY - rect.top) }
}

board.addEventListener('pointerdown', (event) => {
  if (readonly || event.button !== 0) return
  const target = event.target as Element
  const id = target.getAttribute('data-id')
  const shape = shapes.find((s) => s.id === id)
  if (id === null || shape === undefined) return
  const p = boardPoint(event)
  drag = { id, dx: p.x - shape.x, dy: p.y - shape.y }
  board.setPointerCapture(event.pointerId)
  event.preventDefault()
})
board.addEventListener('pointermove', (event) => {
  const p = boardPoint(event)
  pointer = p
  if (drag !== null) dragTo = { id: drag.id, x: p.x - drag.dx, y: p.y - drag.dy }
})
const endDrag = (): void => { drag = null }
board.addEventListener('pointerup', endDrag)
board.addEventListener('pointercancel', endDrag)
board.addEventListener('pointerleave', () => {
  if (drag === null) pointer = null
})

addButton.addEventListener('click', () => {
  if (!readonly) addShape()
})
toggleButton.addEventListener('click', () => {
  if (paused) goOnline().catch((err: unknown) => console.error(err))
  else goOffline()
})

// ---------------------------------------------------------------- main loop

let running = false
function tick (): void {
  if (running) return
  running = true
  world.execute(frame)
    .catch((err: unknown) => console.error('frame failed', err))
    .finally(() => { running = false })
}

window.demo = {
  clientId,
  room,
  name,
  readonly,
  shapes: () => shapes.map((s) => ({ ...s })),
  cursors: () => cursors.map((c) => ({ ...c })),
  status: () => ({ online, paused, synced: store.isSynced, clientCount, refusals: refusals.slice(), closedBy }),
  frames: () => frameCount,
  addShape,
  moveShape,
  goOffline,
  goOnline
}

renderStatus()
// initialize() creates the adapters synchronously, then connects: frames may start right away.
store.initialize({ components: [Shape, Cursor], singletons: [] })
  .catch((err: unknown) => console.error('store.initialize failed', err))
const loop = (): void => {
  tick()
  requestAnimationFrame(loop)
}
requestAnimationFrame(loop)
// A hidden tab gets no animation frames: keep syncing, slowly.
setInterval(() => { if (document.hidden) tick() }, 250)
