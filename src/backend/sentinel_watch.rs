//! Following a Sentinel failover while connected. The sentinels are asked for the master
//! when a store connects ([`super::connect`]), but a graceful failover (`SENTINEL
//! FAILOVER`, or one a sentinel starts while the old master still answers) leaves the
//! old master up and answering as a master until Sentinel reconfigures it, about ten
//! seconds later; it then resyncs from the new master and drops every write it took
//! meanwhile. A connection that only waited for a drop or a `READONLY` reply would keep
//! writing to it, and those acknowledged writes would be lost.
//!
//! So while a Sentinel store has a connection, one tokio task (on the `durastate-io`
//! thread) asks every sentinel, five times a second, on a connection it keeps to each,
//! which master they name (`SENTINEL GET-MASTER-ADDR-BY-NAME`), under which configuration
//! epoch, and whether a failover is promoting a replica (`SENTINEL MASTER`: its
//! `failover-state`). The newest epoch wins, as in Sentinel itself, so a sentinel that has
//! not heard of the failover yet is outvoted. When the master named differs from the one
//! the store is connected to, or a sentinel is promoting a replica in its place (from
//! `REPLICAOF NO ONE` on, the promoted replica no longer takes the old master's writes,
//! about a second before the sentinels name it), the watch marks the connection
//! ([`MasterWatch::moved`]). Every driver checks the mark through its connection core
//! before it writes and when replies come, and drops that connection as on a `READONLY`
//! reply. A reconnect then asks the sentinels again ([`MasterWatch::vet`]): an address the
//! watch knows was replaced is not taken back from a sentinel that lags, and the master
//! being replaced is refused (`UNAVAILABLE`: calls wait, as for any failover) until the
//! sentinels name the new one.
//!
//! The task holds nothing of the JS event loop (an idle process exits), holds the watch
//! only weakly (a store collected stops it), stops on `close()`, bounds every connect and
//! every question by the connect timeout, and waits at least a second before connecting
//! again to a sentinel that failed (no spinning while the sentinels are down). It ends
//! when the store's connection drops with no call waiting for another, and starts again
//! with the next connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use redis::Value;

use super::connect::{self, Peer, Stream};
use super::redis_core::lost;
use crate::error::{StoreError, StoreResult};
use crate::redis_target::{RedisTarget, SentinelSettings};
use crate::tls::TlsSettings;

/// How often the sentinels are asked while connected.
const POLL: Duration = Duration::from_millis(200);
/// How long a sentinel's word that it is promoting a replica in place of a master holds
/// (it is renewed at every poll while the sentinel says so).
const FENCE: Duration = Duration::from_secs(1);
/// How long a sentinel that could not be reached is left alone before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// The longest any connect or question of the watch may take.
const LIMIT: Duration = Duration::from_secs(2);

/// A master's address, as the sentinels name it.
pub type Address = (String, u16);

/// The watch of one store's connection (cheap to clone; every clone is the same watch).
#[derive(Clone)]
pub struct MasterWatch {
  shared: Arc<Watched>,
}

struct Watched {
  /// Set when the sentinels name another master than the one connected to.
  moved: AtomicBool,
  state: Mutex<State>,
  sentinel: Arc<SentinelSettings>,
  tls: Option<Arc<TlsSettings>>,
  /// Bound on each connect and question.
  limit: Duration,
}

#[derive(Default)]
struct State {
  /// The master the store's current connection was opened to.
  connected: Option<Address>,
  /// Bumped with every new connection: a verdict about an older one is dropped.
  generation: u64,
  running: bool,
  stopped: bool,
  /// The master named under the newest configuration epoch seen, and that epoch.
  newest: Option<(u64, Address)>,
  /// Masters replaced by a newer epoch's.
  replaced: Vec<Address>,
  /// A master a sentinel is promoting a replica in place of, and when it last said so.
  fenced: Option<(Address, Instant)>,
  /// Why the connection was marked, for the error it is dropped with.
  reason: String,
}

/// What one sentinel says.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
  /// The master it names.
  named: Address,
  /// Its configuration epoch (`None`: `SENTINEL MASTER` refused).
  epoch: Option<u64>,
  /// The master it is promoting a replica in place of, if it is.
  promoting: Option<Address>,
}

impl MasterWatch {
  /// A watch for a Sentinel target (`None` for any other); connects and questions are
  /// bounded by `connect_timeout` (at most 2 s).
  pub fn new(target: &RedisTarget, connect_timeout: Duration) -> Option<Self> {
    let sentinel = target.sentinel.clone()?;
    Some(Self {
      shared: Arc::new(Watched {
        moved: AtomicBool::new(false),
        state: Mutex::new(State::default()),
        sentinel,
        tls: target.sentinel_tls.clone(),
        limit: connect_timeout.min(LIMIT).max(Duration::from_millis(100)),
      }),
    })
  }

