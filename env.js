'use strict'
// Where a store's target comes from when none is given, in one place for the factories
// (index.js) and the CLI. The addon itself never reads the environment for a target.

/** The variables a URL falls back to, in this order, when a factory or the CLI gets none. */
const URL_VARIABLES = ['DURASTATE_URL', 'REDIS_URL', 'DATABASE_URL']

/**
 * `target`, or when it is absent (undefined, null or ''), the first of the environment
 * variables `names` that is set and not empty, read from `process.env`: on Bun an
 * assignment to `process.env` or a `delete` from it (a `.env` loader's, a test's) does not
 * reach the process's own environment, which the addon would read.
 */
function orEnv(target, ...names) {
  if (target !== undefined && target !== null && target !== '') return target
  for (const name of names) {
    let value
    try {
      value = process.env[name]
    } catch {
      // Deno without --allow-env: the variable cannot be read; the next one, then the default.
      continue
    }
    if (typeof value === 'string' && value !== '') return value
  }
  return undefined
}

module.exports = { URL_VARIABLES, orEnv }
