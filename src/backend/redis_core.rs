//! The connection core every Redis path runs on (the event-loop driver, `redis_loop.rs`,
//! the socket driver of Bun and Deno, `redis_js.rs`, and the tokio threads driver,
//! `redis.rs`, which a Redis Cluster runs once per master):
//! the queue of calls waiting for replies, the bytes still to write, reply matching,
//! deadlines, what happens to each call when the connection drops or a reconnect fails,
//! and the backoff between reconnects. A cluster's redirect errors (`MOVED`, `ASK`,
//! `TRYAGAIN`, `CLUSTERDOWN`) come back with the server's words (an aborted transaction
//! gives its queued command's error), and a batch may go after `ASKING`. Sans-IO: a driver hands it bytes it read and events it saw (a drop, a
//! failed connect, the time), writes the bytes it asks for, and settles the waiters it
//! gives back. So it is unit-tested without a server (`tests` below: a scripted
//! transport).
//!
//! A call is one batch (`MULTI`/`EXEC` when atomic). Replies come in the order calls
//! were written, so the call at the front of the queue takes the next reply. A call whose
//! deadline passed gives its waiter back at once (to be rejected `TIMEOUT`) but keeps its
//! place, so its replies, if they come, are skipped. Every call of a driver gets the same
//! timeout, so deadlines are in queue order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use redis::Value;

use super::redis_codec::{decode, fits, kind, misfit, pack, server_error};
use super::resp::ReplyDecoder;
use super::retry;
use super::sentinel_watch::MasterWatch;
use crate::command::{Batch, Command, Reply};
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::options::RetrySettings;

/// A call's replies, decoded for its commands, or why it failed.
pub type Outcome<W> = (W, StoreResult<Vec<Reply>>);

struct Call<W> {
  /// `None` once the call timed out: its replies are skipped.
  waiter: Option<W>,
  commands: Vec<Command>,
  atomic: bool,
  /// Sent after `ASKING` (a Redis Cluster's `ASK` redirect), whose reply is skipped.
  asking: bool,
  /// Replies its batch gets (`MULTI` and `EXEC` count).
  expected: usize,
  replies: Vec<Value>,
  deadline: Instant,
  /// How many more times its batch may be sent again (none when the batch is declared
  /// `Resend::Never`: its first attempt may have landed).
  retries_left: u32,
  /// Whether it is waiting to be sent again after a dropped connection.
  recovering: bool,
}

/// One connection's calls and bytes; `W` is what a driver settles a call through.
pub struct Core<W> {
  retry: RetrySettings,
  /// Sentinel: a `READONLY` reply means the server was demoted (drop and reconnect), and
  /// a call made while no master answers waits for one.
  follow_failover: bool,
  pending: VecDeque<Call<W>>,
  unsent: Vec<u8>,
  received: BytesMut,
  codec: ReplyDecoder,
  /// Connect attempts that failed in a row while calls waited.
  failures: u32,
  /// When a byte last came from the server on this connection (or it opened): with the
  /// time the oldest unanswered call was made, what [`Core::is_stuck`] measures silence
  /// from.
  heard_at: Option<Instant>,
  /// How late past its deadline the last call [`Core::expire`] gave up was: a timer
  /// that fires late means the JS thread was busy (its event loop blocked), so replies
  /// may wait unread in the socket; [`Core::is_stuck`] does not judge then.
  expired_late: Duration,
  /// Sentinel: the watch that says when the sentinels name another master than the one
  /// connected to ([`Core::master_moved`]); stopped when the core closes or is dropped.
  watch: Option<MasterWatch>,
}

/// How many `commandTimeout`s the oldest unanswered call may wait, with not a byte from
/// the server since it was made, before the connection is abandoned for a new one (checked
/// when a call times out): a server that is hung (`SIGSTOP`, a deadlock) or a path to it
/// that is half-open (a proxy or load balancer whose far side is gone) still acknowledges
/// TCP, so the connection would never drop by itself, and every call would time out on it
/// even after the server (or a replacement at the same address) answers again. Measured in
/// time, not in calls: calls made together that time out together count once, and a
/// server that pauses for less (a fork for `BGSAVE`, an fsync stall, a slow script) or
/// sends a large reply slowly keeps its connection.
pub const STUCK_AFTER: u32 = 3;

