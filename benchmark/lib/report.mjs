// Output: the markdown report on stdout and the JSON files under benchmark/results/.
import { execFileSync } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'

/** Machine, runtime and package versions the figures were measured on. */
export function machineInfo({ redisVersion, versions }) {
  const cpus = os.cpus()
  let osName = `${os.type()} ${os.release()}`
  try {
    osName = /^PRETTY_NAME="?([^"\n]*)/m.exec(execFileSync('cat', ['/etc/os-release'], { encoding: 'utf8' }))?.[1] ?? osName
    osName += ` (kernel ${os.release()})`
  } catch {}
  return {
    cpuModel: cpus[0]?.model ?? 'unknown',
    cpuCount: cpus.length,
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    os: osName,
    arch: os.arch(),
    node: process.version,
    redisServer: redisVersion,
    ...versions,
  }
}

const fmtInt = (n) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : 'n/a')
const fmt1 = (n) => (Number.isFinite(n) ? n.toFixed(n >= 100 ? 0 : 1) : 'n/a')
const fmtRatio = (n) => (Number.isFinite(n) ? `${n.toFixed(2)}x` : 'n/a')

/** A figure in its unit's usual precision. */
export function formatValue(value, unit) {
  return unit === 'ops/s' || unit === 'exec/s' ? fmtInt(value) : fmt1(value)
}

export const ratio = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? a / b : NaN)

