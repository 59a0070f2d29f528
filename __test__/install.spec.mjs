// The install script (scripts/install.mjs) and the platform names (platform.js), as a user's
// `npm install` meets them. The script runs on a copy of the package in a temp dir (outside
// this clone, as under an app's node_modules), with `cargo` a stub on PATH that "builds" by
// copying this machine's binary to target/ and records that it ran, and process.platform /
// process.arch faked with a preload where a test needs another machine. No real cargo runs.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { packageRoot } from './helpers/child.mjs'

const require = createRequire(import.meta.url)
const { platformName } = require('../platform.js')
const COMMAND_TIMEOUT = 60_000

/** Every platform and architecture Node.js reports (process.platform, process.arch), and some it might one day. */
const PLATFORMS = ['aix', 'android', 'cygwin', 'darwin', 'freebsd', 'haiku', 'linux', 'netbsd', 'openbsd', 'openharmony', 'sunos', 'win32']
const ARCHS = ['arm', 'arm64', 'ia32', 'loong64', 'mips', 'mipsel', 'mips64el', 'ppc', 'ppc64', 'riscv64', 's390', 's390x', 'x64']

/**
 * The `durastate.<name>.node` files binding.js tries, in order, on `platform`/`arch` (a musl
 * or glibc Linux): binding.js's own code, run with that process.platform and process.arch and
 * with a `require` that records each file and finds none.
 */
function bindingCandidates(platform, arch, musl) {
  const source = readFileSync(join(packageRoot, 'binding.js'), 'utf8')
  const tried = []
  const notFound = (id) => Object.assign(new Error(`Cannot find module '${id}'`), { code: 'MODULE_NOT_FOUND' })
  const fakeRequire = (id) => {
    if (id === 'fs') return { readFileSync: () => (musl ? 'musl libc (x86_64)' : 'GNU C Library') }
    tried.push(id)
    throw notFound(id)
  }
  fakeRequire.resolve = (id) => {
    throw notFound(id)
  }
  const fakeProcess = { platform, arch, env: {}, config: process.config, report: undefined }
  const module = { exports: {} }
  try {
    new Function('require', 'module', 'exports', 'process', '__dirname', '__filename', source)(
      fakeRequire,
      module,
      module.exports,
      fakeProcess,
      packageRoot,
      'binding.js',
    )
  } catch {}
  // darwin-universal (tried first on macOS, whatever the arch) only comes prebuilt: no build on one machine makes it.
  return tried
    .filter((id) => /^\.\/durastate\..+\.node$/.test(id))
    .map((id) => id.slice('./durastate.'.length, -'.node'.length))
    .filter((name) => name !== 'darwin-universal')
}

/** The host's binary, which the stub cargo "builds"; tests that need it skip without it. */
const hostBinary = join(packageRoot, `durastate.${platformName()}.node`)
const linuxWithBinary = process.platform === 'linux' && existsSync(hostBinary)

const workDir = mkdtempSync(join(tmpdir(), 'durastate-install-'))
after(() => rmSync(workDir, { recursive: true, force: true }))

let copies = 0
/** A copy of the installable package (the files the from-source build needs but the Rust sources) in a fresh dir, as node_modules/durastate. */
function packageCopy() {
  const app = join(workDir, `app-${++copies}`)
  const dir = join(app, 'node_modules', 'durastate')
  mkdirSync(join(dir, 'scripts'), { recursive: true })
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }))
  for (const file of ['package.json', 'index.js', 'binding.js', 'platform.js', 'env.js', 'transport.js', 'scripts/install.mjs']) {
    copyFileSync(join(packageRoot, file), join(dir, file))
  }
  return { app, dir }
}

/** A PATH with a stub `cargo` first: it records its arguments in `log`, and `cargo build` copies the host's binary to where cargo would write the library. */
function stubCargo(log, { fail = false } = {}) {
  const bin = join(workDir, `bin-${++copies}`)
  mkdirSync(bin)
  writeFileSync(
    join(bin, 'cargo'),
    `#!/bin/sh
echo "$*" >> ${JSON.stringify(log)}
[ "$1" = "--version" ] && { echo "cargo 1.99.0 (stub)"; exit 0; }
${fail ? 'exit 101' : ''}
mkdir -p "$CARGO_TARGET_DIR/release/deps" && cp ${JSON.stringify(hostBinary)} "$CARGO_TARGET_DIR/release/libdurastate.so"
`,
  )
  chmodSync(join(bin, 'cargo'), 0o755)
  return `${bin}:${process.env.PATH}`
}

