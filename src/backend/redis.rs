//! Redis backend: one multiplexed connection per store, made on first use and
//! re-made after it breaks; every batch is one round trip. A batch in flight when the
//! connection drops is sent again on a new one when it is declared safe to resend,
//! with the retry policy every Redis driver shares (`retry.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use super::redis_codec::{decode_all, to_redis};
use super::retry::{self, Budget};
use crate::command::{Batch, Reply};
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::events::{ConnectionEvents, ServerInfo};
use crate::options::RetrySettings;
use crate::redis_target::RedisTarget;

/// The connection slot: the live connection, a generation to tell reconnects apart,
/// and whether the store was closed.
#[derive(Default)]
struct Slot {
  connection: Option<MultiplexedConnection>,
  generation: u64,
  closed: bool,
}

/// A Redis server reached over one pipelined connection.
pub struct RedisBackend {
  target: RedisTarget,
  config: AsyncConnectionConfig,
  connect_timeout: Duration,
  retry: RetrySettings,
  slot: Mutex<Slot>,
  connecting: tokio::sync::Mutex<()>,
  pub events: Arc<ConnectionEvents>,
}

/// Why one attempt at a batch failed.
enum Failure {
  /// No connection could be made.
  Connect(StoreError),
  /// The connection dropped with the batch in flight: it may or may not have landed.
  Dropped(StoreError),
  /// Anything else (a reply timeout, an error reply): final.
  Other(StoreError),
}

impl RedisBackend {
  /// A backend that connects to `target` on first use.
  pub fn new(
    target: RedisTarget,
    connect_timeout: Duration,
    response_timeout: Duration,
    retry: RetrySettings,
  ) -> Self {
    let config = AsyncConnectionConfig::new()
      .set_connection_timeout(Some(connect_timeout))
      .set_response_timeout(Some(response_timeout));
    let server = ServerInfo::redis(&target);
    Self {
      events: ConnectionEvents::new(server),
      target,
      config,
      connect_timeout,
      retry,
      slot: Mutex::new(Slot::default()),
      connecting: tokio::sync::Mutex::new(()),
    }
  }

  /// Runs a batch in one round trip (`MULTI`/`EXEC` when it is atomic). As the
  /// event-loop driver does: after a dropped connection a batch declared safe to resend
  /// is sent again on a new connection (the first reconnect at once, a failed one after
  /// a backoff), spending one of `retry.attempts` per drop or failed reconnect; any other
  /// batch rejects `UNAVAILABLE`. A call that never had a connection is not retried (with
  /// sentinels it is: it waits for a master), nor is an `AUTH` or TLS error. With
  /// sentinels, a `READONLY` reply counts as a dropped connection (the server was demoted). The caller bounds the whole by `commandTimeout`.
  pub async fn execute(&self, batch: &Batch) -> StoreResult<Vec<Reply>> {
    let mut budget = Budget::new(&self.retry, batch.may_resend());
    let mut recovering = false;
    loop {
      match self.attempt(batch).await {
        Ok(values) => return decode_all(values, &batch.commands),
        Err(Failure::Other(err)) => return Err(err),
        Err(Failure::Dropped(err)) => {
          if !budget.spend() {
            return Err(err);
          }
          budget.connected();
          recovering = true;
        }
        Err(Failure::Connect(err)) => {
          // With sentinels, a call made while no master answers waits for one too.
          let waits = recovering || self.target.sentinel.is_some();
          if !waits || !retry::classify(&err).may_retry() || !budget.spend() {
            return Err(err);
          }
          tokio::time::sleep(budget.connect_failed(retry::jitter())).await;
        }
      }
    }
  }

  /// One attempt: a connection (the live one, or a new one), then one round trip.
  async fn attempt(&self, batch: &Batch) -> Result<Vec<Value>, Failure> {
    let (mut connection, generation) = self.connection().await.map_err(Failure::Connect)?;
    send(&mut connection, batch).await.map_err(|err| {
      if retry::connection_lost(&err) {
        let err = StoreError::from(err);
        self.forget(generation, &err);
        Failure::Dropped(err)
      } else if self.target.sentinel.is_some() && err.to_string().contains("READONLY") {
        // As on the event-loop driver: the server was demoted (failover); ask the
        // sentinels again on a new connection.
        let err = StoreError::new(
          ErrorCode::Unavailable,
          "the server answered READONLY: it is a replica now (failover); reconnecting to the master",
        );
        self.forget(generation, &err);
        Failure::Dropped(err)
      } else {
        Failure::Other(err.into())
      }
    })
  }

