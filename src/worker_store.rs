//! The native WorkerStore: the idioteque store contract over any backend.
//! Values cross the boundary as JSON text; the JS layer stringifies and parses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use napi::Either;
use napi_derive::napi;

use crate::backend::Backend;
use crate::command::{Batch, Command, Reply};
use crate::error::{StoreError, StoreResult};
use crate::guard::bounded;
use crate::keys::KeyLayout;
use crate::results;

/// The value stored in the in-progress markers, as the JS store writes it.
const MARKER: &str = "true";

/// What a store needs besides its backend.
pub struct StoreConfig {
  pub keys: KeyLayout,
  pub ttl_ms: Option<u64>,
  pub command_timeout: Duration,
}

struct StoreCore {
  backend: Backend,
  config: StoreConfig,
  closed: AtomicBool,
}

/// A durable WorkerStore over Redis, SQLite or memory. Made by the `create*Store`
/// functions; every method is one round trip (Redis) or one transaction (SQLite).
#[napi]
pub struct NativeWorkerStore {
  core: Arc<StoreCore>,
}

impl NativeWorkerStore {
  pub fn new(backend: Backend, config: StoreConfig) -> Self {
    Self {
      core: Arc::new(StoreCore {
        backend,
        config,
        closed: AtomicBool::new(false),
      }),
    }
  }
}

impl StoreCore {
  async fn run(&self, what: &'static str, batch: Batch) -> StoreResult<Vec<Reply>> {
    if self.closed.load(Ordering::Acquire) {
      return Err(StoreError::disposed());
    }
    bounded(
      what,
      self.config.command_timeout,
      self.backend.execute(batch),
    )
    .await
  }

  async fn run_one(&self, what: &'static str, batch: Batch) -> StoreResult<Reply> {
    let mut replies = self.run(what, batch).await?;
    Ok(replies.swap_remove(0))
  }

  /// A write to `key` plus, when a TTL is set, its `PEXPIRE`, applied atomically.
  fn with_ttl(&self, command: Command, key: String) -> Batch {
    match self.config.ttl_ms {
      Some(ttl_ms) => Batch::atomic(vec![command, Command::PExpire { key, ttl_ms }]),
      None => Batch::one(command),
    }
  }

  fn claim_batch(&self, id: &str, task: &str, exclusive: bool) -> Batch {
    let key = self.config.keys.transactions(id);
    let (field, value) = (task.to_string(), MARKER.to_string());
    let command = if exclusive {
      Command::HSetNx {
        key: key.clone(),
        field,
        value,
      }
    } else {
      Command::HSet {
        key: key.clone(),
        field,
        value,
      }
    };
    self.with_ttl(command, key)
  }

  fn commit_batch(&self, id: &str, task: String, json: String) -> Batch {
    let results = self.config.keys.results(id);
    let mut commands = vec![
      Command::HDel {
        key: self.config.keys.transactions(id),
        field: task.clone(),
      },
      Command::HSet {
        key: results.clone(),
        field: task,
        value: json,
      },
    ];
    if let Some(ttl_ms) = self.config.ttl_ms {
      commands.push(Command::PExpire {
        key: results,
        ttl_ms,
      });
    }
    Batch::atomic(commands)
  }
}

fn check_id(id: &str) -> StoreResult<()> {
  if id.is_empty() {
    return Err(StoreError::invalid_input(
      "executionId must be a non-empty string",
    ));
  }
  Ok(())
}

#[napi]
impl NativeWorkerStore {
  /// Marks the execution in progress: `SET <id> "true" [PX ttl]`.
  #[napi]
  pub async fn begin_execution(&self, execution_id: String) -> napi::Result<()> {
    check_id(&execution_id)?;
    let core = &self.core;
    let command = Command::Set {
      key: core.config.keys.execution(&execution_id),
      value: MARKER.to_string(),
      ttl_ms: core.config.ttl_ms,
    };
    core.run("beginExecution", Batch::one(command)).await?;
    Ok(())
  }

  /// All committed results: the text of one JSON object (`{}` when none) when every
  /// stored value is valid JSON, else `[taskId, json, ...]` so the caller can name the
  /// field that is not.
  #[napi]
  pub async fn get_execution_task_results(
    &self,
    execution_id: String,
  ) -> napi::Result<Either<String, Vec<String>>> {
    check_id(&execution_id)?;
    let key = self.core.config.keys.results(&execution_id);
    let batch = Batch::one(Command::HGetAll { key: key.clone() });
    let reply = self.core.run_one("getExecutionTaskResults", batch).await?;
    Ok(results::all_results(reply, &key)?)
  }

