//! Where a store's batches run, and how a call (one batch, or a chain of them) becomes
//! a settled promise. Every store (WorkerStore, KV store, inspector) calls through here.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::ptr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use napi::bindgen_prelude::PromiseRaw;
use napi::{sys, Env};

use crate::backend::JsRedis;
#[cfg(unix)]
use crate::backend::LoopRedis;
use crate::backend::{redis_ops, ClusterBackend, EmbeddedBackend, RedisBackend};
use crate::command::{Batch, Finish, Reply, Step};
use crate::completions;
use crate::embedded_call;
use crate::error::{StoreError, StoreResult};
use crate::events::{ConnectionEvents, ServerInfo};
use crate::guard::{bounded, Calls, Held, Shut};
use crate::js_promise;
use crate::output::Output;

/// A backend whose batches run as futures on tokio: Redis on threads, Redis Cluster,
/// and a backend added later (Postgres). Implementing this trait, plus one line in
/// `factory.rs` that makes it from a URL, is all a new backend needs to run every store.
pub trait AsyncBackend: Send + Sync + 'static {
  /// Whether batches are lowered to Redis commands first (`redis_ops`); a backend that
  /// runs the store operations itself answers `false`.
  fn speaks_redis(&self) -> bool;
  /// Runs one batch in one round trip or transaction; `what` names the call in errors.
  fn execute(&self, what: &'static str, batch: Batch) -> BoxFuture<'_, StoreResult<Vec<Reply>>>;
  /// Queues a call's first batch now, on the JS thread, so that calls run in the order
  /// they were made (a task spawned per call may start in any order); the future answers
  /// it. The default gives the batch back: it runs through `execute` on the call's task.
  fn execute_now(
    self: Arc<Self>,
    _what: &'static str,
    batch: Batch,
  ) -> Result<BoxFuture<'static, StoreResult<Vec<Reply>>>, Batch> {
    Err(batch)
  }
  /// Releases connections; calls in flight finish.
  fn close(&self);
  /// Resolves, once `close` was called and every call settled, when nothing the backend
  /// ran for them is left on the server (Postgres: a group that outlived its call's
  /// `commandTimeout` ended or was cancelled). The default: at once.
  fn quiet(&self) -> BoxFuture<'static, ()> {
    Box::pin(std::future::ready(()))
  }
  /// Whether the keys of one atomic batch must share one slot (a Redis Cluster), so a
  /// WorkerStore needs the hash-tag key layout there.
  fn needs_one_slot(&self) -> bool {
    false
  }
  /// Its connection events and where its server is (`events.rs`); `None` where it has none.
  fn events(&self) -> Option<Arc<ConnectionEvents>> {
    None
  }
  /// Which backend it is and where its server is, for traces, when it reports no
  /// connection events (which carry that); `None`: index.js names it by its URL.
  fn server_info(&self) -> Option<ServerInfo> {
    None
  }
  /// Runs a whole call its own way (all its batches) and settles `call.completion`; a
  /// backend that has no such way gives the call back (the default), and the engine runs
  /// each batch through [`AsyncBackend::execute`] on a task of its own.
  fn start(&self, call: TokioCall) -> Result<(), TokioCall> {
    Err(call)
  }
  /// Whether the tasks of its calls run on the one I/O thread (`runtime::io`), where its
  /// connections run, rather than on napi's multi-threaded runtime.
  fn on_io_thread(&self) -> bool {
    false
  }
}

/// A call handed to a backend on tokio: its first batch, its continuation, and what
/// settles its promise.
pub struct TokioCall {
  pub what: &'static str,
  pub limit: Duration,
  pub batch: Batch,
  pub finish: Finish,
  pub completion: completions::Completion,
}

impl AsyncBackend for RedisBackend {
  fn speaks_redis(&self) -> bool {
    true
  }

