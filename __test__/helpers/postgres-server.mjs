// Starts and stops a throwaway PostgreSQL on a free loopback port: `initdb` into a temp
// dir (password auth over TCP, fsync as the server's default), the unix socket in that
// dir too, and `postgres` run directly (its pid is the postmaster's, so a test can SIGKILL
// it). Postgres refuses to run as root: as root (CI) it runs as the `postgres` OS user
// (Debian's package makes it) through `setpriv`, which execs without a parent of its own.
import { spawn, spawnSync } from 'node:child_process'
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort } from './redis-server.mjs'

export const POSTGRES_PASSWORD = 'durastate-test'

/** The directory with initdb, postgres, pg_ctl and pg_isready: Debian's newest /usr/lib/postgresql/<ver>/bin, else pg_config's. */
export function postgresBinDir() {
  const debian = '/usr/lib/postgresql'
  if (existsSync(debian)) {
    const versions = readdirSync(debian)
      .filter((v) => /^\d+$/.test(v) && existsSync(join(debian, v, 'bin', 'postgres')))
      .sort((a, b) => Number(b) - Number(a))
    if (versions.length) return join(debian, versions[0], 'bin')
  }
  const config = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' })
  if (config.status === 0 && existsSync(join(config.stdout.trim(), 'postgres'))) return config.stdout.trim()
  throw new Error(
    'PostgreSQL is not installed. Install it (Debian/Ubuntu: `apt-get install -y postgresql`, ' + 'macOS: `brew install postgresql`) and run the tests again.',
  )
}

/** The uid/gid to run the server as: ours, or the `postgres` user's when we are root. */
function serverUser() {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return undefined
  const id = (flag) => spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' })
  const uid = id('-u')
  const gid = id('-g')
  if (uid.status !== 0 || gid.status !== 0) {
    throw new Error('running as root, and there is no `postgres` user to run PostgreSQL as (apt-get install -y postgresql makes one)')
  }
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) }
}

