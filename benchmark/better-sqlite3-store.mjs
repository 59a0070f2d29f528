// Reference for the embedded backends: the WorkerStore and the KV store a Node developer
// writes the obvious way on better-sqlite3 12 (synchronous SQLite on the JS thread).
//
// Why it is a fair bar (what users will compare durastate's SQLite and memory stores with):
// - Tuned the way the better-sqlite3 docs recommend: `journal_mode = WAL`,
//   `synchronous = NORMAL`, every statement prepared once and reused (no SQL parsing per
//   call), positional parameters, `.pluck()` for one-column reads. Default page size and
//   cache size, default busy timeout: nothing slowed down, nothing exotic sped up.
// - Tables shaped for the data: `executions(id, expires_at)` and `steps` keyed by
//   (execution_id, task_id) with the in-progress flag and the result JSON text in one row.
//   Each call is one statement (one upsert, one select); dispose is two DELETEs in one
//   transaction. Every write is its own autocommit transaction, durable in the WAL (as far
//   as `synchronous = NORMAL` goes) before its promise resolves, as in durastate's store.
// - Same contract as durastate (../shared/docs/worker-store-contract.md): results are JSON
//   text made with JSON.stringify and read with JSON.parse; `undefined` is stored as the
//   JSON string "<empty_execution_result>"; a value with no JSON form rejects and writes
//   nothing; commit clears the flag and stores the result in one statement (atomic);
//   tryBeginExecutionTask is an INSERT ... ON CONFLICT whose update only happens when the
//   step is not in progress, so of concurrent claims exactly one gets `true`; missing state
//   reads as false / undefined / {}. TTL (ms) is an `expires_at` column, set on every write;
//   reads filter `expires_at IS NULL OR expires_at > now`, and a write over an expired row
//   starts it afresh. Expired rows are not purged (nothing expires during the bench).
// - Methods are `async` over the synchronous calls, so callers await them like any store.
//   The SQL runs on the JS thread, in the call: no thread hop, no batching.
// `prefix` (default '') is prepended to execution ids, only so that the bench's checks can
// run several workloads in one file, as they do with durastate's `prefix` option.
import Database from 'better-sqlite3'

const EMPTY_RESULT_JSON = JSON.stringify('<empty_execution_result>')
const LIVE = '(expires_at IS NULL OR expires_at > ?)'

/** A better-sqlite3 connection set up as the docs recommend for a server process. */
function openDatabase(file) {
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  db.pragma('synchronous = NORMAL')
  return db
}

function encodeResult(executionId, taskId, value) {
  if (value === undefined) return EMPTY_RESULT_JSON
  const json = JSON.stringify(value) // throws on BigInt or a cycle: nothing is written
  if (json === undefined) throw new TypeError(`step "${taskId}" of execution "${executionId}": a ${typeof value} has no JSON form`)
  return json
}

function decodeResult(executionId, taskId, text) {
  try {
    return JSON.parse(text)
  } catch (err) {
    throw new Error(`stored JSON of execution "${executionId}" step "${taskId}" is not valid: ${err.message}`, { cause: err })
  }
}

