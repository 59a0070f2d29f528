#!/usr/bin/env node
// `durastate`: shows what a durastate store holds (worker executions and their steps) and
// reads or writes the KV store. `durastate --help` prints the usage.
import { createRequire } from 'node:module'
import { parseArgs } from 'node:util'
import {
  describeExecution,
  disposeExecution,
  formatJson,
  KV_DEFAULT_PREFIX,
  listExecutions,
  looksLikeKvEntry,
  readExecution,
  redactSecrets,
  redactUrl,
  resetStep,
} from './executions.mjs'

const require = createRequire(import.meta.url)
const { URL_VARIABLES, orEnv } = require('../env.js')

const USAGE = `usage:
  durastate inspect [url] [--prefix p] [--json]                executions, with their step counts
  durastate inspect [url] <executionId> [--prefix p] [--json]  the steps of one execution
  durastate kv get <mount> <key> [url] [--prefix p] [--json]
  durastate kv set <mount> <key> <value> [url] [--prefix p] [--ttl ms]
                                                              value: JSON text, else a string
  durastate kv keys <mount> [pattern] [url] [--prefix p] [--json]
  durastate kv delete <mount> <key> [url] [--prefix p] [--json]
  durastate reset [url] <executionId> <taskId> [--prefix p]   remove a step's result and in-progress
                                                              mark, and its nested steps': they run again
  durastate dispose [url] <executionId> [--prefix p] [--force]
                                                              remove an execution
  durastate ui [url] [--port N] [--host 127.0.0.1] [--allow-writes] [--prefix p]
                                                              a web page over the store (read-only
                                                              unless --allow-writes)

  url       redis://, rediss://, redis+unix://, redis+sentinel://, rediss+sentinel://,
            redis+cluster://, rediss+cluster://, postgres://, postgresql://, sqlite:<path> or
            file:<path>.
            Default: DURASTATE_URL, then REDIS_URL, then DATABASE_URL, else
            sqlite:./.durastate/state.db.
            A lone argument after inspect or kv keys <mount> is the execution id or the
            pattern unless it can only be a URL: <scheme>://..., or sqlite:/file: and a
            path (with a "/", or ending in .db, .sqlite, .sqlite3) without * ? [.
            Give both to be explicit: inspect <url> <executionId>, kv keys <mount> <pattern> <url>
  --prefix  inspect: the worker store's key prefix (default "").
            kv: the mount's key prefix (default "<mount>:", and "kv:" for the mount "default",
            as createKvStore's implicit default mount; an app that declares a mount named
            default stores it under "default:": pass --prefix default:)
  --schema  Postgres URLs: the schema holding the store's tables, as the store's option
            \`schema\` (default "durastate"; 1 to 63 bytes, no NUL or "$", not pg_...)
  --json    machine-readable output
  --ttl     kv set: the entry's time to live in ms (default: none, the entry stays: the CLI
            does not know the ttl an app's mount options give)
  --force   dispose: also a key that holds only "true" under "kv:" (by default taken
            for the KV entry \`true\` that createKvStore's default mount stores there)
  --port    ui: the port, 0-65535 (default 4321; 0 picks a free one)
  --host    ui: the address to listen on (default 127.0.0.1: this machine only; any other
            lets the network read the store, and with --allow-writes reset and dispose)
  --allow-writes  ui: offer "reset step" and "dispose" on the page
  --        ends the options, for values that start with "-": kv set default n -- -1

  TLS (Redis: the server, every cluster node, the sentinels; any flag turns TLS on;
  Postgres: --tls-ca, --tls-cert, --tls-key and --insecure, as sslmode=verify-full unless
  the URL's sslmode says otherwise (refused with sslmode=disable, allow or prefer); the URL
  can also name files: sslrootcert=, sslcert=, sslkey=):
  --tls-ca <file>          CA certificate(s) the server's certificate must chain to
                           (or the server's own self-signed certificate); default: system roots
  --tls-cert <file>        client certificate, for servers that require one (tls-auth-clients)
  --tls-key <file>         the client certificate's private key
  --tls-servername <name>  the name the server's certificate must carry (default: the host)
  --insecure               accept any server certificate: for tests only`

