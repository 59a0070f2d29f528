'use strict'
// The public JS surface: a thin layer over the native binding. It turns values into
// JSON text and back (V8's JSON is fast), and native rejections into DurastateError
// with a stable `code`. Everything else happens in Rust.

/** The string the worker library stores for a step that returned `undefined`. */
const EMPTY_EXECUTION_RESULT = '<empty_execution_result>'
const EMPTY_RESULT_JSON = JSON.stringify(EMPTY_EXECUTION_RESULT)
/** The stable codes the native layer sets as `err.code` (src/error.rs `ErrorCode`; napi's own codes are `InvalidArg` and the like). */
const NATIVE_CODES = new Set(['INVALID_INPUT', 'SERIALIZE', 'CORRUPT_DATA', 'WRONG_TYPE', 'UNAVAILABLE', 'TIMEOUT', 'AUTH', 'TLS', 'DISPOSED', 'INTERNAL', 'UNKNOWN_MOUNT', 'READ_ONLY', 'WRITE_ONLY', 'TYPE_MISMATCH', 'VALUE_TOO_LARGE', 'ENTRY_LIMIT'])

class DurastateError extends Error {
  constructor(code, message, options) {
    super(message, options)
    this.name = 'DurastateError'
    this.code = code
  }
}

const native = loadBinding()

/** The addon for this platform, or an error that names the platform and what to do. */
function loadBinding() {
  try {
    return require('./binding.js')
  } catch (err) {
    const denied = denoDenial(err)
    if (denied) {
      throw new DurastateError(
        'UNAVAILABLE',
        'Deno did not let durastate load its native addon: run with --allow-ffi --allow-read --allow-env (or -A). ' +
          `Deno said: ${denied.message}`,
        { cause: err },
      )
    }
    let packages = []
    try {
      packages = require('./package.json').napi.targets
    } catch {}
    throw new DurastateError(
      'UNAVAILABLE',
      `no durastate binary loads on ${platformName()}. Prebuilt for: ${packages.join(', ')}. ` +
        'On one of these, reinstall with optional dependencies (not --omit=optional; see npm/cli#4828); ' +
        'elsewhere, install Rust (https://rustup.rs) and run `npm rebuild durastate` to build from source.',
      { cause: err },
    )
  }
}

/** On Deno, the permission error (`err` or one of its causes) that stopped the load, if any. */
function denoDenial(err) {
  if (typeof Deno === 'undefined') return null
  for (let e = err, depth = 0; e && depth < 32; e = e.cause, depth++) {
    if (e.name === 'NotCapable' || e.name === 'PermissionDenied' || /--allow-\w+/.test(String(e.message))) return e
  }
  return null
}

/** This platform as napi-rs names binaries: linux-x64-gnu, linux-x64-musl, darwin-arm64, win32-x64-msvc. */
function platformName() {
  const { platform, arch } = process
  if (platform === 'linux') {
    let libc = 'gnu'
    try {
      process.report.excludeNetwork = true
      libc = process.report.getReport().header.glibcVersionRuntime ? 'gnu' : 'musl'
    } catch {}
    return `linux-${arch}-${libc}`
  }
  if (platform === 'win32') return `win32-${arch}-msvc`
  return `${platform}-${arch}`
}

