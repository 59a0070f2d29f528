// The backends the conformance suite runs against, each with fresh state per store.
// `cluster`: a 3-master Redis Cluster of the test file's own, with `keyLayout: 'hashtag'`;
// `cluster-tls`: the same on TLS only, with mutual TLS (client certificates required).
// `postgres`: the PostgreSQL `npm test` started (or one of the file's own); stores share
// its default schema, each on a prefix of its own, as Redis stores share a server.
import { randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createMemoryStore, createPostgresStore, createRedisStore, createSqliteStore } from '../../index.js'
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
export const backendNames = ['redis', 'sqlite', 'memory', 'cluster', ...(clusterTlsHere ? ['cluster-tls'] : []), 'postgres'].filter(
  (name) => !only || only.includes(name),
)

/**
 * Prepares a backend. `open(options)` makes a store on fresh state; `openShared(options)`
 * makes another store on the same state as the previous `open` (not for memory).
 */
export async function prepareBackend(name) {
  const stores = []
  let cleanup = async () => {}
  let location
  const track = (store) => (stores.push(store), store)
  let factory
  if (name === 'redis') {
    const redis = await testRedis()
    cleanup = redis.release
    factory = (fresh, options) => {
      if (fresh) location = `ds-test:${randomUUID()}:`
      return createRedisStore(redis.url, { prefix: location, ...options })
    }
  } else if (name === 'postgres') {
    const postgres = await testPostgres()
    cleanup = postgres.release
    factory = (fresh, options) => {
      if (fresh) location = `ds-test:${randomUUID()}:`
      return createPostgresStore(postgres.url, { prefix: location, ...options })
    }
  } else if (name === 'cluster' || name === 'cluster-tls') {
    const certs = name === 'cluster-tls' ? makeCertificates() : undefined
    const cluster = await startCluster({ tls: certs }).catch((err) => {
      certs?.remove()
      throw err
    })
    cleanup = async () => {
      await cluster.stop()
      certs?.remove()
    }
    const tls = certs?.mutual()
    factory = (fresh, options) => {
      if (fresh) location = `ds-test:${randomUUID()}:`
      return createRedisStore({ cluster: cluster.urls }, { prefix: location, keyLayout: 'hashtag', tls, ...options })
    }
  } else if (name === 'sqlite') {
    const dir = mkdtempSync(join(tmpdir(), 'durastate-sqlite-'))
    cleanup = async () => rmSync(dir, { recursive: true, force: true })
    factory = (fresh, options) => {
      if (fresh) location = join(dir, `${randomUUID()}.db`)
      return createSqliteStore(location, options)
    }
  } else {
    factory = (fresh, options) => createMemoryStore(options)
  }
  return {
    name,
    sharesState: name !== 'memory',
    open: (options = {}) => track(factory(true, options)),
    openShared: (options = {}) => track(factory(false, options)),
    async release() {
      await Promise.all(stores.map((s) => s.close()))
      await cleanup()
    },
  }
}
