//! Postgres backend: the store operations of the seam (`command.rs`) as statements on
//! store-shaped tables (`schema.rs`, `ops.rs`), through a deadpool of tokio-postgres
//! connections (TLS by rustls), on tokio (`Engine::Tokio`): the calls' tasks, the lanes
//! and the pool's connections all run on the one I/O thread (`runtime::io`).
//!
//! Group commit: calls are queued to lanes (by key: a call goes to the lane of its keys, so
//! calls on one key run in the order they were made; a call whose keys fall on several
//! lanes queues a fence on each of them, see `Fence`), and each lane runs everything
//! queued to it since its last round as one group on one connection: the statements of every call go out back
//! to back (pipelined, each prepared once per connection) inside one transaction, whose
//! `COMMIT` follows them in the same write. Every write of the group is answered once
//! that `COMMIT` is acknowledged: durable as the server's `synchronous_commit` says,
//! never weaker than a call committed alone. A read of keys that no earlier call of the
//! group writes is answered as soon as its statement is (`early_reads`): it saw only
//! what was committed, so it answers what it would alone. One call alone with one statement runs
//! without `BEGIN`/`COMMIT` (autocommit), and a group of reads needs no transaction. If
//! a statement of a group fails, nothing of the group landed (the transaction rolled
//! back), and its calls run again one by one, so each gets its own answer.
//!
//! Reliability: a call that was sent on a connection that then dropped may or may not
//! have landed; it is sent again (on a new connection) only when its batch is declared
//! safe to resend, under the retry policy of the Redis drivers (`retry.rs`); the claim
//! is never resent, it rejects `UNAVAILABLE`. A serialization failure or deadlock rolled
//! everything back, so the call runs again. The lane sends a call again itself
//! (`Inner::settle`): back to the front of its queue, in order, before the calls queued
//! after it (a fenced call: while its lanes still wait at the fence), so calls on one key
//! still run in the order they were made; a call that gave up (its `commandTimeout` ran
//! out: its answer's receiver is gone) is never sent again.

mod errors;
mod ops;
pub mod schema;
mod target;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{ClientWrapper, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures_util::future::{maybe_done, BoxFuture, MaybeDone};
use tokio::sync::oneshot;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use self::errors::Kind;
use self::ops::{OpError, OpResult, Statements};
use super::retry::{self, Budget};
use crate::command::{Batch, Reply};
use crate::engine::AsyncBackend;
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::events::{ConnectionEvents, ServerInfo};
use crate::options::RetrySettings;

pub use target::{PostgresConnectionOptions, PostgresTarget};

/// Calls one group carries at most.
const GROUP_LIMIT: usize = 128;
/// Expired rows one round of a sweep removes at most: this many entries, and twice as
/// many executions' steps (`sweep` in `schema.rs`).
const SWEEP_LIMIT: i32 = 128;
/// Rounds one sweep runs at most: it goes on while a round removed as many as it may (so
/// a sweep keeps up with a steady rate of expiries), within these and `SWEEP_WITHIN`.
const SWEEP_ROUNDS: u32 = 64;
/// How long one sweep may go on starting rounds.
const SWEEP_WITHIN: Duration = Duration::from_millis(500);
/// A write group starts a sweep when this long (ms) has passed since the last one.
const SWEEP_EVERY_MS: u64 = 1_000;
/// Times a call runs again after a serialization failure or deadlock.
const CONFLICT_RETRIES: u32 = 10;
/// How often a connect attempt checks whether a call still waits for it (`unwaited`).
const UNWAITED_EVERY: Duration = Duration::from_millis(50);

/// How a Postgres store is set up.
pub struct PostgresSettings {
  pub target: PostgresTarget,
  pub schema: String,
  pub pool_size: usize,
  pub connect_timeout: Duration,
  pub command_timeout: Duration,
  pub retry: RetrySettings,
  /// Whether a missing schema and its tables are created (else calls reject).
  pub create_tables: bool,
}

/// Why one attempt at a call failed.
enum Failure {
  /// No connection could be had; nothing was sent.
  Connect(StoreError),
  /// Not sent (its group failed before it ran): always safe to send again.
  NotSent,
  /// The connection dropped with the call in flight: it may or may not have landed.
  Dropped(StoreError),
  /// Rolled back by a serialization failure or deadlock: nothing landed.
  Conflict(StoreError),
  /// Final.
  Other(StoreError),
}

impl Failure {
  /// What the call rejects with when it is not sent again.
  fn into_error(self) -> StoreError {
    match self {
      Failure::Connect(err)
      | Failure::Dropped(err)
      | Failure::Conflict(err)
      | Failure::Other(err) => err,
      Failure::NotSent => StoreError::new(ErrorCode::Unavailable, "the call was not sent"),
    }
  }
}

type Answer = Result<Vec<Reply>, Failure>;

/// A call queued on a lane. It stays the lane's until it is answered: a call sent again
/// (see `Inner::settle`) goes back to the front of its lane, before the calls made after
/// it, so calls on one key still run in the order they were made.
struct Job {
  batch: Batch,
  /// Taken by the first answer (a read may be answered before its group commits). The
  /// receiver is dropped when the call gave up (its `commandTimeout` ran out): the call
  /// is then never sent (again).
  reply: Mutex<Option<oneshot::Sender<StoreResult<Vec<Reply>>>>>,
  /// Its resends after dropped connections and failed reconnects (`retry`).
  budget: Budget,
  /// Times it ran again after a serialization failure or deadlock.
  conflicts: u32,
  /// Whether it is being sent again (after a dropped connection or a group that failed
  /// before it ran): a failed connect then backs off and tries again, within its budget.
  recovering: bool,
}

impl Job {
  fn new(
    batch: Batch,
    reply: oneshot::Sender<StoreResult<Vec<Reply>>>,
    retry: &RetrySettings,
  ) -> Self {
    let budget = Budget::new(retry, batch.may_resend());
    Self {
      batch,
      reply: Mutex::new(Some(reply)),
      budget,
      conflicts: 0,
      recovering: false,
    }
  }

