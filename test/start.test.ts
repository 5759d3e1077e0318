import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import WebSocket from 'ws'

const root = join(import.meta.dirname, '..')

/** Runs `npm start` with PORT=0 and `env`; resolves with the banner's lines once the last one (the admin page) is printed. */
async function start (t: Test, env: Record<string, string>): Promise<{ npm: ChildProcess, banner: Map<string, string>, serverPid: number }> {
  const dir = t.testdir({})
  const npm = spawn('npm', ['start', '--silent'], {
    cwd: root,
    env: { ...process.env, PORT: '0', DB_FILE: join(dir, 'db.sqlite'), LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  let serverPid = 0
  t.teardown(() => {
    // npm does not pass a SIGKILL on: the server (its own process, exec'd by the start script) is killed too.
    if (npm.exitCode === null) npm.kill('SIGKILL')
    if (serverPid !== 0) {
      try {
        process.kill(serverPid, 'SIGKILL')
      } catch {}
    }
  })
  const banner = new Map<string, string>()
  await new Promise<void>((resolve, reject) => {
    npm.once('exit', (code) => reject(new Error(`npm start exited (${code}) before printing its address`)))
    createInterface({ input: npm.stdout! }).on('line', (line) => {
      // The server's JSON log lines carry its pid; the banner's lines are `<what>: <address>`.
      if (serverPid === 0 && line.startsWith('{')) serverPid = (JSON.parse(line) as { pid: number }).pid
      const match = /^([a-z -]+): (\S+)/.exec(line)
      if (match !== null) banner.set(match[1], match[2])
      if (match?.[1] === 'admin page') resolve()
    })
  })
  return { npm, banner, serverPid }
}

t.test('npm start serves on PORT=0 with the bound port, and a SIGTERM to npm drains and stops the server itself', async (t) => {
  const { npm, banner, serverPid } = await start(t, { ADMIN_TOKEN: 'test-token' })
  const exited = once(npm, 'exit')
  const url = banner.get('canvas-store sync server')!
  t.notMatch(url, /:0\//, 'the address names the port it got')
  t.not(serverPid, 0)
  t.not(serverPid, npm.pid, 'the server is its own process')

  const ws = new WebSocket(url)
  const count = new Promise((resolve) => ws.on('message', (data) => resolve(JSON.parse(String(data)))))
  t.same(await count, { type: 'clientCount', count: 1 }, 'it serves')
  const closed = once(ws, 'close')

  npm.kill('SIGTERM')
  await exited
  let alive = true
  try {
    process.kill(serverPid, 0)
  } catch {
    alive = false
  }
  t.notOk(alive, 'the server process is gone with npm')
  // Left running without its parent (the bug this guards against): stop it, so the socket closes.
  if (alive) process.kill(serverPid, 'SIGKILL')
  const [code] = await closed
  t.equal(code, 1001, 'the session was closed by the drain')
})

t.test('npm start with ADMIN_TOKEN set but empty makes a random admin token: the admin routes do not let everybody in', async (t) => {
  const { npm, banner } = await start(t, { ADMIN_TOKEN: '' })
  const page = new URL(banner.get('admin page')!)
  const token = page.searchParams.get('token') ?? ''
  t.ok(token.length >= 16, 'a random token is printed')
  const rooms = new URL('/admin/rooms', page)
  t.equal((await fetch(rooms)).status, 401, 'no token: refused')
  t.equal((await fetch(rooms, { headers: { authorization: 'Bearer ' } })).status, 401, 'an empty bearer token: refused')
  t.equal((await fetch(rooms, { headers: { authorization: `Bearer ${token}` } })).status, 200, 'the printed token is let in')
  const exited = once(npm, 'exit')
  npm.kill('SIGTERM')
  await exited
})
