//! Step operations on `ds_steps` and `ds_step_expiry`, with the semantics of the two
//! Redis hashes they replace: all of an execution's in-progress marks expire together
//! (`claims_at`), as do all its results (`results_at`); a TTL is set by the write that
//! carries one and kept by writes that carry none; marks that are all gone take their
//! expiry with them. Without a TTL a call is one statement plus one point lookup.

use rusqlite::{params, Connection, OptionalExtension};

use super::entries;
use crate::command::{ExecutionView, Reply};
use crate::error::StoreResult;

/// An execution's expiries, as stored (`None`: none set).
#[derive(Default, Clone, Copy)]
pub struct Expiry {
  claims_at: Option<i64>,
  results_at: Option<i64>,
}

fn expiry(db: &Connection, exec: &str) -> StoreResult<Expiry> {
  let row = db
    .prepare_cached("SELECT claims_at, results_at FROM ds_step_expiry WHERE exec = ?1")?
    .query_row([exec], |row| {
      Ok(Expiry {
        claims_at: row.get(0)?,
        results_at: row.get(1)?,
      })
    })
    .optional()?;
  Ok(row.unwrap_or_default())
}

fn expired(at: Option<i64>, now: i64) -> bool {
  at.is_some_and(|at| at <= now)
}

/// Removes what has expired of `exec` before a write, so the write starts from what
/// Redis would hold; returns the expiries still in force.
pub fn purge(db: &Connection, exec: &str, now: i64) -> StoreResult<Expiry> {
  let mut found = expiry(db, exec)?;
  let (claims, results) = (
    expired(found.claims_at, now),
    expired(found.results_at, now),
  );
  if !claims && !results {
    return Ok(found);
  }
  if claims {
    db.prepare_cached("UPDATE ds_steps SET claim = NULL WHERE exec = ?1")?
      .execute([exec])?;
    found.claims_at = None;
  }
  if results {
    db.prepare_cached("UPDATE ds_steps SET result = NULL WHERE exec = ?1")?
      .execute([exec])?;
    found.results_at = None;
  }
  db.prepare_cached("DELETE FROM ds_steps WHERE exec = ?1 AND claim IS NULL AND result IS NULL")?
    .execute([exec])?;
  store_expiry(db, exec, found)?;
  Ok(found)
}

fn store_expiry(db: &Connection, exec: &str, expiry: Expiry) -> StoreResult<()> {
  if expiry.claims_at.is_none() && expiry.results_at.is_none() {
    db.prepare_cached("DELETE FROM ds_step_expiry WHERE exec = ?1")?
      .execute([exec])?;
  } else {
    db.prepare_cached(
      "INSERT INTO ds_step_expiry(exec, claims_at, results_at) VALUES (?1, ?2, ?3)
       ON CONFLICT(exec) DO UPDATE SET claims_at = excluded.claims_at,
         results_at = excluded.results_at",
    )?
    .execute(params![exec, expiry.claims_at, expiry.results_at])?;
  }
  Ok(())
}

/// Marks `task` in progress; `Int(1)` when this call set the mark.
pub fn claim(
  db: &Connection,
  exec: &str,
  task: &str,
  value: &str,
  exclusive: bool,
  expires_at: Option<i64>,
  now: i64,
) -> StoreResult<Reply> {
  let mut found = purge(db, exec, now)?;
  let sql = match exclusive {
    true => {
      "INSERT INTO ds_steps(exec, task, claim) VALUES (?1, ?2, ?3)
       ON CONFLICT(exec, task) DO UPDATE SET claim = excluded.claim WHERE claim IS NULL"
    }
    false => {
      "INSERT INTO ds_steps(exec, task, claim) VALUES (?1, ?2, ?3)
       ON CONFLICT(exec, task) DO UPDATE SET claim = excluded.claim"
    }
  };
  let written = db
    .prepare_cached(sql)?
    .execute(params![exec, task, value])?;
  if expires_at.is_some() {
    found.claims_at = expires_at;
    store_expiry(db, exec, found)?;
  }
  Ok(Reply::Int(written as i64))
}

/// Stores `task`'s result and clears its mark, in the caller's transaction.
pub fn commit(
  db: &Connection,
  exec: &str,
  task: &str,
  json: &str,
  expires_at: Option<i64>,
  now: i64,
) -> StoreResult<Reply> {
  let mut found = purge(db, exec, now)?;
  db.prepare_cached(
    "INSERT INTO ds_steps(exec, task, claim, result) VALUES (?1, ?2, NULL, ?3)
     ON CONFLICT(exec, task) DO UPDATE SET claim = NULL, result = excluded.result",
  )?
  .execute(params![exec, task, json])?;
  let mut changed = false;
  if found.claims_at.is_some() && !has_claims(db, exec)? {
    found.claims_at = None;
    changed = true;
  }
  if expires_at.is_some() {
    found.results_at = expires_at;
    changed = true;
  }
  if changed {
    store_expiry(db, exec, found)?;
  }
  Ok(Reply::Ok)
}

