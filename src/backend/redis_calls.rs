//! The calls of the two Redis drivers that run on the JS thread (the event-loop driver,
//! `redis_loop.rs`, and the socket driver, `redis_js.rs`): each call's promise, and what
//! becomes of it when its replies come, its time is up or its connection fails. The
//! drivers differ in how bytes move; what a call's outcome does to its promise is here,
//! once, on top of the connection core (`redis_core.rs`).

use std::time::{Duration, Instant};

use napi::sys;

use super::redis_core::Core;
use crate::command::{Batch, Finish, Step};
use crate::error::{StoreError, StoreResult};
use crate::js_promise::{self, Deferred};
use crate::output::Output;

/// What settles a call, and what it does with its replies.
pub struct Waiter {
  pub what: &'static str,
  pub deferred: Deferred,
  pub finish: Finish,
}

/// A promise to settle, and with what.
pub type Settlement = (Deferred, StoreResult<Output>);

/// Creates the promise of a call and hands its resolver to `enqueue`, which keeps it
/// (in a [`Waiter`]) unless it fails: then the promise is rejected at once with its error
/// (a closed store, a driver that cannot start).
pub fn promise(
  env: sys::napi_env,
  enqueue: impl FnOnce(Deferred) -> StoreResult<()>,
) -> napi::Result<sys::napi_value> {
  let (deferred, promise) = js_promise::create(env)?;
  if let Err(err) = enqueue(deferred) {
    js_promise::settle(env, deferred, Err(err));
  }
  Ok(promise)
}

impl Core<Waiter> {
  /// Queues a call made on the JS thread, due `timeout` from now.
  pub fn push_call(&mut self, waiter: Waiter, batch: Batch, timeout: Duration) {
    self.push(waiter, batch, Instant::now() + timeout);
  }

  /// Matches the replies received so far: calls whose replies are all in are settled
  /// (appended to `settled`) or, when they continue, their next batch is queued, due
  /// `timeout` from now. An error means the connection is unusable (`Core::take_replies`);
  /// `settled` keeps the calls completed before it.
  pub fn settle_replies(
    &mut self,
    timeout: Duration,
    settled: &mut Vec<Settlement>,
  ) -> StoreResult<()> {
    let mut done = Vec::new();
    let read = self.take_replies(&mut done);
    for (waiter, replies) in done {
      let Waiter {
        what,
        deferred,
        finish,
      } = waiter;
      let step = match replies {
        Ok(replies) => finish(replies),
        Err(err) => Step::Done(Err(err)),
      };
      match step {
        Step::Done(result) => settled.push((deferred, result)),
        Step::Then(batch, finish) => {
          let waiter = Waiter {
            what,
            deferred,
            finish,
          };
          self.push_call(waiter, batch, timeout);
        }
      }
    }
    read
  }

  /// Rejects `TIMEOUT` the calls whose time is up (`timeout_ms`, as configured). Their
  /// replies, if they come, are skipped.
  pub fn expire_calls(&mut self, now: Instant, timeout_ms: u64) -> Vec<Settlement> {
    self
      .expire(now)
      .into_iter()
      .map(|waiter| {
        let err = StoreError::timeout(waiter.what, timeout_ms);
        (waiter.deferred, Err(err))
      })
      .collect()
  }

  /// The connection dropped with `err`: calls with retries left are kept for a new
  /// connection (a batch declared `Resend::Never` has none: its first attempt may have
  /// landed); the others are rejected with `err` (`Core::on_drop`).
  pub fn drop_calls(&mut self, err: &StoreError) -> Vec<Settlement> {
    let rejected = self.on_drop(err);
    rejected_with(rejected, err)
  }

  /// A connect attempt failed with `err`: the calls rejected, and the backoff before
  /// the next attempt when calls still wait (`Core::on_connect_failed`).
  pub fn connect_failed(&mut self, err: &StoreError) -> (Vec<Settlement>, Option<Duration>) {
    let (rejected, backoff) = self.on_connect_failed(err, super::retry::jitter());
    (rejected_with(rejected, err), backoff)
  }
}

/// Rejects each of `waiters` with `err`.
fn rejected_with(waiters: Vec<Waiter>, err: &StoreError) -> Vec<Settlement> {
  waiters
    .into_iter()
    .map(|waiter| (waiter.deferred, Err(err.clone())))
    .collect()
}

/// Settles `settled`, in order, on the JS thread.
pub fn settle_now(env: sys::napi_env, settled: Vec<Settlement>) {
  for (deferred, result) in settled {
    js_promise::settle(env, deferred, result);
  }
}
