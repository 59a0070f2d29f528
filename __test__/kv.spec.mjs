// The KV store (createKvStore): one suite, run against every backend, with the same cases
// and the same expectations for Redis, SQLite and memory; then Redis storage compatibility
// (values are the Redis strings another client reads and writes).
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { after, before, describe, it } from 'node:test'
import { createKvStore, DurastateError } from '../index.js'
import { rejectsWith } from './helpers/assert.mjs'
import { kvBackendNames, prepareKvBackend } from './helpers/kv-backends.mjs'

const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)))

/** Every test is bounded: a hang fails the test instead of the run. */
const test = (title, fn, timeout = 30_000) => it(title, { timeout }, fn)

/** Asserts that `fn` throws (synchronously) a DurastateError of `code`. */
const throwsWith = (fn, code, pattern, what = '') =>
  assert.throws(
    fn,
    (err) => {
      assert.equal(err?.name, 'DurastateError', `${what}: expected a DurastateError, got ${err}`)
      assert.equal(err.code, code, `${what}: expected ${code}, got ${err.code}: ${err.message}`)
      if (pattern) assert.match(err.message, pattern, what)
      return true
    },
    `${what}: expected a synchronous ${code}`,
  )

const escapeRegExp = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
/** A pattern that matches a message naming every one of `parts`. */
const naming = (...parts) => new RegExp(parts.map((p) => `(?=[\\s\\S]*${escapeRegExp(p)})`).join(''))
const unknownMount = (name, available) => new RegExp(escapeRegExp(`Mount '${name}' not found. Available mounts: ${available.join(', ')}`))

/** Polls `check` every few ms until it is true; the time it was, or null past `timeoutMs`. */
async function pollUntil(check, timeoutMs, intervalMs = 10) {
  const deadline = performance.now() + timeoutMs
  for (;;) {
    if (await check()) return performance.now()
    if (performance.now() > deadline) return null
    await sleep(intervalMs)
  }
}

const isPlainObject = (v) => v !== null && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype
const assertPlainEqual = (actual, expected, what) => {
  assert.ok(isPlainObject(actual), `${what}: expected a plain object, got ${Object.prototype.toString.call(actual)}`)
  assert.deepEqual(actual, expected, what)
}
const jsonBytes = (v) => Buffer.byteLength(JSON.stringify(v), 'utf8')
const asJson = (v) => JSON.parse(JSON.stringify(v))

const PROFILE = {
  name: { type: 'string', default: 'Anonymous', description: 'Display name' },
  count: { type: 'number', default: 0 },
  active: { type: 'bool', default: false, description: 'Whether the user is active' },
  tags: { type: 'list', default: ['new'] },
  prefs: { type: 'dict', default: { theme: 'dark' } },
}
const PROFILE_DEFAULTS = Object.fromEntries(Object.entries(PROFILE).map(([k, e]) => [k, e.default]))

