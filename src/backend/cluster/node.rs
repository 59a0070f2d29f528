//! How redis-rs's cluster connection connects to each node: with durastate's own connect
//! (`backend/connect.rs`: TLS with the store's rustls configuration, checked against the
//! name of the node each address or redirect names, `AUTH`, `PING` and the
//! `durability: 'aof'` check), run by the connection core every Redis driver shares
//! (`redis_core.rs`), driven by the threads driver's task (`redis.rs`): its queue, reply
//! matching, deadlines (`commandTimeout`) and what a drop does. redis-rs packs each
//! request (a command, or a pipeline with the slice of replies it wants) and gets the raw
//! replies back. A node connection that dropped stays down: its calls fail with an I/O
//! error, which makes redis-rs connect to the node again (through [`Connect`] here, so
//! the checks run again) and retry them; the core never sends them again itself.
//!
//! redis-rs's own cluster TLS falls short here: it verifies with webpki's verifier only
//! (a self-signed `CA:TRUE` certificate given as `ca` is refused), has no server name
//! override, accepts invalid certificates only behind a cargo feature, and reports a
//! handshake failure as an I/O error. Its extension point, the `Connect` trait, is a
//! static function that receives only the node's `ConnectionInfo`, so each store's
//! settings are kept in a registry here, and the one value of that info that a cluster
//! connection never uses, the database number (a cluster has only database 0, and the
//! connection made here never sends `SELECT`), carries the store's key into it.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use redis::aio::ConnectionLike;
use redis::cluster_async::Connect;
use redis::{
  AsyncConnectionConfig, Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline, RedisError,
  RedisFuture, ServerError, ServerErrorKind, Value,
};

use crate::backend::connect::{connect_node, Login, Peer, Stream};
use crate::backend::redis::{Opener, RedisBackend};
use crate::command::Resend;
use crate::error::{ErrorCode, StoreError};
use crate::options::RetrySettings;
use crate::tls::TlsSettings;

/// What every node connection of one cluster store needs.
pub struct NodeSettings {
  pub username: Option<String>,
  pub password: Option<String>,
  pub tls: Option<Arc<TlsSettings>>,
  pub require_aof: bool,
  pub connect_timeout: Duration,
  /// How long a node's reply may take (`commandTimeout`).
  pub command_timeout: Duration,
  pub retry: RetrySettings,
  /// Why the last node connection failed, as a store error (redis-rs keeps only the text).
  last_failure: Mutex<Option<StoreError>>,
}

impl NodeSettings {
  pub fn new(
    username: Option<String>,
    password: Option<String>,
    tls: Option<Arc<TlsSettings>>,
    require_aof: bool,
    connect_timeout: Duration,
    command_timeout: Duration,
    retry: RetrySettings,
  ) -> Self {
    Self {
      username,
      password,
      tls,
      require_aof,
      connect_timeout,
      command_timeout,
      retry,
      last_failure: Mutex::new(None),
    }
  }

  /// The failure of the last node connection that failed, taken.
  pub fn take_failure(&self) -> Option<StoreError> {
    self
      .last_failure
      .lock()
      .unwrap_or_else(|e| e.into_inner())
      .take()
  }
}

fn registry() -> &'static Mutex<HashMap<i64, Weak<NodeSettings>>> {
  static REGISTRY: OnceLock<Mutex<HashMap<i64, Weak<NodeSettings>>>> = OnceLock::new();
  REGISTRY.get_or_init(Default::default)
}

/// A store's entry in the registry, removed when the store's backend is dropped.
pub struct Registration {
  pub key: i64,
  pub settings: Arc<NodeSettings>,
}

impl Registration {
  pub fn new(settings: NodeSettings) -> Self {
    static NEXT: AtomicI64 = AtomicI64::new(1);
    let key = NEXT.fetch_add(1, Ordering::Relaxed);
    let settings = Arc::new(settings);
    let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
    map.insert(key, Arc::downgrade(&settings));
    Self { key, settings }
  }
}

impl Drop for Registration {
  fn drop(&mut self) {
    let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
    map.remove(&self.key);
  }
}

/// A connection to one cluster node: a core on the threads driver's task (its clones
/// share it; the last one dropped closes it).
#[derive(Clone)]
pub struct NodeConnection(Arc<RedisBackend>);

impl NodeConnection {
  /// A node connection on `stream` (connected and checked); `display` names the node.
  fn new(stream: Stream, display: String, settings: &NodeSettings) -> Self {
    let stream = Mutex::new(Some(stream));
    let open: Opener = Box::new(move || {
      let opened = stream.lock().unwrap_or_else(|e| e.into_inner()).take();
      let lost = StoreError::new(
        ErrorCode::Unavailable,
        format!("the connection to {display} was lost"),
      );
      Box::pin(async move { opened.ok_or(lost) })
    });
    let backend = RedisBackend::node(open, settings.command_timeout, settings.retry);
    Self(Arc::new(backend))
  }

  /// Sends `bytes` (packed by redis-rs) and gets their `expected` replies.
  async fn request(&self, bytes: Vec<u8>, expected: usize) -> Result<Vec<Value>, RedisError> {
    // redis-rs decides what is sent again, and where (it may be another node).
    let replies = self.0.execute_packed(bytes, expected, Resend::Never);
    replies.await.map_err(redis_error)
  }
}