const OPTIONS = {
  prefix: { type: 'string' },
  schema: { type: 'string' },
  'tls-ca': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-servername': { type: 'string' },
  insecure: { type: 'boolean', default: false },
  force: { type: 'boolean', default: false },
  json: { type: 'boolean', default: false },
  port: { type: 'string' },
  ttl: { type: 'string' },
  host: { type: 'string' },
  'allow-writes': { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
}
/** Whether `arg` is a store URL: its scheme is one the addon takes (no list kept here; this loads the addon). */
function isStoreUrl(arg) {
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(arg)?.[1].toLowerCase()
  return scheme !== undefined && loadAddon().storeUrlSchemes().includes(scheme)
}
/**
 * Connecting gets less time than a call: a connection that takes the whole of it (a TLS
 * handshake a plain-text server never answers, a host that drops packets) then fails
 * with its own reason (`TLS`, `UNAVAILABLE`) before the call's `TIMEOUT`, which would
 * otherwise race it.
 */
const TIMEOUTS = { connectTimeout: 4000, commandTimeout: 5000 }

/**
 * The timeouts (and retries) of a command on `url`. With Sentinel, a call waits through
 * failed connects (a master that cannot be reached is being replaced), up to
 * `retry.attempts` more of them, each up to connectTimeout: a sentinel that never answers
 * then made the call's TIMEOUT win, its message naming no sentinel. The CLI connects once:
 * the failure is said as such (UNAVAILABLE, naming the sentinels) within connectTimeout.
 */
function timeouts(url) {
  return url !== undefined && /^rediss?\+sentinel:/i.test(url) ? { ...TIMEOUTS, retry: { attempts: 0 } } : TIMEOUTS
}
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
    throw new UsageError(parseArgsMessage(err, argv))
  }
  const { values, positionals } = parsed
  if (values.help) return { name: 'help' }
  const [command, ...rest] = positionals
  refuseForeignFlags(command, values)
  const withTls = (parsed) => ({ ...parsed, tls: tlsOption(values, parsed.url), schema: schemaOption(values.schema, parsed.url) })
  if (command === 'inspect') return withTls(parseInspect(rest, values))
  if (command === 'kv') return withTls(parseKv(rest, values))
  if (command === 'reset') return withTls(parseRepair('reset', rest, values, ['executionId', 'taskId']))
  if (command === 'dispose') return withTls(parseRepair('dispose', rest, values, ['executionId']))
  if (command === 'ui') return withTls(parseUi(rest, values))
  throw new UsageError(command === undefined ? 'no command given' : `unknown command${named(command, PLAIN_WORD)}`)
}

/** A command, action or option name that may be repeated in a message: a plain word (never a URL, a password, an escape sequence). */
const PLAIN_WORD = /^[a-z][a-z-]{0,31}$/
const PLAIN_OPTION = /^--?[a-z][a-z-]{0,39}$/

/** ` "name"` when `name` is a plain word, else ` (not repeated here)`: what a usage message says of an argument. */
function named(name, plain) {
  return plain.test(name) ? ` "${name}"` : ' (not repeated here)'
}

/**
 * The usage message for an error of parseArgs, made from its code: its own message quotes
 * the argument (`Unknown option '--redis://u:p/ss@h'`), which may hold a password or an
 * escape sequence. Only a known option, or an unknown one that is a plain word, is named.
 */
function parseArgsMessage(err, argv) {
  if (err?.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
    const end = argv.indexOf('--')
    const given = (end === -1 ? argv : argv.slice(0, end)).find((arg) => arg.startsWith('-') && arg !== '-' && !isKnownOption(arg))
    const name = given?.startsWith('--') ? given.split('=')[0] : given
    return `unknown option${named(name ?? '', PLAIN_OPTION)}; an argument that starts with "-" goes after --`
  }
  if (err?.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
    // The option is one of OPTIONS: its name is ours.
    const option = Object.keys(OPTIONS).find((name) => String(err.message).includes(`'--${name}`))
    if (option !== undefined && OPTIONS[option].type === 'boolean') return `--${option} takes no value`
    if (option !== undefined) return `--${option} needs a value (--${option}=<value> for one that starts with "-")`
  }
  return 'the arguments cannot be read (not repeated here)'
}

