// TLS (rediss://, option `tls`) against real TLS redis-servers on loopback, with
// throwaway certificates made by openssl: trust (a CA, or a self-signed CA:TRUE server
// certificate given as `ca`), names, expiry, client certificates, a plain-text server,
// each failure as code TLS with its reason, reconnects, ACL users over TLS,
// `durability: 'aof'` where CONFIG is renamed, and the CLI's TLS flags.
// (TLS on a cluster: tls-cluster.spec.mjs; with sentinels: sentinel.spec.mjs.)
import assert from 'node:assert/strict'
import { execFile, execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { promisify } from 'node:util'
import { after, before, describe, it } from 'node:test'
import { Redis } from 'ioredis'
import { createKvStore, createRedisStore } from '../index.js'
import { rejectsWith } from './helpers/assert.mjs'
import { packageRoot, runChild } from './helpers/child.mjs'
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
    await rejectsWith(store.beginExecution('e'), 'TLS', /untrusted issuer.*UnknownIssuer/)
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
      await rejectsWith(store.beginExecution('e'), 'TLS', /certificate has expired/)
    } finally {
      await expired.stop()
    }
  })

  it('checks the server name: the host by default, else `servername`', async () => {
    const named = await startTlsRedis(certs, { cert: 'named' })
    try {
      await rejectsWith(open(named.tlsUrl, { tls: trusted() }).beginExecution('e'), 'TLS', /wrong name.*not valid for name/)
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
    await rejectsWith(store.beginExecution('e'), 'TLS', /speak TLS/)
    const elapsed = Date.now() - started
    assert.ok(elapsed < 3_000, `took ${elapsed} ms`)
  })

  it('presents a client certificate to a server that requires one', async () => {
    const mutual = await startTlsRedis(certs, { authClients: 'yes' })
    try {
      const started = Date.now()
      await rejectsWith(
        open(mutual.tlsUrl, { tls: trusted(), connectTimeout: 1_000 }).beginExecution('e'),
        'TLS',
        /requires a client certificate.*CertificateRequired/,
      )
      assert.ok(Date.now() - started < 3_000, `took ${Date.now() - started} ms`)
      const store = open(mutual.tlsUrl, { prefix: 'tls:mutual:', tls: { ...trusted(), cert: certs.file('client.crt'), key: certs.file('client.key') } })
      await store.beginExecution('e')
      assert.equal(await store.isExecutionInProgress('e'), true)
    } finally {
      await mutual.stop()
    }
  })

  it('accepts a self-signed CA:TRUE server certificate given as `ca`, as Node.js tls does, still checking name and dates', async () => {
    const self = await startTlsRedis(certs, { cert: 'selfsigned' })
    const old = await startTlsRedis(certs, { cert: 'selfsigned-expired' })
    try {
      const ca = certs.file('selfsigned.crt')
      const store = open(self.tlsUrl, { prefix: 'tls:self:', tls: { ca } })
      await store.beginExecution('e')
      assert.equal(await store.isExecutionInProgress('e'), true)
      // Node.js's tls accepts it too (what ioredis users rely on).
      const node = new Redis(self.tlsUrl, { tls: { ca: readFileSync(ca) }, lazyConnect: true, maxRetriesPerRequest: 0 })
      try {
        await node.connect()
        assert.equal(await node.ping(), 'PONG')
      } finally {
        node.disconnect()
      }
      const localhost = open(self.tlsUrl.replace('127.0.0.1', 'localhost'), { prefix: 'tls:self:', tls: { ca } })
      assert.equal(await localhost.isExecutionInProgress('e'), true)
      await rejectsWith(open(self.tlsUrl, { tls: { ca, servername: 'redis.test' } }).beginExecution('e'), 'TLS', /wrong name/)
      await rejectsWith(open(self.tlsUrl, { tls: trusted() }).beginExecution('e'), 'TLS', /untrusted issuer/)
      await rejectsWith(open(old.tlsUrl, { tls: { ca: certs.file('selfsigned-expired.crt') } }).beginExecution('e'), 'TLS', /expired/)
    } finally {
      await Promise.all([self.stop(), old.stop()])
    }
  })

  it("durability 'aof' over TLS: checked with CONFIG GET, else INFO persistence; never claimed when it cannot be seen", async () => {
    const always = ['--appendonly', 'yes', '--appendfsync', 'always']
    const blocked = ['--rename-command', 'CONFIG', '']
    const servers = await Promise.all([
      startTlsRedis(certs, { args: always }),
      startTlsRedis(certs, { args: [...always, ...blocked] }),
      startTlsRedis(certs, { args: blocked }),
    ])
    try {
      const [good, hidden, off] = servers.map((s) => open(s.tlsUrl, { prefix: 'tls:aof:', durability: 'aof', tls: trusted() }))
      await good.beginExecution('e')
      assert.equal(await good.isExecutionInProgress('e'), true)
      await rejectsWith(hidden.beginExecution('e'), 'UNAVAILABLE', /cannot be confirmed.*aof_enabled:1.*CONFIG GET is unavailable.*unknown command/s)
      await rejectsWith(off.beginExecution('e'), 'UNAVAILABLE', /aof_enabled:0/)
    } finally {
      await Promise.all(servers.map((s) => s.stop()))
    }
  })

  it('the CLI takes --tls-ca, --tls-cert, --tls-key, --tls-servername and --insecure', async () => {
    const mutual = await startTlsRedis(certs, { authClients: 'yes' })
    const named = await startTlsRedis(certs, { cert: 'named' })
    const cli = (...args) =>
      promisify(execFile)(process.execPath, [`${packageRoot}/bin/durastate.mjs`, ...args], { timeout: 20_000 }).then(
        ({ stdout }) => ({ ok: true, out: stdout.trim() }),
        (err) => ({ ok: false, out: err.stderr.trim() }),
      )
    try {
      const ca = ['--tls-ca', certs.file('ca.crt')]
      const client = ['--tls-cert', certs.file('client.crt'), '--tls-key', certs.file('client.key')]
      assert.deepEqual(await cli('kv', 'set', 'cli', 'k', '{"n":1}', mutual.tlsUrl, ...ca, ...client, '--prefix', 'tls:cli:'), {
        ok: true,
        out: 'stored "k" in mount "cli" (key "tls:cli:k")',
      })
      assert.deepEqual(await cli('kv', 'get', 'cli', 'k', mutual.tlsUrl, ...ca, ...client, '--prefix', 'tls:cli:', '--json'), { ok: true, out: '{"n":1}' })
      const refused = await cli('kv', 'get', 'cli', 'k', mutual.tlsUrl, ...ca, '--prefix', 'tls:cli:')
      assert.equal(refused.ok, false)
      assert.match(refused.out, /requires a client certificate.*\(TLS\)/)
      const inspected = await cli('inspect', mutual.tlsUrl, ...ca, ...client, '--json')
      assert.equal(inspected.ok, true, inspected.out)
      assert.equal((await cli('kv', 'get', 'cli', 'k', named.tlsUrl, ...ca)).ok, false)
      assert.equal((await cli('kv', 'keys', 'cli', named.tlsUrl, ...ca, '--tls-servername', 'redis.test')).ok, true)
      assert.equal((await cli('kv', 'keys', 'cli', named.tlsUrl, '--tls-ca', certs.file('other-ca.crt'))).ok, false)
      assert.equal((await cli('kv', 'keys', 'cli', named.tlsUrl, '--insecure')).ok, true)
      const wrongKind = await cli('kv', 'keys', 'cli', 'sqlite:/nonexistent/x.db', ...ca)
      assert.match(wrongKind.out, /apply to Redis and Postgres URLs only/)
    } finally {
      await Promise.all([mutual.stop(), named.stop()])
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
    const invalid = (tls, pattern) =>
      assert.throws(
        () => createRedisStore(server.tlsUrl, { tls }),
        (err) => {
          assert.equal(err.code, 'INVALID_INPUT')
          assert.match(err.message, pattern)
          return true
        },
      )
    invalid({ ca: '/nonexistent/ca.pem' }, /cannot read/)
    invalid({ ca: '-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n' }, /tls\.ca/)
    invalid({ ...trusted(), cert: certs.file('client.crt') }, /go together/)
    invalid({ ...trusted(), cert: certs.file('client.crt'), key: certs.file('ca.crt') }, /tls\.key/)
    invalid('yes', /option `tls` must be an object/)
    invalid({ ca: 42 }, /option `tls\.ca` must be PEM text/)
    invalid({ ca: ['/etc/ca.pem'] }, /takes PEM texts/)
    invalid({ ...trusted(), cert: certs.file('client.crt'), key: Buffer.from('not a key') }, /must hold PEM text/)
    // An encrypted key says so, and how to decrypt it.
    const encrypted = execFileSync('openssl', ['pkcs8', '-topk8', '-in', certs.file('client.key'), '-passout', 'pass:pw'], { encoding: 'utf8' })
    invalid({ ...trusted(), cert: certs.file('client.crt'), key: encrypted }, /encrypted.*openssl pkey/)
  })

  it('without tls.ca on a machine with no CA certificates: INVALID_INPUT saying so, not blaming tls.ca', async () => {
    const script = `try { ds.createRedisStore('rediss://127.0.0.1:1'); console.log('created') } catch (err) { console.log(err.code, err.message) }`
    const run = await runChild(script, { env: { SSL_CERT_FILE: '/nonexistent', SSL_CERT_DIR: '/nonexistent' } })
    assert.match(run.stdout, /^INVALID_INPUT no system CA certificates found.*ca-certificates.*tls\.ca/, run.stdout + run.stderr)
    // With them (this machine's), the store is made.
    const normal = await runChild(script)
    assert.match(normal.stdout, /^created/, normal.stdout + normal.stderr)
  })

  it('tls: false and null mean no TLS options (a plain server works); true means TLS with the defaults', async () => {
    for (const tls of [false, null, undefined]) {
      const store = open(server.url, { prefix: 'tls:off:', tls })
      await store.beginExecution('e')
      assert.equal(await store.isExecutionInProgress('e'), true)
    }
    await rejectsWith(open(server.url, { tls: true, connectTimeout: 1_000, retry: { attempts: 0 } }).beginExecution('e'), 'TLS')
  })

  it('takes PEM Buffers (as fs.readFileSync gives them) and an array of CA texts, as Node.js tls does', async () => {
    const mutual = await startTlsRedis(certs, { authClients: 'yes' })
    try {
      const tls = {
        ca: [readFileSync(certs.file('other-ca.crt')), readFileSync(certs.file('ca.crt'), 'utf8')],
        cert: readFileSync(certs.file('client.crt')),
        key: new Uint8Array(readFileSync(certs.file('client.key'))),
      }
      const store = open(mutual.tlsUrl, { prefix: 'tls:buffers:', tls })
      await store.beginExecution('e')
      assert.equal(await store.isExecutionInProgress('e'), true)
    } finally {
      await mutual.stop()
    }
  })

  it('never quotes a secret of the wrong type in its error, and names the option', () => {
    const key = readFileSync(certs.file('client.key'))
    for (const [options, option] of [
      [{ tls: { ...trusted(), cert: certs.file('client.crt'), key: { pem: key } } }, 'tls.key'],
      [{ prefix: key }, 'prefix'],
    ]) {
      assert.throws(
        () => createRedisStore(server.tlsUrl, options),
        (err) => {
          assert.equal(err.code, 'INVALID_INPUT')
          assert.ok(err.message.includes(`option \`${option}\``), err.message)
          assert.ok(!err.message.includes('PRIVATE') && !/\d+,\d+,\d+/.test(err.message), err.message)
          return true
        },
      )
    }
    // A key whose PEM lines were lost (base64 of the PEM, as a secret store keeps it, or
    // the body alone) is read as a file path: the error does not quote it.
    const pem = readFileSync(certs.file('client.key'), 'utf8')
    const body = pem
      .split('\n')
      .filter((line) => !line.startsWith('-----'))
      .join('')
    for (const lost of [Buffer.from(pem).toString('base64'), body]) {
      assert.throws(
        () => createRedisStore(server.tlsUrl, { tls: { ...trusted(), cert: certs.file('client.crt'), key: lost } }),
        (err) => {
          assert.equal(err.code, 'INVALID_INPUT')
          assert.match(err.message, /tls\.key: cannot read the file given/)
          assert.ok(!err.message.includes(lost.slice(0, 16)), err.message)
          return true
        },
      )
    }
    // A password in a URL's query is not shown either.
    assert.throws(
      () => createRedisStore('rediss+sentinel://127.0.0.1:26379/main/x?sentinelPassword=TOPSECRET'),
      (err) => err.code === 'INVALID_INPUT' && !err.message.includes('TOPSECRET') && err.message.includes('sentinelPassword=***'),
    )
  })
})