  fn execute(&self, what: &'static str, batch: Batch) -> BoxFuture<'_, StoreResult<Vec<Reply>>> {
    Box::pin(RedisBackend::execute(self, what, batch))
  }

  fn close(&self) {
    RedisBackend::close(self)
  }

  fn events(&self) -> Option<Arc<ConnectionEvents>> {
    Some(self.events.clone())
  }

  fn start(&self, call: TokioCall) -> Result<(), TokioCall> {
    RedisBackend::start(self, call);
    Ok(())
  }
}

impl AsyncBackend for ClusterBackend {
  fn speaks_redis(&self) -> bool {
    true
  }

  fn execute(&self, what: &'static str, batch: Batch) -> BoxFuture<'_, StoreResult<Vec<Reply>>> {
    self.submit(what, batch)
  }

  /// Queued on the nodes now, so calls on one slot reach it in the order they were made.
  fn execute_now(
    self: Arc<Self>,
    what: &'static str,
    batch: Batch,
  ) -> Result<BoxFuture<'static, StoreResult<Vec<Reply>>>, Batch> {
    Ok(self.submit(what, batch))
  }

  fn close(&self) {
    ClusterBackend::close(self)
  }

  fn needs_one_slot(&self) -> bool {
    true
  }

  fn on_io_thread(&self) -> bool {
    true
  }

  fn events(&self) -> Option<Arc<ConnectionEvents>> {
    Some(self.events.clone())
  }
}

/// Where a store's batches run: the execution model. Storage and topology live in the
/// backends behind it.
pub enum Engine {
  /// Redis, driven by the JS thread's event loop.
  #[cfg(unix)]
  EventLoop(LoopRedis),
  /// Redis over a socket of the JS runtime (`node:net`): Bun, Deno, and Node.js where
  /// the event-loop driver cannot run (`redis_js.rs`).
  JsSocket(JsRedis),
  /// A backend on tokio threads ([`AsyncBackend`]): Redis (unix sockets, a runtime
  /// without `node:net`, or by choice), Redis Cluster and Postgres.
  Tokio(Open),
  /// SQLite or memory: calls of a tick grouped in one transaction, on the JS thread when
  /// that cannot block, else the store's thread (`embedded_call`).
  Embedded(Arc<EmbeddedBackend>),
}

/// A backend on tokio, with the calls the engine runs on it that have not settled
/// ([`Calls`]): the backend closes when the last call made before `close()` settles.
pub struct Open(Arc<OpenInner>);

/// A call of an [`Open`] backend, counted until it settles ([`Completion::keep`]).
///
/// [`Completion::keep`]: completions::Completion::keep
pub(crate) type CallHeld = Held<OpenInner>;

pub(crate) struct OpenInner {
  backend: Arc<dyn AsyncBackend>,
  calls: Calls,
}

impl Shut for OpenInner {
  fn calls(&self) -> &Calls {
    &self.calls
  }
  fn shut(&self) {
    self.backend.close();
  }
}

impl Open {
  fn backend(&self) -> &Arc<dyn AsyncBackend> {
    &self.0.backend
  }

  /// Counts a call until the guard is dropped (when it settles).
  fn hold(&self) -> CallHeld {
    Calls::hold(&self.0)
  }

