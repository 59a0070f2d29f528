// Redis Cluster on TLS only (`--port 0 --tls-port N --tls-cluster yes --tls-replication
// yes`), with mutual TLS (`--tls-auth-clients yes`): 3 masters, each with a replica, on
// loopback, with throwaway certificates. Reached through `{ cluster: ['rediss://...'] }`
// and `rediss+cluster://`; redirects (a resharded slot) and a failover (SIGKILL of a
// master) keep TLS; every handshake failure is code TLS within connectTimeout;
// `durability: 'aof'` checks every node, and one node with CONFIG renamed makes it
// unconfirmable, which is said. The CLI's TLS flags reach the cluster.
// (The conformance and KV suites also run on a TLS cluster: see helpers/backends.mjs.)
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { promisify } from 'node:util'
import { after, before, describe, it } from 'node:test'
import { createKvStore, createRedisStore, createStore } from '../index.js'
import { rejectsWith } from './helpers/assert.mjs'
import { packageRoot } from './helpers/child.mjs'
import { startCluster } from './helpers/cluster.mjs'
import { makeCertificates } from './helpers/tls.mjs'

const test = (title, fn, timeout = 60_000) => it(title, { timeout }, fn)

describe('Redis Cluster over TLS', { timeout: 180_000 }, () => {
  let certs
  let cluster
  const stores = []
  const track = (store) => (stores.push(store), store)
  const workerStore = (options = {}) =>
    track(createRedisStore({ cluster: cluster.urls }, { prefix: `tcl:${randomUUID()}:`, keyLayout: 'hashtag', tls: certs.mutual(), ...options }))
  const clusterUrl = () => `rediss+cluster://${cluster.urls.map((u) => new URL(u).host).join(',')}`

  before(async () => {
    certs = makeCertificates()
    // Every node fsyncs every write; the first has CONFIG renamed, as managed services do.
    cluster = await startCluster({
      tls: certs,
      replicas: 1,
      args: ['--appendonly', 'yes', '--appendfsync', 'always'],
      nodeArgs: (i) => (i === 0 ? ['--rename-command', 'CONFIG', ''] : []),
    })
  })

  after(async () => {
    await Promise.all(stores.map((s) => s.close()))
    await cluster?.stop()
    certs?.remove()
  })

  test('runs workflows and the KV store over rediss:// nodes and a rediss+cluster:// URL, with a client certificate', async () => {
    const store = workerStore()
    for (let n = 0; n < 10; n++) {
      await store.beginExecution(`wf-${n}`)
      await store.commitExecutionTaskResult(`wf-${n}`, 'a', { n })
      assert.deepEqual(await store.getExecutionTaskResults(`wf-${n}`), { a: { n } })
    }
    const prefix = `tcl:${randomUUID()}:`
    const byUrl = track(createStore(clusterUrl(), { prefix, keyLayout: 'hashtag', tls: certs.mutual() }))
    await byUrl.beginExecution('e')
    const kv = track(createKvStore(clusterUrl(), { prefix: `${prefix}kv:`, tls: certs.mutual() }))
    await kv.setMany('default', Object.fromEntries(Array.from({ length: 50 }, (_, i) => [`k${i}`, i])))
    assert.equal((await kv.keys('default')).length, 50)
    const cli = await promisify(execFile)(
      process.execPath,
      [
        `${packageRoot}/bin/durastate.mjs`,
        'inspect',
        clusterUrl(),
        '--prefix',
        prefix,
        '--json',
        '--tls-ca',
        certs.file('ca.crt'),
        '--tls-cert',
        certs.file('client.crt'),
        '--tls-key',
        certs.file('client.key'),
      ],
      { encoding: 'utf8', timeout: 20_000 },
    )
    assert.ok(
      JSON.parse(cli.stdout).executions.some((e) => e.id === '{e}'),
      cli.stdout,
    )
  })

  test('every handshake failure is TLS, with its reason, within connectTimeout', async () => {
    const cases = [
      [{ ca: certs.file('ca.crt') }, /requires a client certificate/],
      [{ ...certs.mutual(), ca: certs.file('other-ca.crt') }, /untrusted issuer/],
      [{ ...certs.mutual(), servername: 'redis.test' }, /wrong name/],
    ]
    for (const [tls, reason] of cases) {
      const started = Date.now()
      await rejectsWith(workerStore({ tls, connectTimeout: 1_000, retry: { attempts: 0 } }).beginExecution('e'), 'TLS', reason)
      assert.ok(Date.now() - started < 3_000, `took ${Date.now() - started} ms`)
    }
    const plain = cluster.urls.map((u) => u.replace('rediss:', 'redis:'))
    const started = Date.now()
    const store = track(createRedisStore({ cluster: plain }, { keyLayout: 'hashtag', connectTimeout: 1_000, retry: { attempts: 0 } }))
    await assert.rejects(store.beginExecution('e'), (err) => ['UNAVAILABLE', 'TIMEOUT'].includes(err.code))
    assert.ok(Date.now() - started < 3_000, `plain text to a TLS port took ${Date.now() - started} ms`)
  })

  test("durability 'aof': every node is checked; a node whose CONFIG is renamed cannot confirm it, and says so", async () => {
    const store = workerStore({ durability: 'aof', connectTimeout: 5_000, retry: { attempts: 0 } })
    await rejectsWith(store.beginExecution('e'), 'UNAVAILABLE', /cannot be confirmed.*aof_enabled:1.*CONFIG GET is unavailable/s)
  })

  test('a workflow keeps going over TLS while its slot is resharded (MOVED/ASK redirects)', async () => {
    const store = workerStore()
    const id = `mig-${randomUUID()}`
    const slot = await cluster.keyslot(`{${id}}`)
    await store.beginExecution(id)
    let running = true
    let steps = 0
    const failures = []
    const workflow = (async () => {
      while (running) {
        try {
          await store.beginExecutionTask(id, `s${steps}`)
          await store.commitExecutionTaskResult(id, `s${steps}`, { steps })
          steps++
        } catch (err) {
          failures.push(err)
          await new Promise((r) => setTimeout(r, 20))
        }
      }
    })()
    const masters = []
    for (const port of cluster.ports) if ((await cluster.cli(port, 'role')).startsWith('master')) masters.push(port)
    const from = await cluster.owner(slot)
    const to = masters.find((p) => p !== from)
    await cluster.migrateSlot(slot, from, to, { batch: 1, pauseMs: 50 })
    await new Promise((r) => setTimeout(r, 300))
    running = false
    await workflow
    assert.deepEqual(
      failures.map((e) => `${e.code}: ${e.message}`),
      [],
    )
    assert.equal(await cluster.owner(slot), to)
    assert.equal(Object.keys(await store.getExecutionTaskResults(id)).length, steps)
  })

  test('a workflow keeps going over TLS through the SIGKILL of its master (a replica takes over)', async () => {
    const store = workerStore({ commandTimeout: 20_000, connectTimeout: 1_000, retry: { attempts: 40, minDelay: 50, maxDelay: 400 } })
    const id = `fo-${randomUUID()}`
    await store.beginExecution(id)
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
    for (const deadline = Date.now() + 45_000; Date.now() < deadline;) {
      promoted = await cluster.owner(await cluster.keyslot(`{${id}}`)).catch(() => undefined)
      if (promoted && promoted !== victim && acked.filter((a) => a.at > killedAt).length >= 10) break
      await new Promise((r) => setTimeout(r, 100))
    }
    running = false
    await workflow
    assert.notEqual(promoted, victim, 'a replica took over')
    assert.deepEqual(
      failures.map((e) => `${e.code}: ${e.message}`),
      [],
    )
    const results = await store.getExecutionTaskResults(id)
    for (const { task } of acked.filter((a) => a.at > killedAt)) assert.ok(task in results, `${task} is stored`)
  }, 90_000)
})