/** A preload that makes process.platform / process.arch those of another machine. */
function fakeMachine({ platform, arch }) {
  const file = join(workDir, `fake-${++copies}.cjs`)
  writeFileSync(
    file,
    [
      platform && `Object.defineProperty(process, 'platform', { value: ${JSON.stringify(platform)} })`,
      arch && `Object.defineProperty(process, 'arch', { value: ${JSON.stringify(arch)} })`,
    ]
      .filter(Boolean)
      .join('\n'),
  )
  return file
}

function runNode(args, { cwd, env = {} }) {
  const result = spawnSync(process.execPath, args, { cwd, env: { ...process.env, ...env }, encoding: 'utf8', timeout: COMMAND_TIMEOUT })
  if (result.error) throw result.error
  return result
}

/** `node scripts/install.mjs` in `dir`, as npm runs it (npm_* variables of the test's own npm removed). */
function runInstall(dir, { preload, path, env = {} } = {}) {
  const clean = Object.fromEntries(
    Object.keys(process.env)
      .filter((k) => /^npm_/i.test(k))
      .map((k) => [k, undefined]),
  )
  const base = { ...process.env, ...clean, ...(path ? { PATH: path } : {}), ...env }
  for (const [k, v] of Object.entries(base)) if (v === undefined) delete base[k]
  const args = [...(preload ? ['-r', preload] : []), join('scripts', 'install.mjs')]
  const result = spawnSync(process.execPath, args, { cwd: dir, env: base, encoding: 'utf8', timeout: COMMAND_TIMEOUT })
  if (result.error) throw result.error
  return { code: result.status, output: result.stdout + result.stderr }
}

