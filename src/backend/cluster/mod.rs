//! Redis Cluster backend: redis-rs `cluster-async` (slot routing, `MOVED`/`ASK`,
//! reconnects), one cluster connection per store, made on first use and re-made after
//! it breaks.
//!
//! A batch runs in one round trip per slot it touches, all slots at once: commands on
//! one slot go as one pipeline (`MULTI`/`EXEC` when the batch is atomic), a multi-key
//! command over several slots (`MGET`, `UNLINK`, `EXISTS`, `DEL`) alone, which redis-rs
//! splits by slot and reassembles. An atomic batch is atomic per slot: with the
//! `hashtag` key layout every WorkerStore batch is on one slot. `SCAN` walks every
//! master in turn; the opaque cursor names the masters, the current one and its cursor.

mod node;
mod scan;
mod transaction;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_routing::Slot;
use redis::{RedisResult, Value};

use super::redis_codec::{decode, to_redis};
use super::retry::{self, Budget};
use crate::command::{Batch, Command, Reply};
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::events::{ConnectionEvents, ServerInfo};
use crate::options::{CommonSettings, RetrySettings};
use crate::redis_target::ClusterTarget;
use node::{NodeConnection, NodeSettings, Registration};
use scan::scan_page;
use transaction::transaction;

/// How a batch is split: the command indices sent together.
enum Group {
  /// Commands on one slot: one pipeline (a transaction when `atomic`).
  Slot(Vec<usize>, bool),
  /// One command on several slots, or on none: redis-rs routes (and splits) it.
  Alone(usize),
  /// A `SCAN` page, on the master its cursor names.
  Scan(usize),
}

/// redis-rs's cluster connection, on node connections of durastate's own (`node.rs`).
type Connection = redis::cluster_async::ClusterConnection<NodeConnection>;

#[derive(Default)]
struct Live {
  live: Option<Connection>,
  generation: u64,
  closed: bool,
}

/// A Redis Cluster reached through redis-rs's cluster connection.
pub struct ClusterBackend {
  client: ClusterClient,
  /// What each node connection needs (TLS, credentials, checks), for as long as the store lives.
  nodes: Registration,
  display: String,
  connect_timeout: Duration,
  retry: RetrySettings,
  slot: Mutex<Live>,
  connecting: tokio::sync::Mutex<()>,
  pub events: Arc<ConnectionEvents>,
}

impl ClusterBackend {
  /// A backend for `target` that connects on first use. `require_aof`: every node it
  /// connects to must fsync every write (`durability: 'aof'`), checked at each connect.
  pub fn new(
    target: ClusterTarget,
    common: &CommonSettings,
    require_aof: bool,
  ) -> StoreResult<Self> {
    let settings = NodeSettings::new(
      target.username,
      target.password,
      target.tls,
      require_aof,
      common.connect_timeout,
    );
    let nodes = Registration::new(settings);
    let client = ClusterClientBuilder::new(target.seeds)
      .connection_timeout(common.connect_timeout)
      .response_timeout(common.command_timeout)
      // Not a database (a cluster has only 0): the key of this store's node settings (node.rs).
      .database_id(nodes.key)
      .build()
      .map_err(|err| StoreError::invalid_input(format!("invalid cluster options: {err}")))?;
    let seed = target
      .display
      .strip_prefix("cluster ")
      .and_then(|urls| urls.split(',').next());
    let events = ConnectionEvents::new(ServerInfo::cluster(seed));
    Ok(Self {
      events,
      client,
      nodes,
      display: target.display,
      connect_timeout: common.connect_timeout,
      retry: common.retry,
      slot: Mutex::new(Live::default()),
      connecting: tokio::sync::Mutex::new(()),
    })
  }

