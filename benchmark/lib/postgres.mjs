// The Postgres section of `npm run bench`: durastate's Postgres backend against the
// WorkerStore and KV written the obvious way on node-postgres with a Pool
// (../pg-store.mjs), on one throwaway PostgreSQL started for the run (the tests' helper:
// initdb into a temp dir, default `fsync` and `synchronous_commit`). Figures: the workflow
// lifecycle (1 and 64 in flight, with and without ttl) and KV get / set (1 and 64 in
// flight), as ratios to `pg` in the same run, next to their targets. Same-state checks
// before measuring (the check workload, claims included) and after (every lifecycle
// execution sampled is disposed).
import { createRequire } from 'node:module'
import { startPostgresServer } from '../../__test__/helpers/postgres-server.mjs'
import { openPgReference } from '../pg-store.mjs'
import { checkSameState } from './check.mjs'
import { lifecycleLeftovers, measureKv, measureLifecycle } from './compare.mjs'
import { seedKv } from './kv-workloads.mjs'

const require = createRequire(import.meta.url)
const { createKvStore, createPostgresStore } = require('../../index.js')

export const REFERENCE = 'pg'
const STORES = [REFERENCE, 'postgres']
const SECTION = { section: 'postgres', idPrefix: 'pg', names: STORES }

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
    const lifecycle = await measureLifecycle(figures, SECTION, stores, value)
    const kvs = {
      [REFERENCE]: reference.kv('bench:kv:'),
      postgres: track(createKvStore(server.url, { mounts: { bench: { prefix: 'bench:kv:' } } })).mount('bench'),
    }
    for (const kv of Object.values(kvs)) await seedKv(kv, value)
    const kvRows = await measureKv(figures, SECTION, kvs, value)
    log('postgres: correctness check (after)')
    check.push(...(await lifecycleLeftovers('postgres', stores, lifecycle.counts)))
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
