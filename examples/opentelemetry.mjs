// OpenTelemetry spans for durastate: one span per store call, named by the operation,
// with the database semantic-convention attributes, nested under the caller's active span.
// durastate publishes every call on the tracing channel `durastate:call`; this file turns
// the channel's events into spans with @opentelemetry/api, so it works with any SDK.
//
//   node examples/opentelemetry.mjs                          # spans of a small workflow, printed
//   REDIS_URL=redis://127.0.0.1:6379 node examples/opentelemetry.mjs
//
// In an app: call traceDurastate() once at start-up, after the OpenTelemetry SDK is set up.
import diagnostics from 'node:diagnostics_channel'
import { fileURLToPath } from 'node:url'
import { context, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api'

/** `db.system.name` by durastate backend (semantic conventions; memory has no standard name). */
const DB_SYSTEM = { redis: 'redis', cluster: 'redis', sentinel: 'redis', sqlite: 'sqlite', postgres: 'postgresql', memory: 'durastate.memory' }

/**
 * Subscribes to `durastate:call` and makes a span of each call with `tracer` (default: the
 * global tracer provider's `durastate` tracer). Returns a function that unsubscribes.
 */
export function traceDurastate(tracer = trace.getTracer('durastate')) {
  const channel = diagnostics.tracingChannel('durastate:call')
  const spans = new WeakMap()
  const finish = (call) => {
    const span = spans.get(call)
    if (!span) return
    spans.delete(call)
    span.end()
  }
  const handlers = {
    // start runs synchronously in the caller, so context.active() is the caller's span.
    start(call) {
      const attributes = {
        'db.operation.name': call.operation,
        'durastate.store': call.store,
      }
      // (no backend: a method called without its store, which rejects INVALID_INPUT)
      if (call.backend !== undefined) attributes['db.system.name'] = DB_SYSTEM[call.backend] ?? call.backend
      if (call.serverAddress !== undefined) attributes['server.address'] = call.serverAddress
      if (call.serverPort !== undefined) attributes['server.port'] = call.serverPort
      if (call.database !== undefined) attributes['db.namespace'] = call.database
      if (call.executionId !== undefined) attributes['durastate.execution_id'] = call.executionId
      if (call.taskId !== undefined) attributes['durastate.task_id'] = call.taskId
      if (call.mount !== undefined) attributes['durastate.kv.mount'] = call.mount
      spans.set(call, tracer.startSpan(call.operation, { kind: SpanKind.CLIENT, attributes }, context.active()))
    },
    error(call) {
      const span = spans.get(call)
      if (!span) return
      const code = call.error?.code ?? call.error?.name ?? 'Error'
      span.setAttribute('error.type', code)
      span.recordException(call.error)
      span.setStatus({ code: SpanStatusCode.ERROR, message: call.error?.message })
    },
    // A call that threw at once (never a durastate call: they reject) ends here.
    end(call) {
      if (call.error !== undefined) finish(call)
    },
    asyncStart() {},
    asyncEnd: finish,
  }
  channel.subscribe(handlers)
  return () => channel.unsubscribe(handlers)
}

/** The demo: a workflow of three steps under a parent span, its spans printed. */
async function demo() {
  const { createRequire } = await import('node:module')
  const require = createRequire(import.meta.url)
  const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks')
  const { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-base')
  const { createStore } = require('../index.js')

  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable())
  const exporter = new InMemorySpanExporter()
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
  trace.setGlobalTracerProvider(provider)
  const stop = traceDurastate()

  const store = createStore(process.env.DURASTATE_URL || process.env.REDIS_URL || 'memory:')
  const tracer = trace.getTracer('demo')
  await tracer.startActiveSpan('handle order 42', async (parent) => {
    const id = `order-42-${Date.now()}`
    await store.beginExecution(id)
    for (const step of ['validate', 'charge', 'ship']) {
      if ((await store.getExecutionTaskResult(id, step)) !== undefined) continue
      await store.beginExecutionTask(id, step)
      await store.commitExecutionTaskResult(id, step, { ok: true })
    }
    await store.disposeExecution(id)
    parent.end()
  })
  stop()
  await store.close()
  const byId = new Map(exporter.getFinishedSpans().map((span) => [span.spanContext().spanId, span]))
  for (const span of exporter.getFinishedSpans()) {
    const parentId = span.parentSpanContext?.spanId
    const indent = parentId && byId.has(parentId) ? '  ' : ''
    const attributes = Object.entries(span.attributes)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')
    console.log(`${indent}${span.name}  ${attributes}`)
  }
  await provider.shutdown()
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await demo()
