// Redis Cluster: the WorkerStore needs `keyLayout: 'hashtag'` there; the KV store lists
// and clears over every master and splits multi-key calls by slot; a workflow survives
// its slot being resharded under it, and the SIGKILL of its master (a replica takes
// over); a dead master without a replica fails calls on its slots within commandTimeout,
// never hangs them. 3-master clusters on loopback, stopped after.
// (The conformance and KV suites also run on a cluster: see helpers/backends.mjs.)
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import { Redis } from 'ioredis'
import { execFileSync } from 'node:child_process'
import diagnostics from 'node:diagnostics_channel'
import { createKvStore, createRedisStore, createStore } from '../index.js'
import { cli, startCluster } from './helpers/cluster.mjs'
import { createServer } from 'node:net'
import { testRedis, until } from './helpers/redis-server.mjs'

const test = (title, fn, timeout = 60_000) => it(title, { timeout }, fn)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

describe('Redis Cluster', { timeout: 180_000 }, () => {
  let cluster
  const stores = []
  const track = (store) => (stores.push(store), store)
  const workerStore = (options = {}) => track(createRedisStore({ cluster: cluster.urls }, { prefix: `cl:${randomUUID()}:`, keyLayout: 'hashtag', ...options }))

  before(async () => {
    cluster = await startCluster()
  })

  after(async () => {
    await Promise.all(stores.map((s) => s.close()))
    await cluster?.stop()
  })

  test('a WorkerStore without keyLayout hashtag, or with an empty hash tag, is INVALID_INPUT', async () => {
    for (const options of [{}, { keyLayout: 'compatible' }]) {
      assert.throws(
        () => createRedisStore({ cluster: cluster.urls }, options),
        (err) => {
          assert.equal(err.code, 'INVALID_INPUT')
          assert.match(err.message, /keyLayout: 'hashtag'/)
          return true
        },
      )
    }
    const invalid = [
      [{ cluster: [] }, { keyLayout: 'hashtag' }, /at least one node/],
      [{ cluster: ['rediss://127.0.0.1:1', 'redis://127.0.0.1:2'] }, { keyLayout: 'hashtag' }, /mix redis:\/\/ and rediss:\/\//],
      [{ cluster: cluster.urls }, { keyLayout: 'hashtag', sentinelTls: false }, /sentinelTls/],
      [{ cluster: cluster.urls, host: 'x' }, { keyLayout: 'hashtag' }, /either `cluster`/],
      [{ cluster: cluster.urls }, { keyLayout: 'tags' }, /keyLayout/],
      // An empty first {} is no hash tag: an execution's keys would fall in several slots.
      [{ cluster: cluster.urls }, { keyLayout: 'hashtag', prefix: 'hp{}:' }, /empty \{\}/],
    ]
    for (const [target, options, pattern] of invalid) {
      assert.throws(
        () => createRedisStore(target, options),
        (err) => err.code === 'INVALID_INPUT' && pattern.test(err.message),
      )
    }
    const store = workerStore()
    await assert.rejects(store.beginExecution('}x'), (err) => err.code === 'INVALID_INPUT' && /hash tag/.test(err.message))
    await store.beginExecution('a}b')
    assert.equal(await store.isExecutionInProgress('a}b'), true)
  })

  test('an error the server answers (OOM) is the answer at once, not retried as a dropped connection', async () => {
    const kv = track(
      createKvStore(
        { cluster: cluster.urls },
        { prefix: `oom:${randomUUID()}:`, commandTimeout: 20_000, retry: { attempts: 10, minDelay: 200, maxDelay: 2_000 } },
      ),
    )
    await kv.set('default', 'warm', 1)
    const setAll = (value) => Promise.all(cluster.ports.map((port) => cli(port, 'config', 'set', 'maxmemory', value)))
    await Promise.all(cluster.ports.map((port) => cli(port, 'config', 'set', 'maxmemory-policy', 'noeviction')))
    await setAll('1')
    try {
      const started = Date.now()
      await assert.rejects(kv.set('default', 'k', 'v'.repeat(100)), (err) => /OOM/.test(err.message))
      assert.ok(Date.now() - started < 2_000, `rejected after ${Date.now() - started} ms`)
    } finally {
      await setAll('0')
    }
    assert.equal(await kv.set('default', 'k', 1), true)
  })

  test('a redis+cluster:// URL reaches the cluster: createStore, createRedisStore, the KV store and the CLI', async () => {
    const url = `redis+cluster://${cluster.urls.map((u) => new URL(u).host).join(',')}`
    for (const create of [createStore, createRedisStore]) {
      assert.throws(
        () => create(url),
        (err) => err.code === 'INVALID_INPUT' && /keyLayout/.test(err.message),
      )
    }
    const prefix = `url:${randomUUID()}:`
    const store = track(createStore(url, { prefix, keyLayout: 'hashtag' }))
    await store.beginExecution('e')
    await store.commitExecutionTaskResult('e', 'a', { ok: true })
    const redisStore = track(createRedisStore(url, { prefix, keyLayout: 'hashtag' }))
    assert.deepEqual(await redisStore.getExecutionTaskResults('e'), { a: { ok: true } })
    const kv = track(createKvStore(url, { prefix: `${prefix}kv:` }))
    await kv.set('default', 'k', 1)
    assert.deepEqual(await kv.keys('default'), ['k'])
    const bin = new URL('../bin/durastate.mjs', import.meta.url).pathname
    const listed = JSON.parse(execFileSync(process.execPath, [bin, 'inspect', url, '--prefix', prefix, '--json'], { encoding: 'utf8', timeout: 20_000 }))
    const execution = (listed.executions ?? listed).find((e) => e.id === '{e}')
    assert.ok(execution, `inspect lists the execution: ${JSON.stringify(listed)}`)
    assert.equal(execution.stepsDone, 1)
  })

  test('runs a workflow with every execution in one slot', async () => {
    const store = workerStore()
    for (let n = 0; n < 20; n++) {
      const id = `wf-${n}`
      await store.beginExecution(id)
      assert.equal(await store.tryBeginExecutionTask(id, 'a'), true)
      assert.equal(await store.tryBeginExecutionTask(id, 'a'), false)
      await store.commitExecutionTaskResult(id, 'a', { n })
      assert.deepEqual(await store.getExecutionTaskResults(id), { a: { n } })
      await store.disposeExecution(id)
      assert.equal(await store.isExecutionInProgress(id), false)
    }
  })

  test("durability 'aof' checks every master: accepted when each fsyncs every write, refused naming one that does not", async () => {
    const masters = []
    for (const port of cluster.ports) if ((await cli(port, 'role')).startsWith('master')) masters.push(port)
    const setAll = async (appendonly, appendfsync) => {
      for (const port of masters) {
        await cli(port, 'config', 'set', 'appendonly', appendonly)
        await cli(port, 'config', 'set', 'appendfsync', appendfsync)
      }
    }
    try {
      await setAll('yes', 'always')
      const store = workerStore({ durability: 'aof' })
      await store.beginExecution('e')
      assert.equal(await store.isExecutionInProgress('e'), true)
      await cli(masters[1], 'config', 'set', 'appendfsync', 'everysec')
      const refused = workerStore({ durability: 'aof', retry: { attempts: 0 } })
      await assert.rejects(refused.isExecutionInProgress('e'), (err) => {
        assert.equal(err.code, 'UNAVAILABLE')
        assert.match(err.message, new RegExp(`cluster node 127\\.0\\.0\\.1:${masters[1]} .*appendfsync everysec`))
        return true
      })
    } finally {
      await setAll('no', 'everysec')
    }
  })

  test('the hashtag layout works on a single server too, keys as documented', async () => {
    const redis = await testRedis()
    const io = new Redis(redis.url, { maxRetriesPerRequest: 1 })
    try {
      const prefix = `ht:${randomUUID()}:`
      const store = track(createRedisStore(redis.url, { prefix, keyLayout: 'hashtag' }))
      await store.beginExecution('e1')
      await store.beginExecutionTask('e1', 'b')
      await store.commitExecutionTaskResult('e1', 'a', 1)
      assert.deepEqual((await io.keys(`${prefix}*`)).sort(), [`${prefix}{e1}`, `${prefix}{e1}-results`, `${prefix}{e1}-transactions`])
      assert.deepEqual(await store.getExecutionTaskResults('e1'), { a: 1 })
      // The claim stores a token of its own (not "true"), so a resent claim stays exact.
      assert.equal(await store.tryBeginExecutionTask('e1', 'c'), true)
      assert.equal(await store.tryBeginExecutionTask('e1', 'c'), false)
      assert.match(await io.hget(`${prefix}{e1}-transactions`, 'c'), /^claim:[0-9a-f]{16}:\d+$/)
      assert.equal(await store.isExecutionTaskInProgress('e1', 'c'), true)
    } finally {
      io.disconnect()
      await redis.release()
    }
  })

  test('KV: 200 keys over every master, listed once, read and deleted by slot', async () => {
    const prefix = `kvc:${randomUUID()}:`
    const kv = track(createKvStore({ cluster: cluster.urls }, { prefix }))
    const keys = Array.from({ length: 200 }, (_, i) => `k${i}`)
    for (const key of keys) await kv.set('default', key, { key })
    const perNode = await Promise.all(
      cluster.ports.map(async (port) => {
        const found = await cli(port, '--scan', '--pattern', `${prefix}*`)
        return found.split('\n').filter(Boolean).length
      }),
    )
    assert.equal(
      perNode.reduce((a, b) => a + b, 0),
      200,
    )
    assert.ok(
      perNode.every((n) => n > 0),
      `keys on every master: ${perNode}`,
    )
    const listed = await kv.keys('default')
    assert.equal(listed.length, 200)
    assert.deepEqual([...listed].sort(), [...keys].sort())
    assert.deepEqual((await kv.keys('default', 'k1?')).sort(), Array.from({ length: 10 }, (_, i) => `k1${i}`).sort())
    const all = await kv.getAll('default')
    assert.equal(Object.keys(all).length, 200)
    assert.deepEqual(all.k42, { key: 'k42' })
    const many = await kv.getMany('default', ['k1', 'k2', 'missing', 'k199'])
    assert.deepEqual(many, { k1: { key: 'k1' }, k2: { key: 'k2' }, k199: { key: 'k199' } })
    await kv.merge('default', 'k7', { extra: true })
    assert.deepEqual(await kv.get('default', 'k7'), { key: 'k7', extra: true })
    await kv.setMany('default', { m1: 1, m2: 2, m3: 3 })
    assert.deepEqual(await kv.getMany('default', ['m1', 'm2', 'm3']), { m1: 1, m2: 2, m3: 3 })
    assert.equal(await kv.deleteMany('default', keys.slice(0, 100)), 100)
    assert.equal((await kv.keys('default')).length, 103)
    await kv.clear('default')
    assert.deepEqual(await kv.keys('default'), [])
  })

  test('a listing during a resharding finds every key: a slot moved to a master already listed, then clear', async () => {
    const ports = [...cluster.ports].sort((a, b) => a - b) // the order a listing walks the masters
    const [first, middle, last] = ports
    let tag
    for (const candidate of 'abcdefghijklmnopqrstuvwxyz') {
      if ((await cluster.owner(await cluster.keyslot(`{${candidate}}`))) === last) {
        tag = candidate
        break
      }
    }
    const slot = await cluster.keyslot(`{${tag}}`)
    const kv = track(createKvStore({ cluster: cluster.urls }, { prefix: `rs:${randomUUID()}:`, commandTimeout: 15_000 }))
    const keys = Array.from({ length: 20 }, (_, i) => `{${tag}}${i}`).sort()
    await kv.setMany('default', Object.fromEntries(keys.map((key) => [key, 1])))
    // The listing waits on the middle master while the slot moves from the last to the first.
    await cli(middle, 'client', 'pause', '1500', 'all')
    const listing = kv.keys('default')
    await new Promise((r) => setTimeout(r, 200))
    await cluster.migrateSlot(slot, last, first)
    assert.deepEqual(await listing, keys)
    assert.equal(await cluster.owner(slot), first)
    assert.equal(await kv.clear('default'), true)
    assert.deepEqual(await kv.keys('default'), [])
  })

  test('a workflow keeps going while its slot is resharded to another master', async () => {
    // Default options: a commit (two keys) waits while the slot's keys are split over two
    // nodes for as long as its commandTimeout lasts (it gave up after the default retry
    // budget's ~350 ms before, which CI on a loaded machine outlasted).
    const store = workerStore()
    const id = `mig-${randomUUID()}`
    const slot = await cluster.keyslot(`{${id}}`)
    await store.beginExecution(id)
    let running = true
    let steps = 0
    const failures = []
    const workflow = (async () => {
      while (running) {
        const task = `s${steps}`
        try {
          await store.beginExecutionTask(id, task)
          await store.commitExecutionTaskResult(id, task, { steps })
          assert.deepEqual(await store.getExecutionTaskResult(id, task), { steps })
          steps++
        } catch (err) {
          failures.push(err)
          await new Promise((r) => setTimeout(r, 20))
        }
      }
    })()
    const ports = cluster.ports
    for (let round = 0; round < 3; round++) {
      const from = await cluster.owner(slot)
      const to = ports[(ports.indexOf(from) + 1) % ports.length]
      await cluster.migrateSlot(slot, from, to, { batch: 1, pauseMs: 50 })
      assert.equal(await cluster.owner(slot), to)
      await new Promise((r) => setTimeout(r, 200))
    }
    running = false
    await workflow
    assert.deepEqual(
      failures.map((e) => `${e.code}: ${e.message}`),
      [],
    )
    const results = await store.getExecutionTaskResults(id)
    assert.equal(Object.keys(results).length, steps)
    assert.ok(steps > 5, `steps done: ${steps}`)
  })

  test('node connections the servers close (CLIENT KILL on every node) are made again: calls in flight and after succeed', async () => {
    const kv = track(createKvStore({ cluster: cluster.urls }, { mounts: { m: {} }, prefix: `ck:${randomUUID()}:` }))
    const keys = Array.from({ length: 60 }, (_, i) => `key${i}`)
    await kv.setMany('m', Object.fromEntries(keys.map((k, i) => [k, i])))
    const killAll = () => Promise.all(cluster.ports.map((port) => cli(port, 'CLIENT', 'KILL', 'TYPE', 'normal')))
    for (let round = 0; round < 3; round++) {
      // Calls in flight while every node connection is closed: redis-rs connects again and retries them.
      const inFlight = Promise.all(keys.map((k) => kv.get('m', k)))
      await killAll()
      assert.deepEqual(
        await inFlight,
        keys.map((_, i) => i),
      )
      // And calls made after the drop, on fresh node connections.
      assert.deepEqual(
        await Promise.all(keys.map((k) => kv.get('m', k))),
        keys.map((_, i) => i),
      )
      assert.equal(await kv.set('m', `after${round}`, round), true)
    }
    assert.equal(Object.keys(await kv.getMany('m', ['after0', 'after1', 'after2'])).length, 3)
  })

  test('a multi-key write while its slot is migrated (ASK, then TRYAGAIN) waits for the migration, and says so when it gives up', async () => {
    const prefix = `mig:${randomUUID()}:`
    const slot = await cluster.keyslot('{mt}')
    const from = await cluster.owner(slot)
    const to = cluster.ports.find((port) => port !== from)
    const keys = Array.from({ length: 10 }, (_, i) => `{mt}${i}`)
    const kv = track(createKvStore({ cluster: cluster.urls }, { prefix, commandTimeout: 10_000, retry: { attempts: 100, minDelay: 20, maxDelay: 100 } }))
    await kv.setMany('default', Object.fromEntries(keys.map((key) => [key, 0])))
    // Half of the slot's keys moved: the source answers ASK for the new keys, the target
    // TRYAGAIN (a transaction on keys it does not all have), until the migration ends.
    await cli(to, 'cluster', 'setslot', String(slot), 'importing', await cli(from, 'cluster', 'myid'))
    await cli(from, 'cluster', 'setslot', String(slot), 'migrating', await cli(to, 'cluster', 'myid'))
    const moved = keys.slice(0, 5).map((key) => `${prefix}${key}`)
    await cli(from, 'migrate', '127.0.0.1', String(to), '', '0', '5000', 'keys', ...moved)
    // It waits as long as its commandTimeout lasts, whatever its retry budget (TRYAGAIN ran
    // nothing), then says why it gave up, before the TIMEOUT.
    const impatient = track(createKvStore({ cluster: cluster.urls }, { prefix, commandTimeout: 1_500, retry: { attempts: 0 } }))
    const started = Date.now()
    await assert.rejects(impatient.setMany('default', { '{mt}new1': 1, '{mt}new2': 2 }), (err) => {
      assert.equal(err.code, 'UNAVAILABLE')
      assert.match(err.message, new RegExp(`^slot ${slot} of cluster .* is being migrated to another node.*: try again$`))
      return true
    })
    assert.ok(Date.now() - started >= 1_000, `gave up after ${Date.now() - started} ms`)
    // A write with time left waits, more than 16 ASKs, until the migration ends.
    const writing = kv.setMany('default', { '{mt}new3': 3, '{mt}new4': 4 })
    await sleep(3_000)
    await cluster.migrateSlot(slot, from, to)
    assert.equal(await writing, true)
    assert.deepEqual(await kv.getMany('default', ['{mt}new1', '{mt}new3', '{mt}new4', '{mt}9']), { '{mt}new3': 3, '{mt}new4': 4, '{mt}9': 0 })
  })

  test('seeds that never answer reject UNAVAILABLE within connectTimeout, not retried, as a single server', async () => {
    // A server that accepts the connection and never says a word (as a hung node does).
    const sockets = new Set()
    const silent = createServer((socket) => {
      sockets.add(socket)
      socket.on('close', () => sockets.delete(socket))
    })
    await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve))
    const url = `redis://127.0.0.1:${silent.address().port}`
    try {
      for (const commandTimeout of [3_000, 5_000]) {
        const kv = track(createKvStore({ cluster: [url] }, { connectTimeout: 800, commandTimeout }))
        const started = Date.now()
        await assert.rejects(kv.get('default', 'k'), (err) => {
          assert.equal(err.code, 'UNAVAILABLE', err.message)
          assert.match(err.message, /no connection within connectTimeout \(800 ms\)/)
          return true
        })
        const took = Date.now() - started
        assert.ok(took < 2_000, `commandTimeout ${commandTimeout}: rejected after ${took} ms`)
      }
    } finally {
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => silent.close(resolve))
    }
  })

  test('a dead master fails calls on its slots within commandTimeout; others keep working', async () => {
    const store = workerStore({ commandTimeout: 1_500, connectTimeout: 500 })
    const victim = cluster.ports[2]
    let deadId
    let liveId
    for (let n = 0; !(deadId && liveId); n++) {
      const owner = await cluster.owner(await cluster.keyslot(`{x${n}}`))
      if (owner === victim) deadId ??= `x${n}`
      else liveId ??= `x${n}`
    }
    await store.beginExecution(deadId)
    await store.beginExecution(liveId)
    await cluster.killNode(victim)
    const started = Date.now()
    await assert.rejects(store.isExecutionInProgress(deadId), (err) => ['TIMEOUT', 'UNAVAILABLE'].includes(err.code))
    assert.ok(Date.now() - started < 4_000, `rejected after ${Date.now() - started} ms`)
    assert.equal(await store.isExecutionInProgress(liveId), true)
    // Listing needs every master: it rejects, bounded, rather than listing part of the keys.
    const kv = track(createKvStore({ cluster: cluster.urls }, { commandTimeout: 1_500 }))
    const listing = Date.now()
    await assert.rejects(kv.keys('default'), (err) => ['TIMEOUT', 'UNAVAILABLE'].includes(err.code))
    assert.ok(Date.now() - listing < 4_000, `listing rejected after ${Date.now() - listing} ms`)
  })
})

