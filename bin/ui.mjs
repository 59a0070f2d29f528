// `durastate ui`: a local web page over a store's executions, served with node:http.
// The page (ui/index.html, ui/app.js, ui/style.css: plain files, no build step) asks the
// JSON API below, which reads through the inspector like `durastate inspect`.
//
// Security: it listens on loopback unless told otherwise. Every request must name this
// server in its Host header by an IP address, `localhost` or the --host name (so another
// DNS name rebound to this address gets nothing), and a request that carries an Origin must come from this page.
// Writes (reset a step, dispose an execution) exist only with --allow-writes, and each
// needs the page's token in a header, which another site's page cannot read or send
// without this server's CORS consent (it gives none). The page renders values as text,
// never as HTML, under a Content-Security-Policy that allows only its own script.
import { randomBytes, timingSafeEqual } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { isIP } from 'node:net'
import {
  describeExecution,
  disposeExecution,
  formatJson,
  listExecutionIds,
  readExecution,
  readExecutions,
  redactUrl,
  resetStep,
  summarize,
  ttlOrNull,
} from './executions.mjs'

/** The most executions one listing shows: the first by id of those its scan found. */
export const MAX_LISTED = 500
/** The most keys one listing scans, matching the search or not. */
export const MAX_SCANNED = 20_000
/**
 * The most keys one listing reads to find its executions: the scan also finds what else is
 * stored under the prefix (KV entries share the default file and database), which only a
 * read tells from an execution.
 */
export const MAX_READ = 2_500
/** The fewest keys a listing reads in one batch after its first (see list). */
export const MIN_READ_BATCH = 100
/** Values are shown formatted, cut after this many characters. */
export const MAX_VALUE_CHARS = 16_384
const MAX_ID_LENGTH = 4096
const MAX_BODY_BYTES = 64 * 1024
/** How often the page refreshes what it shows (ms). */
const REFRESH_MS = 1000

const STATIC = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
  '/style.css': ['style.css', 'text/css; charset=utf-8'],
}

const SECURITY_HEADERS = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
  'cross-origin-resource-policy': 'same-origin',
}

class HttpError extends Error {
  constructor(status, code, message) {
    super(message)
    this.status = status
    this.code = code
  }
}

/** Why the UI cannot listen on `host`:`port`, with a durastate code. */
function listenError(err, host, port) {
  const said = (code, message) => Object.assign(new Error(message), { code })
  switch (err.code) {
    case 'EADDRINUSE':
      return said('UNAVAILABLE', `port ${port} on ${host} is in use: pick another with --port (0: any free port)`)
    case 'EACCES':
      return said('UNAVAILABLE', `not allowed to listen on port ${port} (ports below 1024 need privileges): pick another with --port`)
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_NONAME':
      return said('INVALID_INPUT', `--host ${JSON.stringify(host)} is not an address or a name this machine can resolve (${err.code})`)
    case 'EADDRNOTAVAIL':
    case 'EINVAL':
      return said('INVALID_INPUT', `--host ${JSON.stringify(host)} is not an address of this machine (${err.code})`)
    default:
      return said('UNAVAILABLE', `cannot listen on ${host}:${port}: ${err.message}`)
  }
}

/** The store URL as the page shows it: without a password (new URL() cannot parse every store URL: h1,h2 host lists, libpq strings). */
function redact(url) {
  if (url === undefined) return 'sqlite:./.durastate/state.db (default)'
  return redactUrl(url)
}

/** Whether `host` (a Host header) names this server on `port`: an IP address, localhost, or the name it was told to listen on. */
export function isAllowedHost(host, port, listenName = 'localhost') {
  if (typeof host !== 'string') return false
  const found = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(host)
  if (!found) return false
  const name = found[1].startsWith('[') ? found[1].slice(1, -1) : found[1]
  if (Number(found[2] ?? 80) !== port) return false
  const lower = name.toLowerCase()
  return lower === 'localhost' || lower === listenName.toLowerCase() || isIP(name) !== 0
}

