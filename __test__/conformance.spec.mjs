// One WorkerStore conformance suite, run against every backend: the same cases and
// the same expectations for Redis, SQLite and memory.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { EMPTY_EXECUTION_RESULT } from '../index.js'
import { rejectsWith } from './helpers/assert.mjs'
import { backendNames, prepareBackend } from './helpers/backends.mjs'

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

for (const name of backendNames) {
  describe(`WorkerStore conformance: ${name}`, () => {
    let backend
    before(async () => {
      backend = await prepareBackend(name)
    })
    after(async () => {
      await backend.release()
    })

    it('tracks an execution from begin to dispose', async () => {
      const store = backend.open()
      assert.equal(await store.isExecutionInProgress('e1'), false)
      await store.beginExecution('e1')
      assert.equal(await store.isExecutionInProgress('e1'), true)
      assert.equal(await store.isExecutionInProgress('e2'), false)
      await store.disposeExecution('e1')
      assert.equal(await store.isExecutionInProgress('e1'), false)
    })

    it('runs the step lifecycle the worker library drives', async () => {
      const store = backend.open()
      await store.beginExecution('e')
      assert.deepEqual(await store.getExecutionTaskResults('e'), {})
      assert.equal(await store.getExecutionTaskResult('e', 'charge'), undefined)
      assert.equal(await store.isExecutionTaskInProgress('e', 'charge'), false)
      await store.beginExecutionTask('e', 'charge')
      assert.equal(await store.isExecutionTaskInProgress('e', 'charge'), true)
      await store.commitExecutionTaskResult('e', 'charge', { id: 'ch_1', amount: 4200 })
      assert.equal(await store.isExecutionTaskInProgress('e', 'charge'), false)
      assert.deepEqual(await store.getExecutionTaskResult('e', 'charge'), { id: 'ch_1', amount: 4200 })
      await store.commitExecutionTaskResult('e', 'charge:receipt', 'sent')
      assert.deepEqual(await store.getExecutionTaskResults('e'), {
        charge: { id: 'ch_1', amount: 4200 },
        'charge:receipt': 'sent',
      })
      await store.disposeExecution('e')
      assert.deepEqual(await store.getExecutionTaskResults('e'), {})
      assert.equal(await store.getExecutionTaskResult('e', 'charge'), undefined)
      assert.equal(await store.isExecutionTaskInProgress('e', 'charge'), false)
    })

    it('round-trips JSON values exactly as JSON.stringify/JSON.parse do', async () => {
      const store = backend.open()
      const values = {
        object: { a: [1, 2, { b: null }], 'quote"key': 'line\nbreak', emoji: '🦀 ünïcödé' },
        string: 'plain',
        empty: '',
        zero: 0,
        negative: -1.5e-7,
        no: false,
        yes: true,
        nothing: null,
        array: [],
        date: new Date('2026-01-02T03:04:05.006Z'),
        big: Number.MAX_SAFE_INTEGER,
        escapes: '\u0000\u001f\\/\u2028',
        sentinel: EMPTY_EXECUTION_RESULT,
      }
      for (const [task, value] of Object.entries(values)) {
        await store.commitExecutionTaskResult('e', task, value)
      }
      const expected = JSON.parse(JSON.stringify(values))
      for (const [task] of Object.entries(values)) {
        assert.deepEqual(await store.getExecutionTaskResult('e', task), expected[task], task)
      }
      assert.deepEqual(await store.getExecutionTaskResults('e'), expected)
      assert.equal(await store.getExecutionTaskResult('e', 'sentinel'), EMPTY_EXECUTION_RESULT)
    })

    it('stores a step that returned undefined as the sentinel, never as a missing field', async () => {
      const store = backend.open()
      await store.beginExecutionTask('e', 'noop')
      await store.commitExecutionTaskResult('e', 'noop', undefined)
      assert.equal(await store.getExecutionTaskResult('e', 'noop'), EMPTY_EXECUTION_RESULT)
      assert.deepEqual(await store.getExecutionTaskResults('e'), { noop: EMPTY_EXECUTION_RESULT })
      assert.equal(await store.isExecutionTaskInProgress('e', 'noop'), false)
    })

    it('rejects a value with no JSON form, writes nothing, keeps the step in progress', async () => {
      const store = backend.open()
      await store.beginExecutionTask('e', 'bad')
      const circular = {}
      circular.self = circular
      for (const value of [10n, circular, () => 1, Symbol('s'), { nested: 1n }]) {
        await rejectsWith(store.commitExecutionTaskResult('e', 'bad', value), 'SERIALIZE')
      }
      assert.equal(await store.isExecutionTaskInProgress('e', 'bad'), true)
      assert.equal(await store.getExecutionTaskResult('e', 'bad'), undefined)
      assert.deepEqual(await store.getExecutionTaskResults('e'), {})
    })

    it('stores a 1 MiB value', async () => {
      const store = backend.open()
      const value = { blob: 'x'.repeat(1024 * 1024), list: Array.from({ length: 1000 }, (_, i) => i) }
      await store.commitExecutionTaskResult('e', 'big', value)
      assert.deepEqual(await store.getExecutionTaskResult('e', 'big'), value)
      assert.deepEqual((await store.getExecutionTaskResults('e')).big, value)
    })

    it('lands all of 1,000 concurrent commits in one execution', async () => {
      const store = backend.open()
      await store.beginExecution('e')
      const tasks = Array.from({ length: 1000 }, (_, i) => `step-${i}`)
      await Promise.all(tasks.map((t) => store.beginExecutionTask('e', t)))
      await Promise.all(tasks.map((t, i) => store.commitExecutionTaskResult('e', t, { i })))
      const results = await store.getExecutionTaskResults('e')
      assert.equal(Object.keys(results).length, 1000)
      tasks.forEach((t, i) => assert.deepEqual(results[t], { i }))
      const inProgress = await Promise.all(tasks.map((t) => store.isExecutionTaskInProgress('e', t)))
      assert.equal(inProgress.filter(Boolean).length, 0)
    })

    it('answers a read with what the calls made before it did, awaited or not', async () => {
      const store = backend.open()
      await store.beginExecution('e')
      const misordered = []
      for (let i = 0; i < 300; i++) {
        const commit = store.commitExecutionTaskResult('e', `t${i % 10}`, { i })
        const read = await store.getExecutionTaskResult('e', `t${i % 10}`)
        await commit
        if (read?.i !== i) misordered.push([i, read])
      }
      for (let i = 0; i < 30; i++) {
        const commits = Array.from({ length: 10 }, (_, j) => store.commitExecutionTaskResult('e', 'hot', i * 100 + j))
        const claim = store.beginExecutionTask('e', 'next')
        const [read, inProgress] = await Promise.all([store.getExecutionTaskResult('e', 'hot'), store.isExecutionTaskInProgress('e', 'next')])
        await Promise.all([...commits, claim])
        await store.commitExecutionTaskResult('e', 'next', null)
        if (read !== i * 100 + 9 || inProgress !== true) misordered.push([i, read, inProgress])
      }
      assert.deepEqual(misordered, [], 'a read saw an older state than the calls made before it')
    })

    it('gives a step to exactly one of 50 concurrent claimers', async () => {
      const stores = backend.sharesState ? [backend.open(), backend.openShared()] : [backend.open()]
      const claims = await Promise.all(Array.from({ length: 50 }, (_, i) => stores[i % stores.length].tryBeginExecutionTask('e', 'claim-me')))
      assert.equal(claims.filter((won) => won === true).length, 1)
      assert.equal(claims.filter((won) => won === false).length, 49)
      assert.equal(await stores[0].isExecutionTaskInProgress('e', 'claim-me'), true)
    })

    it('makes re-commits idempotent: the last value wins, the step is done', async () => {
      const store = backend.open()
      await store.commitExecutionTaskResult('e', 't', 1)
      await store.beginExecutionTask('e', 't')
      await store.commitExecutionTaskResult('e', 't', 2)
      assert.equal(await store.getExecutionTaskResult('e', 't'), 2)
      assert.equal(await store.isExecutionTaskInProgress('e', 't'), false)
    })

    it('treats an unknown execution as empty and disposing it as a no-op', async () => {
      const store = backend.open()
      assert.deepEqual(await store.getExecutionTaskResults('never'), {})
      assert.equal(await store.getExecutionTaskResult('never', 't'), undefined)
      assert.equal(await store.isExecutionTaskInProgress('never', 't'), false)
      await store.disposeExecution('never')
    })

    it('expires every key after ttl ms, and expired state reads as missing', async () => {
      const store = backend.open({ ttl: 300 })
      // The reads prove the state is there only if they end before the ttl runs out (counted
      // from before the first write). A loaded machine can stall these five calls past it:
      // then they are made again on another execution, up to 5 times.
      await store.isExecutionInProgress('warm-up') // connects first
      let e
      for (let attempt = 1; ; attempt++) {
        e = `e${attempt}`
        const started = performance.now()
        await store.beginExecution(e)
        await store.beginExecutionTask(e, 'running')
        await store.commitExecutionTaskResult(e, 'done', 'ok')
        const seen = [await store.isExecutionInProgress(e), await store.getExecutionTaskResult(e, 'done')]
        const readsEnded = performance.now() - started
        if (readsEnded < 290) {
          assert.deepEqual(seen, [true, 'ok'], `read ${readsEnded.toFixed(0)} ms after the first write with a 300 ms ttl`)
          break
        }
        assert.ok(attempt < 5, `the reads ended past the 300 ms ttl in 5 attempts (${readsEnded.toFixed(0)} ms the last time)`)
      }
      await sleep(450)
      assert.equal(await store.isExecutionInProgress(e), false)
      assert.equal(await store.isExecutionTaskInProgress(e, 'running'), false)
      assert.equal(await store.getExecutionTaskResult(e, 'done'), undefined)
      assert.deepEqual(await store.getExecutionTaskResults(e), {})
      // an expired claim can be taken again
      assert.equal(await store.tryBeginExecutionTask(e, 'running'), true)
    })

    it('refreshes the ttl of a key on every write to it', async () => {
      // Margins for a loaded CI machine: a is read at least 2.4 s after its own write, past
      // its 2 s TTL, so it is there only because the write of b (1.2 s later) refreshed it.
      const store = backend.open({ ttl: 2000 })
      await store.commitExecutionTaskResult('e', 'a', 1)
      await sleep(1200)
      await store.commitExecutionTaskResult('e', 'b', 2)
      await sleep(1200)
      assert.deepEqual(await store.getExecutionTaskResults('e'), { a: 1, b: 2 })
    })

    it('a claim that loses writes nothing: a held mark expires on time however often others try to claim it', async () => {
      // A worker claims a step and dies; redeliveries keep trying to claim it every 500 ms.
      // A losing claim used to refresh the marks' TTL, so the mark never expired.
      const store = backend.open({ ttl: 1500 })
      const start = performance.now()
      const elapsed = () => performance.now() - start
      assert.equal(await store.tryBeginExecutionTask('e', 'stuck'), true)
      for (const at of [500, 1000]) {
        await sleep(at - elapsed())
        const won = await store.tryBeginExecutionTask('e', 'stuck')
        // landed before the first claim's TTL could run out: it lost
        if (elapsed() < 1400) assert.equal(won, false, `claim at ${elapsed().toFixed(0)} ms`)
      }
      // 500 ms past the first claim's TTL, 500 ms before the last losing claim's would end
      await sleep(2000 - elapsed())
      assert.equal(await store.isExecutionTaskInProgress('e', 'stuck'), false)
      assert.equal(await store.tryBeginExecutionTask('e', 'stuck'), true)
    })

    it('rejects an empty execution id, keeps an empty task id (as the JS store does; README says so)', async () => {
      const store = backend.open()
      await rejectsWith(store.beginExecution(''), 'INVALID_INPUT')
      await rejectsWith(store.beginExecutionTask('', 't'), 'INVALID_INPUT')
      await store.beginExecutionTask('e', '')
      assert.equal(await store.isExecutionTaskInProgress('e', ''), true)
      await store.commitExecutionTaskResult('e', '', 1)
      assert.equal(await store.getExecutionTaskResult('e', ''), 1)
      assert.deepEqual(await store.getExecutionTaskResults('e'), { '': 1 })
    })

    it('rejects bad arguments with INVALID_INPUT', async () => {
      const store = backend.open()
      await rejectsWith(store.beginExecution(42), 'INVALID_INPUT')
      await rejectsWith(store.beginExecution(''), 'INVALID_INPUT')
      await rejectsWith(store.getExecutionTaskResult('e', undefined), 'INVALID_INPUT')
      await rejectsWith(store.commitExecutionTaskResult(null, 't', 1), 'INVALID_INPUT')
      // A lone surrogate would reach the store as U+FFFD: two ids would be one.
      await rejectsWith(store.beginExecution('e\ud800'), 'INVALID_INPUT')
      await rejectsWith(store.tryBeginExecutionTask('e', '\udc00'), 'INVALID_INPUT')
    })

    it('a method taken off its store rejects INVALID_INPUT saying so (it was INTERNAL, "a bug in durastate")', async () => {
      const store = backend.open()
      const { isExecutionInProgress, beginExecution } = store
      await rejectsWith(isExecutionInProgress('e'), 'INVALID_INPUT', /^isExecutionInProgress\(\) was called without its store .*bind it/)
      await rejectsWith(beginExecution.call({}, 'e'), 'INVALID_INPUT', /^beginExecution\(\) was called without its store/)
      // bound, it works
      await beginExecution.bind(store)('e')
      assert.equal(await isExecutionInProgress.call(store, 'e'), true)
      // close too (it rejected a TypeError), and the store stays open
      await rejectsWith(store.close.call(undefined), 'INVALID_INPUT', /^close\(\) was called without its store/)
      assert.equal(await store.isExecutionInProgress('e'), true)
    })

    it('rejects every call after close() with DISPOSED; close is idempotent', async () => {
      const store = backend.open()
      await store.beginExecution('e')
      assert.equal(store.closed, false)
      await store.close()
      await store.close()
      assert.equal(store.closed, true)
      await rejectsWith(store.isExecutionInProgress('e'), 'DISPOSED')
      await rejectsWith(store.commitExecutionTaskResult('e', 't', 1), 'DISPOSED')
      await rejectsWith(store.getExecutionTaskResults('e'), 'DISPOSED')
    })

    it('lets the calls made before close() finish (and land); calls made after reject with DISPOSED', async () => {
      for (let round = 0; round < 5; round++) {
        const store = backend.open()
        const id = `closing-${round}`
        const calls = [store.beginExecution(id)]
        for (let i = 0; i < 200; i++) {
          calls.push(store.tryBeginExecutionTask(id, `t${i}`), store.commitExecutionTaskResult(id, `t${i}`, i))
        }
        // A claim that loses takes a second round trip with the hashtag layout (it checks
        // the stored token): that one is sent after close() was called.
        const claims = [store.tryBeginExecutionTask(id, 'x'), store.tryBeginExecutionTask(id, 'x')]
        calls.push(store.getExecutionTaskResults(id))
        const closing = store.close()
        const late = store.getExecutionTaskResults(id).then(
          () => 'resolved',
          (err) => err.code,
        )
        const settled = await Promise.allSettled(calls)
        const failed = settled.filter((s) => s.status === 'rejected').map((s) => s.reason.code)
        assert.deepEqual(failed, [], `round ${round}: ${failed.length} calls made before close() failed`)
        assert.equal(Object.keys(settled.at(-1).value).length, 200)
        assert.deepEqual(await Promise.all(claims), [true, false])
        await closing
        assert.equal(await late, 'DISPOSED')
        if (name !== 'memory') {
          const other = backend.openShared()
          assert.equal(Object.keys(await other.getExecutionTaskResults(id)).length, 200)
        }
      }
    })

    it('close() resolves after every call made before it settled, on a store not connected yet and on one in use', async () => {
      for (const warm of [false, true]) {
        const store = backend.open()
        const id = `close-order-${warm}`
        if (warm) await store.beginExecution(id)
        let settled = 0
        const calls = []
        for (let i = 0; i < 50; i++) {
          const call = store.commitExecutionTaskResult(id, `t${i}`, i)
          call.then(() => settled++)
          calls.push(call)
        }
        await store.close()
        // A process may exit right here (process.exit after close()): nothing is left to land.
        assert.equal(settled, 50, `warm: ${warm}: ${settled} of 50 calls settled when close() resolved`)
        await Promise.all(calls)
        if (name !== 'memory') {
          const other = backend.openShared()
          assert.equal(Object.keys(await other.getExecutionTaskResults(id)).length, 50)
        }
      }
    })

    // (SQLite: on the JS thread, and with every call through the store's thread.)
    for (const options of name === 'sqlite' ? [{ synchronous: 'normal' }, { synchronous: 'full' }] : [{}]) {
      const label = options.synchronous ? ` (synchronous: '${options.synchronous}')` : ''
      it(`answers a hashtag claim made before close() that loses: its token check runs after close()${label}`, async () => {
        const store = backend.open({ keyLayout: 'hashtag', ...options })
        await store.beginExecutionTask('e', 'taken')
        const lost = store.tryBeginExecutionTask('e', 'taken')
        const won = store.tryBeginExecutionTask('e', 'fresh')
        const closing = store.close()
        assert.deepEqual(await Promise.all([lost, won]), [false, true])
        await closing
        await rejectsWith(store.tryBeginExecutionTask('e', 'later'), 'DISPOSED')
      })
    }

    if (name !== 'memory') {
      it('keeps stores with different prefixes apart', async () => {
        const a = backend.open({ prefix: 'tenant-a:' })
        const b = backend.openShared({ prefix: 'tenant-b:' })
        await a.beginExecution('e')
        await a.commitExecutionTaskResult('e', 't', 'a')
        assert.equal(await b.isExecutionInProgress('e'), false)
        assert.equal(await b.getExecutionTaskResult('e', 't'), undefined)
      })

      it('shares state between two stores on the same backend', async () => {
        const a = backend.open()
        const b = backend.openShared()
        await a.beginExecution('e')
        await a.commitExecutionTaskResult('e', 't', { from: 'a' })
        assert.equal(await b.isExecutionInProgress('e'), true)
        assert.deepEqual(await b.getExecutionTaskResult('e', 't'), { from: 'a' })
      })
    }
  })
}
