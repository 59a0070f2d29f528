// Correctness check: every store runs the same deterministic workload; their states must
// match, read back through the WorkerStore API and, for the Redis stores, as raw Redis
// keys/types/fields/values/TTL-presence (read with a plain ioredis client, prefix stripped).
import { isDeepStrictEqual } from 'node:util'

const EXECUTIONS = ['c0', 'c1', 'c2', 'c3', 'c4', 'c5']
const TASKS = ['a', 'b', 'c', 'a:x', 'x', 'y', 'z', 'w', 'v', 't', 'u', 'missing']

const VALUES = {
  object: { n: 1, s: 'héllo ✓ 😀 "quoted" back\\slash\nnew\tline \u0001', nested: { arr: [1, 2.5, -3e-7, null, true] } },
  array: [[], {}, '', 0, false, null],
  sentinel: '<empty_execution_result>',
  big: 'y'.repeat(5000),
}

/** The deterministic workload: begun/disposed executions, steps in progress, overwrites, odd values. */
export async function runCheckWorkload(store) {
  // c0: a normal execution with one step left in progress and a nested step id.
  await store.beginExecution('c0')
  for (const t of ['a', 'b', 'c', 'a:x']) await store.beginExecutionTask('c0', t)
  await store.commitExecutionTaskResult('c0', 'a', VALUES.object)
  await store.commitExecutionTaskResult('c0', 'b', VALUES.array)
  await store.commitExecutionTaskResult('c0', 'a:x', 'ünïcødé')
  // c1: scalar results, committed without a begin.
  await store.beginExecution('c1')
  await store.commitExecutionTaskResult('c1', 'x', null)
  await store.commitExecutionTaskResult('c1', 'y', VALUES.sentinel)
  await store.commitExecutionTaskResult('c1', 'z', 0)
  await store.commitExecutionTaskResult('c1', 'w', false)
  await store.commitExecutionTaskResult('c1', 'v', '')
  // c2: disposed after work: nothing may remain.
  await store.beginExecution('c2')
  await store.beginExecutionTask('c2', 't')
  await store.commitExecutionTaskResult('c2', 't', VALUES.big)
  await store.disposeExecution('c2')
  // c3: never begun; one step in progress, one committed.
  await store.beginExecutionTask('c3', 't')
  await store.commitExecutionTaskResult('c3', 'u', VALUES.big)
  // c4: a step committed twice (overwrite), then begun again (in progress and with a result).
  await store.beginExecution('c4')
  await store.beginExecutionTask('c4', 'a')
  await store.commitExecutionTaskResult('c4', 'a', { first: true })
  await store.commitExecutionTaskResult('c4', 'a', { second: [1, 2, 3] })
  await store.beginExecutionTask('c4', 'a')
  // c5: dispose of an unknown id is a no-op.
  await store.disposeExecution('c5')
}

const CLAIMS = 8

/**
 * For checkSameState's `claims` (every contender has tryBeginExecutionTask): concurrent claims
 * of one step, a claim of a claimed step, a claim after commit, and a step that returned
 * `undefined` (read back as the sentinel string). Ends with a dispose.
 */
export async function claimSnapshot(store) {
  const id = 'claims'
  const first = await Promise.all(Array.from({ length: CLAIMS }, () => store.tryBeginExecutionTask(id, 'a')))
  const again = await store.tryBeginExecutionTask(id, 'a')
  await store.commitExecutionTaskResult(id, 'a', undefined)
  const afterCommit = await store.tryBeginExecutionTask(id, 'a')
  const state = [await store.isExecutionTaskInProgress(id, 'a'), canonical(await store.getExecutionTaskResult(id, 'a'))]
  const all = canonical(await store.getExecutionTaskResults(id))
  await store.disposeExecution(id)
  const disposed = [await store.isExecutionTaskInProgress(id, 'a'), canonical(await store.getExecutionTaskResults(id))]
  return { winners: first.filter((won) => won === true).length, again, afterCommit, state, all, disposed }
}

