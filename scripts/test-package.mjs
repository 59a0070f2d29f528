// `npm run test:package`: the package as users get it. `npm run pack:local` makes the two
// tarballs a release publishes for this platform (dist/durastate-<version>.tgz, whose
// optionalDependencies `napi pre-publish` filled in, and dist/durastate-<platform>-<version>.tgz
// with the binary). Both are installed into a fresh TypeScript project with --ignore-scripts,
// as npm 12 does for a dependency whose install script nobody approved (typescript and
// @types/node come from the npm cache or registry, durastate never does). The test compiles
// __test__/package/worker.ts with `tsc --strict` as CommonJS and as ESM, runs both builds on a
// redis-server of its own (free loopback port) and on the embedded default (a SQLite file in
// the project), on Node.js and on Bun (the devDependency), runs the installed CLI, and checks
// what `require('durastate')` says when no binary fits. Needs a built addon (`npm run
// build`; `npm test` builds one) and redis-server. Temp dirs and the server are removed at the end.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { startRedisServer } from '../__test__/helpers/redis-server.mjs'
import { packLocal } from './pack-local.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const fixtures = join(root, '__test__', 'package')
const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
/** Bun, the devDependency: its package carries the executable (.bin/ has only a shim on Windows). */
const bun = join(root, 'node_modules', 'bun', 'bin', 'bun.exe')
const windows = process.platform === 'win32'
const COMMAND_TIMEOUT = 300_000
const WORKER_TIMEOUT = 30_000

const PACKED_FILES = [
  'package.json',
  'README.md',
  'index.js',
  'index.d.ts',
  'binding.js',
  'binding.d.ts',
  'platform.js',
  'bin/durastate.mjs',
  'bin/executions.mjs',
  'bin/ui.mjs',
  'bin/ui/index.html',
  'bin/ui/app.js',
  'bin/ui/style.css',
  'scripts/install.mjs',
  'Cargo.toml',
  'Cargo.lock',
  'build.rs',
  '.cargo/config.toml',
  'src/lib.rs',
]
const UNPACKED_PATHS = [
  /^target\//,
  /^__test__\//,
  /^benchmark\//,
  /^examples\//,
  /^npm\//,
  /^node_modules\//,
  /^dist\//,
  /^\.ci\//,
  /\.node$/,
  /^scripts\/(test|pack)/,
  // Unit tests of the Rust sources: only `cargo test` compiles them (#[cfg(test)] mod tests;).
  /(^|\/)tests\.rs$/,
]