// With `cluster-require-full-coverage no`, the masters that are up keep serving their slots
// while another is down (with the default, the whole cluster refuses calls once the dead
// master is marked failed, after `cluster-node-timeout`).
describe('Redis Cluster with a master down, the others serving', { timeout: 180_000 }, () => {
  let cluster
  const stores = []
  const track = (store) => (stores.push(store), store)

  before(async () => {
    cluster = await startCluster({ args: ['--cluster-require-full-coverage', 'no'] })
  })

  after(async () => {
    await Promise.all(stores.map((s) => s.close()))
    await cluster?.stop()
  })

  test('KV: a master that refuses the login (AUTH) counts as one down for the entry count: new keys on the other masters are written', async () => {
    // (A node whose certificate no longer verifies, TLS, is the same case.)
    const victim = cluster.ports[1]
    let live
    for (let n = 0; !live; n++) {
      if ((await cluster.owner(await cluster.keyslot(`{a${n}}`))) !== victim) live = `a${n}`
    }
    const key = (name) => `{${live}}${name}`
    const options = { commandTimeout: 1_000, connectTimeout: 500, mounts: { m: { prefix: `auth:${randomUUID()}:`, maxEntries: 8 } } }
    const a = track(createKvStore({ cluster: cluster.urls }, options))
    await a.set('m', key('a'), 1) // counted with every master in
    await cli(victim, 'config', 'set', 'requirepass', 'rotated')
    try {
      await cli(victim, '-a', 'rotated', '--no-auth-warning', 'client', 'kill', 'type', 'normal')
      await sleep(1_100) // the count is stale: the next new key needs one, which the victim refuses
      assert.equal(await a.set('m', key('b'), 1), true)
      assert.equal(await a.setMany('m', { [key('c')]: 1 }), true)
      // A store that never counted the mount cannot check its limit: it says why.
      const b = track(createKvStore({ cluster: cluster.urls }, options))
      await assert.rejects(b.set('m', key('d'), 1), (err) => {
        assert.equal(err.code, 'AUTH', err.message)
        assert.match(err.message, /entry count \(maxEntries\) needs every master/)
        return true
      })
    } finally {
      await cli(victim, '-a', 'rotated', '--no-auth-warning', 'config', 'set', 'requirepass', '')
    }
  })

  test("KV: new keys on the other masters' slots are written, counted from the last count; the count is exact again once every master answers", async () => {
    const victim = cluster.ports[0]
    let live
    let dead
    for (let n = 0; !(live && dead); n++) {
      const owner = await cluster.owner(await cluster.keyslot(`{t${n}}`))
      if (owner === victim) dead ??= `t${n}`
      else live ??= `t${n}`
    }
    const key = (name) => `{${live}}${name}`
    const options = { commandTimeout: 1_000, connectTimeout: 500, mounts: { m: { prefix: `down:${randomUUID()}:`, maxEntries: 8 } } }
    const a = track(createKvStore({ cluster: cluster.urls }, options))
    await a.set('m', key('a'), 1)
    await a.set('m', `{${dead}}x`, 1) // 2 entries, counted
    const pid = Number((await cli(victim, 'info', 'server')).match(/process_id:(\d+)/)[1])
    const limit = (err) => err.code === 'ENTRY_LIMIT' && /\(9 > 8\)/.test(err.message)
    // The victim stops answering (a hung master, or one whose failure is not detected yet).
    process.kill(pid, 'SIGSTOP')
    try {
      await sleep(1_100) // the count is stale: the next new key needs one, which times out
      assert.equal(await a.set('m', key('b'), 1), true)
      assert.equal(await a.setMany('m', { [key('c')]: 1, [key('d')]: 1 }), true)
      assert.equal(await a.merge('m', key('e'), { x: 1 }), true)
      await sleep(1_100)
      // The last count is kept: a write does not wait for a count that will time out.
      const started = Date.now()
      assert.equal(await a.set('m', key('f'), 1), true)
      assert.ok(Date.now() - started < 900, `written after ${Date.now() - started} ms`)
      assert.equal(await a.set('m', key('g'), 1), true) // 8 entries
      await assert.rejects(a.set('m', key('h'), 1), limit)
      // A process that never counted the mount cannot check its limit.
      const b = track(createKvStore({ cluster: cluster.urls }, options))
      await assert.rejects(b.set('m', key('h'), 1), (err) => {
        assert.ok(['UNAVAILABLE', 'TIMEOUT'].includes(err.code), err.message)
        assert.match(err.message, /entry count \(maxEntries\) needs every master/)
        return true
      })
    } finally {
      process.kill(pid, 'SIGCONT')
    }
    await until('the victim answers', async () => (await cli(victim, 'ping')) === 'PONG', 10_000)
    // Every master answers again: the count is exact, with what another process did.
    const b = track(createKvStore({ cluster: cluster.urls }, options))
    assert.equal(await b.deleteMany('m', [key('a'), key('b'), key('c')]), 3) // 5 entries
    await sleep(1_100)
    assert.equal(await a.set('m', key('h'), 1), true) // the kept count (8) would refuse it
    assert.equal(await b.setMany('m', { [key('i')]: 1, [key('j')]: 1 }), true) // 8 entries
    await sleep(1_100)
    await assert.rejects(a.set('m', key('k'), 1), limit)
    // The victim dies (refused connections): the other slots still take new keys.
    assert.equal(await a.deleteMany('m', [key('i'), key('j')]), 2) // 6 entries
    await cluster.killNode(victim)
    await sleep(1_100)
    assert.equal(await a.set('m', key('k'), 1), true)
    assert.equal(await a.setMany('m', { [key('l')]: 1 }), true)
    await assert.rejects(a.set('m', key('n'), 1), limit)
    assert.deepEqual(await a.getMany('m', [key('k'), key('l')]), { [key('k')]: 1, [key('l')]: 1 })
  })
})

