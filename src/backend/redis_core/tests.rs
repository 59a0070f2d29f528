//! The core driven by a scripted transport: the test plays the server (it reads what
//! the core would write and answers in RESP), the connection (drops, refused or
//! refused-credential reconnects) and the clock.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use redis::Value;

use super::*;
use crate::command::{Batch, Command, Reply};
use crate::error::{ErrorCode, StoreError};
use crate::options::RetrySettings;

fn settings(attempts: u32) -> RetrySettings {
  RetrySettings {
    attempts,
    min_delay: Duration::from_millis(50),
    max_delay: Duration::from_millis(2_000),
  }
}

fn get(key: &str) -> Batch {
  Batch::one(Command::Get { key: key.into() })
}

fn set(key: &str, value: &str) -> Batch {
  Batch::one(Command::Set {
    key: key.into(),
    value: value.into(),
    ttl_ms: None,
  })
}

/// A batch that must not be sent twice (a KV delete answers from the count it removed).
fn unlink(key: &str) -> Batch {
  Batch::one(Command::Unlink {
    keys: vec![key.into()],
  })
  .never_resend()
}

/// The claim's shape: atomic, and never sent twice.
fn claim(key: &str) -> Batch {
  Batch::atomic(vec![
    Command::HSetNx {
      key: key.into(),
      field: "claim".into(),
      value: "me".into(),
    },
    Command::PExpire {
      key: key.into(),
      ttl_ms: 1_000,
    },
  ])
  .never_resend()
}

fn unavailable() -> StoreError {
  StoreError::new(ErrorCode::Unavailable, "connection to Redis lost: reset")
}

/// The core and the commands the "server" got so far.
struct Script {
  core: Core<&'static str>,
  t0: Instant,
}

impl Script {
  fn new(attempts: u32, follow_failover: bool) -> Self {
    Self {
      core: Core::new(settings(attempts), follow_failover),
      t0: Instant::now(),
    }
  }

  fn call(&mut self, name: &'static str, batch: Batch) {
    let deadline = self.t0 + Duration::from_secs(5);
    self.core.push(name, batch, deadline);
  }

  fn call_by(&mut self, name: &'static str, batch: Batch, ms: u64) {
    self
      .core
      .push(name, batch, self.t0 + Duration::from_millis(ms));
  }

  /// What the core writes now, as the commands the server reads ("GET a", ...).
  fn written(&mut self) -> Vec<String> {
    let mut bytes = BytesMut::from(&self.core.take_unsent(Vec::new())[..]);
    let mut decoder = crate::backend::resp::ReplyDecoder::default();
    let mut commands = Vec::new();
    while let Some(value) = decoder.decode(&mut bytes).expect("RESP") {
      let Value::Array(parts) = value else {
        panic!("a command is an array: {value:?}")
      };
      let words: Vec<String> = parts
        .iter()
        .map(|part| match part {
          Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
          other => panic!("{other:?}"),
        })
        .collect();
      commands.push(words.join(" "));
    }
    assert!(bytes.is_empty());
    commands
  }

  /// The server answers `resp`; the calls that completed.
  fn answer(&mut self, resp: &str) -> Vec<(&'static str, Vec<Reply>)> {
    self.core.receive(resp.as_bytes());
    let mut done = Vec::new();
    self.core.take_replies(&mut done).expect("readable replies");
    done
      .into_iter()
      .map(|(name, replies)| (name, replies.expect("replies")))
      .collect()
  }
}

fn bytes(text: &str) -> Reply {
  Reply::Bytes(text.as_bytes().to_vec())
}

#[test]
fn matches_replies_in_order_across_reads() {
  let mut s = Script::new(3, false);
  s.call("a", get("a"));
  s.call("b", set("b", "2"));
  assert_eq!(s.written(), ["GET a", "SET b 2"]);
  assert!(
    s.answer("$1\r\n").is_empty(),
    "half a reply completes nothing"
  );
  assert_eq!(s.answer("1\r\n+OK"), [("a", vec![bytes("1")])]);
  assert_eq!(s.answer("\r\n"), [("b", vec![Reply::Ok])]);
  assert!(s.core.is_idle() && !s.core.has_waiters());
}

