// `durastate ui`, `durastate reset` and `durastate dispose`: the HTTP API (Host and Origin
// checks, token, bounds) with plain requests, and the page in a real headless Chromium
// (Debian's `chromium`, driven by playwright-core, which downloads nothing), on SQLite
// and on Redis: listing, search, the tree of steps, live updates, read-only refusals,
// the two write actions with their confirmations, and a hostile task id and value shown
// as text.
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { chromium } from 'playwright-core'
import binding, { createInspector } from '../binding.js'
import { createKvStore, createPostgresStore, createRedisStore, createSqliteStore } from '../index.js'
import { listExecutionIds, redactSecrets } from '../bin/executions.mjs'
import { isAllowedHost, MAX_LISTED, MAX_READ, MAX_SCANNED, MAX_VALUE_CHARS, MIN_READ_BATCH, startUi } from '../bin/ui.mjs'
import { testPostgres } from './helpers/postgres-server.mjs'
import { startRedisServer } from './helpers/redis-server.mjs'

const CLI = new URL('../bin/durastate.mjs', import.meta.url).pathname
const CHROMIUM = process.env.DURASTATE_TEST_CHROMIUM || '/usr/bin/chromium'
const EVIL_ID = 'evil"><img src=x onerror="window.__pwned=1">'
const EVIL_TASK = '<script>window.__pwned=2</script>:<b>bold</b>'
const EVIL_VALUE = { html: '<img src=x onerror="window.__pwned=3"></pre><script>window.__pwned=4</script>' }
const BIG = 'x'.repeat(MAX_VALUE_CHARS * 2)

/** The executions every backend gets: in progress with nested steps, finished, hostile, big. */
async function seed(store) {
  await store.beginExecution('order-1')
  await store.commitExecutionTaskResult('order-1', 'validate', { ok: true, total: 42 })
  await store.commitExecutionTaskResult('order-1', 'reserve-stock:warehouse-berlin', { hold: 'BER-1' })
  await store.commitExecutionTaskResult('order-1', 'reserve-stock', { holds: ['BER-1'] })
  await store.beginExecutionTask('order-1', 'charge')
  await store.commitExecutionTaskResult('order-2', 'ship', { trackingId: 'TRK-2' })
  await store.beginExecution(EVIL_ID)
  await store.commitExecutionTaskResult(EVIL_ID, EVIL_TASK, EVIL_VALUE)
  await store.commitExecutionTaskResult('big-1', 'export', BIG)
}

/** A request with any headers (fetch would not let the test set Host). */
function raw(url, { method = 'GET', headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        let json
        try {
          json = JSON.parse(text)
        } catch {}
        resolve({ status: res.statusCode, headers: res.headers, text, json })
      })
    })
    req.on('error', reject)
    req.end(body)
  })
}