  fn sender(&self) -> std::sync::MutexGuard<'_, Option<oneshot::Sender<StoreResult<Vec<Reply>>>>> {
    self.reply.lock().unwrap_or_else(|e| e.into_inner())
  }

  /// Answers the call, unless it was answered already.
  fn answer(&self, answer: StoreResult<Vec<Reply>>) {
    if let Some(reply) = self.sender().take() {
      let _ = reply.send(answer);
    }
  }

  fn answered(&self) -> bool {
    self.sender().as_ref().is_none_or(|reply| reply.is_closed())
  }
}

/// What is left of a group once it ran: its calls to send again, in the order they were
/// made (they go back to the front of the lane), and how long to wait first (a failed
/// reconnect backs off).
#[derive(Default)]
struct Again {
  jobs: Vec<Job>,
  wait: Duration,
}

/// What a lane holds: a call, or its place in a call whose keys fall on several lanes.
enum Entry {
  Job(Job),
  Fence(Arc<Fence>),
}

/// A call whose keys fall on several lanes holds a place in each of them, queued at once
/// (under `Inner::fencing`, so two such calls are in the same order on every lane and
/// cannot wait on each other). A lane stops at its fence until the call is answered; the
/// lane that reaches its fence last runs the call, alone. So the call runs after every
/// call made before it on any of its keys, and before every call made after it.
struct Fence {
  /// The lanes it holds a place in.
  lanes: Vec<usize>,
  /// Lanes that have not reached their place yet.
  waiting: std::sync::atomic::AtomicUsize,
  /// The call; taken by the lane that runs it (or by `close`).
  job: Mutex<Option<Job>>,
  /// Set once the call is answered: the lanes go on.
  done: crate::guard::Latch,
}

impl Fence {
  fn take(&self) -> Option<Job> {
    self.job.lock().unwrap_or_else(|e| e.into_inner()).take()
  }
}

/// Where a call goes: one lane, or a fence on several (see `Fence`).
enum Route {
  One(usize),
  Fenced(Vec<usize>),
}

#[derive(Default)]
struct Lane {
  queue: VecDeque<Entry>,
  running: bool,
}

struct Inner {
  pool: Pool,
  display: String,
  schema: String,
  sql: Statements,
  command_timeout: Duration,
  connect_timeout: Duration,
  /// The hosts of the target, each tried within connectTimeout (`connect_timeout` is
  /// their sum).
  hosts: u32,
  retry: RetrySettings,
  /// Whether the schema was created or checked.
  ready: AtomicBool,
  /// Whether a missing schema and its tables are created (`PostgresSettings`).
  create_tables: bool,
  preparing: tokio::sync::Mutex<()>,
  /// The lanes; several groups commit at once (the server flushes their commits together).
  lanes: Vec<Mutex<Lane>>,
  /// Held while a call's fences are queued (see `Fence`).
  fencing: Mutex<()>,
  closed: AtomicBool,
  last_sweep: AtomicU64,
  /// Set while a sweep runs: two never overlap.
  sweeping: AtomicBool,
  /// Cancel requests under way (`give_up`): `close()` resolves after them.
  cancelling: Arc<std::sync::atomic::AtomicUsize>,
  /// The TLS configuration connections use: a cancel request goes the same way.
  tls: Option<Arc<rustls::ClientConfig>>,
  /// Where the server is, for traces (`backend` is `postgres`).
  server: ServerInfo,
  /// The pool's connection events (`connect`, `drop`, `reconnect`; `target.rs` reports
  /// connections made and ended, `run_group` those given up).
  events: Arc<ConnectionEvents>,
}

/// A Postgres database, reached through a pool of connections made on first use.
pub struct PostgresBackend {
  inner: Arc<Inner>,
}

impl PostgresBackend {
  pub fn new(settings: PostgresSettings) -> StoreResult<Self> {
    let PostgresSettings {
      target,
      schema,
      pool_size,
      connect_timeout,
      command_timeout,
      retry,
      create_tables,
    } = settings;
    schema::check_schema_name(&schema)?;
    let target = target.with_connect_timeout(connect_timeout);
    let manager_config = ManagerConfig {
      recycling_method: RecyclingMethod::Fast,
    };
    let server = server_info(&target.config);
    let events = ConnectionEvents::new(server.clone());
    // Each host in turn, each within connectTimeout (`target.rs`).
    let manager = target.manager(manager_config, events.clone());
    let hosts = u32::try_from(target.host_count()).unwrap_or(u32::MAX);
    let pool = Pool::builder(manager)
      .max_size(pool_size.max(1))
      .runtime(Runtime::Tokio1)
      .build()
      .map_err(|err| StoreError::new(ErrorCode::Internal, format!("Postgres pool: {err}")))?;
    let quoted = schema::quote_ident(&schema);
    Ok(Self {
      inner: Arc::new(Inner {
        pool,
        display: target.display,
        sql: Statements::new(&quoted),
        schema,
        command_timeout,
        // connectTimeout bounds each host of a multi-host target.
        connect_timeout: connect_timeout.saturating_mul(hosts),
        hosts,
        retry,
        ready: AtomicBool::new(false),
        create_tables,
        preparing: tokio::sync::Mutex::new(()),
        // One connection is kept for the sweep.
        lanes: (0..pool_size.saturating_sub(1).max(1))
          .map(|_| Mutex::new(Lane::default()))
          .collect(),
        fencing: Mutex::new(()),
        closed: AtomicBool::new(false),
        last_sweep: AtomicU64::new(0),
        sweeping: AtomicBool::new(false),
        cancelling: Arc::default(),
        tls: target.tls.clone(),
        server,
        events,
      }),
    })
  }
}