impl<W> Core<W> {
  pub fn new(retry: RetrySettings, follow_failover: bool) -> Self {
    Self {
      retry,
      follow_failover,
      pending: VecDeque::new(),
      unsent: Vec::new(),
      received: BytesMut::new(),
      codec: ReplyDecoder::default(),
      failures: 0,
      heard_at: None,
      expired_late: Duration::ZERO,
      watch: None,
    }
  }

  /// Sentinel: drops the connection once `watch` says the sentinels name another master.
  pub fn watch_master(&mut self, watch: Option<MasterWatch>) {
    self.watch = watch;
  }

  /// Sentinel: `Some` (the error to drop the connection with) when the sentinels name
  /// another master than the one connected to. A driver checks before it writes to an
  /// open connection and [`Core::take_replies`] when replies come, so nothing more is
  /// written to, or acknowledged by, an old master that may lose it: the connection is
  /// dropped as on a `READONLY` reply (calls safe to resend go to the new master, the
  /// others reject `UNAVAILABLE`).
  pub fn master_moved(&self) -> Option<StoreError> {
    let watch = self.watch.as_ref()?;
    watch.moved().then(|| watch.moved_error())
  }

  /// Queues a call: its bytes go out with the next write.
  pub fn push(&mut self, waiter: W, batch: Batch, deadline: Instant) {
    self.push_asking(waiter, batch, deadline, false)
  }

  /// [`Core::push`], the batch after `ASKING` when `asking` (a cluster node's `ASK`).
  pub fn push_asking(&mut self, waiter: W, batch: Batch, deadline: Instant, asking: bool) {
    let expected = batch.commands.len() + if batch.atomic { 2 } else { 0 } + usize::from(asking);
    let retries_left = if batch.may_resend() {
      self.retry.attempts
    } else {
      0
    };
    pack(&batch.commands, batch.atomic, asking, &mut self.unsent);
    self.pending.push_back(Call {
      waiter: Some(waiter),
      commands: batch.commands,
      atomic: batch.atomic,
      asking,
      expected,
      replies: Vec::with_capacity(expected),
      deadline,
      retries_left,
      recovering: false,
    });
  }

  /// The bytes to write (a driver removes what it wrote).
  pub fn unsent(&mut self) -> &mut Vec<u8> {
    &mut self.unsent
  }

  /// Writes the bytes waiting to go out through `write` (a non-blocking write that takes
  /// what the socket accepts now) until all are out (`Ok(true)`) or it would block
  /// (`Ok(false)`: the rest stays, in order, for the next write). Bytes written are
  /// removed. An error means the connection is unusable; what was not written stays.
  pub fn write_unsent(
    &mut self,
    mut write: impl FnMut(&[u8]) -> std::io::Result<usize>,
  ) -> std::io::Result<bool> {
    let mut written = 0;
    let result = loop {
      if written == self.unsent.len() {
        break Ok(true);
      }
      match write(&self.unsent[written..]) {
        Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
        Ok(n) => written += n,
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break Ok(false),
        Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
        Err(err) => break Err(err),
      }
    };
    if written == self.unsent.len() {
      self.unsent.clear();
    } else {
      self.unsent.drain(..written);
    }
    result
  }

  /// Takes every byte to write, leaving `spare` (emptied) in its place.
  pub fn take_unsent(&mut self, spare: Vec<u8>) -> Vec<u8> {
    let mut spare = spare;
    spare.clear();
    std::mem::replace(&mut self.unsent, spare)
  }

  /// Bytes came from the server at `now` (a whole reply or not, TLS records included):
  /// it is not hung, whatever the calls still waiting ([`Core::is_stuck`]). A driver says
  /// so whenever a read gives bytes.
  pub fn heard(&mut self, now: Instant) {
    self.heard_at = Some(now);
  }

  /// Where a driver may read reply bytes into directly.
  pub fn received(&mut self) -> &mut BytesMut {
    &mut self.received
  }

  /// Reply bytes read from the connection.
  #[cfg(test)]
  pub fn receive(&mut self, bytes: &[u8]) {
    self.received.extend_from_slice(bytes);
  }

