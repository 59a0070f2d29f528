// `npm run bench`: our store (durastate on Redis) against the seed's JS store on ioredis 5
// and on node-redis 5, in one run, against one throwaway redis-server; plus our SQLite and
// memory backends on the workflow lifecycle; plus the embedded section (lib/embedded.mjs):
// our SQLite and memory stores against a store and KV written on better-sqlite3; plus the
// cost of the tracing channel (lib/tracing.mjs), in every run. Prints a
// markdown report on stdout (progress on stderr), writes JSON under benchmark/results/, and
// exits non-zero when the stores do not end in the same state (or a call failed).
// The postgres section (lib/postgres.mjs): our Postgres store against one written on
// node-postgres (pg-store.mjs), on a throwaway PostgreSQL started for the run.
//
// Env: BENCH_QUICK=1  smoke run (tiny rounds, under a minute; still runs the correctness checks)
//      BENCH_RSS_OPS  ops of the RSS run (default 1,000,000; capped by BENCH_RSS_MAX_S, default 75 s)
//      BENCH_STRICT=1 also exit non-zero when a target is missed
//      BENCH_ONLY=embedded|redis|postgres|tracing  one section only (same as `--only <section>`)
// `npm run bench -- --only embedded` runs the embedded section alone (no redis-server needed);
// `--only redis` the Redis sections, `--only tracing` the tracing channel's cost alone. A one-section run writes latest-<section>.json.
// `node benchmark/bench.mjs --print [file.json]` re-prints the report of a saved run
// (default benchmark/results/latest.json) without measuring anything.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import v8 from 'node:v8'
import vm from 'node:vm'
import { Redis } from 'ioredis'
import { startRedisServer } from '../__test__/helpers/redis-server.mjs'
import { checkSameState } from './lib/check.mjs'
import { drive, mainThreadCpuUs, median, processCpuUs, quantile, redisCpuUs, rss } from './lib/measure.mjs'
import { machineInfo, markdown, writeJson } from './lib/report.mjs'
import { evaluateTargets } from './lib/targets.mjs'
import { bigRoundTripOp, commitOp, getOp, LIFECYCLE_CALLS, lifecycleOp, makeValue, seedGetData, sizeLabel } from './lib/workloads.mjs'
import { ioredisKv, kvGetManyOp, kvGetOp, kvSetOp, seedKv } from './lib/kv-workloads.mjs'
import { runTracing } from './lib/tracing.mjs'
import { openIoredisReference } from './reference-ioredis.mjs'
import { openNodeRedisReference } from './reference-node-redis.mjs'

const require = createRequire(import.meta.url)
const { createKvStore, createMemoryStore, createRedisStore, createSqliteStore } = require('../index.js')

const QUICK = process.env.BENCH_QUICK === '1'
const SECTIONS = ['redis', 'embedded', 'postgres', 'tracing']
const onlyFlag = process.argv.indexOf('--only')
const ONLY = onlyFlag >= 0 ? String(process.argv[onlyFlag + 1]) : process.env.BENCH_ONLY || undefined
const CONFIG = QUICK
  ? { reps: 3, warmMs: 20, roundMs: 40, lifecycleRoundMs: 60, bigRoundMs: 60, cpuOps: 300, rssOps: 20_000, rssMaxS: 10 }
  : { reps: 3, warmMs: 150, roundMs: 300, lifecycleRoundMs: 600, bigRoundMs: 800, cpuOps: 12_000, rssOps: 1_000_000, rssMaxS: 75 }
if (process.env.BENCH_RSS_OPS) CONFIG.rssOps = Number(process.env.BENCH_RSS_OPS)
if (process.env.BENCH_RSS_MAX_S) CONFIG.rssMaxS = Number(process.env.BENCH_RSS_MAX_S)

const TTL = 3_600_000 // 1 h: long enough that nothing expires during the run
const REDIS_STORES = ['ours', 'ioredis', 'node-redis']
const EMBEDDED_STORES = ['sqlite', 'memory']
const VALUES = { 100: makeValue(100), 1024: makeValue(1024), [1 << 20]: makeValue(1 << 20) }
const RSS_CONCURRENCY = 256

