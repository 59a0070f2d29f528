// Redis faults, on servers of the tests' own (loopback, free ports): a server killed
// and restarted, our connection killed, a paused server, a connection cut after a
// command landed and before its reply, many stores opened and closed. Run on every Redis
// driver: the event loop (Node.js), tokio threads (DURASTATE_REDIS_DRIVER=threads) and the
// runtime's own socket (Bun and Deno).
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import Redis from 'ioredis'
import { createKvStore, createMemoryStore, createRedisStore } from '../index.js'
import { startChild } from './helpers/child.mjs'
import { listExecutionIds } from '../bin/executions.mjs'
import { createInspector } from '../binding.js'
import { startFakeRedis } from './helpers/fake-redis.mjs'
import { startCuttingProxy, startSwitchingProxy } from './helpers/proxy.mjs'
import { startRedisServer } from './helpers/redis-server.mjs'
import { makeCertificates } from './helpers/tls.mjs'

const codeOf = async (promise) =>
  promise.then(
    () => 'ok',
    (err) => err.code,
  )
const openFds = () => readdirSync('/proc/self/fd').length

/**
 * Runs `test({ paused, store, connections })` on a store of its own throwaway
 * redis-server (`paused`, to SIGSTOP), `connections()` counting the connections it
 * accepted; the server is resumed and stopped afterwards.
 */
async function withPausedServer(options, test) {
  const paused = await startRedisServer()
  const admin = new Redis(paused.url)
  const store = createRedisStore(paused.url, options)
  const connections = async () => Number(/total_connections_received:(\d+)/.exec(await admin.info('stats'))[1])
  try {
    await test({ paused, store, connections })
  } finally {
    process.kill(paused.pid, 'SIGCONT')
    admin.disconnect()
    await store.close()
    await paused.stop()
  }
}

