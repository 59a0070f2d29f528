// A worker as an application writes it against the installed package. scripts/test-package.mjs
// compiles it with `tsc --strict` twice (CommonJS and ESM) and runs both builds on Redis
// (REDIS_URL set) and on the embedded default (./.durastate/state.db), on Node.js and on Bun.
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { createKvStore, createRedisStore, createStore, DurastateError, EMPTY_EXECUTION_RESULT } from 'durastate'
import type { AnyStoreOptions, DurableWorkerStore, KvMountOptions, KvStore, KvStoreOptions, RedisStoreOptions } from 'durastate'

/** The worker library's interface, declared by the app (from docs/worker-store-contract.md). */
interface WorkerStore {
  beginExecution(executionId: string): Promise<void>
  getExecutionTaskResults?(executionId: string): Promise<{ [taskId: string]: unknown }>
  getExecutionTaskResult(executionId: string, taskId: string): Promise<unknown | undefined>
  beginExecutionTask(executionId: string, taskId: string): Promise<void>
  commitExecutionTaskResult(executionId: string, taskId: string, value: unknown): Promise<void>
  isExecutionInProgress(executionId: string): Promise<boolean>
  isExecutionTaskInProgress(executionId: string, taskId: string): Promise<boolean>
  disposeExecution(executionId: string): Promise<void>
}

const redisUrl = process.env.REDIS_URL || undefined
const storeOptions: AnyStoreOptions = { ttl: 60_000, prefix: 'package-test:', commandTimeout: 5_000 }
const redisOptions: RedisStoreOptions = { ...storeOptions, connectTimeout: 2_000, retry: { attempts: 1 } }
const defaultMount: KvMountOptions = { prefix: 'package-test:kv:', ttl: 60_000, maxEntries: 100 }
const kvOptions: KvStoreOptions = { commandTimeout: 5_000, mounts: { default: defaultMount } }

async function runSteps(store: WorkerStore, executionId: string): Promise<void> {
  await store.beginExecution(executionId)
  await store.beginExecutionTask(executionId, 'charge')
  assert.equal(await store.isExecutionTaskInProgress(executionId, 'charge'), true)
  await store.commitExecutionTaskResult(executionId, 'charge', { amount: 42 })
  await store.beginExecutionTask(executionId, 'notify')
  await store.commitExecutionTaskResult(executionId, 'notify', undefined)
}

/** Reads, through another store on the same backend, what `runSteps` wrote, then disposes of it. */
async function checkAndDispose(store: WorkerStore, executionId: string): Promise<void> {
  assert.equal(await store.isExecutionInProgress(executionId), true)
  assert.deepEqual(await store.getExecutionTaskResult(executionId, 'charge'), { amount: 42 })
  assert.deepEqual(await store.getExecutionTaskResults?.(executionId), { charge: { amount: 42 }, notify: EMPTY_EXECUTION_RESULT })
  await store.disposeExecution(executionId)
  assert.equal(await store.isExecutionInProgress(executionId), false)
}

async function checkKv(kv: KvStore): Promise<void> {
  await kv.set('default', 'greeting', { text: 'hello' })
  assert.deepEqual(await kv.get('default', 'greeting'), { text: 'hello' })
}

function checkErrors(): void {
  assert.throws(
    () => createStore('bogus://nowhere'),
    (err: unknown) => err instanceof DurastateError && err.code === 'INVALID_INPUT',
  )
}

async function main(): Promise<void> {
  const writer: DurableWorkerStore = redisUrl ? createRedisStore(redisUrl, redisOptions) : createStore(undefined, storeOptions)
  const reader: DurableWorkerStore = createStore(undefined, storeOptions)
  const kv = createKvStore(undefined, kvOptions)
  try {
    const executionId = randomUUID()
    const workerStore: WorkerStore = writer
    await runSteps(workerStore, executionId)
    await checkAndDispose(reader, executionId)
    await checkKv(kv)
    checkErrors()
  } finally {
    await Promise.all([writer.close(), reader.close(), kv.close()])
  }
  const moduleFormat = typeof require === 'function' ? 'commonjs' : 'esm'
  const runtime = process.versions.bun ? 'bun' : 'node'
  console.log(JSON.stringify({ ok: true, backend: redisUrl ? 'redis' : 'embedded', moduleFormat, runtime }))
}

main().catch((err: unknown) => {
  console.error(err)
  process.exitCode = 1
})
