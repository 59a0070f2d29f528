//! The seam between the stores and the backends: the operations a store asks of a
//! backend, and their replies.
//!
//! Two vocabularies share one enum:
//! - **Store operations**, which every backend implements in its own terms: the
//!   WorkerStore's step operations ([`Command::Claim`], [`Command::Commit`], ...), the
//!   listing tools need ([`Command::Execution`], [`Command::ScanExecutions`]), and the
//!   entry commands the KV store and execution markers use (`Get`, `Set`, `SetIf`,
//!   `SetGet`, `Exists`, `MGet`, `Unlink`, `Del`, `PTtl`, `Merge`, `Scan`: strings
//!   with millisecond TTLs, by full key). SQL backends run them as statements on tables
//!   shaped for the data (`backend/sqlite`).
//! - **Redis hash commands** (`HGet`, `HGetAll`, `HSet`, `HSetNx`, `HDel`, `PExpire`),
//!   which only the Redis backend runs: it lowers each step operation into them
//!   (`backend/redis_ops.rs`), keeping the byte-compatible `@idioteque/redis` layout.
//!
//! Every store call becomes one [`Batch`]: Redis sends it as one command or one
//! `MULTI`/`EXEC`, a SQL backend runs it in one transaction. A call that needs more
//! than one round trip chains batches with [`Step::Then`].

use crate::error::StoreResult;
use crate::output::Output;

/// One keyspace command, with Redis semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
  /// `GET key`.
  Get { key: String },
  /// `SET key value [PX ttl]`.
  Set {
    key: String,
    value: String,
    ttl_ms: Option<u64>,
  },
  /// `HGET key field`.
  HGet { key: String, field: String },
  /// `HGETALL key`.
  HGetAll { key: String },
  /// `HSET key field value`.
  HSet {
    key: String,
    field: String,
    value: String,
  },
  /// `HSETNX key field value`: replies 1 when the field was created.
  HSetNx {
    key: String,
    field: String,
    value: String,
  },
  /// `HSETNX key field value`, then `PEXPIRE key ttl` only when the field was created,
  /// atomically (a script): replies 1 when it was, else 0 (and wrote nothing).
  HSetNxExpire {
    key: String,
    field: String,
    value: String,
    ttl_ms: u64,
  },
  /// `HDEL key field`.
  HDel { key: String, field: String },
  /// `PEXPIRE key ttl`.
  PExpire { key: String, ttl_ms: u64 },
  /// `DEL key [key ...]`.
  Del { keys: Vec<String> },
  /// `UNLINK key [key ...]`: replies how many existed.
  Unlink { keys: Vec<String> },
  /// `EXISTS key`: replies 1 or 0.
  Exists { key: String },
  /// `PTTL key`: ms left, -1 without expiry, -2 when missing.
  PTtl { key: String },
  /// `MGET key [key ...]`: one value (or nil) per key, in order.
  MGet { keys: Vec<String> },
  /// `SET key value [PX ttl] NX|XX`: replies `Ok`, or `Nil` when the condition failed.
  SetIf {
    key: String,
    value: String,
    ttl_ms: Option<u64>,
    when: Condition,
  },
  /// Stores `value` (as `SET key value [PX ttl]`) and says whether the key existed: `Nil`
  /// when it did not, else the previous value (SQL backends) or `Int(1)` (Redis, where the
  /// key may hold another type, which `SET` overwrites).
  SetGet {
    key: String,
    value: String,
    ttl_ms: Option<u64>,
  },
  /// Shallow-merges the JSON object `partial` into the JSON object stored at `key`,
  /// atomically (a script on Redis, a transaction on SQLite), if the result is at most
  /// `max_size` bytes. A missing key becomes `partial` only when `create`.
  /// `ttl_ms: None` keeps the key's TTL. Replies [`Reply::Merge`].
  Merge {
    key: String,
    partial: String,
    ttl_ms: Option<u64>,
    max_size: u64,
    create: bool,
  },
  /// `SCAN cursor MATCH pattern COUNT count [TYPE kind]`: replies a [`Reply::Scan`].
  /// Cursors are opaque strings; `"0"` starts and ends an iteration.
  Scan {
    cursor: String,
    pattern: String,
    count: u32,
    kind: Option<KeyKind>,
  },
  /// Marks step `task` of execution `exec` in progress with `value`; when `exclusive`,
  /// only if it is not already (replies `Int(1)` when this call set it, else `Int(0)`).
  /// A `ttl_ms` (re)sets the expiry of all the execution's in-progress marks, except when
  /// the exclusive claim lost: that writes nothing, so a mark left by a worker that died
  /// expires on time however often others try to claim it.
  Claim {
    exec: String,
    task: String,
    value: String,
    exclusive: bool,
    ttl_ms: Option<u64>,
  },
  /// Stores a step's result (JSON text) and clears its in-progress mark, atomically.
  /// A `ttl_ms` (re)sets the expiry of all the execution's results. Replies `Ok`.
  Commit {
    exec: String,
    task: String,
    json: String,
    ttl_ms: Option<u64>,
  },
  /// One step's result: `Bytes`, or `Nil`.
  StepResult { exec: String, task: String },
  /// Every result of the execution: `Pairs` (task, JSON text).
  StepResults { exec: String },
  /// One step's in-progress mark: `Bytes` (the claim's value), or `Nil`.
  StepClaim { exec: String, task: String },
  /// Removes the execution: its marker entry, marks and results. Replies `Ok`.
  Dispose { exec: String },
  /// Removes the results and in-progress marks of the steps `tasks` (for tools: "re-run
  /// from this step"); the execution's marker and other steps stay. Replies `Ok`.
  ResetSteps { exec: String, tasks: Vec<String> },
  /// Everything stored about one execution, for tools: [`Reply::Execution`].
  Execution { exec: String },
  /// One page of the keys of executions whose marker key starts with `prefix`:
  /// [`Reply::Scan`] of execution (marker) keys. A page may name keys that turn out not
  /// to be executions (Redis cannot tell a marker from a KV entry without reading it)
  /// and may repeat keys; [`Command::Execution`] tells.
  ScanExecutions {
    cursor: String,
    prefix: String,
    count: u32,
  },
}

