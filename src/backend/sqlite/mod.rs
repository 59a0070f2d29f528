//! The store operations of the seam (`command.rs`) as SQL on tables shaped for the
//! data (`schema.rs`): entries by full key, steps by (execution, task). Used by the
//! embedded backend for a SQLite file and for memory.
//!
//! Calls made together run in one transaction (group commit): each call inside its own
//! savepoint, so a call that fails leaves the others applied, and every call in the
//! group is committed (in the WAL) before any of them is answered.

mod entries;
pub mod schema;
mod steps;

use rusqlite::Connection;

use crate::command::{Batch, Command, Reply};
use crate::error::{ErrorCode, StoreError, StoreResult};

pub use schema::prepare;

/// Expired rows a sweep removes at most (entries, and executions' step expiries): this
/// many, or twice the commands of its transaction, up to [`SWEEP_MAX`].
const SWEEP_LIMIT: i64 = 64;
/// The most expired rows of each kind one sweep removes (a few milliseconds of work).
const SWEEP_MAX: i64 = 512;
/// A write transaction sweeps when this long (ms) has passed since the last sweep, or at
/// once while the last sweep found more expired rows than it removed.
const SWEEP_EVERY_MS: i64 = 100;

/// When this connection last swept expired rows (ms since the epoch), and whether that
/// sweep left expired rows behind (it removed as many as it could).
#[derive(Default)]
pub struct Sweeper {
  last: i64,
  backlog: bool,
}

/// Runs `batches` in one transaction and answers each. `Err` only when the transaction
/// itself failed (busy, I/O, a damaged file): then nothing of any batch was written.
///
/// `clock` (ms since the epoch) is read once the transaction has begun: `BEGIN IMMEDIATE`
/// can wait up to the busy timeout for another process's write lock, and a time read
/// before that wait wrote TTLs already (partly) gone and judged entries live that had
/// expired meanwhile.
pub fn execute_group(
  connection: &mut Connection,
  batches: &[&Batch],
  clock: impl Fn() -> u64,
  sweeper: &mut Sweeper,
) -> StoreResult<Vec<StoreResult<Vec<Reply>>>> {
  execute_claimed_group(connection, batches, |_| true, |_| false, clock, sweeper)
}

/// [`execute_group`], where `claim(i)`, asked once the transaction has begun (a group
/// that writes holds the write lock then, so what runs is applied at once), says whether
/// batch `i` still runs (`abandoned(i)`, asked before: whether its caller already gave up): a call whose caller gave up waiting (`TIMEOUT`) is skipped, and
/// answers [`skipped`] (which nobody reads: its caller was answered already).
pub fn execute_claimed_group(
  connection: &mut Connection,
  batches: &[&Batch],
  claim: impl Fn(usize) -> bool,
  abandoned: impl Fn(usize) -> bool,
  clock: impl Fn() -> u64,
  sweeper: &mut Sweeper,
) -> StoreResult<Vec<StoreResult<Vec<Reply>>>> {
  let writes = batches.iter().any(|batch| batch.writes());
  let now = || clock().min(i64::MAX as u64) as i64;
  // Every caller gave up before the group began: no transaction (whose BEGIN would wait
  // for another process's lock for nothing, and hold `close()` that long).
  if (0..batches.len()).all(abandoned) {
    return Ok(batches.iter().map(|_| Err(skipped())).collect());
  }
  // A lone read of one statement is its own (implicit) read transaction.
  if let [only] = batches {
    if let [command] = only.commands.as_slice() {
      if one_read_statement(command) {
        if !claim(0) {
          return Ok(vec![Err(skipped())]);
        }
        return Ok(vec![Ok(vec![apply(connection, command, now())?])]);
      }
    }
  }
  let tx = Transaction::begin(connection, writes)?;
  let now = now();
  let runs: Vec<bool> = (0..batches.len()).map(claim).collect();
  let answers = match batches {
    // One call: its failure is the transaction's, so nothing of it is written.
    [only] if runs[0] => vec![Ok(run_batch(tx.db, only, now)?)],
    _ => batches
      .iter()
      .zip(&runs)
      .map(|(batch, &runs)| match runs {
        true => in_savepoint(tx.db, batch, now),
        false => Ok(Err(skipped())),
      })
      .collect::<StoreResult<_>>()?,
  };
  if let Some(failed) = answers
    .iter()
    .zip(&runs)
    .filter_map(|(answer, &runs)| answer.as_ref().err().filter(|_| runs))
    .find(|e| fatal(e))
  {
    return Err(failed.clone());
  }
  // Paced while there is little to remove; while a sweep fills its limit (expiring rows
  // written faster than one sweep per 100 ms removes them), every write transaction
  // sweeps, removing about twice what it wrote, so the expired rows do not pile up.
  if writes && (sweeper.backlog || now - sweeper.last >= SWEEP_EVERY_MS) {
    let commands: usize = batches.iter().map(|batch| batch.commands.len()).sum();
    let limit = (2 * commands as i64).clamp(SWEEP_LIMIT, SWEEP_MAX);
    sweeper.backlog = sweep(tx.db, now, limit)?;
    sweeper.last = now;
  }
  tx.commit()?;
  Ok(answers)
}

