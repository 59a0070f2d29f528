// A Sentinel group on loopback for the failover tests: one master, one replica and three
// sentinels (quorum 2, down-after 1 s), each on a free port, all stopped by `stop()`.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { freePort, redisServerBinary, startRedisServer, until, waitForReady } from './redis-server.mjs'

export const MASTER_NAME = 'main'

async function startSentinel(masterPort) {
  const dir = mkdtempSync(join(tmpdir(), 'durastate-sentinel-'))
  const port = await freePort()
  const config = join(dir, 'sentinel.conf')
  writeFileSync(config, [
    `port ${port}`, 'bind 127.0.0.1', `dir ${dir}`, 'loglevel warning',
    `sentinel monitor ${MASTER_NAME} 127.0.0.1 ${masterPort} 2`,
    `sentinel down-after-milliseconds ${MASTER_NAME} 1000`,
    `sentinel failover-timeout ${MASTER_NAME} 4000`,
    `sentinel parallel-syncs ${MASTER_NAME} 1`, '',
  ].join('\n'))
  const child = spawn(redisServerBinary(), [config, '--sentinel'], { stdio: ['ignore', 'ignore', 'inherit'] })
  await waitForReady(child, port, 10_000)
  const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 1 })
  await client.connect()
  return {
    port,
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
export async function startSentinelGroup() {
  const master = await startRedisServer()
  const replica = await startRedisServer({ args: ['--replicaof', '127.0.0.1', String(master.port)] })
  const servers = [master, replica]
  const sentinels = []
  const stop = async () => {
    await Promise.all(sentinels.map((s) => s.stop()))
    await Promise.all(servers.map((s) => s.stop()))
  }
  try {
    const replicaClient = new Redis(replica.url)
    await until('the replica to sync', async () => /master_link_status:up/.test(await replicaClient.info('replication')), 15_000)
    replicaClient.disconnect()
    for (let i = 0; i < 3; i++) sentinels.push(await startSentinel(master.port))
    await until('the sentinels to find the replica and each other', async () => {
      for (const { client } of sentinels) {
        const replicas = await client.call('SENTINEL', 'REPLICAS', MASTER_NAME)
        const others = await client.call('SENTINEL', 'SENTINELS', MASTER_NAME)
        if (replicas.length < 1 || others.length < 2) return false
      }
      return true
    }, 30_000)
  } catch (err) {
    await stop()
    throw err
  }
  const hosts = sentinels.map((s) => `127.0.0.1:${s.port}`).join(',')
  return {
    url: `redis+sentinel://${hosts}/${MASTER_NAME}`,
    sentinels,
    servers: { [master.port]: master, [replica.port]: replica },
    /** The master's port as the first sentinel reports it. */
    async masterPort() {
      const [, port] = await sentinels[0].client.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', MASTER_NAME)
      return Number(port)
    },
    until,
    stop,
  }
}