/// When a conditional `SET` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
  /// `NX`: only when the key is missing.
  Missing,
  /// `XX`: only when the key exists.
  Exists,
}

/// The Redis data types the stores use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
  String,
  Hash,
}

impl KeyKind {
  /// The type's name, as `SCAN ... TYPE` and `TYPE` spell it.
  pub fn as_str(self) -> &'static str {
    match self {
      KeyKind::String => "string",
      KeyKind::Hash => "hash",
    }
  }
}

impl Command {
  /// The keys the command touches.
  pub fn keys(&self) -> &[String] {
    match self {
      Command::Get { key }
      | Command::Set { key, .. }
      | Command::HGet { key, .. }
      | Command::HGetAll { key }
      | Command::HSet { key, .. }
      | Command::HSetNx { key, .. }
      | Command::HSetNxExpire { key, .. }
      | Command::HDel { key, .. }
      | Command::PExpire { key, .. }
      | Command::Exists { key }
      | Command::PTtl { key }
      | Command::SetIf { key, .. }
      | Command::SetGet { key, .. }
      | Command::Merge { key, .. } => std::slice::from_ref(key),
      Command::Claim { exec, .. }
      | Command::Commit { exec, .. }
      | Command::StepResult { exec, .. }
      | Command::StepResults { exec }
      | Command::StepClaim { exec, .. }
      | Command::Dispose { exec }
      | Command::ResetSteps { exec, .. }
      | Command::Execution { exec } => std::slice::from_ref(exec),
      Command::Del { keys } | Command::Unlink { keys } | Command::MGet { keys } => keys,
      Command::Scan { .. } | Command::ScanExecutions { .. } => &[],
    }
  }

