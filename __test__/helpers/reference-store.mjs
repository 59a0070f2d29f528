// The store durastate replaces, restated from docs/worker-store-contract.md: the
// @idioteque/redis JS store over a JS Redis client (ioredis here). Keys `<id>`,
// `<id>-transactions`, `<id>-results`; values JSON.stringify'd; TTL applied with a
// separate EXPIRE in whole seconds (rounded up), as that store does.
export function createReferenceStore(redis, { ttl, prefix = '' } = {}) {
  const seconds = ttl ? Math.ceil(ttl / 1000) : 0
  const k = (id, suffix = '') => `${prefix}${id}${suffix}`
  const parse = (key, field, raw) => {
    try {
      return JSON.parse(raw)
    } catch (err) {
      throw new Error(`Failed to parse JSON for Redis key "${key}" field "${field}": ${err.message}`, { cause: err })
    }
  }
  return {
    async beginExecution(id) {
      await redis.set(k(id), 'true')
      if (seconds) await redis.expire(k(id), seconds)
    },
    async getExecutionTaskResults(id) {
      const all = (await redis.hgetall(k(id, '-results'))) ?? {}
      return Object.fromEntries(Object.entries(all).map(([f, v]) => [f, parse(k(id, '-results'), f, v)]))
    },
    async getExecutionTaskResult(id, task) {
      const raw = await redis.hget(k(id, '-results'), task)
      return typeof raw === 'string' ? parse(k(id, '-results'), task, raw) : undefined
    },
    async isExecutionInProgress(id) {
      return Boolean(await redis.get(k(id)))
    },
    async isExecutionTaskInProgress(id, task) {
      return Boolean(await redis.hget(k(id, '-transactions'), task))
    },
    async beginExecutionTask(id, task) {
      await redis.hset(k(id, '-transactions'), { [task]: 'true' })
      if (seconds) await redis.expire(k(id, '-transactions'), seconds)
    },
    async commitExecutionTaskResult(id, task, value) {
      const ops = [redis.hdel(k(id, '-transactions'), task), redis.hset(k(id, '-results'), { [task]: JSON.stringify(value) })]
      if (seconds) ops.push(redis.expire(k(id, '-results'), seconds))
      await Promise.all(ops)
    },
    async disposeExecution(id) {
      await Promise.all([redis.del(k(id)), redis.del(k(id, '-transactions')), redis.del(k(id, '-results'))])
    },
  }
}
