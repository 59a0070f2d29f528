// Compile-time test (`tsc -p __test__/tsconfig.json`, run by `npm test`): the stores'
// declared types are assignable to the WorkerStore interface of the contract doc, which
// the worker library declares on its side. Any drift in index.d.ts fails the build.
import {
  createMemoryStore,
  createPostgresStore,
  createRedisStore,
  createSqliteStore,
  createStore,
  DurableWorkerStore,
  DurastateError,
  EMPTY_EXECUTION_RESULT,
  type AnyStoreOptions,
  type ErrorCode,
  type RedisConnectionOptions,
} from '../index.js'

/** The interface exactly as `../shared/docs/worker-store-contract.md` states it. */
interface ContractWorkerStore {
  beginExecution(executionId: string): Promise<void>
  getExecutionTaskResults?(executionId: string): Promise<{ [taskId: string]: unknown }>
  getExecutionTaskResult(executionId: string, taskId: string): Promise<unknown | undefined>
  beginExecutionTask(executionId: string, taskId: string): Promise<void>
  commitExecutionTaskResult(executionId: string, taskId: string, value: unknown): Promise<void>
  isExecutionInProgress(executionId: string): Promise<boolean>
  isExecutionTaskInProgress(executionId: string, taskId: string): Promise<boolean>
  disposeExecution(executionId: string): Promise<void>
}

/** How a worker library takes its store. */
declare function createWorker(options: { store: ContractWorkerStore }): void

const target: RedisConnectionOptions = { host: '127.0.0.1', port: 6379, db: 2, username: 'u', password: 'p' }

createWorker({ store: createRedisStore('redis://127.0.0.1:6379', { ttl: 60_000, prefix: 'app:' }) })
createWorker({ store: createRedisStore(target, { connectTimeout: 1000, commandTimeout: 2000 }) })
createWorker({ store: createRedisStore() })
const cluster: RedisConnectionOptions = { cluster: ['redis://127.0.0.1:7000', 'redis://127.0.0.1:7001'], password: 'p' }
createWorker({ store: createRedisStore(cluster, { keyLayout: 'hashtag', prefix: 'app:' }) })
createWorker({ store: createMemoryStore({ keyLayout: 'compatible' }) })
// @ts-expect-error keyLayout is 'compatible' or 'hashtag'
createMemoryStore({ keyLayout: 'tags' })
createWorker({ store: createSqliteStore('./state.db', { busyTimeout: 1000, synchronous: 'full' }) })
createWorker({ store: createSqliteStore() })
createWorker({ store: createPostgresStore('postgres://app:pw@db:5432/app?sslmode=require', { schema: 'ds', poolSize: 4, ttl: 1000, retry: { attempts: 2 } }) })
createWorker({ store: createPostgresStore({ host: 'db', user: 'app', database: 'app', sslmode: 'verify-full' }, { tls: { ca: './ca.pem' } }) })
createWorker({ store: createPostgresStore() })
// @ts-expect-error sslmode is one of libpq's
createPostgresStore({ sslmode: 'sometimes' })
createWorker({ store: createMemoryStore({ ttl: 1000 }) })
createWorker({ store: createStore('sqlite:./x.db') })
createWorker({ store: createStore() })

const store: DurableWorkerStore = createMemoryStore()
const asContract: ContractWorkerStore = store

async function usesExtras(s: DurableWorkerStore): Promise<void> {
  const won: boolean = await s.tryBeginExecutionTask('e', 't')
  const all: Record<string, unknown> = await s.getExecutionTaskResults('e')
  const closed: boolean = s.closed
  const empty: '<empty_execution_result>' = EMPTY_EXECUTION_RESULT
  await s.close()
  try {
    await asContract.beginExecution('e')
  } catch (err) {
    if (err instanceof DurastateError) {
      const code: ErrorCode = err.code
      void code
    }
  }
  void [won, all, closed, empty]
}
void usesExtras

// DurastateError is made with its code first, as index.js does
const made: DurastateError = new DurastateError('TIMEOUT', 'took too long', { cause: new Error('x') })
void made
// @ts-expect-error: the first argument is a code, not the message
void new DurastateError('something failed')

// @ts-expect-error: ttl is a number of milliseconds, not a string
createMemoryStore({ ttl: '5s' })
// @ts-expect-error: the Redis target port is a number
createRedisStore({ port: '6379' })

// The KV store: options, calls and the one-mount view type-check as documented.
import { createKvStore, type KvMount, type KvMountInfo, type KvSchemaInfo, type KvStore, type KvStoreOptions } from '../index.js'

