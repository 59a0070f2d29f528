//! The store operations of the seam (`command.rs`) as statements on the tables of
//! `schema.rs`, with the semantics of the SQLite backend (`backend/sqlite/`), which
//! follows the two Redis hashes: an expired entry reads as missing, marks expire
//! together, results expire together. Every command but `Merge` and `Execution` is one
//! prepared statement whose request is sent at the first poll of its future, so that
//! commands of calls in flight together go out back to back (pipelined) in order.
//! Times are the server's clock (`now_ms()`), as Redis TTLs are.

use futures_util::future::BoxFuture;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use deadpool_postgres::ClientWrapper;

use crate::command::{Command, Condition, ExecutionView, KeyKind, MergeOutcome, Reply};
use crate::error::{ErrorCode, StoreError};
use crate::glob;

/// Why a command failed.
#[derive(Debug)]
pub enum OpError {
  Pg(tokio_postgres::Error),
  Store(StoreError),
}

impl From<tokio_postgres::Error> for OpError {
  fn from(err: tokio_postgres::Error) -> Self {
    OpError::Pg(err)
  }
}

pub type OpResult = Result<Reply, OpError>;

/// The statements of one schema, as text (each is prepared once per connection).
pub struct Statements {
  pub get: String,
  pub set: String,
  pub set_missing: String,
  pub set_existing: String,
  pub set_get: String,
  pub exists: String,
  pub pttl: String,
  pub mget: String,
  pub unlink: String,
  pub entries_from: String,
  pub entries_after: String,
  pub execs_from: String,
  pub execs_after: String,
  pub claim: String,
  pub claim_ttl: String,
  pub commit: String,
  pub commit_ttl: String,
  pub step_result: String,
  pub step_claim: String,
  pub step_results: String,
  pub dispose: String,
  pub reset_lock: String,
  pub reset_steps: String,
  pub reset_expiry: String,
  pub reset_expiry_gone: String,
  pub now: String,
  pub entry_row: String,
  pub expiry_row: String,
  pub step_rows: String,
  pub merge_read: String,
  pub merge_update: String,
  pub merge_insert: String,
  pub sweep: String,
}