/// Whether `command` only reads, in a single statement (so it needs no transaction).
fn one_read_statement(command: &Command) -> bool {
  matches!(
    command,
    Command::Get { .. }
      | Command::Exists { .. }
      | Command::PTtl { .. }
      | Command::StepResult { .. }
      | Command::StepClaim { .. }
      | Command::StepResults { .. }
  )
}

/// A transaction whose `BEGIN`/`COMMIT` are cached statements (parsed once per
/// connection, unlike rusqlite's `Transaction`); rolled back unless committed.
struct Transaction<'c> {
  db: &'c Connection,
  open: bool,
}

impl<'c> Transaction<'c> {
  fn begin(db: &'c Connection, writes: bool) -> StoreResult<Self> {
    let sql = match writes {
      true => "BEGIN IMMEDIATE",
      false => "BEGIN DEFERRED",
    };
    db.prepare_cached(sql)?.execute([])?;
    Ok(Self { db, open: true })
  }

  fn commit(mut self) -> StoreResult<()> {
    self.db.prepare_cached("COMMIT")?.execute([])?;
    self.open = false;
    Ok(())
  }
}

impl Drop for Transaction<'_> {
  fn drop(&mut self) {
    if self.open && !self.db.is_autocommit() {
      let _ = self.db.execute_batch("ROLLBACK");
    }
  }
}

/// The answer of a batch skipped because its caller had given up waiting for it.
pub fn skipped() -> StoreError {
  StoreError::new(
    ErrorCode::Timeout,
    "the call was not run: its caller had stopped waiting for it",
  )
}

/// An error that leaves the transaction unusable: the whole group fails with it (not
/// one stored value of a form durastate never writes: only the call reading it fails).
fn fatal(err: &StoreError) -> bool {
  matches!(err.code, ErrorCode::CorruptData | ErrorCode::Timeout) && !err.one_value
}

/// One batch inside a savepoint: all of it or none of it. `Err` when the savepoint
/// itself cannot be released or rolled back.
fn in_savepoint(tx: &Connection, batch: &Batch, now: i64) -> StoreResult<StoreResult<Vec<Reply>>> {
  tx.prepare_cached("SAVEPOINT call")?.execute([])?;
  let answer = run_batch(tx, batch, now);
  if answer.is_err() {
    tx.prepare_cached("ROLLBACK TO call")?.execute([])?;
  }
  tx.prepare_cached("RELEASE call")?.execute([])?;
  Ok(answer)
}

fn run_batch(tx: &Connection, batch: &Batch, now: i64) -> StoreResult<Vec<Reply>> {
  batch
    .commands
    .iter()
    .map(|command| apply(tx, command, now))
    .collect()
}

fn at(ttl_ms: Option<u64>, now: i64) -> Option<i64> {
  ttl_ms.map(|ttl| now.saturating_add(ttl.min(i64::MAX as u64) as i64))
}

fn apply(db: &Connection, command: &Command, now: i64) -> StoreResult<Reply> {
  apply_command(db, command, now).map_err(|err| explain(db, command, err))
}

/// Names the key in an error about a value: one over SQLite's length limit
/// (`INVALID_INPUT`, with the limit), or stored data that is not what durastate writes
/// (`CORRUPT_DATA`, e.g. a BLOB another program stored as a result).
fn explain(db: &Connection, command: &Command, err: StoreError) -> StoreError {
  let Some(place) = place(command) else {
    return err;
  };
  match err.code {
    ErrorCode::InvalidInput => {
      let limit = db
        .limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH)
        .unwrap_or(1_000_000_000);
      let size = match written(command) {
        Some(value) => format!(" ({} bytes)", value.len()),
        None => String::new(),
      };
      StoreError::new(
        err.code,
        format!(
          "the value for {place}{size} is over SQLite's limit of {limit} bytes on a value \
           (SQLITE_LIMIT_LENGTH); nothing was stored ({})",
          err.message
        ),
      )
    }
    ErrorCode::CorruptData if err.one_value => StoreError {
      message: format!(
        "the data stored for {place} is not what durastate writes (another program changed \
         it?): {}",
        err.message
      ),
      ..err
    },
    _ => err,
  }
}