describe('Redis faults', () => {
  let server
  let admin
  before(async () => {
    server = await startRedisServer({ args: ['--appendonly', 'yes', '--appendfsync', 'always'] })
    admin = new Redis(server.url, { maxRetriesPerRequest: 1, retryStrategy: () => 200 })
    admin.on('error', () => {})
  })
  after(async () => {
    admin.disconnect()
    await server.stop()
  })

  it('keeps acknowledged commits through a SIGKILL of the server, and works after its restart', async () => {
    const store = createRedisStore(server.url, { prefix: 'kill:', connectTimeout: 500, commandTimeout: 1000, durability: 'aof' })
    await store.beginExecution('e')
    const acked = []
    for (let i = 0; i < 50; i++) {
      await store.commitExecutionTaskResult('e', `s${i}`, { i })
      acked.push(i)
    }
    await server.kill()
    const started = Date.now()
    const outage = await Promise.all([store.getExecutionTaskResults('e'), store.commitExecutionTaskResult('e', 'x', 1)].map(codeOf))
    for (const code of outage) assert.ok(['UNAVAILABLE', 'TIMEOUT'].includes(code), code)
    assert.ok(Date.now() - started < 1500, `the outage took ${Date.now() - started} ms to report`)
    await server.restart()
    const results = await store.getExecutionTaskResults('e')
    for (const i of acked) assert.deepEqual(results[`s${i}`], { i }, `acknowledged commit ${i} was lost`)
    await store.close()
  })

  it('carries on after CLIENT KILL of its connection between begin and commit', async () => {
    const store = createRedisStore(server.url, { prefix: 'clientkill:' })
    await store.beginExecution('e')
    await store.beginExecutionTask('e', 'step')
    const killed = await admin.client('KILL', 'SKIPME', 'yes', 'TYPE', 'normal')
    assert.ok(killed >= 1)
    await store.commitExecutionTaskResult('e', 'step', { done: true })
    assert.deepEqual(await store.getExecutionTaskResult('e', 'step'), { done: true })
    assert.equal(await store.isExecutionTaskInProgress('e', 'step'), false)
    await store.close()
  })

  it('sends calls in flight again after the server restarts, with backoff, but never the claim', async () => {
    const store = createRedisStore(server.url, {
      prefix: 'backoff:',
      connectTimeout: 300,
      commandTimeout: 4000,
      retry: { attempts: 20, minDelay: 20, maxDelay: 100 },
    })
    await store.beginExecution('e')
    // Hold the calls in flight on the server, then kill it under them.
    await admin.client('PAUSE', 5000, 'ALL')
    const commit = store.commitExecutionTaskResult('e', 'step', { v: 1 })
    const claim = codeOf(store.tryBeginExecutionTask('e', 'claimed'))
    await new Promise((r) => setTimeout(r, 50))
    await server.kill()
    await new Promise((r) => setTimeout(r, 300))
    await server.restart()
    await commit
    assert.equal(await claim, 'UNAVAILABLE')
    assert.deepEqual(await store.getExecutionTaskResult('e', 'step'), { v: 1 })
    await store.close()
  })

  it('names the KV method called in its TIMEOUT (get, getOr, getJson)', async () => {
    const kv = createKvStore(server.url, { prefix: 'names:', commandTimeout: 200 })
    await kv.set('default', 'k', 1)
    await admin.client('PAUSE', 1200, 'ALL')
    const calls = await Promise.allSettled([kv.get('default', 'k'), kv.getOr('default', 'k', 0), kv.getJson('default', 'k')])
    assert.deepEqual(
      calls.map((c) => [c.reason?.code, /^(\w+) did not complete within 200 ms/.exec(c.reason?.message)?.[1]]),
      [
        ['TIMEOUT', 'get'],
        ['TIMEOUT', 'getOr'],
        ['TIMEOUT', 'getJson'],
      ],
    )
    await new Promise((r) => setTimeout(r, 1300))
    assert.equal(await kv.getJson('default', 'k'), '1')
    await kv.close()
  })

  it('rejects with TIMEOUT in time while the server is paused, then works again', async () => {
    const store = createRedisStore(server.url, { prefix: 'pause:', commandTimeout: 300 })
    await store.beginExecution('e')
    // The call rejects at its 300 ms commandTimeout (302-499 ms measured on a loaded 2-core
    // machine); without it, it would be answered when the 1.5 s pause ends. The bound, 1.2 s,
    // is between the two.
    await admin.client('PAUSE', 1500, 'ALL')
    const pausedUntil = Date.now() + 1500
    const started = Date.now()
    assert.equal(await codeOf(store.isExecutionInProgress('e')), 'TIMEOUT')
    const took = Date.now() - started
    assert.ok(took >= 250 && took < 1200, `took ${took} ms`)
    await new Promise((r) => setTimeout(r, Math.max(0, pausedUntil + 200 - Date.now())))
    assert.equal(await store.isExecutionInProgress('e'), true)
    await store.close()
  })

  it('works again after a SIGSTOP of the server once it gets SIGCONT', async () => {
    const hung = await startRedisServer()
    const store = createRedisStore(hung.url, { prefix: 'sigstop:', commandTimeout: 300 })
    try {
      await store.beginExecution('e')
      process.kill(hung.pid, 'SIGSTOP')
      for (let i = 0; i < 5; i++) assert.equal(await codeOf(store.isExecutionInProgress('e')), 'TIMEOUT')
      process.kill(hung.pid, 'SIGCONT')
      assert.equal(await store.isExecutionInProgress('e'), true)
    } finally {
      process.kill(hung.pid, 'SIGCONT')
      await store.close()
      await hung.stop()
    }
  })

  it('abandons a connection whose server stopped answering (SIGSTOP) and reaches a replacement at the same address', async () => {
    // The store's connection goes through a proxy that keeps it pinned to the hung server
    // (TCP still acknowledged, no reply ever), as a load balancer keeps a flow; new
    // connections reach the replacement.
    const hung = await startRedisServer()
    const replacement = await startRedisServer()
    const proxy = await startSwitchingProxy(hung.port)
    const store = createRedisStore(`redis://127.0.0.1:${proxy.port}`, { prefix: 'hung:', commandTimeout: 300, connectTimeout: 1000 })
    try {
      await store.beginExecution('e')
      process.kill(hung.pid, 'SIGSTOP')
      proxy.target = replacement.port
      const codes = []
      const made = []
      for (let i = 0; i < 8; i++) {
        made.push(performance.now())
        codes.push(await codeOf(store.beginExecution(`e${i}`)))
      }
      // One call after another times out; when one does and the first has waited 3 ×
      // commandTimeout with not a byte from the server (at the third, on time), the
      // connection is abandoned, and the next call connects again, to the replacement.
      // Time counts, not calls: a timer that fires late on a busy machine makes it the
      // second (the first timed out late), and a timer late itself leaves the judgement to
      // the next timeout (up to two more time out).
      const timedOut = codes.indexOf('ok')
      assert.ok(timedOut >= 2 && timedOut <= 5, codes.join())
      const waited = made[timedOut] - made[0]
      assert.ok(waited >= 3 * 300 - 20, `abandoned after ${Math.round(waited)} ms, before 3 × commandTimeout: ${codes.join()}`)
      assert.deepEqual(codes.slice(0, timedOut), Array(timedOut).fill('TIMEOUT'), codes.join())
      assert.deepEqual(codes.slice(timedOut), Array(8 - timedOut).fill('ok'), codes.join())
      const direct = new Redis(replacement.url)
      try {
        // The calls after the switch landed on the replacement.
        assert.ok(
          (await direct.keys('hung:*')).some((key) => key.includes('e7')),
          'e7 is on the replacement',
        )
      } finally {
        direct.disconnect()
      }
    } finally {
      process.kill(hung.pid, 'SIGCONT')
      await store.close()
      await proxy.close()
      await Promise.all([hung.stop(), replacement.stop()])
    }
  })

  it('keeps the connection to a server that pauses for less than 3 × commandTimeout while calls are in flight together', async () => {
    // A pause as a BGSAVE fork, an fsync stall or a slow script makes: 5 calls made
    // together time out in the same tick; that is one commandTimeout of silence, not 5
    // calls in a row, so the connection stays and a call still waiting gets its reply.
    await withPausedServer({ prefix: 'pause:', commandTimeout: 500 }, async ({ paused, store, connections }) => {
      await store.beginExecution('e')
      const before = await connections()
      process.kill(paused.pid, 'SIGSTOP')
      const together = Array.from({ length: 5 }, (_, i) => codeOf(store.beginExecution(`t${i}`)))
      await new Promise((r) => setTimeout(r, 300))
      // Made 300 ms later, a call never sent twice (a claim): still waiting when the 5 time
      // out, it must be answered once the server resumes, not rejected UNAVAILABLE with
      // the connection.
      const waiting = store.tryBeginExecutionTask('e', 'w').catch((err) => err.code)
      assert.deepEqual(await Promise.all(together), ['TIMEOUT', 'TIMEOUT', 'TIMEOUT', 'TIMEOUT', 'TIMEOUT'])
      await new Promise((r) => setTimeout(r, 150))
      process.kill(paused.pid, 'SIGCONT')
      assert.equal(await waiting, true, 'the claim in flight is answered on the same connection')
      assert.equal(await store.isExecutionInProgress('t4'), true)
      assert.equal(await connections(), before, 'no new connection')
    })
  })

  it('keeps the connection through a pause that outlasts 3 × commandTimeout with no call timing out at its end: a timed-out write lands when the server resumes', async () => {
    // Two calls time out early in a 1.5 s pause (commandTimeout 400); no call is made
    // after them, so no later timeout judges the connection stuck, and it is kept (as the
    // README says: abandoned only when a call times out after 3 × commandTimeout of silence).
    await withPausedServer({ prefix: 'pause2:', commandTimeout: 400 }, async ({ paused, store, connections }) => {
      await store.beginExecution('warm')
      const before = await connections()
      process.kill(paused.pid, 'SIGSTOP')
      assert.equal(await codeOf(store.commitExecutionTaskResult('e', 't', 100)), 'TIMEOUT')
      assert.equal(await codeOf(store.getExecutionTaskResult('e', 't')), 'TIMEOUT')
      await new Promise((r) => setTimeout(r, 700))
      process.kill(paused.pid, 'SIGCONT')
      // the write was sent before the pause took it, so the server applies it now
      assert.equal(await store.getExecutionTaskResult('e', 't'), 100)
      assert.equal(await connections(), before, 'no new connection')
    })
  })

  it('loses no acknowledged commit across 200 concurrent workflows while the server restarts twice', async () => {
    const store = createRedisStore(server.url, { prefix: 'storm:', connectTimeout: 300, commandTimeout: 1000 })
    const acked = new Set()
    const failures = new Map()
    const until = Date.now() + 20_000
    /** Runs `call` until it succeeds, as a worker's re-delivery would; counts failures by code. */
    const persist = async (call) => {
      for (;;) {
        try {
          return await call()
        } catch (err) {
          failures.set(err.code, (failures.get(err.code) ?? 0) + 1)
          if (!['UNAVAILABLE', 'TIMEOUT'].includes(err.code) || Date.now() > until) throw err
          await new Promise((r) => setTimeout(r, 20))
        }
      }
    }
    let running = 0
    const activeAtKills = []
    // The last step of every workflow waits for the second kill, so both kills hit
    // running workflows whatever the speed of the machine.
    let secondKill
    const afterSecondKill = new Promise((resolve) => {
      secondKill = resolve
    })
    const workflow = async (w) => {
      running++
      try {
        await steps(w)
      } finally {
        running--
      }
    }
    const steps = async (w) => {
      const id = `wf-${w}`
      await persist(() => store.beginExecution(id))
      for (let step = 0; step < 8; step++) {
        const task = `step-${step}`
        if (step === 7) await afterSecondKill
        if ((await persist(() => store.getExecutionTaskResult(id, task))) !== undefined) continue
        await persist(() => store.beginExecutionTask(id, task))
        await persist(() => store.commitExecutionTaskResult(id, task, { w, step }))
        acked.add(`${id}/${task}`)
        await new Promise((r) => setTimeout(r, 30 + (w % 7)))
      }
    }
    const restarts = (async () => {
      for (let i = 0; i < 2; i++) {
        await new Promise((r) => setTimeout(r, 40))
        activeAtKills.push(running)
        await server.kill()
        if (i === 1) secondKill()
        await new Promise((r) => setTimeout(r, 100))
        await server.restart()
      }
    })()
    await Promise.all([restarts, ...Array.from({ length: 200 }, (_, w) => workflow(w))])
    // Both kills hit running workflows (their calls are resent or fail and are redone).
    assert.ok(activeAtKills.length === 2 && activeAtKills.every((n) => n > 0), `workflows running at the kills: ${activeAtKills}`)
    assert.equal(acked.size, 200 * 8)
    const check = new Redis(server.url)
    try {
      for (let w = 0; w < 200; w++) {
        const [results, inProgress] = await Promise.all([check.hgetall(`storm:wf-${w}-results`), check.hgetall(`storm:wf-${w}-transactions`)])
        for (let step = 0; step < 8; step++) {
          const task = `step-${step}`
          assert.deepEqual(JSON.parse(results[task] ?? 'null'), { w, step }, `acknowledged commit wf-${w}/${task} was lost`)
          assert.equal(inProgress[task], undefined, `wf-${w}/${task} is done and still marked in progress`)
        }
      }
    } finally {
      check.disconnect()
      await store.close()
    }
  })

  it('opens and closes 1,000 stores of each kind without leaking file descriptors or threads', async () => {
    const threads = () => readdirSync('/proc/self/task').length
    const kinds = { redis: () => createRedisStore(server.url, { prefix: 'many:' }), memory: () => createMemoryStore() }
    for (const [kind, make] of Object.entries(kinds)) {
      const before = { fds: openFds(), threads: threads() }
      for (let round = 0; round < 10; round++) {
        const stores = Array.from({ length: 100 }, make)
        await Promise.all(stores.map((s) => s.isExecutionInProgress('e')))
        await Promise.all(stores.map((s) => s.close()))
      }
      // Sockets and database threads finish closing on the next turns of the event loop.
      await new Promise((r) => setTimeout(r, 200))
      const leaked = { fds: openFds() - before.fds, threads: threads() - before.threads }
      assert.ok(leaked.fds < 10, `${kind}: ${leaked.fds} file descriptors leaked`)
      assert.ok(leaked.threads < 5, `${kind}: ${leaked.threads} threads leaked`)
    }
  })
})