describe('Redis Cluster failover', { timeout: 180_000 }, () => {
  let cluster
  let store

  before(async () => {
    cluster = await startCluster({ masters: 3, replicas: 1 })
  })

  after(async () => {
    await store?.close()
    await cluster?.stop()
  })

  test('a workflow keeps going through the SIGKILL of its master', async () => {
    store = createRedisStore(
      { cluster: cluster.urls },
      {
        prefix: `fo:${randomUUID()}:`,
        keyLayout: 'hashtag',
        commandTimeout: 20_000,
        connectTimeout: 1_000,
        retry: { attempts: 40, minDelay: 50, maxDelay: 400 },
      },
    )
    const id = `fo-${randomUUID()}`
    await store.beginExecution(id)
    // A KV store that knows the map from before the kill: its listing after it must not
    // ask the dead master.
    const kv = createKvStore(
      { cluster: cluster.urls },
      { prefix: `fo-kv:${randomUUID()}:`, commandTimeout: 20_000, retry: { attempts: 40, minDelay: 50, maxDelay: 400 } },
    )
    const keys = ['{a}1', '{b}1', '{c}1', '{d}1', '{e}1', '{f}1']
    await kv.setMany('default', Object.fromEntries(keys.map((key) => [key, 1])))
    const acked = []
    let running = true
    const failures = []
    const workflow = (async () => {
      for (let n = 0; running; n++) {
        try {
          await store.beginExecutionTask(id, `s${n}`)
          await store.commitExecutionTaskResult(id, `s${n}`, { n })
          acked.push({ task: `s${n}`, at: Date.now() })
        } catch (err) {
          failures.push(err)
        }
        await new Promise((r) => setTimeout(r, 5))
      }
    })()
    await new Promise((r) => setTimeout(r, 300))
    const victim = await cluster.owner(await cluster.keyslot(`{${id}}`))
    await cluster.killNode(victim)
    const killedAt = Date.now()
    let promoted
    // Until a replica owns the slot and the workflow has made progress on it (bounded).
    for (const deadline = Date.now() + 45_000; Date.now() < deadline;) {
      promoted = await cluster.owner(await cluster.keyslot(`{${id}}`)).catch(() => undefined)
      const stepsSince = acked.filter((a) => a.at > killedAt).length
      if (promoted && promoted !== victim && stepsSince >= 10) break
      await new Promise((r) => setTimeout(r, 100))
    }
    running = false
    await workflow
    assert.notEqual(promoted, victim, 'a replica took over')
    assert.deepEqual(
      failures.map((e) => `${e.code}: ${e.message}`),
      [],
    )
    const after = acked.filter((a) => a.at > killedAt)
    assert.ok(after.length > 5, `steps after the kill: ${after.length}`)
    // Replication is asynchronous: a step acknowledged just before the kill may be lost;
    // every step acknowledged after the failover is there.
    const results = await store.getExecutionTaskResults(id)
    for (const { task } of after) assert.ok(task in results, `${task} is stored`)
    // A listing after the failover walks the new masters.
    const started = Date.now()
    assert.deepEqual(await kv.keys('default'), keys)
    assert.ok(Date.now() - started < 5_000, `listed after ${Date.now() - started} ms`)
    await kv.close()
  })
})

