// How the factories take their options: a value of the wrong type, a whole number that is
// not one, a key no backend knows. Every refusal is INVALID_INPUT at creation, naming the
// option (nothing connects: the servers below only show what a store accepted does).
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { createKvStore, createMemoryStore, createPostgresStore, createRedisStore, createSqliteStore, createStore } from '../index.js'

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
})