/**
 * A proxy in another process that, when armed (a line on its control port), passes the
 * next reply on and resets the connection right after it: while this thread is busy,
 * both reach the socket before the store next reads it.
 */
async function startResettingProxy(redisPort) {
  const proxy = startChild(
    `const net = require('node:net')
     let armed = 0
     const control = net.createServer((c) => c.on('data', () => { armed++; c.end('ok') })).listen(0, '127.0.0.1')
     const proxy = net.createServer((c) => {
       const s = net.connect(${redisPort}, '127.0.0.1')
       c.on('data', (d) => s.write(d))
       s.on('data', (d) => {
         c.write(d)
         if (armed > 0) { armed--; c.resetAndDestroy ? c.resetAndDestroy() : c.destroy(); s.destroy() }
       })
       const end = () => { c.destroy(); s.destroy() }
       c.on('error', end).on('close', end); s.on('error', end).on('close', end)
     }).listen(0, '127.0.0.1', () => console.log('ports', proxy.address().port, control.address().port))`,
    { timeoutMs: 120_000 },
  )
  const started = Date.now()
  while (!/ports \d+ \d+/.test(proxy.output())) {
    if (Date.now() - started > 10_000) throw new Error(`the proxy did not start: ${proxy.output()}`)
    await new Promise((r) => setTimeout(r, 20))
  }
  const [, port, controlPort] = proxy
    .output()
    .match(/ports (\d+) (\d+)/)
    .map(Number)
  const { connect } = await import('node:net')
  return {
    url: `redis://127.0.0.1:${port}`,
    arm: () =>
      new Promise((resolve, reject) => {
        const c = connect(controlPort, '127.0.0.1', () => c.write('1\n'))
        c.on('data', () => (c.destroy(), resolve())).on('error', reject)
      }),
    stop: () => (proxy.child.kill('SIGKILL'), proxy.done),
  }
}

