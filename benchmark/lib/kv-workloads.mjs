// KV workloads: get (hit), set (overwrite) and getMany of 1 KiB JSON values, on our KV
// store's one-mount view and on the same calls written by hand over ioredis (what a user
// of ioredis writes: GET + JSON.parse, SET of JSON.stringify, MGET).

const KV_KEYS = 256
const MANY = 16

/** The calls of a KV mount, made by hand over an ioredis client. */
export function ioredisKv(redis, prefix) {
  return {
    async get(key) {
      const text = await redis.get(prefix + key)
      return text === null ? '' : JSON.parse(text)
    },
    async set(key, value) {
      await redis.set(prefix + key, JSON.stringify(value))
      return true
    },
    async getMany(keys) {
      const texts = await redis.mget(keys.map((key) => prefix + key))
      const out = {}
      keys.forEach((key, i) => {
        if (texts[i] !== null) out[key] = JSON.parse(texts[i])
      })
      return out
    },
  }
}

/** Writes the keys the read workloads hit. */
export async function seedKv(kv, value) {
  await Promise.all(Array.from({ length: KV_KEYS }, (_, i) => kv.set(`k${i}`, value)))
}

/** `get` of a stored key; a miss throws. */
export function kvGetOp(kv) {
  return async (i) => {
    const value = await kv.get(`k${i & (KV_KEYS - 1)}`)
    if (value?.pad === undefined) throw new Error('expected a KV hit')
  }
}

/** `set` over the stored keys (overwriting). */
export function kvSetOp(kv, value) {
  return (i) => kv.set(`k${i & (KV_KEYS - 1)}`, value)
}

/** `getMany` of 16 stored keys; fewer back throws. */
export function kvGetManyOp(kv) {
  const lists = Array.from({ length: KV_KEYS / MANY }, (_, n) => Array.from({ length: MANY }, (_, j) => `k${n * MANY + j}`))
  return async (i) => {
    const found = await kv.getMany(lists[i % lists.length])
    if (Object.keys(found).length !== MANY) throw new Error('expected every key of getMany')
  }
}