#[test]
fn an_atomic_batch_completes_with_its_exec_replies() {
  let mut s = Script::new(3, false);
  s.call("claim", claim("k"));
  assert_eq!(
    s.written(),
    ["MULTI", "HSETNX k claim me", "PEXPIRE k 1000", "EXEC"]
  );
  let done = s.answer("+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n:1\r\n");
  assert_eq!(done, [("claim", vec![Reply::Int(1), Reply::Int(1)])]);
}

#[test]
fn a_drop_mid_batch_requeues_safe_calls_in_order_and_rejects_the_others() {
  let mut s = Script::new(3, false);
  s.call("a", get("a"));
  s.call("claim", claim("k"));
  s.call("b", get("b"));
  s.call("delete", unlink("d"));
  s.call("c", set("c", "3"));
  s.written();
  // `a` is answered; the claim got half its replies when the connection dropped.
  assert_eq!(s.answer("$1\r\n1\r\n+OK\r\n+QUEUED\r\n").len(), 1);
  let rejected = s.core.on_drop(&unavailable());
  assert_eq!(rejected, ["claim", "delete"]);
  // The safe calls go out again, in their order, on the next connection.
  s.core.connected();
  assert_eq!(s.written(), ["GET b", "SET c 3"]);
  let done = s.answer("$2\r\nbb\r\n+OK\r\n");
  assert_eq!(done, [("b", vec![bytes("bb")]), ("c", vec![Reply::Ok])]);
}

#[test]
fn a_requeued_call_is_sent_whole_again() {
  let mut s = Script::new(3, false);
  s.call(
    "atomic",
    Batch::atomic(vec![Command::Get { key: "x".into() }]),
  );
  s.written();
  s.answer("+OK\r\n+QUEUED\r\n");
  assert!(s.core.on_drop(&unavailable()).is_empty());
  s.core.connected();
  assert_eq!(s.written(), ["MULTI", "GET x", "EXEC"]);
  let done = s.answer("+OK\r\n+QUEUED\r\n*1\r\n$1\r\n9\r\n");
  assert_eq!(done, [("atomic", vec![bytes("9")])]);
}

#[test]
fn a_reply_after_its_deadline_is_skipped_and_the_next_call_gets_its_own() {
  let mut s = Script::new(3, false);
  s.call_by("slow", get("slow"), 10);
  s.call_by("next", get("next"), 20);
  s.written();
  assert_eq!(
    s.core.next_deadline(),
    Some(s.t0 + Duration::from_millis(10))
  );
  assert_eq!(s.core.expire(s.t0 + Duration::from_millis(15)), ["slow"]);
  assert_eq!(
    s.core.next_deadline(),
    Some(s.t0 + Duration::from_millis(20))
  );
  // The late reply to `slow` comes first; `next` gets the one after it.
  assert!(s.answer("$4\r\nslow\r\n").is_empty());
  assert_eq!(s.answer("$4\r\nnext\r\n"), [("next", vec![bytes("next")])]);
  assert_eq!(s.core.next_deadline(), None);
}

#[test]
fn a_call_that_timed_out_before_the_connection_opened_is_never_sent() {
  let mut s = Script::new(3, false);
  s.call_by("claim", claim("c"), 10);
  s.call_by("b", get("b"), 5_000);
  // The connection takes longer than the claim's time: it rejected TIMEOUT, unsent.
  assert_eq!(s.core.expire(s.t0 + Duration::from_millis(10)), ["claim"]);
  s.core.connected();
  assert_eq!(s.written(), ["GET b"]);
  assert_eq!(s.answer("$1\r\nb\r\n"), [("b", vec![bytes("b")])]);
  assert!(s.core.is_idle());
}

