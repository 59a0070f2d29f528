'use strict'
// The public JS surface: a thin layer over the native binding. It turns values into
// JSON text and back (V8's JSON is fast), and native rejections into DurastateError
// with a stable `code`. Everything else happens in Rust.

/** The string the worker library stores for a step that returned `undefined`. */
const EMPTY_EXECUTION_RESULT = '<empty_execution_result>'
const EMPTY_RESULT_JSON = JSON.stringify(EMPTY_EXECUTION_RESULT)
/** The stable codes the native layer sets as `err.code` (src/error.rs `ErrorCode`; napi's own codes are `InvalidArg` and the like). */
// One line: src/error.rs's test `index_js_knows_every_code` reads it.
// prettier-ignore
const NATIVE_CODES = new Set(['INVALID_INPUT', 'SERIALIZE', 'CORRUPT_DATA', 'WRONG_TYPE', 'UNAVAILABLE', 'TIMEOUT', 'AUTH', 'TLS', 'DISPOSED', 'INTERNAL', 'UNKNOWN_MOUNT', 'READ_ONLY', 'WRITE_ONLY', 'TYPE_MISMATCH', 'VALUE_TOO_LARGE', 'ENTRY_LIMIT'])

class DurastateError extends Error {
  constructor(code, message, options) {
    super(message, options)
    this.name = 'DurastateError'
    this.code = code
  }
}

const { noBinaryMessage } = require('./platform.js')
const native = loadBinding()
// The socket side of the Redis driver of runtimes whose event loop native code cannot poll (transport.js).
native.setRedisTransport(require('./transport.js').createTransport)
const { URL_VARIABLES, orEnv } = require('./env.js')

// ---------------------------------------------------------------------------------------
// Observability: every store call is traced on the tracing channel `durastate:call`
// (start, end, asyncStart, asyncEnd, error, as tracePromise publishes them), and
// connection events go on the channel `durastate:connection`. Nothing is published, and
// nothing but one check is done per call, while nobody subscribes. A runtime without
// diagnostics_channel.tracingChannel runs untraced.
// ---------------------------------------------------------------------------------------

const diagnostics = loadDiagnosticsChannel()
const CALL_CHANNEL = 'durastate:call'
const CONNECTION_CHANNEL = 'durastate:connection'
const callChannel = typeof diagnostics?.tracingChannel === 'function' ? diagnostics.tracingChannel(CALL_CHANNEL) : null
const connectionChannel = typeof diagnostics?.channel === 'function' ? diagnostics.channel(CONNECTION_CHANNEL) : null
/** Whether anyone subscribes to `durastate:call` (Bun's TracingChannel has no `hasSubscribers`: its five channels are asked). */
const callTraced =
  callChannel === null
    ? () => false
    : typeof callChannel.hasSubscribers === 'boolean'
      ? () => callChannel.hasSubscribers
      : () =>
          callChannel.start.hasSubscribers ||
          callChannel.end.hasSubscribers ||
          callChannel.asyncStart.hasSubscribers ||
          callChannel.asyncEnd.hasSubscribers ||
          callChannel.error.hasSubscribers

function loadDiagnosticsChannel() {
  try {
    return require('node:diagnostics_channel')
  } catch {
    return null
  }
}

/** The store's backend and server, by store: what each traced call's context names. */
const servers = new WeakMap()

/**
 * Where `nativeStore` is (the addon says; a backend it does not describe is named by the
 * URL `target`), and its connection events, published on `durastate:connection`. The
 * listener holds `server` only, never the store, so a store nobody uses is still
 * collected; it never keeps the process alive.
 */
function describeServer(nativeStore, store, target) {
  const info = nativeStore.serverInfo()
  const server = info.backend ? { backend: info.backend } : describeUrl(target)
  if (info.serverAddress != null) server.serverAddress = info.serverAddress
  if (info.serverPort != null) server.serverPort = info.serverPort
  if (info.database != null) server.database = info.database
  if (server.backend !== 'sqlite' && server.backend !== 'memory') {
    nativeStore.onConnection((json) => {
      let event
      try {
        event = JSON.parse(json)
      } catch {
        return
      }
      if ((event.type === 'connect' || event.type === 'failover') && server.backend === 'sentinel') {
        const at = splitAddress(event.address)
        server.serverAddress = at.host
        server.serverPort = at.port
      }
      if (connectionChannel?.hasSubscribers) connectionChannel.publish({ ...event, store, backend: server.backend })
    })
  }
  return server
}

/** `host:port` or `[v6]:port` as { host, port }. */
function splitAddress(address) {
  const found = /^\[?(.*?)\]?:(\d+)$/.exec(address ?? '')
  return found ? { host: found[1], port: Number(found[2]) } : { host: address, port: undefined }
}

/** A backend the addon does not describe, from the URL it was made with. */
function describeUrl(url) {
  try {
    const parsed = new URL(url)
    const scheme = parsed.protocol.slice(0, -1).toLowerCase()
    const backend = scheme === 'postgres' || scheme === 'postgresql' ? 'postgres' : scheme
    const server = { backend }
    if (parsed.hostname) server.serverAddress = parsed.hostname.replace(/^\[|\]$/g, '')
    if (parsed.port) server.serverPort = Number(parsed.port)
    else if (backend === 'postgres') server.serverPort = 5432
    const database = decodeURIComponent(parsed.pathname.slice(1))
    if (database) server.database = database
    return server
  } catch {
    return { backend: 'unknown' }
  }
}

/** Where the methods as they were before tracing are kept: for `npm run bench`'s comparison only. */
const UNTRACED = Symbol.for('durastate.untraced')

/** The rejection of a store's method called without its store (`this`). */
function unboundCall(operation) {
  return new DurastateError(
    'INVALID_INPUT',
    `${operation}() was called without its store (a method taken off it): call it on the store, store.${operation}(...), or bind it (store.${operation}.bind(store))`,
  )
}

/**
 * Traces the methods `operations` of `Class` on `durastate:call`: each runs as it is
 * while nobody subscribes, else through `traceCall` with the context
 * `describe(context, a, b)` adds to (names and ids, never values).
 */
function instrument(Class, store, operations, describe) {
  const untraced = {}
  Object.defineProperty(Class.prototype, UNTRACED, { value: untraced })
  for (const operation of operations) {
    const call = Class.prototype[operation]
    untraced[operation] = call
    const unbound = () => rejected(unboundCall(operation))
    const traced = {
      [operation](a, b, c, d) {
        // Every store is in `servers`: a method taken off its store (`const { get } = kv`)
        // was INTERNAL ("Cannot read properties of undefined"). It is traced too, with no
        // backend (there is no store to name one).
        if (!servers.has(this)) return callTraced() ? traceCall(unbound, { operation, store }, this) : unbound()
        if (!callTraced()) return call.call(this, a, b, c, d)
        const context = { operation, store, ...servers.get(this) }
        describe(context, a, b)
        return traceCall(call, context, this, a, b, c, d)
      },
    }[operation]
    Object.defineProperty(Class.prototype, operation, { value: traced, writable: true, configurable: true })
  }
}

/**
 * `callChannel.tracePromise(call, context, self, a, b, c, d)`, event for event (start
 * with its bound stores, end, then error, asyncStart, asyncEnd), except that the resolved
 * value is not put in the context as `context.result`: values never enter it.
 */
function traceCall(call, context, self, a, b, c, d) {
  const { start, end, asyncStart, asyncEnd, error } = callChannel
  const resolved = (value) => {
    asyncStart.publish(context)
    asyncEnd.publish(context)
    return value
  }
  const rejected = (err) => {
    context.error = err
    error.publish(context)
    asyncStart.publish(context)
    asyncEnd.publish(context)
    throw err
  }
  return start.runStores(context, () => {
    try {
      return call.call(self, a, b, c, d).then(resolved, rejected)
    } catch (err) {
      context.error = err
      error.publish(context)
      throw err
    } finally {
      end.publish(context)
    }
  })
}

