//! Step operations on `ds_steps` and `ds_step_expiry`, with the semantics of the two
//! Redis hashes they replace: all of an execution's in-progress marks expire together
//! (`claims_at`), as do all its results (`results_at`); a TTL is set by the write that
//! carries one and kept by writes that carry none; marks that are all gone take their
//! expiry with them. Without a TTL a call is one statement plus one point lookup.

use rusqlite::{params, Connection, OptionalExtension};

use super::entries;
use crate::command::{ExecutionView, Reply};
use crate::error::StoreResult;

/// An execution's expiries, as stored (`None`: none set), and its row's `due` (`None`:
/// no row).
#[derive(Default, Clone, Copy)]
pub struct Expiry {
  claims_at: Option<i64>,
  results_at: Option<i64>,
  due: Option<i64>,
}

impl Expiry {
  /// The earlier of the two expiries.
  fn earliest(&self) -> Option<i64> {
    match (self.claims_at, self.results_at) {
      (Some(a), Some(b)) => Some(a.min(b)),
      (a, b) => a.or(b),
    }
  }
}

fn expiry(db: &Connection, exec: &str) -> StoreResult<Expiry> {
  let row = db
    .prepare_cached("SELECT claims_at, results_at, due FROM ds_step_expiry WHERE exec = ?1")?
    .query_row([exec], |row| {
      Ok(Expiry {
        claims_at: row.get(0)?,
        results_at: row.get(1)?,
        due: Some(row.get(2)?),
      })
    })
    .optional()?;
  Ok(row.unwrap_or_default())
}

fn expired(at: Option<i64>, now: i64) -> bool {
  at.is_some_and(|at| at <= now)
}

/// Removes what has expired of `exec` before a write, so the write starts from what
/// Redis would hold; returns the expiries still in force. A row found due (by the sweep,
/// or a write after its `due`) with nothing expired gets its `due` moved on.
pub fn purge(db: &Connection, exec: &str, now: i64) -> StoreResult<Expiry> {
  let found = expiry(db, exec)?;
  let (claims, results) = (
    expired(found.claims_at, now),
    expired(found.results_at, now),
  );
  if !claims && !results {
    if expired(found.due, now) {
      return store_expiry(db, exec, found, Expiry { due: None, ..found });
    }
    return Ok(found);
  }
  let mut kept = found;
  if claims {
    db.prepare_cached("UPDATE ds_steps SET claim = NULL WHERE exec = ?1")?
      .execute([exec])?;
    kept.claims_at = None;
  }
  if results {
    db.prepare_cached("UPDATE ds_steps SET result = NULL WHERE exec = ?1")?
      .execute([exec])?;
    kept.results_at = None;
  }
  db.prepare_cached("DELETE FROM ds_steps WHERE exec = ?1 AND claim IS NULL AND result IS NULL")?
    .execute([exec])?;
  store_expiry(db, exec, found, Expiry { due: None, ..kept })
}