  /// Whether the command reads keys it does not name (a `SCAN`): it must not run
  /// ahead of writes queued before it.
  pub fn reads_any_key(&self) -> bool {
    matches!(self, Command::Scan { .. } | Command::ScanExecutions { .. })
  }

  /// Whether the command changes the keyspace.
  pub fn writes(&self) -> bool {
    !matches!(
      self,
      Command::Get { .. }
        | Command::HGet { .. }
        | Command::HGetAll { .. }
        | Command::Exists { .. }
        | Command::PTtl { .. }
        | Command::MGet { .. }
        | Command::Scan { .. }
        | Command::StepResult { .. }
        | Command::StepResults { .. }
        | Command::StepClaim { .. }
        | Command::Execution { .. }
        | Command::ScanExecutions { .. }
    )
  }
}

/// A reply, decoded just enough for the stores to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
  /// No value (missing key or field).
  Nil,
  /// An integer reply.
  Int(i64),
  /// A string value, as raw bytes (validated as UTF-8 by the caller, who knows the key).
  Bytes(Vec<u8>),
  /// Field/value pairs of a hash.
  Pairs(Vec<(Vec<u8>, Vec<u8>)>),
  /// A status reply such as `OK`.
  Ok,
  /// `MGET`: one value per key asked, `None` where missing.
  Values(Vec<Option<Vec<u8>>>),
  /// One page of a `SCAN`: the next cursor (`"0"` when done) and the keys found.
  Scan { cursor: String, keys: Vec<String> },
  /// What a [`Command::Merge`] did.
  Merge(MergeOutcome),
  /// What a [`Command::Execution`] found.
  Execution(Box<ExecutionView>),
}

/// Everything stored about one execution ([`Command::Execution`]). TTLs are as `PTTL`
/// answers: ms left, -1 without expiry, -2 when there is nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecutionView {
  /// The marker entry's value (`"true"` while in progress).
  pub marker: Option<Vec<u8>>,
  pub marker_ttl: i64,
  /// Steps in progress: (task, mark).
  pub claims: Vec<(Vec<u8>, Vec<u8>)>,
  pub claims_ttl: i64,
  /// Committed results: (task, JSON text).
  pub results: Vec<(Vec<u8>, Vec<u8>)>,
  pub results_ttl: i64,
}

impl ExecutionView {
  /// The view of what a SQL backend read live at `now` (ms): the marker entry's value and
  /// expiry, the marks and results, and the execution's expiries; each TTL as `PTTL`
  /// answers it for the Redis key it stands for.
  pub fn from_rows(
    marker: Option<(String, Option<i64>)>,
    claims: Vec<(Vec<u8>, Vec<u8>)>,
    claims_at: Option<i64>,
    results: Vec<(Vec<u8>, Vec<u8>)>,
    results_at: Option<i64>,
    now: i64,
  ) -> Self {
    let ttl = |present: bool, at: Option<i64>| match (present, at) {
      (false, _) => -2,
      (true, None) => -1,
      (true, Some(at)) => at - now,
    };
    Self {
      marker_ttl: ttl(marker.is_some(), marker.as_ref().and_then(|m| m.1)),
      marker: marker.map(|(value, _)| value.into_bytes()),
      claims_ttl: ttl(!claims.is_empty(), claims_at),
      claims,
      results_ttl: ttl(!results.is_empty(), results_at),
      results,
    }
  }
}

/// What a [`Command::Merge`] did; nothing is written unless `Merged`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
  /// Written; `created` when the key was missing.
  Merged { created: bool },
  /// The key is missing and `create` was false.
  Missing,
  /// The stored value is not a JSON object.
  NotAnObject,
  /// The merged value would be this many bytes, over `max_size`.
  TooLarge(u64),
  /// The stored value is not valid JSON.
  Unreadable,
}

