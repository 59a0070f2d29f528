// The embedded section of `npm run bench`: durastate's SQLite and memory backends against
// the WorkerStore and KV a Node developer writes on better-sqlite3
// (../better-sqlite3-store.mjs), each SQLite store on its own new file in os.tmpdir()
// (removed at the end). Figures: the workflow lifecycle (1 and 64 in flight, with and
// without ttl) and KV get / set (1 and 64 in flight), as ratios to better-sqlite3 in the
// same run, next to their targets. Same-state checks before and after measuring.
// The file system matters: WAL checkpoints fsync, which costs little on tmpfs and much on
// some VM disks. `TMPDIR=/dev/shm npm run bench -- --only embedded` measures on tmpfs.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { createBetterSqliteKv, createBetterSqliteStore } from '../better-sqlite3-store.mjs'
import { checkSameState, compareWithBaseline, kvCheckSnapshot, kvSnapshot } from './check.mjs'
import { lifecycleLeftovers, measureKv, measureLifecycle } from './compare.mjs'
import { seedKv } from './kv-workloads.mjs'
import { evaluateEmbeddedTargets } from './targets.mjs'

const require = createRequire(import.meta.url)
const { createKvStore, createMemoryStore, createSqliteStore } = require('../../index.js')

const REFERENCE = 'better-sqlite3' // the reference's name in rows and checks
const STORES = [REFERENCE, 'sqlite', 'memory']
const SECTION = { section: 'embedded', idPrefix: 'emb', names: STORES }
const KV_MOUNTS = { mounts: { bench: { prefix: 'bench:kv:' } } }
const KV_KEYS = Array.from({ length: 256 }, (_, i) => `k${i}`) // the keys kv-workloads.mjs reads and writes

/** The SQLite library better-sqlite3 runs (durastate bundles its own through rusqlite). */
export function betterSqliteLibraryVersion() {
  const db = new Database(':memory:')
  try {
    return db.prepare('SELECT sqlite_version()').pluck().get()
  } finally {
    db.close()
  }
}

/** The file system type holding `path` (longest mount point in /proc/self/mounts), or undefined. */
function fileSystemOf(path) {
  try {
    let best = { point: '', type: undefined }
    for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
      const [, point, type] = line.split(' ')
      const inside = point === '/' || path === point || path.startsWith(`${point}/`)
      if (point && inside && point.length >= best.point.length) best = { point, type }
    }
    return best.type
  } catch {
    return undefined
  }
}

/**
 * Runs the section. `figures` are bench.mjs's measuring helpers
 * ({ config, log, measureFigure, timeBoxed, warmFor, row }); `value` is the 1 KiB result.
 * Returns { rows, targets, check, tmpdir, fileSystem }.
 */
export async function runEmbedded(figures, { ttl, value }) {
  const { log } = figures
  const dir = mkdtempSync(join(tmpdir(), 'durastate-bench-embedded-'))
  const opened = []
  const track = (store) => (opened.push(store), store)
  try {
    const file = (name) => join(dir, name)
    const contenders = [
      { name: REFERENCE, open: (o) => track(createBetterSqliteStore(file('better-sqlite3.db'), o)) },
      { name: 'sqlite', open: (o) => track(createSqliteStore(file('durastate.db'), o)) },
      { name: 'memory', open: (o) => track(createMemoryStore(o)) },
    ]
    const kvs = {
      [REFERENCE]: track(createBetterSqliteKv(file('better-sqlite3-kv.db'))),
      sqlite: track(createKvStore(`sqlite:${file('durastate-kv.db')}`, KV_MOUNTS)).mount('bench'),
      memory: track(createKvStore('memory:', KV_MOUNTS)).mount('bench'),
    }
    log('embedded: correctness check (before)')
    const check = [...(await storeChecks(contenders, ttl, 'before')), ...(await kvChecks(kvs, 'before'))]

    const stores = {}
    for (const c of contenders) stores[c.name] = { plain: c.open({ prefix: 'bench:' }), ttl: c.open({ prefix: 'bench:', ttl }) }
    const lifecycle = await measureLifecycle(figures, SECTION, stores, value)
    for (const kv of Object.values(kvs)) await seedKv(kv, value)
    const kvRows = await measureKv(figures, SECTION, kvs, value)

    log('embedded: correctness check (after)')
    check.push(...(await lifecycleLeftovers('embedded', stores, lifecycle.counts)))
    const kvState = compareWithBaseline('KV bench keys', await snapshots(kvs, (kv) => kvSnapshot(kv, KV_KEYS)), REFERENCE)
    check.push(...kvState.map((c) => ({ ...c, what: `embedded after: ${c.what}` })))
    check.push(...(await kvChecks(kvs, 'after')), ...(await storeChecks(contenders, ttl, 'after')))
    const rows = [...lifecycle.rows, ...kvRows]
    return { rows, targets: evaluateEmbeddedTargets(rows), check, tmpdir: tmpdir(), fileSystem: fileSystemOf(dir) }
  } finally {
    await Promise.allSettled(opened.map((store) => store.close()))
    rmSync(dir, { recursive: true, force: true })
  }
}

/** The WorkerStore check workload (check.mjs), with claims, without and with ttl. */
async function storeChecks(contenders, ttl, tag) {
  const out = []
  for (const [kind, options] of [
    ['no ttl', {}],
    ['ttl', { ttl }],
  ]) {
    const outcomes = await checkSameState({ contenders, baseline: REFERENCE, ours: null, options, tag: `emb-${tag}-${kind}`, claims: true })
    out.push(...outcomes.map((c) => ({ ...c, what: `embedded ${tag}, ${kind}: ${c.what}` })))
  }
  return out
}

/** The KV check workload: written before measuring, read back again after. */
async function kvChecks(kvs, tag) {
  const outcomes = compareWithBaseline('KV check workload', await snapshots(kvs, (kv) => kvCheckSnapshot(kv, tag)), REFERENCE)
  if (tag === 'after') {
    const before = await snapshots(kvs, (kv) => kvCheckSnapshot(kv, 'before', { write: false }))
    outcomes.push(...compareWithBaseline('KV check keys of before, read after the run', before, REFERENCE))
  }
  return outcomes.map((c) => ({ ...c, what: `embedded ${tag}: ${c.what}` }))
}

async function snapshots(byName, take) {
  const out = {}
  for (const [name, x] of Object.entries(byName)) out[name] = await take(x)
  return out
}
