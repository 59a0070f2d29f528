#!/usr/bin/env node
// `durastate`: shows what a durastate store holds (worker executions and their steps) and
// reads or writes the KV store. `durastate --help` prints the usage.
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { parseArgs } from 'node:util'
import { describeExecution, disposeExecution, listExecutions, readExecution, resetStep } from './executions.mjs'

const require = createRequire(import.meta.url)

const USAGE = `usage:
  durastate inspect [url] [--prefix p] [--json]                executions, with their step counts
  durastate inspect [url] <executionId> [--prefix p] [--json]  the steps of one execution
  durastate kv get <mount> <key> [url] [--prefix p] [--json]
  durastate kv set <mount> <key> <value> [url] [--prefix p]    value: JSON text, else a string
  durastate kv keys <mount> [pattern] [url] [--prefix p] [--json]
  durastate kv delete <mount> <key> [url] [--prefix p] [--json]
  durastate reset [url] <executionId> <taskId> [--prefix p]   remove a step's result and in-progress
                                                              mark, and its nested steps': they run again
  durastate dispose [url] <executionId> [--prefix p]          remove an execution
  durastate ui [url] [--port N] [--host 127.0.0.1] [--allow-writes] [--prefix p]
                                                              a web page over the store (read-only
                                                              unless --allow-writes)

  url       redis://, rediss://, redis+sentinel://, rediss+sentinel://, redis+cluster://,
            rediss+cluster://, postgres://, postgresql://, sqlite:<path> or file:<path>.
            Default: DURASTATE_URL, then REDIS_URL, then DATABASE_URL, else
            sqlite:./.durastate/state.db
  --prefix  inspect: the worker store's key prefix (default "").
            kv: the mount's key prefix (default "<mount>:", and "kv:" for the mount "default")
  --json    machine-readable output
  --port    ui: the port (default 4321; 0 picks a free one)
  --host    ui: the address to listen on (default 127.0.0.1: this machine only)
  --allow-writes  ui: offer "reset step" and "dispose" on the page
  --        ends the options, for values that start with "-": kv set default n -- -1

  TLS (Redis: the server, every cluster node, the sentinels; any flag turns TLS on):
  --tls-ca <file>          CA certificate(s) the server's certificate must chain to
                           (or the server's own self-signed certificate); default: system roots
  --tls-cert <file>        client certificate, for servers that require one (tls-auth-clients)
  --tls-key <file>         the client certificate's private key
  --tls-servername <name>  the name the server's certificate must carry (default: the host)
  --insecure               accept any server certificate: for tests only`

const OPTIONS = {
  prefix: { type: 'string' },
  'tls-ca': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-servername': { type: 'string' },
  insecure: { type: 'boolean', default: false },
  json: { type: 'boolean', default: false },
  port: { type: 'string' },
  host: { type: 'string' },
  'allow-writes': { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
}
/** Whether `arg` is a store URL: its scheme is one the addon takes (no list kept here). */
function isStoreUrl(arg) {
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(arg)?.[1].toLowerCase()
  return scheme !== undefined && require('../binding.js').storeUrlSchemes().includes(scheme)
}
const DEFAULT_SQLITE_PATH = './.durastate/state.db'
const KV_ARGUMENTS = { get: ['key'], set: ['key', 'value'], delete: ['key'] }
const PREVIEW_LENGTH = 48

class UsageError extends Error {}

class CliError extends Error {
  constructor(code, message) {
    super(message)
    this.code = code
  }
}

// ---------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------

function parseCommand(argv) {
  let parsed
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true })
  } catch (err) {
    throw new UsageError(err.message)
  }
  const { values, positionals } = parsed
  if (values.help) return { name: 'help' }
  const [command, ...rest] = positionals
  const withTls = (parsed) => ({ ...parsed, tls: tlsOption(values, parsed.url) })
  if (command === 'inspect') return withTls(parseInspect(rest, values))
  if (command === 'kv') return withTls(parseKv(rest, values))
  if (command === 'reset') return withTls(parseRepair('reset', rest, values, ['executionId', 'taskId']))
  if (command === 'dispose') return withTls(parseRepair('dispose', rest, values, ['executionId']))
  if (command === 'ui') return withTls(parseUi(rest, values))
  throw new UsageError(command === undefined ? 'no command given' : `unknown command "${command}"`)
}