describe('durastate ui: HTTP API', () => {
  let dir
  let path
  let readOnly
  let writable

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'durastate-ui-'))
    path = join(dir, 'state.db')
    const store = createSqliteStore(path)
    await seed(store)
    await store.close()
    readOnly = await startUi({ url: `sqlite:${path}`, createInspector })
    writable = await startUi({ url: `sqlite:${path}`, allowWrites: true, createInspector })
  })

  after(async () => {
    await readOnly?.close()
    await writable?.close()
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  it('binds to loopback and serves the page with a strict Content-Security-Policy', async () => {
    assert.match(readOnly.url, /^http:\/\/127\.0\.0\.1:\d+\/$/)
    const page = await raw(readOnly.url)
    assert.equal(page.status, 200)
    assert.match(page.headers['content-security-policy'], /script-src 'self'/)
    assert.equal(page.headers['x-content-type-options'], 'nosniff')
    assert.match(page.text, /<script src="\/app\.js" defer><\/script>/)
    const info = (await raw(`${readOnly.url}api/info`)).json
    assert.deepEqual([info.allowWrites, info.token], [false, null])
  })

  it('refuses a Host header that is not an IP address or localhost (DNS rebinding), and other origins', async () => {
    const port = readOnly.port
    const rebound = await raw(`${readOnly.url}api/executions`, { headers: { host: `attacker.example:${port}` } })
    assert.equal(rebound.status, 421)
    assert.equal(rebound.json.error.code, 'FORBIDDEN')
    assert.equal((await raw(`${readOnly.url}api/executions`, { headers: { host: `localhost:${port + 1}` } })).status, 421)
    assert.equal((await raw(`${readOnly.url}`, { headers: { host: `localhost:${port}` } })).status, 200)
    assert.equal((await raw(`${readOnly.url}api/info`, { headers: { host: `[::1]:${port}` } })).status, 200)
    const foreign = await raw(`${readOnly.url}api/executions`, { headers: { origin: 'http://attacker.example' } })
    assert.equal(foreign.status, 403)
    assert.equal(isAllowedHost('127.0.0.1', 80), true)
    assert.equal(isAllowedHost('my-box:8080', 8080, 'my-box'), true)
    assert.equal(isAllowedHost(undefined, 80), false)
  })

  it('lists, reads and bounds', async () => {
    const list = (await raw(`${readOnly.url}api/executions`)).json
    assert.deepEqual(list.executions.map((e) => e.id).sort(), ['big-1', EVIL_ID, 'order-1', 'order-2'].sort())
    assert.equal(list.executions[0].inProgress, true, 'in progress first')
    const found = (await raw(`${readOnly.url}api/executions?search=order`)).json
    assert.deepEqual(found.executions.map((e) => e.id).sort(), ['order-1', 'order-2'])
    const one = (await raw(`${readOnly.url}api/executions?limit=1`)).json
    assert.deepEqual([one.executions.length, one.truncated], [1, true])
    for (const limit of ['0', String(MAX_LISTED + 1), 'x', '1.5']) {
      const bad = await raw(`${readOnly.url}api/executions?limit=${limit}`)
      assert.equal(bad.status, 400, limit)
      assert.equal(bad.json.error.code, 'INVALID_INPUT')
    }
    assert.equal((await raw(`${readOnly.url}api/execution?id=${'x'.repeat(5000)}`)).status, 400)
    assert.equal((await raw(`${readOnly.url}api/execution`)).status, 400)
    assert.equal((await raw(`${readOnly.url}api/execution?id=nope`)).json.error.code, 'NOT_FOUND')
    assert.equal((await raw(`${readOnly.url}api/executions/order-1`)).status, 404)
    const big = (await raw(`${readOnly.url}api/execution?id=big-1`)).json
    assert.equal(big.steps[0].truncated, true)
    assert.equal(big.steps[0].value.length, MAX_VALUE_CHARS)
    assert.equal(big.steps[0].size, BIG.length + 2)
    const order = (await raw(`${readOnly.url}api/execution?id=order-1`)).json
    assert.deepEqual(
      order.steps.map((s) => [s.id, s.state]),
      [
        ['charge', 'in progress'],
        ['reserve-stock', 'done'],
        ['reserve-stock:warehouse-berlin', 'done'],
        ['validate', 'done'],
      ],
    )
    assert.equal(order.steps[3].value, JSON.stringify({ ok: true, total: 42 }, null, 2))
  })

  it('refuses writes when read-only, and without the page origin or token', async () => {
    const post = (server, headers, body = '{"id":"order-1","taskId":"validate"}') =>
      raw(`${server.url}api/execution/reset`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body })
    const origin = (server) => `http://127.0.0.1:${server.port}`
    const readOnlyAnswer = await post(readOnly, { origin: origin(readOnly) })
    assert.deepEqual([readOnlyAnswer.status, readOnlyAnswer.json.error.code], [403, 'READ_ONLY'])
    const { token } = (await raw(`${writable.url}api/info`)).json
    assert.equal(typeof token, 'string')
    assert.equal((await post(writable, { origin: origin(writable) })).status, 403, 'no token')
    assert.equal((await post(writable, { 'x-durastate-token': token })).status, 403, 'no origin')
    assert.equal((await post(writable, { origin: origin(writable), 'x-durastate-token': `${token}x` })).status, 403, 'wrong token')
    const headers = { origin: origin(writable), 'x-durastate-token': token }
    assert.equal((await post(writable, headers, 'x'.repeat(70 * 1024))).status, 413)
    assert.equal((await post(writable, headers, '[1]')).status, 400)
    assert.equal((await post(writable, headers, '{"id":"order-1","taskId":"nope"}')).json.error.code, 'NOT_FOUND')
    assert.equal((await post(writable, headers, '{"taskId":"validate"}')).status, 400, 'no id')
    assert.equal((await raw(`${writable.url}api/execution?id=order-1`, { method: 'DELETE' })).status, 405)
  })
})

