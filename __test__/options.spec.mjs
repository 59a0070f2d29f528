// How the factories take their options: a value of the wrong type, a whole number that is
// not one, a key no backend knows. Every refusal is INVALID_INPUT at creation, naming the
// option (nothing connects: the servers below only show what a store accepted does).
import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { createKvStore, createMemoryStore, createPostgresStore, createRedisStore, createSqliteStore, createStore } from '../index.js'
import { startRedisServer } from './helpers/redis-server.mjs'
import { makeCertificates } from './helpers/tls.mjs'

/** Asserts that `create()` throws INVALID_INPUT with a message matching `pattern`. */
function refused(create, pattern, label) {
  assert.throws(
    create,
    (err) => {
      assert.equal(err.name, 'DurastateError', `${label}: ${err}`)
      assert.equal(err.code, 'INVALID_INPUT', `${label}: ${err.code}: ${err.message}`)
      assert.match(err.message, pattern, label)
      return true
    },
    label,
  )
}

/** PEM armour around text that is not base64. */
const NOT_PEM = '-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n'

describe('store options', () => {
  let dir
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'durastate-options-'))
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  /** Every factory, each given `options` (nothing connects at creation). */
  const factories = () => [
    ['createRedisStore', (options) => createRedisStore('rediss://127.0.0.1:1', options)],
    ['createPostgresStore', (options) => createPostgresStore('postgres://postgres@127.0.0.1:1/postgres', options)],
    ['createKvStore', (options) => createKvStore('rediss://127.0.0.1:1', options)],
    ['createStore', (options) => createStore('redis://127.0.0.1:1', options)],
    ['createSqliteStore', (options) => createSqliteStore(join(dir, 'wrong-type.db'), options)],
    ['createMemoryStore', (options) => createMemoryStore(options)],
  ]

  it('a boolean option given another type is INVALID_INPUT naming it (not INTERNAL)', () => {
    for (const [factory, create] of factories()) {
      for (const value of ['false', 0, 'no', {}]) {
        refused(
          () => create({ tls: { rejectUnauthorized: value } }),
          /^option `tls\.rejectUnauthorized` must be a boolean/,
          `${factory} tls.rejectUnauthorized ${JSON.stringify(value)}`,
        )
      }
    }
    refused(
      () => createRedisStore({ sentinels: [{ host: '127.0.0.1' }], name: 'main' }, { sentinelTls: { rejectUnauthorized: 'false' } }),
      /^option `sentinelTls\.rejectUnauthorized` must be a boolean/,
      'sentinelTls.rejectUnauthorized',
    )
  })

  it('a whole-number option is a whole number in its range, else INVALID_INPUT quoting the value given', () => {
    const PG = 'postgres://postgres@127.0.0.1:1/postgres'
    // [option, create(value), a value that is fine, the bad values and how the message shows each]
    const cases = [
      ['db', (db) => createRedisStore({ host: '127.0.0.1', port: 1, db }), 3],
      ['db', (db) => createKvStore({ host: '127.0.0.1', port: 1, db }), 3],
      ['port', (port) => createRedisStore({ host: '127.0.0.1', port }), 6379],
      ['sentinels[0].port', (port) => createRedisStore({ sentinels: [{ host: '127.0.0.1', port }], name: 'main' }), 26379],
      ['port', (port) => createPostgresStore({ host: '127.0.0.1', port }), 5432],
      ['poolSize', (poolSize) => createPostgresStore(PG, { poolSize }), 4],
      ['retry.attempts', (attempts) => createRedisStore('redis://127.0.0.1:1', { retry: { attempts } }), 2],
      ['retry.attempts', (attempts) => createPostgresStore(PG, { retry: { attempts } }), 0],
      ['pageSize', (pageSize) => createMemoryStore({ pageSize }), 2048],
      ['pageSize', (pageSize) => createSqliteStore(join(dir, 'page-size.db'), { pageSize }), 1024],
    ]
    const bad = [
      [NaN, 'NaN'],
      [1.9, '1.9'],
      [-1, '-1'],
      [2 ** 32, '4294967296'],
      [2 ** 32 + 4, '4294967300'],
      [Infinity, 'Infinity'],
    ]
    for (const [option, create, fine] of cases) {
      create(fine).close()
      for (const [value, shown] of [...bad, [fine + 0.5, String(fine + 0.5)]]) {
        const escaped = option.replace(/[.[\]]/g, '\\$&')
        refused(() => create(value), new RegExp(`^option \`${escaped}\` must be a whole number from \\d+ to \\d+, got ${shown}$`), `${option} ${shown}`)
      }
    }
  })

  it('a Redis db or port that is not a whole number is refused, not wrapped or truncated into another database', async () => {
    const server = await startRedisServer()
    const stores = []
    const open = (target) => {
      const store = createRedisStore(target, { prefix: 'options:', connectTimeout: 2_000, commandTimeout: 4_000 })
      stores.push(store)
      return store
    }
    try {
      await open(`redis://127.0.0.1:${server.port}/0`).beginExecution('in-db-0')
      await open({ host: '127.0.0.1', port: server.port, db: 3 }).beginExecution('in-db-3')
      assert.equal(await open(`redis://127.0.0.1:${server.port}/3`).isExecutionInProgress('in-db-3'), true, 'db 3 is used as given')
      assert.equal(await open(`redis://127.0.0.1:${server.port}/3`).isExecutionInProgress('in-db-0'), false)
      // NaN and 2 ** 32 were database 0, 3.5 database 3, -1 SELECT 4294967295; a port past 65535 wrapped.
      for (const fields of [{ db: NaN }, { db: 2 ** 32 }, { db: 3.5 }, { db: -1 }, { port: 2 ** 32 + server.port }, { port: server.port + 0.5 }]) {
        refused(() => open({ host: '127.0.0.1', port: server.port, ...fields }), /must be a whole number/, JSON.stringify(fields))
      }
    } finally {
      await Promise.all(stores.map((store) => store.close()))
      await server.stop()
    }
  })

  it('an option key no backend knows is INVALID_INPUT naming it, on every factory', () => {
    for (const [factory, create] of factories()) {
      // node-postgres's name for TLS: Postgres fell back to sslmode=prefer (maybe plain text).
      refused(() => create({ ssl: { rejectUnauthorized: true } }), /^unknown option `ssl`: durastate's TLS option is `tls`/, `${factory} ssl`)
      refused(() => create({ connecTimeout: 1_000 }), /^unknown option `connecTimeout`: did you mean `connectTimeout`\?$/, `${factory} typo`)
      refused(() => create({ TTL: 1_000 }), /^unknown option `TTL`: did you mean `ttl`\?$/, `${factory} case`)
      refused(() => create({ retry: { retries: 5 } }), /^unknown option `retry\.retries`/, `${factory} retry.retries`)
      refused(() => create({ whatever: 1 }), /^unknown option `whatever`: the known ones are ttl, prefix, /, `${factory} unknown`)
      // The CLI's internal read-only switch is not a user's option (it made reads of a
      // missing SQLite file fail UNAVAILABLE instead of creating it).
      refused(() => create({ createTables: false }), /^unknown option `createTables`: the known ones are ttl, /, `${factory} createTables`)
      // A key set to undefined is as if absent.
      create({ whatever: undefined, tls: undefined }).close()
    }
    refused(() => createStore('memory:', { mounts: {} }), /^unknown option `mounts`: it is an option of createKvStore$/, 'mounts')
    refused(
      () => createKvStore('memory:', { mounts: { m: { maxEntires: 5 } } }),
      /^unknown option `mounts\.m\.maxEntires`: did you mean `maxEntries`\?$/,
      'mount',
    )
  })

  it('a `prefix` with a lone surrogate is INVALID_INPUT on every factory, as ids are (it was stored as U+FFFD: two prefixes named the same keys)', async () => {
    for (const [factory, create] of factories()) {
      for (const prefix of ['a\ud800', 'a\udc00:', '\ud83d']) {
        refused(
          () => create({ prefix }),
          /^option `prefix` holds a lone surrogate \(\\ud[89a-f][0-9a-f]{2} at index \d\)/,
          `${factory} ${JSON.stringify(prefix)}`,
        )
      }
      // a surrogate pair is well-formed
      await create({ prefix: 'tenant-😀:' }).close()
    }
    // A KV store's mount prefixes too, and the default mount's (the store's own `prefix`).
    refused(() => createKvStore('memory:', { mounts: { m: { prefix: 'x\ud800' } } }), /^mount 'm': prefix holds a lone surrogate/, 'mount prefix')
  })

  it('a `retry` that is not an object is INVALID_INPUT naming it (`retry: 0` kept the 3 resends); `retry: null` is as if absent', async () => {
    for (const [factory, create] of factories()) {
      for (const [value, got] of [
        [0, 'number'],
        [false, 'boolean'],
        ['none', 'string'],
        [[], 'an array'],
      ]) {
        refused(
          () => create({ retry: value }),
          new RegExp(`^option \`retry\` must be an object \\{ attempts, minDelay, maxDelay \\}, got ${got}$`),
          `${factory} retry ${JSON.stringify(value)}`,
        )
      }
      // It threw INTERNAL ("Cannot convert undefined or null to object").
      const store = create({ retry: null })
      assert.equal(store.closed, false, `${factory} retry null`)
      await store.close()
    }
    for (const create of [() => createMemoryStore({ retry: null }), () => createKvStore('memory:', { retry: null })]) {
      const store = create()
      try {
        if (store.set) {
          await store.set('default', 'k', 1)
          assert.equal(await store.get('default', 'k'), 1)
        } else {
          await store.beginExecution('e')
          assert.equal(await store.isExecutionInProgress('e'), true)
        }
      } finally {
        await store.close()
      }
    }
  })

  it('options that are not an object are INVALID_INPUT on every factory, not ignored (createMemoryStore(60_000) meant as a ttl)', async () => {
    for (const [factory, create] of [...factories(), ['createStore memory:', (options) => createStore('memory:', options)]]) {
      for (const [value, got] of [
        [60_000, 'number'],
        ['ttl=1000', 'string'],
        [true, 'boolean'],
        [['ttl'], 'an array'],
      ]) {
        refused(
          () => create(value),
          new RegExp(`^a store's options must be an object such as \\{ ttl: 60000 \\}, got ${got}$`),
          `${factory} ${JSON.stringify(value)}`,
        )
      }
      // Absent options stay absent.
      for (const options of [undefined, null]) await create(options).close()
    }
  })

  it('a TLS setting durastate does not support is INVALID_INPUT naming it, not ignored', () => {
    for (const [factory, create] of factories()) {
      for (const [key, pattern] of [
        ['minVersion', /^unknown option `tls\.minVersion`: durastate speaks TLS 1\.2 and 1\.3/],
        ['checkServerIdentity', /^unknown option `tls\.checkServerIdentity`: the certificate is checked against the host/],
        ['passphrase', /^unknown option `tls\.passphrase`: an encrypted key is not supported/],
        ['rejectUnauthorised', /^unknown option `tls\.rejectUnauthorised`: did you mean `rejectUnauthorized`\?$/],
        ['ciphers', /^unknown option `tls\.ciphers`: the known ones are ca, cert, key, servername, rejectUnauthorized$/],
      ]) {
        refused(() => create({ tls: { [key]: key === 'checkServerIdentity' ? () => undefined : 'x' } }), pattern, `${factory} tls.${key}`)
      }
    }
    refused(
      () => createRedisStore({ sentinels: [{ host: '127.0.0.1' }], name: 'main' }, { sentinelTls: { minVersion: 'TLSv1.3' } }),
      /^unknown option `sentinelTls\.minVersion`/,
      'sentinelTls.minVersion',
    )
  })

  it('a field a target does not have is INVALID_INPUT naming it', () => {
    refused(
      () => createPostgresStore({ host: '127.0.0.1', sslMode: 'verify-full' }),
      /^unknown field `sslMode` of a Postgres target: did you mean `sslmode`\?$/,
      'sslMode',
    )
    refused(() => createPostgresStore({ host: '127.0.0.1', ssl: true }), /^unknown field `ssl` of a Postgres target: use `sslmode`$/, 'pg ssl')
    refused(() => createPostgresStore({ host: '127.0.0.1', sslrootcert: '/ca.pem' }), /store option `tls`/, 'sslrootcert')
    refused(() => createRedisStore({ host: '127.0.0.1', passwd: 'x' }), /^unknown field `passwd` of a Redis target: did you mean `password`\?$/, 'redis passwd')
    refused(() => createKvStore({ host: '127.0.0.1', ssl: true }), /^unknown field `ssl` of a Redis target/, 'kv ssl')
    refused(
      () => createRedisStore({ sentinels: [{ host: '127.0.0.1', prot: 1 }], name: 'main' }),
      /^unknown field `sentinels\[0\]\.prot` of a sentinel address/,
      'sentinel',
    )
  })

  it("an empty array of CAs is INVALID_INPUT (it trusts no CA), not a file '' that cannot be read", () => {
    for (const create of [
      () => createRedisStore('rediss://127.0.0.1:1', { tls: { ca: [] } }),
      () => createPostgresStore('postgres://127.0.0.1:1/db?sslmode=verify-full', { tls: { ca: [] } }),
    ]) {
      refused(create, /^option `tls\.ca` is an empty array, which trusts no CA/, 'ca []')
    }
  })

  it('a target field of the wrong type is INVALID_INPUT naming the field and the type it takes, its value not shown', () => {
    for (const [create, target, pattern] of [
      [createRedisStore, { host: 6379 }, /^field `host` of a Redis target must be a string, got number$/],
      [createRedisStore, { host: '127.0.0.1', port: '6379' }, /^field `port` of a Redis target must be a number, got string$/],
      [createRedisStore, { host: '127.0.0.1', port: null }, /^field `port` of a Redis target must be a number, got null$/],
      [createKvStore, { host: '127.0.0.1', password: 1234 }, /^field `password` of a Redis target must be a string, got number$/],
      [createRedisStore, { host: '127.0.0.1', tls: 'true' }, /^field `tls` of a Redis target must be a boolean, got string$/],
      [createRedisStore, { sentinels: '127.0.0.1:26379', name: 'main' }, /^field `sentinels` of a Redis target must be an array, got string$/],
      [createRedisStore, { sentinels: ['127.0.0.1:26379'], name: 'main' }, /^field `sentinels\[0\]` of a Redis target must be an object \{ host, port \}$/],
      [
        createRedisStore,
        { sentinels: [{ host: '127.0.0.1', port: '26379' }], name: 'main' },
        /^field `sentinels\[0\]\.port` of a Redis target must be a number, got string$/,
      ],
      [createRedisStore, { cluster: ['redis://127.0.0.1:7000', 7001] }, /^field `cluster\[1\]` of a Redis target must be a string, got number$/],
      [createRedisStore, { cluster: [7000] }, /^field `cluster\[0\]` of a Redis target must be a string, got number$/],
      [createRedisStore, { cluster: 'redis://127.0.0.1:7000' }, /^field `cluster` of a Redis target must be an array of strings, got string$/],
      [createPostgresStore, { host: '127.0.0.1', password: 1234 }, /^field `password` of a Postgres target must be a string, got number$/],
      [createPostgresStore, { host: '127.0.0.1', port: '5432' }, /^field `port` of a Postgres target must be a number, got string$/],
    ]) {
      refused(() => create(target), pattern, JSON.stringify(target))
    }
  })

  it('a client object of another library as the target (the JS store takes a node-redis client) is INVALID_INPUT, not the default address', async () => {
    const { createClient } = await import('redis')
    const { Redis } = await import('ioredis')
    const nodeRedis = createClient({ url: 'redis://127.0.0.1:1' })
    const ioredis = new Redis('redis://127.0.0.1:1', { lazyConnect: true })
    class Pool {
      constructor() {
        this.options = { host: 'db' }
      }
    }
    for (const [create, client] of [
      [createRedisStore, nodeRedis],
      [createRedisStore, ioredis],
      [createKvStore, nodeRedis],
      [createPostgresStore, new Pool()],
    ]) {
      refused(() => create(client), /not a client object.*give it the URL/, client.constructor.name)
    }
    ioredis.disconnect()
    // plain objects, and those without a prototype, are fields
    refused(() => createRedisStore(Object.assign(Object.create(null), { hots: 'x' })), /unknown field `hots`/, 'null prototype')
  })

  it('a target that is an array (or neither a URL nor fields) is INVALID_INPUT, not the default server it connected to', () => {
    // An array read as fields it does not have: the default address, 127.0.0.1:6379 or localhost:5432.
    for (const [factory, create, pattern] of [
      [
        'createRedisStore',
        createRedisStore,
        /^a Redis target must be a URL string or Redis connection fields .*got an array: a list of cluster nodes goes in \{ cluster: \[\.\.\.\] \}$/,
      ],
      [
        'createKvStore',
        createKvStore,
        /^the target of a KV store must be a URL string or Redis connection fields .*got an array: a list of cluster nodes goes in/,
      ],
      [
        'createPostgresStore',
        createPostgresStore,
        /^a Postgres target must be a URL string or Postgres connection fields \(\{ host, port, user, \.\.\. \}\), got an array$/,
      ],
      ['createStore', createStore, /^the URL of createStore must be a string, got an array$/],
      ['createSqliteStore', createSqliteStore, /^the path of a SQLite store must be a string, got an array$/],
    ]) {
      refused(() => create(['redis://127.0.0.1:1', 'redis://127.0.0.1:2']), pattern, `${factory} array`)
      refused(() => create([]), /got an array/, `${factory} []`)
      refused(() => create(6379), /must be a .*string.*, got number$/, `${factory} number`)
    }
  })

  it("a bad value of another backend's option fails on every factory alike (a shared config fails on a laptop too)", () => {
    // Before, each was checked only by its own backend: `poolSize: 0` passed on SQLite and
    // Redis, then threw once DURASTATE_URL named Postgres in production; a `tls.ca` that is
    // not PEM passed on SQLite and memory, then threw with a Redis or Postgres URL.
    const bad = [
      [{ poolSize: 0 }, /^option `poolSize` must be/],
      [{ pageSize: 1000 }, /^option `pageSize` must be a power of two/],
      [{ synchronous: 'off' }, /^option `synchronous` must be "normal" or "full", got "off"$/],
      [{ durability: 'x' }, /^option `durability` must be "none" or "aof", got "x"$/],
      [{ schema: 'pg_x' }, /^option `schema`: "pg_x" starts with `pg_`/],
      [{ schema: '' }, /^option `schema` must be 1 to 63 bytes/],
      [{ busyTimeout: 2 ** 31 }, /^option `busyTimeout` must be at most/],
      // TLS, as far as the machine does not matter: PEM text given inline, and `cert` with `key`
      // (a file path is read where TLS is used only: it may exist only where the server is).
      [{ tls: { ca: NOT_PEM } }, /^tls\.ca: not PEM certificates/],
      [{ tls: { cert: NOT_PEM, key: NOT_PEM.replaceAll('CERTIFICATE', 'PRIVATE KEY') } }, /^tls\.cert: not PEM certificates/],
      [{ tls: { cert: NOT_PEM } }, /^tls: `cert` and `key` go together/],
      [{ tls: { key: '/nonexistent/key.pem' } }, /^tls: `cert` and `key` go together/],
      [{ sentinelTls: { ca: NOT_PEM } }, /^tls\.ca: not PEM certificates/],
    ]
    const everywhere = [
      ...factories(),
      ['createStore memory:', (options) => createStore('memory:', options)],
      ['createStore sqlite:', (options) => createStore(`sqlite:${join(dir, 'bad-shared.db')}`, options)],
      ['createStore postgres:', (options) => createStore('postgres://postgres@127.0.0.1:1/postgres', options)],
      ['createKvStore memory:', (options) => createKvStore('memory:', options)],
    ]
    for (const [options, message] of bad) {
      for (const [factory, create] of everywhere) {
        refused(() => create(options), message, `${factory} ${JSON.stringify(options)}`)
      }
    }
  })

  it('TLS PEM text given inline is checked on every backend alike: good text is accepted, a certificate with the wrong key refused', async () => {
    const certs = makeCertificates()
    const stores = []
    try {
      const pem = (name) => readFileSync(certs.file(name), 'utf8')
      const everywhere = [
        ['memory:', (options) => createMemoryStore(options)],
        ['sqlite:', (options) => createSqliteStore(join(dir, 'inline-tls.db'), options)],
        ['createStore memory:', (options) => createStore('memory:', options)],
        ['createKvStore memory:', (options) => createKvStore('memory:', options)],
        ['rediss:', (options) => createRedisStore('rediss://127.0.0.1:1', options)],
        ['postgres:', (options) => createPostgresStore('postgres://postgres@127.0.0.1:1/postgres?sslmode=verify-full', options)],
      ]
      for (const [label, create] of everywhere) {
        stores.push(create({ tls: { ca: pem('ca.crt'), cert: pem('client.crt'), key: pem('client.key') } }))
        refused(() => create({ tls: { cert: pem('client.crt'), key: pem('other-ca.key') } }), /^tls: client certificate: /, `${label} wrong key`)
      }
      await stores[0].beginExecution('e')
      assert.equal(await stores[0].isExecutionInProgress('e'), true)
    } finally {
      await Promise.all(stores.map((store) => store.close()))
      certs.remove()
    }
  })

  it('one options object serves every backend: the options of another backend are accepted', async () => {
    const everything = {
      prefix: 'shared:',
      ttl: 60_000,
      connectTimeout: 2_000,
      commandTimeout: 4_000,
      retry: { attempts: 1, minDelay: 10, maxDelay: 100 },
      tls: { ca: '/nonexistent/ca.pem', rejectUnauthorized: true },
      schema: 'app',
      poolSize: 2,
      busyTimeout: 1_000,
      synchronous: 'full',
      pageSize: 4096,
      keyLayout: 'hashtag',
    }
    const server = await startRedisServer()
    const stores = []
    try {
      // Redis: the SQLite and Postgres options are someone else's (no tls: the server is plain).
      const { tls: _, ...plain } = everything
      stores.push(createRedisStore(server.url, { ...plain, durability: 'none' }), createStore(server.url, plain))
      // SQLite and memory: a CA file that does not exist is not read (no TLS there).
      for (const create of [
        () => createStore(`sqlite:${join(dir, 'shared.db')}`, everything),
        () => createSqliteStore(join(dir, 'shared2.db'), everything),
        () => createMemoryStore(everything),
        () => createStore('memory:', { ...everything, durability: 'aof', sentinelTls: false }),
      ]) {
        stores.push(create())
      }
      for (const store of stores) {
        await store.beginExecution('e')
        assert.equal(await store.isExecutionInProgress('e'), true)
      }
      const kv = createKvStore(`sqlite:${join(dir, 'shared-kv.db')}`, { ...everything, mounts: { m: { prefix: 'm:' } } })
      stores.push(kv)
      await kv.set('m', 'k', 1)
      assert.equal(await kv.get('m', 'k'), 1)
    } finally {
      await Promise.all(stores.map((store) => store.close()))
      await server.stop()
    }
  })

  it('memory: with anything after it is INVALID_INPUT (memory:?x, memory://host/path and memory:name were plain memory:)', async () => {
    for (const url of ['memory:?x', 'memory://host/path', 'memory:name', 'memory:/tmp/state.db']) {
      for (const create of [() => createStore(url), () => createKvStore(url)]) {
        refused(create, /^store URL ".*": memory: takes nothing after it/, url)
      }
    }
    for (const url of ['memory:', 'MEMORY:']) {
      const store = createStore(url)
      await store.beginExecution('e')
      assert.equal(await store.isExecutionInProgress('e'), true)
      await store.close()
    }
  })

  it('a Redis URL parameter durastate does not read is INVALID_INPUT, not ignored (?tls=true connected in plain text)', async () => {
    const server = await startRedisServer()
    const stores = []
    try {
      const base = `redis://127.0.0.1:${server.port}`
      for (const [url, pattern] of [
        [`${base}/?tls=true`, /unknown parameter "tls": TLS is asked for by the scheme, rediss:\/\//],
        [`${base}/0?ssl=1`, /unknown parameter "ssl"/],
        [`rediss://127.0.0.1:${server.port}/?foo=bar`, /unknown parameter "foo" \(a rediss:\/\/ URL takes only protocol\)/],
        // A TCP URL's db parameter was ignored (database 0): the database is the path.
        [`${base}/?db=3`, /unknown parameter "db": the database is the URL's path/],
      ]) {
        for (const create of [() => createRedisStore(url), () => createStore(url), () => createKvStore(url)]) refused(create, pattern, url)
      }
      assert.throws(
        () => createRedisStore(`${base}/?password=TOPSECRET`),
        (err) => err.code === 'INVALID_INPUT' && err.message.includes('password=***') && !err.message.includes('TOPSECRET'),
      )
      // `protocol`, which redis-rs reads, is still taken.
      const store = createRedisStore(`${base}/?protocol=resp3`, { prefix: 'url-params:' })
      stores.push(store)
      await store.beginExecution('e')
      assert.equal(await store.isExecutionInProgress('e'), true)
    } finally {
      await Promise.all(stores.map((store) => store.close()))
      await server.stop()
    }
  })
})
