// The measuring of the sections that compare durastate's stores with a reference in the
// same run (embedded: better-sqlite3; postgres: node-postgres): the workflow lifecycle and
// KV rows, and the check that every lifecycle execution measured was disposed.
import { isDeepStrictEqual } from 'node:util'
import { apiSnapshot } from './check.mjs'
import { kvGetOp, kvSetOp } from './kv-workloads.mjs'
import { drive } from './measure.mjs'
import { LIFECYCLE_CALLS, LIFECYCLE_STEPS, lifecycleOp } from './workloads.mjs'

const STEP_IDS = Array.from({ length: LIFECYCLE_STEPS }, (_, s) => `step-${s}`)
const SAMPLE = 16 // lifecycle executions checked at each end of a run

/**
 * Lifecycle executions/s, 1 and 64 in flight, with and without ttl, of `stores[name]`
 * ({ plain, ttl }) for each name of `names`; counts executions run per store and tag.
 * `section` names the section in logs, `idPrefix` its row ids.
 */
export async function measureLifecycle({ config, log, measureFigure, timeBoxed, row }, { section, idPrefix, names }, stores, value) {
  const rows = []
  const counts = {}
  for (const concurrency of [1, 64]) {
    for (const withTtl of [false, true]) {
      const tag = `${concurrency}${withTtl ? 't' : ''}`
      const label = `workflow lifecycle (${LIFECYCLE_CALLS} calls, 1 KiB results), ${concurrency} in flight${withTtl ? ', ttl' : ''}`
      log(`${section}: ${label}`)
      const entries = names.map((name) => {
        const op = lifecycleOp(stores[name][withTtl ? 'ttl' : 'plain'], tag, value)
        const counted = (counts[name] ??= {})
        counted[tag] = 0
        return { name, op: () => (counted[tag]++, op()) }
      })
      const warm = (op) => drive(op, { concurrency, maxMs: config.warmMs * 2 })
      const cell = await measureFigure(`${section} ${label}`, entries, warm, timeBoxed(concurrency, config.lifecycleRoundMs))
      rows.push({ ...row(`${idPrefix}-life-${tag}`, label, 'exec/s', 'higher', cell, (m) => m.opsPerSec), kind: 'lifecycle', concurrency })
    }
  }
  return { rows, counts }
}

/** KV get (hit) and set (overwrite) of 1 KiB values, 1 and 64 in flight, on `kvs[name]` for each of `names`. */
export async function measureKv({ config, log, measureFigure, timeBoxed, warmFor, row }, { section, idPrefix, names }, kvs, value) {
  const rows = []
  const workloads = [
    { id: 'get', label: 'KV get (hit), 1 KiB', op: (kv) => kvGetOp(kv) },
    { id: 'set', label: 'KV set (overwrite), 1 KiB', op: (kv) => kvSetOp(kv, value) },
  ]
  for (const { id, label, op } of workloads) {
    for (const concurrency of [1, 64]) {
      log(`${section}: ${label}, ${concurrency} in flight`)
      const entries = names.map((name) => ({ name, op: op(kvs[name]) }))
      const cell = await measureFigure(`${section} ${label} @${concurrency}`, entries, warmFor(concurrency), timeBoxed(concurrency, config.roundMs))
      rows.push({
        ...row(`${idPrefix}-kv-${id}-${concurrency}`, `${label}, ${concurrency} in flight`, 'ops/s', 'higher', cell, (m) => m.opsPerSec),
        kind: 'kv',
        concurrency,
      })
    }
  }
  return rows
}

/** After the run every execution was disposed: the first and last SAMPLE of each store and tag must read as never begun. */
export async function lifecycleLeftovers(section, stores, counts) {
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
        what: `${section} after: ${name}, lifecycle ${tag}: ${sample.length} of ${count} executions sampled, all disposed`,
        ok: count > 0 && left.length === 0,
        detail: count === 0 ? 'no execution ran' : left.length ? `state left in ${left.slice(0, 5).join(', ')}` : undefined,
      })
    }
  }
  return out
}