describe('durastate ui: what it reads and shows', () => {
  let dir
  let path
  let url

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'durastate-ui-fixes-'))
    path = join(dir, 'state.db')
    url = `sqlite:${path}`
  })

  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  /** A UI on `url` whose inspector counts the executions read and the keys scanned. */
  async function countingUi(options = {}) {
    const counts = { read: 0, scanned: 0 }
    const ui = await startUi({
      url,
      ...options,
      createInspector: (target) => {
        const inspector = createInspector(target)
        return {
          scanExecutions: async (...args) => {
            const page = await inspector.scanExecutions(...args)
            counts.scanned += page.length - 1
            return page
          },
          execution: (key) => {
            counts.read++
            return inspector.execution(key)
          },
          resetSteps: (...args) => inspector.resetSteps(...args),
          dispose: (key) => inspector.dispose(key),
          close: () => inspector.close(),
        }
      },
    })
    return { ui, counts }
  }

  it('never shows the password of a store URL, multi-host and libpq ones included', async () => {
    for (const store of [
      'redis+sentinel://u:s3cret@127.0.0.1:1,127.0.0.1:2/m',
      'rediss+cluster://u:s3cret@127.0.0.1:1,127.0.0.1:2',
      'postgres://u:s3cret@127.0.0.1:1,127.0.0.1:2/db',
    ]) {
      const ui = await startUi({ url: store, createInspector })
      try {
        const info = (await raw(`${ui.url}api/info`)).json
        assert.doesNotMatch(info.store, /s3cret/, store)
        assert.match(info.store, /u:\*\*\*@127\.0\.0\.1:1,127\.0\.0\.1:2/)
      } finally {
        await ui.close()
      }
    }
    // A password holding a raw space or "/": the addon reads the user information up to the
    // last "@", and so does the page header.
    for (const [store, shown] of [
      ['redis://:s3cret pass@127.0.0.1:1/0', 'redis://:***@127.0.0.1:1/0'],
      ['postgres://app:s3cret pass@127.0.0.1:1/app', 'postgres://app:***@127.0.0.1:1/app'],
      // a parameter name the addon percent-decodes: `pass%77ord` is `password`
      ['postgres://app@127.0.0.1:1/app?pass%77ord=s3cret', 'postgres://app@127.0.0.1:1/app?pass%77ord=***'],
    ]) {
      const ui = await startUi({ url: store, createInspector })
      try {
        assert.equal((await raw(`${ui.url}api/info`)).json.store, shown)
      } finally {
        await ui.close()
      }
    }
    assert.equal(redactSecrets("host=h password='s3 cret' dbname=d"), 'host=h password=*** dbname=d')
    // libpq's key/value grammar: spaces around `=`, escapes, `&` and `;` in an unquoted value,
    // an unterminated quote.
    for (const [text, redacted] of [
      ["host=h password = 'a b\\' s3cret' dbname=d", 'host=h password = *** dbname=d'],
      ['host=h password=p&s3cret;w dbname=d', 'host=h password=*** dbname=d'],
      ['host=h password=a\\ s3cret dbname=d', 'host=h password=*** dbname=d'],
      ["host=h password='unterminated s3cret", 'host=h password=***'],
      ['host=h password=a\u00a0s3cret dbname=d', 'host=h password=*** dbname=d'],
    ]) {
      assert.equal(redactSecrets(text), redacted, text)
    }
    assert.equal(redactSecrets('redis+sentinel://h1,h2/m?sentinelPassword=s3cret&db=1'), 'redis+sentinel://h1,h2/m?sentinelPassword=***&db=1')
    // A password with characters a URL should have encoded (`?`, `#`).
    assert.equal(redactSecrets('redis://u:s3?cr#et@h:6379/0'), 'redis://u:***@h:6379/0')
  })

  it('redacts text of a megabyte in linear time, a quoted URL still up to its last "@"', () => {
    const MB = 1_000_000
    // each shape took seconds to minutes with the former regular expressions (quadratic)
    for (const text of [
      'a'.repeat(MB),
      JSON.stringify('a'.repeat(MB / 2) + '://' + 'b'.repeat(MB / 2)),
      'a'.repeat(MB / 2) + '://' + 'b'.repeat(MB / 2),
      JSON.stringify('x://'.repeat(MB / 4)),
      'x://'.repeat(MB / 4),
      '"k" '.repeat(MB / 4) + 'redis://u:pw@h',
    ]) {
      const started = performance.now()
      redactSecrets(text)
      const ms = performance.now() - started
      assert.ok(ms < 2_000, `${ms} ms for ${text.length} characters starting ${text.slice(0, 12)}`)
    }
    const password = 's3cret/ @'.repeat(MB / 9)
    const started = performance.now()
    assert.equal(
      redactSecrets(`no entry ${JSON.stringify(`kv:redis://app:${password}x@host:6379`)} in mount "m"`),
      'no entry "kv:redis://app:***@host:6379" in mount "m"',
    )
    assert.equal(redactSecrets(`"redis://app:${password}"`), '"redis://app:***@"')
    assert.equal(redactSecrets('a'.repeat(MB) + ' redis://app:s3cret@h1,h2/m'), `${'a'.repeat(MB)} redis://app:***@h1,h2/m`)
    assert.ok(performance.now() - started < 2_000)
  })

  const MANY = MAX_SCANNED + 500
  let many
  /** MANY executions `e0`... under the prefix "many:" (written once). */
  function fillMany() {
    many ??= (async () => {
      const store = createSqliteStore(path, { prefix: 'many:' })
      for (let i = 0; i < MANY; i += 1000) {
        await Promise.all(Array.from({ length: Math.min(1000, MANY - i) }, (_, j) => store.commitExecutionTaskResult(`e${i + j}`, 's', 1)))
      }
      await store.close()
    })()
    return many
  }

  it('a listing reads only the executions it shows and scans at most MAX_SCANNED keys', async () => {
    await fillMany()
    const { ui, counts } = await countingUi({ prefix: 'many:' })
    try {
      const list = (await raw(`${ui.url}api/executions`)).json
      assert.ok(counts.read <= MAX_LISTED, `read ${counts.read} executions`)
      assert.ok(counts.scanned <= MAX_SCANNED, `scanned ${counts.scanned} keys`)
      assert.equal(list.executions.length, MAX_LISTED)
      assert.deepEqual([list.truncated, list.complete], [true, false])
      Object.assign(counts, { read: 0, scanned: 0 })
      const none = (await raw(`${ui.url}api/executions?search=no-such-id`)).json
      assert.deepEqual([none.executions.length, none.truncated], [0, true])
      assert.ok(counts.read <= 1, 'a search that matches nothing reads at most the search text as an id')
      assert.ok(counts.scanned <= MAX_SCANNED, `a search that matches nothing scanned ${counts.scanned} keys`)
      Object.assign(counts, { read: 0, scanned: 0 })
      assert.equal((await raw(`${ui.url}api/executions?limit=3`)).json.executions.length, 3)
      assert.equal(counts.read, 3)
    } finally {
      await ui.close()
    }
  })

  it('a search for an exact id finds the execution past the MAX_SCANNED keys a listing scans', async () => {
    await fillMany()
    const inspector = createInspector(url)
    const { ids: seen, truncated } = await listExecutionIds(inspector, 'many:', { maxScanned: MAX_SCANNED })
    inspector.close()
    assert.equal(truncated, true)
    const beyond = Array.from({ length: MANY }, (_, i) => `e${i}`).find((id) => !seen.includes(id))
    assert.ok(beyond, 'some execution lies beyond the scan')
    const ui = await startUi({ url, prefix: 'many:', createInspector })
    try {
      const exact = (await raw(`${ui.url}api/executions?search=${beyond}`)).json
      assert.deepEqual(
        exact.executions.map((e) => e.id),
        [beyond],
      )
    } finally {
      await ui.close()
    }
  })

  it('shows a step value as the stored JSON text, digits as stored', async () => {
    const stored = '{"orderId":12345678901234567890,"amount":1.10,"ratio":1e400,"s":"a\\"b,{"}'
    const native = binding.createSqliteStore(path, { prefix: 'raw:' })
    await native.commitExecutionTaskResult('exec-1', 'charge', stored)
    native.close()
    const ui = await startUi({ url, prefix: 'raw:', createInspector })
    try {
      const detail = (await raw(`${ui.url}api/execution?id=exec-1`)).json
      assert.equal(detail.steps[0].value, '{\n  "orderId": 12345678901234567890,\n  "amount": 1.10,\n  "ratio": 1e400,\n  "s": "a\\"b,{"\n}')
    } finally {
      await ui.close()
    }
  })

  it('opens, resets and disposes executions whose id is "." or ".."', async () => {
    const store = createSqliteStore(path, { prefix: 'dots:' })
    for (const id of ['.', '..']) {
      await store.commitExecutionTaskResult(id, 'a', { id })
      await store.commitExecutionTaskResult(id, 'b', 2)
    }
    const ui = await startUi({ url, prefix: 'dots:', allowWrites: true, createInspector })
    try {
      const { token } = (await raw(`${ui.url}api/info`)).json
      const headers = { origin: `http://127.0.0.1:${ui.port}`, 'x-durastate-token': token, 'content-type': 'application/json' }
      for (const id of ['.', '..']) {
        const detail = await raw(`${ui.url}api/execution?id=${encodeURIComponent(id)}`)
        assert.deepEqual([detail.status, detail.json.id, detail.json.steps.length], [200, id, 2])
        const reset = await raw(`${ui.url}api/execution/reset`, { method: 'POST', headers, body: JSON.stringify({ id, taskId: 'a' }) })
        assert.deepEqual(reset.json, { reset: ['a'] })
        const disposed = await raw(`${ui.url}api/execution/dispose`, { method: 'POST', headers, body: JSON.stringify({ id }) })
        assert.deepEqual(disposed.json, { disposed: id })
        assert.deepEqual(await store.getExecutionTaskResults(id), {})
      }
    } finally {
      await ui.close()
      await store.close()
    }
  })

  it('does not list or dispose a KV value true stored under "kv:" in the same file', async () => {
    const shared = join(dir, 'shared.db')
    const store = createSqliteStore(shared)
    await store.beginExecution('order-kv')
    const kv = createKvStore(`sqlite:${shared}`)
    await kv.set('default', 'maintenance', true)
    const ui = await startUi({ url: `sqlite:${shared}`, allowWrites: true, createInspector })
    try {
      const ids = (await raw(`${ui.url}api/executions?search=kv`)).json.executions.map((e) => e.id)
      assert.deepEqual(ids, ['order-kv'])
      assert.equal((await raw(`${ui.url}api/execution?id=kv:maintenance`)).status, 404)
      const { token } = (await raw(`${ui.url}api/info`)).json
      const headers = { origin: `http://127.0.0.1:${ui.port}`, 'x-durastate-token': token }
      const disposed = await raw(`${ui.url}api/execution/dispose`, { method: 'POST', headers, body: '{"id":"kv:maintenance"}' })
      assert.equal(disposed.status, 404)
      assert.equal(await kv.get('default', 'maintenance'), true)
    } finally {
      await ui.close()
      await kv.close()
      await store.close()
    }
  })
})