  /// Whether the sentinels name another master than the one connected to: the
  /// connection must be dropped and opened again.
  pub fn moved(&self) -> bool {
    self.shared.moved.load(Ordering::Acquire)
  }

  /// The error a connection is dropped with once [`MasterWatch::moved`].
  pub fn moved_error(&self) -> StoreError {
    let state = self.shared.lock();
    let was = state
      .connected
      .as_ref()
      .map(|(host, port)| format!(" {host}:{port}"))
      .unwrap_or_default();
    lost(&format!(
      "{} (failover): the master{was} may lose what it takes from now on; reconnecting to \
       the new master",
      state.reason
    ))
  }

  /// The address a sentinel named at connect (`display`: the target, for messages): the
  /// newest master known instead, when the watch saw that one replaced (a sentinel that
  /// has not heard of a failover yet); `UNAVAILABLE` while a sentinel is promoting a
  /// replica in its place (calls wait for the new master).
  pub fn vet(&self, named: Address, display: &str) -> StoreResult<Address> {
    let state = self.shared.lock();
    if let Some((fenced, seen)) = &state.fenced {
      if *fenced == named && seen.elapsed() < FENCE {
        return Err(StoreError::cannot_connect(
          display,
          format_args!(
            "a sentinel is promoting a replica in place of the master {}:{} (failover); \
             waiting for the sentinels to name the new master",
            named.0, named.1
          ),
        ));
      }
    }
    Ok(match &state.newest {
      Some((_, newest)) if *newest != named && state.replaced.contains(&named) => newest.clone(),
      _ => named,
    })
  }

  /// A connection to `address` is being opened: watch it (the task starts if it is not
  /// running).
  pub fn connected_to(&self, address: &Address) {
    let mut state = self.shared.lock();
    if state.stopped {
      return;
    }
    state.connected = Some(address.clone());
    state.generation += 1;
    self.shared.moved.store(false, Ordering::Release);
    if !state.running {
      state.running = true;
      crate::runtime::spawn_io(run(Arc::downgrade(&self.shared)));
    }
  }

  /// The connection dropped and no call waits for another: the task ends within one
  /// poll (the next connection starts it again).
  pub fn disconnected(&self) {
    self.shared.lock().connected = None;
  }

  /// The store closed (or was collected): the task ends within one poll.
  pub fn stop(&self) {
    let mut state = self.shared.lock();
    state.stopped = true;
    state.connected = None;
  }
}

impl Watched {
  fn lock(&self) -> MutexGuard<'_, State> {
    self.state.lock().unwrap_or_else(|e| e.into_inner())
  }

  /// Takes a round of answers (about the connection of `generation`): a master being
  /// replaced, the newest epoch's master, or without epochs, a master a majority of the
  /// sentinels names.
  fn judge(&self, generation: u64, answers: &[Option<Answer>]) {
    let mut state = self.lock();
    let answers: Vec<&Answer> = answers.iter().flatten().collect();
    if let Some(promoting) = answers.iter().find_map(|answer| answer.promoting.as_ref()) {
      state.fenced = Some((promoting.clone(), Instant::now()));
    }
    let newest = answers
      .iter()
      .filter_map(|answer| answer.epoch.map(|epoch| (epoch, &answer.named)))
      .max_by_key(|(epoch, _)| *epoch);
    if let Some((epoch, address)) = newest {
      let newer = state
        .newest
        .as_ref()
        .is_none_or(|(known, _)| epoch > *known);
      if newer {
        if let Some((_, old)) = state.newest.take() {
          if old != *address && !state.replaced.contains(&old) {
            state.replaced.push(old);
          }
        }
        state.replaced.retain(|replaced| replaced != address);
        state.newest = Some((epoch, address.clone()));
      }
    }
    if state.generation != generation {
      return;
    }
    let Some(connected) = state.connected.clone() else {
      return;
    };
    let promoting = answers
      .iter()
      .any(|answer| answer.promoting.as_ref() == Some(&connected));
    let named = match &state.newest {
      // The newest epoch names another master, and no sentinel names this one under it.
      Some((epoch, newest)) => (*newest != connected
        && !answers.iter().any(|answer| {
          answer.named == connected && answer.epoch.is_some_and(|seen| seen >= *epoch)
        }))
      .then(|| newest.clone()),
      // No epochs (`SENTINEL MASTER` refused): most sentinels name another master.
      None => answers
        .iter()
        .map(|answer| &answer.named)
        .filter(|address| **address != connected)
        .find(|address| {
          answers
            .iter()
            .filter(|other| other.named == **address)
            .count()
            * 2
            > self.sentinel.sentinels.len()
        })
        .cloned(),
    };
    let reason = match (named, promoting) {
      (Some((host, port)), _) => format!("the sentinels named a new master, {host}:{port}"),
      (None, true) => "a sentinel is promoting a replica in place of this master".to_string(),
      (None, false) => return,
    };
    state.reason = reason;
    self.moved.store(true, Ordering::Release);
  }
}

