// A/B of Redis builds on the workflow lifecycle at 1 call in flight, against the seed's store
// on ioredis, on one throwaway redis-server. The contenders run one lifecycle each in turn
// (about 2 ms each; the order rotates), and the times are summed per block of 50 turns: a
// shared machine's slow and fast moments hit every contender alike, where time-boxed rounds
// of a second apart can differ by 2x on their own. Prints, per contender, its rate, its
// ratio to ioredis (over the whole run, and the median of the blocks' ratios) and the median
// of its blocks' ratios to the first build named.
//
//   bun benchmark/lifecycle-ab.mjs new=. old=/tmp/old-copy   (each a directory with index.js)
//   DURASTATE_REDIS_DRIVER=socket node benchmark/lifecycle-ab.mjs new=. old=/tmp/old-copy
// Env: AB_SECONDS (default 20), AB_TTL=1 (the stores with a ttl), AB_IN_FLIGHT (default 1:
// with more, a turn is 4 lifecycles per call in flight, run that many at a time).
import { createRequire } from 'node:module'
import { resolve } from 'node:path'
import { performance } from 'node:perf_hooks'
import { startRedisServer } from '../__test__/helpers/redis-server.mjs'
import { drive } from './lib/measure.mjs'
import { lifecycleOp, makeValue } from './lib/workloads.mjs'
import { openIoredisReference } from './reference-ioredis.mjs'

const require = createRequire(import.meta.url)
const SECONDS = Number(process.env.AB_SECONDS ?? 20)
const ttl = process.env.AB_TTL === '1' ? 3_600_000 : undefined
const IN_FLIGHT = Number(process.env.AB_IN_FLIGHT ?? 1)
const PER_TURN = IN_FLIGHT === 1 ? 1 : 4 * IN_FLIGHT
const BLOCK = IN_FLIGHT === 1 ? 50 : 5
const server = await startRedisServer({ args: ['--appendonly', 'no'] })
const io = await openIoredisReference(server.url)
const value = makeValue(1024)
const entries = [{ name: 'ioredis', store: io.store({ prefix: 'io:', ttl }) }]
const own = []
for (const arg of process.argv.slice(2)) {
  const [name, dir] = arg.split('=')
  const { createRedisStore } = require(resolve(dir, 'index.js'))
  const store = createRedisStore(server.url, { prefix: `${name}:`, ttl })
  own.push(store)
  entries.push({ name, store })
}
for (const e of entries) {
  const lifecycle = lifecycleOp(e.store, e.name, value)
  e.op = IN_FLIGHT === 1 ? lifecycle : () => drive(lifecycle, { concurrency: IN_FLIGHT, maxOps: PER_TURN })
}
for (const e of entries) for (let i = 0; i < Math.ceil(100 / PER_TURN); i++) await e.op()

const blocks = []
const end = performance.now() + SECONDS * 1000
let turn = 0
while (performance.now() < end) {
  const ms = Object.fromEntries(entries.map((e) => [e.name, 0]))
  for (let k = 0; k < BLOCK; k++, turn++) {
    for (let j = 0; j < entries.length; j++) {
      const e = entries[(j + turn) % entries.length]
      const t0 = performance.now()
      await e.op()
      ms[e.name] += performance.now() - t0
    }
  }
  blocks.push(ms)
}
const median = (list) => [...list].sort((a, b) => a - b)[Math.floor(list.length / 2)]
const total = (name) => blocks.reduce((sum, b) => sum + b[name], 0)
const base = entries[1]?.name ?? 'ioredis'
const runtime = typeof Bun !== 'undefined' ? 'bun' : typeof Deno !== 'undefined' ? 'deno' : 'node'
console.log(`${runtime}${ttl ? ', ttl' : ''}, ${IN_FLIGHT} in flight, ${blocks.length} blocks of ${BLOCK} turns of ${PER_TURN} lifecycles:`)
for (const e of entries) {
  const rate = (blocks.length * BLOCK * PER_TURN * 1000) / total(e.name)
  const io = total('ioredis') / total(e.name)
  const ioBlocks = median(blocks.map((b) => b.ioredis / b[e.name]))
  const baseBlocks = median(blocks.map((b) => b[base] / b[e.name]))
  console.log(`  ${e.name}: ${rate.toFixed(1)}/s, ${io.toFixed(3)}x ioredis (blocks ${ioBlocks.toFixed(3)}x), ${baseBlocks.toFixed(3)}x ${base}`)
}
await Promise.all(own.map((s) => s.close()))
await io.close()
await server.stop()