  /// Closes the backend now if no call is left, else when the last one settles.
  fn close(&self) {
    Calls::close(&*self.0)
  }
}

thread_local! {
  /// The stores on tokio and the embedded stores made on this JS thread (the Redis drivers
  /// of the JS thread have hooks of their own), closed by [`close_made`].
  static MADE: RefCell<Vec<Weak<dyn Shut>>> = const { RefCell::new(Vec::new()) };
  /// The env [`close_made`] is registered with, once per JS thread.
  static HOOKED: Cell<sys::napi_env> = const { Cell::new(ptr::null_mut()) };
}

/// The env of a JS thread is going away (a worker thread ending, or the process): its
/// stores not closed are closed, as `close()` does. Node.js and Bun also finalize them
/// then, but Deno runs no finalizer when a worker ends, so a store left open in a worker
/// kept its connections, or its SQLite thread and file, for as long as the process ran.
unsafe extern "C" fn close_made(_: *mut c_void) {
  let _ = HOOKED.try_with(|hooked| hooked.set(ptr::null_mut()));
  let made = MADE
    .try_with(|made| {
      made
        .try_borrow_mut()
        .map(|mut made| std::mem::take(&mut *made))
    })
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default();
  for store in made.iter().filter_map(Weak::upgrade) {
    Calls::close(&*store);
  }
}

impl Engine {
  /// Has the store closed when the env it is made in goes away ([`close_made`]), unless
  /// it was closed or collected before. Call on the JS thread, once per engine.
  pub fn close_with(&self, env: &Env) {
    let store: Weak<dyn Shut> = match self {
      Engine::Tokio(open) => Arc::downgrade(&open.0) as Weak<dyn Shut>,
      Engine::Embedded(embedded) => Arc::downgrade(embedded) as Weak<dyn Shut>,
      _ => return,
    };
    MADE.with(|made| {
      let mut made = made.borrow_mut();
      made.retain(|store| store.strong_count() > 0);
      made.push(store);
    });
    let raw = env.raw();
    if HOOKED.with(Cell::get) != raw
      && unsafe { sys::napi_add_env_cleanup_hook(raw, Some(close_made), ptr::null_mut()) }
        == sys::Status::napi_ok
    {
      HOOKED.with(|hooked| hooked.set(raw));
    }
  }

  /// An engine for a backend on tokio.
  pub fn tokio(backend: Arc<dyn AsyncBackend>) -> Self {
    Engine::Tokio(Open(Arc::new(OpenInner {
      backend,
      calls: Calls::default(),
    })))
  }

  /// Whether a WorkerStore here needs the hash-tag key layout ([`AsyncBackend::needs_one_slot`]).
  pub fn needs_one_slot(&self) -> bool {
    matches!(self, Engine::Tokio(open) if open.backend().needs_one_slot())
  }

  /// Whether its batches go to Redis (any driver, a cluster included).
  pub fn speaks_redis(&self) -> bool {
    match self {
      Engine::Embedded(_) => false,
      Engine::Tokio(open) => open.backend().speaks_redis(),
      _ => true,
    }
  }

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
    let (batch, finish) = match self.speaks_redis() {
      false => (batch, finish),
      true => for_redis(batch, finish),
    };
    match self {
      #[cfg(unix)]
      Engine::EventLoop(driver) => {
        let promise = driver.submit(env, what, batch, finish)?;
        Ok(PromiseRaw::new(env.raw(), promise))
      }
      Engine::JsSocket(driver) => {
        let promise = driver.submit(env, what, batch, finish)?;
        Ok(PromiseRaw::new(env.raw(), promise))
      }
      Engine::Tokio(open) => {
        let backend = open.backend().clone();
        let (deferred, promise) = js_promise::create(env.raw())?;
        let mut completion = completions::begin(env, deferred)?;
        // Counted until it settles: `close()` closes the backend after its last batch,
        // and its promise resolves after the call's.
        completion.keep(open.hold());
        let call = TokioCall {
          what,
          limit,
          batch,
          finish,
          completion,
        };
        let Err(call) = backend.start(call) else {
          return Ok(PromiseRaw::new(env.raw(), promise));
        };
        let TokioCall {
          batch,
          finish,
          completion,
          ..
        } = call;
        let on_io_thread = backend.on_io_thread();
        let later = backend.clone();
        let execute = move |batch| {
          let backend = later.clone();
          async move { backend.execute(what, batch).await }
        };
        let steps = match backend.execute_now(what, batch) {
          Ok(first) => async move {
            let replies = bounded(what, limit, first).await?;
            run_steps(what, limit, finish(replies), execute).await
          }
          .boxed(),
          Err(batch) => run_steps(what, limit, Step::Then(batch, finish), execute).boxed(),
        };
        let task = async move {
          let result = match AssertUnwindSafe(steps).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => Err(crate::guard::panic_error(what, panic)),
          };
          completion.settle(result);
        };
        if on_io_thread {
          crate::runtime::spawn_io(task);
        } else {
          napi::bindgen_prelude::spawn(task);
        }
        Ok(PromiseRaw::new(env.raw(), promise))
      }
      Engine::Embedded(embedded) => {
        let (deferred, promise) = js_promise::create(env.raw())?;
        let waiter = embedded_call::Waiter {
          store: embedded.clone(),
          held: embedded.hold(),
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

  /// The connection events of a backend that has a server.
  pub fn events(&self) -> Option<Arc<ConnectionEvents>> {
    match self {
      #[cfg(unix)]
      Engine::EventLoop(driver) => Some(driver.events()),
      Engine::JsSocket(driver) => Some(driver.events()),
      Engine::Tokio(open) => open.backend().events(),
      Engine::Embedded(_) => None,
    }
  }

  /// Which backend this is and where its server is, for traces.
  pub fn server(&self) -> ServerInfo {
    match (self, self.events()) {
      (_, Some(events)) => events.server().clone(),
      (Engine::Embedded(embedded), None) => ServerInfo::new(embedded.kind()),
      (Engine::Tokio(open), None) => open
        .backend()
        .server_info()
        .unwrap_or_else(|| ServerInfo::new("")),
      // (index.js names a backend that says nothing by its URL)
      _ => ServerInfo::new(""),
    }
  }

  /// A promise already rejected with `err` (a closed store).
  pub fn rejected<'env>(env: &'env Env, err: StoreError) -> napi::Result<PromiseRaw<'env, Output>> {
    let (deferred, promise) = js_promise::create(env.raw())?;
    js_promise::settle(env.raw(), deferred, Err(err));
    Ok(PromiseRaw::new(env.raw(), promise))
  }

