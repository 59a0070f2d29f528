//! Where a store's batches run, and how a call (one batch, or a chain of them) becomes
//! a settled promise. Every store (WorkerStore, KV store, inspector) calls through here.

use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::PromiseRaw;
use napi::Env;

#[cfg(unix)]
use crate::backend::LoopRedis;
use crate::backend::{redis_ops, ClusterBackend, EmbeddedBackend, RedisBackend};
use crate::command::{Batch, Finish, Reply, Step};
use crate::embedded_call;
use crate::error::{StoreError, StoreResult};
use crate::guard::bounded;
use crate::js_promise;
use crate::output::Output;

/// Where a store's batches run.
pub enum Engine {
  /// Redis, driven by the JS thread's event loop.
  #[cfg(unix)]
  EventLoop(LoopRedis),
  /// Redis on tokio threads (unix sockets, non-Unix platforms, or by choice).
  Threads(Arc<RedisBackend>),
  /// Redis Cluster on tokio threads (redis-rs `cluster-async`).
  Cluster(Arc<ClusterBackend>),
  /// SQLite or memory: calls of a tick grouped in one transaction, on the JS thread when
  /// that cannot block, else the store's thread (`embedded_call`).
  Embedded(Arc<EmbeddedBackend>),
}

impl Engine {
  /// Runs `batch`, then `finish` with its replies (which may ask for another batch),
  /// and resolves with the call's output. Each batch is bounded by `limit`.
  pub fn call<'env>(
    &self,
    env: &'env Env,
    what: &'static str,
    batch: Batch,
    finish: Finish,
    limit: Duration,
  ) -> napi::Result<PromiseRaw<'env, Output>> {
    let (batch, finish) = match self {
      Engine::Embedded(_) => (batch, finish),
      _ => for_redis(batch, finish),
    };
    match self {
      #[cfg(unix)]
      Engine::EventLoop(driver) => {
        let promise = driver.submit(env, what, batch, finish)?;
        Ok(PromiseRaw::new(env.raw(), promise))
      }
      Engine::Threads(redis) => {
        let redis = redis.clone();
        let step = Step::Then(batch, finish);
        env.spawn_future(run_steps(what, limit, step, move |batch| {
          let redis = redis.clone();
          async move { redis.execute(&batch).await }
        }))
      }
      Engine::Cluster(cluster) => {
        let cluster = cluster.clone();
        let step = Step::Then(batch, finish);
        env.spawn_future(run_steps(what, limit, step, move |batch| {
          let cluster = cluster.clone();
          async move { cluster.execute(what, &batch).await }
        }))
      }
      Engine::Embedded(embedded) => {
        let (deferred, promise) = js_promise::create(env.raw())?;
        let waiter = embedded_call::Waiter {
          store: embedded.clone(),
          what,
          limit,
          deferred,
          finish,
        };
        let call = embedded_call::Call { batch, waiter };
        embedded_call::submit(env, call);
        Ok(PromiseRaw::new(env.raw(), promise))
      }
    }
  }

  /// A promise already rejected with `err` (a closed store).
  pub fn rejected<'env>(env: &'env Env, err: StoreError) -> napi::Result<PromiseRaw<'env, Output>> {
    let (deferred, promise) = js_promise::create(env.raw())?;
    js_promise::settle(env.raw(), deferred, Err(err));
    Ok(PromiseRaw::new(env.raw(), promise))
  }

  /// Releases the connection or database; calls in flight finish.
  pub fn close(&self) {
    match self {
      #[cfg(unix)]
      Engine::EventLoop(driver) => driver.close(),
      Engine::Threads(redis) => redis.close(),
      Engine::Cluster(cluster) => cluster.close(),
      Engine::Embedded(embedded) => embedded.close(),
    }
  }
}

/// A call's first batch and continuation in Redis commands (`redis_ops`).
fn for_redis(batch: Batch, finish: Finish) -> (Batch, Finish) {
  match redis_ops::lower_step(Step::Then(batch, finish)) {
    Step::Then(batch, finish) => (batch, finish),
    Step::Done(_) => unreachable!("lowering keeps a batch a batch"),
  }
}

/// Runs a call's steps on tokio: each batch through `execute`, bounded by `limit`.
async fn run_steps<F, Fut>(
  what: &'static str,
  limit: Duration,
  mut step: Step,
  execute: F,
) -> napi::Result<Output>
where
  F: Fn(Batch) -> Fut,
  Fut: std::future::Future<Output = StoreResult<Vec<Reply>>>,
{
  loop {
    match step {
      Step::Done(result) => return Ok(result?),
      Step::Then(batch, finish) => {
        let replies = bounded(what, limit, execute(batch)).await?;
        step = finish(replies);
      }
    }
  }
}