#[test]
fn a_timed_out_call_is_not_sent_again_after_a_drop() {
  let mut s = Script::new(3, false);
  s.call_by("slow", get("slow"), 10);
  s.call_by("b", get("b"), 50);
  s.written();
  assert_eq!(s.core.expire(s.t0 + Duration::from_millis(10)), ["slow"]);
  assert!(s.core.on_drop(&unavailable()).is_empty());
  s.core.connected();
  assert_eq!(s.written(), ["GET b"]);
}

#[test]
fn a_refused_reconnect_backs_off_keeps_recovering_calls_and_rejects_new_ones() {
  let mut s = Script::new(3, false);
  s.call("a", get("a"));
  s.written();
  assert!(s.core.on_drop(&unavailable()).is_empty());
  // A call made while reconnecting never had a connection.
  s.call("new", get("n"));
  let refused = StoreError::new(ErrorCode::Unavailable, "cannot connect: refused");
  let (rejected, delay) = s.core.on_connect_failed(&refused, 1.0);
  assert_eq!(rejected, ["new"]);
  assert_eq!(delay, Some(Duration::from_millis(50)));
  let (rejected, delay) = s.core.on_connect_failed(&refused, 1.0);
  assert!(rejected.is_empty());
  assert_eq!(
    delay,
    Some(Duration::from_millis(100)),
    "the backoff doubles"
  );
  s.core.connected();
  assert_eq!(s.written(), ["GET a"]);
  assert_eq!(s.answer("$1\r\n1\r\n"), [("a", vec![bytes("1")])]);
}

#[test]
fn a_first_connect_that_fails_rejects_at_once() {
  let mut s = Script::new(3, false);
  s.call("a", get("a"));
  let refused = StoreError::new(ErrorCode::Unavailable, "cannot connect: refused");
  assert_eq!(s.core.on_connect_failed(&refused, 0.5), (vec!["a"], None));
  assert!(s.core.is_idle());
}

#[test]
fn with_sentinel_a_new_call_waits_for_a_master() {
  let mut s = Script::new(3, true);
  s.call("a", get("a"));
  let refused = StoreError::new(ErrorCode::Unavailable, "no sentinel named the master");
  let (rejected, delay) = s.core.on_connect_failed(&refused, 0.0);
  assert!(rejected.is_empty());
  assert_eq!(delay, Some(Duration::from_millis(25)));
}

#[test]
fn auth_and_tls_errors_are_never_retried() {
  for code in [ErrorCode::Auth, ErrorCode::Tls] {
    let mut s = Script::new(3, true);
    s.call("a", get("a"));
    s.written();
    assert!(s.core.on_drop(&unavailable()).is_empty());
    let refused = StoreError::new(code, "authentication failed: WRONGPASS");
    let (rejected, delay) = s.core.on_connect_failed(&refused, 0.0);
    assert_eq!((rejected, delay), (vec!["a"], None));
  }
}

#[test]
fn the_retry_budget_runs_out() {
  let mut s = Script::new(2, false);
  s.call("a", get("a"));
  s.written();
  assert!(s.core.on_drop(&unavailable()).is_empty());
  s.core.connected();
  s.written();
  let refused = StoreError::new(ErrorCode::Unavailable, "refused");
  let (rejected, _) = s.core.on_connect_failed(&refused, 0.0);
  assert!(
    rejected.is_empty(),
    "a failed reconnect spends the second retry"
  );
  assert_eq!(s.core.on_drop(&unavailable()), ["a"], "none left");
  let mut none = Script::new(0, false);
  none.call("a", get("a"));
  assert_eq!(none.core.on_drop(&unavailable()), ["a"]);
}

