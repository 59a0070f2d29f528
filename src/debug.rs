//! Hooks for durastate's own tests of panic handling. Not part of the public API
//! (`index.js` does not export them).

use napi::bindgen_prelude::PromiseRaw;
use napi::Env;
use napi_derive::napi;

use crate::output::Output;

/// Panics inside a synchronous call; JS must see a thrown error, not an abort.
#[napi(catch_unwind)]
pub fn debug_panic_sync() {
  panic!("deliberate panic (sync) for durastate's tests");
}

/// Panics inside an async call; JS must see a promise rejected with `err.code`
/// `INTERNAL`, not an abort.
#[napi(ts_return_type = "Promise<void>")]
pub fn debug_panic_async<'env>(env: &'env Env) -> napi::Result<PromiseRaw<'env, Output>> {
  crate::js_promise::spawn(env, "debugPanicAsync", async {
    if std::hint::black_box(true) {
      panic!("deliberate panic (async) for durastate's tests");
    }
    Ok(Output::Undefined)
  })
}

/// A panic a test asks for, once, at a place of durastate's code (`point`).
struct PanicOnce(std::sync::atomic::AtomicBool);

impl PanicOnce {
  const fn new() -> Self {
    Self(std::sync::atomic::AtomicBool::new(false))
  }

  fn arm(&self) {
    self.0.store(true, std::sync::atomic::Ordering::Release);
  }

  /// Panics if armed (and disarms): `at` names the place in the message.
  fn point(&self, at: &str) {
    if self.0.load(std::sync::atomic::Ordering::Relaxed)
      && self.0.swap(false, std::sync::atomic::Ordering::AcqRel)
    {
      panic!("deliberate panic ({at}) for durastate's tests");
    }
  }
}

/// Set by `debugPanicRedisTask`: the next turn of a Redis store's task (threads driver) panics.
static REDIS_TASK_PANIC: PanicOnce = PanicOnce::new();

/// Makes the next turn of the task of a Redis store on tokio threads panic, once: its
/// calls must reject with `INTERNAL` and later calls must not hang.
#[napi]
pub fn debug_panic_redis_task() {
  REDIS_TASK_PANIC.arm();
}

/// Where the Redis task panics when `debugPanicRedisTask` asked it to.
pub fn redis_task_panic_point() {
  REDIS_TASK_PANIC.point("Redis task");
}

/// `[groups, calls, queued]`: the groups and calls the embedded stores ran on the JS
/// thread so far (calls made in the same tick share one group, one transaction), and
/// the calls they sent to a store's thread instead.
#[napi]
pub fn debug_embedded_groups() -> Vec<i64> {
  crate::embedded_call::group_counts()
    .map(|count| count as i64)
    .to_vec()
}

/// How many times KV mounts were counted (a `SCAN` of the mount) in this process so far.
#[napi]
pub fn debug_kv_counts() -> i64 {
  crate::kv::count_runs() as i64
}

/// Set by `debugPanicSqliteThread`: the next group a SQLite store's thread runs panics.
static SQLITE_THREAD_PANIC: PanicOnce = PanicOnce::new();

/// Makes the next group of calls that a SQLite store's thread runs panic, once: its
/// calls must reject with `INTERNAL` and `close()` must still resolve.
#[napi]
pub fn debug_panic_sqlite_thread() {
  SQLITE_THREAD_PANIC.arm();
}

/// Where a SQLite store's thread panics when `debugPanicSqliteThread` asked it to.
pub fn sqlite_thread_panic_point() {
  SQLITE_THREAD_PANIC.point("SQLite thread");
}