impl Statements {
  pub fn new(s: &str) -> Self {
    let live = format!("(expires_at IS NULL OR expires_at > {s}.now_ms())");
    let upsert = format!(
      "INSERT INTO {s}.entries AS e (key, value, expires_at) VALUES ($1, $2, {s}.now_ms() + $3::bigint)
       ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
    );
    let step = |column: &str, at: &str| {
      format!(
        "SELECT s.{column} FROM {s}.steps s WHERE s.exec = $1 AND s.task = $2
         AND NOT EXISTS (SELECT 1 FROM {s}.step_expiry x WHERE x.exec = $1 AND x.{at} <= {s}.now_ms())"
      )
    };
    // The step writes of `one_step`: CTEs that write only where `x` lets them (`{from}`
    // where they take their row from, `{gate}` the condition), and the count of the
    // steps they wrote. A claim usually makes a new row: one upsert. A commit usually
    // finds the row its claim made. Without a TTL it runs an `UPDATE` of it first, and the
    // upsert only when that found none (a commit without a claim, or a row another
    // transaction inserted since the statement's snapshot): an upsert that meets the row
    // locks it and then updates it, one more WAL record per commit. With a TTL the commit
    // stays one upsert: there the `UPDATE` first measured slower (benchmark/HISTORY.md).
    let claim_write = format!(
      "w AS (INSERT INTO {s}.steps AS st (exec, task, claim) SELECT $1, $2, $3 {{from}}
       ON CONFLICT (exec, task) DO UPDATE SET claim = excluded.claim WHERE NOT $4 OR st.claim IS NULL RETURNING 1)"
    );
    let upsert_written = "(SELECT count(*) FROM w)";
    // An exclusive claim of a step whose mark is held (and has not expired) lost: it
    // answers 0 and writes nothing, the marks' expiry included (refreshed by every losing
    // claim, a dead worker's mark would never expire while deliveries keep coming). As of
    // the statement's snapshot: a mark another claim sets after it may still see one
    // refresh, as if this claim had come first.
    let claim_lost = format!(
      "$4 AND EXISTS (SELECT 1 FROM {s}.steps WHERE exec = $1 AND task = $2 AND claim IS NOT NULL)
       AND NOT EXISTS (SELECT 1 FROM {s}.step_expiry WHERE exec = $1 AND claims_at <= {s}.now_ms())"
    );
    let claim_fallback = |ttl: &str| format!("{s}.claim($1, $2, $3, $4, {ttl})");
    let commit_write = format!(
      "wu AS (UPDATE {s}.steps SET claim = NULL, result = $3 WHERE exec = $1 AND task = $2 AND {{gate}} RETURNING 1),
       wi AS (INSERT INTO {s}.steps AS st (exec, task, claim, result) SELECT $1, $2, NULL, $3
         WHERE {{gate}} AND NOT EXISTS (SELECT 1 FROM wu)
         ON CONFLICT (exec, task) DO UPDATE SET claim = NULL, result = excluded.result RETURNING 1)"
    );
    let commit_written = "((SELECT count(*) FROM wu) + (SELECT count(*) FROM wi))";
    let commit_upsert = format!(
      "w AS (INSERT INTO {s}.steps AS st (exec, task, claim, result) SELECT $1, $2, NULL, $3 {{from}}
       ON CONFLICT (exec, task) DO UPDATE SET claim = NULL, result = excluded.result RETURNING 1)"
    );
    let commit_fallback = |ttl: &str| format!("(SELECT 0 FROM {s}.commit($1, $2, $3, {ttl}) f)");
    Self {
      get: format!("SELECT value FROM {s}.entries WHERE key = $1 AND {live}"),
      set: upsert.clone(),
      set_missing: format!(
        "{upsert} WHERE e.expires_at IS NOT NULL AND e.expires_at <= {s}.now_ms()"
      ),
      set_existing: format!(
        "UPDATE {s}.entries SET value = $2, expires_at = {s}.now_ms() + $3::bigint WHERE key = $1 AND {live}"
      ),
      set_get: format!("SELECT {s}.set_get($1, $2, $3::bigint)"),
      exists: format!("SELECT 1 FROM {s}.entries WHERE key = $1 AND {live}"),
      pttl: format!(
        "SELECT CASE WHEN e.expires_at IS NULL THEN -1 ELSE e.expires_at - t.now END
         FROM {s}.entries e, (SELECT {s}.now_ms() AS now) t
         WHERE e.key = $1 AND (e.expires_at IS NULL OR e.expires_at > t.now)"
      ),
      mget: format!(
        "SELECT e.value FROM unnest($1::text[]) WITH ORDINALITY AS k(key, i)
         LEFT JOIN {s}.entries e ON e.key = k.key
           AND (e.expires_at IS NULL OR e.expires_at > {s}.now_ms())
         ORDER BY k.i"
      ),
      unlink: format!(
        "WITH d AS (DELETE FROM {s}.entries WHERE key = ANY($1::text[]) RETURNING expires_at)
         SELECT count(*) FROM d WHERE d.expires_at IS NULL OR d.expires_at > {s}.now_ms()"
      ),
      entries_from: format!(
        "SELECT key, {live} FROM {s}.entries WHERE key >= $1 ORDER BY key LIMIT $2"
      ),
      entries_after: format!(
        "SELECT key, {live} FROM {s}.entries WHERE key > $1 ORDER BY key LIMIT $2"
      ),
      execs_from: format!(
        "SELECT DISTINCT exec, true FROM {s}.steps WHERE exec >= $1 ORDER BY exec LIMIT $2"
      ),
      execs_after: format!(
        "SELECT DISTINCT exec, true FROM {s}.steps WHERE exec > $1 ORDER BY exec LIMIT $2"
      ),
      claim: one_step(s, None, (&claim_write, upsert_written), &claim_fallback("$5::bigint")),
      claim_ttl: one_step(
        s,
        Some(("claims_at", "$5", Some(&claim_lost))),
        (&claim_write, upsert_written),
        &claim_fallback("$5::bigint"),
      ),
      commit: one_step(s, None, (&commit_write, commit_written), &commit_fallback("$4::bigint")),
      commit_ttl: one_step(
        s,
        Some(("results_at", "$4", None)),
        (&commit_upsert, upsert_written),
        &commit_fallback("$4::bigint"),
      ),
      step_result: step("result", "results_at"),
      step_claim: step("claim", "claims_at"),
      step_results: format!(
        "SELECT s.task, s.result FROM {s}.steps s WHERE s.exec = $1 AND s.result IS NOT NULL
         AND NOT EXISTS (SELECT 1 FROM {s}.step_expiry x WHERE x.exec = $1 AND x.results_at <= {s}.now_ms())
         ORDER BY s.task"
      ),
      dispose: format!(
        "WITH a AS (DELETE FROM {s}.entries WHERE key = $1),
              b AS (DELETE FROM {s}.steps WHERE exec = $1)
         DELETE FROM {s}.step_expiry WHERE exec = $1"
      ),
      // A reset is one transaction (`is_multi`) that first locks the execution's expiry
      // row, as a claim or a commit does: they serialize on it, so the statements after
      // the lock (each with a snapshot of its own) see every step they wrote.
      reset_lock: format!("SELECT 1 FROM {s}.step_expiry WHERE exec = $1 FOR UPDATE"),
      reset_steps: format!("DELETE FROM {s}.steps WHERE exec = $1 AND task = ANY($2)"),
      // As on Redis, the marks' expiry goes with the last mark, the results' with the last
      // result (a row left with neither is removed by `reset_expiry_gone`).
      reset_expiry: format!(
        "UPDATE {s}.step_expiry SET
           claims_at = CASE WHEN EXISTS (SELECT 1 FROM {s}.steps WHERE exec = $1 AND claim IS NOT NULL) THEN claims_at END,
           results_at = CASE WHEN EXISTS (SELECT 1 FROM {s}.steps WHERE exec = $1 AND result IS NOT NULL) THEN results_at END
         WHERE exec = $1"
      ),
      reset_expiry_gone: format!(
        "DELETE FROM {s}.step_expiry WHERE exec = $1 AND claims_at IS NULL AND results_at IS NULL"
      ),
      now: format!("SELECT {s}.now_ms()"),
      entry_row: format!("SELECT value, expires_at FROM {s}.entries WHERE key = $1"),
      expiry_row: format!("SELECT claims_at, results_at FROM {s}.step_expiry WHERE exec = $1"),
      step_rows: format!("SELECT task, claim, result FROM {s}.steps WHERE exec = $1 ORDER BY task"),
      merge_read: format!(
        "SELECT value, expires_at, {live} FROM {s}.entries WHERE key = $1 FOR UPDATE"
      ),
      merge_update: format!(
        "UPDATE {s}.entries SET value = $2, expires_at = coalesce({s}.now_ms() + $3::bigint, $4::bigint)
         WHERE key = $1"
      ),
      merge_insert: format!(
        "INSERT INTO {s}.entries (key, value, expires_at) VALUES ($1, $2, {s}.now_ms() + $3::bigint)
         ON CONFLICT (key) DO NOTHING"
      ),
      sweep: format!("SELECT {s}.sweep($1)"),
    }
  }

  /// Every statement, to prepare on a new connection.
  pub fn all(&self) -> Vec<&str> {
    vec![
      &self.get,
      &self.set,
      &self.set_missing,
      &self.set_existing,
      &self.set_get,
      &self.exists,
      &self.pttl,
      &self.mget,
      &self.unlink,
      &self.entries_from,
      &self.entries_after,
      &self.execs_from,
      &self.execs_after,
      &self.claim,
      &self.claim_ttl,
      &self.commit,
      &self.commit_ttl,
      &self.step_result,
      &self.step_claim,
      &self.step_results,
      &self.dispose,
      &self.reset_lock,
      &self.reset_steps,
      &self.reset_expiry,
      &self.reset_expiry_gone,
      &self.now,
      &self.entry_row,
      &self.expiry_row,
      &self.step_rows,
      &self.merge_read,
      &self.merge_update,
      &self.merge_insert,
      &self.sweep,
    ]
  }
}

