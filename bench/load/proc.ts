/** The server process's CPU time and resident memory, read from /proc (Linux). */
import { readFileSync } from 'node:fs'

/** Clock ticks per second of /proc/PID/stat times (`getconf CLK_TCK`; 100 on Linux). */
const TICKS_PER_SECOND = 100

/** utime + stime of the whole process (every thread), in ms. */
export function cpuMs (pid: number): number {
  const { user, system } = cpuSplitMs(pid)
  return user + system
}

/** User and system (kernel: system calls, loopback TCP) CPU time of the whole process, in ms. */
export function cpuSplitMs (pid: number): { user: number, system: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
  // Fields after the command name, which is in parentheses and may hold spaces: state is field 3.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const utime = Number(fields[14 - 3])
  const stime = Number(fields[15 - 3])
  return { user: (utime * 1000) / TICKS_PER_SECOND, system: (stime * 1000) / TICKS_PER_SECOND }
}

/** VmRSS in MiB. */
export function rssMb (pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'latin1')
  const match = /VmRSS:\s+(\d+) kB/.exec(status)
  if (match === null) throw new Error(`no VmRSS for process ${pid}`)
  return Number(match[1]) / 1024
}