  /// Matches every whole reply received so far to its call; calls whose replies are all
  /// in are appended to `done`. An error means the connection is unusable (an unreadable
  /// reply, a reply no call asked for, `READONLY` when following a failover): the driver
  /// drops it ([`Core::on_drop`]); `done` keeps the calls completed before it.
  pub fn take_replies(&mut self, done: &mut Vec<Outcome<W>>) -> StoreResult<()> {
    if let Some(err) = self.master_moved() {
      return Err(err);
    }
    loop {
      let value = self
        .codec
        .decode(&mut self.received)
        .map_err(|err| lost(&format!("unreadable reply: {err}")))?;
      let Some(value) = value else {
        return Ok(());
      };
      // A RESP3 push frame (a pub/sub message, a client-tracking invalidation) is out of
      // band: it answers no call, and taken as one it would shift every later answer
      // onto the call after its own.
      if matches!(value, Value::Push { .. }) {
        continue;
      }
      if self.follow_failover && is_readonly(&value) {
        return Err(lost(
          "the server answered READONLY: it is a replica now (failover); reconnecting to the master",
        ));
      }
      let Some(front) = self.pending.front_mut() else {
        return Err(lost("a reply came that no call asked for"));
      };
      front.replies.push(value);
      if front.replies.len() == front.expected {
        // A reply its command cannot give (an integer to a GET, an EXEC or MGET array of
        // another length): the stream is out of step or not Redis's, so no later reply
        // can be trusted either. The connection drops as on an unreadable reply.
        if let Some(misfit) = front.misfit() {
          return Err(lost(&format!(
            "a reply that its command cannot give ({misfit}); the connection is dropped"
          )));
        }
        let call = self.pending.pop_front().expect("front exists");
        if let Some(outcome) = call.complete() {
          done.push(outcome);
        }
      }
    }
  }

  /// A new connection is open: replies start afresh, and so does the backoff. Nothing is
  /// written on it yet (every queued call's bytes wait in `unsent`): calls that timed out
  /// meanwhile are dropped rather than sent, since they rejected `TIMEOUT` unsent and
  /// must not land afterwards.
  pub fn connected(&mut self) {
    self.failures = 0;
    self.heard_at = Some(Instant::now());
    self.received.clear();
    self.codec = ReplyDecoder::default();
    if self.pending.iter().any(|call| call.waiter.is_none()) {
      self.pending.retain(|call| call.waiter.is_some());
      self.unsent.clear();
      for call in &self.pending {
        pack(&call.commands, call.atomic, call.asking, &mut self.unsent);
      }
    }
  }

  /// The connection dropped with `err`: calls with retries left are kept for a new
  /// connection (their bytes packed again, in order) and spend one; the others are given
  /// back, to be rejected with `err`.
  pub fn on_drop(&mut self, _err: &StoreError) -> Vec<W> {
    let rejected = self.requeue_or_reject(|_| true);
    if self.pending.is_empty() {
      self.unwatch();
    }
    rejected
  }

  /// No connection, and no call waits for one: the sentinels' watch rests until the next.
  fn unwatch(&self) {
    if let Some(watch) = &self.watch {
      watch.disconnected();
    }
  }

  /// A connect attempt failed with `err`: calls sent again after a drop, with retries
  /// left, wait for the next attempt; the rest (calls that never had a connection) are
  /// given back to be rejected, and so is everything when the error is not transient
  /// (`AUTH` and TLS are never retried). With Sentinel every call waits: a master that
  /// cannot be reached is being replaced. Returns the rejected waiters and, when calls
  /// still wait, the backoff before the next attempt (`random` in [0, 1] is its jitter).
  pub fn on_connect_failed(&mut self, err: &StoreError, random: f64) -> (Vec<W>, Option<Duration>) {
    let transient = retry::classify(err).may_retry();
    let follow_failover = self.follow_failover;
    let rejected = self.requeue_or_reject(|call| transient && (call.recovering || follow_failover));
    if self.pending.is_empty() {
      self.unwatch();
      return (rejected, None);
    }
    self.failures += 1;
    let delay = retry::backoff(&self.retry, self.failures, random);
    (rejected, Some(delay))
  }