/** `[command, args]` running `binary` as `user` (setpriv execs it: the pid is the server's). */
function as(user, binary, args) {
  if (!user) return [binary, args]
  return ['setpriv', [`--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', '--', binary, ...args]]
}

function pidAlive(pid) {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return err.code === 'EPERM'
  }
}

/**
 * Starts PostgreSQL. Returns `{ url, port, host, dir, bin, stop, kill, restart, sql }`:
 * `url` connects as the superuser `postgres` with POSTGRES_PASSWORD; `kill()` SIGKILLs
 * the postmaster (a crash), `restart()` starts it again on the same data and port.
 */
/**
 * `certs` (helpers/tls.mjs's makeCertificates()): the server also speaks TLS, serving the
 * certificate signed by `ca.crt` for 127.0.0.1 (`ssl = on`; plain connections still work).
 */
export async function startPostgresServer({ settings = [], certs } = {}) {
  const bin = postgresBinDir()
  const user = serverUser()
  const dir = mkdtempSync(join(tmpdir(), 'durastate-pg-'))
  const data = join(dir, 'data')
  const sockets = join(dir, 'sockets')
  mkdirSync(sockets)
  const pwfile = join(dir, 'pwfile')
  writeFileSync(pwfile, `${POSTGRES_PASSWORD}\n`)
  if (user) {
    for (const path of [dir, sockets, pwfile]) chownSync(path, user.uid, user.gid)
  }
  chmodSync(dir, 0o755)
  if (certs) {
    // The server reads its key as itself, and refuses a key others can read.
    for (const name of ['server.crt', 'server.key']) {
      const copy = join(dir, name)
      writeFileSync(copy, readFileSync(certs.file(name)), { mode: 0o600 })
      if (user) chownSync(copy, user.uid, user.gid)
    }
    settings = [...settings, 'ssl=on', `ssl_cert_file=${join(dir, 'server.crt')}`, `ssl_key_file=${join(dir, 'server.key')}`]
  }
  const [initCommand, initArgs] = as(user, join(bin, 'initdb'), [
    '-D',
    data,
    '-U',
    'postgres',
    '--pwfile',
    pwfile,
    '-A',
    'scram-sha-256',
    '--auth-local=trust',
    '-E',
    'UTF8',
    '--locale=C',
    '--no-sync',
    '--no-instructions',
  ])
  const init = spawnSync(initCommand, initArgs, { encoding: 'utf8', cwd: dir })
  if (init.status !== 0) {
    rmSync(dir, { recursive: true, force: true })
    throw new Error(`initdb failed (${init.status}): ${init.error?.message ?? ''}${init.stderr}`)
  }
  const port = await freePort()
  let child
  let log = ''
  const launch = async () => {
    const [command, args] = as(user, join(bin, 'postgres'), [
      '-D',
      data,
      '-p',
      String(port),
      '-k',
      sockets,
      '-c',
      'listen_addresses=127.0.0.1',
      '-c',
      'max_connections=200',
      '-c',
      'log_min_messages=warning',
      ...settings.flatMap((s) => ['-c', s]),
    ])
    log = ''
    child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], cwd: dir })
    child.stderr.on('data', (d) => {
      log = (log + d.toString()).slice(-4000)
    })
    const deadline = Date.now() + 30_000
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) break
      const ready = spawnSync(join(bin, 'pg_isready'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-t', '1'])
      if (ready.status === 0) return
      await new Promise((r) => setTimeout(r, 100))
    }
    child.kill('SIGKILL')
    throw new Error(`postgres did not start on port ${port}: ${log}`)
  }
  const waitExit = () =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve()
      child.once('exit', resolve)
    })
  try {
    await launch()
  } catch (err) {
    rmSync(dir, { recursive: true, force: true })
    throw err
  }
  const url = `postgres://postgres:${POSTGRES_PASSWORD}@127.0.0.1:${port}/postgres`
  return {
    url,
    port,
    host: '127.0.0.1',
    dir,
    bin,
    /** Runs SQL with psql over the unix socket (no password); returns stdout, throws on error. */
    sql(text) {
      const out = spawnSync(
        join(bin, 'psql'),
        ['-h', sockets, '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-c', text],
        { encoding: 'utf8' },
      )
      if (out.status !== 0) throw new Error(`psql failed: ${out.stderr}`)
      return out.stdout.trim()
    },
    /** SIGKILL the postmaster: the server dies at once, as in a crash (its backends follow). */
    async kill() {
      child.kill('SIGKILL')
      await waitExit()
    },
    /**
     * Starts the server again on the same data and port. After a SIGKILL the backends may
     * still hold the shared memory a moment, and postmaster.pid is left behind: retried
     * until they are gone, removing a lock file whose process is dead.
     */
    async restart() {
      const deadline = Date.now() + 30_000
      for (;;) {
        const lock = join(data, 'postmaster.pid')
        if (existsSync(lock)) {
          const pid = Number(readFileSync(lock, 'utf8').split('\n')[0])
          if (pid && !pidAlive(pid)) rmSync(lock, { force: true })
        }
        try {
          return await launch()
        } catch (err) {
          if (Date.now() > deadline) throw err
          await new Promise((r) => setTimeout(r, 300))
        }
      }
    },
    /** Fast shutdown (SIGINT), then SIGKILL after 5 s; removes the data. Always call it. */
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGINT')
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000)
        await waitExit()
        clearTimeout(timer)
      }
      // A server process still ending may write in the directory while it is removed
      // (ENOTEMPTY: seen on Deno in CI): tried again for up to 3 s.
      for (let tries = 1; ; tries++) {
        try {
          rmSync(dir, { recursive: true, force: true })
          return
        } catch (err) {
          if (!/ENOTEMPTY/.test(`${err.code} ${err.message}`) || tries >= 30) throw err
          await new Promise((r) => setTimeout(r, 100))
        }
      }
    },
  }
}

/**
 * The Postgres server for a test file: the one `npm test` started
 * (DURASTATE_TEST_POSTGRES_URL), else one of its own. Call `release()` in `after`.
 */
export async function testPostgres() {
  const shared = process.env.DURASTATE_TEST_POSTGRES_URL
  if (shared) return { url: shared, release: async () => {} }
  const server = await startPostgresServer()
  return { url: server.url, server, release: () => server.stop() }
}
