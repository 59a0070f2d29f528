// Starts and stops a throwaway redis-server on a free loopback port (never a fixed
// port, never a shared server), as redis-rs's test harness does.
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/**
 * Polls `check` every 100 ms until it is true (a throw counts as false); fails after
 * `deadlineMs`, naming the last throw. A check that does not settle counts as false when
 * the deadline comes, so a hung client cannot stretch the wait.
 */
export async function until(what, check, deadlineMs) {
  const deadline = Date.now() + deadlineMs
  let lastError
  while (Date.now() < deadline) {
    let timer
    const outOfTime = new Promise((resolve) => {
      timer = setTimeout(() => resolve(false), Math.max(0, deadline - Date.now()))
    })
    const checked = Promise.resolve()
      .then(check)
      .catch((err) => {
        lastError = err
        return false
      })
    const ok = await Promise.race([checked, outOfTime])
    clearTimeout(timer)
    if (ok) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`timed out waiting for ${what}${lastError ? ` (the last check threw: ${lastError.message})` : ''}`)
}

/** A port that was free on 127.0.0.1 a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/** The redis-server binary, or a clear error that says how to get one. */
export function redisServerBinary() {
  const found = spawnSync('redis-server', ['--version'], { encoding: 'utf8' })
  if (found.error || found.status !== 0) {
    throw new Error(
      'redis-server is not installed. Install it (Debian/Ubuntu: `apt-get install -y redis-server`, ' + 'macOS: `brew install redis`) and run the tests again.',
    )
  }
  return 'redis-server'
}

/** Waits until the server on `port` answers PING; over TLS with `tls` (Node.js tls options). */
export async function waitForReady(child, port, deadlineMs, tls) {
  const net = await import('node:net')
  const { connect: tlsConnect } = await import('node:tls')
  const deadline = Date.now() + deadlineMs
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`redis-server exited with code ${child.exitCode}`)
    const ok = await new Promise((resolve) => {
      const ready = () => {
        socket.write('PING\r\n')
        socket.once('data', (data) => {
          socket.destroy()
          resolve(/^(\+PONG|-NOAUTH)/.test(data.toString()))
        })
      }
      const socket = tls ? tlsConnect({ port, host: '127.0.0.1', ...tls }, ready) : net.connect(port, '127.0.0.1', ready)
      socket.setTimeout(500)
      socket.once('error', () => resolve(false))
      socket.once('timeout', () => {
        socket.destroy()
        resolve(false)
      })
    })
    if (ok) return
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`redis-server did not answer on port ${port} within ${deadlineMs} ms`)
}

/**
 * Starts redis-server on a free loopback port. `args` are extra server options, e.g.
 * `['--appendonly', 'yes']`. With `tls` (certificates from helpers/tls.mjs) the port is
 * TLS only, with mutual TLS (`certs.serverFlags`); `url` is then `rediss://` and
 * `clientOptions` the ioredis options to reach it. Returns `{ url, port, dir, stop, kill, restart }`.
 */
export async function startRedisServer({ args = [], port, tls } = {}) {
  const binary = redisServerBinary()
  const dir = mkdtempSync(join(tmpdir(), 'durastate-redis-'))
  let chosenPort = port ?? (await freePort())
  let child
  /** One start; `'port taken'` when the server could not bind its port (another process has it). */
  const launchOnce = async () => {
    child = spawn(
      binary,
      [
        '--port',
        String(chosenPort),
        '--bind',
        '127.0.0.1',
        '--save',
        '',
        '--dir',
        dir,
        '--daemonize',
        'no',
        '--loglevel',
        'warning',
        ...(tls ? tls.serverFlags(chosenPort) : []),
        ...args,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    )
    // The server logs to stdout: kept (its tail) to tell a port taken from other failures.
    let log = ''
    child.stdout.on('data', (data) => {
      log = (log + data).slice(-4_096)
    })
    const closed = new Promise((resolve) => child.once('close', resolve))
    try {
      await waitForReady(child, chosenPort, 10_000, tls?.nodeTls())
      return 'ready'
    } catch (err) {
      child.kill('SIGKILL')
      await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 1_000))])
      if (/Address already in use/.test(log)) return 'port taken'
      throw err
    }
  }
  /**
   * Starts the server. The port may have been taken by another process meanwhile (freePort
   * only saw it free, and an outgoing connection anywhere on the machine can get it): a
   * port of its own choosing is chosen again (5 tries); a given one, or the one of a
   * restart (its clients reconnect to it), is tried again for up to 10 s.
   */
  const launch = async (samePort) => {
    const deadline = Date.now() + 10_000
    for (let tries = 1; ; tries++) {
      if ((await launchOnce()) === 'ready') return
      if (!samePort && tries < 5) {
        chosenPort = await freePort()
        continue
      }
      if (samePort && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 200))
        continue
      }
      throw new Error(`redis-server could not listen on port ${chosenPort}: another process has it`)
    }
  }
  await launch(port !== undefined)
  const waitExit = () =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve()
      child.once('exit', resolve)
    })
  return {
    port: chosenPort,
    url: `${tls ? 'rediss' : 'redis'}://127.0.0.1:${chosenPort}`,
    clientOptions: tls ? { tls: tls.nodeTls() } : {},
    dir,
    /** The server process's id (to stop it with SIGSTOP, as a hung server). */
    get pid() {
      return child.pid
    },
    /** SIGKILL: the server dies at once, as in a crash. */
    async kill() {
      child.kill('SIGKILL')
      await waitExit()
    },
    /** Starts the server again on the same port and directory. */
    async restart() {
      await launch(true)
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM')
        const timer = setTimeout(() => child.kill('SIGKILL'), 3_000)
        await waitExit()
        clearTimeout(timer)
      }
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

/**
 * The Redis server for a test file: the one `npm test` started (DURASTATE_TEST_REDIS_URL),
 * else one of its own. Call `release()` in `after`.
 */
export async function testRedis() {
  const shared = process.env.DURASTATE_TEST_REDIS_URL
  if (shared) return { url: shared, release: async () => {} }
  const server = await startRedisServer()
  return { url: server.url, release: () => server.stop() }
}
