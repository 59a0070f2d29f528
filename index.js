'use strict'
// The public JS surface: a thin layer over the native binding. It turns values into
// JSON text and back (V8's JSON is fast), and native rejections into DurastateError
// with a stable `code`. Everything else happens in Rust.

const native = require('./binding.js')

/** The string the worker library stores for a step that returned `undefined`. */
const EMPTY_EXECUTION_RESULT = '<empty_execution_result>'
const EMPTY_RESULT_JSON = JSON.stringify(EMPTY_EXECUTION_RESULT)
const CODED_MESSAGE = /^\[([A-Z_]+)\] ([\s\S]*)$/

class DurastateError extends Error {
  constructor(code, message, options) {
    super(message, options)
    this.name = 'DurastateError'
    this.code = code
  }
}

function toDurastateError(err) {
  if (err instanceof DurastateError) return err
  const message = err && typeof err.message === 'string' ? err.message : String(err)
  const coded = CODED_MESSAGE.exec(message)
  if (coded) return new DurastateError(coded[1], coded[2])
  if (err && (err.code === 'InvalidArg' || err.code === 'NumberExpected' || err.code === 'StringExpected' || err.code === 'ObjectExpected')) {
    return new DurastateError('INVALID_INPUT', message)
  }
  return new DurastateError('INTERNAL', message, { cause: err })
}

function requireString(name, value) {
  if (typeof value !== 'string') {
    throw new DurastateError('INVALID_INPUT', `${name} must be a string, got ${value === null ? 'null' : typeof value}`)
  }
}

function encodeResult(executionId, taskId, value) {
  if (value === undefined) return EMPTY_RESULT_JSON
  let json
  try {
    json = JSON.stringify(value)
  } catch (err) {
    throw new DurastateError('SERIALIZE', `cannot store the result of step "${taskId}" of execution "${executionId}" as JSON: ${err.message}`, { cause: err })
  }
  if (json === undefined) {
    throw new DurastateError('SERIALIZE', `cannot store the result of step "${taskId}" of execution "${executionId}" as JSON: a ${typeof value} has no JSON form`)
  }
  return json
}

/** Parses a stored result; `keyOf()` names its key, asked only when the JSON is bad. */
function decodeResult(text, keyOf, field) {
  try {
    return JSON.parse(text)
  } catch (err) {
    const raw = text.length > 200 ? `${text.slice(0, 200)}...` : text
    throw new DurastateError('CORRUPT_DATA', `stored JSON at key "${keyOf()}" field "${field}" is not valid: ${err.message}. Raw value: "${raw}"`, { cause: err })
  }
}

function decodeEntries(entries, keyOf) {
  const results = {}
  for (let i = 0; i < entries.length; i += 2) {
    results[entries[i]] = decodeResult(entries[i + 1], keyOf, entries[i])
  }
  return results
}

/** Rethrows a native rejection as a DurastateError. */
function rethrow(err) {
  throw toDurastateError(err)
}

/** A rejected promise for an error thrown before the native call (bad arguments). */
function rejected(err) {
  return Promise.reject(toDurastateError(err))
}

const toUndefined = () => undefined

/**
 * A durable WorkerStore (drop-in for @idioteque/redis's store) over Redis, SQLite or memory.
 * Made by createRedisStore, createSqliteStore, createMemoryStore or createStore.
 * Each method is one native call and one `.then`: no async function frames per call.
 */
class DurableWorkerStore {
  #native

  constructor(nativeStore) {
    if (!(nativeStore instanceof native.NativeWorkerStore)) {
      throw new DurastateError('INVALID_INPUT', 'use createRedisStore, createSqliteStore, createMemoryStore or createStore to make a store')
    }
    this.#native = nativeStore
  }

  beginExecution(executionId) {
    try {
      requireString('executionId', executionId)
      return this.#native.beginExecution(executionId).then(toUndefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  getExecutionTaskResults(executionId) {
    try {
      requireString('executionId', executionId)
      return this.#native.getExecutionTaskResults(executionId).then((results) => {
        if (typeof results === 'string') return JSON.parse(results)
        return decodeEntries(results, () => this.#native.resultsKey(executionId))
      }, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  getExecutionTaskResult(executionId, taskId) {
    try {
      requireString('executionId', executionId)
      requireString('taskId', taskId)
      return this.#native.getExecutionTaskResult(executionId, taskId).then((text) => {
        if (text === null || text === undefined) return undefined
        return decodeResult(text, () => this.#native.resultsKey(executionId), taskId)
      }, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  beginExecutionTask(executionId, taskId) {
    try {
      requireString('executionId', executionId)
      requireString('taskId', taskId)
      return this.#native.beginExecutionTask(executionId, taskId).then(toUndefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  tryBeginExecutionTask(executionId, taskId) {
    try {
      requireString('executionId', executionId)
      requireString('taskId', taskId)
      return this.#native.tryBeginExecutionTask(executionId, taskId).then(undefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  commitExecutionTaskResult(executionId, taskId, value) {
    try {
      requireString('executionId', executionId)
      requireString('taskId', taskId)
      const json = encodeResult(executionId, taskId, value)
      return this.#native.commitExecutionTaskResult(executionId, taskId, json).then(toUndefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  isExecutionInProgress(executionId) {
    try {
      requireString('executionId', executionId)
      return this.#native.isExecutionInProgress(executionId).then(undefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  isExecutionTaskInProgress(executionId, taskId) {
    try {
      requireString('executionId', executionId)
      requireString('taskId', taskId)
      return this.#native.isExecutionTaskInProgress(executionId, taskId).then(undefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  disposeExecution(executionId) {
    try {
      requireString('executionId', executionId)
      return this.#native.disposeExecution(executionId).then(toUndefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  async close() {
    this.#native.close()
  }

  get closed() {
    return this.#native.closed
  }
}

function wrap(create) {
  try {
    return new DurableWorkerStore(create())
  } catch (err) {
    throw toDurastateError(err)
  }
}

function createRedisStore(target, options) {
  return wrap(() => native.createRedisStore(target ?? undefined, options ?? undefined))
}

function createSqliteStore(path, options) {
  return wrap(() => native.createSqliteStore(path ?? undefined, options ?? undefined))
}

function createMemoryStore(options) {
  return wrap(() => native.createMemoryStore(options ?? undefined))
}

function createStore(url, options) {
  return wrap(() => native.createStore(url ?? undefined, options ?? undefined))
}

exports.createRedisStore = createRedisStore
exports.createSqliteStore = createSqliteStore
exports.createMemoryStore = createMemoryStore
exports.createStore = createStore
exports.DurableWorkerStore = DurableWorkerStore
exports.DurastateError = DurastateError
exports.EMPTY_EXECUTION_RESULT = EMPTY_EXECUTION_RESULT