describe('a reply that comes together with a connection reset', () => {
  it('is answered (a claim that won is true, a delete true), not rejected as lost', async () => {
    const server = await startRedisServer()
    const proxy = await startResettingProxy(Number(new URL(server.url).port))
    const store = createRedisStore(proxy.url, { prefix: 'rst:', commandTimeout: 5_000 })
    const kv = createKvStore(proxy.url, { prefix: 'rst-kv:', commandTimeout: 5_000 })
    const busy = (ms) => {
      const until = Date.now() + ms
      while (Date.now() < until);
    }
    try {
      const answers = []
      for (let i = 0; i < 5; i++) {
        await store.beginExecution(`e${i}`)
        await proxy.arm()
        const claim = store.tryBeginExecutionTask(`e${i}`, 'step').then(
          (v) => v,
          (err) => err.code,
        )
        busy(50) // the reply and the reset both arrive meanwhile
        answers.push(await claim)
        await kv.set('default', `k${i}`, 1)
        await proxy.arm()
        const removed = kv.delete('default', `k${i}`).then(
          (v) => v,
          (err) => err.code,
        )
        busy(50)
        answers.push(await removed)
      }
      assert.deepEqual(answers, Array(10).fill(true))
    } finally {
      await Promise.all([store.close(), kv.close()])
      await proxy.stop()
      await server.stop()
    }
  })
})

