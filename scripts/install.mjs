// npm `install` hook: use a prebuilt binary when one fits this platform (the optional
// dependency durastate-<platform>, or a durastate.<platform>.node built here): then it does
// nothing, and installs that skip it (--ignore-scripts, npm 12 for a dependency whose
// install script was not approved) lose nothing. Else it builds the addon from source:
// with the clone's own @napi-rs/cli (a devDependency) in a clone of the repository, or with
// `cargo build --release --locked` in an installed package, whose tarball carries src/,
// Cargo.toml, Cargo.lock, build.rs and .cargo/config.toml for this.
//
// In an installed package it never fails the install (npm would roll back the whole
// project's install, so `npm rebuild durastate` could not follow): when it builds nothing,
// or the build fails, it prints what to do and exits 0, and `require('durastate')` throws
// UNAVAILABLE with the same advice. It builds nothing when npm installs for another
// platform (--os, --cpu, --libc: the binary would be this machine's), when a
// durastate-<platform> package is installed (its binary is the one wanted), or on an
// architecture binding.js knows no binary for.
import { spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, readFileSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const require = createRequire(import.meta.url)
// The name binding.js loads (durastate.<name>.node) and the advice of index.js's UNAVAILABLE.
const { describePlatform, isMusl, noBinaryMessage, platformName } = require('../platform.js')
/** A clone of the repository (`npm install` there builds the addon), not a package npm installed. */
const inClone = existsSync(join(root, '.git'))
const BUILD_TIME = 'about 5 minutes on 2 cores'

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

/** The clone's own napi CLI (its devDependency), never one an app installed next to durastate. */
function napiCli() {
  if (!inClone) return null
  const manifest = join(root, 'node_modules', '@napi-rs', 'cli', 'package.json')
  try {
    return join(dirname(manifest), JSON.parse(readFileSync(manifest, 'utf8')).bin.napi)
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
 * `cargo build --release --locked`, then a copy of the library to the name binding.js loads
 * (as `napi build --platform` names it). The build directory (about 250 MB) is removed afterwards.
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

/** The platform npm installs for when it is not this machine's (`npm install --os=linux --cpu=arm64`, --libc=musl), else null. */
function foreignTarget() {
  const os = process.env.npm_config_os || process.platform
  const cpu = process.env.npm_config_cpu || process.arch
  const hostLibc = process.platform === 'linux' ? (isMusl() ? 'musl' : 'glibc') : null
  const libc = process.env.npm_config_libc || hostLibc
  if (os === process.platform && cpu === process.arch && libc === hostLibc) return null
  return [os, cpu, libc].filter(Boolean).join(' ')
}

/** The durastate-<platform> packages (the optional dependencies) installed next to durastate. */
function installedPlatformPackages() {
  let names = []
  try {
    names = Object.keys(JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).optionalDependencies ?? {})
  } catch {}
  return names.filter((name) => {
    try {
      require.resolve(`${name}/package.json`, { paths: [root] })
      return true
    } catch {
      return false
    }
  })
}

/** Ends the script: in an installed package with exit code 0 (see the top), in a clone with `failed`'s. */
function done(message, failed = false) {
  if (message) (failed ? console.error : console.log)(message)
  process.exit(failed && inClone ? 1 : 0)
}

const force = Boolean(process.env.DURASTATE_FORCE_BUILD)
if (!force && loadsBinding()) done()
if (!force) {
  const target = foreignTarget()
  if (target)
    done(`durastate: npm is installing for ${target}, not for this machine: nothing to build here (the platform package for ${target} has the binary).`)
  const installed = installedPlatformPackages()
  if (installed.length > 0) done(`durastate: ${installed.join(', ')} is installed; nothing to build from source.`)
}
if (platformName() === null) {
  done(
    `durastate: no prebuilt binary for ${describePlatform()}, and none can be built from source: durastate's loader ` +
      `(binding.js, made by napi-rs) knows no binary for the architecture ${process.arch} on ${process.platform}.`,
    true,
  )
}
const cli = napiCli()
if (!cli && !hasCargo()) {
  done(
    `durastate: ${noBinaryMessage()}\n` +
      "durastate: no Rust toolchain (cargo) on PATH, so nothing was built now; require('durastate') throws UNAVAILABLE with this advice until a binary is there.",
    true,
  )
}
console.log(`durastate: building the native addon for ${platformName()} from source (release, LTO): ${BUILD_TIME}`)
if (!(cli ? buildWithNapi(cli) : buildWithCargo()) || !loadsBinding()) {
  done(
    `durastate: building the addon failed; see the cargo output above (needs Rust, https://rustup.rs, and a C compiler).\n` + `durastate: ${noBinaryMessage()}`,
    true,
  )
}