/** Whether `arg` (starting with "-") is an option of OPTIONS (`--name`, `--name=value`, `-h`). */
function isKnownOption(arg) {
  if (arg.startsWith('--')) return Object.hasOwn(OPTIONS, arg.slice(2).split('=')[0])
  return arg === '-h'
}

/** The flags only some commands take: given to another, they are refused, not ignored. */
const FLAG_COMMANDS = { port: ['ui'], host: ['ui'], 'allow-writes': ['ui'], force: ['dispose'], ttl: ['kv'], json: ['inspect', 'kv'] }

function refuseForeignFlags(command, values) {
  for (const [flag, commands] of Object.entries(FLAG_COMMANDS)) {
    const given = values[flag] !== undefined && values[flag] !== false
    if (given && command !== undefined && !commands.includes(command)) {
      throw new UsageError(`--${flag} applies to ${commands.join(' and ')} only${PLAIN_WORD.test(command) ? `, not to ${command}` : ''}`)
    }
  }
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
  if (url === undefined) refuseUrlAs([executionId, taskId], `${name} <url> ${names.map((n) => `<${n}>`).join(' ')}: the URL goes first`)
  return { name, url: resolveUrl(url), executionId, taskId, prefix: flags.prefix ?? '', force: flags.force }
}

const DEFAULT_UI_PORT = 4321

function parseUi(args, flags) {
  if (args.length > 1) throw tooMany(args, 'ui takes at most [url]')
  // Digits only: Number() reads '' and ' ' as 0 (a random port), '0x50' as 80, '1e3' as 1000.
  const port = flags.port === undefined ? DEFAULT_UI_PORT : /^\d{1,5}$/.test(flags.port) ? Number(flags.port) : NaN
  if (!(port >= 0 && port <= 65535)) throw new UsageError('--port must be a port number (0-65535)')
  // '' would listen on every interface (Node.js reads it as no address at all).
  if (flags.host !== undefined && flags.host.trim() === '')
    throw new UsageError('--host must name an address, not an empty or blank one; without --host the UI listens on 127.0.0.1')
  return { name: 'ui', url: resolveUrl(args[0]), port, host: flags.host ?? '127.0.0.1', allowWrites: flags['allow-writes'], prefix: flags.prefix ?? '' }
}

function parseKv([action, mount, ...args], flags) {
  if (mount === undefined) throw new UsageError('kv needs an action (get, set, keys, delete) and a mount')
  const common = { name: 'kv', action, mount, prefix: flags.prefix ?? defaultMountPrefix(mount), prefixGiven: flags.prefix !== undefined, json: flags.json }
  if (action === 'keys') {
    const { url, other: pattern } = splitUrl(args, { urlFirst: false })
    return { ...common, url: resolveUrl(url), pattern }
  }
  if (!Object.hasOwn(KV_ARGUMENTS, action)) throw new UsageError(`unknown kv action${named(action, PLAIN_WORD)}: give get, set, keys or delete`)
  const names = KV_ARGUMENTS[action]
  if (args.length < names.length || args.length > names.length + 1) {
    throw new UsageError(`kv ${action} takes <mount> ${names.map((n) => `<${n}>`).join(' ')} [url]`)
  }
  const [key, value] = args
  // Without a URL, a value that is a store URL with a password is refused too (`kv set
  // default k <url>` with the value left out would store the URL, password and all).
  if (args.length === names.length) refuseUrlAs([key, value], `kv ${action} <mount> ${names.map((n) => `<${n}>`).join(' ')} <url>: the URL goes last`)
  if (action === 'set' && flags.json) throw new UsageError('--json applies to kv get, keys and delete, and to inspect: kv set prints one line')
  return { ...common, key, value, ttl: ttlOption(flags.ttl, action), url: resolveUrl(args[names.length]) }
}