/// The key (and step) a command is about, as errors name it.
fn place(command: &Command) -> Option<String> {
  match command {
    Command::Get { key }
    | Command::Set { key, .. }
    | Command::SetIf { key, .. }
    | Command::SetGet { key, .. }
    | Command::Exists { key }
    | Command::PTtl { key }
    | Command::Merge { key, .. } => Some(format!("key {key:?}")),
    Command::MGet { keys } | Command::Del { keys } | Command::Unlink { keys } => {
      let shown: Vec<String> = keys.iter().take(3).map(|key| format!("{key:?}")).collect();
      let more = if keys.len() > 3 { ", ..." } else { "" };
      Some(format!("keys {}{more}", shown.join(", ")))
    }
    Command::Claim { exec, task, .. }
    | Command::Commit { exec, task, .. }
    | Command::StepResult { exec, task }
    | Command::StepClaim { exec, task } => Some(format!("key {exec:?} task {task:?}")),
    Command::StepResults { exec }
    | Command::Dispose { exec }
    | Command::ResetSteps { exec, .. }
    | Command::Execution { exec } => Some(format!("key {exec:?}")),
    _ => None,
  }
}

/// The value a command writes as it was given.
fn written(command: &Command) -> Option<&str> {
  match command {
    Command::Set { value, .. } | Command::SetIf { value, .. } | Command::SetGet { value, .. } => {
      Some(value)
    }
    Command::Commit { json, .. } => Some(json),
    Command::Claim { value, .. } => Some(value),
    Command::Merge { partial, .. } => Some(partial),
    _ => None,
  }
}

fn apply_command(db: &Connection, command: &Command, now: i64) -> StoreResult<Reply> {
  match command {
    Command::Get { key } => Ok(entries::value(entries::get(db, key, now)?)),
    Command::Set { key, value, ttl_ms } => {
      entries::set(db, key, value, at(*ttl_ms, now))?;
      Ok(Reply::Ok)
    }
    Command::SetIf {
      key,
      value,
      ttl_ms,
      when,
    } => entries::set_if(db, key, value, at(*ttl_ms, now), *when, now),
    Command::SetGet { key, value, ttl_ms } => {
      let previous = entries::value(entries::get(db, key, now)?);
      entries::set(db, key, value, at(*ttl_ms, now))?;
      Ok(previous)
    }
    Command::Exists { key } => Ok(Reply::Int(entries::get(db, key, now)?.is_some() as i64)),
    Command::PTtl { key } => Ok(entries::pttl(entries::get(db, key, now)?, now)),
    Command::MGet { keys } => {
      let mut values = Vec::with_capacity(keys.len());
      for key in keys {
        values.push(entries::get(db, key, now)?.map(|(value, _)| value.into_bytes()));
      }
      Ok(Reply::Values(values))
    }
    Command::Del { keys } | Command::Unlink { keys } => entries::delete(db, keys, now),
    Command::Merge {
      key,
      partial,
      ttl_ms,
      max_size,
      create,
    } => entries::merge(db, key, partial, at(*ttl_ms, now), *max_size, *create, now),
    Command::Scan {
      cursor,
      pattern,
      count,
      kind,
    } => entries::scan(db, cursor, pattern, *count, *kind, now),
    other => apply_step(db, other, now),
  }
}

fn apply_step(db: &Connection, command: &Command, now: i64) -> StoreResult<Reply> {
  match command {
    Command::Claim {
      exec,
      task,
      value,
      exclusive,
      ttl_ms,
    } => steps::claim(db, exec, task, value, *exclusive, at(*ttl_ms, now), now),
    Command::Commit {
      exec,
      task,
      json,
      ttl_ms,
    } => steps::commit(db, exec, task, json, at(*ttl_ms, now), now),
    Command::StepResult { exec, task } => steps::field(db, exec, task, true, now),
    Command::StepClaim { exec, task } => steps::field(db, exec, task, false, now),
    Command::StepResults { exec } => Ok(Reply::Pairs(steps::fields(db, exec, true, now)?)),
    Command::Dispose { exec } => steps::dispose(db, exec),
    Command::ResetSteps { exec, tasks } => steps::reset(db, exec, tasks),
    Command::Execution { exec } => steps::view(db, exec, now),
    Command::ScanExecutions {
      cursor,
      prefix,
      count,
    } => steps::scan_executions(db, cursor, prefix, *count, now),
    redis_only => Err(StoreError::new(
      ErrorCode::Internal,
      format!("{redis_only:?} is a Redis command, not a store operation"),
    )),
  }
}

/// Removes a bounded number of expired entries and expired step expiries, found
/// through the expiry indexes, never by a full scan. A step expiry found due with
/// nothing expired (its `due` was a lower bound) gets its `due` moved on by `purge`.
fn sweep(tx: &Connection, now: i64, limit: i64) -> StoreResult<bool> {
  let entries = tx
    .prepare_cached(
      "DELETE FROM ds_entries WHERE key IN (SELECT key FROM ds_entries
       WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)",
    )?
    .execute([now, limit])?;
  let execs: Vec<String> = tx
    .prepare_cached("SELECT exec FROM ds_step_expiry WHERE due <= ?1 ORDER BY due LIMIT ?2")?
    .query_map([now, limit], |row| row.get(0))?
    .collect::<Result<_, _>>()?;
  let full = entries as i64 >= limit || execs.len() as i64 >= limit;
  for exec in execs {
    steps::purge(tx, &exec, now)?;
  }
  Ok(full)
}

#[cfg(test)]
mod tests;
