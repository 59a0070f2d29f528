// Sentinel: the store finds the master through the sentinels and follows a failover
// during running writes: SENTINEL FAILOVER alone (the old master stays up: nothing
// acknowledged once the sentinels name the new master is lost), then SENTINEL FAILOVER
// and a SIGKILL of the new master during running workflows.
// One master, one replica, three sentinels, all on loopback. Then the same group on TLS
// only, with mutual TLS: rediss+sentinel://, `sentinelTls`, handshake failures, and
// workflows through SENTINEL FAILOVER.
import assert from 'node:assert/strict'
import diagnostics from 'node:diagnostics_channel'
import { createServer } from 'node:net'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import Redis from 'ioredis'
import { createKvStore, createRedisStore } from '../index.js'
import { rejectsWith } from './helpers/assert.mjs'
import { MASTER_NAME, startSentinelGroup } from './helpers/sentinel.mjs'
import { makeCertificates } from './helpers/tls.mjs'

/** Options for riding out a failover: retry for up to ~10 s, each call bounded by 20 s. */
const FAILOVER_OPTIONS = { commandTimeout: 20_000, connectTimeout: 1_000, retry: { attempts: 40, minDelay: 50, maxDelay: 400 } }

describe('Sentinel', { timeout: 240_000 }, () => {
  let group
  const stores = []
  const track = (store) => (stores.push(store), store)

  before(async () => {
    group = await startSentinelGroup()
  })

  after(async () => {
    await Promise.all(stores.map((s) => s.close()))
    await group?.stop()
  })

  it('finds the master through the sentinels, by URL and by options', async () => {
    const byUrl = track(createRedisStore(group.url, { prefix: 'snt:url:' }))
    await byUrl.beginExecution('e')
    assert.equal(await byUrl.isExecutionInProgress('e'), true)
    const sentinels = group.sentinels.map(({ port }) => ({ host: '127.0.0.1', port }))
    const byFields = track(createRedisStore({ sentinels, name: MASTER_NAME }, { prefix: 'snt:url:' }))
    assert.equal(await byFields.isExecutionInProgress('e'), true)
    const kv = track(createKvStore(group.url, { mounts: { m: { prefix: 'snt:kv:' } } }))
    await kv.merge('m', 'doc', { a: 1 })
    assert.deepEqual(await kv.get('m', 'doc'), { a: 1 })
  })

  it('closes its connections to the sentinels once closed: the watch of the master stops with the store', async () => {
    // The connections that ask the sentinels about the master (not their links to each other).
    const clients = () =>
      Promise.all(
        group.sentinels.map(
          async ({ client }) =>
            String(await client.call('CLIENT', 'LIST'))
              .split('\n')
              .filter((line) => / cmd=sentinel/.test(line)).length,
        ),
      )
    const waitFor = async (ok) => {
      let counts = await clients()
      for (let i = 0; i < 50 && !ok(counts); i++) {
        await sleep(100)
        counts = await clients()
      }
      return counts
    }
    const before = await clients()
    const opened = Array.from({ length: 4 }, (_, i) => createRedisStore(group.url, { prefix: `snt:close:${i}:` }))
    await Promise.all(opened.map((store) => store.beginExecution('e')))
    // While connected, each store watches every sentinel on a connection of its own.
    const during = await waitFor((counts) => counts.every((n, i) => n >= before[i] + 4))
    assert.ok(
      during.every((n, i) => n >= before[i] + 4),
      `watching: ${during} against ${before}`,
    )
    await Promise.all(opened.map((store) => store.close()))
    const after = await waitFor((counts) => counts.every((n, i) => n <= before[i]))
    assert.deepEqual(after, before, 'the closed stores (still referenced) left no sentinel connection')
    assert.equal(opened.length, 4)
  })

  it('rejects `sentinelTls` without sentinels, and bad sentinel TLS options, at creation', () => {
    assert.throws(
      () => createRedisStore('redis://127.0.0.1:6379', { sentinelTls: true }),
      (err) => err.code === 'INVALID_INPUT' && /sentinelTls/.test(err.message),
    )
    assert.throws(
      () => createRedisStore(group.url, { sentinelTls: { ca: '/nonexistent/ca.pem' } }),
      (err) => err.code === 'INVALID_INPUT' && /cannot read/.test(err.message),
    )
  })

  it('rejects a master the sentinels do not know, naming it', async () => {
    const url = group.url.replace(`/${MASTER_NAME}`, '/nope')
    const store = track(createRedisStore(url, { connectTimeout: 1_000, retry: { attempts: 0 } }))
    await rejectsWith(store.beginExecution('e'), 'UNAVAILABLE', /does not know master "nope"/)
  })

  it('rejects a wrong or missing sentinelPassword with AUTH (not a transient code), and connects with the right one', async () => {
    const sentinels = group.sentinels.map(({ port }) => ({ host: '127.0.0.1', port }))
    const acl = (port, ...args) => {
      const admin = new Redis({
        host: '127.0.0.1',
        port,
        password: args.includes('nopass') ? 's3cret' : undefined,
        lazyConnect: true,
        retryStrategy: () => null,
      })
      return admin.call('ACL', 'SETUSER', 'default', ...args).finally(() => admin.disconnect())
    }
    await Promise.all(sentinels.map(({ port }) => acl(port, 'on', '>s3cret')))
    try {
      for (const sentinelPassword of ['wrong', undefined]) {
        const store = track(createRedisStore({ sentinels, name: MASTER_NAME, sentinelPassword }, { connectTimeout: 1_000, retry: { attempts: 0 } }))
        await rejectsWith(store.beginExecution('e'), 'AUTH', /authentication to sentinel/)
      }
      const store = track(createRedisStore({ sentinels, name: MASTER_NAME, sentinelPassword: 's3cret' }, { prefix: 'snt:auth:' }))
      await store.beginExecution('e')
      assert.equal(await store.isExecutionInProgress('e'), true)
    } finally {
      await Promise.all(sentinels.map(({ port }) => acl(port, 'on', 'nopass')))
    }
  })

  it('loses no write acknowledged after the sentinels name the new master, through SENTINEL FAILOVER alone (the old master stays up)', async () => {
    // The old master keeps answering as a master until Sentinel makes it a replica (about
    // 10 s later), then drops what it took meanwhile: a store must leave it as soon as the
    // sentinels name the new master, not when the old one is reconfigured.
    const kv = track(createKvStore(group.url, { ...FAILOVER_OPTIONS, mounts: { m: { prefix: 'snt:fo:kv:', maxEntries: 1_000_000 } } }))
    const store = track(createRedisStore(group.url, { prefix: 'snt:fo:wf:', ...FAILOVER_OPTIONS }))
    const first = await group.masterPort()
    // (Sentinel closes its clients when it reconfigures it: this one reconnects.)
    const oldMaster = new Redis(group.servers[first].url, group.servers[first].clientOptions)
    after(() => oldMaster.disconnect())
    const sets = []
    const commits = []
    const failures = []
    let running = true
    let namedAt
    const writer = (async () => {
      for (let n = 0; running; n++) {
        try {
          await kv.set('m', `k${n}`, n)
          sets.push({ key: `k${n}`, at: Date.now() })
        } catch (err) {
          failures.push(err)
        }
        await sleep(1)
      }
    })()
    const flows = (async () => {
      for (let n = 0; running; n++) {
        // A claim (beginExecutionTask) is never sent twice: it may reject UNAVAILABLE when
        // its connection is dropped, never be acknowledged and lost.
        try {
          await store.beginExecution(`e${n}`)
          await store.beginExecutionTask(`e${n}`, 't')
          await store.commitExecutionTaskResult(`e${n}`, 't', n)
          commits.push({ id: `e${n}`, at: Date.now() })
        } catch (err) {
          failures.push(err)
        }
        await sleep(1)
      }
    })()
    try {
      await group.until('writes before the failover', async () => sets.length >= 50 && commits.length >= 20, 10_000)
      await group.sentinels[0].client.call('SENTINEL', 'FAILOVER', MASTER_NAME)
      // The first moment any sentinel names the new master (asked every 20 ms).
      for (const deadline = Date.now() + 20_000; namedAt === undefined; await sleep(20)) {
        assert.ok(Date.now() < deadline, 'timed out waiting for a sentinel to name the new master')
        for (const { client } of group.sentinels) {
          const [, port] = await client.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', MASTER_NAME)
          if (Number(port) !== first) namedAt ??= Date.now()
        }
      }
      await group.replicaInSync(oldMaster)
      await sleep(1_000)
    } finally {
      running = false
      await writer
      await flows
    }
    assert.deepEqual(
      [...new Set(failures.map((err) => err.code))].filter((code) => code !== 'UNAVAILABLE'),
      [],
      failures.map((err) => err.message).join('\n'),
    )
    const grace = namedAt + 1_500
    assert.ok(sets.filter((s) => s.at > grace).length >= 20 && commits.filter((c) => c.at > grace).length >= 10, 'writes went on after the failover')
    const found = await kv.getMany(
      'm',
      sets.map((s) => s.key),
    )
    const lost = sets.filter((s) => found[s.key] === undefined)
    const lostLate = lost.filter((s) => s.at > grace)
    let lostCommits = 0
    let lostLateCommits = 0
    for (const { id, at } of commits) {
      if ((await store.getExecutionTaskResult(id, 't')) === undefined) {
        lostCommits++
        if (at > grace) lostLateCommits++
      }
    }
    const span = lost.length ? `, acknowledged ${lost[0].at - namedAt} to ${lost.at(-1).at - namedAt} ms after a sentinel named the new master` : ''
    const said = `${sets.length} sets acknowledged, ${lost.length} lost${span} (${lostLate.length} more than 1.5 s after); ${commits.length} commits, ${lostCommits} lost (${lostLateCommits} more than 1.5 s after); ${failures.length} calls rejected UNAVAILABLE`
    console.log(`# sentinel failover alone: ${said}`)
    assert.equal(lostLate.length + lostLateCommits, 0, said)
    // What can be lost: what the old master acknowledged between the promotion of the
    // replica and the store seeing a sentinel say so (its watch asks every 200 ms).
    // Without following the failover while connected, that was ~80 % of the writes.
    assert.ok(lost.length <= sets.length / 10 && lostCommits <= commits.length / 10, said)
  })

  it('keeps running workflows going through SENTINEL FAILOVER and a SIGKILL of the master', async () => {
    // Connection events and traced calls name the master of the moment.
    const connections = []
    const onConnection = (event) => connections.push(event)
    diagnostics.subscribe('durastate:connection', onConnection)
    const traced = []
    const tracing = { start: (call) => traced.push(call), end() {}, asyncStart() {}, asyncEnd() {}, error() {} }
    diagnostics.tracingChannel('durastate:call').subscribe(tracing)
    after(() => {
      diagnostics.unsubscribe('durastate:connection', onConnection)
      diagnostics.tracingChannel('durastate:call').unsubscribe(tracing)
    })
    const store = track(createRedisStore(group.url, { prefix: 'snt:wf:', ...FAILOVER_OPTIONS }))
    const acked = []
    let running = true
    let failure
    const workflows = (async () => {
      for (let n = 0; running; n++) {
        const id = `wf-${n}`
        await store.beginExecution(id)
        for (let s = 0; s < 3; s++) {
          await store.beginExecutionTask(id, `s${s}`)
          await store.commitExecutionTaskResult(id, `s${s}`, { n, s })
          acked.push({ id, task: `s${s}`, at: Date.now() })
        }
        await sleep(5)
      }
    })().catch((err) => {
      failure = err
    })
    const progressAfter = async (what, count, deadlineMs) => {
      await group.until(what, async () => failure !== undefined || acked.length >= count, deadlineMs)
      assert.equal(failure, undefined, `a call failed: ${failure?.code} ${failure?.message}`)
    }

    await progressAfter('the first commits', 30, 10_000)
    const first = await group.masterPort()
    await group.failover(first)
    await progressAfter('commits on the new master', acked.length + 30, 20_000)
    // The old master is a replica of the new one before that one is killed, so that only
    // asynchronous replication can lose commits.
    const old = new Redis(group.servers[first].url, group.servers[first].clientOptions)
    after(() => old.disconnect())
    await group.replicaInSync(old)

    const second = await group.masterPort()
    await group.servers[second].kill()
    await group.until('the sentinels to promote the old master', async () => (await group.masterPort()) !== second, 45_000)
    await progressAfter('commits after the SIGKILL', acked.length + 30, 30_000)
    running = false
    await workflows
    assert.equal(failure, undefined, `a call failed: ${failure?.code} ${failure?.message}`)

    // Its connection events name the server it is on, and so do its traced calls (after a
    // SENTINEL FAILOVER the old master may take writes for a while: it need not move).
    const mine = connections.filter((e) => e.store === 'worker' && e.type !== 'drop')
    assert.ok(mine.length >= 1, JSON.stringify(connections))
    assert.ok(connections.every((e) => e.backend === 'sentinel'))
    assert.ok(connections.filter((e) => e.type === 'failover').every((e) => e.previousAddress !== e.address))
    assert.deepEqual([traced.at(-1).backend, traced.at(-1).serverPort], ['sentinel', Number(mine.at(-1).address.split(':').pop())])

    const longestPause = Math.max(...acked.slice(1).map((a, i) => a.at - acked[i].at))
    assert.ok(longestPause < 15_000, `longest pause between commits: ${longestPause} ms`)
    // What the last master acknowledged after the failovers is all there.
    for (const { id, task } of acked.slice(-20)) {
      assert.notEqual(await store.getExecutionTaskResult(id, task), undefined, `${id}/${task}`)
    }
    let lost = 0
    for (const { id, task } of acked) if ((await store.getExecutionTaskResult(id, task)) === undefined) lost++
    console.log(`# sentinel: ${acked.length} commits acknowledged, ${lost} lost to asynchronous replication, longest pause ${longestPause} ms`)
  })
})

