//! Redis over a socket of the JS runtime (`node:net`): the driver for Bun and Deno, and
//! for Node.js wherever the event-loop driver cannot run. The runtime's event loop hands
//! the socket's bytes to this driver on the JS thread, which decrypts them (rustls, when
//! TLS), matches replies to calls (the connection core every driver shares,
//! `redis_core.rs`) and settles their promises right there: no thread hop either way, as
//! with the event-loop driver. The calls made in one tick go out in one `socket.write`,
//! from a microtask. The login and the checks of a new connection (`connect::Handshake`)
//! and the TLS handshake run over the same socket; only asking the sentinels for the
//! master runs on tokio (`connect.rs`). Deadlines and the backoff between reconnects are
//! JS timers; the deadline timer is ref'd only while calls wait, and the socket never is,
//! so an idle process exits. Whether calls wait is written to memory the transport shares
//! (no call into JS for it): the transport refs or unrefs the timer after each event and
//! each write.
//!
//! The JS side (`transport.js`) is a thin shell: it opens sockets, writes buffers and
//! reports events (`connect`, `data`, `error`, `close`, `timeout` of the connect, and the
//! timers) to one callback per driver; every decision is made here.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::os::raw::c_void;
use std::ptr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::future::{AbortHandle, Abortable};
use napi::{sys, Env};
use rustls::ClientConnection;

use super::connect::{self, Handshake, Peer, Progress};
use super::redis_calls::{self, settle_now, Settlement, Waiter};
use super::redis_core::{lost, stuck, tls_lost, Core};
use super::resp::ReplyDecoder;
use super::sentinel_watch::MasterWatch;
use crate::command::{Batch, Finish};
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::events::{ConnectionEvents, ServerInfo};
use crate::js_promise::{check, Deferred};
use crate::options::RetrySettings;
use crate::redis_target::RedisTarget;
use crate::tls::{take_plaintext, RecordFailure};

thread_local! {
  /// This JS thread's transport factory (`setRedisTransport`, called by `index.js`).
  static FACTORY: Cell<Option<(sys::napi_env, sys::napi_ref)>> = const { Cell::new(None) };
}

/// Whether `index.js` gave this JS thread a transport (a runtime with `node:net`).
pub fn registered() -> bool {
  FACTORY.with(|factory| factory.get().is_some())
}

/// Registers `factory(emit)`, which makes one driver's transport (`transport.js`).
pub fn set_factory(env: sys::napi_env, factory: sys::napi_value) -> napi::Result<()> {
  let mut reference = ptr::null_mut();
  unsafe { check(sys::napi_create_reference(env, factory, 1, &mut reference))? };
  FACTORY.with(|cell| cell.set(Some((env, reference))));
  Ok(())
}

/// A Redis store's connection over a JS socket.
pub struct JsRedis {
  driver: Rc<Driver>,
}

struct Driver {
  target: Arc<RedisTarget>,
  /// Sentinel: whether the sentinels name another master while connected.
  watch: Option<MasterWatch>,
  connect_timeout: Duration,
  command_timeout: Duration,
  state: RefCell<State>,
}

struct State {
  env: sys::napi_env,
  /// The JS transport (`transport.js`), made on first use: its functions in [`Method`]
  /// order, then the transport object itself, which `transport.js` watches: once no
  /// reference is left, it closes the socket and the timers.
  transport: Vec<sys::napi_ref>,
  /// The driver itself, from the first call until it shuts down: the store object may
  /// be collected while calls wait, and they must still settle (and their writes go out).
  keep: Option<Rc<Driver>>,
  /// The store object was collected: the driver shuts down once no call waits.
  orphaned: bool,
  /// The env cleanup hook (a `Weak<Driver>`), registered with the transport: a worker
  /// thread that ends with calls waiting lets the driver go ([`State::keep`]).
  cleanup_hook: *mut c_void,
  connection: Connection,
  /// Gives up the sentinels' lookup of the master under way (it runs on tokio, and holds
  /// the process open until it ends), when no call waits for it any more or on shutdown.
  lookup: Option<AbortHandle>,
  /// The current connect attempt; the transport tags a socket's events with it, so the
  /// events of a socket given up are ignored.
  attempt: u32,
  /// The calls, their bytes and replies, and what a drop does to them (`redis_core.rs`).
  core: Core<Waiter>,
  /// Whether a microtask will write what the calls of this tick queued.
  write_queued: bool,
  /// The bytes to write that the event being handled answers with ([`State::send`]).
  out: Vec<u8>,
  /// The transport's `shared` memory: 1 while a call waits (the transport then keeps
  /// the deadline timer ref'd), else 0. Null without a transport.
  waits: *mut i32,
  /// Whether the deadline timer is armed.
  timer: bool,
  closed: bool,
  shut_down: bool,
  /// Set once shut down: closed, and every call made before settled.
  done: crate::guard::Latch,
  events: Arc<ConnectionEvents>,
}

