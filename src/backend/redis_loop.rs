//! Redis on the JS thread's own event loop. The socket is polled by libuv, so a call is
//! written, its reply parsed and its promise settled on the JS thread, with no thread
//! hop (as ioredis does, minus the JS work per command). Concurrent calls share one
//! write and one read. Only connecting (DNS, TCP, AUTH, SELECT, PING) runs on tokio.
//!
//! Every handle holds a strong reference to its driver, released in its close callback,
//! so a driver outlives its handles. An env cleanup hook closes them when a worker
//! thread ends.

use std::cell::RefCell;
use std::os::raw::{c_int, c_void};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{AbortHandle, Abortable};
use napi::{sys, Env};

use super::connect::open;
use super::redis_calls::{self, settle_now, Settlement, Waiter};
use super::redis_core::{lost, stuck, Core};
use super::sentinel_watch::MasterWatch;
use super::socket::Socket;
use crate::command::{Batch, Finish};
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::events::{ConnectionEvents, ServerInfo};
use crate::js_promise::{self, AsyncContext, Deferred};
use crate::options::RetrySettings;
use crate::redis_target::RedisTarget;
use crate::uv;

/// A Redis store's connection, driven by the JS thread's event loop.
pub struct LoopRedis {
  driver: Rc<Driver>,
}

struct Driver {
  target: Arc<RedisTarget>,
  /// Sentinel: whether the sentinels name another master while connected.
  watch: Option<MasterWatch>,
  connect_timeout: Duration,
  command_timeout: Duration,
  state: RefCell<State>,
  /// True while promise reactions run: calls they make are written together afterwards.
  settling: std::cell::Cell<bool>,
}

struct State {
  env: sys::napi_env,
  context: Option<AsyncContext>,
  retired_context: Option<AsyncContext>,
  timer: *mut uv::Handle,
  timer_deadline: Option<Instant>,
  /// Fires the next reconnect attempt after a backoff delay.
  backoff_timer: *mut uv::Handle,
  cleanup_hook: *mut c_void,
  connection: Connection,
  attempt: u64,
  /// Gives up the connect attempt under way: its task would keep the event loop (and the
  /// process) alive until `connectTimeout` with nothing waiting for it.
  connect_abort: Option<AbortHandle>,
  /// The calls, their bytes and replies, and what a drop does to them (`redis_core.rs`).
  core: Core<Waiter>,
  closed: bool,
  shut_down: bool,
  /// Set once shut down: closed, and every call made before settled.
  done: crate::guard::Latch,
  events: Arc<ConnectionEvents>,
}

enum Connection {
  Idle,
  Connecting,
  /// Waiting out a backoff delay before connecting again.
  Backoff,
  Open {
    socket: Socket,
    poll: *mut uv::Handle,
    /// The libuv events the poll handle watches (0 before it is started).
    events: c_int,
  },
}

impl LoopRedis {
  /// A driver that connects to `target` on first use.
  pub fn new(
    target: RedisTarget,
    connect_timeout: Duration,
    command_timeout: Duration,
    retry: RetrySettings,
  ) -> Self {
    let watch = MasterWatch::new(&target, connect_timeout);
    let mut core = Core::new(retry, target.sentinel.is_some());
    core.watch_master(watch.clone());
    let state = State {
      env: std::ptr::null_mut(),
      context: None,
      retired_context: None,
      timer: std::ptr::null_mut(),
      timer_deadline: None,
      backoff_timer: std::ptr::null_mut(),
      cleanup_hook: std::ptr::null_mut(),
      connection: Connection::Idle,
      attempt: 0,
      connect_abort: None,
      core,
      closed: false,
      shut_down: false,
      done: crate::guard::Latch::default(),
      events: ConnectionEvents::new(ServerInfo::redis(&target)),
    };
    Self {
      driver: Rc::new(Driver {
        target: Arc::new(target),
        watch,
        connect_timeout,
        command_timeout,
        state: RefCell::new(state),
        settling: std::cell::Cell::new(false),
      }),
    }
  }

  /// Its connection events (`events.rs`).
  pub fn events(&self) -> Arc<ConnectionEvents> {
    self.driver.state.borrow().events.clone()
  }

  /// Sends `batch` (one round trip) and returns a promise of `finish(replies)`.
  pub fn submit(
    &self,
    env: &Env,
    what: &'static str,
    batch: Batch,
    finish: Finish,
  ) -> napi::Result<sys::napi_value> {
    redis_calls::promise(env.raw(), |deferred| {
      self.enqueue(env, what, batch, deferred, finish)
    })
  }

