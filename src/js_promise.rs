//! Promises settled from Rust on the JS thread, without a thread hop: created in a
//! napi call, settled later from a libuv callback inside a handle scope and a
//! callback scope (so Node runs the promise reactions and `process.nextTick`s after).

use std::ffi::CString;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::ptr;

use futures_util::FutureExt;
use napi::bindgen_prelude::{PromiseRaw, ToNapiValue};
use napi::{sys, Env};

use crate::error::{ErrorCode, StoreResult};
use crate::guard::panic_error;
use crate::output::Output;

/// A promise's resolver. Only touched on the JS thread of its `env`.
pub type Deferred = sys::napi_deferred;

/// Creates a pending promise; returns its resolver and the promise.
pub fn create(env: sys::napi_env) -> napi::Result<(Deferred, sys::napi_value)> {
  let mut deferred = ptr::null_mut();
  let mut promise = ptr::null_mut();
  check(unsafe { sys::napi_create_promise(env, &mut deferred, &mut promise) })?;
  Ok((deferred, promise))
}

/// Resolves or rejects; must run in a handle scope on the JS thread. Rejections are
/// `Error`s with the stable code as `err.code` and the plain message as `err.message`.
pub fn settle(env: sys::napi_env, deferred: Deferred, result: StoreResult<Output>) {
  unsafe {
    let status = match result {
      Ok(output) => match Output::to_napi_value(env, output) {
        Ok(value) => sys::napi_resolve_deferred(env, deferred, value),
        Err(err) => reject(env, deferred, ErrorCode::Internal, &err.reason),
      },
      Err(err) => reject(env, deferred, err.code, &err.message),
    };
    debug_assert_eq!(status, sys::Status::napi_ok);
  }
}

unsafe fn reject(
  env: sys::napi_env,
  deferred: Deferred,
  code: ErrorCode,
  message: &str,
) -> sys::napi_status {
  let code_value = string(env, code.as_str());
  let text = string(env, message);
  let mut error = ptr::null_mut();
  sys::napi_create_error(env, code_value, text, &mut error);
  sys::napi_reject_deferred(env, deferred, error)
}

unsafe fn string(env: sys::napi_env, text: &str) -> sys::napi_value {
  let mut value = ptr::null_mut();
  sys::napi_create_string_utf8(env, text.as_ptr().cast(), text.len() as isize, &mut value);
  value
}

/// Runs `work` on tokio and settles a promise with its result on the JS thread, so a
/// rejection carries its code (napi-rs's own `spawn_future` can only reject with a
/// napi `Status` as `err.code`). A panic in `work` rejects with `INTERNAL`.
pub fn spawn<'env>(
  env: &'env Env,
  what: &'static str,
  work: impl Future<Output = StoreResult<Output>> + Send + 'static,
) -> napi::Result<PromiseRaw<'env, Output>> {
  let (deferred, promise) = create(env.raw())?;
  let work = AssertUnwindSafe(work).catch_unwind();
  let spawned =
    env.spawn_future_with_callback(async move { Ok(work.await) }, move |env, outcome| {
      let result = outcome.unwrap_or_else(|panic| Err(panic_error(what, panic)));
      settle(env.raw(), deferred, result);
      Ok(())
    });
  if let Err(err) = spawned {
    settle(env.raw(), deferred, Err(err.into()));
  }
  Ok(PromiseRaw::new(env.raw(), promise))
}

/// The async context promise settlements run under (one per store).
pub struct AsyncContext(sys::napi_async_context);

impl AsyncContext {
  /// Creates the context; call inside a napi call.
  pub fn new(env: sys::napi_env, name: &str) -> napi::Result<Self> {
    let name = CString::new(name).unwrap_or_default();
    let mut text = ptr::null_mut();
    check(unsafe { sys::napi_create_string_utf8(env, name.as_ptr(), -1, &mut text) })?;
    let mut context = ptr::null_mut();
    check(unsafe { sys::napi_async_init(env, ptr::null_mut(), text, &mut context) })?;
    Ok(Self(context))
  }

  /// Releases the context.
  pub fn destroy(self, env: sys::napi_env) {
    unsafe { sys::napi_async_destroy(env, self.0) };
  }

  /// The raw context, for [`run_in_callback_scope`].
  pub fn raw(&self) -> sys::napi_async_context {
    self.0
  }
}

/// Runs `work` in a handle scope, from a libuv callback.
pub fn run_in_handle_scope(env: sys::napi_env, work: impl FnOnce()) {
  unsafe {
    let mut handles = ptr::null_mut();
    sys::napi_open_handle_scope(env, &mut handles);
    work();
    sys::napi_close_handle_scope(env, handles);
  }
}

/// Runs `work` in a handle scope and a callback scope, from a libuv callback.
/// Closing the callback scope runs the microtasks `work` queued.
pub fn run_in_callback_scope(
  env: sys::napi_env,
  context: sys::napi_async_context,
  work: impl FnOnce(),
) {
  {
    unsafe {
      let mut handles = ptr::null_mut();
      sys::napi_open_handle_scope(env, &mut handles);
      let mut resource = ptr::null_mut();
      sys::napi_create_object(env, &mut resource);
      let mut scope = ptr::null_mut();
      let opened = sys::napi_open_callback_scope(env, resource, context, &mut scope);
      work();
      if opened == sys::Status::napi_ok {
        sys::napi_close_callback_scope(env, scope);
      }
      sys::napi_close_handle_scope(env, handles);
    }
  }
}

/// A napi status as a `Result`.
pub fn check(status: sys::napi_status) -> napi::Result<()> {
  if status == sys::Status::napi_ok {
    Ok(())
  } else {
    Err(napi::Error::new(
      napi::Status::GenericFailure,
      format!("napi call failed with status {status}"),
    ))
  }
}
