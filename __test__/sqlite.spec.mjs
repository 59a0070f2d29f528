// SQLite-specific behaviour: crash safety under SIGKILL, two processes on one file,
// clear errors for a corrupt or unwritable file, the default location, URL routing.
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { after, before, describe, it } from 'node:test'
import { createKvStore, createSqliteStore, createStore } from '../index.js'
import { rejectsWith } from './helpers/assert.mjs'
import { packageRoot, runChild, startChild } from './helpers/child.mjs'
import { runtime } from './helpers/runtime.mjs'
import { testRedis } from './helpers/redis-server.mjs'

const binding = createRequire(import.meta.url)('../binding.js')

/**
 * Another process (Python's sqlite3) takes the write lock of the file at `path`
 * (`BEGIN IMMEDIATE`) and holds it for `ms`, then lets go. Resolves once the lock is held;
 * `released` settles when the holder has exited, `release()` ends it early.
 */
export async function holdWriteLock(path, ms) {
  const holder = spawn(
    'python3',
    [
      '-c',
      `import sqlite3, sys, time\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN IMMEDIATE')\nprint('locked', flush=True)\ntime.sleep(float(sys.argv[2]) / 1000)\nc.execute('ROLLBACK')`,
      path,
      String(ms),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  )
  const released = new Promise((resolve) => holder.once('exit', resolve))
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the lock holder did not take the lock in 10 s')), 10_000)
    holder.stdout.once('data', () => {
      clearTimeout(timer)
      resolve()
    })
    holder.once('error', reject)
  })
  return { released, release: () => holder.kill() }
}

