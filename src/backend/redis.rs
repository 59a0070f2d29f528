//! Redis on tokio threads: the driver for unix sockets, runtimes without `node:net` (the
//! socket driver's, `redis_js.rs`), `DURASTATE_REDIS_DRIVER=threads`, and each master of a
//! Redis Cluster (`cluster/` routes over one backend per master: [`RedisBackend::send`]). One task per store owns the
//! connection (`connect.rs`: plain TCP, TLS, a unix socket; with Sentinel the master the
//! sentinels name) and the connection core every single-server driver shares
//! (`redis_core.rs`: the queue, reply matching, deadlines, requeue after a drop, the
//! retry budget and backoff), which sits behind a mutex shared with the callers.
//!
//! A call is queued in the core by the thread that makes it (the JS thread). When the
//! connection is up over plain TCP or a unix socket, no bytes wait to go out and no other
//! call is in flight, that thread also writes the call's bytes to the socket itself, with
//! a non-blocking write: the call crosses no thread on its way out. Otherwise (a write
//! that would block, TLS, no connection yet, calls in flight) it wakes the task, which
//! writes every byte queued by then in one write. The caller never waits for the lock:
//! while the task holds it (reading replies), or calls already wait there, a call goes
//! to a channel the task empties into the core before anything else. Bytes go out in the order of the core's
//! queue either way. The task reads the replies, runs each call's continuation
//! (`Step::Then`, queued and written by the task itself), and does everything else:
//! connect, reconnect, deadlines. Calls settle through the amortised completions
//! (`completions.rs`): one wake-up of the JS thread settles every call finished by then.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, Notify};

use super::connect::{open_stream, Stream};
use super::redis_core::{lost, Core};
use super::retry;
use super::sentinel_watch::MasterWatch;
use crate::command::{Batch, Finish, Reply, Step};
use crate::completions::Completion;
use crate::engine::TokioCall;
use crate::error::{StoreError, StoreResult};
use crate::events::{ConnectionEvents, ServerInfo};
use crate::options::RetrySettings;
use crate::redis_target::RedisTarget;

/// What settles a call.
enum Waiter {
  /// A whole call from the engine: its continuation runs here, its promise settles
  /// through `completion`.
  Call {
    what: &'static str,
    finish: Finish,
    completion: Completion,
  },
  /// One batch whose replies go back to [`RedisBackend::execute`] or
  /// [`RedisBackend::send`]; `asking`: sent after `ASKING` (a cluster node's `ASK`).
  Batch {
    what: &'static str,
    reply: oneshot::Sender<StoreResult<Vec<Reply>>>,
    asking: bool,
  },
}

/// The write half of a socket both the task and a caller's thread may write to (they
/// take turns under the state's lock): plain TCP or a unix socket. TLS keeps its stream
/// in the task.
enum Socket {
  Tcp(tokio::net::tcp::OwnedWriteHalf),
  #[cfg(unix)]
  Unix(tokio::net::unix::OwnedWriteHalf),
}

impl Socket {
  fn try_write(&self, bytes: &[u8]) -> std::io::Result<usize> {
    match self {
      Socket::Tcp(s) => s.try_write(bytes),
      #[cfg(unix)]
      Socket::Unix(s) => s.try_write(bytes),
    }
  }