describe('Sentinel over TLS', { timeout: 150_000 }, () => {
  let certs
  let group
  const stores = []
  const track = (store) => (stores.push(store), store)

  before(async () => {
    certs = makeCertificates()
    group = await startSentinelGroup({ tls: certs })
  })

  after(async () => {
    await Promise.all(stores.map((s) => s.close()))
    await group?.stop()
    certs?.remove()
  })

  it('reaches sentinels and master over TLS with a client certificate: rediss+sentinel://, options, and `sentinelTls`', async () => {
    const byUrl = track(createRedisStore(group.tlsUrl, { prefix: 'tsnt:', tls: certs.mutual() }))
    await byUrl.beginExecution('e')
    const sentinels = group.sentinels.map(({ tlsPort }) => ({ host: '127.0.0.1', port: tlsPort }))
    const byFields = track(createRedisStore({ sentinels, name: MASTER_NAME, tls: true }, { prefix: 'tsnt:', tls: certs.mutual() }))
    assert.equal(await byFields.isExecutionInProgress('e'), true)
    // Only the servers on TLS: the sentinels' plain ports.
    const plainSentinels = track(createRedisStore(group.url, { prefix: 'tsnt:', tls: certs.mutual(), sentinelTls: false }))
    assert.equal(await plainSentinels.isExecutionInProgress('e'), true)
    // Sentinels with TLS settings of their own.
    const own = track(createKvStore(group.tlsUrl, { tls: certs.mutual(), sentinelTls: certs.mutual(), mounts: { m: { prefix: 'tsnt:kv:' } } }))
    await own.set('m', 'k', 1)
    assert.equal(await own.get('m', 'k'), 1)
  })

  it('a handshake refused by every sentinel, or by the master, is TLS within connectTimeout', async () => {
    for (const [tls, sentinelTls, reason] of [
      [{ ca: certs.file('ca.crt') }, undefined, /requires a client certificate/],
      [{ ...certs.mutual(), ca: certs.file('other-ca.crt') }, undefined, /untrusted issuer/],
      [{ ca: certs.file('ca.crt') }, certs.mutual(), /requires a client certificate/],
    ]) {
      const store = track(createRedisStore(group.tlsUrl, { tls, sentinelTls, connectTimeout: 1_500, retry: { attempts: 0 } }))
      const started = Date.now()
      await rejectsWith(store.beginExecution('e'), 'TLS', reason)
      assert.ok(Date.now() - started < 4_000, `took ${Date.now() - started} ms`)
    }
  })

  it('keeps running workflows going over TLS through SENTINEL FAILOVER', async () => {
    const store = track(createRedisStore(group.tlsUrl, { prefix: 'tsnt:wf:', tls: certs.mutual(), ...FAILOVER_OPTIONS }))
    const acked = []
    let running = true
    let failure
    const workflows = (async () => {
      for (let n = 0; running; n++) {
        await store.beginExecution(`wf-${n}`)
        await store.commitExecutionTaskResult(`wf-${n}`, 's', { n })
        acked.push(Date.now())
        await sleep(5)
      }
    })().catch((err) => {
      failure = err
    })
    const progress = async (what, count, deadlineMs) => {
      await group.until(what, async () => failure !== undefined || acked.length >= count, deadlineMs)
      assert.equal(failure, undefined, `a call failed: ${failure?.code} ${failure?.message}`)
    }
    await progress('the first commits', 20, 10_000)
    const first = await group.masterPort()
    await group.failover(first)
    await progress('commits on the new master', acked.length + 20, 20_000)
    running = false
    await workflows
    assert.equal(failure, undefined, `a call failed: ${failure?.code} ${failure?.message}`)
  })
})

