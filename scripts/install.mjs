// npm `install` hook: use a prebuilt binary when one fits this platform, else build
// the addon from source with the Rust toolchain (`napi build --platform --release`).
import { spawnSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const require = createRequire(import.meta.url)

function hasPrebuiltBinary() {
  if (process.env.DURASTATE_FORCE_BUILD) return false
  try {
    require(join(root, 'binding.js'))
    return true
  } catch {
    return false
  }
}

function run(command, args) {
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit' })
  if (result.error) throw result.error
  return result.status === 0
}

function napiCli() {
  try {
    const manifest = require.resolve('@napi-rs/cli/package.json', { paths: [root] })
    return join(dirname(manifest), require(manifest).bin.napi)
  } catch {
    return null
  }
}

if (hasPrebuiltBinary()) {
  process.exit(0)
}
const cli = napiCli()
if (!cli) {
  console.error(
    'durastate: no prebuilt binary for ' + `${process.platform}-${process.arch}` +
      ' and @napi-rs/cli is not installed, so the addon cannot be built from source.\n' +
      'Install the Rust toolchain (https://rustup.rs) and run `npm install` in a clone of durastate.',
  )
  process.exit(1)
}
console.log('durastate: building the native addon from source (release, LTO): about 2 minutes on 2 cores')
const ok = run(process.execPath, [cli, 'build', '--platform', '--release', '--js', 'binding.js', '--dts', 'binding.d.ts'])
if (!ok || !readdirSync(root).some((f) => f.endsWith('.node'))) {
  console.error('durastate: building the addon failed; see the cargo output above (needs Rust: https://rustup.rs)')
  process.exit(1)
}
