//! Where a store's batches run, and how a call (one batch, or a chain of them) becomes
//! a settled promise. Every store (WorkerStore, KV store, inspector) calls through here.

use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::PromiseRaw;
use napi::Env;

#[cfg(unix)]
use crate::backend::LoopRedis;
use crate::backend::{answer, ClusterBackend, EmbeddedBackend, RedisBackend};
use crate::command::{Batch, Finish, Reply, Step};
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::guard::bounded;
use crate::js_promise::{self, Deferred};
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
  /// SQLite or memory: on the JS thread when that cannot block, else the store's thread.
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
        let call = EmbeddedCall {
          embedded: embedded.clone(),
          what,
          limit,
          deferred,
        };
        call.run(env, Step::Then(batch, finish));
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

/// A call on the embedded backend: each batch runs on the JS thread when it can, else
/// on the store's thread, queued at once so calls keep the order they were made in.
struct EmbeddedCall {
  embedded: Arc<EmbeddedBackend>,
  what: &'static str,
  limit: Duration,
  deferred: Deferred,
}

impl EmbeddedCall {
  fn run(self, env: &Env, mut step: Step) {
    loop {
      match step {
        Step::Done(result) => return js_promise::settle(env.raw(), self.deferred, result),
        Step::Then(batch, finish) => match self.embedded.try_execute_now(&batch) {
          Some(Ok(replies)) => step = finish(replies),
          Some(Err(err)) => return js_promise::settle(env.raw(), self.deferred, Err(err)),
          None => return self.queue_to_thread(env, batch, finish),
        },
      }
    }
  }

  /// Queues a batch to the store's thread and continues when it answers, within `limit`.
  fn queue_to_thread(self, env: &Env, batch: Batch, finish: Finish) {
    let receiver = match self.embedded.enqueue(batch) {
      Ok(receiver) => receiver,
      Err(err) => return js_promise::settle(env.raw(), self.deferred, Err(err)),
    };
    let (what, limit) = (self.what, self.limit);
    let deferred = self.deferred;
    let embedded = self.embedded.clone();
    let spawned = env.spawn_future_with_callback(
      async move { Ok(bounded(what, limit, answer(receiver)).await) },
      move |env, result: StoreResult<_>| {
        let call = EmbeddedCall {
          embedded,
          what,
          limit,
          deferred,
        };
        match result {
          Ok(replies) => call.run(env, finish(replies)),
          Err(err) => js_promise::settle(env.raw(), call.deferred, Err(err)),
        }
        Ok(())
      },
    );
    if let Err(err) = spawned {
      let error = StoreError::new(ErrorCode::Internal, err.reason.clone());
      js_promise::settle(env.raw(), deferred, Err(error));
    }
  }
}