describe('durastate ui: executions among KV entries of the same file or database', { timeout: 120_000 }, () => {
  let dir
  let redis
  let postgres
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'durastate-ui-kv-'))
    redis = await startRedisServer()
    postgres = await testPostgres()
  })
  after(async () => {
    await redis?.stop()
    await postgres?.release()
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  const schema = `ui_kv_${process.pid}`
  const backends = {
    sqlite: () => ({ url: `sqlite:${join(dir, 'shared.db')}`, options: {}, open: () => createSqliteStore(join(dir, 'shared.db')) }),
    redis: () => ({ url: redis.url, options: {}, open: () => createRedisStore(redis.url) }),
    postgres: () => ({ url: postgres.url, options: { schema }, open: () => createPostgresStore(postgres.url, { schema }) }),
  }

  /** `count` KV entries under the default mount (prefix "kv:", the worker store's default file or database) and `ids` executions. */
  async function fill({ url, options, open }, count, ids) {
    const kv = createKvStore(url, options)
    for (let i = 0; i < count; i += 500) {
      await Promise.all(Array.from({ length: Math.min(500, count - i) }, (_, j) => kv.set('default', `setting-${i + j}`, i + j)))
    }
    await kv.close()
    const store = open()
    for (const id of ids) await store.commitExecutionTaskResult(id, 'a', 1)
    await store.close()
  }

  for (const [name, backend] of Object.entries(backends)) {
    it(`lists the executions past ${MAX_LISTED + 100} KV entries under the same prefix (${name})`, async () => {
      const target = backend()
      await fill(target, MAX_LISTED + 100, ['order-1', 'order-2', 'order-3'])
      const ui = await startUi({ url: target.url, createInspector: (url) => createInspector(url, target.options) })
      try {
        const list = (await raw(`${ui.url}api/executions`)).json
        assert.deepEqual(list.executions.map((e) => e.id).sort(), ['order-1', 'order-2', 'order-3'])
        assert.deepEqual([list.truncated, list.complete, list.readLimited], [false, true, false])
        assert.equal(list.keys, MAX_LISTED + 103)
      } finally {
        await ui.close()
      }
    })
  }

  it('lists what a search with a NUL matches on Postgres, which refuses such an id (the exact-id read is "not found")', async () => {
    const target = backends.postgres()
    await fill(target, 0, ['nul-1'])
    const ui = await startUi({ url: target.url, createInspector: (url) => createInspector(url, target.options) })
    try {
      for (const search of ['a\0b', '\0', 'nul-1\0']) {
        const res = await raw(`${ui.url}api/executions?search=${encodeURIComponent(search)}`)
        assert.equal(res.status, 200, `${JSON.stringify(search)}: ${res.status} ${JSON.stringify(res.json)}`)
        assert.deepEqual(res.json.executions, [])
      }
      // the search still finds what it matches, and an exact id
      assert.deepEqual(
        (await raw(`${ui.url}api/executions?search=nul-`)).json.executions.map((e) => e.id),
        ['nul-1'],
      )
      assert.deepEqual(
        (await raw(`${ui.url}api/executions?search=nul-1`)).json.executions.map((e) => e.id),
        ['nul-1'],
      )
    } finally {
      await ui.close()
    }
  })

  it('reads the KV entries after the executions in batches, not one key per round trip (redis)', async () => {
    const target = { url: redis.url, options: {}, open: () => createRedisStore(redis.url, { prefix: 'batches:' }) }
    // MAX_LISTED - 1 executions whose ids sort first, then 3,000 KV entries under the same prefix
    const kv = createKvStore(redis.url, { mounts: { m: { prefix: 'batches:z:' } } })
    const entries = {}
    for (let i = 0; i < 3000; i++) entries[`k${i}`] = i
    await kv.setMany('m', entries)
    await kv.close()
    await fill(
      target,
      0,
      Array.from({ length: MAX_LISTED - 1 }, (_, i) => `a${String(i).padStart(4, '0')}`),
    )
    // a round is a batch: its reads start together, the next one after they all ended
    let inFlight = 0
    let rounds = 0
    let reads = 0
    const ui = await startUi({
      url: target.url,
      prefix: 'batches:',
      createInspector: (url) => {
        const inspector = createInspector(url)
        return new Proxy(inspector, {
          get: (object, name) =>
            name === 'execution'
              ? async (key) => {
                  if (inFlight++ === 0) rounds++
                  reads++
                  try {
                    return await object.execution(key)
                  } finally {
                    inFlight--
                  }
                }
              : typeof object[name] === 'function'
                ? object[name].bind(object)
                : object[name],
        })
      },
    })
    try {
      for (const [query, shown] of [
        ['', MAX_LISTED - 1],
        [`?limit=${MAX_LISTED - 1}`, MAX_LISTED - 1],
        ['?limit=3', 3],
      ]) {
        rounds = 0
        reads = 0
        const list = (await raw(`${ui.url}api/executions${query}`)).json
        assert.equal(list.executions.length, shown, query)
        assert.equal(list.read, reads, query)
        const most = 1 + Math.ceil((MAX_READ - Math.min(shown, MAX_LISTED)) / MIN_READ_BATCH)
        assert.ok(rounds <= most, `${query}: ${rounds} rounds of reads for ${reads} keys (at most ${most})`)
      }
      // the shortest listing still reads only what it shows when those are executions
      assert.equal((await raw(`${ui.url}api/executions?limit=3`)).json.read, 3)
      // asking for more than there are: MAX_READ keys read, and the listing says it stopped there
      const past = (await raw(`${ui.url}api/executions?limit=${MAX_LISTED}`)).json
      assert.equal(past.executions.length, MAX_LISTED - 1)
      assert.equal(past.readLimited, true)
    } finally {
      await ui.close()
    }
  })

  it('stops after MAX_READ keys read, and the page says so (sqlite)', async () => {
    const file = join(dir, 'budget.db')
    const target = { url: `sqlite:${file}`, options: {}, open: () => createSqliteStore(file) }
    await fill(target, MAX_READ + 100, ['order-1', 'order-2'])
    const ui = await startUi({ url: target.url, createInspector })
    const root = typeof process.getuid === 'function' && process.getuid() === 0
    const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: root ? ['--no-sandbox'] : [] })
    try {
      const list = (await raw(`${ui.url}api/executions`)).json
      assert.deepEqual([list.executions.length, list.read, list.readLimited, list.truncated], [0, MAX_READ, true, true])
      const found = (await raw(`${ui.url}api/executions?search=order`)).json
      assert.deepEqual(found.executions.map((e) => e.id).sort(), ['order-1', 'order-2'])
      const page = await browser.newPage()
      await page.goto(ui.url)
      await page.waitForFunction(() => /stopped after reading/.test(document.querySelector('#count').textContent), null, { timeout: 10_000 })
      assert.match(
        await page.locator('#count').textContent(),
        new RegExp(`^0 executions; stopped after reading ${MAX_READ} of ${MAX_READ + 102} keys.*search to narrow`),
      )
    } finally {
      await browser.close()
      await ui.close()
    }
  })
})