describe('a connection cut after the command landed, before its reply', () => {
  let server
  let proxy
  let url
  before(async () => {
    server = await startRedisServer()
    proxy = await startCuttingProxy(Number(new URL(server.url).port))
    url = `redis://127.0.0.1:${proxy.port}`
  })
  after(async () => {
    await proxy.close()
    await server.stop()
  })

  it('KV delete and deleteMany reject UNAVAILABLE, never a wrong count; the keys are gone', async () => {
    const kv = createKvStore(url, { prefix: 'cut-kv:', commandTimeout: 2000 })
    await kv.setMany('default', { a: 1, b: 2, c: 3 })
    const cuts = proxy.cuts
    proxy.cutNextReply()
    // Sent again, the UNLINK would answer false: the key was removed by the first one.
    assert.equal(await codeOf(kv.delete('default', 'a')), 'UNAVAILABLE')
    assert.equal(proxy.cuts, cuts + 1)
    assert.equal(await kv.has('default', 'a'), false)
    proxy.cutNextReply()
    assert.equal(await codeOf(kv.deleteMany('default', ['b', 'c', 'missing'])), 'UNAVAILABLE')
    assert.equal(proxy.cuts, cuts + 2)
    assert.deepEqual(await kv.keys('default'), [])
    // Uncut, the answers are exact.
    await kv.set('default', 'a', 1)
    assert.equal(await kv.delete('default', 'a'), true)
    assert.equal(await kv.delete('default', 'a'), false)
    await kv.close()
  })

  it('sends a call safe to resend again, and answers it; the KV set and get too', async () => {
    const store = createRedisStore(url, { prefix: 'cut-ws:', commandTimeout: 2000 })
    await store.beginExecution('e')
    const cuts = proxy.cuts
    proxy.cutNextReply()
    await store.commitExecutionTaskResult('e', 's', { v: 1 })
    proxy.cutNextReply()
    assert.deepEqual(await store.getExecutionTaskResult('e', 's'), { v: 1 })
    assert.equal(proxy.cuts, cuts + 2)
    await store.close()
    const kv = createKvStore(url, { prefix: 'cut-kv2:', commandTimeout: 2000 })
    await kv.has('default', 'warm-up')
    proxy.cutNextReply()
    assert.equal(await kv.set('default', 'k', { n: 1 }), true)
    proxy.cutNextReply()
    assert.deepEqual(await kv.get('default', 'k'), { n: 1 })
    assert.equal(proxy.cuts, cuts + 4)
    await kv.close()
  })

  it('sends a call made before close() again after its connection dropped, and close() resolves after it', async () => {
    const store = createRedisStore(url, { prefix: 'cut-close:', commandTimeout: 2000 })
    await store.beginExecution('e')
    const cuts = proxy.cuts
    proxy.cutNextReply()
    const call = store.commitExecutionTaskResult('e', 's', { v: 2 }).then(
      () => 'ok',
      (err) => err.code,
    )
    await store.close()
    assert.equal(await call, 'ok', 'answered as without close()')
    assert.equal(proxy.cuts, cuts + 1)
    const other = createRedisStore(url, { prefix: 'cut-close:' })
    assert.deepEqual(await other.getExecutionTaskResult('e', 's'), { v: 2 })
    await other.close()
  })

  it('never sends the claim twice: it rejects UNAVAILABLE, and its first attempt stands', async () => {
    const store = createRedisStore(url, { prefix: 'cut-claim:', commandTimeout: 2000 })
    await store.beginExecution('e')
    proxy.cutNextReply()
    assert.equal(await codeOf(store.tryBeginExecutionTask('e', 'step')), 'UNAVAILABLE')
    assert.equal(await store.isExecutionTaskInProgress('e', 'step'), true)
    assert.equal(await store.tryBeginExecutionTask('e', 'step'), false)
    await store.close()
  })
})