function table(header, rows) {
  return [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n')
}

function figuresTable(rows) {
  return table(
    ['figure', 'unit', 'better', 'ours', 'ioredis', 'node-redis', 'ours ÷ ioredis', 'node-redis ÷ ioredis', 'PING p50 µs'],
    rows.map((r) => [
      r.figure,
      r.unit,
      r.better === 'higher' ? 'higher ↑' : 'lower ↓',
      formatValue(r.values.ours, r.unit),
      formatValue(r.values.ioredis, r.unit),
      formatValue(r.values['node-redis'], r.unit),
      fmtRatio(ratio(r.values.ours, r.values.ioredis)),
      fmtRatio(ratio(r.values['node-redis'], r.values.ioredis)),
      fmt1(r.pingUs),
    ]),
  )
}

/** The spread of the loopback PING p50 measured before each figure (the VM's wake-up regime). */
function pingText(rows) {
  const pings = rows
    .map((r) => r.pingUs)
    .filter(Number.isFinite)
    .sort((a, b) => a - b)
  if (!pings.length) return ''
  return (
    `PING p50 µs: a plain ioredis PING, 1 in flight for 100 ms just before each figure (${fmt1(pings[0])} to ${fmt1(pings.at(-1))} µs in this run). ` +
    'On this VM a loopback round trip takes either ~10 µs or ~75 µs (cross-vCPU wake-ups), for every client alike; sustained 1-in-flight traffic ' +
    'usually settles in the slow state after a few hundred ms, so the column is a hint, not a measure of the figure. 1-in-flight figures follow ' +
    'that state: compare ratios within a row, not absolute values across runs.'
  )
}

function backendsTable(rows) {
  return table(
    ['lifecycle (higher ↑)', 'ours Redis', 'ours SQLite', 'ours memory', 'ioredis', 'SQLite ÷ ioredis', 'memory ÷ ioredis', 'SQLite ÷ ours Redis'],
    rows.map((r) => [
      r.figure,
      fmtInt(r.values.ours),
      fmtInt(r.values.sqlite),
      fmtInt(r.values.memory),
      fmtInt(r.values.ioredis),
      fmtRatio(ratio(r.values.sqlite, r.values.ioredis)),
      fmtRatio(ratio(r.values.memory, r.values.ioredis)),
      fmtRatio(ratio(r.values.sqlite, r.values.ours)),
    ]),
  )
}

function kvTable(rows) {
  return table(
    ['KV call (higher ↑)', 'ours Redis', 'ioredis by hand', 'ours SQLite', 'ours ÷ ioredis', 'SQLite ÷ ioredis'],
    rows.map((r) => [
      r.figure,
      fmtInt(r.values.ours),
      fmtInt(r.values.ioredis),
      fmtInt(r.values.sqlite),
      fmtRatio(ratio(r.values.ours, r.values.ioredis)),
      fmtRatio(ratio(r.values.sqlite, r.values.ioredis)),
    ]),
  )
}

function targetsTable(targets) {
  return table(
    ['target (issue 5)', 'figure', 'measured', 'needed', 'result'],
    targets.map((t) => [t.target, t.figure, t.measured, t.needed, t.pass ? 'PASS' : '**MISS**']),
  )
}

/** The whole markdown report (of a full run, a one-section run, or an older saved run). */
export function markdown(result) {
  const m = result.machine
  const lines = [
    `## durastate benchmark${result.only ? `, ${result.only} section only` : ''}${result.quick ? ' (BENCH_QUICK smoke run: figures are not meaningful)' : ''}`,
    '',
    ...(result.rows
      ? redisSections(result)
      : [`${m.cpuCount} × ${m.cpuModel}, ${m.memoryGiB} GiB, ${m.os}, Node ${m.node}, durastate ${m.durastate}. ${result.startedAt}.`, '']),
    ...(result.embedded ? embeddedSection(result) : []),
    ...(result.tracing ? tracingSection(result.tracing) : []),
    ...(result.postgres ? postgresSection(result) : []),
    '### Same state in every store',
    '',
    ...result.check.map((c) => `- ${c.ok ? 'ok' : '**MISMATCH**'}: ${c.what}${c.ok ? '' : ` (${c.detail})`}`),
  ]
  const errors = Object.entries(result.errors)
  if (errors.length) {
    lines.push('', '### Errors during the run', '', ...errors.map(([k, e]) => `- ${k}: ${e.count} failed calls; first: ${e.first}`))
  }
  lines.push('', `Wall time: ${result.wallSeconds.toFixed(1)} s.`)
  return lines.join('\n')
}

/** The report of the Redis sections: figures, backends on the lifecycle, KV, RSS, targets. */
function redisSections(result) {
  const m = result.machine
  return [
    `${m.cpuCount} × ${m.cpuModel}, ${m.memoryGiB} GiB, ${m.os}, Node ${m.node}, redis-server ${m.redisServer} (loopback, --save "", --appendonly no), ioredis ${m.ioredis}, redis (node-redis) ${m.nodeRedis}, durastate ${m.durastate}. ${result.startedAt}.`,
    '',
    `Each figure: warm-up, then ${result.config.reps} rounds (${result.config.roundMs} ms each, ${result.config.lifecycleRoundMs} ms for the lifecycle), stores interleaved round by round; the median round is shown. ` +
      'Ratios are to ioredis in this same run. Values are JSON objects of the stated encoded size; ttl = 1 h. ' +
      'Reads (get) are measured without ttl only (a ttl changes nothing on the read path); commits and the lifecycle with and without.',
    '',
    figuresTable(result.rows),
    '',
    pingText(result.rows),
    '',
    '### Our backends on the workflow lifecycle (same run)',
    '',
    backendsTable(result.backendRows),
    '',
    ...(result.kvRows
      ? [
          '### The KV store (same run)',
          '',
          'Our KV store (one-mount view) against the same calls written by hand over ioredis: `GET` + `JSON.parse`, `SET` of `JSON.stringify`, `MGET`. Ops/s.',
          '',
          kvTable(result.kvRows),
          '',
        ]
      : []),
    '### Memory: RSS of our Redis store over a long run',
    '',
    rssText(result.rss),
    '',
    '### Targets',
    '',
    targetsTable(result.targets),
    '',
  ]
}

/** The embedded section: durastate SQLite and memory against better-sqlite3, ratios next to their targets. */
function embeddedSection(result) {
  const { rows, targets, tmpdir, fileSystem } = result.embedded
  const m = result.machine
  const bs3 = 'better-sqlite3'
  const verdict = (id, target) => targets.find((t) => t.id === id && t.target.startsWith(target))
  const cell = (t) => (t ? `${fmtRatio(t.value)} ${t.pass ? 'PASS' : '**MISS**'}` : 'n/a')
  const needed = (t) => (t ? t.needed.replace('>=', '≥') : '')
  const met = targets.filter((t) => t.pass).length
  return [
    '### Embedded: durastate SQLite and memory against better-sqlite3 (same run)',
    '',
    `The reference is \`benchmark/better-sqlite3-store.mjs\`: the WorkerStore and KV a Node developer writes on better-sqlite3 ${m.betterSqlite3 ?? '?'} ` +
      `(SQLite ${m.betterSqlite3Sqlite ?? '?'}): WAL, \`synchronous = NORMAL\`, prepared statements, one statement per call, async methods over the synchronous calls. ` +
      `Every SQLite store is on its own new file in ${tmpdir ?? 'the OS temp dir'}${fileSystem ? ` (${fileSystem})` : ''}. Each figure: warm-up, then ` +
      `${result.config.reps} rounds (${result.config.roundMs} ms each, ${result.config.lifecycleRoundMs} ms for the lifecycle), stores interleaved round by round; the median round is shown. ` +
      `Ratios are to ${bs3} in this same run, or of memory to SQLite; "needed" is the target. ${met} of ${targets.length} targets met.`,
    '',
    table(
      ['figure (higher ↑)', bs3, 'durastate SQLite', 'durastate memory', `SQLite ÷ ${bs3}`, 'needed', 'memory ÷ SQLite', 'needed', `memory ÷ ${bs3}`],
      rows.map((r) => {
        const sqlite = verdict(r.id, 'durastate SQLite')
        const memory = verdict(r.id, 'durastate memory')
        return [
          r.figure,
          formatValue(r.values[bs3], r.unit),
          formatValue(r.values.sqlite, r.unit),
          formatValue(r.values.memory, r.unit),
          cell(sqlite),
          needed(sqlite),
          cell(memory),
          needed(memory),
          fmtRatio(ratio(r.values.memory, r.values[bs3])),
        ]
      }),
    ),
    '',
  ]
}

/** The cost of the `durastate:call` tracing channel: each way's ops/s and its ratio to the untraced methods. */
function tracingSection(rows) {
  return [
    '### Tracing channel cost (same run)',
    '',
    'The same calls through the methods as they were before tracing (untraced), through the public methods while nobody ' +
      'subscribes to `durastate:call` (one `hasSubscribers` check per call: within noise is the aim), and with a subscriber ' +
      'that does nothing (for scale). Ops/s; ratios to untraced.',
    '',
    table(
      ['figure (higher ↑)', 'untraced', 'no subscriber', 'no subscriber ÷ untraced', 'subscribed', 'subscribed ÷ untraced'],
      rows.map((r) => [
        r.figure,
        formatValue(r.values.untraced, r.unit),
        formatValue(r.values['no subscriber'], r.unit),
        fmtRatio(r.noSubscriberRatio),
        formatValue(r.values.subscribed, r.unit),
        fmtRatio(r.subscribedRatio),
      ]),
    ),
    '',
  ]
}

/** The Postgres section: durastate's Postgres store against one on node-postgres, ratios next to their targets. */
function postgresSection(result) {
  const { rows, targets } = result.postgres
  const m = result.machine
  const met = targets.filter((t) => t.pass).length
  return [
    '### Postgres: durastate against node-postgres (same run, same server)',
    '',
    `The reference is \`benchmark/pg-store.mjs\`: the WorkerStore and KV written the obvious way on pg ${m.pg ?? '?'} with a Pool (10 connections), ` +
      `one parameterized statement per call, each write its own transaction. One throwaway PostgreSQL ${m.postgres ?? ''} for both, default \`fsync\` and ` +
      `\`synchronous_commit\`. Each figure: warm-up, then ${result.config.reps} rounds, stores interleaved; the median round is shown. ${met} of ${targets.length} targets met.`,
    '',
    table(
      ['figure (higher ↑)', 'pg', 'durastate Postgres', 'Postgres ÷ pg', 'needed'],
      rows.map((r) => {
        const t = targets.find((x) => x.id === r.id)
        return [
          r.figure,
          formatValue(r.values.pg, r.unit),
          formatValue(r.values.postgres, r.unit),
          `${fmtRatio(t.value)} ${t.pass ? 'PASS' : '**MISS**'}`,
          t.needed.replace('>=', '≥'),
        ]
      }),
    ),
    '',
  ]
}

function rssText(r) {
  return (
    `${fmtInt(r.ops)} getExecutionTaskResult hits (100 B) at ${r.concurrency} in flight${r.ops < r.opsRequested ? ` (of ${fmtInt(r.opsRequested)} requested; stopped at the time cap)` : ''}, ` +
    `${r.seconds.toFixed(1)} s, GC forced before each sample: RSS ${r.startMB.toFixed(1)} MB → ${r.midMB.toFixed(1)} MB (half) → ${r.endMB.toFixed(1)} MB; ` +
    `growth ${r.totalGrowthMB.toFixed(1)} MB in all, ${r.secondHalfGrowthMB.toFixed(1)} MB in the second half.`
  )
}

/**
 * Writes `<ISO timestamp>.json` and `latest.json` (quick runs: `latest-quick.json` only);
 * a one-section run adds `-<section>` to each name, so it never replaces a full run's file.
 */
export function writeJson(dir, result) {
  mkdirSync(dir, { recursive: true })
  const text = `${JSON.stringify(result, null, 2)}\n`
  const section = result.only ? `-${result.only}` : ''
  const written = []
  if (result.quick) {
    written.push(join(dir, `latest-quick${section}.json`))
  } else {
    written.push(join(dir, `${result.startedAt.replace(/:/g, '-')}${section}.json`), join(dir, `latest${section}.json`))
  }
  for (const file of written) writeFileSync(file, text)
  return written
}