function parseInspect(args, flags) {
  const { url, other: executionId } = splitUrl(args, { urlFirst: true })
  return { name: 'inspect', url: resolveUrl(url), executionId, prefix: flags.prefix ?? '', json: flags.json }
}

/** `reset` and `dispose`: an optional URL first, then `names`. */
function parseRepair(name, args, flags, names) {
  if (args.length < names.length || args.length > names.length + 1) {
    throw new UsageError(`${name} takes [url] ${names.map((n) => `<${n}>`).join(' ')}`)
  }
  const url = args.length > names.length ? args[0] : undefined
  const [executionId, taskId] = args.slice(args.length - names.length)
  return { name, url: resolveUrl(url), executionId, taskId, prefix: flags.prefix ?? '' }
}

const DEFAULT_UI_PORT = 4321

function parseUi(args, flags) {
  if (args.length > 1) throw new UsageError(`too many arguments: ${args.join(' ')}`)
  const port = flags.port === undefined ? DEFAULT_UI_PORT : Number(flags.port)
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--port must be a port number (0-65535), got ${flags.port}`)
  return { name: 'ui', url: resolveUrl(args[0]), port, host: flags.host ?? '127.0.0.1', allowWrites: flags['allow-writes'], prefix: flags.prefix ?? '' }
}

function parseKv([action, mount, ...args], flags) {
  if (mount === undefined) throw new UsageError('kv needs an action (get, set, keys, delete) and a mount')
  const common = { name: 'kv', action, mount, prefix: flags.prefix ?? defaultMountPrefix(mount), json: flags.json }
  if (action === 'keys') {
    const { url, other: pattern } = splitUrl(args, { urlFirst: false })
    return { ...common, url: resolveUrl(url), pattern }
  }
  if (!Object.hasOwn(KV_ARGUMENTS, action)) throw new UsageError(`unknown kv action "${action}"`)
  const names = KV_ARGUMENTS[action]
  if (args.length < names.length || args.length > names.length + 1) {
    throw new UsageError(`kv ${action} takes <mount> ${names.map((n) => `<${n}>`).join(' ')} [url]`)
  }
  const [key, value] = args
  return { ...common, key, value, url: resolveUrl(args[names.length]) }
}

/** Splits up to two positionals into a URL and one other argument; a lone one is a URL when it has a store scheme. */
function splitUrl(args, { urlFirst }) {
  if (args.length > 2) throw new UsageError(`too many arguments: ${args.join(' ')}`)
  if (args.length === 2) return urlFirst ? { url: args[0], other: args[1] } : { url: args[1], other: args[0] }
  if (args.length === 1 && isStoreUrl(args[0])) return { url: args[0] }
  return { other: args[0] }
}

/** The store option `tls` the TLS flags make, or undefined when none is given. */
function tlsOption(values, url) {
  const tls = {
    ca: values['tls-ca'],
    cert: values['tls-cert'],
    key: values['tls-key'],
    servername: values['tls-servername'],
    rejectUnauthorized: values.insecure ? false : undefined,
  }
  if (Object.values(tls).every((v) => v === undefined)) return undefined
  if (url === undefined || !/^rediss?[+:]/i.test(url)) {
    throw new UsageError('the TLS flags (--tls-*, --insecure) apply to Redis URLs only')
  }
  return tls
}

/** The prefix an app's mount has when its options give none: what createKvStore uses. */
function defaultMountPrefix(mount) {
  return mount === 'default' ? 'kv:' : `${mount}:`
}

/** The store URL to open: the argument, else DURASTATE_URL, then REDIS_URL, then DATABASE_URL; undefined means the default SQLite file. */
function resolveUrl(url) {
  const resolved = url || process.env.DURASTATE_URL || process.env.REDIS_URL || process.env.DATABASE_URL || undefined
  if (resolved && /^memory:/i.test(resolved)) {
    throw new UsageError(
      'memory: is a store inside one process; the CLI runs in a process of its own, where it ' +
        'would only ever see an empty store. Give a redis:// or sqlite:<path> URL.',
    )
  }
  return resolved
}

/** The SQLite file a URL names (as createStore reads it), or null for a Redis URL. */
function sqlitePath(url) {
  if (url === undefined) return DEFAULT_SQLITE_PATH
  const file = /^(sqlite|file):(.*)$/is.exec(url)
  if (!file) return null
  return file[2].startsWith('//') ? file[2].slice(2) : file[2]
}

/** Reading a SQLite file that is not there would create an empty one: refuse instead. */
function requireExistingFile(url) {
  const path = sqlitePath(url)
  if (path !== null && path !== '' && !existsSync(path)) {
    throw new CliError('UNAVAILABLE', `no SQLite file at ${path}`)
  }
}

// ---------------------------------------------------------------------------------------
// Terminal output
// ---------------------------------------------------------------------------------------

function formatSize(bytes) {
  if (bytes === null) return '-'
  if (bytes < 1024) return `${bytes} B`
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`
}

