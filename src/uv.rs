//! The few libuv calls the Redis loop driver needs. Node exports libuv to addons
//! (`napi_get_uv_event_loop` gives the loop of the calling thread, worker threads
//! included). Handles are boxed with room to spare and freed in their close callback.

use std::os::raw::{c_int, c_void};

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

extern "C" {
  pub fn uv_poll_init(event_loop: *mut Loop, handle: *mut Handle, fd: c_int) -> c_int;
  pub fn uv_poll_start(handle: *mut Handle, events: c_int, callback: PollCallback) -> c_int;
  pub fn uv_timer_init(event_loop: *mut Loop, handle: *mut Handle) -> c_int;
  pub fn uv_timer_start(
    handle: *mut Handle,
    callback: TimerCallback,
    timeout_ms: u64,
    repeat_ms: u64,
  ) -> c_int;
  pub fn uv_timer_stop(handle: *mut Handle) -> c_int;
  pub fn uv_close(handle: *mut Handle, callback: Option<CloseCallback>);
  pub fn uv_unref(handle: *mut Handle);
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