/** The addon for this platform, or an error that names the platform and what to do. */
function loadBinding() {
  try {
    return require('./binding.js')
  } catch (err) {
    const denied = denoDenial(err)
    if (denied) {
      throw new DurastateError(
        'UNAVAILABLE',
        'Deno did not let durastate load its native addon: run with --allow-ffi --allow-read --allow-env (or -A). ' + `Deno said: ${denied.message}`,
        { cause: err },
      )
    }
    throw new DurastateError('UNAVAILABLE', noBinaryMessage(), { cause: err })
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

function toDurastateError(err) {
  if (err instanceof DurastateError) return err
  const message = err && typeof err.message === 'string' ? err.message : String(err)
  if (err && NATIVE_CODES.has(err.code)) return new DurastateError(err.code, message)
  // napi-rs's conversion of an argument or option of the wrong type: `InvalidArg` or a
  // status `<Type>Expected` (BooleanExpected, NumberExpected, ArrayExpected, ...).
  if (err && typeof err.code === 'string' && NAPI_CONVERSION.test(err.code)) {
    return new DurastateError('INVALID_INPUT', conversionMessage(message))
  }
  return new DurastateError('INTERNAL', message, { cause: err })
}

/** The napi statuses of a value of the wrong type (napi's `Status`: `InvalidArg`, `ObjectExpected`, `BooleanExpected`, ...). */
const NAPI_CONVERSION = /^(?:InvalidArg|[A-Za-z]+Expected)$/

const RUST_TYPES = { String: 'a string', bool: 'a boolean', f64: 'a number', u32: 'a number', u64: 'a number', i32: 'a number', i64: 'a number' }

/**
 * napi-rs's message for an option of the wrong type quotes the value, which may be a
 * secret (a password or a private key given as a Buffer): said again without it, naming
 * the option (`Failed to convert JavaScript value \`Object {...}\` into rust type
 * \`String\` on TlsOptions.key on StoreOptions.tls` becomes "option `tls.key` must be a
 * string").
 */
function conversionMessage(message) {
  const found = /^Failed to convert (?:JavaScript value `[\s\S]*`|napi value(?: \w+)?) into rust type `([^`]+)`((?: on \w+\.\w+)*)$/.exec(message)
  if (!found) return message
  const path = [...found[2].matchAll(/ on \w+\.(\w+)/g)].map((m) => m[1]).reverse()
  const expected = RUST_TYPES[found[1]] ?? `of type ${found[1]}`
  return path.length > 0 ? `option \`${path.join('.')}\` must be ${expected}` : `a value must be ${expected}`
}

const TLS_FIELDS = ['ca', 'cert', 'key']

// ---------------------------------------------------------------------------------------
// Option names. The native layer ignores a key it does not know, so a typo, or another
// library's name for a setting (node-postgres's `ssl`), would be dropped unseen: a store
// on Postgres given `ssl: {...}` connected with `sslmode=prefer`, maybe in plain text.
// Every key is checked here, by name (a key set to `undefined` is as if absent). The store
// options are every backend's: one options object serves whichever backend the URL
// (DURASTATE_URL per environment) names, so `tls` or `poolSize` with a SQLite URL is fine.
// ---------------------------------------------------------------------------------------

/**
 * The CLI's internal store option: `[CREATE_TABLES]: false` has reads never create, migrate
 * or write a store (no SQLite file, no Postgres schema). A Symbol key, which the name
 * checks do not see, so a user's `createTables` is refused as an unknown option.
 */
const CREATE_TABLES = Symbol.for('durastate.internal.createTables')

/** The store options of every backend. */
const STORE_OPTIONS = [
  'ttl',
  'prefix',
  'commandTimeout',
  'connectTimeout',
  'keyLayout',
  'retry',
  'durability',
  'tls',
  'sentinelTls',
  'busyTimeout',
  'synchronous',
  'pageSize',
  'schema',
  'poolSize',
]
const KV_OPTIONS = [...STORE_OPTIONS, 'mounts']
const RETRY_OPTIONS = ['attempts', 'minDelay', 'maxDelay']
const TLS_OPTIONS = ['ca', 'cert', 'key', 'servername', 'rejectUnauthorized']
const MOUNT_OPTIONS = ['mode', 'prefix', 'schema', 'maxEntries', 'maxValueSize', 'ttl']
/** The keys of a schema entry, and of a KV write's options (`set`, `setJson`, `merge`, `setMany`). */
const SCHEMA_ENTRY_OPTIONS = ['type', 'default', 'description']
const WRITE_OPTIONS = ['ttl']
/** The fields of a target given as fields, each with the type it takes. */
const REDIS_TARGET_TYPES = {
  host: 'string',
  port: 'number',
  username: 'string',
  password: 'string',
  db: 'number',
  tls: 'boolean',
  sentinels: 'array',
  name: 'string',
  sentinelUsername: 'string',
  sentinelPassword: 'string',
  cluster: 'array of strings',
}
const SENTINEL_TYPES = { host: 'string', port: 'number' }
const POSTGRES_TARGET_TYPES = {
  host: 'string',
  port: 'number',
  user: 'string',
  password: 'string',
  database: 'string',
  sslmode: 'string',
  applicationName: 'string',
}
const REDIS_TARGET_FIELDS = Object.keys(REDIS_TARGET_TYPES)
const SENTINEL_FIELDS = Object.keys(SENTINEL_TYPES)
const POSTGRES_TARGET_FIELDS = Object.keys(POSTGRES_TARGET_TYPES)

/**
 * Refuses a field of `fields` whose value is not of the type `types` gives it, naming the
 * field (the native conversion would only say that the target is of no type it takes).
 * A password's value is never shown.
 */
function checkFieldTypes(fields, types, where, path = '') {
  for (const [key, type] of Object.entries(types)) {
    const value = fields[key]
    if (value === undefined) continue
    const fits =
      type === 'array'
        ? Array.isArray(value)
        : type === 'array of strings'
          ? Array.isArray(value) && value.every((v) => typeof v === 'string')
          : typeof value === type
    if (!fits) {
      const name = path === '' ? key : `${path}.${key}`
      if (type === 'array of strings' && Array.isArray(value)) {
        const i = value.findIndex((v) => typeof v !== 'string')
        const got = value[i] === null ? 'null' : Array.isArray(value[i]) ? 'an array' : typeof value[i]
        throw new DurastateError('INVALID_INPUT', `field \`${name}[${i}]\` of a ${where} must be a string, got ${got}`)
      }
      const got = value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value
      throw new DurastateError('INVALID_INPUT', `field \`${name}\` of a ${where} must be ${/^[aeiou]/.test(type) ? 'an' : 'a'} ${type}, got ${got}`)
    }
  }
}

const TLS_SETTINGS = '{ ca, cert, key, servername, rejectUnauthorized }'
/** What to say of a name other libraries use, by where it was given. */
const KNOWN_MISTAKES = {
  option: {
    ssl: `durastate's TLS option is \`tls\` (${TLS_SETTINGS}); on Postgres, \`sslmode\` goes in the URL (\`tls\` alone means verify-full)`,
    mounts: 'it is an option of createKvStore',
  },
  tls: {
    minVersion: 'durastate speaks TLS 1.2 and 1.3 (rustls), and no version option is supported',
    maxVersion: 'durastate speaks TLS 1.2 and 1.3 (rustls), and no version option is supported',
    checkServerIdentity: 'the certificate is checked against the host connected to, or `servername`; no callback is supported',
    passphrase: 'an encrypted key is not supported: give it decrypted (`openssl pkey -in key.pem -out plain.pem`)',
    pfx: 'PKCS#12 is not supported: give `cert` and `key` as PEM',
  },
  'Postgres target': {
    ssl: 'use `sslmode`',
    username: 'the role is `user`',
    db: 'the database is `database`',
    dbname: 'the database is `database`',
    application_name: 'use `applicationName`',
    sslrootcert: 'the CA goes in the store option `tls` (`tls.ca`), or `sslrootcert` in a URL',
    sslcert: 'the client certificate goes in the store option `tls` (`tls.cert`), or `sslcert` in a URL',
    sslkey: 'the client key goes in the store option `tls` (`tls.key`), or `sslkey` in a URL',
  },
}