for (const name of kvBackendNames) {
  describe(`KV store: ${name}`, () => {
    let backend
    before(async () => {
      backend = await prepareKvBackend(name)
    })
    after(async () => {
      await backend.release()
    })

    describe('creation and metadata', () => {
      test('without mounts: one open mount "default" with prefix options.prefix ?? "kv:"', async () => {
        const kv = backend.open({}, { raw: true })
        assert.deepEqual(kv.mounts(), [
          {
            name: 'default',
            mode: 'read-write',
            schema: 'open',
            prefix: 'kv:',
            maxEntries: 10000,
            maxValueSize: 102400,
            ttl: 0,
          },
        ])
        assert.deepEqual(kv.schema('default'), [])
        await kv.clear('default') // a Redis server may be shared: start from an empty "kv:"
        try {
          assert.equal(await kv.get('default', 'k'), '')
          assert.equal(await kv.set('default', 'k', { v: 1 }), true)
          assert.deepEqual(await kv.get('default', 'k'), { v: 1 })
          assert.deepEqual(await kv.keys('default'), ['k'])
          await rejectsWith(kv.get('nope', 'k'), 'UNKNOWN_MOUNT', unknownMount('nope', ['default']))
        } finally {
          await kv.clear('default')
        }

        const custom = backend.open({ prefix: 'custom:' })
        const [info] = custom.mounts()
        assert.equal(custom.mounts().length, 1)
        assert.equal(info.name, 'default')
        assert.equal(info.prefix, backend.prefixOf(custom, 'custom:'))
        await custom.set('default', 'x', 1)
        assert.equal(await custom.get('default', 'x'), 1)
      })

      test('a mount prefix defaults to the mount name and a colon', async () => {
        const mount = `m${randomUUID().slice(0, 8)}`
        const kv = backend.open({ mounts: { [mount]: {} } }, { raw: true })
        assert.equal(kv.mounts()[0].prefix, `${mount}:`)
        await kv.set(mount, 'k', 1)
        assert.deepEqual(await kv.keys(mount), ['k'])
        await kv.clear(mount)
      })

      test('mounts() lists every mount in configuration order, defaults filled in', () => {
        const kv = backend.open({
          mounts: {
            users: { prefix: 'app:user:', schema: PROFILE, maxEntries: 50, maxValueSize: 2048, ttl: 60_000 },
            cache: { mode: 'write' },
            config: { mode: 'read', schema: {} },
            open: { mode: 'read-write', ttl: 0 },
          },
        })
        const px = (p) => backend.prefixOf(kv, p)
        assert.deepEqual(kv.mounts(), [
          { name: 'users', mode: 'read-write', schema: 'declared', prefix: px('app:user:'), maxEntries: 50, maxValueSize: 2048, ttl: 60_000 },
          { name: 'cache', mode: 'write', schema: 'open', prefix: px('cache:'), maxEntries: 10000, maxValueSize: 102400, ttl: 0 },
          { name: 'config', mode: 'read', schema: 'declared', prefix: px('config:'), maxEntries: 10000, maxValueSize: 102400, ttl: 0 },
          { name: 'open', mode: 'read-write', schema: 'open', prefix: px('open:'), maxEntries: 10000, maxValueSize: 102400, ttl: 0 },
        ])
      })

      test('schema() lists the declared keys in order (description "" when absent); [] when open', () => {
        const kv = backend.open({ mounts: { p: { schema: PROFILE }, o: {}, e: { schema: {} } } })
        assert.deepEqual(kv.schema('p'), [
          { key: 'name', type: 'string', description: 'Display name' },
          { key: 'count', type: 'number', description: '' },
          { key: 'active', type: 'bool', description: 'Whether the user is active' },
          { key: 'tags', type: 'list', description: '' },
          { key: 'prefs', type: 'dict', description: '' },
        ])
        assert.deepEqual(kv.schema('o'), [])
        assert.deepEqual(kv.schema('e'), [])
        assert.equal(kv.mounts().find((m) => m.name === 'e').schema, 'declared')
        assert.equal(kv.mounts().find((m) => m.name === 'o').schema, 'open')
      })

      test('bad options throw INVALID_INPUT synchronously', () => {
        const schemaWith = (entry, key = 'k') => ({ mounts: { a: { schema: { [key]: entry } } } })
        const bad = [
          ['overlapping prefixes', { mounts: { a: { prefix: 'app:' }, b: { prefix: 'app:user:' } } }],
          ['overlapping prefixes, longer first', { mounts: { a: { prefix: 'app:user:' }, b: { prefix: 'app:' } } }],
          ['equal prefixes', { mounts: { a: { prefix: 'same:' }, b: { prefix: 'same:' } } }],
          ['a prefix overlapping a default prefix', { mounts: { a: {}, b: { prefix: 'a:b:' } } }],
          ['bad mode', { mounts: { a: { mode: 'rw' } } }],
          ['unknown schema type', schemaWith({ type: 'int', default: 0 })],
          ['string with a number default', schemaWith({ type: 'string', default: 1 })],
          ['number with a string default', schemaWith({ type: 'number', default: '0' })],
          ['number with a null default', schemaWith({ type: 'number', default: null })],
          ['bool with a number default', schemaWith({ type: 'bool', default: 0 })],
          ['list with an object default', schemaWith({ type: 'list', default: {} })],
          ['dict with an array default', schemaWith({ type: 'dict', default: [] })],
          ['dict with a null default', schemaWith({ type: 'dict', default: null })],
          ['maxEntries 0', { mounts: { a: { maxEntries: 0 } } }],
          ['maxEntries -1', { mounts: { a: { maxEntries: -1 } } }],
          ['maxEntries 1.5', { mounts: { a: { maxEntries: 1.5 } } }],
          ['maxEntries "10"', { mounts: { a: { maxEntries: '10' } } }],
          ['maxValueSize 0', { mounts: { a: { maxValueSize: 0 } } }],
          ['maxValueSize -5', { mounts: { a: { maxValueSize: -5 } } }],
          ['maxValueSize 2.5', { mounts: { a: { maxValueSize: 2.5 } } }],
          ['maxValueSize over the longest string a JS runtime can read back', { mounts: { a: { maxValueSize: 2 ** 29 } } }],
          ['ttl -1', { mounts: { a: { ttl: -1 } } }],
          ['ttl "soon"', { mounts: { a: { ttl: 'soon' } } }],
          ['ttl NaN', { mounts: { a: { ttl: NaN } } }],
          // a lone surrogate would reach the addon as U+FFFD: another name than the one given
          ['a mount name with a lone surrogate', { mounts: { 'n\ud800': {} } }],
          ['a prefix with a lone surrogate', { mounts: { a: { prefix: 'x\udc00:' } } }],
          ['a schema key with a lone surrogate', schemaWith({ type: 'string', default: '' }, '\ud800')],
          // a key a schema entry does not have was dropped: the entry kept no description or default
          ['a schema entry with a typo (descripton)', schemaWith({ type: 'string', default: '', descripton: 'x' })],
          ['a schema entry with a typo (Default)', schemaWith({ type: 'string', Default: 'x' })],
          ['a description that is not a string', schemaWith({ type: 'string', default: '', description: 5 })],
        ]
        for (const [what, options] of bad) throwsWith(() => backend.open(options), 'INVALID_INPUT', undefined, what)
        throwsWith(
          () => createKvStore('memory:', schemaWith({ type: 'string', default: '', descripton: 'x' })),
          'INVALID_INPUT',
          /^unknown option `mounts\.a\.schema\.k\.descripton`: did you mean `description`\?$/,
          'schema typo message',
        )
        throwsWith(
          () => createKvStore('memory:', schemaWith({ type: 'string', default: '', description: 5 })),
          'INVALID_INPUT',
          /^mount 'a': schema key "k": `description` must be a string, got number$/,
          'description type message',
        )
        // an empty prefix would make clear() empty the database (checked raw: the helper prefixes every mount)
        const empty = /prefix must not be empty/
        throwsWith(() => createKvStore('memory:', { mounts: { a: { prefix: '' } } }), 'INVALID_INPUT', empty, 'empty mount prefix')
        throwsWith(() => createKvStore('memory:', { prefix: '' }), 'INVALID_INPUT', empty, 'empty default prefix')
        // the good neighbours of those are fine
        const kv = backend.open({
          mounts: {
            a: { prefix: 'app:a:', maxEntries: 1, maxValueSize: 1, ttl: 0 },
            b: { prefix: 'app:b:', schema: { k: { type: 'dict', default: {} }, l: { type: 'list', default: [] } } },
          },
        })
        assert.equal(kv.mounts().length, 2)
      })
    })

    describe('unknown mounts', () => {
      test('every call on an unknown mount rejects UNKNOWN_MOUNT, listing the mounts, before any other check', async () => {
        const kv = backend.open({ mounts: { a: { mode: 'read' }, b: { mode: 'write', schema: {} } } })
        const msg = unknownMount('nope', ['a', 'b'])
        const calls = {
          get: () => kv.get('nope', 'k'),
          getOr: () => kv.getOr('nope', 'k', 'fallback'),
          set: () => kv.set('nope', 'k', 1),
          merge: () => kv.merge('nope', 'k', { a: 1 }),
          'merge of a non-object': () => kv.merge('nope', 'k', 'not an object'),
          'set with a ttl': () => kv.set('nope', 'k', 1, { ttl: 1000 }),
          delete: () => kv.delete('nope', 'k'),
          has: () => kv.has('nope', 'k'),
          keys: () => kv.keys('nope'),
          'keys with a pattern': () => kv.keys('nope', '*'),
          clear: () => kv.clear('nope'),
          getAll: () => kv.getAll('nope'),
          getMany: () => kv.getMany('nope', ['k']),
          setMany: () => kv.setMany('nope', { k: 1 }),
          deleteMany: () => kv.deleteMany('nope', ['k']),
          getByPrefix: () => kv.getByPrefix('nope', 'k'),
        }
        for (const [what, call] of Object.entries(calls)) {
          await assert.rejects(
            call(),
            (err) => {
              assert.equal(err.name, 'DurastateError', what)
              assert.equal(err.code, 'UNKNOWN_MOUNT', `${what}: got ${err.code}: ${err.message}`)
              assert.match(err.message, msg, what)
              return true
            },
            what,
          )
        }
        throwsWith(() => kv.schema('nope'), 'UNKNOWN_MOUNT', msg, 'schema()')
        throwsWith(() => kv.mount('nope'), 'UNKNOWN_MOUNT', msg, 'mount()')
        // the names are exact: no prefix match, no case folding
        await rejectsWith(kv.get('A', 'k'), 'UNKNOWN_MOUNT', unknownMount('A', ['a', 'b']))
        await rejectsWith(kv.get('a:', 'k'), 'UNKNOWN_MOUNT')
      })

      test('an unknown mount is reported even for a value with no JSON form', async () => {
        const kv = backend.open({ mounts: { a: {}, b: {} } })
        await rejectsWith(kv.set('nope', 'k', 10n), 'UNKNOWN_MOUNT', unknownMount('nope', ['a', 'b']))
      })
    })

    describe('open mounts', () => {
      test('get of a missing key is ""; set resolves true; values round-trip as JSON', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        assert.equal(await kv.get('m', 'missing'), '')
        const values = {
          object: { a: [1, 2, { b: null }], 'quote"key': 'line\nbreak', emoji: '🦀 ünïcödé' },
          list: [1, 'two', null, { x: [] }],
          string: 'plain',
          empty: '',
          zero: 0,
          negative: -1.5e-7,
          big: Number.MAX_SAFE_INTEGER,
          yes: true,
          no: false,
          nothing: null,
          date: new Date('2026-01-02T03:04:05.006Z'),
          escapes: '\u0000\u001f\\/\u2028',
        }
        for (const [key, value] of Object.entries(values)) {
          assert.equal(await kv.set('m', key, value), true, key)
        }
        for (const [key, value] of Object.entries(values)) {
          assert.deepEqual(await kv.get('m', key), asJson(value), key)
        }
        await kv.set('m', 'object', 'replaced')
        assert.equal(await kv.get('m', 'object'), 'replaced')
      })

      test('has, getOr and delete tell a stored key from a missing one', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        await kv.set('m', 'null', null)
        await kv.set('m', 'empty', '')
        await kv.set('m', 'zero', 0)
        assert.equal(await kv.has('m', 'null'), true)
        assert.equal(await kv.has('m', 'empty'), true)
        assert.equal(await kv.has('m', 'missing'), false)
        assert.equal(await kv.getOr('m', 'null', 'fallback'), null)
        assert.equal(await kv.getOr('m', 'empty', 'fallback'), '')
        assert.equal(await kv.getOr('m', 'zero', 'fallback'), 0)
        assert.deepEqual(await kv.getOr('m', 'missing', { fallback: [1] }), { fallback: [1] })
        assert.equal(await kv.getOr('m', 'missing', undefined), undefined)
        assert.equal(await kv.delete('m', 'null'), true)
        assert.equal(await kv.delete('m', 'null'), false)
        assert.equal(await kv.delete('m', 'missing'), false)
        assert.equal(await kv.has('m', 'null'), false)
        assert.equal(await kv.get('m', 'null'), '')
        assert.equal(await kv.getOr('m', 'null', 'fallback'), 'fallback')
      })

      test('keys() lists every stored key once, sorted, with the prefix stripped', async () => {
        const kv = backend.open({ mounts: { m: { prefix: 'app:m:' } } })
        const keys = ['zeta', 'alpha', 'user:b', 'user:a', 'Beta', '10', '9', 'app:m:nested']
        for (const key of keys) await kv.set('m', key, key)
        await kv.set('m', 'alpha', 'again')
        assert.deepEqual(await kv.keys('m'), [...keys].sort())
        assert.equal(await kv.get('m', 'app:m:nested'), 'app:m:nested')
      })

      test('keys(pattern) matches a Redis glob over the key', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        const stored = ['user:a', 'user:b', 'user:c1', 'user:ab', 'lit*', 'litx', 'other', 'a.b', 'axb']
        await kv.setMany('m', Object.fromEntries(stored.map((k) => [k, 1])))
        const cases = [
          ['*', [...stored].sort()],
          ['user:*', ['user:a', 'user:ab', 'user:b', 'user:c1']],
          ['user:?', ['user:a', 'user:b']],
          ['user:[ab]*', ['user:a', 'user:ab', 'user:b']],
          ['user:[^a]*', ['user:b', 'user:c1']],
          ['user:[a-b]', ['user:a', 'user:b']],
          ['lit\\*', ['lit*']],
          ['lit*', ['lit*', 'litx']],
          ['a.b', ['a.b']],
          ['*c1', ['user:c1']],
          ['other', ['other']],
          ['nomatch*', []],
        ]
        for (const [pattern, expected] of cases) {
          assert.deepEqual(await kv.keys('m', pattern), expected, `keys('m', ${JSON.stringify(pattern)})`)
        }
      })

      test('getAll, getMany and getByPrefix return plain objects of the stored entries', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        const entries = { 'user:1': { n: 1 }, 'user:2': { n: [2] }, 'user:10': 'ten', users: [], 'admin:1': true, nil: null }
        assert.equal(await kv.setMany('m', entries), true)
        assertPlainEqual(await kv.getAll('m'), entries, 'getAll')
        assertPlainEqual(await kv.getMany('m', ['user:1', 'missing', 'admin:1', 'nil']), { 'user:1': { n: 1 }, 'admin:1': true, nil: null }, 'getMany')
        assertPlainEqual(await kv.getMany('m', ['missing']), {}, 'getMany of missing keys')
        assertPlainEqual(await kv.getByPrefix('m', 'user:'), { 'user:1': { n: 1 }, 'user:2': { n: [2] }, 'user:10': 'ten' }, 'getByPrefix user:')
        assertPlainEqual(await kv.getByPrefix('m', 'user'), { 'user:1': { n: 1 }, 'user:2': { n: [2] }, 'user:10': 'ten', users: [] }, 'getByPrefix user')
        assertPlainEqual(await kv.getByPrefix('m', ''), entries, 'getByPrefix ""')
        assertPlainEqual(await kv.getByPrefix('m', 'nomatch'), {}, 'getByPrefix nomatch')
      })

      test('an empty mount lists nothing', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        assert.deepEqual(await kv.keys('m'), [])
        assert.deepEqual(await kv.keys('m', '*'), [])
        assertPlainEqual(await kv.getAll('m'), {}, 'getAll')
        assertPlainEqual(await kv.getMany('m', ['a', 'b']), {}, 'getMany')
        assertPlainEqual(await kv.getMany('m', []), {}, 'getMany([])')
        assertPlainEqual(await kv.getByPrefix('m', ''), {}, 'getByPrefix')
        assert.equal(await kv.deleteMany('m', ['a', 'b']), 0)
        assert.equal(await kv.deleteMany('m', []), 0)
        assert.equal(await kv.clear('m'), true)
      })

      test('setMany writes every entry; deleteMany resolves with how many were stored', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        assert.equal(await kv.setMany('m', { a: 1, b: { two: 2 }, c: [3] }), true)
        assert.equal(await kv.setMany('m', {}), true)
        assert.deepEqual(await kv.keys('m'), ['a', 'b', 'c'])
        assert.equal(await kv.setMany('m', { a: 'one', d: 4 }), true)
        assertPlainEqual(await kv.getAll('m'), { a: 'one', b: { two: 2 }, c: [3], d: 4 }, 'getAll')
        assert.equal(await kv.deleteMany('m', ['a', 'c', 'missing']), 2)
        assert.deepEqual(await kv.keys('m'), ['b', 'd'])
        assert.equal(await kv.deleteMany('m', ['a', 'c']), 0)
      })

      test('clear deletes every entry of its mount and only of it', async () => {
        const kv = backend.open({ mounts: { a: { prefix: 'p:' }, b: { prefix: 'q:' }, c: { prefix: 'p-' } } })
        for (const m of ['a', 'b', 'c']) await kv.setMany(m, { x: m, y: m })
        assert.equal(await kv.clear('a'), true)
        assert.deepEqual(await kv.keys('a'), [])
        assert.equal(await kv.get('a', 'x'), '')
        assertPlainEqual(await kv.getAll('b'), { x: 'b', y: 'b' }, 'b')
        assertPlainEqual(await kv.getAll('c'), { x: 'c', y: 'c' }, 'c')
        assert.equal(await kv.clear('a'), true)
      })

      test('glob characters in mount prefixes match literally', async () => {
        const pairs = [
          ['star', 'g*:', 'gg', 'gg:'],
          ['brk', 'h[x]:', 'hx', 'hx:'],
          ['q', 'i?:', 'ij', 'ij:'],
          ['bs', 'k\\:', 'kc', 'k:'],
          ['neg', 'n[^y]:', 'nz', 'nz:'],
        ]
        const mounts = {}
        for (const [glob, globPrefix, plain, plainPrefix] of pairs) {
          mounts[glob] = { prefix: globPrefix }
          mounts[plain] = { prefix: plainPrefix }
        }
        const kv = backend.open({ mounts })
        const all = Object.keys(mounts)
        for (const m of all) await kv.setMany(m, { key: m, [`${m}-only`]: 1 })
        for (const m of all) {
          const own = { key: m, [`${m}-only`]: 1 }
          assert.deepEqual(await kv.keys(m), Object.keys(own).sort(), `keys(${m})`)
          assert.deepEqual(await kv.keys(m, '*'), Object.keys(own).sort(), `keys(${m}, '*')`)
          assertPlainEqual(await kv.getAll(m), own, `getAll(${m})`)
          assertPlainEqual(await kv.getByPrefix(m, ''), own, `getByPrefix(${m}, '')`)
          assert.equal(await kv.get(m, 'key'), m)
        }
        for (const [glob, , plain] of pairs) {
          assert.equal(await kv.clear(glob), true)
          assert.deepEqual(await kv.keys(glob), [], `keys(${glob}) after clear`)
          assertPlainEqual(await kv.getAll(plain), { key: plain, [`${plain}-only`]: 1 }, `${plain} after clear(${glob})`)
        }
      })

      test('keys with glob characters are stored, read and matched literally', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        const keys = ['a*b', 'a*c', 'axb', 'a[b]1', 'ab1', 'a?', 'a\\b', 'q']
        for (const key of keys) await kv.set('m', key, key)
        for (const key of keys) assert.equal(await kv.get('m', key), key)
        assert.deepEqual(await kv.keys('m'), [...keys].sort())
        assertPlainEqual(await kv.getByPrefix('m', 'a*'), { 'a*b': 'a*b', 'a*c': 'a*c' }, "getByPrefix('a*')")
        assertPlainEqual(await kv.getByPrefix('m', 'a[b]'), { 'a[b]1': 'a[b]1' }, "getByPrefix('a[b]')")
        assertPlainEqual(await kv.getByPrefix('m', 'a?'), { 'a?': 'a?' }, "getByPrefix('a?')")
        assertPlainEqual(await kv.getByPrefix('m', 'a\\'), { 'a\\b': 'a\\b' }, "getByPrefix('a\\\\')")
        assert.deepEqual(await kv.keys('m', 'a\\**'), ['a*b', 'a*c'])
        assert.deepEqual(await kv.keys('m', 'a\\[b\\]*'), ['a[b]1'])
        assert.deepEqual(await kv.keys('m', 'a\\?'), ['a?'])
        assert.equal(await kv.delete('m', 'a*b'), true)
        assert.equal(await kv.has('m', 'a*c'), true)
        assert.equal(await kv.deleteMany('m', ['a[b]1', 'a?']), 2)
        assert.deepEqual(await kv.keys('m'), ['a*c', 'a\\b', 'ab1', 'axb', 'q'])
      })

      test('keys(pattern) answers pathological globs promptly, with the right keys', async () => {
        // Patterns with many stars backtrack exponentially in a naive matcher (cf. Redis
        // CVE-2022-36021): 1,000 keys of 200 bytes, `a`s then the index, must not stall.
        const kv = backend.open({ mounts: { m: {} } })
        const keys = Array.from({ length: 1000 }, (_, i) => String(i).padStart(200, 'a'))
        await kv.setMany('m', Object.fromEntries(keys.map((k) => [k, 1])))
        const endingIn = (digits) => keys.filter((k) => digits.includes(k.at(-1))).sort()
        const cases = [
          ['a*'.repeat(20) + 'b', []],
          ['a*'.repeat(100) + 'b', []],
          ['*a'.repeat(60) + '*b', []],
          ['*?'.repeat(100) + 'b', []],
          ['*' + 'a'.repeat(90) + '*' + 'a'.repeat(90) + 'b', []],
          ['a*'.repeat(20) + '7', endingIn('7')],
          ['*a'.repeat(60) + '*[09]', endingIn('09')],
        ]
        for (const [pattern, expected] of cases) {
          assert.deepEqual(await kv.keys('m', pattern), expected, `keys('m', ${JSON.stringify(pattern)})`)
        }
      }, 20_000)

      test('calls on one store run concurrently without mixing up results', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        await Promise.all(Array.from({ length: 200 }, (_, i) => kv.set('m', `k${i}`, { i })))
        const got = await Promise.all(Array.from({ length: 200 }, (_, i) => kv.get('m', `k${i}`)))
        got.forEach((v, i) => assert.deepEqual(v, { i }))
        assert.equal((await kv.keys('m')).length, 200)
      })
    })

    describe('declared mounts', () => {
      test('get returns the default while a key is not stored; defaults are not stored', async () => {
        const kv = backend.open({ mounts: { p: { schema: PROFILE } } })
        for (const [key, value] of Object.entries(PROFILE_DEFAULTS)) {
          assert.deepEqual(await kv.get('p', key), value, key)
          assert.equal(await kv.has('p', key), false, key)
        }
        assert.deepEqual(await kv.keys('p'), [])
        assertPlainEqual(await kv.getAll('p'), {}, 'getAll')
        assert.equal(await kv.set('p', 'name', 'Alice'), true)
        assert.equal(await kv.get('p', 'name'), 'Alice')
        assert.deepEqual(await kv.keys('p'), ['name'])
        assert.equal(await kv.getOr('p', 'count', 'fallback'), 'fallback')
        assert.equal(await kv.delete('p', 'name'), true)
        assert.equal(await kv.get('p', 'name'), 'Anonymous')
      })

      test('a key outside the schema: get, set and merge reject INVALID_INPUT; getOr, has and delete do not check', async () => {
        const kv = backend.open({ mounts: { cfg: { schema: { retries: { type: 'number', default: 3 } } }, emptyschema: { schema: {} } } })
        await rejectsWith(kv.get('cfg', 'timeout'), 'INVALID_INPUT', naming('cfg', 'timeout'))
        await rejectsWith(kv.set('cfg', 'timeout', 5), 'INVALID_INPUT', naming('cfg', 'timeout'))
        await rejectsWith(kv.merge('cfg', 'timeout', { a: 1 }), 'INVALID_INPUT', naming('cfg', 'timeout'))
        await rejectsWith(kv.setMany('cfg', { timeout: 5 }), 'INVALID_INPUT', naming('cfg', 'timeout'))
        assert.equal(await kv.getOr('cfg', 'timeout', 'fallback'), 'fallback')
        assert.equal(await kv.has('cfg', 'timeout'), false)
        assert.equal(await kv.delete('cfg', 'timeout'), false)
        assert.deepEqual(await kv.keys('cfg'), [])
        // schema: {} is declared, with no key at all
        await rejectsWith(kv.set('emptyschema', 'anything', 1), 'INVALID_INPUT', naming('emptyschema', 'anything'))
        await rejectsWith(kv.get('emptyschema', 'anything'), 'INVALID_INPUT', naming('emptyschema', 'anything'))
        assert.equal(await kv.getOr('emptyschema', 'anything', 7), 7)
      })

      test('getJson and setJson carry the stored JSON text as it is (digits a JS number would lose)', async () => {
        const kv = backend.open({ mounts: { m: {}, cfg: { schema: { retries: { type: 'number', default: 3 } } } } })
        const big = '{"id":12345678901234567890,"amount":1.10,"huge":1e400}'
        assert.equal(await kv.setJson('m', 'big', big), true)
        assert.equal(await kv.getJson('m', 'big'), big)
        assert.equal(await kv.mount('m').getJson('big'), big)
        assert.deepEqual(await kv.get('m', 'big'), JSON.parse(big))
        assert.equal(await kv.getJson('m', 'missing'), undefined)
        assert.equal(await kv.merge('m', 'big', { more: 1 }), true)
        assert.equal(await kv.getJson('m', 'big'), '{"id":12345678901234567890,"amount":1.10,"huge":1e400,"more":1}')
        await kv.mount('cfg').setJson('retries', '9007199254740993')
        assert.equal(await kv.getJson('cfg', 'retries'), '9007199254740993')
        await rejectsWith(kv.setJson('cfg', 'retries', '"3"'), 'TYPE_MISMATCH', naming('cfg', 'retries'))
        for (const bad of ['', '{', 'undefined', '1 2', "{'a':1}"]) await rejectsWith(kv.setJson('m', 'bad', bad), 'INVALID_INPUT')
        await rejectsWith(kv.setJson('m', 'bad', 42), 'INVALID_INPUT')
        // A raw lone surrogate in the text (JSON.stringify would have escaped it).
        await rejectsWith(kv.setJson('m', 'bad', '"\ud800"'), 'INVALID_INPUT')
        assert.equal(await kv.setJson('m', 'escaped', JSON.stringify('\ud800')), true)
        assert.equal(await kv.get('m', 'escaped'), '\ud800')
        assert.equal(await kv.has('m', 'bad'), false)
      })

      // Stored text another client wrote (Python's json.dumps writes "caf\u00e9"), or
      // setJson stored as it is, may escape keys: a merge compares keys as JS does, and
      // writes them as JSON.stringify does, on every backend (Redis's merge script too).
      test('merge compares keys as JS does, whatever their escapes in the stored text', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        await kv.setJson('m', 'k', '{"\\u0031":"old","caf\\u00e9":1}')
        assert.equal(await kv.merge('m', 'k', { 1: 'new', café: 2 }), true)
        assert.equal(await kv.getJson('m', 'k'), '{"1":"new","café":2}')
        for (const stored of [
          '{"a":1,"\\u0061":2}',
          '{"\\ud83d\\ude00":1,"\\ud800":2,"\\u001f\\/\\"\\\\\\n":3,"x":4}',
          '{"\\u0032":1,"\\u0031":2,"\\u00e9\\u20ac":3}',
        ]) {
          const partial = { b: 5, '😀': 6, 'é€': 7 }
          await kv.setJson('m', 'e', stored)
          assert.equal(await kv.merge('m', 'e', partial), true)
          assert.equal(await kv.getJson('m', 'e'), JSON.stringify({ ...JSON.parse(stored), ...partial }), stored)
        }
      })

      test('values must have the declared type, else TYPE_MISMATCH naming mount and key', async () => {
        const schema = {
          retries: { type: 'number', default: 3 },
          label: { type: 'string', default: 'x' },
          enabled: { type: 'bool', default: true },
          taglist: { type: 'list', default: [] },
          options: { type: 'dict', default: {} },
        }
        const kv = backend.open({ mounts: { cfg: { schema } } })
        const wrong = {
          retries: ['3', null, true, [], {}],
          label: [1, null, [], {}, false],
          enabled: [0, 'true', null, [], {}],
          taglist: [{}, 'a', null, 1],
          options: [[], null, 'x', 1, true],
        }
        for (const [key, values] of Object.entries(wrong)) {
          for (const value of values) {
            await rejectsWith(kv.set('cfg', key, value), 'TYPE_MISMATCH', naming('cfg', key))
            assert.deepEqual(await kv.get('cfg', key), schema[key].default, `${key} unchanged after ${JSON.stringify(value)}`)
          }
        }
        const right = { retries: [3, 2.5, -1, 0], label: ['', 'text'], enabled: [false, true], taglist: [[], [1, 'a', null]], options: [{}, { a: { b: [] } }] }
        for (const [key, values] of Object.entries(right)) {
          for (const value of values) {
            assert.equal(await kv.set('cfg', key, value), true, `${key} = ${JSON.stringify(value)}`)
            assert.deepEqual(await kv.get('cfg', key), value)
          }
        }
      })

      test('clear writes the defaults back: keys() is then the schema keys', async () => {
        const kv = backend.open({ mounts: { p: { schema: PROFILE } } })
        await kv.set('p', 'name', 'Alice')
        await kv.set('p', 'count', 42)
        assert.equal(await kv.clear('p'), true)
        assert.deepEqual(await kv.keys('p'), Object.keys(PROFILE).sort())
        assertPlainEqual(await kv.getAll('p'), PROFILE_DEFAULTS, 'getAll after clear')
        assert.equal(await kv.has('p', 'name'), true)
        assert.equal(await kv.get('p', 'name'), 'Anonymous')
        assert.equal(await kv.getOr('p', 'count', 'fallback'), 0)
      })

      test('set checks in order: READ_ONLY, undeclared key, TYPE_MISMATCH, VALUE_TOO_LARGE, ENTRY_LIMIT', async () => {
        const kv = backend.open({
          mounts: {
            frozen: { mode: 'read', maxValueSize: 10, schema: { n: { type: 'number', default: 0 } } },
            capped: { maxEntries: 1, maxValueSize: 20, schema: { first: { type: 'string', default: '' }, second: { type: 'string', default: '' } } },
          },
        })
        const big = 'x'.repeat(100)
        await rejectsWith(kv.set('frozen', 'undeclared', big), 'READ_ONLY', naming('frozen'))
        await rejectsWith(kv.set('frozen', 'n', big), 'READ_ONLY', naming('frozen'))
        assert.equal(await kv.set('capped', 'first', 'x'), true) // the mount is now full
        await rejectsWith(kv.set('capped', 'undeclared', [big]), 'INVALID_INPUT', naming('capped', 'undeclared'))
        await rejectsWith(kv.set('capped', 'second', [big]), 'TYPE_MISMATCH', naming('capped', 'second'))
        await rejectsWith(kv.set('capped', 'second', big), 'VALUE_TOO_LARGE', naming('capped', 'second'))
        await rejectsWith(kv.set('capped', 'second', 'ok'), 'ENTRY_LIMIT', naming('capped', 'second'))
        assert.equal(await kv.set('capped', 'first', 'updated'), true)
        assert.equal(await kv.get('capped', 'first'), 'updated')
        assert.deepEqual(await kv.keys('capped'), ['first'])
      })
    })

    describe('modes', () => {
      test("mode 'read': every write rejects READ_ONLY and changes nothing; reads work", async () => {
        const kv = backend.open({ mounts: { frozen: { mode: 'read', prefix: 'shared:' }, frozendecl: { mode: 'read', schema: PROFILE } } })
        let seeded = {}
        if (backend.sharesState) {
          const writer = backend.openShared({ mounts: { rw: { prefix: 'shared:' } } })
          await writer.setMany('rw', { k: { v: 1 }, other: 'o' })
          seeded = { k: { v: 1 }, other: 'o' }
        }
        const writes = {
          set: () => kv.set('frozen', 'k', 2),
          'set with a ttl': () => kv.set('frozen', 'k', 2, { ttl: 1000 }),
          merge: () => kv.merge('frozen', 'k', { v: 2 }),
          delete: () => kv.delete('frozen', 'k'),
          clear: () => kv.clear('frozen'),
          setMany: () => kv.setMany('frozen', { k: 2, n: 3 }),
          deleteMany: () => kv.deleteMany('frozen', ['k', 'other']),
          'set on a declared mount': () => kv.set('frozendecl', 'name', 'x'),
          'clear on a declared mount': () => kv.clear('frozendecl'),
        }
        for (const [what, call] of Object.entries(writes)) {
          await assert.rejects(
            call(),
            (err) => {
              assert.equal(err.name, 'DurastateError', what)
              assert.equal(err.code, 'READ_ONLY', `${what}: got ${err.code}: ${err.message}`)
              assert.match(err.message, /frozen/, what)
              return true
            },
            what,
          )
        }
        assert.deepEqual(await kv.get('frozen', 'k'), seeded.k ?? '')
        assert.deepEqual(await kv.getOr('frozen', 'k', 'fallback'), seeded.k ?? 'fallback')
        assert.equal(await kv.has('frozen', 'k'), 'k' in seeded)
        assert.deepEqual(await kv.keys('frozen'), Object.keys(seeded).sort())
        assert.deepEqual(await kv.keys('frozen', 'o*'), 'other' in seeded ? ['other'] : [])
        assertPlainEqual(await kv.getAll('frozen'), seeded, 'getAll')
        assertPlainEqual(await kv.getMany('frozen', ['k', 'missing']), 'k' in seeded ? { k: seeded.k } : {}, 'getMany')
        assertPlainEqual(await kv.getByPrefix('frozen', 'ot'), 'other' in seeded ? { other: 'o' } : {}, 'getByPrefix')
        assert.equal(await kv.get('frozendecl', 'name'), 'Anonymous')
        assert.deepEqual(await kv.keys('frozendecl'), [])
      })

      test("mode 'write': every read rejects WRITE_ONLY; writes work", async () => {
        const kv = backend.open({ mounts: { inbox: { mode: 'write', prefix: 'shared:' } } })
        const reader = backend.sharesState ? backend.openShared({ mounts: { r: { prefix: 'shared:' } } }) : null
        assert.equal(await kv.set('inbox', 'k', { a: 1 }), true)
        assert.equal(await kv.merge('inbox', 'k', { b: 2 }), true)
        assert.equal(await kv.setMany('inbox', { x: 1, y: 2 }), true)
        if (reader) assertPlainEqual(await reader.getAll('r'), { k: { a: 1, b: 2 }, x: 1, y: 2 }, 'written')
        const reads = {
          get: () => kv.get('inbox', 'k'),
          getOr: () => kv.getOr('inbox', 'k', 'fallback'),
          has: () => kv.has('inbox', 'k'),
          keys: () => kv.keys('inbox'),
          'keys with a pattern': () => kv.keys('inbox', '*'),
          getAll: () => kv.getAll('inbox'),
          getMany: () => kv.getMany('inbox', ['k']),
          getByPrefix: () => kv.getByPrefix('inbox', ''),
        }
        for (const [what, call] of Object.entries(reads)) {
          await assert.rejects(
            call(),
            (err) => {
              assert.equal(err.name, 'DurastateError', what)
              assert.equal(err.code, 'WRITE_ONLY', `${what}: got ${err.code}: ${err.message}`)
              assert.match(err.message, /inbox/, what)
              return true
            },
            what,
          )
        }
        assert.equal(await kv.delete('inbox', 'k'), true)
        assert.equal(await kv.delete('inbox', 'k'), false)
        assert.equal(await kv.deleteMany('inbox', ['x', 'y', 'zz']), 2)
        await kv.setMany('inbox', { c: 3, d: 4 })
        assert.equal(await kv.clear('inbox'), true)
        if (reader) assert.deepEqual(await reader.keys('r'), [])
        assert.deepEqual(kv.schema('inbox'), [])
      })
    })

    describe('merge', () => {
      test('shallow-merges the partial into the stored object', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        await kv.set('m', 'k', { a: 1, b: 2, c: 3 })
        assert.equal(await kv.merge('m', 'k', { b: 20, d: 4 }), true)
        assert.deepEqual(await kv.get('m', 'k'), { a: 1, b: 20, c: 3, d: 4 })
        assert.equal(await kv.merge('m', 'k', { b: 20, d: 4 }), true)
        assert.deepEqual(await kv.get('m', 'k'), { a: 1, b: 20, c: 3, d: 4 })
        assert.equal(await kv.merge('m', 'k', {}), true)
        assert.deepEqual(await kv.get('m', 'k'), { a: 1, b: 20, c: 3, d: 4 })
        await kv.merge('m', 'k', { a: null, c: [1] })
        assert.deepEqual(await kv.get('m', 'k'), { a: null, b: 20, c: [1], d: 4 })
        await kv.set('m', 'nested', { x: { y: 1, z: 2 }, w: 1 })
        await kv.merge('m', 'nested', { x: { y: 9 } })
        assert.deepEqual(await kv.get('m', 'nested'), { x: { y: 9 }, w: 1 })
      })

      test('a missing key is created as the partial', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        assert.equal(await kv.merge('m', 'new', { a: 1, b: { c: 2 } }), true)
        assert.deepEqual(await kv.get('m', 'new'), { a: 1, b: { c: 2 } })
        assert.equal(await kv.merge('m', 'empty', {}), true)
        assert.deepEqual(await kv.get('m', 'empty'), {})
        assert.deepEqual(await kv.keys('m'), ['empty', 'new'])
      })

      test('merging into a stored value that is not an object rejects INVALID_INPUT and keeps it', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        const stored = { 'k-string': 'text', 'k-number': 42, 'k-list': [1, 2], 'k-bool': true, 'k-null': null, 'k-empty': '' }
        await kv.setMany('m', stored)
        for (const [key, value] of Object.entries(stored)) {
          await rejectsWith(kv.merge('m', key, { a: 1 }), 'INVALID_INPUT', new RegExp(escapeRegExp(`Cannot merge into non-dict value at key "${key}"`)))
          assert.deepEqual(await kv.get('m', key), value, key)
        }
      })

      test('the partial must be a plain object', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        await kv.set('m', 'k', { a: 1 })
        for (const partial of [[1], 'x', 5, null, true, [{ a: 2 }]]) {
          await rejectsWith(kv.merge('m', 'k', partial), 'INVALID_INPUT', undefined)
          await rejectsWith(kv.merge('m', 'missing', partial), 'INVALID_INPUT', undefined)
        }
        assert.deepEqual(await kv.get('m', 'k'), { a: 1 })
        assert.equal(await kv.has('m', 'missing'), false)
      })

      test('merge runs the checks of set on the merged value; a failed merge keeps the old value', async () => {
        const kv = backend.open({
          mounts: {
            frozen: { mode: 'read' },
            small: { maxValueSize: 100 },
            capped: {
              maxEntries: 1,
              maxValueSize: 20,
              schema: { doc: { type: 'dict', default: {} }, other: { type: 'dict', default: {} }, title: { type: 'string', default: '' } },
            },
          },
        })
        await rejectsWith(kv.merge('frozen', 'k', { a: 1 }), 'READ_ONLY', naming('frozen'))
        // size of the merged value, not of the partial
        const old = { v: 'x'.repeat(77) }
        assert.equal(jsonBytes(old), 85)
        await kv.set('small', 'blob', old)
        assert.equal(jsonBytes({ ...old, w: 'y'.repeat(20) }), 112)
        await rejectsWith(kv.merge('small', 'blob', { w: 'y'.repeat(20) }), 'VALUE_TOO_LARGE', naming('small', 'blob'))
        assert.deepEqual(await kv.get('small', 'blob'), old)
        assert.equal(await kv.merge('small', 'blob', { w: 'y' }), true) // 93 bytes
        const exact = { v: 'x'.repeat(77), w: 'y', z: '' }
        assert.equal(jsonBytes(exact), 100)
        assert.equal(await kv.merge('small', 'blob', { z: '' }), true)
        assert.deepEqual(await kv.get('small', 'blob'), exact)
        await rejectsWith(kv.merge('small', 'blob', { z: 'z' }), 'VALUE_TOO_LARGE', naming('small', 'blob'))
        assert.deepEqual(await kv.get('small', 'blob'), exact)
        // declared: undeclared key, type (must be dict), size, entry limit (new keys only)
        assert.equal(await kv.merge('capped', 'doc', { a: 1 }), true) // the mount is now full
        await rejectsWith(kv.merge('capped', 'undeclared', { a: 'x'.repeat(100) }), 'INVALID_INPUT', naming('capped', 'undeclared'))
        await rejectsWith(kv.merge('capped', 'title', { a: 'x'.repeat(100) }), 'TYPE_MISMATCH', naming('capped', 'title'))
        await rejectsWith(kv.merge('capped', 'other', { a: 'x'.repeat(100) }), 'VALUE_TOO_LARGE', naming('capped', 'other'))
        await rejectsWith(kv.merge('capped', 'other', { a: 1 }), 'ENTRY_LIMIT', naming('capped', 'other'))
        assert.equal(await kv.merge('capped', 'doc', { b: 2 }), true)
        assert.deepEqual(await kv.get('capped', 'doc'), { a: 1, b: 2 })
        await rejectsWith(kv.merge('capped', 'doc', { c: 'x'.repeat(20) }), 'VALUE_TOO_LARGE', naming('capped', 'doc'))
        assert.deepEqual(await kv.get('capped', 'doc'), { a: 1, b: 2 })
        assert.deepEqual(await kv.keys('capped'), ['doc'])
      })

      /** 20 concurrent merges of distinct fields, spread over `callers`, onto a missing key, then a stored one. */
      async function mergeTwenty(kv, callers) {
        const merge20 = (key, base) => Promise.all(Array.from({ length: 20 }, (_, i) => callers[i % callers.length].merge('m', key, { [`f${base + i}`]: i })))
        // onto a missing key: every caller races to create it
        assert.deepEqual(await merge20('fresh', 0), Array(20).fill(true))
        const fresh = await kv.get('m', 'fresh')
        assert.deepEqual(Object.keys(fresh).sort(), Array.from({ length: 20 }, (_, i) => `f${i}`).sort())
        // onto a stored object
        await kv.set('m', 'doc', { keep: 'me' })
        assert.deepEqual(await merge20('doc', 100), Array(20).fill(true))
        const doc = await kv.get('m', 'doc')
        assert.equal(doc.keep, 'me')
        for (let i = 0; i < 20; i++) assert.equal(doc[`f${100 + i}`], i, `field f${100 + i}`)
        assert.equal(Object.keys(doc).length, 21)
      }

      test('20 concurrent merges of distinct fields lose no field', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        await mergeTwenty(kv, [kv])
      })

      if (name !== 'memory') {
        test('20 concurrent merges from 20 stores (connections) on the same state lose no field', async () => {
          const kv = backend.open({ mounts: { m: {} } })
          const others = Array.from({ length: 19 }, () => backend.openShared({ mounts: { m: {} } }))
          await Promise.all(others.map((o) => o.has('m', 'warm-up'))) // connected before the race
          await mergeTwenty(kv, [kv, ...others])
        })
      }
    })

    describe('limits', () => {
      test('a value of exactly maxValueSize UTF-8 bytes of JSON is stored, one byte more is not', async () => {
        const kv = backend.open({ mounts: { sized: { maxValueSize: 100 }, dflt: {} } })
        const cases = [
          ['ascii', 'x'.repeat(98)],
          ['two-byte', 'é'.repeat(49)],
          ['four-byte', '🦀'.repeat(24) + 'xx'],
          ['escaped', '\n'.repeat(49)],
          ['object', { v: 'x'.repeat(92) }],
          ['list', [10, ...Array(48).fill(0)]],
        ]
        for (const [what, value] of cases) {
          assert.equal(jsonBytes(value), 100, what)
          assert.equal(await kv.set('sized', what, value), true, what)
          assert.deepEqual(await kv.get('sized', what), value, what)
        }
        const over = [
          ['ascii', 'x'.repeat(99)],
          ['two-byte', 'é'.repeat(49) + 'x'],
          ['four-byte', '🦀'.repeat(24) + 'xxx'],
          ['escaped', '\n'.repeat(49) + 'x'],
          ['object', { v: 'x'.repeat(93) }],
          ['list', [100, ...Array(48).fill(0)]],
        ]
        for (const [what, value] of over) {
          assert.equal(jsonBytes(value), 101, what)
          await rejectsWith(kv.set('sized', what, value), 'VALUE_TOO_LARGE', naming('sized', what))
          assert.deepEqual(await kv.get('sized', what), cases.find(([w]) => w === what)[1], `${what} keeps the old value`)
          await rejectsWith(kv.set('sized', `new-${what}`, value), 'VALUE_TOO_LARGE', naming('sized', `new-${what}`))
          assert.equal(await kv.has('sized', `new-${what}`), false)
        }
        await rejectsWith(kv.setMany('sized', { fine: 1, 'too-big': 'x'.repeat(99) }), 'VALUE_TOO_LARGE', naming('sized', 'too-big'))
        assert.equal(await kv.has('sized', 'fine'), false)
        // the default limit is 102400 bytes
        assert.equal(await kv.set('dflt', 'exact', 'x'.repeat(102_398)), true)
        await rejectsWith(kv.set('dflt', 'over', 'x'.repeat(102_399)), 'VALUE_TOO_LARGE', naming('dflt', 'over'))
      })

      test('a mount holds at most maxEntries entries; updating one at the limit is fine', async () => {
        const kv = backend.open({ mounts: { limited: { maxEntries: 3 }, other: {} } })
        await kv.setMany('other', { a: 1, b: 2, c: 3, d: 4, e: 5 }) // other mounts do not count
        for (const key of ['a', 'b', 'c']) assert.equal(await kv.set('limited', key, key), true)
        await rejectsWith(kv.set('limited', 'fourth', 4), 'ENTRY_LIMIT', naming('limited', 'fourth'))
        await rejectsWith(kv.merge('limited', 'fourth', { n: 4 }), 'ENTRY_LIMIT', naming('limited', 'fourth'))
        await rejectsWith(kv.setMany('limited', { fourth: 4 }), 'ENTRY_LIMIT', naming('limited'))
        assert.equal(await kv.has('limited', 'fourth'), false)
        assert.equal(await kv.set('limited', 'a', 'updated'), true)
        assert.equal(await kv.get('limited', 'a'), 'updated')
        assert.equal(await kv.setMany('limited', { a: 1, b: 2 }), true)
        assert.deepEqual(await kv.keys('limited'), ['a', 'b', 'c'])
        assert.equal(await kv.delete('limited', 'a'), true)
        // two new keys with two stored: 4 > 3, nothing written
        await rejectsWith(kv.setMany('limited', { a: 1, fourth: 4 }), 'ENTRY_LIMIT', naming('limited'))
        assert.deepEqual(await kv.keys('limited'), ['b', 'c'])
        assert.equal(await kv.setMany('limited', { b: 'b', fourth: 4 }), true)
        assert.deepEqual(await kv.keys('limited'), ['b', 'c', 'fourth'])
        await rejectsWith(kv.set('limited', 'fifth', 5), 'ENTRY_LIMIT', naming('limited', 'fifth'))
      })

      test('setMany is all or nothing', async () => {
        const kv = backend.open({
          mounts: {
            cfg: { schema: { num: { type: 'number', default: 0 }, str: { type: 'string', default: '' } } },
            small: { maxValueSize: 10 },
            frozen: { mode: 'read' },
          },
        })
        await kv.set('cfg', 'num', 5)
        await rejectsWith(kv.setMany('cfg', { num: 6, undeclared: 1 }), 'INVALID_INPUT', naming('cfg', 'undeclared'))
        await rejectsWith(kv.setMany('cfg', { num: 6, str: 7 }), 'TYPE_MISMATCH', naming('cfg', 'str'))
        assert.equal(await kv.get('cfg', 'num'), 5)
        assert.deepEqual(await kv.keys('cfg'), ['num'])
        await rejectsWith(kv.setMany('small', { a: 1, b: 'x'.repeat(20), c: 3 }), 'VALUE_TOO_LARGE', naming('small', 'b'))
        assert.deepEqual(await kv.keys('small'), [])
        await rejectsWith(kv.setMany('frozen', { a: 1 }), 'READ_ONLY', naming('frozen'))
        await rejectsWith(kv.setMany('small', { a: 10n }), 'SERIALIZE')
        assert.deepEqual(await kv.keys('small'), [])
        assert.equal(await kv.setMany('cfg', { num: 6, str: 'ok' }), true)
        assertPlainEqual(await kv.getAll('cfg'), { num: 6, str: 'ok' }, 'getAll')
      })
    })

    describe('TTL (ms)', () => {
      test('a per-call ttl: the entry is there at ~100 ms and gone at ~300 ms', async () => {
        // The reads at ~100 ms prove the entry is there only if they end before its ttl runs
        // out (counted from before the write). A loaded machine can stall them past it (one
        // has() took 101 ms there): then it is all made again on a fresh store, up to 5 times.
        let kv, start
        for (let attempt = 1; ; attempt++) {
          kv = backend.open({ mounts: { t: {} } })
          await kv.has('t', 'warm-up')
          start = performance.now()
          assert.equal(await kv.set('t', 'k', 'v', { ttl: 300 }), true)
          await sleep(100 - (performance.now() - start))
          const seen = [await kv.has('t', 'k'), await kv.get('t', 'k'), await kv.keys('t')]
          const readsEnded = performance.now() - start
          if (readsEnded < 290) {
            assert.deepEqual(seen, [true, 'v', ['k']], `has, get and keys ${readsEnded.toFixed(0)} ms after a write with a 300 ms ttl`)
            break
          }
          assert.ok(attempt < 5, `the reads ended past the 300 ms ttl in 5 attempts (${readsEnded.toFixed(0)} ms the last time)`)
        }
        const goneAt = await pollUntil(async () => !(await kv.has('t', 'k')), 3_000)
        assert.notEqual(goneAt, null, 'the entry was still there 3 s after a 300 ms ttl')
        const elapsed = goneAt - start
        assert.ok(elapsed >= 290, `gone after ${elapsed.toFixed(0)} ms, before its 300 ms ttl`)
        assert.ok(elapsed < 1_000, `gone only after ${elapsed.toFixed(0)} ms`)
        assert.equal(await kv.get('t', 'k'), '')
        assert.equal(await kv.getOr('t', 'k', 'fallback'), 'fallback')
        assert.deepEqual(await kv.keys('t'), [])
        assertPlainEqual(await kv.getAll('t'), {}, 'getAll')
        assertPlainEqual(await kv.getMany('t', ['k']), {}, 'getMany')
        assertPlainEqual(await kv.getByPrefix('t', 'k'), {}, 'getByPrefix')
        assert.equal(await kv.delete('t', 'k'), false)
      })

      test("the mount's ttl applies to every write; a per-call ttl overrides it", async () => {
        // A mount ttl of 1 s: the five writes and the first listing fit in it even on a
        // busy machine (with 300 ms, a loaded CI machine once took longer than that).
        const kv = backend.open({ mounts: { t: { ttl: 1_000 }, p: {} } })
        await kv.has('t', 'warm-up')
        const start = performance.now()
        await kv.set('t', 'k', 1)
        await kv.setMany('t', { x: 1, y: 2 })
        await kv.merge('t', 'm', { a: 1 })
        await kv.set('t', 'long', 1, { ttl: 60_000 })
        await kv.set('p', 'forever', 1)
        await sleep(100 - (performance.now() - start))
        assert.deepEqual(await kv.keys('t'), ['k', 'long', 'm', 'x', 'y'])
        const goneAt = await pollUntil(async () => (await kv.keys('t')).length === 1, 4_000)
        assert.notEqual(goneAt, null, `still there 4 s after a 1 s mount ttl: ${await kv.keys('t')}`)
        assert.ok(goneAt - start >= 990, `gone after ${(goneAt - start).toFixed(0)} ms`)
        assert.deepEqual(await kv.keys('t'), ['long'])
        assert.equal(await kv.has('p', 'forever'), true)
      })

      test('a write option no write has (`tll`) rejects INVALID_INPUT naming it, and nothing is written (it was stored without a ttl)', async () => {
        const kv = backend.open({ mounts: { t: {} } })
        const typo = /^unknown option `tll`: did you mean `ttl`\?$/
        await rejectsWith(kv.set('t', 'k', 1, { tll: 5_000 }), 'INVALID_INPUT', typo)
        await rejectsWith(kv.setJson('t', 'k', '1', { tll: 5_000 }), 'INVALID_INPUT', typo)
        await rejectsWith(kv.merge('t', 'k', { a: 1 }, { tll: 5_000 }), 'INVALID_INPUT', typo)
        await rejectsWith(kv.setMany('t', { k: 1 }, { tll: 5_000 }), 'INVALID_INPUT', typo)
        await rejectsWith(kv.mount('t').set('k', 1, { TTL: 5_000 }), 'INVALID_INPUT', /^unknown option `TTL`: did you mean `ttl`\?$/)
        await rejectsWith(kv.set('t', 'k', 1, { expire: 5_000 }), 'INVALID_INPUT', /^unknown option `expire`: the known ones are ttl$/)
        await rejectsWith(kv.set('t', 'k', 1, [5_000]), 'INVALID_INPUT', /^options must be an object such as \{ ttl: 60000 \}$/)
        assert.deepEqual(await kv.keys('t'), [])
        // a key set to undefined is as if absent
        assert.equal(await kv.set('t', 'k', 1, { ttl: undefined, tll: undefined }), true)
      })

      test('set without a ttl drops the ttl the key had', async () => {
        const kv = backend.open({ mounts: { t: {} } })
        await kv.set('t', 'k', 'v1', { ttl: 200 })
        await kv.set('t', 'k', 'v2')
        await sleep(500)
        assert.equal(await kv.has('t', 'k'), true)
        assert.equal(await kv.get('t', 'k'), 'v2')
      })

      test('merge without a ttl keeps the ttl the key had; merge with a ttl sets it', async () => {
        const kv = backend.open({ mounts: { t: {}, mt: { ttl: 300 } } })
        // Counts both mounts first, so the writes below are one round trip each (the
        // first new key of a mount counts it, in several round trips).
        await kv.set('t', 'warm-up', 1)
        await kv.set('mt', 'warm-up', 1)
        const start = performance.now()
        await kv.set('t', 'k', { a: 1 }, { ttl: 400 })
        await kv.merge('t', 'k', { b: 2 })
        assert.deepEqual(await kv.get('t', 'k'), { a: 1, b: 2 })
        await kv.set('t', 'p', { a: 1 })
        await kv.merge('t', 'p', { b: 2 }, { ttl: 300 })
        // on a mount with a ttl, a merge without one takes the mount's
        await kv.set('mt', 'm', { a: 1 }, { ttl: 60_000 })
        await kv.merge('mt', 'm', { b: 2 })
        const goneAt = await pollUntil(async () => !(await kv.has('t', 'k')), 3_000)
        assert.notEqual(goneAt, null, 'merge dropped the ttl: still there 3 s after a 400 ms ttl')
        assert.ok(goneAt - start >= 390, `gone after ${(goneAt - start).toFixed(0)} ms, before its 400 ms ttl`)
        // p and m expire 300 ms after their merges, which end some tens of ms after start on
        // a loaded machine: usually gone by now, else soon. Without the ttl, p stays for good
        // and m keeps its 60 s: neither goes within 2 s.
        const pGone = await pollUntil(async () => !(await kv.has('t', 'p')), 2_000)
        assert.notEqual(pGone, null, 'merge with { ttl: 300 } did not set the ttl: still there after 2 s')
        const mGone = await pollUntil(async () => !(await kv.has('mt', 'm')), 2_000)
        assert.notEqual(mGone, null, "merge without a ttl on a mount with a ttl did not take the mount's: still there after 2 s")
      })

      test('expired entries are missing from every read and do not count toward maxEntries', async () => {
        const kv = backend.open({ mounts: { e: { maxEntries: 2 } } })
        await kv.setMany('e', { a: 1, b: 2 }, { ttl: 200 })
        await rejectsWith(kv.set('e', 'c', 3), 'ENTRY_LIMIT')
        const goneAt = await pollUntil(async () => !(await kv.has('e', 'a')) && !(await kv.has('e', 'b')), 3_000)
        assert.notEqual(goneAt, null, 'setMany with { ttl: 200 } did not expire')
        assert.deepEqual(await kv.keys('e'), [])
        assertPlainEqual(await kv.getAll('e'), {}, 'getAll')
        assertPlainEqual(await kv.getMany('e', ['a', 'b']), {}, 'getMany')
        assert.equal(await kv.set('e', 'c', 3), true)
        assert.equal(await kv.set('e', 'd', 4), true)
        assert.deepEqual(await kv.keys('e'), ['c', 'd'])
        assert.equal(await kv.deleteMany('e', ['a', 'b', 'c']), 1)
      })
    })

    describe('mount views', () => {
      test('kv.mount(name) has every call, without the mount argument', async () => {
        const kv = backend.open({ mounts: { m: {}, cfg: { schema: PROFILE }, frozen: { mode: 'read' }, inbox: { mode: 'write' } } })
        const m = kv.mount('m')
        assert.equal(m.name, 'm')
        assert.equal(await m.get('k'), '')
        assert.equal(await m.set('k', { a: 1 }), true)
        assert.deepEqual(await m.get('k'), { a: 1 })
        assert.deepEqual(await kv.get('m', 'k'), { a: 1 })
        assert.equal(await m.merge('k', { b: 2 }), true)
        assert.deepEqual(await m.get('k'), { a: 1, b: 2 })
        assert.deepEqual(await m.getOr('k', 'fallback'), { a: 1, b: 2 })
        assert.equal(await m.getOr('missing', 'fallback'), 'fallback')
        assert.equal(await m.has('k'), true)
        assert.equal(await m.has('missing'), false)
        assert.equal(await m.setMany({ 'user:1': 1, 'user:2': 2, other: 3 }), true)
        assert.deepEqual(await m.keys(), ['k', 'other', 'user:1', 'user:2'])
        assert.deepEqual(await m.keys('user:*'), ['user:1', 'user:2'])
        assertPlainEqual(await m.getAll(), { k: { a: 1, b: 2 }, 'user:1': 1, 'user:2': 2, other: 3 }, 'getAll')
        assertPlainEqual(await m.getMany(['user:1', 'missing']), { 'user:1': 1 }, 'getMany')
        assertPlainEqual(await m.getByPrefix('user:'), { 'user:1': 1, 'user:2': 2 }, 'getByPrefix')
        assert.equal(await m.deleteMany(['user:1', 'user:2', 'missing']), 2)
        assert.equal(await m.delete('other'), true)
        assert.equal(await m.delete('other'), false)
        assert.deepEqual(m.schema(), [])
        assert.equal(await m.clear(), true)
        assert.deepEqual(await kv.keys('m'), [])
        await kv.set('m', 'from-store', 1)
        assert.equal(await m.get('from-store'), 1)
        // ttl through the view
        await m.set('short', 1, { ttl: 150 })
        await m.setMany({ s1: 1 }, { ttl: 150 })
        await m.merge('s2', { a: 1 }, { ttl: 150 })
        const gone = await pollUntil(async () => (await m.keys()).length === 1, 3_000)
        assert.notEqual(gone, null, `ttl through the view did not expire: ${await m.keys()}`)
        assert.deepEqual(await m.keys(), ['from-store'])

        const cfg = kv.mount('cfg')
        assert.deepEqual(cfg.schema(), kv.schema('cfg'))
        assert.equal(await cfg.get('name'), 'Anonymous')
        await rejectsWith(cfg.get('undeclared'), 'INVALID_INPUT', naming('cfg', 'undeclared'))
        await rejectsWith(cfg.set('count', 'x'), 'TYPE_MISMATCH', naming('cfg', 'count'))
        await cfg.set('count', 5)
        assert.equal(await cfg.clear(), true)
        assert.equal(await cfg.get('count'), 0)
        assert.deepEqual(await cfg.keys(), Object.keys(PROFILE).sort())

        await rejectsWith(kv.mount('frozen').set('k', 1), 'READ_ONLY', naming('frozen'))
        await rejectsWith(kv.mount('inbox').get('k'), 'WRITE_ONLY', naming('inbox'))
        throwsWith(() => kv.mount('nope'), 'UNKNOWN_MOUNT', unknownMount('nope', ['m', 'cfg', 'frozen', 'inbox']), 'mount()')
      })

      test("a mount view's calls are bound: taken off it they work (they threw a TypeError); a KvStore's reject INVALID_INPUT", async () => {
        const kv = backend.open({ mounts: { m: {} } })
        const { set, get, keys, schema } = kv.mount('m')
        assert.equal(await set('k', 1), true)
        assert.equal(await get('k'), 1)
        assert.deepEqual(await keys(), ['k'])
        assert.deepEqual(schema(), [])
        assert.ok(Object.isFrozen(kv.mount('m')))
        const { get: unbound } = kv
        await rejectsWith(unbound('m', 'k'), 'INVALID_INPUT', /^get\(\) was called without its store .*bind it/)
        // close, schema, mounts and mount too (they threw or rejected a TypeError)
        const { close, schema: schemaOf, mounts, mount } = kv
        await rejectsWith(close(), 'INVALID_INPUT', /^close\(\) was called without its store/)
        throwsWith(() => schemaOf('m'), 'INVALID_INPUT', /^schema\(\) was called without its store/, 'schema()')
        throwsWith(() => mounts(), 'INVALID_INPUT', /^mounts\(\) was called without its store/, 'mounts()')
        throwsWith(() => mount('m'), 'INVALID_INPUT', /^mount\(\) was called without its store/, 'mount()')
        assert.equal(kv.closed, false)
      })
    })

    describe('scale', () => {
      test('10,000 keys are each listed exactly once, even while another mount grows', async () => {
        const kv = backend.open({ mounts: { bulk: { maxEntries: 10_000 }, noise: { maxEntries: 20_000 } } })
        const keys = Array.from({ length: 10_000 }, (_, i) => `k${String(i).padStart(5, '0')}`)
        for (let i = 0; i < keys.length; i += 1000) {
          assert.equal(await kv.setMany('bulk', Object.fromEntries(keys.slice(i, i + 1000).map((k) => [k, i]))), true)
        }
        // rehashing while listing is what makes a Redis SCAN return a key twice: list again
        // and again while another mount grows the keyspace past a resize (16384 keys)
        let noise = 0
        let growing = true
        const grow = (async () => {
          try {
            while (noise < 20_000) {
              await kv.setMany('noise', Object.fromEntries(Array.from({ length: 500 }, (_, j) => [`n${noise + j}`, 1])))
              noise += 500
            }
          } finally {
            growing = false
          }
        })()
        let listings = 0
        try {
          do {
            const listed = await kv.keys('bulk')
            listings++
            assert.equal(listed.length, 10_000, `listing ${listings} while ${noise} noise keys`)
            assert.equal(new Set(listed).size, 10_000)
            assert.deepEqual(listed, keys)
          } while (growing && listings < 50)
        } finally {
          await grow
        }
        assert.deepEqual(await kv.keys('bulk', 'k0999*'), keys.slice(9_990))
        const all = await kv.getAll('bulk')
        assert.equal(Object.keys(all).length, 10_000)
        assert.equal(all.k09999, 9000)
        await rejectsWith(kv.set('bulk', 'one-more', 1), 'ENTRY_LIMIT', naming('bulk', 'one-more'))
        assert.equal(await kv.set('bulk', 'k00000', 'updated'), true)
        assert.equal((await kv.keys('noise')).length, noise)
      }, 120_000)
    })

    describe('lifecycle and errors', () => {
      test('errors are DurastateErrors with a code', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        const err = await kv.get('nope', 'k').then(
          () => null,
          (e) => e,
        )
        assert.ok(err instanceof DurastateError, `not a DurastateError: ${err}`)
        assert.ok(err instanceof Error)
        assert.equal(err.code, 'UNKNOWN_MOUNT')
        const circular = {}
        circular.self = circular
        for (const value of [10n, circular, { nested: 1n }]) {
          await rejectsWith(kv.set('m', 'bad', value), 'SERIALIZE')
        }
        assert.equal(await kv.has('m', 'bad'), false)
      })

      test('a bad key or key list is INVALID_INPUT naming the mount', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        await rejectsWith(kv.get('m', 42), 'INVALID_INPUT', /^key of mount 'm' must be a string, got number$/)
        await rejectsWith(kv.set('m', 'a\ud800', 1), 'INVALID_INPUT', naming("key of mount 'm'", 'lone surrogate'))
        await rejectsWith(kv.setMany('m', { 'a\udc00': 1 }), 'INVALID_INPUT', naming("key of mount 'm'", 'lone surrogate'))
        await rejectsWith(kv.getMany('m', 'k'), 'INVALID_INPUT', /^keys of mount 'm' must be an array of strings$/)
        await rejectsWith(kv.deleteMany('m', ['ok', '\ud800']), 'INVALID_INPUT', naming("key of mount 'm'", 'lone surrogate'))
      })

      test('close is idempotent; later calls reject with DISPOSED', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        const view = kv.mount('m')
        await kv.set('m', 'k', 1)
        assert.equal(kv.closed, false)
        await kv.close()
        await kv.close()
        assert.equal(kv.closed, true)
        await rejectsWith(kv.get('m', 'k'), 'DISPOSED')
        await rejectsWith(kv.set('m', 'k', 2), 'DISPOSED')
        await rejectsWith(kv.keys('m'), 'DISPOSED')
        await rejectsWith(view.get('k'), 'DISPOSED')
        // what the store was made with can still be read
        assert.deepEqual(kv.schema('m'), [])
        assert.deepEqual(view.schema(), [])
        assert.deepEqual(
          kv.mounts().map((m) => m.name),
          ['m'],
        )
        throwsWith(() => kv.schema('nope'), 'UNKNOWN_MOUNT')
      })

      // UTF-8 has no encoding for a lone surrogate: as a key it would turn into U+FFFD, and
      // two different keys into one. Inside values (JSON text escapes it) it is kept.
      test('refuses keys with a lone surrogate; keeps them in values and in merged object keys', async () => {
        const kv = backend.open({ mounts: { m: {} } })
        const refused = [
          kv.set('m', '\ud800', 1),
          kv.get('m', 'a\udc00'),
          kv.getMany('m', ['ok', '\ud800']),
          kv.setMany('m', { '\udc00': 1 }),
          kv.deleteMany('m', ['\ud800']),
          kv.keys('m', '\ud800*'),
          kv.merge('m', '\ud800', {}),
        ]
        for (const call of refused) await rejectsWith(call, 'INVALID_INPUT')
        assert.deepEqual(await kv.keys('m'), [])
        await kv.set('m', 'doc', { a: 1, s: '\ud800' })
        assert.equal(await kv.merge('m', 'doc', { b: 2, '\ud800': 3 }), true)
        assert.equal(await kv.merge('m', 'doc', { '\ud800': 4, '\udc00': 5 }), true)
        const doc = await kv.get('m', 'doc')
        assert.deepEqual(Object.entries(doc), [
          ['a', 1],
          ['s', '\ud800'],
          ['b', 2],
          ['\ud800', 4],
          ['\udc00', 5],
        ])
      })

      // A new store has not counted its mounts, so its writes of new keys run in phases.
      test('the calls made before close() finish (and land), in phases too; later calls reject with DISPOSED', async () => {
        for (let round = 0; round < 5; round++) {
          const kv = backend.open({ mounts: { m: { maxEntries: 10_000 } } })
          const keys = Array.from({ length: 50 }, (_, i) => `closing${round}-${i}`)
          const calls = []
          for (const key of keys) calls.push(kv.set('m', key, { a: 1 }), kv.merge('m', key, { v: key }))
          // Listings: several round trips (a page each), all before close().
          calls.push(kv.keys('m'), kv.getAll('m'))
          calls.push(kv.deleteMany('m', keys.slice(0, 10)), kv.setMany('m', { [keys[0]]: 'again' }), kv.getMany('m', keys))
          let done = 0
          for (const call of calls)
            call.then(
              () => done++,
              () => done++,
            )
          const closing = kv.close()
          assert.equal(kv.closed, true)
          const late = kv.set('m', 'late', 1).then(
            () => 'resolved',
            (err) => err.code,
          )
          // close() resolves after them (a process may exit right after it).
          await closing
          assert.equal(done, calls.length, `round ${round}: ${done} of ${calls.length} calls settled when close() resolved`)
          const settled = await Promise.allSettled(calls)
          const failed = settled.filter((s) => s.status === 'rejected').map((s) => s.reason.code)
          assert.deepEqual(failed, [], `round ${round}: ${failed.length} calls made before close() failed`)
          assert.equal(Object.keys(settled.at(-1).value).length, 41)
          assert.equal(await late, 'DISPOSED')
          if (name !== 'memory') {
            const other = backend.openShared({ mounts: { m: {} } })
            assert.equal(await other.get('m', keys[0]), 'again')
            assert.deepEqual(await other.get('m', keys[49]), { a: 1, v: keys[49] })
            assert.equal(await other.has('m', 'late'), false)
          }
        }
      })

      if (name !== 'memory') {
        test('two stores on the same backend share state', async () => {
          const a = backend.open({ mounts: { m: {} } })
          const b = backend.openShared({ mounts: { m: {} } })
          await a.set('m', 'k', { from: 'a' })
          assert.deepEqual(await b.get('m', 'k'), { from: 'a' })
          await b.merge('m', 'k', { by: 'b' })
          assert.deepEqual(await a.get('m', 'k'), { from: 'a', by: 'b' })
          assert.equal(await b.delete('m', 'k'), true)
          assert.equal(await a.has('m', 'k'), false)
        })
      }
    })

    if (name === 'redis') {
      describe('Redis storage compatibility', () => {
        let io
        before(async () => {
          const { default: Redis } = await import('ioredis')
          io = new Redis(backend.redisUrl, { maxRetriesPerRequest: 1 })
        })
        after(() => {
          io?.disconnect()
        })

        test('a value is the Redis string JSON.stringify(value) at prefix + key', async () => {
          const kv = backend.open({ mounts: { m: { prefix: 'app:m:' } } })
          const p = backend.prefixOf(kv, 'app:m:')
          const value = { b: 1, a: [1, 'é', null], c: { z: 'q"uote\n' } }
          await kv.set('m', 'k', { a: 1 })
          assert.equal(await io.get(`${p}k`), JSON.stringify({ a: 1 }))
          assert.equal(await io.type(`${p}k`), 'string')
          await kv.set('m', 'v', value)
          assert.equal(await io.get(`${p}v`), JSON.stringify(value))
          await kv.set('m', 's', 'text')
          assert.equal(await io.get(`${p}s`), '"text"')
          await kv.set('m', 'n', 42)
          assert.equal(await io.get(`${p}n`), '42')
          await kv.setMany('m', { many: [1, 2] })
          assert.equal(await io.get(`${p}many`), '[1,2]')
          await kv.merge('m', 'k', { b: 2 })
          assert.deepEqual(JSON.parse(await io.get(`${p}k`)), { a: 1, b: 2 })
          assert.equal(await io.type(`${p}k`), 'string')
          assert.deepEqual((await io.keys(`${p}*`)).sort(), ['k', 'v', 's', 'n', 'many'].map((k) => p + k).sort())
        })

        test('a key under the prefix that is not UTF-8 (written by another client) is no entry: not listed, not counted, left by clear', async () => {
          const kv = backend.open({ mounts: { m: { maxEntries: 2 } } })
          const p = backend.prefixOf(kv, 'm:')
          const foreign = Buffer.concat([Buffer.from(p), Buffer.from([0xff, 0xfe])])
          await io.set(foreign, '1')
          assert.deepEqual(await kv.keys('m'), [])
          assert.equal(await kv.set('m', 'a', 1), true)
          assert.equal(await kv.set('m', 'b', 2), true, 'the foreign key takes no entry')
          assert.deepEqual(await kv.keys('m'), ['a', 'b'])
          assert.equal(await kv.clear('m'), true)
          assert.deepEqual(await kv.keys('m'), [])
          assert.equal(await io.exists(foreign), 1, 'left as it is, not deleted under another name')
          await io.del(foreign)
        })

        test("set and setMany overwrite a key of another type, as SET does, whether or not the mount's count is fresh", async () => {
          const kv = backend.open({ mounts: { m: {} } })
          const p = backend.prefixOf(kv, 'm:')
          for (const key of ['h1', 'h2', 'h3']) await io.hset(`${p}${key}`, 'f', 'v')
          // the first write of a new store counts the mount: the next ones find a fresh count
          // (where they learn from the write itself whether the key existed)
          assert.equal(await kv.set('m', 'fresh', 1), true)
          assert.equal(await kv.set('m', 'h1', 'x'), true)
          assert.equal(await io.get(`${p}h1`), '"x"')
          assert.equal(await kv.setMany('m', { a: 1, h2: 2, b: 3 }), true)
          assert.deepEqual(await io.mget(`${p}a`, `${p}h2`, `${p}b`), ['1', '2', '3'])
          // a stale count takes the other path, with the same answer
          const other = backend.openShared({ mounts: { m: {} } })
          assert.equal(await other.set('m', 'h3', 'y'), true)
          assert.equal(await io.get(`${p}h3`), '"y"')
          assert.equal((await kv.keys('m')).length, 6)
        })

        test('merge into a stored value that is no JSON rejects CORRUPT_DATA and leaves it as it was', async () => {
          const kv = backend.open({ mounts: { m: {} } })
          const p = backend.prefixOf(kv, 'm:')
          const broken = [
            '{"a":1}{"b":2}',
            '{"a":01}',
            '{"a":tru}',
            '{"a":[01]}',
            '{"a":{"b":1,}}',
            '{"a":"x\u0001"}',
            '{"a":"\\q"}',
            '{"a":1}\f',
            '{"a":1.}',
            '{"a":-}',
            '{"a":[1 2]}',
            '',
          ]
          for (const text of broken) {
            await io.set(`${p}k`, text)
            await rejectsWith(kv.merge('m', 'k', { z: 1 }), 'CORRUPT_DATA', undefined, JSON.stringify(text))
            assert.equal(await io.get(`${p}k`), text, JSON.stringify(text))
          }
          // JSON whose bytes are not UTF-8 (RFC 8259 8.1)
          const latin1 = Buffer.from('{"a":"\xff\xfe","b":"\xe9"}', 'latin1')
          await io.set(`${p}k`, latin1)
          await rejectsWith(kv.merge('m', 'k', { z: 1 }), 'CORRUPT_DATA')
          assert.deepEqual(await io.getBuffer(`${p}k`), latin1)
          // valid JSON of every shape merges, its members' text kept as stored
          const valid = '\t{ "a" : [ -0.5e+10 , {"b":[]}, {}, "\\u00e9\\n\\"" ] ,\r\n"n":null,"t":true,"f":false,"x":"\u007f\u2028" }\n'
          await io.set(`${p}k`, valid)
          assert.equal(await kv.merge('m', 'k', { z: 1 }), true)
          assert.equal(await io.get(`${p}k`), '{"a":[ -0.5e+10 , {"b":[]}, {}, "\\u00e9\\n\\"" ],"n":null,"t":true,"f":false,"x":"\u007f\u2028","z":1}')
        })

        test('values another client wrote as JSON are read', async () => {
          const kv = backend.open({ mounts: { m: {} } })
          const p = backend.prefixOf(kv, 'm:')
          await io.set(`${p}x`, JSON.stringify({ b: [1, 'é'] }))
          await io.set(`${p}y`, '"plain"')
          assert.deepEqual(await kv.get('m', 'x'), { b: [1, 'é'] })
          assert.deepEqual(await kv.keys('m'), ['x', 'y'])
          assertPlainEqual(await kv.getAll('m'), { x: { b: [1, 'é'] }, y: 'plain' }, 'getAll')
          assertPlainEqual(await kv.getMany('m', ['y', 'z']), { y: 'plain' }, 'getMany')
          await kv.merge('m', 'x', { c: 3 })
          assert.deepEqual(JSON.parse(await io.get(`${p}x`)), { b: [1, 'é'], c: 3 })
          assert.equal(await kv.delete('m', 'y'), true)
          assert.equal(await io.exists(`${p}y`), 0)
        })

        test('the default mount prefix is the mount name and a colon, in Redis too', async () => {
          const mount = `m${randomUUID().slice(0, 8)}`
          const kv = backend.open({ mounts: { [mount]: {} } }, { raw: true })
          try {
            await kv.set(mount, 'k', 1)
            assert.equal(await io.get(`${mount}:k`), '1')
          } finally {
            await kv.clear(mount)
          }
          assert.equal(await io.exists(`${mount}:k`), 0)
        })

        test('the ttl is set in ms with the write (PTTL)', async () => {
          const kv = backend.open({ mounts: { t: { ttl: 60_000 }, o: {} } })
          const pt = backend.prefixOf(kv, 't:')
          const po = backend.prefixOf(kv, 'o:')
          const within = async (key, ttl) => {
            const left = await io.pttl(key)
            assert.ok(left > ttl - 2_000 && left <= ttl, `PTTL ${key} = ${left}, expected about ${ttl}`)
          }
          await kv.set('t', 'k', 1)
          await within(`${pt}k`, 60_000)
          await kv.set('t', 'c', 1, { ttl: 120_000 })
          await within(`${pt}c`, 120_000)
          await kv.setMany('t', { a: 1, b: 2 })
          await within(`${pt}a`, 60_000)
          await within(`${pt}b`, 60_000)
          await kv.set('o', 'k', 1)
          assert.equal(await io.pttl(`${po}k`), -1)
          await kv.set('o', 'k', { a: 1 }, { ttl: 30_000 })
          await within(`${po}k`, 30_000)
          await kv.merge('o', 'k', { b: 2 })
          await within(`${po}k`, 30_000)
          await kv.set('o', 'k', 2)
          assert.equal(await io.pttl(`${po}k`), -1)
          await kv.setMany('o', { m1: 1 }, { ttl: 45_000 })
          await within(`${po}m1`, 45_000)
        })

        test('clear deletes only the keys under the mount prefix and writes defaults as JSON strings', async () => {
          const kv = backend.open({
            mounts: {
              m: { prefix: 'app:m:' },
              d: { prefix: 'app:d:', ttl: 60_000, schema: { name: { type: 'string', default: 'Anonymous' }, n: { type: 'number', default: 0 } } },
            },
          })
          const base = backend.prefixOf(kv, '')
          const p = backend.prefixOf(kv, 'app:m:')
          const outside = [`${base}app:m`, `${base}app:mx:1`, `${base}app:`, `${base}other`]
          for (const key of outside) await io.set(key, '"outside"')
          await kv.setMany('m', { a: 1, b: 2 })
          assert.equal(await kv.clear('m'), true)
          assert.deepEqual(await io.keys(`${p}*`), [])
          for (const key of outside) assert.equal(await io.get(key), '"outside"', key)
          const pd = backend.prefixOf(kv, 'app:d:')
          await kv.set('d', 'n', 5)
          assert.equal(await kv.clear('d'), true)
          assert.equal(await io.get(`${pd}name`), '"Anonymous"')
          assert.equal(await io.get(`${pd}n`), '0')
          const left = await io.pttl(`${pd}name`)
          assert.ok(left > 58_000 && left <= 60_000, `PTTL of a default written by clear: ${left}`)
        })
      })
    }
  })
}