/** The WorkerStore on a SQLite file (created if missing). Options: `ttl` (ms), `prefix`. */
export function createBetterSqliteStore(file, { ttl, prefix = '' } = {}) {
  const db = openDatabase(file)
  db.exec(`
    CREATE TABLE IF NOT EXISTS executions (id TEXT PRIMARY KEY, expires_at INTEGER);
    CREATE TABLE IF NOT EXISTS steps (
      execution_id TEXT NOT NULL,
      task_id TEXT NOT NULL,
      in_progress INTEGER NOT NULL DEFAULT 0,
      result TEXT,
      expires_at INTEGER,
      PRIMARY KEY (execution_id, task_id)
    );
  `)
  // On conflict with an expired row, the old result does not come back to life.
  const keepResult = 'CASE WHEN steps.expires_at <= ? THEN NULL ELSE steps.result END'
  const sql = {
    beginExecution: db.prepare('INSERT INTO executions (id, expires_at) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at'),
    isExecutionInProgress: db.prepare(`SELECT 1 FROM executions WHERE id = ? AND ${LIVE}`).pluck(),
    beginTask: db.prepare(
      `INSERT INTO steps (execution_id, task_id, in_progress, expires_at) VALUES (?, ?, 1, ?)
       ON CONFLICT (execution_id, task_id) DO UPDATE SET in_progress = 1, result = ${keepResult}, expires_at = excluded.expires_at`,
    ),
    tryBeginTask: db.prepare(
      `INSERT INTO steps (execution_id, task_id, in_progress, expires_at) VALUES (?, ?, 1, ?)
       ON CONFLICT (execution_id, task_id) DO UPDATE SET in_progress = 1, result = ${keepResult}, expires_at = excluded.expires_at
       WHERE steps.in_progress = 0 OR steps.expires_at <= ?`,
    ),
    isTaskInProgress: db.prepare(`SELECT 1 FROM steps WHERE execution_id = ? AND task_id = ? AND in_progress = 1 AND ${LIVE}`).pluck(),
    commit: db.prepare(
      `INSERT INTO steps (execution_id, task_id, in_progress, result, expires_at) VALUES (?, ?, 0, ?, ?)
       ON CONFLICT (execution_id, task_id) DO UPDATE SET in_progress = 0, result = excluded.result, expires_at = excluded.expires_at`,
    ),
    getResult: db.prepare(`SELECT result FROM steps WHERE execution_id = ? AND task_id = ? AND result IS NOT NULL AND ${LIVE}`).pluck(),
    getResults: db.prepare(`SELECT task_id, result FROM steps WHERE execution_id = ? AND result IS NOT NULL AND ${LIVE}`),
    deleteExecution: db.prepare('DELETE FROM executions WHERE id = ?'),
    deleteSteps: db.prepare('DELETE FROM steps WHERE execution_id = ?'),
  }
  const dispose = db.transaction((id) => {
    sql.deleteExecution.run(id)
    sql.deleteSteps.run(id)
  })
  const expiresAt = (now) => (ttl ? now + Math.ceil(ttl) : null)

  return {
    async beginExecution(executionId) {
      sql.beginExecution.run(prefix + executionId, expiresAt(Date.now()))
    },

    async isExecutionInProgress(executionId) {
      return sql.isExecutionInProgress.get(prefix + executionId, Date.now()) !== undefined
    },

    async beginExecutionTask(executionId, taskId) {
      const now = Date.now()
      sql.beginTask.run(prefix + executionId, taskId, expiresAt(now), now)
    },

    async tryBeginExecutionTask(executionId, taskId) {
      const now = Date.now()
      return sql.tryBeginTask.run(prefix + executionId, taskId, expiresAt(now), now, now).changes === 1
    },

    async isExecutionTaskInProgress(executionId, taskId) {
      return sql.isTaskInProgress.get(prefix + executionId, taskId, Date.now()) !== undefined
    },

    async commitExecutionTaskResult(executionId, taskId, value) {
      const json = encodeResult(executionId, taskId, value)
      sql.commit.run(prefix + executionId, taskId, json, expiresAt(Date.now()))
    },

    async getExecutionTaskResult(executionId, taskId) {
      const text = sql.getResult.get(prefix + executionId, taskId, Date.now())
      return text === undefined ? undefined : decodeResult(executionId, taskId, text)
    },

    async getExecutionTaskResults(executionId) {
      const results = {}
      for (const row of sql.getResults.all(prefix + executionId, Date.now())) {
        results[row.task_id] = decodeResult(executionId, row.task_id, row.result)
      }
      return results
    },

    async disposeExecution(executionId) {
      dispose(prefix + executionId)
    },

    async close() {
      if (db.open) db.close()
    },
  }
}

/**
 * A plain KV store on a SQLite file: one table `kv(key, value JSON text, expires_at)`,
 * `get` (a missing key reads as "", as durastate's open KV mounts answer) and
 * `set(key, value, { ttl })` (ms; without one the entry never expires).
 */
export function createBetterSqliteKv(file) {
  const db = openDatabase(file)
  db.exec('CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at INTEGER)')
  const select = db.prepare(`SELECT value FROM kv WHERE key = ? AND ${LIVE}`).pluck()
  const upsert = db.prepare(
    'INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at',
  )
  return {
    async get(key) {
      const text = select.get(key, Date.now())
      return text === undefined ? '' : JSON.parse(text)
    },

    async set(key, value, options) {
      const json = JSON.stringify(value)
      if (json === undefined) throw new TypeError(`key "${key}": a ${typeof value} has no JSON form`)
      const ttl = options?.ttl
      upsert.run(key, json, ttl ? Date.now() + Math.ceil(ttl) : null)
      return true
    },

    async close() {
      if (db.open) db.close()
    },
  }
}