impl AsyncBackend for PostgresBackend {
  fn speaks_redis(&self) -> bool {
    false
  }

  fn execute(&self, _what: &'static str, batch: Batch) -> BoxFuture<'_, StoreResult<Vec<Reply>>> {
    self.inner.clone().execute(batch)
  }

  fn execute_now(
    self: Arc<Self>,
    _what: &'static str,
    batch: Batch,
  ) -> Result<BoxFuture<'static, StoreResult<Vec<Reply>>>, Batch> {
    Ok(self.inner.clone().execute(batch))
  }

  fn on_io_thread(&self) -> bool {
    true
  }

  fn server_info(&self) -> Option<ServerInfo> {
    Some(self.inner.server.clone())
  }

  fn events(&self) -> Option<Arc<ConnectionEvents>> {
    Some(self.inner.events.clone())
  }

  /// Later calls reject with `DISPOSED`; the calls queued run (each still bounded by
  /// `commandTimeout`), and the pool closes once every lane is idle.
  fn close(&self) {
    self.inner.closed.store(true, Ordering::Release);
    self.inner.close_if_idle();
  }

  /// Once every lane is idle (a group that outlived its calls ran out its own
  /// `commandTimeout` and was given up), no sweep runs, and every cancel request of a
  /// connection given up was sent: what the calls made before `close()` sent to the
  /// server has ended or been cancelled, so none of it lands after `close()` resolves.
  ///
  /// Bounded: a group ends within its `commandTimeout` (then its connection is given up
  /// and cancelled), a cancel request within `connectTimeout`; past the longest of those
  /// (a bug), it resolves anyway rather than leave `close()` unsettled.
  fn quiet(&self) -> BoxFuture<'static, ()> {
    let inner = self.inner.clone();
    let give_up_at = std::time::Instant::now()
      + inner.command_timeout.max(inner.connect_timeout)
      + inner.connect_timeout;
    Box::pin(async move {
      while ((0..inner.lanes.len()).any(|i| inner.lane(i).running)
        || inner.sweeping.load(Ordering::Acquire)
        || inner.cancelling.load(Ordering::Acquire) > 0)
        && std::time::Instant::now() < give_up_at
      {
        tokio::time::sleep(Duration::from_millis(5)).await;
      }
    })
  }
}