const DURATION_UNITS = [
  ['d', 86_400_000],
  ['h', 3_600_000],
  ['min', 60_000],
  ['s', 1_000],
]

function formatTtl(ms) {
  if (ms === null) return 'no expiry'
  for (const [unit, size] of DURATION_UNITS) {
    if (ms >= size) return `${(ms / size).toFixed(1)} ${unit}`
  }
  return `${ms} ms`
}

function preview(json) {
  if (json === null) return '-'
  const line = json.replace(/\s+/g, ' ')
  return line.length > PREVIEW_LENGTH ? `${line.slice(0, PREVIEW_LENGTH - 1)}…` : line
}

/** Aligned columns: `columns` are [title, 'left' | 'right']; the last column is not padded. */
function table(columns, rows) {
  const widths = columns.map(([title], i) => Math.max(title.length, ...rows.map((row) => row[i].length)))
  const line = (cells) =>
    cells
      .map((cell, i) => {
        if (i === cells.length - 1 && columns[i][1] === 'left') return cell
        return columns[i][1] === 'right' ? cell.padStart(widths[i]) : cell.padEnd(widths[i])
      })
      .join('  ')
  return [line(columns.map(([title]) => title)), ...rows.map(line)].join('\n')
}

function printExecutions(executions, prefix) {
  if (executions.length === 0) return console.log(`no executions under prefix ${JSON.stringify(prefix)}`)
  const columns = [
    ['EXECUTION', 'left'],
    ['STATE', 'left'],
    ['STEPS IN PROGRESS', 'right'],
    ['STEPS DONE', 'right'],
    ['RESULTS', 'right'],
    ['EXPIRES IN', 'right'],
  ]
  const rows = executions.map((e) => [
    e.id,
    e.inProgress ? 'in progress' : 'no marker',
    String(e.stepsInProgress),
    String(e.stepsDone),
    formatSize(e.resultBytes),
    e.inProgress ? formatTtl(e.expiresIn) : '-',
  ])
  console.log(table(columns, rows))
  const inProgress = executions.filter((e) => e.inProgress).length
  console.log(`\n${executions.length} executions, ${inProgress} in progress (prefix ${JSON.stringify(prefix)})`)
}

function printExecution({ id, inProgress, expiresIn, steps }) {
  const state = inProgress ? `in progress, expires in ${formatTtl(expiresIn)}` : 'not in progress (no execution key)'
  console.log(`execution ${id}: ${state}\n`)
  if (steps.length === 0) return console.log('no steps')
  const columns = [
    ['STEP', 'left'],
    ['STATE', 'left'],
    ['SIZE', 'right'],
    ['EXPIRES IN', 'right'],
    ['VALUE', 'left'],
  ]
  const rows = steps.map((s) => [s.id, s.state, formatSize(s.size), formatTtl(s.expiresIn), preview(s.json)])
  console.log(table(columns, rows))
}

function printJson(value) {
  console.log(JSON.stringify(value, null, 2))
}

// ---------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------

/** The addon, loaded only by commands that need it (not --help): index.js first, whose error names the platform when no binary loads. */
function loadAddon() {
  const { createKvStore } = require('../index.js')
  const { createInspector } = require('../binding.js')
  return { createKvStore, createInspector }
}

async function inspect({ url, executionId, prefix, json, tls }) {
  requireExistingFile(url)
  const inspector = loadAddon().createInspector(url, { tls })
  try {
    if (executionId === undefined) {
      const executions = await listExecutions(inspector, prefix)
      return json ? printJson({ prefix, executions }) : printExecutions(executions, prefix)
    }
    const found = await readExecution(inspector, prefix, executionId)
    if (found === null) {
      throw new CliError('NOT_FOUND', `no execution ${JSON.stringify(executionId)} under prefix ${JSON.stringify(prefix)}`)
    }
    const detail = describeExecution(found)
    return json ? printJson(detail) : printExecution(detail)
  } finally {
    inspector.close()
  }
}

