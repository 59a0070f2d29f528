//! The SQLite file format (version 3, `PRAGMA user_version`), and the migration of
//! files written before: version 1 (0.1.0: a Redis-like keyspace in two generic tables)
//! and version 2 (these tables, with two expiry indexes on `ds_step_expiry`).
//!
//! Tables are shaped for the stores:
//! - `ds_entries`: strings by full key (KV entries and execution markers), with an
//!   optional absolute expiry in ms;
//! - `ds_steps`: one row per (execution, task): its in-progress mark and its result;
//! - `ds_step_expiry`: for executions stored with a TTL only, when all their marks
//!   (`claims_at`) and all their results (`results_at`) expire, as the two Redis hashes
//!   do, and `due`: a time at or before the earlier of the two, the only indexed column.
//!   `due` is a lower bound, not the exact time: a write that moves an expiry later
//!   (every write of a store with a fixed TTL) leaves it, so the index is not written
//!   again; the sweep that finds a row due early moves `due` on. Reads compare the exact
//!   times. (Keeping the two times indexed wrote 3 more pages per claim and per commit
//!   than a store without a TTL; this writes one.)
//!
//! `ds_entries` and `ds_steps` are rowid tables (the key in an index of its own): their
//! rows hold values of a KiB and more, which spill onto overflow pages, and a lookup in
//! a `WITHOUT ROWID` table reads a spilled row whole for every key it compares (a 1 KiB
//! value: get 2.6x and set 4x slower, measured). `ds_step_expiry`'s rows are small.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{ErrorCode, StoreError, StoreResult};