/** JSON text with object keys sorted, so key order (Redis vs SQLite) does not matter. */
function canonical(value) {
  if (value === undefined) return '"<undefined>"'
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`
  if (value && typeof value === 'object') {
    return `{${Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`)
      .join(',')}}`
  }
  return JSON.stringify(value)
}

/** The state as the WorkerStore API reports it, for every execution and step of the workload (or those given). */
export async function apiSnapshot(store, executions = EXECUTIONS, taskIds = TASKS) {
  const snapshot = {}
  for (const id of executions) {
    const tasks = {}
    for (const t of taskIds) {
      tasks[t] = [canonical(await store.getExecutionTaskResult(id, t)), await store.isExecutionTaskInProgress(id, t)]
    }
    snapshot[id] = {
      inProgress: await store.isExecutionInProgress(id),
      results: canonical(await store.getExecutionTaskResults(id)),
      tasks,
    }
  }
  return snapshot
}

/** The raw Redis state under `prefix`: key (prefix stripped) -> type, content, has-TTL. */
export async function rawSnapshot(admin, prefix) {
  const keys = []
  let cursor = '0'
  do {
    const [next, batch] = await admin.scan(cursor, 'MATCH', `${prefix.replace(/[*?[\]\\]/g, '\\$&')}*`, 'COUNT', 1000)
    cursor = next
    keys.push(...batch)
  } while (cursor !== '0')
  const snapshot = {}
  for (const key of keys.sort()) {
    const type = await admin.type(key)
    const content = type === 'string' ? await admin.get(key) : type === 'hash' ? sortedEntries(await admin.hgetall(key)) : `<${type}>`
    snapshot[key.slice(prefix.length)] = { type, content, ttl: (await admin.pttl(key)) > 0 }
  }
  return snapshot
}

function sortedEntries(hash) {
  return Object.entries(hash).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
}

/** The first difference between two snapshots, as "path: expected X, got Y", or undefined when equal. */
export function firstDifference(expected, actual, path = '') {
  if (isDeepStrictEqual(expected, actual)) return undefined
  const isObject = (v) => v !== null && typeof v === 'object'
  if (isObject(expected) && isObject(actual)) {
    const keys = [...new Set([...Object.keys(expected), ...Object.keys(actual)])].sort()
    for (const key of keys) {
      const found = firstDifference(expected[key], actual[key], `${path}/${key}`)
      if (found) return found
    }
  }
  const show = (v) => (v === undefined ? '(absent)' : JSON.stringify(v).slice(0, 200))
  return `${path || '/'}: expected ${show(expected)}, got ${show(actual)}`
}

/**
 * Runs the workload on every contender (each under its own prefix `check:<tag>:<name>:`) and
 * compares with the baseline contender (ioredis): API snapshots for all, raw snapshots for
 * the Redis ones, plus cross-reads (ours reading the baseline's keys and the other way round);
 * with `claims`, also claimSnapshot. Returns one { what, ok, detail } per comparison.
 */
export async function checkSameState({ contenders, admin, baseline = 'ioredis', ours = 'ours', options, tag, claims = false }) {
  const seen = {}
  for (const c of contenders) {
    const prefix = `check:${tag}:${c.name}:`
    const store = c.open({ ...options, prefix })
    await runCheckWorkload(store)
    seen[c.name] = { prefix, api: await apiSnapshot(store), raw: c.redis ? await rawSnapshot(admin, prefix) : undefined }
    if (claims) seen[c.name].claims = await claimSnapshot(store)
  }
  const base = seen[baseline]
  const outcomes = []
  const compare = (what, expected, actual) => {
    const detail = firstDifference(expected, actual)
    outcomes.push({ what, ok: !detail, detail })
  }
  if (base.raw && !Object.keys(base.raw).length) outcomes.push({ what: `${baseline} wrote no keys`, ok: false, detail: 'empty' })
  if (base.claims) compare(`${baseline} tryBeginExecutionTask: one winner of ${CLAIMS} concurrent claims`, 1, base.claims.winners)
  for (const c of contenders) {
    if (c.name === baseline) continue
    compare(`${c.name} API state = ${baseline}`, base.api, seen[c.name].api)
    if (c.redis) compare(`${c.name} raw Redis keys = ${baseline}`, base.raw, seen[c.name].raw)
    if (base.claims) compare(`${c.name} claims and undefined result = ${baseline}`, base.claims, seen[c.name].claims)
  }
  const byName = Object.fromEntries(contenders.map((c) => [c.name, c]))
  if (byName[ours] && byName[baseline]) {
    compare(`${ours} reads ${baseline}'s keys`, base.api, await apiSnapshot(byName[ours].open({ ...options, prefix: base.prefix })))
    compare(`${baseline} reads ${ours}'s keys`, base.api, await apiSnapshot(byName[baseline].open({ ...options, prefix: seen[ours].prefix })))
  }
  return outcomes
}

const KV_ENTRIES = { ...VALUES, zero: 0, no: false, nothing: null, empty: '', text: 'ünïcødé' }

/**
 * The KV calls every KV contender must answer alike (keys under `check:<tag>:`): JSON values
 * of every kind, an overwrite, a write with a ttl, a missing key. Returns what `get` reads
 * back; with `write: false`, only reads back what an earlier call wrote.
 */
export async function kvCheckSnapshot(kv, tag, { write = true } = {}) {
  const key = (k) => `check:${tag}:${k}`
  if (write) {
    for (const [k, v] of Object.entries(KV_ENTRIES)) await kv.set(key(k), v)
    await kv.set(key('twice'), { first: true })
    await kv.set(key('twice'), { second: [1, 2, 3] })
    await kv.set(key('ttl'), 'expires in an hour', { ttl: 3_600_000 })
  }
  return kvSnapshot(kv, [...Object.keys(KV_ENTRIES), 'twice', 'ttl', 'missing'].map(key))
}

/** `get` of each key, as canonical JSON text. */
export async function kvSnapshot(kv, keys) {
  const snapshot = {}
  for (const key of keys) snapshot[key] = canonical(await kv.get(key))
  return snapshot
}

/** Compares each contender's snapshot (`{ name: snapshot }`) with the baseline's: one { what, ok, detail } each. */
export function compareWithBaseline(what, snapshots, baseline) {
  return Object.entries(snapshots)
    .filter(([name]) => name !== baseline)
    .map(([name, snapshot]) => {
      const detail = firstDifference(snapshots[baseline], snapshot)
      return { what: `${name} ${what} = ${baseline}`, ok: !detail, detail }
    })
}