#[test]
fn readonly_when_following_a_failover_drops_the_connection() {
  let mut s = Script::new(3, true);
  s.call("a", set("a", "1"));
  s.written();
  s.core
    .receive(b"-READONLY You can't write against a read only replica.\r\n");
  let err = s.core.take_replies(&mut Vec::new()).unwrap_err();
  assert_eq!(err.code, ErrorCode::Unavailable);
  assert!(err.message.contains("READONLY"));
  assert!(s.core.on_drop(&err).is_empty());
  s.core.connected();
  assert_eq!(s.written(), ["SET a 1"]);
  // Without Sentinel, READONLY is the call's own error reply.
  let mut plain = Script::new(3, false);
  plain.call("a", set("a", "1"));
  plain.core.receive(b"-READONLY no\r\n");
  let mut done = Vec::new();
  plain.core.take_replies(&mut done).unwrap();
  assert!(done[0].1.is_err());
}

#[test]
fn a_reply_nobody_asked_for_or_garbage_breaks_the_connection() {
  let mut s = Script::new(3, false);
  s.core.receive(b"+OK\r\n");
  assert!(s.core.take_replies(&mut Vec::new()).is_err());
  let mut s = Script::new(3, false);
  s.call("a", get("a"));
  s.core.receive(b"?what\r\n");
  assert!(s.core.take_replies(&mut Vec::new()).is_err());
}

#[test]
fn an_aborted_transaction_rejects_its_call() {
  let mut s = Script::new(3, false);
  s.call(
    "atomic",
    Batch::atomic(vec![Command::Get { key: "x".into() }]),
  );
  s.core
    .receive(b"+OK\r\n-ERR bad\r\n-EXECABORT Transaction discarded\r\n");
  let mut done = Vec::new();
  s.core.take_replies(&mut done).unwrap();
  assert_eq!(done.len(), 1);
  assert!(done[0].1.is_err());
}

/// A socket that takes at most `room` bytes now, then would block.
struct Room {
  room: usize,
  wire: Vec<u8>,
}

impl Room {
  fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
    if self.room == 0 {
      return Err(std::io::ErrorKind::WouldBlock.into());
    }
    // A socket may take fewer bytes than it has room for.
    let n = bytes.len().min(self.room).min(7);
    self.room -= n;
    self.wire.extend_from_slice(&bytes[..n]);
    Ok(n)
  }
}

#[test]
fn a_write_that_would_block_keeps_the_rest_in_order_for_the_next() {
  let mut s = Script::new(3, false);
  s.call("a", set("a", &"x".repeat(100)));
  s.call("b", get("b"));
  let mut all = s.core.unsent().clone();
  let mut socket = Room {
    room: 40,
    wire: Vec::new(),
  };
  let done = s.core.write_unsent(|b| socket.write(b)).expect("no error");
  assert!(!done, "the socket took 40 bytes of more");
  assert_eq!(socket.wire.len(), 40);
  // A call made while bytes wait goes after them.
  s.call("c", get("c"));
  let c = s.core.unsent()[all.len() - 40..].to_vec();
  all.extend_from_slice(&c);
  socket.room = usize::MAX;
  assert!(s.core.write_unsent(|b| socket.write(b)).expect("no error"));
  assert!(s.core.unsent().is_empty());
  assert_eq!(
    socket.wire, all,
    "the wire has every byte once, in call order"
  );
  assert_eq!(
    s.answer("+OK\r\n$-1\r\n$1\r\n3\r\n"),
    [
      ("a", vec![Reply::Ok]),
      ("b", vec![Reply::Nil]),
      ("c", vec![bytes("3")])
    ]
  );
}

#[test]
fn a_failed_write_keeps_what_was_not_written_and_a_drop_resends_whole_calls() {
  let mut s = Script::new(3, false);
  s.call("a", get("a"));
  let mut calls = 0;
  let err = s
    .core
    .write_unsent(|b| {
      calls += 1;
      if calls == 1 {
        Ok(b.len() / 2)
      } else {
        Err(std::io::ErrorKind::BrokenPipe.into())
      }
    })
    .expect_err("a broken pipe");
  assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
  assert!(!s.core.unsent().is_empty());
  assert!(
    s.core.on_drop(&unavailable()).is_empty(),
    "get is safe to resend"
  );
  assert_eq!(
    s.written(),
    ["GET a"],
    "sent again whole, not from the middle"
  );
  let zero = s.core.write_unsent(|_| Ok(0));
  assert!(zero.is_ok(), "nothing to write writes nothing");
  s.call("b", get("b"));
  let zero = s
    .core
    .write_unsent(|_| Ok(0))
    .expect_err("a socket that takes nothing");
  assert_eq!(zero.kind(), std::io::ErrorKind::WriteZero);
}

