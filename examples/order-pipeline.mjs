// durastate demo: a durable order pipeline that crashes half-way and resumes.
//
//   npm run demo                                # embedded SQLite file, no server needed
//   REDIS_URL=redis://127.0.0.1:6379 npm run demo
//
// A small queue (lib/broker.mjs) delivers messages to a worker process, which runs the
// workflow below with a durable-execution loop (lib/durable-worker.mjs) that calls the
// store in the worker library's order. The first worker process is killed in the middle
// of the "charge-card" step; the queue re-delivers to a new process, which resumes: every
// finished step is served from the store, never run again.
import { fileURLToPath } from 'node:url'
import { createStore } from '../index.js'
import { describe, runQueue } from './lib/broker.mjs'
import { deliver } from './lib/durable-worker.mjs'

const TTL_MS = 24 * 60 * 60 * 1000
const CRASH_STEP = 'charge-card'

/** Simulated work: a call to another service. */
const work = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** The workflow: plain async code; `step` makes each part durable. Nested steps are `parent:child`. */
async function orderPipeline(order, { step }) {
  const checked = await step('validate', async () => {
    await work(20)
    return { lines: order.items.length, total: order.items.reduce((sum, i) => sum + i.price * i.qty, 0) }
  })
  const reserved = await step('reserve-stock', async ({ step }) => {
    const berlin = await step('warehouse-berlin', async () => (await work(25), { hold: `${order.id}-BER` }))
    const lyon = await step('warehouse-lyon', async () => (await work(25), { hold: `${order.id}-LYS` }))
    return { holds: [berlin.hold, lyon.hold] }
  })
  const payment = await step(CRASH_STEP, async () => {
    crashTheFirstWorker()
    await work(40)
    return { paymentId: `pay_${order.id}`, amount: checked.total }
  })
  // A step that returns nothing: stored as the empty-result sentinel, served as undefined.
  await step('send-confirmation', async () => {
    await work(10)
  })
  const shipment = await step('ship', async () => (await work(15), { trackingId: `TRK-${order.id}` }))
  return { order: order.id, total: checked.total, holds: reserved.holds, paymentId: payment.paymentId, trackingId: shipment.trackingId }
}

function crashTheFirstWorker() {
  if (workerGeneration() !== 1) return
  process.stdout.write(`  ... worker #1 is killed in the middle of step ${CRASH_STEP} (SIGKILL), before its commit\n`)
  process.kill(process.pid, 'SIGKILL')
}

const workerGeneration = () => Number(process.argv[process.argv.indexOf('--worker') + 1])

// ---------------------------------------------------------------- worker process

/** Wraps each store method to time it; `timings` collects `[method, ms]`. */
function timed(store, timings) {
  return new Proxy(store, {
    get(target, name) {
      const value = target[name]
      if (typeof value !== 'function') return value
      return async (...args) => {
        const started = performance.now()
        try {
          return await value.apply(target, args)
        } finally {
          timings.push([name, performance.now() - started])
        }
      }
    },
  })
}

function describeEvents(events) {
  const names = (what) => events.filter((e) => e.what === what).map((e) => e.taskId)
  const parts = []
  if (names('memoised').length) parts.push(`memoised: ${names('memoised').join(', ')}`)
  for (const e of events.filter((e) => e.what === 'ran')) parts.push(`RAN ${e.taskId} (${e.ms.toFixed(0)} ms)`)
  if (names('begun').length) parts.push(`begun: ${names('begun').join(', ')}`)
  for (const e of events.filter((e) => !e.taskId)) parts.push(e.what)
  return parts.join(' | ')
}

