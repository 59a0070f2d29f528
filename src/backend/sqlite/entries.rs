//! Entry commands (strings by full key, with ms TTLs) on `ds_entries`, with Redis's
//! semantics: an expired entry reads as missing, `SET` without a TTL clears it, `XX`
//! and `NX` see expired entries as missing. Each command is one or two statements.

use rusqlite::{params, Connection, OptionalExtension};

use crate::command::{Condition, KeyKind, MergeOutcome, Reply};
use crate::error::StoreResult;
use crate::glob;

macro_rules! live {
  () => {
    "(expires_at IS NULL OR expires_at > ?2)"
  };
}
const LIVE: &str = live!();

/// A live entry's value and expiry.
type Entry = (String, Option<i64>);

pub fn get(db: &Connection, key: &str, now: i64) -> StoreResult<Option<Entry>> {
  let sql = concat!(
    "SELECT value, expires_at FROM ds_entries WHERE key = ?1 AND ",
    live!()
  );
  Ok(
    db.prepare_cached(sql)?
      .query_row(params![key, now], |row| Ok((row.get(0)?, row.get(1)?)))
      .optional()?,
  )
}

pub fn value(entry: Option<Entry>) -> Reply {
  match entry {
    Some((value, _)) => Reply::Bytes(value.into_bytes()),
    None => Reply::Nil,
  }
}

pub fn set(db: &Connection, key: &str, value: &str, expires_at: Option<i64>) -> StoreResult<()> {
  db.prepare_cached(
    "INSERT INTO ds_entries(key, value, expires_at) VALUES (?1, ?2, ?3)
     ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
  )?
  .execute(params![key, value, expires_at])?;
  Ok(())
}

/// `SET ... NX|XX`: `Ok` when written, `Nil` when the condition failed.
pub fn set_if(
  db: &Connection,
  key: &str,
  value: &str,
  expires_at: Option<i64>,
  when: Condition,
  now: i64,
) -> StoreResult<Reply> {
  let written = match when {
    Condition::Missing => db
      .prepare_cached(
        "INSERT INTO ds_entries(key, value, expires_at) VALUES (?1, ?3, ?4)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
         WHERE ds_entries.expires_at IS NOT NULL AND ds_entries.expires_at <= ?2",
      )?
      .execute(params![key, now, value, expires_at])?,
    Condition::Exists => db
      .prepare_cached(&format!(
        "UPDATE ds_entries SET value = ?3, expires_at = ?4 WHERE key = ?1 AND {LIVE}"
      ))?
      .execute(params![key, now, value, expires_at])?,
  };
  Ok(if written > 0 { Reply::Ok } else { Reply::Nil })
}

/// `UNLINK`/`DEL`: how many of `keys` were live; expired ones are removed too.
pub fn delete(db: &Connection, keys: &[String], now: i64) -> StoreResult<Reply> {
  let mut statement = db.prepare_cached(&format!(
    "DELETE FROM ds_entries WHERE key = ?1 RETURNING {LIVE}"
  ))?;
  let mut deleted = 0;
  for key in keys {
    let live: Option<bool> = statement
      .query_row(params![key, now], |row| row.get(0))
      .optional()?;
    deleted += live.unwrap_or(false) as i64;
  }
  Ok(Reply::Int(deleted))
}

/// `PTTL`: ms left, -1 without expiry, -2 when missing.
pub fn pttl(entry: Option<Entry>, now: i64) -> Reply {
  Reply::Int(match entry {
    None => -2,
    Some((_, None)) => -1,
    Some((_, Some(at))) => at - now,
  })
}

/// Shallow-merges the JSON object `partial` into the entry, as the Redis script does.
pub fn merge(
  db: &Connection,
  key: &str,
  partial: &str,
  expires_at: Option<i64>,
  max_size: u64,
  create: bool,
  now: i64,
) -> StoreResult<Reply> {
  let current = get(db, key, now)?;
  let stored = current.as_ref().map(|(stored, _)| stored.as_str());
  let merged = match MergeOutcome::merged(stored, partial, max_size, create) {
    Ok(merged) => merged,
    Err(stopped) => return Ok(Reply::Merge(stopped)),
  };
  let kept = current.as_ref().and_then(|(_, at)| *at);
  set(db, key, &merged, expires_at.or(kept))?;
  let created = current.is_none();
  Ok(Reply::Merge(MergeOutcome::Merged { created }))
}

/// One page of a `SCAN`: live entries after `cursor` (in key order) that match
/// `pattern`, examining at most `count` rows. The cursor is `"0"` or `"k:<last key>"`.
/// Every entry is a string: `TYPE hash` finds nothing.
pub fn scan(
  db: &Connection,
  cursor: &str,
  pattern: &str,
  count: u32,
  kind: Option<KeyKind>,
  now: i64,
) -> StoreResult<Reply> {
  if kind == Some(KeyKind::Hash) {
    return Ok(Reply::Scan {
      cursor: "0".into(),
      keys: Vec::new(),
    });
  }
  let literal = glob::literal_prefix(pattern);
  let (rows, next) = page(db, "ds_entries", "key", cursor, &literal, count, now)?;
  let keys = rows
    .into_iter()
    .filter(|(key, live)| *live && glob::matches(pattern, key))
    .map(|(key, _)| key)
    .collect();
  Ok(Reply::Scan { cursor: next, keys })
}

/// Up to `count` rows of `column` in `table` from the cursor on, that start with
/// `literal`, each with whether it is live (tables without an expiry: always); and the
/// next cursor (`"0"` when the range is done).
pub fn page(
  db: &Connection,
  table: &str,
  column: &str,
  cursor: &str,
  literal: &str,
  count: u32,
  now: i64,
) -> StoreResult<(Vec<(String, bool)>, String)> {
  let after = cursor.strip_prefix("k:").filter(|after| *after >= literal);
  let (op, start) = match after {
    Some(after) => (">", after),
    None => (">=", literal),
  };
  let live = match table {
    "ds_entries" => LIVE,
    _ => "?2 = ?2",
  };
  let sql = format!(
    "SELECT DISTINCT {column}, {live} FROM {table} WHERE {column} {op} ?1
     ORDER BY {column} LIMIT ?3"
  );
  let limit = count.max(1);
  let rows: Vec<(String, bool)> = db
    .prepare_cached(&sql)?
    .query_map(params![start, now, limit], |row| {
      Ok((row.get(0)?, row.get(1)?))
    })?
    .collect::<Result<_, _>>()?;
  let full = rows.len() == limit as usize;
  let in_range: Vec<_> = rows
    .into_iter()
    .take_while(|(key, _)| key.starts_with(literal))
    .collect();
  let next = match in_range.last() {
    Some((last, _)) if full && in_range.len() == limit as usize => format!("k:{last}"),
    _ => "0".to_string(),
  };
  Ok((in_range, next))
}