fn has_claims(db: &Connection, exec: &str) -> StoreResult<bool> {
  let sql = "SELECT 1 FROM ds_steps WHERE exec = ?1 AND claim IS NOT NULL LIMIT 1";
  Ok(db.prepare_cached(sql)?.exists([exec])?)
}

/// One step's result (`results: true`) or mark, as live now. Two point lookups: a
/// join of the two tables measured 5x slower, and a bound time compared with a column
/// that has a partial index makes SQLite prepare the statement again for every value.
pub fn field(
  db: &Connection,
  exec: &str,
  task: &str,
  results: bool,
  now: i64,
) -> StoreResult<Reply> {
  let found = expiry(db, exec)?;
  let (sql, at) = match results {
    true => (
      "SELECT result FROM ds_steps WHERE exec = ?1 AND task = ?2",
      found.results_at,
    ),
    false => (
      "SELECT claim FROM ds_steps WHERE exec = ?1 AND task = ?2",
      found.claims_at,
    ),
  };
  if expired(at, now) {
    return Ok(Reply::Nil);
  }
  let value: Option<Option<String>> = db
    .prepare_cached(sql)?
    .query_row(params![exec, task], |row| row.get(0))
    .optional()?;
  Ok(match value.flatten() {
    Some(value) => Reply::Bytes(value.into_bytes()),
    None => Reply::Nil,
  })
}

/// Every live result (`results: true`) or mark of `exec`, in task order.
pub fn fields(
  db: &Connection,
  exec: &str,
  results: bool,
  now: i64,
) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
  let found = expiry(db, exec)?;
  let (column, at) = match results {
    true => ("result", found.results_at),
    false => ("claim", found.claims_at),
  };
  if expired(at, now) {
    return Ok(Vec::new());
  }
  let sql = format!("SELECT task, {column} FROM ds_steps WHERE exec = ?1 AND {column} IS NOT NULL");
  let mut statement = db.prepare_cached(&sql)?;
  let rows = statement.query_map([exec], |row| {
    Ok((
      row.get::<_, String>(0)?.into_bytes(),
      row.get::<_, String>(1)?.into_bytes(),
    ))
  })?;
  Ok(rows.collect::<Result<_, _>>()?)
}

/// Removes the execution: marker entry, steps and expiries.
pub fn dispose(db: &Connection, exec: &str) -> StoreResult<Reply> {
  db.prepare_cached("DELETE FROM ds_entries WHERE key = ?1")?
    .execute([exec])?;
  db.prepare_cached("DELETE FROM ds_steps WHERE exec = ?1")?
    .execute([exec])?;
  db.prepare_cached("DELETE FROM ds_step_expiry WHERE exec = ?1")?
    .execute([exec])?;
  Ok(Reply::Ok)
}

/// Removes the marks and results of `tasks`.
pub fn reset(db: &Connection, exec: &str, tasks: &[String]) -> StoreResult<Reply> {
  let mut statement = db.prepare_cached("DELETE FROM ds_steps WHERE exec = ?1 AND task = ?2")?;
  for task in tasks {
    statement.execute(params![exec, task])?;
  }
  Ok(Reply::Ok)
}

/// Everything stored about `exec`, with TTLs as `PTTL` answers them.
pub fn view(db: &Connection, exec: &str, now: i64) -> StoreResult<Reply> {
  let marker = entries::get(db, exec, now)?;
  let found = expiry(db, exec)?;
  let claims = fields(db, exec, false, now)?;
  let results = fields(db, exec, true, now)?;
  Ok(Reply::Execution(Box::new(ExecutionView::from_rows(
    marker,
    claims,
    found.claims_at,
    results,
    found.results_at,
    now,
  ))))
}

/// One page of execution keys starting with `prefix`: first those with steps
/// (cursor `s...`), then markers (cursor `m...`).
pub fn scan_executions(
  db: &Connection,
  cursor: &str,
  prefix: &str,
  count: u32,
  now: i64,
) -> StoreResult<Reply> {
  let (phase, inner) = match cursor.split_at_checked(1) {
    Some(("m", inner)) => ('m', inner),
    Some(("s", inner)) => ('s', inner),
    _ => ('s', "0"),
  };
  let (table, column) = match phase {
    's' => ("ds_steps", "exec"),
    _ => ("ds_entries", "key"),
  };
  let (rows, next) = entries::page(db, table, column, inner, prefix, count, now)?;
  let keys = rows
    .into_iter()
    .filter(|(_, live)| *live)
    .map(|(key, _)| key)
    .collect();
  let cursor = match (phase, next.as_str()) {
    ('s', "0") => "m0".to_string(),
    (_, "0") => "0".to_string(),
    (phase, next) => format!("{phase}{next}"),
  };
  Ok(Reply::Scan { cursor, keys })
}
