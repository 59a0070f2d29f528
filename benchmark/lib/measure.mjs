// Measuring primitives: time-boxed and fixed-count loops with N calls in flight,
// CPU readers (whole process, main thread, redis-server) and small statistics.
import { readFileSync } from 'node:fs'
import { execFileSync } from 'node:child_process'
import { performance } from 'node:perf_hooks'

/**
 * Runs `op(i)` with `concurrency` calls in flight until `maxOps` calls are done or
 * `maxMs` has passed (whichever comes first; calls in flight at the deadline finish).
 * Returns ops, elapsed ms, errors, and per-call latencies in ms when `latencies` is set.
 */
export async function drive(op, { concurrency, maxMs = Infinity, maxOps = Infinity, latencies = false }) {
  const lat = latencies ? [] : null
  const state = { next: 0, done: 0, errors: 0, firstError: undefined }
  const start = performance.now()
  const deadline = start + maxMs
  const lane = async () => {
    while (state.next < maxOps && performance.now() < deadline) {
      const i = state.next++
      const t0 = lat ? performance.now() : 0
      try {
        await op(i)
      } catch (err) {
        state.errors++
        state.firstError ??= err
      }
      if (lat) lat.push(performance.now() - t0)
      state.done++
    }
  }
  await Promise.all(Array.from({ length: concurrency }, lane))
  const elapsedMs = performance.now() - start
  return { ops: state.done, elapsedMs, errors: state.errors, firstError: state.firstError, latencies: lat }
}

/** The value at quantile q (0..1) of an array of numbers (sorted in place). */
export function quantile(values, q) {
  if (!values.length) return NaN
  values.sort((a, b) => a - b)
  return values[Math.min(values.length - 1, Math.floor(q * (values.length - 1) + 0.5))]
}

/** The median of a few numbers. */
export function median(values) {
  const sorted = values.filter(Number.isFinite).sort((a, b) => a - b)
  if (!sorted.length) return NaN
  const mid = sorted.length >> 1
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

let clockTicks
/** Clock ticks per second of /proc/<pid>/stat times (usually 100). */
function ticksPerSecond() {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100
    } catch {
      clockTicks = 100
    }
  }
  return clockTicks
}

/**
 * CPU time of this process's main (JS) thread in µs, from /proc (Linux only; NaN elsewhere).
 * Resolution is one clock tick (10 ms), so use it over rounds of ~1 s or more.
 */
export function mainThreadCpuUs() {
  try {
    const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return ((Number(fields[11]) + Number(fields[12])) * 1e6) / ticksPerSecond()
  } catch {
    return NaN
  }
}

/** CPU time (user + system) of the whole Node process in µs (`process.cpuUsage`). */
export function processCpuUs() {
  const { user, system } = process.cpuUsage()
  return user + system
}

/** CPU time (user + system) redis-server has used, in µs, read with INFO over `admin`. */
export async function redisCpuUs(admin) {
  const info = await admin.info('cpu')
  const read = (name) => Number(new RegExp(`^${name}:([0-9.]+)`, 'm').exec(info)?.[1] ?? NaN)
  return (read('used_cpu_user') + read('used_cpu_sys')) * 1e6
}

/** Resident set size in bytes. */
export function rss() {
  return process.memoryUsage.rss()
}