/**
 * Refuses a key of `object` that is not one of `known` (`where` says what `object` is:
 * 'option', 'tls', ... ; `path` is its option path for messages), suggesting the name
 * meant when one is close.
 */
function refuseUnknownKeys(object, known, where, path = '') {
  for (const key of Object.keys(object)) {
    if (object[key] === undefined || known.includes(key)) continue
    const name = path === '' ? key : `${path}.${key}`
    const option = where === 'option' || where === 'tls' || where === 'retry' || where === 'mount' || where === 'write' || where === 'schema'
    const what = option ? `option \`${name}\`` : `field \`${name}\` of a ${where}`
    const mistake = Object.hasOwn(KNOWN_MISTAKES[where] ?? {}, key) ? KNOWN_MISTAKES[where][key] : undefined
    const close = mistake === undefined ? closestName(key, known) : undefined
    const names = known.join(', ')
    const advice = mistake ?? (close !== undefined ? `did you mean \`${close}\`?` : `the known ones are ${names}`)
    throw new DurastateError('INVALID_INPUT', `unknown ${what}: ${advice}`)
  }
}

/** The name of `known` that `name` is likely a typo of (case, or one or two letters), if any. */
function closestName(name, known) {
  const lower = name.toLowerCase()
  let best
  let bestDistance = Math.min(2, Math.floor(name.length / 3))
  for (const candidate of known) {
    const distance = candidate.toLowerCase() === lower ? 0 : editDistance(lower, candidate.toLowerCase())
    if (distance <= bestDistance && (best === undefined || distance < bestDistance)) {
      best = candidate
      bestDistance = distance
    }
  }
  return best
}

function editDistance(a, b) {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const current = [i]
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    previous = current
  }
  return previous[b.length]
}

/** Checks the names in a store's `options` (`known`: the factory's options), `retry` (an object) and `mounts` included. */
function checkOptionNames(options, known) {
  if (options === undefined || options === null) return
  // A number or string was ignored (`createMemoryStore(60_000)` meant as a ttl), an array read by index.
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new DurastateError('INVALID_INPUT', `a store's options must be an object such as { ttl: 60000 }, got ${typeName(options)}`)
  }
  refuseUnknownKeys(options, known, 'option')
  const { retry, mounts } = options
  if (retry !== undefined && retry !== null) {
    // napi-rs read a number or a boolean as `{}`: `retry: 0` meant as "no resends" got the default 3.
    if (typeof retry !== 'object' || Array.isArray(retry)) {
      throw new DurastateError('INVALID_INPUT', `option \`retry\` must be an object { attempts, minDelay, maxDelay }, got ${typeName(retry)}`)
    }
    refuseUnknownKeys(retry, RETRY_OPTIONS, 'retry', 'retry')
  }
  if (known === KV_OPTIONS && mounts !== undefined && mounts !== null && typeof mounts === 'object') {
    for (const [name, mount] of Object.entries(mounts)) {
      if (mount !== null && typeof mount === 'object') refuseUnknownKeys(mount, MOUNT_OPTIONS, 'mount', `mounts.${name}`)
    }
  }
}

/**
 * Refuses a target that is an object of a class (a node-redis or ioredis client, which the
 * JS store takes; a `pg` Pool): its fields are not own keys, so it would read as `{}`,
 * the default address.
 */
function refuseClientObject(target, backend, fields) {
  const proto = Object.getPrototypeOf(target)
  if (proto !== Object.prototype && proto !== null) {
    throw new DurastateError(
      'INVALID_INPUT',
      `a ${backend} target is a URL or connection fields (${fields}), not a client object: durastate connects itself (give it the URL the client uses)`,
    )
  }
}

/** Checks the fields of a Redis target given as fields (the sentinels' included): names and types. */
function checkRedisFields(target) {
  if (target === undefined || target === null || typeof target !== 'object') return
  refuseClientObject(target, 'Redis', '{ host, port, ... }')
  refuseUnknownKeys(target, REDIS_TARGET_FIELDS, 'Redis target')
  checkFieldTypes(target, REDIS_TARGET_TYPES, 'Redis target')
  if (Array.isArray(target.sentinels)) {
    target.sentinels.forEach((sentinel, i) => {
      if (sentinel === null || typeof sentinel !== 'object' || Array.isArray(sentinel)) {
        throw new DurastateError('INVALID_INPUT', `field \`sentinels[${i}]\` of a Redis target must be an object { host, port }`)
      }
      refuseUnknownKeys(sentinel, SENTINEL_FIELDS, 'sentinel address', `sentinels[${i}]`)
      checkFieldTypes(sentinel, SENTINEL_TYPES, 'Redis target', `sentinels[${i}]`)
    })
  }
}

/**
 * The connection options as the native layer takes them: `tls: false` or `null` means
 * no TLS options (as node-redis takes it), `true` TLS with the defaults; a PEM value may
 * be a Buffer, as `fs.readFileSync` gives it, or (for `ca`) an array of PEM texts, as
 * Node.js's `tls` takes them. Anything else is `INVALID_INPUT`, naming the option, never
 * quoting the value (it may be a private key).
 */
function connectionOptions(options) {
  checkOptionNames(options, STORE_OPTIONS)
  if (options === undefined || options === null) return undefined
  // A lone surrogate would reach the addon as U+FFFD: two prefixes would name the same keys.
  if (typeof options.prefix === 'string' && !options.prefix.isWellFormed()) throw illFormed('option `prefix`', options.prefix)
  const internal = CREATE_TABLES in options
  if (!('tls' in options) && !('sentinelTls' in options) && options.retry !== null && !internal) return options
  const result = { ...options }
  // `retry: null` is as if absent, as `tls: null` (napi-rs threw INTERNAL on it).
  if (options.retry === null) delete result.retry
  if ('tls' in options) result.tls = tlsOptions('tls', options.tls, false)
  if ('sentinelTls' in options) result.sentinelTls = tlsOptions('sentinelTls', options.sentinelTls, true)
  if (internal) result.createTables = options[CREATE_TABLES]
  return result
}

function tlsOptions(name, tls, keepBoolean) {
  if (tls === undefined || tls === null) return undefined
  if (typeof tls === 'boolean') return keepBoolean ? tls : tls ? {} : undefined
  if (typeof tls !== 'object' || Array.isArray(tls)) {
    throw new DurastateError(
      'INVALID_INPUT',
      `option \`${name}\` must be an object of TLS settings (ca, cert, key, servername, rejectUnauthorized), true or false, got ${typeof tls}`,
    )
  }
  refuseUnknownKeys(tls, TLS_OPTIONS, 'tls', name)
  const result = { ...tls }
  const { rejectUnauthorized } = tls
  if (rejectUnauthorized !== undefined && rejectUnauthorized !== null && typeof rejectUnauthorized !== 'boolean') {
    // (napi-rs would say it of `tls`, but of `sentinelTls` only "none of these types")
    throw new DurastateError('INVALID_INPUT', `option \`${name}.rejectUnauthorized\` must be a boolean, got ${typeof rejectUnauthorized}`)
  }
  for (const field of TLS_FIELDS) {
    if (tls[field] === undefined || tls[field] === null) {
      delete result[field]
      continue
    }
    result[field] = pemText(`${name}.${field}`, tls[field], field === 'ca')
  }
  return result
}