describe('platform names', () => {
  it('for every platform, architecture and libc binding.js knows, platform.js names a file binding.js loads (and none where it knows none)', () => {
    let known = 0
    for (const platform of PLATFORMS) {
      for (const arch of ARCHS) {
        for (const musl of platform === 'linux' ? [false, true] : [false]) {
          const candidates = bindingCandidates(platform, arch, musl)
          const name = platformName(platform, arch, musl)
          const where = `${platform} ${arch}${platform === 'linux' ? (musl ? ' musl' : ' glibc') : ''}`
          if (candidates.length === 0) {
            assert.equal(name, null, `binding.js loads no file on ${where}, but platform.js names ${name}`)
          } else {
            known++
            assert.ok(candidates.includes(name), `on ${where} binding.js loads ${candidates.join(' or ')}, but platform.js names ${name}`)
          }
        }
      }
    }
    // The table the test walks is not empty (binding.js was read and run).
    assert.ok(known >= 20, `binding.js knows only ${known} platforms?`)
    assert.deepEqual(bindingCandidates('linux', 'arm', false), ['linux-arm-gnueabihf'])
    assert.equal(platformName('linux', 'arm', false), 'linux-arm-gnueabihf')
    assert.equal(platformName('linux', 'arm', true), 'linux-arm-musleabihf')
    assert.equal(platformName('android', 'arm'), 'android-arm-eabi')
    assert.equal(platformName('linux', 's390x', true), 'linux-s390x-gnu')
  })

  it(
    "on 32-bit ARM Linux, the UNAVAILABLE message's cargo command writes the file binding.js loads",
    { skip: !linuxWithBinary && 'needs Linux and a built addon' },
    () => {
      const { dir } = packageCopy()
      const preload = fakeMachine({ arch: 'arm' })
      const probe = "try { require('./index.js'); console.log('loaded') } catch (err) { console.log(err.code + ' ' + err.message) }"
      const { stdout } = runNode(['-r', preload, '-e', probe], { cwd: dir })
      assert.match(stdout, /^UNAVAILABLE no durastate binary loads on linux-arm-gnueabihf\./)
      assert.match(stdout, /libdurastate\.so durastate\.linux-arm-gnueabihf\.node`/)
    },
  )

  it(
    'on an architecture binding.js does not know, the UNAVAILABLE message says no build can help',
    { skip: process.platform !== 'linux' && 'Linux only' },
    () => {
      const { dir } = packageCopy()
      const preload = fakeMachine({ arch: 'mips64el' })
      const probe = "try { require('./index.js'); console.log('loaded') } catch (err) { console.log(err.code + ' ' + err.message) }"
      const { stdout } = runNode(['-r', preload, '-e', probe], { cwd: dir })
      assert.match(stdout, /^UNAVAILABLE no durastate binary loads on linux-mips64el: .*knows no binary for the architecture mips64el/)
      assert.doesNotMatch(stdout, /cargo build/)
    },
  )
})

describe('scripts/install.mjs in an installed package', { skip: !linuxWithBinary && 'needs Linux and a built addon' }, () => {
  it('on 32-bit ARM Linux, builds with cargo and writes durastate.linux-arm-gnueabihf.node, which then loads', () => {
    const { dir } = packageCopy()
    const log = join(workDir, `cargo-${++copies}.log`)
    const preload = fakeMachine({ arch: 'arm' })
    const { code, output } = runInstall(dir, { preload, path: stubCargo(log) })
    assert.equal(code, 0, output)
    assert.match(readFileSync(log, 'utf8'), /^build --release --locked$/m)
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.endsWith('.node')),
      ['durastate.linux-arm-gnueabihf.node'],
    )
    assert.equal(runNode(['-r', preload, '-e', "require('./index.js'); console.log('loaded')"], { cwd: dir }).stdout.trim(), 'loaded')
  })

  it('on an architecture binding.js does not know, says so at once and builds nothing', () => {
    const { dir } = packageCopy()
    const log = join(workDir, `cargo-${++copies}.log`)
    const { code, output } = runInstall(dir, { preload: fakeMachine({ arch: 'mips64el' }), path: stubCargo(log) })
    assert.equal(code, 0, output)
    assert.match(output, /knows no binary for the architecture mips64el on linux/)
    assert.ok(!existsSync(log) || !/build/.test(readFileSync(log, 'utf8')), 'cargo build ran')
    assert.doesNotMatch(output, /building the native addon/)
  })
})

/** The package.json of the copy as a release publishes it: the platform packages as optional dependencies. */
function published(dir, platforms = [platformName()]) {
  const path = join(dir, 'package.json')
  const manifest = JSON.parse(readFileSync(path, 'utf8'))
  manifest.optionalDependencies = Object.fromEntries(platforms.map((p) => [`durastate-${p}`, manifest.version]))
  writeFileSync(path, JSON.stringify(manifest, null, 2))
}

/** A stub @napi-rs/cli under `dir`/node_modules whose `napi` writes `marker` and exits 0. */
function stubNapiCli(dir, marker) {
  const cli = join(dir, 'node_modules', '@napi-rs', 'cli')
  mkdirSync(join(cli, 'dist'), { recursive: true })
  writeFileSync(join(cli, 'package.json'), JSON.stringify({ name: '@napi-rs/cli', version: '2.18.4', bin: { napi: 'dist/cli.js' } }))
  writeFileSync(
    join(cli, 'dist', 'cli.js'),
    `require('fs').writeFileSync(${JSON.stringify(marker)}, process.argv.slice(2).join(' ') + ' in ' + process.cwd())\n`,
  )
}

describe(
  'scripts/install.mjs never fails an app install, and builds only where a build is wanted',
  { skip: !linuxWithBinary && 'needs Linux and a built addon' },
  () => {
    it('no binary and no Rust (optional dependencies omitted): exits 0, saying to install again with optional dependencies; require() then throws UNAVAILABLE', () => {
      const { dir } = packageCopy()
      published(dir)
      const empty = join(workDir, `empty-${++copies}`)
      mkdirSync(empty)
      const { code, output } = runInstall(dir, { path: empty })
      assert.equal(code, 0, output)
      assert.match(output, new RegExp(`The package durastate-${platformName()} has it: install durastate again with optional dependencies`))
      assert.match(output, /no Rust toolchain \(cargo\)/)
      assert.doesNotMatch(output, /building the native addon/)
      const probe = "try { require('./index.js'); console.log('loaded') } catch (err) { console.log(err.code) }"
      assert.equal(runNode(['-e', probe], { cwd: dir }).stdout.trim(), 'UNAVAILABLE')
    })

    it('a failed build exits 0 too, with the advice, and removes target/', () => {
      const { dir } = packageCopy()
      const log = join(workDir, `cargo-${++copies}.log`)
      const { code, output } = runInstall(dir, { preload: fakeMachine({ arch: 'riscv64' }), path: stubCargo(log, { fail: true }) })
      assert.equal(code, 0, output)
      assert.match(output, /building the addon failed/)
      assert.match(output, /no durastate binary loads on linux-riscv64-gnu\./)
      assert.ok(!existsSync(join(dir, 'target')), 'target/ was left behind')
    })

    it('npm installing for another platform (--os=darwin --cpu=arm64): builds nothing for this machine and exits 0', () => {
      const { dir } = packageCopy()
      published(dir, [platformName(), 'darwin-arm64'])
      const log = join(workDir, `cargo-${++copies}.log`)
      for (const env of [{ npm_config_os: 'darwin', npm_config_cpu: 'arm64' }, { npm_config_cpu: 'arm64' }, { npm_config_libc: 'musl' }]) {
        const { code, output } = runInstall(dir, { path: stubCargo(log), env })
        assert.equal(code, 0, output)
        assert.match(output, /not for this machine: nothing to build here/)
      }
      assert.ok(!existsSync(log) || !/build/.test(readFileSync(log, 'utf8')), 'cargo build ran')
      assert.deepEqual(
        readdirSync(dir).filter((f) => f.endsWith('.node') || f === 'target'),
        [],
      )
    })

    it("a durastate-<platform> package installed next to durastate (another platform's, from such an install): builds nothing", () => {
      const { app, dir } = packageCopy()
      published(dir, [platformName(), 'darwin-arm64'])
      const other = join(app, 'node_modules', 'durastate-darwin-arm64')
      mkdirSync(other)
      writeFileSync(join(other, 'package.json'), JSON.stringify({ name: 'durastate-darwin-arm64', version: '0.1.0', main: 'durastate.darwin-arm64.node' }))
      const log = join(workDir, `cargo-${++copies}.log`)
      const { code, output } = runInstall(dir, { path: stubCargo(log) })
      assert.equal(code, 0, output)
      assert.match(output, /durastate-darwin-arm64 is installed; nothing to build/)
      assert.ok(!existsSync(log) || !/build/.test(readFileSync(log, 'utf8')), 'cargo build ran')
    })

    it("in an app that has its own @napi-rs/cli: builds with cargo build --release --locked, not the app's napi, and removes target/", () => {
      const { app, dir } = packageCopy()
      const marker = join(workDir, `napi-${++copies}.txt`)
      stubNapiCli(app, marker)
      const log = join(workDir, `cargo-${++copies}.log`)
      const { code, output } = runInstall(dir, { preload: fakeMachine({ arch: 'riscv64' }), path: stubCargo(log) })
      assert.equal(code, 0, output)
      assert.ok(!existsSync(marker), `the app's napi ran: ${existsSync(marker) && readFileSync(marker, 'utf8')}`)
      assert.match(readFileSync(log, 'utf8'), /^build --release --locked$/m)
      assert.deepEqual(
        readdirSync(dir).filter((f) => f.endsWith('.node') || f === 'target'),
        ['durastate.linux-riscv64-gnu.node'],
      )
    })

    it("in a clone of the repository: builds with the clone's own napi CLI", () => {
      const { dir } = packageCopy()
      mkdirSync(join(dir, '.git'))
      const marker = join(workDir, `napi-${++copies}.txt`)
      stubNapiCli(dir, marker)
      runInstall(dir, { preload: fakeMachine({ arch: 'riscv64' }), path: stubCargo(join(workDir, `cargo-${++copies}.log`)) })
      assert.match(readFileSync(marker, 'utf8'), /^build --platform --release --js binding\.js --dts binding\.d\.ts in /)
    })
  },
)

describe('the from-source build inside an app that is a Rust workspace', () => {
  const cargo = spawnSync('cargo', ['--version'], { stdio: 'ignore' }).status === 0
  it(
    "cargo takes node_modules/durastate as a package of its own, not as a member the app's [workspace] does not list",
    { skip: !cargo && 'needs cargo' },
    () => {
      const { app, dir } = packageCopy()
      writeFileSync(join(app, 'Cargo.toml'), '[workspace]\nmembers = []\nresolver = "2"\n')
      for (const path of ['Cargo.toml', 'Cargo.lock', 'build.rs', 'src', '.cargo']) cpSync(join(packageRoot, path), join(dir, path), { recursive: true })
      // What `cargo build` checks first, without building: the workspace the package is in.
      const result = spawnSync('cargo', ['metadata', '--no-deps', '--offline', '--format-version', '1'], {
        cwd: dir,
        encoding: 'utf8',
        timeout: COMMAND_TIMEOUT,
      })
      assert.equal(result.status, 0, result.stderr)
      assert.equal(JSON.parse(result.stdout).workspace_root, dir)
    },
  )
})
