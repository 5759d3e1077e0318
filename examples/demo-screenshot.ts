/**
 * Regenerates docs/demo.png: two whiteboard windows side by side (Alice | Bob)
 * on the demo server (in-process, in-memory SQLite, a free port), with a third
 * person, Carol, in another page, so that both windows show a remote cursor.
 *
 *   npm run demo:screenshot        (needs Chromium at /usr/bin/chromium, or CHROMIUM_PATH=...)
 */
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import { chromium, type Frame, type Page } from 'playwright-core'
import { buildDemoServer } from './demo-app.js'

const executablePath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const out = fileURLToPath(new URL('../docs/demo.png', import.meta.url))
const WAIT = { timeout: 15_000 }

const app = await buildDemoServer({ dbFile: ':memory:', logger: false })
await app.listen({ port: 0, host: '127.0.0.1' })
const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
const url = (name: string): string => `${base}/?${new URLSearchParams({ room: 'demo', token: `demo-${name.toLowerCase()}`, name })}`

const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run']
})
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 500 } })
  await page.setContent(`<!doctype html><body style="margin:0;display:flex;gap:10px;padding:10px;background:#c9ced6;height:100vh;box-sizing:border-box">
    <iframe name="alice" src="${url('Alice')}" style="flex:1;border:1px solid #8a94a3;border-radius:6px;background:#fff"></iframe>
    <iframe name="bob" src="${url('Bob')}" style="flex:1;border:1px solid #8a94a3;border-radius:6px;background:#fff"></iframe></body>`)
  const frame = async (name: string): Promise<Frame> => {
    const found = page.frame({ name })
    if (found === null) throw new Error(`no frame ${name}`)
    await found.waitForFunction(() => window.demo?.status().online === true && window.demo.status().synced, undefined, WAIT)
    return found
  }
  const alice = await frame('alice')
  const bob = await frame('bob')

  // Carol, in a page of her own, rests her mouse on the board: both windows draw her cursor.
  const carol: Page = await browser.newPage({ viewport: { width: 580, height: 440 } })
  await carol.goto(url('Carol'))
  await carol.waitForFunction(() => window.demo?.status().online === true, undefined, WAIT)

  await alice.evaluate(() => {
    window.demo.addShape({ x: 40, y: 40, color: '#ffd43b' })
    window.demo.addShape({ x: 220, y: 150, w: 150, h: 100, color: '#74c0fc' })
  })
  await bob.evaluate(() => {
    window.demo.addShape({ x: 70, y: 230, w: 100, h: 100, color: '#8ce99a' })
    window.demo.addShape({ x: 400, y: 50, color: '#ffa8a8' })
  })
  for (const f of [alice, bob]) await f.waitForFunction(() => window.demo.shapes().length === 4, undefined, WAIT)

  const carolBoard = (await carol.locator('#board').boundingBox())!
  await carol.mouse.move(carolBoard.x + 420, carolBoard.y + 250)

  // Alice drags her blue rectangle and leaves her mouse on the board.
  const blue = (await page.frameLocator('iframe[name=alice]').locator('rect[fill="#74c0fc"]').boundingBox())!
  await page.mouse.move(blue.x + 60, blue.y + 40)
  await page.mouse.down()
  await page.mouse.move(blue.x + 100, blue.y + 80, { steps: 10 })
  await page.mouse.up()

  await alice.waitForFunction(() => window.demo.cursors().length === 1, undefined, WAIT)
  await bob.waitForFunction(() => window.demo.cursors().length === 2 &&
    window.demo.shapes().some((s) => s.x === 260 && s.y === 190), undefined, WAIT)
  await page.screenshot({ path: out })
  console.log(`wrote ${out}`)
} finally {
  await browser.close()
  await app.close()
}