/** Execution summaries, the newest activity first where the store keeps TTLs (every write renews them), else by id; in progress first. */
function order(summaries) {
  const activity = (s) => Math.max(s.expiresIn ?? -1, s.stepsExpireIn ?? -1)
  return summaries.sort((a, b) => Number(b.inProgress) - Number(a.inProgress) || activity(b) - activity(a) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
}

function listed(execution) {
  const summary = summarize(execution)
  const ttl = execution.results.size ? execution.resultsTtl : execution.transactions.size ? execution.transactionsTtl : -1
  return { ...summary, stepsExpireIn: ttlOrNull(ttl) }
}

/** A step's value as the page shows it: the stored JSON indented (digits as stored), cut after MAX_VALUE_CHARS. */
function shown(json) {
  if (json === null) return { value: null, truncated: false }
  const text = formatJson(json)
  if (text.length <= MAX_VALUE_CHARS) return { value: text, truncated: false }
  return { value: text.slice(0, MAX_VALUE_CHARS), truncated: true }
}

function requireId(id, what) {
  if (typeof id !== 'string' || id.length === 0 || id.length > MAX_ID_LENGTH) {
    throw new HttpError(400, 'INVALID_INPUT', `${what} must be a string of 1 to ${MAX_ID_LENGTH} characters`)
  }
  return id
}

async function readBody(req) {
  const chunks = []
  let size = 0
  for await (const chunk of req) {
    size += chunk.length
    if (size > MAX_BODY_BYTES) throw new HttpError(413, 'INVALID_INPUT', `the request body is over ${MAX_BODY_BYTES} bytes`)
    chunks.push(chunk)
  }
  if (size === 0) return {}
  try {
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8'))
    if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new Error('not an object')
    return body
  } catch {
    throw new HttpError(400, 'INVALID_INPUT', 'the request body must be a JSON object')
  }
}

/**
 * Starts the server. `createInspector(url)` opens the store; `port` 0 picks a free one.
 * Resolves with { url, port, close() } once it listens.
 */
export async function startUi({ url, port = 0, host = '127.0.0.1', allowWrites = false, prefix = '', createInspector }) {
  const files = {}
  for (const [path, [file, type]] of Object.entries(STATIC)) files[path] = { body: readFileSync(new URL(`./ui/${file}`, import.meta.url)), type }
  const inspector = createInspector(url)
  const token = randomBytes(24).toString('base64url')
  let listening = 0

  const api = {
    info: () => ({ store: redact(url), prefix, allowWrites, token: allowWrites ? token : null, refreshMs: REFRESH_MS, maxValueChars: MAX_VALUE_CHARS }),
    async list(query) {
      const search = query.get('search') ?? ''
      if (search.length > MAX_ID_LENGTH) throw new HttpError(400, 'INVALID_INPUT', `search must be at most ${MAX_ID_LENGTH} characters`)
      const limit = query.has('limit') ? Number(query.get('limit')) : MAX_LISTED
      if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LISTED)
        throw new HttpError(400, 'INVALID_INPUT', `limit must be an integer from 1 to ${MAX_LISTED}`)
      const { ids, truncated } = await listExecutionIds(inspector, prefix, { maxScanned: MAX_SCANNED, search: search || undefined })
      // An exact id is read directly too: the scan may have stopped before it.
      const candidates = search && !ids.includes(search) ? [search, ...ids] : ids
      // The ids are read in order, in batches, until `limit` executions are found or
      // MAX_READ keys were read. The first batch is `limit` keys (every second, per open
      // page: with nothing else under the prefix, only the executions shown are read); a
      // later one, after keys that were no execution, at least MIN_READ_BATCH, so that KV
      // entries after the executions are not read one round trip each. The executions
      // found past `limit` are not shown.
      const found = []
      let read = 0
      while (found.length < limit && read < candidates.length && read < MAX_READ) {
        const wanted = read === 0 ? limit : Math.max(limit - found.length, MIN_READ_BATCH)
        const batch = candidates.slice(read, read + Math.min(wanted, MAX_READ - read))
        read += batch.length
        found.push(...(await readExecutions(inspector, prefix, batch, { searched: search || undefined })))
      }
      const unread = read < candidates.length
      return {
        executions: order(found.slice(0, limit).map(listed)),
        // the keys the scan found under the prefix (executions or not), and how many were read
        keys: ids.length,
        read,
        // the scan saw every key under the prefix
        complete: !truncated,
        // the read budget ran out before `limit` executions were found
        readLimited: unread && found.length < limit,
        // more executions may exist than are shown
        truncated: truncated || unread || found.length > limit,
      }
    },
    async execution(id) {
      const found = await readExecution(inspector, prefix, requireId(id, 'the execution id'))
      if (found === null) throw new HttpError(404, 'NOT_FOUND', `no execution ${JSON.stringify(id)}`)
      const detail = describeExecution(found)
      return { ...detail, steps: detail.steps.map(({ json, ...step }) => ({ ...step, ...shown(json) })) }
    },
    async reset({ id, taskId }) {
      requireId(taskId, 'taskId')
      const { found, steps } = await resetStep(inspector, prefix, requireId(id, 'the execution id'), taskId)
      if (!found) throw new HttpError(404, 'NOT_FOUND', `no execution ${JSON.stringify(id)}`)
      if (steps.length === 0) throw new HttpError(404, 'NOT_FOUND', `execution ${JSON.stringify(id)} has no step ${JSON.stringify(taskId)}`)
      return { reset: steps }
    },
    async dispose({ id }) {
      if (!(await disposeExecution(inspector, prefix, requireId(id, 'the execution id'))))
        throw new HttpError(404, 'NOT_FOUND', `no execution ${JSON.stringify(id)}`)
      return { disposed: id }
    },
  }

  /** Writes need --allow-writes, this page's Origin and its token. */
  function checkWrite(req) {
    if (!allowWrites) throw new HttpError(403, 'READ_ONLY', 'this durastate ui is read-only: start it with --allow-writes to reset steps or dispose executions')
    if (req.headers.origin !== `http://${req.headers.host}`) throw new HttpError(403, 'FORBIDDEN', 'writes are taken from this page only (Origin)')
    const sent = Buffer.from(String(req.headers['x-durastate-token'] ?? ''))
    const expected = Buffer.from(token)
    if (sent.length !== expected.length || !timingSafeEqual(sent, expected))
      throw new HttpError(403, 'FORBIDDEN', 'writes need the page token (x-durastate-token)')
  }

  async function route(req, res) {
    if (!isAllowedHost(req.headers.host, listening, host))
      throw new HttpError(421, 'FORBIDDEN', 'the Host header must name this server by IP address or localhost')
    if (req.headers.origin !== undefined && req.headers.origin !== `http://${req.headers.host}`)
      throw new HttpError(403, 'FORBIDDEN', 'requests from other origins are refused')
    const { pathname, searchParams } = new URL(req.url, 'http://localhost')
    const file = files[pathname]
    if (file && (req.method === 'GET' || req.method === 'HEAD')) {
      res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': file.type, 'content-length': file.body.length })
      return res.end(req.method === 'HEAD' ? undefined : file.body)
    }
    // An execution id travels in the query or the body, never in the path: URL parsing
    // (the browser's and this server's) drops path segments "." and "..", even encoded.
    const reads = { '/api/info': api.info, '/api/executions': api.list, '/api/execution': (query) => api.execution(query.get('id')) }
    const writes = { '/api/execution/reset': api.reset, '/api/execution/dispose': api.dispose }
    if (req.method === 'GET' && Object.hasOwn(reads, pathname)) return reads[pathname](searchParams)
    if (req.method === 'POST' && Object.hasOwn(writes, pathname)) {
      checkWrite(req)
      return writes[pathname](await readBody(req))
    }
    if (Object.hasOwn(reads, pathname) || Object.hasOwn(writes, pathname)) throw new HttpError(405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed here`)
    throw new HttpError(404, 'NOT_FOUND', pathname.startsWith('/api/') ? 'no such API' : 'no such page')
  }

  // Requests being answered: a stop waits for their calls to the store (inspector.close()).
  let inFlight = 0
  const server = createServer((req, res) => {
    inFlight += 1
    const answered = route(req, res)
    answered.then(
      () => (inFlight -= 1),
      () => (inFlight -= 1),
    )
    answered.then(
      (answer) => {
        if (res.headersSent) return
        const body = JSON.stringify(answer)
        res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': 'application/json; charset=utf-8' })
        res.end(body)
      },
      (err) => {
        if (res.headersSent) return res.destroy()
        const status = err instanceof HttpError ? err.status : err?.code === 'TIMEOUT' || err?.code === 'UNAVAILABLE' ? 503 : 500
        const code = typeof err?.code === 'string' ? err.code : 'INTERNAL'
        res.writeHead(status, { ...SECURITY_HEADERS, 'content-type': 'application/json; charset=utf-8', connection: 'close' })
        res.end(JSON.stringify({ error: { code, message: err?.message ?? String(err) } }))
      },
    )
  })
  server.headersTimeout = 10_000
  server.requestTimeout = 30_000
  await new Promise((resolve, reject) => {
    server.once('error', (err) => {
      const failure = listenError(err, host, port)
      inspector.close().then(
        () => reject(failure),
        () => reject(failure),
      )
    })
    server.listen(port, host, resolve)
  })
  listening = server.address().port
  const shownHost = isIP(host) === 6 ? `[${host}]` : host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '[::1]' : host
  return {
    url: `http://${shownHost}:${listening}/`,
    port: listening,
    /** How many requests are being answered (most waiting for a call to the store). */
    get inFlight() {
      return inFlight
    },
    async close() {
      await new Promise((resolve) => {
        server.close(resolve)
        server.closeAllConnections?.()
      })
      await inspector.close()
    },
  }
}
