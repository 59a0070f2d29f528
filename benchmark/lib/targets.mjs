// Targets: PASS/MISS of each figure a target names, measured as a ratio in the same run.
import { ratio } from './report.mjs'

const RSS_FLAT_MB = 4 // "flat in the second half": grows by less than this

/** PASS/MISS per target of issue 5. */
export function evaluateTargets(rows, backendRows, rss) {
  const byId = Object.fromEntries(rows.map((r) => [r.id, r]))
  const vsIoredis = (target, id, op, needed) => {
    const r = byId[id]
    const x = ratio(r.values.ours, r.values.ioredis)
    const pass = op === '>=' ? x >= needed : x <= needed
    return { target, figure: r.figure, measured: `${x.toFixed(2)}x`, needed: `${op} ${needed}x`, value: x, pass }
  }
  const life1 = backendRows.find((r) => r.id === 'life-1-ttl')
  const sqliteVsOurs = ratio(life1.values.sqlite, life1.values.ours)
  return [
    vsIoredis('lifecycle exec/s, 64 in flight, with ttl', 'life-64-ttl', '>=', 2.0),
    vsIoredis('lifecycle exec/s, 1 in flight, with ttl', 'life-1-ttl', '>=', 1.5),
    vsIoredis('get throughput, 256 in flight', 'tput-get-100-256', '>=', 1.0),
    vsIoredis('get throughput, 256 in flight', 'tput-get-1024-256', '>=', 1.0),
    vsIoredis('get latency p50, 1 in flight', 'lat-p50-get-100', '<=', 1.0),
    vsIoredis('get latency p50, 1 in flight', 'lat-p50-get-1024', '<=', 1.0),
    vsIoredis('1 MiB commit + get MB/s', 'mib', '>=', 1.0),
    vsIoredis('Node CPU per op', 'cpu-1', '<=', 0.7),
    vsIoredis('Node CPU per op', 'cpu-256', '<=', 0.7),
    {
      target: 'RSS growth over 1M ops',
      figure: `our Redis store, ${rss.ops.toLocaleString('en-US')} gets`,
      measured: `${rss.totalGrowthMB.toFixed(1)} MB total, ${rss.secondHalfGrowthMB.toFixed(1)} MB in the second half`,
      needed: `< 32 MB, second half < ${RSS_FLAT_MB} MB (flat)`,
      pass: rss.totalGrowthMB < 32 && rss.secondHalfGrowthMB < RSS_FLAT_MB,
    },
    {
      target: 'SQLite lifecycle, 1 in flight',
      figure: life1.figure,
      measured: `${sqliteVsOurs.toFixed(2)}x our Redis store`,
      needed: '>= 1.0x our Redis store',
      value: sqliteVsOurs,
      pass: sqliteVsOurs >= 1.0,
    },
  ]
}

/** Needed ratios of the embedded section: durastate SQLite ÷ better-sqlite3 by workload and concurrency; memory ÷ SQLite. */
export const EMBEDDED_TARGETS = { lifecycle: { 1: 1.2, 64: 2.5 }, kv: { 1: 1.0, 64: 2.0 }, memoryOverSqlite: 1.0 }

/** PASS/MISS per row: durastate SQLite ÷ better-sqlite3 against its target, and memory ÷ SQLite. */
export function evaluateEmbeddedTargets(rows) {
  const targets = []
  for (const r of rows) {
    const needed = EMBEDDED_TARGETS[r.kind][r.concurrency]
    const sqlite = ratio(r.values.sqlite, r.values['better-sqlite3'])
    targets.push({
      id: r.id,
      target: 'durastate SQLite ÷ better-sqlite3',
      figure: r.figure,
      measured: `${sqlite.toFixed(2)}x`,
      needed: `>= ${needed}x`,
      value: sqlite,
      pass: sqlite >= needed,
    })
    const memory = ratio(r.values.memory, r.values.sqlite)
    const floor = EMBEDDED_TARGETS.memoryOverSqlite
    targets.push({
      id: r.id,
      target: 'durastate memory ÷ durastate SQLite',
      figure: r.figure,
      measured: `${memory.toFixed(2)}x`,
      needed: `>= ${floor}x`,
      value: memory,
      pass: memory >= floor,
    })
  }
  return targets
}
