// npm `install` hook: use a prebuilt binary when one fits this platform (the optional
// dependency durastate-<platform>, or a durastate.<platform>.node built here): then it does
// nothing, and installs that skip it (--ignore-scripts, npm 12 for a dependency whose
// install script was not approved) lose nothing. Else it builds the addon from source:
// with @napi-rs/cli in a clone (a devDependency), or with cargo alone in an installed
// package, whose tarball carries src/, Cargo.toml, Cargo.lock, build.rs and
// .cargo/config.toml for this.
import { spawnSync } from 'node:child_process'
import { copyFileSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const require = createRequire(import.meta.url)
// The name binding.js loads (durastate.<name>.node), shared with index.js.
const { describePlatform, platformName } = require('../platform.js')

function loadsBinding() {
  try {
    require(join(root, 'binding.js'))
    return true
  } catch {
    return false
  }
}

function run(command, args, env = {}) {
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } })
  return !result.error && result.status === 0
}

function napiCli() {
  try {
    const manifest = require.resolve('@napi-rs/cli/package.json', { paths: [root] })
    return join(dirname(manifest), require(manifest).bin.napi)
  } catch {
    return null
  }
}

function hasCargo() {
  return spawnSync('cargo', ['--version'], { stdio: 'ignore' }).status === 0
}

function buildWithNapi(cli) {
  return run(process.execPath, [cli, 'build', '--platform', '--release', '--js', 'binding.js', '--dts', 'binding.d.ts'])
}

/**
 * `cargo build`, then a copy of the library to the name binding.js loads (as `napi build
 * --platform` names it). The build directory (about 250 MB) is removed afterwards.
 */
function buildWithCargo() {
  const targetDir = join(root, 'target')
  try {
    if (!run('cargo', ['build', '--release', '--locked'], { CARGO_TARGET_DIR: targetDir })) return false
    const library = { win32: 'durastate.dll', darwin: 'libdurastate.dylib' }[process.platform] ?? 'libdurastate.so'
    copyFileSync(join(targetDir, 'release', library), join(root, `durastate.${platformName()}.node`))
    return true
  } finally {
    rmSync(targetDir, { recursive: true, force: true })
  }
}

if (!process.env.DURASTATE_FORCE_BUILD && loadsBinding()) {
  process.exit(0)
}
if (platformName() === null) {
  console.error(
    `durastate: no prebuilt binary for ${describePlatform()}, and none can be built from source: durastate's loader ` +
      `(binding.js, made by napi-rs) knows no binary for the architecture ${process.arch} on ${process.platform}.`,
  )
  process.exit(1)
}
const cli = napiCli()
if (!cli && !hasCargo()) {
  console.error(
    `durastate: no prebuilt binary for ${platformName()} (the package durastate-${platformName()} is not installed), ` +
      'and no Rust toolchain to build one from source.\n' +
      'Install Rust (https://rustup.rs) and a C compiler, then run `npm rebuild durastate` ' +
      '(npm 12 runs this script only once it is approved: `npm install-scripts approve durastate`).',
  )
  process.exit(1)
}
console.log(`durastate: building the native addon for ${platformName()} from source (release, LTO): about 2 minutes on 2 cores`)
if (!(cli ? buildWithNapi(cli) : buildWithCargo()) || !loadsBinding()) {
  console.error('durastate: building the addon failed; see the cargo output above (needs Rust: https://rustup.rs)')
  process.exit(1)
}
