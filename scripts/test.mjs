// `npm test`: builds the addon, starts a throwaway redis-server and a throwaway
// PostgreSQL on free loopback ports, runs the node:test suites on Node.js, then the suites that apply on Bun and on
// Deno (devDependencies), the TypeScript types check and `cargo test`, and stops the
// servers it started, even when tests fail.
import { spawn, spawnSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { postgresBinDir, startPostgresServer } from '../__test__/helpers/postgres-server.mjs'
import { startRedisServer } from '../__test__/helpers/redis-server.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')

function run(title, command, args, env = {}) {
  console.log(`\n# ${title}: ${command} ${args.join(' ')}`)
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } })
  if (result.error) throw result.error
  return result.status === 0
}

/**
 * `run`, bounded: the command runs in a process group of its own, which is killed
 * (SIGKILL), with the servers its tests started, if it outlives `timeoutMs`.
 */
function runBounded(title, command, args, env, timeoutMs) {
  console.log(`\n# ${title}: ${command} ${args.join(' ')}`)
  const child = spawn(command, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env }, detached: true })
  const killGroup = () => {
    try {
      process.kill(-child.pid, 'SIGKILL')
    } catch {}
  }
  const timer = setTimeout(() => {
    console.error(`# ${title}: still running after ${timeoutMs / 60_000} minutes: killed`)
    killGroup()
  }, timeoutMs)
  const interrupted = () => {
    killGroup()
    process.exit(130)
  }
  process.once('SIGINT', interrupted)
  return new Promise((resolve, reject) => {
    child.once('error', reject)
    child.once('exit', (code) => {
      clearTimeout(timer)
      process.removeListener('SIGINT', interrupted)
      // Whatever the step left behind in its group (a server of a test that was cut short).
      killGroup()
      resolve(code === 0)
    })
  })
}

/** The programs the tests run, with the Debian package that has each. */
const TOOLS = [
  { binary: 'redis-server', args: ['--version'], debian: 'redis-server', other: 'macOS: brew install redis' },
  { binary: 'redis-cli', args: ['--version'], debian: 'redis-tools', other: 'macOS: brew install redis' },
  { binary: 'openssl', args: ['version'], debian: 'openssl', other: 'macOS: brew install openssl' },
  // The `durastate ui` tests drive it with playwright-core (which downloads no browser).
  {
    binary: process.env.DURASTATE_TEST_CHROMIUM || 'chromium',
    args: ['--version'],
    debian: 'chromium',
    other: 'elsewhere: set DURASTATE_TEST_CHROMIUM to a Chromium or Chrome binary',
  },
  { check: postgresPresent, binary: 'postgres', debian: 'postgresql', other: 'macOS: brew install postgresql' },
  // Another process holding a SQLite file's write lock (sqlite.spec), with Python's sqlite3.
  { binary: 'python3', args: ['-c', 'import sqlite3'], debian: 'python3', other: 'macOS: brew install python' },
]

/** Whether PostgreSQL's server binaries are there (Debian keeps them off PATH). */
function postgresPresent() {
  try {
    postgresBinDir()
    return true
  } catch {
    return false
  }
}

/** Installs what is missing (Debian packages, as root) or stops at once saying how. */
function ensureTools() {
  const missing = TOOLS.filter(({ check, binary, args }) => !(check ? check() : spawnSync(binary, args).status === 0))
  if (missing.length === 0) return
  const packages = missing.map((tool) => tool.debian)
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0
  const hasApt = spawnSync('apt-get', ['--version']).status === 0
  if (isRoot && hasApt) {
    console.log(`# missing ${missing.map((t) => t.binary).join(', ')}: installing Debian packages ${packages.join(' ')}`)
    run('apt-get update', 'apt-get', ['update', '-qq'])
    if (run('install', 'apt-get', ['install', '-y', '-qq', ...packages], { DEBIAN_FRONTEND: 'noninteractive' })) return
  }
  console.error(
    `The tests need ${missing.map((t) => t.binary).join(', ')}, which ${missing.length === 1 ? 'is' : 'are'} not installed.\n` +
      `  Debian/Ubuntu: sudo apt-get install -y ${packages.join(' ')}\n` +
      missing
        .map((t) => `  ${t.other}`)
        .filter((v, i, all) => all.indexOf(v) === i)
        .join('\n'),
  )
  process.exit(1)
}

/**
 * node --test, bounded: a test that hangs fails after 5 minutes, and a test file whose
 * client library leaves a socket open (ioredis's MONITOR connection once did) still ends
 * when its tests are done. Whether our stores let a process exit is tested on its own,
 * in child processes (process.spec.mjs).
 */
const NODE_TEST = ['--test', '--test-force-exit', '--test-timeout=300000']

/**
 * The suites that also run on Bun and Deno: the runtime checks, the WorkerStore
 * conformance and KV suites (Redis, SQLite, memory, Cluster, Postgres), the Redis faults,
 * process exit, the Redis, TLS, Sentinel, SQLite and Postgres suites, and the tracing and
 * connection events. Left out: the CLI, demo, Cluster and TLS Cluster suites, which test
 * Node.js programs or a path that is the same on every runtime (the cluster backend runs
 * on tokio threads everywhere).
 */
