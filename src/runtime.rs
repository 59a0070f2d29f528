//! The JS runtime the addon runs in, found once when the addon loads, and what follows for
//! the Redis driver. The event-loop driver (`backend::redis_loop`) polls its socket with
//! libuv on the JS thread's loop, which only Node.js really has: Bun implements Node-API
//! but stubs libuv (a call aborts the process), and Deno's `uv_poll` stops after its first
//! callback. So that driver runs only where the runtime is Node.js and every libuv function
//! it needs is exported by the process; everywhere else Redis runs on tokio threads, and no
//! libuv function is ever called.

use std::sync::atomic::{AtomicU8, Ordering};

use napi::bindgen_prelude::{JsObjectValue, Object, Unknown};
use napi::{Env, ValueType};
use napi_derive::napi;

/// A JS runtime that loads Node-API addons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
  Node,
  Bun,
  Deno,
  /// Not identified (not yet loaded, or a runtime with none of the marks below).
  Unknown,
}

impl Runtime {
  pub fn name(self) -> &'static str {
    match self {
      Runtime::Node => "Node.js",
      Runtime::Bun => "Bun",
      Runtime::Deno => "Deno",
      Runtime::Unknown => "this JavaScript runtime",
    }
  }

  fn code(self) -> u8 {
    match self {
      Runtime::Unknown => 0,
      Runtime::Node => 1,
      Runtime::Bun => 2,
      Runtime::Deno => 3,
    }
  }

  fn from_code(code: u8) -> Self {
    match code {
      1 => Runtime::Node,
      2 => Runtime::Bun,
      3 => Runtime::Deno,
      _ => Runtime::Unknown,
    }
  }
}

static RUNTIME: AtomicU8 = AtomicU8::new(0);

/// The runtime found at load (`Unknown` before, e.g. in Rust unit tests).
pub fn current() -> Runtime {
  Runtime::from_code(RUNTIME.load(Ordering::Relaxed))
}

/// Runs when the addon is loaded (once per env: main thread and each worker thread).
#[napi(module_exports)]
pub fn init(_exports: Object, env: Env) -> napi::Result<()> {
  // Every env of a process is the same runtime; a failed look-up leaves `Unknown`, which
  // is the safe answer (tokio threads, no libuv).
  if let Ok(runtime) = detect(&env) {
    RUNTIME.store(runtime.code(), Ordering::Relaxed);
  }
  Ok(())
}

/// Bun and Deno are named by their globals (`Bun`, `Deno`) or by `process.versions.bun`
/// / `process.versions.deno`, which both set; Node.js by `process.versions.node` without
/// either. Bun and Deno also set `process.versions.node`, for compatibility, so the order
/// of the checks matters.
fn detect(env: &Env) -> napi::Result<Runtime> {
  let global = env.get_global()?;
  if is_defined(&global, "Bun")? {
    return Ok(Runtime::Bun);
  }
  if is_defined(&global, "Deno")? {
    return Ok(Runtime::Deno);
  }
  let process: Unknown = global.get_named_property_unchecked("process")?;
  if process.get_type()? != ValueType::Object {
    return Ok(Runtime::Unknown);
  }
  // SAFETY: checked to be an object just above.
  let process: Object = unsafe { process.cast()? };
  let versions: Unknown = process.get_named_property_unchecked("versions")?;
  if versions.get_type()? != ValueType::Object {
    return Ok(Runtime::Unknown);
  }
  let versions: Object = unsafe { versions.cast()? };
  if is_defined(&versions, "bun")? {
    return Ok(Runtime::Bun);
  }
  if is_defined(&versions, "deno")? {
    return Ok(Runtime::Deno);
  }
  if is_defined(&versions, "node")? {
    return Ok(Runtime::Node);
  }
  Ok(Runtime::Unknown)
}

fn is_defined<'env>(object: &impl JsObjectValue<'env>, name: &str) -> napi::Result<bool> {
  let value: Unknown = object.get_named_property_unchecked(name)?;
  Ok(!matches!(
    value.get_type()?,
    ValueType::Undefined | ValueType::Null
  ))
}

/// Why Redis cannot run on the JS thread's event loop here, or `None` when it can.
pub fn event_loop_unavailable() -> Option<String> {
  if !cfg!(unix) {
    return Some("on this platform".to_string());
  }
  let runtime = current();
  if runtime != Runtime::Node {
    return Some(format!("on {}", runtime.name()));
  }
  #[cfg(unix)]
  if !crate::uv::available() {
    return Some("in this process: it exports no libuv".to_string());
  }
  None
}

/// What the addon found at load, for durastate's own tests. Not part of the public API.
#[napi(object)]
pub struct RuntimeInfo {
  /// `Node.js`, `Bun`, `Deno` or `unknown`.
  pub runtime: String,
  /// Whether a Redis store on TCP can run on the JS thread's event loop.
  pub event_loop_driver: bool,
  /// The driver a Redis store on TCP gets here: `event-loop`, `socket` (the JS runtime's
  /// socket) or `threads` (tokio).
  pub redis_driver: String,
}

/// The runtime the addon found at load and whether Redis runs on its event loop, for
/// durastate's own tests. Not part of the public API (`index.js` does not export it).
#[napi]
pub fn debug_runtime() -> RuntimeInfo {
  let runtime = current();
  RuntimeInfo {
    runtime: match runtime {
      Runtime::Unknown => "unknown".to_string(),
      known => known.name().to_string(),
    },
    event_loop_driver: event_loop_unavailable().is_none(),
    redis_driver: crate::factory::tcp_redis_driver().name().to_string(),
  }
}

/// The tokio runtime that the I/O of Redis on threads (the Cluster's nodes too) and of
/// Postgres runs on, with the tasks of their calls: one thread
/// of its own (`durastate-io`), started on first use; `None` where no thread can be
/// started (then napi's runtime runs it). On a multi-threaded runtime, a reply that wakes
/// one worker often wakes a second one to look for work, and the tasks of one call (the
/// call, a Postgres lane, tokio-postgres's connection) wake each other across workers: a
/// call at 1 in flight pays those wake-ups on every round trip. On one thread they are
/// not wake-ups, and one thread is enough for the I/O of a process's stores (the JS
/// thread's work is the limit under load). The thread holds nothing of the JS event loop:
/// an idle process exits.
pub fn io() -> Option<&'static tokio::runtime::Handle> {
  static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Handle>> = std::sync::OnceLock::new();
  RUNTIME
    .get_or_init(|| {
      let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
      let handle = runtime.handle().clone();
      std::thread::Builder::new()
        .name("durastate-io".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .ok()?;
      Some(handle)
    })
    .as_ref()
}

/// Runs `task` on the [`io`] thread (else on napi's runtime).
pub fn spawn_io<F>(task: F)
where
  F: std::future::Future<Output = ()> + Send + 'static,
{
  match io() {
    Some(runtime) => drop(runtime.spawn(task)),
    None => drop(napi::bindgen_prelude::spawn(task)),
  }
}

/// Gives this JS thread the transport of the Redis JS socket driver (`transport.js`'s
/// `createTransport`, see `backend/redis_js.rs`); `index.js` calls it once per thread, at
/// load. Not part of the public API.
#[napi]
pub fn set_redis_transport(
  env: napi::Env,
  factory: napi::bindgen_prelude::Function<'_, Unknown<'_>, ()>,
) -> napi::Result<()> {
  use napi::JsValue;
  crate::backend::set_redis_js_factory(env.raw(), factory.raw())
}