/**
 * Refuses an id, task id or key that is a store URL with user information
 * (`<scheme>://…@…`, of a scheme stores take) where no URL was given: the URL, with its
 * password, was put in the wrong place, and the store came from the environment. Not
 * echoed: the password may hold a raw "/" or space, which a message cannot always bound.
 * A store-scheme URL without an "@" (`file:///home/me/report.pdf`, `redis://cache-key/1`)
 * is an ordinary id or key: it carries no password, and ids and keys are often URLs.
 */
function refuseUrlAs(values, hint) {
  if (values.some((value) => value !== undefined && isStoreUrl(value) && /^[a-z][a-z0-9+.-]*:\/\/[^]*@/i.test(value))) {
    throw new UsageError(
      `an argument taken as an id, key or value looks like a store URL with a user name or password (not repeated here); give it in its place: ${hint}`,
    )
  }
}

/** The usage error for extra positionals: counted, never echoed (one may be a URL with its password). */
function tooMany(args, what) {
  return new UsageError(`too many arguments (${args.length} given): ${what}`)
}

/** `--ttl` of kv set, in ms (a positive integer), or undefined when not given. */
function ttlOption(ttl, action) {
  if (ttl === undefined) return undefined
  if (action !== 'set') throw new UsageError('--ttl applies to kv set only')
  if (!/^\d{1,16}$/.test(ttl) || Number(ttl) < 1 || !Number.isSafeInteger(Number(ttl))) {
    throw new UsageError('--ttl must be a time to live in ms, a positive integer')
  }
  return Number(ttl)
}

/** Splits up to two positionals into a URL and one other argument; a lone one is the URL only when it cannot be the other. */
function splitUrl(args, { urlFirst }) {
  if (args.length > 2) throw tooMany(args, 'at most two arguments are taken here')
  if (args.length === 2) return urlFirst ? { url: args[0], other: args[1] } : { url: args[1], other: args[0] }
  if (args.length === 1 && isUnambiguousUrl(args[0])) return { url: args[0] }
  return { other: args[0] }
}

/**
 * Whether a lone argument where the URL is optional (`inspect <id>`, `kv keys <mount>
 * <pattern>`) is the URL. Ids and KV keys often start like a scheme ("file:report.pdf",
 * "redis:conf", "memory:*"), so it is the URL only when nothing else is likely: a store
 * scheme and "//", `sqlite:`/`file:` and a path without glob characters, or a bare
 * `memory:` (refused later, with the reason).
 */
function isUnambiguousUrl(arg) {
  if (!isStoreUrl(arg)) return false
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(arg) || /^memory:$/i.test(arg)) return true
  const path = /^(?:sqlite|file):(.*)$/is.exec(arg)?.[1]
  return path !== undefined && !/[*?[]/.test(path) && (path.includes('/') || /\.(db|sqlite3?)$/i.test(path))
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
  if (url !== undefined && /^postgres(?:ql)?:\/\//i.test(url)) {
    if (tls.servername !== undefined) {
      throw new UsageError("--tls-servername applies to Redis URLs only: Postgres checks the certificate against the URL's host")
    }
    // disable never uses TLS; allow and prefer fall back to plain text when the server
    // offers none, which the flags (a CA to check, a client certificate) would hide.
    const sslmode = postgresSslmode(url)
    if (sslmode === 'disable' || sslmode === 'allow' || sslmode === 'prefer') {
      const given = ['tls-ca', 'tls-cert', 'tls-key', 'insecure'].filter((flag) => values[flag] !== undefined && values[flag] !== false)
      const why = sslmode === 'disable' ? 'turns it off (the connection would be plain text)' : 'connects in plain text when the server offers no TLS'
      throw new UsageError(
        `${given.map((flag) => `--${flag}`).join(', ')} ask${given.length === 1 ? 's' : ''} for TLS, but the URL's sslmode=${sslmode} ${why}: ` +
          'drop one, or give sslmode=verify-full (or require, verify-ca)',
      )
    }
    return tls
  }
  if (url === undefined || !/^rediss?[+:]/i.test(url)) {
    throw new UsageError('the TLS flags (--tls-*, --insecure) apply to Redis and Postgres URLs only')
  }
  return tls
}