describe('replies that come together with the server closing the connection', () => {
  const busy = (ms) => {
    const until = Date.now() + ms
    while (Date.now() < until);
  }
  const settle = (promise) =>
    promise.then(
      (v) => v,
      (err) => err.code,
    )

  it('over TLS: a claim that won answers true, a KV delete true (the server answers, then closes)', async () => {
    const certs = makeCertificates()
    const tls = { cert: readFileSync(certs.file('server.crt')), key: readFileSync(certs.file('server.key')) }
    // The claim (HSETNX) and the delete (UNLINK) are answered :1, and the connection is
    // closed with them (close_notify and FIN): the store reads both at once.
    const fake = await startFakeRedis(
      ([name]) => (name === 'HSETNX' || name === 'UNLINK' ? { close: ':1\r\n' } : name === 'EXISTS' ? ':0\r\n' : name === 'GET' ? '$-1\r\n' : undefined),
      { tls },
    )
    const options = { tls: { ca: certs.file('ca.crt') }, commandTimeout: 3_000 }
    try {
      const answers = []
      for (let i = 0; i < 5; i++) {
        const store = createRedisStore(fake.url, options)
        const kv = createKvStore(fake.url, options)
        await store.isExecutionInProgress('warm')
        await kv.has('default', 'warm')
        const claim = settle(store.tryBeginExecutionTask('e', 't'))
        const removed = settle(kv.delete('default', 'k'))
        busy(50) // the replies and the close arrive meanwhile
        answers.push(await claim, await removed)
        await Promise.all([store.close(), kv.close()])
      }
      assert.deepEqual(answers, Array(10).fill(true))
    } finally {
      await fake.close()
      certs.remove?.()
    }
  })

  it('over plain TCP: replies that fill the read buffer up to the FIN are answered (a KV delete true)', async () => {
    let size = 0
    // A GET of `size` bytes and a delete answered together with the FIN: around 64 KiB,
    // the size the event-loop driver reads at once.
    const fake = await startFakeRedis(([name]) => {
      if (name === 'EXISTS') return ':0\r\n'
      if (name === 'GET') return ''
      if (name !== 'UNLINK') return undefined
      const json = JSON.stringify('x'.repeat(size))
      return { close: `$${json.length}\r\n${json}\r\n:1\r\n` }
    })
    try {
      const answers = {}
      for (size = 65_510; size <= 65_530; size++) {
        const kv = createKvStore(fake.url, { commandTimeout: 3_000, mounts: { default: { prefix: 'kv:', maxValueSize: 1_000_000 } } })
        await kv.has('default', 'warm')
        const got = settle(kv.get('default', 'a'))
        const removed = settle(kv.delete('default', 'b'))
        busy(50)
        const outcome = `get ${typeof (await got)}, delete ${await removed}`
        ;(answers[outcome] ??= []).push(size)
        await kv.close()
      }
      assert.deepEqual(Object.keys(answers), ['get string, delete true'], JSON.stringify(answers))
    } finally {
      await fake.close()
    }
  })
})