async function repair({ name, url, executionId, taskId, prefix, tls }) {
  requireExistingFile(url)
  const inspector = loadAddon().createInspector(url, { tls })
  try {
    const quoted = JSON.stringify(executionId)
    if (name === 'dispose') {
      if (!(await disposeExecution(inspector, prefix, executionId)))
        throw new CliError('NOT_FOUND', `no execution ${quoted} under prefix ${JSON.stringify(prefix)}`)
      return console.log(`disposed execution ${quoted}`)
    }
    const { found, steps } = await resetStep(inspector, prefix, executionId, taskId)
    if (!found) throw new CliError('NOT_FOUND', `no execution ${quoted} under prefix ${JSON.stringify(prefix)}`)
    if (steps.length === 0) throw new CliError('NOT_FOUND', `execution ${quoted} has no step ${JSON.stringify(taskId)}`)
    console.log(`reset ${steps.length} step${steps.length === 1 ? '' : 's'} of execution ${quoted}: ${steps.join(', ')}`)
  } finally {
    inspector.close()
  }
}

async function ui(command) {
  requireExistingFile(command.url)
  const { startUi } = await import('./ui.mjs')
  const { createInspector } = loadAddon()
  const server = await startUi({ ...command, createInspector: (url) => createInspector(url, { tls: command.tls }) })
  const mode = command.allowWrites ? 'writes allowed: reset step, dispose' : 'read-only'
  console.log(`durastate ui: ${server.url} (${mode}; Ctrl-C stops it)`)
  const stop = () => server.close().then(() => process.exit(0))
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
}

/** A value from the command line: its JSON when it parses, else the text itself. */
function parseValue(text) {
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}

const KV_ACTIONS = {
  async get(kv, { mount, key, json }) {
    const value = await kv.getOr(mount, key, undefined)
    if (value === undefined) throw new CliError('NOT_FOUND', `mount ${JSON.stringify(mount)} has no key ${JSON.stringify(key)}`)
    console.log(json ? JSON.stringify(value) : JSON.stringify(value, null, 2))
  },
  async set(kv, { mount, key, value, prefix }) {
    await kv.set(mount, key, parseValue(value))
    console.log(`stored ${JSON.stringify(key)} in mount ${JSON.stringify(mount)} (key ${JSON.stringify(prefix + key)})`)
  },
  async keys(kv, { mount, pattern, json }) {
    const keys = await kv.keys(mount, pattern)
    if (json) return console.log(JSON.stringify(keys))
    for (const key of keys) console.log(key)
  },
  async delete(kv, { mount, key, json }) {
    const deleted = await kv.delete(mount, key)
    if (json) return console.log(JSON.stringify({ deleted }))
    console.log(
      deleted
        ? `deleted ${JSON.stringify(key)} from mount ${JSON.stringify(mount)}`
        : `${JSON.stringify(key)} was not stored in mount ${JSON.stringify(mount)}`,
    )
  },
}

async function kv(command) {
  if (command.action !== 'set') requireExistingFile(command.url)
  const store = loadAddon().createKvStore(command.url, { tls: command.tls, mounts: { [command.mount]: { prefix: command.prefix } } })
  try {
    await KV_ACTIONS[command.action](store, command)
  } finally {
    await store.close()
  }
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

/** The stable code and the message of an error: a DurastateError, a native error (its `code` is set natively), or anything else. */
function describeError(err) {
  const message = err instanceof Error ? err.message : String(err)
  return { code: typeof err?.code === 'string' ? err.code : 'INTERNAL', message }
}

async function main(argv) {
  const command = parseCommand(argv)
  if (command.name === 'help') return console.log(USAGE)
  if (command.name === 'inspect') return inspect(command)
  if (command.name === 'reset' || command.name === 'dispose') return repair(command)
  if (command.name === 'ui') return ui(command)
  return kv(command)
}

main(process.argv.slice(2)).catch((err) => {
  if (err instanceof UsageError) {
    console.error(`durastate: ${err.message}\n\n${USAGE}`)
    process.exitCode = 2
    return
  }
  const { code, message } = describeError(err)
  console.error(`durastate: ${message} (${code})`)
  process.exitCode = 1
})