describe('Sentinels that accept and never answer', () => {
  it('name the share of connectTimeout each sentinel got, not connectTimeout, in the timeout message', async () => {
    const sockets = []
    const listen = async () => {
      const server = createServer((socket) => sockets.push(socket))
      await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
      return server
    }
    const silent = [await listen(), await listen()]
    const hosts = silent.map((s) => `127.0.0.1:${s.address().port}`).join(',')
    try {
      // 900 ms split evenly between the 2 sentinels and the master: 300 ms each.
      for (const [url, code, said] of [
        [
          `rediss+sentinel://${hosts}/${MASTER_NAME}`,
          'TLS',
          /no TLS handshake within 300 ms \(this sentinel's share of connectTimeout \(900 ms\), which is split evenly between the 2 sentinels and the master\)/,
        ],
        [`redis+sentinel://${hosts}/${MASTER_NAME}`, 'UNAVAILABLE', /no connection within 300 ms \(this sentinel's share of connectTimeout \(900 ms\)/],
      ]) {
        const store = createRedisStore(url, { connectTimeout: 900, retry: { attempts: 0 } })
        try {
          await assert.rejects(store.beginExecution('e'), (err) => {
            assert.equal(err.code, code, err.message)
            assert.match(err.message, said)
            assert.doesNotMatch(err.message, /within connectTimeout \(300 ms\)/)
            return true
          })
        } finally {
          await store.close()
        }
      }
    } finally {
      sockets.forEach((s) => s.destroy())
      silent.forEach((s) => s.close())
    }
  })
})
