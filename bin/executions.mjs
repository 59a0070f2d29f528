// Reading and repairing executions, for `durastate inspect`, `reset`, `dispose` and `ui`,
// through the backend's own listing and the inspector's two repair tools (the store
// operations scanExecutions, execution, resetSteps and dispose): no key layout is
// derived here.

const SCAN_COUNT = 1000
const CALLS_IN_FLIGHT = 1000

/** `fn` over every item, at most CALLS_IN_FLIGHT at a time. */
async function mapInBatches(items, fn) {
  const results = []
  for (let i = 0; i < items.length; i += CALLS_IN_FLIGHT) {
    results.push(...(await Promise.all(items.slice(i, i + CALLS_IN_FLIGHT).map(fn))))
  }
  return results
}

function toMap(entries) {
  const fields = new Map()
  for (let i = 0; i < entries.length; i += 2) fields.set(entries[i], entries[i + 1])
  return fields
}

/** One execution, as the backend holds it, or null when nothing is stored under `id`. */
export async function readExecution(inspector, prefix, id) {
  const found = await inspector.execution(prefix + id)
  const transactions = toMap(found.claims)
  const results = toMap(found.results)
  const inProgress = found.marker === 'true'
  if (!inProgress && transactions.size === 0 && results.size === 0) return null
  return {
    id,
    inProgress,
    markerTtl: found.markerTtl,
    transactions,
    transactionsTtl: found.claimsTtl,
    results,
    resultsTtl: found.resultsTtl,
  }
}

/**
 * The ids of the executions under `prefix`, sorted; at most `max` (then `truncated`),
 * those containing `search` only when given.
 */
export async function listExecutionIds(inspector, prefix, { max = Infinity, search } = {}) {
  const ids = new Set()
  let cursor = '0'
  let truncated = false
  do {
    const [next, ...keys] = await inspector.scanExecutions(cursor, prefix, SCAN_COUNT)
    for (const key of keys) {
      if (key.length <= prefix.length) continue
      const id = key.slice(prefix.length)
      if (search && !id.includes(search)) continue
      if (ids.size >= max && !ids.has(id)) {
        truncated = true
        break
      }
      ids.add(id)
    }
    cursor = next
  } while (cursor !== '0' && !truncated)
  return { ids: [...ids].sort(), truncated }
}

/** The executions `ids` that hold anything, read in batches. */
export async function readExecutions(inspector, prefix, ids) {
  const executions = await mapInBatches(ids, (id) => readExecution(inspector, prefix, id))
  return executions.filter((execution) => execution !== null)
}

export async function listExecutions(inspector, prefix) {
  const { ids } = await listExecutionIds(inspector, prefix)
  return (await readExecutions(inspector, prefix, ids)).map(summarize)
}

export function summarize(execution) {
  let resultBytes = 0
  for (const json of execution.results.values()) resultBytes += Buffer.byteLength(json)
  return {
    id: execution.id,
    inProgress: execution.inProgress,
    stepsInProgress: execution.transactions.size,
    stepsDone: execution.results.size,
    resultBytes,
    expiresIn: execution.inProgress ? ttlOrNull(execution.markerTtl) : null,
  }
}

/** One execution with its steps, finished or in progress, sorted by id (nested steps follow their parent). */
export function describeExecution(execution) {
  const ids = new Set([...execution.results.keys(), ...execution.transactions.keys()])
  return {
    id: execution.id,
    inProgress: execution.inProgress,
    expiresIn: execution.inProgress ? ttlOrNull(execution.markerTtl) : null,
    steps: [...ids].sort().map((id) => describeStep(execution, id)),
  }
}

function describeStep({ results, resultsTtl, transactions, transactionsTtl }, id) {
  const json = results.get(id)
  if (json === undefined) return { id, state: 'in progress', size: null, expiresIn: ttlOrNull(transactionsTtl), json: null }
  const state = transactions.has(id) ? 'done, begun again' : 'done'
  return { id, state, size: Buffer.byteLength(json), expiresIn: ttlOrNull(resultsTtl), json }
}

/** A PTTL reply as ms left, or null for a key that never expires. */
export function ttlOrNull(pttl) {
  return pttl === -1 ? null : pttl
}

/** The steps a reset of `taskId` removes: the step and its nested steps (`taskId:...`). */
export function stepsUnder(execution, taskId) {
  const ids = new Set([...execution.results.keys(), ...execution.transactions.keys()])
  return [...ids].filter((id) => id === taskId || id.startsWith(`${taskId}:`)).sort()
}

/**
 * Resets step `taskId` of execution `id` and its nested steps: their results and
 * in-progress marks go, so the next delivery runs them again. Returns the steps reset
 * (none when the execution or the step is not there).
 */
export async function resetStep(inspector, prefix, id, taskId) {
  const execution = await readExecution(inspector, prefix, id)
  if (execution === null) return { found: false, steps: [] }
  const steps = stepsUnder(execution, taskId)
  if (steps.length > 0) await inspector.resetSteps(prefix + id, steps)
  return { found: true, steps }
}

/** Removes execution `id`: its marker, marks and results. Returns whether it was there. */
export async function disposeExecution(inspector, prefix, id) {
  const execution = await readExecution(inspector, prefix, id)
  if (execution === null) return false
  await inspector.dispose(prefix + id)
  return true
}