#[test]
fn abandoning_gives_back_every_waiting_call_once_and_sends_nothing_again() {
  let mut s = Script::new(3, false);
  s.call_by("late", get("c"), 0);
  s.call("a", get("a"));
  s.call("b", set("b", "2"));
  s.written();
  s.call("d", get("d"));
  // `late` timed out: its waiter was already given back.
  assert_eq!(s.core.expire(s.t0), ["late"]);
  assert_eq!(s.core.abandon(), ["a", "b", "d"]);
  assert!(!s.core.has_waiters() && s.core.is_idle());
  assert!(s.written().is_empty(), "nothing left to send");
  // Closed: a drop afterwards requeues nothing.
  assert!(s.core.on_drop(&unavailable()).is_empty());
}

/// The replies of a call whose batch failed, by the server's own error.
fn failed(s: &mut Script, resp: &str) -> Vec<(&'static str, StoreError)> {
  s.core.receive(resp.as_bytes());
  let mut done = Vec::new();
  s.core.take_replies(&mut done).expect("readable replies");
  done
    .into_iter()
    .map(|(name, replies)| (name, replies.expect_err("an error")))
    .collect()
}

#[test]
fn an_ask_redirect_goes_after_asking_also_when_sent_again() {
  let mut s = Script::new(3, false);
  let deadline = s.t0 + Duration::from_secs(5);
  let commit = Batch::atomic(vec![
    Command::HSet {
      key: "{e}-results".into(),
      field: "a".into(),
      value: "1".into(),
    },
    Command::HDel {
      key: "{e}-transactions".into(),
      field: "a".into(),
    },
  ]);
  s.core.push_asking("commit", commit, deadline, true);
  let sent = [
    "ASKING",
    "MULTI",
    "HSET {e}-results a 1",
    "HDEL {e}-transactions a",
    "EXEC",
  ];
  assert_eq!(s.written(), sent);
  // A drop: it goes again after ASKING.
  assert!(s.core.on_drop(&unavailable()).is_empty());
  s.core.connected();
  assert_eq!(s.written(), sent);
  let done = s.answer("+OK\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n:1\r\n");
  assert_eq!(done, [("commit", vec![Reply::Int(1), Reply::Int(1)])]);
}

#[test]
fn an_aborted_transaction_gives_its_queued_commands_error() {
  let mut s = Script::new(3, false);
  s.call("claim", claim("{e}-transactions"));
  s.written();
  let errors = failed(
    &mut s,
    "+OK\r\n-MOVED 3999 127.0.0.1:7001\r\n-MOVED 3999 127.0.0.1:7001\r\n-EXECABORT Transaction discarded because of previous errors.\r\n",
  );
  assert_eq!(errors.len(), 1);
  let (code, details) = super::super::redis_codec::cluster_error(&errors[0].1).expect("MOVED");
  assert_eq!((code, details), ("MOVED", "3999 127.0.0.1:7001"));
  // An error of a plain command keeps the server's words too.
  s.call("get", get("{e}"));
  s.written();
  let errors = failed(&mut s, "-ASK 3999 127.0.0.1:7002\r\n");
  let (code, details) = super::super::redis_codec::cluster_error(&errors[0].1).expect("ASK");
  assert_eq!((code, details), ("ASK", "3999 127.0.0.1:7002"));
  // Other errors are not cluster errors.
  s.call("get", get("{e}"));
  s.written();
  let errors = failed(&mut s, "-WRONGTYPE Operation against a key\r\n");
  assert_eq!(errors[0].1.code, ErrorCode::WrongType);
  assert!(super::super::redis_codec::cluster_error(&errors[0].1).is_none());
}

