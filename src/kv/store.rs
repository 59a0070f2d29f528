//! The native KV store: mounts over any backend. Values cross the boundary as JSON
//! text; the JS layer stringifies and parses, and builds the one-mount views.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::{Either3, Null, PromiseRaw};
use napi::{Either, Env};
use napi_derive::napi;

use super::mount::{unknown_mount, validate_mounts, KvMountSpec, Mount};
use super::ops;
use crate::command::{Batch, Command, Reply, Step};
use crate::engine::Engine;
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::factory::engine_for_target;
use crate::json_value::JsonType;
use crate::options::{millis, RedisConnectionOptions, StoreOptions};
use crate::output::Output;

/// What a write that may add keys returns to JS (see `run_write`).
type WriteCall<'env> = Either3<PromiseRaw<'env, Output>, Vec<PromiseRaw<'env, Output>>, Null>;

/// A KV store with mounts, modes, schemas and limits, on Redis, SQLite or memory. Made
/// by `createKvStore`; the JS layer wraps it.
/// The calls of one round trip (and the first round trip of a write) take a last
/// `timeout` (ms): what is left of the `commandTimeout` of a call that waited for the
/// calls before it on its keys (`index.js`, `KeyOrder`); absent, `commandTimeout`.
#[napi]
pub struct NativeKvStore {
  engine: Engine,
  mounts: Vec<Arc<Mount>>,
  command_timeout: Duration,
  closed: AtomicBool,
}

/// A KV store on the backend `target` names (a URL, Redis fields, or, when absent,
/// `DURASTATE_URL`, `REDIS_URL`, the SQLite default file), with `mounts` in order.
#[napi(catch_unwind)]
pub fn create_kv_store(
  env: Env,
  target: Option<Either<String, RedisConnectionOptions>>,
  options: Option<StoreOptions>,
  mounts: Vec<KvMountSpec>,
) -> napi::Result<NativeKvStore, ErrorCode> {
  let options = options.unwrap_or_default();
  let mounts = validate_mounts(mounts)?;
  let (engine, common) = engine_for_target(target, &options)?;
  engine.close_with(&env);
  Ok(NativeKvStore {
    engine,
    mounts: mounts.into_iter().map(Arc::new).collect(),
    command_timeout: common.command_timeout,
    closed: AtomicBool::new(false),
  })
}

impl NativeKvStore {
  fn mount(&self, name: &str) -> StoreResult<Arc<Mount>> {
    self
      .mounts
      .iter()
      .find(|mount| mount.name == name)
      .cloned()
      .ok_or_else(|| unknown_mount(name, &self.mounts))
  }

  /// Runs a call's first step; a `Done` step settles at once.
  fn run<'env>(
    &self,
    env: &'env Env,
    what: &'static str,
    step: StoreResult<Step>,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    self.run_within(env, what, step, None)
  }

  /// `run`, each round trip bounded by `timeout` (ms) when it is below `commandTimeout`:
  /// what is left of the budget of a call that waited behind others on its keys (the JS
  /// layer's `KeyOrder`).
  fn run_within<'env>(
    &self,
    env: &'env Env,
    what: &'static str,
    step: StoreResult<Step>,
    timeout: Option<f64>,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let limit = match timeout {
      Some(ms) if ms.is_finite() && ms >= 0.0 => {
        Duration::from_millis(ms.ceil().max(1.0) as u64).min(self.command_timeout)
      }
      _ => self.command_timeout,
    };
    if self.closed.load(Ordering::Acquire) {
      return Engine::rejected(env, StoreError::disposed());
    }
    match step {
      Err(err) => Engine::rejected(env, err),
      Ok(Step::Done(Ok(output))) => {
        let (deferred, promise) = crate::js_promise::create(env.raw())?;
        crate::js_promise::settle(env.raw(), deferred, Ok(output));
        Ok(PromiseRaw::new(env.raw(), promise))
      }
      Ok(Step::Done(Err(err))) => Engine::rejected(env, err),
      Ok(Step::Then(batch, finish)) => self.engine.call(env, what, batch, finish, limit),
    }
  }

  /// Runs a write that may add keys ([`ops::Write`]): the whole write as a promise; its
  /// first part as `[promise]`; `null` when it waits for a count (nothing sent).
  fn run_write<'env>(
    &self,
    env: &'env Env,
    what: &'static str,
    write: StoreResult<ops::Write>,
    timeout: Option<f64>,
  ) -> napi::Result<WriteCall<'env>> {
    Ok(match write {
      Ok(ops::Write::NeedsCount) if !self.closed.load(Ordering::Acquire) => Either3::C(Null),
      Ok(ops::Write::NeedsCount) => Either3::A(self.run(env, what, Err(StoreError::disposed()))?),
      Ok(ops::Write::Whole(step)) => Either3::A(self.run_within(env, what, Ok(step), timeout)?),
      Ok(ops::Write::Staged(step)) => {
        Either3::B(vec![self.run_within(env, what, Ok(step), timeout)?])
      }
      Err(err) => Either3::A(self.run(env, what, Err(err))?),
    })
  }

  /// One command, its first reply turned into the output.
  fn single(
    command: Command,
    answer: impl FnOnce(Reply) -> Output + Send + 'static,
  ) -> StoreResult<Step> {
    Ok(Step::then(Batch::one(command), move |replies| {
      Step::Done(Ok(answer(ops::first(replies))))
    }))
  }

  fn ttl(mount: &Mount, ttl: Option<f64>) -> StoreResult<Option<u64>> {
    Ok(millis("ttl", ttl)?.filter(|ttl| *ttl > 0).or(mount.ttl_ms))
  }
}