  async fn writable(&self) -> std::io::Result<()> {
    match self {
      Socket::Tcp(s) => s.writable().await,
      #[cfg(unix)]
      Socket::Unix(s) => s.writable().await,
    }
  }
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// The task's open connection.
enum Conn {
  /// Plain TCP or a unix socket, its write half shared with callers through
  /// [`State::direct`].
  Direct { reader: Reader, writer: Arc<Socket> },
  /// TLS: only the task writes, from its own buffer.
  Tls {
    reader: ReadHalf<Stream>,
    writer: WriteHalf<Stream>,
    /// The bytes being written, and how many of them are out.
    writing: Vec<u8>,
    written: usize,
  },
}

/// What callers and the task share, under one lock.
struct State {
  core: Core<Waiter>,
  /// The open connection's socket while a caller may write to it.
  direct: Option<Arc<Socket>>,
  /// Whether the task has a timer armed that fires no later than the deadline of a call
  /// queued now; when not, a caller that wrote its call itself wakes the task.
  watching: bool,
  taking_calls: bool,
  /// Calls made before `close` that still waited in the channel then: the task queues
  /// them (they finish), and rejects the ones sent after.
  accepted_after_close: usize,
  /// Calls made while the lock was busy, to be queued by the task; given to the task
  /// when it starts.
  calls: Option<mpsc::UnboundedReceiver<(Waiter, Batch)>>,
}

/// What the task needs, shared with the store.
struct Shared {
  target: RedisTarget,
  /// Sentinel: whether the sentinels name another master while connected.
  watch: Option<MasterWatch>,
  connect_timeout: Duration,
  command_timeout: Duration,
  events: Arc<ConnectionEvents>,
  state: Mutex<State>,
  /// Wakes the task: calls to write, a connection to open, the store closed.
  wake: Notify,
  /// How many calls wait in the channel: while any does, callers queue behind them there.
  queued: AtomicUsize,
}

impl Shared {
  fn lock(&self) -> MutexGuard<'_, State> {
    self.state.lock().unwrap_or_else(|e| e.into_inner())
  }
}

/// A Redis server reached over one pipelined connection, driven by a tokio task.
pub struct RedisBackend {
  shared: Arc<Shared>,
  /// Where a call goes when the lock is busy (the task is reading replies), so the JS
  /// thread never waits for it.
  calls: mpsc::UnboundedSender<(Waiter, Batch)>,
  pub events: Arc<ConnectionEvents>,
}

impl RedisBackend {
  /// A backend that connects to `target` on first use.
  pub fn new(
    target: RedisTarget,
    connect_timeout: Duration,
    command_timeout: Duration,
    retry: RetrySettings,
  ) -> Self {
    let events = ConnectionEvents::new(ServerInfo::redis(&target));
    let watch = MasterWatch::new(&target, connect_timeout);
    let mut core = Core::new(retry, target.sentinel.is_some());
    core.watch_master(watch.clone());
    let (calls, receiver) = mpsc::unbounded_channel();
    Self {
      calls,
      shared: Arc::new(Shared {
        target,
        watch,
        connect_timeout,
        command_timeout,
        events: events.clone(),
        state: Mutex::new(State {
          core,
          direct: None,
          watching: false,
          taking_calls: true,
          accepted_after_close: 0,
          calls: Some(receiver),
        }),
        wake: Notify::new(),
        queued: AtomicUsize::new(0),
      }),
      events,
    }
  }

  /// Runs a whole call (its batches and continuation) and settles its promise.
  pub fn start(&self, call: TokioCall) {
    let TokioCall {
      what,
      batch,
      finish,
      completion,
      ..
    } = call;
    let waiter = Waiter::Call {
      what,
      finish,
      completion,
    };
    if let Err(waiter) = self.submit(waiter, batch) {
      waiter.reject(StoreError::disposed());
    }
  }

  /// Runs one batch in one round trip (`MULTI`/`EXEC` when it is atomic).
  pub async fn execute(&self, what: &'static str, batch: Batch) -> StoreResult<Vec<Reply>> {
    let Ok(replies) = self.send(what, batch, false) else {
      return Err(StoreError::disposed());
    };
    replies
      .await
      .unwrap_or_else(|_| Err(StoreError::disposed()))
  }

  /// Queues one batch now, on the caller's thread (so batches sent one after the other
  /// go out in that order), after `ASKING` when `asking`; the receiver gets its replies.
  /// `Err` when the backend is closed.
  pub fn send(
    &self,
    what: &'static str,
    batch: Batch,
    asking: bool,
  ) -> Result<oneshot::Receiver<StoreResult<Vec<Reply>>>, ()> {
    let (reply, replies) = oneshot::channel();
    let waiter = Waiter::Batch {
      what,
      reply,
      asking,
    };
    self.submit(waiter, batch).map_err(|_| ())?;
    Ok(replies)
  }

