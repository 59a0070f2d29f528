// The `durastate` CLI, run as a subprocess against real state: executions and steps written
// with createRedisStore / createSqliteStore, KV entries written by the CLI and read back
// with createKvStore, on a throwaway redis-server and on a temp SQLite file.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath, pathToFileURL } from 'node:url'
import Redis from 'ioredis'
import pg from 'pg'
import binding from '../binding.js'
import { createKvStore, createPostgresStore, createRedisStore, createSqliteStore } from '../index.js'
import { testPostgres } from './helpers/postgres-server.mjs'
import { fileFormat } from './helpers/sqlite-file.mjs'
import { freePort, startRedisServer, testRedis } from './helpers/redis-server.mjs'

const cli = fileURLToPath(new URL('../bin/durastate.mjs', import.meta.url))
const HOUR = 3_600_000
const CHARGE = { amount: 4200, currency: 'EUR', note: 'x'.repeat(300) }

/** Runs the CLI with no store URL in the environment unless `env` gives one. */
function durastate(args, { env = {} } = {}) {
  const result = spawnSync(process.execPath, [cli, ...args], {
    encoding: 'utf8',
    timeout: 20_000,
    // (the table of 150,000 steps is some 10 MB)
    maxBuffer: 64 * 1024 * 1024,
    env: { ...process.env, DURASTATE_URL: '', REDIS_URL: '', ...env },
  })
  if (result.error) throw result.error
  return result
}

/** The CLI's stdout, after checking that it exited 0. */
function output(args, options) {
  const result = durastate(args, options)
  assert.equal(result.status, 0, `durastate ${args.join(' ')} exited ${result.status}: ${result.stderr}`)
  return result.stdout
}

/** Asserts the CLI failed with `status` and the one-line error `durastate: ... (code)` or usage. */
function fails(args, status, stderrPattern) {
  const result = durastate(args)
  assert.equal(result.status, status, `durastate ${args.join(' ')}: expected exit ${status}, got ${result.status}\n${result.stdout}${result.stderr}`)
  assert.match(result.stderr, stderrPattern)
  return result
}

/**
 * The rows of an aligned table, as objects keyed by column title. Each cell must start
 * where its title starts (left-aligned) or end where it ends (right-aligned).
 */
function parseTable(text) {
  const cellsOf = (line) => [...line.matchAll(/\S+(?: \S+)*/g)]
  const [header, ...lines] = text.trimEnd().split('\n')
  const columns = cellsOf(header).map((m) => ({ title: m[0], start: m.index, end: m.index + m[0].length }))
  return lines.map((line) => {
    const cells = cellsOf(line)
    assert.equal(cells.length, columns.length, `row "${line}" does not have ${columns.length} cells`)
    return Object.fromEntries(
      cells.map((cell, i) => {
        const { title, start, end } = columns[i]
        assert.ok(cell.index === start || cell.index + cell[0].length === end, `"${cell[0]}" is not aligned under ${title}:\n${text}`)
        return [title, cell[0]]
      }),
    )
  })
}

/** Writes the state every backend's suite inspects, through the public API. */
async function writeState(open) {
  const store = open({ ttl: 2 * HOUR })
  await store.beginExecution('order-1')
  await store.beginExecutionTask('order-1', 'validate')
  await store.commitExecutionTaskResult('order-1', 'validate', { ok: true })
  await store.beginExecutionTask('order-1', 'charge')
  await store.commitExecutionTaskResult('order-1', 'charge', CHARGE)
  await store.beginExecutionTask('order-1', 'ship')
  await store.beginExecution('order-2')
  const noTtl = open({})
  await noTtl.beginExecutionTask('order-0', 'export')
  await noTtl.commitExecutionTaskResult('order-0', 'export', 'done')
  await Promise.all([store.close(), noTtl.close()])
}

const backends = {
  async redis() {
    const redis = await testRedis()
    const prefix = `cli:${randomUUID()}:`
    return {
      url: redis.url,
      prefix,
      open: (options) => createRedisStore(redis.url, { prefix, ...options }),
      env: { REDIS_URL: redis.url },
      release: redis.release,
    }
  },
  async postgres() {
    const postgres = await testPostgres()
    const prefix = `cli:${randomUUID()}:`
    return {
      url: postgres.url,
      prefix,
      open: (options) => createPostgresStore(postgres.url, { prefix, ...options }),
      env: { DATABASE_URL: postgres.url },
      release: postgres.release,
    }
  },
  async sqlite() {
    const dir = mkdtempSync(join(tmpdir(), 'durastate-cli-'))
    const path = join(dir, 'state.db')
    const prefix = 'cli:'
    return {
      url: `sqlite:${path}`,
      prefix,
      open: (options) => createSqliteStore(path, { prefix, ...options }),
      env: { DURASTATE_URL: `sqlite:${path}` },
      release: async () => rmSync(dir, { recursive: true, force: true }),
    }
  },
}

