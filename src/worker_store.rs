//! The native WorkerStore: the idioteque store contract over any backend.
//! Values cross the boundary as JSON text; the JS layer stringifies and parses.
//!
//! Every method builds one batch of store operations (`command.rs`, the backend seam)
//! and hands it to the store's engine; each backend runs it in its own terms (Redis
//! commands on the `@idioteque/redis` layout, SQL statements on store-shaped tables).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use napi::bindgen_prelude::PromiseRaw;
use napi::Env;
use napi_derive::napi;

use crate::command::{Batch, Command, Finish, Reply, Step};
use crate::engine::Engine;
use crate::error::{StoreError, StoreResult};
use crate::keys::KeyLayout;
use crate::output::Output;
use crate::results;

/// The value stored in the in-progress markers, as the JS store writes it.
const MARKER: &str = "true";

/// What a store needs besides its backend.
pub struct StoreConfig {
  pub keys: KeyLayout,
  pub ttl_ms: Option<u64>,
  pub command_timeout: Duration,
}

/// A durable WorkerStore over Redis, SQLite or memory. Made by the `create*Store`
/// functions; every method is one round trip (Redis) or one transaction (SQLite).
#[napi]
pub struct NativeWorkerStore {
  engine: Engine,
  config: StoreConfig,
  closed: AtomicBool,
}

impl NativeWorkerStore {
  /// The engine its calls run on.
  pub(crate) fn engine(&self) -> &Engine {
    &self.engine
  }

  pub fn new(engine: Engine, config: StoreConfig) -> Self {
    Self {
      engine,
      config,
      closed: AtomicBool::new(false),
    }
  }

  /// Runs `batch` and resolves with `finish(replies)`; bounded by `commandTimeout`.
  fn dispatch<'env>(
    &self,
    env: &'env Env,
    what: &'static str,
    batch: Batch,
    finish: impl FnOnce(Vec<Reply>) -> StoreResult<Output> + Send + 'static,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let finish = Box::new(move |replies| Step::Done(finish(replies)));
    self.dispatch_steps(env, what, batch, finish)
  }

  /// Runs `batch`, then the steps `finish` asks for; each bounded by `commandTimeout`.
  fn dispatch_steps<'env>(
    &self,
    env: &'env Env,
    what: &'static str,
    batch: Batch,
    finish: Finish,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    if self.closed.load(Ordering::Acquire) {
      return Engine::rejected(env, StoreError::disposed());
    }
    let limit = self.config.command_timeout;
    self.engine.call(env, what, batch, finish, limit)
  }

  fn claim(&self, id: &str, task: String, exclusive: bool, value: String) -> Batch {
    Batch::one(Command::Claim {
      exec: self.config.keys.execution(id),
      task,
      value,
      exclusive,
      ttl_ms: self.config.ttl_ms,
    })
  }
}

/// A marker value no other claim uses: a process-random number and a counter.
fn claim_token() -> String {
  use std::hash::{BuildHasher, Hasher};
  use std::sync::atomic::AtomicU64;
  static COUNTER: AtomicU64 = AtomicU64::new(0);
  static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
  let seed = SEED.get_or_init(|| {
    std::collections::hash_map::RandomState::new()
      .build_hasher()
      .finish()
  });
  let count = COUNTER.fetch_add(1, Ordering::Relaxed);
  format!("claim:{seed:016x}:{count}")
}

/// The first reply of a batch: the command whose answer the call returns.
fn first(replies: Vec<Reply>) -> Reply {
  replies.into_iter().next().unwrap_or(Reply::Nil)
}

fn done(_: Vec<Reply>) -> StoreResult<Output> {
  Ok(Output::Undefined)
}

