// The Postgres backend against real servers: its tables and version, TTL exactness and
// the sweep, the claim across processes, and faults (a SIGKILLed server, killed
// backends, a stopped server, a wrong password, bad URLs). The fault cases start a
// server of their own; the others use the one `npm test` started.
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { chownSync, copyFileSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { createRequire } from 'node:module'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { createKvStore, createPostgresStore, createStore } from '../index.js'
import { packageRoot, runChild, startChild } from './helpers/child.mjs'
import { POSTGRES_PASSWORD, startPostgresServer, testPostgres } from './helpers/postgres-server.mjs'
import { makeCertificates } from './helpers/tls.mjs'

const { createInspector } = createRequire(import.meta.url)('../binding.js')

const fresh = () => `pgt:${randomUUID()}:`

/**
 * Polls `server` (bounded) until the client `appName` is in its `pg_sleep`: its transaction
 * has taken the locks of the statements before it. A psql takes 50-300 ms to get there on a
 * loaded machine, so a fixed sleep cannot stand in for this.
 */
async function untilSleeping(server, appName, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs
  while (server.sql(`SELECT count(*) FROM pg_stat_activity WHERE application_name = '${appName}' AND wait_event = 'PgSleep'`) !== '1') {
    assert.ok(Date.now() < deadline, `${appName} did not take its locks in ${timeoutMs} ms`)
    await sleep(20)
  }
}

/** Polls `check` every 20 ms until it is true; false if it is not within `timeoutMs`. */
async function eventually(check, timeoutMs) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (check()) return true
    if (Date.now() > deadline) return false
    await sleep(20)
  }
}