function pemText(name, value, many) {
  if (typeof value === 'string') return value
  if (ArrayBuffer.isView(value)) {
    const text = Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('utf8')
    if (!text.includes('-----BEGIN'))
      throw new DurastateError('INVALID_INPUT', `option \`${name}\` as a Buffer must hold PEM text (-----BEGIN ...); DER is not read`)
    return text
  }
  if (many && Array.isArray(value)) {
    if (value.length === 0) {
      throw new DurastateError(
        'INVALID_INPUT',
        `option \`${name}\` is an empty array, which trusts no CA: give PEM texts, or leave it out for the system's roots`,
      )
    }
    const texts = value.map((item) => pemText(name, item, false))
    if (texts.some((text) => !text.includes('-----BEGIN'))) {
      throw new DurastateError('INVALID_INPUT', `option \`${name}\` as an array takes PEM texts (strings or Buffers), not file paths`)
    }
    return texts.join('\n')
  }
  throw new DurastateError(
    'INVALID_INPUT',
    `option \`${name}\` must be PEM text or the path of a PEM file (a string or a Buffer)${many ? ', or an array of PEM texts' : ''}, got ${Array.isArray(value) ? 'an array' : typeof value}`,
  )
}

/** Stores on Postgres, whose `text` cannot hold NUL: ids and keys with one are refused. */
const noNul = new WeakSet()

/** `value` is a well-formed string (and without NUL when `store` is on Postgres). */
function requireString(name, value, store) {
  if (typeof value !== 'string') {
    throw new DurastateError('INVALID_INPUT', `${name} must be a string, got ${value === null ? 'null' : typeof value}`)
  }
  if (!value.isWellFormed()) throw illFormed(name, value)
  if (store !== undefined && noNul.has(store)) refuseNul(name, value)
}

/**
 * Refuses, at creation, a Postgres KV store whose mount prefix or schema key holds NUL:
 * each of its calls would be refused, and `clear()` would delete before failing.
 */
function refuseNulMounts(nativeStore) {
  try {
    for (const { name, prefix } of parseJson(nativeStore.mounts())) {
      refuseNul(`mount '${name}': the prefix`, prefix)
      for (const { key } of parseJson(nativeStore.schema(name))) refuseNul(`mount '${name}': schema key`, key)
    }
  } catch (err) {
    nativeStore.close().then(undefined, toUndefined)
    throw err
  }
}

function refuseNul(name, value) {
  const index = value.indexOf('\0')
  if (index !== -1) {
    throw new DurastateError(
      'INVALID_INPUT',
      `${name} holds NUL (\\u0000 at index ${index}), which Postgres cannot store in text; use ids and keys without NUL on Postgres`,
    )
  }
}

/**
 * A string with a lone surrogate cannot be stored as itself (UTF-8 has no encoding for
 * it: it would become U+FFFD, and two different keys one), so it is refused.
 */
function illFormed(name, value) {
  let index = 0
  for (const char of value) {
    if (!char.isWellFormed()) {
      const unit = `\\u${char.charCodeAt(0).toString(16)}`
      return new DurastateError(
        'INVALID_INPUT',
        `${name} holds a lone surrogate (${unit} at index ${index}), which UTF-8 cannot encode (no backend could keep it as it is); use well-formed Unicode`,
      )
    }
    index += char.length
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
    throw new DurastateError(
      'SERIALIZE',
      `cannot store the result of step "${taskId}" of execution "${executionId}" as JSON: a ${typeof value} has no JSON form`,
    )
  }
  return json
}

/**
 * The CORRUPT_DATA error of stored text `text` that JSON.parse refused with `err`. Its
 * message names what (`what`), the parser's complaint and the text's length, never the text:
 * messages reach logs and, through `durastate:call`, traces. The text is on the
 * non-enumerable `err.stored`, for whoever debugs it; the parser's own error is not kept
 * as `cause` (V8 and JavaScriptCore quote the text in it, and `util.inspect` prints a cause).
 */
function corruptJson(what, text, err) {
  // The parser's words up to any quoted text (V8: `Unexpected token 'x', "<text>"... is not
  // valid JSON`; JavaScriptCore: `Unexpected identifier "<text>"`), without the token.
  const reason =
    String(err?.message ?? err)
      .split('"')[0]
      .replace(/^(Unexpected token) '.'/u, '$1')
      .replace(/[\s,:]+$/, '') || 'not JSON'
  const error = new DurastateError('CORRUPT_DATA', `${what} is not valid: ${reason} (the stored text is ${text.length} characters)`)
  Object.defineProperty(error, 'stored', { value: text, writable: true, configurable: true })
  return error
}

