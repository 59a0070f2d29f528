// A Sentinel group on loopback for the failover tests: one master, one replica and three
// sentinels (quorum 2, down-after 1 s), each on a free port, all stopped by `stop()`.
// With `tls` (certificates from helpers/tls.mjs): the master and the replica on TLS only
// with mutual TLS and TLS replication; each sentinel on a TLS port (mutual TLS) and a
// plain one, speaking TLS to the servers and to each other.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { freePort, redisServerBinary, startRedisServer, until, waitForReady } from './redis-server.mjs'

export const MASTER_NAME = 'main'

async function startSentinel(masterPort, tls) {
  const dir = mkdtempSync(join(tmpdir(), 'durastate-sentinel-'))
  const port = await freePort()
  const tlsPort = tls ? await freePort() : undefined
  const config = join(dir, 'sentinel.conf')
  const tlsLines = tls
    ? [
        `tls-port ${tlsPort}`,
        `tls-cert-file ${tls.file('node.crt')}`,
        `tls-key-file ${tls.file('node.key')}`,
        `tls-ca-cert-file ${tls.file('ca.crt')}`,
        'tls-auth-clients yes',
        'tls-replication yes',
      ]
    : []
  writeFileSync(
    config,
    [
      `port ${port}`,
      'bind 127.0.0.1',
      `dir ${dir}`,
      'loglevel warning',
      ...tlsLines,
      `sentinel monitor ${MASTER_NAME} 127.0.0.1 ${masterPort} 2`,
      `sentinel down-after-milliseconds ${MASTER_NAME} 1000`,
      `sentinel failover-timeout ${MASTER_NAME} 4000`,
      `sentinel parallel-syncs ${MASTER_NAME} 1`,
      '',
    ].join('\n'),
  )
  const child = spawn(redisServerBinary(), [config, '--sentinel'], { stdio: ['ignore', 'ignore', 'inherit'] })
  await waitForReady(child, port, 10_000)
  const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 1 })
  await client.connect()
  // A sentinel whose timer ran late (a loaded machine) enters TILT mode and acts on
  // nothing, no failover and no reconfiguration, for 30 s: 3 s here, so that a stall of
  // the test machine cannot outlast the tests' deadlines (Redis 7.0 and later; older
  // sentinels keep 30 s).
  await client.call('SENTINEL', 'DEBUG', 'tilt-period', '3000').catch(() => {})
  return {
    port,
    tlsPort,
    client,
    async stop() {
      client.disconnect()
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve))
        child.kill('SIGKILL')
        await exited
      }
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

/** Starts the group and waits until every sentinel sees the replica and the two others. */
export async function startSentinelGroup({ tls } = {}) {
  const master = await startRedisServer({ tls })
  const replica = await startRedisServer({ tls, args: ['--replicaof', '127.0.0.1', String(master.port)] })
  const servers = [master, replica]
  const sentinels = []
  const stop = async () => {
    await Promise.all(sentinels.map((s) => s.stop()))
    await Promise.all(servers.map((s) => s.stop()))
  }
  try {
    const replicaClient = new Redis(replica.url, replica.clientOptions)
    await until('the replica to sync', async () => /master_link_status:up/.test(await replicaClient.info('replication')), 15_000)
    replicaClient.disconnect()
    for (let i = 0; i < 3; i++) sentinels.push(await startSentinel(master.port, tls))
    await until(
      'the sentinels to find the replica and each other',
      async () => {
        for (const { client } of sentinels) {
          const replicas = await client.call('SENTINEL', 'REPLICAS', MASTER_NAME)
          const others = await client.call('SENTINEL', 'SENTINELS', MASTER_NAME)
          if (replicas.length < 1 || others.length < 2) return false
        }
        return true
      },
      30_000,
    )
  } catch (err) {
    await stop()
    throw err
  }
  const hosts = sentinels.map((s) => `127.0.0.1:${s.port}`).join(',')
  const tlsHosts = tls ? sentinels.map((s) => `127.0.0.1:${s.tlsPort}`).join(',') : undefined
  return {
    /** The sentinels' plain ports (`redis+sentinel://`). */
    url: `redis+sentinel://${hosts}/${MASTER_NAME}`,
    /** With `tls`: the sentinels' TLS ports (`rediss+sentinel://`). */
    tlsUrl: tls ? `rediss+sentinel://${tlsHosts}/${MASTER_NAME}` : undefined,
    sentinels,
    servers: { [master.port]: master, [replica.port]: replica },
    /** The master's port as the first sentinel reports it. */
    async masterPort() {
      const [, port] = await sentinels[0].client.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', MASTER_NAME)
      return Number(port)
    },
    /**
     * `SENTINEL FAILOVER`, then waits until the sentinels name another master than `from`.
     * An attempt Sentinel aborts (the replica not promoted within failover-timeout, 4 s,
     * on a stalled machine) leaves the master as it was: after 10 s this asks again, and
     * says so (Sentinel takes a new attempt 2 x failover-timeout after the last), up to 40 s.
     */
    async failover(from) {
      const moved = async () => (await this.masterPort()) !== from
      const started = Date.now()
      for (let attempt = 1; ; attempt++) {
        // (-INPROGRESS while an attempt runs: it is the one waited for)
        await sentinels[0].client.call('SENTINEL', 'FAILOVER', MASTER_NAME).catch(() => {})
        try {
          await until('the failover to a new master', moved, 10_000)
          return
        } catch (err) {
          if (Date.now() - started > 30_000) throw err
          console.log(`# sentinel: no new master ${Date.now() - started} ms after SENTINEL FAILOVER (attempt ${attempt}): asked again`)
        }
      }
    },
    /**
     * Waits until the old master of a failover (`client`: an ioredis client of it) is a
     * replica of the new one, in sync. Sentinel sends it REPLICAOF once it has seen it
     * report the master role for 8 s, at its 10 s INFO period: about 15 s here. Past
     * 25 s (sentinels that were in TILT mode, or slow), this sends what Sentinel would,
     * and says so.
     */
    async replicaInSync(client) {
      const inSync = async () => /master_link_status:up/.test(await client.info('replication'))
      const waited = Date.now()
      try {
        await until('the sentinels to make the old master a replica, in sync', inSync, 25_000)
      } catch {
        const tilt = await Promise.all(
          sentinels.map((s) =>
            s.client.info('sentinel').then(
              (info) => /sentinel_tilt:1/.test(info),
              () => 'no answer',
            ),
          ),
        )
        console.log(
          `# sentinel: the old master was not a replica in sync ${Date.now() - waited} ms after the failover (sentinels in TILT mode: ${tilt.join(', ')}): REPLICAOF sent by the test`,
        )
        await client.call('REPLICAOF', '127.0.0.1', String(await this.masterPort()))
        await until('the old master to be a replica, in sync', inSync, 30_000)
      }
    },
    until,
    stop,
  }
}