/** The `sslmode` of a Postgres URL's query, as the addon reads it (names and values percent-decoded, the last one counts), or undefined. */
function postgresSslmode(url) {
  const query = /^[^?#]*\?([^#]*)/.exec(url)?.[1] ?? ''
  const decode = (text) => {
    try {
      return decodeURIComponent(text)
    } catch {
      return text
    }
  }
  let mode
  for (const pair of query.split('&')) {
    const at = pair.indexOf('=')
    if (at === -1) continue
    const [name, value] = [decode(pair.slice(0, at)), decode(pair.slice(at + 1))]
    if (name === 'sslmode') mode = value
    if (name === 'ssl' && value === 'true') mode = 'require'
  }
  return mode
}

/** The store option `schema` of `--schema` (Postgres URLs only), or undefined when not given. */
function schemaOption(schema, url) {
  if (schema === undefined) return undefined
  if (url === undefined || !/^postgres(?:ql)?:\/\//i.test(url)) {
    throw new UsageError('--schema applies to Postgres URLs only (postgres://, postgresql://)')
  }
  const bytes = Buffer.byteLength(schema)
  if (bytes === 0 || bytes > 63 || schema.includes('\0') || schema.includes('$') || schema.startsWith('pg_')) {
    throw new UsageError('--schema must be 1 to 63 bytes without NUL or "$", not starting with "pg_"')
  }
  return schema
}

/** The prefix an app's mount has when its options give none: what createKvStore uses. */
function defaultMountPrefix(mount) {
  return mount === 'default' ? 'kv:' : `${mount}:`
}

/** The store URL to open: the argument, else DURASTATE_URL, then REDIS_URL, then DATABASE_URL; undefined means the default SQLite file. */
function resolveUrl(url) {
  const resolved = orEnv(url, ...URL_VARIABLES)
  if (resolved && /^memory:/i.test(resolved)) {
    throw new UsageError(
      'memory: is a store inside one process; the CLI runs in a process of its own, where it ' +
        'would only ever see an empty store. Give a redis:// or sqlite:<path> URL.',
    )
  }
  if (resolved && !isStoreUrl(resolved)) {
    // Only the scheme is repeated: the rest may hold a password.
    const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(resolved)?.[1]
    throw new UsageError(
      `${scheme === undefined ? 'a store URL needs a scheme' : `unsupported store URL scheme "${scheme}:"`}: ` +
        'give redis://, rediss://, redis+unix://, redis+sentinel://, rediss+sentinel://, redis+cluster://, ' +
        'rediss+cluster://, postgres://, postgresql://, sqlite:<path> or file:<path>',
    )
  }
  return resolved
}

/** Whether `url` opens a SQLite file (undefined: the default one). */
function isSqliteUrl(url) {
  return url === undefined || /^(?:sqlite|file):/i.test(url)
}

// ---------------------------------------------------------------------------------------
// Terminal output
// ---------------------------------------------------------------------------------------

// oxlint-disable-next-line no-control-regex -- finding control characters is the point
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g
const ESCAPES = { '\n': '\\n', '\r': '\\r', '\t': '\\t' }

/**
 * `text` with control characters (C0, DEL, C1) and bidirectional overrides escaped as
 * \n or \u001b: ids, keys and values come from the store, and one with a newline would
 * break a table line, one with an escape sequence would reach the terminal as a command.
 */
function printable(text) {
  return text.replace(UNPRINTABLE, (c) => ESCAPES[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}

// oxlint-disable-next-line no-control-regex -- finding control characters is the point
const UNPRINTABLE_IN_JSON = /[\u007f-\u009f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g

/** JSON text with the characters JSON allows raw in strings but a terminal acts on escaped as \uXXXX (the same JSON value). */
function printableJson(text) {
  return text.replace(UNPRINTABLE_IN_JSON, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}

/**
 * A name, quoted for a message (JSON escapes C0 only). A name the user gave may be a store
 * URL put in the wrong place: its password is redacted, the user information read up to
 * the last "@" (the quotes bound the URL).
 */
function quote(text) {
  return printable(redactSecrets(JSON.stringify(text)))
}

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
  const line = printable(json.replace(/\s+/g, ' '))
  return line.length > PREVIEW_LENGTH ? `${line.slice(0, PREVIEW_LENGTH - 1)}…` : line
}

/** Aligned columns: `columns` are [title, 'left' | 'right']; the last column is not padded. */
function table(columns, rows) {
  // A loop, not Math.max(...lengths): V8 (Node.js, Deno) throws a RangeError for a call
  // with more than about 120,000 arguments, and a store may hold more executions or steps.
  const widths = columns.map(([title], i) => {
    let width = title.length
    for (const row of rows) width = Math.max(width, row[i].length)
    return width
  })
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
  if (executions.length === 0) return console.log(`no executions under prefix ${quote(prefix)}`)
  const columns = [
    ['EXECUTION', 'left'],
    ['STATE', 'left'],
    ['STEPS IN PROGRESS', 'right'],
    ['STEPS DONE', 'right'],
    ['RESULTS', 'right'],
    ['EXPIRES IN', 'right'],
  ]
  const rows = executions.map((e) => [
    printable(e.id),
    e.inProgress ? 'in progress' : 'no marker',
    String(e.stepsInProgress),
    String(e.stepsDone),
    formatSize(e.resultBytes),
    e.inProgress ? formatTtl(e.expiresIn) : '-',
  ])
  console.log(table(columns, rows))
  const inProgress = executions.filter((e) => e.inProgress).length
  console.log(`\n${executions.length} executions, ${inProgress} in progress (prefix ${quote(prefix)})`)
}

function printExecution({ id, inProgress, expiresIn, steps }) {
  const state = inProgress ? `in progress, expires in ${formatTtl(expiresIn)}` : 'not in progress (no execution key)'
  console.log(`execution ${printable(redactUrl(id))}: ${state}\n`)
  if (steps.length === 0) return console.log('no steps')
  const columns = [
    ['STEP', 'left'],
    ['STATE', 'left'],
    ['SIZE', 'right'],
    ['EXPIRES IN', 'right'],
    ['VALUE', 'left'],
  ]
  const rows = steps.map((s) => [printable(s.id), s.state, formatSize(s.size), formatTtl(s.expiresIn), preview(s.json)])
  console.log(table(columns, rows))
}

/** `value` as indented JSON, C1 controls and bidi overrides escaped as in `kv get --json` (the same JSON value). */
function printJson(value) {
  console.log(printableJson(JSON.stringify(value, null, 2)))
}

// ---------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------

/** The addon, loaded only by commands that need it (not --help): index.js first, whose error names the platform when no binary loads. */
function loadAddon() {
  const { createKvStore } = require('../index.js')
  const { createInspector, storeUrlSchemes } = require('../binding.js')
  return { createKvStore, createInspector, storeUrlSchemes }
}

/** NOT_FOUND for execution `id`; when a lone "true" is there but taken for a KV entry, says so. */
async function notFound(inspector, prefix, id) {
  const message = `no execution ${quote(id)} under prefix ${quote(prefix)}`
  if (!looksLikeKvEntry(prefix, id) || (await readExecution(inspector, prefix, id, { force: true })) === null) {
    return new CliError('NOT_FOUND', message)
  }
  return new CliError(
    'NOT_FOUND',
    `${message}: key ${quote(prefix + id)} holds only "true" under the KV store's default prefix ${quote(KV_DEFAULT_PREFIX)}, ` +
      'so it is taken for a KV entry `true`, not an execution marker (dispose --force removes it anyway)',
  )
}

/**
 * The id execution `id` is stored under: `id` itself, or `{id}` when only that holds an
 * execution (a store with `keyLayout: 'hashtag'` keeps its keys at `<prefix>{<id>}`, and
 * the listing shows them so).
 */
async function storedId(inspector, prefix, id) {
  if (id.startsWith('{') || (await readExecution(inspector, prefix, id, { force: true })) !== null) return id
  return (await readExecution(inspector, prefix, `{${id}}`)) !== null ? `{${id}}` : id
}

/**
 * The store option of the CLI's inspectors and its KV reads: `createTables: false` (for
 * them alone: internal). The addon then never creates, migrates or writes a store in
 * order to open it: a SQLite file that is not there, is empty or is in an older format,
 * and a Postgres schema without a store, reject UNAVAILABLE (the addon reads the URL's
 * path, `file:` percent-escapes and hosts included, as it does for a store).
 */
const READ_ONLY = { createTables: false }

async function inspect({ url, executionId, prefix, json, tls, schema }) {
  const inspector = loadAddon().createInspector(url, { ...timeouts(url), ...READ_ONLY, tls, schema })
  try {
    if (executionId === undefined) {
      const executions = await listExecutions(inspector, prefix)
      return json ? printJson({ prefix, executions }) : printExecutions(executions, prefix)
    }
    const found = await readExecution(inspector, prefix, await storedId(inspector, prefix, executionId))
    if (found === null) throw await notFound(inspector, prefix, executionId)
    const detail = describeExecution(found)
    return json ? printJson(detail) : printExecution(detail)
  } finally {
    await inspector.close()
  }
}

async function repair({ name, url, executionId: given, taskId, prefix, tls, schema, force }) {
  const inspector = loadAddon().createInspector(url, { ...timeouts(url), ...READ_ONLY, tls, schema })
  try {
    const executionId = await storedId(inspector, prefix, given)
    const quoted = quote(executionId)
    if (name === 'dispose') {
      if (!(await disposeExecution(inspector, prefix, executionId, { force }))) throw await notFound(inspector, prefix, executionId)
      return console.log(`disposed execution ${quoted}`)
    }
    const { found, steps } = await resetStep(inspector, prefix, executionId, taskId)
    if (!found) throw await notFound(inspector, prefix, executionId)
    if (steps.length === 0) throw new CliError('NOT_FOUND', `execution ${quoted} has no step ${quote(taskId)}`)
    console.log(`reset ${steps.length} step${steps.length === 1 ? '' : 's'} of execution ${quoted}: ${steps.map(printable).join(', ')}`)
  } finally {
    await inspector.close()
  }
}

async function ui(command) {
  const { startUi } = await import('./ui.mjs')
  const { createInspector } = loadAddon()
  const open = (url) => createInspector(url, { ...timeouts(url), ...READ_ONLY, tls: command.tls, schema: command.schema })
  // The signal handlers come before the URL line: a supervisor or a script that stops the UI
  // as soon as it printed its URL got the default action (killed by the signal, nothing
  // closed) instead of the clean stop (exit 0). A signal before the server listens stops it
  // once it does. (once: a second Ctrl-C ends the process at once.)
  let server
  let stopping = false
  const stop = () => {
    stopping = true
    if (server === undefined) return
    // Closing waits for the calls to the store in flight (each ends within commandTimeout):
    // said, so that a wait of seconds (a store that does not answer) is not taken for a hang.
    if (server.inFlight > 0) {
      console.error(`durastate ui: stopping… (waiting up to ${TIMEOUTS.commandTimeout / 1000} s for a call to the store; Ctrl-C again quits at once)`)
    }
    server.close().then(() => process.exit(0))
  }
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  try {
    if (isSqliteUrl(command.url)) {
      // A file that is not there (or holds no store of this format) fails here, before the
      // page is served, as on every other command; a server that is down may come back.
      const probe = open(command.url)
      try {
        await probe.scanExecutions('0', '', 1)
      } finally {
        await probe.close()
      }
    }
    server = await startUi({ ...command, createInspector: open })
  } catch (err) {
    process.off('SIGINT', stop)
    process.off('SIGTERM', stop)
    throw err
  }
  if (stopping) return stop()
  const mode = command.allowWrites ? 'writes allowed: reset step, dispose' : 'read-only'
  console.log(`durastate ui: ${server.url} (${mode}; Ctrl-C stops it)`)
}

/** The JSON text to store for a value from the command line: the text itself when it is JSON (its digits kept), else the text as a JSON string. */
function valueJson(text) {
  try {
    JSON.parse(text)
    return text
  } catch {
    return JSON.stringify(text)
  }
}

/**
 * For the mount "default" read under "kv:" (no --prefix) where nothing was found: an app that
 * declares a mount named default (`mounts: { default: {} }`) stores it under "default:".
 */
function defaultMountHint({ mount, prefixGiven }) {
  if (mount !== 'default' || prefixGiven) return ''
  return (
    `; read under prefix "kv:", createKvStore's implicit default mount: ` +
    'a mount named default that the app declares (mounts: { default: ... }) is stored under "default:" (--prefix default:)'
  )
}

const KV_ACTIONS = {
  // Values go as JSON text (getJson, setJson), never through JS numbers: 12345678901234567890
  // would be printed, and 9007199254740993 stored, with other digits.
  async get(kv, command) {
    const { mount, key, json } = command
    const text = await kv.getJson(mount, key)
    if (text === undefined) throw new CliError('NOT_FOUND', `mount ${quote(mount)} has no key ${quote(key)}${defaultMountHint(command)}`)
    try {
      JSON.parse(text)
    } catch (err) {
      throw new CliError('CORRUPT_DATA', `stored JSON of key ${quote(key)} in mount ${quote(mount)} is not valid: ${err.message}`)
    }
    // The stored text, as stored (--json) or indented: never re-printed through JS values.
    // Characters JSON lets stand raw in a string but a terminal acts on (C1, bidi
    // overrides) are escaped: the same JSON value.
    console.log(printableJson(json ? text : formatJson(text)))
  },
  async set(kv, { mount, key, value, prefix, ttl }) {
    await kv.setJson(mount, key, valueJson(value), ttl === undefined ? undefined : { ttl })
    const expires = ttl === undefined ? '' : `, expires in ${ttl} ms`
    console.log(`stored ${quote(key)} in mount ${quote(mount)} (key ${quote(prefix + key)}${expires})`)
  },
  async keys(kv, command) {
    const { mount, pattern, json } = command
    const keys = await kv.keys(mount, pattern)
    // (on stderr: stdout stays the list, [] with --json)
    if (keys.length === 0 && defaultMountHint(command)) console.error(`durastate: no keys in mount "default"${defaultMountHint(command)}`)
    if (json) return console.log(printableJson(JSON.stringify(keys)))
    for (const key of keys) console.log(printable(key))
  },
  async delete(kv, command) {
    const { mount, key, json } = command
    const deleted = await kv.delete(mount, key)
    if (json) return console.log(printableJson(JSON.stringify({ deleted })))
    console.log(
      deleted ? `deleted ${quote(key)} from mount ${quote(mount)}` : `${quote(key)} was not stored in mount ${quote(mount)}${defaultMountHint(command)}`,
    )
  },
}

async function kv(command) {
  const store = loadAddon().createKvStore(command.url, {
    ...timeouts(command.url),
    tls: command.tls,
    schema: command.schema,
    // Reads find the store or fail: they never create a SQLite file or a Postgres schema
    // and its tables, nor migrate an older SQLite file (READ_ONLY); kv set creates them.
    [Symbol.for('durastate.internal.createTables')]: command.action === 'set',
    mounts: { [command.mount]: { prefix: command.prefix } },
  })
  try {
    await KV_ACTIONS[command.action](store, command)
  } finally {
    await store.close()
  }
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

/**
 * The stable code and the message of an error: a DurastateError, a native error (its `code`
 * is set natively), or anything else. The message may quote the store URL (a native one
 * keeps a URL's `?sentinelPassword=`): its secrets are redacted, control characters escaped.
 */
function describeError(err) {
  const message = err instanceof Error ? err.message : String(err)
  const code = typeof err?.code === 'string' ? err.code : 'INTERNAL'
  return { code: code === 'InvalidArg' ? 'INVALID_INPUT' : code, message: printable(redactSecrets(message)) }
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
    // Usage messages repeat no argument; escaped anyway, should one ever slip in.
    console.error(`durastate: ${printable(redactSecrets(err.message))}\n\n${USAGE}`)
    process.exitCode = 2
    return
  }
  const { code, message } = describeError(err)
  console.error(`durastate: ${message} (${code})`)
  process.exitCode = 1
})