  fn requeue_or_reject(&mut self, eligible: impl Fn(&Call<W>) -> bool) -> Vec<W> {
    self.heard_at = None;
    self.unsent.clear();
    self.received.clear();
    self.codec = ReplyDecoder::default();
    let mut rejected = Vec::new();
    let mut kept = VecDeque::new();
    for mut call in std::mem::take(&mut self.pending) {
      let Some(waiter) = call.waiter.take() else {
        continue;
      };
      if eligible(&call) && call.retries_left > 0 {
        call.retries_left -= 1;
        call.recovering = true;
        call.replies.clear();
        call.waiter = Some(waiter);
        pack(&call.commands, call.atomic, call.asking, &mut self.unsent);
        kept.push_back(call);
      } else {
        rejected.push(waiter);
      }
    }
    self.pending = kept;
    rejected
  }

  /// The waiters of the calls whose deadline is `now` or past, to be rejected `TIMEOUT`.
  /// Their replies, if they come, are skipped.
  pub fn expire(&mut self, now: Instant) -> Vec<W> {
    let mut late = None;
    let expired = self
      .pending
      .iter_mut()
      .take_while(|call| call.deadline <= now)
      .filter_map(|call| {
        let waiter = call.waiter.take()?;
        late.get_or_insert(now.saturating_duration_since(call.deadline));
        Some(waiter)
      })
      .collect();
    if let Some(late) = late {
      self.expired_late = late;
    }
    expired
  }

  /// Whether, at `now`, the oldest call still unanswered (timed out or not) has waited
  /// [`STUCK_AFTER`] × `timeout` (`commandTimeout`, which every call's deadline is from
  /// its making) with not a byte from the server since it was made ([`Core::heard`]) or
  /// the connection opened: a driver checks when calls time out and, with an open
  /// connection, drops it ([`stuck`]) and connects again, as for a lost connection
  /// (calls that may be sent again are, on the new one). So calls that time out together
  /// count once, and bytes of a reply still coming keep the connection.
  pub fn is_stuck(&self, now: Instant, timeout: Duration) -> bool {
    let Some(oldest) = self.pending.front() else {
      return false;
    };
    // The timer came late (the event loop was blocked): bytes may be waiting unread.
    // The next timeout, on time once the loop has read them, judges.
    if self.expired_late > (timeout / 2).max(Duration::from_millis(50)) {
      return false;
    }
    let made = oldest
      .deadline
      .checked_sub(timeout)
      .unwrap_or(oldest.deadline);
    let silent_since = self.heard_at.map_or(made, |heard| heard.max(made));
    now.saturating_duration_since(silent_since) >= timeout * STUCK_AFTER
  }

  /// When the next call still waiting times out.
  pub fn next_deadline(&self) -> Option<Instant> {
    self
      .pending
      .iter()
      .find(|call| call.waiter.is_some())
      .map(|call| call.deadline)
  }

  /// Whether any call still waits to be settled.
  pub fn has_waiters(&self) -> bool {
    self.pending.iter().any(|call| call.waiter.is_some())
  }

  /// Whether calls are queued (timed-out ones whose replies are due included).
  pub fn is_idle(&self) -> bool {
    self.pending.is_empty()
  }

  /// How many calls are queued (timed-out ones whose replies are due included).
  pub fn len(&self) -> usize {
    self.pending.len()
  }

  /// Forgets every call (their waiters are dropped) and every byte; drivers do when they
  /// have no connection (a connect given up, a backoff no call waits for any more).
  pub fn clear(&mut self) {
    self.pending.clear();
    self.unsent.clear();
    self.unwatch();
  }

  /// Gives up on every call (the driver cannot go on): returns their waiters, to be
  /// rejected; nothing is sent again.
  pub fn abandon(&mut self) -> Vec<W> {
    self.close();
    self.unsent.clear();
    self.received.clear();
    self.codec = ReplyDecoder::default();
    std::mem::take(&mut self.pending)
      .into_iter()
      .filter_map(|mut call| call.waiter.take())
      .collect()
  }

