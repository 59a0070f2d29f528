//! Read-only access to the raw keyspace of any backend, for the `durastate` CLI:
//! `SCAN` pages, `GET`, `HGETALL`, `PTTL`. Never writes.

use std::time::Duration;

use napi::bindgen_prelude::PromiseRaw;
use napi::{Either, Env};
use napi_derive::napi;

use crate::command::{Batch, Command, KeyKind, Reply, Step};
use crate::engine::Engine;
use crate::error::{StoreError, StoreResult};
use crate::factory::engine_for_target;
use crate::options::StoreOptions;
use crate::output::Output;

/// A read-only view of a store's keyspace (Redis, or the SQLite keyspace table).
#[napi]
pub struct NativeInspector {
  engine: Engine,
  command_timeout: Duration,
}

/// An inspector on the backend `url` names (default: `DURASTATE_URL`, `REDIS_URL`,
/// the SQLite default file). `memory:` is refused: a new process has nothing to see.
#[napi(catch_unwind)]
pub fn create_inspector(
  url: Option<String>,
  options: Option<StoreOptions>,
) -> napi::Result<NativeInspector> {
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
  /// One `SCAN` page: `[nextCursor, ...keys]`; `"0"` starts and ends. `pattern` is a
  /// Redis glob over the full key; `type` keeps only `"string"` or `"hash"` keys.
  #[napi(ts_return_type = "Promise<Array<string>>")]
  pub fn scan<'env>(
    &self,
    env: &'env Env,
    cursor: String,
    pattern: String,
    count: u32,
    key_type: Option<String>,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let kind = match key_type.as_deref() {
      None => None,
      Some("string") => Some(KeyKind::String),
      Some("hash") => Some(KeyKind::Hash),
      Some(other) => {
        return Err(
          StoreError::invalid_input(format!(
            "type must be \"string\" or \"hash\", got \"{other}\""
          ))
          .into(),
        )
      }
    };
    let command = Command::Scan {
      cursor,
      pattern,
      count: count.max(1),
      kind,
    };
    self.one(env, "scan", command, |reply| match reply {
      Reply::Scan { cursor, keys } => {
        let mut page = Vec::with_capacity(keys.len() + 1);
        page.push(cursor);
        page.extend(keys);
        Ok(Output::Strings(page))
      }
      other => Err(unexpected(&other)),
    })
  }

  /// `GET key`: the string, or `null`.
  #[napi(ts_return_type = "Promise<string | null>")]
  pub fn get<'env>(&self, env: &'env Env, key: String) -> napi::Result<PromiseRaw<'env, Output>> {
    self.one(env, "get", Command::Get { key }, |reply| match reply {
      Reply::Bytes(bytes) => Ok(Output::Text(Some(
        String::from_utf8_lossy(&bytes).into_owned(),
      ))),
      _ => Ok(Output::Text(None)),
    })
  }

  /// `HGETALL key`: `[field, value, ...]`.
  #[napi(ts_return_type = "Promise<Array<string>>")]
  pub fn hgetall<'env>(
    &self,
    env: &'env Env,
    key: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    self.one(
      env,
      "hgetall",
      Command::HGetAll { key },
      |reply| match reply {
        Reply::Pairs(pairs) => Ok(Output::Strings(
          pairs
            .into_iter()
            .flat_map(|(field, value)| [field, value])
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .collect(),
        )),
        Reply::Nil => Ok(Output::Strings(Vec::new())),
        other => Err(unexpected(&other)),
      },
    )
  }

  /// `PTTL key`: ms left, -1 without expiry, -2 when missing.
  #[napi(ts_return_type = "Promise<number>")]
  pub fn pttl<'env>(&self, env: &'env Env, key: String) -> napi::Result<PromiseRaw<'env, Output>> {
    self.one(env, "pttl", Command::PTtl { key }, |reply| match reply {
      Reply::Int(ms) => Ok(Output::Int(ms)),
      other => Err(unexpected(&other)),
    })
  }

  /// Releases the connection or database.
  #[napi]
  pub fn close(&self) {
    self.engine.close();
  }
}

fn unexpected(reply: &Reply) -> StoreError {
  StoreError::new(
    crate::error::ErrorCode::Unavailable,
    format!("unexpected reply: {reply:?}"),
  )
}