describe('durastate reset, dispose and ui (CLI)', () => {
  let dir
  let url

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'durastate-ui-cli-'))
    url = `sqlite:${join(dir, 'state.db')}`
    const store = createSqliteStore(join(dir, 'state.db'))
    await seed(store)
    await store.close()
  })

  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  const cli = (...args) => promisify(execFile)(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 20_000 })

  it('reset removes a step and its nested steps; dispose removes an execution', async () => {
    const { stdout } = await cli('reset', url, 'order-1', 'reserve-stock')
    assert.match(stdout, /reset 2 steps of execution "order-1": reserve-stock, reserve-stock:warehouse-berlin/)
    const store = createSqliteStore(join(dir, 'state.db'))
    try {
      assert.deepEqual(Object.keys(await store.getExecutionTaskResults('order-1')), ['validate'])
      await assert.rejects(cli('reset', url, 'order-1', 'reserve-stock'), (err) => err.code === 1 && /NOT_FOUND/.test(err.stderr))
      assert.match((await cli('dispose', url, 'order-2')).stdout, /disposed execution "order-2"/)
      assert.deepEqual(await store.getExecutionTaskResults('order-2'), {})
      await assert.rejects(cli('dispose', url, 'order-2'), (err) => /no execution "order-2"/.test(err.stderr))
      await assert.rejects(cli('reset', url), (err) => err.code === 2)
    } finally {
      await store.close()
    }
  })

  it('ui prints the page URL, serves it, and stops on SIGTERM', async () => {
    const child = spawn(process.execPath, [CLI, 'ui', url, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] })
    try {
      const line = await new Promise((resolve, reject) => {
        let out = ''
        child.stdout.on('data', (d) => {
          out += d
          if (out.includes('\n')) resolve(out)
        })
        child.once('exit', (code) => reject(new Error(`exited ${code}`)))
        setTimeout(() => reject(new Error(`no URL printed: ${out}`)), 15_000)
      })
      const pageUrl = /(http:\/\/127\.0\.0\.1:\d+\/)/.exec(line)?.[1]
      assert.ok(pageUrl, line)
      assert.match(line, /read-only/)
      assert.equal((await raw(`${pageUrl}api/info`)).json.allowWrites, false)
    } finally {
      child.kill('SIGTERM')
      await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', resolve)))
    }
  })

  it('ui stops cleanly (exit 0) on a SIGTERM or SIGINT that comes right after its URL line', async () => {
    // The handlers were installed after the URL was printed: a signal sent as soon as it
    // was read killed the process by the signal most times.
    for (const signal of ['SIGTERM', 'SIGINT', 'SIGTERM', 'SIGINT', 'SIGTERM', 'SIGINT']) {
      const child = spawn(process.execPath, [CLI, 'ui', url, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] })
      const exited = new Promise((resolve) => child.once('exit', (code, killedBy) => resolve({ code, signal: killedBy })))
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
      try {
        await new Promise((resolve) => child.stdout.once('data', resolve))
        child.kill(signal)
        assert.deepEqual(await exited, { code: 0, signal: null }, signal)
      } finally {
        clearTimeout(timer)
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
      }
    }
  })
})