  /// The store is closed: its watch of the sentinels stops. The calls made before finish
  /// (sent again after a drop, as any call).
  pub fn close(&mut self) {
    if let Some(watch) = &self.watch {
      watch.stop();
    }
  }
}

impl<W> Drop for Core<W> {
  /// A store collected without `close()`: its watch stops too.
  fn drop(&mut self) {
    if let Some(watch) = &self.watch {
      watch.stop();
    }
  }
}

impl<W> Call<W> {
  /// What does not fit in the call's replies (all in): a reply of a type or length its
  /// command never gives, or an `EXEC` array of another length than the commands.
  fn misfit(&self) -> Option<String> {
    let skip = usize::from(self.asking);
    let misfit_of = |values: &mut dyn Iterator<Item = &Value>| {
      values
        .zip(&self.commands)
        .find(|(value, command)| !fits(value, command))
        .map(|(value, command)| misfit(value, command))
    };
    if !self.atomic {
      return misfit_of(&mut self.replies.iter().skip(skip));
    }
    match self.replies.last() {
      Some(Value::Array(items)) if items.len() != self.commands.len() => Some(format!(
        "EXEC answered {} replies for {} commands",
        items.len(),
        self.commands.len()
      )),
      Some(Value::Array(items)) => misfit_of(&mut items.iter()),
      Some(Value::ServerError(_)) => None,
      Some(other) => Some(format!("EXEC answered {}", kind(other))),
      None => Some("no EXEC reply".to_string()),
    }
  }

  /// The call's outcome once its replies are all in; `None` if it already timed out.
  fn complete(self) -> Option<Outcome<W>> {
    let waiter = self.waiter?;
    let mut replies = self.replies;
    if self.asking {
      if let Value::ServerError(err) = replies.remove(0) {
        return Some((waiter, Err(server_error(err))));
      }
    }
    let values = if self.atomic {
      match replies.pop() {
        Some(Value::Array(items)) => Ok(items),
        Some(Value::ServerError(err)) => {
          // A transaction the server aborted (`EXECABORT`) says why through the error
          // a queued command got (on a cluster, `MOVED` or `ASK`): that one is given.
          let queued = replies.into_iter().skip(1).find_map(|value| match value {
            Value::ServerError(queued) => Some(queued),
            _ => None,
          });
          Err(server_error(queued.unwrap_or(err)))
        }
        other => Err(lost(&format!("unexpected EXEC reply: {other:?}"))),
      }
    } else {
      Ok(replies)
    };
    let replies = values.and_then(|values| {
      values
        .into_iter()
        .zip(&self.commands)
        .map(|(value, command)| decode(value, command))
        .collect()
    });
    Some((waiter, replies))
  }
}

/// A `READONLY` error: a write reached a replica.
fn is_readonly(value: &Value) -> bool {
  matches!(value, Value::ServerError(err) if err.code() == "READONLY")
}

/// A TLS session that failed on an open connection: `TLS` when the session itself did,
/// else a dropped connection.
pub fn tls_lost(err: crate::tls::RecordFailure) -> StoreError {
  use crate::tls::RecordFailure;
  match err {
    RecordFailure::Session(err) => {
      StoreError::new(ErrorCode::Tls, format!("TLS session failed: {err}"))
    }
    RecordFailure::Closed => lost("the server closed the TLS session"),
    RecordFailure::Io(err) => lost(&err),
  }
}

/// The error a connection is abandoned with when [`Core::is_stuck`]: `timeout` is
/// `commandTimeout`.
pub fn stuck(timeout: Duration) -> StoreError {
  lost(&format!(
    "a call got no reply, and not a byte came from the server, for {STUCK_AFTER} × \
     commandTimeout ({} ms) while calls timed out: the server may be hung, or the path to it \
     half-open; the connection is abandoned for a new one",
    timeout.as_millis()
  ))
}

/// A dropped connection: calls may be sent again on a new one.
pub fn lost(detail: &str) -> StoreError {
  StoreError {
    may_have_run: true,
    ..StoreError::new(
      ErrorCode::Unavailable,
      format!("connection to Redis lost: {detail}"),
    )
  }
}

#[cfg(test)]
mod tests;
