// `npm run bench` itself (issue 6's deliverable): one scenario by name runs against the plugin and the
// reference server, each in a fresh process, and prints the table of medians. Nothing here is timed:
// only that the benchmark runs, counts every delivery and reports both servers.
import t from 'tap'
import { execFile } from 'node:child_process'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'

const root = join(import.meta.dirname, '..')
const run = promisify(execFile)

t.test('npm run bench -- reconnect-large: both servers run, the table and the results file come out', async (t) => {
  const results = t.testdir({})
  const { stdout } = await run('npm', ['run', '--silent', 'bench', '--', 'reconnect-large'], {
    cwd: root,
    env: { ...process.env, BENCH_ROUNDS: '1', BENCH_SERVERS: 'plugin,reference', BENCH_RESULTS: results },
    timeout: 110_000
  })
  t.match(stdout, /\| metric \| plugin \| reference \| plugin \/ reference \|/, 'a column per server and their ratio')
  const row = (name: string): string[] => {
    const line = stdout.split('\n').find((l) => l.startsWith(`| ${name} |`))
    return line === undefined ? [] : line.split('|').slice(2, 4).map((cell) => cell.trim())
  }
  t.same(row('document keys in the diff'), ['10', '10'], 'each reconnect got exactly the 10 changed keys from both servers')
  t.same(row('sockets closed by the server'), ['0', '0'])
  const files = (await readdir(results)).filter((f) => f.startsWith('sync-reconnect-large-'))
  t.equal(files.length, 1, 'the run is written to BENCH_RESULTS')
  const written = JSON.parse(await readFile(join(results, files[0]), 'utf8')) as { scenario: string, rounds: number }
  t.equal(written.scenario, 'reconnect-large')
  t.equal(written.rounds, 1)
})