describe('durastate ui: stopping', { timeout: 60_000 }, () => {
  it('says "stopping…" on Ctrl-C while a call to the store is in flight, then exits 0 within commandTimeout; an idle UI stops silently', async () => {
    const redis = await startRedisServer()
    let paused = false
    const start = async () => {
      const child = spawn(process.execPath, [CLI, 'ui', redis.url, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] })
      const out = { stdout: '', stderr: '' }
      child.stdout.on('data', (d) => (out.stdout += d))
      child.stderr.on('data', (d) => (out.stderr += d))
      const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
      const started = Date.now()
      while (!/http:\/\/\S+\//.test(out.stdout)) {
        assert.ok(Date.now() - started < 15_000 && child.exitCode === null, `no URL: ${out.stdout}${out.stderr}`)
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      return { child, out, exited, base: /http:\/\/\S+\//.exec(out.stdout)[0] }
    }
    const ui = []
    try {
      const idle = await start()
      ui.push(idle)
      assert.equal((await raw(`${idle.base}api/executions`)).status, 200)
      idle.child.kill('SIGINT')
      assert.deepEqual(await idle.exited, { code: 0, signal: null })
      assert.equal(idle.out.stderr, '')

      const busy = await start()
      ui.push(busy)
      assert.equal((await raw(`${busy.base}api/executions`)).status, 200)
      // The store stops answering: the next listing waits (up to commandTimeout, 5 s).
      process.kill(redis.pid, 'SIGSTOP')
      paused = true
      raw(`${busy.base}api/executions`).catch(() => {})
      await new Promise((resolve) => setTimeout(resolve, 500))
      const stopped = Date.now()
      busy.child.kill('SIGINT')
      while (!busy.out.stderr.includes('stopping…') && Date.now() - stopped < 2000) await new Promise((resolve) => setTimeout(resolve, 20))
      assert.match(busy.out.stderr, /^durastate ui: stopping… \(waiting up to 5 s for a call to the store; Ctrl-C again quits at once\)\n/)
      assert.ok(Date.now() - stopped < 1000, `"stopping…" came ${Date.now() - stopped} ms after the signal`)
      assert.deepEqual(await busy.exited, { code: 0, signal: null })
      assert.ok(Date.now() - stopped < 10_000, `exited ${Date.now() - stopped} ms after the signal`)
    } finally {
      for (const { child } of ui) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
      if (paused) process.kill(redis.pid, 'SIGCONT')
      await redis.stop()
    }
  })
})

describe('durastate ui in a browser', { timeout: 120_000 }, () => {
  let browser
  let redis
  let dir

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium (npm test installs it as root)`)
    const root = typeof process.getuid === 'function' && process.getuid() === 0
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: root ? ['--no-sandbox'] : [] })
    redis = await startRedisServer()
    dir = mkdtempSync(join(tmpdir(), 'durastate-ui-browser-'))
  })

  after(async () => {
    await browser?.close()
    await redis?.stop()
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  const backends = {
    sqlite: () => {
      const file = join(dir, 'state.db')
      return { url: `sqlite:${file}`, open: () => createSqliteStore(file), prefix: '' }
    },
    redis: () => ({ url: redis.url, open: () => createRedisStore(redis.url, { prefix: 'ui:' }), prefix: 'ui:' }),
  }

  it('shows an execution that fans out into 150,000 steps (no stack overflow in the page)', async () => {
    // The tree was built with append(...nodes): V8 throws past about 120,000 arguments.
    const file = join(dir, 'fan.db')
    const store = createSqliteStore(file, { prefix: 'fan:' })
    const count = 150_000
    try {
      await store.beginExecution('fan')
      for (let i = 0; i < count; i += 5000) {
        await Promise.all(
          Array.from({ length: Math.min(5000, count - i) }, (_, j) => store.commitExecutionTaskResult('fan', `t${String(i + j).padStart(6, '0')}`, i + j)),
        )
      }
    } finally {
      await store.close()
    }
    const ui = await startUi({ url: `sqlite:${file}`, prefix: 'fan:', createInspector })
    const page = await browser.newPage()
    const errors = []
    page.on('pageerror', (err) => errors.push(err.message))
    try {
      await page.goto(ui.url)
      await page.locator('#executions tbody tr').first().waitFor()
      // What a click on the execution runs (select, then refresh), the tree counted as soon as
      // it is built: laying out 150,000 steps takes Chromium far longer than building them.
      const shown = await page.evaluate(async () => {
        const detail = await api('/api/execution?id=fan')
        try {
          renderDetail(detail)
        } catch (err) {
          return String(err)
        }
        const steps = document.querySelectorAll('#tree > li.step')
        return { count: steps.length, last: steps[steps.length - 1].querySelector('.step-name').textContent, state: $('detail-state').textContent }
      })
      assert.deepEqual(shown, { count, last: 't149999', state: shown.state })
      assert.match(shown.state, /; 150000 steps$/)
      assert.deepEqual(errors, [])
    } finally {
      await page.close()
      await ui.close()
    }
  })

  for (const [name, backend] of Object.entries(backends)) {
    it(`shows, searches, updates live and repairs executions on ${name}`, async () => {
      const { url, open, prefix } = backend()
      const store = open()
      await seed(store)
      const readOnly = await startUi({ url, prefix, createInspector })
      const writable = await startUi({ url, prefix, allowWrites: true, createInspector })
      const page = await browser.newPage()
      const dialogs = []
      try {
        const row = (id) => page.locator('#executions tbody tr').filter({ has: page.locator('td:first-child', { hasText: id }) })
        const step = (id) => page.locator(`#tree li.step[data-task="${id.replace(/"/g, '\\"')}"]`)

        // A link whose #... is not valid percent-encoding still opens the page.
        await page.goto(`${readOnly.url}#100%`)
        await row('order-1').waitFor()

        // The listing, then search.
        await page.goto(readOnly.url)
        await row('order-1').waitFor()
        assert.equal(await page.locator('#mode').textContent(), 'read-only')
        assert.equal(await page.locator('#executions tbody tr').count(), 4)
        await page.fill('#search', 'order-2')
        await page.waitForFunction(() => document.querySelectorAll('#executions tbody tr').length === 1)
        assert.equal(await row('order-2').locator('td').nth(1).textContent(), 'finished')
        await page.fill('#search', '')
        await page.waitForFunction(() => document.querySelectorAll('#executions tbody tr').length === 4)

        // One execution: the tree, the states and a result.
        await row('order-1').click()
        await step('validate').waitFor()
        assert.match(await page.locator('#detail-state').textContent(), /^in progress, expires in/)
        assert.equal(await step('charge').locator('.step-head > span').nth(1).textContent(), 'in progress')
        assert.equal(await step('validate').locator('.step-head > span').nth(1).textContent(), 'done')
        assert.equal(await step('validate').locator('pre').textContent(), JSON.stringify({ ok: true, total: 42 }, null, 2))
        const nested = step('reserve-stock').locator('ul > li.step[data-task="reserve-stock:warehouse-berlin"]')
        assert.equal(await nested.locator('.step-name').first().textContent(), 'warehouse-berlin')
        assert.match(await nested.locator('pre').textContent(), /BER-1/)

        // Live: a step committed now shows up without a reload.
        await page.evaluate(() => {
          window.__sameDocument = true
        })
        await store.commitExecutionTaskResult('order-1', 'charge', { paymentId: 'pay-1' })
        await page.waitForFunction(() => document.querySelector('#tree li.step[data-task="charge"] pre')?.textContent.includes('pay-1'), null, {
          timeout: 10_000,
        })
        assert.equal(await page.evaluate(() => window.__sameDocument), true)

        // Read-only: no write controls, and the API refuses writes from the page.
        assert.equal(await page.locator('button.reset').count(), 0)
        assert.equal(await page.locator('#dispose').isHidden(), true)
        const refused = await page.evaluate(async () => {
          const response = await fetch('/api/execution/dispose', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"id":"order-1"}' })
          return [response.status, (await response.json()).error.code]
        })
        assert.deepEqual(refused, [403, 'READ_ONLY'])

        // A hostile id, task id and value are text, never markup or script.
        await row('evil').click()
        await page.waitForFunction((id) => document.querySelector('#detail-id').textContent === id, EVIL_ID)
        assert.equal(await page.locator('#tree .step-name').first().textContent(), '<script>window.__pwned=2</script>')
        assert.equal(await page.locator('#tree li.step li.step .step-name').textContent(), '<b>bold</b>')
        assert.equal(await page.locator('#tree pre').textContent(), JSON.stringify(EVIL_VALUE, null, 2))
        assert.equal(await page.locator('main img, main script, main b').count(), 0)
        assert.equal(await page.evaluate(() => window.__pwned), undefined)

        // A big value is cut, its size shown.
        await row('big-1').click()
        await page.locator('#tree .cut').waitFor()
        assert.match(await page.locator('#tree .cut').textContent(), new RegExp(`first ${MAX_VALUE_CHARS} characters of 32\\.0 KiB`))

        // --allow-writes: reset a step (dismissed first, then confirmed) and dispose.
        await page.goto(`${writable.url}#order-1`)
        const resetButton = page.locator('button.reset[data-task="reserve-stock"]')
        await resetButton.waitFor()
        assert.equal(await page.locator('#mode').textContent(), 'writes allowed')
        page.once('dialog', (dialog) => {
          dialogs.push(dialog.message())
          dialog.dismiss()
        })
        await resetButton.click()
        await page.waitForTimeout(300)
        assert.equal(await step('reserve-stock:warehouse-berlin').count(), 1, 'a dismissed reset changes nothing')
        page.once('dialog', (dialog) => {
          dialogs.push(dialog.message())
          dialog.accept()
        })
        await resetButton.click()
        await page.waitForFunction(() => !document.querySelector('#tree li.step[data-task="reserve-stock"]'), null, { timeout: 10_000 })
        assert.match(dialogs[0], /Reset step "reserve-stock" of execution "order-1"/)
        assert.deepEqual(Object.keys(await store.getExecutionTaskResults('order-1')).sort(), ['charge', 'validate'])
        assert.equal(await store.isExecutionInProgress('order-1'), true)

        await row('order-2').click()
        await step('ship').waitFor()
        page.once('dialog', (dialog) => {
          dialogs.push(dialog.message())
          dialog.accept()
        })
        await page.click('#dispose')
        await page.waitForFunction(() => document.querySelectorAll('#executions tbody tr').length === 3, null, { timeout: 10_000 })
        assert.match(dialogs.at(-1), /Dispose execution "order-2"/)
        assert.deepEqual(await store.getExecutionTaskResults('order-2'), {})
      } finally {
        await page.close()
        await readOnly.close()
        await writable.close()
        await store.close()
      }
    })
  }
})