/// The format this build writes.
pub const VERSION: i64 = 3;
/// The format 0.1.0 wrote.
const KEYSPACE_VERSION: i64 = 1;
/// The first store-shaped format: `ds_step_expiry` without `due`, two expiry indexes.
const TWO_INDEX_VERSION: i64 = 2;

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS ds_entries (
  key TEXT PRIMARY KEY NOT NULL,
  value TEXT NOT NULL,
  expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS ds_entries_expiry
  ON ds_entries(expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS ds_steps (
  exec TEXT NOT NULL,
  task TEXT NOT NULL,
  claim TEXT,
  result TEXT,
  PRIMARY KEY (exec, task)
);
CREATE TABLE IF NOT EXISTS ds_step_expiry (
  exec TEXT PRIMARY KEY NOT NULL,
  claims_at INTEGER,
  results_at INTEGER,
  due INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ds_step_expiry_due ON ds_step_expiry(due);
";

/// Version 2 to 3: `due` (the earlier of the two expiries), one index instead of two.
const ADD_DUE: &str = "
ALTER TABLE ds_step_expiry ADD COLUMN due INTEGER NOT NULL DEFAULT 0;
UPDATE ds_step_expiry SET due = coalesce(min(claims_at, results_at), claims_at, results_at, 0);
DROP INDEX IF EXISTS ds_step_expiry_claims;
DROP INDEX IF EXISTS ds_step_expiry_results;
CREATE INDEX IF NOT EXISTS ds_step_expiry_due ON ds_step_expiry(due);
";

/// Sets the page size of a new database, WAL and the sync level, then creates the
/// tables or migrates a 0.1.0 file, in one transaction (another process opening the
/// same file at once waits for it, then finds the work done). Without `create`, only a
/// file of this build's format is taken, and nothing in it changes (the sync level is
/// the connection's own): an empty file, or one of an older format, is `UNAVAILABLE`.
pub fn prepare(
  connection: &mut Connection,
  full_sync: bool,
  page_size: Option<u32>,
  clock: impl Fn() -> i64,
  create: bool,
) -> StoreResult<()> {
  // The file is judged before anything in it changes: a database of another application
  // (or of a newer durastate) is refused as it is, in its own journal mode, without
  // our tables and with its own user_version. (One read transaction: another process
  // setting the file up meanwhile is seen all done or not at all.)
  let found = {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Deferred)?;
    judge(&tx)?
  };
  if !create {
    let sync = if full_sync { "FULL" } else { "NORMAL" };
    return match found {
      Layout::Current => Ok(connection.pragma_update(None, "synchronous", sync)?),
      Layout::New => Err(StoreError::new(
        ErrorCode::Unavailable,
        "the file holds no durastate store (no tables); nothing was created",
      )),
      Layout::Keyspace | Layout::TwoIndexes => Err(StoreError::new(
        ErrorCode::Unavailable,
        format!(
          "the file is in durastate's format {}{} and is read in format {VERSION} only; it was left as it is. A store of this version (createSqliteStore) migrates it when it opens it, after which older versions refuse it",
          if matches!(found, Layout::Keyspace) { KEYSPACE_VERSION } else { TWO_INDEX_VERSION },
          if matches!(found, Layout::Keyspace) { " (0.1.0)" } else { "" },
        ),
      )),
    };
  }
  if let Some(size) = page_size {
    connection.pragma_update(None, "page_size", size)?;
  }
  connection.pragma_update(None, "journal_mode", "WAL")?;
  let sync = if full_sync { "FULL" } else { "NORMAL" };
  connection.pragma_update(None, "synchronous", sync)?;
  if let Layout::Current = found {
    return Ok(());
  }
  let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
  // Judged again under the write lock: another process may have set the file up since.
  match judge(&tx)? {
    Layout::Current => return Ok(()),
    Layout::New => tx.execute_batch(TABLES)?,
    // (The time is read once the write lock is held: what expired is judged by it.)
    Layout::Keyspace => migrate_keyspace(&tx, clock())?,
    Layout::TwoIndexes => tx.execute_batch(ADD_DUE)?,
  }
  tx.pragma_update(None, "user_version", VERSION)?;
  tx.commit()?;
  Ok(())
}

/// What a file holds, as far as durastate knows it.
enum Layout {
  /// No table at all: a new (empty) database.
  New,
  /// 0.1.0's keyspace (`durastate_keys`, `durastate_fields`).
  Keyspace,
  /// Version 2.
  TwoIndexes,
  /// This build's format.
  Current,
}

/// The tables of each format.
const KEYSPACE_TABLES: [&str; 2] = ["durastate_keys", "durastate_fields"];
const STORE_TABLES: [&str; 3] = ["ds_entries", "ds_steps", "ds_step_expiry"];

/// Which of our formats the file is in, from its `user_version` and its tables; any
/// other file (another application's database, a newer durastate's) is `CORRUPT_DATA`.
fn judge(connection: &Connection) -> StoreResult<Layout> {
  let version = version(connection)?;
  let tables: Vec<String> = connection
    .prepare(
      "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite^_%' ESCAPE '^'
       ORDER BY name",
    )?
    .query_map([], |row| row.get(0))?
    .collect::<Result<_, _>>()?;
  let has = |names: &[&str]| names.iter().all(|name| tables.iter().any(|t| t == name));
  let only = |names: &[&str]| tables.iter().all(|t| names.contains(&t.as_str()));
  let layout = match version {
    0 if tables.is_empty() => Some(Layout::New),
    0 | KEYSPACE_VERSION if has(&KEYSPACE_TABLES) && only(&KEYSPACE_TABLES) => {
      Some(Layout::Keyspace)
    }
    TWO_INDEX_VERSION if has(&STORE_TABLES) => Some(Layout::TwoIndexes),
    VERSION if has(&STORE_TABLES) => Some(Layout::Current),
    _ => None,
  };
  if let Some(layout) = layout {
    return Ok(layout);
  }
  // A newer durastate keeps (some of) the tables' names; another application has none.
  let message = if version > VERSION && tables.iter().any(|t| t.starts_with("ds_")) {
    format!("file format version {version} is newer than this durastate understands ({VERSION})")
  } else {
    let shown: Vec<&str> = tables.iter().take(5).map(String::as_str).collect();
    format!(
      "not a durastate database: user_version {version}, tables [{}]{}",
      shown.join(", "),
      if tables.len() > shown.len() {
        ", ..."
      } else {
        ""
      }
    )
  };
  Err(StoreError::new(ErrorCode::CorruptData, message))
}

fn version(connection: &Connection) -> StoreResult<i64> {
  Ok(connection.pragma_query_value(None, "user_version", |row| row.get(0))?)
}

/// The suffixes of 0.1.0's two hashes of an execution.
const TRANSACTIONS: &str = "-transactions";
const RESULTS: &str = "-results";

/// Whether `k.key` ends with `suffix`. Compared as bytes: SQLite's `length` and `substr`
/// of a text stop at its first NUL, so a key holding one (`"a\0b-results"`) was cut short,
/// taken for a stray hash, and the whole migration refused.
fn ends_with(suffix: &str) -> String {
  format!(
    "(substr(CAST(k.key AS BLOB), -{len}) = CAST('{suffix}' AS BLOB))",
    len = suffix.len()
  )
}

/// The execution id of the hash `k.key` ending with `suffix`: every byte before it, NULs
/// included.
fn exec_of(suffix: &str) -> String {
  format!(
    "CAST(substr(CAST(k.key AS BLOB), 1, length(CAST(k.key AS BLOB)) - {len}) AS TEXT)",
    len = suffix.len()
  )
}

/// Moves a 0.1.0 keyspace into the store-shaped tables: strings become entries, the
/// hashes `<exec>-transactions` and `<exec>-results` become step rows, their TTLs the
/// execution's expiries. Expired keys are left behind. Any other hash (0.1.0 wrote
/// none) stops the migration, and the file is left as it was.
fn migrate_keyspace(tx: &Connection, now: i64) -> StoreResult<()> {
  let stray: Option<String> = tx
    .query_row(
      &format!(
        "SELECT key FROM durastate_keys k WHERE kind = 1
           AND NOT {} AND NOT {} LIMIT 1",
        ends_with(TRANSACTIONS),
        ends_with(RESULTS)
      ),
      [],
      |row| row.get(0),
    )
    .ok();
  if let Some(key) = stray {
    return Err(StoreError::new(
      ErrorCode::CorruptData,
      format!("cannot migrate this file: hash key \"{key}\" is not a WorkerStore key"),
    ));
  }
  tx.execute_batch(TABLES)?;
  let live = "(k.expires_at IS NULL OR k.expires_at > ?1)";
  let (claims, results) = (ends_with(TRANSACTIONS), ends_with(RESULTS));
  let (claims_exec, results_exec) = (exec_of(TRANSACTIONS), exec_of(RESULTS));
  let statements = [
    format!(
      "INSERT INTO ds_entries(key, value, expires_at)
       SELECT k.key, coalesce(k.value, ''), k.expires_at FROM durastate_keys k
       WHERE k.kind = 0 AND {live}"
    ),
    format!(
      "INSERT INTO ds_steps(exec, task, claim)
       SELECT {claims_exec}, f.field, f.value
       FROM durastate_keys k JOIN durastate_fields f ON f.key = k.key
       WHERE k.kind = 1 AND {claims} AND {live}"
    ),
    format!(
      "INSERT INTO ds_steps(exec, task, result)
       SELECT {results_exec}, f.field, f.value
       FROM durastate_keys k JOIN durastate_fields f ON f.key = k.key
       WHERE k.kind = 1 AND {results} AND {live}
       ON CONFLICT(exec, task) DO UPDATE SET result = excluded.result"
    ),
    format!(
      "INSERT INTO ds_step_expiry(exec, claims_at, due)
       SELECT {claims_exec}, k.expires_at, k.expires_at
       FROM durastate_keys k
       WHERE k.kind = 1 AND {claims}
         AND k.expires_at IS NOT NULL AND {live}"
    ),
    format!(
      "INSERT INTO ds_step_expiry(exec, results_at, due)
       SELECT {results_exec}, k.expires_at, k.expires_at
       FROM durastate_keys k
       WHERE k.kind = 1 AND {results}
         AND k.expires_at IS NOT NULL AND {live}
       ON CONFLICT(exec) DO UPDATE SET results_at = excluded.results_at,
         due = min(due, excluded.due)"
    ),
  ];
  for sql in &statements {
    tx.execute(sql, [now])?;
  }
  tx.execute_batch("DROP TABLE durastate_fields; DROP TABLE durastate_keys;")?;
  Ok(())
}
