/**
 * The whiteboard demo (examples/demo-app.ts + examples/whiteboard/) in real
 * browsers: Debian's Chromium at /usr/bin/chromium driven by playwright-core,
 * one browser context per person, against the demo server started in-process
 * on 127.0.0.1, port 0, with a temporary SQLite file and the admin routes and
 * page on (admin token ADMIN_TOKEN).
 *
 * Skipped, with the reason printed, when /usr/bin/chromium (or CHROMIUM_PATH)
 * is missing (`apt-get install -y chromium`). When a case fails, each of its pages is
 * saved as test-results/<case>-<page>.png.
 *
 * Functions handed to the page (waitForFunction, evaluate) declare no named
 * inner functions: tsx compiles with keepNames, whose `__name` helper does not
 * exist in the page.
 */
import t, { type Test } from 'tap'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'
import type { Browser, Page } from 'playwright-core'
import type { DemoStatus, ShapeView } from '../examples/whiteboard/app.js'
import type { SessionInfo } from '../lib/index.js'

/** Debian's Chromium (`apt-get install -y chromium`); CHROMIUM_PATH points elsewhere. */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run']
/** Longest any one wait may take. */
const WAIT_MS = 15_000
const RESULTS = fileURLToPath(new URL('../test-results/', import.meta.url))
const ADMIN_TOKEN = 'admin-secret'

/** One page; `received` holds the text frames its websockets received, in order. */
interface Person { label: string, page: Page, problems: string[], received: string[] }

/** The document of `room` as the server holds it now ({} when the room is not loaded). */
function stored (app: FastifyInstance, room: string): Record<string, any> {
  return app.canvasStore.getExistingRoom(room)?.getSnapshot().state ?? {}
}

/** The shapes of a server snapshot, as the page lists them (sorted by id, tombstones left out). */
function storedShapes (app: FastifyInstance, room: string): ShapeView[] {
  const shapes: ShapeView[] = []
  for (const [key, value] of Object.entries(stored(app, room))) {
    if (!key.endsWith('/Shape') || value._exists === false) continue
    shapes.push({ id: key.slice(0, -'/Shape'.length), x: value.x, y: value.y, w: value.w, h: value.h, color: value.color })
  }
  return shapes.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
}

/** The server's sessions of `room` (none when the room is not loaded). */
function sessionsOf (app: FastifyInstance, room: string): SessionInfo[] {
  return app.canvasStore.getExistingRoom(room)?.getSessions() ?? []
}

/** The frames `person` received from index `from` on, parsed. */
function receivedOf (person: Person, from = 0): Array<Record<string, any>> {
  return person.received.slice(from).map((data) => JSON.parse(data) as Record<string, any>)
}