/// Stores `new` expiries over `old` (as read). `due` stays where it is while it is not
/// after the new earliest expiry (an expiry moved later keeps its index entry, and only
/// the row's page is written), else it becomes that expiry; `new.due: None` asks for it
/// to be set to the earliest expiry whatever it was.
fn store_expiry(db: &Connection, exec: &str, old: Expiry, new: Expiry) -> StoreResult<Expiry> {
  let Some(earliest) = new.earliest() else {
    if old.due.is_some() {
      db.prepare_cached("DELETE FROM ds_step_expiry WHERE exec = ?1")?
        .execute([exec])?;
    }
    return Ok(Expiry::default());
  };
  let keep = new.due.is_some() && old.due.is_some_and(|due| due <= earliest);
  if keep {
    if (old.claims_at, old.results_at) != (new.claims_at, new.results_at) {
      db.prepare_cached(
        "UPDATE ds_step_expiry SET claims_at = ?2, results_at = ?3 WHERE exec = ?1",
      )?
      .execute(params![exec, new.claims_at, new.results_at])?;
    }
    return Ok(Expiry {
      due: old.due,
      ..new
    });
  }
  db.prepare_cached(
    "INSERT INTO ds_step_expiry(exec, claims_at, results_at, due) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT(exec) DO UPDATE SET claims_at = excluded.claims_at,
       results_at = excluded.results_at, due = excluded.due",
  )?
  .execute(params![exec, new.claims_at, new.results_at, earliest])?;
  Ok(Expiry {
    due: Some(earliest),
    ..new
  })
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
  let found = purge(db, exec, now)?;
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
  // A claim that lost writes nothing: refreshing the expiry there would keep a dead
  // worker's mark alive as long as others keep trying to claim it.
  if expires_at.is_some() && (written > 0 || !exclusive) {
    let new = Expiry {
      claims_at: expires_at,
      ..found
    };
    store_expiry(db, exec, found, new)?;
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
  let found = purge(db, exec, now)?;
  db.prepare_cached(
    "INSERT INTO ds_steps(exec, task, claim, result) VALUES (?1, ?2, NULL, ?3)
     ON CONFLICT(exec, task) DO UPDATE SET claim = NULL, result = excluded.result",
  )?
  .execute(params![exec, task, json])?;
  let mut new = found;
  if found.claims_at.is_some() && !has_claims(db, exec)? {
    new.claims_at = None;
  }
  if expires_at.is_some() {
    new.results_at = expires_at;
  }
  store_expiry(db, exec, found, new)?;
  Ok(Reply::Ok)
}

fn has_claims(db: &Connection, exec: &str) -> StoreResult<bool> {
  let sql = "SELECT 1 FROM ds_steps WHERE exec = ?1 AND claim IS NOT NULL LIMIT 1";
  Ok(db.prepare_cached(sql)?.exists([exec])?)
}

/// One step's result (`results: true`) or mark, as live now: one statement (the
/// step's column and the execution's expiry, each a point lookup), so a lone read needs
/// no transaction of its own. The time is compared here, not in SQL: a bound time
/// compared with a column that has a partial index makes SQLite prepare the statement
/// again for every value.
pub fn field(
  db: &Connection,
  exec: &str,
  task: &str,
  results: bool,
  now: i64,
) -> StoreResult<Reply> {
  let sql = match results {
    true => {
      "SELECT (SELECT result FROM ds_steps WHERE exec = ?1 AND task = ?2),
              (SELECT results_at FROM ds_step_expiry WHERE exec = ?1)"
    }
    false => {
      "SELECT (SELECT claim FROM ds_steps WHERE exec = ?1 AND task = ?2),
              (SELECT claims_at FROM ds_step_expiry WHERE exec = ?1)"
    }
  };
  let (value, at): (Option<String>, Option<i64>) = db
    .prepare_cached(sql)?
    .query_row(params![exec, task], |row| Ok((row.get(0)?, row.get(1)?)))?;
  Ok(match value {
    Some(value) if !expired(at, now) => Reply::Bytes(value.into_bytes()),
    _ => Reply::Nil,
  })
}

/// Every live result (`results: true`) or mark of `exec`, in task order: one
/// statement (the expiry is a constant subquery, read once).
pub fn fields(
  db: &Connection,
  exec: &str,
  results: bool,
  now: i64,
) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
  let sql = match results {
    true => {
      "SELECT task, result, (SELECT results_at FROM ds_step_expiry WHERE exec = ?1)
       FROM ds_steps WHERE exec = ?1 AND result IS NOT NULL"
    }
    false => {
      "SELECT task, claim, (SELECT claims_at FROM ds_step_expiry WHERE exec = ?1)
       FROM ds_steps WHERE exec = ?1 AND claim IS NOT NULL"
    }
  };
  let mut statement = db.prepare_cached(sql)?;
  let mut rows = statement.query([exec])?;
  let mut out = Vec::new();
  while let Some(row) = rows.next()? {
    if expired(row.get::<_, Option<i64>>(2)?, now) {
      return Ok(Vec::new());
    }
    out.push((
      row.get::<_, String>(0)?.into_bytes(),
      row.get::<_, String>(1)?.into_bytes(),
    ));
  }
  Ok(out)
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
/// As on Redis, where removing a hash's last field removes its TTL: the marks' expiry goes
/// with the last mark, the results' with the last result (a later write without a TTL
/// must not inherit them).
pub fn reset(db: &Connection, exec: &str, tasks: &[String]) -> StoreResult<Reply> {
  let mut statement = db.prepare_cached("DELETE FROM ds_steps WHERE exec = ?1 AND task = ?2")?;
  for task in tasks {
    statement.execute(params![exec, task])?;
  }
  let found = expiry(db, exec)?;
  if found.due.is_none() {
    return Ok(Reply::Ok);
  }
  let (claims, results): (bool, bool) = db
    .prepare_cached(
      "SELECT EXISTS (SELECT 1 FROM ds_steps WHERE exec = ?1 AND claim IS NOT NULL),
              EXISTS (SELECT 1 FROM ds_steps WHERE exec = ?1 AND result IS NOT NULL)",
    )?
    .query_row([exec], |row| Ok((row.get(0)?, row.get(1)?)))?;
  let kept = Expiry {
    claims_at: found.claims_at.filter(|_| claims),
    results_at: found.results_at.filter(|_| results),
    ..found
  };
  if (kept.claims_at, kept.results_at) != (found.claims_at, found.results_at) {
    store_expiry(db, exec, found, kept)?;
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