function toDurastateError(err) {
  if (err instanceof DurastateError) return err
  const message = err && typeof err.message === 'string' ? err.message : String(err)
  if (err && NATIVE_CODES.has(err.code)) return new DurastateError(err.code, message)
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
 * A durable WorkerStore (drop-in for @idioteque/redis's store) over Redis, Postgres, SQLite
 * or memory. Made by createRedisStore, createPostgresStore, createSqliteStore, createMemoryStore
 * or createStore.
 * Each method is one native call and one `.then`: no async function frames per call.
 */
class DurableWorkerStore {
  #native

  constructor(nativeStore) {
    if (!(nativeStore instanceof native.NativeWorkerStore)) {
      throw new DurastateError('INVALID_INPUT', 'use createRedisStore, createPostgresStore, createSqliteStore, createMemoryStore or createStore to make a store')
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

function createPostgresStore(target, options) {
  return wrap(() => native.createPostgresStore(target ?? undefined, options ?? undefined))
}

function createMemoryStore(options) {
  return wrap(() => native.createMemoryStore(options ?? undefined))
}

function createStore(url, options) {
  return wrap(() => native.createStore(url ?? undefined, options ?? undefined))
}

// ---------------------------------------------------------------------------------------
// The KV store: values cross as JSON text; mounts, modes, schemas and limits live in Rust.
// ---------------------------------------------------------------------------------------

function encodeValue(value, mount, key) {
  let json
  try {
    json = JSON.stringify(value)
  } catch (err) {
    throw new DurastateError('SERIALIZE', `cannot store key "${key}" of mount '${mount}' as JSON: ${err.message}`, { cause: err })
  }
  if (json === undefined) {
    throw new DurastateError('SERIALIZE', `cannot store key "${key}" of mount '${mount}' as JSON: a ${typeof value} has no JSON form`)
  }
  return json
}

function decodeValue(text, mount, key) {
  try {
    return JSON.parse(text)
  } catch (err) {
    const raw = text.length > 200 ? `${text.slice(0, 200)}...` : text
    throw new DurastateError('CORRUPT_DATA', `stored JSON of key "${key}" in mount '${mount}' is not valid: ${err.message}. Raw value: "${raw}"`, { cause: err })
  }
}

/** Sets `out[key]`; a key named `__proto__` stays a plain property. */
function setEntry(out, key, value) {
  if (key === '__proto__') {
    Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true })
  } else {
    out[key] = value
  }
}

/** `[key, json, ...]` as an object. */
function decodePairs(pairs, mount) {
  const out = {}
  for (let i = 0; i < pairs.length; i += 2) setEntry(out, pairs[i], decodeValue(pairs[i + 1], mount, pairs[i]))
  return out
}

/** `keys` with their stored JSON as an object; `null` (missing) is left out. */
function decodeFound(keys, texts, mount) {
  const out = {}
  for (let i = 0; i < keys.length; i++) {
    if (texts[i] !== null) setEntry(out, keys[i], decodeValue(texts[i], mount, keys[i]))
  }
  return out
}

function encodeEntries(entries, mount) {
  if (entries === null || typeof entries !== 'object' || Array.isArray(entries)) {
    throw new DurastateError('INVALID_INPUT', `setMany on mount '${mount}' needs an object of entries`)
  }
  const flat = []
  for (const key of Object.keys(entries)) flat.push(key, encodeValue(entries[key], mount, key))
  return flat
}

function requireKeys(keys) {
  if (!Array.isArray(keys) || keys.some((k) => typeof k !== 'string')) {
    throw new DurastateError('INVALID_INPUT', 'keys must be an array of strings')
  }
}

function ttlOf(options) {
  if (options === undefined || options === null) return undefined
  if (typeof options !== 'object') throw new DurastateError('INVALID_INPUT', 'options must be an object such as { ttl: 60000 }')
  if (options.ttl !== undefined && typeof options.ttl !== 'number') {
    throw new DurastateError('INVALID_INPUT', `option \`ttl\` must be a number of milliseconds, got ${typeof options.ttl}`)
  }
  return options.ttl
}

/** Mount options as the native layer takes them: in order, defaults as JSON text. */
function mountSpecs(mounts, options) {
  if (mounts === undefined || mounts === null) {
    return [{ name: 'default', prefix: options.prefix ?? 'kv:', ttl: options.ttl }]
  }
  if (typeof mounts !== 'object' || Array.isArray(mounts)) {
    throw new DurastateError('INVALID_INPUT', 'option `mounts` must be an object of mount options by name')
  }
  return Object.entries(mounts).map(([name, mount]) => {
    if (mount === null || typeof mount !== 'object') {
      throw new DurastateError('INVALID_INPUT', `mount '${name}' must be an object of options`)
    }
    const { mode, prefix, schema, maxEntries, maxValueSize, ttl } = mount
    return { name, mode, prefix, maxEntries, maxValueSize, ttl, schema: schema === undefined ? undefined : schemaSpecs(name, schema) }
  })
}

function schemaSpecs(mount, schema) {
  if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) {
    throw new DurastateError('INVALID_INPUT', `mount '${mount}': schema must be an object of { type, default } by key`)
  }
  return Object.entries(schema).map(([key, entry]) => {
    if (entry === null || typeof entry !== 'object') {
      throw new DurastateError('INVALID_INPUT', `mount '${mount}': schema key "${key}" must be { type, default }`)
    }
    let defaultJson
    try {
      defaultJson = JSON.stringify(entry.default)
    } catch {
      defaultJson = undefined
    }
    return { key, type: String(entry.type), defaultJson, description: entry.description === undefined ? undefined : String(entry.description) }
  })
}

const parseJson = (text) => JSON.parse(text)

/**
 * A key-value store with mounts, access modes, schemas and limits, over Redis, SQLite or
 * memory. Made by createKvStore. Each method is one native call and one `.then`.
 */
class KvStore {
  #native
  #mountNames

  constructor(nativeStore) {
    if (!(nativeStore instanceof native.NativeKvStore)) {
      throw new DurastateError('INVALID_INPUT', 'use createKvStore to make a KV store')
    }
    this.#native = nativeStore
    this.#mountNames = new Set(parseJson(nativeStore.mounts()).map((m) => m.name))
  }

  /** Checks the mount before anything else (UNKNOWN_MOUNT, listing the mounts). */
  #requireMount(mount) {
    requireString('mount', mount)
    if (!this.#mountNames.has(mount)) this.#native.schema(mount)
  }

  get(mount, key) {
    try {
      this.#requireMount(mount)
      requireString('key', key)
      return this.#native.get(mount, key).then((text) => decodeValue(text, mount, key), rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  getOr(mount, key, fallback) {
    try {
      this.#requireMount(mount)
      requireString('key', key)
      return this.#native.getOr(mount, key).then((text) => (text === null ? fallback : decodeValue(text, mount, key)), rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  set(mount, key, value, options) {
    try {
      this.#requireMount(mount)
      requireString('key', key)
      return this.#native.set(mount, key, encodeValue(value, mount, key), ttlOf(options)).then(undefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  merge(mount, key, partial, options) {
    try {
      this.#requireMount(mount)
      requireString('key', key)
      if (partial === null || typeof partial !== 'object' || Array.isArray(partial)) {
        throw new DurastateError('INVALID_INPUT', `merge of key "${key}" (mount '${mount}') needs a plain object`)
      }
      const json = encodeValue(partial, mount, key)
      const ttl = ttlOf(options)
      return this.#native.merge(mount, key, json, ttl).then(undefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  delete(mount, key) {
    try {
      this.#requireMount(mount)
      requireString('key', key)
      return this.#native.delete(mount, key).then(undefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  has(mount, key) {
    try {
      this.#requireMount(mount)
      requireString('key', key)
      return this.#native.has(mount, key).then(undefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  keys(mount, pattern) {
    try {
      this.#requireMount(mount)
      if (pattern !== undefined) requireString('pattern', pattern)
      return this.#native.keys(mount, pattern).then(undefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  clear(mount) {
    try {
      this.#requireMount(mount)
      return this.#native.clear(mount).then(undefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  getAll(mount) {
    try {
      this.#requireMount(mount)
      return this.#native.getAll(mount).then((pairs) => decodePairs(pairs, mount), rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  getMany(mount, keys) {
    try {
      this.#requireMount(mount)
      requireKeys(keys)
      return this.#native.getMany(mount, keys).then((texts) => decodeFound(keys, texts, mount), rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  setMany(mount, entries, options) {
    try {
      this.#requireMount(mount)
      return this.#native.setMany(mount, encodeEntries(entries, mount), ttlOf(options)).then(undefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  deleteMany(mount, keys) {
    try {
      this.#requireMount(mount)
      requireKeys(keys)
      return this.#native.deleteMany(mount, keys).then(undefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  getByPrefix(mount, prefix) {
    try {
      this.#requireMount(mount)
      requireString('prefix', prefix)
      return this.#native.getByPrefix(mount, prefix).then((pairs) => decodePairs(pairs, mount), rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  schema(mount) {
    try {
      this.#requireMount(mount)
      return parseJson(this.#native.schema(mount))
    } catch (err) {
      throw toDurastateError(err)
    }
  }

  mounts() {
    return parseJson(this.#native.mounts())
  }

  mount(name) {
    this.schema(name)
    return new KvMount(this, name)
  }

  async close() {
    this.#native.close()
  }

  get closed() {
    return this.#native.closed
  }
}

/** The calls of one mount of a KvStore, without the mount argument. */
class KvMount {
  #kv

  constructor(kv, name) {
    this.#kv = kv
    this.name = name
    Object.freeze(this)
  }

  get(key) { return this.#kv.get(this.name, key) }
  getOr(key, fallback) { return this.#kv.getOr(this.name, key, fallback) }
  set(key, value, options) { return this.#kv.set(this.name, key, value, options) }
  merge(key, partial, options) { return this.#kv.merge(this.name, key, partial, options) }
  delete(key) { return this.#kv.delete(this.name, key) }
  has(key) { return this.#kv.has(this.name, key) }
  keys(pattern) { return this.#kv.keys(this.name, pattern) }
  clear() { return this.#kv.clear(this.name) }
  getAll() { return this.#kv.getAll(this.name) }
  getMany(keys) { return this.#kv.getMany(this.name, keys) }
  setMany(entries, options) { return this.#kv.setMany(this.name, entries, options) }
  deleteMany(keys) { return this.#kv.deleteMany(this.name, keys) }
  getByPrefix(prefix) { return this.#kv.getByPrefix(this.name, prefix) }
  schema() { return this.#kv.schema(this.name) }
}

function createKvStore(target, options) {
  try {
    const { mounts, ...connection } = options ?? {}
    const specs = mountSpecs(mounts, connection)
    return new KvStore(native.createKvStore(target ?? undefined, connection, specs))
  } catch (err) {
    throw toDurastateError(err)
  }
}

exports.createRedisStore = createRedisStore
exports.createSqliteStore = createSqliteStore
exports.createMemoryStore = createMemoryStore
exports.createPostgresStore = createPostgresStore
exports.createStore = createStore
exports.createKvStore = createKvStore
exports.DurableWorkerStore = DurableWorkerStore
exports.KvStore = KvStore
exports.DurastateError = DurastateError
exports.EMPTY_EXECUTION_RESULT = EMPTY_EXECUTION_RESULT