impl MergeOutcome {
  /// What a merge writes over the live value `current`: the merged JSON text, or the
  /// outcome that stops it (nothing written). The rule of every backend that merges in
  /// Rust (SQLite, memory, Postgres); Redis runs the same rule in its script.
  pub fn merged(
    current: Option<&str>,
    partial: &str,
    max_size: u64,
    create: bool,
  ) -> Result<String, Self> {
    use crate::json_value::{merge_objects, MergeError};
    let merged = match current {
      Some(stored) => match merge_objects(stored, partial) {
        Ok(merged) => merged,
        Err(MergeError::NotAnObject) => return Err(Self::NotAnObject),
        Err(MergeError::Unreadable(_)) => return Err(Self::Unreadable),
      },
      None if !create => return Err(Self::Missing),
      None => partial.to_string(),
    };
    match merged.len() as u64 {
      size if size > max_size => Err(Self::TooLarge(size)),
      _ => Ok(merged),
    }
  }
}

/// Whether a batch may be sent again on a new connection after the one it went out on
/// dropped before its replies came: its first attempt may have landed. Declared by the
/// store that builds the batch; the drivers read it (never the call's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
  /// Applying it twice leaves the same state and gives the same replies (a read, an
  /// idempotent write, or a conditional write whose answer a second run cannot change).
  Safe,
  /// A second run could answer differently (a count of what a first run already removed,
  /// a claim that a first run already won): after a drop the call rejects `UNAVAILABLE`.
  Never,
}

/// Commands sent together in one round trip; `atomic` asks for all-or-nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
  pub commands: Vec<Command>,
  pub atomic: bool,
  /// Whether the batch may be sent again after a dropped connection.
  pub resend: Resend,
}

impl Batch {
  /// A batch of one command, safe to send again (see [`Batch::never_resend`]).
  pub fn one(command: Command) -> Self {
    Self::many(vec![command])
  }

  /// Commands sent together, not atomically, safe to send again.
  pub fn many(commands: Vec<Command>) -> Self {
    Self {
      commands,
      atomic: false,
      resend: Resend::Safe,
    }
  }

  /// Commands applied together or not at all (`MULTI`/`EXEC`, one SQLite transaction).
  pub fn atomic(commands: Vec<Command>) -> Self {
    Self {
      commands,
      atomic: true,
      resend: Resend::Safe,
    }
  }

  /// The same batch, declared not safe to send twice.
  pub fn never_resend(mut self) -> Self {
    self.resend = Resend::Never;
    self
  }

  /// Whether the batch may be sent again after a dropped connection.
  pub fn may_resend(&self) -> bool {
    self.resend == Resend::Safe
  }

  /// Whether any command changes the keyspace.
  pub fn writes(&self) -> bool {
    self.commands.iter().any(Command::writes)
  }

  /// Every key the batch's commands name.
  pub fn keys(&self) -> impl Iterator<Item = &String> {
    self.commands.iter().flat_map(|command| command.keys())
  }

  /// Whether any command reads keys it does not name.
  pub fn reads_any_key(&self) -> bool {
    self.commands.iter().any(Command::reads_any_key)
  }
}

/// What to do once a batch's replies are in: settle the call, or send another batch
/// (a call that needs several round trips, such as a `SCAN` loop or a retried
/// compare-and-set) and continue with its replies.
pub enum Step {
  Done(StoreResult<Output>),
  Then(Batch, Finish),
}

/// Turns a batch's replies into the call's next step. Runs on whichever thread the
/// engine completes on.
pub type Finish = Box<dyn FnOnce(Vec<Reply>) -> Step + Send>;

impl From<StoreResult<Output>> for Step {
  fn from(result: StoreResult<Output>) -> Self {
    Step::Done(result)
  }
}

impl Step {
  /// Sends `batch`, then continues with `finish`.
  pub fn then(batch: Batch, finish: impl FnOnce(Vec<Reply>) -> Step + Send + 'static) -> Self {
    Step::Then(batch, Box::new(finish))
  }
}