/// A claim or a commit as one plain statement (no PL/pgSQL in the common case), which
/// answers what its function (`fallback`) answers: how many steps it wrote.
///
/// With a TTL (`ttl`: the column to set and the TTL's parameter), `x` sets that expiry
/// of the execution's marks or results to now + the TTL, inserting its `step_expiry` row
/// or locking and refreshing it when nothing of it expired, as the function does first
/// (so calls on one execution serialize on that row); then the step is written, only if
/// `x` did. Without one, `x` locks the execution's `step_expiry` row, and the step is
/// written only if there is none (the common case: nothing to purge, no expiry to keep).
/// Otherwise nothing is written but the lock, and the function runs instead, in the same
/// statement, on the same row: it purges what expired, then writes. `write`: the CTEs
/// writing the step where `x` lets them, and the count of steps they wrote.
/// Unlike the function, a commit with a TTL leaves `claims_at` when it takes the last mark
/// (format 3, see `schema.rs`): clearing it would read the other steps, which a
/// statement sees as of its start, not as of the lock.
fn one_step(
  s: &str,
  ttl: Option<(&str, &str, Option<&str>)>,
  write: (&str, &str),
  fallback: &str,
) -> String {
  // `lost`: when the call answers 0 at once and writes nothing, not even the expiry.
  let lost = ttl.and_then(|(_, _, lost)| lost);
  let (x, from, fast) = match ttl {
    Some((column, ttl, _)) => {
      let gate = lost.map(|l| format!("WHERE NOT ({l})")).unwrap_or_default();
      (
        format!(
          "x AS (INSERT INTO {s}.step_expiry AS e (exec, {column}, sweep_at)
         SELECT $1, t.at, t.at FROM (SELECT {s}.now_ms() + {ttl}::bigint AS at) t {gate}
         ON CONFLICT (exec) DO UPDATE SET {column} = excluded.{column}, sweep_at = least(e.sweep_at, excluded.sweep_at)
         WHERE (e.claims_at IS NULL OR e.claims_at > excluded.{column} - {ttl}::bigint)
           AND (e.results_at IS NULL OR e.results_at > excluded.{column} - {ttl}::bigint)
         RETURNING 1)"
        ),
        "FROM x",
        "EXISTS (SELECT 1 FROM x)",
      )
    }
    None => (
      format!("x AS (SELECT 1 FROM {s}.step_expiry WHERE exec = $1 FOR UPDATE)"),
      "WHERE NOT EXISTS (SELECT 1 FROM x)",
      "NOT EXISTS (SELECT 1 FROM x)",
    ),
  };
  let (ctes, written) = write;
  let ctes = ctes.replace("{from}", from).replace("{gate}", fast);
  let lost = lost
    .map(|l| format!("WHEN {l} THEN 0 "))
    .unwrap_or_default();
  format!(
    "WITH {x}, {ctes}
     SELECT CASE WHEN {fast} THEN {written}::integer {lost}ELSE {fallback} END"
  )
}

