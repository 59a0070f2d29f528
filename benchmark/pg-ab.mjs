// A/B of two builds of the Postgres store, with the pg reference, in one process against
// one throwaway PostgreSQL (pg_stat_statements loaded): the workflow lifecycle in rounds,
// the stores taking turns in every round (order reversed every other round), so that the
// machine's swings (the WAL flush, other processes) fall on all of them alike. Prints each
// store's median executions a second, the median of the per-round ratios, and the server's
// figures per statement (calls, mean µs, WAL records and bytes per call).
//
//   node benchmark/pg-ab.mjs <checkoutA> <checkoutB> [rounds=15] [inFlight=1]
//
// Each checkout is a directory with a built addon (`index.js` loads its own .node), e.g. a
// clone at the commit before a change. `PG_SETTINGS="synchronous_commit=off"` (space
// separated `name=value`) passes server settings, to see the time without the WAL flush.
import { createRequire } from 'node:module'
import { loadavg } from 'node:os'
import { join, resolve } from 'node:path'
import { startPostgresServer } from '../__test__/helpers/postgres-server.mjs'
import { makeValue } from './lib/workloads.mjs'
import { openPgReference } from './pg-store.mjs'

const [dirA, dirB] = process.argv.slice(2, 4).map((dir) => dir && resolve(dir))
if (!dirA || !dirB) {
  console.error('usage: node benchmark/pg-ab.mjs <checkoutA> <checkoutB> [rounds] [inFlight]')
  process.exit(2)
}
const ROUNDS = Number(process.argv[4] ?? 15)
const IN_FLIGHT = Number(process.argv[5] ?? 1)
const PER_ROUND = IN_FLIGHT === 1 ? 10 : IN_FLIGHT * 2
const TTL = 60_000
const value = makeValue(1024)

const load = (dir) => createRequire(join(dir, 'index.js'))(join(dir, 'index.js')).createPostgresStore
const settings = (process.env.PG_SETTINGS ?? '').split(' ').filter(Boolean)
const server = await startPostgresServer({ settings: ['shared_preload_libraries=pg_stat_statements', ...settings] })
server.sql('CREATE EXTENSION pg_stat_statements')
const reference = await openPgReference(server.url)
const stores = { pg: { plain: reference.store({ prefix: 'r:' }), ttl: reference.store({ prefix: 'r:', ttl: TTL }) } }
for (const [name, dir] of [
  ['A', dirA],
  ['B', dirB],
]) {
  const create = load(dir)
  stores[name] = { plain: create(server.url, { prefix: `${name}:` }), ttl: create(server.url, { prefix: `${name}:`, ttl: TTL }) }
}

let next = 0
/** The 44-call lifecycle of `npm run bench` (workloads.mjs), without its checks. */
async function lifecycle(store) {
  const id = `life-${next++}`
  await store.beginExecution(id)
  await store.getExecutionTaskResults(id)
  for (let s = 0; s < 10; s++) {
    const task = `step-${s}`
    await store.getExecutionTaskResult(id, task)
    await store.isExecutionTaskInProgress(id, task)
    await store.beginExecutionTask(id, task)
    await store.commitExecutionTaskResult(id, task, value)
  }
  await store.isExecutionInProgress(id)
  await store.disposeExecution(id)
}

async function run(store, count) {
  let left = count
  const worker = async () => {
    while (left-- > 0) await lifecycle(store)
  }
  await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, count) }, worker))
}

const median = (values) => [...values].sort((a, b) => a - b)[values.length >> 1]
const names = Object.keys(stores)
for (const name of names) for (const kind of ['plain', 'ttl']) await run(stores[name][kind], PER_ROUND * 2)
server.sql('SELECT pg_stat_statements_reset()')
const rates = { plain: {}, ttl: {} }
for (let round = 0; round < ROUNDS; round++) {
  for (const kind of ['plain', 'ttl']) {
    for (const name of round % 2 ? [...names].reverse() : names) {
      const started = process.hrtime.bigint()
      await run(stores[name][kind], PER_ROUND)
      ;(rates[kind][name] ??= []).push(PER_ROUND / (Number(process.hrtime.bigint() - started) / 1e9))
    }
  }
}

console.log(`${IN_FLIGHT} in flight, ${ROUNDS} rounds of ${PER_ROUND} lifecycles, load average ${loadavg().map((x) => x.toFixed(1))}`)
for (const kind of ['plain', 'ttl']) {
  const r = rates[kind]
  const ratio = (x, y) => median(r[x].map((v, i) => v / r[y][i])).toFixed(2)
  const perStore = names.map((name) => `${name} ${median(r[name]).toFixed(1)}`).join(', ')
  console.log(`${kind.padEnd(5)} exec/s ${perStore} | median per-round ratio A÷pg ${ratio('A', 'pg')}, B÷pg ${ratio('B', 'pg')}, B÷A ${ratio('B', 'A')}`)
}
console.log('\ncalls | mean µs | WAL records/call | WAL bytes/call | statement (pg and A/B share a line when the text is the same)')
console.log(
  server.sql(`SELECT calls || ' | ' || round((total_exec_time * 1000 / calls)::numeric, 1) || ' | ' || round(wal_records::numeric / calls, 2)
      || ' | ' || round(wal_bytes::numeric / calls) || ' | ' || left(regexp_replace(query, '\\s+', ' ', 'g'), 140)
    FROM pg_stat_statements WHERE calls >= ${ROUNDS} AND query NOT ILIKE '%pg_stat%' ORDER BY query`),
)
for (const name of ['A', 'B']) await Promise.all([stores[name].plain.close(), stores[name].ttl.close()])
await reference.close()
await server.stop()
