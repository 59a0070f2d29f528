// A Redis Cluster on loopback for the cluster tests: `masters` (and `replicas` per master)
// redis-servers started with `--cluster-enabled yes` on free ports, joined by
// `redis-cli --cluster create`, each with its own directory (nodes.conf). `stop()` stops every server; `migrateSlot` reshards one
// slot by hand (the steps `redis-cli --cluster reshard` takes), so MOVED/ASK happen.
import { execFile } from 'node:child_process'
import { createServer } from 'node:net'
import { promisify } from 'node:util'
import { startRedisServer, until } from './redis-server.mjs'

const run = promisify(execFile)

/** Whether `port` on 127.0.0.1 can be listened on right now. */
function canListen(port) {
  return new Promise((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}

/**
 * A port for a cluster node: a node also listens on its port + 10000 (the cluster bus), so
 * the port must be at most 55535 (redis-server refuses to start otherwise) and both must be
 * free. An OS-assigned port can be above 55535 (Linux hands out 32768-60999), so candidates
 * are drawn at random from 20000-55535 instead; bounded to 500 draws.
 */
export async function freeClusterPort() {
  for (let attempt = 0; attempt < 500; attempt++) {
    const port = 20000 + Math.floor(Math.random() * (55535 - 20000 + 1))
    if ((await canListen(port)) && (await canListen(port + 10000))) return port
  }
  throw new Error('no free port pair (port, port + 10000) for a cluster node in 500 draws')
}

/** `redis-cli -p port ...args`, output trimmed; bounded to 10 s. */
export async function cli(port, ...args) {
  return plainCli(port, ...args)
}

async function plainCli(port, ...args) {
  const { stdout } = await run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { timeout: 10_000 })
  return stdout.trim()
}

/**
 * Starts a cluster of `masters` masters, each with `replicas` replicas, and waits until
 * every node reports `cluster_state:ok` and knows every node. Returns `{ ports, urls, stop, ... }`.
 * With `tls` (certificates from helpers/tls.mjs) every node listens on TLS only, requires
 * client certificates, and speaks TLS on the cluster bus and for replication; `urls` are
 * `rediss://`. `args`: extra server options for every node; `nodeArgs(i)`: for node i.
 */
export async function startCluster({ masters = 3, replicas = 0, tls, args = [], nodeArgs = () => [] } = {}) {
  const tlsFlags = tls ? tls.cliFlags() : []
  const cli = (port, ...rest) => plainCli(port, ...tlsFlags, ...rest)
  const servers = []
  const stop = async () => {
    await Promise.all(servers.map((s) => s.stop()))
  }
  try {
    const nodes = masters * (1 + replicas)
    for (let i = 0; i < nodes; i++) {
      servers.push(
        await startRedisServer({
          tls,
          port: await freeClusterPort(),
          args: [
            '--cluster-enabled',
            'yes',
            '--cluster-config-file',
            'nodes.conf',
            '--cluster-node-timeout',
            '2000',
            '--repl-diskless-sync-delay',
            '0',
            ...args,
            ...nodeArgs(i),
          ],
        }),
      )
    }
    const ports = servers.map((s) => s.port)
    await run(
      'redis-cli',
      ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', String(replicas), '--cluster-yes', ...tlsFlags],
      { timeout: 30_000 },
    )
    await until(
      'cluster_state:ok on every node',
      async () => {
        for (const port of ports) {
          if (!(await cli(port, 'cluster', 'info')).includes('cluster_state:ok')) return false
          const lines = (await cli(port, 'cluster', 'nodes')).split('\n').filter((l) => !l.includes('fail'))
          if (lines.filter((l) => l.includes('master')).length !== masters || lines.length !== nodes) return false
          if (!lines.every((l) => l.includes('connected'))) return false
          const replication = await cli(port, 'info', 'replication')
          if (replication.includes('role:slave') && !replication.includes('master_link_status:up')) return false
        }
        return true
      },
      45_000,
    )
    const ids = await Promise.all(ports.map((p) => cli(p, 'cluster', 'myid')))
    const dead = new Set()
    return {
      ports,
      urls: ports.map((p) => `${tls ? 'rediss' : 'redis'}://127.0.0.1:${p}`),
      /** `redis-cli` against the node on `port` (with the TLS flags on a TLS cluster). */
      cli,
      stop,
      /** SIGKILLs the node on `port` (stop() still cleans up after it). */
      async killNode(port) {
        dead.add(port)
        await servers[ports.indexOf(port)].kill()
      },
      /** The hash slot of `key`. */
      keyslot: async (key) =>
        Number(
          await cli(
            ports.find((p) => !dead.has(p)),
            'cluster',
            'keyslot',
            key,
          ),
        ),
      /** The port of the master that owns `slot`, as the first live node sees it. */
      async owner(slot) {
        const lines = (
          await cli(
            ports.find((p) => !dead.has(p)),
            'cluster',
            'nodes',
          )
        ).split('\n')
        for (const line of lines) {
          const [id, , flags, , , , , , ...ranges] = line.split(' ')
          if (!flags.includes('master') || flags.includes('fail')) continue
          for (const range of ranges) {
            const [from, to = from] = range.split('-').map(Number)
            if (slot >= from && slot <= to) return ports[ids.indexOf(id)]
          }
        }
        throw new Error(`no owner for slot ${slot}`)
      },
      /**
       * Moves `slot` from the master on port `from` to the one on port `to`, key by key
       * (MIGRATING/IMPORTING, MIGRATE in batches of `batch`, `pauseMs` between batches),
       * then hands the slot over on every master.
       */
      async migrateSlot(slot, from, to, { batch = 10, pauseMs = 0 } = {}) {
        const fromId = ids[ports.indexOf(from)]
        const toId = ids[ports.indexOf(to)]
        await cli(to, 'cluster', 'setslot', String(slot), 'importing', fromId)
        await cli(from, 'cluster', 'setslot', String(slot), 'migrating', toId)
        for (;;) {
          const keys = (await cli(from, 'cluster', 'getkeysinslot', String(slot), String(batch))).split('\n').filter(Boolean)
          if (keys.length === 0) break
          await cli(from, 'migrate', '127.0.0.1', String(to), '', '0', '5000', 'keys', ...keys)
          if (pauseMs) await new Promise((r) => setTimeout(r, pauseMs))
        }
        for (const port of [to, from, ...ports.filter((p) => p !== to && p !== from)]) {
          await cli(port, 'cluster', 'setslot', String(slot), 'node', toId)
        }
      },
    }
  } catch (err) {
    await stop()
    throw err
  }
}