impl Inner {
  fn lane(&self, index: usize) -> std::sync::MutexGuard<'_, Lane> {
    self.lanes[index].lock().unwrap_or_else(|e| e.into_inner())
  }

  /// A closed store's pool closes when no lane has calls left to run.
  fn close_if_idle(&self) {
    if self.closed.load(Ordering::Acquire) && (0..self.lanes.len()).all(|i| !self.lane(i).running) {
      self.pool.close();
    }
  }

  /// The lanes of a batch's keys (a batch without keys goes to lane 0). A scan reads
  /// keys it does not name: it holds its place on every lane (a fence, queued when the
  /// call is made), so it runs after every call made before it and before every call
  /// made after it.
  fn route(&self, batch: &Batch) -> Route {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
      std::sync::OnceLock::new();
    if self.lanes.len() == 1 {
      return Route::One(0);
    }
    if batch.reads_any_key() {
      return Route::Fenced((0..self.lanes.len()).collect());
    }
    let seed = SEED.get_or_init(Default::default);
    let mut lanes: Vec<usize> = batch
      .keys()
      .map(|key| (seed.hash_one(key) % self.lanes.len() as u64) as usize)
      .collect();
    lanes.sort_unstable();
    lanes.dedup();
    match lanes.len() {
      0 => Route::One(0),
      1 => Route::One(lanes[0]),
      _ => Route::Fenced(lanes),
    }
  }

  /// Queues a batch to its lane now (so calls on one key run in the order they were
  /// made; a scan on every lane, see `route`), and returns the future of its answer.
  fn execute(self: Arc<Self>, batch: Batch) -> BoxFuture<'static, StoreResult<Vec<Reply>>> {
    if let Some(command) = batch.commands.iter().find(|c| !ops::is_store_operation(c)) {
      let err = StoreError::new(
        ErrorCode::Internal,
        format!("{command:?} is a Redis command, not a store operation"),
      );
      return Box::pin(std::future::ready(Err(err)));
    }
    if let Err(err) = batch
      .commands
      .iter()
      .try_for_each(|command| ops::refuse_nul(command).and(ops::refuse_long(command)))
    {
      return Box::pin(std::future::ready(Err(err)));
    }
    let route = self.route(&batch);
    let (reply, answer) = oneshot::channel();
    // (a closed store queues nothing: the answer reads as disposed)
    if !self.closed.load(Ordering::Acquire) {
      let job = Job::new(batch, reply, &self.retry);
      match route {
        Route::One(lane) => self.submit(lane, Entry::Job(job)),
        Route::Fenced(lanes) => {
          let fence = Arc::new(Fence {
            waiting: lanes.len().into(),
            lanes,
            job: Mutex::new(Some(job)),
            done: crate::guard::Latch::default(),
          });
          let _in_order = self.fencing.lock().unwrap_or_else(|e| e.into_inner());
          for &lane in &fence.lanes {
            self.submit(lane, Entry::Fence(fence.clone()));
          }
        }
      }
    }
    // The caller bounds it by `commandTimeout`: a call that gave up is dropped from its
    // lane, never sent (again).
    Box::pin(async move { answer.await.unwrap_or_else(|_| Err(StoreError::disposed())) })
  }

  /// Decides what becomes of a call whose attempt failed: it is sent again (kept in
  /// `again`, to go back to the front of its lane) when it may be (see the module doc),
  /// else it rejects. A call that gave up meanwhile is dropped; a closed store sends
  /// nothing again (the call reads as disposed).
  fn settle(&self, mut job: Job, failure: Failure, again: &mut Again) {
    if job.answered() {
      return;
    }
    let retry = match failure {
      Failure::Other(err) => Err(err),
      Failure::NotSent => {
        job.recovering = true;
        Ok(())
      }
      Failure::Conflict(err) => {
        job.conflicts += 1;
        match job.conflicts > CONFLICT_RETRIES {
          true => Err(err),
          false => Ok(()),
        }
      }
      Failure::Dropped(err) => match job.budget.spend() {
        true => {
          // (the first reconnect after a drop is at once)
          job.budget.connected();
          job.recovering = true;
          Ok(())
        }
        false => Err(err),
      },
      Failure::Connect(err) => {
        if !job.recovering || !retry::classify(&err).may_retry() || !job.budget.spend() {
          Err(err)
        } else {
          again.wait = again.wait.max(job.budget.connect_failed(retry::jitter()));
          Ok(())
        }
      }
    };
    match retry {
      Err(err) => job.answer(Err(err)),
      Ok(()) if self.closed.load(Ordering::Acquire) => job.answer(Err(StoreError::disposed())),
      Ok(()) => again.jobs.push(job),
    }
  }

  fn submit(self: &Arc<Self>, index: usize, entry: Entry) {
    let mut lane = self.lane(index);
    lane.queue.push_back(entry);
    if !lane.running {
      lane.running = true;
      // (from the JS thread too) on the I/O thread, where the pool's connections run
      crate::runtime::spawn_io(self.clone().drain(index));
    }
  }

  /// The lane: one group at a time, each with everything queued meanwhile up to a fence.
  async fn drain(self: Arc<Self>, index: usize) {
    loop {
      let next = {
        let mut lane = self.lane(index);
        lane.queue.retain(|entry| match entry {
          Entry::Job(job) => !job.answered(),
          Entry::Fence(_) => true,
        });
        match lane.queue.front() {
          None => {
            lane.running = false;
            drop(lane);
            self.close_if_idle();
            return;
          }
          Some(Entry::Fence(fence)) => {
            let fence = fence.clone();
            lane.queue.pop_front();
            Err(fence)
          }
          Some(Entry::Job(_)) => {
            let mut jobs = Vec::new();
            while jobs.len() < GROUP_LIMIT && matches!(lane.queue.front(), Some(Entry::Job(_))) {
              if let Some(Entry::Job(job)) = lane.queue.pop_front() {
                jobs.push(job);
              }
            }
            Ok(jobs)
          }
        }
      };
      match next {
        Ok(jobs) => {
          let again = self.run_group(&[index], jobs).await;
          if again.jobs.is_empty() {
            continue;
          }
          if !again.wait.is_zero() {
            tokio::time::sleep(again.wait).await;
          }
          // Back to the front, in the order they were made: before the calls made after
          // them (which may have been queued meanwhile).
          let mut lane = self.lane(index);
          for job in again.jobs.into_iter().rev() {
            lane.queue.push_front(Entry::Job(job));
          }
        }
        Err(fence) => self.pass(&fence).await,
      }
    }
  }

  /// A lane at its fence: the last lane there runs the call; the others wait for it.
  async fn pass(self: &Arc<Self>, fence: &Fence) {
    let done = fence.done.wait();
    if fence.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
      // Sent again (see `settle`) while its lanes still wait at the fence.
      let mut next = fence.take();
      while let Some(job) = next.take() {
        if job.answered() {
          break;
        }
        let mut again = self.run_group(&fence.lanes, vec![job]).await;
        if !again.jobs.is_empty() && !again.wait.is_zero() {
          tokio::time::sleep(again.wait).await;
        }
        next = again.jobs.pop();
      }
      fence.done.set();
    }
    done.await;
  }

  /// A connection of the pool, set up (see `set_up`).
  async fn connection(&self) -> StoreResult<Object> {
    let client = self.pooled().await?;
    self.set_up(client).await
  }

  /// A connection of the pool: a new one connects within `connectTimeout`. Waiting for
  /// one of the pool's connections that is busy (the sweep's, with `poolSize` 1) is not
  /// connecting: that wait is bounded by the call's `commandTimeout` (and `unwaited`), so
  /// a busy pool on a healthy server never reads as `UNAVAILABLE`.
  async fn pooled(&self) -> StoreResult<Object> {
    let timeouts = deadpool_postgres::Timeouts {
      wait: None,
      create: Some(self.connect_timeout),
      recycle: None,
    };
    match self.pool.timeout_get(&timeouts).await {
      Ok(client) => Ok(client),
      Err(deadpool_postgres::PoolError::Backend(err)) => Err(self.connect_error(&err)),
      Err(deadpool_postgres::PoolError::Closed) => Err(StoreError::disposed()),
      Err(deadpool_postgres::PoolError::Timeout(_)) => Err(self.connect_timed_out()),
      Err(err) => Err(StoreError::cannot_connect(&self.display, err)),
    }
  }

  /// No connection within `connectTimeout` (each host's, on a multi-host target).
  fn connect_timed_out(&self) -> StoreError {
    match self.hosts > 1 {
      true => StoreError::cannot_connect(
        &self.display,
        format_args!(
          "no connection to any of its {} hosts, each tried within connectTimeout ({} ms)",
          self.hosts,
          (self.connect_timeout / self.hosts).as_millis()
        ),
      ),
      false => StoreError::connect_timeout(&self.display, self.connect_timeout),
    }
  }

  /// Resolves once no call waits for the group `jobs` of `lanes` any more: each of them
  /// and each call queued on those lanes was answered or given up (its `commandTimeout`
  /// ran out). A connect attempt then stops, and its socket closes: an attempt at a
  /// server that never answers does not outlive the calls (the process can exit, as the
  /// README says) until connectTimeout runs out.
  async fn unwaited(&self, lanes: &[usize], jobs: &[Job]) {
    loop {
      tokio::time::sleep(UNWAITED_EVERY).await;
      let waited = jobs.iter().any(|job| !job.answered())
        || lanes.iter().any(|&index| {
          self.lane(index).queue.iter().any(|entry| match entry {
            Entry::Job(job) => !job.answered(),
            Entry::Fence(fence) => {
              let job = fence.job.lock().unwrap_or_else(|e| e.into_inner());
              job.as_ref().is_some_and(|job| !job.answered())
            }
          })
        });
      if !waited {
        return;
      }
    }
  }

  /// Answers every call queued on `lanes` (a fenced call too) with `failure`: calls made
  /// while a connect attempt failed share its answer, rather than each trying again.
  fn fail_queued(&self, lanes: &[usize], failure: impl Fn() -> Failure) {
    for &index in lanes {
      let lane = self.lane(index);
      for entry in &lane.queue {
        match entry {
          // (one being sent again after a dropped connection had one: it gets its own
          // attempt, see `settle`)
          Entry::Job(job) if job.recovering => {}
          Entry::Job(job) => job.answer(Err(failure().into_error())),
          Entry::Fence(fence) => {
            if let Some(job) = fence.take() {
              job.answer(Err(failure().into_error()));
            }
          }
        }
      }
    }
  }

  /// Sets up a connection of the pool: the schema check (first use) and the statements'
  /// preparation (a new connection).
  async fn set_up(&self, client: Object) -> StoreResult<Object> {
    // The schema check (first use) and the statements' preparation (a new connection),
    // bounded: a connection stuck there (a lock, a server gone quiet) is given up rather
    // than holding its lane.
    let setup = async {
      if !self.ready.load(Ordering::Acquire) {
        let _one_at_a_time = self.preparing.lock().await;
        if !self.ready.load(Ordering::Acquire) {
          schema::prepare(&client, &self.schema, self.create_tables).await?;
          self.ready.store(true, Ordering::Release);
        }
      }
      if client.statement_cache.size() == 0 {
        let prepared = join_ordered(
          self
            .sql
            .all()
            .into_iter()
            .map(|sql| Box::pin(client.prepare_cached(sql)) as BoxFuture<'_, _>)
            .collect(),
        )
        .await;
        if let Some(Err(err)) = prepared.into_iter().find(Result::is_err) {
          return Err(errors::store_error(&err));
        }
      }
      Ok(())
    };
    // (at least `connectTimeout`: a first schema creation may take a while)
    let bound = self.command_timeout.max(self.connect_timeout);
    match tokio::time::timeout(bound, setup).await {
      Ok(Ok(())) => Ok(client),
      Ok(Err(err)) => Err(err),
      Err(_) => {
        self.give_up(client);
        Err(StoreError::new(
          ErrorCode::Timeout,
          format!(
            "setting up a connection to {} (schema check, prepared statements) took longer than {} ms (commandTimeout, at least connectTimeout)",
            self.display,
            bound.as_millis()
          ),
        ))
      }
    }
  }

  fn connect_error(&self, err: &tokio_postgres::Error) -> StoreError {
    let mapped = errors::store_error(err);
    let what = match mapped.code {
      ErrorCode::Auth => "authentication to",
      _ => "cannot connect to",
    };
    let detail = mapped.message.trim_start_matches("Postgres: ");
    let message = match mapped.code {
      ErrorCode::Auth => format!("{what} {} failed: {detail}", self.display),
      _ => format!("{what} {}: {detail}", self.display),
    };
    StoreError::new(mapped.code, message)
  }

  /// Runs one group (of the calls queued on `lanes`) and answers each of its calls, but
  /// those to send again (`settle`): they are returned, in order, for the lane to put
  /// back at its front.
  async fn run_group(self: &Arc<Self>, lanes: &[usize], jobs: Vec<Job>) -> Again {
    let mut again = Again::default();
    if jobs.iter().all(|job| job.batch.commands.is_empty()) {
      // Only empty batches: nothing to send.
      for job in jobs {
        job.answer(Ok(Vec::new()));
      }
      return again;
    }
    // The connect attempt (when the pool has no idle connection) stops when no call
    // waits for it any more (`unwaited`); the setup of a connection made is not cut
    // short (it may be inside a transaction).
    let pooled = tokio::select! {
      biased;
      pooled = self.pooled() => pooled,
      () = self.unwaited(lanes, &jobs) => return again,
    };
    let client = match pooled {
      Ok(client) => self.set_up(client).await,
      Err(err) => Err(err),
    };
    let client = match client {
      Ok(client) => client,
      Err(err) => {
        let failure = || match err.code {
          ErrorCode::Disposed | ErrorCode::Auth | ErrorCode::Tls | ErrorCode::CorruptData => {
            Failure::Other(err.clone())
          }
          _ => Failure::Connect(err.clone()),
        };
        // (a call being sent again after a dropped connection backs off and tries again,
        // within its budget)
        for job in jobs {
          self.settle(job, failure(), &mut again);
        }
        // The calls queued on these lanes meanwhile never had a connection either: they
        // get the same answer, not a connect attempt each after this one (README: a call
        // that never had a connection is not retried).
        self.fail_queued(lanes, failure);
        return again;
      }
    };
    let writes = jobs.iter().any(|job| job.batch.writes());
    let outcome = {
      let batches: Vec<&Batch> = jobs.iter().map(|job| &job.batch).collect();
      let early: Vec<Option<&Job>> = early_reads(&batches)
        .into_iter()
        .zip(&jobs)
        .map(|(early, job)| early.then_some(job))
        .collect();
      self.bounded(&client, &batches, &early).await
    };
    let answers = match outcome {
      Outcome::Answers(answers) => {
        // (a `drop` of another pool connection is followed by `reconnect` here)
        self.events.pool_answered();
        answers
      }
      Outcome::RolledBack(failure) if jobs.len() == 1 => vec![Err(failure)],
      Outcome::RolledBack(_) => {
        // Nothing of the group landed: each call again, alone, for its own answer, in
        // order (one rolled back by a conflict runs again at once, within its retries).
        // Once a call is to be sent again, the calls after it are not run: they go back
        // to the lane behind it.
        let mut gone = None;
        for mut job in jobs {
          if job.answered() {
            // (an answered read: it ran, and its answer was sent before the rollback)
            continue;
          }
          if gone.is_some() || !again.jobs.is_empty() {
            self.settle(job, Failure::NotSent, &mut again);
            continue;
          }
          let answer = loop {
            let answer = match self.bounded(&client, &[&job.batch], &[]).await {
              Outcome::Answers(mut one) => one.pop().unwrap_or(Err(Failure::NotSent)),
              Outcome::RolledBack(failure) => Err(failure),
              Outcome::Dropped(err) => {
                gone = Some(err.clone());
                Err(Failure::Dropped(err))
              }
            };
            match answer {
              Err(Failure::Conflict(_)) if job.conflicts < CONFLICT_RETRIES && !job.answered() => {
                job.conflicts += 1;
              }
              answer => break answer,
            }
          };
          match answer {
            Ok(replies) => job.answer(Ok(replies)),
            Err(failure) => self.settle(job, failure, &mut again),
          }
        }
        if let Some(err) = &gone {
          self.events.dropped(err);
          self.give_up(client);
        } else if writes {
          self.maybe_sweep();
        }
        return again;
      }
      Outcome::Dropped(err) => {
        self.events.dropped(&err);
        self.give_up(client);
        // In order: those sent again go back to the lane before the calls made after them.
        for job in jobs {
          self.settle(job, Failure::Dropped(err.clone()), &mut again);
        }
        return again;
      }
    };
    drop(client);
    if writes {
      self.maybe_sweep();
    }
    for (job, answer) in jobs.into_iter().zip(answers) {
      match answer {
        Ok(replies) => job.answer(Ok(replies)),
        Err(failure) => self.settle(job, failure, &mut again),
      }
    }
    again
  }

  /// `run` within `commandTimeout`; past it the connection is given up (its state is
  /// unknown), which counts as dropped.
  async fn bounded(
    &self,
    client: &ClientWrapper,
    batches: &[&Batch],
    early: &[Option<&Job>],
  ) -> Outcome {
    let running = run(client, &self.sql, batches, early);
    match tokio::time::timeout(self.command_timeout, running).await {
      Ok(outcome) => outcome,
      Err(_) => Outcome::Dropped(StoreError::new(
        ErrorCode::Timeout,
        format!(
          "{} did not answer within commandTimeout ({} ms)",
          self.display,
          self.command_timeout.as_millis()
        ),
      )),
    }
  }

  /// Lets a connection go whose state is unknown (it dropped, or gave no answer within
  /// `commandTimeout`): out of the pool, and what it still runs on the server is
  /// cancelled. Else the server would go on with the statement, holding its locks and its
  /// connection (dropping a client with answers due does not close its socket), and the
  /// connections given up would pile up, past `poolSize`.
  fn give_up(&self, client: Object) {
    let token = client.cancel_token();
    drop(Object::take(client));
    let tls = self.tls.clone();
    // A cancel request opens a connection: bounded as any connect is.
    let within = self.connect_timeout;
    let cancelling = self.cancelling.clone();
    cancelling.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async move {
      let cancel = async {
        let _ = match tls {
          Some(tls) => {
            token
              .cancel_query(MakeRustlsConnect::new((*tls).clone()))
              .await
          }
          None => token.cancel_query(NoTls).await,
        };
      };
      let _ = tokio::time::timeout(within, cancel).await;
      cancelling.fetch_sub(1, Ordering::AcqRel);
    });
  }

  /// Starts a bounded sweep of expired rows on a connection of its own, at most once a
  /// second per store and never two at once; its failure (a lock, a dropped connection)
  /// waits for the next. It skips rows other transactions hold (`schema.rs`), so it never
  /// waits on them. A sweep runs rounds (each one indexed, bounded statement, committed
  /// alone) while a round removes as many rows as it may, up to `SWEEP_ROUNDS` rounds or
  /// `SWEEP_WITHIN`: under a steady rate of expiries, the dead rows do not pile up.
  fn maybe_sweep(self: &Arc<Self>) {
    let now = SystemTime::now()
      .duration_since(UNIX_EPOCH)
      .map(|d| d.as_millis() as u64)
      .unwrap_or_default();
    let last = self.last_sweep.load(Ordering::Relaxed);
    if self.closed.load(Ordering::Acquire)
      || now.saturating_sub(last) < SWEEP_EVERY_MS
      || self.sweeping.load(Ordering::Acquire)
      || self
        .last_sweep
        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
      || self
        .sweeping
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
      return;
    }
    let inner = self.clone();
    tokio::spawn(async move {
      inner.sweep().await;
      inner.sweeping.store(false, Ordering::Release);
    });
  }

  /// One sweep (see `maybe_sweep`); how many rounds it ran.
  async fn sweep(self: &Arc<Self>) -> u32 {
    let Ok(Ok(client)) = tokio::time::timeout(self.command_timeout, self.connection()).await else {
      return 0;
    };
    let started = tokio::time::Instant::now();
    let mut rounds = 0;
    loop {
      let round = async {
        let statement = client.prepare_cached(&self.sql.sweep).await?;
        client.query_one(&statement, &[&SWEEP_LIMIT]).await
      };
      rounds += 1;
      let removed = match tokio::time::timeout(self.command_timeout, round).await {
        Ok(Ok(row)) => row.get::<_, Option<i32>>(0).unwrap_or(0),
        Ok(Err(err)) if err.as_db_error().is_some() => return rounds,
        // Timed out, or the connection failed: not back into the pool.
        _ => {
          self.give_up(client);
          return rounds;
        }
      };
      if removed < SWEEP_LIMIT
        || rounds >= SWEEP_ROUNDS
        || started.elapsed() >= SWEEP_WITHIN
        || self.closed.load(Ordering::Acquire)
      {
        return rounds;
      }
    }
  }
}