  /// Resolves once [`close`](Self::close) let the calls made before it settle.
  pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
    self.driver.state.borrow().done.wait()
  }

  /// Stops taking calls; the connection closes once the calls in flight are settled.
  pub fn close(&self) {
    let mut state = self.driver.state.borrow_mut();
    state.close();
    state.finish_if_closed();
  }

  fn enqueue(
    &self,
    env: &Env,
    what: &'static str,
    batch: Batch,
    deferred: Deferred,
    finish: Finish,
  ) -> StoreResult<()> {
    let driver = &self.driver;
    let mut state = driver.state.borrow_mut();
    if state.closed {
      return Err(StoreError::disposed());
    }
    state.prepare(driver, env.raw())?;
    let waiter = Waiter {
      what,
      deferred,
      finish,
    };
    state.core.push_call(waiter, batch, driver.command_timeout);
    state.arm_timer();
    match state.connection {
      Connection::Idle => {
        let attempt = state.begin_connect();
        drop(state);
        driver.start_connect(env, attempt);
      }
      Connection::Connecting | Connection::Backoff => {}
      Connection::Open { .. } if state.core.len() == 1 && !driver.settling.get() => {
        if let Err(err) = state.flush() {
          let settled = state.recover(err);
          let attempt = (!state.core.is_idle()).then(|| state.begin_connect());
          drop(state);
          settle_now(env.raw(), settled);
          if let Some(attempt) = attempt {
            driver.start_connect(env, attempt);
          }
        }
      }
      Connection::Open { .. } => state.watch_writes(true),
    }
    Ok(())
  }
}

impl Drop for LoopRedis {
  /// A store collected without `close()` releases its socket and handles all the same.
  fn drop(&mut self) {
    if let Ok(mut state) = self.driver.state.try_borrow_mut() {
      state.close();
      state.finish_if_closed();
    }
  }
}

impl Driver {
  fn start_connect(self: &Rc<Self>, env: &Env, attempt: u64) {
    let target = self.target.clone();
    let watch = self.watch.clone();
    let limit = self.connect_timeout;
    let weak = Rc::downgrade(self);
    let (abort, registration) = AbortHandle::new_pair();
    self.state.borrow_mut().connect_abort = Some(abort);
    let started = env.spawn_future_with_callback(
      async move {
        let opened = Abortable::new(open(&target, limit, watch.as_ref()), registration).await;
        // (given up: nothing waits for it, and the callback finds it is not current)
        Ok(opened.unwrap_or_else(|_| Err(StoreError::disposed())))
      },
      move |env, opened| {
        if let Some(driver) = weak.upgrade() {
          driver.connected(env.raw(), attempt, opened);
        }
        Ok(())
      },
    );
    if let Err(err) = started {
      let error = StoreError::new(
        ErrorCode::Internal,
        format!("cannot start connecting: {err}"),
      );
      self.connected(env.raw(), attempt, Err(error));
    }
  }

  fn connected(self: &Rc<Self>, env: sys::napi_env, attempt: u64, opened: StoreResult<Socket>) {
    let mut state = self.state.borrow_mut();
    let current = matches!(state.connection, Connection::Connecting) && state.attempt == attempt;
    if !current || state.shut_down {
      return;
    }
    state.connect_abort = None;
    let settled = match opened.and_then(|socket| state.install(self, env, socket)) {
      Ok(()) => Vec::new(),
      Err(err) => {
        state.connection = Connection::Idle;
        let (rejected, backoff) = state.core.connect_failed(&err);
        if let Some(delay) = backoff {
          state.wait_to_reconnect(self, delay);
        }
        rejected
      }
    };
    state.finish_if_closed();
    // The calls a failed connect rejected no longer hold the process open.
    state.arm_timer();
    drop(state);
    settle_now(env, settled);
  }

  fn on_backoff_over(self: &Rc<Self>) {
    let mut state = self.state.borrow_mut();
    if !matches!(state.connection, Connection::Backoff) || state.shut_down {
      return;
    }
    if !state.core.has_waiters() {
      state.core.clear();
      state.connection = Connection::Idle;
      return;
    }
    let attempt = state.begin_connect();
    let env = state.env;
    drop(state);
    js_promise::run_in_handle_scope(env, || self.start_connect(&Env::from_raw(env), attempt));
  }