  /// Releases the connection or database; calls in flight finish (on an embedded
  /// store, the calls of this tick that have not run yet run first).
  pub fn close(&self, env: &Env) {
    if let Some(events) = self.events() {
      let _ = events.listen(None);
    }
    match self {
      #[cfg(unix)]
      Engine::EventLoop(driver) => driver.close(),
      Engine::JsSocket(driver) => driver.close(),
      Engine::Tokio(open) => open.close(),
      Engine::Embedded(embedded) => {
        embedded_call::run_pending(env, embedded);
        embedded.close()
      }
    }
  }

  /// A promise that resolves once [`close`](Self::close) has let every call made before
  /// it settle (after their promises) and released what it holds: the connection, or an
  /// embedded store's database, closed and checkpointed (so the file can be copied or
  /// deleted).
  pub fn closed<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, Output>> {
    let done: BoxFuture<'static, StoreResult<()>> = match self {
      Engine::Embedded(embedded) => Box::pin(embedded.closed()),
      #[cfg(unix)]
      Engine::EventLoop(driver) => Box::pin(driver.closed().map(Ok)),
      Engine::JsSocket(driver) => Box::pin(driver.closed().map(Ok)),
      Engine::Tokio(open) => {
        // Settled through the calls' own channel, after the last of them.
        let (deferred, promise) = js_promise::create(env.raw())?;
        let completion = completions::begin(env, deferred)?;
        let shut = open.0.calls.shut();
        let backend = open.backend().clone();
        napi::bindgen_prelude::spawn(async move {
          shut.await;
          // A call that timed out may still run on the server: nothing is left to land
          // when close() resolves.
          backend.quiet().await;
          completion.settle(Ok(Output::Undefined));
        });
        return Ok(PromiseRaw::new(env.raw(), promise));
      }
    };
    js_promise::spawn(env, "close", async move {
      done.await?;
      Ok(Output::Undefined)
    })
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
) -> StoreResult<Output>
where
  F: Fn(Batch) -> Fut,
  Fut: std::future::Future<Output = StoreResult<Vec<Reply>>>,
{
  loop {
    match step {
      Step::Done(result) => return result,
      Step::Then(batch, finish) => {
        let replies = bounded(what, limit, execute(batch)).await?;
        step = finish(replies);
      }
    }
  }
}
