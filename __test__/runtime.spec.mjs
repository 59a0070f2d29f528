// The JS runtime the addon runs in (Node.js, Bun, Deno: `npm test` runs this file in
// each), found by the addon itself when it loads, and what follows for Redis: the
// event-loop driver on Node.js only, the runtime's own socket (node:net) elsewhere, with the
// same options on both (TLS, Sentinel, `durability: 'aof'`: tls.spec and sentinel.spec run
// on each runtime).
import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { createKvStore, createRedisStore, createStore } from '../index.js'
import { packageIndex, packageRoot, runChild } from './helpers/child.mjs'
import { freePort } from './helpers/redis-server.mjs'
import { runtime, runtimeName } from './helpers/runtime.mjs'

const binding = createRequire(import.meta.url)(join(packageRoot, 'binding.js'))

describe(`runtime: ${runtimeName}`, () => {
  it("is named by the addon, which runs Redis on the event loop only on Node.js, over the runtime's socket elsewhere", () => {
    const found = binding.debugRuntime()
    assert.equal(found.runtime, runtimeName)
    const eventLoop = runtime === 'node' && process.platform !== 'win32'
    assert.equal(found.eventLoopDriver, eventLoop)
    const forced = process.env.DURASTATE_REDIS_DRIVER
    assert.equal(found.redisDriver, forced === 'threads' || forced === 'socket' ? forced : eventLoop ? 'event-loop' : 'socket')
  })

  it('TLS, Sentinel and aof: accepted on every runtime, whichever driver runs Redis', () => {
    const stores = [
      () => createRedisStore('redis://127.0.0.1:6379', { durability: 'aof' }),
      () => createRedisStore('rediss://127.0.0.1:6379'),
      () => createRedisStore('redis+sentinel://127.0.0.1:26379/mymaster'),
      () => createRedisStore('rediss+sentinel://127.0.0.1:26379/mymaster', { sentinelTls: false }),
      () => createStore('rediss://127.0.0.1:6379'),
      () => createKvStore('redis://127.0.0.1:6379', { durability: 'aof' }),
      () => createKvStore('rediss+cluster://127.0.0.1:7000', { durability: 'aof' }),
    ]
    for (const create of stores) create().close()
  })

  it('never aborts the process: an unreachable Redis rejects with a code, and the process exits', async () => {
    const port = await freePort()
    const { code, signal, stdout, stderr } = await runChild(
      `
      const store = ds.createRedisStore('redis://127.0.0.1:${port}', { connectTimeout: 500, commandTimeout: 1000 });
      const started = Date.now();
      store.isExecutionInProgress('e').then(
        () => { console.error('resolved'); process.exit(1) },
        (err) => { process.stdout.write(err.code + ' ' + (Date.now() - started)); return store.close() },
      );
    `,
      { timeoutMs: 10_000 },
    )
    assert.equal(signal, null, `killed: ${stderr}`)
    assert.equal(code, 0, stderr)
    const [errCode, ms] = stdout.split(' ')
    assert.ok(['UNAVAILABLE', 'TIMEOUT'].includes(errCode), stdout)
    assert.ok(Number(ms) < 2000, `took ${ms} ms`)
  })

  it('a call rejected by a refused connect does not hold the process open (no close(), in a worker thread too)', async () => {
    const port = await freePort()
    // (The worker thread on Node.js, whose event-loop driver this is about.)
    for (const where of runtime === 'node' ? ['main', 'worker'] : ['main']) {
      const body = `
        const store = ds.createRedisStore('redis://127.0.0.1:${port}', { commandTimeout: 8000, retry: { attempts: 0 } });
        store.isExecutionInProgress('e').then(() => console.log('resolved'), (err) => console.log(err.code));
      `
      const script =
        where === 'main'
          ? body
          : `const { Worker } = require('node:worker_threads');
             new Worker(${JSON.stringify(`const ds = require(${JSON.stringify(packageIndex)});${body}`)}, { eval: true });`
      const { code, signal, stdout, stderr, ms } = await runChild(script, { timeoutMs: 20_000 })
      assert.equal(signal, null, `${where}: killed: ${stderr}`)
      assert.equal(code, 0, `${where}: ${stderr}`)
      assert.equal(stdout.trim(), 'UNAVAILABLE', `${where}: ${stdout}`)
      // Not kept until the 8 s commandTimeout (startup included).
      assert.ok(ms < 6000, `${where}: exited after ${ms} ms`)
    }
  })

  it('takes a target from process.env as the program left it: a variable it deleted is not used', async () => {
    // On Bun, `delete process.env.X` does not reach the process's own environment: the
    // addon reading it would still find the dead Redis below.
    const dead = `redis://127.0.0.1:${await freePort()}`
    const dir = mkdtempSync(join(tmpdir(), 'durastate-env-'))
    try {
      const { code, stdout, stderr } = await runChild(
        `
        for (const name of ['DURASTATE_URL', 'REDIS_URL', 'DATABASE_URL']) delete process.env[name];
        (async () => {
          const store = ds.createStore(undefined, { commandTimeout: 1000, connectTimeout: 500 });
          await store.beginExecution('e');
          await store.close();
          const kv = ds.createKvStore(undefined, { commandTimeout: 1000, connectTimeout: 500 });
          await kv.set('default', 'k', 1);
          await kv.close();
          const redis = ds.createRedisStore(undefined, { commandTimeout: 1000, connectTimeout: 500 });
          const said = await redis.isExecutionInProgress('e').then(() => 'answered', (err) => err.message);
          await redis.close();
          process.stdout.write(JSON.stringify(said));
        })().catch((err) => { console.error(err.code, err.message); process.exit(1) });
      `,
        { cwd: dir, env: { DURASTATE_URL: dead, REDIS_URL: dead, DATABASE_URL: dead }, timeoutMs: 15_000 },
      )
      assert.equal(code, 0, stderr)
      // the SQLite default file in the working directory took the calls
      assert.ok(existsSync(join(dir, '.durastate', 'state.db')))
      // and a Redis store without a target went to the default address, not the deleted one
      assert.ok(!JSON.parse(stdout).includes(dead), stdout)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
