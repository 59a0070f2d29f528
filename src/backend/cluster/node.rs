//! How redis-rs's cluster connection connects to each node: with durastate's own connect
//! (`backend/connect.rs`: TLS with the store's rustls configuration, checked against the
//! name of the node each address or redirect names, `AUTH`, `PING` and the
//! `durability: 'aof'` check), then a redis-rs multiplexed connection on that stream.
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
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::Connect;
use redis::{
  AsyncConnectionConfig, Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline,
  RedisConnectionInfo, RedisError, RedisFuture, Value,
};

use crate::backend::connect::{connect_node, Login, Peer};
use crate::error::StoreError;
use crate::tls::TlsSettings;

/// What every node connection of one cluster store needs.
pub struct NodeSettings {
  pub username: Option<String>,
  pub password: Option<String>,
  pub tls: Option<Arc<TlsSettings>>,
  pub require_aof: bool,
  pub connect_timeout: Duration,
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
  ) -> Self {
    Self {
      username,
      password,
      tls,
      require_aof,
      connect_timeout,
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

/// A connection to one cluster node.
#[derive(Clone)]
pub struct NodeConnection(MultiplexedConnection);

impl ConnectionLike for NodeConnection {
  fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
    self.0.req_packed_command(cmd)
  }

  fn req_packed_commands<'a>(
    &'a mut self,
    cmd: &'a Pipeline,
    offset: usize,
    count: usize,
  ) -> RedisFuture<'a, Vec<Value>> {
    self.0.req_packed_commands(cmd, offset, count)
  }

  fn get_db(&self) -> i64 {
    0
  }
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
      let no_login = RedisConnectionInfo::default();
      let (connection, driver) =
        MultiplexedConnection::new_with_config(&no_login, stream, config).await?;
      tokio::spawn(driver);
      Ok(NodeConnection(connection))
    }
    .boxed()
  }
}
