//! The few libuv calls the Redis loop driver needs. Node exports libuv to addons
//! (`napi_get_uv_event_loop` gives the loop of the calling thread, worker threads
//! included). Handles are boxed with room to spare and freed in their close callback.
//!
//! The functions are looked up in the process with `dlsym` the first time they are
//! needed, not linked: the addon has no undefined libuv symbol, so it loads in a runtime
//! that exports no libuv (or only part of it), and [`available`] tells whether every one
//! is there. Only Node.js gets to call them (see `runtime`).

use std::os::raw::{c_int, c_void};
use std::sync::OnceLock;

/// A libuv event loop (`uv_loop_t`), opaque.
pub type Loop = c_void;

/// Storage for a `uv_poll_t` or `uv_timer_t` (160 and 152 bytes on x64 Linux). Its
/// first field is libuv's `void* data`, which holds the owner of the handle.
#[repr(C, align(16))]
pub struct Handle {
  bytes: [u8; 512],
}

/// `UV_READABLE`.
pub const READABLE: c_int = 1;
/// `UV_WRITABLE`.
pub const WRITABLE: c_int = 2;

pub type PollCallback = unsafe extern "C" fn(handle: *mut Handle, status: c_int, events: c_int);
pub type TimerCallback = unsafe extern "C" fn(handle: *mut Handle);
pub type CloseCallback = unsafe extern "C" fn(handle: *mut Handle);

type PollInit = unsafe extern "C" fn(*mut Loop, *mut Handle, c_int) -> c_int;
type PollStart = unsafe extern "C" fn(*mut Handle, c_int, PollCallback) -> c_int;
type TimerInit = unsafe extern "C" fn(*mut Loop, *mut Handle) -> c_int;
type TimerStart = unsafe extern "C" fn(*mut Handle, TimerCallback, u64, u64) -> c_int;
type TimerStop = unsafe extern "C" fn(*mut Handle) -> c_int;
type Close = unsafe extern "C" fn(*mut Handle, Option<CloseCallback>);
type Unref = unsafe extern "C" fn(*mut Handle);

struct Api {
  poll_init: PollInit,
  poll_start: PollStart,
  timer_init: TimerInit,
  timer_start: TimerStart,
  timer_stop: TimerStop,
  close: Close,
  unref: Unref,
}

/// The address of `name` (NUL-terminated) in the process, if something exports it.
fn symbol(name: &'static str) -> Option<*mut c_void> {
  debug_assert!(name.ends_with('\0'));
  // SAFETY: `name` is a NUL-terminated C string; RTLD_DEFAULT searches the process.
  let address = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr().cast()) };
  (!address.is_null()).then_some(address)
}

fn api() -> Option<&'static Api> {
  static API: OnceLock<Option<Api>> = OnceLock::new();
  API
    .get_or_init(|| {
      // SAFETY: each symbol is libuv's function of that name, with the signature declared
      // in uv.h, which the field's type restates.
      unsafe {
        Some(Api {
          poll_init: std::mem::transmute::<*mut c_void, PollInit>(symbol("uv_poll_init\0")?),
          poll_start: std::mem::transmute::<*mut c_void, PollStart>(symbol("uv_poll_start\0")?),
          timer_init: std::mem::transmute::<*mut c_void, TimerInit>(symbol("uv_timer_init\0")?),
          timer_start: std::mem::transmute::<*mut c_void, TimerStart>(symbol("uv_timer_start\0")?),
          timer_stop: std::mem::transmute::<*mut c_void, TimerStop>(symbol("uv_timer_stop\0")?),
          close: std::mem::transmute::<*mut c_void, Close>(symbol("uv_close\0")?),
          unref: std::mem::transmute::<*mut c_void, Unref>(symbol("uv_unref\0")?),
        })
      }
    })
    .as_ref()
}

/// Whether the process exports every libuv function below. This looks the names up and
/// calls none of them (a runtime may export stubs that abort: check the runtime first).
pub fn available() -> bool {
  api().is_some()
}

fn loaded() -> &'static Api {
  api().expect("libuv is used only where uv::available() is true")
}

pub unsafe fn uv_poll_init(event_loop: *mut Loop, handle: *mut Handle, fd: c_int) -> c_int {
  (loaded().poll_init)(event_loop, handle, fd)
}

pub unsafe fn uv_poll_start(handle: *mut Handle, events: c_int, callback: PollCallback) -> c_int {
  (loaded().poll_start)(handle, events, callback)
}

pub unsafe fn uv_timer_init(event_loop: *mut Loop, handle: *mut Handle) -> c_int {
  (loaded().timer_init)(event_loop, handle)
}

pub unsafe fn uv_timer_start(
  handle: *mut Handle,
  callback: TimerCallback,
  timeout_ms: u64,
  repeat_ms: u64,
) -> c_int {
  (loaded().timer_start)(handle, callback, timeout_ms, repeat_ms)
}

pub unsafe fn uv_timer_stop(handle: *mut Handle) -> c_int {
  (loaded().timer_stop)(handle)
}

pub unsafe fn uv_close(handle: *mut Handle, callback: Option<CloseCallback>) {
  (loaded().close)(handle, callback)
}

pub unsafe fn uv_unref(handle: *mut Handle) {
  (loaded().unref)(handle)
}

impl Handle {
  /// A zeroed handle on the heap, to be initialised by `uv_*_init`.
  pub fn boxed() -> *mut Handle {
    Box::into_raw(Box::new(Handle { bytes: [0; 512] }))
  }

  /// Stores `data` in the handle's `data` field.
  ///
  /// # Safety
  /// `handle` must come from [`Handle::boxed`] and not be freed.
  pub unsafe fn set_data(handle: *mut Handle, data: *const c_void) {
    *(handle as *mut *const c_void) = data;
  }

  /// The handle's `data` field.
  ///
  /// # Safety
  /// `handle` must come from [`Handle::boxed`] and not be freed.
  pub unsafe fn data(handle: *mut Handle) -> *const c_void {
    *(handle as *const *const c_void)
  }

  /// Frees a handle that libuv has finished closing.
  ///
  /// # Safety
  /// Only from the handle's close callback.
  pub unsafe fn free(handle: *mut Handle) {
    drop(Box::from_raw(handle));
  }
}
