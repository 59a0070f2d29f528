// The seed's JS store (@idioteque/redis `createRedisStore`, packages/redis/src/index.ts),
// restated in plain JS over any client with the seed's `RedisImpl` shape:
// set, get, hset(key, {field: value}), hget, hdel, hgetall, del, expire(key, seconds).
// Same keys, same commands, same call order as the seed (beginExecution / beginExecutionTask:
// the write, then EXPIRE awaited in turn; commit: HDEL + HSET (+ EXPIRE) in parallel; dispose:
// three DELs in parallel). The only addition is `prefix` (default ''), prepended to every key
// so several stores can share one server in the bench.

export function createSeedStore(redis, { ttl, prefix = '' } = {}) {
  const seconds = ttl ? Math.ceil(ttl / 1000) : 0
  const parse = (key, field, value) => {
    try {
      return JSON.parse(value)
    } catch (error) {
      throw new Error(
        `Failed to parse JSON for Redis key "${key}" field "${field}": ${error instanceof Error ? error.message : String(error)}. Raw value: "${value}"`,
        { cause: error },
      )
    }
  }
  return {
    async beginExecution(executionId) {
      await redis.set(`${prefix}${executionId}`, 'true')
      if (ttl) await redis.expire(`${prefix}${executionId}`, seconds)
    },

    async getExecutionTaskResults(executionId) {
      const key = `${prefix}${executionId}-results`
      let result = await redis.hgetall(key)
      if (!result) return {}
      if (Array.isArray(result)) result = Object.fromEntries(pair(result))
      return Object.fromEntries(Object.entries(result).map(([field, value]) => [field, parse(key, field, value)]))
    },

    async getExecutionTaskResult(executionId, taskId) {
      const key = `${prefix}${executionId}-results`
      const result = await redis.hget(key, taskId)
      if (typeof result === 'string') return parse(key, taskId, result)
      return undefined
    },

    async isExecutionInProgress(executionId) {
      return Boolean(await redis.get(`${prefix}${executionId}`))
    },

    async isExecutionTaskInProgress(executionId, taskId) {
      return Boolean(await redis.hget(`${prefix}${executionId}-transactions`, taskId))
    },

    async beginExecutionTask(executionId, taskId) {
      await redis.hset(`${prefix}${executionId}-transactions`, { [taskId]: 'true' })
      if (ttl) await redis.expire(`${prefix}${executionId}-transactions`, seconds)
    },

    async commitExecutionTaskResult(executionId, taskId, value) {
      const operations = [
        redis.hdel(`${prefix}${executionId}-transactions`, taskId),
        redis.hset(`${prefix}${executionId}-results`, { [taskId]: JSON.stringify(value) }),
      ]
      if (ttl) operations.push(redis.expire(`${prefix}${executionId}-results`, seconds))
      await Promise.all(operations)
    },

    async disposeExecution(executionId) {
      await Promise.all([redis.del(`${prefix}${executionId}`), redis.del(`${prefix}${executionId}-transactions`), redis.del(`${prefix}${executionId}-results`)])
    },
  }
}

/** [k1, v1, k2, v2, ...] -> [[k1, v1], [k2, v2], ...] (clients that return HGETALL flat). */
function pair(values) {
  return Array.from({ length: Math.floor(values.length / 2) }, (_, i) => [values[i * 2], values[i * 2 + 1]])
}