  /// Drops the connection; calls already in flight keep their handle and finish.
  pub fn close(&self) {
    let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
    slot.closed = true;
    slot.connection = None;
  }

  fn cached(&self) -> StoreResult<Option<(MultiplexedConnection, u64)>> {
    let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.closed {
      return Err(StoreError::disposed());
    }
    Ok(slot.connection.clone().map(|c| (c, slot.generation)))
  }

  async fn connection(&self) -> StoreResult<(MultiplexedConnection, u64)> {
    if let Some(found) = self.cached()? {
      return Ok(found);
    }
    let _one_connect_at_a_time = self.connecting.lock().await;
    if let Some(found) = self.cached()? {
      return Ok(found);
    }
    let (connection, peer) = self.connect().await?;
    let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.closed {
      return Err(StoreError::disposed());
    }
    slot.generation += 1;
    slot.connection = Some(connection.clone());
    // A Sentinel store's server is the master the sentinels named: the socket's peer.
    let address = match (&self.events.server().server_address, peer) {
      (None, Some(peer)) => peer.to_string(),
      _ => self.events.server().address(),
    };
    self.events.connected(address);
    Ok((connection, slot.generation))
  }

  /// A TCP server is connected the way the event-loop driver connects to it
  /// (`connect.rs`: TLS, Sentinel, the checks), then driven by redis-rs; a unix socket
  /// by redis-rs alone.
  async fn connect(&self) -> StoreResult<(MultiplexedConnection, Option<std::net::SocketAddr>)> {
    if self.target.is_tcp() {
      let stream = super::connect::open_stream(&self.target, self.connect_timeout).await?;
      let peer = stream.peer();
      let logged_in = redis::RedisConnectionInfo::default();
      let made = MultiplexedConnection::new_with_config(&logged_in, stream, self.config.clone());
      let (connection, driver) = match tokio::time::timeout(self.connect_timeout, made).await {
        Ok(Ok(made)) => made,
        Ok(Err(err)) => return Err(self.connect_error(err)),
        Err(_) => return Err(self.connect_timed_out()),
      };
      tokio::spawn(driver);
      return Ok((connection, peer));
    }
    let attempt = self
      .target
      .client
      .get_multiplexed_async_connection_with_config(&self.config);
    match tokio::time::timeout(self.connect_timeout, attempt).await {
      Ok(Ok(connection)) => Ok((connection, None)),
      Ok(Err(err)) => Err(self.connect_error(err)),
      Err(_) => Err(self.connect_timed_out()),
    }
  }

  fn connect_error(&self, err: redis::RedisError) -> StoreError {
    let mapped = StoreError::from(err);
    match mapped.code {
      ErrorCode::Timeout => self.connect_timed_out(),
      ErrorCode::Auth => StoreError::new(
        ErrorCode::Auth,
        format!(
          "authentication to {} failed: {}",
          self.target.display, mapped.message
        ),
      ),
      code => StoreError::new(
        code,
        format!(
          "cannot connect to {}: {}",
          self.target.display, mapped.message
        ),
      ),
    }
  }

  fn connect_timed_out(&self) -> StoreError {
    StoreError::new(
      ErrorCode::Unavailable,
      format!(
        "cannot connect to {}: no connection within connectTimeout ({} ms)",
        self.target.display,
        self.connect_timeout.as_millis()
      ),
    )
  }

  fn forget(&self, generation: u64, err: &StoreError) {
    let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.generation == generation && slot.connection.take().is_some() {
      self.events.dropped(err);
    }
  }
}

async fn send(
  connection: &mut MultiplexedConnection,
  batch: &Batch,
) -> redis::RedisResult<Vec<Value>> {
  if let [command] = batch.commands.as_slice() {
    let value: Value = to_redis(command).query_async(connection).await?;
    return Ok(vec![value]);
  }
  let mut pipe = redis::pipe();
  if batch.atomic {
    pipe.atomic();
  }
  for command in &batch.commands {
    pipe.add_command(to_redis(command));
  }
  pipe.query_async(connection).await
}