/// Whether the command is more than one statement (its statements depend on what an
/// earlier one answered, or must run in one transaction): it cannot be pipelined with the
/// commands after it, and a write runs in a transaction even alone.
pub fn is_multi(command: &Command) -> bool {
  matches!(
    command,
    Command::Merge { .. } | Command::Execution { .. } | Command::ResetSteps { .. }
  )
}

/// A command's text that holds NUL (U+0000), which a Postgres `text` value cannot: the
/// call is refused `INVALID_INPUT`, naming what holds it, before any SQL (Redis and
/// SQLite keep such strings; the index.js stores name the argument first).
pub fn refuse_nul(command: &Command) -> Result<(), StoreError> {
  /// The first of `fields` (what it is, its text) that holds NUL.
  fn first<'a>(
    fields: impl IntoIterator<Item = (&'static str, &'a String)>,
  ) -> Option<(&'static str, &'a str)> {
    fields
      .into_iter()
      .find(|(_, text)| text.contains('\0'))
      .map(|(what, text)| (what, text.as_str()))
  }
  let found = match command {
    Command::Claim {
      exec, task, value, ..
    } => first([("execution id", exec), ("task id", task), ("value", value)]),
    Command::Commit {
      exec, task, json, ..
    } => first([("execution id", exec), ("task id", task), ("value", json)]),
    Command::StepResult { exec, task } | Command::StepClaim { exec, task } => {
      first([("execution id", exec), ("task id", task)])
    }
    Command::ResetSteps { exec, tasks } => first(
      std::iter::once(("execution id", exec)).chain(tasks.iter().map(|task| ("task id", task))),
    ),
    Command::StepResults { exec } | Command::Dispose { exec } | Command::Execution { exec } => {
      first([("execution id", exec)])
    }
    Command::Set { key, value, .. }
    | Command::SetIf { key, value, .. }
    | Command::SetGet { key, value, .. } => first([("key", key), ("value", value)]),
    Command::Merge { key, partial, .. } => first([("key", key), ("value", partial)]),
    // matched in Rust; only its literal prefix goes to SQL, and one with NUL matches no key
    Command::Scan { .. } => None,
    Command::ScanExecutions { prefix, .. } => first([("prefix", prefix)]),
    other => first(other.keys().iter().map(|key| ("key", key))),
  };
  match found {
    None => Ok(()),
    Some((what, text)) => Err(StoreError::invalid_input(format!(
      "the {what} \"{}\" holds NUL (\\u0000), which Postgres cannot store in text: use ids and keys without it on Postgres",
      text.escape_debug()
    ))),
  }
}