  /// One step's committed result as JSON text, or `null` when it has none.
  #[napi]
  pub async fn get_execution_task_result(
    &self,
    execution_id: String,
    task_id: String,
  ) -> napi::Result<Option<String>> {
    check_id(&execution_id)?;
    let key = self.core.config.keys.results(&execution_id);
    let batch = Batch::one(Command::HGet {
      key: key.clone(),
      field: task_id.clone(),
    });
    let reply = self.core.run_one("getExecutionTaskResult", batch).await?;
    Ok(results::json_text(reply, &key, &task_id)?)
  }

  /// Marks a step in progress: `HSET <id>-transactions <task> "true"` (+ `PEXPIRE`).
  #[napi]
  pub async fn begin_execution_task(
    &self,
    execution_id: String,
    task_id: String,
  ) -> napi::Result<()> {
    check_id(&execution_id)?;
    let batch = self.core.claim_batch(&execution_id, &task_id, false);
    self.core.run("beginExecutionTask", batch).await?;
    Ok(())
  }

  /// Claims a step atomically (`HSETNX`): of concurrent callers exactly one gets `true`.
  #[napi]
  pub async fn try_begin_execution_task(
    &self,
    execution_id: String,
    task_id: String,
  ) -> napi::Result<bool> {
    check_id(&execution_id)?;
    let batch = self.core.claim_batch(&execution_id, &task_id, true);
    let reply = self.core.run_one("tryBeginExecutionTask", batch).await?;
    Ok(reply == Reply::Int(1))
  }

  /// Stores a step's result (JSON text) and clears its in-progress marker, atomically.
  #[napi]
  pub async fn commit_execution_task_result(
    &self,
    execution_id: String,
    task_id: String,
    json: String,
  ) -> napi::Result<()> {
    check_id(&execution_id)?;
    let batch = self.core.commit_batch(&execution_id, task_id, json);
    self.core.run("commitExecutionTaskResult", batch).await?;
    Ok(())
  }

  /// Whether the execution is in progress (begun, not disposed, not expired).
  #[napi]
  pub async fn is_execution_in_progress(&self, execution_id: String) -> napi::Result<bool> {
    check_id(&execution_id)?;
    let key = self.core.config.keys.execution(&execution_id);
    let reply = self
      .core
      .run_one("isExecutionInProgress", Batch::one(Command::Get { key }))
      .await?;
    Ok(results::truthy(&reply))
  }

  /// Whether the step is marked in progress.
  #[napi]
  pub async fn is_execution_task_in_progress(
    &self,
    execution_id: String,
    task_id: String,
  ) -> napi::Result<bool> {
    check_id(&execution_id)?;
    let key = self.core.config.keys.transactions(&execution_id);
    let batch = Batch::one(Command::HGet {
      key,
      field: task_id,
    });
    let reply = self
      .core
      .run_one("isExecutionTaskInProgress", batch)
      .await?;
    Ok(results::truthy(&reply))
  }

  /// Deletes the execution's three keys in one `DEL`.
  #[napi]
  pub async fn dispose_execution(&self, execution_id: String) -> napi::Result<()> {
    check_id(&execution_id)?;
    let keys = &self.core.config.keys;
    let command = Command::Del {
      keys: vec![
        keys.execution(&execution_id),
        keys.transactions(&execution_id),
        keys.results(&execution_id),
      ],
    };
    self
      .core
      .run("disposeExecution", Batch::one(command))
      .await?;
    Ok(())
  }

  /// The key that holds an execution's results (for error messages).
  #[napi]
  pub fn results_key(&self, execution_id: String) -> String {
    self.core.config.keys.results(&execution_id)
  }

  /// Closes the store: connections and threads are released, calls in flight finish,
  /// later calls reject with `DISPOSED`. Idempotent.
  #[napi]
  pub fn close(&self) {
    if !self.core.closed.swap(true, Ordering::AcqRel) {
      self.core.backend.close();
    }
  }

  /// Whether `close()` was called.
  #[napi(getter)]
  pub fn closed(&self) -> bool {
    self.core.closed.load(Ordering::Acquire)
  }
}
