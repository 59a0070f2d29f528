// The backends the KV suite runs against, each store on fresh state.
//
// Redis: the test file's throwaway server (testRedis()); every store gets its own run id,
// put in front of every mount prefix (`kvt:<uuid>:` + prefix), so tests never see each
// other's keys, even on a server shared by several test files. Prefix relations (overlap,
// glob characters) are kept, since every prefix of a store gets the same run id.
// Cluster: a 3-master Redis Cluster of the test file's own, with run ids as for Redis.
// Postgres: the server `npm test` started (testPostgres()), with run ids as for Redis.
// SQLite: a new file `sqlite:<tmpdir>/<uuid>.db` per store. Memory: `memory:`.
import { randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createKvStore } from '../../index.js'
import { startCluster } from './cluster.mjs'
import { runtime } from './runtime.mjs'
import { makeCertificates } from './tls.mjs'
import { testPostgres } from './postgres-server.mjs'
import { testRedis } from './redis-server.mjs'

// cluster-tls once, on Node.js with its default driver: the cluster backend runs on tokio
// threads on every runtime and driver, so Bun, Deno and the threads run would repeat the
// same path (their TLS runs in tls.spec and sentinel.spec).
const clusterTlsHere = runtime === 'node' && process.env.DURASTATE_REDIS_DRIVER !== 'threads'
// DURASTATE_TEST_BACKENDS=cluster,cluster-tls runs only those (by hand: the full matrix is the default).
const only = process.env.DURASTATE_TEST_BACKENDS?.split(',').filter(Boolean)
export const kvBackendNames = ['redis', 'sqlite', 'memory', 'cluster', ...(clusterTlsHere ? ['cluster-tls'] : []), 'postgres'].filter(
  (name) => !only || only.includes(name),
)

/** `options` with every mount prefix (or, without mounts, `options.prefix`) behind `base`. */
function withBase(options, base) {
  if (!base || !options) return options
  if (options.mounts && typeof options.mounts === 'object') {
    const mounts = {}
    for (const [name, mount] of Object.entries(options.mounts)) {
      if (!mount || typeof mount !== 'object') {
        mounts[name] = mount
        continue
      }
      const prefix = mount.prefix ?? `${name}:`
      mounts[name] = { ...mount, prefix: typeof prefix === 'string' ? base + prefix : prefix }
    }
    return { ...options, mounts }
  }
  const prefix = options.prefix ?? 'kv:'
  return { ...options, prefix: typeof prefix === 'string' ? base + prefix : prefix }
}

/**
 * Prepares a backend for a suite. Call `release()` in `after`: it closes every store it
 * opened and stops the server or removes the files.
 *
 * - `open(options, { raw })`: a KV store on fresh state. With `raw: true` (Redis) the
 *   prefixes are passed as given, to test the defaults; use unique mount names then.
 * - `openShared(options)`: another store on the state of the previous `open` (not memory).
 * - `prefixOf(kv, prefix)`: the prefix a store really uses for a configured `prefix`.
 * - `redisUrl`: the server's URL (Redis only), for a check with another client.
 */
export async function prepareKvBackend(name) {
  const stores = []
  let cleanup = async () => {}
  let redisUrl
  let postgresUrl
  let clusterUrls
  let tls
  let dir
  if (name === 'redis') {
    const redis = await testRedis()
    redisUrl = redis.url
    cleanup = redis.release
  } else if (name === 'postgres') {
    const postgres = await testPostgres()
    postgresUrl = postgres.url
    cleanup = postgres.release
  } else if (name === 'cluster' || name === 'cluster-tls') {
    // cluster-tls: TLS only, with mutual TLS (client certificates required).
    const certs = name === 'cluster-tls' ? makeCertificates() : undefined
    const cluster = await startCluster({ tls: certs }).catch((err) => {
      certs?.remove()
      throw err
    })
    clusterUrls = cluster.urls
    tls = certs?.mutual()
    cleanup = async () => {
      await cluster.stop()
      certs?.remove()
    }
  } else if (name === 'sqlite') {
    dir = mkdtempSync(join(tmpdir(), 'durastate-kv-'))
    cleanup = async () => rmSync(dir, { recursive: true, force: true })
  } else if (name !== 'memory') {
    throw new Error(`unknown backend ${name}`)
  }

  const bases = new WeakMap()
  let location
  let base = ''
  const make = (fresh, options, raw) => {
    let target
    if (fresh) {
      location = name === 'sqlite' ? join(dir, `${randomUUID()}.db`) : undefined
      base = name === 'sqlite' || name === 'memory' ? '' : `kvt:${randomUUID()}:`
    }
    if (name === 'redis') target = redisUrl
    else if (name.startsWith('cluster')) target = { cluster: clusterUrls }
    else if (name === 'postgres') target = postgresUrl
    else if (name === 'sqlite') target = `sqlite:${location}`
    else target = 'memory:'
    const used = raw ? '' : base
    const kv = createKvStore(target, { tls, ...withBase(options, used) })
    stores.push(kv)
    bases.set(kv, used)
    return kv
  }

  return {
    name,
    redisUrl,
    /** Whether two stores can share state (`openShared`). */
    sharesState: name !== 'memory',
    open: (options = {}, { raw = false } = {}) => make(true, options, raw),
    openShared: (options = {}) => {
      if (name === 'memory') throw new Error('memory stores share no state')
      return make(false, options, false)
    },
    prefixOf: (kv, prefix) => (bases.get(kv) ?? '') + prefix,
    async release() {
      const closed = await Promise.allSettled(stores.map((s) => s.close()))
      stores.length = 0
      await cleanup()
      const failed = closed.find((c) => c.status === 'rejected')
      if (failed) throw failed.reason
    },
  }
}