/// Bytes (UTF-8) an execution id and a task id take at most together (with the store's
/// prefix), and a key alone: `steps` is indexed by both (`steps_pkey`), `entries` by the
/// key, and a B-tree entry holds at most about 2.7 KB (a third of an 8 KB page, less its
/// headers) after compression, which random ids do not get. 2,000 leaves room for the
/// headers and the layout's additions (`{}` of `hashtag`), whatever the ids compress to.
pub const MAX_KEY_BYTES: usize = 2_000;

/// A command whose execution id and task id together, or whose key, are longer than
/// Postgres can index (`MAX_KEY_BYTES`): the call is refused `INVALID_INPUT`, saying
/// which and how long, before any SQL (the server would refuse it with "index row size
/// exceeds btree maximum"). Redis, SQLite and memory take longer ids.
pub fn refuse_long(command: &Command) -> Result<(), StoreError> {
  fn preview(text: &str) -> String {
    let mut shown: String = text.chars().take(24).collect();
    if shown.len() < text.len() {
      shown.push('…');
    }
    format!("{:?}", shown)
  }
  fn limit() -> String {
    format!(
      "Postgres takes at most {MAX_KEY_BYTES} bytes in an execution id and a task id together (with the store's prefix), and in a key: its B-tree indexes hold about 2.7 KB an entry. Use shorter ids or keys on Postgres (Redis, SQLite and memory take longer ones)"
    )
  }
  let pair = |exec: &String, task: &String| {
    match exec.len() + task.len() > MAX_KEY_BYTES {
    false => Ok(()),
    true => Err(StoreError::invalid_input(format!(
      "the execution id {} ({} bytes with the store's prefix) and the task id {} ({} bytes) take {} bytes together: {}",
      preview(exec),
      exec.len(),
      preview(task),
      task.len(),
      exec.len() + task.len(),
      limit()
    ))),
  }
  };
  match command {
    Command::Claim { exec, task, .. }
    | Command::Commit { exec, task, .. }
    | Command::StepResult { exec, task }
    | Command::StepClaim { exec, task } => pair(exec, task),
    Command::ResetSteps { exec, tasks } => tasks.iter().try_for_each(|task| pair(exec, task)),
    _ => match command.keys().iter().find(|key| key.len() > MAX_KEY_BYTES) {
      None => Ok(()),
      Some(key) => Err(StoreError::invalid_input(format!(
        "the execution id or key {} is {} bytes (with the store's prefix): {}",
        preview(key),
        key.len(),
        limit()
      ))),
    },
  }
}