  /// Queues a call; writes it at once when the socket is free (see the module's doc),
  /// else wakes the task to. When the task holds the lock, or calls already wait in the
  /// channel, the call joins them there (behind them, so calls keep their order).
  fn submit(&self, waiter: Waiter, batch: Batch) -> Result<(), Waiter> {
    let shared = &self.shared;
    if shared.queued.load(Ordering::Acquire) == 0 {
      let state = match shared.state.try_lock() {
        Ok(state) => Some(state),
        Err(TryLockError::Poisoned(err)) => Some(err.into_inner()),
        Err(TryLockError::WouldBlock) => None,
      };
      if let Some(state) = state {
        return self.submit_locked(state, waiter, batch);
      }
    }
    shared.queued.fetch_add(1, Ordering::AcqRel);
    if let Err(err) = self.calls.send((waiter, batch)) {
      shared.queued.fetch_sub(1, Ordering::AcqRel);
      return Err(err.0 .0);
    }
    Ok(())
  }

  fn submit_locked(
    &self,
    mut state: MutexGuard<'_, State>,
    waiter: Waiter,
    batch: Batch,
  ) -> Result<(), Waiter> {
    let shared = &self.shared;
    if !state.taking_calls {
      return Err(waiter);
    }
    // Written here only when nothing waits to go out (else this call's bytes would pass
    // them) and no call is in flight: under load the task writes the calls of one wake-up
    // in one write, which costs the caller's thread less than a write per call.
    let direct = state.direct.clone().filter(|_| {
      state.core.unsent().is_empty() && state.core.is_idle() && state.core.master_moved().is_none()
    });
    queue(
      &mut state.core,
      waiter,
      batch,
      Instant::now() + shared.command_timeout,
    );
    let wake = match direct {
      Some(socket) => {
        !matches!(state.core.write_unsent(|b| socket.try_write(b)), Ok(true)) || !state.watching
      }
      None => true,
    };
    let start = state.calls.take();
    drop(state);
    if let Some(calls) = start {
      crate::runtime::spawn_io(run_guarded(shared.clone(), calls));
    } else if wake {
      shared.wake.notify_one();
    }
    Ok(())
  }

  /// Takes no more calls; calls in flight finish, then the connection closes.
  pub fn close(&self) {
    let mut state = self.shared.lock();
    if !state.taking_calls {
      return;
    }
    state.taking_calls = false;
    state.accepted_after_close = self.shared.queued.load(Ordering::Acquire);
    // Its watch of the sentinels stops (the calls made before still finish).
    state.core.close();
    drop(state);
    self.shared.wake.notify_one();
  }
}

impl Drop for RedisBackend {
  fn drop(&mut self) {
    self.close();
  }
}

impl Waiter {
  fn what(&self) -> &'static str {
    match self {
      Waiter::Call { what, .. } | Waiter::Batch { what, .. } => what,
    }
  }

  fn reject(self, err: StoreError) {
    match self {
      Waiter::Call { completion, .. } => completion.settle(Err(err)),
      Waiter::Batch { reply, .. } => {
        let _ = reply.send(Err(err));
      }
    }
  }
}

/// Something the task waited for.
enum Event {
  Woken,
  Call(Option<(Waiter, Batch)>),
  Opened(StoreResult<Stream>),
  BackoffOver,
  Read(std::io::Result<usize>),
  Wrote(std::io::Result<usize>),
  Writable(std::io::Result<()>),
  Deadline,
}

type Connecting = std::pin::Pin<Box<dyn std::future::Future<Output = StoreResult<Stream>> + Send>>;

/// The store's task: runs until the store is closed (or dropped) and no call waits.
/// Runs the store's task. A panic in it (a bug) would leave every call it holds, and every
/// later call, waiting for an answer that never comes, and the process alive: instead, its
/// calls and those in the channel reject with `INTERNAL`, and the store takes no more
/// calls (they reject as if it were closed).
async fn run_guarded(shared: Arc<Shared>, mut calls: mpsc::UnboundedReceiver<(Waiter, Batch)>) {
  let outcome = AssertUnwindSafe(run(shared.clone(), &mut calls))
    .catch_unwind()
    .await;
  let Err(panic) = outcome else {
    return;
  };
  let err = crate::guard::panic_error("the Redis connection's task", panic);
  let abandoned = {
    let mut state = shared.lock();
    state.taking_calls = false;
    state.direct = None;
    state.core.abandon()
  };
  calls.close();
  while let Ok((waiter, _)) = calls.try_recv() {
    shared.queued.fetch_sub(1, Ordering::AcqRel);
    waiter.reject(err.clone());
  }
  for waiter in abandoned {
    waiter.reject(err.clone());
  }
}