/** Runs a command; npm and the installed CLI are .cmd shims on Windows, which only a shell runs. */
function run(command, args, { cwd, env = {}, timeout = COMMAND_TIMEOUT }) {
  const shell = windows && (command === 'npm' || command.endsWith('.cmd'))
  const result = spawnSync(command, args, { cwd, env: { ...process.env, ...env }, encoding: 'utf8', timeout, shell })
  if (result.error) throw result.error
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited with ${result.status ?? result.signal}\n${result.stdout}\n${result.stderr}`)
  }
  return result.stdout
}

/** A tarball's paths (without the leading package/) and its package.json, read with tar. */
function tarball(path) {
  const files = run('tar', ['-tzf', path], {})
    .split('\n')
    .filter((line) => line && !line.endsWith('/'))
    .map((line) => line.replace(/^package\//, ''))
  const packageJson = JSON.parse(run('tar', ['-xzOf', path, 'package/package.json'], {}))
  return { files, packageJson }
}

function createProject(dir) {
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'durastate-package-test', version: '1.0.0', private: true, type: 'module' }, null, 2))
  for (const name of ['worker.ts', 'tsconfig.cjs.json', 'tsconfig.esm.json']) copyFileSync(join(fixtures, name), join(dir, name))
}

/** Runs a compiled worker with `runtime` (node or bun); returns the JSON line it prints when every check passed. */
function runWorker(runtime, project, file, redisUrl) {
  const output = run(runtime, [file], {
    cwd: project,
    env: { REDIS_URL: redisUrl ?? '', DURASTATE_URL: '' },
    timeout: WORKER_TIMEOUT,
  })
  return JSON.parse(output.trim().split('\n').at(-1))
}

describe('the npm package, installed into a fresh TypeScript project', { timeout: 900_000 }, () => {
  let workDir
  let project
  let redis
  let tarballs

  before(async () => {
    workDir = mkdtempSync(join(tmpdir(), 'durastate-package-'))
    project = join(workDir, 'project')
    mkdirSync(project)
    redis = await startRedisServer()
  })

  after(async () => {
    await redis?.stop()
    if (workDir) rmSync(workDir, { recursive: true, force: true })
  })

  it("npm run pack:local writes the main tarball and this platform's, as a release publishes them", async () => {
    tarballs = await packLocal({ build: false })
    const { version } = manifest
    assert.equal(tarballs.main, join(root, 'dist', `durastate-${version}.tgz`))
    assert.equal(tarballs.platform, join(root, 'dist', `${tarballs.platformPackage}-${version}.tgz`))

    const main = tarball(tarballs.main)
    for (const path of PACKED_FILES) assert.ok(main.files.includes(path), `${path} is missing from the main tarball`)
    assert.deepEqual(
      main.files.filter((path) => UNPACKED_PATHS.some((pattern) => pattern.test(path))),
      [],
    )
    // `napi pre-publish` adds the platform packages; the committed package.json lists none.
    assert.equal(manifest.optionalDependencies, undefined)
    assert.deepEqual(main.packageJson.optionalDependencies, { [tarballs.platformPackage]: version })
    assert.deepEqual(main.packageJson.napi, manifest.napi)

    const platform = tarball(tarballs.platform)
    const binary = `${manifest.napi.binaryName}.${tarballs.platformPackage.slice(manifest.name.length + 1)}.node`
    assert.deepEqual(platform.files.sort(), ['README.md', binary, 'package.json'].sort())
    assert.equal(platform.packageJson.name, tarballs.platformPackage)
    assert.equal(platform.packageJson.version, version)
    assert.equal(platform.packageJson.main, binary)
    assert.equal(platform.packageJson.scripts, undefined, 'a platform package runs no script')
    const kib = (path) => `${(statSync(path).size / 1024).toFixed(1)} KiB`
    console.log(`# ${tarballs.main}: ${main.files.length} files, ${kib(tarballs.main)}; ${tarballs.platform}: ${kib(tarballs.platform)}`)
  })

  it('installs the two tarballs with --ignore-scripts: the binary comes from the platform package, durastate never from the registry', () => {
    createProject(project)
    const devDependencies = ['typescript', '@types/node'].map((name) => `${name}@${manifest.devDependencies[name]}`)
    run('npm', ['install', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline', tarballs.main, tarballs.platform, ...devDependencies], {
      cwd: project,
    })
    const lock = JSON.parse(readFileSync(join(project, 'package-lock.json'), 'utf8'))
    for (const name of ['durastate', tarballs.platformPackage]) {
      assert.match(lock.packages[`node_modules/${name}`].resolved, /^file:/, `${name} was not installed from its tarball`)
    }
    const installed = join(project, 'node_modules', 'durastate')
    assert.deepEqual(
      readdirSync(installed).filter((name) => name.endsWith('.node') || name === 'target'),
      [],
      'a binary or target/ in node_modules/durastate',
    )
  })

  it('compiles the worker with tsc --strict, as CommonJS and as ESM', () => {
    const tsc = join(project, 'node_modules', 'typescript', 'bin', 'tsc')
    for (const config of ['tsconfig.cjs.json', 'tsconfig.esm.json']) run(process.execPath, [tsc, '-p', config, '--strict'], { cwd: project })
    writeFileSync(join(project, 'dist', 'cjs', 'package.json'), JSON.stringify({ type: 'commonjs' }))
    assert.match(readFileSync(join(project, 'dist', 'cjs', 'worker.js'), 'utf8'), /require\("durastate"\)/)
    assert.match(readFileSync(join(project, 'dist', 'esm', 'worker.js'), 'utf8'), /from 'durastate'/)
  })

  for (const moduleFormat of ['commonjs', 'esm']) {
    const file = join('dist', moduleFormat === 'commonjs' ? 'cjs' : 'esm', 'worker.js')
    it(`runs the ${moduleFormat} build on Redis`, () => {
      assert.deepEqual(runWorker(process.execPath, project, file, redis.url), { ok: true, backend: 'redis', moduleFormat, runtime: 'node' })
    })
    it(`runs the ${moduleFormat} build on the embedded default`, () => {
      assert.deepEqual(runWorker(process.execPath, project, file, undefined), { ok: true, backend: 'embedded', moduleFormat, runtime: 'node' })
      assert.ok(existsSync(join(project, '.durastate', 'state.db')), 'the embedded default did not write ./.durastate/state.db')
    })
    // Bun gives ES modules a `require` too, so the worker's own moduleFormat guess is not checked there.
    it(`runs the ${moduleFormat} build on Bun, on Redis and on the embedded default`, () => {
      assert.ok(spawnSync(bun, ['--version']).status === 0, `${bun} does not run (npm ci installs it; then npm rebuild bun)`)
      for (const redisUrl of [redis.url, undefined]) {
        const { ok, backend, runtime } = runWorker(bun, project, file, redisUrl)
        assert.deepEqual({ ok, backend, runtime }, { ok: true, backend: redisUrl ? 'redis' : 'embedded', runtime: 'bun' })
      }
    })
  }

  it('installs the durastate CLI, which reads the embedded default', () => {
    const cli = join(project, 'node_modules', '.bin', windows ? 'durastate.cmd' : 'durastate')
    assert.match(run(cli, ['--help'], { cwd: project }), /^usage:/)
    assert.match(
      run(cli, ['inspect', '--prefix', 'package-test:'], { cwd: project, env: { REDIS_URL: '', DURASTATE_URL: '' } }),
      /^no executions under prefix "package-test:"/,
    )
  })

  it("without the platform package, require('durastate') throws UNAVAILABLE and says what to do", () => {
    const platformDir = join(project, 'node_modules', tarballs.platformPackage)
    const aside = join(workDir, 'platform-package-aside')
    renameSync(platformDir, aside)
    try {
      const probe = `try { require('durastate'); console.log('loaded') } catch (err) { console.log(JSON.stringify({ name: err.name, code: err.code, message: err.message })) }`
      const thrown = JSON.parse(run(process.execPath, ['-e', probe], { cwd: project }).trim())
      assert.equal(thrown.name, 'DurastateError')
      assert.equal(thrown.code, 'UNAVAILABLE')
      for (const advice of [
        'npm install-scripts approve durastate',
        'npm rebuild durastate',
        'cargo build --release --locked',
        tarballs.platformPackage,
        '--omit=optional',
      ]) {
        assert.ok(thrown.message.includes(advice), `the error does not say "${advice}":\n${thrown.message}`)
      }
    } finally {
      renameSync(aside, platformDir)
    }
  })
})