/// Whether the command is one of the store operations this backend runs (not a Redis
/// hash command, which only the Redis backend lowers step operations to).
pub fn is_store_operation(command: &Command) -> bool {
  !matches!(
    command,
    Command::HGet { .. }
      | Command::HGetAll { .. }
      | Command::HSet { .. }
      | Command::HSetNx { .. }
      | Command::HSetNxExpire { .. }
      | Command::HDel { .. }
      | Command::PExpire { .. }
  )
}

fn ttl(ttl_ms: Option<u64>) -> Option<i64> {
  ttl_ms.map(|ttl| ttl.min(i64::MAX as u64 / 4) as i64)
}

async fn rows(
  client: &ClientWrapper,
  sql: &str,
  params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
  let statement = client.prepare_cached(sql).await?;
  client.query(&statement, params).await
}

async fn count(
  client: &ClientWrapper,
  sql: &str,
  params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
  let statement = client.prepare_cached(sql).await?;
  client.execute(&statement, params).await
}

fn text_reply(value: Option<String>) -> Reply {
  match value {
    Some(value) => Reply::Bytes(value.into_bytes()),
    None => Reply::Nil,
  }
}

fn first_text(found: Vec<Row>) -> Reply {
  text_reply(
    found
      .first()
      .and_then(|row| row.get::<_, Option<String>>(0)),
  )
}

