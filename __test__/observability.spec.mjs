// Observability: every store call on the tracing channel `durastate:call` (the events and
// the context tracePromise gives, never a value), connection events on
// `durastate:connection`, and a runtime without tracingChannel running untraced.
// Runs on Node.js, Bun and Deno.
import assert from 'node:assert/strict'
import diagnostics from 'node:diagnostics_channel'
import { mkdtempSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import Redis from 'ioredis'
import { createKvStore, createMemoryStore, createPostgresStore, createSqliteStore, createStore } from '../index.js'
import { POSTGRES_PASSWORD, startPostgresServer } from './helpers/postgres-server.mjs'
import { startRedisServer, until } from './helpers/redis-server.mjs'

const require = createRequire(import.meta.url)
const SECRET = 'value-that-must-not-be-traced'
const EVENTS = ['start', 'end', 'asyncStart', 'asyncEnd', 'error']

/** Subscribes to `durastate:call`; returns the calls seen ({ context, events }) and a stop function. */
function recordCalls() {
  const channel = diagnostics.tracingChannel('durastate:call')
  const calls = new Map()
  const handlers = Object.fromEntries(
    EVENTS.map((event) => [
      event,
      (context) => {
        if (!calls.has(context)) calls.set(context, [])
        calls.get(context).push(event)
      },
    ]),
  )
  channel.subscribe(handlers)
  return {
    get calls() {
      return [...calls].map(([context, events]) => ({ context, events }))
    },
    stop: () => channel.unsubscribe(handlers),
  }
}

/** Subscribes to `durastate:connection`; returns the events seen and a stop function. */
function recordConnections() {
  const events = []
  const listener = (event) => events.push(event)
  diagnostics.subscribe('durastate:connection', listener)
  return { events, stop: () => diagnostics.unsubscribe('durastate:connection', listener) }
}

describe('tracing channel durastate:call', () => {
  let redis
  let dir
  const stores = []
  const track = (store) => (stores.push(store), store)

  before(async () => {
    redis = await startRedisServer()
    dir = mkdtempSync(join(tmpdir(), 'durastate-trace-'))
  })

  after(async () => {
    await Promise.all(stores.map((s) => s.close()))
    await redis?.stop()
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  const backends = {
    memory: () => ({ worker: track(createMemoryStore()), kv: track(createKvStore('memory:')), server: {} }),
    sqlite: () => ({
      worker: track(createSqliteStore(join(dir, 'w.db'))),
      kv: track(createKvStore(`sqlite:${join(dir, 'kv.db')}`)),
      server: {},
    }),
    redis: () => ({
      worker: track(createStore(`${redis.url}/2`, { prefix: 'trace:' })),
      kv: track(createKvStore(`${redis.url}/2`)),
      server: { serverAddress: '127.0.0.1', serverPort: redis.port, database: '2' },
    }),
  }

  for (const [backend, open] of Object.entries(backends)) {
    it(`traces every WorkerStore and KV call on ${backend}, with names and ids, never values`, async () => {
      const { worker, kv, server } = open()
      const recorder = recordCalls()
      try {
        await worker.beginExecution('e1')
        await worker.beginExecutionTask('e1', 'a:b')
        await worker.commitExecutionTaskResult('e1', 'a:b', { secret: SECRET })
        assert.deepEqual(await worker.getExecutionTaskResult('e1', 'a:b'), { secret: SECRET })
        await worker.getExecutionTaskResults('e1')
        await kv.set('default', 'k', SECRET)
        assert.equal(await kv.mount('default').get('k'), SECRET)
        await kv.getMany('default', ['k'])
        await kv.setJson('default', 'j', JSON.stringify(SECRET))
        assert.equal(await kv.mount('default').getJson('j'), JSON.stringify(SECRET))
      } finally {
        recorder.stop()
      }
      const calls = recorder.calls
      assert.deepEqual(
        calls.map((c) => c.context.operation),
        [
          'beginExecution',
          'beginExecutionTask',
          'commitExecutionTaskResult',
          'getExecutionTaskResult',
          'getExecutionTaskResults',
          'set',
          'get',
          'getMany',
          'setJson',
          'getJson',
        ],
      )
      for (const { context, events } of calls) {
        assert.deepEqual(events, ['start', 'end', 'asyncStart', 'asyncEnd'], context.operation)
        assert.equal(context.backend, backend)
        assert.equal(context.error, undefined)
        assert.ok(!JSON.stringify(context).includes(SECRET), `${context.operation}: a value is in the context`)
        assert.ok(!('result' in context), `${context.operation}: result in the context`)
        for (const [field, value] of Object.entries(server)) assert.equal(context[field], value, `${context.operation}: ${field}`)
        if (backend !== 'redis') assert.equal(context.serverAddress, undefined)
      }
      const [begin, task, commit] = calls
      assert.deepEqual({ ...begin.context }, { operation: 'beginExecution', store: 'worker', backend, ...server, executionId: 'e1' })
      assert.equal(task.context.taskId, 'a:b')
      assert.equal(commit.context.executionId, 'e1')
      const set = calls[5].context
      assert.deepEqual([set.store, set.mount, set.key], ['kv', 'default', 'k'])
      assert.deepEqual([calls[6].context.mount, calls[6].context.key], ['default', 'k'])
      assert.equal(calls[7].context.key, undefined)
    })
  }

  it('publishes a failed call on error, with its code, then asyncStart and asyncEnd', async () => {
    const store = createMemoryStore()
    await store.close()
    const kv = track(createKvStore('memory:', { mounts: { ro: { mode: 'read' } } }))
    const recorder = recordCalls()
    try {
      await assert.rejects(store.beginExecution('e'), (err) => err.code === 'DISPOSED')
      await assert.rejects(kv.set('ro', 'k', 1), (err) => err.code === 'READ_ONLY')
      await assert.rejects(kv.get('nope', 'k'), (err) => err.code === 'UNKNOWN_MOUNT')
    } finally {
      recorder.stop()
    }
    const calls = recorder.calls
    assert.equal(calls.length, 3)
    for (const { context, events } of calls) {
      assert.deepEqual(events, ['start', 'end', 'error', 'asyncStart', 'asyncEnd'])
      assert.equal(context.error.name, 'DurastateError')
    }
    assert.deepEqual(
      calls.map((c) => c.context.error.code),
      ['DISPOSED', 'READ_ONLY', 'UNKNOWN_MOUNT'],
    )
  })

  it('leaves an id, mount or key that is not a string out of the context: a value passed by mistake is never traced', async () => {
    const store = track(createMemoryStore())
    const kv = track(createKvStore('memory:'))
    const secret = { token: SECRET }
    const recorder = recordCalls()
    try {
      await assert.rejects(store.beginExecution(secret), (err) => err.code === 'INVALID_INPUT')
      await assert.rejects(store.getExecutionTaskResult('e', secret), (err) => err.code === 'INVALID_INPUT')
      await assert.rejects(store.isExecutionInProgress([SECRET]), (err) => err.code === 'INVALID_INPUT')
      await assert.rejects(kv.get(secret, 'k'), (err) => err.code === 'INVALID_INPUT')
      await assert.rejects(kv.set('default', secret, 1), (err) => err.code === 'INVALID_INPUT')
      await assert.rejects(kv.has('default', 5), (err) => err.code === 'INVALID_INPUT')
    } finally {
      recorder.stop()
    }
    const calls = recorder.calls
    assert.equal(calls.length, 6)
    for (const { context, events } of calls) {
      assert.deepEqual(events, ['start', 'end', 'error', 'asyncStart', 'asyncEnd'], context.operation)
      assert.ok(!JSON.stringify(context).includes(SECRET), `${context.operation}: the argument is in the context: ${JSON.stringify(context)}`)
      assert.ok(!context.error.message.includes(SECRET), context.error.message)
      for (const field of ['executionId', 'taskId', 'mount', 'key']) {
        if (field in context) assert.equal(typeof context[field], 'string', `${context.operation}: ${field}`)
      }
    }
    assert.deepEqual(
      calls.map(({ context: { operation, executionId, taskId, mount, key } }) => ({ operation, executionId, taskId, mount, key })),
      [
        { operation: 'beginExecution', executionId: undefined, taskId: undefined, mount: undefined, key: undefined },
        { operation: 'getExecutionTaskResult', executionId: 'e', taskId: undefined, mount: undefined, key: undefined },
        { operation: 'isExecutionInProgress', executionId: undefined, taskId: undefined, mount: undefined, key: undefined },
        { operation: 'get', executionId: undefined, taskId: undefined, mount: undefined, key: 'k' },
        { operation: 'set', executionId: undefined, taskId: undefined, mount: 'default', key: undefined },
        { operation: 'has', executionId: undefined, taskId: undefined, mount: 'default', key: undefined },
      ],
    )
  })

  it('keeps corrupt stored JSON out of the CORRUPT_DATA message and the context: key, field, parse position and length only', async () => {
    const io = new Redis(`${redis.url}/2`, { lazyConnect: true })
    const worker = track(createStore(`${redis.url}/2`, { prefix: 'corrupt:' }))
    const kv = track(createKvStore(`${redis.url}/2`, { prefix: 'corrupt-kv:' }))
    const stored = '{"apiKey":"' + SECRET + '", "broken'
    const bare = SECRET + '-not-json'
    const unclosed = '{"apiKey":"' + SECRET + '"x}'
    try {
      await io.connect()
      await io.hset('corrupt:e-results', 'broken', stored, 'bare', bare, 'unclosed', unclosed)
      await io.set('corrupt-kv:k', stored)
      await io.set('corrupt-kv:b', bare)
    } finally {
      io.disconnect()
    }
    const recorder = recordCalls()
    const errors = []
    const reject = async (promise) =>
      errors.push(
        await promise.then(
          () => assert.fail('resolved'),
          (err) => err,
        ),
      )
    try {
      await reject(worker.getExecutionTaskResult('e', 'broken'))
      await reject(worker.getExecutionTaskResult('e', 'bare'))
      await reject(worker.getExecutionTaskResult('e', 'unclosed'))
      await reject(worker.getExecutionTaskResults('e'))
      await reject(kv.get('default', 'k'))
      await reject(kv.get('default', 'b'))
      await reject(kv.getAll('default'))
    } finally {
      recorder.stop()
    }
    const { inspect } = await import('node:util')
    for (const err of errors) {
      assert.equal(err.code, 'CORRUPT_DATA', err.message)
      assert.ok(!err.message.includes(SECRET), `the stored text is in the message: ${err.message}`)
      assert.ok(!inspect(err).includes(SECRET), `the stored text is in the logged error: ${inspect(err)}`)
      assert.ok(!JSON.stringify(err).includes(SECRET))
      assert.ok([stored, bare, unclosed].includes(err.stored), 'err.stored holds the text')
      assert.equal(Object.getOwnPropertyDescriptor(err, 'stored').enumerable, false)
      assert.match(err.message, new RegExp(`the stored text is ${err.stored.length} characters`))
    }
    // The parser's own words (before any quote of the text) differ by runtime: V8's name
    // the position ("Unterminated string in JSON at position 50"), JavaScriptCore's not.
    assert.match(errors[0].message, /^stored JSON at key "corrupt:e-results" field "broken" is not valid: [^"]+ \(the stored text is 50 characters\)$/)
    assert.match(errors[1].message, /key "corrupt:e-results" field "bare" is not valid: [^"]+ \(the stored text is 38 characters\)$/)
    assert.match(errors[2].message, /field "unclosed" is not valid: [^"]+ \(the stored text is 43 characters\)$/)
    assert.match(errors[4].message, /^stored JSON of key "k" in mount 'default' is not valid: [^"]+ \(the stored text is 50 characters\)$/)
    if (!globalThis.Bun) {
      assert.match(errors[0].message, /is not valid: Unterminated string in JSON at position 50 /)
      assert.match(errors[2].message, /is not valid: Expected ',' or '}' after property value in JSON at position 41 /)
    }
    assert.match(errors[5].message, /key "b" in mount 'default' is not valid/)
    const calls = recorder.calls
    assert.equal(calls.length, 7)
    for (const { context } of calls) {
      assert.equal(context.error.code, 'CORRUPT_DATA')
      assert.ok(!JSON.stringify({ ...context, message: context.error.message }).includes(SECRET), context.error.message)
    }
  })

  it('traces a method called without its store (taken off it): start, end, error, asyncStart, asyncEnd, with no backend', async () => {
    const store = track(createMemoryStore())
    const kv = track(createKvStore('memory:'))
    const { beginExecution } = store
    const { get } = kv
    const recorder = recordCalls()
    try {
      await assert.rejects(beginExecution('e'), (err) => err.code === 'INVALID_INPUT' && /without its store/.test(err.message))
      await assert.rejects(get.call(undefined, 'default', 'k'), (err) => err.code === 'INVALID_INPUT')
      await assert.rejects(store.getExecutionTaskResult.call({}, 'e', 't'), (err) => err.code === 'INVALID_INPUT')
    } finally {
      recorder.stop()
    }
    const calls = recorder.calls
    assert.deepEqual(
      calls.map(({ context: { error, ...rest } }) => ({ ...rest, code: error?.code })),
      [
        { operation: 'beginExecution', store: 'worker', code: 'INVALID_INPUT' },
        { operation: 'get', store: 'kv', code: 'INVALID_INPUT' },
        { operation: 'getExecutionTaskResult', store: 'worker', code: 'INVALID_INPUT' },
      ],
    )
    for (const { context, events } of calls) assert.deepEqual(events, ['start', 'end', 'error', 'asyncStart', 'asyncEnd'], context.operation)
  })

  it('binds stores to start: the call runs in the store set there, its caller keeps its own', async () => {
    const { AsyncLocalStorage } = await import('node:async_hooks')
    const storage = new AsyncLocalStorage()
    const channel = diagnostics.tracingChannel('durastate:call')
    const inCall = []
    const handlers = { asyncEnd: () => inCall.push(storage.getStore()) }
    channel.start.bindStore(storage, (context) => `in ${context.operation}`)
    channel.subscribe(handlers)
    try {
      const store = track(createMemoryStore())
      let after
      await storage.run('caller', async () => {
        await store.beginExecution('als')
        after = storage.getStore()
      })
      assert.deepEqual(inCall, ['in beginExecution'])
      assert.equal(after, 'caller')
    } finally {
      channel.unsubscribe(handlers)
      channel.start.unbindStore(storage)
    }
  })

  it('runs untraced where diagnostics_channel has no tracingChannel', () => {
    const channels = require('node:diagnostics_channel')
    const indexPath = require.resolve('../index.js')
    const saved = channels.tracingChannel
    const cached = require.cache[indexPath]
    let fresh
    try {
      channels.tracingChannel = undefined
      delete require.cache[indexPath]
      fresh = require('../index.js')
    } catch (err) {
      // A runtime whose module namespace cannot be changed: nothing to simulate here.
      assert.ok(err instanceof TypeError, String(err))
      return
    } finally {
      channels.tracingChannel = saved
      if (cached) require.cache[indexPath] = cached
    }
    assert.notEqual(fresh, require('../index.js'))
    const store = fresh.createMemoryStore()
    const recorder = recordCalls()
    return (async () => {
      try {
        await store.beginExecution('e')
        assert.equal(await store.isExecutionInProgress('e'), true)
      } finally {
        recorder.stop()
        await store.close()
      }
      assert.deepEqual(recorder.calls, [])
    })()
  })
})

describe('tracing channel durastate:call on Postgres', () => {
  let pg
  let redis
  before(async () => {
    ;[pg, redis] = await Promise.all([startPostgresServer(), startRedisServer()])
  })
  after(async () => {
    await Promise.all([pg?.stop(), redis?.stop()])
  })

  it('names a Postgres store postgres, with its server and database, wherever its target came from', async () => {
    const saved = { DURASTATE_URL: process.env.DURASTATE_URL, REDIS_URL: process.env.REDIS_URL, DATABASE_URL: process.env.DATABASE_URL }
    const restore = () => {
      for (const [name, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[name]
        else process.env[name] = value
      }
    }
    const stores = []
    const recorder = recordCalls()
    try {
      // a Redis URL in the environment names no Postgres store
      delete process.env.DURASTATE_URL
      process.env.REDIS_URL = redis.url
      process.env.DATABASE_URL = pg.url
      stores.push(
        createPostgresStore(pg.url, { prefix: 'o1:' }),
        createPostgresStore({ host: '127.0.0.1', port: pg.port, user: 'postgres', password: POSTGRES_PASSWORD, database: 'postgres' }, { prefix: 'o2:' }),
        createPostgresStore(undefined, { prefix: 'o3:' }),
        createStore(pg.url, { prefix: 'o4:' }),
      )
      delete process.env.REDIS_URL
      stores.push(createStore(undefined, { prefix: 'o5:' }))
      for (const store of stores) await store.beginExecution('e')
      const kv = createKvStore(pg.url)
      stores.push(kv)
      await kv.set('default', 'k', 1)
    } finally {
      recorder.stop()
      restore()
    }
    const calls = recorder.calls
    assert.equal(calls.length, 6)
    for (const { context } of calls) {
      assert.deepEqual(
        [context.operation, context.backend, context.serverAddress, context.serverPort, context.database],
        [context.operation, 'postgres', '127.0.0.1', pg.port, 'postgres'],
      )
    }
    await Promise.all(stores.map((s) => s.close()))
  })

  // A Postgres store's pool: `connect` for its first connection, `drop` when one is found
  // broken (here: ended by the server), `reconnect` when a new one replaces it.
  it('publishes connect, drop (with the error code) and reconnect for the connections of a Postgres store', async () => {
    const recorder = recordConnections()
    const appName = 'durastate-events'
    const store = createPostgresStore(`${pg.url}?application_name=${appName}`, { prefix: 'ev:', poolSize: 3 })
    const address = `127.0.0.1:${pg.port}`
    try {
      // Calls at once: the pool opens more than one connection, and says `connect` once.
      await Promise.all([store.beginExecution('e'), store.beginExecution('f'), store.commitExecutionTaskResult('f', 't', 1)])
      await until('the connect event', async () => recorder.events.some((e) => e.type === 'connect'), 5_000)
      assert.deepEqual(recorder.events, [{ type: 'connect', address, store: 'worker', backend: 'postgres' }])
      const ended = pg.sql(`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '${appName}'`)
      assert.ok(Number(ended) >= 1, `the server ended ${ended} connections`)
      await until('the drop event', async () => recorder.events.some((e) => e.type === 'drop'), 5_000)
      await until('a call after the drop', async () => (await store.isExecutionInProgress('e')) === true, 10_000)
      await until('the reconnect event', async () => recorder.events.some((e) => e.type === 'reconnect'), 5_000)
      const types = recorder.events.map((e) => e.type)
      assert.deepEqual(types.slice(0, 3), ['connect', 'drop', 'reconnect'])
      const drop = recorder.events[1]
      assert.deepEqual([drop.address, drop.store, drop.backend, drop.error.code], [address, 'worker', 'postgres', 'UNAVAILABLE'])
      assert.match(drop.error.message, /terminating connection/)
      assert.deepEqual(recorder.events[2], { type: 'reconnect', address, store: 'worker', backend: 'postgres' })
      // Closing the store ends its connections: no `drop`.
      const before = recorder.events.length
      await store.close()
      await new Promise((resolve) => setTimeout(resolve, 200))
      assert.deepEqual(recorder.events.slice(before), [])
    } finally {
      recorder.stop()
      await store.close()
    }
  })

  // The pool keeps serving calls on its other connections when one is ended: the store is
  // not left "dropped" while every call succeeds (no new connection is opened then).
  it('publishes reconnect after a drop of one pool connection once another one answers a call', async () => {
    const recorder = recordConnections()
    const appName = 'durastate-events-one'
    const store = createPostgresStore(`${pg.url}?application_name=${appName}`, { prefix: 'ev1:', poolSize: 3 })
    const address = `127.0.0.1:${pg.port}`
    const open = () => Number(pg.sql(`SELECT count(*) FROM pg_stat_activity WHERE application_name = '${appName}'`))
    try {
      await until(
        'the pool has more than one connection',
        async () => (await Promise.all(Array.from({ length: 16 }, (_, i) => store.beginExecution(`p${i}`))), open() >= 2),
        10_000,
      )
      const ended = pg.sql(`SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity WHERE application_name = '${appName}' LIMIT 1) one`)
      assert.equal(Number(ended), 1)
      await until('the drop event', async () => recorder.events.some((e) => e.type === 'drop'), 10_000)
      // One call at a time: the connections left answer them, the pool opens none.
      await until(
        'the reconnect event',
        async () => {
          assert.equal(await store.isExecutionInProgress('p0'), true)
          return recorder.events.some((e) => e.type === 'reconnect')
        },
        5_000,
      )
      await store.isExecutionInProgress('p1')
      assert.deepEqual(
        recorder.events.map((e) => [e.type, e.address]),
        [
          ['connect', address],
          ['drop', address],
          ['reconnect', address],
        ],
      )
    } finally {
      recorder.stop()
      await store.close()
    }
  })
})

describe('connection events on durastate:connection', () => {
  let redis
  let admin

  before(async () => {
    redis = await startRedisServer()
    admin = new Redis(redis.url)
  })

  after(async () => {
    admin?.disconnect()
    await redis?.stop()
  })

  it('publishes connect, drop (with the error code) and reconnect, with the address', async () => {
    const recorder = recordConnections()
    const store = createStore(redis.url, { prefix: 'conn:' })
    const address = `127.0.0.1:${redis.port}`
    try {
      await store.beginExecution('e')
      await until('the connect event', async () => recorder.events.some((e) => e.type === 'connect'), 5_000)
      assert.deepEqual(recorder.events[0], { type: 'connect', address, store: 'worker', backend: 'redis' })
      await admin.call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes')
      // The next call finds the connection gone (or the driver saw it close) and connects again.
      await until('a call after the drop', async () => (await store.isExecutionInProgress('e')) === true, 10_000)
      await until('the reconnect event', async () => recorder.events.some((e) => e.type === 'reconnect'), 5_000)
      const types = recorder.events.map((e) => e.type)
      assert.deepEqual(types.slice(0, 3), ['connect', 'drop', 'reconnect'])
      const drop = recorder.events[1]
      assert.equal(drop.address, address)
      assert.equal(typeof drop.error.code, 'string')
      assert.equal(recorder.events[2].address, address)
    } finally {
      recorder.stop()
      await store.close()
    }
  })

  it('publishes nothing for embedded stores, and a closed store stops publishing', async () => {
    const recorder = recordConnections()
    try {
      const memory = createMemoryStore()
      await memory.beginExecution('e')
      await memory.close()
      const kv = createKvStore(redis.url)
      await kv.set('default', 'k', 1)
      await kv.close()
      await new Promise((resolve) => setTimeout(resolve, 100))
      assert.deepEqual(
        recorder.events.map((e) => [e.type, e.store, e.backend]),
        [['connect', 'kv', 'redis']],
      )
    } finally {
      recorder.stop()
    }
  })
})