for (const [name, prepare] of Object.entries(backends)) {
  describe(`durastate inspect and kv on ${name}`, { timeout: 120_000 }, () => {
    let backend

    before(async () => {
      backend = await prepare()
      await writeState(backend.open)
    })
    after(() => backend?.release())

    it("a reset of an execution's last steps drops their expiries, as Redis drops an emptied hash's TTL", async () => {
      // A prefix of its own: the listings below see only writeState's executions.
      const prefix = `reset:${randomUUID()}:`
      const withTtl = backend.open({ prefix, ttl: HOUR })
      await withTtl.beginExecutionTask('reset-ttl', 'a')
      await withTtl.commitExecutionTaskResult('reset-ttl', 'a', 1)
      await withTtl.beginExecutionTask('reset-ttl', 'b')
      await withTtl.close()
      const inspector = binding.createInspector(backend.url)
      try {
        const key = `${prefix}reset-ttl`
        await inspector.resetSteps(key, ['a', 'b'])
        const gone = await inspector.execution(key)
        assert.deepEqual([gone.claimsTtl, gone.resultsTtl], [-2, -2])
        // A store without a TTL writes again: its marks and results never expire.
        const plain = backend.open({ prefix })
        await plain.beginExecutionTask('reset-ttl', 'c')
        await plain.commitExecutionTaskResult('reset-ttl', 'd', 2)
        await plain.close()
        const again = await inspector.execution(key)
        assert.deepEqual([again.claimsTtl, again.resultsTtl], [-1, -1])
      } finally {
        inspector.close()
      }
    })

    it('lists executions with their step counts, aligned, from the URL in the environment', () => {
      const text = output(['inspect', '--prefix', backend.prefix], { env: backend.env })
      const [table, footer] = text.split('\n\n')
      const rows = parseTable(table)
      assert.deepEqual(
        rows.map((r) => r.EXECUTION),
        ['order-0', 'order-1', 'order-2'],
      )
      const [order0, order1, order2] = rows
      assert.deepEqual([order1.STATE, order1['STEPS IN PROGRESS'], order1['STEPS DONE']], ['in progress', '1', '2'])
      assert.match(order1['EXPIRES IN'], /^(2\.0|1\.9) h$/)
      assert.equal(order1.RESULTS, `${Buffer.byteLength(JSON.stringify(CHARGE)) + Buffer.byteLength('{"ok":true}')} B`)
      assert.deepEqual([order2.STATE, order2['STEPS IN PROGRESS'], order2['STEPS DONE'], order2.RESULTS], ['in progress', '0', '0', '0 B'])
      assert.deepEqual([order0.STATE, order0['STEPS DONE'], order0['EXPIRES IN']], ['no marker', '1', '-'])
      assert.equal(footer.trim(), `3 executions, 2 in progress (prefix "${backend.prefix}")`)
    })

    it('lists executions as JSON with --json', () => {
      const { prefix, executions } = JSON.parse(output(['inspect', backend.url, '--prefix', backend.prefix, '--json']))
      assert.equal(prefix, backend.prefix)
      const order1 = executions.find((e) => e.id === 'order-1')
      assert.ok(order1.expiresIn > HOUR && order1.expiresIn <= 2 * HOUR)
      assert.deepEqual(
        { ...order1, expiresIn: 0 },
        {
          id: 'order-1',
          inProgress: true,
          stepsInProgress: 1,
          stepsDone: 2,
          resultBytes: 11 + JSON.stringify(CHARGE).length,
          expiresIn: 0,
        },
      )
    })

    it('shows the steps of one execution: state, size, TTL and a truncated preview', () => {
      const [heading, table] = output(['inspect', backend.url, 'order-1', '--prefix', backend.prefix]).split('\n\n')
      assert.match(heading, /^execution order-1: in progress, expires in (2\.0|1\.9) h$/)
      const steps = parseTable(table)
      assert.deepEqual(
        steps.map((s) => [s.STEP, s.STATE, s.SIZE]),
        [
          ['charge', 'done', `${JSON.stringify(CHARGE).length} B`],
          ['ship', 'in progress', '-'],
          ['validate', 'done', '11 B'],
        ],
      )
      assert.equal(steps[2].VALUE, '{"ok":true}')
      assert.equal(steps[0].VALUE, `${JSON.stringify(CHARGE).slice(0, 47)}…`)
      assert.match(steps[1]['EXPIRES IN'], /^(2\.0|1\.9) h$/)
    })

    it('shows the full stored JSON of each step with --json, and "no expiry" for keys without a TTL', () => {
      const detail = JSON.parse(output(['inspect', backend.url, 'order-1', '--prefix', backend.prefix, '--json']))
      assert.equal(detail.inProgress, true)
      assert.deepEqual(
        detail.steps.map((s) => [s.id, s.state, s.size, s.json]),
        [
          ['charge', 'done', JSON.stringify(CHARGE).length, JSON.stringify(CHARGE)],
          ['ship', 'in progress', null, null],
          ['validate', 'done', 11, '{"ok":true}'],
        ],
      )
      const [heading, table] = output(['inspect', backend.url, 'order-0', '--prefix', backend.prefix]).split('\n\n')
      assert.equal(heading, 'execution order-0: not in progress (no execution key)')
      assert.deepEqual(parseTable(table), [{ STEP: 'export', STATE: 'done', SIZE: '6 B', 'EXPIRES IN': 'no expiry', VALUE: '"done"' }])
    })

    it('says when an execution is not there (exit 1)', () => {
      fails(['inspect', backend.url, 'nope', '--prefix', backend.prefix], 1, /^durastate: no execution "nope" under prefix ".*" \(NOT_FOUND\)\n$/)
    })

    it('matches the prefix literally, glob characters included', async () => {
      const globby = `${backend.prefix}[a]*?\\`
      const lookalike = `${backend.prefix}a:`
      for (const [prefix, id] of [
        [globby, 'exact'],
        [lookalike, 'lookalike'],
      ]) {
        const store =
          name === 'redis'
            ? createRedisStore(backend.url, { prefix })
            : name === 'postgres'
              ? createPostgresStore(backend.url, { prefix })
              : createSqliteStore(backend.url.slice('sqlite:'.length), { prefix })
        await store.beginExecution(id)
        await store.close()
      }
      const { executions } = JSON.parse(output(['inspect', backend.url, '--prefix', globby, '--json']))
      assert.deepEqual(
        executions.map((e) => e.id),
        ['exact'],
      )
    })

    it('sets, gets, lists and deletes KV entries, as createKvStore reads them', async () => {
      const prefix = `${backend.prefix}kv:`
      const kvArgs = (...args) => [...args, backend.url, '--prefix', prefix]
      assert.match(output(['kv', 'set', ...kvArgs('default', 'greeting', '{"text":"hi"}')]), /^stored "greeting" in mount "default"/)
      output(['kv', 'set', ...kvArgs('default', 'name', 'Alice')])
      const kv = createKvStore(backend.url, { prefix })
      try {
        assert.deepEqual(await kv.get('default', 'greeting'), { text: 'hi' })
        assert.equal(await kv.get('default', 'name'), 'Alice')
      } finally {
        await kv.close()
      }
      assert.equal(output(['kv', 'get', ...kvArgs('default', 'greeting'), '--json']), '{"text":"hi"}\n')
      assert.equal(output(['kv', 'keys', ...kvArgs('default')]), 'greeting\nname\n')
      assert.deepEqual(JSON.parse(output(['kv', 'keys', 'default', 'gr*', backend.url, '--prefix', prefix, '--json'])), ['greeting'])
      assert.match(output(['kv', 'delete', ...kvArgs('default', 'greeting')]), /^deleted "greeting"/)
      assert.match(output(['kv', 'delete', ...kvArgs('default', 'greeting')]), /was not stored/)
      fails(['kv', 'get', ...kvArgs('default', 'greeting')], 1, /^durastate: mount "default" has no key "greeting" \(NOT_FOUND\)\n$/)
    })
  })
}

describe('durastate kv without --prefix uses the prefixes createKvStore gives mounts', { timeout: 60_000 }, () => {
  let dir
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'durastate-cli-kv-'))
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  it('"kv:" for the mount "default", "<mount>:" for any other', async () => {
    const url = `sqlite:${join(dir, 'kv.db')}`
    output(['kv', 'set', 'default', 'count', '3', url])
    output(['kv', 'set', 'user', 'name', '"Bob"', url])
    const plain = createKvStore(url)
    const mounted = createKvStore(url, { mounts: { user: {} } })
    try {
      assert.equal(await plain.get('default', 'count'), 3)
      assert.equal(await mounted.get('user', 'name'), 'Bob')
    } finally {
      await Promise.all([plain.close(), mounted.close()])
    }
  })
})

