// Throwaway certificates (openssl) and TLS redis-servers for the TLS tests: a CA, server
// certificates for 127.0.0.1 (valid, expired, or named redis.test only), a client
// certificate, and an unrelated CA.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort, startRedisServer } from './redis-server.mjs'

function openssl(dir, args) {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 })
}

function selfSignedCa(dir, name) {
  openssl(dir, ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`,
    '-days', '30', '-subj', `/CN=${name}`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'])
}

function request(dir, name, san) {
  openssl(dir, ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`,
    '-subj', `/CN=${name}`, '-addext', `subjectAltName=${san}`])
}

/** A certificate signed by `ca.crt`, valid now, or between two past dates (`openssl ca`). */
function sign(dir, name, { past = false, client = false } = {}) {
  const usage = client ? 'clientAuth' : 'serverAuth'
  writeFileSync(join(dir, `${name}.ext`), `extendedKeyUsage=${usage}\n`)
  if (!past) {
    openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial',
      '-out', `${name}.crt`, '-days', '30', '-copy_extensions', 'copy', '-extfile', `${name}.ext`])
    return
  }
  writeFileSync(join(dir, 'index.txt'), '')
  writeFileSync(join(dir, 'serial'), '1000\n')
  writeFileSync(join(dir, 'ca.cnf'), [
    '[ ca ]', 'default_ca = local', '[ local ]', `dir = ${dir}`, 'database = $dir/index.txt', 'new_certs_dir = $dir',
    'serial = $dir/serial', 'default_md = sha256', 'policy = any', 'copy_extensions = copy', 'unique_subject = no',
    '[ any ]', 'commonName = supplied', '',
  ].join('\n'))
  openssl(dir, ['ca', '-batch', '-config', 'ca.cnf', '-cert', 'ca.crt', '-keyfile', 'ca.key', '-in', `${name}.csr`,
    '-out', `${name}.crt`, '-startdate', '20200101000000Z', '-enddate', '20200102000000Z', '-notext'])
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
  sign(dir, 'client', { client: true })
  const file = (name) => join(dir, name)
  return { dir, file, remove: () => rmSync(dir, { recursive: true, force: true }) }
}

/**
 * A redis-server with a plain port (for the test's admin client) and a TLS port serving
 * `cert` (a name made by makeCertificates). `authClients`: 'no', 'optional' or 'yes'.
 */
export async function startTlsRedis(certs, { cert = 'server', authClients = 'optional', args = [] } = {}) {
  const tlsPort = await freePort()
  const server = await startRedisServer({
    args: [
      '--tls-port', String(tlsPort), '--tls-cert-file', certs.file(`${cert}.crt`), '--tls-key-file', certs.file(`${cert}.key`),
      '--tls-ca-cert-file', certs.file('ca.crt'), '--tls-auth-clients', authClients, ...args,
    ],
  })
  return { ...server, tlsPort, tlsUrl: `rediss://127.0.0.1:${tlsPort}` }
}