/// `commandTimeout` in the tests of a stuck connection: every call's deadline is its
/// making plus this.
const TIMEOUT: Duration = Duration::from_millis(100);

impl Script {
  /// The connection opens at `t0`.
  fn open(&mut self) {
    self.core.connected();
    self.core.heard(self.t0);
  }

  /// A call made at `ms`.
  fn call_at(&mut self, name: &'static str, batch: Batch, ms: u64) {
    self.call_by(name, batch, ms + TIMEOUT.as_millis() as u64);
  }

  fn at(&self, ms: u64) -> Instant {
    self.t0 + Duration::from_millis(ms)
  }

  /// The server's bytes `resp` read at `ms`, as a driver hands them over.
  fn answer_at(&mut self, ms: u64, resp: &str) -> Vec<(&'static str, Vec<Reply>)> {
    self.core.heard(self.at(ms));
    self.answer(resp)
  }

  fn stuck_at(&self, ms: u64) -> bool {
    self.core.is_stuck(self.at(ms), TIMEOUT)
  }
}

#[test]
fn a_connection_is_stuck_once_a_call_waited_stuck_after_timeouts_with_nothing_from_the_server() {
  let mut s = Script::new(3, false);
  s.open();
  // One call after another, each timing out (a hung server).
  s.call_at("a", get("a"), 0);
  s.written();
  assert_eq!(s.core.expire(s.at(100)), ["a"]);
  assert!(!s.stuck_at(100), "a waited one commandTimeout");
  s.call_at("b", get("b"), 100);
  s.written();
  assert_eq!(s.core.expire(s.at(200)), ["b"]);
  assert!(!s.stuck_at(200), "a waited two");
  // A late reply (to `a`) says the server is alive: silence is measured from it.
  assert!(s.answer_at(250, "$1\r\na\r\n").is_empty());
  s.call_at("c", get("c"), 200);
  s.written();
  assert_eq!(s.core.expire(s.at(300)), ["c"]);
  assert!(
    !s.stuck_at(300),
    "b waited three, but the server spoke at 250"
  );
  s.call_at("d", get("d"), 300);
  s.call_at("e", get("e"), 450);
  s.written();
  assert_eq!(s.core.expire(s.at(400)), ["d"]);
  assert!(!s.stuck_at(400));
  assert_eq!(s.core.expire(s.at(550)), ["e"]);
  assert!(
    s.stuck_at(550),
    "b (made at 100) unanswered, nothing since 250: 3 × commandTimeout"
  );
  // Dropped for a new connection: the timed-out calls are not sent again; a new call is.
  let err = stuck(Duration::from_millis(300));
  assert_eq!(err.code, ErrorCode::Unavailable);
  assert!(
    err.message.contains("3 × commandTimeout (300 ms)"),
    "{}",
    err.message
  );
  assert!(s.core.on_drop(&err).is_empty());
  s.call("f", get("f"));
  s.core.connected();
  assert!(!s.core.is_stuck(s.at(1_000), TIMEOUT), "no call waits");
  assert_eq!(s.written(), ["GET f"]);
}

