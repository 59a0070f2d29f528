// Throwaway certificates (openssl) and TLS redis-servers for the TLS tests: a CA, server
// certificates for 127.0.0.1 (valid, expired, or named redis.test only), a node
// certificate (server and client: cluster buses, replication and sentinels under mutual
// TLS), a client certificate, an unrelated CA, and self-signed `CA:TRUE` server
// certificates (`openssl req -x509`), one valid and one expired.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort, startRedisServer } from './redis-server.mjs'

function openssl(dir, args) {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 })
}

function selfSignedCa(dir, name) {
  openssl(dir, [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.crt`,
    '-days',
    '30',
    '-subj',
    `/CN=${name}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ])
}

function request(dir, name, san) {
  openssl(dir, [
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.csr`,
    '-subj',
    `/CN=${name}`,
    '-addext',
    `subjectAltName=${san}`,
  ])
}

/** The configuration of `openssl ca`, which can sign for dates in the past. */
function caConfig(dir) {
  writeFileSync(join(dir, 'index.txt'), '')
  writeFileSync(join(dir, 'serial'), '1000\n')
  writeFileSync(
    join(dir, 'ca.cnf'),
    [
      '[ ca ]',
      'default_ca = local',
      '[ local ]',
      `dir = ${dir}`,
      'database = $dir/index.txt',
      'new_certs_dir = $dir',
      'serial = $dir/serial',
      'default_md = sha256',
      'policy = any',
      'copy_extensions = copy',
      'unique_subject = no',
      '[ any ]',
      'commonName = supplied',
      '',
    ].join('\n'),
  )
}

const PAST = ['-startdate', '20200101000000Z', '-enddate', '20200102000000Z']

/** A certificate signed by `ca.crt`, valid now, or between two past dates (`openssl ca`). */
function sign(dir, name, { past = false, usage = 'serverAuth' } = {}) {
  writeFileSync(join(dir, `${name}.ext`), `extendedKeyUsage=${usage}\n`)
  if (!past) {
    openssl(dir, [
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      `${name}.crt`,
      '-days',
      '30',
      '-copy_extensions',
      'copy',
      '-extfile',
      `${name}.ext`,
    ])
    return
  }
  caConfig(dir)
  openssl(dir, ['ca', '-batch', '-config', 'ca.cnf', '-cert', 'ca.crt', '-keyfile', 'ca.key', '-in', `${name}.csr`, '-out', `${name}.crt`, ...PAST, '-notext'])
}

/** A self-signed `CA:TRUE` server certificate for 127.0.0.1 and localhost, as `openssl req -x509` makes; `past`: expired. */
function selfSigned(dir, name, { past = false } = {}) {
  const san = 'subjectAltName=IP:127.0.0.1,DNS:localhost'
  if (!past) {
    openssl(dir, [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      `${name}.key`,
      '-out',
      `${name}.crt`,
      '-days',
      '30',
      '-subj',
      '/CN=localhost',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      san,
    ])
    return
  }
  request(dir, name, 'IP:127.0.0.1,DNS:localhost')
  writeFileSync(join(dir, `${name}.ext`), 'basicConstraints=critical,CA:TRUE\n')
  caConfig(dir)
  openssl(dir, [
    'ca',
    '-batch',
    '-config',
    'ca.cnf',
    '-selfsign',
    '-keyfile',
    `${name}.key`,
    '-in',
    `${name}.csr`,
    '-out',
    `${name}.crt`,
    ...PAST,
    '-notext',
    '-extfile',
    `${name}.ext`,
  ])
}

/** Makes every certificate the TLS tests use in a fresh directory; `remove()` deletes it. */
export function makeCertificates() {
  const dir = mkdtempSync(join(tmpdir(), 'durastate-tls-'))
  selfSignedCa(dir, 'ca')
  selfSignedCa(dir, 'other-ca')
  request(dir, 'server', 'IP:127.0.0.1,DNS:localhost')
  sign(dir, 'server')
  request(dir, 'named', 'DNS:redis.test')
  sign(dir, 'named')
  request(dir, 'expired', 'IP:127.0.0.1,DNS:localhost')
  sign(dir, 'expired', { past: true })
  request(dir, 'client', 'DNS:client')
  sign(dir, 'client', { usage: 'clientAuth' })
  request(dir, 'node', 'IP:127.0.0.1,DNS:localhost')
  sign(dir, 'node', { usage: 'serverAuth,clientAuth' })
  selfSigned(dir, 'selfsigned')
  selfSigned(dir, 'selfsigned-expired', { past: true })
  const file = (name) => join(dir, name)
  return {
    dir,
    file,
    /** durastate's `tls` option for servers signed by `ca.crt`, with the client certificate. */
    mutual: () => ({ ca: file('ca.crt'), cert: file('client.crt'), key: file('client.key') }),
    /** Node.js tls options (ioredis `tls`) for the same. */
    nodeTls: () => ({ ca: readFileSync(file('ca.crt')), cert: readFileSync(file('client.crt')), key: readFileSync(file('client.key')) }),
    /** redis-cli's flags for the same. */
    cliFlags: () => ['--tls', '--cacert', file('ca.crt'), '--cert', file('client.crt'), '--key', file('client.key')],
    /**
     * redis-server flags for a TLS-only server on `port` serving the node certificate, which
     * requires client certificates and speaks TLS on its cluster bus and to its master.
     */
    serverFlags: (port) => [
      '--port',
      '0',
      '--tls-port',
      String(port),
      '--tls-cert-file',
      file('node.crt'),
      '--tls-key-file',
      file('node.key'),
      '--tls-ca-cert-file',
      file('ca.crt'),
      '--tls-auth-clients',
      'yes',
      '--tls-replication',
      'yes',
      '--tls-cluster',
      'yes',
    ],
    remove: () => rmSync(dir, { recursive: true, force: true }),
  }
}

/**
 * A redis-server with a plain port (for the test's admin client) and a TLS port serving
 * `cert` (a name made by makeCertificates). `authClients`: 'no', 'optional' or 'yes'.
 */
export async function startTlsRedis(certs, { cert = 'server', authClients = 'optional', args = [] } = {}) {
  const tlsPort = await freePort()
  const server = await startRedisServer({
    args: [
      '--tls-port',
      String(tlsPort),
      '--tls-cert-file',
      certs.file(`${cert}.crt`),
      '--tls-key-file',
      certs.file(`${cert}.key`),
      '--tls-ca-cert-file',
      certs.file('ca.crt'),
      '--tls-auth-clients',
      authClients,
      ...args,
    ],
  })
  return { ...server, tlsPort, tlsUrl: `rediss://127.0.0.1:${tlsPort}` }
}