async fn run(shared: Arc<Shared>, calls: &mut mpsc::UnboundedReceiver<(Waiter, Batch)>) {
  let mut conn: Option<Conn> = None;
  let mut connecting: Option<Connecting> = None;
  let mut backoff: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
  // Direct socket: bytes wait for it to take more.
  let mut blocked = false;
  // The timer fired with no call waiting: the next one is armed by a caller's wake-up.
  let mut rested = false;
  let mut received = BytesMut::new();
  let mut done = Vec::new();
  let mut channel_open = true;
  loop {
    crate::debug::redis_task_panic_point();
    let mut dropped = None;
    let deadline = {
      let mut state = shared.lock();
      take_calls(&shared, &mut state, calls, None);
      if !state.taking_calls && !state.core.has_waiters() {
        state.direct = None;
        // A call sent to the channel from now on is given back to its caller.
        calls.close();
        while let Ok((waiter, _)) = calls.try_recv() {
          shared.queued.fetch_sub(1, Ordering::AcqRel);
          waiter.reject(StoreError::disposed());
        }
        return;
      }
      if conn.is_none() && connecting.is_none() && backoff.is_none() && state.core.has_waiters() {
        let shared = shared.clone();
        connecting = Some(Box::pin(async move {
          open_stream(
            &shared.target,
            shared.connect_timeout,
            shared.watch.as_ref(),
          )
          .await
        }));
      }
      // Nothing more goes to a master the sentinels replaced: a new connection.
      let moved = conn.as_ref().and_then(|_| state.core.master_moved());
      match conn.as_mut() {
        _ if moved.is_some() => dropped = moved,
        Some(Conn::Direct { writer: socket, .. })
          if !blocked && !state.core.unsent().is_empty() =>
        {
          match state.core.write_unsent(|b| socket.try_write(b)) {
            Ok(all) => blocked = !all,
            Err(err) => dropped = Some(lost(&err.to_string())),
          }
        }
        Some(Conn::Tls {
          writing, written, ..
        }) if *written == writing.len() && !state.core.unsent().is_empty() => {
          *writing = state.core.take_unsent(std::mem::take(writing));
          *written = 0;
        }
        _ => {}
      }
      // While connected, a timer is always armed (at the latest one command timeout
      // away), so a call a caller writes itself is timed out without waking the task;
      // after a quiet timeout, it rests until a caller wakes it.
      let deadline = match state.core.next_deadline() {
        Some(deadline) => Some(deadline),
        None if conn.is_some() && !rested => Some(Instant::now() + shared.command_timeout),
        None => None,
      };
      state.watching = deadline.is_some();
      deadline
    };
    if let Some(err) = dropped {
      on_drop(&shared, &mut conn, &mut blocked, err);
      continue;
    }
    received.reserve(64 * 1024);
    let mut socket: Option<&Socket> = None;
    let mut direct_reader = None;
    let mut tls_reader = None;
    let mut tls_writer = None;
    match conn.as_mut() {
      Some(Conn::Direct { reader, writer }) => {
        direct_reader = Some(reader);
        socket = Some(&**writer);
      }
      Some(Conn::Tls {
        reader,
        writer,
        writing,
        written,
      }) => {
        tls_reader = Some(reader);
        if *written < writing.len() {
          tls_writer = Some((writer, &writing[*written..]));
        }
      }
      None => {}
    }
    let event = tokio::select! {
      biased;
      () = shared.wake.notified() => Event::Woken,
      call = calls.recv(), if channel_open => Event::Call(call),
      read = async {
        match (direct_reader, tls_reader) {
          (Some(reader), _) => reader.read_buf(&mut received).await,
          (None, Some(reader)) => reader.read_buf(&mut received).await,
          (None, None) => std::future::pending().await,
        }
      } => Event::Read(read),
      wrote = async {
        match tls_writer {
          Some((writer, bytes)) => writer.write(bytes).await,
          None => std::future::pending().await,
        }
      } => Event::Wrote(wrote),
      writable = async {
        match socket {
          Some(socket) if blocked => socket.writable().await,
          _ => std::future::pending().await,
        }
      } => Event::Writable(writable),
      opened = async {
        match connecting.as_mut() {
          Some(connecting) => connecting.await,
          None => std::future::pending().await,
        }
      } => Event::Opened(opened),
      () = async {
        match backoff.as_mut() {
          Some(sleep) => sleep.await,
          None => std::future::pending().await,
        }
      } => Event::BackoffOver,
      () = async {
        match deadline {
          Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
          None => std::future::pending().await,
        }
      } => Event::Deadline,
    };
    if !matches!(event, Event::Deadline) {
      rested = false;
    }
    let dropped = match event {
      Event::Woken => None,
      Event::Call(None) => {
        channel_open = false;
        None
      }
      Event::Call(Some(call)) => {
        let mut state = shared.lock();
        take_calls(&shared, &mut state, calls, Some(call));
        None
      }
      Event::Opened(Ok(stream)) => {
        connecting = None;
        // A Sentinel store's server is the master the sentinels named: the socket's peer.
        let server = shared.events.server();
        let address = match (&server.server_address, stream.peer()) {
          (None, Some(peer)) => peer.to_string(),
          _ => server.address(),
        };
        shared.events.connected(address);
        let mut state = shared.lock();
        state.core.connected();
        received.clear();
        blocked = false;
        let opened = match stream {
          Stream::Plain(stream) => {
            let (reader, writer) = stream.into_split();
            Conn::Direct {
              reader: Box::new(reader),
              writer: Arc::new(Socket::Tcp(writer)),
            }
          }
          #[cfg(unix)]
          Stream::Unix(stream) => {
            let (reader, writer) = stream.into_split();
            Conn::Direct {
              reader: Box::new(reader),
              writer: Arc::new(Socket::Unix(writer)),
            }
          }
          stream => {
            let (reader, writer) = tokio::io::split(stream);
            Conn::Tls {
              reader,
              writer,
              writing: Vec::new(),
              written: 0,
            }
          }
        };
        if let Conn::Direct { writer, .. } = &opened {
          state.direct = Some(writer.clone());
        }
        conn = Some(opened);
        None
      }
      Event::Opened(Err(err)) => {
        connecting = None;
        let (rejected, delay) = shared.lock().core.on_connect_failed(&err, retry::jitter());
        for waiter in rejected {
          waiter.reject(err.clone());
        }
        backoff = delay.map(|delay| Box::pin(tokio::time::sleep(delay)));
        None
      }
      Event::BackoffOver => {
        backoff = None;
        let mut state = shared.lock();
        if !state.core.has_waiters() {
          state.core.clear();
        }
        None
      }
      Event::Read(Ok(0)) => Some(lost("the server closed the connection")),
      Event::Read(Err(err)) | Event::Wrote(Err(err)) | Event::Writable(Err(err)) => {
        Some(lost(&err.to_string()))
      }
      Event::Wrote(Ok(0)) => Some(lost("the server closed the connection")),
      Event::Wrote(Ok(n)) => {
        if let Some(Conn::Tls { written, .. }) = conn.as_mut() {
          *written += n;
        }
        None
      }
      Event::Writable(Ok(())) => {
        blocked = false;
        None
      }
      Event::Read(Ok(_)) => {
        let read = {
          let mut state = shared.lock();
          // Bytes, a whole reply or not: the server is not hung.
          state.core.heard(Instant::now());
          let core_received = state.core.received();
          if core_received.is_empty() && received.len() > 64 * 1024 {
            // A large value: handed over, not copied.
            std::mem::swap(core_received, &mut received);
          } else {
            core_received.extend_from_slice(&received);
            received.clear();
          }
          state.core.take_replies(&mut done)
        };
        // Continuations run without the lock, so callers are not held up by them.
        let next: Vec<(Waiter, Batch)> = done
          .drain(..)
          .filter_map(|(waiter, replies)| next_step(waiter, replies))
          .collect();
        if !next.is_empty() {
          let mut state = shared.lock();
          let deadline = Instant::now() + shared.command_timeout;
          for (waiter, batch) in next {
            queue(&mut state.core, waiter, batch, deadline);
          }
        }
        read.err()
      }
      Event::Deadline => {
        let ms = shared.command_timeout.as_millis() as u64;
        let (expired, stuck) = {
          let mut state = shared.lock();
          let now = Instant::now();
          let expired = state.core.expire(now);
          rested = expired.is_empty() && state.core.next_deadline().is_none();
          // Judged when calls time out, as on the other drivers: the timer that is always
          // armed while connected is no time out of a call.
          let stuck = !expired.is_empty() && state.core.is_stuck(now, shared.command_timeout);
          (expired, conn.is_some() && stuck)
        };
        for waiter in expired {
          let err = StoreError::timeout(waiter.what(), ms);
          waiter.reject(err);
        }
        // A server that stopped answering on a connection that stays open: a new one.
        stuck.then(|| super::redis_core::stuck(shared.command_timeout))
      }
    };
    if let Some(err) = dropped {
      on_drop(&shared, &mut conn, &mut blocked, err);
    }
  }
}

