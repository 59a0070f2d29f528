// The demo (`npm run demo`) is the README's first command: it must run to its end on the
// embedded default and on Redis, crash once, resume, and never re-run a finished step.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { packageRoot } from './helpers/child.mjs'
import { testRedis } from './helpers/redis-server.mjs'

function runDemo({ cwd, env }) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(packageRoot, 'examples', 'order-pipeline.mjs')], {
      cwd,
      env: { ...process.env, DURASTATE_URL: '', REDIS_URL: '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    child.stdout.on('data', (d) => {
      out += d
    })
    child.stderr.on('data', (d) => {
      out += d
    })
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, out })
    })
  })
}

function assertResumed({ code, out }) {
  assert.equal(code, 0, out)
  assert.match(out, /worker #1 died \(SIGKILL\) holding "run step charge-card"/)
  assert.match(out, /worker #2 started/)
  // After the restart, the finished steps come from the store.
  const afterCrash = out.slice(out.indexOf('worker #2 started'))
  assert.match(afterCrash, /run step charge-card\s+memoised: validate, reserve-stock \| RAN charge-card/)
  assert.doesNotMatch(afterCrash, /RAN (validate|reserve-stock)/)
  for (const step of ['validate', 'reserve-stock:warehouse-berlin', 'charge-card', 'send-confirmation', 'ship']) {
    assert.match(out, new RegExp(`\\n  ${step}\\s+1\\s+\\d+`), `${step} did not complete exactly once`)
  }
  assert.match(out, /OK: the crash lost no finished step/)
}

describe('demo', () => {
  let dir
  let redis
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'durastate-demo-'))
    redis = await testRedis()
  })
  after(async () => {
    rmSync(dir, { recursive: true, force: true })
    await redis.release()
  })

  it('runs on the embedded SQLite default, crashes once and resumes', async () => {
    const result = await runDemo({ cwd: dir })
    assertResumed(result)
    assert.match(result.out, /store: +embedded SQLite file/)
    assert.ok(existsSync(join(dir, '.durastate', 'state.db')))
  })

  it('runs the same on Redis with REDIS_URL', async () => {
    const result = await runDemo({ cwd: dir, env: { REDIS_URL: redis.url } })
    assertResumed(result)
    assert.match(result.out, new RegExp(`store: +${redis.url}`))
  })
})