describe('SQLite store', () => {
  let dir
  const stores = []
  const open = (path, options) => {
    const store = createSqliteStore(path, options)
    stores.push(store)
    return store
  }
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'durastate-sqlite-spec-'))
  })
  after(async () => {
    await Promise.all(stores.map((s) => s.close()))
    rmSync(dir, { recursive: true, force: true })
  })

  for (const synchronous of ['normal', 'full']) {
    it(`keeps every acknowledged commit when the process is SIGKILLed (synchronous ${synchronous})`, async () => {
      const path = join(dir, `crash-${synchronous}.db`)
      const writer = startChild(`
        const store = ds.createSqliteStore(${JSON.stringify(path)}, { synchronous: '${synchronous}' });
        (async () => {
          await store.beginExecution('order');
          for (let i = 0; ; i++) {
            await store.beginExecutionTask('order', 'step-' + i);
            await store.commitExecutionTaskResult('order', 'step-' + i, { i, pad: 'x'.repeat(i % 500) });
            process.stdout.write('acked ' + i + '\\n');
          }
        })();
      `)
      // Kill it at a moment it is busy writing: once a few hundred commits were acknowledged.
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('the writer acknowledged too few commits')), 10_000)
        writer.child.stdout.on('data', () => {
          if ((writer.output().match(/acked/g) ?? []).length >= 300) {
            clearTimeout(timer)
            resolve()
          }
        })
      })
      writer.child.kill('SIGKILL')
      const { signal, stdout } = await writer.done
      assert.equal(signal, 'SIGKILL')
      const acked = stdout
        .split('\n')
        .filter((l) => l.startsWith('acked '))
        .map((l) => Number(l.slice(6)))
      assert.ok(acked.length >= 300)

      const reader = open(path)
      assert.equal(await reader.isExecutionInProgress('order'), true)
      const results = await reader.getExecutionTaskResults('order')
      for (const i of acked) {
        assert.deepEqual(results[`step-${i}`], { i, pad: 'x'.repeat(i % 500) }, `commit ${i} was acknowledged and is lost`)
        assert.equal(await reader.isExecutionTaskInProgress('order', `step-${i}`), false)
      }
    })
  }

  it('lets two processes share one file: no SQLITE_BUSY, one winner per claim', async () => {
    const path = join(dir, 'shared.db')
    // Both processes claim the same 200 steps at once (a claim holds until the step is
    // committed, so nobody commits them here), and commit 200 steps of their own.
    const worker = (name) =>
      startChild(
        `
      const store = ds.createSqliteStore(${JSON.stringify(path)}, { busyTimeout: 10000 });
      (async () => {
        const won = [];
        await Promise.all(Array.from({ length: 200 }, async (_, i) => {
          const step = 'step-' + i;
          if (await store.tryBeginExecutionTask('job', step)) won.push(step);
          await store.commitExecutionTaskResult('own-${name}', step, { by: '${name}', i });
        }));
        await store.close();
        console.log(JSON.stringify(won));
      })().catch((err) => { console.error(err.code, err.message); process.exit(1) });
    `,
        { timeoutMs: 30_000 },
      )
    const [a, b] = await Promise.all([worker('a').done, worker('b').done])
    assert.equal(a.code, 0, a.stderr)
    assert.equal(b.code, 0, b.stderr)
    const won = [...JSON.parse(a.stdout), ...JSON.parse(b.stdout)]
    assert.equal(won.length, 200, 'every step claimed exactly once')
    assert.equal(new Set(won).size, 200)
    const store = open(path)
    for (const name of ['a', 'b']) {
      const results = await store.getExecutionTaskResults(`own-${name}`)
      assert.equal(Object.keys(results).length, 200)
      assert.deepEqual(results['step-7'], { by: name, i: 7 })
    }
  })

  it("keeps the WAL bounded: checkpoints run on the store's thread, and calls made meanwhile do not wait for them", async () => {
    const path = join(dir, 'wal.db')
    const store = open(path)
    const value = { pad: 'x'.repeat(4000) }
    await store.beginExecution('e')
    const [, , queuedBefore] = binding.debugEmbeddedGroups()
    for (let i = 0; i < 3000; i++) await store.commitExecutionTaskResult('e', `s${i % 500}`, value)
    // The checkpoints (several: 3,000 pages and more) run on a connection of the store's
    // thread, so no call found the database busy and had to queue behind one.
    const [, , queuedAfter] = binding.debugEmbeddedGroups()
    assert.equal(queuedAfter - queuedBefore, 0, 'calls queued to the store thread during checkpoints')
    // Give the store's thread a moment to finish a checkpoint that is under way.
    await store.isExecutionInProgress('e')
    await new Promise((r) => setTimeout(r, 100))
    const { statSync } = await import('node:fs')
    const wal = statSync(`${path}-wal`).size
    // 3,000 commits of 4 KB wrote 12+ MB of pages; without checkpoints the WAL holds all of it.
    assert.ok(wal < 8 * 1024 * 1024, `WAL is ${(wal / 1048576).toFixed(1)} MB`)
    assert.deepEqual(await store.getExecutionTaskResult('e', 's7'), value)
    await store.close()
  })

  it('keeps the WAL bounded under writes that never pause (a checkpoint that cannot catch up makes writers wait once past 16 MB)', async () => {
    const path = join(dir, 'wal-sustained.db')
    const store = open(path)
    const { closeSync, openSync, readSync, statSync } = await import('node:fs')
    const value = 'x'.repeat(1000)
    let largest = 0
    let last = 0
    let lastSalts = ''
    let restarts = 0
    // About 3 KB of WAL per commit of a new step: 90 MB without a bound. How far past 16 MB
    // it gets before writers wait depends on the disk (the checkpoint's fsync) and the
    // write rate; what must hold is that it starts over, again and again: emptied (a
    // TRUNCATE checkpoint), or written again from its start (the salts of its header
    // change at each start over; a checkpoint that keeps up leaves the file's size alone).
    const salts = () => {
      const fd = openSync(`${path}-wal`, 'r')
      try {
        const header = Buffer.alloc(32)
        return readSync(fd, header, 0, 32, 0) === 32 ? header.subarray(16, 24).toString('hex') : ''
      } finally {
        closeSync(fd)
      }
    }
    for (let i = 0; i < 30_000; i++) {
      await store.commitExecutionTaskResult(`e${i}`, 't', value)
      if (i % 250 === 0) {
        const size = statSync(`${path}-wal`).size
        const now = salts()
        if (size < last - 8 * 1024 * 1024 || (lastSalts && now && now !== lastSalts)) restarts++
        largest = Math.max(largest, size)
        last = size
        lastSalts = now
      }
    }
    assert.ok(restarts >= 2, `the WAL started over ${restarts} times (largest ${(largest / 1048576).toFixed(1)} MB)`)
    assert.ok(largest < 64 * 1024 * 1024, `the WAL reached ${(largest / 1048576).toFixed(1)} MB`)
    assert.equal(await store.getExecutionTaskResult('e29999', 't'), value)
    await store.close()
  })

  it("lists with keys() what was there when it was called, even when it waits on the store's thread: later deletes do not run ahead of it", async () => {
    const path = join(dir, 'scan-order.db')
    const mounts = { m: { prefix: 'm:', maxEntries: 100_000 } }
    const seed = createKvStore(`sqlite://${path}`, { mounts })
    const keys = Array.from({ length: 400 }, (_, i) => `x${i}`)
    await seed.mount('m').setMany(Object.fromEntries(keys.map((k) => [k, 1])))
    await seed.close()
    for (let trial = 0; trial < 60; trial++) {
      const store = createKvStore(`sqlite://${path}`, { mounts })
      const kv = store.mount('m')
      // The first call opens the file on the store's thread; the listing queues behind it.
      kv.delete('nothing')
      // Two microtask turns: the delete's group runs (and queues) before the listing is made.
      await Promise.resolve()
      await Promise.resolve()
      let listed = null
      const listing = kv.keys().then((found) => (listed = found))
      const deleted = []
      while (listed === null && deleted.length < keys.length) {
        await new Promise((resolve) => setImmediate(resolve))
        deleted.push(keys[deleted.length])
        kv.delete(deleted.at(-1))
      }
      await listing
      const seen = new Set(listed)
      assert.deepEqual(
        deleted.filter((key) => !seen.has(key)),
        [],
        `trial ${trial}: keys() missed keys deleted by calls made after it`,
      )
      await kv.setMany(Object.fromEntries(deleted.map((k) => [k, 1])))
      await store.close()
    }
  })

  it('answers a read made in the same tick as a write while another process holds the write lock (WAL readers take no lock)', async () => {
    const path = join(dir, 'busy-read.db')
    // A read that waited behind the write would wait for its busyTimeout (800 ms); one that
    // does not waits 0-6 ms (measured on a loaded 2-core machine). The bound, 500 ms, is
    // between the two.
    const store = open(path, { busyTimeout: 800 })
    await store.commitExecutionTaskResult('b', 't', 'stored')
    const holder = await holdWriteLock(path, 3000)
    try {
      const write = store.beginExecutionTask('a', 't').then(
        () => 'ok',
        (err) => err.code,
      )
      const started = performance.now()
      assert.equal(await store.getExecutionTaskResult('b', 't'), 'stored')
      const waited = performance.now() - started
      assert.ok(waited < 500, `the read waited ${waited.toFixed(0)} ms for the write lock`)
      // The write waits for the lock, which outlives busyTimeout.
      assert.equal(await write, 'TIMEOUT')
    } finally {
      holder.release()
    }
    await store.close()
  })

  it('never applies a call that rejected TIMEOUT while another process held the write lock (it does not run once the lock is free)', async () => {
    const path = join(dir, 'busy-abandoned.db')
    // The deadline (commandTimeout) comes before the busy timeout: the calls are still
    // queued, waiting for the lock, when they reject.
    const store = open(path, { commandTimeout: 500, busyTimeout: 5000 })
    await store.beginExecution('e')
    await store.commitExecutionTaskResult('e', 'done', 'before')
    const holder = await holdWriteLock(path, 1500)
    try {
      const started = performance.now()
      await Promise.all([
        rejectsWith(store.tryBeginExecutionTask('e', 'step'), 'TIMEOUT'),
        rejectsWith(store.commitExecutionTaskResult('e', 'other', 'late'), 'TIMEOUT'),
        rejectsWith(store.disposeExecution('e'), 'TIMEOUT'),
      ])
      const waited = performance.now() - started
      assert.ok(waited < 1400, `the calls rejected after ${waited.toFixed(0)} ms, not at commandTimeout`)
    } finally {
      await holder.released
    }
    // Calls on the same execution run after the ones that timed out would have: none of those was applied.
    assert.equal(await store.isExecutionTaskInProgress('e', 'step'), false)
    assert.deepEqual(await store.getExecutionTaskResults('e'), { done: 'before' })
    assert.equal(await store.isExecutionInProgress('e'), true)
    // The step is free to claim: a retry of the claim wins it.
    assert.equal(await store.tryBeginExecutionTask('e', 'step'), true)
    await store.close()
  })

  it('close() resolves soon after the queued calls rejected TIMEOUT, while another process still holds the write lock (it does not wait out busyTimeout)', async () => {
    const path = join(dir, 'close-busy.db')
    const store = createSqliteStore(path, { commandTimeout: 500, busyTimeout: 20_000 })
    await store.beginExecution('e')
    const holder = await holdWriteLock(path, 6000)
    try {
      const started = performance.now()
      const call = rejectsWith(store.commitExecutionTaskResult('e', 't', 1), 'TIMEOUT')
      await new Promise((resolve) => setTimeout(resolve, 10))
      await store.close()
      const closed = performance.now() - started
      await call
      assert.ok(closed < 2500, `close() resolved after ${closed.toFixed(0)} ms (commandTimeout 500, the lock held 6000 ms)`)
    } finally {
      holder.release()
      await holder.released
    }
    const reader = open(path)
    assert.equal(await reader.getExecutionTaskResult('e', 't'), undefined)
  })

  it("answers a call the store's thread had begun when its commandTimeout ran out, rather than reject TIMEOUT for a stored write", async () => {
    const path = join(dir, 'slow-commit.db')
    // synchronous 'full': every call runs on the store's thread. A 32 MB commit takes far
    // longer than commandTimeout, but the thread begins it (holding the write lock) first.
    const store = createSqliteStore(path, { synchronous: 'full', commandTimeout: 30 })
    await store.beginExecution('e')
    const big = 'x'.repeat(32 << 20)
    const outcome = await store.commitExecutionTaskResult('e', 't', big).then(
      () => 'stored',
      (err) => err.code,
    )
    await store.close()
    const reader = open(path)
    const stored = (await reader.getExecutionTaskResult('e', 't'))?.length === big.length
    // TIMEOUT means "not applied"; an answer means stored.
    assert.deepEqual([outcome, stored], outcome === 'TIMEOUT' ? ['TIMEOUT', false] : ['stored', true])
  })

  it('reads the clock once it holds the write lock: a TTL written after waiting for another process is not already spent', async () => {
    const path = join(dir, 'busy-ttl.db')
    const store = open(path, { busyTimeout: 10_000, ttl: 1000 })
    const kv = createKvStore(`sqlite:${path}`, { busyTimeout: 10_000, mounts: { m: { prefix: 'm:' } } })
    stores.push(kv)
    await store.beginExecution('warm-up')
    await kv.set('m', 'warm-up', 0)
    await kv.set('m', 'merged', { a: 1 }, { ttl: 60_000 })
    // Another process holds the write lock for 1.5 s: longer than the 1 s TTLs below.
    const holder = await holdWriteLock(path, 1500)
    try {
      const calls = Promise.all([store.beginExecution('e'), kv.set('m', 'k', 'v', { ttl: 1000 }), kv.merge('m', 'merged', { b: 2 }, { ttl: 1000 })])
      const started = performance.now()
      assert.deepEqual(await calls, [undefined, true, true])
      const waited = performance.now() - started
      assert.ok(waited > 1000, `the calls did not wait for the lock (${waited.toFixed(0)} ms)`)
      // Read at once: each TTL counts from the write, after the wait.
      assert.equal(await store.isExecutionInProgress('e'), true)
      assert.equal(await kv.get('m', 'k'), 'v')
      assert.deepEqual(await kv.get('m', 'merged'), { a: 1, b: 2 })
    } finally {
      holder.release()
    }
  })

  it('close() resolves once the database is closed and checkpointed: the file alone can be copied, read elsewhere, deleted and made anew', async () => {
    const path = join(dir, 'closed.db')
    const store = createSqliteStore(path, { busyTimeout: 10_000 })
    const kv = createKvStore(`sqlite:${path}`)
    for (let i = 0; i < 39; i++) {
      await store.commitExecutionTaskResult('e', `t${i}`, { i, pad: 'x'.repeat(1000) })
    }
    await kv.set('default', 'k', { v: 1 })
    // A call made before close() waits for another process's write lock: close() resolves
    // after it is stored and the database is closed, not before.
    const holder = await holdWriteLock(path, 1000)
    let settled = false
    const last = store.commitExecutionTaskResult('e', 't39', { i: 39 }).then(() => {
      settled = true
    })
    const closing = Promise.all([store.close(), kv.close()]).then(() => settled)
    assert.equal(await closing, true, 'close() resolved before the call made before it was stored')
    await last
    await holder.released
    const wal = `${path}-wal`
    assert.ok(!existsSync(wal) || statSync(wal).size === 0, `${wal} still holds ${existsSync(wal) && statSync(wal).size} bytes`)
    // The file alone, copied as a backup would be, holds everything.
    const copy = join(dir, 'closed-copy.db')
    copyFileSync(path, copy)
    const read = spawnSync(
      'python3',
      [
        '-c',
        `import sqlite3, sys, json
c = sqlite3.connect(sys.argv[1])
print(json.dumps([c.execute('PRAGMA journal_mode').fetchone()[0], c.execute('PRAGMA integrity_check').fetchone()[0],
  c.execute('SELECT count(*) FROM ds_steps WHERE result IS NOT NULL').fetchone()[0],
  c.execute("SELECT value FROM ds_entries WHERE key = 'kv:k'").fetchone()[0]]))`,
        copy,
      ],
      { encoding: 'utf8', timeout: 10_000 },
    )
    assert.equal(read.status, 0, read.stderr)
    assert.deepEqual(JSON.parse(read.stdout), ['wal', 'ok', 40, '{"v":1}'])
    // Deleted right away, and made anew at the same path.
    rmSync(path)
    rmSync(wal, { force: true })
    rmSync(`${path}-shm`, { force: true })
    const fresh = createSqliteStore(path)
    assert.deepEqual(await fresh.getExecutionTaskResults('e'), {})
    await fresh.commitExecutionTaskResult('e', 't', 'new')
    await fresh.close()
    const again = open(path)
    assert.deepEqual(await again.getExecutionTaskResults('e'), { t: 'new' })
    // A second close() waits the same way; a memory store's resolves too.
    await again.close()
    await again.close()
    await createSqliteStore(join(dir, 'never-used.db')).close()
    await createKvStore('memory:').close()
  })

  it('close() rejects UNAVAILABLE naming the WAL when it cannot copy it into a file made unwritable (chattr +i) while the store ran; nothing is lost', async (t) => {
    const path = join(dir, 'immutable.db')
    const store = createSqliteStore(path)
    await store.commitExecutionTaskResult('e', 'before', 1)
    const chattr = (flag) => spawnSync('chattr', [flag, path], { encoding: 'utf8', timeout: 10_000 })
    if (chattr('+i').status !== 0) {
      await store.close()
      t.skip('chattr +i is not available here (needs root and a file system that supports it)')
      return
    }
    try {
      for (let i = 0; i < 200; i++) await store.commitExecutionTaskResult('e', `t${i}`, 'x'.repeat(500))
      await rejectsWith(store.close(), 'UNAVAILABLE', /WAL could not be copied/)
      const closed = await store.close().then(
        () => 'resolved',
        (err) => err.code,
      )
      assert.ok(['resolved', 'UNAVAILABLE'].includes(closed), closed)
      assert.ok(existsSync(`${path}-wal`), 'the WAL is left next to the file')
    } finally {
      chattr('-i')
    }
    const reader = open(path)
    assert.equal((await reader.getExecutionTaskResult('e', 't199'))?.length, 500)
  })

  it("close() still resolves when a bug ends the store's thread (a panic): its calls reject INTERNAL, nothing waits forever", async () => {
    const path = join(dir, 'panicked.db')
    const { code, signal, stdout, stderr, ms } = await runChild(
      `
      const binding = require(${JSON.stringify(join(packageRoot, 'binding.js'))});
      const store = ds.createSqliteStore(${JSON.stringify(path)});
      const outcome = (p) => p.then(() => 'answered', (e) => e.code + ': ' + e.message);
      (async () => {
        binding.debugPanicSqliteThread();
        // The first call opens the file on the store's thread, which panics running it.
        const first = await outcome(store.beginExecution('e'));
        await store.close();
        process.stdout.write(JSON.stringify({ first }));
      })().catch((e) => { console.error(e); process.exit(1) });
    `,
      { timeoutMs: 10_000 },
    )
    assert.equal(signal, null, `killed after ${ms} ms: close() or a call hung`)
    assert.equal(code, 0, stderr)
    assert.match(JSON.parse(stdout).first, /^INTERNAL: /)
  })

  /** Runs `sql` on the file at `path` with better-sqlite3, as another program would. */
  function foreignSql(path, sql) {
    const script = `const db = new (require('better-sqlite3'))(${JSON.stringify(path)}); db.exec(${JSON.stringify(sql)}); db.close()`
    const node = runtime === 'node' ? process.execPath : 'node'
    const done = spawnSync(node, ['-e', script], { cwd: packageRoot, encoding: 'utf8', timeout: 30_000 })
    assert.equal(done.status, 0, `node -e (better-sqlite3): ${done.error ?? done.stderr}`)
  }

  it('rejects a stored value another program wrote as a BLOB with CORRUPT_DATA naming the key and task; calls made with it are answered', async () => {
    const path = join(dir, 'foreign-value.db')
    const store = open(path, { prefix: 'p:' })
    await store.commitExecutionTaskResult('e', 'good', { ok: true })
    await store.close()
    // Another program (better-sqlite3 on Node.js, which Bun and Deno cannot load: run by
    // the machine's `node` there) stores a result as a BLOB: durastate writes JSON text.
    foreignSql(path, "INSERT INTO ds_steps(exec, task, result) VALUES ('p:e', 'blob', x'ff00')")
    const again = open(path, { prefix: 'p:' })
    // In one tick, so in one transaction: only the call reading the value fails.
    const [one, all, other, write] = await Promise.allSettled([
      again.getExecutionTaskResult('e', 'blob'),
      again.getExecutionTaskResults('e'),
      again.getExecutionTaskResult('e', 'good'),
      again.commitExecutionTaskResult('e', 'next', 2),
    ])
    await rejectsWith(Promise.reject(one.reason), 'CORRUPT_DATA', /key "p:e" task "blob"/)
    await rejectsWith(Promise.reject(all.reason), 'CORRUPT_DATA', /key "p:e"/)
    assert.deepEqual([other.value, write.status], [{ ok: true }, 'fulfilled'])
    assert.equal(await again.getExecutionTaskResult('e', 'next'), 2)
  })

  it('applies a KV clear() whole or not at all: when writing the defaults fails, the entries are still there', async () => {
    const path = join(dir, 'kv-clear-whole.db')
    const schema = { theme: { type: 'string', default: 'light' }, size: { type: 'number', default: 1 } }
    const kv = createKvStore(`sqlite:${path}`, { mounts: { d: { prefix: 'd:', schema }, o: { prefix: 'o:' } } })
    stores.push(kv)
    await kv.set('d', 'theme', 'dark')
    await kv.set('d', 'size', 3)
    await kv.set('o', 'other', 1)
    // Another program makes writing a default fail (as a TIMEOUT, a full disk or a crash
    // between the delete and the defaults would).
    foreignSql(path, "CREATE TRIGGER no_defaults BEFORE INSERT ON ds_entries WHEN NEW.key = 'd:theme' BEGIN SELECT RAISE(ABORT, 'no defaults'); END")
    await rejectsWith(kv.clear('d'), 'UNAVAILABLE', /no defaults/)
    assert.deepEqual({ ...(await kv.getAll('d')) }, { theme: 'dark', size: 3 })
    foreignSql(path, 'DROP TRIGGER no_defaults')
    assert.equal(await kv.clear('d'), true)
    assert.deepEqual({ ...(await kv.getAll('d')) }, { theme: 'light', size: 1 })
    assert.equal(await kv.get('o', 'other'), 1)
  })

  it('rejects with CORRUPT_DATA naming the file when it is not a database, and leaves it alone', async () => {
    const path = join(dir, 'garbage.db')
    const garbage = "this is not a SQLite database, it is somebody's notes\n".repeat(200)
    writeFileSync(path, garbage)
    const store = open(path)
    await rejectsWith(store.beginExecution('e'), 'CORRUPT_DATA', new RegExp(`garbage\\.db.*move it aside`))
    await rejectsWith(store.getExecutionTaskResults('e'), 'CORRUPT_DATA')
    const { readFileSync } = await import('node:fs')
    assert.equal(readFileSync(path, 'utf8'), garbage)
  })

  it('rejects with UNAVAILABLE naming the place when the file cannot be created', async () => {
    const blocker = join(dir, 'a-file')
    writeFileSync(blocker, 'x')
    const store = open(join(blocker, 'sub', 'state.db'))
    await rejectsWith(store.beginExecution('e'), 'UNAVAILABLE', /a-file/)
  })

  it("refuses a busyTimeout over SQLite's limit (2^31 - 1 ms) at creation; up to it the store works", async () => {
    const path = join(dir, 'busy-limit.db')
    for (const create of [(o) => createSqliteStore(path, o), (o) => createStore('memory:', o), (o) => createKvStore(`sqlite:${path}`, o)]) {
      assert.throws(
        () => create({ busyTimeout: 2 ** 31 }),
        (err) => err.code === 'INVALID_INPUT' && /busyTimeout.*2147483647/.test(err.message),
      )
    }
    const store = createSqliteStore(path, { busyTimeout: 2 ** 31 - 1 })
    await store.beginExecution('e')
    assert.equal(await store.isExecutionInProgress('e'), true)
    await store.close()
  })

  it('rejects a directory as the path with INVALID_INPUT at creation', () => {
    assert.throws(
      () => createSqliteStore(dir),
      (err) => err.code === 'INVALID_INPUT' && err.message.includes(dir),
    )
    assert.throws(
      () => createSqliteStore(''),
      (err) => err.code === 'INVALID_INPUT',
    )
    assert.throws(
      () => createSqliteStore(join(dir, 'x.db'), { synchronous: 'sometimes' }),
      (err) => err.code === 'INVALID_INPUT',
    )
  })

  it('rejects :memory: and file: URIs as the SQLite path with INVALID_INPUT naming it, at creation (they were no durable file)', async () => {
    const cwd = mkdtempSync(join(dir, 'uri-'))
    const paths = [':memory:', 'file:mem.db?mode=memory', `file:${join(cwd, 'uri.db')}`, 'file::memory:?cache=shared']
    const makers = [
      ...paths.map((path) => [path, () => createSqliteStore(path)]),
      ...paths.map((path) => [path, () => createStore(`sqlite:${path}`)]),
      ...paths.map((path) => [path, () => createKvStore(`sqlite://${path}`)]),
      ['file:twice.db', () => createStore('file:file:twice.db')],
    ]
    for (const [path, make] of makers) {
      assert.throws(make, (err) => err.code === 'INVALID_INPUT' && err.message.includes(`"${path}"`), `${make} was not refused`)
    }
    // The URL forms with a plain path stay a file.
    const store = open(`${join(cwd, 'plain.db')}`)
    await store.beginExecution('e')
    const byUrl = createStore(`file:${join(cwd, 'plain.db')}`)
    assert.equal(await byUrl.isExecutionInProgress('e'), true)
    await byUrl.close()
    assert.ok(existsSync(join(cwd, 'plain.db')))
    assert.equal(existsSync(join(cwd, 'uri.db')), false)
  })

  it('creates a new file with the page size asked for; an existing file keeps its own', async () => {
    const path = join(dir, 'pages.db')
    const headerPageSize = () => readFileSync(path).readUInt16BE(16)
    const small = createSqliteStore(path, { pageSize: 1024 })
    await small.commitExecutionTaskResult('e', 't', { v: 'x'.repeat(3000) })
    await small.close()
    assert.equal(headerPageSize(), 1024)
    const reopened = open(path, { pageSize: 8192 })
    assert.deepEqual(await reopened.getExecutionTaskResult('e', 't'), { v: 'x'.repeat(3000) })
    await reopened.close()
    assert.equal(headerPageSize(), 1024)
    for (const pageSize of [1000, 256, 131072]) {
      assert.throws(
        () => createSqliteStore(path, { pageSize }),
        (err) => err.code === 'INVALID_INPUT' && /pageSize/.test(err.message),
      )
    }
  })

  it('uses ./.durastate/state.db by default, creating the directory', async () => {
    const cwd = mkdtempSync(join(dir, 'cwd-'))
    const { code, stderr } = await runChild(
      `
      const store = ds.createSqliteStore();
      store.beginExecution('e').then(() => store.close()).catch((e) => { console.error(e); process.exit(1) });
    `,
      { cwd },
    )
    assert.equal(code, 0, stderr)
    const path = join(cwd, '.durastate', 'state.db')
    assert.ok(existsSync(path))
    assert.equal(await open(path).isExecutionInProgress('e'), true)
  })

  it('removes expired rows as fast as they expire under a steady stream of new expiring keys and executions (the sweep is not capped at 64 rows per 100 ms)', async () => {
    const path = join(dir, 'sweep.db')
    const kv = createKvStore(`sqlite:${path}`)
    const store = open(path, { ttl: 100 })
    const total = 12_000
    let next = 0
    const started = Date.now()
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < total) {
          const i = next++
          await Promise.all([kv.set('default', `u${i}`, { i }, { ttl: 100 }), store.commitExecutionTaskResult(`ex${i}`, 't', i)])
        }
      }),
    )
    const ms = Date.now() - started
    await kv.close()
    const read = spawnSync(
      'python3',
      [
        '-c',
        `import sqlite3, sys, time, json
c = sqlite3.connect(sys.argv[1])
now = int(time.time() * 1000)
print(json.dumps([c.execute('SELECT count(*) FROM ds_entries WHERE expires_at <= ?', (now,)).fetchone()[0],
  c.execute('SELECT count(*) FROM ds_step_expiry WHERE due <= ?', (now,)).fetchone()[0]]))`,
        path,
      ],
      { encoding: 'utf8', timeout: 10_000 },
    )
    assert.equal(read.status, 0, read.stderr)
    const [entries, executions] = JSON.parse(read.stdout)
    // 64 rows per 100 ms removed 640 a second, leaving most of the 12,000 of each; what is
    // left now is about what was written in the last TTL of writes (100 ms) plus the
    // sweep's lag: at most what 400 ms of writes at this run's rate make (a fast machine
    // writes thousands in that time; the capped sweep left nearly all 12,000).
    const bound = Math.round((total / ms) * 400) + 500
    const message = `${entries} expired entries and ${executions} expired executions left of ${total} each written in ${ms} ms (bound ${bound})`
    assert.ok(entries < bound && executions < bound && entries < total / 2, message)
  })

  it(
    'rejects UNAVAILABLE naming the file once it is deleted or replaced under the store, never writes into a replacement, and then uses the file at the path',
    { skip: process.platform === 'win32' },
    async () => {
      for (const how of ['delete', 'replace']) {
        const path = join(dir, `moved-${how}.db`)
        const store = open(path)
        await store.commitExecutionTaskResult('e', 'before', 1)
        if (how === 'delete') {
          rmSync(path)
        } else {
          const other = createSqliteStore(`${path}.other`)
          await other.commitExecutionTaskResult('e', 'other', 2)
          await other.close()
          renameSync(`${path}.other`, path)
        }
        // Writes go on until one is refused: the store looks at the file every 100 ms or so.
        let refused
        const started = Date.now()
        for (let i = 0; !refused && Date.now() - started < 5000; i++) {
          try {
            await Promise.all(Array.from({ length: 8 }, (_, j) => store.commitExecutionTaskResult('e', `w${i}-${j}`, 'z'.repeat(1500))))
          } catch (err) {
            refused = err
          }
        }
        assert.equal(refused?.code, 'UNAVAILABLE', `${how}: ${refused?.message ?? 'every write was acknowledged'}`)
        assert.ok(refused.message.includes(path) && /deleted or replaced/.test(refused.message), refused.message)
        assert.ok(Date.now() - started < 3000, `${how}: refused after ${Date.now() - started} ms`)
        // The next calls use the file at the path: made anew, or the replacement, untouched.
        await store.commitExecutionTaskResult('e', 'after', 3)
        await store.close()
        const reopened = createSqliteStore(path)
        const expected = how === 'delete' ? { after: 3 } : { other: 2, after: 3 }
        assert.deepEqual(await reopened.getExecutionTaskResults('e'), expected)
        await reopened.close()
      }
    },
  )

  for (const gone of ['-wal', '-shm']) {
    it(
      `keeps every acknowledged commit when the ${gone} file of a running store is deleted and the process is then SIGKILLed; calls reject UNAVAILABLE naming it`,
      { skip: process.platform === 'win32' },
      async () => {
        const path = join(dir, `companion${gone}.db`)
        const writer = startChild(`
        const store = ds.createSqliteStore(${JSON.stringify(path)});
        (async () => {
          for (let i = 0; ; i++) {
            try {
              await store.commitExecutionTaskResult('e', 't' + i, { i });
              process.stdout.write('acked ' + i + '\\n');
            } catch (err) {
              process.stdout.write('refused ' + err.code + ' ' + err.message.replace(/\\n/g, ' ') + '\\n');
            }
            if (i % 10 === 9) await new Promise((resolve) => setTimeout(resolve, 5));
          }
        })();
      `)
        const count = (what) => (writer.output().match(new RegExp(what, 'g')) ?? []).length
        const until = (what, check) =>
          new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}: ${writer.output().slice(-500)}`)), 10_000)
            const poll = setInterval(() => {
              if (check()) {
                clearTimeout(timer)
                clearInterval(poll)
                resolve()
              }
            }, 5)
          })
        await until('50 commits', () => count('acked') >= 50)
        rmSync(path + gone)
        const before = count('acked')
        // Writes go on: the store notices within ~100 ms, then opens the database anew.
        await until('a refusal and 50 more commits', () => count('refused') >= 1 && count('acked') >= before + 50)
        writer.child.kill('SIGKILL')
        const { stdout } = await writer.done
        const refused = stdout.split('\n').filter((l) => l.startsWith('refused '))
        assert.match(refused[0], /^refused UNAVAILABLE /)
        assert.ok(refused[0].includes(path + gone) && /was deleted/.test(refused[0]), refused[0])
        const acked = stdout
          .split('\n')
          .filter((l) => l.startsWith('acked '))
          .map((l) => Number(l.slice(6)))
        const reader = open(path)
        const results = await reader.getExecutionTaskResults('e')
        const lost = acked.filter((i) => results[`t${i}`]?.i !== i)
        assert.deepEqual(lost, [], `${lost.length} of ${acked.length} acknowledged commits lost`)
      },
    )
  }

  it(
    'works on after its file is truncated to 0 bytes in place: no call rejects TIMEOUT "database is locked" (the store held the lock itself)',
    { skip: process.platform === 'win32' },
    async () => {
      const path = join(dir, 'truncated.db')
      const store = open(path, { commandTimeout: 2000, busyTimeout: 200 })
      // Enough commits for checkpoints to run (the store's checkpoint connection is open).
      for (let i = 0; i < 3000; i++) await store.commitExecutionTaskResult(`e${i}`, 't', 'x'.repeat(300))
      await new Promise((resolve) => setTimeout(resolve, 200))
      truncateSync(path, 0)
      const outcomes = []
      for (let i = 0; i < 5; i++) {
        outcomes.push(
          await store.commitExecutionTaskResult('n', `t${i}`, i).then(
            () => 'ok',
            (err) => `${err.code} ${err.message}`,
          ),
        )
      }
      // The damaged file answers CORRUPT_DATA (once), then the store works on a new database.
      assert.ok(!outcomes.some((o) => o.startsWith('TIMEOUT')), outcomes.join('\n'))
      assert.deepEqual(outcomes.slice(-3), ['ok', 'ok', 'ok'], outcomes.join('\n'))
      assert.equal(await store.getExecutionTaskResult('n', 't4'), 4)
    },
  )

  it('keeps using the file a relative path named when the store was made, after process.chdir(): its WAL is checkpointed, nothing is created in the new directory', async () => {
    const first = mkdtempSync(join(dir, 'chdir-a-'))
    const second = mkdtempSync(join(dir, 'chdir-b-'))
    mkdirSync(join(second, '.durastate'))
    const { code, stdout, stderr } = await runChild(
      `
      (async () => {
        const store = ds.createSqliteStore();
        await store.commitExecutionTaskResult('e', 'first', 1);
        process.chdir(${JSON.stringify(second)});
        // About 12 MB of WAL without checkpoints (they are due every 1,000 pages).
        for (let r = 0; r < 40; r++) {
          await Promise.all(Array.from({ length: 256 }, (_, j) => store.commitExecutionTaskResult('e' + r, 't' + j, 'x'.repeat(1000))));
        }
        await store.isExecutionInProgress('e');
        await new Promise((r) => setTimeout(r, 300));
        const db = require('node:fs').statSync(${JSON.stringify(join(first, '.durastate', 'state.db'))}).size;
        console.log(JSON.stringify({ db }));
        await store.close();
      })().catch((e) => { console.error(e.code, e.message); process.exit(1) });
    `,
      { cwd: first, timeoutMs: 60_000 },
    )
    assert.equal(code, 0, stderr)
    // Checkpoints copy the WAL into the file while the store runs (under a burst of writes
    // the WAL itself may stay long: passive checkpoints do not shrink it). Never
    // checkpointed, the file would hold only its first pages until close().
    const { db } = JSON.parse(stdout)
    assert.ok(db > 1024 * 1024, `the file is ${db} bytes: the WAL was not checkpointed into it`)
    assert.deepEqual(readdirSync(second, { recursive: true }), ['.durastate'])
    const reopened = open(join(first, '.durastate', 'state.db'))
    assert.equal(await reopened.getExecutionTaskResult('e', 'first'), 1)
    assert.equal(await reopened.getExecutionTaskResult('e39', 't255'), 'x'.repeat(1000))
  })
})

describe('createStore', () => {
  let dir
  let redis
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'durastate-createstore-'))
    redis = await testRedis()
  })
  after(async () => {
    rmSync(dir, { recursive: true, force: true })
    await redis.release()
  })

  /** Which backend a child's `createStore(url)` lands on, told by where the state appears. */
  const probe = async (url, env) => {
    const cwd = mkdtempSync(join(dir, 'cwd-'))
    const prefix = `probe-${Math.random().toString(36).slice(2)}:`
    const { code, stdout, stderr } = await runChild(
      `
      (async () => {
        const store = ds.createStore(${url === undefined ? 'undefined' : JSON.stringify(url)}, { prefix: ${JSON.stringify(prefix)} });
        await store.beginExecution('e');
        await store.close();
        const redis = ds.createRedisStore(${JSON.stringify(redis.url)}, { prefix: ${JSON.stringify(prefix)} });
        const onRedis = await redis.isExecutionInProgress('e');
        await redis.disposeExecution('e');
        await redis.close();
        console.log(JSON.stringify({ onRedis }));
      })().catch((e) => { console.error(e.code, e.message); process.exit(1) });
    `,
      { cwd, env: { DURASTATE_URL: '', REDIS_URL: '', ...env } },
    )
    assert.equal(code, 0, stderr)
    return { cwd, ...JSON.parse(stdout) }
  }

  it('routes redis:// to Redis', async () => {
    const { onRedis, cwd } = await probe(redis.url)
    assert.equal(onRedis, true)
    assert.equal(existsSync(join(cwd, '.durastate')), false)
  })

  it('routes sqlite: and file: to a SQLite file at that path', async () => {
    for (const scheme of ['sqlite:', 'file:']) {
      const path = join(dir, `${scheme.slice(0, -1)}.db`)
      const { onRedis } = await probe(`${scheme}${path}`)
      assert.equal(onRedis, false)
      assert.ok(existsSync(path), `${scheme} did not create ${path}`)
    }
    const { onRedis, cwd } = await probe('sqlite:./relative/state.db')
    assert.equal(onRedis, false)
    assert.ok(existsSync(join(cwd, 'relative', 'state.db')))
  })

  it('reads file: URLs as URLs (percent-escapes decoded, host empty or localhost) and refuses another host or a query with INVALID_INPUT naming the URL', async () => {
    const base = mkdtempSync(join(dir, 'urls-'))
    const spaced = join(base, 'my dir', 'state.db')
    for (const [url, path] of [
      [pathToFileURL(spaced).href, spaced],
      [`file://localhost${join(base, 'local.db')}`, join(base, 'local.db')],
      [`FILE://LOCALHOST${join(base, 'upper.db')}`, join(base, 'upper.db')],
    ]) {
      const store = createStore(url)
      await store.commitExecutionTaskResult('e', 't', 1)
      await store.close()
      assert.ok(existsSync(path), `${url} did not make ${path}`)
    }
    assert.deepEqual(readdirSync(base).sort(), ['local.db', 'my dir', 'upper.db'])
    for (const url of [
      `file://example.com${join(base, 'remote.db')}`,
      `sqlite:${join(base, 'query.db')}?mode=ro`,
      `file://${join(base, 'query.db')}?mode=ro`,
      `file://${join(base, 'bad%zz.db')}`,
    ]) {
      assert.throws(
        () => createStore(url),
        (err) => err.code === 'INVALID_INPUT' && err.message.includes(`"${url}"`),
        url,
      )
    }
    assert.deepEqual(readdirSync(base).sort(), ['local.db', 'my dir', 'upper.db'])
  })

  it('routes memory: to a private in-memory store', async () => {
    const { onRedis, cwd } = await probe('memory:')
    assert.equal(onRedis, false)
    assert.equal(existsSync(join(cwd, '.durastate')), false)
  })

  it('uses DURASTATE_URL, then REDIS_URL, else the SQLite default', async () => {
    const sqlitePath = join(dir, 'from-env.db')
    const fromDurastate = await probe(undefined, { DURASTATE_URL: `sqlite:${sqlitePath}`, REDIS_URL: redis.url })
    assert.equal(fromDurastate.onRedis, false)
    assert.ok(existsSync(sqlitePath))
    const fromRedisUrl = await probe(undefined, { REDIS_URL: redis.url })
    assert.equal(fromRedisUrl.onRedis, true)
    const fallback = await probe(undefined)
    assert.equal(fallback.onRedis, false)
    assert.ok(existsSync(join(fallback.cwd, '.durastate', 'state.db')))
  })

  it('rejects an unknown scheme with INVALID_INPUT, without echoing a password', () => {
    assert.throws(
      () => createStore('mysql://u:hunter2@h/db'),
      (err) => err.code === 'INVALID_INPUT' && !err.message.includes('hunter2'),
    )
    assert.throws(
      () => createStore('sqlite:'),
      (err) => err.code === 'INVALID_INPUT',
    )
  })
})