/// Queues the calls that wait in the channel (`first`, received already, then the rest),
/// in order, before any call made after them; rejects them when the store is closed.
fn take_calls(
  shared: &Shared,
  state: &mut State,
  calls: &mut mpsc::UnboundedReceiver<(Waiter, Batch)>,
  first: Option<(Waiter, Batch)>,
) {
  let mut next = first;
  if next.is_none() && shared.queued.load(Ordering::Acquire) == 0 {
    return;
  }
  let deadline = Instant::now() + shared.command_timeout;
  loop {
    let Some((waiter, batch)) = next.take().or_else(|| calls.try_recv().ok()) else {
      return;
    };
    if state.taking_calls {
      queue(&mut state.core, waiter, batch, deadline);
    } else if state.accepted_after_close > 0 {
      state.accepted_after_close -= 1;
      queue(&mut state.core, waiter, batch, deadline);
    } else {
      waiter.reject(StoreError::disposed());
    }
    shared.queued.fetch_sub(1, Ordering::AcqRel);
  }
}

/// Queues a call in the core (after `ASKING` when its waiter asks for it).
fn queue(core: &mut Core<Waiter>, waiter: Waiter, batch: Batch, deadline: Instant) {
  let asking = matches!(waiter, Waiter::Batch { asking: true, .. });
  core.push_asking(waiter, batch, deadline, asking);
}

