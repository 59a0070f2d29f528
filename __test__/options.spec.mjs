// How the factories take their options: a value of the wrong type, a whole number that is
// not one, a key no backend knows. Every refusal is INVALID_INPUT at creation, naming the
// option (nothing connects: the servers below only show what a store accepted does).
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { createKvStore, createMemoryStore, createPostgresStore, createRedisStore, createSqliteStore, createStore } from '../index.js'
import { startRedisServer } from './helpers/redis-server.mjs'

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
})