enum Connection {
  Idle,
  /// Asking the sentinels (no socket yet), or a socket connecting, then its TLS
  /// handshake and the login and checks.
  Connecting {
    started: Instant,
    socket: Option<Handshaking>,
  },
  /// Waiting out a backoff delay before connecting again.
  Backoff,
  Open {
    tls: Option<Box<ClientConnection>>,
  },
}

/// A socket between connected and ready.
struct Handshaking {
  /// `host:port`, as connected.
  address: String,
  tls: Option<Box<ClientConnection>>,
  /// Set once the socket connected: the login and checks under way.
  login: Option<Handshake>,
  decoder: ReplyDecoder,
  received: BytesMut,
}

/// The transport's functions (`transport.js`), looked up once.
#[derive(Clone, Copy)]
enum Method {
  Connect,
  Ready,
  Write,
  Soon,
  Drop,
  Arm,
  Hold,
  Backoff,
  Shutdown,
}

const METHODS: [&str; 9] = [
  "connect", "ready", "write", "soon", "drop", "arm", "hold", "backoff", "shutdown",
];

/// An event of the transport (`transport.js` passes the name).
enum Event<'a> {
  Connect,
  Data(&'a [u8]),
  Error(String),
  Close,
  ConnectTimeout,
  Timer,
  Backoff,
  Write,
}

