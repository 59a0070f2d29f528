//! Redis Cluster backend: a router of durastate's own over one [`RedisBackend`] per
//! master (the threads driver on the shared connection core, `redis_core.rs`: the
//! queue, deadlines, requeue after a drop, TLS, `AUTH` and the `durability: 'aof'`
//! check through `connect.rs`, reconnects with backoff).
//!
//! - **Slot map**: `CLUSTER SLOTS`, asked of the seed nodes and the known masters at
//!   once (the first answer wins, within `connectTimeout`; a first load that fails
//!   rejects the calls that waited for it, not retried, as a single server's first
//!   connect), on first use, and again
//!   after a `MOVED`, after a node's connection fails, on `CLUSTERDOWN` and after a
//!   call on a node times out (a hung master the cluster fails over); one refresh at a
//!   time, at least [`MIN_REFRESH_GAP`] after the last one ended. The backends of nodes that are no longer masters are closed.
//! - **Routing** (`plan.rs`): an atomic batch is one transaction per slot (every
//!   WorkerStore batch is on one slot with the `hashtag` key layout), other commands go
//!   one per part; a multi-key command over several slots (`MGET`, `UNLINK`, `DEL`) is
//!   split by slot and put back together; `SCAN` walks every master in turn, its cursor
//!   naming the masters (`scan.rs`).
//! - **Order**: a call's first batch is queued on its nodes' connection cores at once,
//!   on the thread that makes the call ([`AsyncBackend::execute_now`]); while the slot
//!   map is not known yet, calls wait in a queue, in order, and are queued on their
//!   nodes in that order once it is. So calls on one slot reach their node in the order
//!   they were made.
//! - **Redirects and failures**: `MOVED` updates the map (and asks for a refresh) and
//!   sends the part where it points; `ASK` sends it once to the node named, after
//!   `ASKING` (before `MULTI` for a transaction). Neither ran anything, so this is done
//!   for every batch, up to [`MAX_REDIRECTS`] times. `TRYAGAIN` (the keys of a
//!   multi-key part split by a migration: the source answers `ASK`, the target
//!   `TRYAGAIN`, until the keys are together; such an `ASK` is not counted as a
//!   redirect) is asked again every [`TRYAGAIN_DELAY`] at most, within `commandTimeout`
//!   (a part given up during a migration rejects `UNAVAILABLE` saying so);
//!   `CLUSTERDOWN` and a node connection that fails are retried with backoff under the
//!   store's `retry` budget and within `commandTimeout`, after a refresh of the map;
//!   a part that may have run already (a connection lost with it in flight, a timeout)
//!   is sent again only when its batch is declared safe to resend. A node's own core
//!   sends its calls again at most once after a drop (a `CLIENT KILL`: the connection
//!   is made again at once); the rest is this router's, so a call stuck on a dead master
//!   moves to the replica that replaces it. The engine bounds every call by
//!   `commandTimeout`.
//! - **Connection events** (`durastate:connection`, the store's address being its first
//!   seed): `connect` at the first slot map; the nodes' cores relay their own connection
//!   events to the router, which gives one `drop` when a node's connection is lost or a node
//!   cannot be reached by a call, and one `reconnect` once every such node (or the master
//!   that replaced it for its slots) has an open connection again. A `TIMEOUT` is no drop.
//!
//! [`AsyncBackend::execute_now`]: crate::engine::AsyncBackend::execute_now

mod plan;
mod scan;
mod slots;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::future::{join_all, BoxFuture};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::oneshot;

use super::connect::{ask_node, Login, Peer};
use super::redis::RedisBackend;
use super::redis_codec::cluster_error;
use super::retry::{self, Budget};
use crate::command::{Batch, Reply};
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::events::{ConnectionEvents, ServerInfo};
use crate::options::{CommonSettings, RetrySettings};
use crate::redis_target::ClusterTarget;
use plan::{assemble, plan, Part, Piece, Target};
use scan::ScanCursor;
use slots::{display, Address, Redirect, SlotMap};

/// Redirects one part may follow before it gives up (a slot that moves back and forth).
const MAX_REDIRECTS: u32 = 16;
/// Times a cluster-wide `SCAN` starts again because slots changed hands during it.
const MAX_SCAN_RESTARTS: u32 = 3;

