// Reference for the Postgres backend: the WorkerStore and the KV store a Node developer
// writes the obvious way on node-postgres (`pg`) with a `Pool`.
//
// Why it is a fair bar: the pool's defaults (10 connections), parameterized queries
// (`pool.query(text, values)`), tables shaped for the data (`executions(id, expires_at)`;
// `steps` keyed by (execution_id, task_id) with the in-progress flag and the result JSON
// text in one row, TEXT never jsonb), one statement per call (dispose: one statement with
// a data-modifying CTE), every write its own autocommit transaction, durable as the
// server's default `synchronous_commit = on` says before its promise resolves, as in
// durastate's store. Same contract as ../better-sqlite3-store.mjs (the embedded reference),
// whose SQL this follows: `tryBeginExecutionTask` is an INSERT ... ON CONFLICT whose update
// only happens when the step is not in progress (exactly one winner), TTL (ms) is an
// `expires_at` column set on every write and filtered by reads. Time is the client's clock.
// `prefix` (default '') is prepended to execution ids, only so that the bench's checks can
// run several workloads in one schema.
import pg from 'pg'

const EMPTY_RESULT_JSON = JSON.stringify('<empty_execution_result>')
const LIVE = '(expires_at IS NULL OR expires_at > $NOW)'

function encodeResult(executionId, taskId, value) {
  if (value === undefined) return EMPTY_RESULT_JSON
  const json = JSON.stringify(value)
  if (json === undefined) throw new TypeError(`step "${taskId}" of execution "${executionId}": a ${typeof value} has no JSON form`)
  return json
}

const live = (n) => LIVE.replace('$NOW', `$${n}`)

/** Opens a pool and creates the reference tables in `schema`. Returns { store(options), kv(), close() }. */
export async function openPgReference(url, schema = 'pgref') {
  const pool = new pg.Pool({ connectionString: url })
  pool.on('error', () => {}) // an idle client's connection ended (the server stopped): the pool replaces it
  const s = `"${schema}"`
  await pool.query(`CREATE SCHEMA IF NOT EXISTS ${s}`)
  await pool.query(`CREATE TABLE IF NOT EXISTS ${s}.executions (id TEXT PRIMARY KEY, expires_at BIGINT)`)
  await pool.query(`CREATE TABLE IF NOT EXISTS ${s}.steps (
    execution_id TEXT NOT NULL, task_id TEXT NOT NULL, in_progress BOOLEAN NOT NULL DEFAULT false,
    result TEXT, expires_at BIGINT, PRIMARY KEY (execution_id, task_id))`)
  await pool.query(`CREATE TABLE IF NOT EXISTS ${s}.kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at BIGINT)`)
  const keepResult = `CASE WHEN steps.expires_at <= $4 THEN NULL ELSE steps.result END`
  const sql = {
    beginExecution: `INSERT INTO ${s}.executions (id, expires_at) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at`,
    isExecutionInProgress: `SELECT 1 FROM ${s}.executions WHERE id = $1 AND ${live(2)}`,
    beginTask: `INSERT INTO ${s}.steps AS steps (execution_id, task_id, in_progress, expires_at) VALUES ($1, $2, true, $3)
      ON CONFLICT (execution_id, task_id) DO UPDATE SET in_progress = true, result = ${keepResult}, expires_at = excluded.expires_at`,
    tryBeginTask: `INSERT INTO ${s}.steps AS steps (execution_id, task_id, in_progress, expires_at) VALUES ($1, $2, true, $3)
      ON CONFLICT (execution_id, task_id) DO UPDATE SET in_progress = true, result = ${keepResult}, expires_at = excluded.expires_at
      WHERE NOT steps.in_progress OR steps.expires_at <= $4`,
    isTaskInProgress: `SELECT 1 FROM ${s}.steps WHERE execution_id = $1 AND task_id = $2 AND in_progress AND ${live(3)}`,
    commit: `INSERT INTO ${s}.steps (execution_id, task_id, in_progress, result, expires_at) VALUES ($1, $2, false, $3, $4)
      ON CONFLICT (execution_id, task_id) DO UPDATE SET in_progress = false, result = excluded.result, expires_at = excluded.expires_at`,
    getResult: `SELECT result FROM ${s}.steps WHERE execution_id = $1 AND task_id = $2 AND result IS NOT NULL AND ${live(3)}`,
    getResults: `SELECT task_id, result FROM ${s}.steps WHERE execution_id = $1 AND result IS NOT NULL AND ${live(2)}`,
    dispose: `WITH e AS (DELETE FROM ${s}.executions WHERE id = $1) DELETE FROM ${s}.steps WHERE execution_id = $1`,
    kvGet: `SELECT value FROM ${s}.kv WHERE key = $1 AND ${live(2)}`,
    kvSet: `INSERT INTO ${s}.kv (key, value, expires_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at`,
  }
  const one = async (text, values) => (await pool.query(text, values)).rows

  const store = ({ ttl, prefix = '' } = {}) => {
    const expiresAt = (now) => (ttl ? now + Math.ceil(ttl) : null)
    return {
      async beginExecution(executionId) {
        await pool.query(sql.beginExecution, [prefix + executionId, expiresAt(Date.now())])
      },
      async isExecutionInProgress(executionId) {
        return (await one(sql.isExecutionInProgress, [prefix + executionId, Date.now()])).length > 0
      },
      async beginExecutionTask(executionId, taskId) {
        const now = Date.now()
        await pool.query(sql.beginTask, [prefix + executionId, taskId, expiresAt(now), now])
      },
      async tryBeginExecutionTask(executionId, taskId) {
        const now = Date.now()
        return (await pool.query(sql.tryBeginTask, [prefix + executionId, taskId, expiresAt(now), now])).rowCount === 1
      },
      async isExecutionTaskInProgress(executionId, taskId) {
        return (await one(sql.isTaskInProgress, [prefix + executionId, taskId, Date.now()])).length > 0
      },
      async commitExecutionTaskResult(executionId, taskId, value) {
        const json = encodeResult(executionId, taskId, value)
        await pool.query(sql.commit, [prefix + executionId, taskId, json, expiresAt(Date.now())])
      },
      async getExecutionTaskResult(executionId, taskId) {
        const rows = await one(sql.getResult, [prefix + executionId, taskId, Date.now()])
        return rows.length ? JSON.parse(rows[0].result) : undefined
      },
      async getExecutionTaskResults(executionId) {
        const results = {}
        for (const row of await one(sql.getResults, [prefix + executionId, Date.now()])) results[row.task_id] = JSON.parse(row.result)
        return results
      },
      async disposeExecution(executionId) {
        await pool.query(sql.dispose, [prefix + executionId])
      },
      async close() {},
    }
  }

  const kv = (prefix = '') => ({
    async get(key) {
      const rows = await one(sql.kvGet, [prefix + key, Date.now()])
      return rows.length ? JSON.parse(rows[0].value) : ''
    },
    async set(key, value, options) {
      const json = JSON.stringify(value)
      if (json === undefined) throw new TypeError(`key "${key}": a ${typeof value} has no JSON form`)
      const ttl = options?.ttl
      await pool.query(sql.kvSet, [prefix + key, json, ttl ? Date.now() + Math.ceil(ttl) : null])
      return true
    },
    async close() {},
  })

  return { store, kv, close: () => pool.end() }
}