  fn on_io(self: &Rc<Self>, status: c_int, events: c_int) {
    let mut state = self.state.borrow_mut();
    let env = state.env;
    let context = state.context.as_ref().map(AsyncContext::raw);
    let mut reconnect = None;
    let mut settled = Vec::new();
    if let Err(err) = state.io(status, events, self.command_timeout, &mut settled) {
      settled.extend(state.recover(err));
      if !state.core.is_idle() {
        reconnect = Some(state.begin_connect());
      }
    }
    state.finish_if_closed();
    state.arm_timer();
    drop(state);
    self.settle_batch(env, context, settled);
    if let Some(attempt) = reconnect {
      js_promise::run_in_handle_scope(env, || self.start_connect(&Env::from_raw(env), attempt));
    }
  }

  fn on_timer(self: &Rc<Self>) {
    let mut state = self.state.borrow_mut();
    state.timer_deadline = None;
    let env = state.env;
    let context = state.context.as_ref().map(AsyncContext::raw);
    let timeout_ms = self.command_timeout.as_millis() as u64;
    let mut settled = state.core.expire_calls(Instant::now(), timeout_ms);
    let mut reconnect = None;
    // A server that stopped answering on a connection that stays open: a new one.
    if matches!(state.connection, Connection::Open { .. })
      && state.core.is_stuck(Instant::now(), self.command_timeout)
    {
      settled.extend(state.recover(stuck(self.command_timeout)));
      if !state.core.is_idle() {
        reconnect = Some(state.begin_connect());
      }
    }
    if !state.core.has_waiters() {
      state.abort_connect();
    }
    state.finish_if_closed();
    state.arm_timer();
    drop(state);
    self.settle_batch(env, context, settled);
    if let Some(attempt) = reconnect {
      js_promise::run_in_handle_scope(env, || self.start_connect(&Env::from_raw(env), attempt));
    }
  }

  /// Settles a batch of calls; the calls their reactions make, and the next batches of
  /// calls that continue, go out in one write after.
  fn settle_batch(
    self: &Rc<Self>,
    env: sys::napi_env,
    context: Option<sys::napi_async_context>,
    settled: Vec<Settlement>,
  ) {
    if !settled.is_empty() {
      self.settling.set(true);
      settle_in_scope(env, context, settled);
      self.settling.set(false);
    }
    let mut state = self.state.borrow_mut();
    if !matches!(state.connection, Connection::Open { .. }) || state.core.unsent().is_empty() {
      return;
    }
    if state.flush().is_err() {
      drop(state);
      // Handled as a socket error: resend or reject, and reconnect.
      self.on_io(-1, 0);
    }
  }
}

impl State {
  /// First use on this env: the timer, the async context and the cleanup hook.
  fn prepare(&mut self, driver: &Rc<Driver>, env: sys::napi_env) -> StoreResult<()> {
    if !self.timer.is_null() {
      return Ok(());
    }
    let event_loop = event_loop(env)?;
    let timer = uv::Handle::boxed();
    unsafe {
      uv::uv_timer_init(event_loop, timer);
      uv::Handle::set_data(timer, Rc::into_raw(driver.clone()).cast());
    }
    self.timer = timer;
    self.env = env;
    self.context = Some(AsyncContext::new(env, "durastate:redis").map_err(internal)?);
    let hook: *mut c_void = Weak::into_raw(Rc::downgrade(driver)) as *mut c_void;
    unsafe { sys::napi_add_env_cleanup_hook(env, Some(on_env_cleanup), hook) };
    self.cleanup_hook = hook;
    Ok(())
  }

  fn install(
    &mut self,
    driver: &Rc<Driver>,
    env: sys::napi_env,
    socket: Socket,
  ) -> StoreResult<()> {
    let event_loop = event_loop(env)?;
    let poll = uv::Handle::boxed();
    let status = unsafe { uv::uv_poll_init(event_loop, poll, socket.fd()) };
    if status != 0 {
      unsafe { uv::Handle::free(poll) };
      return Err(internal(format!("uv_poll_init failed ({status})")));
    }
    unsafe {
      uv::Handle::set_data(poll, Rc::into_raw(driver.clone()).cast());
      uv::uv_unref(poll);
    }
    // A Sentinel store's server is the master the sentinels named: the socket's peer.
    let address = match (&self.events.server().server_address, socket.peer()) {
      (None, Some(peer)) => peer.to_string(),
      _ => self.events.server().address(),
    };
    self.events.connected(address);
    self.connection = Connection::Open {
      socket,
      poll,
      events: 0,
    };
    self.core.connected();
    let writes = !self.core.unsent().is_empty();
    self.watch_writes(writes);
    Ok(())
  }

  fn watch_writes(&mut self, writes: bool) {
    if let Connection::Open { poll, events, .. } = &mut self.connection {
      let wanted = uv::READABLE | if writes { uv::WRITABLE } else { 0 };
      if *events != wanted {
        *events = wanted;
        unsafe { uv::uv_poll_start(*poll, wanted, on_poll) };
      }
    }
  }