/// The longest wait before asking again after a `TRYAGAIN` (a multi-key call whose keys a
/// migration split over two nodes).
const TRYAGAIN_DELAY: Duration = Duration::from_millis(100);
/// The least time from the end of one read of the slot map to the start of the next
/// (the first load excepted). Calls that keep timing out or failing (a hung master, an
/// overloaded cluster) each ask for one, and each opens a connection to every seed and
/// master: without a gap, they would run back to back for as long as the trouble lasts.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(250);

type Replies = oneshot::Receiver<StoreResult<Vec<Reply>>>;

/// Whether a refresh keeps [`MIN_REFRESH_GAP`] after the last read of the map.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gap {
  /// Asked because calls fail or time out: those keep coming while the trouble lasts.
  Keep,
  /// A listing that walked every master checks, once, that no slot changed hands
  /// meanwhile: it needs a read made after its walk, and makes only one per walk.
  Skip,
}

/// A part of a call, queued on its node.
struct Sent {
  part: Part,
  replies: Replies,
  /// The node it was sent to: a redirect that names no host means that node's host.
  to: Option<Address>,
}

/// A call that waits for the slot map, in call order.
struct Waiting {
  what: &'static str,
  batch: Batch,
  sent: oneshot::Sender<StoreResult<Vec<Sent>>>,
}

#[derive(Default)]
struct Router {
  map: Option<SlotMap>,
  /// Refreshes tried so far (those that failed included).
  refreshes: u64,
  /// When the last read of the map ended (its answer or its failure).
  last_read: Option<tokio::time::Instant>,
  /// One backend per node calls were sent to (the masters of the map, and nodes a
  /// redirect named).
  nodes: HashMap<Address, Arc<RedisBackend>>,
  /// Calls made before the slot map is known.
  waiting: VecDeque<Waiting>,
  /// A first load of the map is under way.
  loading: bool,
  /// A refresh was asked for (after a `MOVED`) and has not started yet.
  refresh_asked: bool,
  /// Every master was checked for `durability: 'aof'` (at the first load).
  aof_checked: bool,
  /// Nodes whose connection is open now (their cores' own connection events say so).
  open_nodes: HashSet<Address>,
  /// Nodes the store needs whose connection was lost or could not be opened, since the
  /// `drop` event: a master that replaced one for its slots takes its place here.
  lost: HashSet<Address>,
  /// A `drop` event was given and no `reconnect` since: the next is given once no node
  /// the store needs is lost (a connection to each opened again).
  dropped: bool,
  /// `close` was called: no new call is taken.
  closed: bool,
  /// Calls taken and not yet answered: after `close`, the nodes close when none is left.
  calls: usize,
}

impl Router {
  /// Closed, with no call left: nothing is sent or refreshed any more.
  fn shut(&self) -> bool {
    self.closed && self.calls == 0
  }
}

/// Counts a call taken (`Router::calls`) until it is answered or given up.
struct Taken(Arc<Inner>);

impl Drop for Taken {
  fn drop(&mut self) {
    let nodes = {
      let mut router = self.0.lock();
      router.calls -= 1;
      match router.shut() {
        true => std::mem::take(&mut router.nodes),
        false => HashMap::new(),
      }
    };
    for node in nodes.values() {
      node.close();
    }
  }
}

/// Asks for a refresh of the slot map when dropped holding its `Inner`: a part's
/// [`follow`](Inner::follow) dropped before it ended, at the call's deadline.
struct RefreshOnDrop(Option<Arc<Inner>>);

impl Drop for RefreshOnDrop {
  fn drop(&mut self) {
    if let Some(inner) = self.0.take() {
      let mut router = inner.lock();
      inner.ask_refresh(&mut router);
    }
  }
}

struct Inner {
  /// Itself, for the node connections' event relays (which must not keep it alive).
  me: Weak<Inner>,
  target: ClusterTarget,
  seeds: Vec<Address>,
  require_aof: bool,
  connect_timeout: Duration,
  command_timeout: Duration,
  retry: RetrySettings,
  events: Arc<ConnectionEvents>,
  router: Mutex<Router>,
  /// Held while the map is refreshed: one refresh at a time.
  refreshing: tokio::sync::Mutex<()>,
}

/// A Redis Cluster, routed by durastate over one connection core per master.
pub struct ClusterBackend {
  inner: Arc<Inner>,
  pub events: Arc<ConnectionEvents>,
}

