// `npm run test:package`: the package as users get it. Packs durastate and this machine's
// platform package (npm/<platform> with the built durastate.<platform>.node), installs both
// tarballs into a fresh TypeScript project (typescript and @types/node come from the npm
// cache or registry, durastate never does), compiles __test__/package/worker.ts with
// `tsc --strict` as CommonJS and as ESM, and runs both builds on a throwaway redis-server
// and on the embedded default (a SQLite file in the project). Needs a built addon
// (`npm run build`) and redis-server. Temp dirs and the server are removed at the end.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { testRedis } from '../__test__/helpers/redis-server.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const fixtures = join(root, '__test__', 'package')
const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const COMMAND_TIMEOUT = 300_000
const WORKER_TIMEOUT = 30_000

const PACKED_FILES = [
  'package.json', 'README.md', 'index.js', 'index.d.ts', 'binding.js', 'binding.d.ts', 'bin/durastate.mjs',
  'bin/executions.mjs', 'bin/ui.mjs', 'bin/ui/index.html', 'bin/ui/app.js', 'bin/ui/style.css',
  'scripts/install.mjs', 'Cargo.toml', 'Cargo.lock', 'build.rs', 'src/lib.rs',
]
const UNPACKED_PATHS = [/^target\//, /^__test__\//, /^benchmark\//, /^examples\//, /^npm\//, /^node_modules\//, /^\.ci\//, /\.node$/, /^scripts\/test/]

function run(command, args, { cwd, env = {}, timeout = COMMAND_TIMEOUT }) {
  const result = spawnSync(command, args, { cwd, env: { ...process.env, ...env }, encoding: 'utf8', timeout })
  if (result.error) throw result.error
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited with ${result.status ?? result.signal}\n${result.stdout}\n${result.stderr}`)
  }
  return result.stdout
}

/** `npm pack` of the package in `dir` into `destination`: npm's JSON report (filename, size, files). */
function pack(dir, destination) {
  const [report] = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', destination], { cwd: dir }))
  return report
}

/** The binary `npm run build` made for this machine: durastate.<platform>.node. */
function builtBinary() {
  const binaries = readdirSync(root).filter((name) => /^durastate\..+\.node$/.test(name))
  assert.equal(binaries.length, 1, `expected one built durastate.<platform>.node in ${root} (run \`npm run build\`), found: ${binaries.join(', ') || 'none'}`)
  return binaries[0]
}

/** The tarball of npm/<platform> with the built binary in it, as `napi prepublish` publishes it. */
function packPlatformPackage(binary, destination) {
  const platform = binary.slice('durastate.'.length, -'.node'.length)
  const source = join(root, 'npm', platform)
  assert.ok(existsSync(source), `no per-platform package npm/${platform} for ${binary}`)
  const dir = join(destination, `package-${platform}`)
  cpSync(source, dir, { recursive: true })
  copyFileSync(join(root, binary), join(dir, binary))
  return { name: `durastate-${platform}`, tarball: join(destination, pack(dir, destination).filename) }
}

function createProject(dir) {
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'durastate-package-test', version: '1.0.0', private: true, type: 'module' }, null, 2))
  for (const name of ['worker.ts', 'tsconfig.cjs.json', 'tsconfig.esm.json']) copyFileSync(join(fixtures, name), join(dir, name))
}

/** Runs a compiled worker; returns the JSON line it prints when every check passed. */
function runWorker(project, file, redisUrl) {
  const output = run(process.execPath, [file], {
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
  let mainReport
  let platformPackage

  before(async () => {
    workDir = mkdtempSync(join(tmpdir(), 'durastate-package-'))
    project = join(workDir, 'project')
    mkdirSync(project)
    redis = await testRedis()
  })

  after(async () => {
    await redis?.release()
    if (workDir) rmSync(workDir, { recursive: true, force: true })
  })

  it('npm pack holds what users need and nothing else', () => {
    mainReport = pack(root, workDir)
    const paths = mainReport.files.map((file) => file.path)
    for (const path of PACKED_FILES) assert.ok(paths.includes(path), `${path} is missing from the tarball`)
    assert.deepEqual(paths.filter((path) => UNPACKED_PATHS.some((pattern) => pattern.test(path))), [])
    console.log(`# ${mainReport.filename}: ${mainReport.files.length} files, ${(mainReport.size / 1024).toFixed(1)} KiB packed, ${(mainReport.unpackedSize / 1024).toFixed(1)} KiB unpacked`)
  })

  it('installs the two tarballs, with the binary from the platform package and nothing from the registry for durastate', () => {
    platformPackage = packPlatformPackage(builtBinary(), workDir)
    createProject(project)
    const devDependencies = ['typescript', '@types/node'].map((name) => `${name}@${manifest.devDependencies[name]}`)
    run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', join(workDir, mainReport.filename), platformPackage.tarball, ...devDependencies], { cwd: project })
    const lock = JSON.parse(readFileSync(join(project, 'package-lock.json'), 'utf8'))
    for (const name of ['durastate', platformPackage.name]) {
      assert.match(lock.packages[`node_modules/${name}`].resolved, /^file:/, `${name} was not installed from its tarball`)
    }
    const installed = join(project, 'node_modules', 'durastate')
    assert.deepEqual(readdirSync(installed).filter((name) => name.endsWith('.node') || name === 'target'), [], 'the install hook built the addon instead of using the platform package')
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
      assert.deepEqual(runWorker(project, file, redis.url), { ok: true, backend: 'redis', moduleFormat })
    })
    it(`runs the ${moduleFormat} build on the embedded default`, () => {
      assert.deepEqual(runWorker(project, file, undefined), { ok: true, backend: 'embedded', moduleFormat })
      assert.ok(existsSync(join(project, '.durastate', 'state.db')), 'the embedded default did not write ./.durastate/state.db')
    })
  }

  it('installs the durastate CLI, which reads the embedded default', () => {
    const cli = join(project, 'node_modules', '.bin', 'durastate')
    assert.match(run(cli, ['--help'], { cwd: project }), /^usage:/)
    assert.match(run(cli, ['inspect', '--prefix', 'package-test:'], { cwd: project, env: { REDIS_URL: '', DURASTATE_URL: '' } }), /^no executions under prefix "package-test:"/)
  })
})
