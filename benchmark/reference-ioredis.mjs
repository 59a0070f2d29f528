// Reference: the seed's JS store on ioredis 5 with default options, as its README shows
// (`createRedisStore(new Redis(url), { ttl })`). ioredis already has the seed's
// RedisImpl shape (lowercase commands, hset with an object), so no adapter is needed.
import { Redis } from 'ioredis'
import { createSeedStore } from './seed-store.mjs'

/** One ioredis client (default options); `store({ ttl, prefix })` makes seed stores on it. */
export async function openIoredisReference(url) {
  const client = new Redis(url)
  await client.ping()
  return {
    client,
    store: (options) => createSeedStore(client, options),
    close: () => client.quit(),
  }
}