#[test]
fn calls_that_time_out_together_do_not_make_a_connection_stuck() {
  // A server that pauses (a fork for BGSAVE, an fsync stall) while 5 calls are in flight:
  // they time out in the same tick, which is one commandTimeout of silence, not 5.
  let mut s = Script::new(3, false);
  s.open();
  for name in ["a", "b", "c", "d", "e"] {
    s.call_at(name, get(name), 0);
  }
  s.call_at("f", claim("f"), 50);
  s.written();
  assert_eq!(s.core.expire(s.at(100)), ["a", "b", "c", "d", "e"]);
  assert!(!s.stuck_at(100), "5 calls at once are one timeout");
  // The server resumes at 140: the late replies are skipped, the call still waiting gets
  // its own, on the same connection.
  let late = "$1\r\na\r\n".repeat(5);
  assert!(s.answer_at(140, &late).is_empty());
  assert_eq!(
    s.answer_at(141, "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n:1\r\n"),
    [("f", vec![Reply::Int(1), Reply::Int(1)])]
  );
  assert!(s.core.is_idle());
  // Still silent but for a shorter while than 3 × commandTimeout: kept.
  for name in ["g", "h", "i"] {
    s.call_at(name, get(name), 200);
  }
  s.written();
  assert_eq!(s.core.expire(s.at(300)), ["g", "h", "i"]);
  assert!(!s.stuck_at(300));
  s.call_at("j", get("j"), 300);
  s.written();
  assert_eq!(s.core.expire(s.at(400)), ["j"]);
  assert!(!s.stuck_at(400), "g waited 2 × commandTimeout");
  s.call_at("k", get("k"), 400);
  s.written();
  assert_eq!(s.core.expire(s.at(500)), ["k"]);
  assert!(
    s.stuck_at(500),
    "g waited 3 × commandTimeout, not a byte since"
  );
}

#[test]
fn bytes_of_a_reply_still_coming_keep_a_connection() {
  // A large reply over a slow link: every call after it times out before it is whole,
  // but its bytes keep coming.
  let mut s = Script::new(3, false);
  s.open();
  s.call_at("big", get("big"), 0);
  s.written();
  assert!(s.answer_at(60, "$15\r\nabc").is_empty());
  assert_eq!(s.core.expire(s.at(100)), ["big"]);
  for (i, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
    let made = 100 * (i as u64 + 1);
    s.call_at(name, get(name), made);
    s.written();
    assert!(s.answer_at(made + 60, "def").is_empty());
    assert_eq!(s.core.expire(s.at(made + 100)), [name]);
    assert!(
      !s.stuck_at(made + 100),
      "bytes came 40 ms ago, though no whole reply for {} ms",
      made + 100
    );
  }
  // The rest of the big reply, then the others' (all skipped: they timed out).
  assert!(s.answer_at(520, "\r\n").is_empty());
  assert!(!s.core.is_idle(), "a to d's replies are due");
  let rest = "$1\r\nx\r\n".repeat(4);
  assert!(s.answer_at(530, &rest).is_empty());
  assert!(s.core.is_idle());
}

#[test]
fn a_timer_that_fires_late_does_not_make_a_connection_stuck() {
  // commandTimeout 100: the JS thread was blocked from 50 to 400, so the timer of `a`
  // (due at 100) fires at 400, while its reply may wait unread in the socket.
  let mut s = Script::new(3, false);
  s.open();
  s.call_at("a", get("a"), 0);
  s.written();
  assert_eq!(s.core.expire(s.at(400)), ["a"]);
  assert!(!s.stuck_at(400), "a late timer does not judge");
  // The next timeout, on time, with still nothing from the server: stuck.
  s.call_at("b", get("b"), 400);
  s.written();
  assert_eq!(s.core.expire(s.at(500)), ["b"]);
  assert!(s.stuck_at(500), "a (made at 0) unanswered, nothing since");
}

#[test]
fn a_push_frame_answers_no_call_and_shifts_nothing() {
  let mut s = Script::new(3, false);
  s.call("a", get("a"));
  s.call("b", get("b"));
  s.written();
  let done = s.answer(">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n$1\r\n1\r\n>2\r\n$10\r\ninvalidate\r\n*0\r\n$1\r\n2\r\n");
  assert_eq!(done, [("a", vec![bytes("1")]), ("b", vec![bytes("2")])]);
  assert!(s.core.is_idle());
}