describe('durastate reads a SQLite file as the library names it, and writes nothing to read it', { timeout: 60_000 }, () => {
  let dir
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'durastate-cli-file-'))
    for (const name of ['my db.db', 's.db']) {
      const store = createSqliteStore(join(dir, name))
      await store.beginExecution('order-1')
      await store.close()
    }
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  it('takes the file: URLs the library takes: percent-escapes decoded, file://localhost/', () => {
    const ids = (target) => JSON.parse(output(['inspect', target, '--json'])).executions.map((e) => e.id)
    assert.deepEqual(ids(pathToFileURL(join(dir, 'my db.db')).href), ['order-1'])
    assert.deepEqual(ids(`file:${join(dir, 'my%20db.db')}`), ['order-1'])
    assert.deepEqual(ids(`file://localhost${join(dir, 's.db')}`), ['order-1'])
    assert.match(output(['kv', 'keys', 'default', `file://localhost${join(dir, 's.db')}`]), /^$/)
  })

  it('a file: URL naming a missing file fails, even when a file is named as the URL is written, and creates nothing', () => {
    copyFileSync(join(dir, 's.db'), join(dir, 'lit%20x.db'))
    for (const args of [
      ['inspect', `file:${join(dir, 'lit%20x.db')}`],
      ['kv', 'get', 'default', 'k', `file:${join(dir, 'lit%20x.db')}`],
      // the UI fails at start, before it serves a page
      ['ui', `file:${join(dir, 'lit%20x.db')}`, '--port', '0'],
    ]) {
      fails(args, 1, new RegExp(`^durastate: no SQLite file at ${join(dir, 'lit x.db')} \\(UNAVAILABLE\\)\n$`))
    }
    assert.equal(existsSync(join(dir, 'lit x.db')), false)
    fails(['inspect', 'sqlite:/nonexistent/dir/state.db'], 1, /^durastate: no SQLite file at \/nonexistent\/dir\/state.db \(UNAVAILABLE\)\n$/)
    assert.equal(existsSync('/nonexistent'), false)
  })

  it('an empty (0-byte) file gets no tables from a read: it holds no store (UNAVAILABLE)', () => {
    const empty = join(dir, 'empty.db')
    writeFileSync(empty, '')
    for (const args of [
      ['inspect', `sqlite:${empty}`],
      ['kv', 'get', 'default', 'x', `sqlite:${empty}`],
      ['kv', 'keys', 'default', `sqlite:${empty}`],
      ['dispose', `sqlite:${empty}`, 'order-1'],
    ]) {
      fails(args, 1, /^durastate: cannot open SQLite file .*empty\.db: the file holds no durastate store \(no tables\); nothing was created \(UNAVAILABLE\)\n$/)
    }
    assert.equal(statSync(empty).size, 0)
    // kv set creates the store, as it creates a file.
    output(['kv', 'set', 'default', 'x', '1', `sqlite:${empty}`])
    assert.equal(output(['kv', 'get', 'default', 'x', `sqlite:${empty}`]), '1\n')
  })

  it('a file of an older format is read by no command, and left as it is (no migration)', () => {
    for (const [fixture, version] of [
      ['v0.1.0.db', 1],
      ['v2.db', 2],
    ]) {
      const copy = join(dir, `old-${version}.db`)
      copyFileSync(fileURLToPath(new URL(`./fixtures/${fixture}`, import.meta.url)), copy)
      const before = fileFormat(copy)
      assert.equal(before.version, version)
      for (const args of [
        ['inspect', `sqlite:${copy}`],
        ['kv', 'get', 'default', 'x', `sqlite:${copy}`],
        ['reset', `sqlite:${copy}`, 'order-1', 'a'],
      ]) {
        fails(
          args,
          1,
          new RegExp(
            `^durastate: cannot open SQLite file .*old-${version}\\.db: the file is in durastate's format ${version}.*createSqliteStore.*\\(UNAVAILABLE\\)\n$`,
          ),
        )
      }
      assert.deepEqual(fileFormat(copy), before)
    }
  })
})

describe('durastate kv on a mount named default that the app declares (prefix "default:")', { timeout: 60_000 }, () => {
  let dir
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'durastate-cli-kv-declared-'))
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  it('finds nothing under "kv:" and says to pass --prefix default:, which finds the entry', async () => {
    const url = `sqlite:${join(dir, 'kv.db')}`
    const app = createKvStore(url, { mounts: { default: {} } })
    try {
      assert.equal(app.mounts()[0].prefix, 'default:')
      await app.set('default', 'theme', 'dark')
    } finally {
      await app.close()
    }
    const hint = /read under prefix "kv:".*declares.*"default:" \(--prefix default:\)/
    fails(['kv', 'get', 'default', 'theme', url], 1, new RegExp(`^durastate: mount "default" has no key "theme"; ${hint.source} \\(NOT_FOUND\\)\n$`))
    const keys = durastate(['kv', 'keys', 'default', url, '--json'])
    assert.deepEqual([keys.status, keys.stdout], [0, '[]\n'])
    assert.match(keys.stderr, hint)
    assert.match(output(['kv', 'delete', 'default', 'theme', url]), hint)
    assert.equal(output(['kv', 'get', 'default', 'theme', url, '--prefix', 'default:']), '"dark"\n')
    assert.deepEqual(JSON.parse(output(['kv', 'keys', 'default', url, '--prefix', 'default:', '--json'])), ['theme'])
    assert.match(
      output(['--help']),
      /"kv:" for the mount "default",\s+as createKvStore's implicit default mount; an app that declares a mount named\s+default stores it under "default:": pass --prefix default:/,
    )
  })
})