#[napi]
impl NativeWorkerStore {
  /// Marks the execution in progress: `SET <id> "true" [PX ttl]`.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn begin_execution<'env>(
    &self,
    env: &'env Env,
    execution_id: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    if let Err(err) = self.config.keys.check_id(&execution_id) {
      return Engine::rejected(env, err);
    }
    let command = Command::Set {
      key: self.config.keys.execution(&execution_id),
      value: MARKER.to_string(),
      ttl_ms: self.config.ttl_ms,
    };
    self.dispatch(env, "beginExecution", Batch::one(command), done)
  }

  /// All committed results: the text of one JSON object (`{}` when none) when every
  /// stored value is valid JSON, else `[taskId, json, ...]` so the caller can name the
  /// field that is not.
  #[napi(ts_return_type = "Promise<string | Array<string>>")]
  pub fn get_execution_task_results<'env>(
    &self,
    env: &'env Env,
    execution_id: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    if let Err(err) = self.config.keys.check_id(&execution_id) {
      return Engine::rejected(env, err);
    }
    let key = self.config.keys.results(&execution_id);
    let exec = self.config.keys.execution(&execution_id);
    let batch = Batch::one(Command::StepResults { exec });
    let finish = move |replies| Ok(Output::Results(results::all_results(first(replies), &key)?));
    self.dispatch(env, "getExecutionTaskResults", batch, finish)
  }

  /// One step's committed result as JSON text, or `null` when it has none.
  #[napi(ts_return_type = "Promise<string | null>")]
  pub fn get_execution_task_result<'env>(
    &self,
    env: &'env Env,
    execution_id: String,
    task_id: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    if let Err(err) = self.config.keys.check_id(&execution_id) {
      return Engine::rejected(env, err);
    }
    let key = self.config.keys.results(&execution_id);
    let batch = Batch::one(Command::StepResult {
      exec: self.config.keys.execution(&execution_id),
      task: task_id.clone(),
    });
    let finish = move |replies| {
      Ok(Output::Text(results::json_text(
        first(replies),
        &key,
        &task_id,
      )?))
    };
    self.dispatch(env, "getExecutionTaskResult", batch, finish)
  }

  /// Marks a step in progress (Redis: `HSET <id>-transactions <task> "true"`, + `PEXPIRE`).
  #[napi(ts_return_type = "Promise<void>")]
  pub fn begin_execution_task<'env>(
    &self,
    env: &'env Env,
    execution_id: String,
    task_id: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    if let Err(err) = self.config.keys.check_id(&execution_id) {
      return Engine::rejected(env, err);
    }
    let batch = self.claim(&execution_id, task_id, false, MARKER.to_string());
    self.dispatch(env, "beginExecutionTask", batch, done)
  }

  /// Claims a step atomically (Redis: `HSETNX`): of concurrent callers exactly one gets `true`.
  /// With the hash-tag layout (no JS store reads it) the marker is a token unique to the
  /// claim, so a claim sent twice (again after a dropped connection, on a cluster or a
  /// single server) still answers `true` to the caller whose first `HSETNX` landed: a
  /// `0` is checked against the stored token.
  #[napi(ts_return_type = "Promise<boolean>")]
  pub fn try_begin_execution_task<'env>(
    &self,
    env: &'env Env,
    execution_id: String,
    task_id: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    if let Err(err) = self.config.keys.check_id(&execution_id) {
      return Engine::rejected(env, err);
    }
    let token = if self.config.keys.is_hashtag() {
      claim_token()
    } else {
      MARKER.to_string()
    };
    let exec = self.config.keys.execution(&execution_id);
    let batch = self.claim(&execution_id, task_id.clone(), true, token.clone());
    // A second `HSETNX` after a first that landed answers 0. With a token unique to this
    // claim the 0 is checked against the stored token, so sending it again is safe.
    let batch = match token == MARKER {
      true => batch.never_resend(),
      false => batch,
    };
    let finish = move |replies| match first(replies) {
      Reply::Int(1) => Step::Done(Ok(Output::Bool(true))),
      _ if token == MARKER => Step::Done(Ok(Output::Bool(false))),
      _ => {
        let check = Batch::one(Command::StepClaim {
          exec,
          task: task_id,
        });
        Step::then(check, move |replies| {
          let ours = first(replies) == Reply::Bytes(token.into_bytes());
          Step::Done(Ok(Output::Bool(ours)))
        })
      }
    };
    self.dispatch_steps(env, "tryBeginExecutionTask", batch, Box::new(finish))
  }

  /// Stores a step's result (JSON text) and clears its in-progress marker, atomically.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn commit_execution_task_result<'env>(
    &self,
    env: &'env Env,
    execution_id: String,
    task_id: String,
    json: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    if let Err(err) = self.config.keys.check_id(&execution_id) {
      return Engine::rejected(env, err);
    }
    let what = || format!("the result of task \"{task_id}\"");
    // Redis's limit first: it is in bytes, so no count of UTF-16 units is needed for it.
    if self.engine.speaks_redis() {
      if let Err(err) = crate::json_value::check_redis_size(what, &json) {
        return Engine::rejected(env, err);
      }
    }
    if let Err(err) = crate::json_value::check_value_size(what, &json) {
      return Engine::rejected(env, err);
    }
    let batch = Batch::one(Command::Commit {
      exec: self.config.keys.execution(&execution_id),
      task: task_id,
      json,
      ttl_ms: self.config.ttl_ms,
    });
    self.dispatch(env, "commitExecutionTaskResult", batch, done)
  }

  /// Whether the execution is in progress (begun, not disposed, not expired).
  #[napi(ts_return_type = "Promise<boolean>")]
  pub fn is_execution_in_progress<'env>(
    &self,
    env: &'env Env,
    execution_id: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    if let Err(err) = self.config.keys.check_id(&execution_id) {
      return Engine::rejected(env, err);
    }
    let key = self.config.keys.execution(&execution_id);
    let finish = |replies| Ok(Output::Bool(results::truthy(&first(replies))));
    self.dispatch(
      env,
      "isExecutionInProgress",
      Batch::one(Command::Get { key }),
      finish,
    )
  }

  /// Whether the step is marked in progress.
  #[napi(ts_return_type = "Promise<boolean>")]
  pub fn is_execution_task_in_progress<'env>(
    &self,
    env: &'env Env,
    execution_id: String,
    task_id: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    if let Err(err) = self.config.keys.check_id(&execution_id) {
      return Engine::rejected(env, err);
    }
    let batch = Batch::one(Command::StepClaim {
      exec: self.config.keys.execution(&execution_id),
      task: task_id,
    });
    let finish = |replies| Ok(Output::Bool(results::truthy(&first(replies))));
    self.dispatch(env, "isExecutionTaskInProgress", batch, finish)
  }

  /// Removes the execution: its marker, steps in progress and results (Redis: one `DEL`
  /// of its three keys).
  #[napi(ts_return_type = "Promise<void>")]
  pub fn dispose_execution<'env>(
    &self,
    env: &'env Env,
    execution_id: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    if let Err(err) = self.config.keys.check_id(&execution_id) {
      return Engine::rejected(env, err);
    }
    let command = Command::Dispose {
      exec: self.config.keys.execution(&execution_id),
    };
    self.dispatch(env, "disposeExecution", Batch::one(command), done)
  }

  /// The key that holds an execution's results (for error messages).
  #[napi]
  pub fn results_key(&self, execution_id: String) -> String {
    self.config.keys.results(&execution_id)
  }

  /// Closes the store: connections and threads are released, calls in flight finish,
  /// later calls reject with `DISPOSED`. Idempotent. Resolves once a SQLite database is
  /// closed and checkpointed (the file can then be copied or deleted).
  #[napi(ts_return_type = "Promise<void>")]
  pub fn close<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, Output>> {
    if !self.closed.swap(true, Ordering::AcqRel) {
      self.engine.close(env);
    }
    self.engine.closed(env)
  }

  /// Which backend this store is on and where its server is, for traces.
  #[napi]
  pub fn server_info(&self) -> crate::events::ServerInfo {
    self.engine.server()
  }

  /// Calls `listener` with each connection event as JSON text (`null` removes it). It
  /// never keeps the process alive. Does nothing on a backend without a server.
  #[napi(ts_args_type = "listener: ((event: string) => void) | null")]
  pub fn on_connection(
    &self,
    listener: Option<napi::bindgen_prelude::Function<'_, String, ()>>,
  ) -> napi::Result<()> {
    match self.engine.events() {
      Some(events) if !self.closed.load(Ordering::Acquire) => events.listen(listener),
      _ => Ok(()),
    }
  }

  /// Whether `close()` was called.
  #[napi(getter)]
  pub fn closed(&self) -> bool {
    self.closed.load(Ordering::Acquire)
  }
}