// A master that hangs (SIGSTOP: a paused process or VM, a partition) keeps its connections
// open: no redirect and no dropped connection tells the store that the cluster failed it
// over. A call that times out there reads the slot map again, so the calls after it go to
// the replica that took over.
describe('Redis Cluster with a hung master failed over', { timeout: 180_000 }, () => {
  let cluster
  let store

  before(async () => {
    cluster = await startCluster({ masters: 3, replicas: 1 })
  })

  after(async () => {
    await store?.close()
    await cluster?.stop()
  })

  test('calls go to the replica that replaced a hung master after one commandTimeout, not after the connection is given up', async () => {
    const commandTimeout = 4_000
    store = createRedisStore({ cluster: cluster.urls }, { prefix: `hung:${randomUUID()}:`, keyLayout: 'hashtag', commandTimeout, connectTimeout: 1_000 })
    // An execution on a master other than the node `cluster.owner` asks (the first port).
    let id
    let victim
    for (let n = 0; !id; n++) {
      const owner = await cluster.owner(await cluster.keyslot(`{h${n}}`))
      if (owner !== cluster.ports[0]) [id, victim] = [`h${n}`, owner]
    }
    const slot = await cluster.keyslot(`{${id}}`)
    await store.beginExecution(id)
    assert.equal(await store.isExecutionInProgress(id), true)
    const pid = Number((await cli(victim, 'info', 'server')).match(/process_id:(\d+)/)[1])
    const calls = []
    let running = true
    let failedOverAt
    process.kill(pid, 'SIGSTOP')
    try {
      const stoppedAt = Date.now()
      const load = (async () => {
        while (running) {
          const started = Date.now()
          const ok = await store.isExecutionInProgress(id).then(
            (v) => v === true,
            (err) => (assert.ok(['TIMEOUT', 'UNAVAILABLE'].includes(err.code), `${err.code}: ${err.message}`), false),
          )
          calls.push({ started, ended: Date.now(), ok })
          await sleep(200)
        }
      })()
      for (const deadline = Date.now() + 45_000; Date.now() < deadline && failedOverAt === undefined;) {
        const owner = await cluster.owner(slot).catch(() => undefined)
        if (owner !== undefined && owner !== victim) failedOverAt = Date.now()
        else await sleep(100)
      }
      assert.ok(failedOverAt, `no replica took slot ${slot} over`)
      // Until a call succeeds, or three commandTimeouts, where the connection to the hung
      // master was given up before.
      while (!calls.some((c) => c.ok && c.ended > failedOverAt) && Date.now() < failedOverAt + 3 * commandTimeout + 2_000) {
        await sleep(100)
      }
      running = false
      await load
      const first = calls.find((c) => c.ok && c.ended > failedOverAt)
      const shown = calls.map((c) => `${c.started - stoppedAt}-${c.ended - stoppedAt}:${c.ok ? 'ok' : 'failed'}`).join(' ')
      assert.ok(first, `no call succeeded after the failover at ${failedOverAt - stoppedAt} ms: ${shown}`)
      // The call in flight at the failover times out (at most one commandTimeout), the map
      // is read again, and the next call goes to the new master.
      const took = first.ended - failedOverAt
      assert.ok(took < commandTimeout + 1_500, `first success ${took} ms after the failover (at ${failedOverAt - stoppedAt} ms): ${shown}`)
    } finally {
      running = false
      process.kill(pid, 'SIGCONT')
    }
    // The old master comes back as a replica: nothing was lost on the new master.
    assert.equal(await store.isExecutionInProgress(id), true)
  }, 90_000)
})