/// The connection dropped: callers stop writing to it, and the core requeues or rejects
/// its calls.
fn on_drop(shared: &Shared, conn: &mut Option<Conn>, blocked: &mut bool, err: StoreError) {
  if conn.is_some() {
    shared.events.dropped(&err);
  }
  *conn = None;
  *blocked = false;
  let rejected = {
    let mut state = shared.lock();
    state.direct = None;
    state.core.on_drop(&err)
  };
  for waiter in rejected {
    waiter.reject(err.clone());
  }
}

/// A call whose replies are in: settled, or its next batch returned to be queued.
fn next_step(waiter: Waiter, replies: StoreResult<Vec<Reply>>) -> Option<(Waiter, Batch)> {
  let (what, finish, completion) = match waiter {
    Waiter::Batch { reply, .. } => {
      let _ = reply.send(replies);
      return None;
    }
    Waiter::Call {
      what,
      finish,
      completion,
    } => (what, finish, completion),
  };
  let replies = match replies {
    Ok(replies) => replies,
    Err(err) => {
      completion.settle(Err(err));
      return None;
    }
  };
  match std::panic::catch_unwind(AssertUnwindSafe(|| finish(replies))) {
    Ok(Step::Done(result)) => completion.settle(result),
    Ok(Step::Then(batch, finish)) => {
      let waiter = Waiter::Call {
        what,
        finish,
        completion,
      };
      return Some((waiter, batch));
    }
    Err(panic) => completion.settle(Err(crate::guard::panic_error(what, panic))),
  }
  None
}