const errors = {}
/** Latency p50 (µs) of a plain ioredis PING, 1 in flight: the VM's loopback wake-up regime right now. */
let pingP50 = async () => NaN
// performance.now() counts from the start of the process, so wall times include start-up.
const log = (msg) => process.stderr.write(`[bench ${(performance.now() / 1000).toFixed(1)} s] ${msg}\n`)

/** Counts failed calls of one store (a failed call is also a finding: it is reported). */
function noteErrors(store, figure, outcome) {
  if (!outcome.errors) return
  const entry = (errors[store] ??= { count: 0, first: undefined })
  entry.count += outcome.errors
  entry.first ??= `${figure}: ${outcome.firstError?.code ?? ''} ${outcome.firstError?.message ?? outcome.firstError}`
}

/**
 * One figure for several stores: a warm-up for each, then CONFIG.reps rounds with the
 * stores interleaved (order rotated per round, so drift on a noisy machine hits all alike).
 * `measure(store, op)` runs one round and returns named metrics; the median of each is kept.
 */
async function measureFigure(figure, entries, warm, measure) {
  const pingUs = await pingP50()
  for (const { name, op } of entries) noteErrors(name, figure, await warm(op))
  const rounds = Object.fromEntries(entries.map((e) => [e.name, []]))
  for (let r = 0; r < CONFIG.reps; r++) {
    for (let k = 0; k < entries.length; k++) {
      const { name, op } = entries[(k + r) % entries.length]
      const { outcome, metrics } = await measure(op)
      noteErrors(name, figure, outcome)
      rounds[name].push(metrics)
    }
  }
  const medians = {}
  for (const [name, list] of Object.entries(rounds)) {
    medians[name] = Object.fromEntries(Object.keys(list[0]).map((key) => [key, median(list.map((m) => m[key]))]))
  }
  return { medians, rounds, pingUs }
}

/** A time-boxed round: ops/s (and latency quantiles in µs when 1 in flight). */
function timeBoxed(concurrency, roundMs) {
  return async (op) => {
    const outcome = await drive(op, { concurrency, maxMs: roundMs, latencies: concurrency === 1 })
    const metrics = { opsPerSec: (outcome.ops * 1000) / outcome.elapsedMs }
    if (outcome.latencies) {
      metrics.p50 = quantile(outcome.latencies, 0.5) * 1000
      metrics.p99 = quantile(outcome.latencies, 0.99) * 1000
    }
    return { outcome, metrics }
  }
}

const warmFor = (concurrency) => (op) => drive(op, { concurrency, maxMs: CONFIG.warmMs })

/** A table row: one figure, each store's median value (`pick`) and, for the JSON, every round's. */
function row(id, figure, unit, better, { medians, rounds, pingUs }, pick) {
  const each = (source, f) => Object.fromEntries(Object.entries(source).map(([name, v]) => [name, f(v)]))
  return { id, figure, unit, better, values: each(medians, pick), rounds: each(rounds, (list) => list.map(pick)), pingUs }
}

/** The row with only the given stores. */
function only(r, names) {
  const keep = (source) => Object.fromEntries(names.filter((n) => n in source).map((n) => [n, source[n]]))
  return { ...r, values: keep(r.values), rounds: keep(r.rounds) }
}

/** Latency p50/p99 (1 in flight) and throughput (1, 16, 256 in flight) of get (hit) and commit. */
async function measureGetAndCommit(stores) {
  const latencyRows = []
  const throughputRows = []
  const variants = [
    { kind: 'get', bytes: 100, ttl: false },
    { kind: 'get', bytes: 1024, ttl: false },
    { kind: 'commit', bytes: 100, ttl: false },
    { kind: 'commit', bytes: 100, ttl: true },
    { kind: 'commit', bytes: 1024, ttl: false },
    { kind: 'commit', bytes: 1024, ttl: true },
  ]
  for (const { kind, bytes, ttl } of variants) {
    const call = kind === 'get' ? 'getExecutionTaskResult (hit)' : 'commitExecutionTaskResult'
    const label = `${call}, ${sizeLabel(bytes)}${ttl ? ', ttl' : ''}`
    const id = `${kind}-${bytes}${ttl ? '-ttl' : ''}`
    for (const concurrency of [1, 16, 256]) {
      log(`${label}, ${concurrency} in flight`)
      const entries = REDIS_STORES.map((name) => {
        const store = stores[name][ttl ? 'ttl' : 'plain']
        const op = kind === 'get' ? getOp(store, String(bytes)) : commitOp(store, `${bytes}${ttl ? 't' : ''}`, VALUES[bytes])
        return { name, op }
      })
      const cell = await measureFigure(`${label} @${concurrency}`, entries, warmFor(concurrency), timeBoxed(concurrency, CONFIG.roundMs))
      if (concurrency === 1) {
        latencyRows.push(row(`lat-p50-${id}`, `${label}: latency p50, 1 in flight`, 'µs', 'lower', cell, (m) => m.p50))
        latencyRows.push(row(`lat-p99-${id}`, `${label}: latency p99, 1 in flight`, 'µs', 'lower', cell, (m) => m.p99))
      }
      throughputRows.push(row(`tput-${id}-${concurrency}`, `${label}: ${concurrency} in flight`, 'ops/s', 'higher', cell, (m) => m.opsPerSec))
    }
  }
  return [...latencyRows, ...throughputRows]
}