// Every call that times out (or whose node fails) asks for the slot map again, and each
// read opens a connection to every seed and master: reads are spaced (250 ms from the end
// of one to the start of the next), or a cluster in trouble would get them back to back.
describe('Redis Cluster slot map reads', { timeout: 120_000 }, () => {
  test('calls timing out on a paused master read the slot map at most once per 250 ms, and do read it', async () => {
    const cluster = await startCluster({ masters: 3 })
    const store = createRedisStore(
      { cluster: cluster.urls },
      { prefix: `gap:${randomUUID()}:`, keyLayout: 'hashtag', commandTimeout: 100, retry: { attempts: 0 } },
    )
    let victim
    let id
    for (let n = 0; !id; n++) {
      const owner = await cluster.owner(await cluster.keyslot(`{g${n}}`))
      if (owner !== cluster.ports[0]) [id, victim] = [`g${n}`, owner]
    }
    const live = cluster.ports.filter((port) => port !== victim)
    /** `CLUSTER SLOTS` calls the live nodes have served. */
    const reads = async () => {
      let total = 0
      for (const port of live) total += Number((await cli(port, 'info', 'commandstats')).match(/cmdstat_cluster\|slots:calls=(\d+)/)?.[1] ?? 0)
      return total
    }
    const pid = Number((await cli(victim, 'info', 'server')).match(/process_id:(\d+)/)[1])
    try {
      await store.beginExecution(id)
      const before = await reads()
      // 16 callers whose calls time out one after another for 1.2 s (below the cluster's
      // node timeout of 2 s: no failover), each timeout asking for a read.
      const stoppedAt = Date.now()
      process.kill(pid, 'SIGSTOP')
      const codes = []
      try {
        await Promise.all(
          Array.from({ length: 16 }, async (_, i) => {
            await sleep(i * 6)
            while (Date.now() - stoppedAt < 1_200) {
              codes.push(
                await store.isExecutionInProgress(id).then(
                  () => 'ok',
                  (err) => err.code,
                ),
              )
            }
          }),
        )
      } finally {
        process.kill(pid, 'SIGCONT')
      }
      const elapsed = Date.now() - stoppedAt
      await sleep(300) // (a read under way ends)
      const read = (await reads()) - before
      const timeouts = codes.filter((code) => code === 'TIMEOUT').length
      assert.ok(timeouts >= 50, `${timeouts} timeouts: ${[...new Set(codes)]}`)
      // Each read asks both live masters (the first answer wins, so one or two count it).
      const most = 2 * (Math.ceil((elapsed + 300) / 250) + 1)
      assert.ok(read >= 1 && read <= most, `${read} CLUSTER SLOTS for ${timeouts} timeouts in ${elapsed} ms (at most ${most})`)
      // The store works on once the master answers again.
      await until('the paused master answers', async () => (await store.isExecutionInProgress(id)) === true, 10_000)
    } finally {
      process.kill(pid, 'SIGCONT')
      await store.close()
      await cluster.stop()
    }
  }, 90_000)
})