const kvOptions: KvStoreOptions = {
  commandTimeout: 2_000,
  mounts: {
    user: { prefix: 'app:user:', schema: { name: { type: 'string', default: '' } } },
    cache: { prefix: 'app:cache:', mode: 'read-write', ttl: 60_000, maxEntries: 100, maxValueSize: 1024 },
  },
}
const kv: KvStore = createKvStore('memory:', kvOptions)
const kvCluster: KvStore = createKvStore({ cluster: ['redis://127.0.0.1:7000'] }, { prefix: 'kv:' })
void kvCluster
const cacheMount: KvMount = kv.mount('cache')

export async function useKv(): Promise<void> {
  const stored: true = await kv.set('user', 'name', 'Ada', { ttl: 1_000 })
  const merged: true = await kv.merge('user', 'prefs', { theme: 'dark' })
  const removed: boolean = await kv.delete('user', 'name')
  const count: number = await cacheMount.deleteMany(['a', 'b'])
  const many: Record<string, unknown> = await cacheMount.getMany(['a'])
  const names: string[] = await kv.keys('cache', 'report:*')
  const fallback: unknown = await kv.getOr('user', 'name', null)
  const text: string | undefined = await kv.getJson('user', 'name')
  const storedText: true = await cacheMount.setJson('a', '{"id":12345678901234567890}', { ttl: 1_000 })
  const mountText: string | undefined = await cacheMount.getJson('a')
  const schema: KvSchemaInfo[] = kv.schema('user')
  const mounts: KvMountInfo[] = kv.mounts()
  void [stored, merged, removed, count, many, names, fallback, text, storedText, mountText, schema, mounts]
  await kv.close()
}

// TLS and Sentinel options type-check as documented.
import type { TlsOptions } from '../index.js'
const tls: TlsOptions = { ca: '/etc/ssl/ca.pem', cert: '-----BEGIN CERTIFICATE-----', key: 'k.pem', servername: 'redis.internal', rejectUnauthorized: true }
export const overTls = (): DurableWorkerStore => createRedisStore('rediss://127.0.0.1:6380', { tls, connectTimeout: 1_000 })
export const sentinelsOverTls = (): DurableWorkerStore => createRedisStore('rediss+sentinel://127.0.0.1:26380/main', { tls, sentinelTls: false })
export const clusterOverTls = (): DurableWorkerStore =>
  createRedisStore({ cluster: ['rediss://127.0.0.1:7000'], tls: true }, { tls, keyLayout: 'hashtag', durability: 'aof' })
export const viaSentinels = (): DurableWorkerStore =>
  createRedisStore({ sentinels: [{ host: '127.0.0.1', port: 26379 }, { host: '127.0.0.2' }], name: 'main', sentinelPassword: 's' }, { retry: { attempts: 40 } })
// @ts-expect-error: a sentinel needs a host
createRedisStore({ sentinels: [{ port: 26379 }], name: 'main' })

// Observability: the channel names and the shapes published on them.
import { CALL_CHANNEL, CONNECTION_CHANNEL, type CallContext, type ConnectionEvent } from '../index.js'
import diagnostics from 'node:diagnostics_channel'
const callChannelName: 'durastate:call' = CALL_CHANNEL
diagnostics.tracingChannel<string, CallContext & object>(callChannelName).subscribe({
  start(call: CallContext) {
    const where: string | undefined = call.serverAddress
    const code: ErrorCode | undefined = call.error?.code
    void where
    void code
  },
  end() {},
  asyncStart() {},
  asyncEnd() {},
  error() {},
})
diagnostics.subscribe(CONNECTION_CHANNEL, (message) => {
  const event = message as ConnectionEvent
  const kind: 'connect' | 'drop' | 'reconnect' | 'failover' = event.type
  void kind
})

// The README's TypeScript form of the Observability example, as written there.
const startedAt = new WeakMap<CallContext, number>()
diagnostics.tracingChannel<unknown, CallContext>(CALL_CHANNEL).subscribe({
  start(call) {
    startedAt.set(call, performance.now())
  },
  asyncEnd(call) {
    console.log(call.operation, call.executionId, call.error?.code ?? 'ok', performance.now() - (startedAt.get(call) ?? 0))
  },
  end() {},
  asyncStart() {},
  error() {},
})

// Every factory takes every backend's options, as the runtime does (a shared options object).
const sharedOptions: AnyStoreOptions = { ttl: 1, tls: true, poolSize: 2, busyTimeout: 10 }
createSqliteStore('x.db', sharedOptions)
createMemoryStore(sharedOptions)
createRedisStore('redis://x', sharedOptions)
createPostgresStore('postgres://x', sharedOptions)
createMemoryStore({ tls: true, durability: 'aof' })
createSqliteStore('x.db', { poolSize: 3, schema: 'app' })
createRedisStore('redis://x', { busyTimeout: 1, pageSize: 4096 })
createPostgresStore('postgres://x', { synchronous: 'full', durability: 'aof' })
// @ts-expect-error a value out of an option's set is refused on every factory
createMemoryStore({ durability: 'x' })
