// The SQLite file format: files written by 0.1.0 (a Redis-like keyspace in two tables)
// are migrated in place on first open, in one transaction, and keep working; a file
// that cannot be migrated is left as it was. Calls made together share one transaction.
import assert from 'node:assert/strict'
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { createKvStore, createMemoryStore, createSqliteStore } from '../index.js'
import { rejectsWith } from './helpers/assert.mjs'
import { fileFormat } from './helpers/sqlite-file.mjs'

const require = createRequire(import.meta.url)
const Database = require('better-sqlite3')
const binding = require('../binding.js')
const FIXTURES = { 1: new URL('./fixtures/v0.1.0.db', import.meta.url), 2: new URL('./fixtures/v2.db', import.meta.url) }
const VERSION = 3
const YEAR = 365 * 24 * 3600 * 1000

describe('SQLite file format', () => {
  let dir
  const closers = []
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'durastate-format-spec-'))
  })
  after(async () => {
    await Promise.all(closers.map((close) => close()))
    rmSync(dir, { recursive: true, force: true })
  })
  const fixtureCopy = (name, version = 1) => {
    const path = join(dir, name)
    copyFileSync(FIXTURES[version], path)
    return path
  }
  const indexes = (path) => {
    const db = new Database(path, { readonly: true })
    try {
      return db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .all()
        .map((r) => r.name)
    } finally {
      db.close()
    }
  }

  for (const [from, label] of [
    [1, 'a 0.1.0 file (the Redis-like keyspace)'],
    [2, 'a version 2 file (two expiry indexes)'],
  ])
    it(`migrates ${label} in place: results, steps in progress, markers, TTLs and KV entries survive`, async () => {
      const path = fixtureCopy(`migrate-${from}.db`, from)
      assert.equal(fileFormat(path).version, from)
      const store = createSqliteStore(path)
      closers.push(() => store.close())
      assert.deepEqual(await store.getExecutionTaskResults('order-1'), {
        charge: { amount: 42, currency: 'EUR' },
        notify: '<empty_execution_result>',
        ship: 'parcel-7',
      })
      assert.equal(await store.isExecutionInProgress('order-1'), true)
      // Stored JSON keeps its bytes: key order as written.
      assert.deepEqual(Object.keys(await store.getExecutionTaskResult('order-2', 'charge')), ['amount', 'z-key', 'a-key'])
      assert.equal(await store.isExecutionTaskInProgress('order-2', 'ship:label'), true)
      assert.equal(await store.isExecutionTaskInProgress('order-2', 'charge'), false)
      // The crashed step resumes: commit it, and the marker goes.
      await store.commitExecutionTaskResult('order-2', 'ship:label', 'label-1')
      assert.equal(await store.isExecutionTaskInProgress('order-2', 'ship:label'), false)
      assert.equal(await store.getExecutionTaskResult('order-2', 'ship:label'), 'label-1')

      const inspector = binding.createInspector(`sqlite:${path}`)
      try {
        const job = await inspector.execution('ttl:job-1')
        for (const ttl of [job.markerTtl, job.claimsTtl, job.resultsTtl]) assert.ok(ttl > 90 * YEAR, `TTL kept (${ttl})`)
        const order = await inspector.execution('order-1')
        assert.equal(order.markerTtl, -1)
        assert.equal(order.resultsTtl, -1)
        assert.equal(order.claimsTtl, -2)
      } finally {
        inspector.close()
      }

      const withTtl = createSqliteStore(path, { prefix: 'ttl:', ttl: YEAR })
      closers.push(() => withTtl.close())
      assert.deepEqual(await withTtl.getExecutionTaskResults('job-1'), { a: [1, 2, 3] })
      assert.equal(await withTtl.isExecutionTaskInProgress('job-1', 'b'), true)
      assert.equal(await withTtl.tryBeginExecutionTask('job-1', 'c'), false, 'the claim made before the migration still holds')
      // A claim that lost writes nothing: the marks keep the TTL they had.
      let marks = binding.createInspector(`sqlite:${path}`)
      assert.ok((await marks.execution('ttl:job-1')).claimsTtl > 90 * YEAR, 'a losing claim left the TTL alone')
      marks.close()
      // As PEXPIRE: a claim with a TTL that won sets the expiry of all the execution's marks.
      assert.equal(await withTtl.tryBeginExecutionTask('job-1', 'd'), true)
      marks = binding.createInspector(`sqlite:${path}`)
      const { claimsTtl } = await marks.execution('ttl:job-1')
      marks.close()
      assert.ok(claimsTtl > YEAR - 60_000 && claimsTtl <= YEAR, `claims TTL reset to a year (${claimsTtl})`)
      assert.equal(await withTtl.isExecutionInProgress('gone:job-2'), false)

      const kv = createKvStore(`sqlite:${path}`, { mounts: { config: { prefix: 'cfg:' }, cache: { prefix: 'cache:' }, tmp: { prefix: 'tmp:' } } })
      closers.push(() => kv.close())
      assert.deepEqual(await kv.get('config', 'theme'), { dark: true, sizes: [1, 2] })
      assert.equal(await kv.get('cache', 'user:1'), 'Ada')
      assert.deepEqual(await kv.keys('tmp'), [], 'an entry expired before the migration is not brought back')

      const after = fileFormat(path)
      assert.equal(after.version, VERSION)
      assert.deepEqual(after.tables, ['ds_entries', 'ds_step_expiry', 'ds_steps'])
      assert.deepEqual(indexes(path), ['ds_entries_expiry', 'ds_step_expiry_due'])
      const check = new Database(path, { readonly: true })
      const expiry = check.prepare("SELECT claims_at, results_at, due FROM ds_step_expiry WHERE exec = 'ttl:job-1'").get()
      check.close()
      assert.ok(expiry.due <= Math.min(expiry.claims_at, expiry.results_at), 'due is at or before both expiries')
    })

  it('opens a migrated file again without migrating twice, from two stores at once', async () => {
    const path = fixtureCopy('twice.db')
    const [a, b] = [createSqliteStore(path), createSqliteStore(path)]
    closers.push(
      () => a.close(),
      () => b.close(),
    )
    const [ra, rb] = await Promise.all([a.getExecutionTaskResults('order-1'), b.getExecutionTaskResults('order-1')])
    assert.deepEqual(ra, rb)
    assert.equal(Object.keys(ra).length, 3)
    await a.close()
    const again = createSqliteStore(path)
    closers.push(() => again.close())
    assert.equal(Object.keys(await again.getExecutionTaskResults('order-1')).length, 3)
    assert.equal(fileFormat(path).version, VERSION)
  })

  it('migrates a 0.1.0 file whose execution ids, task ids and keys hold a NUL byte, keeping them whole', async () => {
    const path = join(dir, 'nul.db')
    const db = new Database(path)
    db.exec(`CREATE TABLE durastate_keys (key TEXT PRIMARY KEY NOT NULL, kind INTEGER NOT NULL, value TEXT, expires_at INTEGER) WITHOUT ROWID;
      CREATE TABLE durastate_fields (key TEXT NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (key, field)) WITHOUT ROWID;
      PRAGMA user_version = 1;`)
    const key = db.prepare('INSERT INTO durastate_keys VALUES (?, ?, ?, ?)')
    const field = db.prepare('INSERT INTO durastate_fields VALUES (?, ?, ?)')
    key.run('a\0b', 0, 'true', null)
    key.run('a\0b-results', 1, null, null)
    key.run('a\0b-transactions', 1, null, Date.now() + YEAR)
    key.run('a', 0, 'true', null)
    key.run('a-results', 1, null, null)
    key.run('kv:k\0ey', 0, '{"v":1}', null)
    field.run('a\0b-results', 't\0u', '{"done":1}')
    field.run('a\0b-transactions', 'v', 'true')
    field.run('a-results', 't', '"plain"')
    db.close()
    const store = createSqliteStore(path)
    const kv = createKvStore(`sqlite:${path}`)
    closers.push(
      () => store.close(),
      () => kv.close(),
    )
    assert.equal(await store.isExecutionInProgress('a\0b'), true)
    assert.deepEqual(await store.getExecutionTaskResults('a\0b'), { 't\0u': { done: 1 } })
    assert.equal(await store.isExecutionTaskInProgress('a\0b', 'v'), true)
    // The id cut at its NUL ('a') is another execution, which keeps only its own step.
    assert.deepEqual(await store.getExecutionTaskResults('a'), { t: 'plain' })
    assert.deepEqual(await kv.get('default', 'k\0ey'), { v: 1 })
    assert.equal(fileFormat(path).version, VERSION)
  })

  it('leaves a file it cannot migrate as it was, with CORRUPT_DATA naming the key', async () => {
    const path = join(dir, 'stray.db')
    const db = new Database(path)
    db.exec(`CREATE TABLE durastate_keys (key TEXT PRIMARY KEY NOT NULL, kind INTEGER NOT NULL, value TEXT, expires_at INTEGER) WITHOUT ROWID;
      CREATE TABLE durastate_fields (key TEXT NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (key, field)) WITHOUT ROWID;
      INSERT INTO durastate_keys VALUES ('some-hash', 1, NULL, NULL), ('e', 0, 'true', NULL);
      INSERT INTO durastate_fields VALUES ('some-hash', 'f', 'v');
      PRAGMA user_version = 1;`)
    db.close()
    const store = createSqliteStore(path)
    closers.push(() => store.close())
    await rejectsWith(store.isExecutionInProgress('e'), 'CORRUPT_DATA', /some-hash/)
    assert.deepEqual(fileFormat(path), { version: 1, tables: ['durastate_fields', 'durastate_keys'] })
    const check = new Database(path, { readonly: true })
    assert.equal(check.prepare('SELECT count(*) AS n FROM durastate_keys').get().n, 2)
    check.close()
  })

  // Byte for byte as it was: no WAL switch (no -wal file), no table of ours, same user_version.
  const assertUntouched = (path, before, version) => {
    assert.ok(readFileSync(path).equals(before), `${path} was changed`)
    assert.equal(existsSync(`${path}-wal`), false, 'the file was switched to WAL')
    const check = new Database(path, { readonly: true })
    try {
      assert.equal(check.pragma('journal_mode', { simple: true }), 'delete')
      assert.equal(check.pragma('user_version', { simple: true }), version)
    } finally {
      check.close()
    }
  }

  it('refuses a file from a newer durastate with CORRUPT_DATA naming its version, and leaves it untouched', async () => {
    const path = join(dir, 'newer.db')
    const db = new Database(path)
    db.exec('CREATE TABLE ds_entries (key TEXT PRIMARY KEY, value TEXT, expires_at INTEGER); CREATE TABLE future (x);')
    db.exec('PRAGMA user_version = 9;')
    db.close()
    const before = readFileSync(path)
    const store = createSqliteStore(path)
    closers.push(() => store.close())
    await rejectsWith(store.beginExecution('e'), 'CORRUPT_DATA', /version 9 is newer.*\(3\)/)
    await store.close()
    assertUntouched(path, before, 9)
  })

  for (const [name, version] of [
    ['no user_version', 0],
    ['a user_version we do not know', 7],
    ['the user_version of our format', VERSION],
  ]) {
    it(`refuses another application's SQLite database (${name}) with CORRUPT_DATA, and leaves it untouched`, async () => {
      const path = join(dir, `foreign-${version}.db`)
      const db = new Database(path)
      db.exec('CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL); INSERT INTO invoices VALUES (1, 9.5);')
      db.exec(`PRAGMA user_version = ${version};`)
      db.close()
      const before = readFileSync(path)
      const store = createSqliteStore(path)
      closers.push(() => store.close())
      await rejectsWith(store.beginExecution('e'), 'CORRUPT_DATA', /foreign-\d\.db.*not a durastate database.*invoices/)
      const kv = createKvStore(`sqlite:${path}`)
      await rejectsWith(kv.set('default', 'k', 1), 'CORRUPT_DATA', /invoices/)
      await Promise.all([store.close(), kv.close()])
      assertUntouched(path, before, version)
    })
  }

  for (const [name, open] of [
    ['SQLite', () => createSqliteStore(join(dir, 'group.db'))],
    ['memory', () => createMemoryStore()],
  ]) {
    it(`${name}: calls made together share one transaction, each keeping its own answer and order`, async () => {
      const store = open()
      closers.push(() => store.close())
      await store.beginExecution('warm-up') // opens the database
      const [groups0, calls0] = binding.debugEmbeddedGroups()
      const claims = await Promise.all(Array.from({ length: 64 }, (_, i) => store.tryBeginExecutionTask('g', `t${i % 32}`)))
      const [groups1, calls1] = binding.debugEmbeddedGroups()
      assert.equal(calls1 - calls0, 64)
      assert.ok(groups1 - groups0 <= 2, `64 calls in one tick ran in ${groups1 - groups0} transactions`)
      // Order within the group holds: the first claim of each task wins, the second loses.
      assert.deepEqual(claims, [...Array(32).fill(true), ...Array(32).fill(false)])
      // A failing call does not undo the others of its group.
      const results = await Promise.allSettled([
        store.commitExecutionTaskResult('g', 't0', { ok: 1 }),
        store.commitExecutionTaskResult('g', 't1', 10n),
        store.commitExecutionTaskResult('g', 't2', { ok: 2 }),
      ])
      assert.deepEqual(
        results.map((r) => r.status),
        ['fulfilled', 'rejected', 'fulfilled'],
      )
      const all = await store.getExecutionTaskResults('g')
      assert.deepEqual(all, { t0: { ok: 1 }, t2: { ok: 2 } })
    })

    it(`${name}: a read sees every call made before it, and concurrent reads share a transaction`, async () => {
      const store = open()
      closers.push(() => store.close())
      await store.beginExecution('warm-up')
      // Made in one go, not awaited in between: the reads must see the writes before them.
      const commit = store.commitExecutionTaskResult('seen', 't', { v: 1 })
      const [result, inProgress, all] = await Promise.all([
        store.getExecutionTaskResult('seen', 't'),
        store.isExecutionTaskInProgress('seen', 't'),
        store.getExecutionTaskResults('seen'),
      ])
      await commit
      assert.deepEqual(result, { v: 1 })
      assert.equal(inProgress, false)
      assert.deepEqual(all, { t: { v: 1 } })
      const claim = store.beginExecutionTask('seen', 'u')
      assert.equal(await store.isExecutionTaskInProgress('seen', 'u'), true)
      await claim
      // One at a time (awaited): each sees what the last call left.
      for (let i = 0; i < 20; i++) {
        await store.commitExecutionTaskResult('seq', `t${i}`, i)
        assert.equal(await store.getExecutionTaskResult('seq', `t${i}`), i)
        assert.equal(await store.isExecutionTaskInProgress('seq', `t${i}`), false)
      }
      const [groups0, calls0] = binding.debugEmbeddedGroups()
      const reads = await Promise.all(Array.from({ length: 64 }, (_, i) => store.getExecutionTaskResult('seq', `t${i % 20}`)))
      const [groups1, calls1] = binding.debugEmbeddedGroups()
      assert.deepEqual(
        reads,
        Array.from({ length: 64 }, (_, i) => i % 20),
      )
      assert.equal(calls1 - calls0, 64)
      assert.ok(groups1 - groups0 <= 2, `64 reads in one tick ran in ${groups1 - groups0} transactions`)
      const kv = createKvStore(name === 'SQLite' ? `sqlite:${join(dir, 'group-kv.db')}` : 'memory:', { mounts: { m: { prefix: 'm:' } } })
      closers.push(() => kv.close())
      // (A set that must count the mount's entries first takes more than one step, and a
      // get made meanwhile can run between them: the warm-up counts them.)
      await kv.set('m', 'warm-up', 0)
      const set = kv.set('m', 'k', { n: 1 })
      assert.deepEqual(await kv.get('m', 'k'), { n: 1 }, 'get sees the set made before it')
      await set
      assert.equal(await kv.getOr('m', 'missing', 'fallback'), 'fallback')
      await store.close()
      await rejectsWith(store.isExecutionTaskInProgress('seen', 'u'), 'DISPOSED')
    })
  }

  it('close() right after calls that were not awaited: those calls still complete and are stored', async () => {
    const path = join(dir, 'close.db')
    const store = createSqliteStore(path)
    await store.beginExecution('warm-up')
    const calls = [store.beginExecution('e'), store.commitExecutionTaskResult('e', 't', { v: 1 })]
    const closing = store.close()
    await Promise.all(calls)
    await closing
    await rejectsWith(store.beginExecution('late'), 'DISPOSED')
    const reopened = createSqliteStore(path)
    closers.push(() => reopened.close())
    assert.deepEqual(await reopened.getExecutionTaskResult('e', 't'), { v: 1 })
    const memory = createMemoryStore()
    await memory.beginExecution('warm-up')
    const pending = memory.commitExecutionTaskResult('e', 't', 1)
    await memory.close()
    await pending
  })
})