/// One sentinel's connection, kept between rounds.
enum Session {
  None,
  Open(Box<Stream>),
  /// Could not be reached: not tried again before then.
  Resting(Instant),
}

async fn run(watch: Weak<Watched>) {
  let mut sessions: Vec<Session> = Vec::new();
  loop {
    let Some(shared) = watch.upgrade() else {
      return;
    };
    let generation = {
      let mut state = shared.lock();
      if state.stopped || state.connected.is_none() {
        state.running = false;
        return;
      }
      state.generation
    };
    sessions.resize_with(shared.sentinel.sentinels.len(), || Session::None);
    let asks = sessions
      .iter_mut()
      .zip(&shared.sentinel.sentinels)
      .map(|(session, (host, port))| ask(session, host, *port, &shared));
    let answers = futures_util::future::join_all(asks).await;
    shared.judge(generation, &answers);
    drop(shared);
    tokio::time::sleep(POLL).await;
  }
}

/// Asks one sentinel which master it names, under which epoch, and whether it is
/// promoting a replica; `None` when it cannot be asked now.
async fn ask(session: &mut Session, host: &str, port: u16, shared: &Watched) -> Option<Answer> {
  if let Session::Resting(until) = session {
    if Instant::now() < *until {
      return None;
    }
    *session = Session::None;
  }
  let display = format!("sentinel {host}:{port}");
  let peer = Peer {
    display: &display,
    tls: shared.tls.as_deref(),
  };
  let attempt = async {
    if let Session::None = session {
      let stream = connect::sentinel_session(host, port, peer, &shared.sentinel, shared.limit)
        .await
        .ok()?;
      *session = Session::Open(Box::new(stream));
    }
    let Session::Open(stream) = session else {
      return None;
    };
    let mut addr = redis::cmd("SENTINEL");
    addr
      .arg("GET-MASTER-ADDR-BY-NAME")
      .arg(&shared.sentinel.master);
    let mut master = redis::cmd("SENTINEL");
    master.arg("MASTER").arg(&shared.sentinel.master);
    let answers = connect::exchange(stream.as_mut(), &[addr, master])
      .await
      .ok()?;
    Some(answers)
  };
  let answers = match tokio::time::timeout(shared.limit, attempt).await {
    Ok(Some(answers)) => answers,
    _ => {
      *session = Session::Resting(Instant::now() + RETRY_AFTER);
      return None;
    }
  };
  let named = match &answers[0] {
    Value::Array(parts) if parts.len() == 2 => {
      let port = connect::text(&parts[1]).parse().ok()?;
      (connect::text(&parts[0]), port)
    }
    _ => return None,
  };
  let (epoch, promoting) = master_state(&answers[1]);
  Some(Answer {
    named,
    epoch,
    promoting,
  })
}

/// From a `SENTINEL MASTER` answer (RESP2 array or RESP3 map; an error when refused):
/// the configuration epoch, and the master's address while the sentinel is promoting a
/// replica in its place (`failover-state` `send_slaveof_noone` or `wait_promotion`: the
/// replica was told, or is about to be told, `REPLICAOF NO ONE`; the record still names
/// the old master then).
fn master_state(answer: &Value) -> (Option<u64>, Option<Address>) {
  let items: Vec<&Value> = match answer {
    Value::Array(items) => items.iter().collect(),
    Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
    _ => return (None, None),
  };
  let field = |name: &str| {
    items
      .chunks(2)
      .find(|pair| pair.len() == 2 && connect::text(pair[0]) == name)
      .map(|pair| connect::text(pair[1]))
  };
  let epoch = field("config-epoch").and_then(|epoch| epoch.parse().ok());
  let promoting = matches!(
    field("failover-state").as_deref(),
    Some("send_slaveof_noone" | "wait_promotion")
  );
  let address = match (promoting, field("ip"), field("port")) {
    (true, Some(ip), Some(port)) => port.parse().ok().map(|port| (ip, port)),
    _ => None,
  };
  (epoch, address)
}

#[cfg(test)]
mod tests {
  use super::*;

