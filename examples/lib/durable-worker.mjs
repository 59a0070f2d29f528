// A small durable-execution worker that calls the store exactly as the worker library
// does (see the WorkerStore contract): a workflow is a function of steps; each step's
// result is stored once and served from the store on every later delivery.
//
// Deliveries: an execution message runs the function from the top until it reaches a
// step that has no result yet; that step is begun and queued as its own message. A step
// message runs that step (entering its parent steps, whose finished children are served
// from the store), commits its result and queues its parent again. When the function
// returns, the execution is disposed.

/** Thrown to stop a delivery at a step that is not done yet. */
class Suspend {
  constructor(reason) {
    this.reason = reason
  }
}

export const EMPTY_EXECUTION_RESULT = '<empty_execution_result>'

/**
 * Handles one message. `enqueue(message)` queues follow-up work; `log(event)` records
 * what happened to each step (`{ taskId, what, ms }`). Returns the workflow's result once it
 * finishes, else `undefined`.
 */
export async function deliver({ store, workflow, message, enqueue, log }) {
  const { executionId, input, taskId: target } = message
  if (message.isNew) {
    await store.beginExecution(executionId)
    await store.getExecutionTaskResults(executionId)
  }
  if (!(await store.isExecutionInProgress(executionId))) {
    log({ what: 'finished or expired: nothing to do' })
    return
  }
  const follow = (m) => enqueue({ executionId, input, ...m })
  const ctx = stepContext({ store, executionId, target, follow, log, parent: null })
  try {
    const result = await workflow(input, ctx)
    await store.disposeExecution(executionId)
    log({ what: 'disposed' })
    return result
  } catch (err) {
    if (err instanceof Suspend) return
    throw err
  }
}

function stepContext({ store, executionId, target, follow, log, parent }) {
  return {
    /** Runs `fn` once per execution; later deliveries get its stored result. */
    async step(name, fn) {
      const taskId = parent ? `${parent}:${name}` : name
      const stored = await store.getExecutionTaskResult(executionId, taskId)
      if (stored !== undefined) {
        log({ taskId, what: 'memoised' })
        return stored === EMPTY_EXECUTION_RESULT ? undefined : stored
      }
      const child = stepContext({ store, executionId, target, follow, log, parent: taskId })
      if (taskId === target) {
        const started = performance.now()
        const value = await fn(child)
        await store.commitExecutionTaskResult(executionId, taskId, value === undefined ? EMPTY_EXECUTION_RESULT : value)
        log({ taskId, what: 'ran', ms: performance.now() - started })
        follow(parent ? { taskId: parent } : {})
        throw new Suspend('step done')
      }
      if (target?.startsWith(`${taskId}:`)) return fn(child)
      if (await store.isExecutionTaskInProgress(executionId, taskId)) {
        log({ taskId, what: 'in progress elsewhere' })
        throw new Suspend('step in progress')
      }
      await store.beginExecutionTask(executionId, taskId)
      log({ taskId, what: 'begun' })
      follow({ taskId })
      throw new Suspend('step begun')
    },
  }
}
