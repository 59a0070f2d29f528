// The tracing section of `npm run bench`: what the `durastate:call` tracing channel costs.
// The same workload (getExecutionTaskResult hits, 100 B, on a memory store: the fastest
// call there is, so the check is the largest share of it) runs three ways, interleaved
// round by round: through the methods as they were before tracing (`untraced`), through
// the public methods with nobody subscribed (`no subscriber`: the one hasSubscribers check),
// and with a subscriber of all five events that does nothing (`subscribed`, for scale).
import diagnostics from 'node:diagnostics_channel'
import { createRequire } from 'node:module'
import { getOp, makeValue, seedGetData } from './workloads.mjs'

const require = createRequire(import.meta.url)
const { createMemoryStore } = require('../../index.js')

/** The methods as they were before index.js traced them (kept under this symbol for this comparison). */
const UNTRACED = Symbol.for('durastate.untraced')

/** A view of `store` whose calls skip the tracing wrapper. */
function untraced(store) {
  const methods = store[UNTRACED]
  return { getExecutionTaskResult: (e, t) => methods.getExecutionTaskResult.call(store, e, t) }
}

/**
 * Runs the section with bench.mjs's helpers ({ config, log, measureFigure, timeBoxed,
 * warmFor, row }). Returns the rows (ops/s by way) and the ratios to `untraced`.
 */
export async function runTracing({ log, measureFigure, timeBoxed, warmFor, row, config }) {
  const store = createMemoryStore()
  const channel = diagnostics.tracingChannel('durastate:call')
  const noop = { start() {}, end() {}, asyncStart() {}, asyncEnd() {}, error() {} }
  try {
    await seedGetData(store, 'trace', makeValue(100))
    const rows = []
    for (const concurrency of [1, 64]) {
      const label = `getExecutionTaskResult (hit), 100 B, memory store, ${concurrency} in flight`
      log(`tracing: ${label}`)
      const plain = { name: 'untraced', op: getOp(untraced(store), 'trace') }
      const checked = { name: 'no subscriber', op: getOp(store, 'trace') }
      const cell = await measureFigure(`tracing ${label}`, [plain, checked], warmFor(concurrency), timeBoxed(concurrency, config.roundMs))
      // Subscribed rounds run apart (a subscription is process-wide), for scale only.
      channel.subscribe(noop)
      let subscribed
      try {
        subscribed = await measureFigure(
          `tracing subscribed ${label}`,
          [{ name: 'subscribed', op: getOp(store, 'trace') }],
          warmFor(concurrency),
          timeBoxed(concurrency, config.roundMs),
        )
      } finally {
        channel.unsubscribe(noop)
      }
      const merged = {
        medians: { ...cell.medians, ...subscribed.medians },
        rounds: { ...cell.rounds, ...subscribed.rounds },
        pingUs: cell.pingUs,
      }
      rows.push(row(`trace-${concurrency}`, label, 'ops/s', 'higher', merged, (m) => m.opsPerSec))
    }
    return rows.map((r) => ({
      ...r,
      noSubscriberRatio: r.values['no subscriber'] / r.values.untraced,
      subscribedRatio: r.values.subscribed / r.values.untraced,
    }))
  } finally {
    await store.close()
  }
}