  /// Writes what the socket takes now; the rest waits for a writable event. Nothing
  /// goes to a master the sentinels replaced (an error: the connection is dropped).
  fn flush(&mut self) -> StoreResult<()> {
    let Connection::Open { socket, .. } = &mut self.connection else {
      return Ok(());
    };
    if let Some(err) = self.core.master_moved() {
      return Err(err);
    }
    let more = socket.write_some(self.core.unsent())?;
    self.watch_writes(more);
    Ok(())
  }

  /// Handles a poll event; settlements of calls that completed go to `settled` (also
  /// when the connection then turns out unusable, the error).
  fn io(
    &mut self,
    status: c_int,
    events: c_int,
    timeout: Duration,
    settled: &mut Vec<Settlement>,
  ) -> StoreResult<()> {
    if status < 0 {
      // libuv reports a reset without reading: the replies that came before it are still
      // in the socket (the kernel hands them out before the error), and their calls are
      // answered, not rejected as lost (a claim that won would read as UNAVAILABLE).
      let _ = self.read_available();
      let _ = self.core.settle_replies(timeout, settled);
      return Err(lost(&format!("socket error (libuv status {status})")));
    }
    if events & uv::WRITABLE != 0 {
      self.flush()?;
    }
    if events & uv::READABLE == 0 {
      return Ok(());
    }
    // The server's close (EOF, a TLS close_notify) may come in the same read as the last
    // replies: they are matched first, then the connection drops (a claim that won
    // would read as UNAVAILABLE, and a call safe to resend would be sent again).
    let read = self.read_available();
    self.core.settle_replies(timeout, settled)?;
    read
  }

  fn read_available(&mut self) -> StoreResult<()> {
    let Connection::Open { socket, .. } = &mut self.connection else {
      return Ok(());
    };
    let (read, wants_write) = socket.read_available(self.core.received())?;
    if read > 0 {
      // Bytes, a whole reply or not: the server is not hung.
      self.core.heard(Instant::now());
    }
    if wants_write {
      self.flush()?;
    }
    Ok(())
  }

  /// Marks a connect attempt under way; returns its number.
  fn begin_connect(&mut self) -> u64 {
    self.connection = Connection::Connecting;
    self.attempt += 1;
    self.attempt
  }

  /// After the connection dropped: calls with retries left are kept for a new
  /// connection (a batch declared `Resend::Never` has none: its first attempt may have
  /// landed); the others are rejected with `err` (`Core::on_drop`).
  fn recover(&mut self, err: StoreError) -> Vec<Settlement> {
    if matches!(self.connection, Connection::Open { .. }) {
      self.events.dropped(&err);
    }
    self.drop_connection();
    self.core.drop_calls(&err)
  }

  fn wait_to_reconnect(&mut self, driver: &Rc<Driver>, delay: Duration) {
    if self.backoff_timer.is_null() {
      let Ok(event_loop) = event_loop(self.env) else {
        return;
      };
      let timer = uv::Handle::boxed();
      unsafe {
        uv::uv_timer_init(event_loop, timer);
        uv::Handle::set_data(timer, Rc::into_raw(driver.clone()).cast());
        uv::uv_unref(timer);
      }
      self.backoff_timer = timer;
    }
    self.connection = Connection::Backoff;
    unsafe {
      uv::uv_timer_start(
        self.backoff_timer,
        on_backoff_timer,
        delay.as_millis() as u64,
        0,
      )
    };
  }

  fn drop_connection(&mut self) {
    if let Connection::Open { poll, .. } = std::mem::replace(&mut self.connection, Connection::Idle)
    {
      close_handle(poll);
    }
  }

  /// Keeps the timer set to the next deadline of a call still waiting; stopped (and
  /// the process free to exit) when none waits.
  fn arm_timer(&mut self) {
    if self.timer.is_null() {
      return;
    }
    let next = self.core.next_deadline();
    if next == self.timer_deadline {
      return;
    }
    self.timer_deadline = next;
    unsafe {
      match next {
        Some(deadline) => {
          let wait = deadline.saturating_duration_since(Instant::now());
          let ms = wait.as_millis() as u64 + u64::from(wait.subsec_nanos() % 1_000_000 != 0);
          uv::uv_timer_start(self.timer, on_timer, ms, 0);
        }
        None => {
          uv::uv_timer_stop(self.timer);
        }
      }
    }
  }

  /// Takes no more calls; the calls made before are still sent again after a drop (a
  /// reconnect while they wait), and the driver shuts down once none waits.
  fn close(&mut self) {
    self.closed = true;
  }

