//! Access to any backend for the `durastate` CLI and `durastate ui`, through the store
//! operations of the seam: executions listed and read as the backend stores them. Its
//! only writes are the two repair tools, `resetSteps` and `dispose`.

use std::time::Duration;

use napi::bindgen_prelude::PromiseRaw;
use napi::{Either, Env};
use napi_derive::napi;

use crate::command::{Batch, Command, ExecutionView, Reply, Step};
use crate::engine::Engine;
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::factory::engine_for_target;
use crate::options::StoreOptions;
use crate::output::Output;

/// A read-only view of a store's executions.
#[napi]
pub struct NativeInspector {
  engine: Engine,
  command_timeout: Duration,
}

/// An inspector on the backend `url` names (default: `DURASTATE_URL`, `REDIS_URL`,
/// the SQLite default file). `memory:` is refused: a new process has nothing to see.
#[napi(catch_unwind)]
pub fn create_inspector(
  env: Env,
  url: Option<String>,
  options: Option<StoreOptions>,
) -> napi::Result<NativeInspector, ErrorCode> {
  if url.as_deref().is_some_and(|u| u.starts_with("memory:")) {
    return Err(
      StoreError::invalid_input(
        "memory: stores live inside their own process; inspect a Redis or SQLite store",
      )
      .into(),
    );
  }
  let options = options.unwrap_or_default();
  let (engine, common) = engine_for_target(url.map(Either::A), &options)?;
  engine.close_with(&env);
  Ok(NativeInspector {
    engine,
    command_timeout: common.command_timeout,
  })
}

impl NativeInspector {
  fn one<'env>(
    &self,
    env: &'env Env,
    what: &'static str,
    command: Command,
    answer: impl FnOnce(Reply) -> StoreResult<Output> + Send + 'static,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let finish = Box::new(move |replies: Vec<Reply>| {
      Step::Done(answer(replies.into_iter().next().unwrap_or(Reply::Nil)))
    });
    self
      .engine
      .call(env, what, Batch::one(command), finish, self.command_timeout)
  }
}

#[napi]
impl NativeInspector {
  /// One page of the keys of executions under `prefix`: `[nextCursor, ...keys]`;
  /// `"0"` starts and ends. A key may repeat, or turn out (by [`execution`]) to hold
  /// no execution.
  #[napi(ts_return_type = "Promise<Array<string>>")]
  pub fn scan_executions<'env>(
    &self,
    env: &'env Env,
    cursor: String,
    prefix: String,
    count: u32,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let command = Command::ScanExecutions {
      cursor,
      prefix,
      count: count.max(1),
    };
    self.one(env, "scanExecutions", command, |reply| match reply {
      Reply::Scan { cursor, keys } => {
        let mut page = Vec::with_capacity(keys.len() + 1);
        page.push(cursor);
        page.extend(keys);
        Ok(Output::Strings(page))
      }
      other => Err(unexpected(&other)),
    })
  }

  /// Everything stored about the execution whose marker key is `key`.
  #[napi(ts_return_type = "Promise<ExecutionInfo>")]
  pub fn execution<'env>(
    &self,
    env: &'env Env,
    key: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let command = Command::Execution { exec: key };
    self.one(env, "execution", command, |reply| match reply {
      Reply::Execution(view) => Ok(Output::Execution(ExecutionInfo::from(*view))),
      other => Err(unexpected(&other)),
    })
  }

  /// Removes the results and in-progress marks of the steps `tasks` of the execution
  /// whose marker key is `key` (one transaction), so the next delivery runs them again.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn reset_steps<'env>(
    &self,
    env: &'env Env,
    key: String,
    tasks: Vec<String>,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    if tasks.is_empty() {
      return Engine::rejected(
        env,
        StoreError::invalid_input("resetSteps needs at least one step"),
      );
    }
    let command = Command::ResetSteps { exec: key, tasks };
    let finish = Box::new(|_: Vec<Reply>| Step::Done(Ok(Output::Undefined)));
    self.engine.call(
      env,
      "resetSteps",
      Batch::atomic(vec![command]),
      finish,
      self.command_timeout,
    )
  }

  /// Removes the execution whose marker key is `key`: marker, marks and results.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn dispose<'env>(
    &self,
    env: &'env Env,
    key: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    self.one(env, "dispose", Command::Dispose { exec: key }, |_| {
      Ok(Output::Undefined)
    })
  }

  /// Releases the connection or database; resolves once a SQLite database is closed.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn close<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, Output>> {
    self.engine.close(env);
    self.engine.closed(env)
  }
}

fn unexpected(reply: &Reply) -> StoreError {
  StoreError::new(
    crate::error::ErrorCode::Unavailable,
    format!("unexpected reply: {reply:?}"),
  )
}

/// What the backend holds about one execution. TTLs in ms as `PTTL` answers them:
/// -1 without expiry, -2 when there is nothing.
#[napi(object, object_from_js = false)]
pub struct ExecutionInfo {
  /// The marker's value (`"true"` while in progress), or `null`.
  pub marker: Option<String>,
  pub marker_ttl: i64,
  /// Steps in progress, flattened: `[taskId, mark, ...]`.
  pub claims: Vec<String>,
  pub claims_ttl: i64,
  /// Committed results, flattened: `[taskId, json, ...]`.
  pub results: Vec<String>,
  pub results_ttl: i64,
}

fn flat(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<String> {
  pairs
    .into_iter()
    .flat_map(|(field, value)| [field, value])
    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    .collect()
}

impl From<ExecutionView> for ExecutionInfo {
  fn from(view: ExecutionView) -> Self {
    Self {
      marker: view
        .marker
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
      marker_ttl: view.marker_ttl,
      claims: flat(view.claims),
      claims_ttl: view.claims_ttl,
      results: flat(view.results),
      results_ttl: view.results_ttl,
    }
  }
}