/** Parses a stored result; `keyOf()` names its key, asked only when the JSON is bad. */
function decodeResult(text, keyOf, field) {
  try {
    return JSON.parse(text)
  } catch (err) {
    throw corruptJson(`stored JSON at key "${keyOf()}" field "${field}"`, text, err)
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

  constructor(nativeStore, target) {
    if (!(nativeStore instanceof native.NativeWorkerStore)) {
      throw new DurastateError(
        'INVALID_INPUT',
        'use createRedisStore, createPostgresStore, createSqliteStore, createMemoryStore or createStore to make a store',
      )
    }
    this.#native = nativeStore
    const server = describeServer(nativeStore, 'worker', target)
    servers.set(this, server)
    if (server.backend === 'postgres') noNul.add(this)
  }

  beginExecution(executionId) {
    try {
      requireString('executionId', executionId, this)
      return this.#native.beginExecution(executionId).then(toUndefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  getExecutionTaskResults(executionId) {
    try {
      requireString('executionId', executionId, this)
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
      requireString('executionId', executionId, this)
      requireString('taskId', taskId, this)
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
      requireString('executionId', executionId, this)
      requireString('taskId', taskId, this)
      return this.#native.beginExecutionTask(executionId, taskId).then(toUndefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  tryBeginExecutionTask(executionId, taskId) {
    try {
      requireString('executionId', executionId, this)
      requireString('taskId', taskId, this)
      return this.#native.tryBeginExecutionTask(executionId, taskId).then(undefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  commitExecutionTaskResult(executionId, taskId, value) {
    try {
      requireString('executionId', executionId, this)
      requireString('taskId', taskId, this)
      const json = encodeResult(executionId, taskId, value)
      return this.#native.commitExecutionTaskResult(executionId, taskId, json).then(toUndefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  isExecutionInProgress(executionId) {
    try {
      requireString('executionId', executionId, this)
      return this.#native.isExecutionInProgress(executionId).then(undefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  isExecutionTaskInProgress(executionId, taskId) {
    try {
      requireString('executionId', executionId, this)
      requireString('taskId', taskId, this)
      return this.#native.isExecutionTaskInProgress(executionId, taskId).then(undefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  disposeExecution(executionId) {
    try {
      requireString('executionId', executionId, this)
      return this.#native.disposeExecution(executionId).then(toUndefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  async close() {
    if (!servers.has(this)) throw unboundCall('close')
    await this.#native.close().then(undefined, rethrow)
  }

  get closed() {
    return this.#native.closed
  }
}

function wrap(create, target) {
  try {
    return new DurableWorkerStore(create(), target)
  } catch (err) {
    throw toDurastateError(err)
  }
}

/** Fields only a Postgres target has: given to a Redis target, they would be ignored. */
const POSTGRES_FIELDS = ['user', 'database', 'sslmode', 'applicationName']

/** How a value of the wrong type is named in messages: `an array`, `null`, `number`, ... */
function typeName(value) {
  return value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value
}

/**
 * Refuses a target that is neither a URL string nor connection fields (a plain object),
 * absent aside: napi-rs read an array as fields it does not have, the default address
 * (`createRedisStore(['redis://10.0.0.1:7000'])` wrote to 127.0.0.1:6379).
 */
function refuseTargetType(target, subject, fields) {
  if (target === undefined || target === null || typeof target === 'string') return
  if (typeof target === 'object' && !Array.isArray(target)) return
  const hint = Array.isArray(target) && fields.includes('Redis') ? ': a list of cluster nodes goes in { cluster: [...] }' : ''
  throw new DurastateError('INVALID_INPUT', `${subject} must be a URL string or ${fields}, got ${typeName(target)}${hint}`)
}

/** Refuses Redis fields that carry a Postgres field (`{ host, user, database }`). */
function redisFields(target, postgresHint, subject = 'a Redis target') {
  refuseTargetType(target, subject, 'Redis connection fields ({ host, port, ... })')
  if (target === null || typeof target !== 'object') return target ?? undefined
  const field = POSTGRES_FIELDS.find((name) => name in target)
  if (field !== undefined) {
    throw new DurastateError(
      'INVALID_INPUT',
      `\`${field}\` is a field of a Postgres target, not of a Redis one ({ host, port, username, password, db, ... }): ${postgresHint}`,
    )
  }
  checkRedisFields(target)
  return target
}

function createRedisStore(target, options) {
  // '' stays an invalid Redis URL here, as before; only an absent target falls back.
  const resolved = target === '' ? target : orEnv(target, 'REDIS_URL')
  return wrap(() => native.createRedisStore(redisFields(resolved, 'for Postgres use createPostgresStore'), connectionOptions(options)), resolved)
}

/** Refuses a URL or path that is not a string (napi-rs said only "a value must be a string"). */
function requireUrl(value, subject) {
  if (value !== undefined && value !== null && typeof value !== 'string') {
    throw new DurastateError('INVALID_INPUT', `${subject} must be a string, got ${typeName(value)}`)
  }
}

function createSqliteStore(path, options) {
  return wrap(() => {
    requireUrl(path, 'the path of a SQLite store')
    return native.createSqliteStore(path ?? undefined, connectionOptions(options))
  })
}

function createPostgresStore(target, options) {
  return wrap(() => native.createPostgresStore(postgresFields(orEnv(target, 'DATABASE_URL')), connectionOptions(options)))
}

/** A Postgres target; given as fields, each a field of one (`sslMode`, `ssl` are refused). */
function postgresFields(target) {
  refuseTargetType(target, 'a Postgres target', 'Postgres connection fields ({ host, port, user, ... })')
  if (target !== null && typeof target === 'object') {
    refuseClientObject(target, 'Postgres', '{ host, port, user, ... }')
    refuseUnknownKeys(target, POSTGRES_TARGET_FIELDS, 'Postgres target')
    checkFieldTypes(target, POSTGRES_TARGET_TYPES, 'Postgres target')
  }
  return target
}

function createMemoryStore(options) {
  return wrap(() => native.createMemoryStore(connectionOptions(options)))
}

function createStore(url, options) {
  const resolved = orEnv(url, ...URL_VARIABLES)
  return wrap(() => {
    requireUrl(resolved, 'the URL of createStore')
    return native.createStore(resolved, connectionOptions(options))
  }, resolved)
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

/** A value given as JSON text: one JSON value, as `JSON.parse` reads it. */
function requireJsonText(json, mount, key) {
  if (typeof json !== 'string') {
    throw new DurastateError('INVALID_INPUT', `setJson of key "${key}" (mount '${mount}') needs JSON text, got ${json === null ? 'null' : typeof json}`)
  }
  try {
    JSON.parse(json)
  } catch (err) {
    throw new DurastateError('INVALID_INPUT', `setJson of key "${key}" (mount '${mount}'): not JSON text: ${err.message}`, { cause: err })
  }
  // (JSON.stringify escapes a lone surrogate; raw in the text, it would become U+FFFD)
  if (!json.isWellFormed()) throw illFormed(`setJson of key "${key}" (mount '${mount}'): the JSON text`, json)
}

function decodeValue(text, mount, key) {
  try {
    return JSON.parse(text)
  } catch (err) {
    throw corruptJson(`stored JSON of key "${key}" in mount '${mount}'`, text, err)
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
  for (const key of Object.keys(entries)) {
    if (!key.isWellFormed()) throw illFormed(kvKeyName(mount), key)
    flat.push(key, encodeValue(entries[key], mount, key))
  }
  return flat
}

/** How a KV key is named in messages: with its mount. */
const kvKeyName = (mount) => `key of mount '${mount}'`

/**
 * `requireString` of a KV key, its name (with the mount) made only when it is refused. NUL
 * in a key on Postgres is refused by the backend, after the mount's mode is checked (as a
 * key too long for Postgres is), so a read-only mount answers `READ_ONLY` on every backend.
 */
function requireKey(mount, key) {
  if (typeof key !== 'string' || !key.isWellFormed()) requireString(kvKeyName(mount), key)
}

function requireKeys(keys, mount) {
  if (!Array.isArray(keys) || keys.some((k) => typeof k !== 'string')) {
    throw new DurastateError('INVALID_INPUT', `keys of mount '${mount}' must be an array of strings`)
  }
  for (const key of keys) if (!key.isWellFormed()) throw illFormed(kvKeyName(mount), key)
}

function ttlOf(options) {
  if (options === undefined || options === null) return undefined
  if (typeof options !== 'object' || Array.isArray(options)) throw new DurastateError('INVALID_INPUT', 'options must be an object such as { ttl: 60000 }')
  // `{ tll: 5000 }` stored the value without a TTL.
  refuseUnknownKeys(options, WRITE_OPTIONS, 'write')
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
    // A lone surrogate would reach the addon as U+FFFD: another name than the one given.
    if (!name.isWellFormed()) throw illFormed('a mount name', name)
    if (typeof prefix === 'string' && !prefix.isWellFormed()) throw illFormed(`mount '${name}': prefix`, prefix)
    return { name, mode, prefix, maxEntries, maxValueSize, ttl, schema: schema === undefined ? undefined : schemaSpecs(name, schema) }
  })
}

function schemaSpecs(mount, schema) {
  if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) {
    throw new DurastateError('INVALID_INPUT', `mount '${mount}': schema must be an object of { type, default } by key`)
  }
  return Object.entries(schema).map(([key, entry]) => {
    if (!key.isWellFormed()) throw illFormed(`mount '${mount}': a schema key`, key)
    if (entry === null || typeof entry !== 'object') {
      throw new DurastateError('INVALID_INPUT', `mount '${mount}': schema key "${key}" must be { type, default }`)
    }
    // A typo (`descripton`, `Default`) was dropped: the entry kept no default or description.
    refuseUnknownKeys(entry, SCHEMA_ENTRY_OPTIONS, 'schema', `mounts.${mount}.schema.${key}`)
    if (entry.description !== undefined && entry.description !== null && typeof entry.description !== 'string') {
      throw new DurastateError('INVALID_INPUT', `mount '${mount}': schema key "${key}": \`description\` must be a string, got ${typeName(entry.description)}`)
    }
    let defaultJson
    try {
      defaultJson = JSON.stringify(entry.default)
    } catch {
      defaultJson = undefined
    }
    return { key, type: String(entry.type), defaultJson, description: entry.description ?? undefined }
  })
}

const parseJson = (text) => JSON.parse(text)

/**
 * The calls of a KV store still in progress that later calls on the same keys must wait
 * for: a write run in phases (it may add keys while the mount's count is stale: the
 * update of a stored key, one count of the mount shared by every write that needs it,
 * then the write), a `clear` (list, delete, write defaults), and every call that waits
 * (a listing that waits: the whole mount, until it started). A call on a busy key (a
 * listing or `clear`: on any key of the mount; any call: while the mount is cleared or a
 * listing waits) starts once the calls before it on those keys settled, so it sees what
 * they did. Almost always empty: a call then costs one check.
 */
class KeyOrder {
  /** mount -> { all: the whole-mount call in progress, keys: Map<key, call in progress> } */
  #mounts = new Map()
  /** Calls holding keys (held, not yet released). */
  #holds = 0

  get idle() {
    return this.#holds === 0
  }

  /** The calls a call on `keys` (`null`: the whole mount) waits for; `undefined` for none. */
  waitsFor(mount, keys) {
    const held = this.#mounts.get(mount)
    if (held === undefined) return undefined
    const calls = held.all === undefined ? [] : [held.all]
    if (keys === null) for (const call of held.keys.values()) calls.push(call)
    else
      for (const key of keys) {
        const call = held.keys.get(key)
        if (call !== undefined) calls.push(call)
      }
    return calls.length === 0 ? undefined : calls
  }

  /** Marks `keys` (`null`: the whole mount) busy with `call` (a promise) until `release`. */
  hold(mount, keys, call) {
    let held = this.#mounts.get(mount)
    if (held === undefined) {
      held = { all: undefined, keys: new Map() }
      this.#mounts.set(mount, held)
    }
    if (keys === null) held.all = call
    else for (const key of keys) held.keys.set(key, call)
    this.#holds++
  }

  /** Frees what `hold(mount, keys, call)` marked (a later call may hold the keys now). */
  release(mount, keys, call) {
    const held = this.#mounts.get(mount)
    if (keys === null) {
      if (held.all === call) held.all = undefined
    } else {
      for (const key of keys) if (held.keys.get(key) === call) held.keys.delete(key)
    }
    this.#holds--
  }

  /** The calls holding keys now. */
  held() {
    const calls = []
    for (const held of this.#mounts.values()) {
      if (held.all !== undefined) calls.push(held.all)
      for (const call of held.keys.values()) calls.push(call)
    }
    return calls
  }

  /** Keeps `keys` busy until `promise` settles; returns it. */
  holdUntilSettled(mount, keys, promise) {
    const release = () => this.release(mount, keys, promise)
    this.hold(mount, keys, promise)
    promise.then(release, release)
    return promise
  }
}

/** The keys of `[key, json, ...]`. */
function keysOf(flat) {
  const keys = []
  for (let i = 0; i < flat.length; i += 2) keys.push(flat[i])
  return keys
}

/**
 * A key-value store with mounts, access modes, schemas and limits, over Redis, SQLite or
 * memory. Made by createKvStore. Each method is one native call and one `.then`, except
 * while calls on the same keys are in progress in phases (KeyOrder).
 */
class KvStore {
  #native
  #mountNames
  #order
  /** mount -> the count of its entries in progress, shared by the writes that wait for it */
  #counting = new Map()
  /**
   * Mounts whose last count failed on a cluster node that did not answer, the count
   * before it kept (README, The entry limit): writes do not wait for the next count.
   */
  #countKept = new Set()
  /** Set by `close()`: later calls reject with `DISPOSED` (the calls in flight finish first). */
  #closing = false
  /** Listings in progress (several round trips: a page each): `close()` waits for them. */
  #listings = new Set()
  /** `commandTimeout` (ms): a call that waits for others on its keys counts the wait against it. */
  #commandTimeout
  /**
   * Whether a call that waited is also bounded here, not only by the native call: on a
   * server, where the Redis drivers bound a round trip by commandTimeout whatever the
   * `timeout` given (a call sent may land after its TIMEOUT anyway). Not on SQLite and
   * memory, where a call the store's thread gives up is never applied: it alone says.
   */
  #racesDeadline

  constructor(nativeStore, target) {
    if (!(nativeStore instanceof native.NativeKvStore)) {
      throw new DurastateError('INVALID_INPUT', 'use createKvStore to make a KV store')
    }
    this.#native = nativeStore
    this.#mountNames = new Set(parseJson(nativeStore.mounts()).map((m) => m.name))
    const server = describeServer(nativeStore, 'kv', target)
    servers.set(this, server)
    if (server.backend === 'postgres') {
      noNul.add(this)
      refuseNulMounts(nativeStore)
    }
    this.#order = new KeyOrder()
    this.#commandTimeout = nativeStore.commandTimeout
    this.#racesDeadline = server.backend !== 'sqlite' && server.backend !== 'memory'
  }

  /** Checks the mount before anything else (UNKNOWN_MOUNT, listing the mounts). */
  #requireMount(mount) {
    requireString('mount', mount)
    if (!this.#mountNames.has(mount)) this.#native.schema(mount)
    if (this.#closing) throw new DurastateError('DISPOSED', 'the store is closed; create a new store to continue')
  }

  /**
   * Runs `start` now, or once the calls before it on `keys` (`null`: the whole mount)
   * settled; a call that waits keeps its keys busy for the calls after it. `start(true,
   * left)`: its keys are held until it settles, so a write in phases must not hold them
   * again (it would take them from a call made after it, which then runs before calls
   * made after that one); `left`: the ms of its commandTimeout left for its first round
   * trip (`#waiting`).
   */
  #after(mount, keys, what, start) {
    const calls = this.#order.waitsFor(mount, keys)
    if (calls === undefined) return start(false, undefined)
    const [order, answer] = this.#waiting(calls, mount, what, (left) => start(true, left))
    this.#order.holdUntilSettled(mount, keys, order)
    return answer
  }

  /**
   * Runs the listing `start` now, or once the calls before it on the mount settled. A
   * listing that waits holds the mount until it has started (not until it settles): the
   * calls made after it go out after its first `SCAN`, as when it runs at once.
   */
  #listing(mount, what, start) {
    const calls = this.#order.waitsFor(mount, null)
    if (calls === undefined) return start()
    let listing
    const [started, answer] = this.#waiting(calls, mount, what, () => {
      listing = start()
    })
    this.#order.holdUntilSettled(mount, null, started)
    return answer.then(() => listing, rethrow)
  }

  /**
   * A call that waits for `calls` (the calls before it on its keys): its commandTimeout
   * runs from now. `run(left)` runs once they settled, with the `left` ms of it; when it
   * runs out first, the call rejects with `TIMEOUT` and `run` never runs (nothing is
   * sent). Returns `[order, answer]`: `order` settles once `calls` settled and `run`'s
   * promise did (the calls after this one wait for it), `answer` is the caller's.
   */
  #waiting(calls, mount, what, run) {
    const budget = this.#commandTimeout
    const deadline = performance.now() + budget
    let expired = false
    let timer
    let expire
    const order = Promise.allSettled(calls).then(() => {
      if (expired) return undefined
      const left = deadline - performance.now()
      if (left < 1) return expire()
      clearTimeout(timer)
      return run(left)
    })
    const answer = new Promise((resolve, reject) => {
      expire = () => {
        expired = true
        clearTimeout(timer)
        const message = `kv ${what} (mount '${mount}') waited commandTimeout (${budget} ms) for the calls before it on its keys; it was not sent`
        reject(new DurastateError('TIMEOUT', message))
      }
      timer = setTimeout(expire, budget)
      order.then(resolve, reject)
    })
    return [order, answer]
  }

  /**
   * `call`, the first round trip of a call that waited, bounded by the `left` ms of its
   * commandTimeout: the native call is given it as its `timeout`, which SQLite, memory
   * and Postgres keep; on a server its promise also rejects with `TIMEOUT` at `left` (the
   * Redis drivers bound a round trip by commandTimeout; what was sent may still land, as
   * for any call that timed out).
   */
  #bounded(call, left, what) {
    if (left === undefined || !this.#racesDeadline || call === null) return call
    if (Array.isArray(call)) return [this.#bounded(call[0], left, what)]
    const budget = this.#commandTimeout
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new DurastateError(
            'TIMEOUT',
            `kv ${what} did not complete within commandTimeout (${budget} ms), counted from when it was made (it waited for the calls before it on its keys)`,
          ),
        )
      }, left)
      const settle = (then) => (value) => {
        clearTimeout(timer)
        then(value)
      }
      call.then(settle(resolve), settle(reject))
    })
  }

  /** `listing`, kept in `#listings` until it settles. */
  #tracked(listing) {
    this.#listings.add(listing)
    const forget = () => this.#listings.delete(listing)
    listing.then(forget, forget)
    return listing
  }

  /**
   * Counts the mount's entries: one count at a time per mount, shared by every write
   * waiting for it. On a cluster, a count that fails because a node does not answer or
   * will not let this store in (`UNAVAILABLE`, `TIMEOUT`: a master down; `TLS`, `AUTH`: one
   * node's certificate or password changed) keeps the last count instead, with this
   * process's own additions, when there is one (`#countKept`; `#addKeys`).
   */
  #count(mount) {
    let counting = this.#counting.get(mount)
    if (counting === undefined) {
      counting = this.#native
        .count(mount)
        .then(
          () => {
            this.#countKept.delete(mount)
          },
          (err) => {
            const error = toDurastateError(err)
            const unreachable = ['UNAVAILABLE', 'TIMEOUT', 'TLS', 'AUTH'].includes(error.code)
            if (unreachable && servers.get(this).backend === 'cluster' && this.#native.keepCount(mount)) {
              this.#countKept.add(mount)
              return
            }
            this.#countKept.delete(mount)
            if (unreachable && servers.get(this).backend === 'cluster') {
              throw new DurastateError(
                error.code,
                `cannot add keys to mount '${mount}': its entry count (maxEntries) needs every master, and this store has no earlier count of it: ${error.message}`,
              )
            }
            throw error
          },
        )
        .finally(() => this.#counting.delete(mount))
      // Nobody may wait for it (a kept count): its failure is the waiting writes' only.
      counting.catch(toUndefined)
      this.#counting.set(mount, counting)
    }
    return counting
  }

  get(mount, key) {
    try {
      this.#requireMount(mount)
      requireKey(mount, key)
      if (!this.#order.idle) return this.#after(mount, [key], 'get', (held, left) => this.#get(mount, key, left))
      return this.#get(mount, key)
    } catch (err) {
      return rejected(err)
    }
  }

  #get(mount, key, left) {
    return this.#bounded(this.#native.get(mount, key, left), left, 'get').then((text) => decodeValue(text, mount, key), rethrow)
  }

  getOr(mount, key, fallback) {
    try {
      this.#requireMount(mount)
      requireKey(mount, key)
      if (!this.#order.idle) return this.#after(mount, [key], 'getOr', (held, left) => this.#getOr(mount, key, fallback, left))
      return this.#getOr(mount, key, fallback)
    } catch (err) {
      return rejected(err)
    }
  }

  #getOr(mount, key, fallback, left) {
    return this.#bounded(this.#native.getOr(mount, key, undefined, left), left, 'getOr').then(
      (text) => (text === null ? fallback : decodeValue(text, mount, key)),
      rethrow,
    )
  }

  /** The stored JSON text as it is (not parsed), or `undefined` when the key is not stored. */
  getJson(mount, key) {
    try {
      this.#requireMount(mount)
      requireKey(mount, key)
      if (!this.#order.idle) return this.#after(mount, [key], 'getJson', (held, left) => this.#getJson(mount, key, left))
      return this.#getJson(mount, key)
    } catch (err) {
      return rejected(err)
    }
  }

  #getJson(mount, key, left) {
    return this.#bounded(this.#native.getOr(mount, key, 'getJson', left), left, 'getJson').then((text) => (text === null ? undefined : text), rethrow)
  }

  set(mount, key, value, options) {
    try {
      this.#requireMount(mount)
      requireKey(mount, key)
      return this.#setText(mount, key, encodeValue(value, mount, key), ttlOf(options))
    } catch (err) {
      return rejected(err)
    }
  }

  /** `set` of a value given as JSON text, stored as it is (numbers keep their digits). */
  setJson(mount, key, json, options) {
    try {
      this.#requireMount(mount)
      requireKey(mount, key)
      requireJsonText(json, mount, key)
      return this.#setText(mount, key, json, ttlOf(options))
    } catch (err) {
      return rejected(err)
    }
  }

  #setText(mount, key, json, ttl) {
    if (!this.#order.idle) return this.#after(mount, [key], 'set', (held, left) => this.#set(mount, key, json, ttl, held, left))
    return this.#set(mount, key, json, ttl, false)
  }

  /** `held`: the call's keys are held until it settles; `left`: see `#after`. */
  #set(mount, key, json, ttl, held, left) {
    const write = (phase) => this.#native.set(mount, key, json, ttl, phase)
    const first = () => this.#bounded(this.#native.set(mount, key, json, ttl, undefined, left), left, 'set')
    // The mount's count is stale: the update of a stored key, else the write of a new one.
    return this.#staged(mount, [key], held, first, (updated) => updated || this.#addKeys(mount, write))
  }

  /**
   * A write that may add keys; `first()` calls its native method (`set`, `merge` or
   * `setMany`) for the whole write. While the mount's count is stale, the native call
   * sends only the part that needs no room and answers `[promise]`; `finish(answer)`
   * finishes the write (a value, or a promise of the rest), the keys busy meanwhile
   * unless `held` already.
   */
  #staged(mount, keys, held, first, finish) {
    const call = first()
    if (!Array.isArray(call)) return call.then(undefined, rethrow)
    const rest = call[0].then(finish, rethrow)
    return held ? rest : this.#order.holdUntilSettled(mount, keys, rest)
  }

  /**
   * The write of new keys (`write(1)`); when the count is stale (`null`), the mount's
   * shared count, then the write with room from it (`write(2)`). A count made meanwhile
   * (by a write that needed it too) may be fresh: no second count.
   */
  async #addKeys(mount, write) {
    try {
      const call = write(1)
      if (call !== null) return await call
      const counting = this.#count(mount)
      if (!this.#countKept.has(mount)) {
        await counting
        return await write(2)
      }
      // The last count is kept (a cluster master did not answer): the write does not wait
      // for the new count, but an ENTRY_LIMIT waits for it, and stands only if it fails
      // too; else the write goes again with the exact count.
      try {
        return await write(2)
      } catch (err) {
        if (err?.code !== 'ENTRY_LIMIT') throw err
        await counting
        if (this.#countKept.has(mount)) throw err
        return await write(2)
      }
    } catch (err) {
      return rethrow(err)
    }
  }

  merge(mount, key, partial, options) {
    try {
      this.#requireMount(mount)
      requireKey(mount, key)
      if (partial === null || typeof partial !== 'object' || Array.isArray(partial)) {
        throw new DurastateError('INVALID_INPUT', `merge of key "${key}" (mount '${mount}') needs a plain object`)
      }
      const json = encodeValue(partial, mount, key)
      const ttl = ttlOf(options)
      if (!this.#order.idle) return this.#after(mount, [key], 'merge', (held, left) => this.#merge(mount, key, json, ttl, held, left))
      return this.#merge(mount, key, json, ttl, false)
    } catch (err) {
      return rejected(err)
    }
  }

  #merge(mount, key, json, ttl, held, left) {
    const write = (phase) => this.#native.merge(mount, key, json, ttl, phase)
    const first = () => this.#bounded(this.#native.merge(mount, key, json, ttl, undefined, left), left, 'merge')
    // The mount's count is stale: a merge into a stored object, else the merge of a new key.
    return this.#staged(mount, [key], held, first, (merged) => merged ?? this.#addKeys(mount, write))
  }

  delete(mount, key) {
    try {
      this.#requireMount(mount)
      requireKey(mount, key)
      if (!this.#order.idle) {
        return this.#after(mount, [key], 'delete', (held, left) =>
          this.#bounded(this.#native.delete(mount, key, left), left, 'delete').then(undefined, rethrow),
        )
      }
      return this.#native.delete(mount, key).then(undefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  has(mount, key) {
    try {
      this.#requireMount(mount)
      requireKey(mount, key)
      if (!this.#order.idle) {
        return this.#after(mount, [key], 'has', (held, left) => this.#bounded(this.#native.has(mount, key, left), left, 'has').then(undefined, rethrow))
      }
      return this.#native.has(mount, key).then(undefined, rethrow)
    } catch (err) {
      return rejected(err)
    }
  }

  keys(mount, pattern) {
    try {
      this.#requireMount(mount)
      if (pattern !== undefined) requireString('pattern', pattern)
      const start = () => this.#native.keys(mount, pattern).then(undefined, rethrow)
      return this.#tracked(this.#order.idle ? start() : this.#listing(mount, 'keys', start))
    } catch (err) {
      return rejected(err)
    }
  }

  clear(mount) {
    try {
      this.#requireMount(mount)
      // Several round trips (list, delete, write the defaults): later calls on the mount wait.
      const start = (held) => {
        const call = this.#native.clear(mount).then(undefined, rethrow)
        return held ? call : this.#order.holdUntilSettled(mount, null, call)
      }
      if (!this.#order.idle) return this.#after(mount, null, 'clear', start)
      return start(false)
    } catch (err) {
      return rejected(err)
    }
  }

  getAll(mount) {
    try {
      this.#requireMount(mount)
      const start = () => this.#native.getAll(mount).then((pairs) => decodePairs(pairs, mount), rethrow)
      return this.#tracked(this.#order.idle ? start() : this.#listing(mount, 'getAll', start))
    } catch (err) {
      return rejected(err)
    }
  }

  getMany(mount, keys) {
    try {
      this.#requireMount(mount)
      requireKeys(keys, mount)
      const start = (held, left) =>
        this.#bounded(this.#native.getMany(mount, keys, left), left, 'getMany').then((texts) => decodeFound(keys, texts, mount), rethrow)
      if (!this.#order.idle) return this.#after(mount, keys.slice(), 'getMany', start)
      return start(false, undefined)
    } catch (err) {
      return rejected(err)
    }
  }

  setMany(mount, entries, options) {
    try {
      this.#requireMount(mount)
      const flat = encodeEntries(entries, mount)
      const ttl = ttlOf(options)
      if (!this.#order.idle) return this.#after(mount, keysOf(flat), 'setMany', (held, left) => this.#setMany(mount, flat, ttl, held, left))
      return this.#setMany(mount, flat, ttl, false)
    } catch (err) {
      return rejected(err)
    }
  }

  #setMany(mount, flat, ttl, held, left) {
    const first = () => this.#bounded(this.#native.setMany(mount, flat, ttl, undefined, undefined, left), left, 'setMany')
    // The mount's count is stale: which keys are new, then the write (counting first if any is).
    const finish = (fresh) => this.#addKeys(mount, (phase) => this.#native.setMany(mount, flat, ttl, phase, fresh))
    return this.#staged(mount, keysOf(flat), held, first, finish)
  }

  deleteMany(mount, keys) {
    try {
      this.#requireMount(mount)
      requireKeys(keys, mount)
      const start = (held, left) => this.#bounded(this.#native.deleteMany(mount, keys, left), left, 'deleteMany').then(undefined, rethrow)
      if (!this.#order.idle) return this.#after(mount, keys.slice(), 'deleteMany', start)
      return start(false, undefined)
    } catch (err) {
      return rejected(err)
    }
  }

  getByPrefix(mount, prefix) {
    try {
      this.#requireMount(mount)
      requireString('prefix', prefix, this)
      const start = () => this.#native.getByPrefix(mount, prefix).then((pairs) => decodePairs(pairs, mount), rethrow)
      return this.#tracked(this.#order.idle ? start() : this.#listing(mount, 'getByPrefix', start))
    } catch (err) {
      return rejected(err)
    }
  }

  /** The mount's declared keys: what the store was made with, so also after `close()`. */
  schema(mount) {
    if (!servers.has(this)) throw unboundCall('schema')
    try {
      requireString('mount', mount)
      return parseJson(this.#native.schema(mount))
    } catch (err) {
      throw toDurastateError(err)
    }
  }

  mounts() {
    if (!servers.has(this)) throw unboundCall('mounts')
    return parseJson(this.#native.mounts())
  }

  mount(name) {
    if (!servers.has(this)) throw unboundCall('mount')
    this.schema(name)
    return new KvMount(this, name)
  }

  /**
   * Later calls reject with `DISPOSED` at once; the calls made before finish (a write in
   * phases, or one waiting for another on its keys, runs all its phases; a listing reads
   * all its pages), then the connection or database is released.
   */
  async close() {
    if (!servers.has(this)) throw unboundCall('close')
    this.#closing = true
    const inFlight = () => [...this.#order.held(), ...this.#listings]
    for (let calls = inFlight(); calls.length > 0; calls = inFlight()) {
      await Promise.allSettled(calls)
    }
    await this.#native.close().then(undefined, rethrow)
  }

  get closed() {
    return this.#closing || this.#native.closed
  }
}

/** The calls of one mount of a KvStore, without the mount argument. */
class KvMount {
  #kv

  constructor(kv, name) {
    this.#kv = kv
    this.name = name
    // A view: its calls are bound, so `const { get } = kv.mount('cache')` works (it threw a
    // TypeError synchronously, not a rejected promise).
    for (const method of MOUNT_METHODS) this[method] = KvMount.prototype[method].bind(this)
    Object.freeze(this)
  }

  get(key) {
    return this.#kv.get(this.name, key)
  }
  getOr(key, fallback) {
    return this.#kv.getOr(this.name, key, fallback)
  }
  getJson(key) {
    return this.#kv.getJson(this.name, key)
  }
  setJson(key, json, options) {
    return this.#kv.setJson(this.name, key, json, options)
  }
  set(key, value, options) {
    return this.#kv.set(this.name, key, value, options)
  }
  merge(key, partial, options) {
    return this.#kv.merge(this.name, key, partial, options)
  }
  delete(key) {
    return this.#kv.delete(this.name, key)
  }
  has(key) {
    return this.#kv.has(this.name, key)
  }
  keys(pattern) {
    return this.#kv.keys(this.name, pattern)
  }
  clear() {
    return this.#kv.clear(this.name)
  }
  getAll() {
    return this.#kv.getAll(this.name)
  }
  getMany(keys) {
    return this.#kv.getMany(this.name, keys)
  }
  setMany(entries, options) {
    return this.#kv.setMany(this.name, entries, options)
  }
  deleteMany(keys) {
    return this.#kv.deleteMany(this.name, keys)
  }
  getByPrefix(prefix) {
    return this.#kv.getByPrefix(this.name, prefix)
  }
  schema() {
    return this.#kv.schema(this.name)
  }
}

/** The calls of a mount view, bound to it in its constructor. */
const MOUNT_METHODS = Object.getOwnPropertyNames(KvMount.prototype).filter((name) => name !== 'constructor')

instrument(
  DurableWorkerStore,
  'worker',
  [
    'beginExecution',
    'getExecutionTaskResults',
    'getExecutionTaskResult',
    'beginExecutionTask',
    'tryBeginExecutionTask',
    'commitExecutionTaskResult',
    'isExecutionInProgress',
    'isExecutionTaskInProgress',
    'disposeExecution',
  ],
  // Ids only when they are strings: anything else (a value passed by mistake) is left out.
  (context, executionId, taskId) => {
    if (typeof executionId === 'string') context.executionId = executionId
    if (typeof taskId === 'string') context.taskId = taskId
  },
)
/** The KV calls whose second argument is one key. */
const ONE_KEY = new Set(['get', 'getOr', 'getJson', 'set', 'setJson', 'merge', 'delete', 'has'])
instrument(
  KvStore,
  'kv',
  ['get', 'getOr', 'getJson', 'set', 'setJson', 'merge', 'delete', 'has', 'keys', 'clear', 'getAll', 'getMany', 'setMany', 'deleteMany', 'getByPrefix'],
  function describeKvCall(context, mount, key) {
    if (typeof mount === 'string') context.mount = mount
    if (typeof key === 'string' && ONE_KEY.has(context.operation)) context.key = key
  },
)

function createKvStore(target, options) {
  try {
    checkOptionNames(options, KV_OPTIONS)
    const { mounts, ...connection } = options ?? {}
    const specs = mountSpecs(mounts, connection)
    const resolved = orEnv(target, ...URL_VARIABLES)
    const fields = redisFields(resolved, 'for Postgres give a postgres:// URL', 'the target of a KV store')
    return new KvStore(native.createKvStore(fields, connectionOptions(connection), specs), resolved)
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
exports.CALL_CHANNEL = CALL_CHANNEL
exports.CONNECTION_CHANNEL = CONNECTION_CHANNEL