  fn finish_if_closed(&mut self) {
    if self.closed && !self.core.has_waiters() {
      self.shut_down();
    }
  }

  /// Gives up a connect attempt under way when no call waits for it (their time ran out,
  /// or the store closed): the calls queued are timed out ones, never to be sent, and the
  /// next call connects anew.
  fn abort_connect(&mut self) {
    if !matches!(self.connection, Connection::Connecting) {
      return;
    }
    if let Some(abort) = self.connect_abort.take() {
      abort.abort();
    }
    self.core.clear();
    self.connection = Connection::Idle;
  }

  /// Closes the connection, the timer and the cleanup hook. Idempotent.
  fn shut_down(&mut self) {
    if self.shut_down {
      return;
    }
    self.shut_down = true;
    self.done.set();
    self.abort_connect();
    self.close();
    self.core.close();
    self.drop_connection();
    if !self.timer.is_null() {
      close_handle(std::mem::replace(&mut self.timer, std::ptr::null_mut()));
    }
    if !self.backoff_timer.is_null() {
      close_handle(std::mem::replace(
        &mut self.backoff_timer,
        std::ptr::null_mut(),
      ));
    }
    // The context may be in use by the settlement that called `close()`; it is
    // destroyed when the timer's close callback runs, on a later turn of the loop.
    self.retired_context = self.context.take();
    if !self.cleanup_hook.is_null() {
      let hook = std::mem::replace(&mut self.cleanup_hook, std::ptr::null_mut());
      unsafe {
        sys::napi_remove_env_cleanup_hook(self.env, Some(on_env_cleanup), hook);
        drop(Weak::from_raw(hook as *const Driver));
      }
    }
  }
}

fn settle_in_scope(
  env: sys::napi_env,
  context: Option<sys::napi_async_context>,
  settled: Vec<Settlement>,
) {
  if let (false, Some(context)) = (settled.is_empty(), context) {
    js_promise::run_in_callback_scope(env, context, || settle_now(env, settled));
  }
}

fn event_loop(env: sys::napi_env) -> StoreResult<*mut uv::Loop> {
  let mut event_loop = std::ptr::null_mut();
  let status = unsafe { sys::napi_get_uv_event_loop(env, &mut event_loop) };
  if status != sys::Status::napi_ok || event_loop.is_null() {
    return Err(internal(format!("no event loop (napi status {status})")));
  }
  Ok(event_loop.cast())
}

fn close_handle(handle: *mut uv::Handle) {
  unsafe { uv::uv_close(handle, Some(on_handle_closed)) };
}

/// The driver a handle belongs to (the handle keeps its own reference).
unsafe fn driver_of(handle: *mut uv::Handle) -> Rc<Driver> {
  let driver = uv::Handle::data(handle) as *const Driver;
  Rc::increment_strong_count(driver);
  Rc::from_raw(driver)
}

unsafe extern "C" fn on_poll(handle: *mut uv::Handle, status: c_int, events: c_int) {
  let driver = driver_of(handle);
  guard(|| driver.on_io(status, events));
}

unsafe extern "C" fn on_timer(handle: *mut uv::Handle) {
  let driver = driver_of(handle);
  guard(|| driver.on_timer());
}

unsafe extern "C" fn on_backoff_timer(handle: *mut uv::Handle) {
  let driver = driver_of(handle);
  guard(|| driver.on_backoff_over());
}

unsafe extern "C" fn on_handle_closed(handle: *mut uv::Handle) {
  let driver = Rc::from_raw(uv::Handle::data(handle) as *const Driver);
  if let Ok(mut state) = driver.state.try_borrow_mut() {
    if let Some(context) = state.retired_context.take() {
      let env = state.env;
      js_promise::run_in_handle_scope(env, || context.destroy(env));
    }
  }
  drop(driver);
  uv::Handle::free(handle);
}

unsafe extern "C" fn on_env_cleanup(hook: *mut c_void) {
  let weak = Weak::from_raw(hook as *const Driver);
  if let Some(driver) = weak.upgrade() {
    if let Ok(mut state) = driver.state.try_borrow_mut() {
      state.cleanup_hook = std::ptr::null_mut();
      state.core.clear();
      state.shut_down();
      // The env is going away: its async contexts go with it.
      state.retired_context = None;
    }
  }
}

/// A panic must not unwind into libuv.
fn guard(work: impl FnOnce()) {
  if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err() {
    eprintln!("durastate: internal error in the Redis event-loop driver (please report it)");
  }
}

fn internal(detail: impl std::fmt::Display) -> StoreError {
  StoreError::new(ErrorCode::Internal, detail.to_string())
}