/// One command as a future that sends its request when first polled (its statement is
/// prepared on the connection already, so `prepare_cached` answers at once).
pub fn run<'a>(
  client: &'a ClientWrapper,
  sql: &'a Statements,
  command: &'a Command,
) -> BoxFuture<'a, OpResult> {
  Box::pin(async move {
    Ok(match command {
      Command::Get { key } => first_text(rows(client, &sql.get, &[key]).await?),
      Command::Set { key, value, ttl_ms } => {
        count(client, &sql.set, &[key, value, &ttl(*ttl_ms)]).await?;
        Reply::Ok
      }
      Command::SetIf {
        key,
        value,
        ttl_ms,
        when,
      } => {
        let statement = match when {
          Condition::Missing => &sql.set_missing,
          Condition::Exists => &sql.set_existing,
        };
        match count(client, statement, &[key, value, &ttl(*ttl_ms)]).await? {
          0 => Reply::Nil,
          _ => Reply::Ok,
        }
      }
      Command::SetGet { key, value, ttl_ms } => {
        first_text(rows(client, &sql.set_get, &[key, value, &ttl(*ttl_ms)]).await?)
      }
      Command::Exists { key } => {
        Reply::Int(!rows(client, &sql.exists, &[key]).await?.is_empty() as i64)
      }
      Command::PTtl { key } => {
        let found = rows(client, &sql.pttl, &[key]).await?;
        Reply::Int(found.first().map(|row| row.get::<_, i64>(0)).unwrap_or(-2))
      }
      Command::MGet { keys } => {
        let found = rows(client, &sql.mget, &[keys]).await?;
        Reply::Values(
          found
            .iter()
            .map(|row| row.get::<_, Option<String>>(0).map(String::into_bytes))
            .collect(),
        )
      }
      Command::Del { keys } | Command::Unlink { keys } => {
        let found = rows(client, &sql.unlink, &[keys]).await?;
        Reply::Int(found.first().map(|row| row.get::<_, i64>(0)).unwrap_or(0))
      }
      Command::Scan {
        cursor,
        pattern,
        count,
        kind,
      } => {
        if *kind == Some(KeyKind::Hash) {
          return Ok(Reply::Scan {
            cursor: "0".into(),
            keys: Vec::new(),
          });
        }
        let literal = glob::literal_prefix(pattern);
        if literal.contains('\0') {
          return Ok(Reply::Scan {
            cursor: "0".into(),
            keys: Vec::new(),
          });
        }
        let (found, next) = page(client, sql, false, cursor, &literal, *count).await?;
        let keys = found
          .into_iter()
          .filter(|(key, live)| *live && glob::matches(pattern, key))
          .map(|(key, _)| key)
          .collect();
        Reply::Scan { cursor: next, keys }
      }
      Command::ScanExecutions {
        cursor,
        prefix,
        count,
      } => {
        let (steps, inner) = match cursor.split_at_checked(1) {
          Some(("m", inner)) => (false, inner),
          Some(("s", inner)) => (true, inner),
          _ => (true, "0"),
        };
        let (found, next) = page(client, sql, steps, inner, prefix, *count).await?;
        let keys = found
          .into_iter()
          .filter(|(_, live)| *live)
          .map(|(key, _)| key)
          .collect();
        let cursor = match (steps, next.as_str()) {
          (true, "0") => "m0".to_string(),
          (false, "0") => "0".to_string(),
          (true, next) => format!("s{next}"),
          (false, next) => format!("m{next}"),
        };
        Reply::Scan { cursor, keys }
      }
      Command::Claim {
        exec,
        task,
        value,
        exclusive,
        ttl_ms,
      } => {
        let statement = match ttl_ms {
          Some(_) => &sql.claim_ttl,
          None => &sql.claim,
        };
        let found = rows(
          client,
          statement,
          &[exec, task, value, exclusive, &ttl(*ttl_ms)],
        )
        .await?;
        Reply::Int(found.first().map(|row| row.get::<_, i32>(0)).unwrap_or(0) as i64)
      }
      Command::Commit {
        exec,
        task,
        json,
        ttl_ms,
      } => {
        let statement = match ttl_ms {
          Some(_) => &sql.commit_ttl,
          None => &sql.commit,
        };
        count(client, statement, &[exec, task, json, &ttl(*ttl_ms)]).await?;
        Reply::Ok
      }
      Command::StepResult { exec, task } => {
        first_text(rows(client, &sql.step_result, &[exec, task]).await?)
      }
      Command::StepClaim { exec, task } => {
        first_text(rows(client, &sql.step_claim, &[exec, task]).await?)
      }
      Command::StepResults { exec } => {
        let found = rows(client, &sql.step_results, &[exec]).await?;
        Reply::Pairs(
          found
            .iter()
            .map(|row| {
              (
                row.get::<_, String>(0).into_bytes(),
                row.get::<_, String>(1).into_bytes(),
              )
            })
            .collect(),
        )
      }
      Command::Dispose { exec } => {
        count(client, &sql.dispose, &[exec]).await?;
        Reply::Ok
      }
      Command::Merge {
        key,
        partial,
        ttl_ms,
        max_size,
        create,
      } => merge(client, sql, key, partial, ttl(*ttl_ms), *max_size, *create).await?,
      Command::ResetSteps { exec, tasks } => {
        // (in the caller's transaction, see `is_multi`; pipelined, in order)
        let (lock, steps, expiry, gone) = futures_util::future::join4(
          rows(client, &sql.reset_lock, &[exec]),
          count(client, &sql.reset_steps, &[exec, tasks]),
          count(client, &sql.reset_expiry, &[exec]),
          count(client, &sql.reset_expiry_gone, &[exec]),
        )
        .await;
        lock?;
        steps?;
        expiry?;
        gone?;
        Reply::Ok
      }
      Command::Execution { exec } => view(client, sql, exec).await?,
      redis_only => {
        return Err(OpError::Store(StoreError::new(
          ErrorCode::Internal,
          format!("{redis_only:?} is a Redis command, not a store operation"),
        )))
      }
    })
  })
}

