// TLS (rediss://, option `tls`) against real TLS redis-servers on loopback, with
// throwaway certificates made by openssl: trust, names, expiry, client certificates,
// a plain-text server, reconnects, and ACL users over TLS.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import { Redis } from 'ioredis'
import { createKvStore, createRedisStore } from '../index.js'
import { rejectsWith } from './helpers/assert.mjs'
import { makeCertificates, startTlsRedis } from './helpers/tls.mjs'

describe('TLS', { timeout: 60_000 }, () => {
  let certs
  let server
  let admin
  const stores = []
  const open = (url, options) => {
    const store = createRedisStore(url, { connectTimeout: 2_000, commandTimeout: 4_000, ...options })
    stores.push(store)
    return store
  }
  const trusted = () => ({ ca: certs.file('ca.crt') })

  before(async () => {
    certs = makeCertificates()
    server = await startTlsRedis(certs)
    admin = new Redis(server.url)
  })

  after(async () => {
    await Promise.all(stores.map((s) => s.close()))
    admin?.disconnect()
    await server?.stop()
    certs?.remove()
  })

  it('runs the WorkerStore over rediss:// with a CA file, and as PEM text', async () => {
    const store = open(server.tlsUrl, { prefix: 'tls:file:', tls: trusted() })
    await store.beginExecution('e')
    await store.commitExecutionTaskResult('e', 't', { ok: true })
    assert.deepEqual(await store.getExecutionTaskResults('e'), { t: { ok: true } })
    assert.equal(await admin.hget('tls:file:e-results', 't'), '{"ok":true}')
    const pem = open(server.tlsUrl, { prefix: 'tls:pem:', tls: { ca: readFileSync(certs.file('ca.crt'), 'utf8') } })
    await pem.beginExecution('e')
    assert.equal(await pem.isExecutionInProgress('e'), true)
  })

  it('carries large values both ways (the TLS record buffer is fed in turns)', async () => {
    const kv = createKvStore(server.tlsUrl, { tls: trusted(), mounts: { big: { prefix: 'tls:big:', maxValueSize: 8 << 20 } } })
    try {
      const value = { blob: 'x'.repeat(3 << 20) }
      await Promise.all([kv.set('big', 'a', value), kv.set('big', 'b', value)])
      const back = await kv.getMany('big', ['a', 'b'])
      assert.equal(back.a.blob.length, 3 << 20)
      assert.equal(back.b.blob.length, 3 << 20)
    } finally {
      await kv.close()
    }
  })

  it('rejects a server certificate from another CA with TLS, within connectTimeout', async () => {
    const store = open(server.tlsUrl, { tls: { ca: certs.file('other-ca.crt') }, connectTimeout: 1_000 })
    const started = Date.now()
    await rejectsWith(store.beginExecution('e'), 'TLS', /UnknownIssuer/)
    assert.ok(Date.now() - started < 3_000, `took ${Date.now() - started} ms`)
  })

  it('accepts any certificate with rejectUnauthorized: false', async () => {
    const store = open(server.tlsUrl, { prefix: 'tls:any:', tls: { ca: certs.file('other-ca.crt'), rejectUnauthorized: false } })
    await store.beginExecution('e')
    assert.equal(await store.isExecutionInProgress('e'), true)
  })

  it('rejects an expired server certificate with TLS', async () => {
    const expired = await startTlsRedis(certs, { cert: 'expired' })
    try {
      const store = open(expired.tlsUrl, { tls: trusted() })
      await rejectsWith(store.beginExecution('e'), 'TLS', /expired/)
    } finally {
      await expired.stop()
    }
  })

  it('checks the server name: the host by default, else `servername`', async () => {
    const named = await startTlsRedis(certs, { cert: 'named' })
    try {
      await rejectsWith(open(named.tlsUrl, { tls: trusted() }).beginExecution('e'), 'TLS', /not valid for name/)
      const store = open(named.tlsUrl, { prefix: 'tls:named:', tls: { ...trusted(), servername: 'redis.test' } })
      await store.beginExecution('e')
      assert.equal(await store.isExecutionInProgress('e'), true)
    } finally {
      await named.stop()
    }
  })

  it('rejects rediss:// to a plain-text server with TLS, within connectTimeout', async () => {
    const store = open(`rediss://127.0.0.1:${server.port}`, { tls: trusted(), connectTimeout: 800 })
    const started = Date.now()
    await rejectsWith(store.beginExecution('e'), 'TLS')
    const elapsed = Date.now() - started
    assert.ok(elapsed < 3_000, `took ${elapsed} ms`)
  })

  it('presents a client certificate to a server that requires one', async () => {
    const mutual = await startTlsRedis(certs, { authClients: 'yes' })
    try {
      await rejectsWith(open(mutual.tlsUrl, { tls: trusted() }).beginExecution('e'), 'TLS', /CertificateRequired/)
      const store = open(mutual.tlsUrl, { prefix: 'tls:mutual:', tls: { ...trusted(), cert: certs.file('client.crt'), key: certs.file('client.key') } })
      await store.beginExecution('e')
      assert.equal(await store.isExecutionInProgress('e'), true)
    } finally {
      await mutual.stop()
    }
  })

  it('reconnects over TLS after the connection is killed, sending the call again', async () => {
    const store = open(server.tlsUrl, { prefix: 'tls:kill:', tls: trusted() })
    await store.beginExecution('e')
    const killed = await admin.client('KILL', 'TYPE', 'normal', 'SKIPME', 'yes')
    assert.ok(killed >= 1)
    await store.beginExecutionTask('e', 't')
    assert.equal(await store.isExecutionTaskInProgress('e', 't'), true)
  })

  it('logs in as an ACL user over TLS; a command the user may not run rejects with AUTH', async () => {
    await admin.acl('SETUSER', 'tls-reader', 'on', '>r3ad', '~tls:acl:*', '+get', '+hget', '+ping')
    const [host, port] = [server.tlsUrl.split('//')[1].split(':')[0], server.tlsPort]
    const reader = open(`rediss://tls-reader:r3ad@${host}:${port}`, { prefix: 'tls:acl:', tls: trusted() })
    assert.equal(await reader.isExecutionInProgress('e'), false)
    await rejectsWith(reader.beginExecution('e'), 'AUTH', /permissions/)
    const wrong = open(`rediss://tls-reader:nope@${host}:${port}`, { tls: trusted() })
    await rejectsWith(wrong.isExecutionInProgress('e'), 'AUTH')
  })

  it('rejects bad TLS options with INVALID_INPUT when the store is created', () => {
    const invalid = (tls, pattern) => assert.throws(() => createRedisStore(server.tlsUrl, { tls }), (err) => {
      assert.equal(err.code, 'INVALID_INPUT')
      assert.match(err.message, pattern)
      return true
    })
    invalid({ ca: '/nonexistent/ca.pem' }, /cannot read/)
    invalid({ ca: '-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n' }, /tls\.ca/)
    invalid({ ...trusted(), cert: certs.file('client.crt') }, /go together/)
    invalid({ ...trusted(), cert: certs.file('client.crt'), key: certs.file('ca.crt') }, /tls\.key/)
  })
})