// The `durastate:connection` events of a Cluster store (address: its first seed node): a
// node that fails is one `drop`, and one `reconnect` once a connection to it (or to the
// master that replaced it) opens again; never a drop per call retry or one per slot map
// read. A node that only times out keeps its connection: as on a single server, no drop
// (or, were one given, a reconnect once calls succeed again).
describe('Redis Cluster connection events', { timeout: 180_000 }, () => {
  /** The events of the stores whose first seed is `port`, from now on. */
  const record = (port) => {
    const events = []
    const listener = (event) => {
      if (event.backend === 'cluster' && event.address === `127.0.0.1:${port}`) events.push({ ...event, at: Date.now() })
    }
    diagnostics.subscribe('durastate:connection', listener)
    return { events, stop: () => diagnostics.unsubscribe('durastate:connection', listener) }
  }
  /** An execution id whose slot a master other than the first node serves, and that master. */
  const offSeed = async (cluster, tag) => {
    for (let n = 0; ; n++) {
      const owner = await cluster.owner(await cluster.keyslot(`{${tag}${n}}`))
      if (owner !== cluster.ports[0]) return [`${tag}${n}`, owner]
    }
  }

  test('the SIGKILL of a master with a replica: one drop, then one reconnect once the replica took over', async () => {
    const cluster = await startCluster({ masters: 3, replicas: 1 })
    const seen = record(cluster.ports[0])
    const store = createRedisStore(
      { cluster: cluster.urls },
      {
        prefix: `ev:${randomUUID()}:`,
        keyLayout: 'hashtag',
        commandTimeout: 20_000,
        connectTimeout: 1_000,
        retry: { attempts: 40, minDelay: 50, maxDelay: 400 },
      },
    )
    try {
      // A connection to every master.
      const ids = Array.from({ length: 30 }, (_, i) => `e${i}`)
      for (const id of ids) await store.beginExecution(id)
      await until('the connect event', () => seen.events.length > 0, 5_000)
      assert.deepEqual(
        seen.events.map((e) => e.type),
        ['connect'],
      )
      const [id, victim] = await offSeed(cluster, 'k')
      await store.beginExecution(id)
      // (Counted before the kill: the store may see its connection drop before killNode
      // returns. By count, not time: an event and a timestamp can share a millisecond.)
      const before = seen.events.length
      await cluster.killNode(victim)
      // Calls on every slot while the cluster fails the master over (each bounded by
      // commandTimeout), then until a call on the dead master's slot succeeds (bounded).
      const results = await Promise.all(
        ids.map((e) =>
          store.isExecutionInProgress(e).then(
            () => 'ok',
            (err) => err.code,
          ),
        ),
      )
      let ok = false
      for (const deadline = Date.now() + 45_000; Date.now() < deadline && !ok;) {
        // (Its answer may be false: replication is asynchronous, the kill may lose it.)
        ok = await store.isExecutionInProgress(id).then(
          () => true,
          () => false,
        )
        if (!ok) await sleep(100)
      }
      assert.ok(ok, `no call on the dead master's slot succeeded: ${JSON.stringify(results)}`)
      // A call on its slot went to the replica that took over: the store is connected to
      // every master it needs again, so a reconnect follows the drop (a few ms later).
      const since = () => seen.events.slice(before)
      await until('the reconnect event', () => since().length >= 2, 3_000).catch(() => {})
      await sleep(300)
      const types = since().map((e) => e.type)
      assert.equal(types.join(), 'drop,reconnect', `events after the kill: ${types.length} ${JSON.stringify(types.slice(0, 10))}`)
      assert.ok(since()[0].error?.code, `the drop says why: ${JSON.stringify(since()[0])}`)
      // Nothing after close().
      const beforeClose = seen.events.length
      await store.close()
      await sleep(300)
      assert.equal(seen.events.length, beforeClose)
    } finally {
      seen.stop()
      await store.close()
      await cluster.stop()
    }
  }, 120_000)

  test('a node paused past commandTimeout: no drop (its connection stays open), as on a single server', async () => {
    const cluster = await startCluster({ masters: 3 })
    const seen = record(cluster.ports[0])
    const store = createRedisStore(
      { cluster: cluster.urls },
      { prefix: `ev:${randomUUID()}:`, keyLayout: 'hashtag', commandTimeout: 400, retry: { attempts: 10, minDelay: 50, maxDelay: 200 } },
    )
    const [id, victim] = await offSeed(cluster, 'p')
    const pid = Number((await cli(victim, 'info', 'server')).match(/process_id:(\d+)/)[1])
    try {
      await store.beginExecution(id)
      await until('the connect event', () => seen.events.length > 0, 5_000)
      // (By count, not time: the connect event can come in the millisecond the wait ends.)
      const before = seen.events.length
      process.kill(pid, 'SIGSTOP')
      let calls
      try {
        calls = Promise.all(
          Array.from({ length: 20 }, (_, i) =>
            store.beginExecution(`${id}-${i}`).then(
              () => 'ok',
              (err) => err.code,
            ),
          ),
        )
        await sleep(1_500)
      } finally {
        process.kill(pid, 'SIGCONT')
      }
      const during = await calls
      assert.ok(
        during.every((r) => r === 'ok' || r === 'TIMEOUT'),
        JSON.stringify(during),
      )
      const later = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          store.isExecutionInProgress(`${id}-${i}`).then(
            () => 'ok',
            (err) => err.code,
          ),
        ),
      )
      assert.ok(
        later.every((r) => r === 'ok'),
        JSON.stringify(later),
      )
      await sleep(500)
      // (Were a drop given, subscribers would need the reconnect after it: none is.)
      assert.deepEqual(
        seen.events.slice(before).map((e) => `${e.type} ${e.error?.code ?? ''}`),
        [],
      )
    } finally {
      seen.stop()
      await store.close()
      await cluster.stop()
    }
  }, 90_000)
})