describe('durastate arguments and errors', { timeout: 60_000 }, () => {
  const usage = /usage:\n {2}durastate inspect/

  it('prints the usage with --help (exit 0)', () => {
    const help = output(['--help'])
    assert.match(help, /^usage:/)
    // The TLS flags are refused with every sslmode that may connect in plain text.
    assert.match(help, /refused with sslmode=disable, allow or prefer/)
  })

  it('prints the usage to stderr and exits 2 on bad arguments', () => {
    for (const args of [[], ['frobnicate'], ['inspect', '--bogus'], ['inspect', 'a', 'b', 'c'], ['kv', 'get', 'default'], ['kv', 'rename', 'default', 'a']]) {
      const result = fails(args, 2, usage)
      assert.equal(result.stdout, '')
    }
  })

  it('a usage error never repeats an argument: an option, command or kv action is named only when a plain word', () => {
    const cases = [
      // parseArgs quotes the option in its message, where a password with a raw "/", space or
      // '"' is not redacted, and escape sequences stand raw
      [['inspect', '--redis://u:s3cret/x@h'], /^durastate: unknown option \(not repeated here\); an argument that starts with "-" goes after --\n/],
      [['inspect', '--postgres://u:s3cret x@h/db'], /^durastate: unknown option \(not repeated here\)/],
      [['inspect', '--x\u001b[2Js3cret'], /^durastate: unknown option \(not repeated here\)/],
      [['inspect', '-\u009bs3cret'], /^durastate: unknown option \(not repeated here\)/],
      [['bo\u001b]0;s3cret\u0007gus'], /^durastate: unknown command \(not repeated here\)\n/],
      [['redis://u:s3cret"/x@h'], /^durastate: unknown command \(not repeated here\)\n/],
      [['kv', 'ren\u009bs3cret', 'default', 'a'], /^durastate: unknown kv action \(not repeated here\): give get, set, keys or delete\n/],
      [['s3cret\u001b', '--port', '5'], /^durastate: --port applies to ui only\n/],
      [['ui', '--port', 's3cret'], /^durastate: --port must be a port number \(0-65535\)\n/],
      [['kv', 'set', 'c', 'k', '1', 'sqlite:x.db', '--ttl', 's3cret'], /^durastate: --ttl must be a time to live in ms, a positive integer\n/],
      [['inspect', 'postgres://h/db', '--schema', 'pg_s3cret'], /^durastate: --schema must be 1 to 63 bytes/],
      [['inspect', '--json=s3cret'], /^durastate: --json takes no value\n/],
      // plain words are named
      [['inspect', '--bogus=s3cret'], /^durastate: unknown option "--bogus"; an argument that starts with "-" goes after --\n/],
      [['inspect', '-x'], /^durastate: unknown option "-x"/],
      [['inspect', '--prefix'], /^durastate: --prefix needs a value \(--prefix=<value> for one that starts with "-"\)\n/],
      [['frobnicate'], /^durastate: unknown command "frobnicate"\n/],
      [['kv', 'rename', 'default', 'a'], /^durastate: unknown kv action "rename"/],
      [['dispose', '--port', '5'], /^durastate: --port applies to ui only, not to dispose\n/],
    ]
    for (const [args, message] of cases) {
      const result = fails(args, 2, message)
      assert.equal(result.stdout, '')
      assert.doesNotMatch(result.stderr, /s3cret/, JSON.stringify(args))
      // oxlint-disable-next-line no-control-regex -- no raw control character may reach the terminal
      assert.doesNotMatch(result.stderr, /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/, JSON.stringify(args))
    }
  })

  it('refuses a URL of another scheme, naming the ones it takes and not the URL (exit 2)', () => {
    for (const args of [
      ['inspect', 'foo://u:s3cret@h/x', 'e1'],
      ['kv', 'get', 'default', 'k', 'mysql://u:s3cret@h/db'],
    ]) {
      const result = durastate(args)
      assert.equal(result.status, 2, result.stdout + result.stderr)
      assert.match(result.stderr, /^durastate: unsupported store URL scheme "(foo|mysql):": give redis:\/\/, .*sqlite:<path> or file:<path>\n/)
      assert.doesNotMatch(result.stderr, /s3cret|memory:/)
    }
    const fromEnv = durastate(['inspect'], { env: { DURASTATE_URL: 'db.sqlite' } })
    assert.equal(fromEnv.status, 2)
    assert.match(fromEnv.stderr, /^durastate: a store URL needs a scheme/)
  })

  it('refuses a Redis URL whose password holds a raw "@" then "?" or "/", never printing part of it (library and CLI)', () => {
    // url::Url ends the user information at the first "/" or "?"; messages hide it up to the
    // last "@": the part between was printed as an "unknown parameter".
    const urls = [
      'redis://u:pa@ss?SECRETtok3n@127.0.0.1:6379/',
      'rediss://u:pa@ss?SECRETtok3n@127.0.0.1:6379/',
      'redis://u:pa@ss/0?SECRET=x@127.0.0.1:6379/',
      'redis+unix://u:pa@ss?SECRET@/tmp/s.sock',
      'redis+sentinel://u:pa@h:1/m?SECRET@127.0.0.1:1/m',
      // The secret after the last "@": a password given as a parameter, holding a raw "@".
      'redis://10.0.0.1:6379/0?password=hunter2@SECRET-Tail',
      'redis+unix:///tmp/r.sock?pass=pa@ssSECRET-Tail',
      'redis+sentinel://10.0.0.1:26379/main?sentinelPassword=pa@ssSECRET-Tail',
    ]
    const secretFree = (text) => !/SECRET|pa@ss|hunter2/.test(text)
    for (const url of urls) {
      for (const create of [
        () => createRedisStore(url),
        () => createKvStore(url),
        () => createRedisStore({ cluster: [url.replace(/^\w+(\+\w+)?:/, 'redis:')] }),
      ]) {
        assert.throws(create, (err) => err.code === 'INVALID_INPUT' && /must be percent-encoded/.test(err.message) && secretFree(err.message), url)
      }
      for (const args of [
        ['inspect', url, 'e1'],
        ['kv', 'get', 'default', 'k', url],
      ]) {
        const result = durastate(args)
        assert.notEqual(result.status, 0, result.stdout + result.stderr)
        assert.match(result.stderr, /must be percent-encoded/)
        assert.ok(secretFree(result.stdout + result.stderr), result.stderr)
      }
    }
  })

  it('refuses memory: with the reason (exit 2)', () => {
    fails(['inspect', 'memory:'], 2, /^durastate: memory: is a store inside one process; .*empty store/)
  })

  it('without a binary: --help prints the usage, and each command prints one line "durastate: no durastate binary loads on ... (UNAVAILABLE)"', () => {
    // The package's JS files without a .node next to them (as with optional dependencies left out).
    const dir = mkdtempSync(join(tmpdir(), 'durastate-cli-nobinary-'))
    try {
      const root = fileURLToPath(new URL('..', import.meta.url))
      for (const file of [
        'package.json',
        'index.js',
        'binding.js',
        'platform.js',
        'env.js',
        'transport.js',
        'bin/durastate.mjs',
        'bin/executions.mjs',
        'bin/ui.mjs',
      ]) {
        mkdirSync(dirname(join(dir, file)), { recursive: true })
        copyFileSync(join(root, file), join(dir, file))
      }
      const run = (args) =>
        spawnSync(process.execPath, [join(dir, 'bin', 'durastate.mjs'), ...args], {
          encoding: 'utf8',
          timeout: 20_000,
          env: { ...process.env, DURASTATE_URL: '', REDIS_URL: '', NAPI_RS_NATIVE_LIBRARY_PATH: '' },
        })
      const help = run(['--help'])
      assert.equal(help.status, 0, help.stderr)
      assert.match(help.stdout, /^usage:/)
      assert.equal(help.stderr, '')
      const file = join(dir, 'state.db')
      for (const args of [
        ['inspect', `sqlite:${file}`],
        ['inspect', `sqlite:${file}`, 'e1', '--json'],
        ['kv', 'get', 'default', 'k', `sqlite:${file}`],
        ['kv', 'set', 'default', 'k', '1', `sqlite:${file}`],
        ['reset', `sqlite:${file}`, 'e1', 't1'],
        ['dispose', `sqlite:${file}`, 'e1'],
        ['ui', `sqlite:${file}`, '--port', '0'],
      ]) {
        const result = run(args)
        assert.equal(result.status, 1, `durastate ${args.join(' ')}: ${result.stdout}${result.stderr}`)
        assert.match(result.stderr, /^durastate: no durastate binary loads on [\w-]+\. .+ \(UNAVAILABLE\)\n$/, `durastate ${args.join(' ')}`)
      }
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('reports an unreachable server as "durastate: <message> (<code>)" (exit 1)', async () => {
    const port = await freePort()
    fails(['inspect', `redis://127.0.0.1:${port}`], 1, /^durastate: .+ \(UNAVAILABLE\)\n$/)
  })
})

describe('durastate: what the CLI takes and prints', { timeout: 120_000 }, () => {
  let dir
  let path
  let url
  let redis
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'durastate-cli-fixes-'))
    path = join(dir, 'state.db')
    url = `sqlite:${path}`
    // A server of its own: these tests list a whole database (prefix "").
    const server = await startRedisServer()
    redis = { url: server.url, release: () => server.stop() }
  })
  after(async () => {
    rmSync(dir, { recursive: true, force: true })
    await redis?.release()
  })

  for (const name of ['sqlite', 'redis']) {
    it(`a KV value true under "kv:" is no execution: inspect skips it, dispose refuses it unless --force (${name})`, async () => {
      const storeUrl = name === 'sqlite' ? url : redis.url
      const id = randomUUID()
      const store = name === 'sqlite' ? createSqliteStore(path) : createRedisStore(storeUrl)
      const kv = createKvStore(storeUrl)
      try {
        await store.beginExecution(`order-${id}`)
        await kv.set('default', `maintenance-${id}`, true)
        const ids = JSON.parse(output(['inspect', storeUrl, '--json'])).executions.map((e) => e.id)
        assert.ok(ids.includes(`order-${id}`))
        assert.ok(!ids.includes(`kv:maintenance-${id}`), 'the KV entry is listed as an execution')
        const refused = durastate(['dispose', storeUrl, `kv:maintenance-${id}`])
        assert.equal(refused.status, 1)
        assert.match(refused.stderr, /taken for a KV entry .*--force.*\(NOT_FOUND\)\n$/)
        assert.equal(await kv.get('default', `maintenance-${id}`), true)
        assert.match(output(['dispose', storeUrl, `kv:maintenance-${id}`, '--force']), /disposed execution/)
        assert.equal(await kv.has('default', `maintenance-${id}`), false)
        output(['dispose', storeUrl, `order-${id}`])
      } finally {
        await Promise.all([store.close(), kv.close()])
      }
    })
  }

  it("lists a database with other programs' hashes, lists and sets: skips those keys rather than failing (redis)", async () => {
    const store = createRedisStore(redis.url)
    const id = randomUUID()
    try {
      await store.beginExecution(`order-${id}`)
      await store.commitExecutionTaskResult(`order-${id}`, 'charge', CHARGE)
      // Another program's data under the same (empty) prefix: keys of every other type.
      const admin = new Redis(redis.url)
      await admin.hset(`session-${id}`, 'user', 'u1')
      await admin.rpush(`jobs-${id}`, 'a')
      await admin.sadd(`tags-${id}`, 'x')
      await admin.set(`odd-${id}:transactions`, 'a string')
      await admin.quit()
      const listed = JSON.parse(output(['inspect', redis.url, '--json'])).executions.map((e) => e.id)
      assert.ok(listed.includes(`order-${id}`), 'the execution is listed')
      for (const other of [`session-${id}`, `jobs-${id}`, `tags-${id}`, `odd-${id}`]) assert.ok(!listed.includes(other), `${other} is listed`)
      assert.match(output(['inspect', redis.url]), new RegExp(`order-${id}`))
      // Asked for by name, another program's key says what it is.
      fails(['inspect', redis.url, `session-${id}`], 1, /WRONG_TYPE/)
    } finally {
      await store.close()
    }
  })

  it("never prints a URL's secrets in an error or a usage message", () => {
    const cluster = 'rediss+cluster://u:s3cret@127.0.0.1:1,127.0.0.1:2?sentinelPassword=s3cret2'
    const invalid = durastate(['inspect', cluster])
    assert.equal(invalid.status, 1)
    assert.doesNotMatch(invalid.stderr, /s3cret/)
    assert.match(invalid.stderr, /sentinelPassword=\*\*\*/)
    // a usage error counts the arguments, never repeats them: a password with a raw space or
    // "/" is one the addon takes as such, which no pattern over a message could bound
    for (const given of ['redis+sentinel://u:s3cret@h1,h2/m', 'redis://:s3cret pass@127.0.0.1:1', 'postgres://app:s3cret/x@db.internal/app']) {
      const usage = durastate(['inspect', given, 'a', 'b'])
      assert.equal(usage.status, 2)
      assert.match(usage.stderr, /^durastate: too many arguments \(3 given\)/)
      assert.doesNotMatch(usage.stderr, /s3cret/)
    }
    // the addon's own messages, for a password holding a raw space or "/" (read up to the last "@")
    for (const given of [
      'redis://:s3cret pass@127.0.0.1:1/0',
      'postgres://app:s3cret/x@127.0.0.1:1/app',
      'postgres://app@127.0.0.1:1/app?pass%77ord=s3cret&port=x',
      // a raw "@" in the password: libpq would take its tail for the host
      'postgres://app:s3@s3cret@127.0.0.1:1/app',
      'redis://u:s3@s3/cret@127.0.0.1:1/0',
    ]) {
      const failed = durastate(['inspect', given])
      assert.equal(failed.status, 1, failed.stderr)
      assert.doesNotMatch(failed.stderr, /s3cret/)
    }
  })

  it('echoes a long key (120,000 characters, "://" in it) quickly, a password in it hidden', () => {
    // (an argument is at most 128 KiB on Linux) The former redaction took over a minute here.
    const key = `${'a'.repeat(60_000)}://${'b'.repeat(60_000)}`
    const started = Date.now()
    assert.match(output(['kv', 'set', 'long', key, '1', url]), /^stored "a{60000}:\/\/b{60000}" in mount "long"/)
    assert.match(output(['kv', 'delete', 'long', key, url]), /^deleted "a{60000}:\/\/b{60000}" from mount "long"\n$/)
    const secret = `redis://app:${'s3cret/ @'.repeat(10_000)}x@host`
    const stored = output(['kv', 'set', 'long', secret, '1', url])
    assert.match(stored, /^stored "redis:\/\/app:\*\*\*@host" in mount "long"/)
    assert.doesNotMatch(stored, /s3cret/)
    assert.match(output(['kv', 'delete', 'long', secret, url]), /^deleted "redis:\/\/app:\*\*\*@host" from mount "long"\n$/)
    assert.ok(Date.now() - started < 15_000, `took ${Date.now() - started} ms`)
  })

  it('takes an id or key that is a store-scheme URL without user information from the environment (only a URL with "@" is refused)', () => {
    const env = { env: { DURASTATE_URL: url } }
    assert.match(output(['kv', 'set', 'urls', 'file:///home/me/report.pdf', '"cached"'], env), /^stored "file:\/\/\/home\/me\/report\.pdf" in mount "urls"/)
    assert.equal(output(['kv', 'get', 'urls', 'file:///home/me/report.pdf'], env), '"cached"\n')
    output(['kv', 'set', 'urls', 'redis://cache-key/1', '1'], env)
    assert.match(output(['kv', 'delete', 'urls', 'redis://cache-key/1'], env), /^deleted "redis:\/\/cache-key\/1" from mount "urls"\n$/)
    // Not stored: dispose says so (exit 1, NOT_FOUND), not a usage error.
    const disposed = durastate(['dispose', 'postgres://job/42'], env)
    assert.equal(disposed.status, 1, disposed.stdout + disposed.stderr)
    assert.match(disposed.stderr, /\(NOT_FOUND\)\n$/)
    // With user information, it is refused, not repeated.
    for (const args of [
      ['kv', 'set', 'urls', 'redis://u:pw@h', '1'],
      ['kv', 'get', 'urls', 'redis://u:pw@h'],
      ['dispose', 'postgres://u:pw@h/db'],
    ]) {
      const result = durastate(args, env)
      assert.equal(result.status, 2, `${args.join(' ')}: ${result.stdout}${result.stderr}`)
      assert.match(result.stderr, /^durastate: an argument taken as an id, key or value looks like a store URL with a user name or password/)
      assert.doesNotMatch(result.stdout + result.stderr, /pw/)
    }
  })

  it('refuses a store URL given where the id or key goes (the store from the environment), never printing its password', () => {
    output(['kv', 'set', 'default', 'seed', '1', url])
    for (const args of [
      ['dispose', 'redis://app:s3cret/1234@127.0.0.1:6379'],
      ['dispose', 'postgres://app:s3cret 1234@127.0.0.1:5432/app'],
      ['reset', 'redis://app:s3cret/1234@127.0.0.1:6379', 'order-1'],
      ['reset', 'order-1', 'redis://app:s3cret/1234@127.0.0.1:6379'],
      ['kv', 'delete', 'default', 'redis://app:s3cret@127.0.0.1:6379'],
      ['kv', 'get', 'default', 'rediss://app:s3cret/x@127.0.0.1:6379'],
      ['kv', 'set', 'default', 'redis://app:s3cret@127.0.0.1:6379', '1'],
      // The value left out: the URL would be stored as the value, password and all.
      ['kv', 'set', 'default', 'k', 'redis://app:s3cret@127.0.0.1:6379'],
    ]) {
      const result = durastate(args, { env: { DURASTATE_URL: url } })
      assert.equal(result.status, 2, `${args[0]}: ${result.stdout}${result.stderr}`)
      assert.match(result.stderr, /^durastate: an argument taken as an id, key or value looks like a store URL/)
      assert.doesNotMatch(result.stdout + result.stderr, /s3cret/)
    }
    // Given with a URL, such an id or key is taken as one, and every line echoing it hides
    // the password (up to the last "@": a raw "/" or space in it included).
    const key = 'redis://app:s3cret/1 2@127.0.0.1:6379'
    for (const [args, expected] of [
      [['kv', 'set', 'default', key, '1', url], /^stored "redis:\/\/app:\*\*\*@127\.0\.0\.1:6379" in mount "default" \(key "kv:redis:\/\/app:\*\*\*@127/],
      [['kv', 'delete', 'default', key, url], /^deleted "redis:\/\/app:\*\*\*@127\.0\.0\.1:6379" from mount "default"\n$/],
      [['kv', 'delete', 'default', key, url], /^"redis:\/\/app:\*\*\*@127\.0\.0\.1:6379" was not stored in mount "default"[;\n]/],
    ]) {
      const result = durastate(args)
      assert.equal(result.status, 0, result.stderr)
      assert.match(result.stdout, expected)
    }
    for (const args of [
      ['kv', 'get', 'default', key, url],
      ['dispose', url, key],
      ['reset', url, key, 'step'],
      ['inspect', url, 'postgres://app:s3cret 1234@127.0.0.1:5432/app'],
    ]) {
      const result = durastate(args)
      assert.equal(result.status, 1, result.stderr)
      assert.match(result.stderr, /:\*\*\*@127\.0\.0\.1:(6379|5432).*\(NOT_FOUND\)\n$/)
      assert.doesNotMatch(result.stderr, /s3cret/)
    }
  })

  it('kv get prints the stored JSON text and kv set stores the JSON text given, digits as they are', async () => {
    const stored = '{"id":12345678901234567890,"x":1e400,"amount":1.10}'
    output(['kv', 'set', 'default', 'big', stored, url])
    output(['kv', 'set', 'default', 'n', '9007199254740993', url])
    const native = binding.createKvStore(url, {}, [{ name: 'default', prefix: 'kv:' }])
    try {
      assert.equal(await native.getOr('default', 'big'), stored)
      assert.equal(await native.getOr('default', 'n'), '9007199254740993')
    } finally {
      native.close()
    }
    assert.equal(output(['kv', 'get', 'default', 'big', url, '--json']), `${stored}\n`)
    assert.equal(output(['kv', 'get', 'default', 'big', url]), '{\n  "id": 12345678901234567890,\n  "x": 1e400,\n  "amount": 1.10\n}\n')
    assert.equal(output(['kv', 'get', 'default', 'n', url]), '9007199254740993\n')
    output(['kv', 'set', 'default', 'word', 'hello', url])
    assert.equal(output(['kv', 'get', 'default', 'word', url, '--json']), '"hello"\n')
  })

  it('takes a lone argument for the pattern or the id unless it can only be a URL', () => {
    const env = { DURASTATE_URL: url }
    for (const key of ['file:report.pdf', 'redis:conf', 'memory:notes']) output(['kv', 'set', 'cache', key, '1'], { env })
    assert.equal(output(['kv', 'keys', 'cache', 'file:*'], { env }), 'file:report.pdf\n')
    assert.equal(output(['kv', 'keys', 'cache', 'redis:*'], { env }), 'redis:conf\n')
    assert.equal(output(['kv', 'keys', 'cache', 'memory:*'], { env }), 'memory:notes\n')
    assert.equal(output(['kv', 'keys', 'cache', `sqlite:${path}`]), 'file:report.pdf\nmemory:notes\nredis:conf\n')
    const id = durastate(['inspect', 'file:report-42'], { env })
    assert.equal(id.status, 1)
    assert.match(id.stderr, /^durastate: no execution "file:report-42" under prefix "" \(NOT_FOUND\)\n$/)
  })

  it('escapes control characters of ids and step names in the tables', async () => {
    const store = createSqliteStore(path, { prefix: 'ctl:' })
    await store.commitExecutionTaskResult('evil\n\u001b[31mred', 'step\tone\u009b', { s: 'a\u007fb' })
    await store.close()
    const list = output(['inspect', url, '--prefix', 'ctl:'])
    assert.match(list, /^evil\\n\\u001b\[31mred {2}/m)
    const detail = output(['inspect', url, 'evil\n\u001b[31mred', '--prefix', 'ctl:'])
    assert.match(detail, /^execution evil\\n\\u001b\[31mred: /)
    assert.match(detail, /^step\\tone\\u009b {2}done .*\{"s":"a\\u007fb"\}$/m)
    // oxlint-disable-next-line no-control-regex -- no raw control character may reach the terminal
    for (const text of [list, detail]) assert.doesNotMatch(text, /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/)
  })

  it('escapes C1 controls and bidi overrides in every --json output (inspect, inspect <id>, kv keys), keeping the JSON value', async () => {
    const id = 'c1\u009b31mred\u202eevil'
    const value = { s: 'v\u009b2J\u202e' }
    const store = createSqliteStore(path, { prefix: 'c1json:' })
    const kv = createKvStore(url, { mounts: { c1keys: {} } })
    try {
      await store.beginExecution(id)
      await store.commitExecutionTaskResult(id, 'step\u009bone\u2066', value)
      await kv.set('c1keys', 'k\u009b2J\u202e', 1)
    } finally {
      await Promise.all([store.close(), kv.close()])
    }
    const raw = /[\u0080-\u009f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/
    const list = output(['inspect', url, '--prefix', 'c1json:', '--json'])
    assert.doesNotMatch(list, raw)
    assert.deepEqual(
      JSON.parse(list).executions.map((e) => e.id),
      [id],
    )
    const detail = output(['inspect', url, id, '--prefix', 'c1json:', '--json'])
    assert.doesNotMatch(detail, raw)
    const parsed = JSON.parse(detail)
    assert.equal(parsed.id, id)
    assert.deepEqual(
      parsed.steps.map((s) => [s.id, JSON.parse(s.json)]),
      [['step\u009bone\u2066', value]],
    )
    const keys = output(['kv', 'keys', 'c1keys', url, '--json'])
    assert.doesNotMatch(keys, raw)
    assert.deepEqual(JSON.parse(keys), ['k\u009b2J\u202e'])
  })

  it('prints the tables of 150,000 executions and of an execution with 150,000 steps (no stack overflow)', async () => {
    // V8 (Node.js, Deno) throws past about 120,000 arguments to one call: the column widths
    // were a Math.max(...) over every row.
    const big = `sqlite:${join(dir, 'big.db')}`
    const count = 150_000
    const inBatches = async (fn) => {
      for (let i = 0; i < count; i += 5000) await Promise.all(Array.from({ length: Math.min(5000, count - i) }, (_, j) => fn(i + j)))
    }
    const fan = createSqliteStore(join(dir, 'big.db'), { prefix: 'fan:' })
    const many = createSqliteStore(join(dir, 'big.db'), { prefix: 'many:' })
    try {
      await fan.beginExecution('fan')
      await inBatches((i) => fan.commitExecutionTaskResult('fan', `t${String(i).padStart(6, '0')}`, i))
      await inBatches((i) => many.beginExecution(`x${String(i).padStart(6, '0')}`))
    } finally {
      await Promise.all([fan.close(), many.close()])
    }
    const steps = output(['inspect', big, 'fan', '--prefix', 'fan:']).trimEnd().split('\n')
    assert.match(steps[0], /^execution fan: in progress/)
    assert.match(steps[2], /^STEP {5}STATE/)
    assert.equal(steps.length, 3 + count)
    assert.match(steps.at(-1), /^t149999 {2}done {2}.* 149999$/)
    const list = output(['inspect', big, '--prefix', 'many:']).trimEnd().split('\n')
    assert.match(list[0], /^EXECUTION {2}STATE/)
    assert.match(list[1], /^x000000 {4}in progress/)
    assert.equal(list.at(-1), `${count} executions, ${count} in progress (prefix "many:")`)
  })

  it('refuses a flag given to a command that does not take it (exit 2)', () => {
    const cases = [
      ['inspect', url, '--port', '5'],
      ['inspect', url, '--allow-writes'],
      ['kv', 'get', 'default', 'k', url, '--force'],
      ['reset', url, 'e', 't', '--ttl', '5'],
      ['kv', 'get', 'default', 'k', url, '--ttl', '5'],
      ['kv', 'set', 'default', 'k', '1', url, '--json'],
    ]
    for (const args of cases) {
      const result = durastate(args)
      assert.equal(result.status, 2, `${args.join(' ')}: ${result.stdout}${result.stderr}`)
      assert.match(result.stderr, /^durastate: --(port|allow-writes|force|ttl|json) applies to /)
    }
  })

  it('kv set --ttl gives the entry a time to live; without it the entry stays', async () => {
    output(['kv', 'set', 'cache', 'short', '1', redis.url, '--ttl', '60000'])
    output(['kv', 'set', 'cache', 'long', '1', redis.url])
    const admin = new Redis(redis.url)
    try {
      const pttl = await admin.pttl('cache:short')
      assert.ok(pttl > 50_000 && pttl <= 60_000, `PTTL ${pttl}`)
      assert.equal(await admin.pttl('cache:long'), -1)
    } finally {
      admin.disconnect()
    }
    for (const ttl of ['0', '-5', '1.5', 'soon', '']) {
      const result = durastate(['kv', 'set', 'cache', 'x', '1', url, `--ttl=${ttl}`])
      assert.equal(result.status, 2, `--ttl ${JSON.stringify(ttl)}`)
      assert.match(result.stderr, /^durastate: --ttl must be a time to live in ms/)
    }
  })

  it('kv get escapes what a terminal would act on (C1 controls, bidi overrides), keeping the JSON value', async () => {
    const kv = createKvStore(url)
    try {
      await kv.set('default', 'evil', { s: 'a\u009b31mb\u202ec' })
    } finally {
      await kv.close()
    }
    for (const json of [[], ['--json']]) {
      const printed = output(['kv', 'get', 'default', 'evil', url, ...json])
      assert.doesNotMatch(printed, /[\u0080-\u009f\u202e]/)
      assert.deepEqual(JSON.parse(printed), { s: 'a\u009b31mb\u202ec' })
    }
  })

  it("takes an execution's plain id on a store with keyLayout 'hashtag', where it is listed as {id}", async () => {
    const store = createSqliteStore(path, { prefix: 'ht:', keyLayout: 'hashtag' })
    try {
      await store.beginExecution('order-9')
      await store.commitExecutionTaskResult('order-9', 'charge', CHARGE)
      await store.commitExecutionTaskResult('order-9', 'ship', true)
    } finally {
      await store.close()
    }
    const listed = JSON.parse(output(['inspect', url, '--prefix', 'ht:', '--json'])).executions.map((e) => e.id)
    assert.deepEqual(listed, ['{order-9}'])
    for (const id of ['order-9', '{order-9}']) assert.match(output(['inspect', url, id, '--prefix', 'ht:']), /^execution \{order-9\}: /)
    assert.match(output(['reset', url, 'order-9', 'ship', '--prefix', 'ht:']), /reset 1 step of execution "\{order-9\}": ship/)
    const reopened = createSqliteStore(path, { prefix: 'ht:', keyLayout: 'hashtag' })
    try {
      assert.deepEqual(Object.keys(await reopened.getExecutionTaskResults('order-9')), ['charge'])
    } finally {
      await reopened.close()
    }
    assert.match(output(['dispose', url, 'order-9', '--prefix', 'ht:']), /disposed execution "\{order-9\}"/)
    fails(['inspect', url, 'order-9', '--prefix', 'ht:'], 1, /no execution "order-9" under prefix "ht:" \(NOT_FOUND\)/)
  })

  it('refuses an empty --host (which would listen on every interface), and a --host that is no address of this machine', () => {
    for (const host of ['', ' ']) {
      const result = durastate(['ui', url, `--host=${host}`, '--port', '0'])
      assert.equal(result.status, 2, `--host ${JSON.stringify(host)}: ${result.stdout}${result.stderr}`)
      assert.match(result.stderr, /^durastate: --host must name an address, not an empty or blank one;/)
    }
    // 192.0.2.1 (TEST-NET-1) is no address of this machine: the bind fails at once
    const result = durastate(['ui', url, '--host', '192.0.2.1', '--port', '0'])
    assert.equal(result.status, 1, result.stdout + result.stderr)
    assert.match(result.stderr, /^durastate: --host "192\.0\.2\.1" is not an address of this machine \(EADDRNOTAVAIL\) \(INVALID_INPUT\)\n$/)
  })

  it('says TLS when a TLS handshake gets no answer (a server without TLS), not a TIMEOUT that races it', () => {
    const plain = new URL(redis.url)
    const started = Date.now()
    const result = durastate(['inspect', `rediss://${plain.host}`, '--insecure'])
    assert.equal(result.status, 1, result.stdout + result.stderr)
    assert.match(result.stderr, /TLS handshake .* no TLS handshake within connectTimeout .*\(TLS\)\n$/)
    assert.ok(Date.now() - started < 15_000)
  })

  it('says UNAVAILABLE naming the sentinels when a sentinel never answers, not a TIMEOUT that races it', async () => {
    // A listening socket that is never read: connections open (the kernel's backlog) and
    // nothing answers them.
    const silent = createServer(() => {})
    await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve))
    const { port } = silent.address()
    try {
      for (const args of [
        ['inspect', `redis+sentinel://u:s3cret@127.0.0.1:${port}/mymaster`],
        ['kv', 'get', 'default', 'k', `redis+sentinel://127.0.0.1:${port}/mymaster`],
      ]) {
        const started = Date.now()
        const result = durastate(args)
        const took = Date.now() - started
        assert.equal(result.status, 1, result.stdout + result.stderr)
        assert.match(result.stderr, new RegExp(`cannot connect to master "mymaster" of sentinels 127\\.0\\.0\\.1:${port}.* \\(UNAVAILABLE\\)\n$`))
        assert.doesNotMatch(result.stderr, /s3cret/)
        assert.ok(took < 5_000, `took ${took} ms`)
      }
    } finally {
      silent.close()
    }
  })

  it('refuses TLS flags on a Postgres URL whose sslmode=disable turns TLS off (exit 2), rather than connecting in plain text', () => {
    const ca = '/etc/ssl/certs/ca-certificates.crt'
    for (const [url, flags] of [
      ['postgres://app:s3cret@127.0.0.1:1/app?sslmode=disable', ['--tls-ca', ca]],
      ['postgresql://app:s3cret@127.0.0.1:1/app?application_name=x&ssl%6dode=disable', ['--tls-ca', ca, '--insecure']],
      ['postgres://app:s3cret@127.0.0.1:1/app?sslmode=require&sslmode=disable', ['--insecure']],
    ]) {
      const result = durastate(['inspect', url, ...flags])
      assert.equal(result.status, 2, result.stdout + result.stderr)
      assert.match(
        result.stderr,
        /^durastate: --(tls-ca|insecure).* for TLS, but the URL's sslmode=disable turns it off \(the connection would be plain text\)/,
      )
      assert.doesNotMatch(result.stderr, /s3cret/)
    }
    // Another sslmode with the flags connects (here: nothing listens, UNAVAILABLE).
    fails(['inspect', 'postgres://app@127.0.0.1:1/app?sslmode=verify-ca', '--tls-ca', ca], 1, /\(UNAVAILABLE\)\n$/)
  })

  it('refuses TLS flags on a Postgres URL whose sslmode=allow or prefer would fall back to plain text (exit 2)', () => {
    const ca = '/etc/ssl/certs/ca-certificates.crt'
    for (const [url, flags, mode] of [
      ['postgres://app:s3cret@127.0.0.1:1/app?sslmode=prefer', ['--tls-ca', ca], 'prefer'],
      ['postgres://app:s3cret@127.0.0.1:1/app?sslmode=allow', ['--tls-cert', ca, '--tls-key', ca], 'allow'],
      ['postgresql://app:s3cret@127.0.0.1:1/app?ssl%6dode=%70refer', ['--insecure'], 'prefer'],
      ['postgres://app:s3cret@127.0.0.1:1/app?sslmode=require&sslmode=allow', ['--tls-ca', ca], 'allow'],
    ]) {
      const result = durastate(['inspect', url, ...flags])
      assert.equal(result.status, 2, result.stdout + result.stderr)
      assert.match(
        result.stderr,
        new RegExp(
          `^durastate: --(tls-ca|tls-cert|insecure).* for TLS, but the URL's sslmode=${mode} connects in plain text when the server offers no TLS: .*sslmode=verify-full \\(or require`,
        ),
      )
      assert.doesNotMatch(result.stderr, /s3cret/)
    }
    // sslmode=require with the flags connects (here: nothing listens, UNAVAILABLE).
    fails(['inspect', 'postgres://app@127.0.0.1:1/app?sslmode=require', '--tls-ca', ca], 1, /\(UNAVAILABLE\)\n$/)
  })

  it('refuses a --port that is not a port number (exit 2)', () => {
    for (const port of ['', ' ', '0x50', '1e3', '-1', '65536', '80.5']) {
      const result = durastate(['ui', url, `--port=${port}`])
      assert.equal(result.status, 2, `--port ${JSON.stringify(port)}: ${result.stdout}${result.stderr}`)
      assert.match(result.stderr, /^durastate: --port must be a port number \(0-65535\)/)
    }
  })
})

describe('durastate --schema on Postgres', { timeout: 120_000 }, () => {
  let postgres
  const schema = 'ds_cli_schema'
  const prefix = `cli:${randomUUID()}:`

  before(async () => {
    postgres = await testPostgres()
    const store = createPostgresStore(postgres.url, { schema, prefix })
    await store.beginExecution('order-9')
    await store.beginExecutionTask('order-9', 'pack')
    await store.commitExecutionTaskResult('order-9', 'pack', { boxes: 2 })
    await store.close()
    const kv = createKvStore(postgres.url, { schema })
    await kv.set('default', 'greeting', { hello: 'schema' })
    await kv.close()
    // The default schema holds a store too (of other executions): inspect reads it.
    const other = createPostgresStore(postgres.url, { prefix: `cli:${randomUUID()}:` })
    await other.beginExecution('elsewhere')
    await other.close()
  })
  after(() => postgres?.release())

  it('inspect, reset and kv read and write the store of a non-default schema', async () => {
    const url = postgres.url
    const ids = (args) => JSON.parse(output(['inspect', url, '--prefix', prefix, '--json', ...args])).executions.map((e) => e.id)
    assert.deepEqual(ids(['--schema', schema]), ['order-9'])
    assert.deepEqual(ids([]), [], 'the default schema holds none of it')
    const detail = JSON.parse(output(['inspect', url, 'order-9', '--prefix', prefix, '--schema', schema, '--json']))
    assert.deepEqual(
      detail.steps.map((s) => [s.id, s.state]),
      [['pack', 'done']],
    )
    assert.equal(output(['kv', 'get', 'default', 'greeting', url, '--schema', schema, '--json']), '{"hello":"schema"}\n')
    output(['kv', 'set', 'default', 'n', '42', url, `--schema=${schema}`])
    assert.equal(output(['kv', 'keys', 'default', url, '--schema', schema]), 'greeting\nn\n')
    const kv = createKvStore(url, { schema })
    assert.equal(await kv.get('default', 'n'), 42)
    await kv.close()
    // the DATABASE_URL of the environment takes it too
    assert.equal(output(['kv', 'get', 'default', 'n', '--schema', schema], { env: { DATABASE_URL: url } }), '42\n')
    output(['reset', url, 'order-9', 'pack', '--prefix', prefix, '--schema', schema])
    const store = createPostgresStore(url, { schema, prefix })
    assert.deepEqual(await store.getExecutionTaskResults('order-9'), {})
    await store.close()
  })

  it('reads of a schema that holds no store fail and create nothing (inspect, kv get/keys/delete, reset, dispose); kv set creates it', () => {
    const url = postgres.url
    const typo = `ds_typo_${randomUUID().slice(0, 8)}`
    const none = new RegExp(`^durastate: schema "${typo}" holds no durastate store.*nothing was created.*\\(UNAVAILABLE\\)\\n$`)
    // Twice: had the first created the tables, the second would have read an empty store.
    for (let i = 0; i < 2; i++) {
      fails(['inspect', url, '--schema', typo], 1, none)
      fails(['inspect', url, 'order-9', '--prefix', prefix, '--schema', typo], 1, none)
      fails(['kv', 'get', 'default', 'greeting', url, '--schema', typo], 1, none)
      fails(['kv', 'keys', 'default', url, '--schema', typo], 1, none)
      fails(['kv', 'delete', 'default', 'greeting', url, '--schema', typo], 1, none)
      fails(['reset', url, 'order-9', 'pack', '--prefix', prefix, '--schema', typo], 1, none)
      fails(['dispose', url, 'order-9', '--prefix', prefix, '--schema', typo], 1, none)
    }
    // Not even the schema (a server of the test's own can be asked).
    if (postgres.server) assert.equal(postgres.server.sql(`SELECT count(*) FROM pg_namespace WHERE nspname = '${typo}'`), '0')
    // kv set creates the store, as it creates a SQLite file.
    output(['kv', 'set', 'default', 'k', '7', url, '--schema', typo])
    assert.equal(output(['kv', 'get', 'default', 'k', url, '--schema', typo]), '7\n')
    assert.deepEqual(JSON.parse(output(['inspect', url, '--schema', typo, '--json'])).executions, [])
  })

  it("reads of a schema whose `meta` table is another program's fail and change nothing", async () => {
    const app = `ds_app_${randomUUID().slice(0, 8)}`
    const client = new pg.Client({ connectionString: postgres.url })
    await client.connect()
    try {
      await client.query(`CREATE SCHEMA ${app}; CREATE TABLE ${app}.meta (id int, version int, note text); CREATE TABLE ${app}.orders (id int)`)
      const none = new RegExp(`^durastate: schema "${app}" holds no durastate store \\(no version row in .*nothing was created.*\\(UNAVAILABLE\\)\\n$`)
      fails(['inspect', postgres.url, '--schema', app], 1, none)
      fails(['kv', 'get', 'default', 'k', postgres.url, '--schema', app], 1, none)
      const tables = await client.query('SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename', [app])
      assert.deepEqual(
        tables.rows.map((r) => r.tablename),
        ['meta', 'orders'],
      )
      assert.equal((await client.query(`SELECT count(*)::int AS n FROM ${app}.meta`)).rows[0].n, 0)
    } finally {
      await client.query(`DROP SCHEMA IF EXISTS ${app} CASCADE`).catch(() => {})
      await client.end()
    }
  })

  it('refuses a --schema Postgres would not take, or on another backend (exit 2)', () => {
    for (const bad of ['', 'a$b', 'x'.repeat(64), 'pg_state']) {
      fails(['inspect', postgres.url, `--schema=${bad}`], 2, /^durastate: --schema must be 1 to 63 bytes without NUL or "\$"/)
    }
    fails(['inspect', 'sqlite:/tmp/x.db', '--schema', 'ds'], 2, /^durastate: --schema applies to Postgres URLs only/)
    fails(['kv', 'get', 'default', 'k', 'redis://127.0.0.1:1', '--schema', 'ds'], 2, /^durastate: --schema applies to Postgres URLs only/)
  })
})