describe('replies out of band or of a shape the command cannot give', () => {
  const outcome = (promise) =>
    promise.then(
      (v) => ({ v }),
      (err) => ({ code: err.code, name: err.name }),
    )

  it('a RESP3 push frame among the replies answers no call: each call gets its own answer', async () => {
    let pushed = false
    const fake = await startFakeRedis(([name, key]) => {
      if (name !== 'GET') return undefined
      const json = JSON.stringify(`value of ${key}`)
      const push = pushed ? '' : '>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n'
      pushed = true
      return `${push}$${json.length}\r\n${json}\r\n`
    })
    const kv = createKvStore(fake.url, { commandTimeout: 3_000, mounts: { default: { prefix: 'kv:' } } })
    try {
      const got = await Promise.all([1, 2, 3, 4].map((i) => outcome(kv.get('default', `k${i}`))))
      assert.deepEqual(
        got,
        [1, 2, 3, 4].map((i) => ({ v: `value of kv:k${i}` })),
      )
    } finally {
      await kv.close()
      await fake.close()
    }
  })

  it('a reply of the wrong type or length rejects UNAVAILABLE (never a made-up answer) and the connection is replaced', async () => {
    // Each command named is answered with a reply it cannot get; the rest as Redis would.
    const kvWarm = (kv) => kv.set('default', 'w', 1)
    const wsWarm = (kv, ws) => ws.tryBeginExecutionTask('w', 't')
    const cases = [
      ['GET', ':42\r\n', (kv) => kv.get('default', 'k'), kvWarm],
      ['HGETALL', ':5\r\n', (kv, ws) => ws.getExecutionTaskResults('e'), wsWarm],
      ['EXISTS', '$3\r\nabc\r\n', (kv) => kv.has('default', 'k'), kvWarm],
      ['EXEC', '*0\r\n', (kv, ws) => ws.commitExecutionTaskResult('e', 't', 'r'), wsWarm],
      ['MGET', '*1\r\n$-1\r\n', (kv) => kv.getMany('default', ['a', 'b']), kvWarm],
      ['UNLINK', '$1\r\n1\r\n', (kv) => kv.delete('default', 'k'), kvWarm],
    ]
    for (const [command, wrong, call, warm] of cases) {
      let connections = 0
      let inMulti = false
      const fake = await startFakeRedis(([name]) => {
        if (name === 'EXEC') inMulti = false
        if (name === command) return wrong
        if (name === 'PING') return (connections++, '+PONG\r\n')
        if (name === 'MULTI') return ((inMulti = true), '+OK\r\n')
        if (name === 'EXEC') return '*0\r\n'
        if (inMulti) return '+QUEUED\r\n'
        return name === 'GET' ? '$-1\r\n' : name === 'SET' ? '+OK\r\n' : ':0\r\n'
      })
      const kv = createKvStore(fake.url, { commandTimeout: 3_000, mounts: { default: { prefix: 'kv:' } } })
      const ws = createRedisStore(fake.url, { commandTimeout: 3_000 })
      try {
        await warm(kv, ws)
        const opened = connections
        const got = await outcome(call(kv, ws))
        assert.deepEqual(got, { code: 'UNAVAILABLE', name: 'DurastateError' }, `${command} answered ${JSON.stringify(wrong)}`)
        await warm(kv, ws)
        assert.ok(connections > opened, `${command}: the connection is replaced (${connections} opened)`)
      } finally {
        await Promise.all([kv.close(), ws.close()])
        await fake.close()
      }
    }
  })
  it('a SCAN cursor given twice in one listing rejects UNAVAILABLE, where keys() went round forever', async () => {
    // Cursors 7 then 9 then 7 again: a server that does not iterate as Redis does.
    let scans = 0
    const fake = await startFakeRedis(([name]) => {
      if (name !== 'SCAN') return undefined
      scans++
      const cursor = scans % 2 === 1 ? '7' : '9'
      return `*2\r\n$1\r\n${cursor}\r\n*1\r\n$4\r\nkv:a\r\n`
    })
    const kv = createKvStore(fake.url, { commandTimeout: 3_000, mounts: { default: { prefix: 'kv:' } } })
    try {
      const got = await outcome(kv.keys('default'))
      assert.deepEqual(got, { code: 'UNAVAILABLE', name: 'DurastateError' })
      assert.equal(scans, 3, 'the listing stopped at the first cursor given again')
      // The listing of `durastate inspect` and `durastate ui` (pages asked by the CLI).
      scans = 0
      const inspector = createInspector(fake.url)
      try {
        await assert.rejects(listExecutionIds(inspector, 'p:'), { code: 'UNAVAILABLE', name: 'DurastateError', message: /cursor 7 a second time/ })
        assert.equal(scans, 3)
      } finally {
        inspector.close()
      }
    } finally {
      await kv.close()
      await fake.close()
    }
  })
})
