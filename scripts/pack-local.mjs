// `npm run pack:local`: the two tarballs a release publishes for this machine's platform,
// made with the tools and steps of the release workflow (.github/workflows/release.yml),
// into dist/:
//   dist/durastate-<version>.tgz             the main package; `napi pre-publish` has added
//                                            its optionalDependencies (here: this platform's)
//   dist/durastate-<platform>-<version>.tgz  npm/<platform> with the binary `napi artifacts`
//                                            copied in (durastate.<platform>.node)
// It builds the addon first (`napi build --platform --release`; nothing to do when it is up
// to date) unless given --no-build. The steps run in a staging copy, so package.json and npm/
// here stay as committed. Prints the two paths as JSON on its last line.
import { spawnSync } from 'node:child_process'
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseTriple } from '@napi-rs/cli'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const napiCli = join(root, 'node_modules', '@napi-rs', 'cli', 'dist', 'cli.js')
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'

function run(command, args, cwd, { quiet = false } = {}) {
  const result = spawnSync(command, args, {
    cwd,
    encoding: 'utf8',
    stdio: quiet ? 'pipe' : ['ignore', 'inherit', 'inherit'],
    shell: process.platform === 'win32' && command.endsWith('.cmd'),
  })
  if (result.error) throw result.error
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited with ${result.status ?? result.signal}\n${result.stdout ?? ''}\n${result.stderr ?? ''}`)
  }
  return result.stdout
}

/** The napi-rs target this machine built: the npm/<platform> package whose `main` is a built binary here. */
function builtTarget(manifest) {
  const built = readdirSync(root).filter((name) => /^durastate\..+\.node$/.test(name))
  const targets = manifest.napi.targets.filter((triple) => {
    const main = JSON.parse(readFileSync(join(root, 'npm', platformOf(triple), 'package.json'), 'utf8')).main
    return built.includes(main)
  })
  if (targets.length !== 1) {
    throw new Error(
      `expected one built binary for one of ${manifest.napi.targets.join(', ')} in ${root} (run \`npm run build\`), found: ${built.join(', ') || 'none'}`,
    )
  }
  return targets[0]
}

/** linux-x64-gnu for x86_64-unknown-linux-gnu: napi-rs's own mapping (its package dirs and binary names). */
function platformOf(triple) {
  return parseTriple(triple).platformArchABI
}

/** `npm pack` of `dir` into `destination`: the file name it wrote. */
function pack(dir, destination) {
  const [report] = JSON.parse(run(npm, ['pack', '--json', '--ignore-scripts', '--pack-destination', destination], dir, { quiet: true }))
  return join(destination, report.filename)
}

export async function packLocal({ build = true } = {}) {
  if (build) run(process.execPath, [napiCli, 'build', '--platform', '--release', '--js', 'binding.js', '--dts', 'binding.d.ts'], root)
  const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
  const triple = builtTarget(manifest)
  const platform = platformOf(triple)
  const binary = `${manifest.napi.binaryName}.${platform}.node`
  const dist = join(root, 'dist')
  mkdirSync(dist, { recursive: true })

  const stage = mkdtempSync(join(tmpdir(), 'durastate-pack-'))
  try {
    // The main package's files, as `npm pack` picks them (the `files` list, README, LICENSE).
    const [{ files }] = JSON.parse(run(npm, ['pack', '--dry-run', '--json', '--ignore-scripts'], root, { quiet: true }))
    for (const { path } of files) {
      mkdirSync(dirname(join(stage, path)), { recursive: true })
      copyFileSync(join(root, path), join(stage, path))
    }
    cpSync(join(root, 'npm', platform), join(stage, 'npm', platform), { recursive: true })
    // As the release's publish job: the build job's artifact, then `napi artifacts` and
    // `napi pre-publish`, here for the one target this machine built.
    const artifacts = join(stage, 'artifacts', `bindings-${triple}`)
    mkdirSync(artifacts, { recursive: true })
    copyFileSync(join(root, binary), join(artifacts, binary))
    const staged = JSON.parse(readFileSync(join(stage, 'package.json'), 'utf8'))
    writeFileSync(join(stage, 'package.json'), JSON.stringify({ ...staged, napi: { ...staged.napi, targets: [triple] } }, null, 2) + '\n')
    run(process.execPath, [napiCli, 'artifacts', '--output-dir', 'artifacts', '--npm-dir', 'npm'], stage)
    run(process.execPath, [napiCli, 'pre-publish', '--npm-dir', 'npm', '--tag-style', 'npm', '--no-gh-release', '--skip-optional-publish'], stage)
    const prepared = JSON.parse(readFileSync(join(stage, 'package.json'), 'utf8'))
    writeFileSync(join(stage, 'package.json'), JSON.stringify({ ...prepared, napi: manifest.napi }, null, 2) + '\n')
    rmSync(join(stage, binary), { force: true })

    return { main: pack(stage, dist), platform: pack(join(stage, 'npm', platform), dist), platformPackage: `${manifest.name}-${platform}` }
  } finally {
    rmSync(stage, { recursive: true, force: true })
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const tarballs = await packLocal({ build: !process.argv.includes('--no-build') })
  console.log(`wrote ${tarballs.main}\nwrote ${tarballs.platform}`)
  console.log(JSON.stringify(tarballs))
}