impl JsRedis {
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
      env: ptr::null_mut(),
      transport: Vec::new(),
      keep: None,
      orphaned: false,
      cleanup_hook: ptr::null_mut(),
      connection: Connection::Idle,
      lookup: None,
      attempt: 0,
      core,
      write_queued: false,
      out: Vec::new(),
      waits: ptr::null_mut(),
      timer: false,
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
      }),
    }
  }

  /// Its connection events (`events.rs`).
  pub fn events(&self) -> Arc<ConnectionEvents> {
    self.driver.state.borrow().events.clone()
  }

  /// Queues `batch` (one round trip) and returns a promise of `finish(replies)`.
  pub fn submit(
    &self,
    env: &Env,
    what: &'static str,
    batch: Batch,
    finish: Finish,
  ) -> napi::Result<sys::napi_value> {
    let raw = env.raw();
    redis_calls::promise(raw, |deferred| {
      self.enqueue(raw, what, batch, deferred, finish)
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
    env: sys::napi_env,
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
    state.prepare(driver, env)?;
    // Nothing more goes to a master the sentinels replaced: a new connection.
    let mut settled = Vec::new();
    if let (Connection::Open { .. }, Some(err)) = (&state.connection, state.core.master_moved()) {
      settled = state.recover(err);
    }
    let waiter = Waiter {
      what,
      deferred,
      finish,
    };
    state.core.push_call(waiter, batch, driver.command_timeout);
    // Before the write below: the transport refs the deadline timer after it writes.
    state.publish_waits();
    if state.keep.is_none() {
      state.keep = Some(driver.clone());
    }
    match state.connection {
      // Alone in flight on plain TCP: written now (at 1 in flight, no microtask and one
      // JS call less). Should the write fail, the bytes wait for the microtask's.
      Connection::Open { tls: None } if state.core.len() == 1 && !state.write_queued => {
        let bytes = state.core.take_unsent(Vec::new());
        let written = js_buffer(env, &bytes).and_then(|buffer| {
          let function = state.transport[Method::Write as usize];
          call_function(env, function, &[buffer])
        });
        if written.is_err() {
          *state.core.unsent() = bytes;
          state.write_soon();
        }
        state.sync_timer();
      }
      // Written (and the deadline timer set) in a microtask, with the other calls of this tick.
      _ => state.write_soon(),
    }
    if let Connection::Idle = state.connection {
      state.begin_connect();
      drop(state);
      driver.find_server();
    } else {
      drop(state);
    }
    if !settled.is_empty() {
      settle_now(env, settled);
    }
    Ok(())
  }
}

impl Drop for JsRedis {
  /// A store collected without `close()`. Calls still waiting go on as before (resent
  /// after a drop, rejected at their deadline): the driver keeps itself ([`State::keep`])
  /// and shuts down after the event that settles the last one. Else it lets its
  /// transport go now, and `transport.js` closes the socket and the timers once the
  /// transport is collected. No JS runs from here (a finalizer).
  fn drop(&mut self) {
    let Ok(mut state) = self.driver.state.try_borrow_mut() else {
      return;
    };
    state.orphaned = true;
    if state.core.has_waiters() && !state.shut_down {
      return;
    }
    let keep = state.abandon();
    drop(state);
    drop(keep);
  }
}

impl Driver {
  /// The first step of a connect attempt: the server's address (the sentinels' master
  /// is asked for on tokio), then the socket.
  fn find_server(self: &Rc<Self>) {
    let env = self.state.borrow().env;
    let attempt = self.state.borrow().attempt;
    if self.target.sentinel.is_none() {
      let address = connect::tcp_address(&self.target);
      self.address_found(env, attempt, address);
      return;
    }
    let target = self.target.clone();
    let watch = self.watch.clone();
    let limit = self.connect_timeout;
    let weak = Rc::downgrade(self);
    let js = Env::from_raw(env);
    let (abort, registration) = AbortHandle::new_pair();
    self.state.borrow_mut().lookup = Some(abort);
    let started = js.spawn_future_with_callback(
      async move {
        let lookup = connect::server_address(&target, limit, watch.as_ref());
        // (given up: nothing waits for it, and `address_found` finds it is not current)
        Ok(
          Abortable::new(lookup, registration)
            .await
            .unwrap_or_else(|_| Err(StoreError::disposed())),
        )
      },
      move |env, address| {
        if let Some(driver) = weak.upgrade() {
          driver.address_found(env.raw(), attempt, address);
        }
        Ok(())
      },
    );
    let failed = started.err();
    if let Some(err) = failed {
      let error = internal(format!("cannot start connecting: {err}"));
      self.address_found(env, attempt, Err(error));
    }
  }

  fn address_found(
    self: &Rc<Self>,
    env: sys::napi_env,
    attempt: u32,
    address: StoreResult<(String, u16)>,
  ) {
    let mut state = self.state.borrow_mut();
    if state.attempt != attempt || state.shut_down {
      return;
    }
    state.lookup = None;
    let Connection::Connecting { started, .. } = state.connection else {
      return;
    };
    let opened = address.and_then(|(host, port)| {
      let tls = match &self.target.tls {
        Some(tls) => {
          let name = tls.server_name(&host)?;
          let session = ClientConnection::new(tls.config.clone(), name)
            .map_err(|err| StoreError::new(ErrorCode::Tls, err.to_string()))?;
          Some(Box::new(session))
        }
        None => None,
      };
      let left = self.connect_timeout.saturating_sub(started.elapsed());
      let args = [
        js_string(env, &host),
        js_number(env, f64::from(port)),
        js_number(env, left.as_millis() as f64),
        js_number(env, f64::from(attempt)),
      ];
      // The runtime may refuse the socket itself (Deno without `--allow-net`).
      state
        .call(Method::Connect, &args)
        .map_err(|err| peer(&self.target).unavailable(&err.message))?;
      state.connection = Connection::Connecting {
        started,
        socket: Some(Handshaking {
          address: format!("{host}:{port}"),
          tls,
          login: None,
          decoder: ReplyDecoder::default(),
          received: BytesMut::new(),
        }),
      };
      Ok(())
    });
    let settled = match opened {
      Ok(()) => Vec::new(),
      Err(err) => state.connect_failed(err),
    };
    let reconnect = state.after_event();
    // Not a transport event: the transport is told to ref or unref the timer.
    state.sync_timer();
    if !state.transport.is_empty() {
      let _ = state.call(Method::Hold, &[]);
    }
    drop(state);
    settle_now(env, settled);
    // Calls still wait and no backoff could be set: a new attempt (a call never sent is
    // rejected when an attempt fails, so this does not go on without calls resent).
    if reconnect {
      self.find_server();
    }
  }

  /// An event of the transport, on the JS thread; returns the bytes to write to the
  /// socket (the transport writes them when the event's callback returns).
  fn on_event(self: &Rc<Self>, attempt: u32, event: Event<'_>) -> Vec<u8> {
    let mut state = self.state.borrow_mut();
    if state.shut_down {
      return Vec::new();
    }
    let env = state.env;
    let mut settled = Vec::new();
    let current = attempt == state.attempt;
    match event {
      Event::Timer => {
        state.timer = false;
        let timeout_ms = self.command_timeout.as_millis() as u64;
        settled = state.core.expire_calls(Instant::now(), timeout_ms);
        // A server that stopped answering on a connection that stays open: a new one.
        if matches!(state.connection, Connection::Open { .. })
          && state.core.is_stuck(Instant::now(), self.command_timeout)
        {
          settled.extend(state.recover(stuck(self.command_timeout)));
        }
        if !state.core.has_waiters() {
          state.abort_lookup();
        }
      }
      Event::Backoff => {
        if matches!(state.connection, Connection::Backoff) {
          if state.core.has_waiters() {
            state.begin_connect();
            drop(state);
            self.find_server();
            state = self.state.borrow_mut();
          } else {
            state.core.clear();
            state.connection = Connection::Idle;
          }
        }
      }
      Event::Write => {
        state.write_queued = false;
        if let Err(err) = state.write_unsent() {
          settled = state.recover(err);
        }
      }
      _ if !current => {}
      Event::Connect => {
        if let Err(err) = state.start_login(self) {
          settled = state.connect_failed(err);
        }
      }
      Event::Data(bytes) => match state.connection {
        Connection::Connecting { .. } => match state.login_data(self, bytes) {
          Ok(()) => {}
          Err(err) => settled = state.connect_failed(err),
        },
        Connection::Open { .. } => {
          if let Err(err) = state.receive(bytes, self.command_timeout, &mut settled) {
            settled.extend(state.recover(err));
          }
        }
        _ => {}
      },
      Event::Error(message) => settled = state.socket_failed(self, &message),
      Event::Close => settled = state.socket_failed(self, "the server closed the connection"),
      Event::ConnectTimeout => {
        if let Connection::Connecting { .. } = state.connection {
          let err = state.connect_timed_out(self);
          settled = state.connect_failed(err);
        }
      }
    }
    let reconnect = state.after_event();
    // The transport refs or unrefs the timer as `waits` says when this event returns.
    state.sync_timer();
    let out = std::mem::take(&mut state.out);
    drop(state);
    if !settled.is_empty() {
      settle_now(env, settled);
    }
    if reconnect {
      self.find_server();
    }
    out
  }
}

impl State {
  /// First use on this env: the transport.
  fn prepare(&mut self, driver: &Rc<Driver>, env: sys::napi_env) -> StoreResult<()> {
    if !self.transport.is_empty() {
      return Ok(());
    }
    let Some((owner, factory)) = FACTORY.with(Cell::get).filter(|(owner, _)| *owner == env) else {
      return Err(internal("no JS transport was registered on this thread"));
    };
    self.env = owner;
    let (transport, waits) =
      make_transport(env, factory, Rc::downgrade(driver)).map_err(napi_failed)?;
    self.transport = transport;
    self.waits = waits;
    let hook = Weak::into_raw(Rc::downgrade(driver)) as *mut c_void;
    unsafe { sys::napi_add_env_cleanup_hook(env, Some(on_env_cleanup), hook) };
    self.cleanup_hook = hook;
    Ok(())
  }

  /// Calls the transport's `method(...args)`; a JS exception is taken and returned.
  fn call(&self, method: Method, args: &[sys::napi_value]) -> StoreResult<()> {
    let Some(&function) = self.transport.get(method as usize) else {
      return Err(StoreError::disposed());
    };
    call_function(self.env, function, args).map_err(napi_failed)
  }

  /// Marks a connect attempt under way.
  fn begin_connect(&mut self) {
    self.attempt = self.attempt.wrapping_add(1);
    self.connection = Connection::Connecting {
      started: Instant::now(),
      socket: None,
    };
  }

  /// The socket connected: the TLS handshake (if any) and the login start.
  fn start_login(&mut self, driver: &Rc<Driver>) -> StoreResult<()> {
    let Connection::Connecting {
      socket: Some(socket),
      ..
    } = &mut self.connection
    else {
      return Ok(());
    };
    let (handshake, bytes) = Handshake::start(&connect::login_of(&driver.target));
    socket.login = Some(handshake);
    let out = seal(socket.tls.as_deref_mut(), &bytes)?;
    self.send(&out);
    Ok(())
  }

  /// Bytes that came while connecting: the TLS handshake's, then the login's replies.
  fn login_data(&mut self, driver: &Rc<Driver>, bytes: &[u8]) -> StoreResult<()> {
    let peer = peer(&driver.target);
    let Connection::Connecting {
      socket: Some(socket),
      ..
    } = &mut self.connection
    else {
      return Ok(());
    };
    let mut out = Vec::new();
    match socket.tls.as_deref_mut() {
      Some(tls) => {
        open_tls(tls, bytes, &mut socket.received).map_err(|err| login_tls_error(peer, &err))?;
        drain_tls(tls, &mut out);
      }
      None => socket.received.extend_from_slice(bytes),
    }
    let mut ready = false;
    while let Some(login) = socket.login.as_mut() {
      let reply = socket
        .decoder
        .decode(&mut socket.received)
        .map_err(|err| peer.unavailable(&format!("unreadable reply: {err}")))?;
      let Some(reply) = reply else { break };
      match login.take(peer, reply)? {
        Progress::Wait => {}
        Progress::Send(bytes) => out.extend(seal(socket.tls.as_deref_mut(), &bytes)?),
        Progress::Done => {
          ready = true;
          break;
        }
      }
    }
    self.send(&out);
    if ready {
      self.ready()?;
    }
    Ok(())
  }

  /// The login passed: calls may go out.
  fn ready(&mut self) -> StoreResult<()> {
    self.call(Method::Ready, &[])?;
    let Connection::Connecting {
      socket: Some(socket),
      ..
    } = std::mem::replace(&mut self.connection, Connection::Idle)
    else {
      return Ok(());
    };
    // A Sentinel store's server is the master the sentinels named.
    let address = match &self.events.server().server_address {
      None => socket.address.clone(),
      _ => self.events.server().address(),
    };
    self.events.connected(address);
    self.connection = Connection::Open { tls: socket.tls };
    self.core.connected();
    self.write_unsent()
  }

  /// Why the connect attempt did not finish within `connectTimeout`.
  fn connect_timed_out(&self, driver: &Rc<Driver>) -> StoreError {
    let peer = peer(&driver.target);
    let in_tls = matches!(&self.connection, Connection::Connecting { socket: Some(s), .. }
      if s.tls.as_ref().is_some_and(|tls| tls.is_handshaking()) && s.login.is_some());
    if in_tls {
      return peer.tls_failed(&format!(
        "no TLS handshake within connectTimeout ({} ms); does the server speak TLS on that port?",
        driver.connect_timeout.as_millis()
      ));
    }
    StoreError::connect_timeout(peer.display, driver.connect_timeout)
  }

  /// The socket failed or closed: a connect attempt failed, or an open connection dropped.
  fn socket_failed(&mut self, driver: &Rc<Driver>, message: &str) -> Vec<Settlement> {
    match &self.connection {
      Connection::Connecting { .. } => {
        // The runtime's message names the address (`connect ECONNREFUSED host:port`).
        let err = peer(&driver.target).unavailable(message);
        self.connect_failed(err)
      }
      Connection::Open { .. } => self.recover(lost(message)),
      _ => Vec::new(),
    }
  }

  /// A connect attempt failed: calls are rejected or wait for the next attempt, after a
  /// backoff delay (`Core::on_connect_failed`).
  fn connect_failed(&mut self, err: StoreError) -> Vec<Settlement> {
    self.drop_connection();
    let (rejected, backoff) = self.core.connect_failed(&err);
    if let Some(delay) = backoff {
      let args = [js_number(self.env, delay.as_millis() as f64)];
      if self.call(Method::Backoff, &args).is_ok() {
        self.connection = Connection::Backoff;
      }
    }
    rejected
  }

  /// Reply bytes on the open connection: the calls they complete are settled (or their
  /// next batch queued).
  fn receive(
    &mut self,
    bytes: &[u8],
    timeout: Duration,
    settled: &mut Vec<Settlement>,
  ) -> StoreResult<()> {
    let Connection::Open { tls } = &mut self.connection else {
      return Ok(());
    };
    if !bytes.is_empty() {
      // Bytes, a whole reply or not: the server is not hung.
      self.core.heard(Instant::now());
    }
    match tls.as_deref_mut() {
      Some(tls) => {
        let opened = open_tls(tls, bytes, self.core.received());
        if let Err(err) = opened {
          // The server closed the session (or it failed) after replies that came in the
          // same bytes: they are matched first (a claim that won would read as
          // UNAVAILABLE), then the connection drops.
          self.core.settle_replies(timeout, settled)?;
          return Err(tls_lost(err));
        }
        let mut out = Vec::new();
        drain_tls(tls, &mut out);
        self.send(&out);
      }
      None => self.core.received().extend_from_slice(bytes),
    }
    self.core.settle_replies(timeout, settled)?;
    // Calls that continue go out now; calls their settlements make, in a microtask.
    self.write_unsent()
  }

  /// Asks the transport to call back with `write` once the calls of this tick are in.
  fn write_soon(&mut self) {
    if !self.write_queued && self.call(Method::Soon, &[]).is_ok() {
      self.write_queued = true;
    }
  }

  /// Writes every byte the calls queued (sealed by TLS when it is on). Nothing goes to
  /// a master the sentinels replaced (an error: the connection is dropped).
  fn write_unsent(&mut self) -> StoreResult<()> {
    let Connection::Open { tls } = &mut self.connection else {
      return Ok(());
    };
    if self.core.unsent().is_empty() {
      return Ok(());
    }
    if let Some(err) = self.core.master_moved() {
      return Err(err);
    }
    match tls.as_deref_mut() {
      Some(tls) => {
        let sealed = seal(Some(tls), self.core.unsent())?;
        self.core.unsent().clear();
        self.send(&sealed);
      }
      None if self.out.is_empty() => self.out = self.core.take_unsent(Vec::new()),
      None => {
        let bytes = self.core.take_unsent(Vec::new());
        self.send(&bytes);
      }
    }
    Ok(())
  }

  /// Bytes for the socket: they go back to the transport as the answer of the event
  /// being handled (every write happens during one), in one buffer.
  fn send(&mut self, bytes: &[u8]) {
    self.out.extend_from_slice(bytes);
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

  fn drop_connection(&mut self) {
    // Bytes meant for this connection never reach the next one.
    self.out.clear();
    if matches!(
      self.connection,
      Connection::Open { .. }
        | Connection::Connecting {
          socket: Some(_),
          ..
        }
    ) {
      let _ = self.call(Method::Drop, &[]);
    }
    self.connection = Connection::Idle;
    self.attempt = self.attempt.wrapping_add(1);
  }

  /// What every event ends with: the deadline timer kept in step, a reconnect started
  /// when calls wait and no connection is under way (returns whether to start it), and
  /// the driver shut down once closed and idle.
  fn after_event(&mut self) -> bool {
    let reconnect =
      matches!(self.connection, Connection::Idle) && !self.core.is_idle() && !self.shut_down;
    if reconnect {
      self.begin_connect();
    }
    self.finish_if_closed();
    reconnect
  }

  /// The deadline timer: armed at the first deadline of a waiting call (the calls
  /// queued after it are due later: it is not moved for them), and ref'd only while a
  /// call waits (`waits`, which the transport reads after each event and write). When
  /// it fires, the calls due are rejected and it is armed again.
  fn sync_timer(&mut self) {
    if self.shut_down || self.transport.is_empty() {
      return;
    }
    self.publish_waits();
    if self.timer {
      return;
    }
    if let Some(deadline) = self.core.next_deadline() {
      let wait = deadline.saturating_duration_since(Instant::now());
      let ms = wait.as_millis() as f64 + f64::from(wait.subsec_nanos() % 1_000_000 != 0);
      if self.call(Method::Arm, &[js_number(self.env, ms)]).is_ok() {
        self.timer = true;
      }
    }
  }

  /// Writes whether a call waits to the transport's `shared` memory.
  fn publish_waits(&mut self) {
    if !self.waits.is_null() {
      let waiting = i32::from(self.core.next_deadline().is_some());
      // The transport's ArrayBuffer, kept alive by the reference to the transport.
      unsafe { self.waits.write_volatile(waiting) };
    }
  }

  /// Takes no more calls; the calls made before are still sent again after a drop (a
  /// reconnect while they wait), and the driver shuts down once none waits.
  fn close(&mut self) {
    self.closed = true;
  }

  /// Gives up the sentinels' lookup under way, if any: no call waits for it (their time
  /// ran out, or the store shuts down), so the queued calls are timed out ones, never to
  /// be sent, and the next call connects anew.
  fn abort_lookup(&mut self) {
    let Some(abort) = self.lookup.take() else {
      return;
    };
    abort.abort();
    if let Connection::Connecting { socket: None, .. } = self.connection {
      self.core.clear();
      self.connection = Connection::Idle;
    }
  }

  fn finish_if_closed(&mut self) {
    if (self.closed || self.orphaned) && !self.core.has_waiters() {
      self.shut_down();
    }
  }

  /// Closes the socket and the timers, and lets the transport go. Idempotent. Runs
  /// inside an event or a call, whose caller holds the driver: letting [`State::keep`]
  /// go here never frees it under its own borrow.
  fn shut_down(&mut self) {
    if self.shut_down {
      return;
    }
    self.close();
    self.abort_lookup();
    self.core.close();
    if !self.transport.is_empty() {
      let _ = self.call(Method::Shutdown, &[]);
    }
    self.release_transport();
    self.connection = Connection::Idle;
    self.shut_down = true;
    self.done.set();
    self.keep = None;
  }

  /// Shuts down where no JS may run (a finalizer, an env going away): the calls are
  /// dropped, the transport let go (`transport.js` closes its socket once it is
  /// collected). Returns [`State::keep`], to be dropped once the state is no longer
  /// borrowed.
  fn abandon(&mut self) -> Option<Rc<Driver>> {
    self.close();
    self.abort_lookup();
    self.core.clear();
    self.shut_down = true;
    self.done.set();
    self.release_transport();
    self.keep.take()
  }

  /// Deletes the references to the transport's functions and object, and the env
  /// cleanup hook.
  fn release_transport(&mut self) {
    self.waits = ptr::null_mut();
    for reference in std::mem::take(&mut self.transport) {
      unsafe { sys::napi_delete_reference(self.env, reference) };
    }
    if !self.cleanup_hook.is_null() {
      let hook = std::mem::replace(&mut self.cleanup_hook, ptr::null_mut());
      unsafe {
        sys::napi_remove_env_cleanup_hook(self.env, Some(on_env_cleanup), hook);
        drop(Weak::from_raw(hook as *const Driver));
      }
    }
  }
}

fn peer(target: &RedisTarget) -> Peer<'_> {
  Peer {
    display: &target.display,
    tls: target.tls.as_deref(),
  }
}

/// Encrypts `plain` for the socket when TLS is on (else the bytes as they are). Before
/// the TLS handshake is done, rustls keeps them and sends them after it.
fn seal(tls: Option<&mut ClientConnection>, plain: &[u8]) -> StoreResult<Vec<u8>> {
  let Some(tls) = tls else {
    return Ok(plain.to_vec());
  };
  let mut out = Vec::new();
  let mut rest = plain;
  // rustls holds at most 64 KiB of records: feed it in turns with the output.
  while !rest.is_empty() {
    let taken = tls.writer().write(rest).map_err(|e| lost(&e.to_string()))?;
    drain_tls(tls, &mut out);
    if taken == 0 && !tls.wants_write() {
      return Err(lost("the TLS session takes no more bytes"));
    }
    rest = &rest[taken..];
  }
  drain_tls(tls, &mut out);
  Ok(out)
}

/// Every TLS record the session has to send.
fn drain_tls(tls: &mut ClientConnection, out: &mut Vec<u8>) {
  while tls.wants_write() {
    if tls.write_tls(out).is_err() {
      break;
    }
  }
}

/// Socket bytes of a TLS session: their plaintext appended to `plain`.
fn open_tls(
  tls: &mut ClientConnection,
  mut bytes: &[u8],
  plain: &mut BytesMut,
) -> Result<(), RecordFailure> {
  while !bytes.is_empty() {
    tls
      .read_tls(&mut bytes)
      .map_err(|err| RecordFailure::Io(err.to_string()))?;
    take_plaintext(tls, plain)?;
  }
  Ok(())
}

fn login_tls_error(peer: Peer<'_>, err: &RecordFailure) -> StoreError {
  match (err, peer.tls) {
    (RecordFailure::Session(err), Some(tls)) => peer.tls_failed(&tls.explain(err)),
    (RecordFailure::Session(err), None) => peer.tls_failed(&err.to_string()),
    (RecordFailure::Closed, _) => peer.unavailable("the server closed the TLS session"),
    (RecordFailure::Io(detail), _) => peer.unavailable(detail),
  }
}

fn internal(detail: impl std::fmt::Display) -> StoreError {
  StoreError::new(ErrorCode::Internal, detail.to_string())
}

fn napi_failed(err: napi::Error) -> StoreError {
  internal(format!("the JS transport failed: {}", err.reason))
}

/// `factory(emit)`: the driver's transport (its functions, in [`Method`] order, then the
/// object), whose events reach `on_event` through `emit`, and its `shared` memory
/// ([`State::waits`]).
fn make_transport(
  env: sys::napi_env,
  factory: sys::napi_ref,
  driver: Weak<Driver>,
) -> napi::Result<(Vec<sys::napi_ref>, *mut i32)> {
  unsafe {
    let data = Box::into_raw(Box::new(driver));
    let mut emit = ptr::null_mut();
    let name = c"durastateRedisEvent";
    let status = sys::napi_create_function(
      env,
      name.as_ptr(),
      name.count_bytes() as isize,
      Some(emit_callback),
      data.cast(),
      &mut emit,
    );
    if let Err(err) = check(status) {
      drop(Box::from_raw(data));
      return Err(err);
    }
    check(sys::napi_add_finalizer(
      env,
      emit,
      data.cast(),
      Some(drop_driver_ref),
      ptr::null_mut(),
      ptr::null_mut(),
    ))?;
    let mut function = ptr::null_mut();
    check(sys::napi_get_reference_value(env, factory, &mut function))?;
    let mut global = ptr::null_mut();
    check(sys::napi_get_global(env, &mut global))?;
    let mut transport = ptr::null_mut();
    call_checked(env, global, function, &[emit], &mut transport)?;
    let mut methods = Vec::with_capacity(METHODS.len());
    for name in METHODS {
      let mut function = ptr::null_mut();
      check(sys::napi_get_named_property(
        env,
        transport,
        std::ffi::CString::new(name).expect("no NUL").as_ptr(),
        &mut function,
      ))?;
      let mut reference = ptr::null_mut();
      check(sys::napi_create_reference(env, function, 1, &mut reference))?;
      methods.push(reference);
    }
    let mut object = ptr::null_mut();
    check(sys::napi_create_reference(env, transport, 1, &mut object))?;
    methods.push(object);
    let mut shared = ptr::null_mut();
    check(sys::napi_get_named_property(
      env,
      transport,
      c"shared".as_ptr(),
      &mut shared,
    ))?;
    let mut data = ptr::null_mut();
    let mut length = 0;
    check(sys::napi_get_arraybuffer_info(
      env,
      shared,
      &mut data,
      &mut length,
    ))?;
    if data.is_null() || length < 4 || data.align_offset(4) != 0 {
      return Err(napi::Error::from_reason(
        "the transport's shared memory is unusable",
      ));
    }
    Ok((methods, data.cast::<i32>()))
  }
}

/// The env goes away (a worker thread ends): its calls are dropped (no JS can run to
/// settle them) and the driver let go, so the [`State::keep`] cycle does not outlive it.
unsafe extern "C" fn on_env_cleanup(hook: *mut c_void) {
  let weak = Weak::from_raw(hook as *const Driver);
  let Some(driver) = weak.upgrade() else {
    return;
  };
  let Ok(mut state) = driver.state.try_borrow_mut() else {
    // In use (cannot be, from a cleanup hook): the state keeps the hook to remove.
    std::mem::forget(weak);
    return;
  };
  state.cleanup_hook = ptr::null_mut();
  let keep = state.abandon();
  drop(state);
  drop(keep);
}

unsafe extern "C" fn drop_driver_ref(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
  drop(Box::from_raw(data.cast::<Weak<Driver>>()));
}

/// `emit(event, attempt, payload)`: an event of the transport (`event` as numbered in
/// `transport.js`'s `EVENT`); returns the bytes to write to the socket, if any (a
/// Buffer), else `undefined`.
unsafe extern "C" fn emit_callback(
  env: sys::napi_env,
  info: sys::napi_callback_info,
) -> sys::napi_value {
  let mut argc = 3;
  let mut argv = [ptr::null_mut(); 3];
  let mut data = ptr::null_mut();
  let status = sys::napi_get_cb_info(
    env,
    info,
    &mut argc,
    argv.as_mut_ptr(),
    ptr::null_mut(),
    &mut data,
  );
  if status != sys::Status::napi_ok || data.is_null() {
    return ptr::null_mut();
  }
  let Some(driver) = (*data.cast::<Weak<Driver>>()).upgrade() else {
    return ptr::null_mut();
  };
  let mut code = u32::MAX;
  sys::napi_get_value_uint32(env, argv[0], &mut code);
  let mut attempt = 0u32;
  sys::napi_get_value_uint32(env, argv[1], &mut attempt);
  let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
    let event = match code {
      1 => {
        let mut bytes = ptr::null_mut();
        let mut size = 0;
        if sys::napi_get_buffer_info(env, argv[2], &mut bytes, &mut size) != sys::Status::napi_ok {
          return Vec::new();
        }
        let slice = if size == 0 {
          &[][..]
        } else {
          std::slice::from_raw_parts(bytes.cast::<u8>(), size)
        };
        return driver.on_event(attempt, Event::Data(slice));
      }
      0 => Event::Connect,
      2 => Event::Error(string_of(env, argv[2])),
      3 => Event::Close,
      4 => Event::ConnectTimeout,
      5 => Event::Timer,
      6 => Event::Backoff,
      7 => Event::Write,
      _ => return Vec::new(),
    };
    driver.on_event(attempt, event)
  }));
  match outcome {
    Ok(out) if !out.is_empty() => js_buffer(env, &out).unwrap_or(ptr::null_mut()),
    Ok(_) => ptr::null_mut(),
    Err(_) => {
      eprintln!("durastate: internal error in the Redis socket driver (please report it)");
      ptr::null_mut()
    }
  }
}