#[napi]
impl NativeKvStore {
  /// The stored JSON; when missing, the declared default, or `""` on an open mount.
  #[napi(ts_return_type = "Promise<string>")]
  pub fn get<'env>(
    &self,
    env: &'env Env,
    mount: String,
    key: String,
    timeout: Option<f64>,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let step = self.mount(&mount).and_then(|mount| {
      mount.check_readable("get", Some(&key))?;
      let fallback = match mount.declared(&key)? {
        Some(entry) => entry.default_json.clone(),
        None => "\"\"".to_string(),
      };
      Ok(ops::get(mount, &key, move |json| {
        Ok(Output::Text(Some(json.unwrap_or(fallback))))
      }))
    });
    self.run_within(env, "get", step, timeout)
  }

  /// The stored JSON, or `null` when missing. `call`: the method the JS layer serves
  /// with it (`getOr`, the default, or `getJson`), as errors name it.
  #[napi(ts_return_type = "Promise<string | null>")]
  pub fn get_or<'env>(
    &self,
    env: &'env Env,
    mount: String,
    key: String,
    call: Option<String>,
    timeout: Option<f64>,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let what = match call.as_deref() {
      Some("getJson") => "getJson",
      _ => "getOr",
    };
    let step = self.mount(&mount).and_then(|mount| {
      mount.check_readable("get", Some(&key))?;
      Ok(ops::get(mount, &key, |json| Ok(Output::Text(json))))
    });
    self.run_within(env, what, step, timeout)
  }

  /// Stores `json` after the checks of the contract's `set`. `phase` (`ops::Phase`):
  /// absent, the whole write, or while the mount's count is stale `[the update of a
  /// stored key]` (`false` when missing); `1`, the write of a new key, or `null` while
  /// the count is stale; `2`, the write with room from the count just made (`count`).
  // (the JS arguments, one by one: no object made per call)
  #[allow(clippy::too_many_arguments)]
  #[napi(ts_return_type = "Promise<boolean> | [Promise<boolean>] | null")]
  pub fn set<'env>(
    &self,
    env: &'env Env,
    mount: String,
    key: String,
    json: String,
    ttl: Option<f64>,
    phase: Option<u32>,
    timeout: Option<f64>,
  ) -> napi::Result<WriteCall<'env>> {
    let step = self.mount(&mount).and_then(|mount| {
      mount.check_write("set", &key, &json, false)?;
      let ttl_ms = Self::ttl(&mount, ttl)?;
      Ok(ops::set(
        mount,
        &key,
        json,
        ttl_ms,
        ops::Phase::from_js(phase, 1)?,
      ))
    });
    self.run_write(env, "set", step, timeout)
  }

  /// Counts the mount's entries and records the count (for the writes that wait on it);
  /// resolves with the count.
  #[napi(ts_return_type = "Promise<number>")]
  pub fn count<'env>(
    &self,
    env: &'env Env,
    mount: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let step = self.mount(&mount).map(ops::count);
    self.run(env, "count", step)
  }

  /// After a `count` that failed because a cluster node did not answer: keeps the last
  /// count (with this process's own additions) as a fresh one; `false` when the mount
  /// was never counted.
  #[napi]
  pub fn keep_count(&self, mount: String) -> napi::Result<bool, ErrorCode> {
    Ok(self.mount(&mount)?.keep_last_count())
  }

  /// Shallow-merges the object `json` into the stored object, atomically. `phase` as
  /// for `set`; the first part resolves with `null` when the key is missing.
  // (the JS arguments, one by one: no object made per call)
  #[allow(clippy::too_many_arguments)]
  #[napi(ts_return_type = "Promise<boolean> | [Promise<boolean | null>] | null")]
  pub fn merge<'env>(
    &self,
    env: &'env Env,
    mount: String,
    key: String,
    json: String,
    ttl: Option<f64>,
    phase: Option<u32>,
    timeout: Option<f64>,
  ) -> napi::Result<WriteCall<'env>> {
    let step = self.mount(&mount).and_then(|mount| {
      mount.check_writable("merge", Some(&key))?;
      let entry = mount.declared(&key)?;
      if JsonType::of(&json) != Some(JsonType::Dict) {
        return Err(StoreError::invalid_input(format!(
          "merge of key \"{key}\" (mount '{}') needs a plain object",
          mount.name
        )));
      }
      mount.check_type(entry, &key, &json)?;
      mount.check_size(&key, &json, true)?;
      let ttl_ms = match ttl {
        Some(_) => Self::ttl(&mount, ttl)?,
        None => mount.ttl_ms,
      };
      Ok(ops::merge(
        mount,
        key,
        json,
        ttl_ms,
        ops::Phase::from_js(phase, 1)?,
      ))
    });
    self.run_write(env, "merge", step, timeout)
  }

  /// Deletes the key; resolves with whether it was stored.
  #[napi(ts_return_type = "Promise<boolean>")]
  pub fn delete<'env>(
    &self,
    env: &'env Env,
    mount: String,
    key: String,
    timeout: Option<f64>,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let step = self.mount(&mount).and_then(|mount| {
      mount.check_writable("delete", Some(&key))?;
      let full_key = mount.full_key(&key);
      Ok(Step::then(
        // A second `UNLINK` after a first that landed would answer `false`.
        Batch::one(Command::Unlink {
          keys: vec![full_key],
        })
        .never_resend(),
        move |replies| {
          let existed = ops::first(replies) == Reply::Int(1);
          if existed {
            mount.adjust_count(-1);
          }
          Step::Done(Ok(Output::Bool(existed)))
        },
      ))
    });
    self.run_within(env, "delete", step, timeout)
  }

  /// Whether the key is stored.
  #[napi(ts_return_type = "Promise<boolean>")]
  pub fn has<'env>(
    &self,
    env: &'env Env,
    mount: String,
    key: String,
    timeout: Option<f64>,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let step = self.mount(&mount).and_then(|mount| {
      mount.check_readable("has", Some(&key))?;
      let command = Command::Exists {
        key: mount.full_key(&key),
      };
      Self::single(command, |reply| Output::Bool(reply == Reply::Int(1)))
    });
    self.run_within(env, "has", step, timeout)
  }

  /// The mount's stored keys matching the glob `pattern` (default `*`), sorted.
  #[napi(ts_return_type = "Promise<Array<string>>")]
  pub fn keys<'env>(
    &self,
    env: &'env Env,
    mount: String,
    pattern: Option<String>,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let step = self.mount(&mount).and_then(|mount| {
      mount.check_readable("list", None)?;
      Ok(ops::keys(mount, pattern.as_deref().unwrap_or("*")))
    });
    self.run(env, "keys", step)
  }

  /// Deletes the mount's entries, then writes the declared defaults.
  #[napi(ts_return_type = "Promise<boolean>")]
  pub fn clear<'env>(
    &self,
    env: &'env Env,
    mount: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let step = self.mount(&mount).and_then(|mount| {
      mount.check_writable("clear", None)?;
      Ok(ops::clear(mount))
    });
    self.run(env, "clear", step)
  }

  /// Every stored entry, as `[key, json, ...]`.
  #[napi(ts_return_type = "Promise<Array<string>>")]
  pub fn get_all<'env>(
    &self,
    env: &'env Env,
    mount: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    self.by_prefix(env, "getAll", mount, String::new())
  }

  /// The stored entries whose key starts with `prefix`, as `[key, json, ...]`.
  #[napi(ts_return_type = "Promise<Array<string>>")]
  pub fn get_by_prefix<'env>(
    &self,
    env: &'env Env,
    mount: String,
    prefix: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    self.by_prefix(env, "getByPrefix", mount, prefix)
  }

  /// The stored JSON of each of `keys`, in order, `null` where missing (one `MGET`).
  #[napi(ts_return_type = "Promise<Array<string | null>>")]
  pub fn get_many<'env>(
    &self,
    env: &'env Env,
    mount: String,
    keys: Vec<String>,
    timeout: Option<f64>,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let step = self.mount(&mount).and_then(|mount| {
      mount.check_readable("get", None)?;
      let full_keys = keys.iter().map(|key| mount.full_key(key)).collect();
      Ok(ops::values(full_keys))
    });
    self.run_within(env, "getMany", step, timeout)
  }

  /// Stores `[key, json, ...]` entries, all or nothing, after the checks of `set`.
  /// `phase` as for `set`; the first part resolves with how many keys are not stored,
  /// phases `1` and `2` reserve room for `newKeys`.
  // (the JS arguments, one by one: no object made per call)
  #[allow(clippy::too_many_arguments)]
  #[napi(ts_return_type = "Promise<boolean> | [Promise<number>] | null")]
  pub fn set_many<'env>(
    &self,
    env: &'env Env,
    mount: String,
    entries: Vec<String>,
    ttl: Option<f64>,
    phase: Option<u32>,
    new_keys: Option<u32>,
    timeout: Option<f64>,
  ) -> napi::Result<WriteCall<'env>> {
    let step = self.mount(&mount).and_then(|mount| {
      mount.check_writable("set", None)?;
      let mut pairs = Vec::with_capacity(entries.len() / 2);
      let mut items = entries.into_iter();
      while let (Some(key), Some(json)) = (items.next(), items.next()) {
        mount.check_write("set", &key, &json, false)?;
        pairs.push((key, json));
      }
      let ttl_ms = Self::ttl(&mount, ttl)?;
      let phase = ops::Phase::from_js(phase, u64::from(new_keys.unwrap_or(0)))?;
      Ok(ops::set_many(mount, pairs, ttl_ms, phase))
    });
    self.run_write(env, "setMany", step, timeout)
  }

  /// Deletes the keys; resolves with how many were stored.
  #[napi(ts_return_type = "Promise<number>")]
  pub fn delete_many<'env>(
    &self,
    env: &'env Env,
    mount: String,
    keys: Vec<String>,
    timeout: Option<f64>,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let step = self.mount(&mount).and_then(|mount| {
      mount.check_writable("delete", None)?;
      let full_keys = keys.iter().map(|key| mount.full_key(key)).collect();
      Ok(ops::delete_keys(mount, full_keys))
    });
    self.run_within(env, "deleteMany", step, timeout)
  }

  /// The mount's declared keys, as JSON text of `[{key, type, description}]`.
  #[napi]
  pub fn schema(&self, mount: String) -> napi::Result<String, ErrorCode> {
    Ok(self.mount(&mount)?.schema_info().to_string())
  }

  /// Every mount's settings, as JSON text.
  #[napi]
  pub fn mounts(&self) -> String {
    serde_json::Value::Array(self.mounts.iter().map(|m| m.info()).collect()).to_string()
  }

  /// Releases the connection or database. Idempotent. Resolves once a SQLite database
  /// is closed and checkpointed (the file can then be copied or deleted).
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

  /// `commandTimeout`, in ms (the JS layer counts a call's wait behind others on its
  /// keys against it).
  #[napi(getter)]
  pub fn command_timeout(&self) -> f64 {
    self.command_timeout.as_millis() as f64
  }

  /// Whether `close()` was called.
  #[napi(getter)]
  pub fn closed(&self) -> bool {
    self.closed.load(Ordering::Acquire)
  }
}

impl NativeKvStore {
  fn by_prefix<'env>(
    &self,
    env: &'env Env,
    what: &'static str,
    mount: String,
    prefix: String,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let step = self.mount(&mount).and_then(|mount| {
      mount.check_readable("list", None)?;
      Ok(ops::entries_by_prefix(mount, &prefix))
    });
    self.run(env, what, step)
  }
}