/** Workflow lifecycle executions/s, 1 and 64 in flight, with and without ttl, all five stores. */
async function measureLifecycle(stores) {
  const rows = []
  for (const concurrency of [1, 64]) {
    for (const ttl of [false, true]) {
      const label = `workflow lifecycle (${LIFECYCLE_CALLS} calls, 1 KiB results), ${concurrency} in flight${ttl ? ', ttl' : ''}`
      log(label)
      const entries = [...REDIS_STORES, ...EMBEDDED_STORES].map((name) => ({
        name,
        op: lifecycleOp(stores[name][ttl ? 'ttl' : 'plain'], `${concurrency}${ttl ? 't' : ''}`, VALUES[1024]),
      }))
      const warm = (op) => drive(op, { concurrency, maxMs: CONFIG.warmMs * 2 })
      const cell = await measureFigure(label, entries, warm, timeBoxed(concurrency, CONFIG.lifecycleRoundMs))
      rows.push(row(`life-${concurrency}${ttl ? '-ttl' : ''}`, label, 'exec/s', 'higher', cell, (m) => m.opsPerSec))
    }
  }
  return rows
}

/** 1 MiB value: commit then get it back, 1 in flight; MB/s counts both directions. */
async function measureBigValue(stores) {
  const bytes = 1 << 20
  log('1 MiB commit + get')
  const entries = REDIS_STORES.map((name) => ({ name, op: bigRoundTripOp(stores[name].plain, 'mib', VALUES[bytes]) }))
  const warm = (op) => drive(op, { concurrency: 1, maxOps: 3 })
  const cell = await measureFigure('1 MiB', entries, warm, timeBoxed(1, CONFIG.bigRoundMs))
  return [row('mib', '1 MiB value: commit + get, 1 in flight (2 MiB moved per op)', 'MB/s', 'higher', cell, (m) => (m.opsPerSec * 2 * bytes) / 1e6)]
}

/**
 * CPU per op over a fixed op count (get hit and commit of 1 KiB, alternating, no ttl):
 * the whole Node process (process.cpuUsage user+system: the target), its main JS thread
 * alone (/proc), and redis-server (INFO cpu), each divided by the op count.
 */
async function measureCpu(stores, admin) {
  const rows = []
  for (const concurrency of [1, 256]) {
    const count = concurrency === 1 ? CONFIG.cpuOps : CONFIG.cpuOps * 3
    log(`CPU per op, ${concurrency} in flight, ${count} ops`)
    const entries = REDIS_STORES.map((name) => {
      const get = getOp(stores[name].plain, '1024')
      const commit = commitOp(stores[name].plain, 'cpu', VALUES[1024])
      return { name, op: (i) => (i & 1 ? get(i >> 1) : commit(i >> 1)) }
    })
    const warm = (op) => drive(op, { concurrency, maxOps: Math.ceil(count / 4) })
    const measure = async (op) => {
      const before = { proc: processCpuUs(), main: mainThreadCpuUs(), redis: await redisCpuUs(admin) }
      const outcome = await drive(op, { concurrency, maxOps: count, maxMs: 30_000 })
      const after = { proc: processCpuUs(), main: mainThreadCpuUs(), redis: await redisCpuUs(admin) }
      const per = (key) => (after[key] - before[key]) / outcome.ops
      return { outcome, metrics: { proc: per('proc'), main: per('main'), redis: per('redis') } }
    }
    const cell = await measureFigure(`CPU @${concurrency}`, entries, warm, measure)
    const what = `get/commit 1 KiB, ${concurrency} in flight`
    rows.push(row(`cpu-${concurrency}`, `Node process CPU per op (process.cpuUsage), ${what}`, 'µs', 'lower', cell, (m) => m.proc))
    rows.push(row(`cpu-main-${concurrency}`, `Node main-thread CPU per op (/proc), ${what}`, 'µs', 'lower', cell, (m) => m.main))
    rows.push(row(`cpu-redis-${concurrency}`, `redis-server CPU per op (INFO cpu), ${what}`, 'µs', 'lower', cell, (m) => m.redis))
  }
  return rows
}