/** Polls `check` in Node until it returns true; fails after WAIT_MS with `what`. */
async function eventually (what: string, check: () => boolean): Promise<void> {
  const deadline = Date.now() + WAIT_MS
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${WAIT_MS} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

if (!existsSync(CHROMIUM)) {
  t.plan(0, `no Chromium at ${CHROMIUM}: the browser tests need it (Debian/Ubuntu: apt-get install -y chromium, or set CHROMIUM_PATH)`)
} else {
  const { chromium } = await import('playwright-core')
  const { buildDemoServer } = await import('../examples/demo-app.js')

  const dir = await mkdtemp(join(tmpdir(), 'canvas-store-browser-'))
  const app = await buildDemoServer({ dbFile: join(dir, 'demo.db'), adminToken: ADMIN_TOKEN, logger: false })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
  // Playwright gives the browser a fresh temporary profile (user-data dir), removed on close.
  const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS })
    .catch(async (err: unknown) => {
      await app.close()
      await rm(dir, { recursive: true, force: true })
      throw err
    })
  t.teardown(async () => {
    await browser.close()
    await app.close()
    await rm(dir, { recursive: true, force: true })
  })

  /**
   * The people of one case: each opens a page in a context of its own, the
   * whiteboard (then waits until it is online and synced) unless `path` says
   * otherwise. When the case ends, failing cases get a screenshot per page,
   * then the contexts close.
   */
  function people (t: Test): (label: string, query: Record<string, string>, path?: string) => Promise<Person> {
    const opened: Person[] = []
    t.teardown(async () => {
      if (!t.passing()) {
        await mkdir(RESULTS, { recursive: true })
        const name = t.name.replace(/[^a-z0-9]+/gi, '-').replace(/^-|-$/g, '').toLowerCase()
        for (const person of opened) {
          const path = join(RESULTS, `${name}-${person.label}.png`)
          await person.page.screenshot({ path }).then(() => console.error(`# screenshot: ${path}`), () => {})
        }
      }
      await Promise.all(opened.map((person) => person.page.context().close()))
    })
    return async (label, query, path = '/') => {
      const context = await browser.newContext({ viewport: { width: 900, height: 640 } })
      const page = await context.newPage()
      const person: Person = { label, page, problems: [], received: [] }
      opened.push(person)
      page.on('console', (message) => {
        if (message.type() === 'error') person.problems.push(message.location().url === '' ? message.text() : `${message.text()} (${message.location().url})`)
      })
      page.on('pageerror', (err) => person.problems.push(String(err)))
      page.on('websocket', (ws) => ws.on('framereceived', ({ payload }) => { if (typeof payload === 'string') person.received.push(payload) }))
      await page.goto(`${base}${path}?${new URLSearchParams(query)}`)
      if (path === '/') await waitIn(person, 'online and synced', () => window.demo?.status().online === true && window.demo.status().synced)
      return person
    }
  }

  /** Waits until `check` holds in the page; the error says what and shows the page's state. */
  async function waitIn<A> (person: Person, what: string, check: (arg: A) => unknown, arg?: A): Promise<void> {
    try {
      // Plain JSON arguments only, so Playwright's Unboxed<A> is A.
      await person.page.waitForFunction(check as (arg: any) => unknown, arg, { timeout: WAIT_MS })
    } catch (err) {
      const state = await person.page.evaluate(() => window.demo === undefined
        ? `no window.demo; the page says: ${JSON.stringify(document.body.innerText.slice(0, 600))}`
        : JSON.stringify({ status: window.demo.status(), shapes: window.demo.shapes(), cursors: window.demo.cursors() }))
        .catch((e: unknown) => String(e))
      throw new Error(`${person.label}: ${what}: ${(err as Error).message.split('\n')[0]}\n  page state: ${state}\n  console errors: ${JSON.stringify(person.problems)}`)
    }
  }

  const shapesOf = (person: Person): Promise<ShapeView[]> => person.page.evaluate(() => window.demo.shapes())
  const statusOf = (person: Person): Promise<DemoStatus> => person.page.evaluate(() => window.demo.status())
  const framesOf = (person: Person): Promise<number> => person.page.evaluate(() => window.demo.frames())

  /** Waits until the page lists exactly these shapes. */
  function waitForShapes (person: Person, what: string, shapes: ShapeView[]): Promise<void> {
    return waitIn(person, what, (expected) => JSON.stringify(window.demo.shapes()) === expected, JSON.stringify(shapes))
  }

  /** Clicks "Add rectangle" and returns the shape that appeared. */
  async function addByButton (person: Person): Promise<ShapeView> {
    const before = new Set((await shapesOf(person)).map((s) => s.id))
    await person.page.getByRole('button', { name: 'Add rectangle' }).click()
    await waitIn(person, 'the new rectangle', (n) => window.demo.shapes().length >= n, before.size + 1)
    const added = (await shapesOf(person)).filter((s) => !before.has(s.id))
    // Callers wait for the other windows' rectangles first: the only new one is this page's.
    if (added.length !== 1) throw new Error(`${person.label}: expected one new rectangle, got ${JSON.stringify(added)}`)
    return added[0]
  }

  /**
   * Drags shape `id` with the mouse by about (dx, dy), grabbing it at a point
   * where no other shape lies on top of it. Unless `moves` is false (a read-only page), waits
   * until the page shows the shape there (within a pixel of rounding) and
   * returns it, with where the mouse was released, in board coordinates.
   */
  async function dragBy (person: Person, id: string, dx: number, dy: number, moves = true): Promise<{ shape: ShapeView, release: { x: number, y: number } }> {
    const shapes = await shapesOf(person)
    const shape = shapes.find((s) => s.id === id)
    if (shape === undefined) throw new Error(`${person.label}: no shape ${id} to drag`)
    const box = await person.page.locator('#board').boundingBox()
    if (box === null) throw new Error('the board is not visible')
    // A point where the page itself finds this shape on top (shapes stack in the order this page first drew them).
    // Points near the edges too: a rectangle of the same size covers them all only if it lies within 3% of this one.
    const fractions = [0.5, 0.3, 0.7, 0.15, 0.85, 0.03, 0.97]
    const points = fractions.flatMap((fy) => fractions.map((fx) => ({ x: shape.x + shape.w * fx, y: shape.y + shape.h * fy })))
    const grab = await person.page.evaluate(({ id, points }) => {
      const rect = document.getElementById('board')!.getBoundingClientRect()
      return points.find((p) => document.elementFromPoint(rect.left + p.x, rect.top + p.y)?.getAttribute('data-id') === id)
    }, { id, points })
    if (grab === undefined) throw new Error(`${person.label}: shape ${id} is covered by other shapes`)
    await person.page.mouse.move(box.x + grab.x, box.y + grab.y)
    await person.page.mouse.down()
    await person.page.mouse.move(box.x + grab.x + dx, box.y + grab.y + dy, { steps: 8 })
    await person.page.mouse.up()
    const release = { x: Math.round(grab.x + dx), y: Math.round(grab.y + dy) }
    if (!moves) return { shape, release }
    const to = { id, x: shape.x + dx, y: shape.y + dy }
    await waitIn(person, `the drag of ${id} to (${to.x}, ${to.y})`,
      (p) => window.demo.shapes().some((s) => s.id === p.id && Math.abs(s.x - p.x) <= 1 && Math.abs(s.y - p.y) <= 1), to)
    return { shape: (await shapesOf(person)).find((s) => s.id === id)!, release }
  }

  /** A horizontal and vertical move that keeps the shape on an 900 x 640 board. */
  const towardsMiddle = (s: ShapeView): [number, number] => [s.x < 380 ? 160 : -160, s.y < 240 ? 90 : -90]

  function noConsoleErrors (t: Test, ...persons: Person[]): void {
    for (const person of persons) t.same(person.problems, [], `${person.label}: no console errors`)
  }

  t.test('two windows add and move rectangles and converge; cursors travel', async (t) => {
    const open = people(t)
    const room = 'converge'
    const alice = await open('alice', { room, token: 'demo-alice', name: 'Alice' })
    const bob = await open('bob', { room, token: 'demo-bob', name: 'Bob' })
    await waitIn(alice, 'two clients in the room', () => window.demo.status().clientCount === 2)
    await t.resolveMatch(alice.page.locator('#status').textContent(), 'online · 2 clients', 'the indicator shows the room\'s clients')

    const first = await addByButton(alice)
    await waitForShapes(bob, 'alice\'s rectangle', [first])
    t.pass('bob sees the rectangle alice added')

    const [dx, dy] = towardsMiddle(first)
    const { shape: moved } = await dragBy(bob, first.id, dx, dy)
    t.pass(`bob dragged it by (${dx}, ${dy}): (${first.x}, ${first.y}) -> (${moved.x}, ${moved.y})`)
    await waitForShapes(alice, 'bob\'s move', [moved])
    t.pass('alice sees bob\'s move')

    const second = await addByButton(bob)
    await waitForShapes(alice, 'bob\'s rectangle', await shapesOf(bob))
    const third = await addByButton(alice)
    const [dx3, dy3] = towardsMiddle(third)
    await dragBy(alice, third.id, dx3, dy3)
    const { release } = await dragBy(alice, second.id, -40, 30)

    const final = await shapesOf(alice)
    t.equal(final.length, 3, 'three rectangles')
    t.not(final.find((s) => s.id === second.id)!.x, second.x, 'alice moved bob\'s rectangle')
    await waitForShapes(bob, 'alice\'s adds and moves', final)
    t.pass('both windows list the same rectangles at the same places')
    await eventually('the server to store the same rectangles', () => JSON.stringify(storedShapes(app, room)) === JSON.stringify(final))
    t.same(storedShapes(app, room), final, 'and so does the server')

    // Alice's mouse rests where she released it: Bob sees her cursor there, with her name.
    await waitIn(bob, 'alice\'s cursor', (p) => window.demo.cursors().some((c) => c.name === 'Alice' && Math.abs(c.x - p.x) <= 1 && Math.abs(c.y - p.y) <= 1), release)
    await t.resolveMatch(bob.page.locator('#cursors text').first().textContent(), 'Alice', 'bob\'s board draws alice\'s cursor with her name')
    t.notOk(Object.keys(stored(app, room)).some((key) => key.endsWith('/Cursor')), 'cursors are presence: the server does not store them')

    await bob.page.context().close()
    await waitIn(alice, 'bob to leave', () => window.demo.status().clientCount === 1 && !window.demo.cursors().some((c) => c.name === 'Bob'))
    t.pass('when bob leaves, alice\'s count drops to 1 and his cursor goes')
    bob.problems.length = 0
    noConsoleErrors(t, alice)
  })

  t.test('the read-only link cannot change the board', async (t) => {
    const open = people(t)
    const room = 'readonly'
    const alice = await open('alice', { room, token: 'demo-alice', name: 'Alice' })
    const bob = await open('bob', { room, token: 'demo-bob', name: 'Bob' })
    const viewer = await open('viewer', { room, token: 'ro-viewer', name: 'Viewer' })

    const shape = await addByButton(alice)
    for (const person of [bob, viewer]) await waitForShapes(person, 'alice\'s rectangle', [shape])
    await eventually('the server to store the rectangle', () => storedShapes(app, room).length === 1)
    const before = structuredClone(app.canvasStore.getExistingRoom(room)!.getSnapshot())

    t.ok(await viewer.page.getByText('read-only', { exact: true }).isVisible(), 'the viewer\'s page says read-only')
    t.ok(await viewer.page.getByRole('button', { name: 'Add rectangle' }).isDisabled(), 'its add button is disabled')
    t.equal((await statusOf(viewer)).online, true, 'the viewer is online')

    // The page itself does not let a viewer drag: nothing changes, not even locally.
    const framesBefore = await framesOf(viewer)
    await dragBy(viewer, shape.id, 120, 60, false)
    await waitIn(viewer, 'a few frames after the drag', (n) => window.demo.frames() >= n, framesBefore + 10)
    t.same(await shapesOf(viewer), [shape], 'dragging on the read-only page changes nothing')
    t.same((await statusOf(viewer)).refusals, [], 'and sends nothing the server has to refuse')

    // A tampered page (raw edits past the UI): the server refuses them and the page converges back.
    const forged = await viewer.page.evaluate((id) => {
      window.demo.moveShape(id, 5, 5)
      return window.demo.addShape({ x: 300, y: 300, color: '#000000' })
    }, shape.id)
    await waitIn(viewer, 'the server to refuse the forged edits', () => window.demo.status().refusals.includes('CANVAS_STORE_READONLY'))
    await waitForShapes(viewer, 'the corrective patch to undo the forged edits', [shape])
    await t.resolveMatch(viewer.page.locator('#notice').textContent(), 'read-only', 'the page tells why')
    t.pass('the server refused the forged move and create, and the viewer\'s board reverted')
    t.same(app.canvasStore.getExistingRoom(room)!.getSnapshot(), before, 'the server document did not change')

    // Barrier: bob moves the rectangle after the server handled the viewer's frames; anything of the
    // viewer's the server had forwarded would reach alice before bob's move does.
    const [dx, dy] = towardsMiddle(shape)
    const { shape: marker } = await dragBy(bob, shape.id, dx, dy)
    t.not(marker.x, shape.x, 'bob moved the rectangle')
    await waitForShapes(alice, 'bob\'s move', [marker])
    t.pass('alice has bob\'s move and neither the forged move nor the forged rectangle')
    await waitForShapes(viewer, 'bob\'s move', [marker])
    t.pass('the viewer still follows the board')
    await eventually('the server to store bob\'s move', () => storedShapes(app, room)[0]?.x === marker.x)
    t.same(storedShapes(app, room), [marker], 'the server holds only alice\'s rectangle, where bob put it')
    t.notOk(`${forged}/Shape` in stored(app, room), 'the forged rectangle never reached the server')
    noConsoleErrors(t, alice, bob, viewer)
  })

  t.test('edits made offline are kept and merge on reconnect', async (t) => {
    const open = people(t)
    const room = 'offline'
    const alice = await open('alice', { room, token: 'demo-alice', name: 'Alice' })
    const bob = await open('bob', { room, token: 'demo-bob', name: 'Bob' })
    const shared = await addByButton(alice)
    await waitForShapes(bob, 'alice\'s rectangle', [shared])

    await bob.page.getByRole('button', { name: 'Go offline' }).click()
    await waitIn(bob, 'offline', () => !window.demo.status().online && window.demo.status().paused)
    await t.resolveMatch(bob.page.locator('#status').textContent(), 'offline', 'bob\'s indicator says offline')
    await waitIn(alice, 'bob to drop out', () => window.demo.status().clientCount === 1)

    // Bob, offline, moves the shared rectangle and adds one; alice adds one meanwhile.
    // (The move comes first: a rectangle placed at random could cover the shared one.)
    const [dx, dy] = towardsMiddle(shared)
    const { shape: movedByBob } = await dragBy(bob, shared.id, dx, dy)
    t.not(movedByBob.x, shared.x, 'bob moved the shared rectangle while offline')
    const bobs = await addByButton(bob)
    const alices = await addByButton(alice)
    await eventually('the server to store alice\'s rectangle', () => storedShapes(app, room).length === 2)
    t.same(storedShapes(app, room).map((s) => s.id).sort(), [shared.id, alices.id].sort(), 'the server has nothing from bob yet')
    t.same((await shapesOf(alice)).find((s) => s.id === shared.id), shared, 'alice does not see bob\'s offline move yet')

    await bob.page.getByRole('button', { name: 'Go online' }).click()
    await waitIn(bob, 'back online', () => window.demo.status().online && !window.demo.status().paused)
    const expected = [movedByBob, bobs, alices]
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    await waitForShapes(alice, 'bob\'s offline edits', expected)
    t.pass('alice receives what bob did offline')
    await waitForShapes(bob, 'alice\'s rectangle made while bob was away', expected)
    t.pass('bob keeps his offline edits and catches up with alice\'s')
    await eventually('the server to store the merge', () => JSON.stringify(storedShapes(app, room)) === JSON.stringify(expected))
    t.same(storedShapes(app, room), expected, 'the server holds the merged board')
    noConsoleErrors(t, alice, bob)
  })

  t.test('the admin page makes an editor read-only and disconnects another', async (t) => {
    const open = people(t)
    const room = 'admin'
    const alice = await open('alice', { room, token: 'demo-alice', name: 'Alice' })
    const bob = await open('bob', { room, token: 'demo-bob', name: 'Bob' })
    const shape = await addByButton(alice)
    await waitForShapes(bob, 'alice\'s rectangle', [shape])
    await eventually('the server to store the rectangle', () => storedShapes(app, room).length === 1)
    const aliceId = await alice.page.evaluate(() => window.demo.clientId)
    const bobId = await bob.page.evaluate(() => window.demo.clientId)
    const sessionOf = (clientId: string): SessionInfo | undefined => sessionsOf(app, room).find((s) => s.clientId === clientId)
    const aliceSession = sessionOf(aliceId)?.sessionId
    const bobSession = sessionOf(bobId)?.sessionId
    if (aliceSession === undefined || bobSession === undefined) throw new Error(`no server session for alice or bob: ${JSON.stringify(sessionsOf(app, room))}`)

    const admin = await open('admin', { token: ADMIN_TOKEN }, '/admin/ui')
    t.match(new URL(admin.page.url()).search, /token=/, 'the token stays in the address bar, so a reload keeps working')
    await admin.page.locator(`#rooms tr[data-room-id="${room}"]`).click()
    const aliceRow = admin.page.locator(`#sessions tr[data-client-id="${aliceId}"]`)
    await aliceRow.waitFor({ timeout: WAIT_MS })
    t.equal(await aliceRow.getAttribute('data-session-id'), aliceSession, 'the admin page lists alice\'s page by its clientId, with her server session')

    // Alice's page gets read-only from the admin page.
    await aliceRow.getByRole('button', { name: 'make readonly' }).click()
    await waitIn(admin, 'alice\'s session to show readonly', (id) =>
      document.querySelector(`#sessions tr[data-session-id="${id}"] .permissions`)?.textContent === 'readonly make readwrite', aliceSession)
    t.pass('the admin page shows alice\'s session readonly, with a "make readwrite" toggle')
    t.equal(app.canvasStore.getExistingRoom(room)?.getSession(aliceSession)?.permissions, 'readonly', 'the server says alice\'s session is readonly')
    t.equal(app.canvasStore.getExistingRoom(room)?.getSession(bobSession)?.permissions, 'readwrite', 'and bob\'s is still readwrite')
    await eventually('alice\'s page to be told', () => receivedOf(alice).some((f) => f.type === 'permissions'))
    t.same(receivedOf(alice).filter((f) => f.type === 'permissions'), [{ type: 'permissions', permissions: 'readonly' }], 'alice\'s page received one permissions frame: readonly')

    // The page only knows its token (an editor's): its own UI still drags, and the server refuses.
    const before = structuredClone(app.canvasStore.getExistingRoom(room)!.getSnapshot())
    const bobMark = bob.received.length
    const [dx, dy] = towardsMiddle(shape)
    await dragBy(alice, shape.id, dx, dy, false)
    const framesAfter = await framesOf(alice)
    await waitIn(alice, 'a few frames after the drag', (n) => window.demo.frames() >= n, framesAfter + 10)
    await waitIn(alice, 'the server to refuse the drag', () => window.demo.status().refusals.includes('CANVAS_STORE_READONLY'))
    await waitForShapes(alice, 'the corrective patch to undo the drag', [shape])
    await t.resolveMatch(alice.page.locator('#notice').textContent(), 'read-only', 'alice\'s page tells why')
    t.pass('the server refused alice\'s drag and her board reverted')
    t.same(app.canvasStore.getExistingRoom(room)!.getSnapshot(), before, 'the server document did not change')

    // Barrier: bob's move is handled after alice's drag; once bob has its ack, anything of
    // alice's drag the server had forwarded to him would have reached him.
    const bobBarrier = bob.received.length
    const { shape: marker } = await dragBy(bob, shape.id, dx / 2, dy / 2)
    await waitForShapes(alice, 'bob\'s move', [marker])
    t.pass('alice, read-only, still follows the board')
    await eventually('the server to store bob\'s move', () => JSON.stringify(storedShapes(app, room)) === JSON.stringify([marker]))
    await eventually('bob\'s move to be acked', () => receivedOf(bob, bobBarrier).some((f) => f.type === 'ack'))
    t.same(receivedOf(bob, bobMark).filter((f) => f.documentPatches !== undefined), [], 'alice\'s drag never reached bob\'s page')
    t.same(storedShapes(app, room), [marker], 'the server holds the rectangle where bob put it')

    // Bob is disconnected from the admin page: his page goes offline, then reconnects as a new session.
    await bob.page.evaluate(() => {
      const label = document.getElementById('status')!
      const seen: string[] = []
      Object.assign(window, { statusSeen: seen })
      new MutationObserver(() => seen.push(`${label.dataset.state}: ${label.textContent}`)).observe(label, { childList: true, characterData: true, subtree: true })
    })
    await admin.page.locator(`#sessions tr[data-session-id="${bobSession}"]`).getByRole('button', { name: 'disconnect' }).click()
    await eventually('the server to remove bob\'s session', () => app.canvasStore.getExistingRoom(room)?.getSession(bobSession) === undefined)
    t.pass('the server removed bob\'s session')
    await waitIn(bob, 'bob\'s page to go offline and come back online', () =>
      window.demo.status().online && window.demo.status().clientCount === 2 && (window as unknown as { statusSeen: string[] }).statusSeen.some((s) => s.startsWith('offline')))
    const seen = await bob.page.evaluate(() => (window as unknown as { statusSeen: string[] }).statusSeen)
    t.match(seen.find((s) => s.startsWith('offline')), /^offline: offline · disconnected by an administrator/, 'bob\'s page showed offline (closed with 4000), then reconnected by itself')
    await eventually('bob\'s new session', () => (sessionOf(bobId)?.sessionId ?? bobSession) !== bobSession)
    const bobNew = sessionOf(bobId)!
    t.equal(bobNew.permissions, 'readwrite', 'bob is back as a new readwrite session')
    t.equal(app.canvasStore.getExistingRoom(room)?.getSession(aliceSession)?.permissions, 'readonly', 'alice\'s session is still readonly')
    await waitIn(admin, 'the admin page to list bob\'s new session', (p) =>
      document.querySelector(`#sessions tr[data-client-id="${p.clientId}"]`)?.getAttribute('data-session-id') === p.sessionId &&
      document.querySelector(`#sessions tr[data-session-id="${p.old}"]`) === null, { clientId: bobId, sessionId: bobNew.sessionId, old: bobSession })
    t.pass('the admin page lists bob\'s new session and not the old one')
    await waitForShapes(bob, 'the board after reconnecting', [marker])

    // Without a token the server answers the page itself with 401 ...
    const stranger = await open('no-token', {}, '/admin/ui')
    // (open() does not return the response: a reload asks again and gives it.)
    t.equal((await stranger.page.reload())?.status(), 401, 'the admin page without a token is a 401')
    t.equal(await stranger.page.locator('#rooms, #sessions').count(), 0, 'with no rooms nor sessions')
    // ... and the page, served without giving it the token (only the document request carries
    // one), gets 401 from the API: it shows the token form, not data; the right token brings the data.
    await stranger.page.route((url) => url.pathname === '/admin/ui', (route) =>
      route.continue({ headers: { ...route.request().headers(), authorization: `Bearer ${ADMIN_TOKEN}` } }))
    await stranger.page.goto(`${base}/admin/ui`)
    await stranger.page.locator('#auth').waitFor({ state: 'visible', timeout: WAIT_MS })
    await waitIn(stranger, 'the 401 message', () => document.getElementById('status')?.textContent === 'not authorized (401)')
    t.equal(await stranger.page.locator('#rooms tbody tr').count(), 0, 'the page shows the token form and no rooms')
    await stranger.page.locator('#token').fill(ADMIN_TOKEN)
    await stranger.page.getByRole('button', { name: 'Use' }).click()
    await stranger.page.locator(`#rooms tr[data-room-id="${room}"]`).waitFor({ timeout: WAIT_MS })
    t.ok(await stranger.page.locator('#auth').isHidden(), 'with the token typed in, the form goes and the rooms show')
    // The 401 JSON reply to the page itself has no <link rel="icon">, so Chromium asks for /favicon.ico there (a 404).
    const favicon = (problem: string): boolean => problem.endsWith('/favicon.ico)')
    t.same(stranger.problems.filter((p) => !p.includes('status of 401') && !favicon(p)), [], 'the no-token page\'s only console errors are the 401s')
    t.same(admin.problems, [], 'admin: no console errors')
    noConsoleErrors(t, alice, bob)
  })
}