/// The error `take_replies` gives for `resp` answering `batch` (sent first), and the
/// calls settled before it.
fn misfit_of(batch: Batch, resp: &str) -> StoreError {
  let resend = batch.may_resend();
  let mut s = Script::new(3, false);
  s.call("first", get("x"));
  s.call("call", batch);
  s.written();
  s.core.receive(format!("$1\r\n1\r\n{resp}").as_bytes());
  let mut done = Vec::new();
  let err = s
    .core
    .take_replies(&mut done)
    .expect_err("a reply that does not fit");
  assert_eq!(done.len(), 1, "the call before it is answered");
  // The call stays queued: the drop sends it again if it is safe to, else rejects it, as
  // after a reply that is not RESP.
  assert_eq!(s.core.len(), 1);
  let rejected = s.core.on_drop(&err);
  assert_eq!(rejected.is_empty(), resend, "{resp:?}");
  err
}

#[test]
fn a_reply_its_command_cannot_give_drops_the_connection() {
  let mget = Batch::one(Command::MGet {
    keys: vec!["a".into(), "b".into()],
  });
  let hgetall = Batch::one(Command::HGetAll { key: "h".into() });
  let exists = Batch::one(Command::Exists { key: "e".into() });
  let commit = Batch::atomic(vec![
    Command::HSet {
      key: "h".into(),
      field: "f".into(),
      value: "v".into(),
    },
    Command::PExpire {
      key: "h".into(),
      ttl_ms: 5,
    },
  ]);
  for (batch, resp, says) in [
    (get("a"), ":42\r\n", "GET answered an integer"),
    (hgetall.clone(), ":5\r\n", "HGETALL answered an integer"),
    (
      hgetall,
      "*1\r\n$1\r\nf\r\n",
      "HGETALL answered an array of 1",
    ),
    (exists, "$3\r\nabc\r\n", "EXISTS answered a bulk string"),
    (unlink("d"), "$1\r\n1\r\n", "UNLINK answered a bulk string"),
    (set("s", "1"), ":1\r\n", "SET answered an integer"),
    (
      mget.clone(),
      "*1\r\n$-1\r\n",
      "MGET answered 1 values for 2 keys",
    ),
    (mget, "*2\r\n:1\r\n$-1\r\n", "MGET answered an array of 2"),
    (
      commit.clone(),
      "+OK\r\n+QUEUED\r\n+QUEUED\r\n*0\r\n",
      "EXEC answered 0 replies for 2 commands",
    ),
    (
      commit.clone(),
      "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n$1\r\n1\r\n:1\r\n",
      "HSET answered a bulk string",
    ),
    (
      commit,
      "+OK\r\n+QUEUED\r\n+QUEUED\r\n:1\r\n",
      "EXEC answered an integer",
    ),
  ] {
    let err = misfit_of(batch, resp);
    assert_eq!(err.code, ErrorCode::Unavailable, "{resp:?}");
    assert!(err.message.contains(says), "{resp:?}: {}", err.message);
  }
}

#[test]
fn replies_that_fit_and_server_errors_are_answers() {
  let mut s = Script::new(3, false);
  s.call(
    "mget",
    Batch::one(Command::MGet {
      keys: vec!["a".into(), "b".into()],
    }),
  );
  s.call("a", get("a"));
  s.call("n", get("n"));
  s.written();
  s.core
    .receive(b"*2\r\n$1\r\n1\r\n$-1\r\n-WRONGTYPE Operation against a key\r\n$-1\r\n");
  let mut done = Vec::new();
  s.core.take_replies(&mut done).expect("replies that fit");
  let done: Vec<_> = done
    .into_iter()
    .map(|(name, replies)| (name, replies.map_err(|err| err.message)))
    .collect();
  assert_eq!(
    done[0],
    (
      "mget",
      Ok(vec![Reply::Values(vec![Some(b"1".to_vec()), None])])
    )
  );
  assert!(matches!(&done[1], ("a", Err(message)) if message.contains("WRONGTYPE")));
  assert_eq!(done[2], ("n", Ok(vec![Reply::Nil])));
  assert!(s.core.is_idle());
}