impl ClusterBackend {
  /// A backend for `target` that connects on first use. `require_aof`: every master must
  /// fsync every write (`durability: 'aof'`), checked at the first connect and at every
  /// node connection.
  pub fn new(
    target: ClusterTarget,
    common: &CommonSettings,
    require_aof: bool,
  ) -> StoreResult<Self> {
    let seeds = target.seed_addresses();
    if seeds.is_empty() {
      return Err(StoreError::invalid_input(
        "option `cluster` needs at least one node URL (redis://host:port or rediss://host:port)",
      ));
    }
    let seed = target
      .display
      .strip_prefix("cluster ")
      .and_then(|urls| urls.split(',').next());
    let events = ConnectionEvents::new(ServerInfo::cluster(seed));
    let inner = Arc::new_cyclic(|me| Inner {
      me: me.clone(),
      target,
      seeds,
      require_aof,
      connect_timeout: common.connect_timeout,
      command_timeout: common.command_timeout,
      retry: common.retry,
      events: events.clone(),
      router: Mutex::new(Router::default()),
      refreshing: tokio::sync::Mutex::new(()),
    });
    Ok(Self { inner, events })
  }

  /// Runs one batch: queued on its nodes now (see the module's doc), answered by the
  /// future.
  pub fn submit(
    &self,
    what: &'static str,
    batch: Batch,
  ) -> BoxFuture<'static, StoreResult<Vec<Reply>>> {
    let inner = self.inner.clone();
    {
      let mut router = inner.lock();
      if router.closed {
        return Box::pin(std::future::ready(Err(StoreError::disposed())));
      }
      router.calls += 1;
    }
    let taken = Taken(inner.clone());
    let begun = inner.begin(what, &batch);
    async move {
      let _taken = taken;
      // The slot map could not be read at all (no seed answered within
      // `connectTimeout`): as on a single server, a call that never had a connection is
      // not retried, so an outage shows at once. The next call reads the map again.
      let sent = begun.sent().await?;
      inner.finish(what, batch, sent).await
    }
    .boxed()
  }

  /// Takes no more calls; the calls taken finish (those waiting for the slot map too,
  /// and their redirects), then the nodes' connections close.
  pub fn close(&self) {
    let nodes = {
      let mut router = self.inner.lock();
      router.closed = true;
      match router.shut() {
        true => std::mem::take(&mut router.nodes),
        false => HashMap::new(),
      }
    };
    for node in nodes.values() {
      node.close();
    }
  }
}

/// A call's first attempt: queued on its nodes, or waiting for the slot map.
enum Begun {
  Sent(StoreResult<Vec<Sent>>),
  Waiting(oneshot::Receiver<StoreResult<Vec<Sent>>>),
}

impl Begun {
  async fn sent(self) -> StoreResult<Vec<Sent>> {
    match self {
      Begun::Sent(sent) => sent,
      Begun::Waiting(sent) => sent.await.unwrap_or_else(|_| Err(StoreError::disposed())),
    }
  }
}

