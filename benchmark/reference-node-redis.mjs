// Reference: the seed's JS store on node-redis 5 (npm `redis`), default options.
// node-redis names commands in camelCase (hSet, hGet, ...), so a user passes it through
// this thin adapter to the seed's RedisImpl shape; each method is exactly one command.
import { createClient } from 'redis'
import { createSeedStore } from './seed-store.mjs'

/** The seed's RedisImpl over a node-redis client: one node-redis command per call. */
function asRedisImpl(client) {
  return {
    set: (key, value) => client.set(key, value),
    get: (key) => client.get(key),
    hset: (key, kv) => client.hSet(key, kv),
    hget: (key, field) => client.hGet(key, field),
    hdel: (key, field) => client.hDel(key, field),
    hgetall: (key) => client.hGetAll(key),
    del: (key) => client.del(key),
    expire: (key, seconds) => client.expire(key, seconds),
  }
}

/** One connected node-redis client; `store({ ttl, prefix })` makes seed stores on it. */
export async function openNodeRedisReference(url) {
  const client = createClient({ url })
  client.on('error', () => {}) // errors surface as rejections of the calls
  await client.connect()
  const impl = asRedisImpl(client)
  return {
    client,
    store: (options) => createSeedStore(impl, options),
    close: () => client.close(),
  }
}