/// Where a Postgres store's server is, for traces: its first host (a unix socket's
/// directory has no port), port (default 5432) and database (default: the user's name).
fn server_info(config: &tokio_postgres::Config) -> ServerInfo {
  use tokio_postgres::config::Host;
  let mut server = ServerInfo::new("postgres");
  match config.get_hosts().first() {
    Some(Host::Tcp(host)) => {
      server.server_address = Some(
        host
          .trim_start_matches('[')
          .trim_end_matches(']')
          .to_string(),
      );
      server.server_port = Some(config.get_ports().first().copied().unwrap_or(5432).into());
    }
    #[cfg(unix)]
    Some(Host::Unix(path)) => server.server_address = Some(path.display().to_string()),
    None => {
      server.server_address = Some("localhost".to_string());
      server.server_port = Some(config.get_ports().first().copied().unwrap_or(5432).into());
    }
  }
  server.database = config
    .get_dbname()
    .or(config.get_user())
    .unwrap_or("postgres")
    .to_string()
    .into();
  server
}

/// What running a group did.
enum Outcome {
  /// Each call's answer (a call of a group without a transaction may fail alone).
  Answers(Vec<Answer>),
  /// The transaction rolled back: nothing of the group landed.
  RolledBack(Failure),
  /// The connection is gone (or gave no answer in time): what was sent may have landed.
  Dropped(StoreError),
}

