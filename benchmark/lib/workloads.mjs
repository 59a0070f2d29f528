// The workloads every store runs: JSON values of fixed encoded sizes, hit data sets for
// gets, and one op per figure (get hit, commit, workflow lifecycle, 1 MiB round trip).

/**
 * A JSON-able value whose `JSON.stringify` is exactly `bytes` long (bytes >= 40):
 * a few small records (realistic parse work), padded with a string field.
 */
export function makeValue(bytes) {
  const value = { kind: 'bench', records: [], pad: '' }
  const record = (i) => ({ id: i, name: `item-${i}`, ok: i % 2 === 0, score: i / 8 })
  const maxRecords = bytes <= 4096 ? 4 : Infinity
  // Track the encoded length as records are added (one comma each after the first).
  let length = JSON.stringify(value).length
  for (let i = 0; i < maxRecords; i++) {
    const add = JSON.stringify(record(i)).length + (i ? 1 : 0)
    if (length + add >= bytes - 8) break
    value.records.push(record(i))
    length += add
  }
  value.pad = 'x'.repeat(Math.max(0, bytes - length))
  const encoded = JSON.stringify(value).length
  if (encoded !== bytes) throw new Error(`makeValue(${bytes}) made ${encoded} bytes`)
  return value
}

/** A human label for a byte size: 100 B, 1 KiB, 1 MiB. */
export function sizeLabel(bytes) {
  if (bytes >= 1 << 20) return `${bytes / (1 << 20)} MiB`
  if (bytes >= 1024) return `${bytes / 1024} KiB`
  return `${bytes} B`
}

const GET_EXECUTIONS = 64
const GET_TASKS = 16

/** Commits the hit data set that `getOp` reads: 64 executions x 16 steps of `value`. */
export async function seedGetData(store, tag, value) {
  const writes = []
  for (let e = 0; e < GET_EXECUTIONS; e++) {
    for (let t = 0; t < GET_TASKS; t++) writes.push(store.commitExecutionTaskResult(`get-${tag}-e${e}`, `t${t}`, value))
  }
  await Promise.all(writes)
}

/** getExecutionTaskResult on the seeded data set; a miss throws (it must be a hit). */
export function getOp(store, tag) {
  return async (i) => {
    const result = await store.getExecutionTaskResult(`get-${tag}-e${i % GET_EXECUTIONS}`, `t${(i >> 6) % GET_TASKS}`)
    if (result === undefined) throw new Error(`expected a hit on get-${tag}`)
  }
}

/** commitExecutionTaskResult of `value`, over 256 executions x 16 steps (overwriting). */
export function commitOp(store, tag, value) {
  return (i) => store.commitExecutionTaskResult(`commit-${tag}-e${i & 255}`, `t${(i >> 8) & 15}`, value)
}

export const LIFECYCLE_STEPS = 10
export const LIFECYCLE_CALLS = 2 + LIFECYCLE_STEPS * 4 + 2

/**
 * One workflow execution, in the worker library's call order: beginExecution,
 * getExecutionTaskResults, then per step getExecutionTaskResult (miss),
 * isExecutionTaskInProgress, beginExecutionTask, commitExecutionTaskResult (`value`),
 * and finally isExecutionInProgress + disposeExecution. Every answer is checked.
 */
export function lifecycleOp(store, tag, value) {
  let n = 0
  return async () => {
    const id = `life-${tag}-${n++}`
    await store.beginExecution(id)
    const cached = await store.getExecutionTaskResults(id)
    if (Object.keys(cached).length) throw new Error(`new execution ${id} has results`)
    for (let s = 0; s < LIFECYCLE_STEPS; s++) {
      const task = `step-${s}`
      if ((await store.getExecutionTaskResult(id, task)) !== undefined) throw new Error(`${id}/${task}: unexpected hit`)
      if (await store.isExecutionTaskInProgress(id, task)) throw new Error(`${id}/${task}: unexpectedly in progress`)
      await store.beginExecutionTask(id, task)
      await store.commitExecutionTaskResult(id, task, value)
    }
    if (!(await store.isExecutionInProgress(id))) throw new Error(`${id}: not in progress before dispose`)
    await store.disposeExecution(id)
  }
}

/** Commit of a large value, then a get of it back (one op = both calls). */
export function bigRoundTripOp(store, tag, value) {
  return async (i) => {
    const id = `big-${tag}-e${i & 7}`
    await store.commitExecutionTaskResult(id, 'blob', value)
    const back = await store.getExecutionTaskResult(id, 'blob')
    if (back === undefined || back.pad.length !== value.pad.length) throw new Error(`${id}: 1 MiB value did not come back`)
  }
}
