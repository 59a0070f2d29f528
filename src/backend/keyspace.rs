//! A small Redis-like keyspace (strings and hashes with millisecond TTLs) in SQLite.
//! Each batch is one transaction; expired keys read as missing and are swept through
//! an index on expiry, never by a full scan.

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::command::{Batch, Command, Condition, KeyKind, MergeOutcome, Reply};
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::glob;
use crate::json_value::{self, MergeError};

/// The schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;
/// Expired keys removed per write transaction at most.
const SWEEP_LIMIT: i64 = 64;
const KIND_STRING: i64 = 0;
const KIND_HASH: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS durastate_keys (
  key TEXT PRIMARY KEY NOT NULL,
  kind INTEGER NOT NULL,
  value TEXT,
  expires_at INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS durastate_keys_expiry
  ON durastate_keys(expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS durastate_fields (
  key TEXT NOT NULL,
  field TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (key, field)
) WITHOUT ROWID;
";

/// Sets the page size of a new database, the journal mode, and creates the tables when
/// missing. (SQLite ignores `page_size` once the file has pages.)
pub fn prepare(
  connection: &Connection,
  full_sync: bool,
  page_size: Option<u32>,
) -> StoreResult<()> {
  if let Some(size) = page_size {
    connection.pragma_update(None, "page_size", size)?;
  }
  connection.pragma_update(None, "journal_mode", "WAL")?;
  let sync = if full_sync { "FULL" } else { "NORMAL" };
  connection.pragma_update(None, "synchronous", sync)?;
  let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
  if version > SCHEMA_VERSION {
    return Err(StoreError::new(
      ErrorCode::CorruptData,
      format!(
        "schema version {version} is newer than this durastate understands ({SCHEMA_VERSION})"
      ),
    ));
  }
  connection.execute_batch(SCHEMA)?;
  connection.pragma_update(None, "user_version", SCHEMA_VERSION)?;
  Ok(())
}

/// Runs a batch in one transaction: all of it lands or none of it does.
pub fn execute(connection: &mut Connection, batch: &Batch, now: u64) -> StoreResult<Vec<Reply>> {
  let writes = batch.writes();
  let behavior = if writes {
    TransactionBehavior::Immediate
  } else {
    TransactionBehavior::Deferred
  };
  let tx = connection.transaction_with_behavior(behavior)?;
  let now = now as i64;
  let mut replies = Vec::with_capacity(batch.commands.len());
  for command in &batch.commands {
    replies.push(apply(&tx, command, now)?);
  }
  if writes {
    sweep(&tx, now)?;
  }
  tx.commit()?;
  Ok(replies)
}

/// What a key holds right now.
enum KeyState {
  Missing,
  Expired,
  Str(String),
  Hash,
}

fn apply(tx: &Transaction, command: &Command, now: i64) -> StoreResult<Reply> {
  match command {
    Command::Get { key } => match state(tx, key, now)? {
      KeyState::Str(value) => Ok(Reply::Bytes(value.into_bytes())),
      KeyState::Hash => Err(wrong_type(key)),
      _ => Ok(Reply::Nil),
    },
    Command::Set { key, value, ttl_ms } => {
      let current = state(tx, key, now)?;
      write_string(tx, key, &current, value, expiry_at(*ttl_ms, now))?;
      Ok(Reply::Ok)
    }
    Command::HGet { key, field } => match hash_state(tx, key, now)? {
      true => Ok(
        field_value(tx, key, field)?
          .map(|v| Reply::Bytes(v.into_bytes()))
          .unwrap_or(Reply::Nil),
      ),
      false => Ok(Reply::Nil),
    },
    Command::HGetAll { key } => match hash_state(tx, key, now)? {
      true => all_fields(tx, key).map(Reply::Pairs),
      false => Ok(Reply::Pairs(Vec::new())),
    },
    Command::HSet { key, field, value } => {
      ensure_hash(tx, key, now)?;
      let created = tx
        .prepare_cached(
          "INSERT OR IGNORE INTO durastate_fields(key, field, value) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![key, field, value])?;
      if created == 0 {
        tx.prepare_cached("UPDATE durastate_fields SET value = ?3 WHERE key = ?1 AND field = ?2")?
          .execute(params![key, field, value])?;
      }
      Ok(Reply::Int(created as i64))
    }
    Command::HSetNx { key, field, value } => {
      ensure_hash(tx, key, now)?;
      let created = tx
        .prepare_cached(
          "INSERT OR IGNORE INTO durastate_fields(key, field, value) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![key, field, value])?;
      Ok(Reply::Int(created as i64))
    }
    Command::HDel { key, field } => hdel(tx, key, field, now),
    Command::PExpire { key, ttl_ms } => match state(tx, key, now)? {
      KeyState::Str(_) | KeyState::Hash => {
        tx.prepare_cached("UPDATE durastate_keys SET expires_at = ?2 WHERE key = ?1")?
          .execute(params![key, now + *ttl_ms as i64])?;
        Ok(Reply::Int(1))
      }
      _ => Ok(Reply::Int(0)),
    },
    Command::Del { keys } | Command::Unlink { keys } => {
      let mut deleted = 0;
      for key in keys {
        match state(tx, key, now)? {
          KeyState::Missing => {}
          KeyState::Expired => delete_key(tx, key)?,
          _ => {
            delete_key(tx, key)?;
            deleted += 1;
          }
        }
      }
      Ok(Reply::Int(deleted))
    }
    Command::Exists { key } => Ok(Reply::Int(live(&state(tx, key, now)?) as i64)),
    Command::PTtl { key } => pttl(tx, key, now),
    Command::MGet { keys } => {
      let mut values = Vec::with_capacity(keys.len());
      for key in keys {
        values.push(match state(tx, key, now)? {
          KeyState::Str(value) => Some(value.into_bytes()),
          _ => None,
        });
      }
      Ok(Reply::Values(values))
    }
    Command::SetIf {
      key,
      value,
      ttl_ms,
      when,
    } => {
      let current = state(tx, key, now)?;
      if live(&current) != (*when == Condition::Exists) {
        return Ok(Reply::Nil);
      }
      write_string(tx, key, &current, value, expiry_at(*ttl_ms, now))?;
      Ok(Reply::Ok)
    }
    Command::SetGet { key, value, ttl_ms } => {
      let current = state(tx, key, now)?;
      let previous = match &current {
        KeyState::Hash => return Err(wrong_type(key)),
        KeyState::Str(old) => Reply::Bytes(old.clone().into_bytes()),
        _ => Reply::Nil,
      };
      write_string(tx, key, &current, value, expiry_at(*ttl_ms, now))?;
      Ok(previous)
    }
    Command::Merge {
      key,
      partial,
      ttl_ms,
      max_size,
      create,
    } => merge(tx, key, partial, *ttl_ms, *max_size, *create, now),
    Command::Scan {
      cursor,
      pattern,
      count,
      kind,
    } => scan(tx, cursor, pattern, *count, *kind, now),
  }
}

/// [`Command::Merge`]: the same rules as the Redis script, in one transaction.
fn merge(
  tx: &Transaction,
  key: &str,
  partial: &str,
  ttl_ms: Option<u64>,
  max_size: u64,
  create: bool,
  now: i64,
) -> StoreResult<Reply> {
  let current = state(tx, key, now)?;
  let merged = match &current {
    KeyState::Hash => return Err(wrong_type(key)),
    KeyState::Str(stored) => match json_value::merge_objects(stored, partial) {
      Ok(merged) => merged,
      Err(MergeError::NotAnObject) => return Ok(Reply::Merge(MergeOutcome::NotAnObject)),
      Err(MergeError::Unreadable(_)) => return Ok(Reply::Merge(MergeOutcome::Unreadable)),
    },
    _ if !create => return Ok(Reply::Merge(MergeOutcome::Missing)),
    _ => partial.to_string(),
  };
  if merged.len() as u64 > max_size {
    return Ok(Reply::Merge(MergeOutcome::TooLarge(merged.len() as u64)));
  }
  let expires_at = match ttl_ms {
    Some(ttl) => Some(now + ttl as i64),
    None => live_expiry(tx, key, &current)?,
  };
  write_string(tx, key, &current, &merged, expires_at)?;
  let created = !live(&current);
  Ok(Reply::Merge(MergeOutcome::Merged { created }))
}

fn expiry_at(ttl_ms: Option<u64>, now: i64) -> Option<i64> {
  ttl_ms.map(|ttl| now + ttl as i64)
}

fn live(state: &KeyState) -> bool {
  matches!(state, KeyState::Str(_) | KeyState::Hash)
}

/// Replaces whatever `key` holds (`current`) with a string, as Redis `SET` does.
fn write_string(
  tx: &Transaction,
  key: &str,
  current: &KeyState,
  value: &str,
  expires_at: Option<i64>,
) -> StoreResult<()> {
  if let KeyState::Hash | KeyState::Expired = current {
    delete_key(tx, key)?;
  }
  tx.prepare_cached(
    "INSERT OR REPLACE INTO durastate_keys(key, kind, value, expires_at) VALUES (?1, ?2, ?3, ?4)",
  )?
  .execute(params![key, KIND_STRING, value, expires_at])?;
  Ok(())
}

/// The expiry of a live key (`None`: it never expires or is not live).
fn live_expiry(tx: &Transaction, key: &str, current: &KeyState) -> StoreResult<Option<i64>> {
  if !live(current) {
    return Ok(None);
  }
  Ok(
    tx.prepare_cached("SELECT expires_at FROM durastate_keys WHERE key = ?1")?
      .query_row([key], |row| row.get::<_, Option<i64>>(0))?,
  )
}

fn pttl(tx: &Transaction, key: &str, now: i64) -> StoreResult<Reply> {
  let current = state(tx, key, now)?;
  if !live(&current) {
    return Ok(Reply::Int(-2));
  }
  Ok(Reply::Int(match live_expiry(tx, key, &current)? {
    Some(expires_at) => expires_at - now,
    None => -1,
  }))
}

/// One page of a `SCAN`: live keys after `cursor` (in key order) that match `pattern`,
/// examining at most `count` keys. The cursor is `"0"` or `"k:<last key examined>"`.
fn scan(
  tx: &Transaction,
  cursor: &str,
  pattern: &str,
  count: u32,
  kind: Option<KeyKind>,
  now: i64,
) -> StoreResult<Reply> {
  let literal = glob::literal_prefix(pattern);
  let after = cursor
    .strip_prefix("k:")
    .filter(|after| *after >= literal.as_str());
  let (sql, start) = match after {
    Some(after) => (
      "SELECT key, kind, expires_at FROM durastate_keys WHERE key > ?1 ORDER BY key LIMIT ?2",
      after,
    ),
    None => (
      "SELECT key, kind, expires_at FROM durastate_keys WHERE key >= ?1 ORDER BY key LIMIT ?2",
      literal.as_str(),
    ),
  };
  let rows: Vec<(String, i64, Option<i64>)> = tx
    .prepare_cached(sql)?
    .query_map(params![start, count.max(1)], |row| {
      Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })?
    .collect::<Result<_, _>>()?;
  let full_page = rows.len() == count.max(1) as usize;
  let mut keys = Vec::new();
  let mut last = None;
  for (key, key_kind, expires_at) in rows {
    if !key.starts_with(&literal) {
      return Ok(Reply::Scan {
        cursor: "0".to_string(),
        keys,
      });
    }
    let expired = expires_at.is_some_and(|at| at <= now);
    let kind_ok = kind.is_none_or(|kind| kind_code(kind) == key_kind);
    if !expired && kind_ok && glob::matches(pattern, &key) {
      keys.push(key.clone());
    }
    last = Some(key);
  }
  let cursor = match (full_page, last) {
    (true, Some(last)) => format!("k:{last}"),
    _ => "0".to_string(),
  };
  Ok(Reply::Scan { cursor, keys })
}

fn kind_code(kind: KeyKind) -> i64 {
  match kind {
    KeyKind::String => KIND_STRING,
    KeyKind::Hash => KIND_HASH,
  }
}

fn state(tx: &Transaction, key: &str, now: i64) -> StoreResult<KeyState> {
  let row = tx
    .prepare_cached("SELECT kind, value, expires_at FROM durastate_keys WHERE key = ?1")?
    .query_row([key], |row| {
      Ok((
        row.get::<_, i64>(0)?,
        row.get::<_, Option<String>>(1)?,
        row.get::<_, Option<i64>>(2)?,
      ))
    })
    .optional()?;
  Ok(match row {
    None => KeyState::Missing,
    Some((_, _, Some(expires_at))) if expires_at <= now => KeyState::Expired,
    Some((KIND_HASH, _, _)) => KeyState::Hash,
    Some((_, value, _)) => KeyState::Str(value.unwrap_or_default()),
  })
}

/// True when the key is a live hash, false when missing; a string is `WRONG_TYPE`.
fn hash_state(tx: &Transaction, key: &str, now: i64) -> StoreResult<bool> {
  match state(tx, key, now)? {
    KeyState::Hash => Ok(true),
    KeyState::Str(_) => Err(wrong_type(key)),
    _ => Ok(false),
  }
}

fn ensure_hash(tx: &Transaction, key: &str, now: i64) -> StoreResult<()> {
  match state(tx, key, now)? {
    KeyState::Hash => return Ok(()),
    KeyState::Str(_) => return Err(wrong_type(key)),
    KeyState::Expired => delete_key(tx, key)?,
    KeyState::Missing => {}
  }
  tx.prepare_cached(
    "INSERT INTO durastate_keys(key, kind, value, expires_at) VALUES (?1, ?2, NULL, NULL)",
  )?
  .execute(params![key, KIND_HASH])?;
  Ok(())
}

fn hdel(tx: &Transaction, key: &str, field: &str, now: i64) -> StoreResult<Reply> {
  if !hash_state(tx, key, now)? {
    return Ok(Reply::Int(0));
  }
  let deleted = tx
    .prepare_cached("DELETE FROM durastate_fields WHERE key = ?1 AND field = ?2")?
    .execute(params![key, field])?;
  let remaining: Option<i64> = tx
    .prepare_cached("SELECT 1 FROM durastate_fields WHERE key = ?1 LIMIT 1")?
    .query_row([key], |row| row.get(0))
    .optional()?;
  if remaining.is_none() {
    delete_key(tx, key)?;
  }
  Ok(Reply::Int(deleted as i64))
}

fn field_value(tx: &Transaction, key: &str, field: &str) -> StoreResult<Option<String>> {
  Ok(
    tx.prepare_cached("SELECT value FROM durastate_fields WHERE key = ?1 AND field = ?2")?
      .query_row(params![key, field], |row| row.get(0))
      .optional()?,
  )
}

fn all_fields(tx: &Transaction, key: &str) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
  let mut statement =
    tx.prepare_cached("SELECT field, value FROM durastate_fields WHERE key = ?1")?;
  let rows = statement.query_map([key], |row| {
    Ok((
      row.get::<_, String>(0)?.into_bytes(),
      row.get::<_, String>(1)?.into_bytes(),
    ))
  })?;
  Ok(rows.collect::<Result<_, _>>()?)
}

fn delete_key(tx: &Transaction, key: &str) -> StoreResult<()> {
  tx.prepare_cached("DELETE FROM durastate_fields WHERE key = ?1")?
    .execute([key])?;
  tx.prepare_cached("DELETE FROM durastate_keys WHERE key = ?1")?
    .execute([key])?;
  Ok(())
}

/// Removes a bounded number of expired keys, found through the expiry index.
fn sweep(tx: &Transaction, now: i64) -> StoreResult<()> {
  let expired: Vec<String> = tx
    .prepare_cached(
      "SELECT key FROM durastate_keys WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2",
    )?
    .query_map(params![now, SWEEP_LIMIT], |row| row.get(0))?
    .collect::<Result<_, _>>()?;
  for key in expired {
    delete_key(tx, &key)?;
  }
  Ok(())
}

fn wrong_type(key: &str) -> StoreError {
  StoreError::new(
    ErrorCode::WrongType,
    format!("WRONGTYPE: key \"{key}\" holds a value of another type"),
  )
}

#[cfg(test)]
mod tests {
  use super::*;

  fn db() -> Connection {
    let connection = Connection::open_in_memory().unwrap();
    prepare(&connection, false, None).unwrap();
    connection
  }

  fn run(connection: &mut Connection, command: Command, now: u64) -> StoreResult<Reply> {
    execute(connection, &Batch::one(command), now).map(|mut r| r.remove(0))
  }

  fn set(connection: &mut Connection, key: &str, value: &str, ttl_ms: Option<u64>, now: u64) {
    let command = Command::Set {
      key: key.into(),
      value: value.into(),
      ttl_ms,
    };
    assert_eq!(run(connection, command, now).unwrap(), Reply::Ok);
  }

  fn scan_all(connection: &mut Connection, pattern: &str, count: u32, now: u64) -> Vec<String> {
    let (mut cursor, mut found) = ("0".to_string(), Vec::new());
    loop {
      let command = Command::Scan {
        cursor,
        pattern: pattern.into(),
        count,
        kind: Some(KeyKind::String),
      };
      let Reply::Scan { cursor: next, keys } = run(connection, command, now).unwrap() else {
        panic!("not a scan page")
      };
      found.extend(keys);
      if next == "0" {
        return found;
      }
      cursor = next;
    }
  }

  #[test]
  fn scan_pages_through_live_string_keys_matching_the_glob() {
    let mut connection = db();
    for i in 0..25 {
      set(&mut connection, &format!("a*[x]:{i:02}"), "1", None, 0);
    }
    set(&mut connection, "a*[x]:gone", "1", Some(10), 0);
    set(&mut connection, "ab:1", "1", None, 0);
    let hash = Command::HSet {
      key: "a*[x]:hash".into(),
      field: "f".into(),
      value: "v".into(),
    };
    run(&mut connection, hash, 0).unwrap();
    let pattern = format!("{}*", crate::glob::escape("a*[x]:"));
    let found = scan_all(&mut connection, &pattern, 4, 100);
    let expected: Vec<String> = (0..25).map(|i| format!("a*[x]:{i:02}")).collect();
    assert_eq!(found, expected);
    assert_eq!(scan_all(&mut connection, "a*[x]:0?", 1000, 100).len(), 0);
    assert_eq!(
      scan_all(&mut connection, "a\\*\\[x\\]:0?", 1000, 100).len(),
      10
    );
  }

  #[test]
  fn conditional_sets_and_set_get() {
    let mut connection = db();
    let set_if = |when| Command::SetIf {
      key: "k".into(),
      value: "v".into(),
      ttl_ms: None,
      when,
    };
    assert_eq!(
      run(&mut connection, set_if(Condition::Exists), 0).unwrap(),
      Reply::Nil
    );
    assert_eq!(
      run(&mut connection, set_if(Condition::Missing), 0).unwrap(),
      Reply::Ok
    );
    assert_eq!(
      run(&mut connection, set_if(Condition::Missing), 0).unwrap(),
      Reply::Nil
    );
    let set_get = Command::SetGet {
      key: "k".into(),
      value: "w".into(),
      ttl_ms: Some(50),
    };
    assert_eq!(
      run(&mut connection, set_get, 0).unwrap(),
      Reply::Bytes(b"v".to_vec())
    );
    let pttl = Command::PTtl { key: "k".into() };
    assert_eq!(
      run(&mut connection, pttl.clone(), 10).unwrap(),
      Reply::Int(40)
    );
    assert_eq!(run(&mut connection, pttl, 60).unwrap(), Reply::Int(-2));
  }

  #[test]
  fn merge_keeps_the_ttl_checks_the_size_and_refuses_non_objects() {
    let mut connection = db();
    let merge = |partial: &str, create, max_size| Command::Merge {
      key: "m".into(),
      partial: partial.into(),
      ttl_ms: None,
      max_size,
      create,
    };
    let outcome = |reply| match reply {
      Reply::Merge(outcome) => outcome,
      other => panic!("{other:?}"),
    };
    let missing = run(&mut connection, merge(r#"{"a":1}"#, false, 100), 0).unwrap();
    assert_eq!(outcome(missing), MergeOutcome::Missing);
    set(&mut connection, "m", r#"{"a":1}"#, Some(1_000), 0);
    let merged = run(&mut connection, merge(r#"{"b":2}"#, false, 100), 10).unwrap();
    assert_eq!(outcome(merged), MergeOutcome::Merged { created: false });
    let value = run(&mut connection, Command::Get { key: "m".into() }, 20).unwrap();
    assert_eq!(value, Reply::Bytes(br#"{"a":1,"b":2}"#.to_vec()));
    let pttl = run(&mut connection, Command::PTtl { key: "m".into() }, 20).unwrap();
    assert_eq!(pttl, Reply::Int(980));
    let big = run(&mut connection, merge(r#"{"c":"xxxxxxxx"}"#, false, 20), 30).unwrap();
    assert_eq!(outcome(big), MergeOutcome::TooLarge(28));
    set(&mut connection, "m", "[1]", None, 40);
    let list = run(&mut connection, merge("{}", false, 100), 50).unwrap();
    assert_eq!(outcome(list), MergeOutcome::NotAnObject);
  }

  #[test]
  fn strings_expire_exactly_at_their_ttl() {
    let mut c = db();
    let set = Command::Set {
      key: "k".into(),
      value: "v".into(),
      ttl_ms: Some(100),
    };
    run(&mut c, set, 1_000).unwrap();
    let get = Command::Get { key: "k".into() };
    assert_eq!(
      run(&mut c, get.clone(), 1_099).unwrap(),
      Reply::Bytes(b"v".to_vec())
    );
    assert_eq!(run(&mut c, get, 1_100).unwrap(), Reply::Nil);
  }

  #[test]
  fn last_field_deleted_removes_the_hash() {
    let mut c = db();
    let hset = Command::HSet {
      key: "h".into(),
      field: "f".into(),
      value: "1".into(),
    };
    run(&mut c, hset, 0).unwrap();
    run(
      &mut c,
      Command::HDel {
        key: "h".into(),
        field: "f".into(),
      },
      0,
    )
    .unwrap();
    let n: i64 = c
      .query_row("SELECT count(*) FROM durastate_keys", [], |r| r.get(0))
      .unwrap();
    assert_eq!(n, 0);
  }

  #[test]
  fn hsetnx_wins_once_and_wrong_type_is_an_error() {
    let mut c = db();
    let claim = Command::HSetNx {
      key: "h".into(),
      field: "f".into(),
      value: "true".into(),
    };
    assert_eq!(run(&mut c, claim.clone(), 0).unwrap(), Reply::Int(1));
    assert_eq!(run(&mut c, claim, 0).unwrap(), Reply::Int(0));
    let get = Command::Get { key: "h".into() };
    assert_eq!(run(&mut c, get, 0).unwrap_err().code, ErrorCode::WrongType);
  }

  #[test]
  fn a_failing_batch_writes_nothing() {
    let mut c = db();
    run(
      &mut c,
      Command::Set {
        key: "s".into(),
        value: "x".into(),
        ttl_ms: None,
      },
      0,
    )
    .unwrap();
    let batch = Batch::atomic(vec![
      Command::HSet {
        key: "h".into(),
        field: "f".into(),
        value: "1".into(),
      },
      Command::HSet {
        key: "s".into(),
        field: "f".into(),
        value: "1".into(),
      },
    ]);
    assert!(execute(&mut c, &batch, 0).is_err());
    let get = Command::HGet {
      key: "h".into(),
      field: "f".into(),
    };
    assert_eq!(run(&mut c, get, 0).unwrap(), Reply::Nil);
  }

  #[test]
  fn writes_sweep_expired_keys() {
    let mut c = db();
    for i in 0..10 {
      let set = Command::Set {
        key: format!("k{i}"),
        value: "v".into(),
        ttl_ms: Some(10),
      };
      run(&mut c, set, 0).unwrap();
    }
    run(
      &mut c,
      Command::Set {
        key: "x".into(),
        value: "v".into(),
        ttl_ms: None,
      },
      100,
    )
    .unwrap();
    let n: i64 = c
      .query_row("SELECT count(*) FROM durastate_keys", [], |r| r.get(0))
      .unwrap();
    assert_eq!(n, 1);
  }

  #[test]
  fn the_sweep_finds_expired_keys_through_the_index_not_a_scan() {
    let c = db();
    let plan: Vec<String> = c
      .prepare(
        "EXPLAIN QUERY PLAN SELECT key FROM durastate_keys \
         WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2",
      )
      .unwrap()
      .query_map(params![0, SWEEP_LIMIT], |row| row.get::<_, String>(3))
      .unwrap()
      .collect::<Result<_, _>>()
      .unwrap();
    let plan = plan.join("; ");
    assert!(plan.contains("USING") && plan.contains("INDEX"), "{plan}");
    assert!(!plan.contains("SCAN durastate_keys"), "{plan}");
  }
}
