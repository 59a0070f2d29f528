//! Calls that run on tokio (Redis on threads, Redis Cluster, a backend added later)
//! settle their promises in batches: a finished call joins one queue, and only the call
//! that finds the queue empty wakes the JS thread. That one wake-up settles every call
//! finished by then (`../shared/docs/performance-notes.md`: amortised completions).
//!
//! One threadsafe function per JS thread carries the wake-ups. It keeps the process
//! alive only while calls are in flight, as a pending promise of any I/O should.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::ptr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use napi::{sys, Env};

use crate::error::StoreResult;
use crate::js_promise::{self, check, Deferred};
use crate::output::Output;

/// A finished call: its resolver and what it settles with.
struct Done(Deferred, StoreResult<Output>);

// SAFETY: the resolver is only used on the JS thread that created it, in `drain`; the
// tokio thread only moves it through the queue.
unsafe impl Send for Done {}

/// The finished calls not yet settled, shared with tokio threads; `None` once the JS
/// thread's env is gone (a worker thread ended), when the threadsafe function is freed.
struct Queue(Mutex<Option<Vec<Done>>>);

impl Queue {
  fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<Done>>> {
    self.0.lock().unwrap_or_else(|e| e.into_inner())
  }
}

/// This JS thread's wake-up channel.
struct Channel {
  env: sys::napi_env,
  tsfn: sys::napi_threadsafe_function,
  queue: Arc<Queue>,
  /// Calls in flight (submitted, not settled): the channel is ref'd while above zero.
  in_flight: Cell<usize>,
}

thread_local! {
  static CHANNEL: RefCell<Option<Rc<Channel>>> = const { RefCell::new(None) };
}

/// A handle to settle one call from any thread.
pub struct Completion {
  deferred: Deferred,
  queue: Arc<Queue>,
  tsfn: sys::napi_threadsafe_function,
  /// Dropped once the outcome is queued ([`Completion::keep`]).
  kept: Option<crate::engine::CallHeld>,
}

// SAFETY: see `Done`; the threadsafe function is made to be called from any thread.
unsafe impl Send for Completion {}

impl Completion {
  /// Queues the call's outcome; the first outcome into an empty queue wakes the JS thread.
  /// Keeps `guard` until the call's outcome is queued (its promise settles after it):
  /// the count of a store's unsettled calls (`guard::Held`), which `close()` waits on.
  pub(crate) fn keep(&mut self, guard: crate::engine::CallHeld) {
    self.kept = Some(guard);
  }

  pub fn settle(self, result: StoreResult<Output>) {
    {
      // The wake-up is sent under the lock: the env's cleanup takes it before the
      // threadsafe function is freed, so a call ending with its worker thread finds the
      // queue gone rather than a freed handle (the promise went with the env).
      let mut queue = self.queue.lock();
      if let Some(queue) = queue.as_mut() {
        queue.push(Done(self.deferred, result));
        if queue.len() == 1 {
          unsafe {
            sys::napi_call_threadsafe_function(
              self.tsfn,
              ptr::null_mut(),
              sys::ThreadsafeFunctionCallMode::nonblocking,
            );
          }
        }
      }
    }
    drop(self.kept);
  }
}

/// Registers a call about to run on tokio, whose promise `deferred` settles through
/// [`Completion::settle`]. Call on the JS thread.
pub fn begin(env: &Env, deferred: Deferred) -> napi::Result<Completion> {
  let channel = channel(env)?;
  let in_flight = channel.in_flight.get();
  if in_flight == 0 {
    unsafe { sys::napi_ref_threadsafe_function(channel.env, channel.tsfn) };
  }
  channel.in_flight.set(in_flight + 1);
  Ok(Completion {
    deferred,
    queue: channel.queue.clone(),
    tsfn: channel.tsfn,
    kept: None,
  })
}

fn channel(env: &Env) -> napi::Result<Rc<Channel>> {
  let raw = env.raw();
  if let Some(channel) = CHANNEL
    .with(|c| c.borrow().clone())
    .filter(|c| c.env == raw)
  {
    return Ok(channel);
  }
  let channel = Rc::new(make_channel(raw)?);
  CHANNEL.with(|c| *c.borrow_mut() = Some(channel.clone()));
  Ok(channel)
}

fn make_channel(env: sys::napi_env) -> napi::Result<Channel> {
  let mut name = ptr::null_mut();
  let text = c"durastate completions";
  check(unsafe { sys::napi_create_string_utf8(env, text.as_ptr(), -1, &mut name) })?;
  let mut tsfn = ptr::null_mut();
  check(unsafe {
    sys::napi_create_threadsafe_function(
      env,
      ptr::null_mut(),
      ptr::null_mut(),
      name,
      0,
      1,
      ptr::null_mut(),
      None,
      ptr::null_mut(),
      Some(drain),
      &mut tsfn,
    )
  })?;
  check(unsafe { sys::napi_unref_threadsafe_function(env, tsfn) })?;
  let queue = Arc::new(Queue(Mutex::new(Some(Vec::new()))));
  // Registered after the threadsafe function, so it runs before Node.js frees it (env
  // cleanup hooks run in reverse order).
  let hook = Arc::into_raw(queue.clone()) as *mut c_void;
  check(unsafe { sys::napi_add_env_cleanup_hook(env, Some(env_gone), hook) })?;
  Ok(Channel {
    env,
    tsfn,
    queue,
    in_flight: Cell::new(0),
  })
}

/// The env of this JS thread is going away (a worker thread ended, or the process): calls
/// still running on tokio must no longer wake it.
unsafe extern "C" fn env_gone(hook: *mut c_void) {
  let queue = Arc::from_raw(hook as *const Queue);
  *queue.lock() = None;
  let _ = CHANNEL.try_with(|c| c.try_borrow_mut().map(|mut c| c.take()));
}

/// On the JS thread: settles every call finished so far, then lets the process exit if
/// none is left in flight.
unsafe extern "C" fn drain(
  env: sys::napi_env,
  _js_callback: sys::napi_value,
  _context: *mut c_void,
  _data: *mut c_void,
) {
  let Some(channel) = CHANNEL
    .with(|c| c.borrow().clone())
    .filter(|c| c.env == env)
  else {
    return;
  };
  let done = channel
    .queue
    .lock()
    .as_mut()
    .map(std::mem::take)
    .unwrap_or_default();
  let settled = done.len();
  js_promise::run_in_handle_scope(env, || {
    for Done(deferred, result) in done {
      js_promise::settle(env, deferred, result);
    }
  });
  let left = channel.in_flight.get().saturating_sub(settled);
  channel.in_flight.set(left);
  if left == 0 {
    sys::napi_unref_threadsafe_function(env, channel.tsfn);
  }
}