/** KV get / set / getMany of 1 KiB values, 1 and 64 in flight: our KV store on Redis and on SQLite, and ioredis by hand. */
async function measureKv(kvs) {
  const rows = []
  const workloads = [
    { id: 'get', label: 'KV get (hit), 1 KiB', op: (kv) => kvGetOp(kv) },
    { id: 'set', label: 'KV set (overwrite), 1 KiB', op: (kv) => kvSetOp(kv, VALUES[1024]) },
    { id: 'many', label: 'KV getMany, 16 × 1 KiB', op: (kv) => kvGetManyOp(kv) },
  ]
  for (const { id, label, op } of workloads) {
    for (const concurrency of [1, 64]) {
      log(`${label}, ${concurrency} in flight`)
      const entries = Object.entries(kvs).map(([name, kv]) => ({ name, op: op(kv) }))
      const cell = await measureFigure(`${label} @${concurrency}`, entries, warmFor(concurrency), timeBoxed(concurrency, CONFIG.roundMs))
      rows.push(row(`kv-${id}-${concurrency}`, `${label}, ${concurrency} in flight`, 'ops/s', 'higher', cell, (m) => m.opsPerSec))
    }
  }
  return rows
}

/** A full garbage collection (so RSS samples do not count garbage), then a short settle. */
async function collectGarbage() {
  const gc = globalThis.Bun ? () => globalThis.Bun.gc(true) : exposedGc()
  gc()
  await sleep(50)
  gc()
}

/** V8's gc(), exposed at run time (Node, Deno). */
function exposedGc() {
  v8.setFlagsFromString('--expose-gc')
  return vm.runInNewContext('gc')
}

/** RSS growth of our store over CONFIG.rssOps gets (100 B hits) at 256 in flight, in two halves. */
async function measureRss(store) {
  log(`RSS over ${CONFIG.rssOps} ops (cap ${CONFIG.rssMaxS} s)`)
  const op = getOp(store, '100')
  const half = Math.ceil(CONFIG.rssOps / 2)
  const run = async (maxOps) => {
    const outcome = await drive(op, { concurrency: RSS_CONCURRENCY, maxOps, maxMs: (CONFIG.rssMaxS * 1000) / 2 })
    noteErrors('ours', 'RSS run', outcome)
    return outcome.ops
  }
  await run(Math.min(50_000, half))
  await collectGarbage()
  const start = rss()
  const t0 = performance.now()
  let ops = await run(half)
  await collectGarbage()
  const mid = rss()
  ops += await run(CONFIG.rssOps - half)
  const seconds = (performance.now() - t0) / 1000
  await collectGarbage()
  const end = rss()
  const MB = 1e6
  return {
    ops,
    opsRequested: CONFIG.rssOps,
    concurrency: RSS_CONCURRENCY,
    seconds,
    startMB: start / MB,
    midMB: mid / MB,
    endMB: end / MB,
    totalGrowthMB: (end - start) / MB,
    secondHalfGrowthMB: (end - mid) / MB,
  }
}

/** The correctness check, without and with ttl; `tag` keeps its keys apart from other checks. */
async function runChecks(contenders, admin, tag) {
  log(`correctness check (${tag})`)
  const plain = await checkSameState({ contenders, admin, options: {}, tag: `${tag}-plain` })
  const ttl = await checkSameState({ contenders, admin, options: { ttl: TTL }, tag: `${tag}-ttl` })
  return [...plain.map((c) => ({ ...c, what: `${tag}, no ttl: ${c.what}` })), ...ttl.map((c) => ({ ...c, what: `${tag}, ttl: ${c.what}` }))]
}

