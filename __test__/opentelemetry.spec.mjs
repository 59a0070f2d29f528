// OpenTelemetry through the tracing channel (examples/opentelemetry.mjs): one span per
// store call, named by the operation, with the semantic-convention attributes, each a
// child of the caller's active span, which is still active after the native promise.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { after, before, describe, it } from 'node:test'
import { context, SpanStatusCode, trace } from '@opentelemetry/api'
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks'
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base'
import { createKvStore, createMemoryStore, createPostgresStore, createRedisStore } from '../index.js'
import { testPostgres } from './helpers/postgres-server.mjs'
import { traceDurastate } from '../examples/opentelemetry.mjs'
import { startRedisServer } from './helpers/redis-server.mjs'

describe('OpenTelemetry spans from durastate:call', () => {
  let redis
  let exporter
  let provider
  let contextManager
  let stop
  const stores = []
  const track = (store) => (stores.push(store), store)

  before(async () => {
    redis = await startRedisServer()
    contextManager = new AsyncLocalStorageContextManager().enable()
    context.setGlobalContextManager(contextManager)
    exporter = new InMemorySpanExporter()
    provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
    stop = traceDurastate(provider.getTracer('durastate'))
  })

  after(async () => {
    stop?.()
    await Promise.all(stores.map((s) => s.close()))
    await provider?.shutdown()
    context.disable()
    await redis?.stop()
  })

  it('makes one span per call, nested under the active span, which stays active after each await', async () => {
    exporter.reset()
    const store = track(createRedisStore(redis.url, { prefix: 'otel:' }))
    const kv = track(createKvStore(redis.url))
    const tracer = provider.getTracer('test')
    let parentId
    await tracer.startActiveSpan('workflow', async (parent) => {
      parentId = parent.spanContext().spanId
      await store.beginExecution('o1')
      assert.equal(trace.getActiveSpan()?.spanContext().spanId, parentId, 'active span after a native promise')
      await Promise.all([store.beginExecutionTask('o1', 's1'), kv.set('default', 'k', { v: 1 })])
      assert.equal(trace.getActiveSpan()?.spanContext().spanId, parentId)
      await store.commitExecutionTaskResult('o1', 's1', { ok: true })
      // A call made later, from a timer, is still in the parent's context.
      await new Promise((resolve) => setTimeout(resolve, 5))
      await kv.get('default', 'k')
      parent.end()
    })
    const spans = exporter.getFinishedSpans().filter((s) => s.name !== 'workflow')
    assert.deepEqual(spans.map((s) => s.name).sort(), ['beginExecution', 'beginExecutionTask', 'commitExecutionTaskResult', 'get', 'set'])
    for (const span of spans) {
      assert.equal(span.parentSpanContext?.spanId, parentId, `${span.name} is a child of the workflow span`)
      assert.equal(span.attributes['db.system.name'], 'redis')
      assert.equal(span.attributes['db.operation.name'], span.name)
      assert.equal(span.attributes['server.address'], '127.0.0.1')
      assert.equal(span.attributes['server.port'], redis.port)
      assert.equal(span.attributes['error.type'], undefined)
      assert.equal(span.status.code, SpanStatusCode.UNSET)
    }
    const commit = spans.find((s) => s.name === 'commitExecutionTaskResult')
    assert.equal(commit.attributes['durastate.execution_id'], 'o1')
    assert.equal(commit.attributes['durastate.task_id'], 's1')
    assert.ok(!JSON.stringify(spans.map((s) => s.attributes)).includes('"ok"'), 'no value in the attributes')
  })

  it('marks a failed call with error.type (its code) and an error status', async () => {
    exporter.reset()
    const store = createMemoryStore()
    await store.close()
    await provider.getTracer('test').startActiveSpan('parent', async (parent) => {
      await assert.rejects(store.beginExecution('e'), (err) => err.code === 'DISPOSED')
      parent.end()
    })
    const span = exporter.getFinishedSpans().find((s) => s.name === 'beginExecution')
    assert.equal(span.attributes['error.type'], 'DISPOSED')
    assert.equal(span.attributes['db.system.name'], 'durastate.memory')
    assert.equal(span.status.code, SpanStatusCode.ERROR)
    assert.equal(span.attributes['server.address'], undefined)
  })

  it('names a Postgres store db.system.name postgresql, with its server and database', async () => {
    const postgres = await testPostgres()
    try {
      exporter.reset()
      const store = createPostgresStore(postgres.url, { prefix: 'otel-pg:' })
      await store.beginExecution('p1')
      await store.close()
      const span = exporter.getFinishedSpans().find((s) => s.name === 'beginExecution')
      const url = new URL(postgres.url)
      assert.deepEqual(
        [span.attributes['db.system.name'], span.attributes['server.address'], span.attributes['server.port'], span.attributes['db.namespace']],
        ['postgresql', url.hostname, Number(url.port), url.pathname.slice(1)],
      )
    } finally {
      await postgres.release()
    }
  })

  it('the example runs and prints its spans', () => {
    const output = execFileSync(process.execPath, ['examples/opentelemetry.mjs'], {
      cwd: new URL('..', import.meta.url),
      encoding: 'utf8',
      env: { ...process.env, DURASTATE_URL: '', REDIS_URL: '' },
      timeout: 30_000,
    })
    assert.match(output, /^handle order 42/m)
    assert.match(output, /^ {2}commitExecutionTaskResult .*db\.system\.name=durastate\.memory/m)
  })
})
