import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import WebSocket from 'ws'

const root = join(import.meta.dirname, '..')

t.test('npm start serves on PORT=0 with the bound port, and a SIGTERM to npm drains and stops the server itself', async (t) => {
  const dir = t.testdir({})
  const npm = spawn('npm', ['start', '--silent'], {
    cwd: root,
    env: { ...process.env, PORT: '0', DB_FILE: join(dir, 'db.sqlite'), ADMIN_TOKEN: 'test-token', LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  t.teardown(() => { if (npm.exitCode === null) npm.kill('SIGKILL') })
  const exited = once(npm, 'exit')
  let serverPid = 0
  const url = await new Promise<string>((resolve, reject) => {
    npm.once('exit', (code) => reject(new Error(`npm start exited (${code}) before printing its address`)))
    createInterface({ input: npm.stdout! }).on('line', (line) => {
      // The server's JSON log lines carry its pid; the banner carries the address.
      if (serverPid === 0 && line.startsWith('{')) serverPid = (JSON.parse(line) as { pid: number }).pid
      const match = /^canvas-store sync server: (ws:\/\/\S+)$/.exec(line)
      if (match !== null) resolve(match[1])
    })
  })
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
