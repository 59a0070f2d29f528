// A tiny at-least-once message queue, the part of a job system the demo needs: it hands
// one message at a time to a worker process (over IPC), forgets it only on an ack, and
// re-delivers whatever was unacknowledged when a worker dies.
import { fork } from 'node:child_process'

/**
 * Runs `workerScript` as worker processes until the queue is empty.
 * `onCrash(generation)` is called when a worker dies before acknowledging its message.
 * Returns the workers' reports (`{ type: 'report', ... }` messages), in order.
 */
export async function runQueue({ workerScript, workerArgs = [], firstMessage, log, maxWorkers = 5 }) {
  const queue = [firstMessage]
  const reports = []
  for (let generation = 1; queue.length > 0; generation++) {
    if (generation > maxWorkers) throw new Error(`gave up after ${maxWorkers} worker processes`)
    const exit = await runWorker({ workerScript, workerArgs, generation, queue, reports })
    if (queue.length > 0) {
      log(`worker #${generation} died (${exit}) holding "${describe(queue[0])}": the queue re-delivers it to a new worker`)
    }
  }
  return reports
}

function runWorker({ workerScript, workerArgs, generation, queue, reports }) {
  return new Promise((resolve, reject) => {
    const worker = fork(workerScript, [...workerArgs, '--worker', String(generation)], { stdio: 'inherit' })
    const deliverNext = () => {
      if (queue.length === 0) return worker.send({ type: 'stop' })
      worker.send({ type: 'deliver', message: queue[0] })
    }
    worker.on('message', (event) => {
      if (event.type === 'ready') deliverNext()
      else if (event.type === 'enqueue') queue.push(event.message)
      else if (event.type === 'report') reports.push(event)
      else if (event.type === 'ack') {
        queue.shift()
        deliverNext()
      }
    })
    worker.once('error', reject)
    worker.once('exit', (code, signal) => resolve(signal ?? `exit code ${code}`))
  })
}

/** A message as a human reads it. */
export function describe(message) {
  return message.taskId ? `run step ${message.taskId}` : `run execution ${message.executionId}`
}