// Nodes with `cluster-preferred-endpoint-type unknown-endpoint` (as some managed services
// and clusters behind one address run) announce no host: `CLUSTER SLOTS` says `?` and a
// redirect says `MOVED 3999 :7001`, meaning the host of the node that answered.
describe('Redis Cluster announcing no host', { timeout: 120_000 }, () => {
  let cluster
  const stores = []

  before(async () => {
    cluster = await startCluster({ args: ['--cluster-preferred-endpoint-type', 'unknown-endpoint'] })
  })

  after(async () => {
    await Promise.all(stores.map((s) => s.close()))
    await cluster?.stop()
  })

  test('calls follow MOVED and ASK redirects that name only a port', async () => {
    const replies = await Promise.all(['a', 'b', 'c', 'd'].map((key) => cli(cluster.ports[0], 'get', key)))
    assert.ok(
      replies.some((reply) => /^MOVED \d+ :\d+$/.test(reply)),
      replies.join(', '),
    )
    const store = createRedisStore({ cluster: cluster.urls }, { prefix: `ne:${randomUUID()}:`, keyLayout: 'hashtag', commandTimeout: 3_000 })
    stores.push(store)
    const id = `ne-${randomUUID()}`
    const slot = await cluster.keyslot(`{${id}}`)
    await store.beginExecution(id)
    for (let round = 0; round < 2; round++) {
      const from = await cluster.owner(slot)
      const to = cluster.ports[(cluster.ports.indexOf(from) + 1) % cluster.ports.length]
      // Half moved (MIGRATING/IMPORTING: a key not on `from` any more is an ASK), then whole (MOVED).
      await cli(to, 'cluster', 'setslot', String(slot), 'importing', await cli(from, 'cluster', 'myid'))
      await cli(from, 'cluster', 'setslot', String(slot), 'migrating', await cli(to, 'cluster', 'myid'))
      const keys = (await cli(from, 'cluster', 'getkeysinslot', String(slot), '100')).split('\n').filter(Boolean)
      await cli(from, 'migrate', '127.0.0.1', String(to), '', '0', '5000', 'keys', ...keys)
      assert.equal(await store.isExecutionInProgress(id), true, 'read through an ASK')
      await cluster.migrateSlot(slot, from, to)
      await store.beginExecutionTask(id, `s${round}`)
      await store.commitExecutionTaskResult(id, `s${round}`, { round })
    }
    assert.deepEqual(await store.getExecutionTaskResults(id), { s0: { round: 0 }, s1: { round: 1 } })
  })
})
