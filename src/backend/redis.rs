//! Redis on tokio threads: the driver for Bun, Deno, unix sockets, platforms without the
//! event-loop driver, and `DURASTATE_REDIS_DRIVER=threads`. One task per store owns the
//! connection (`connect.rs`: plain TCP, TLS, a unix socket; with Sentinel the master the
//! sentinels name) and the connection core every single-server driver shares
//! (`redis_core.rs`: the queue, reply matching, deadlines, requeue after a drop, the
//! retry budget and backoff). Calls come in over a channel; every call queued by the time
//! the task runs goes out in one write, and each call's continuation (`Step::Then`) is
//! queued by the task itself, so a call needs no task of its own. Calls settle through
//! the amortised completions (`completions.rs`): one wake-up of the JS thread settles
//! every call finished by then.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};

use super::connect::{open_stream, Stream};
use super::redis_core::{lost, Core};
use super::retry;
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
  /// One batch whose replies go back to [`RedisBackend::execute`].
  Batch {
    what: &'static str,
    reply: oneshot::Sender<StoreResult<Vec<Reply>>>,
  },
}

struct Submit {
  waiter: Waiter,
  batch: Batch,
}

/// What the task needs to connect.
struct Shared {
  target: RedisTarget,
  connect_timeout: Duration,
  command_timeout: Duration,
  retry: RetrySettings,
  events: Arc<ConnectionEvents>,
}

/// The channel to the store's task, started on first use.
struct Channel {
  sender: Option<mpsc::UnboundedSender<Submit>>,
  receiver: Option<mpsc::UnboundedReceiver<Submit>>,
}

