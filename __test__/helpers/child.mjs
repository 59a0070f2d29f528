// Runs a short CommonJS script in a child process of the same runtime (Node.js, Bun or
// Deno) with the package loaded, bounded in time, and returns its exit code, signal,
// stdout and stderr.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { runtime } from './runtime.mjs'

export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const packageIndex = join(packageRoot, 'index.js')

/**
 * Starts `script` (CommonJS; `durastate` is `require`d as `ds`) in a new process.
 * Returns `{ child, done }`; `done` resolves to `{ code, signal, stdout, stderr, ms }` and
 * kills the child (SIGKILL) if it outlives `timeoutMs`.
 */
export function startChild(script, { cwd = packageRoot, env = {}, timeoutMs = 15_000 } = {}) {
  const source = `const ds = require(${JSON.stringify(packageIndex)});\n${script}`
  const started = Date.now()
  // Deno has no `-e` for CommonJS: it runs the script from a .cjs file, with every permission.
  const dir = runtime === 'deno' ? mkdtempSync(join(tmpdir(), 'durastate-child-')) : null
  if (dir) writeFileSync(join(dir, 'script.cjs'), source)
  const args = dir ? ['run', '-A', join(dir, 'script.cjs')] : ['-e', source]
  const child = spawn(process.execPath, args, {
    cwd,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (d) => {
    stdout += d
  })
  child.stderr.setEncoding('utf8').on('data', (d) => {
    stderr += d
  })
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    child.kill('SIGKILL')
  }, timeoutMs)
  const done = new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      if (dir) rmSync(dir, { recursive: true, force: true })
      resolve({ code, signal, stdout, stderr, timedOut, ms: Date.now() - started })
    })
  })
  return { child, done, output: () => stdout }
}

/** Runs `script` to its end (see `startChild`). */
export function runChild(script, options) {
  return startChild(script, options).done
}