/// The calls of a group that may be answered as soon as their statement answered, before
/// the group commits: a read of keys that no earlier call of the group writes sees only
/// what other transactions committed, and Postgres shows a commit to others once its
/// flush is done (`synchronous_commit`), so the answer is what a read alone would answer.
/// Reads of keys they do not name (scans) and multi-statement reads wait for the group.
fn early_reads(batches: &[&Batch]) -> Vec<bool> {
  let mut written: std::collections::HashSet<&str> = std::collections::HashSet::new();
  batches
    .iter()
    .map(|batch| {
      if batch.writes() {
        written.extend(batch.keys().map(String::as_str));
        return false;
      }
      matches!(&batch.commands[..], [command] if !ops::is_multi(command))
        && !batch.reads_any_key()
        && batch.keys().all(|key| !written.contains(key.as_str()))
    })
    .collect()
}

/// Runs the batches on one connection: pipelined, in one transaction when the group
/// writes with more than one statement (or a statement that reads before it writes).
/// The calls of `early` (by batch) are answered as soon as their statement answered.
async fn run(
  client: &ClientWrapper,
  sql: &Statements,
  batches: &[&Batch],
  early: &[Option<&Job>],
) -> Outcome {
  let commands: Vec<(usize, &crate::command::Command)> = batches
    .iter()
    .enumerate()
    .flat_map(|(index, batch)| batch.commands.iter().map(move |command| (index, command)))
    .collect();
  let writes = batches.iter().any(|batch| batch.writes());
  let multi = commands.iter().any(|(_, command)| ops::is_multi(command));
  let transaction = writes && (commands.len() > 1 || multi);
  let mut replies: Vec<Vec<Reply>> = batches
    .iter()
    .map(|b| Vec::with_capacity(b.commands.len()))
    .collect();
  let mut failed: Vec<Option<Failure>> = batches.iter().map(|_| None).collect();
  // Segments: runs of single-statement commands, pipelined; a multi-statement command
  // runs alone, after everything before it answered.
  let mut segments: Vec<&[(usize, &crate::command::Command)]> = Vec::new();
  let mut start = 0;
  for (i, (_, command)) in commands.iter().enumerate() {
    if ops::is_multi(command) {
      if start < i {
        segments.push(&commands[start..i]);
      }
      segments.push(&commands[i..=i]);
      start = i + 1;
    }
  }
  if start < commands.len() {
    segments.push(&commands[start..]);
  }
  let count = segments.len();
  for (k, segment) in segments.into_iter().enumerate() {
    let mut futures: Vec<BoxFuture<'_, OpResult>> = Vec::with_capacity(segment.len() + 2);
    let begin = transaction && k == 0;
    let last = transaction && k + 1 == count;
    // COMMIT follows the last segment in the same write, unless that segment is a
    // command whose later statements are only sent once its first answered.
    let multi = segment.iter().any(|(_, command)| ops::is_multi(command));
    let commit = last && !multi;
    if begin {
      futures.push(Box::pin(simple(client, "BEGIN")));
    }
    futures.extend(segment.iter().map(|(index, command)| {
      let op = ops::run(client, sql, command);
      match early.get(*index).copied().flatten() {
        Some(job) => Box::pin(async move {
          let result = op.await;
          if let Ok(reply) = &result {
            job.answer(Ok(vec![reply.clone()]));
          }
          result
        }) as BoxFuture<'_, OpResult>,
        None => op,
      }
    }));
    if commit {
      futures.push(Box::pin(simple(client, "COMMIT")));
    }
    let mut results = join_ordered(futures).await;
    let mut commit_result = commit.then(|| results.pop()).flatten();
    if begin {
      if let Err(err) = results.remove(0) {
        return Outcome::from_error(err, true);
      }
    }
    for ((index, _), result) in segment.iter().zip(results) {
      match result {
        Ok(reply) => replies[*index].push(reply),
        Err(err) if transaction => {
          if !commit {
            let _ = client.batch_execute("ROLLBACK").await;
          }
          return Outcome::from_error(err, true);
        }
        Err(err) => {
          let failure = Outcome::failure(err);
          if let Failure::Dropped(err) = failure {
            return Outcome::Dropped(err);
          }
          failed[*index].get_or_insert(failure);
        }
      }
    }
    if last && !commit {
      commit_result = Some(simple(client, "COMMIT").await);
    }
    if let Some(Err(err)) = commit_result {
      return Outcome::from_error(err, true);
    }
  }
  Outcome::Answers(
    replies
      .into_iter()
      .zip(failed)
      .map(|(replies, failed)| match failed {
        Some(failure) => Err(failure),
        None => Ok(replies),
      })
      .collect(),
  )
}