  /// Runs a batch of call `what`. redis-rs follows `MOVED`/`ASK` and a failover itself
  /// (it reconnects, rebuilds its slot map when a node is gone, and retries, any command,
  /// `HSETNX` included). As a guard against a cluster connection that wedges or gives up
  /// (redis-rs#1953, #1005), an attempt of a batch declared safe to resend
  /// ([`crate::command::Resend`]) gets `connectTimeout`; when it fails on the connection, on a
  /// cluster that is down or resharding, or times out, the cluster connection is re-made
  /// from the seed nodes (a fresh slot map) and the batch sent again, with backoff, up to
  /// `retry.attempts` times. The caller bounds the whole by `commandTimeout`.
  pub async fn execute(&self, what: &str, batch: &Batch) -> StoreResult<Vec<Reply>> {
    let mut budget = Budget::new(&self.retry, batch.may_resend());
    if !batch.may_resend() || self.retry.attempts == 0 {
      return self.run(batch).await.map_err(|(err, _)| err);
    }
    loop {
      let generation = self.generation();
      let attempt = tokio::time::timeout(self.connect_timeout, self.run(batch)).await;
      let err = match attempt {
        Ok(Ok(replies)) => return Ok(replies),
        Ok(Err((err, transient))) if transient => err,
        Ok(Err((err, _))) => return Err(err),
        Err(_) => StoreError::timeout(what, self.connect_timeout.as_millis() as u64),
      };
      if !budget.spend() {
        return Err(err);
      }
      // The connection this attempt used: the one it found, or the one it made.
      let current = self.generation();
      if current == generation || current == generation + 1 {
        self.forget(current, &err);
      }
      tokio::time::sleep(budget.connect_failed(retry::jitter())).await;
    }
  }

  /// Runs a batch: one round trip per slot, all slots concurrently. An error says
  /// whether another attempt may pass (a connection error, a timeout, a cluster that is
  /// down or resharding).
  async fn run(&self, batch: &Batch) -> Result<Vec<Reply>, (StoreError, bool)> {
    let (connection, generation) = self.connection().await.map_err(|err| {
      let transient = retry::classify(&err).may_retry();
      (err, transient)
    })?;
    let runs = plan(batch).into_iter().map(|group| {
      let mut connection = connection.clone();
      async move { run_group(&mut connection, batch, group).await }
    });
    let mut replies: Vec<Option<Reply>> = vec![None; batch.commands.len()];
    for result in join_all(runs).await {
      let answered = result.map_err(|err| self.failed(generation, err))?;
      for (index, reply) in answered {
        replies[index] = Some(reply.map_err(|err| (err, false))?);
      }
    }
    let replies = replies.into_iter().map(|r| r.unwrap_or(Reply::Nil));
    Ok(replies.collect())
  }

  fn generation(&self) -> u64 {
    self
      .slot
      .lock()
      .unwrap_or_else(|e| e.into_inner())
      .generation
  }

  fn forget(&self, generation: u64, err: &StoreError) {
    let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.generation == generation && slot.live.take().is_some() {
      self.events.dropped(err);
    }
  }

  /// Drops the connection; calls already in flight keep their handle and finish.
  pub fn close(&self) {
    let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
    slot.closed = true;
    slot.live = None;
  }

  /// A failed round trip; connection errors, timeouts and a cluster that is down or
  /// resharding are transient (the connection is re-made after a connection error).
  fn failed(&self, generation: u64, err: redis::RedisError) -> (StoreError, bool) {
    let lost = retry::connection_lost(&err);
    let transient = retry::classify_redis(&err).may_retry();
    // A node connection that failed said why (TLS, AUTH, the aof check): that is the error.
    let err = match self.nodes.settings.take_failure() {
      Some(failure) => failure,
      None => StoreError::from(err),
    };
    if lost {
      self.forget(generation, &err);
    }
    (err, transient)
  }

  fn cached(&self) -> StoreResult<Option<(Connection, u64)>> {
    let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.closed {
      return Err(StoreError::disposed());
    }
    Ok(slot.live.clone().map(|c| (c, slot.generation)))
  }

  async fn connection(&self) -> StoreResult<(Connection, u64)> {
    if let Some(found) = self.cached()? {
      return Ok(found);
    }
    let _one_connect_at_a_time = self.connecting.lock().await;
    if let Some(found) = self.cached()? {
      return Ok(found);
    }
    // `get_async_connection` can hang (redis-rs#1953): bounded here and by the call.
    self.nodes.settings.take_failure();
    let attempt = self.client.get_async_generic_connection::<NodeConnection>();
    let connected = async {
      let mut connection = attempt.await?;
      if self.nodes.settings.require_aof {
        every_master(&mut connection).await?;
      }
      Ok(connection)
    };
    let connection = match tokio::time::timeout(self.connect_timeout, connected).await {
      Ok(Ok(connection)) => connection,
      Ok(Err(err)) => return Err(self.connect_error(err)),
      Err(_) => {
        // A node that failed meanwhile (redis-rs retries it) says why.
        if let Some(failure) = self.nodes.settings.take_failure() {
          return Err(StoreError::new(
            failure.code,
            format!("cannot connect to {}: {}", self.display, failure.message),
          ));
        }
        return Err(StoreError::connect_timeout(
          &self.display,
          self.connect_timeout,
        ));
      }
    };
    let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.closed {
      return Err(StoreError::disposed());
    }
    slot.generation += 1;
    slot.live = Some(connection.clone());
    self.events.connected(self.events.server().address());
    Ok((connection, slot.generation))
  }