impl Inner {
  fn lock(&self) -> MutexGuard<'_, Router> {
    self.router.lock().unwrap_or_else(|e| e.into_inner())
  }

  /// Queues the batch on its nodes now when the slot map is known and no call waits
  /// for it; else it waits for the map behind the calls made before it.
  fn begin(self: &Arc<Self>, what: &'static str, batch: &Batch) -> Begun {
    let mut router = self.lock();
    if router.shut() {
      return Begun::Sent(Err(StoreError::disposed()));
    }
    if router.map.is_some() && router.waiting.is_empty() {
      return Begun::Sent(self.dispatch(&mut router, what, batch));
    }
    let (sent, receiver) = oneshot::channel();
    router.waiting.push_back(Waiting {
      what,
      batch: batch.clone(),
      sent,
    });
    if !router.loading && router.map.is_none() {
      router.loading = true;
      let inner = self.clone();
      crate::runtime::spawn_io(async move {
        inner.refresh(None, Gap::Keep).await;
      });
    }
    Begun::Waiting(receiver)
  }

  /// Queues each part of `batch` on its node, in order.
  fn dispatch(
    &self,
    router: &mut Router,
    what: &'static str,
    batch: &Batch,
  ) -> StoreResult<Vec<Sent>> {
    let (masters, layout) = router
      .map
      .as_ref()
      .map(|m| (m.masters.clone(), m.layout()))
      .unwrap_or_default();
    let parts = plan(batch, &masters, layout)?;
    Ok(
      parts
        .into_iter()
        .map(|part| {
          let (replies, to) = self.send_locked(router, what, &part, None);
          Sent { part, replies, to }
        })
        .collect(),
    )
  }

  /// Sends `part` to the node its target names now (`ask`: to that node, after
  /// `ASKING`); a part that cannot be sent gets its error through the receiver. Also
  /// answers the node it went to.
  fn send_locked(
    &self,
    router: &mut Router,
    what: &'static str,
    part: &Part,
    ask: Option<&Address>,
  ) -> (Replies, Option<Address>) {
    let address = match (ask, &part.target) {
      (Some(address), _) => Some(address.clone()),
      (None, Target::Node(address)) => Some(address.clone()),
      (None, Target::Slot(slot)) => router.map.as_ref().and_then(|m| m.owner(*slot)).cloned(),
    };
    let to = address.clone();
    let sent = match (router.shut(), address) {
      (true, _) => Err(StoreError::disposed()),
      (false, None) => Err(StoreError::new(
        ErrorCode::Unavailable,
        format!("no master of {} serves the slot", self.target.display),
      )),
      (false, Some(address)) => self.node(router, &address).and_then(|node| {
        node
          .send(what, part.batch.clone(), ask.is_some())
          .map_err(|()| StoreError::disposed())
      }),
    };
    let replies = sent.unwrap_or_else(|err| {
      let (reply, replies) = oneshot::channel();
      let _ = reply.send(Err(err));
      replies
    });
    (replies, to)
  }

  fn send(
    &self,
    what: &'static str,
    part: &Part,
    ask: Option<&Address>,
  ) -> (Replies, Option<Address>) {
    let mut router = self.lock();
    self.send_locked(&mut router, what, part, ask)
  }

  /// The backend of the node at `address`, made on first use.
  fn node(&self, router: &mut Router, address: &Address) -> StoreResult<Arc<RedisBackend>> {
    if let Some(node) = router.nodes.get(address) {
      return Ok(node.clone());
    }
    let target = self.target.node(&address.0, address.1, self.require_aof)?;
    // The node's core sends a call again at most once after a drop (a killed
    // connection, made again at once); anything longer is the router's (see the doc).
    let retry = RetrySettings {
      attempts: self.retry.attempts.min(1),
      ..self.retry
    };
    let node = Arc::new(RedisBackend::new(
      target,
      self.connect_timeout,
      self.command_timeout,
      retry,
    ));
    let (me, at) = (self.me.clone(), address.clone());
    node.events.relay(Arc::new(move |kind, err| {
      if let Some(inner) = me.upgrade() {
        inner.node_event(&at, kind, err);
      }
    }));
    router.nodes.insert(address.clone(), node.clone());
    Ok(node)
  }

  /// A node's connection opened (`kind`: `connect`, `reconnect`) or dropped (`drop`, with
  /// its error), as its core tells: the store's own events follow (see
  /// [`node_lost`](Self::node_lost)). A node no longer in use (closed after a refresh) is
  /// not followed.
  fn node_event(&self, address: &Address, kind: &'static str, err: Option<&StoreError>) {
    let mut router = self.lock();
    if !router.nodes.contains_key(address) {
      return;
    }
    match err {
      Some(err) if kind == "drop" => {
        router.open_nodes.remove(address);
        // (The node's core does not say which node it is.)
        let err = StoreError {
          message: format!("cluster node {}: {}", display(address), err.message),
          ..err.clone()
        };
        self.node_lost(&mut router, address, &err);
      }
      _ => {
        router.open_nodes.insert(address.clone());
        router.lost.remove(address);
        self.maybe_reconnected(&mut router);
      }
    }
  }

  /// The connection to a node the store needs was lost or cannot be opened: one `drop`
  /// event for the store until it is connected again, not one per call or retry.
  fn node_lost(&self, router: &mut Router, address: &Address, err: &StoreError) {
    if router.closed {
      return;
    }
    router.lost.insert(address.clone());
    router.dropped = true;
    self.events.dropped(err);
  }

  /// After a `drop`: `reconnect` once no node the store needs is lost (each one's
  /// connection, or its replacement master's, opened again).
  fn maybe_reconnected(&self, router: &mut Router) {
    if router.closed || !router.dropped || !router.lost.is_empty() {
      return;
    }
    router.dropped = false;
    self.events.connected(self.events.server().address());
  }

  /// A new slot map: a lost node that is a master no more is replaced, for the store's
  /// events, by the masters that serve its slots now (those not connected yet).
  fn replace_lost(router: &mut Router, map: &SlotMap) {
    let gone: Vec<Address> = router
      .lost
      .iter()
      .filter(|address| !map.masters.contains(address))
      .cloned()
      .collect();
    for address in gone {
      router.lost.remove(&address);
      let Some(old) = router.map.as_ref() else {
        continue;
      };
      let mut heirs = HashSet::new();
      for slot in (0..slots::SLOTS).filter_map(|slot| u16::try_from(slot).ok()) {
        if old.owner(slot) == Some(&address) {
          if let Some(heir) = map.owner(slot) {
            heirs.insert(heir.clone());
          }
        }
      }
      for heir in heirs {
        if !router.open_nodes.contains(&heir) {
          router.lost.insert(heir);
        }
      }
    }
  }

  /// The replies of every part, followed through redirects and retries, put together.
  async fn finish(
    self: Arc<Self>,
    what: &'static str,
    batch: Batch,
    sent: Vec<Sent>,
  ) -> StoreResult<Vec<Reply>> {
    let mut parts = Vec::with_capacity(sent.len());
    let mut follows = Vec::with_capacity(sent.len());
    for Sent { part, replies, to } in sent {
      parts.push(part.clone());
      follows.push(self.follow(what, part, replies, to));
    }
    let answers = join_all(follows).await;
    if let (
      [Part {
        piece: Piece::Scan { cursor, .. },
        ..
      }],
      1,
    ) = (&parts[..], batch.commands.len())
    {
      let start = cursor.clone();
      let answer = answers.into_iter().next().expect("one part, one answer");
      return self.scan_page(&batch, parts, start, answer).await;
    }
    let answers = answers.into_iter().collect::<StoreResult<Vec<_>>>()?;
    assemble(&batch, parts, answers)
  }

  /// One page of a cluster-wide `SCAN` (a walk over the masters `start` names). The walk
  /// saw every key only if no slot changed hands during it: at its end, the slot map is
  /// read again, and a walk whose map changed starts again on the new masters (the keys
  /// found twice are listed once by the callers). A page whose master is gone (a failover)
  /// starts the walk again too, rather than asking a dead node.
  async fn scan_page(
    &self,
    batch: &Batch,
    parts: Vec<Part>,
    start: ScanCursor,
    answer: StoreResult<Vec<Reply>>,
  ) -> StoreResult<Vec<Reply>> {
    let again = |masters: Vec<Address>, layout: u64, keys: Vec<String>| {
      if start.restarts >= MAX_SCAN_RESTARTS {
        return Err(StoreError::new(
          ErrorCode::Unavailable,
          format!(
            "the slots of {} changed hands during {} listings in a row (resharding or failover under way): try again",
            self.target.display,
            MAX_SCAN_RESTARTS + 1
          ),
        ));
      }
      let cursor = ScanCursor::start(masters, layout, start.restarts + 1).encode();
      Ok(vec![Reply::Scan { cursor, keys }])
    };
    match answer {
      Ok(answer) => {
        let mut replies = assemble(batch, parts, vec![answer])?;
        if !matches!(replies.first(), Some(Reply::Scan { cursor, .. }) if cursor == "0") {
          return Ok(replies);
        }
        let seen = self.lock().refreshes;
        self.refresh(Some(seen), Gap::Skip).await;
        let Some((masters, layout)) = self.current_layout() else {
          return Ok(replies);
        };
        if layout == start.layout {
          return Ok(replies);
        }
        let Some(Reply::Scan { keys, .. }) = replies.pop() else {
          unreachable!("a scan page")
        };
        again(masters, layout, keys)
      }
      // (`follow` read the map again after the failure)
      Err(err) if !err.from_server && retry::classify(&err).may_retry() => {
        match self.current_layout() {
          Some((masters, layout)) if !masters.contains(start.master()) => {
            again(masters, layout, Vec::new())
          }
          _ => Err(err),
        }
      }
      Err(err) => Err(err),
    }
  }

  /// The masters of the slot map and its layout, when a map is known.
  fn current_layout(&self) -> Option<(Vec<Address>, u64)> {
    let router = self.lock();
    let map = router.map.as_ref()?;
    Some((map.masters.clone(), map.layout()))
  }

  /// One part's replies ([`follow_replies`](Self::follow_replies)). A part that ends in
  /// `TIMEOUT`, by its node's deadline or by the call's (the engine drops this future at
  /// its `commandTimeout`, the moment the node's own deadline would end it too), asks for
  /// a refresh of the map in the background: its node may be a master that hangs (paused,
  /// cut off) and that the cluster fails over, which no redirect and no dropped connection
  /// would tell. The calls made after the refresh go to the new master; nothing is sent
  /// again for this one.
  async fn follow(
    self: &Arc<Self>,
    what: &'static str,
    part: Part,
    replies: Replies,
    to: Option<Address>,
  ) -> StoreResult<Vec<Reply>> {
    let mut ended_by_deadline = RefreshOnDrop(Some(self.clone()));
    let answer = self.follow_replies(what, part, replies, to).await;
    ended_by_deadline.0 = None;
    if matches!(&answer, Err(err) if err.code == ErrorCode::Timeout) {
      self.ask_refresh(&mut self.lock());
    }
    answer
  }

  /// One part's replies: follows `MOVED` and `ASK`, and retries what may be retried.
  async fn follow_replies(
    self: &Arc<Self>,
    what: &'static str,
    part: Part,
    mut replies: Replies,
    mut to: Option<Address>,
  ) -> StoreResult<Vec<Reply>> {
    let mut budget = Budget::new(&self.retry, true);
    let mut redirects = 0;
    // The last answer was `TRYAGAIN`: the `ASK` that follows is the same migration
    // (the source sends the part to the target, which cannot run it yet), waited for
    // under the retry budget, not a redirect loop.
    let mut after_tryagain = false;
    let started = tokio::time::Instant::now();
    loop {
      let err = match replies.await {
        Ok(Ok(answer)) => return Ok(answer),
        Ok(Err(err)) => err,
        Err(_) => StoreError::disposed(),
      };
      let redirect = cluster_error(&err)
        .and_then(|(code, details)| Redirect::parse(code, details))
        .map(|redirect| redirect.on_host_of(to.as_ref()));
      match redirect {
        Some(Redirect::Moved(slot, address)) if redirects < MAX_REDIRECTS => {
          redirects += 1;
          after_tryagain = false;
          let mut router = self.lock();
          if let Some(map) = router.map.as_mut() {
            map.moved(slot, &address);
          }
          self.ask_refresh(&mut router);
          // Sent where the map now says: the node `MOVED` named.
          (replies, to) = self.send_locked(&mut router, what, &part, None);
          continue;
        }
        Some(Redirect::Ask(address)) if after_tryagain || redirects < MAX_REDIRECTS => {
          if !std::mem::take(&mut after_tryagain) {
            redirects += 1;
          }
          (replies, to) = self.send(what, &part, Some(&address));
          continue;
        }
        Some(Redirect::Ask(_)) => return Err(self.migrating(&part, &err)),
        Some(Redirect::Wait { down }) => {
          // `TRYAGAIN` ran nothing and ends when the migration does: asked again every
          // 50-100 ms (as ioredis's `retryDelayOnTryAgain`) for as long as the call's
          // `commandTimeout` lasts, without spending the `retry` budget, which 3 attempts
          // of backoff (about 350 ms) made too short for a slot moved key by key.
          // `CLUSTERDOWN` waits under the budget, with backoff.
          let delay = match down {
            true => budget.connect_failed(retry::jitter()),
            false => TRYAGAIN_DELAY.mul_f64(0.5 + retry::jitter() / 2.0),
          };
          // A migration is given up before the call's own `commandTimeout` would end it
          // as a `TIMEOUT` (a tenth of it kept for the last attempt's round trip), so the
          // error says why.
          let in_time =
            down || started.elapsed() + delay + self.command_timeout / 10 < self.command_timeout;
          if (down && !budget.spend()) || !in_time {
            return Err(match down {
              true => err,
              false => self.migrating(&part, &err),
            });
          }
          after_tryagain = !down;
          if down {
            let seen = self.lock().refreshes;
            self.refresh(Some(seen), Gap::Keep).await;
          }
          tokio::time::sleep(delay).await;
          (replies, to) = self.send(what, &part, None);
          continue;
        }
        Some(_) => return Err(err),
        None => {}
      }
      // An error the server answered (OOM, a script error) is the call's answer, as on a
      // single server: the connection is fine, and nothing is gained by sending it again.
      if err.code == ErrorCode::Disposed || err.from_server || !retry::classify(&err).may_retry() {
        return Err(err);
      }
      // The node's connection failed, or the call timed out. A part that may have run
      // (lost in flight, timed out) goes again only if its batch says it may.
      let may_have_run = err.code == ErrorCode::Timeout || err.may_have_run;
      if (may_have_run && !part.batch.may_resend()) || !budget.spend() {
        return Err(err);
      }
      // A node that cannot be reached is a `drop` for the store (once: see `node_lost`); a
      // connection lost in flight was one already (its core said so), and a `TIMEOUT` is
      // none, as on a single server: the connection is still open.
      if let (false, Some(address)) = (err.code == ErrorCode::Timeout, &to) {
        let mut router = self.lock();
        if !router.open_nodes.contains(address) {
          self.node_lost(&mut router, address, &err);
        }
      }
      let seen = self.lock().refreshes;
      self.refresh(Some(seen), Gap::Keep).await;
      // A scan page whose master is one no more: its walk starts again (`scan_page`).
      if let (Piece::Scan { .. }, Target::Node(address)) = (&part.piece, &part.target) {
        if self
          .current_layout()
          .is_some_and(|(masters, _)| !masters.contains(address))
        {
          return Err(err);
        }
      }
      tokio::time::sleep(budget.connect_failed(retry::jitter())).await;
      (replies, to) = self.send(what, &part, None);
    }
  }

  /// The error of a part given up while its slot is migrated (`ASK` and `TRYAGAIN` for
  /// longer than the retry budget or `commandTimeout`; `err`, the last answer, says
  /// which slot when the part's target does not).
  fn migrating(&self, part: &Part, err: &StoreError) -> StoreError {
    let slot = match &part.target {
      Target::Slot(slot) => Some(*slot),
      Target::Node(_) => cluster_error(err)
        .and_then(|(_, details)| details.split_whitespace().next()?.parse::<u16>().ok()),
    };
    let slot = slot.map_or("a slot".to_string(), |slot| format!("slot {slot}"));
    StoreError::new(
      ErrorCode::Unavailable,
      format!(
        "{slot} of {} is being migrated to another node, and a call on several of its keys cannot run until the migration ends: try again",
        self.target.display
      ),
    )
  }

  /// Asks for a refresh of the map in the background, unless one is asked already.
  fn ask_refresh(self: &Arc<Self>, router: &mut Router) {
    if router.refresh_asked || router.shut() {
      return;
    }
    router.refresh_asked = true;
    let seen = router.refreshes;
    let inner = self.clone();
    crate::runtime::spawn_io(async move {
      inner.refresh(Some(seen), Gap::Keep).await;
    });
  }

  /// Reads the slot map again, unless a refresh began after `seen` (the count of
  /// refreshes the caller saw; `None` for the first load); one at a time, and a refresh
  /// starts [`MIN_REFRESH_GAP`] after the last read ended at the soonest (those asked
  /// meanwhile are this one), unless `gap` is [`Gap::Skip`]. The first map also queues
  /// the calls that waited for it, in order.
  async fn refresh(&self, seen: Option<u64>, gap: Gap) {
    let _one_at_a_time = self.refreshing.lock().await;
    if seen.is_some() && gap == Gap::Keep {
      let next = {
        let router = self.lock();
        if router.shut() || seen.is_some_and(|seen| seen != router.refreshes) {
          return;
        }
        router.last_read.map(|end| end + MIN_REFRESH_GAP)
      };
      if let Some(next) = next {
        tokio::time::sleep_until(next).await;
      }
    }
    let (asked, check_aof) = {
      let mut router = self.lock();
      if router.shut() || seen.is_some_and(|seen| seen != router.refreshes) {
        return;
      }
      router.refreshes += 1;
      router.refresh_asked = false;
      let mut asked = self.seeds.clone();
      if let Some(map) = &router.map {
        for master in &map.masters {
          if !asked.contains(master) {
            asked.push(master.clone());
          }
        }
      }
      (asked, self.require_aof && !router.aof_checked)
    };
    let mut loaded = self.read_map(&asked).await;
    if let (Ok(map), true) = (&loaded, check_aof) {
      if let Err(err) = self.check_aof(&map.masters).await {
        loaded = Err(err);
      }
    }
    let mut router = self.lock();
    router.loading = false;
    router.last_read = Some(tokio::time::Instant::now());
    let map = match loaded {
      Ok(map) => map,
      Err(err) => {
        // Calls that waited for a first map get the error (and retry under their budget).
        for call in std::mem::take(&mut router.waiting) {
          let _ = call.sent.send(Err(err.clone()));
        }
        return;
      }
    };
    if router.shut() {
      return;
    }
    router.aof_checked |= check_aof;
    // Nodes that are no longer masters: calls in flight there finish, none goes there again.
    let stale: Vec<Address> = router
      .nodes
      .keys()
      .filter(|address| !map.masters.contains(address))
      .cloned()
      .collect();
    for address in stale {
      router.open_nodes.remove(&address);
      if let Some(node) = router.nodes.remove(&address) {
        node.close();
      }
    }
    Self::replace_lost(&mut router, &map);
    let first = router.map.is_none();
    router.map = Some(map);
    if first {
      self.events.connected(self.events.server().address());
    } else {
      self.maybe_reconnected(&mut router);
    }
    for call in std::mem::take(&mut router.waiting) {
      let sent = self.dispatch(&mut router, call.what, &call.batch);
      let _ = call.sent.send(sent);
    }
  }

  /// `CLUSTER SLOTS`, asked of every node in `asked` at once; the first answer wins.
  async fn read_map(&self, asked: &[Address]) -> StoreResult<SlotMap> {
    let attempts = asked.iter().map(|address| {
      async move {
        let shown = format!("cluster node {}", display(address));
        let peer = Peer {
          display: &shown,
          tls: self.target.tls.as_deref(),
        };
        let login = self.login(false);
        let command = redis::cmd("CLUSTER").arg("SLOTS").clone();
        let answers = ask_node(
          &address.0,
          address.1,
          peer,
          &login,
          self.connect_timeout,
          &[command],
        )
        .await?;
        let reply = answers.into_iter().next().unwrap_or(redis::Value::Nil);
        if let redis::Value::ServerError(err) = &reply {
          return Err(StoreError::new(
            ErrorCode::Unavailable,
            format!(
              "{shown} answered CLUSTER SLOTS with {}: {}",
              err.code(),
              err.details().unwrap_or_default()
            ),
          ));
        }
        SlotMap::from_cluster_slots(&reply, address)
          .filter(|map| !map.masters.is_empty())
          .ok_or_else(|| {
            StoreError::new(ErrorCode::Unavailable, format!("{shown} gave no slot map"))
          })
      }
      .boxed()
    });
    let mut pending: FuturesUnordered<_> = attempts.collect();
    let mut errors = Vec::new();
    while let Some(result) = pending.next().await {
      match result {
        Ok(map) => return Ok(map),
        Err(err) => errors.push(err),
      }
    }
    // No node answered: an AUTH or TLS failure is the one to fix, so it is the one given.
    let chosen = errors
      .iter()
      .position(|e| e.code == ErrorCode::Auth)
      .or_else(|| errors.iter().position(|e| e.code == ErrorCode::Tls))
      .unwrap_or(0);
    match errors.into_iter().nth(chosen) {
      Some(err) => Err(self.cannot_connect(err)),
      None => Err(StoreError::invalid_input("a Redis Cluster needs a node")),
    }
  }

  fn login(&self, require_aof: bool) -> Login<'_> {
    Login {
      username: self.target.username.as_deref(),
      password: self.target.password.as_deref(),
      db: 0,
      db_origin: "",
      require_aof,
      check_master: false,
    }
  }

  /// `durability: 'aof'` on every master (at the first connect), all at once.
  async fn check_aof(&self, masters: &[Address]) -> StoreResult<()> {
    let checks = masters.iter().map(|address| async move {
      let shown = format!("cluster node {}", display(address));
      let peer = Peer {
        display: &shown,
        tls: self.target.tls.as_deref(),
      };
      ask_node(
        &address.0,
        address.1,
        peer,
        &self.login(true),
        self.connect_timeout,
        &[],
      )
      .await
      .map(|_| ())
    });
    for result in join_all(checks).await {
      result.map_err(|err| self.cannot_connect(err))?;
    }
    Ok(())
  }

  fn cannot_connect(&self, err: StoreError) -> StoreError {
    StoreError::new(
      err.code,
      format!("cannot connect to {}: {}", self.target.display, err.message),
    )
  }
}
