// What a SQLite file holds, read with another library (better-sqlite3, read-only): for the
// tests that check durastate's file format, or that a read left a file as it was.
import { createRequire } from 'node:module'

const Database = createRequire(import.meta.url)('better-sqlite3')

/** The file's format (`user_version`) and its tables, sorted by name. */
export function fileFormat(path) {
  const db = new Database(path, { readonly: true, fileMustExist: true })
  try {
    const tables = db
      .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
      .all()
      .map((r) => r.name)
    return { version: db.pragma('user_version', { simple: true }), tables }
  } finally {
    db.close()
  }
}