async fn simple(client: &ClientWrapper, sql: &'static str) -> OpResult {
  client.batch_execute(sql).await?;
  Ok(Reply::Ok)
}

impl Outcome {
  fn failure(err: OpError) -> Failure {
    match err {
      OpError::Store(err) => Failure::Other(err),
      OpError::Pg(err) => {
        let store = errors::store_error(&err);
        match errors::kind(&err) {
          Kind::Dropped => Failure::Dropped(StoreError::new(
            ErrorCode::Unavailable,
            format!(
              "{} (the connection dropped; the call may or may not have been applied)",
              store.message
            ),
          )),
          Kind::Conflict => Failure::Conflict(store),
          Kind::Other => Failure::Other(store),
        }
      }
    }
  }

  /// A failed statement of a transaction: rolled back, or the connection is gone.
  fn from_error(err: OpError, _transaction: bool) -> Self {
    match Self::failure(err) {
      Failure::Dropped(err) => Outcome::Dropped(err),
      failure => Outcome::RolledBack(failure),
    }
  }
}

/// Awaits futures polling each in order, so that futures that send their request when
/// first polled send them in order (pipelining on one connection).
async fn join_ordered<F: std::future::Future + Unpin>(futures: Vec<F>) -> Vec<F::Output> {
  let mut pending: Vec<MaybeDone<F>> = futures.into_iter().map(maybe_done).collect();
  std::future::poll_fn(|cx| {
    let mut done = true;
    for future in pending.iter_mut() {
      if Pin::new(future).poll(cx).is_pending() {
        done = false;
      }
    }
    match done {
      true => Poll::Ready(()),
      false => Poll::Pending,
    }
  })
  .await;
  pending
    .iter_mut()
    .map(|future| {
      Pin::new(future)
        .take_output()
        .expect("every future is done")
    })
    .collect()
}

#[cfg(test)]
mod tests;