impl ConnectionLike for NodeConnection {
  fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
    async move {
      if cmd.is_no_response() {
        return Err(RedisError::from((
          ErrorKind::Client,
          "a command without a reply is not supported on a cluster node connection",
        )));
      }
      let mut values = self.request(cmd.get_packed_command(), 1).await?;
      Ok(values.pop().unwrap_or(Value::Nil))
    }
    .boxed()
  }

  /// The pipeline's replies from `offset` on, `count` of them, as redis-rs's multiplexed
  /// connection gives them: in a transaction, an error reply to a command being queued
  /// fails the whole ([`aborted_transaction`]).
  fn req_packed_commands<'a>(
    &'a mut self,
    cmd: &'a Pipeline,
    offset: usize,
    count: usize,
  ) -> RedisFuture<'a, Vec<Value>> {
    async move {
      let mut values = self
        .request(cmd.get_packed_pipeline(), offset + count)
        .await?;
      if cmd.is_transaction() {
        let queued: Vec<ServerError> = values[..offset.min(values.len())]
          .iter()
          .filter_map(|value| match value {
            Value::ServerError(err) => Some(err.clone()),
            _ => None,
          })
          .collect();
        if !queued.is_empty() {
          return Err(aborted_transaction(&queued));
        }
      }
      Ok(values.split_off(offset.min(values.len())))
    }
    .boxed()
  }

  fn get_db(&self) -> i64 {
    0
  }
}

/// A node connection's failure as redis-rs's multiplexed connection reports it: a
/// timeout is an I/O `TimedOut` (redis-rs retries on the same connection), a lost or
/// refused connection an I/O error (redis-rs connects to the node again).
fn redis_error(err: StoreError) -> RedisError {
  match err.code {
    ErrorCode::Timeout => io::Error::new(io::ErrorKind::TimedOut, err.message).into(),
    ErrorCode::Disposed => RedisError::from((ErrorKind::Client, "the store was closed")),
    _ => RedisError::from((ErrorKind::Io, "cluster node connection lost", err.message)),
  }
}

/// A transaction `EXEC` aborted, with the error replies its commands got while being
/// queued (one a line, as the server sent them), read back by [`queued_errors`].
/// (redis-rs's own aborted-transaction error cannot be made outside redis-rs.) Like
/// redis-rs's, redis-rs's cluster connection does not retry it.
pub fn aborted_transaction(queued: &[ServerError]) -> RedisError {
  let lines: Vec<String> = queued
    .iter()
    .map(|err| match err.details() {
      Some(details) => format!("{} {details}", err.code()),
      None => err.code().to_string(),
    })
    .collect();
  RedisError::from((
    ErrorKind::Server(ServerErrorKind::ExecAbort),
    "transaction aborted: commands were refused while queued",
    lines.join("\n"),
  ))
}

/// The errors an [`aborted_transaction`] carries.
pub fn queued_errors(err: &RedisError) -> Option<Vec<ServerError>> {
  if err.kind() != ErrorKind::Server(ServerErrorKind::ExecAbort) {
    return None;
  }
  let errors = err
    .detail()?
    .lines()
    .filter_map(
      |line| match redis::parse_redis_value(format!("-{line}\r\n").as_bytes()) {
        Ok(Value::ServerError(err)) => Some(err),
        _ => None,
      },
    )
    .collect::<Vec<_>>();
  (!errors.is_empty()).then_some(errors)
}

impl Connect for NodeConnection {
  fn connect_with_config<'a, T>(info: T, config: AsyncConnectionConfig) -> RedisFuture<'a, Self>
  where
    T: IntoConnectionInfo + Send + 'a,
  {
    async move {
      let info = info.into_connection_info()?;
      let key = info.redis_settings().db();
      let settings = registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .and_then(Weak::upgrade)
        .ok_or_else(|| RedisError::from((ErrorKind::Client, "the store was closed")))?;
      let ConnectionAddr::Tcp(host, port) = info.addr() else {
        return Err(RedisError::from((
          ErrorKind::InvalidClientConfig,
          "a cluster node is reached over TCP",
        )));
      };
      let display = format!("cluster node {host}:{port}");
      let peer = Peer {
        display: &display,
        tls: settings.tls.as_deref(),
      };
      let login = Login {
        username: settings.username.as_deref(),
        password: settings.password.as_deref(),
        db: 0,
        require_aof: settings.require_aof,
        check_master: false,
      };
      let stream = match connect_node(host, *port, peer, &login, settings.connect_timeout).await {
        Ok(stream) => stream,
        Err(err) => {
          let failed = RedisError::from((ErrorKind::Io, "cannot connect", err.message.clone()));
          *settings
            .last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(err);
          return Err(failed);
        }
      };
      // redis-rs's `config` holds its timeouts, which the settings hold too, and a push
      // sender for RESP3, which a cluster store does not speak.
      drop(config);
      Ok(NodeConnection::new(stream, display, &settings))
    }
    .boxed()
  }
}
