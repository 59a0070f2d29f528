// Redis-specific behaviour: byte compatibility with the JS store on ioredis, key layout,
// exact ms TTL on every key, atomic commit, one round trip per call, connection errors.
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { createServer } from 'node:net'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import Redis from 'ioredis'
import { createKvStore, createRedisStore, EMPTY_EXECUTION_RESULT } from '../index.js'
import { rejectsWith } from './helpers/assert.mjs'
import { createReferenceStore } from './helpers/reference-store.mjs'
import { startRedisServer, testRedis } from './helpers/redis-server.mjs'
import { startCountingProxy } from './helpers/proxy.mjs'

describe('Redis store', () => {
  let redis
  let io
  const stores = []
  const open = (options = {}, target) => {
    const store = createRedisStore(target ?? redis.url, options)
    stores.push(store)
    return store
  }
  const prefix = () => `ds-redis:${randomUUID()}:`

  before(async () => {
    redis = await testRedis()
    io = new Redis(redis.url, { lazyConnect: false })
  })
  after(async () => {
    await Promise.all(stores.map((s) => s.close()))
    io.disconnect()
    await redis.release()
  })

  it('reads state the JS store on ioredis wrote', async () => {
    const p = prefix()
    const reference = createReferenceStore(io, { prefix: p })
    const ours = open({ prefix: p })
    await reference.beginExecution('e')
    await reference.beginExecutionTask('e', 'pending')
    await reference.commitExecutionTaskResult('e', 'done', { total: 12.5, items: ['a', 'é'] })
    await reference.commitExecutionTaskResult('e', 'empty', EMPTY_EXECUTION_RESULT)
    assert.equal(await ours.isExecutionInProgress('e'), true)
    assert.equal(await ours.isExecutionTaskInProgress('e', 'pending'), true)
    assert.deepEqual(await ours.getExecutionTaskResult('e', 'done'), { total: 12.5, items: ['a', 'é'] })
    assert.deepEqual(await ours.getExecutionTaskResults('e'), await reference.getExecutionTaskResults('e'))
    assert.equal(await ours.getExecutionTaskResult('e', 'empty'), EMPTY_EXECUTION_RESULT)
    await ours.disposeExecution('e')
    assert.equal(await reference.isExecutionInProgress('e'), false)
    assert.deepEqual(await io.keys(`${p}*`), [])
  })

  it('writes state the JS store on ioredis reads, byte for byte', async () => {
    const p = prefix()
    const reference = createReferenceStore(io, { prefix: p })
    const ours = open({ prefix: p })
    const value = { nested: { list: [1, 'two', null] }, text: 'ünï "q" \n' }
    await ours.beginExecution('e')
    await ours.beginExecutionTask('e', 'pending')
    await ours.commitExecutionTaskResult('e', 'done', value)
    assert.equal(await io.get(`${p}e`), 'true')
    assert.equal(await io.hget(`${p}e-transactions`, 'pending'), 'true')
    assert.equal(await io.hget(`${p}e-results`, 'done'), JSON.stringify(value))
    assert.equal(await io.type(`${p}e-results`), 'hash')
    assert.equal(await reference.isExecutionInProgress('e'), true)
    assert.equal(await reference.isExecutionTaskInProgress('e', 'pending'), true)
    assert.deepEqual(await reference.getExecutionTaskResult('e', 'done'), value)
    assert.deepEqual(await reference.getExecutionTaskResults('e'), { done: value })
  })

  it('sets an exact ms TTL on all three keys, in the same round trip as the write', async () => {
    const p = prefix()
    const ttl = 60_000
    const ours = open({ prefix: p, ttl })
    await ours.beginExecution('e')
    await ours.beginExecutionTask('e', 'a')
    await ours.beginExecutionTask('e', 'b')
    await ours.commitExecutionTaskResult('e', 'a', 1)
    for (const key of [`${p}e`, `${p}e-transactions`, `${p}e-results`]) {
      const pttl = await io.pttl(key)
      assert.ok(pttl > ttl - 100 && pttl <= ttl, `${key}: PTTL ${pttl} not within 100 ms of ${ttl}`)
    }
    const odd = open({ prefix: p, ttl: 1234 })
    await odd.beginExecution('x')
    const pttl = await io.pttl(`${p}x`)
    assert.ok(pttl > 1134 && pttl <= 1234, `PTTL ${pttl} is not the exact ms ttl`)
  })

  it('sends each call as the commands of the contract (MONITOR)', async () => {
    // A server of its own: the shared one carries other suites' traffic, whose MONITOR
    // stream is large enough to trip ioredis's monitor mode.
    const own = await startRedisServer()
    const admin = new Redis(own.url, { maxRetriesPerRequest: 1 })
    const p = prefix()
    const ours = open({ prefix: p, ttl: 5000 }, own.url)
    const all = []
    try {
      await ours.isExecutionInProgress('warm-up')
      const monitor = await admin.monitor()
      monitor.on('monitor', (_time, args, source) => all.push({ args: args.map(String), source }))
      try {
        await ours.beginExecution('e')
        await ours.beginExecutionTask('e', 't')
        await ours.commitExecutionTaskResult('e', 't', { ok: true })
        await ours.disposeExecution('e')
        await new Promise((r) => setTimeout(r, 100))
      } finally {
        // disconnect(), not quit(): a QUIT reply inside the MONITOR stream confuses ioredis.
        monitor.disconnect()
      }
    } finally {
      await ours.close()
      admin.disconnect()
      await own.stop()
    }
    // Keep the commands of our store's connection only (MULTI and EXEC included).
    const ourSource = all.find(({ args }) => args.some((a) => a.startsWith(p)))?.source
    const seen = all.filter(({ source }) => source === ourSource).map(({ args }) => args)
    const upper = seen.map(([cmd, ...rest]) => [cmd.toUpperCase(), ...rest])
    assert.deepEqual(upper, [
      ['SET', `${p}e`, 'true', 'PX', '5000'],
      ['MULTI'],
      ['HSET', `${p}e-transactions`, 't', 'true'],
      ['PEXPIRE', `${p}e-transactions`, '5000'],
      ['EXEC'],
      ['MULTI'],
      ['HDEL', `${p}e-transactions`, 't'],
      ['HSET', `${p}e-results`, 't', '{"ok":true}'],
      ['PEXPIRE', `${p}e-results`, '5000'],
      ['EXEC'],
      ['DEL', `${p}e`, `${p}e-transactions`, `${p}e-results`],
    ])
  })

  it('makes every call one round trip', async () => {
    const proxy = await startCountingProxy(Number(new URL(redis.url).port))
    try {
      const ours = open({ prefix: prefix(), ttl: 1000 }, `redis://127.0.0.1:${proxy.port}`)
      await ours.isExecutionInProgress('warm-up')
      const calls = [
        () => ours.beginExecution('e'),
        () => ours.getExecutionTaskResults('e'),
        () => ours.getExecutionTaskResult('e', 't'),
        () => ours.isExecutionTaskInProgress('e', 't'),
        () => ours.beginExecutionTask('e', 't'),
        () => ours.tryBeginExecutionTask('e', 'u'),
        () => ours.commitExecutionTaskResult('e', 't', { v: 1 }),
        () => ours.isExecutionInProgress('e'),
        () => ours.disposeExecution('e'),
      ]
      for (const call of calls) {
        const before = proxy.writes
        await call()
        assert.equal(proxy.writes - before, 1, `${call} took ${proxy.writes - before} writes`)
      }
    } finally {
      await proxy.close()
    }
  })

  it('commits atomically: no observer sees a step neither in progress nor done', async () => {
    const p = prefix()
    const ours = open({ prefix: p })
    const watcher = io.duplicate()
    const tasks = Array.from({ length: 200 }, (_, i) => `t${i}`)
    await Promise.all(tasks.map((t) => ours.beginExecutionTask('e', t)))
    let stop = false
    let violations = 0
    const watch = (async () => {
      while (!stop) {
        const [[, inProgress], [, done]] = await watcher.multi().hgetall(`${p}e-transactions`).hgetall(`${p}e-results`).exec()
        for (const t of tasks) if (!(t in inProgress) && !(t in done)) violations++
      }
    })()
    await Promise.all(tasks.map((t) => ours.commitExecutionTaskResult('e', t, t)))
    stop = true
    await watch
    watcher.disconnect()
    assert.equal(violations, 0)
    assert.equal(Object.keys(await ours.getExecutionTaskResults('e')).length, 200)
  })

  it("rejects with WRONG_TYPE when a key holds someone else's data", async () => {
    const p = prefix()
    const ours = open({ prefix: p })
    await io.set(`${p}e-results`, 'not a hash')
    await io.hset(`${p}x`, 'f', 'v')
    await rejectsWith(ours.getExecutionTaskResult('e', 't'), 'WRONG_TYPE', /WRONGTYPE/)
    await rejectsWith(ours.getExecutionTaskResults('e'), 'WRONG_TYPE')
    await rejectsWith(ours.isExecutionInProgress('x'), 'WRONG_TYPE')
    assert.equal(await ours.isExecutionTaskInProgress('e', 't'), false)
  })

  it('names the key and field of corrupt stored JSON', async () => {
    const p = prefix()
    const ours = open({ prefix: p })
    await io.hset(`${p}e-results`, 'good', '1', 'broken', '{"unterminated":')
    await rejectsWith(ours.getExecutionTaskResult('e', 'broken'), 'CORRUPT_DATA', new RegExp(`key "${p}e-results" field "broken"`))
    await rejectsWith(ours.getExecutionTaskResults('e'), 'CORRUPT_DATA', /field "broken"/)
    assert.equal(await ours.getExecutionTaskResult('e', 'good'), 1)
    await io.hset(`${p}f-results`, 'a', '1,"injected":2')
    await rejectsWith(ours.getExecutionTaskResults('f'), 'CORRUPT_DATA', /field "a"/)
  })

  it('connects with { host, port, db } and uses that database', async () => {
    const { port } = new URL(redis.url)
    const p = prefix()
    const ours = open({ prefix: p }, { host: '127.0.0.1', port: Number(port), db: 3 })
    await ours.beginExecution('e')
    const db3 = new Redis(`${redis.url}/3`)
    assert.equal(await db3.get(`${p}e`), 'true')
    assert.equal(await io.get(`${p}e`), null)
    db3.disconnect()
  })

  it('defaults to REDIS_URL when no target is given', () => {
    const script = `const { createRedisStore } = require('./index.js');
      const s = createRedisStore(null, { prefix: ${JSON.stringify(prefix())} });
      s.beginExecution('e').then(() => s.isExecutionInProgress('e')).then((v) => { console.log(v); return s.close() })`
    const out = spawnSync(process.execPath, ['-e', script], { env: { ...process.env, REDIS_URL: redis.url }, encoding: 'utf8', timeout: 10_000 })
    assert.equal(out.stderr, '')
    assert.equal(out.stdout.trim(), 'true')
  })

  it('rejects a refused port with UNAVAILABLE, fast', async () => {
    const server = createServer()
    await new Promise((r) => server.listen(0, '127.0.0.1', r))
    const { port } = server.address()
    await new Promise((r) => server.close(r))
    const ours = open({ connectTimeout: 2000 }, `redis://127.0.0.1:${port}`)
    const started = Date.now()
    await rejectsWith(ours.isExecutionInProgress('e'), 'UNAVAILABLE', new RegExp(`127.0.0.1:${port}`))
    assert.ok(Date.now() - started < 2000)
  })

  /** Runs `test(url)` against a loopback server that accepts connections and never answers. */
  const withSilentServer = async (test) => {
    const sockets = []
    const silent = createServer((s) => sockets.push(s))
    await new Promise((r) => silent.listen(0, '127.0.0.1', r))
    try {
      await test(`redis://127.0.0.1:${silent.address().port}`)
    } finally {
      sockets.forEach((s) => s.destroy())
      silent.close()
    }
  }

  it('rejects within connectTimeout when the server accepts and never answers', () =>
    withSilentServer(async (url) => {
      const ours = open({ connectTimeout: 300, commandTimeout: 5000 }, url)
      const started = Date.now()
      await assert.rejects(ours.beginExecution('e'), (err) => ['UNAVAILABLE', 'TIMEOUT'].includes(err.code))
      const took = Date.now() - started
      assert.ok(took >= 250 && took < 1500, `took ${took} ms`)
    }))

  it('bounds every call by commandTimeout', () =>
    withSilentServer(async (url) => {
      const ours = open({ connectTimeout: 5000, commandTimeout: 300 }, url)
      const started = Date.now()
      await rejectsWith(ours.beginExecution('e'), 'TIMEOUT', /300 ms/)
      assert.ok(Date.now() - started < 1500)
    }))

  it('rejects a wrong password with AUTH, and recovers once the password is right', async () => {
    const secured = await startRedisServer({ args: ['--requirepass', 'right-pass'] })
    try {
      const wrong = open({}, `redis://:wrong-pass@127.0.0.1:${secured.port}`)
      await rejectsWith(wrong.beginExecution('e'), 'AUTH')
      const none = open({}, `redis://127.0.0.1:${secured.port}`)
      await rejectsWith(none.beginExecution('e'), 'AUTH')
      const admin = new Redis({ port: secured.port, password: 'right-pass', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
      try {
        await admin.config('SET', 'requirepass', 'wrong-pass')
      } finally {
        admin.disconnect()
      }
      await wrong.beginExecution('e')
      assert.equal(await wrong.isExecutionInProgress('e'), true)
    } finally {
      await secured.stop()
    }
  })

  it('rejects a password sent to a server that has none with AUTH at once, never retried nor quoted', async () => {
    const server = await startRedisServer({ args: ['--requirepass', 'old-pass'] })
    const admin = new Redis({ port: server.port, password: 'old-pass', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
    try {
      const bounded = { connectTimeout: 5000, commandTimeout: 5000, retry: { attempts: 20, minDelay: 100, maxDelay: 100 } }
      // A store that worked with its password: the server drops the password and our
      // connection. The reconnect is refused for good, not retried.
      const store = open(bounded, `redis://:old-pass@127.0.0.1:${server.port}`)
      await store.beginExecution('e')
      await admin.config('SET', 'requirepass', '')
      await admin.client('KILL', 'SKIPME', 'yes', 'TYPE', 'normal')
      let started = Date.now()
      await rejectsWith(store.isExecutionInProgress('e'), 'AUTH', /no password configured/)
      assert.ok(Date.now() - started < 1000, `retried for ${Date.now() - started} ms`)
      // A first connect: AUTH, saying the server has no password, never quoting it.
      for (const target of [`redis://:Sup3r-Secret@127.0.0.1:${server.port}`, { host: '127.0.0.1', port: server.port, password: 'Sup3r-Secret' }]) {
        started = Date.now()
        await assert.rejects(open(bounded, target).beginExecution('e'), (err) => {
          assert.equal(err.code, 'AUTH', err.message)
          assert.match(err.message, /the server has no password configured/)
          assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${server.port}`))
          assert.doesNotMatch(err.message, /Sup3r-Secret/)
          return true
        })
        assert.ok(Date.now() - started < 1000, `took ${Date.now() - started} ms`)
      }
      // A username the server does not know (ACL) is AUTH too.
      await admin.acl('SETUSER', 'known-user', 'on', '>pw', '~*', '+@all')
      await open(bounded, `redis://known-user:pw@127.0.0.1:${server.port}`).beginExecution('e')
      await rejectsWith(open(bounded, `redis://ghost:pw@127.0.0.1:${server.port}`).beginExecution('e'), 'AUTH', /WRONGPASS/)
    } finally {
      admin.disconnect()
      await server.stop()
    }
  })

  it("rejects a db beyond the server's `databases` with INVALID_INPUT at once, naming it and where it came from", async () => {
    const server = await startRedisServer({ args: ['--requirepass', 'Sup3r-Secret', '--databases', '4'] })
    try {
      const bounded = { connectTimeout: 5000, commandTimeout: 5000, retry: { attempts: 20, minDelay: 100, maxDelay: 100 } }
      const cases = [
        [`redis://:Sup3r-Secret@127.0.0.1:${server.port}/7`, /db 7 \(from the URL path "\/7"\)/],
        [{ host: '127.0.0.1', port: server.port, password: 'Sup3r-Secret', db: 9 }, /db 9 \(from option `db`\)/],
      ]
      for (const [target, names] of cases) {
        const started = Date.now()
        await assert.rejects(open(bounded, target).beginExecution('e'), (err) => {
          assert.equal(err.code, 'INVALID_INPUT', err.message)
          assert.match(err.message, names)
          assert.match(err.message, /`databases`/)
          assert.doesNotMatch(err.message, /Sup3r-Secret/)
          return true
        })
        assert.ok(Date.now() - started < 1000, `took ${Date.now() - started} ms`)
      }
      const inRange = open(bounded, `redis://:Sup3r-Secret@127.0.0.1:${server.port}/3`)
      await inRange.beginExecution('e')
      assert.equal(await inRange.isExecutionInProgress('e'), true)
    } finally {
      await server.stop()
    }
  })

  it('connects as an ACL user, and rejects a command the user may not run with AUTH (NOPERM)', async () => {
    const p = prefix()
    const user = `worker-${randomUUID().slice(0, 8)}`
    const reader = `reader-${randomUUID().slice(0, 8)}`
    await io.acl('SETUSER', user, 'on', '>s3cret', `~${p}*`, '+@all')
    await io.acl('SETUSER', reader, 'on', '>r3ad', `~${p}*`, '+get', '+hget', '+hgetall', '+ping')
    try {
      const { port } = new URL(redis.url)
      const worker = open({ prefix: p }, `redis://${user}:s3cret@127.0.0.1:${port}`)
      await worker.beginExecution('e')
      await worker.commitExecutionTaskResult('e', 't', { ok: 1 })
      const readOnly = open({ prefix: p }, { host: '127.0.0.1', port: Number(port), username: reader, password: 'r3ad' })
      assert.deepEqual(await readOnly.getExecutionTaskResult('e', 't'), { ok: 1 })
      await rejectsWith(readOnly.beginExecution('e2'), 'AUTH', /noperm.*'set' command/i)
      const wrongUser = open({ prefix: p }, `redis://${user}:nope@127.0.0.1:${port}`)
      await rejectsWith(wrongUser.isExecutionInProgress('e'), 'AUTH')
    } finally {
      await io.acl('DELUSER', user, reader)
    }
  })

  // The threads driver writes a call on the calling thread when nothing is in flight,
  // and leaves what the socket does not take to its task; calls made meanwhile queue
  // behind those bytes. A value far larger than a socket buffer makes the first write
  // block part-way.
  it('keeps calls in order when a large value fills the socket and small calls follow it', async () => {
    const store = open({ prefix: prefix() })
    await store.beginExecution('e')
    const big = { blob: 'x'.repeat(8 << 20) }
    const calls = [store.commitExecutionTaskResult('e', 'big', big)]
    for (let i = 0; i < 50; i++) {
      calls.push(store.commitExecutionTaskResult('e', 'n', { i }))
      calls.push(store.getExecutionTaskResult('e', 'n'))
    }
    calls.push(store.getExecutionTaskResult('e', 'big'))
    const results = await Promise.all(calls)
    for (let i = 0; i < 50; i++) assert.deepEqual(results[2 + 2 * i], { i }, `the get after commit ${i}`)
    assert.equal(results.at(-1).blob.length, big.blob.length)
    // One call at a time: each written by the calling thread (a large one only in part).
    for (let i = 0; i < 4; i++) {
      const value = { blob: String(i).repeat(3 << 20) }
      await store.commitExecutionTaskResult('e', `big${i}`, value)
      assert.deepEqual(await store.getExecutionTaskResult('e', 'n'), { i: i ? 100 + i - 1 : 49 })
      await store.commitExecutionTaskResult('e', 'n', { i: 100 + i })
      assert.deepEqual(await store.getExecutionTaskResult('e', `big${i}`), value)
      assert.deepEqual(await store.getExecutionTaskResult('e', 'n'), { i: 100 + i })
    }
    // Large values both ways at once, small calls between.
    const mixed = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        i % 2 ? store.getExecutionTaskResult('e', `big${i >> 1}`) : store.commitExecutionTaskResult('e', `m${i}`, { blob: 'y'.repeat(1 << 20) }),
      ),
    )
    mixed.forEach((r, i) => i % 2 && assert.equal(r.blob, String(i >> 1).repeat(3 << 20)))
  })

  it('runs on a unix socket (the threads driver), with a password and a database', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'durastate-unix-'))
    const socket = join(dir, 'redis.sock')
    const server = await startRedisServer({ args: ['--unixsocket', socket, '--unixsocketperm', '700', '--requirepass', 'sesame'] })
    try {
      const store = open({ prefix: prefix() }, `redis+unix://${socket}?db=3&pass=sesame`)
      await store.beginExecution('e')
      await store.commitExecutionTaskResult('e', 'step', { ok: true })
      assert.deepEqual(await store.getExecutionTaskResults('e'), { step: { ok: true } })
      const concurrent = await Promise.all(Array.from({ length: 50 }, (_, i) => store.isExecutionTaskInProgress('e', `t${i}`)))
      assert.deepEqual(new Set(concurrent), new Set([false]))
      const direct = new Redis({ path: socket, password: 'sesame', db: 3 })
      try {
        assert.ok((await direct.dbsize()) > 0, 'the writes went to database 3')
      } finally {
        direct.disconnect()
      }
      const wrong = open({ prefix: prefix() }, `redis+unix://${socket}?pass=nope`)
      await rejectsWith(wrong.isExecutionInProgress('e'), 'AUTH')
      const aof = open({ prefix: prefix(), durability: 'aof' }, `redis+unix://${socket}?pass=sesame`)
      await rejectsWith(aof.isExecutionInProgress('e'), 'UNAVAILABLE', /appendonly no/)
    } finally {
      await server.stop()
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it("durability 'aof': rejects a server that does not fsync every write, naming the settings", async () => {
    const ours = open({ durability: 'aof', prefix: prefix() })
    await rejectsWith(ours.beginExecution('e'), 'UNAVAILABLE', /appendonly no, appendfsync everysec/)
  })

  it("rejects a result over Redis's 512 MiB limit in UTF-8 with INVALID_INPUT at once, sending nothing", async () => {
    const store = open({ prefix: prefix(), commandTimeout: 60_000 })
    // 179M UTF-16 units (under the JS string limit), but 537 MB of UTF-8: over the
    // server's proto-max-bulk-len, which closes the connection on it.
    const result = '\u20ac'.repeat(179_000_000)
    await store.beginExecution('e')
    const received = async () => Number(/total_net_input_bytes:(\d+)/.exec(await io.info('stats'))[1])
    const before = await received()
    await rejectsWith(store.commitExecutionTaskResult('e', 't', result), 'INVALID_INPUT', /537000002 bytes .* over Redis's limit of 536870912 bytes/)
    // Not sent (before: sent, the connection reset, and sent again on each retry).
    assert.ok((await received()) - before < 100_000, 'nothing of the result reached the server')
    assert.deepEqual(await store.getExecutionTaskResults('e'), {})
  })

  it('throws INVALID_INPUT at creation for a bad target or options, without connecting', () => {
    const bad = [
      ['http://localhost:6379', {}],
      // An empty URL is a mistake (an unset variable), not "use REDIS_URL".
      ['', {}],
      ['not a url', {}],
      ['redis://h', { ttl: -1 }],
      ['redis://h', { ttl: 'soon' }],
      ['redis://h', { commandTimeout: 0 }],
      ['redis://h', { connectTimeout: Infinity }],
      [{ port: 70000 }, {}],
      [{ host: '' }, {}],
      [42, {}],
      ['redis://h', { retry: { minDelay: 10, maxDelay: 5 } }],
      ['redis://h', { retry: { attempts: 1000 } }],
      ['redis://h', { durability: 'disk' }],
    ]
    for (const [target, options] of bad) {
      assert.throws(
        () => createRedisStore(target, options),
        (err) => err.code === 'INVALID_INPUT',
        JSON.stringify(target),
      )
    }
    assert.throws(
      () => createRedisStore('redis://u:hunter2@h', { ttl: -5 }),
      (err) => !err.message.includes('hunter2'),
    )
    // A Postgres field in Redis fields would be ignored (and Redis reached): refused, naming it.
    for (const create of [() => createRedisStore({ host: 'h', user: 'app', database: 'app' }), () => createKvStore({ host: 'h', sslmode: 'require' })]) {
      assert.throws(create, (err) => err.code === 'INVALID_INPUT' && /is a field of a Postgres target/.test(err.message))
    }
  })
})

// A peer that vanishes without a word (a host down, a NAT or load balancer that forgot the
// flow) is found by TCP keepalive. The kernel shows it: a keepalive timer ("02" in the
// `tr` column of /proc/net/tcp) on every established connection of the store.
describe('Redis connections', { skip: process.platform !== 'linux' && 'reads /proc/net/tcp' }, () => {
  it('have TCP keepalive on (the kernel runs a keepalive timer on each)', async () => {
    const server = await startRedisServer()
    const store = createRedisStore(server.url, { prefix: 'keepalive:' })
    try {
      await store.beginExecution('e')
      const port = Number(new URL(server.url).port).toString(16).toUpperCase().padStart(4, '0')
      const ours = readFileSync('/proc/net/tcp', 'utf8')
        .split('\n')
        .slice(1)
        .map((line) => line.trim().split(/\s+/))
        // established (01), to the server's port: the store's side of its connection
        .filter((fields) => fields[2]?.endsWith(`:${port}`) && fields[3] === '01')
      assert.ok(ours.length >= 1, 'the store has a connection')
      for (const fields of ours) assert.equal(fields[5].split(':')[0], '02', `timer ${fields[5]}: no keepalive timer`)
    } finally {
      await store.close()
      await server.stop()
    }
  })
})

describe('Redis over the runtime socket, with a commandTimeout beyond a timer', () => {
  it('a commandTimeout above 2^31 - 1 ms arms no overflowing timer (which would fire every millisecond)', async () => {
    // A server that accepts and never answers: the call waits on its deadline timer.
    const sockets = []
    const silent = createServer((socket) => sockets.push(socket))
    await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve))
    const warnings = []
    const onWarning = (warning) => warnings.push(warning)
    process.on('warning', onWarning)
    const saved = process.env.DURASTATE_REDIS_DRIVER
    process.env.DURASTATE_REDIS_DRIVER = 'socket'
    let store
    try {
      store = createRedisStore(`redis://127.0.0.1:${silent.address().port}`, { commandTimeout: 2 ** 33, connectTimeout: 2 ** 32 })
    } finally {
      if (saved === undefined) delete process.env.DURASTATE_REDIS_DRIVER
      else process.env.DURASTATE_REDIS_DRIVER = saved
    }
    try {
      const call = store.isExecutionInProgress('e').then(
        () => 'answered',
        (err) => err.code,
      )
      await new Promise((resolve) => setTimeout(resolve, 300))
      assert.deepEqual(
        warnings.filter((w) => w.name === 'TimeoutOverflowWarning').map((w) => w.message),
        [],
      )
      // The server goes away: the call settles.
      for (const socket of sockets) socket.destroy()
      const outcome = await Promise.race([call, new Promise((resolve) => setTimeout(() => resolve('pending'), 5_000))])
      assert.notEqual(outcome, 'pending')
      await store.close()
    } finally {
      process.off('warning', onWarning)
      for (const socket of sockets) socket.destroy()
      silent.close()
    }
  })
})
