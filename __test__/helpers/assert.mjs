// Assertions the spec files share.
import assert from 'node:assert/strict'

/**
 * Asserts that `promise` rejects with a DurastateError of `code`, and, when given, a
 * message matching `pattern`.
 */
export const rejectsWith = (promise, code, pattern) =>
  assert.rejects(promise, (err) => {
    assert.equal(err.name, 'DurastateError')
    assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`)
    if (pattern) assert.match(err.message, pattern)
    return true
  })