describe('Postgres backend', { timeout: 240_000 }, () => {
  let server
  before(async () => {
    server = await startPostgresServer()
  })
  after(() => server?.stop())

  /** Another client (psql, as `appName`) that runs `sql`: a transaction holding locks. */
  const psql = (sql, appName = 'holder') =>
    spawn(join(server.bin, 'psql'), ['-h', '127.0.0.1', '-p', String(server.port), '-U', 'postgres', '-d', 'postgres', '-c', sql], {
      env: { ...process.env, PGPASSWORD: POSTGRES_PASSWORD, PGAPPNAME: appName },
      stdio: 'ignore',
    })

  it('creates its tables on first use in its schema, and records their version', async () => {
    const store = createPostgresStore(server.url, { schema: 'ds_custom' })
    await store.beginExecution('first')
    await store.close()
    const tables = server.sql("SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'ds_custom'")
    assert.equal(tables, 'entries,meta,step_expiry,steps')
    assert.equal(server.sql('SELECT version FROM ds_custom.meta'), '3')
    assert.equal(server.sql("SELECT value FROM ds_custom.entries WHERE key = 'first'"), 'true')
    // values are JSON text, byte for byte (never jsonb)
    const again = createPostgresStore(server.url, { schema: 'ds_custom' })
    await again.commitExecutionTaskResult('first', 's', { z: 1, a: { y: 2, b: 3 } })
    assert.equal(server.sql("SELECT result FROM ds_custom.steps WHERE exec = 'first'"), '{"z":1,"a":{"y":2,"b":3}}')
    await again.close()
  })

  it('migrates a schema of format version 1 (the first release) in place, keeping its data and TTLs', async () => {
    // fixtures/postgres-v1.sql: the tables, functions and meta row version 1 created; state written through its functions
    server.sql(readFileSync(new URL('./fixtures/postgres-v1.sql', import.meta.url), 'utf8'))
    server.sql(`SELECT ds_v1.claim('live', 'a', 'true', false, 600000); SELECT ds_v1.commit('live', 'r', '1', 600000);
      SELECT ds_v1.claim('gone', 'a', 'true', false, 1); SELECT ds_v1.commit('gone', 'r', '2', 1);
      SELECT ds_v1.claim('plain', 'a', 'true', false, NULL); INSERT INTO ds_v1.entries VALUES ('plain', 'true', NULL)`)
    await sleep(20)
    const store = createPostgresStore(server.url, { schema: 'ds_v1' })
    assert.equal(await store.isExecutionTaskInProgress('live', 'a'), true)
    assert.equal(server.sql('SELECT version FROM ds_v1.meta'), '3')
    const indexes = server.sql("SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'ds_v1' AND tablename = 'step_expiry'")
    assert.equal(indexes, 'step_expiry_pkey,step_expiry_sweep')
    assert.equal(server.sql('SELECT count(*) FROM ds_v1.step_expiry WHERE sweep_at IS DISTINCT FROM least(claims_at, results_at)'), '0')
    assert.deepEqual(await store.getExecutionTaskResults('live'), { r: 1 })
    assert.deepEqual(await store.getExecutionTaskResults('gone'), {})
    assert.equal(await store.isExecutionTaskInProgress('gone', 'a'), false)
    assert.equal(await store.isExecutionTaskInProgress('plain', 'a'), true)
    assert.equal(await store.isExecutionInProgress('plain'), true)
    // writes on migrated rows: the last mark taken by a commit takes the marks' expiry with it
    await store.commitExecutionTaskResult('live', 'a', 3)
    assert.deepEqual(await store.getExecutionTaskResults('live'), { a: 3, r: 1 })
    assert.equal(server.sql("SELECT claims_at IS NULL AND results_at > 0 FROM ds_v1.step_expiry WHERE exec = 'live'"), 't')
    // the first write started a sweep: what expired under version 1 is removed
    const deadline = Date.now() + 5_000
    const left = () =>
      server.sql("SELECT (SELECT count(*) FROM ds_v1.steps WHERE exec = 'gone') + (SELECT count(*) FROM ds_v1.step_expiry WHERE exec = 'gone')")
    while (Date.now() < deadline && left() !== '0') await sleep(50)
    assert.equal(left(), '0')
    await store.close()
    // a later process finds version 3
    const again = createPostgresStore(server.url, { schema: 'ds_v1', ttl: 60_000 })
    assert.equal(await again.tryBeginExecutionTask('live', 'b'), true)
    assert.equal(await again.tryBeginExecutionTask('live', 'b'), false)
    await again.close()
  })

  it('migrates a schema of format version 2 in place: same tables and data, the functions of version 3', async () => {
    // fixtures/postgres-v2.sql: what the code before format 3 created; state written through its functions
    server.sql(readFileSync(new URL('./fixtures/postgres-v2.sql', import.meta.url), 'utf8'))
    server.sql(`SELECT ds_v2.claim('live', 'a', 'true', false, 600000); SELECT ds_v2.commit('live', 'r', '1', 600000);
      SELECT ds_v2.claim('gone', 'a', 'true', false, 1); SELECT ds_v2.commit('gone', 'r', '2', 1);
      SELECT ds_v2.claim('plain', 'a', 'true', false, NULL); INSERT INTO ds_v2.entries VALUES ('plain', 'true', NULL)`)
    await sleep(20)
    const store = createPostgresStore(server.url, { schema: 'ds_v2', ttl: 600_000 })
    assert.equal(await store.isExecutionTaskInProgress('live', 'a'), true)
    assert.equal(server.sql('SELECT version FROM ds_v2.meta'), '3')
    assert.equal(server.sql("SELECT count(*) FROM pg_proc WHERE proname = 'no_marks' AND pronamespace = 'ds_v2'::regnamespace"), '1')
    assert.deepEqual(await store.getExecutionTaskResults('live'), { r: 1 })
    assert.deepEqual(await store.getExecutionTaskResults('gone'), {})
    assert.equal(await store.isExecutionTaskInProgress('gone', 'a'), false)
    assert.equal(await store.isExecutionTaskInProgress('plain', 'a'), true)
    assert.equal(await store.isExecutionInProgress('plain'), true)
    // a commit with a TTL takes the last mark and leaves the marks' expiry (format 3)
    await store.commitExecutionTaskResult('live', 'a', 3)
    assert.deepEqual(await store.getExecutionTaskResults('live'), { a: 3, r: 1 })
    assert.equal(await store.isExecutionTaskInProgress('live', 'a'), false)
    assert.equal(server.sql("SELECT claims_at > 0 AND results_at > 0 FROM ds_v2.step_expiry WHERE exec = 'live'"), 't')
    // ... which a mark made without a TTL does not take
    const plain = createPostgresStore(server.url, { schema: 'ds_v2' })
    await plain.beginExecutionTask('live', 'b')
    assert.equal(server.sql("SELECT claims_at IS NULL AND results_at > 0 FROM ds_v2.step_expiry WHERE exec = 'live'"), 't')
    await plain.close()
    // what expired under version 2 goes at the first write that meets it
    await store.beginExecutionTask('gone', 'b')
    assert.equal(server.sql("SELECT string_agg(task, ',') FROM ds_v2.steps WHERE exec = 'gone'"), 'b')
    await store.close()
  })

  it('refuses a schema written by a newer version (CORRUPT_DATA)', async () => {
    const store = createPostgresStore(server.url, { schema: 'ds_newer' })
    await store.beginExecution('x')
    await store.close()
    server.sql('UPDATE ds_newer.meta SET version = 99')
    const later = createPostgresStore(server.url, { schema: 'ds_newer' })
    await assert.rejects(later.beginExecution('x'), (err) => err.code === 'CORRUPT_DATA' && /version 99/.test(err.message))
    await later.close()
  })

  it('refuses a `pg_` schema at creation (INVALID_INPUT), and a schema holding tables it did not make (CORRUPT_DATA, left untouched)', async () => {
    assert.throws(
      () => createPostgresStore(server.url, { schema: 'pg_mine' }),
      (err) => err.code === 'INVALID_INPUT' && /"pg_mine"/.test(err.message) && /reserves/.test(err.message),
    )
    const describeSchema = (schema) =>
      server.sql(
        `SELECT coalesce(string_agg(table_name || '(' || (SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns c WHERE c.table_schema = t.table_schema AND c.table_name = t.table_name) || ')', ' ' ORDER BY table_name), '') FROM information_schema.tables t WHERE table_schema = '${schema}'`,
      )
    for (const [schema, ddl] of [
      // a `steps` table of another application
      ['ds_foreign_steps', 'CREATE TABLE ds_foreign_steps.steps (id serial PRIMARY KEY, name text)'],
      // one with durastate's columns and more: still not ours without a format version
      ['ds_foreign_alike', 'CREATE TABLE ds_foreign_alike.steps (exec text, task text, claim text, result text, owner text, PRIMARY KEY (exec, task))'],
      // a version marker of another shape
      ['ds_foreign_meta', "CREATE TABLE ds_foreign_meta.meta (id integer PRIMARY KEY, version text); INSERT INTO ds_foreign_meta.meta VALUES (1, 'v7')"],
      ['ds_foreign_meta2', 'CREATE TABLE ds_foreign_meta2.meta (key text, value text)'],
    ]) {
      server.sql(`CREATE SCHEMA ${schema}; ${ddl}`)
      const before = describeSchema(schema)
      const store = createPostgresStore(server.url, { schema, connectTimeout: 3_000 })
      await assert.rejects(
        store.beginExecution('x'),
        (err) => err.code === 'CORRUPT_DATA' && err.message.includes(`schema "${schema}"`) && /not made by durastate/.test(err.message),
        schema,
      )
      await store.close()
      assert.equal(describeSchema(schema), before, `${schema} left as it was`)
    }
  })

  it('a role without CREATE on the database: AUTH, saying which privilege it needs', async () => {
    server.sql("CREATE ROLE no_create LOGIN PASSWORD 'pw-no-create'")
    const url = server.url.replace(`postgres:${POSTGRES_PASSWORD}@`, 'no_create:pw-no-create@')
    const store = createPostgresStore(url, { schema: 'ds_no_create', connectTimeout: 3_000 })
    await assert.rejects(
      store.beginExecution('x'),
      (err) =>
        err.code === 'AUTH' &&
        /permission denied/.test(err.message) &&
        /needs CREATE on the database/.test(err.message) &&
        !err.message.includes('pw-no-create'),
    )
    await store.close()
  })

  it('takes postgres:// and postgresql:// in createStore and createKvStore, and DATABASE_URL after the others', async () => {
    const prefix = fresh()
    const store = createStore(server.url.replace('postgres://', 'postgresql://'), { prefix })
    await store.beginExecution('u')
    assert.equal(await store.isExecutionInProgress('u'), true)
    await store.close()
    const kv = createKvStore(server.url, { prefix })
    await kv.set('default', 'k', { b: 1, a: 2 })
    assert.equal(JSON.stringify(await kv.get('default', 'k')), '{"b":1,"a":2}')
    await kv.close()
    const child = startChild(
      `const s = ds.createStore(undefined, { prefix: ${JSON.stringify(prefix)} });
       s.isExecutionInProgress('u').then((v) => { console.log(v); return s.close() })`,
      { env: { DATABASE_URL: server.url, DURASTATE_URL: '', REDIS_URL: '' } },
    )
    const { code, stdout, stderr } = await child.done
    assert.equal(code, 0, stderr)
    assert.equal(stdout.trim(), 'true')
  })

  it('keeps TTLs exact in ms: marks expire together, results expire together', async () => {
    const ttl = 1_500
    const store = createPostgresStore(server.url, { prefix: fresh(), ttl })
    await store.isExecutionInProgress('warm-up') // connected, statements prepared
    const t0 = Date.now()
    await store.beginExecutionTask('e', 'a')
    await store.commitExecutionTaskResult('e', 'r1', 1)
    await sleep(900)
    // a new mark and a new result refresh the expiry of all marks / all results
    await store.beginExecutionTask('e', 'b')
    await store.commitExecutionTaskResult('e', 'r2', 2)
    const t1 = Date.now()
    await sleep(Math.max(0, t0 + ttl + 200 - Date.now()))
    if (Date.now() < t1 + ttl - 300) {
      assert.equal(await store.isExecutionTaskInProgress('e', 'a'), true)
      assert.deepEqual(await store.getExecutionTaskResults('e'), { r1: 1, r2: 2 })
    }
    await sleep(Math.max(0, t1 + ttl + 50 - Date.now()))
    assert.equal(await store.isExecutionTaskInProgress('e', 'a'), false)
    assert.equal(await store.isExecutionTaskInProgress('e', 'b'), false)
    assert.deepEqual(await store.getExecutionTaskResults('e'), {})
    // an expired claim is free again, and what expired does not come back
    assert.equal(await store.tryBeginExecutionTask('e', 'a'), true)
    await store.commitExecutionTaskResult('e', 'r3', 3)
    assert.deepEqual(await store.getExecutionTaskResults('e'), { r3: 3 })
    await store.close()
  })

  it('keeps the marks expiry while a mark is left; a mark without a TTL after the last one went has none', async () => {
    const schema = 'ds_marks'
    const store = createPostgresStore(server.url, { schema, ttl: 60_000 })
    const plain = createPostgresStore(server.url, { schema })
    const expiry = () => server.sql(`SELECT (claims_at IS NOT NULL)::text || ',' || (results_at IS NOT NULL)::text FROM ${schema}.step_expiry WHERE exec = 'e'`)
    await store.beginExecutionTask('e', 'a')
    assert.equal(await store.tryBeginExecutionTask('e', 'b'), true)
    assert.equal(expiry(), 'true,false')
    await store.commitExecutionTaskResult('e', 'a', 1)
    assert.equal(expiry(), 'true,true')
    assert.equal(await store.isExecutionTaskInProgress('e', 'b'), true)
    await store.commitExecutionTaskResult('e', 'b', 2)
    // the commit with a TTL (one statement) leaves the marks' expiry behind: stale, as no mark is left
    assert.equal(expiry(), 'true,true')
    assert.equal(await store.isExecutionTaskInProgress('e', 'b'), false)
    // a mark without a TTL after the last one went has none (as HSET on a new hash)
    await plain.beginExecutionTask('e', 'c')
    assert.equal(expiry(), 'false,true')
    assert.equal(await plain.tryBeginExecutionTask('e', 'c'), false)
    await plain.commitExecutionTaskResult('e', 'c', 3)
    assert.equal(expiry(), 'false,true')
    assert.deepEqual(await store.getExecutionTaskResults('e'), { a: 1, b: 2, c: 3 })
    await Promise.all([store.close(), plain.close()])
  })

  it('a commit whose step another transaction is inserting waits for it and stores its result on that row (with and without a TTL)', async () => {
    // The commit updates its step's row first, and inserts only when it found none: a row
    // inserted by a transaction that commits meanwhile must be updated, not clash.
    for (const ttl of [undefined, 60_000]) {
      const prefix = fresh()
      const appName = `inserter-${randomUUID().slice(0, 8)}`
      const store = createPostgresStore(server.url, { prefix, ...(ttl && { ttl }) })
      await store.isExecutionInProgress('warm-up') // connected, statements prepared
      const holder = psql(`BEGIN; INSERT INTO durastate.steps (exec, task, claim) VALUES ('${prefix}e', 't', 'true'); SELECT pg_sleep(1.5); COMMIT;`, appName)
      const exited = new Promise((resolve) => holder.once('exit', resolve))
      try {
        await untilSleeping(server, appName)
        const started = Date.now()
        await store.commitExecutionTaskResult('e', 't', { done: 1 })
        assert.ok(Date.now() - started >= 500, `the commit did not wait for the inserting transaction (${Date.now() - started} ms)`)
        assert.equal(
          server.sql(`SELECT coalesce(claim, 'none') || ' ' || result FROM durastate.steps WHERE exec = '${prefix}e' AND task = 't'`),
          'none {"done":1}',
        )
        assert.equal(await store.isExecutionTaskInProgress('e', 't'), false)
        assert.deepEqual(await store.getExecutionTaskResults('e'), { t: { done: 1 } })
      } finally {
        holder.kill()
        await exited
      }
      await store.close()
    }
  })

  it('sweeps expired rows in bounded batches through the expiry index', async () => {
    const schema = 'ds_sweep'
    const kv = createKvStore(server.url, { schema, prefix: 'sw:' })
    const store = createPostgresStore(server.url, { schema, ttl: 2_000 })
    await Promise.all([kv.has('default', 'warm-up'), store.isExecutionInProgress('warm-up')])
    await Promise.all(Array.from({ length: 20 }, (_, i) => kv.set('default', `k${i}`, i, { ttl: 2_000 })))
    await store.commitExecutionTaskResult('gone', 't', 1)
    assert.equal(server.sql(`SELECT count(*) FROM ${schema}.entries`), '20')
    await sleep(2_200)
    await kv.set('default', 'keep', 'x') // a write after a second starts a sweep
    const deadline = Date.now() + 5_000
    while (Date.now() < deadline && server.sql(`SELECT count(*) FROM ${schema}.entries`) !== '1') await sleep(50)
    assert.equal(server.sql(`SELECT count(*) FROM ${schema}.entries`), '1')
    while (Date.now() < deadline && server.sql(`SELECT count(*) FROM ${schema}.steps`) !== '0') await sleep(50)
    assert.equal(server.sql(`SELECT count(*) FROM ${schema}.steps`), '0')
    assert.equal(server.sql(`SELECT count(*) FROM ${schema}.step_expiry`), '0')
    await Promise.all([kv.close(), store.close()])
  })

  it('keeps up with a steady rate of expiries: a sweep runs rounds while they remove a full batch', async () => {
    const schema = 'ds_sweep_rate'
    // long enough for the 7,000 writes below to be made before any expires, also on a
    // slow runtime on a busy machine (Deno took more than 2.5 s there)
    const ttl = 6_000
    const kv = createKvStore(server.url, { schema, prefix: 'sr:' })
    const store = createPostgresStore(server.url, { schema, prefix: 'sr:', ttl })
    await Promise.all([kv.has('default', 'warm-up'), store.isExecutionInProgress('warm-up')])
    await Promise.all(Array.from({ length: 5_000 }, (_, i) => kv.set('default', `k${i}`, i, { ttl })))
    await Promise.all(Array.from({ length: 2_000 }, (_, i) => store.commitExecutionTaskResult(`e${i}`, 't', i)))
    const count = (table) => Number(server.sql(`SELECT count(*) FROM ${schema}.${table}`))
    const written = Date.now()
    assert.ok(count('entries') >= 5_000 && count('step_expiry') === 2_000)
    await sleep(Math.max(0, written + ttl + 1_100 - Date.now()))
    // a steady trickle of writes (each may start a sweep, at most one a second): the
    // dead rows are gone within a few sweeps (about 3 s, also on Deno on a busy machine),
    // not one batch of 64 a second (78 s: 15 s of that leaves thousands of rows)
    const deadline = Date.now() + 15_000
    // one psql for the three counts: each psql takes up to ~80 ms on a loaded machine
    const leftRows = () =>
      Number(
        server.sql(
          `SELECT (SELECT count(*) FROM ${schema}.entries) - 1 + (SELECT count(*) FROM ${schema}.steps) + (SELECT count(*) FROM ${schema}.step_expiry)`,
        ),
      )
    let left
    while (Date.now() < deadline) {
      await kv.set('default', 'tick', 1)
      left = leftRows()
      if (left === 0) break
      await sleep(100)
    }
    assert.equal(left, 0, `${left} expired rows left after the sweeps`)
    await Promise.all([kv.close(), store.close()])
  })

  it('resets steps atomically: claims and commits racing resets (from another store) never leave a mark or result without its expiry', async () => {
    const schema = 'ds_reset_race'
    const prefix = 'rr:'
    const workers = Array.from({ length: 2 }, () => createPostgresStore(server.url, { schema, prefix, ttl: 600_000 }))
    const inspectors = Array.from({ length: 2 }, () => createInspector(server.url, { schema }))
    const [worker] = workers
    await worker.isExecutionInProgress('warm-up')
    const orphans = () =>
      server.sql(`SELECT count(*) FROM ${schema}.steps s WHERE
        (s.claim IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ${schema}.step_expiry x WHERE x.exec = s.exec AND x.claims_at IS NOT NULL))
        OR (s.result IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ${schema}.step_expiry x WHERE x.exec = s.exec AND x.results_at IS NOT NULL))`)
    const executions = 100
    for (let round = 0; round < 6; round++) {
      const ids = Array.from({ length: executions }, (_, i) => `r${round}-${i}`)
      await Promise.all(ids.map(async (id) => (await worker.beginExecutionTask(id, 'a'), await worker.commitExecutionTaskResult(id, 'r', 1))))
      await Promise.all(
        ids.flatMap((id, i) => [
          inspectors[i % 2].resetSteps(prefix + id, ['a', 'r']),
          workers[i % 2].tryBeginExecutionTask(id, 'b'),
          workers[(i + 1) % 2].commitExecutionTaskResult(id, 'c', 2),
        ]),
      )
      assert.equal(orphans(), '0', `round ${round}: steps whose expiry a reset dropped`)
      for (const id of ids) {
        // before or after the reset, never half of it: the new step is there, the reset ones are not
        assert.equal(await worker.isExecutionTaskInProgress(id, 'b'), true)
        assert.deepEqual(await worker.getExecutionTaskResults(id), { c: 2 })
        assert.equal(await worker.isExecutionTaskInProgress(id, 'a'), false)
      }
    }
    await Promise.all(workers.map((w) => w.close()))
  })

  it('refuses NUL (\\u0000) in execution ids, task ids and keys with INVALID_INPUT naming them; NUL inside values is kept', async () => {
    const prefix = fresh()
    const store = createPostgresStore(server.url, { prefix })
    const kv = createKvStore(server.url, { prefix })
    const invalid = (name) => (err) => err.code === 'INVALID_INPUT' && err.message.includes(name) && /NUL/.test(err.message)
    await assert.rejects(store.beginExecution('a\u0000b'), invalid('executionId'))
    await assert.rejects(store.isExecutionInProgress('\u0000'), invalid('executionId'))
    await assert.rejects(store.tryBeginExecutionTask('e', 't\u0000'), invalid('taskId'))
    await assert.rejects(store.commitExecutionTaskResult('e\u0000', 't', 1), invalid('executionId'))
    await assert.rejects(store.getExecutionTaskResults('e\u0000'), invalid('executionId'))
    await assert.rejects(kv.set('default', 'k\u0000', 1), invalid('key'))
    await assert.rejects(kv.get('default', 'k\u0000'), invalid('key'))
    await assert.rejects(kv.getMany('default', ['ok', 'k\u0000']), invalid('key'))
    await assert.rejects(kv.setMany('default', { 'k\u0000': 1 }), invalid('key'))
    const inspector = createInspector(server.url)
    await assert.rejects(inspector.resetSteps(`${prefix}e`, ['t\u0000']), invalid('task id'))
    await assert.rejects(inspector.execution(`${prefix}\u0000`), invalid('execution id'))
    // nothing was written, and the store still works
    assert.equal(await store.isExecutionTaskInProgress('e', 't'), false)
    // NUL inside a value is escaped in its JSON text: kept as it is
    const value = { s: 'a\u0000b', [`k\u0000`]: ['\u0000'] }
    await store.commitExecutionTaskResult('e', 't', value)
    assert.deepEqual(await store.getExecutionTaskResult('e', 't'), value)
    await kv.set('default', 'v', value)
    assert.deepEqual(await kv.get('default', 'v'), value)
    // a pattern matches in Rust: NUL in a range is a pattern like another; a literal NUL matches no key
    assert.deepEqual(await kv.keys('default', '[\u0000-z]'), ['v'])
    assert.deepEqual(await kv.keys('default', 'v\u0000*'), [])
    // The mount's mode is checked first, as on every backend (and as for a key too long).
    const modes = createKvStore(server.url, { prefix, mounts: { ro: { mode: 'read' }, wo: { mode: 'write' } } })
    await assert.rejects(modes.set('ro', 'k\u0000', 1), (err) => err.code === 'READ_ONLY')
    await assert.rejects(modes.deleteMany('ro', ['k\u0000']), (err) => err.code === 'READ_ONLY')
    await assert.rejects(modes.get('wo', 'k\u0000'), (err) => err.code === 'WRITE_ONLY')
    await assert.rejects(modes.set('wo', 'k\u0000', 1), invalid('key'))
    await modes.close()
    await Promise.all([store.close(), kv.close()])
    // a mount whose prefix or schema key holds NUL could not run one call: refused at creation
    assert.throws(() => createKvStore(server.url, { mounts: { m: { prefix: `${prefix}m\u0000:` } } }), invalid("mount 'm': the prefix"))
    assert.throws(
      () => createKvStore(server.url, { mounts: { m: { prefix: `${prefix}m:`, schema: { 'n\u0000': { type: 'number', default: 0 } } } } }),
      invalid("mount 'm': schema key"),
    )
  })

  it('claims have exactly one winner across stores and processes', async () => {
    const prefix = fresh()
    const tasks = 40
    const script = `
      const s = ds.createPostgresStore(${JSON.stringify(server.url)}, { prefix: ${JSON.stringify(prefix)} });
      Promise.all(Array.from({ length: ${tasks} }, (_, i) => s.tryBeginExecutionTask('race', 't' + i)))
        .then((won) => { console.log(JSON.stringify(won)); return s.close() })`
    const children = [startChild(script), startChild(script)]
    const local = Array.from({ length: 3 }, () => createPostgresStore(server.url, { prefix }))
    const mine = await Promise.all(local.map((s) => Promise.all(Array.from({ length: tasks }, (_, i) => s.tryBeginExecutionTask('race', `t${i}`)))))
    const theirs = []
    for (const child of children) {
      const { code, stdout, stderr } = await child.done
      assert.equal(code, 0, stderr)
      theirs.push(JSON.parse(stdout))
    }
    const all = [...mine, ...theirs]
    for (let i = 0; i < tasks; i++) {
      assert.equal(all.filter((won) => won[i]).length, 1, `task t${i}: one winner`)
    }
    await Promise.all(local.map((s) => s.close()))
  })

  it('answers every call of a group on its own when one of them fails', async () => {
    const store = createPostgresStore(server.url, { prefix: fresh() })
    const calls = Array.from({ length: 20 }, (_, i) =>
      // a NUL in a key is refused by Postgres: that call fails, the others land
      store.commitExecutionTaskResult(i === 7 ? 'bad\u0000id' : `ok${i}`, 't', i),
    )
    const settled = await Promise.allSettled(calls)
    assert.deepEqual(
      settled.map((s) => s.status),
      settled.map((_, i) => (i === 7 ? 'rejected' : 'fulfilled')),
    )
    assert.equal(settled[7].reason.code, 'INVALID_INPUT')
    for (let i = 0; i < 20; i++) if (i !== 7) assert.equal(await store.getExecutionTaskResult(`ok${i}`, 't'), i)
    await store.close()
  })

  it('answers a read of a group from committed state, and a read after a write of its key with what the write stored', async () => {
    // one lane: calls made together share a group (reads of untouched keys are answered before its commit)
    const store = createPostgresStore(server.url, { prefix: fresh(), poolSize: 2 })
    await store.commitExecutionTaskResult('b', 't', 'b0')
    for (const [n, failing] of [
      [1, false],
      [2, true],
    ]) {
      const calls = [
        store.commitExecutionTaskResult('a', 't', n),
        store.getExecutionTaskResult('a', 't'),
        store.getExecutionTaskResult('b', 't'),
        store.isExecutionTaskInProgress('b', 't'),
        // a NUL in a key is refused by Postgres: the group rolls back and its calls run alone
        ...(failing ? [store.commitExecutionTaskResult('bad\u0000id', 't', 0).catch((err) => err.code)] : []),
        store.commitExecutionTaskResult('b', 't', `b${n}`),
        store.getExecutionTaskResult('b', 't'),
        store.getExecutionTaskResults('a'),
      ]
      const expected = [undefined, n, `b${n - 1}`, false, ...(failing ? ['INVALID_INPUT'] : []), undefined, `b${n}`, { t: n }]
      assert.deepEqual(await Promise.all(calls), expected)
    }
    await store.close()
  })

  it('rejects a wrong password with AUTH and bad URLs or options with INVALID_INPUT at creation', async () => {
    const wrong = createPostgresStore(server.url.replace(POSTGRES_PASSWORD, 'not-it'))
    await assert.rejects(
      wrong.beginExecution('x'),
      (err) => err.code === 'AUTH' && /password authentication failed/.test(err.message) && !err.message.includes('not-it'),
    )
    await wrong.close()
    for (const [url, options] of [
      ['postgres://h/db?sslmode=sometimes', {}],
      ['postgres://h:port/db', {}],
      ['postgres://h/db?no_such_option=1', {}],
      [server.url, { poolSize: 0 }],
      [server.url, { schema: '' }],
      // `$$` would end the quoted bodies of the schema's functions.
      [server.url, { schema: 'a$$b' }],
      [server.url, { durability: 'x' }],
      [server.url, { pageSize: 1000 }],
      [server.url, { synchronous: 'off' }],
      [server.url, { tls: { servername: 'x' } }],
    ]) {
      assert.throws(
        () => createPostgresStore(url, options),
        (err) => err.code === 'INVALID_INPUT',
        `${url} ${JSON.stringify(options)}`,
      )
    }
    // `durability` is Redis's: its value is checked, then it is ignored, as on SQLite (one
    // options object serves every backend).
    const shared = createPostgresStore(server.url, { durability: 'aof', prefix: fresh() })
    await shared.beginExecution('d')
    assert.equal(await shared.isExecutionInProgress('d'), true)
    await shared.close()
    assert.throws(
      () => createPostgresStore({ host: '127.0.0.1', port: 70000 }),
      (err) => err.code === 'INVALID_INPUT',
    )
    const fields = createPostgresStore(
      { host: '127.0.0.1', port: server.port, user: 'postgres', password: POSTGRES_PASSWORD, database: 'postgres', sslmode: 'disable' },
      { prefix: fresh() },
    )
    await fields.beginExecution('f')
    assert.equal(await fields.isExecutionInProgress('f'), true)
    await fields.close()
  })

  it('sslmode=require against a server without TLS rejects with TLS, in a URL or a key/value string', async () => {
    const keyValue = `host=127.0.0.1 port=${server.port} user=postgres password=${POSTGRES_PASSWORD} dbname=postgres sslmode=require`
    for (const target of [`${server.url}?sslmode=require`, keyValue]) {
      const store = createPostgresStore(target, { connectTimeout: 2_000 })
      // Explained, as Redis's TLS errors are.
      await assert.rejects(store.beginExecution('x'), (err) => err.code === 'TLS' && /the server does not offer TLS/.test(err.message), target)
      await store.close()
    }
  })

  it('refuses at creation the tls option with an sslmode that would or could be plain text (disable, allow, prefer), in a URL, a key/value string or fields, as the CLI does', () => {
    const keyValue = `host=127.0.0.1 port=${server.port} user=postgres password=${POSTGRES_PASSWORD} dbname=postgres`
    for (const sslmode of ['disable', 'allow', 'prefer']) {
      for (const tls of [true, { rejectUnauthorized: false }]) {
        for (const target of [
          `${server.url}?sslmode=${sslmode}`,
          `${keyValue} sslmode=${sslmode}`,
          { host: '127.0.0.1', port: server.port, user: 'postgres', password: POSTGRES_PASSWORD, sslmode },
        ]) {
          assert.throws(
            () => createPostgresStore(target, { tls }),
            (err) =>
              err.code === 'INVALID_INPUT' &&
              err.message.includes(`option \`tls\` asks for TLS, but sslmode=${sslmode} `) &&
              /plain text/.test(err.message) &&
              /give sslmode=verify-full/.test(err.message) &&
              !err.message.includes(POSTGRES_PASSWORD),
            String(target),
          )
        }
      }
    }
  })

  it("refuses at creation sslrootcert=system with an sslmode other than verify-full (as libpq 16: the system's roots vouch for any name)", () => {
    for (const sslmode of ['disable', 'allow', 'prefer', 'require', 'verify-ca']) {
      assert.throws(
        () => createPostgresStore(`${server.url}?sslrootcert=system&sslmode=${sslmode}`),
        (err) =>
          err.code === 'INVALID_INPUT' &&
          err.message.includes(`sslmode=${sslmode} may not be used with sslrootcert=system`) &&
          !err.message.includes(POSTGRES_PASSWORD),
        sslmode,
      )
    }
  })

  it('reads libpq key/value strings as libpq does: `sslmode = require` (spaces around =) asks for TLS, never plain text; quoted values keep their spaces', async () => {
    const keyValue = (more) => `host=127.0.0.1 port=${server.port} user=postgres password=${POSTGRES_PASSWORD} dbname=postgres ${more}`
    // This server has no TLS: a required TLS must be refused, not connect in plain text.
    for (const sslmode of ['sslmode = require', "sslmode= 'require'", 'sslmode =verify-full']) {
      const store = createPostgresStore(keyValue(sslmode), { connectTimeout: 2_000, prefix: fresh() })
      await assert.rejects(store.beginExecution('x'), (err) => err.code === 'TLS', sslmode)
      await store.close()
    }
    // A `hostaddr` is TCP, with or without a host (a socket directory included): its
    // sslmode holds too.
    for (const target of [
      `hostaddr=127.0.0.1 port=${server.port} user=postgres password=${POSTGRES_PASSWORD} dbname=postgres sslmode=require`,
      `postgres://postgres:${POSTGRES_PASSWORD}@/postgres?host=/tmp&hostaddr=127.0.0.1&port=${server.port}&sslmode=require`,
    ]) {
      const store = createPostgresStore(target, { connectTimeout: 2_000, prefix: fresh() })
      await assert.rejects(store.beginExecution('x'), (err) => err.code === 'TLS', target)
      await store.close()
    }
    // A quoted password with spaces (two in a row), a quote and a backslash.
    server.sql("CREATE ROLE spaced LOGIN PASSWORD 'a b  c''d\\e'; GRANT CREATE ON DATABASE postgres TO spaced")
    const spaced = createPostgresStore(`host = 127.0.0.1 port = ${server.port} user = spaced password = 'a b  c\\'d\\\\e' dbname = postgres`, {
      schema: 'ds_spaced',
      prefix: fresh(),
    })
    await spaced.beginExecution('kv')
    assert.equal(await spaced.isExecutionInProgress('kv'), true)
    await spaced.close()
    // Bad syntax: INVALID_INPUT at creation naming the problem, never the password.
    for (const [text, problem] of [
      [`host=127.0.0.1 password='${POSTGRES_PASSWORD}`, /unterminated quoted value of `password`/],
      [`host=127.0.0.1 password=top secret`, /missing "=" after the value of `password`/],
      ['host=127.0.0.1 dbname', /missing "=" after "dbname"/],
    ]) {
      assert.throws(
        () => createPostgresStore(text),
        (err) => err.code === 'INVALID_INPUT' && problem.test(err.message) && !err.message.includes('secret') && !err.message.includes(POSTGRES_PASSWORD),
        text,
      )
    }
  })

  it('refuses at creation a number of ports that is neither 1 nor the number of hosts, and port 0; one port (also ?port=) applies to every host', async () => {
    for (const target of [
      'postgres://h1,h2/db?port=1,2,3',
      'host=h1,h2 port=1,2,3',
      'host=h1 port=1,2',
      'postgres://h:0/db',
      'postgres://h/db?port=0',
      'host=h1,h2 port=5432,0',
    ]) {
      assert.throws(
        () => createPostgresStore(target),
        (err) => err.code === 'INVALID_INPUT' && /ports for|port must be 1 to 65535/.test(err.message),
        target,
      )
    }
    // libpq: `?port=` replaces the URL's ports, one for all its hosts.
    const both = server.url.replace(`127.0.0.1:${server.port}`, '127.0.0.1,localhost')
    for (const target of [`${both}?port=${server.port}`, `host=127.0.0.1,localhost port=${server.port} user=postgres password=${POSTGRES_PASSWORD}`]) {
      const store = createPostgresStore(target, { prefix: fresh(), connectTimeout: 3_000 })
      await store.beginExecution('ports')
      assert.equal(await store.isExecutionInProgress('ports'), true, target)
      await store.close()
    }
  })

  it('tries the next host of a multi-host target when one accepts TCP and never answers, each host within connectTimeout', async () => {
    // Host 1 accepts connections and never writes a byte.
    const sockets = []
    const silent = createServer((socket) => sockets.push(socket))
    await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve))
    const port = silent.address().port
    try {
      for (const target of [
        `postgres://postgres:${POSTGRES_PASSWORD}@127.0.0.1:${port},127.0.0.1:${server.port}/postgres`,
        `host=127.0.0.1,localhost port=${port},${server.port} user=postgres password=${POSTGRES_PASSWORD} dbname=postgres`,
      ]) {
        const store = createPostgresStore(target, { prefix: fresh(), connectTimeout: 1_000, commandTimeout: 8_000, poolSize: 2 })
        const t0 = Date.now()
        await store.beginExecution('multi')
        assert.equal(await store.isExecutionInProgress('multi'), true, target)
        assert.ok(Date.now() - t0 < 6_000, `took ${Date.now() - t0} ms`)
        await store.close()
      }
      assert.ok(sockets.length >= 2, 'host 1 was tried first')
      // Every host silent: UNAVAILABLE (or TIMEOUT), bounded by connectTimeout per host.
      const none = createPostgresStore(`postgres://postgres@127.0.0.1:${port},127.0.0.1:${port}/postgres`, { connectTimeout: 500, commandTimeout: 5_000 })
      const t0 = Date.now()
      await assert.rejects(none.beginExecution('x'), (err) => {
        assert.equal(err.code, 'UNAVAILABLE', err.message)
        // The bound said is the one of each host, not their sum.
        assert.match(err.message, /no connection to any of its 2 hosts, each tried within connectTimeout \(500 ms\)/)
        return true
      })
      assert.ok(Date.now() - t0 < 3_000, `rejected after ${Date.now() - t0} ms`)
      await none.close()
      // A host that fails TLS (this server has none) before one that refuses connections:
      // the TLS failure is said (a setting to fix), not the refusal of the last host.
      const gone = createServer()
      await new Promise((resolve) => gone.listen(0, '127.0.0.1', resolve))
      const refused = gone.address().port
      await new Promise((resolve) => gone.close(resolve))
      const tlsFirst = createPostgresStore(`postgres://postgres:${POSTGRES_PASSWORD}@127.0.0.1:${server.port},127.0.0.1:${refused}/postgres?sslmode=require`, {
        connectTimeout: 1_000,
        retry: { attempts: 0 },
      })
      await assert.rejects(tlsFirst.beginExecution('x'), (err) => {
        assert.equal(err.code, 'TLS', err.message)
        return true
      })
      await tlsFirst.close()
      // The same when the last host accepts and never answers.
      const tlsThenSilent = createPostgresStore(
        `postgres://postgres:${POSTGRES_PASSWORD}@127.0.0.1:${server.port},127.0.0.1:${port}/postgres?sslmode=require`,
        { connectTimeout: 1_000, retry: { attempts: 0 } },
      )
      await assert.rejects(tlsThenSilent.beginExecution('x'), (err) => {
        assert.equal(err.code, 'TLS', err.message)
        return true
      })
      await tlsThenSilent.close()
    } finally {
      for (const socket of sockets) socket.destroy()
      silent.close()
    }
  })

  it("gives up a call stuck on another transaction's lock at commandTimeout without leaving its connection behind; the sweep skips locked rows", async () => {
    const name = `locked-${randomUUID().slice(0, 8)}`
    const prefix = fresh()
    const store = createPostgresStore(`${server.url}?application_name=${name}`, { prefix, ttl: 300, commandTimeout: 500, retry: { attempts: 0 } })
    await store.beginExecution('victim')
    // An expired execution whose expiry row is locked too: the sweep meets it.
    await store.beginExecutionTask('expired', 't')
    await sleep(400)
    const connections = () => Number(server.sql(`SELECT count(*) FROM pg_stat_activity WHERE application_name = '${name}'`))
    // Another client holds both rows for 8 s.
    const holder = psql(
      `BEGIN; SELECT 1 FROM durastate.entries WHERE key = '${prefix}victim' FOR UPDATE; SELECT 1 FROM durastate.step_expiry WHERE exec = '${prefix}expired' FOR UPDATE; SELECT pg_sleep(8); COMMIT;`,
      `${name}-holder`,
    )
    try {
      await untilSleeping(server, `${name}-holder`)
      for (let i = 0; i < 8; i++) {
        await assert.rejects(store.beginExecution('victim'), (err) => err.code === 'TIMEOUT')
        // Writes of other keys go on (each may start a sweep, which must not wait on the lock).
        await store.beginExecution(`other-${i}`)
      }
      // Each timed-out call's connection was cancelled and closed, not kept waiting on the
      // lock (which the holder keeps for 8 s: longer than the calls and this wait).
      const closed = await eventually(() => connections() <= 3, 2_000)
      assert.ok(closed, `${connections()} connections of the store 2 s after 8 calls given up`)
    } finally {
      holder.kill()
    }
    await store.close()
  })

  it('gives up a connection whose setup (schema check, prepared statements) is stuck on a lock at commandTimeout (at least connectTimeout)', async () => {
    const name = `setup-${randomUUID().slice(0, 8)}`
    const waiting = () => Number(server.sql(`SELECT count(*) FROM pg_stat_activity WHERE application_name = '${name}' AND wait_event_type = 'Lock'`))
    const warm = createPostgresStore(server.url, { prefix: fresh() })
    await warm.beginExecution('tables made') // the schema exists before the lock is taken
    await warm.close()
    // Another client holds the schema's version table for 8 s: a new store's first
    // connection checks it, and waits.
    const holder = psql('BEGIN; LOCK TABLE durastate.meta IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(8); COMMIT;', `${name}-holder`)
    const store = createPostgresStore(`${server.url}?application_name=${name}`, {
      prefix: fresh(),
      commandTimeout: 500,
      connectTimeout: 500,
      retry: { attempts: 0 },
    })
    try {
      await untilSleeping(server, `${name}-holder`)
      for (let i = 0; i < 3; i++) {
        await assert.rejects(store.beginExecution(`e${i}`), (err) => err.code === 'TIMEOUT')
        // The stuck connection was cancelled and closed: it does not wait on the lock (which
        // the holder keeps for 8 s).
        const none = await eventually(() => waiting() === 0, 1_000)
        assert.ok(none, `after call ${i}: a connection of the store still waits on the lock 1 s after`)
      }
    } finally {
      server.sql(`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '${name}-holder'`)
      holder.kill()
    }
    // The lock gone, the store works.
    await store.beginExecution('after')
    assert.equal(await store.isExecutionInProgress('after'), true)
    await store.close()
  })

  it('lets the process exit once its last call settled: a connect attempt no call waits for is dropped, not kept until connectTimeout', async () => {
    // The server (in the child, as a program's own proxy could be) accepts and never
    // answers: the attempt's socket, while open, holds the child's event loop.
    for (const close of [true, false]) {
      const { code, stdout, stderr, timedOut } = await runChild(
        `const net = require('node:net')
         const silent = net.createServer((socket) => socket.on('error', () => {}))
         silent.listen(0, '127.0.0.1', async () => {
           silent.unref()
           const store = ds.createPostgresStore('postgres://u:p@127.0.0.1:' + silent.address().port + '/db', { commandTimeout: 800, connectTimeout: 12000 })
           const t0 = Date.now()
           process.on('exit', () => console.log('exit after', Date.now() - t0))
           await store.commitExecutionTaskResult('e', 't', 1).catch((err) => console.log(err.code))
           ${close ? 'await store.close()' : ''}
         })`,
        { timeoutMs: 20_000 },
      )
      assert.equal(timedOut, false, stderr)
      assert.equal(code, 0, stderr)
      assert.match(stdout, /^TIMEOUT$/m)
      const ms = Number(/exit after (\d+)/.exec(stdout)?.[1])
      assert.ok(ms < 4_000, `close ${close}: the process exited ${ms} ms after the call (commandTimeout 800, connectTimeout 12000)`)
    }
  })

  it('calls made together against a server that never answers share its connect attempt: each rejects UNAVAILABLE at connectTimeout, none tries again', async () => {
    let accepted = 0
    const sockets = []
    const silent = createServer((socket) => {
      accepted++
      sockets.push(socket)
    })
    await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve))
    const url = `postgres://u:p@127.0.0.1:${silent.address().port}/db`
    const together = (store) => [
      store.beginExecution('e'),
      store.tryBeginExecutionTask('e', 't'),
      store.getExecutionTaskResults('e'),
      store.commitExecutionTaskResult('e', 't', 1),
      ...['a', 'b', 'c', 'd'].map((id) => store.isExecutionInProgress(id)),
    ]
    try {
      // A race (the first call's group may start before the others are queued): several
      // rounds. commandTimeout is under twice connectTimeout: a second attempt is a TIMEOUT.
      // The calls settle at connectTimeout (600 ms; up to ~120 ms later on a loaded machine),
      // well before commandTimeout (1,100 ms).
      for (const poolSize of [2, 2, 2, 2, 2, 10, 10, 10]) {
        accepted = 0
        const store = createPostgresStore(url, { connectTimeout: 600, commandTimeout: 1_100, poolSize })
        const t0 = Date.now()
        const results = await Promise.allSettled(together(store))
        const took = Date.now() - t0
        for (const [i, result] of results.entries()) {
          assert.equal(result.status, 'rejected', `call ${i}`)
          assert.equal(result.reason.code, 'UNAVAILABLE', `poolSize ${poolSize}, call ${i}: ${result.reason.message}`)
        }
        assert.ok(took < 1_100, `poolSize ${poolSize}: the calls settled after ${took} ms`)
        // One lane (poolSize 2): one connection for all of them.
        if (poolSize === 2) assert.equal(accepted, 1, 'TCP connections accepted')
        await store.close()
      }
    } finally {
      for (const socket of sockets) socket.destroy()
      silent.close()
    }
  })

  it('refuses an execution id and task id over 2,000 bytes together (or a key) with INVALID_INPUT saying which and the limit; up to it they work', async () => {
    const prefix = fresh()
    const store = createPostgresStore(server.url, { prefix })
    // Random text does not compress: the B-tree entry is as long as the ids.
    const random = (n) => randomBytes(n).toString('base64url').slice(0, n)
    const limit = /Postgres takes at most 2000 bytes in an execution id and a task id together \(with the store's prefix\), and in a key/
    // Up to the limit, with the prefix: every call works.
    const exec = random(1_000 - prefix.length)
    const task = random(1_000)
    await store.beginExecution(exec)
    assert.equal(await store.tryBeginExecutionTask(exec, task), true)
    await store.commitExecutionTaskResult(exec, task, 1)
    assert.equal(await store.getExecutionTaskResult(exec, task), 1)
    assert.deepEqual(await store.getExecutionTaskResults(exec), { [task]: 1 })
    await store.disposeExecution(exec)
    // One byte more: refused before any SQL, saying which ids and how long.
    await assert.rejects(store.tryBeginExecutionTask(exec, `${task}x`), (err) => {
      assert.equal(err.code, 'INVALID_INPUT', err.message)
      assert.match(
        err.message,
        /the execution id "[^"]+…" \(1000 bytes with the store's prefix\) and the task id "[^"]+…" \(1001 bytes\) take 2001 bytes together/,
      )
      assert.match(err.message, limit)
      return true
    })
    await assert.rejects(store.commitExecutionTaskResult('e', random(2_500), 1), (err) => err.code === 'INVALID_INPUT' && limit.test(err.message))
    // An execution id alone, past the limit (and past what the index holds).
    const long = random(3_000)
    for (const call of [() => store.beginExecution(long), () => store.isExecutionInProgress(long), () => store.getExecutionTaskResults(long)]) {
      await assert.rejects(call(), (err) => {
        assert.equal(err.code, 'INVALID_INPUT', err.message)
        assert.match(err.message, new RegExp(`the execution id or key "[^"]+…" is ${3_000 + prefix.length} bytes \\(with the store's prefix\\)`))
        assert.match(err.message, limit)
        assert.ok(err.message.length < 600, 'the message does not hold the whole id')
        return true
      })
    }
    await store.close()
    const kv = createKvStore(server.url, { prefix })
    await assert.rejects(kv.set('default', random(2_100), 1), (err) => err.code === 'INVALID_INPUT' && limit.test(err.message))
    await kv.close()
  })

  it('never shows the password of a target that is not a postgres:// URL (another scheme, a typo, a leading space): INVALID_INPUT saying so, in every factory and the CLI', () => {
    const secret = 'S3cretPw'
    for (const target of [
      `postgresql+asyncpg://app:${secret}@db.internal:5432/app`,
      `postgress://app:${secret}@db/app`,
      ` postgres://app:${secret}@db/app`,
      `postgres:/app:${secret}@db/app`,
      `jdbc:postgresql://db/app?user=app&password=${secret}`,
      `postgres://app:${secret}@db/app?sslmode=require&ssl=true junk`.replace('postgres://', 'postgres:'),
    ]) {
      for (const [name, create] of [
        ['createPostgresStore', () => createPostgresStore(target)],
        ['createStore', () => createStore(target)],
        ['createKvStore', () => createKvStore(target, { mounts: { m: {} } })],
      ]) {
        assert.throws(
          create,
          (err) => err.code === 'INVALID_INPUT' && !err.message.includes(secret) && !err.message.includes('Pw'),
          `${name}(${JSON.stringify(target)})`,
        )
      }
      assert.throws(
        () => createPostgresStore(target),
        (err) => /not a postgres:\/\/ or postgresql:\/\/ URL/.test(err.message),
        JSON.stringify(target),
      )
      // The CLI, from DATABASE_URL: exit 2, the password nowhere.
      const cli = spawnSync(process.execPath, [join(packageRoot, 'bin', 'durastate.mjs'), 'inspect'], {
        encoding: 'utf8',
        timeout: 20_000,
        env: { ...process.env, DATABASE_URL: target, DURASTATE_URL: '', REDIS_URL: '' },
      })
      assert.notEqual(cli.status, 0, JSON.stringify(target))
      assert.ok(!`${cli.stdout}${cli.stderr}`.includes(secret), `${JSON.stringify(target)}: ${cli.stderr}`)
    }
    // A leading space: said what to do.
    assert.throws(
      () => createPostgresStore(` postgres://app:${secret}@db/app`),
      (err) => /postgres:\*\*\*@db\/app/.test(err.message) && /whitespace/.test(err.message),
    )
    // A key/value string whose later word is not a keyword: not echoed either.
    assert.throws(
      () => createPostgresStore(`host=db password=top ${secret}:x=1`),
      (err) => err.code === 'INVALID_INPUT' && !err.message.includes(secret) && !err.message.includes('top'),
    )
  })

  it('lists only what was there when the listing was made: a KV keys() made before a deleteMany and a set does not see them (several lanes)', async () => {
    const kv = createKvStore(server.url, { prefix: fresh(), poolSize: 4, mounts: { m: { prefix: 'm:' } } })
    const seen = []
    for (let round = 0; round < 12; round++) {
      const keys = Array.from({ length: 20 }, (_, i) => `r${round}_${i}`)
      await kv.setMany('m', Object.fromEntries(keys.map((k) => [k, 1])))
      const listed = kv.keys('m', `r${round}_*`)
      const deleted = kv.deleteMany('m', keys)
      const added = kv.set('m', `r${round}_new`, 1)
      seen.push((await listed).sort().join(','))
      await deleted
      await added
      await kv.delete('m', `r${round}_new`)
      assert.equal(seen.at(-1), [...keys].sort().join(','), `round ${round}`)
    }
    await kv.close()
  })

  it('a call in flight when its connection drops is sent again before the calls made after it on its keys (set then merge, set then delete, setMany over several lanes then set, commit then dispose)', async () => {
    // Another client holds a row's lock, so the first call is on the server (waiting for
    // the lock) when its backend is terminated; the calls made after it are queued behind
    // it. The first is sent again, and must run before them, as it was made before them.
    const name = `dropord-${randomUUID().slice(0, 8)}`
    const inFlightWhenDropped = async (rowSql, first, later, ready = async () => {}) => {
      const holder = psql(`BEGIN; ${rowSql} FOR UPDATE; SELECT pg_sleep(1.5); COMMIT;`, `${name}-holder`)
      const exited = new Promise((resolve) => holder.once('exit', resolve))
      try {
        await untilSleeping(server, `${name}-holder`)
        await ready()
        const a = first()
        const waiting = `SELECT count(*) FROM pg_stat_activity WHERE application_name = '${name}' AND wait_event_type = 'Lock'`
        assert.ok(await eventually(() => server.sql(waiting) === '1', 5_000), 'the first call did not wait for the lock')
        const rest = later()
        await sleep(100) // queued behind it, on its lane
        assert.equal(
          server.sql(`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '${name}' AND wait_event_type = 'Lock'`),
          '1',
        )
        return [await a, ...(await Promise.all(rest))]
      } finally {
        await exited
      }
    }
    const prefix = fresh()
    const kv = createKvStore(`${server.url}?application_name=${name}`, { prefix, commandTimeout: 8_000, poolSize: 4 })
    const keys = Array.from({ length: 10 }, (_, i) => `f${i}`) // on several lanes (3 of them)
    await kv.setMany('default', { k: { start: 0 }, d: { start: 0 }, ...Object.fromEntries(keys.map((key) => [key, 0])) })
    // A fresh count first: each KV write below is one round trip (not held back by the KV layer).
    const counted = () => kv.keys('default')
    const row = (key) => `SELECT key FROM durastate.entries WHERE key LIKE '${prefix}%' AND key LIKE '%:${key}'`
    const wrong = {}
    const check = (what, actual, expected) => {
      try {
        assert.deepEqual(actual, expected)
      } catch {
        wrong[what] = actual
      }
    }
    // set, then merge and a read made after it: the merge sees the set, so does the read.
    check(
      'set, merge, getJson',
      await inFlightWhenDropped(
        row('k'),
        () => kv.set('default', 'k', { x: 1 }),
        () => [kv.merge('default', 'k', { y: 2 }), kv.getJson('default', 'k')],
        counted,
      ),
      [true, true, '{"x":1,"y":2}'],
    )
    check('k after set, merge', await kv.getJson('default', 'k'), '{"x":1,"y":2}')
    // set, then delete: the delete finds the key, and the key stays deleted.
    check(
      'set, delete',
      await inFlightWhenDropped(
        row('d'),
        () => kv.set('default', 'd', { z: 1 }),
        () => [kv.delete('default', 'd')],
        counted,
      ),
      [true, true],
    )
    check('d rows after set, delete', server.sql(`SELECT count(*) FROM (${row('d')}) t`), '0')
    // A call on keys of several lanes (a fence on each), then a set of one of its keys.
    check(
      'setMany, set',
      await inFlightWhenDropped(
        row('f0'),
        () => kv.setMany('default', Object.fromEntries(keys.map((key) => [key, 1]))),
        () => [kv.set('default', 'f0', 2)],
        counted,
      ),
      [true, true],
    )
    check('f0, f9 after setMany, set', await kv.getMany('default', ['f0', 'f9']), { f0: 2, f9: 1 })
    await kv.close()
    // A WorkerStore: a step's result committed, then the execution disposed: nothing is left.
    const store = createPostgresStore(`${server.url}?application_name=${name}`, { prefix, commandTimeout: 8_000 })
    await store.beginExecution('e')
    await store.beginExecutionTask('e', 't')
    check(
      'commit, dispose',
      await inFlightWhenDropped(
        `SELECT 1 FROM durastate.steps WHERE exec = '${prefix}e' AND task = 't'`,
        () => store.commitExecutionTaskResult('e', 't', { done: 1 }),
        () => [store.disposeExecution('e')],
      ),
      [undefined, undefined],
    )
    check('results after commit, dispose', await store.getExecutionTaskResults('e'), {})
    check('in progress after commit, dispose', await store.isExecutionInProgress('e'), false)
    await store.close()
    assert.deepEqual(wrong, {})
  })

  it('close() resolves only once a call that timed out on a lock has ended on the server: its write never lands after', async () => {
    const schema = `ds_closeland_${randomUUID().slice(0, 8)}`
    const store = createPostgresStore(server.url, { schema, commandTimeout: 500, poolSize: 2, retry: { attempts: 0 } })
    await store.beginExecution('warm')
    const { default: pg } = await import('pg')
    const locker = new pg.Client({ connectionString: server.url })
    await locker.connect()
    try {
      for (let round = 0; round < 4; round++) {
        const one = round === 0 ? store : createPostgresStore(server.url, { schema, commandTimeout: 500, poolSize: 2, retry: { attempts: 0 } })
        if (round > 0) await one.beginExecution('warm')
        await locker.query(`BEGIN; LOCK TABLE "${schema}".steps IN ACCESS EXCLUSIVE MODE`)
        const answer = one.commitExecutionTaskResult(`late${round}`, 't', 'landed').then(
          () => 'ok',
          (err) => err.code,
        )
        await sleep(10)
        const started = Date.now()
        await one.close()
        // released the moment close() resolved: nothing of the call may be left to take the lock
        await locker.query('COMMIT')
        assert.equal(await answer, 'TIMEOUT')
        assert.ok(Date.now() - started < 7_000, `close() took ${Date.now() - started} ms`)
        await sleep(300)
        assert.equal(server.sql(`SELECT count(*) FROM "${schema}".steps WHERE exec LIKE '%late${round}%'`), '0', `round ${round}`)
      }
    } finally {
      await locker.end()
    }
  })

  it('a host list mixing a unix socket and TCP: no TLS on the socket whatever sslmode says, each host on its own (as libpq)', async () => {
    const sockets = join(server.dir, 'sockets')
    for (const target of [
      `host=${sockets},127.0.0.1 port=${server.port},1 user=postgres password=${POSTGRES_PASSWORD} dbname=postgres sslmode=require`,
      `host=127.0.0.1,${sockets} port=1,${server.port} user=postgres password=${POSTGRES_PASSWORD} dbname=postgres sslmode=require`,
      `postgresql:///postgres?host=${encodeURIComponent(sockets)},127.0.0.1&port=${server.port},1&user=postgres&password=${POSTGRES_PASSWORD}&sslmode=require`,
    ]) {
      const store = createPostgresStore(target, { prefix: fresh(), connectTimeout: 2_000 })
      await store.beginExecution('m')
      assert.equal(await store.isExecutionInProgress('m'), true, target)
      await store.close()
    }
  })

  it('names an unknown or unsupported URL parameter (never its value): INVALID_INPUT at creation', () => {
    for (const [target, named] of [
      [`${server.url}?bogus=1`, /unknown parameter `bogus`/],
      [`${server.url}?passfile=/home/app/.pgpass`, /`passfile` is not supported/],
      [`${server.url}?service=foo`, /`service` is not supported/],
      [`${server.url}?ssl=1`, /`ssl`.*sslmode/],
      ['host=db service=foo', /`service` is not supported/],
      ['host=db passwd=S3cretPw', /unknown parameter `passwd`/],
      [`${server.url}?keepalives=often`, /invalid value for option `keepalives`/],
    ]) {
      assert.throws(
        () => createPostgresStore(target),
        (err) => err.code === 'INVALID_INPUT' && named.test(err.message) && !err.message.includes('S3cretPw'),
        target,
      )
    }
  })

  it('poolSize 1: a call waits for the connection the sweep holds (bounded by commandTimeout), never UNAVAILABLE while the server is healthy', async () => {
    // over the unix socket (trust): a connection is made well within connectTimeout
    const socket = `postgresql:///postgres?host=${encodeURIComponent(join(server.dir, 'sockets'))}&port=${server.port}&user=postgres`
    const kv = createKvStore(socket, {
      prefix: fresh(),
      poolSize: 1,
      connectTimeout: 100,
      commandTimeout: 5_000,
      mounts: { m: { prefix: 'm:' } },
    })
    // many rows to expire: the sweep that the next write starts runs rounds (up to 500 ms) on the only connection
    for (let b = 0; b < 10; b++) {
      await kv.setMany('m', Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`k${b}_${i}`, 'x'.repeat(100)])), { ttl: 1 })
    }
    await sleep(1_100)
    const failures = []
    for (let round = 0; round < 3; round++) {
      await kv.set('m', `trigger${round}`, 1)
      const until = Date.now() + 600
      while (Date.now() < until) {
        await kv.get('m', `trigger${round}`).catch((err) => failures.push(`${err.code} ${err.message}`))
      }
      await sleep(1_000)
    }
    assert.deepEqual(failures, [])
    await kv.close()
  })

  it('refuses a database whose encoding is not UTF8 (INVALID_INPUT naming the encoding and what to do)', async () => {
    server.sql("CREATE DATABASE ds_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    const url = server.url.replace(/\/postgres$/, '/ds_latin1')
    assert.notEqual(url, server.url)
    const store = createPostgresStore(url)
    await assert.rejects(store.beginExecution('x'), (err) => err.code === 'INVALID_INPUT' && /LATIN1/.test(err.message) && /UTF8/.test(err.message))
    await store.close()
    const kv = createKvStore(url, { mounts: { m: {} } })
    await assert.rejects(kv.set('m', 'ключ', 1), (err) => err.code === 'INVALID_INPUT' && /LATIN1/.test(err.message))
    await kv.close()
    // SQL_ASCII keeps the bytes it is given: the UTF-8 text comes back whole, as before
    server.sql("CREATE DATABASE ds_sql_ascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    const ascii = server.url.replace(/\/postgres$/, '/ds_sql_ascii')
    const kept = createKvStore(ascii, { mounts: { m: {} } })
    assert.equal(await kept.set('m', 'ключ 🎉', { v: 'héllo 日本' }), true)
    assert.deepEqual(await kept.get('m', 'ключ 🎉'), { v: 'héllo 日本' })
    await kept.close()
  })
})

