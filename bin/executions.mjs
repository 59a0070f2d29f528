// Reading and repairing executions, for `durastate inspect`, `reset`, `dispose` and `ui`,
// through the backend's own listing and the inspector's two repair tools (the store
// operations scanExecutions, execution, resetSteps and dispose): no key layout is
// derived here, except the KV store's default prefix (see looksLikeKvEntry). Also what
// the CLI and the page both show: stored JSON reformatted as is, secrets redacted.

import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
/** durastate's error class, loaded when first needed: importing this module loads no addon (the CLI's `--help`, and its one-line error when no binary loads). */
const durastateError = (code, message) => new (require('../index.js').DurastateError)(code, message)

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

/** The prefix createKvStore gives its default mount, whose entries share the default file and database with the worker store. */
export const KV_DEFAULT_PREFIX = 'kv:'

/**
 * Whether the key `prefix + id` lies under the KV store's default prefix while the worker
 * prefix does not (with a worker prefix that starts with "kv:", the overlap was chosen).
 * There a KV value `true` is stored as the text "true", exactly what an execution's
 * marker holds: a key holding that alone, with no step, is taken for the KV entry.
 */
export function looksLikeKvEntry(prefix, id) {
  return !prefix.startsWith(KV_DEFAULT_PREFIX) && (prefix + id).startsWith(KV_DEFAULT_PREFIX)
}

/**
 * One execution, as the backend holds it, or null when nothing is stored under `id`, or
 * when it is only a marker where a KV entry `true` looks the same (unless `force`).
 */