  fn watch(sentinels: usize) -> MasterWatch {
    MasterWatch {
      shared: Arc::new(Watched {
        moved: AtomicBool::new(false),
        state: Mutex::new(State {
          // Never spawns a task in these tests.
          running: true,
          ..State::default()
        }),
        sentinel: Arc::new(SentinelSettings {
          sentinels: (0..sentinels)
            .map(|n| ("s".to_string(), n as u16))
            .collect(),
          master: "main".into(),
          username: None,
          password: None,
        }),
        tls: None,
        limit: LIMIT,
      }),
    }
  }

  fn at(port: u16) -> Address {
    ("127.0.0.1".into(), port)
  }

  fn says(port: u16, epoch: Option<u64>) -> Option<Answer> {
    Some(Answer {
      named: at(port),
      epoch,
      promoting: None,
    })
  }

  fn generation(watch: &MasterWatch) -> u64 {
    watch.shared.lock().generation
  }

  #[test]
  fn the_newest_epoch_wins_over_sentinels_that_lag_and_a_lagging_answer_is_vetted() {
    let watch = watch(3);
    watch.connected_to(&at(1));
    let before = [says(1, Some(0)), says(1, Some(0)), None];
    watch.shared.judge(generation(&watch), &before);
    assert!(!watch.moved());
    // The leader names the promoted replica under a new epoch; the others lag.
    let during = [says(2, Some(1)), says(1, Some(0)), says(1, Some(0))];
    watch.shared.judge(generation(&watch), &during);
    assert!(watch.moved());
    let err = watch.moved_error();
    assert_eq!(err.code, crate::error::ErrorCode::Unavailable);
    assert!(
      err.message.contains("new master, 127.0.0.1:2"),
      "{}",
      err.message
    );
    // A reconnect that asks a lagging sentinel goes to the new master all the same.
    assert_eq!(watch.vet(at(1), "t").unwrap(), at(2));
    assert_eq!(watch.vet(at(3), "t").unwrap(), at(3));
    watch.connected_to(&at(2));
    assert!(!watch.moved());
    watch.shared.judge(generation(&watch), &during);
    assert!(!watch.moved());
  }

  #[test]
  fn a_master_being_replaced_is_left_and_refused_until_the_new_one_is_named() {
    let watch = watch(3);
    watch.connected_to(&at(1));
    let promoting = Some(Answer {
      named: at(1),
      epoch: Some(0),
      promoting: Some(at(1)),
    });
    watch
      .shared
      .judge(generation(&watch), &[promoting, says(1, Some(0)), None]);
    assert!(watch.moved());
    assert!(watch.moved_error().message.contains("promoting a replica"));
    let err = watch.vet(at(1), "t").unwrap_err();
    assert_eq!(err.code, crate::error::ErrorCode::Unavailable);
    assert!(err
      .message
      .contains("promoting a replica in place of the master 127.0.0.1:1"));
    // Once named, the new master is taken, also from a sentinel that lags.
    watch.shared.judge(
      generation(&watch),
      &[says(2, Some(1)), says(1, Some(0)), None],
    );
    assert_eq!(watch.vet(at(2), "t").unwrap(), at(2));
  }

  #[test]
  fn a_verdict_about_an_older_connection_is_dropped() {
    let watch = watch(1);
    watch.connected_to(&at(1));
    let old = generation(&watch);
    watch.connected_to(&at(2));
    watch.shared.judge(old, &[says(2, Some(5))]);
    assert!(!watch.moved());
  }

  #[test]
  fn without_epochs_a_majority_of_the_sentinels_decides() {
    let watch = watch(3);
    watch.connected_to(&at(1));
    watch
      .shared
      .judge(generation(&watch), &[says(2, None), says(1, None), None]);
    assert!(!watch.moved());
    watch.shared.judge(
      generation(&watch),
      &[says(2, None), says(2, None), says(1, None)],
    );
    assert!(watch.moved());
  }

  #[test]
  fn sentinel_master_gives_the_epoch_and_a_promotion_under_way() {
    let answer = |fields: &[&str]| {
      Value::Array(
        fields
          .iter()
          .map(|s| Value::BulkString(s.as_bytes().to_vec()))
          .collect(),
      )
    };
    let base = [
      "name",
      "main",
      "ip",
      "10.0.0.1",
      "port",
      "6379",
      "config-epoch",
      "7",
    ];
    assert_eq!(master_state(&answer(&base)), (Some(7), None));
    let mut during = base.to_vec();
    during.extend(["failover-state", "wait_promotion"]);
    assert_eq!(
      master_state(&answer(&during)),
      (Some(7), Some(("10.0.0.1".into(), 6379)))
    );
    let mut selecting = base.to_vec();
    selecting.extend(["failover-state", "select_slave"]);
    assert_eq!(master_state(&answer(&selecting)), (Some(7), None));
    assert_eq!(master_state(&Value::Nil), (None, None));
  }
}