unsafe fn string_of(env: sys::napi_env, value: sys::napi_value) -> String {
  let mut length = 0;
  if sys::napi_get_value_string_utf8(env, value, ptr::null_mut(), 0, &mut length)
    != sys::Status::napi_ok
  {
    return "socket error".to_string();
  }
  let mut bytes = vec![0u8; length + 1];
  sys::napi_get_value_string_utf8(
    env,
    value,
    bytes.as_mut_ptr().cast(),
    bytes.len(),
    &mut length,
  );
  bytes.truncate(length);
  String::from_utf8_lossy(&bytes).into_owned()
}

fn call_function(
  env: sys::napi_env,
  function: sys::napi_ref,
  args: &[sys::napi_value],
) -> napi::Result<()> {
  unsafe {
    let mut target = ptr::null_mut();
    check(sys::napi_get_reference_value(env, function, &mut target))?;
    let mut this = ptr::null_mut();
    check(sys::napi_get_undefined(env, &mut this))?;
    let mut result = ptr::null_mut();
    call_checked(env, this, target, args, &mut result)
  }
}

/// `napi_call_function`; a JS exception is taken (not left pending) and returned.
unsafe fn call_checked(
  env: sys::napi_env,
  this: sys::napi_value,
  function: sys::napi_value,
  args: &[sys::napi_value],
  result: &mut sys::napi_value,
) -> napi::Result<()> {
  let status = sys::napi_call_function(env, this, function, args.len(), args.as_ptr(), result);
  if status == sys::Status::napi_ok {
    return Ok(());
  }
  let mut pending = false;
  sys::napi_is_exception_pending(env, &mut pending);
  let mut message = format!("napi status {status}");
  if pending {
    let mut exception = ptr::null_mut();
    sys::napi_get_and_clear_last_exception(env, &mut exception);
    let mut text = ptr::null_mut();
    if sys::napi_coerce_to_string(env, exception, &mut text) == sys::Status::napi_ok {
      message = string_of(env, text);
    }
  }
  Err(napi::Error::from_reason(message))
}

fn js_string(env: sys::napi_env, text: &str) -> sys::napi_value {
  let mut value = ptr::null_mut();
  unsafe {
    sys::napi_create_string_utf8(env, text.as_ptr().cast(), text.len() as isize, &mut value)
  };
  value
}

fn js_number(env: sys::napi_env, number: f64) -> sys::napi_value {
  let mut value = ptr::null_mut();
  unsafe { sys::napi_create_double(env, number, &mut value) };
  value
}

fn js_buffer(env: sys::napi_env, bytes: &[u8]) -> napi::Result<sys::napi_value> {
  let mut value = ptr::null_mut();
  let mut data = ptr::null_mut();
  unsafe {
    check(sys::napi_create_buffer_copy(
      env,
      bytes.len(),
      bytes.as_ptr().cast(),
      &mut data,
      &mut value,
    ))?;
  }
  Ok(value)
}