export async function readExecution(inspector, prefix, id, { force = false } = {}) {
  const found = await inspector.execution(prefix + id)
  const transactions = toMap(found.claims)
  const results = toMap(found.results)
  const inProgress = found.marker === 'true'
  if (transactions.size === 0 && results.size === 0 && (!inProgress || (!force && looksLikeKvEntry(prefix, id)))) return null
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
 * The ids of the executions under `prefix`, sorted, those containing `search` only when
 * given. The scan stops after `maxScanned` keys (matching or not: a search that matches
 * nothing costs the same), then `truncated` says there may be more.
 */
export async function listExecutionIds(inspector, prefix, { maxScanned = Infinity, search } = {}) {
  const ids = new Set()
  let cursor = '0'
  let scanned = 0
  // A page may bring more keys than asked (COUNT is a hint): those past the cap are left
  // out, and the listing says it may be incomplete.
  let dropped = false
  // A cursor given twice (a proxy or server that does not iterate as Redis does) would
  // make the listing go round forever.
  const cursors = new Set()
  do {
    const [next, ...keys] = await inspector.scanExecutions(cursor, prefix, Math.min(SCAN_COUNT, maxScanned - scanned))
    if (next !== '0' && cursors.has(next)) {
      throw durastateError(
        'UNAVAILABLE',
        `the server answered SCAN with cursor ${next} a second time in one listing, so the listing would never end (a proxy or server that does not iterate as Redis does)`,
      )
    }
    cursors.add(next)
    // SCAN's COUNT is a hint: a page may bring more keys than asked.
    if (keys.length > maxScanned - scanned) dropped = true
    for (const key of keys.slice(0, maxScanned - scanned)) {
      if (key.length <= prefix.length) continue
      const id = key.slice(prefix.length)
      if (!search || id.includes(search)) ids.add(id)
    }
    scanned += keys.length
    cursor = next
  } while (cursor !== '0' && scanned < maxScanned)
  return { ids: [...ids].sort(), truncated: cursor !== '0' || dropped }
}

/**
 * The executions `ids` that hold anything, read in batches. A key of another type under
 * the prefix (another program's hash or list: `WRONG_TYPE`) is no execution of this store,
 * and is left out rather than failing the whole listing. So is `searched`, a search text
 * read as an exact id, when the backend refuses it as an id (`INVALID_INPUT`: a NUL on
 * Postgres): no execution can have that id.
 */
export async function readExecutions(inspector, prefix, ids, { searched } = {}) {
  const notFound = (err, id) => err?.code === 'WRONG_TYPE' || (err?.code === 'INVALID_INPUT' && searched !== undefined && id === searched)
  const read = (id) => readExecution(inspector, prefix, id).catch((err) => (notFound(err, id) ? null : Promise.reject(err)))
  const executions = await mapInBatches(ids, read)
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

/**
 * Removes execution `id`: its marker, marks and results. Returns whether it was there
 * (`force`: also a lone marker that may be a KV entry, see readExecution).
 */
export async function disposeExecution(inspector, prefix, id, { force = false } = {}) {
  const execution = await readExecution(inspector, prefix, id, { force })
  if (execution === null) return false
  await inspector.dispose(prefix + id)
  return true
}

// ---------------------------------------------------------------------------------------
// Showing stored text
// ---------------------------------------------------------------------------------------

const JSON_SPACE = new Set([' ', '\t', '\n', '\r'])

/** The index just past the JSON string that starts at `start` (its opening quote). */
function stringEnd(text, start) {
  let i = start + 1
  while (text[i] !== '"') i += text[i] === '\\' ? 2 : 1
  return i + 1
}

/** The index of the first non-space character from `i`. */
function skipSpace(text, i) {
  while (JSON_SPACE.has(text[i])) i++
  return i
}

/**
 * Stored JSON text indented as JSON.stringify(value, null, 2) would, changing whitespace
 * only: numbers, escapes and key order stay as stored (a parse would round
 * 12345678901234567890 and turn 1e400 into null). Text that is not JSON comes back as is.
 */
export function formatJson(text) {
  try {
    JSON.parse(text)
  } catch {
    return text
  }
  const parts = []
  let depth = 0
  const newline = () => parts.push('\n', '  '.repeat(depth))
  for (let i = skipSpace(text, 0); i < text.length; i = skipSpace(text, i)) {
    const c = text[i]
    if (c === '"') {
      const end = stringEnd(text, i)
      parts.push(text.slice(i, end))
      i = end
      continue
    }
    i++
    if (c === '{' || c === '[') {
      const next = skipSpace(text, i)
      if (text[next] === '}' || text[next] === ']') {
        parts.push(c, text[next])
        i = next + 1
        continue
      }
      depth++
      parts.push(c)
      newline()
    } else if (c === '}' || c === ']') {
      depth--
      newline()
      parts.push(c)
    } else if (c === ',') {
      parts.push(c)
      newline()
    } else if (c === ':') parts.push(': ')
    else parts.push(c)
  }
  return parts.join('')
}

/**
 * `text` (a store URL, or a message that may hold one) without secrets, for any scheme:
 * the password of a URL's userinfo (up to the last "@" of a URL in double quotes, else up
 * to the first "/" or space), also before a comma-separated host list that
 * new URL() cannot parse (redis+sentinel://u:pw@h1,h2/m), and the value of any
 * `...password=` / `...pass=` parameter (a query, or a libpq "key=value" string).
 */
export function redactSecrets(text) {
  return (
    redactUnquotedUserinfo(redactQuotedUserinfo(text))
      // a URL query's parameter, up to `&`: its name as the addon reads it, percent-decoded
      // (`pass%77ord=` is `password=`)
      .replace(/([?&;])([^=?&;#\s"]*)=([^ \t\n\v\f\r&;#"]*)/g, (pair, start, name) => (/pass/i.test(decodedName(name)) ? `${start}${name}=***` : pair))
      // a libpq key/value string's (spaces around `=`; a value quoted, or unquoted up to a
      // space that is not escaped with `\`, `&` and `;` included; libpq's spaces are ASCII,
      // a no-break space is part of a value)
      .replace(/((?:^|\s)[a-z_]*pass(?:word)?\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:\\.|[^ \t\n\v\f\r\\'])(?:\\.?|[^ \t\n\v\f\r\\])*)/gi, '$1***')
  )
}

/**
 * Whether the "://" at `at` follows a URL scheme (`[a-z][a-z0-9+.-]*`, as a regex without
 * anchors finds one): the run of scheme characters just before it, not before `from`,
 * holds a letter. Reads only that run, so each "://" costs its own scheme's length.
 */
function followsScheme(text, at, from) {
  for (let i = at - 1; i >= from; i--) {
    const c = text.charCodeAt(i)
    if ((c >= 97 && c <= 122) || (c >= 65 && c <= 90)) return true
    if (!((c >= 48 && c <= 57) || c === 43 || c === 45 || c === 46)) return false
  }
  return false
}

/** The user information `userinfo` of a URL with its password (after its first ":") as `***`. */
function withoutPassword(userinfo) {
  const colon = userinfo.indexOf(':')
  return colon === -1 ? userinfo : `${userinfo.slice(0, colon)}:***`
}

/**
 * A URL in double quotes (a message quoting it, JSON-escaped; a key prefix may come before
 * it): its end is known, so its user information is read up to the last "@" of the quoted
 * text, a raw "/" or space in the password included. In one pass (linear time: ids and keys
 * the CLI echoes can be megabytes): each quoted text is found by its closing quote, its
 * first "://" after a scheme by indexOf, its last "@" by lastIndexOf. A quoted text without
 * such a URL hands its closing quote on as the next one's opening quote (the text between
 * two quoted strings is tried too).
 */
function redactQuotedUserinfo(text) {
  const parts = []
  let copied = 0
  // the next "://" to look at: it only moves forward
  let scheme = text.indexOf('://')
  for (let open = text.indexOf('"'); open !== -1 && scheme !== -1;) {
    // the closing quote (the next one not escaped with "\\"), and the last "@" before it
    let close = open + 1
    let at = -1
    while (close < text.length && text[close] !== '"') {
      if (text[close] === '@') at = close
      close += text[close] === '\\' ? 2 : 1
    }
    if (close >= text.length) break
    if (scheme <= open) scheme = text.indexOf('://', open + 1)
    while (scheme !== -1 && scheme < close && !followsScheme(text, scheme, open + 1)) scheme = text.indexOf('://', scheme + 1)
    if (scheme === -1 || scheme >= close || at < scheme + 3) {
      open = close
      continue
    }
    parts.push(text.slice(copied, scheme + 3), withoutPassword(text.slice(scheme + 3, at)))
    copied = at
    open = text.indexOf('"', close + 1)
  }
  parts.push(text.slice(copied))
  return parts.join('')
}

/**
 * A URL's password outside quotes: its user information ends at the last "@" before a "/"
 * or a space (`redis://u:pw@h`, also before a comma-separated host list that new URL()
 * cannot parse, `redis+sentinel://u:pw@h1,h2/m`). Linear time, as above.
 */
function redactUnquotedUserinfo(text) {
  const parts = []
  let copied = 0
  for (let scheme = text.indexOf('://'); scheme !== -1; scheme = text.indexOf('://', scheme + 1)) {
    if (!followsScheme(text, scheme, copied)) continue
    // up to the next "/" (the next "://" has one) or space, and the last "@" before it
    let at = -1
    for (let i = scheme + 3; i < text.length && text[i] !== '/' && !/\s/.test(text[i]); i++) if (text[i] === '@') at = i
    if (at === -1) continue
    parts.push(text.slice(copied, scheme + 3), withoutPassword(text.slice(scheme + 3, at)))
    copied = at
    scheme = at
  }
  parts.push(text.slice(copied))
  return parts.join('')
}

/** A URL query parameter's name, percent-decoded (as written when it is not valid percent-encoding). */
function decodedName(name) {
  try {
    return decodeURIComponent(name)
  } catch {
    return name
  }
}

/**
 * A store URL (the whole text is one URL) without its password, as the addon reads it: the
 * user information ends at the last `@`, so a password holding a raw `/`, `?`, `#` or space
 * is hidden whole. Then `redactSecrets` (query parameters, libpq key/value strings).
 */
export function redactUrl(url) {
  const found = /^([a-z][a-z0-9+.-]*:\/\/)(.*)$/is.exec(url)
  const at = found ? found[2].lastIndexOf('@') : -1
  if (at !== -1) url = `${found[1]}${withoutPassword(found[2].slice(0, at))}${found[2].slice(at)}`
  return redactSecrets(url)
}
