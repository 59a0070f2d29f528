// Process-level behaviour: a Rust panic becomes a JS error, never an abort; a process
// that uses a store exits on its own, with or without close(); worker threads can load
// and unload the addon.
import assert from 'node:assert/strict'
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs'
import { connect } from 'node:net'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { Worker } from 'node:worker_threads'
import { createMemoryStore } from '../index.js'
import { runChild, packageIndex, packageRoot } from './helpers/child.mjs'
import { startRedisServer, testRedis } from './helpers/redis-server.mjs'
import { runtime } from './helpers/runtime.mjs'

const require = createRequire(import.meta.url)
const binding = require(join(packageRoot, 'binding.js'))

describe('process behaviour', () => {
  let redis
  let dir
  before(async () => {
    redis = await testRedis()
    dir = mkdtempSync(join(tmpdir(), 'durastate-process-'))
  })
  after(async () => {
    await redis.release()
    rmSync(dir, { recursive: true, force: true })
  })

  it('turns a panic in a sync call into a thrown error', () => {
    assert.throws(() => binding.debugPanicSync(), /deliberate panic \(sync\)/)
  })

  it('turns a panic in an async call into a rejection with code INTERNAL', async () => {
    await assert.rejects(binding.debugPanicAsync(), (err) => err.code === 'INTERNAL' && /deliberate panic/.test(err.message))
    // The addon still works afterwards.
    assert.equal(await createMemoryStore().isExecutionInProgress('e'), false)
  })

  it('sets the code on native errors as data: err.code, and a message without a [CODE] prefix', async () => {
    const coded = (code, pattern) => (err) => {
      assert.ok(err instanceof Error)
      assert.equal(err.code, code, err.message)
      assert.doesNotMatch(err.message, /^\[/)
      assert.match(err.message, pattern)
      return true
    }
    // Settled on the JS thread (memory store).
    const memory = binding.createMemoryStore()
    await assert.rejects(memory.beginExecution(''), coded('INVALID_INPUT', /executionId must be a non-empty string/))
    memory.close()
    await assert.rejects(memory.isExecutionInProgress('e'), coded('DISPOSED', /store is closed/))
    // Settled from tokio (a unix socket runs on the threads driver).
    const socket = join(dir, 'nobody-listens.sock')
    const unix = binding.createRedisStore(`redis+unix://${socket}`, { connectTimeout: 1000, retry: { attempts: 0 } })
    await assert.rejects(unix.isExecutionInProgress('e'), coded('UNAVAILABLE', /nobody-listens\.sock/))
    unix.close()
    // Thrown synchronously by a factory.
    assert.throws(() => binding.createStore('mysql://h/db'), coded('INVALID_INPUT', /mysql/))
  })

  const stores = () => ({
    redis: `ds.createRedisStore(${JSON.stringify(redis.url)}, { prefix: 'process-spec:' + process.pid + ':', ttl: 60000 })`,
    sqlite: `ds.createSqliteStore(${JSON.stringify(join(dir, 'exit.db'))}, { ttl: 60000 })`,
    memory: `ds.createMemoryStore({ ttl: 60000 })`,
  })

  for (const backend of ['redis', 'sqlite', 'memory']) {
    it(`exits on its own after using a ${backend} store without close()`, async () => {
      const { code, signal, stderr, ms } = await runChild(
        `
        const store = ${stores()[backend]};
        (async () => {
          await store.beginExecution('e');
          await store.beginExecutionTask('e', 't');
          await store.commitExecutionTaskResult('e', 't', { ok: true });
          await store.getExecutionTaskResults('e');
        })().catch((e) => { console.error(e); process.exit(1) });
      `,
        { timeoutMs: 10_000 },
      )
      assert.equal(signal, null, `killed after ${ms} ms: the process did not exit on its own`)
      assert.equal(code, 0, stderr)
    })

    it(`exits at once after close() of a ${backend} store`, async () => {
      const { code, stderr, stdout } = await runChild(
        `
        const store = ${stores()[backend]};
        (async () => {
          await store.beginExecution('e');
          await store.close();
          process.stdout.write(String(Date.now()));
        })().catch((e) => { console.error(e); process.exit(1) });
      `,
        { timeoutMs: 10_000 },
      )
      assert.equal(code, 0, stderr)
      // Measured from close() to the parent seeing the exit: no lingering timers or sockets.
      const lingered = Date.now() - Number(stdout)
      assert.ok(lingered < 1000, `the process lingered ${lingered} ms after close()`)
    })
  }

  it('a panic in the task of a Redis store on tokio threads rejects its calls with INTERNAL, later calls do not hang, and the process exits', async () => {
    const { code, signal, stderr, stdout, ms } = await runChild(
      `
      const binding = require(${JSON.stringify(join(packageRoot, 'binding.js'))});
      const store = ds.createRedisStore(${JSON.stringify(redis.url)}, { prefix: 'process-spec:panic:' + process.pid + ':', commandTimeout: 3000 });
      const outcome = (p) => p.then(() => 'answered', (e) => e.code + ': ' + e.message);
      (async () => {
        await store.beginExecution('e');
        binding.debugPanicRedisTask();
        const first = await Promise.all([outcome(store.isExecutionInProgress('e')), outcome(store.getExecutionTaskResult('e', 't'))]);
        const later = await outcome(store.isExecutionInProgress('e'));
        process.stdout.write(JSON.stringify({ first, later }));
      })().catch((e) => { console.error(e); process.exit(1) });
    `,
      { env: { DURASTATE_REDIS_DRIVER: 'threads' }, timeoutMs: 10_000 },
    )
    assert.equal(signal, null, `killed after ${ms} ms: a call hung or the process did not exit`)
    assert.equal(code, 0, stderr)
    const { first, later } = JSON.parse(stdout)
    // The first call may have been answered before the task's turn that panicked; the
    // second was queued behind it and never sent.
    assert.match(first[1], /^INTERNAL: .*deliberate panic \(Redis task\)/)
    assert.ok(first[0] === 'answered' || first[0] === first[1], first[0])
    assert.match(later, /^DISPOSED: /)
  })

  // A server that accepts connections and never answers: the calls time out at
  // commandTimeout, and then nothing may keep the process alive until connectTimeout. The
  // same for sentinels that never answer (the lookup of the master is given up).
  for (const driver of runtime === 'node' ? ['default', 'socket', 'threads'] : ['default', 'threads']) {
    it(`exits once its calls timed out, with or without close(), when the server or the sentinels never answer (${driver} driver)`, async () => {
      const { createServer } = await import('node:net')
      const sockets = new Set()
      const silent = createServer((socket) => sockets.add(socket.on('error', () => {})))
      await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve))
      const port = silent.address().port
      try {
        for (const [url, close] of [
          [`redis://127.0.0.1:${port}`, true],
          [`redis://127.0.0.1:${port}`, false],
          [`redis+sentinel://127.0.0.1:${port},127.0.0.1:${port}/main`, true],
          [`redis+sentinel://127.0.0.1:${port}/main`, false],
        ]) {
          const { code, signal, stdout, stderr, ms } = await runChild(
            `
            const store = ds.createRedisStore(${JSON.stringify(url)}, { commandTimeout: 500, connectTimeout: 8000, retry: { attempts: 0 } });
            (async () => {
              const code = await store.beginExecution('e').then(() => 'ok', (e) => e.code);
              if (${close}) await store.close();
              process.stdout.write(code + ' ' + Date.now());
            })().catch((e) => { console.error(e); process.exit(1) });
          `,
            { timeoutMs: 15_000, env: driver === 'default' ? {} : { DURASTATE_REDIS_DRIVER: driver } },
          )
          assert.equal(signal, null, `killed after ${ms} ms`)
          assert.equal(code, 0, stderr)
          const [answer, at] = stdout.split(' ')
          assert.equal(answer, 'TIMEOUT')
          // Well before connectTimeout (8 s): nothing waits for the connect attempt.
          const lingered = Date.now() - Number(at)
          assert.ok(lingered < 3_000, `${url}, close: ${close}: the process lingered ${lingered} ms after its call timed out`)
        }
      } finally {
        for (const socket of sockets) socket.destroy()
        await new Promise((resolve) => silent.close(resolve))
      }
    })
  }

  // A store the program no longer references can be collected while its calls wait:
  // they must still settle, and their writes land. A store collected idle must not keep
  // its connection open. Every Redis driver this runtime has.
  const drivers = runtime === 'node' ? ['default', 'socket', 'threads'] : ['default', 'threads']
  for (const driver of drivers) {
    it(`settles the calls of a Redis store collected while they wait, and closes the connections of stores collected idle (${driver} driver)`, async () => {
      const server = await startRedisServer()
      try {
        const { code, signal, stdout, stderr, ms } = await runChild(
          `
          const Redis = require(${JSON.stringify(require.resolve('ioredis'))});
          const url = ${JSON.stringify(server.url)};
          // Bun: Bun.gc; Deno: DENO_V8_FLAGS=--expose-gc; Node.js: the flag set at run time.
          const collect = globalThis.Bun ? () => Bun.gc(true) : typeof globalThis.gc === 'function' ? globalThis.gc
            : (require('node:v8').setFlagsFromString('--expose-gc'), require('node:vm').runInNewContext('gc'));
          const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
          const admin = new Redis(url);
          const clients = async () => (await admin.client('LIST')).trim().split('\\n').length - 1;
          const orphanCall = () => {
            const store = ds.createRedisStore(url, { prefix: 'orphan:', commandTimeout: 5000 });
            return store.commitExecutionTaskResult('e', 't', { v: 1 });
          };
          const idleStore = async (i) => {
            const store = ds.createRedisStore(url, { prefix: 'idle:' });
            await store.isExecutionInProgress('e' + i);
          };
          (async () => {
            // The server holds every reply for 500 ms: the store is collected mid-call.
            await admin.client('PAUSE', 500, 'ALL');
            const call = orphanCall().then(() => 'settled', (err) => err.code);
            collect();
            let timer;
            const late = new Promise((resolve) => { timer = setTimeout(resolve, 4000, 'unsettled after 4 s') });
            const outcome = await Promise.race([call, late]);
            clearTimeout(timer);
            const before = await clients();
            for (let i = 0; i < 5; i++) await idleStore(i);
            const connected = await clients();
            for (let i = 0; i < 5; i++) { collect(); await pause(100); }
            const after = await clients();
            const check = ds.createRedisStore(url, { prefix: 'orphan:' });
            const stored = await check.getExecutionTaskResult('e', 't');
            await check.close();
            admin.disconnect();
            process.stdout.write(JSON.stringify({ outcome, stored, before, connected, after }));
          })().catch((e) => { console.error(e); process.exit(1) });
        `,
          {
            env: { DURASTATE_REDIS_DRIVER: driver === 'default' ? '' : driver, DENO_V8_FLAGS: '--expose-gc' },
            timeoutMs: 20_000,
          },
        )
        assert.equal(signal, null, `killed after ${ms} ms: a call hung or the process did not exit`)
        assert.equal(code, 0, stderr)
        const { outcome, stored, before, connected, after } = JSON.parse(stdout)
        assert.equal(outcome, 'settled')
        assert.deepEqual(stored, { v: 1 })
        assert.equal(connected, before + 5, 'five stores connected')
        // A conservative collector may keep the last store found on the stack.
        assert.ok(after <= before + 1, `${after - before} connections of collected stores left open`)
      } finally {
        await server.stop()
      }
    })
  }

  it('a worker thread ended while a call of its store waits on tokio (a unix socket, a paused server) leaves the process running', async () => {
    const socket = join(dir, 'paused.sock')
    const server = await startRedisServer({ args: ['--unixsocket', socket] })
    try {
      // Every client of the server paused: the worker's call waits (on the threads driver,
      // as every unix socket does) until its commandTimeout, after the worker is gone.
      await new Promise((resolve, reject) => {
        const admin = connect(server.port, '127.0.0.1', () => admin.write('*4\r\n$6\r\nCLIENT\r\n$5\r\nPAUSE\r\n$4\r\n4000\r\n$3\r\nALL\r\n'))
        admin.once('data', (reply) => (admin.end(), String(reply).startsWith('+OK') ? resolve() : reject(new Error(String(reply)))))
        admin.once('error', reject)
      })
      const worker = `
        const ds = require(${JSON.stringify(packageIndex)});
        const { parentPort } = require('node:worker_threads');
        const store = ds.createStore(${JSON.stringify(`redis+unix://${socket}`)}, { commandTimeout: 1000 });
        store.beginExecution('w').catch(() => {});
        setTimeout(() => parentPort.postMessage('waiting'), 100);
      `
      const { code, signal, stdout, stderr } = await runChild(
        `
        const { Worker } = require('node:worker_threads');
        const worker = new Worker(${JSON.stringify(worker)}, { eval: true });
        worker.once('message', async () => {
          await worker.terminate();
          // past the call's commandTimeout, when its task settles it
          setTimeout(() => process.stdout.write('alive'), 2000);
        });
      `,
        { timeoutMs: 15_000 },
      )
      assert.equal(signal, null, `the process died: ${stderr.slice(0, 500)}`)
      assert.equal(code, 0, stderr.slice(0, 500))
      assert.equal(stdout, 'alive')
    } finally {
      await server.stop()
    }
  })

  it(
    'a store left open in a worker thread is closed when the worker ends: no SQLite thread or file stays open',
    { skip: process.platform !== 'linux' && 'reads /proc' },
    async () => {
      // Node.js and Bun finalize the store when a worker ends; Deno runs no finalizer then,
      // so the store's env cleanup hook must close it (a worker ended by itself or terminated).
      // The ids of the SQLite threads alive now. Those of other tests' stores may end
      // (collected) or start meanwhile (Bun runs every spec file in one process), so the
      // test follows the threads that appear while each worker opens its stores.
      const sqliteThreads = () =>
        new Set(
          readdirSync('/proc/self/task').filter((task) => {
            try {
              return readFileSync(`/proc/self/task/${task}/comm`, 'utf8').trim() === 'durastate-sqlit'
            } catch {
              return false // a thread that ended meanwhile
            }
          }),
        )
      const openFiles = () =>
        readdirSync('/proc/self/fd').filter((fd) => {
          try {
            return readlinkSync(`/proc/self/fd/${fd}`).startsWith(dir)
          } catch {
            return false
          }
        }).length
      const theirs = new Set()
      const alive = () => [...sqliteThreads()].filter((task) => theirs.has(task))
      const source = `
      const { parentPort, workerData } = require('node:worker_threads');
      const ds = require(${JSON.stringify(packageIndex)});
      (async () => {
        const stores = [ds.createMemoryStore(), ds.createSqliteStore(workerData.file), ds.createKvStore('sqlite:' + workerData.file)];
        await stores[0].beginExecution('e');
        await stores[1].beginExecution('e');
        await stores[2].set('default', 'k', workerData.i);
        // Stays until told to end (by itself, the stores left open) or terminated.
        parentPort.once('message', () => {});
        parentPort.postMessage('open');
      })();
    `
      for (let i = 0; i < 4; i++) {
        const before = sqliteThreads()
        const worker = new Worker(source, { eval: true, workerData: { i, file: join(dir, `left-open-${i}.db`) } })
        const exited = new Promise((resolve) => worker.once('exit', resolve))
        await new Promise((resolve, reject) => {
          worker.once('message', resolve)
          worker.once('error', reject)
        })
        const started = [...sqliteThreads()].filter((task) => !before.has(task))
        assert.ok(started.length >= 2, `the stores run on their threads (${started.length} started)`)
        for (const task of started) theirs.add(task)
        if (i % 2 === 0) await worker.terminate()
        else worker.postMessage('end')
        await exited
      }
      const deadline = Date.now() + 10_000
      while ((alive().length > 0 || openFiles() > 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
      assert.deepEqual(alive(), [], 'every SQLite thread of the workers ended')
      assert.equal(openFiles(), 0, 'no file of theirs is open')
    },
  )

  it('loads and unloads the addon in worker threads started and stopped repeatedly', async () => {
    const source = `
      const { parentPort, workerData } = require('node:worker_threads');
      const ds = require(${JSON.stringify(packageIndex)});
      (async () => {
        const store = workerData.redis
          ? ds.createRedisStore(workerData.redis, { prefix: 'worker-spec:' + workerData.i + ':' })
          : ds.createMemoryStore();
        await store.beginExecution('e');
        await store.commitExecutionTaskResult('e', 't', workerData.i);
        const value = await store.getExecutionTaskResult('e', 't');
        await store.disposeExecution('e');
        if (workerData.i % 3 !== 0) await store.close();
        parentPort.postMessage(value);
      })();
    `
    for (let i = 0; i < 20; i++) {
      const worker = new Worker(source, { eval: true, workerData: { i, redis: i % 2 ? redis.url : null } })
      // Listen for the exit from the start: a worker may exit right after its message.
      const exited = new Promise((resolve) => worker.once('exit', resolve))
      const value = await new Promise((resolve, reject) => {
        worker.once('message', resolve)
        worker.once('error', reject)
      })
      assert.equal(value, i)
      // Terminate some while their store is still open, let others end by themselves.
      if (i % 4 === 0) await worker.terminate()
      await exited
    }
  })
})