/// Up to `count` keys of `entries` (or execution ids of `steps`) from the cursor on that
/// start with `literal`, each with whether it is live; and the next cursor (`"0"` when
/// the range is done). As `backend/sqlite/entries.rs` pages, in byte order.
async fn page(
  client: &ClientWrapper,
  sql: &Statements,
  steps: bool,
  cursor: &str,
  literal: &str,
  count: u32,
) -> Result<(Vec<(String, bool)>, String), tokio_postgres::Error> {
  let after = cursor.strip_prefix("k:").filter(|after| *after >= literal);
  let (statement, start) = match (after, steps) {
    (Some(after), false) => (&sql.entries_after, after),
    (Some(after), true) => (&sql.execs_after, after),
    (None, false) => (&sql.entries_from, literal),
    (None, true) => (&sql.execs_from, literal),
  };
  let limit = count.max(1) as i64;
  let found: Vec<(String, bool)> = rows(client, statement, &[&start, &limit])
    .await?
    .iter()
    .map(|row| (row.get(0), row.get::<_, Option<bool>>(1).unwrap_or(false)))
    .collect();
  let full = found.len() as i64 == limit;
  let in_range: Vec<_> = found
    .into_iter()
    .take_while(|(key, _)| key.starts_with(literal))
    .collect();
  let next = match in_range.last() {
    Some((last, _)) if full && in_range.len() as i64 == limit => format!("k:{last}"),
    _ => "0".to_string(),
  };
  Ok((in_range, next))
}

/// Shallow-merges `partial` into the entry, in the caller's transaction: the row is
/// locked (`FOR UPDATE`) while the merge is computed here, byte-exact in key order; a
/// missing entry is inserted unless another transaction inserted it first, when the
/// merge starts over on that row.
async fn merge(
  client: &ClientWrapper,
  sql: &Statements,
  key: &str,
  partial: &str,
  ttl: Option<i64>,
  max_size: u64,
  create: bool,
) -> Result<Reply, tokio_postgres::Error> {
  loop {
    let found = rows(client, &sql.merge_read, &[&key]).await?;
    let row = found.first();
    let current: Option<(String, Option<i64>)> = row
      .filter(|row| row.get::<_, Option<bool>>(2).unwrap_or(false))
      .map(|row| (row.get(0), row.get(1)));
    let stored = current.as_ref().map(|(stored, _)| stored.as_str());
    let merged = match MergeOutcome::merged(stored, partial, max_size, create) {
      Ok(merged) => merged,
      Err(stopped) => return Ok(Reply::Merge(stopped)),
    };
    let kept = current.as_ref().and_then(|(_, at)| *at);
    let written = match row {
      Some(_) => count(client, &sql.merge_update, &[&key, &merged, &ttl, &kept]).await?,
      None => count(client, &sql.merge_insert, &[&key, &merged, &ttl]).await?,
    };
    if written > 0 {
      let created = current.is_none();
      return Ok(Reply::Merge(MergeOutcome::Merged { created }));
    }
  }
}

/// Everything stored about `exec`, with TTLs as `PTTL` answers them; the reads are
/// pipelined.
async fn view(
  client: &ClientWrapper,
  sql: &Statements,
  exec: &str,
) -> Result<Reply, tokio_postgres::Error> {
  let (now, entry, expiry, steps) = futures_util::future::join4(
    rows(client, &sql.now, &[]),
    rows(client, &sql.entry_row, &[&exec]),
    rows(client, &sql.expiry_row, &[&exec]),
    rows(client, &sql.step_rows, &[&exec]),
  )
  .await;
  let now: i64 = now?.first().map(|row| row.get(0)).unwrap_or_default();
  let live = |at: Option<i64>| at.is_none_or(|at| at > now);
  let marker = entry?
    .first()
    .map(|row| (row.get::<_, String>(0), row.get::<_, Option<i64>>(1)))
    .filter(|(_, at)| live(*at));
  let (claims_at, results_at) = expiry?
    .first()
    .map(|row| (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)))
    .unwrap_or_default();
  let mut claims = Vec::new();
  let mut results = Vec::new();
  for row in steps? {
    let task: String = row.get(0);
    if let Some(claim) = row.get::<_, Option<String>>(1).filter(|_| live(claims_at)) {
      claims.push((task.clone().into_bytes(), claim.into_bytes()));
    }
    if let Some(result) = row.get::<_, Option<String>>(2).filter(|_| live(results_at)) {
      results.push((task.into_bytes(), result.into_bytes()));
    }
  }
  Ok(Reply::Execution(Box::new(ExecutionView::from_rows(
    marker, claims, claims_at, results, results_at, now,
  ))))
}