  fn connect_error(&self, err: redis::RedisError) -> StoreError {
    // A node that could not be reached said why, with the error code to give (`TLS`, `AUTH`).
    if let Some(failure) = self.nodes.settings.take_failure() {
      return StoreError::new(
        failure.code,
        format!("cannot connect to {}: {}", self.display, failure.message),
      );
    }
    let mapped = StoreError::from(err);
    let what = if mapped.code == ErrorCode::Auth {
      "authentication to"
    } else {
      "cannot connect to"
    };
    StoreError::new(
      mapped.code,
      format!("{what} {} failed: {}", self.display, mapped.message),
    )
  }
}

/// A `PING` to every master by address, so that each has a connection, and so has passed
/// the checks every node connection makes (`durability: 'aof'`), before the store's first
/// call. (A fan-out to all masters would skip one whose connection failed.)
async fn every_master(connection: &mut Connection) -> RedisResult<()> {
  use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
  for (host, port) in scan::masters(connection).await? {
    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
    connection
      .route_command(redis::cmd("PING"), routing)
      .await?;
  }
  Ok(())
}

/// Splits a batch into groups that each go to one node in one round trip.
fn plan(batch: &Batch) -> Vec<Group> {
  let mut groups = Vec::new();
  let mut by_slot: HashMap<Slot, usize> = HashMap::new();
  for (index, command) in batch.commands.iter().enumerate() {
    if matches!(command, Command::Scan { .. }) {
      groups.push(Group::Scan(index));
      continue;
    }
    let Some(slot) = single_slot(command.keys()) else {
      groups.push(Group::Alone(index));
      continue;
    };
    match by_slot.get(&slot) {
      Some(&at) => {
        if let Group::Slot(indices, _) = &mut groups[at] {
          indices.push(index);
        }
      }
      None => {
        by_slot.insert(slot, groups.len());
        groups.push(Group::Slot(vec![index], batch.atomic));
      }
    }
  }
  groups
}

/// The one slot all `keys` hash to, if there is one.
fn single_slot(keys: &[String]) -> Option<Slot> {
  let first = Slot::for_key(keys.first()?);
  keys[1..]
    .iter()
    .all(|key| Slot::for_key(key) == first)
    .then_some(first)
}

type Answered = Vec<(usize, StoreResult<Reply>)>;

async fn run_group(
  connection: &mut Connection,
  batch: &Batch,
  group: Group,
) -> RedisResult<Answered> {
  let decoded = |index: usize, value: Value| (index, decode(value, &batch.commands[index]));
  match group {
    Group::Alone(index) => {
      let value = to_redis(&batch.commands[index])
        .query_async(connection)
        .await?;
      Ok(vec![decoded(index, value)])
    }
    Group::Slot(indices, _) if indices.len() == 1 => {
      let value = to_redis(&batch.commands[indices[0]])
        .query_async(connection)
        .await?;
      Ok(vec![decoded(indices[0], value)])
    }
    Group::Slot(indices, atomic) => {
      let commands: Vec<redis::Cmd> = indices
        .iter()
        .map(|&index| to_redis(&batch.commands[index]))
        .collect();
      let values = if atomic {
        transaction(connection, &commands).await?
      } else {
        let mut pipe = redis::pipe();
        commands.into_iter().for_each(|command| {
          pipe.add_command(command);
        });
        pipe.query_async(connection).await?
      };
      Ok(
        indices
          .into_iter()
          .zip(values)
          .map(|(i, v)| decoded(i, v))
          .collect(),
      )
    }
    Group::Scan(index) => {
      let Command::Scan { cursor, .. } = &batch.commands[index] else {
        unreachable!("a scan group holds a SCAN");
      };
      let reply = scan_page(connection, &batch.commands[index], cursor).await?;
      Ok(vec![(index, reply)])
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn plans_one_group_per_slot() {
    let get = |key: &str| Command::Get { key: key.into() };
    let batch = Batch::many(vec![
      get("{a}1"),
      get("{b}1"),
      get("{a}2"),
      Command::MGet {
        keys: vec!["x".into(), "y".into()],
      },
    ]);
    let groups = plan(&batch);
    assert_eq!(groups.len(), 3);
    assert!(matches!(&groups[0], Group::Slot(i, false) if i == &vec![0, 2]));
    assert!(matches!(&groups[2], Group::Alone(3)));
  }
}
