// The Postgres section of `npm run bench`: durastate's Postgres backend against the
// WorkerStore and KV written the obvious way on node-postgres with a Pool
// (../pg-store.mjs), on one throwaway PostgreSQL started for the run (the tests' helper:
// initdb into a temp dir, default `fsync` and `synchronous_commit`). Figures: the workflow
// lifecycle (1 and 64 in flight, with and without ttl) and KV get / set (1 and 64 in
// flight), as ratios to `pg` in the same run, next to their targets. Same-state checks
// before measuring (the check workload, claims included) and after (every lifecycle
// execution sampled is disposed).
import { createRequire } from 'node:module'
import { isDeepStrictEqual } from 'node:util'
import { startPostgresServer } from '../../__test__/helpers/postgres-server.mjs'
import { openPgReference } from '../pg-store.mjs'
import { apiSnapshot, checkSameState } from './check.mjs'
import { kvGetOp, kvSetOp, seedKv } from './kv-workloads.mjs'
import { drive } from './measure.mjs'
import { LIFECYCLE_CALLS, LIFECYCLE_STEPS, lifecycleOp } from './workloads.mjs'

const require = createRequire(import.meta.url)
const { createKvStore, createPostgresStore } = require('../../index.js')

export const REFERENCE = 'pg'
const STORES = [REFERENCE, 'postgres']
const STEP_IDS = Array.from({ length: LIFECYCLE_STEPS }, (_, s) => `step-${s}`)
const SAMPLE = 16

/** Needed ratios: durastate Postgres ÷ pg, by workload and concurrency. */
export const POSTGRES_TARGETS = { lifecycle: { 1: 1.1, 64: 2.0 }, kv: { 1: 1.0, 64: 1.0 } }

/** Runs the section with bench.mjs's measuring helpers. Returns { rows, targets, check, serverVersion }. */
export async function runPostgres(figures, { ttl, value }) {
  const { log } = figures
  const server = await startPostgresServer()
  const opened = []
  const track = (store) => (opened.push(store), store)
  let reference
  try {
    log(`postgres on ${server.url}`)
    reference = await openPgReference(server.url)
    const contenders = [
      { name: REFERENCE, open: (o) => reference.store(o) },
      { name: 'postgres', open: (o) => track(createPostgresStore(server.url, o)) },
    ]
    log('postgres: correctness check (before)')
    const check = []
    for (const [kind, options] of [
      ['no ttl', {}],
      ['ttl', { ttl }],
    ]) {
      const outcomes = await checkSameState({ contenders, baseline: REFERENCE, ours: null, options, tag: `pg-${kind}`, claims: true })
      check.push(...outcomes.map((c) => ({ ...c, what: `postgres before, ${kind}: ${c.what}` })))
    }
    const stores = {}
    for (const c of contenders) stores[c.name] = { plain: c.open({ prefix: 'bench:' }), ttl: c.open({ prefix: 'bench:', ttl }) }
    const lifecycle = await measureLifecycle(figures, stores, value)
    const kvs = {
      [REFERENCE]: reference.kv('bench:kv:'),
      postgres: track(createKvStore(server.url, { mounts: { bench: { prefix: 'bench:kv:' } } })).mount('bench'),
    }
    for (const kv of Object.values(kvs)) await seedKv(kv, value)
    const kvRows = await measureKv(figures, kvs, value)
    log('postgres: correctness check (after)')
    check.push(...(await lifecycleLeftovers(stores, lifecycle.counts)))
    const rows = [...lifecycle.rows, ...kvRows]
    return { rows, targets: evaluate(rows), check, serverVersion: server.sql('SHOW server_version') }
  } finally {
    await Promise.allSettled(opened.map((store) => store.close()))
    await reference?.close()
    await server.stop()
  }
}

function evaluate(rows) {
  return rows.map((r) => {
    const needed = POSTGRES_TARGETS[r.kind][r.concurrency]
    const value = r.values.postgres / r.values[REFERENCE]
    return {
      id: r.id,
      target: 'durastate Postgres ÷ pg',
      figure: r.figure,
      measured: `${value.toFixed(2)}x`,
      needed: `>= ${needed}x`,
      value,
      pass: value >= needed,
    }
  })
}

async function measureLifecycle({ config, log, measureFigure, timeBoxed, row }, stores, value) {
  const rows = []
  const counts = {}
  for (const concurrency of [1, 64]) {
    for (const withTtl of [false, true]) {
      const tag = `${concurrency}${withTtl ? 't' : ''}`
      const label = `workflow lifecycle (${LIFECYCLE_CALLS} calls, 1 KiB results), ${concurrency} in flight${withTtl ? ', ttl' : ''}`
      log(`postgres: ${label}`)
      const entries = STORES.map((name) => {
        const op = lifecycleOp(stores[name][withTtl ? 'ttl' : 'plain'], tag, value)
        const counted = (counts[name] ??= {})
        counted[tag] = 0
        return { name, op: () => (counted[tag]++, op()) }
      })
      const warm = (op) => drive(op, { concurrency, maxMs: config.warmMs * 2 })
      const cell = await measureFigure(`postgres ${label}`, entries, warm, timeBoxed(concurrency, config.lifecycleRoundMs))
      rows.push({ ...row(`pg-life-${tag}`, label, 'exec/s', 'higher', cell, (m) => m.opsPerSec), kind: 'lifecycle', concurrency })
    }
  }
  return { rows, counts }
}

async function measureKv({ config, log, measureFigure, timeBoxed, warmFor, row }, kvs, value) {
  const rows = []
  const workloads = [
    { id: 'get', label: 'KV get (hit), 1 KiB', op: (kv) => kvGetOp(kv) },
    { id: 'set', label: 'KV set (overwrite), 1 KiB', op: (kv) => kvSetOp(kv, value) },
  ]
  for (const { id, label, op } of workloads) {
    for (const concurrency of [1, 64]) {
      log(`postgres: ${label}, ${concurrency} in flight`)
      const entries = STORES.map((name) => ({ name, op: op(kvs[name]) }))
      const cell = await measureFigure(`postgres ${label} @${concurrency}`, entries, warmFor(concurrency), timeBoxed(concurrency, config.roundMs))
      rows.push({
        ...row(`pg-kv-${id}-${concurrency}`, `${label}, ${concurrency} in flight`, 'ops/s', 'higher', cell, (m) => m.opsPerSec),
        kind: 'kv',
        concurrency,
      })
    }
  }
  return rows
}

async function lifecycleLeftovers(stores, counts) {
  const gone = { inProgress: false, results: '{}', tasks: Object.fromEntries(STEP_IDS.map((t) => [t, ['"<undefined>"', false]])) }
  const out = []
  for (const [name, byTag] of Object.entries(counts)) {
    for (const [tag, count] of Object.entries(byTag)) {
      const sample = [...new Set([...Array(SAMPLE).keys(), ...Array.from({ length: SAMPLE }, (_, k) => count - 1 - k)])].filter((n) => n >= 0 && n < count)
      const store = stores[name][tag.endsWith('t') ? 'ttl' : 'plain']
      const states = await apiSnapshot(
        store,
        sample.map((n) => `life-${tag}-${n}`),
        STEP_IDS,
      )
      const left = Object.keys(states).filter((id) => !isDeepStrictEqual(states[id], gone))
      out.push({
        what: `postgres after: ${name}, lifecycle ${tag}: ${sample.length} of ${count} executions sampled, all disposed`,
        ok: count > 0 && left.length === 0,
        detail: count === 0 ? 'no execution ran' : left.length ? `state left in ${left.slice(0, 5).join(', ')}` : undefined,
      })
    }
  }
  return out
}