async function workerMain() {
  const store = createStore(undefined, { ttl: TTL_MS })
  let deliveries = 0
  console.log(`worker #${workerGeneration()} started (pid ${process.pid})`)
  // The demo's process gone (killed): this worker has no one to report to, and stops.
  const send = (message) => {
    if (process.connected) process.send(message)
    else process.exit(1)
  }
  let stopping = false
  process.on('disconnect', () => {
    if (!stopping) process.exit(1)
  })
  process.on('message', async (event) => {
    if (event.type === 'stop') {
      stopping = true
      await store.close()
      process.disconnect()
      return
    }
    const timings = []
    const events = []
    const result = await deliver({
      store: timed(store, timings),
      workflow: orderPipeline,
      message: event.message,
      enqueue: (message) => send({ type: 'enqueue', message }),
      log: (e) => events.push(e),
    })
    deliveries++
    console.log(`  delivery ${String(deliveries).padStart(2)}  ${describe(event.message).padEnd(40)} ${describeEvents(events)}`)
    send({ type: 'report', events, timings, result })
    send({ type: 'ack' })
  })
  send({ type: 'ready' })
}

// ---------------------------------------------------------------- the demo

function storeDescription() {
  const url = process.env.DURASTATE_URL || process.env.REDIS_URL
  if (!url) return 'embedded SQLite file ./.durastate/state.db (the default; REDIS_URL=redis://... runs it on Redis)'
  return url.replace(/\/\/([^@/]*)@/, '//***@')
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
}

function printSummary(reports, allSteps) {
  const ran = new Map()
  const memoised = new Map()
  for (const { events } of reports) {
    for (const e of events) {
      if (e.what === 'ran') ran.set(e.taskId, (ran.get(e.taskId) ?? 0) + 1)
      if (e.what === 'memoised') memoised.set(e.taskId, (memoised.get(e.taskId) ?? 0) + 1)
    }
  }
  console.log('\nsteps                              completed runs   served from the store')
  for (const taskId of allSteps) {
    console.log(`  ${taskId.padEnd(34)} ${String(ran.get(taskId) ?? 0).padStart(4)}   ${String(memoised.get(taskId) ?? 0).padStart(6)}`)
  }
  const byMethod = new Map()
  for (const { timings } of reports) {
    for (const [name, ms] of timings) byMethod.set(name, [...(byMethod.get(name) ?? []), ms])
  }
  console.log('\nstore calls                   calls   p50 ms   max ms')
  for (const [name, list] of [...byMethod].sort()) {
    const sorted = [...list].sort((a, b) => a - b)
    console.log(
      `  ${name.padEnd(27)} ${String(sorted.length).padStart(5)}   ${percentile(sorted, 50).toFixed(2).padStart(6)}   ${sorted.at(-1).toFixed(2).padStart(6)}`,
    )
  }
  return ran
}

async function demoMain() {
  const order = {
    id: `A${Date.now().toString(36).toUpperCase()}`,
    items: [
      { sku: 'lamp', qty: 2, price: 39.5 },
      { sku: 'bulb', qty: 4, price: 3.25 },
    ],
  }
  const executionId = `order-${order.id}`
  console.log('durastate demo: a durable order pipeline that crashes half-way and resumes')
  console.log(`store:     ${storeDescription()}`)
  console.log(`execution: ${executionId}\n`)

  const reports = await runQueue({
    workerScript: fileURLToPath(import.meta.url),
    firstMessage: { executionId, input: order, isNew: true },
    log: (line) => console.log(line),
  })

  const allSteps = ['validate', 'reserve-stock:warehouse-berlin', 'reserve-stock:warehouse-lyon', 'reserve-stock', CRASH_STEP, 'send-confirmation', 'ship']
  const ran = printSummary(reports, allSteps)
  const result = reports.map((r) => r.result).find(Boolean)
  console.log(`\nresult: ${JSON.stringify(result)}`)

  const store = createStore(undefined, {})
  const leftOver = await store.isExecutionInProgress(executionId)
  await store.close()
  const problems = [
    ...allSteps.filter((s) => ran.get(s) !== 1).map((s) => `step ${s} completed ${ran.get(s) ?? 0} times, expected once`),
    ...(result?.paymentId && result.trackingId ? [] : ['the workflow did not finish']),
    ...(leftOver ? ['the execution was not disposed'] : []),
  ]
  if (problems.length > 0) {
    console.error(`\nFAILED: ${problems.join('; ')}`)
    process.exit(1)
  }
  console.log('\nOK: the crash lost no finished step, and no finished step ran twice.')
}

if (process.argv.includes('--worker')) await workerMain()
else await demoMain()