describe('Postgres over TLS', { timeout: 120_000 }, () => {
  let certs
  let server
  before(async () => {
    certs = makeCertificates()
    server = await startPostgresServer({ certs })
  })
  after(async () => {
    await server?.stop()
    certs?.remove()
  })

  /** A lifecycle on `url` with `options`: the claim, a commit, the results. */
  const lifecycle = async (url, options) => {
    const store = createPostgresStore(url, { prefix: fresh(), connectTimeout: 5_000, ...options })
    try {
      await store.beginExecution('e')
      assert.equal(await store.tryBeginExecutionTask('e', 's'), true)
      await store.commitExecutionTaskResult('e', 's', { over: 'tls' })
      assert.deepEqual(await store.getExecutionTaskResults('e'), { s: { over: 'tls' } })
    } finally {
      await store.close()
    }
  }

  it('sslmode=verify-full with the server CA as tls.ca: verified, works', async () => {
    await lifecycle(`${server.url}?sslmode=verify-full`, { tls: { ca: certs.file('ca.crt') } })
  })

  it('a tls option alone means verify-full; sslmode=require encrypts without verifying', async () => {
    await lifecycle(server.url, { tls: { ca: certs.file('ca.crt') } })
    await lifecycle(`${server.url}?sslmode=require`)
  })

  it('a server certificate from another CA rejects with TLS, naming the reason, within connectTimeout', async () => {
    const store = createPostgresStore(`${server.url}?sslmode=verify-full`, { tls: { ca: certs.file('other-ca.crt') }, connectTimeout: 3_000 })
    const started = Date.now()
    await assert.rejects(store.beginExecution('x'), (err) => {
      assert.equal(err.code, 'TLS', err.message)
      assert.match(err.message, /issuer|trust|certificate/i)
      return true
    })
    assert.ok(Date.now() - started < 6_000)
    await store.close()
  })

  it("libpq's TLS files in the URL: sslrootcert (and sslcert/sslkey) fill the tls option", async () => {
    await lifecycle(`${server.url}?sslmode=verify-full&sslrootcert=${encodeURIComponent(certs.file('ca.crt'))}`)
    const store = createPostgresStore(`${server.url}?sslmode=verify-full&sslrootcert=${encodeURIComponent(certs.file('other-ca.crt'))}`, {
      connectTimeout: 3_000,
    })
    await assert.rejects(store.beginExecution('x'), (err) => err.code === 'TLS' && /issuer/i.test(err.message))
    await store.close()
  })

  it('a unix socket has no TLS, whatever sslmode says (as libpq)', async () => {
    const socket = `postgresql:///postgres?host=${encodeURIComponent(join(server.dir, 'sockets'))}&port=${server.port}&user=postgres`
    await lifecycle(`${socket}&sslmode=require`)
    await lifecycle(`${socket}&sslmode=verify-full`, { tls: { ca: certs.file('ca.crt') } })
  })

  it('the CLI takes --tls-ca (and --tls-cert, --tls-key, --insecure) on a Postgres URL; --tls-servername is refused there', async () => {
    const prefix = fresh()
    const store = createPostgresStore(server.url, { prefix })
    await store.beginExecution('cli-tls')
    await store.close()
    const cli = (...args) => spawnSync(process.execPath, [join(packageRoot, 'bin', 'durastate.mjs'), ...args], { encoding: 'utf8', timeout: 20_000 })
    const url = `${server.url}?sslmode=verify-full`
    const ok = cli('inspect', url, '--prefix', prefix, '--json', '--tls-ca', certs.file('ca.crt'))
    assert.equal(ok.status, 0, ok.stderr)
    assert.deepEqual(
      JSON.parse(ok.stdout).executions.map((e) => e.id),
      ['cli-tls'],
    )
    const untrusted = cli('inspect', url, '--prefix', prefix, '--tls-ca', certs.file('other-ca.crt'))
    assert.notEqual(untrusted.status, 0)
    assert.match(untrusted.stderr, /\(TLS\)/)
    const named = cli('inspect', url, '--prefix', prefix, '--tls-servername', 'x')
    assert.equal(named.status, 2)
    assert.match(named.stderr, /--tls-servername applies to Redis URLs only/)
  })

  it('explains TLS failures as Redis does (code TLS): an untrusted issuer, a wrong name, an expired certificate', async () => {
    const fails = async (target, options, reason) => {
      const store = createPostgresStore(target, { connectTimeout: 3_000, ...options })
      await assert.rejects(store.beginExecution('x'), (err) => {
        assert.equal(err.code, 'TLS', err.message)
        assert.match(err.message, reason)
        assert.ok(!err.message.includes(POSTGRES_PASSWORD), err.message)
        return true
      })
      await store.close()
    }
    await fails(
      `${server.url}?sslmode=verify-full`,
      { tls: { ca: certs.file('other-ca.crt') } },
      /untrusted issuer: the server's certificate does not chain to `tls.ca` or sslrootcert/,
    )
    // The certificate names 127.0.0.1 and localhost; connected to as wrong.test (at 127.0.0.1).
    await fails(
      `host=wrong.test hostaddr=127.0.0.1 port=${server.port} user=postgres password=${POSTGRES_PASSWORD} sslmode=verify-full`,
      { tls: { ca: certs.file('ca.crt') } },
      /wrong name: the server's certificate is not valid for the host connected to/,
    )
    const expired = await startPostgresServer({ certs: { file: (name) => certs.file(name.replace(/^server\./, 'expired.')) } })
    try {
      await fails(`${expired.url}?sslmode=verify-full`, { tls: { ca: certs.file('ca.crt') } }, /the server's certificate has expired/)
    } finally {
      await expired.stop()
    }
  })

  it('a server that requires a client certificate: without one, TLS saying so; with one, it works', async () => {
    const mutual = await startPostgresServer({ certs })
    try {
      // The client CA and a pg_hba.conf that takes TLS connections with a client
      // certificate only (the socket stays open for the helper's psql).
      const data = join(mutual.dir, 'data')
      const { uid, gid } = statSync(join(data, 'pg_hba.conf'))
      copyFileSync(certs.file('ca.crt'), join(data, 'client-ca.crt'))
      chownSync(join(data, 'client-ca.crt'), uid, gid)
      writeFileSync(join(data, 'pg_hba.conf'), 'local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n')
      mutual.sql("ALTER SYSTEM SET ssl_ca_file = 'client-ca.crt'")
      mutual.sql('SELECT pg_reload_conf()')
      const url = `${mutual.url}?sslmode=verify-full`
      let error
      for (let tries = 0; tries < 50; tries++) {
        const store = createPostgresStore(url, { tls: { ca: certs.file('ca.crt') }, connectTimeout: 3_000, retry: { attempts: 0 } })
        error = await store.beginExecution('x').then(
          () => null,
          (err) => err,
        )
        await store.close()
        if (error) break
        await sleep(100) // the reload is not there yet
      }
      assert.equal(error?.code, 'TLS', String(error))
      assert.match(error.message, /client certificate/)
      await lifecycle(url, { tls: certs.mutual() })
    } finally {
      await mutual.stop()
    }
  })

  it('a hostaddr without a host connects over TLS (the address is its name, as in libpq) under the default, prefer, require and verify-ca; verify-full without a host name is INVALID_INPUT at creation', async () => {
    const keyValue = (more) => `hostaddr=127.0.0.1 port=${server.port} user=postgres password=${POSTGRES_PASSWORD} dbname=postgres ${more}`
    const ca = encodeURIComponent(certs.file('ca.crt'))
    for (const target of [
      keyValue(''),
      keyValue('sslmode=prefer'),
      keyValue('sslmode=require'),
      keyValue(`sslmode=verify-ca sslrootcert=${certs.file('ca.crt')}`),
      // An empty host in a URL is no name either.
      `postgres://postgres:${POSTGRES_PASSWORD}@:${server.port}/postgres?hostaddr=127.0.0.1&sslmode=require`,
      `postgres://postgres:${POSTGRES_PASSWORD}@/postgres?hostaddr=127.0.0.1&port=${server.port}&sslmode=verify-ca&sslrootcert=${ca}`,
    ]) {
      const name = `hostaddr${randomBytes(6).toString('hex')}`
      const named = target.startsWith('postgres://') ? `${target}&application_name=${name}` : `${target} application_name=${name}`
      const store = createPostgresStore(named, { prefix: fresh(), connectTimeout: 5_000, retry: { attempts: 0 } })
      try {
        await store.beginExecution('e')
        assert.equal(await store.tryBeginExecutionTask('e', 's'), true)
        await store.commitExecutionTaskResult('e', 's', { over: 'tls' })
        assert.deepEqual(await store.getExecutionTaskResults('e'), { s: { over: 'tls' } })
        // Encrypted: the server sees the store's connections over TLS.
        const ssl = server.sql(`SELECT string_agg(ssl::text, ',') FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE application_name = '${name}'`)
        assert.match(ssl, /^true(,true)*$/, target)
      } finally {
        await store.close()
      }
    }
    // verify-ca still checks the chain.
    const other = createPostgresStore(keyValue(`sslmode=verify-ca sslrootcert=${certs.file('other-ca.crt')}`), {
      connectTimeout: 3_000,
      retry: { attempts: 0 },
    })
    await assert.rejects(other.beginExecution('x'), (err) => err.code === 'TLS' && /issuer/.test(err.message))
    await other.close()
    // verify-full has no name to check the certificate against: refused (libpq: "host name
    // must be specified"), never checked against a name not given (`localhost`).
    for (const [target, options] of [
      [keyValue(`sslmode=verify-full sslrootcert=${certs.file('ca.crt')}`), {}],
      [`postgres://postgres:${POSTGRES_PASSWORD}@:${server.port}/postgres?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert=${ca}`, {}],
      [keyValue(''), { tls: { ca: certs.file('ca.crt') } }],
    ]) {
      assert.throws(
        () => createPostgresStore(target, options),
        (err) =>
          err.code === 'INVALID_INPUT' &&
          /hostaddr=127\.0\.0\.1 has no host name/.test(err.message) &&
          /host=db\.example hostaddr=127\.0\.0\.1/.test(err.message) &&
          !err.message.includes(POSTGRES_PASSWORD),
        target,
      )
    }
    // With the name the certificate carries, verify-full works.
    await lifecycle(`host=localhost ${keyValue(`sslmode=verify-full sslrootcert=${certs.file('ca.crt')}`)}`)
  })

  it('verify-ca checks the chain, not the name, and so does require with a CA; verify-full checks both (as libpq)', async () => {
    // A server whose certificate names only redis.test, reached at 127.0.0.1.
    const named = await startPostgresServer({
      certs: { file: (name) => certs.file(name.replace(/^server\./, 'named.')) },
    })
    try {
      const ca = { tls: { ca: certs.file('ca.crt') } }
      await lifecycle(`${named.url}?sslmode=verify-ca`, ca)
      await lifecycle(`${named.url}?sslmode=require`, ca)
      const full = createPostgresStore(`${named.url}?sslmode=verify-full`, { ...ca, connectTimeout: 3_000 })
      await assert.rejects(full.beginExecution('x'), (err) => err.code === 'TLS' && /not valid for name|wrong name/.test(err.message))
      await full.close()
      // The chain is still checked.
      const other = createPostgresStore(`${named.url}?sslmode=verify-ca`, { tls: { ca: certs.file('other-ca.crt') }, connectTimeout: 3_000 })
      await assert.rejects(other.beginExecution('x'), (err) => err.code === 'TLS')
      await other.close()
    } finally {
      await named.stop()
    }
  })
})

describe('Postgres faults', { timeout: 300_000 }, () => {
  it('keeps every acknowledged commit across a SIGKILL of the server mid-stream', async () => {
    const server = await startPostgresServer()
    try {
      const prefix = fresh()
      const store = createPostgresStore(server.url, { prefix, commandTimeout: 3_000, connectTimeout: 1_000 })
      await store.beginExecution('warm')
      const acked = []
      let stop = false
      const writer = async (w) => {
        for (let i = 0; !stop; i++) {
          const task = `w${w}-${i}`
          try {
            await store.commitExecutionTaskResult('stream', task, { w, i })
            acked.push(task)
          } catch {
            await sleep(20)
          }
        }
      }
      const writers = Array.from({ length: 8 }, (_, w) => writer(w))
      while (acked.length < 300) await sleep(5)
      await server.kill()
      const atKill = acked.length
      await sleep(300)
      await server.restart()
      const more = acked.length
      while (acked.length < more + 100) await sleep(5)
      stop = true
      await Promise.all(writers)
      const results = await store.getExecutionTaskResults('stream')
      const missing = acked.filter((task) => !(task in results))
      assert.deepEqual(missing, [], `${missing.length} of ${acked.length} acknowledged commits lost (${atKill} before the kill)`)
      await store.close()
    } finally {
      await server.stop()
    }
  })

  it('recovers from pg_terminate_backend during a workflow: safe calls are resent, the claim never blindly', async () => {
    const server = await startPostgresServer()
    try {
      const store = createPostgresStore(`${server.url}?application_name=ds-terminated`, { prefix: fresh(), ttl: 60_000 })
      const terminate = () => server.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'ds-terminated'")
      let claimsRejected = 0
      for (let run = 0; run < 15; run++) {
        const id = `wf${run}`
        await store.beginExecution(id)
        terminate()
        assert.deepEqual(await store.getExecutionTaskResults(id), {})
        for (let s = 0; s < 3; s++) {
          await store.beginExecutionTask(id, `s${s}`)
          if (s === run % 3) terminate()
          await store.commitExecutionTaskResult(id, `s${s}`, s)
        }
        try {
          assert.equal(await store.tryBeginExecutionTask(id, 'final'), true)
        } catch (err) {
          assert.equal(err.code, 'UNAVAILABLE')
          claimsRejected++
        }
        assert.deepEqual(await store.getExecutionTaskResults(id), { s0: 0, s1: 1, s2: 2 })
        await store.disposeExecution(id)
      }
      assert.ok(claimsRejected < 15)
      await store.close()
    } finally {
      await server.stop()
    }
  })

  it('rejects UNAVAILABLE within connectTimeout when the server is down, and recovers when it is back', async () => {
    const server = await startPostgresServer()
    try {
      const store = createPostgresStore(server.url, { prefix: fresh(), connectTimeout: 1_000, commandTimeout: 4_000 })
      await store.beginExecution('up')
      await server.kill()
      await sleep(200)
      for (let i = 0; i < 3; i++) {
        const t0 = Date.now()
        await assert.rejects(store.isExecutionInProgress('up'), (err) => err.code === 'UNAVAILABLE' || err.code === 'TIMEOUT')
        assert.ok(Date.now() - t0 < 4_500, `rejected after ${Date.now() - t0} ms`)
      }
      await server.restart()
      assert.equal(await store.isExecutionInProgress('up'), true)
      await store.close()
      const never = createPostgresStore(server.url.replace(`:${server.port}/`, ':1/'), { connectTimeout: 500 })
      const t0 = Date.now()
      await assert.rejects(never.beginExecution('x'), (err) => err.code === 'UNAVAILABLE')
      assert.ok(Date.now() - t0 < 1_500)
      await never.close()
    } finally {
      await server.stop()
    }
  })

  it('bounds every call by commandTimeout when the server stops answering', async () => {
    const server = await startPostgresServer()
    try {
      const store = createPostgresStore(server.url, { prefix: fresh(), commandTimeout: 1_500 })
      const warm = createPostgresStore(server.url, { prefix: fresh() })
      await warm.beginExecution('tables made') // the tables exist before the timed store's first call
      await warm.close()
      await store.beginExecution('x')
      // a lock the store's statement waits for: the server holds the call
      const lock = startChild(
        `const { spawnSync } = require('node:child_process');
         spawnSync(${JSON.stringify(`${server.bin}/psql`)}, ['-h', '127.0.0.1', '-p', '${server.port}', '-U', 'postgres', '-d', 'postgres', '-c',
           "BEGIN; LOCK TABLE durastate.entries IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(5); COMMIT;"],
           { env: { ...process.env, PGPASSWORD: ${JSON.stringify(POSTGRES_PASSWORD)}, PGAPPNAME: 'locker' } })`,
        { timeoutMs: 20_000 },
      )
      await untilSleeping(server, 'locker')
      const t0 = Date.now()
      await assert.rejects(store.isExecutionInProgress('x'), (err) => err.code === 'TIMEOUT')
      assert.ok(Date.now() - t0 < 2_500, `rejected after ${Date.now() - t0} ms`)
      await lock.done
      assert.equal(await store.isExecutionInProgress('x'), true)
      await store.close()
    } finally {
      await server.stop()
    }
  })
})

describe('Postgres shared server', () => {
  it('runs against DURASTATE_TEST_POSTGRES_URL or a server of its own', async () => {
    const pg = await testPostgres()
    try {
      const store = createPostgresStore(pg.url, { prefix: fresh() })
      await store.beginExecution('s')
      assert.equal(await store.isExecutionInProgress('s'), true)
      await store.close()
    } finally {
      await pg.release()
    }
  })
})