const OTHER_RUNTIME_SPECS = [
  'runtime',
  'conformance',
  'kv',
  'kv-order',
  'reliability',
  'process',
  'redis',
  'tls',
  'sentinel',
  'sqlite',
  'postgres',
  'observability',
].map((name) => join('__test__', `${name}.spec.mjs`))
/** Bounds a whole Bun or Deno step (deno test has no per-test timeout). */
const OTHER_RUNTIME_TIMEOUT_MS = 15 * 60_000

/** node_modules/.bin/<name> if it runs (`npm rebuild bun deno` once if not), else null. */
function runtimeBinary(name) {
  // On Windows, .bin/ has only shims; bun's package carries the executable itself.
  const binary = process.platform === 'win32' && name === 'bun' ? join(root, 'node_modules', 'bun', 'bin', 'bun.exe') : join(root, 'node_modules', '.bin', name)
  const works = () => spawnSync(binary, ['--version'], { stdio: 'ignore' }).status === 0
  if (works()) return binary
  run(`${name} does not run: rebuild it`, 'npm', ['rebuild', 'bun', 'deno'])
  if (works()) return binary
  console.error(`# ${name} (a devDependency) does not run: npm install, then npm rebuild bun deno`)
  return null
}

/** `bun test`: Bun's runner takes node:test's describe/it/before/after as they are. */
async function runBun(env) {
  const bun = runtimeBinary('bun')
  if (!bun) return false
  const specs = OTHER_RUNTIME_SPECS.map((spec) => `./${spec}`)
  return runBounded('Bun', bun, ['test', '--timeout', '300000', ...specs], env, OTHER_RUNTIME_TIMEOUT_MS)
}

/** `deno test -A`: Deno runs node:test suites as Deno tests (napi addons need --allow-ffi). */
async function runDeno(env) {
  const deno = runtimeBinary('deno')
  if (!deno) return false
  const denoEnv = { ...env, DENO_NO_UPDATE_CHECK: '1', DENO_NO_PROMPT: '1', NO_COLOR: '1' }
  return runBounded('Deno', deno, ['test', '-A', ...OTHER_RUNTIME_SPECS], denoEnv, OTHER_RUNTIME_TIMEOUT_MS)
}

/**
 * DURASTATE_TEST_PREBUILT=1: the release workflow's test jobs, on the binary its build job
 * made: no build here, and no `cargo test` (its lint job runs that).
 */
const PREBUILT = process.env.DURASTATE_TEST_PREBUILT === '1'
/**
 * DURASTATE_TEST_SKIP=deno (comma-separated step names: threads, bun, deno, types): steps a
 * platform cannot run, left out on purpose and said so (the workflow's musl job: Deno ships
 * no musl build).
 */
const SKIP = new Set((process.env.DURASTATE_TEST_SKIP ?? '').split(',').filter(Boolean))
function step(name, body) {
  if (!SKIP.has(name)) return body()
  console.log(`\n# ${name}: left out (DURASTATE_TEST_SKIP)`)
  return true
}

const napi = join(root, 'node_modules', '@napi-rs', 'cli', 'dist', 'cli.js')
if (!PREBUILT && !run('build the addon', process.execPath, [napi, 'build', '--platform', '--release', '--js', 'binding.js', '--dts', 'binding.d.ts'])) {
  process.exit(1)
}
ensureTools()
const server = await startRedisServer()
let postgres
let ok = false
try {
  postgres = await startPostgresServer()
  const specs = readdirSync(join(root, '__test__'))
    .filter((f) => f.endsWith('.spec.mjs'))
    .sort()
  const nodeOk = run('node --test', process.execPath, [...NODE_TEST, '--test-concurrency=2', ...specs.map((f) => join('__test__', f))], {
    DURASTATE_TEST_REDIS_URL: server.url,
    DURASTATE_TEST_POSTGRES_URL: postgres.url,
  })
  // The threaded Redis path (unix sockets, non-Unix platforms) keeps passing the same suites,
  // the Redis faults (resending after a dropped connection) included.
  const servers = { DURASTATE_TEST_REDIS_URL: server.url, DURASTATE_TEST_POSTGRES_URL: postgres.url }
  const threadsOk = step('threads', () =>
    run(
      'node --test, Redis on tokio threads',
      process.execPath,
      [...NODE_TEST, ...['conformance', 'kv-order', 'redis', 'reliability', 'observability'].map((name) => join('__test__', `${name}.spec.mjs`))],
      { ...servers, DURASTATE_REDIS_DRIVER: 'threads' },
    ),
  )
  const bunOk = await step('bun', () => runBun(servers))
  const denoOk = await step('deno', () => runDeno(servers))
  // Checked again with an ES2020 target (lib): index.d.ts must not need a newer lib than its users' (`ErrorOptions`, ES2022, did).
  const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
  const tscOk = step(
    'types',
    () =>
      run('types', process.execPath, [tsc, '-p', '__test__/tsconfig.json']) &&
      run('types, ES2020 target', process.execPath, [tsc, '-p', '__test__/tsconfig.es2020.json']),
  )
  const cargoOk = PREBUILT || run('cargo test', 'cargo', ['test', '--release', '--quiet'])
  ok = nodeOk && threadsOk && bunOk && denoOk && tscOk && cargoOk
} finally {
  await server.stop()
  await postgres?.stop()
}
console.log(ok ? '\n# all test suites passed' : '\n# some test suites FAILED')
process.exit(ok ? 0 : 1)