function packageVersion(path) {
  return JSON.parse(readFileSync(new URL(path, import.meta.url), 'utf8')).version
}

/** Opens every store: each contender gets a plain and a ttl store under `bench:<name>:`. */
function openStores(contenders) {
  const stores = {}
  for (const c of contenders) {
    const prefix = `bench:${c.name}:`
    stores[c.name] = { plain: c.open({ prefix }), ttl: c.open({ prefix, ttl: TTL }) }
  }
  return stores
}

/**
 * Everything but the embedded section, on a throwaway redis-server. Steps that release what
 * it opened go into `cleanup` (run at the end of main). Returns its part of the result.
 */
async function runRedisSections(cleanup) {
  const ownStores = [] // our stores, closed at the end
  const track = (store) => (ownStores.push(store), store)
  const server = await startRedisServer({ args: ['--appendonly', 'no'] })
  cleanup.push(() => server.stop())
  log(`redis-server on ${server.url}`)
  const admin = new Redis(server.url)
  cleanup.push(() => admin.quit())
  pingP50 = async () => {
    const { latencies } = await drive(() => admin.ping(), { concurrency: 1, maxMs: QUICK ? 20 : 100, latencies: true })
    return quantile(latencies, 0.5) * 1000
  }
  const io = await openIoredisReference(server.url)
  cleanup.push(() => io.close())
  const nr = await openNodeRedisReference(server.url)
  cleanup.push(() => nr.close())
  const sqliteDir = mkdtempSync(join(tmpdir(), 'durastate-bench-'))
  cleanup.push(() => rmSync(sqliteDir, { recursive: true, force: true }))
  cleanup.push(() => Promise.all(ownStores.map((s) => s.close()))) // runs before the server stops and the file goes

  const sqlitePath = join(sqliteDir, 'bench.db')
  const contenders = [
    { name: 'ours', redis: true, open: (o) => track(createRedisStore(server.url, o)) },
    { name: 'ioredis', redis: true, open: (o) => io.store(o) },
    { name: 'node-redis', redis: true, open: (o) => nr.store(o) },
    { name: 'sqlite', open: (o) => track(createSqliteStore(sqlitePath, o)) },
    { name: 'memory', open: (o) => track(createMemoryStore(o)) },
  ]
  const check = await runChecks(contenders, admin, 'before')

  const stores = openStores(contenders)
  for (const name of REDIS_STORES) {
    for (const bytes of [100, 1024]) await seedGetData(stores[name].plain, String(bytes), VALUES[bytes])
  }
  const rows = [...(await measureGetAndCommit(stores))]
  const lifecycle = await measureLifecycle(stores)
  rows.push(...lifecycle, ...(await measureBigValue(stores)), ...(await measureCpu(stores, admin)))
  const kvs = {
    ours: track(createKvStore(server.url, { mounts: { bench: { prefix: 'bench:kv:ours:' } } })).mount('bench'),
    ioredis: ioredisKv(admin, 'bench:kv:ioredis:'),
    sqlite: track(createKvStore(`sqlite:${sqlitePath}`, { mounts: { bench: { prefix: 'bench:kv:' } } })).mount('bench'),
  }
  for (const kv of Object.values(kvs)) await seedKv(kv, VALUES[1024])
  const kvRows = await measureKv(kvs)
  const rssResult = await measureRss(stores.ours.plain)
  check.push(...(await runChecks(contenders, admin, 'after')))

  const backendRows = lifecycle.map((r) => only(r, ['ours', 'ioredis', ...EMBEDDED_STORES]))
  const mainRows = rows.map((r) => only(r, REDIS_STORES))
  return {
    redisVersion: /redis_version:(\S+)/.exec(await admin.info('server'))?.[1],
    rows: mainRows,
    backendRows,
    kvRows,
    rss: rssResult,
    targets: evaluateTargets(mainRows, backendRows, rssResult),
    check,
  }
}

/** bench.mjs's measuring helpers, for sections written in other modules. */
const figures = { config: CONFIG, log, measureFigure, timeBoxed, warmFor, row }