/// A Redis server reached over one pipelined connection, driven by a tokio task.
pub struct RedisBackend {
  shared: Arc<Shared>,
  channel: Mutex<Channel>,
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
    let (sender, receiver) = mpsc::unbounded_channel();
    Self {
      shared: Arc::new(Shared {
        target,
        connect_timeout,
        command_timeout,
        retry,
        events: events.clone(),
      }),
      channel: Mutex::new(Channel {
        sender: Some(sender),
        receiver: Some(receiver),
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
    if let Err(Submit { waiter, .. }) = self.submit(Submit { waiter, batch }) {
      waiter.reject(StoreError::disposed());
    }
  }

  /// Runs one batch in one round trip (`MULTI`/`EXEC` when it is atomic).
  pub async fn execute(&self, what: &'static str, batch: Batch) -> StoreResult<Vec<Reply>> {
    let (reply, replies) = oneshot::channel();
    let waiter = Waiter::Batch { what, reply };
    if self.submit(Submit { waiter, batch }).is_err() {
      return Err(StoreError::disposed());
    }
    replies
      .await
      .unwrap_or_else(|_| Err(StoreError::disposed()))
  }

  fn submit(&self, submit: Submit) -> Result<(), Submit> {
    let mut channel = self.channel.lock().unwrap_or_else(|e| e.into_inner());
    let Some(sender) = &channel.sender else {
      return Err(submit);
    };
    sender.send(submit).map_err(|err| err.0)?;
    if let Some(receiver) = channel.receiver.take() {
      napi::bindgen_prelude::spawn(run(self.shared.clone(), receiver));
    }
    Ok(())
  }

  /// Takes no more calls; calls in flight finish, then the connection closes.
  pub fn close(&self) {
    let mut channel = self.channel.lock().unwrap_or_else(|e| e.into_inner());
    channel.sender = None;
    channel.receiver = None;
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
  Call(Option<Submit>),
  Opened(StoreResult<Stream>),
  BackoffOver,
  Read(std::io::Result<usize>),
  Wrote(std::io::Result<usize>),
  Deadline,
}

type Connecting = std::pin::Pin<Box<dyn std::future::Future<Output = StoreResult<Stream>> + Send>>;

/// The store's task: runs until the store is closed (or dropped) and no call waits.
async fn run(shared: Arc<Shared>, mut calls: mpsc::UnboundedReceiver<Submit>) {
  let mut core: Core<Waiter> = Core::new(shared.retry, shared.target.sentinel.is_some());
  let mut reader: Option<ReadHalf<Stream>> = None;
  let mut writer: Option<WriteHalf<Stream>> = None;
  let mut connecting: Option<Connecting> = None;
  let mut backoff: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
  // The bytes being written, and how many of them are out.
  let mut writing: Vec<u8> = Vec::new();
  let mut written = 0;
  let mut taking_calls = true;
  loop {
    if !taking_calls && !core.has_waiters() {
      return;
    }
    if reader.is_none() && connecting.is_none() && backoff.is_none() && core.has_waiters() {
      let shared = shared.clone();
      connecting = Some(Box::pin(async move {
        open_stream(&shared.target, shared.connect_timeout).await
      }));
    }
    if writer.is_some() && written == writing.len() && !core.unsent().is_empty() {
      writing = core.take_unsent(std::mem::take(&mut writing));
      written = 0;
    }
    let deadline = core.next_deadline();
    let received = core.received();
    received.reserve(64 * 1024);
    let event = tokio::select! {
      biased;
      call = calls.recv(), if taking_calls => Event::Call(call),
      read = async {
        match reader.as_mut() {
          Some(reader) => reader.read_buf(received).await,
          None => std::future::pending().await,
        }
      } => Event::Read(read),
      wrote = async {
        match writer.as_mut() {
          Some(writer) if written < writing.len() => writer.write(&writing[written..]).await,
          _ => std::future::pending().await,
        }
      } => Event::Wrote(wrote),
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
    let dropped = match event {
      Event::Call(Some(submit)) => {
        let deadline = Instant::now() + shared.command_timeout;
        core.push(submit.waiter, submit.batch, deadline);
        // Everything queued by now goes out in the same write.
        while let Ok(submit) = calls.try_recv() {
          core.push(submit.waiter, submit.batch, deadline);
        }
        None
      }
      Event::Call(None) => {
        taking_calls = false;
        core.close();
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
        core.connected();
        let (read_half, write_half) = tokio::io::split(stream);
        reader = Some(read_half);
        writer = Some(write_half);
        writing.clear();
        written = 0;
        None
      }
      Event::Opened(Err(err)) => {
        connecting = None;
        let (rejected, delay) = core.on_connect_failed(&err, retry::jitter());
        for waiter in rejected {
          waiter.reject(err.clone());
        }
        backoff = delay.map(|delay| Box::pin(tokio::time::sleep(delay)));
        None
      }
      Event::BackoffOver => {
        backoff = None;
        if !core.has_waiters() {
          core.clear();
        }
        None
      }
      Event::Read(Ok(0)) => Some(lost("the server closed the connection")),
      Event::Read(Err(err)) | Event::Wrote(Err(err)) => Some(lost(&err.to_string())),
      Event::Wrote(Ok(0)) => Some(lost("the server closed the connection")),
      Event::Wrote(Ok(n)) => {
        written += n;
        None
      }
      Event::Read(Ok(_)) => {
        let mut done = Vec::new();
        let read = core.take_replies(&mut done);
        for (waiter, replies) in done {
          next_step(&mut core, &shared, waiter, replies);
        }
        read.err()
      }
      Event::Deadline => {
        let ms = shared.command_timeout.as_millis() as u64;
        for waiter in core.expire(Instant::now()) {
          let err = StoreError::timeout(waiter.what(), ms);
          waiter.reject(err);
        }
        None
      }
    };
    if let Some(err) = dropped {
      if reader.is_some() {
        shared.events.dropped(&err);
      }
      reader = None;
      writer = None;
      writing.clear();
      written = 0;
      for waiter in core.on_drop(&err) {
        waiter.reject(err.clone());
      }
    }
  }
}

/// A call whose replies are in: settled, or its next batch queued.
fn next_step(
  core: &mut Core<Waiter>,
  shared: &Shared,
  waiter: Waiter,
  replies: StoreResult<Vec<Reply>>,
) {
  let (what, finish, completion) = match waiter {
    Waiter::Batch { reply, .. } => {
      let _ = reply.send(replies);
      return;
    }
    Waiter::Call {
      what,
      finish,
      completion,
    } => (what, finish, completion),
  };
  let replies = match replies {
    Ok(replies) => replies,
    Err(err) => return completion.settle(Err(err)),
  };
  match std::panic::catch_unwind(AssertUnwindSafe(|| finish(replies))) {
    Ok(Step::Done(result)) => completion.settle(result),
    Ok(Step::Then(batch, finish)) => {
      let waiter = Waiter::Call {
        what,
        finish,
        completion,
      };
      core.push(waiter, batch, Instant::now() + shared.command_timeout);
    }
    Err(panic) => completion.settle(Err(crate::guard::panic_error(what, panic))),
  }
}