async function main() {
  const startedAt = new Date().toISOString()
  const cleanup = []
  let exitCode = 0
  try {
    const withRedis = ONLY === undefined || ONLY === 'redis'
    const { redisVersion, check: redisCheck = [], ...redis } = withRedis ? await runRedisSections(cleanup) : {}
    // better-sqlite3, the embedded reference, is a V8 addon that Bun cannot load: there
    // the embedded section is left out (it runs on Node), the Redis sections run.
    const withEmbedded = (ONLY === undefined || ONLY === 'embedded') && !globalThis.Bun
    if (ONLY !== 'redis' && globalThis.Bun) log('embedded section left out: better-sqlite3 does not load in Bun')
    const embeddedLib = withEmbedded ? await import('./lib/embedded.mjs') : undefined
    const embedded = embeddedLib && (await embeddedLib.runEmbedded(figures, { ttl: TTL, value: VALUES[1024] }))
    const withPostgres = ONLY === undefined || ONLY === 'postgres'
    const postgresLib = withPostgres ? await import('./lib/postgres.mjs') : undefined
    const postgres = postgresLib && (await postgresLib.runPostgres(figures, { ttl: TTL, value: VALUES[1024] }))
    const tracing = ONLY === undefined || ONLY === 'tracing' ? await runTracing(figures) : undefined
    const result = {
      startedAt,
      quick: QUICK,
      only: ONLY,
      config: CONFIG,
      machine: machineInfo({
        redisVersion,
        versions: {
          durastate: packageVersion('../package.json'),
          ioredis: packageVersion('../node_modules/ioredis/package.json'),
          nodeRedis: packageVersion('../node_modules/redis/package.json'),
          betterSqlite3: packageVersion('../node_modules/better-sqlite3/package.json'),
          betterSqlite3Sqlite: embeddedLib?.betterSqliteLibraryVersion(),
          pg: packageVersion('../node_modules/pg/package.json'),
          postgres: postgres?.serverVersion,
        },
      }),
      ...redis,
      embedded: embedded && { rows: embedded.rows, targets: embedded.targets, tmpdir: embedded.tmpdir, fileSystem: embedded.fileSystem },
      tracing,
      postgres: postgres && { rows: postgres.rows, targets: postgres.targets },
      check: [...redisCheck, ...(embedded?.check ?? []), ...(postgres?.check ?? [])],
      errors,
      wallSeconds: performance.now() / 1000,
    }
    process.stdout.write(`${markdown(result)}\n`)
    for (const file of writeJson(fileURLToPath(new URL('./results/', import.meta.url)), result)) log(`wrote ${file}`)

    const targets = [...(result.targets ?? []), ...(embedded?.targets ?? []), ...(postgres?.targets ?? [])]
    const failures = [
      !result.check.length && ONLY !== 'tracing' && 'no correctness check ran',
      result.check.some((c) => !c.ok) && 'the stores did not end in the same state',
      Object.keys(errors).length && 'calls failed during the run',
      process.env.BENCH_STRICT === '1' && targets.some((t) => !t.pass) && 'a target was missed (BENCH_STRICT)',
    ].filter(Boolean)
    for (const failure of failures) log(`FAIL: ${failure}`)
    if (failures.length) exitCode = 1
  } catch (err) {
    exitCode = 1
    console.error(err)
  } finally {
    for (const step of cleanup.reverse()) {
      try {
        await step()
      } catch (err) {
        console.error('cleanup:', err)
      }
    }
  }
  process.exitCode = exitCode
  watchExit()
}

/** If something still holds the event loop 15 s after the end, say what and fail. */
function watchExit() {
  setTimeout(() => {
    console.error('bench: the process did not exit on its own; active resources:', process.getActiveResourcesInfo())
    process.exit(2)
  }, 15_000).unref()
}

/** Prints the markdown report of a saved run. */
function printSaved(file) {
  const path = file ?? fileURLToPath(new URL('./results/latest.json', import.meta.url))
  process.stdout.write(`${markdown(JSON.parse(readFileSync(path, 'utf8')))}\n`)
}

if (process.argv[2] === '--print') printSaved(process.argv[3])
else if (ONLY !== undefined && !SECTIONS.includes(ONLY)) {
  console.error(`bench: --only (or BENCH_ONLY) takes one of ${SECTIONS.join(', ')}; got ${JSON.stringify(ONLY)}`)
  process.exitCode = 2
} else await main()
