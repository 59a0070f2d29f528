//! Connection events for observability: a store's backend reports when it connects,
//! when its connection drops, when it connects again, and when it connects to another
//! server than before (a Sentinel failover to a new master). `index.js` publishes them
//! on the `durastate:connection` diagnostics channel.
//!
//! Each backend that has a server holds one [`ConnectionEvents`]; the JS layer may hand
//! it a listener (a weak threadsafe function: it never keeps the process alive). Without
//! a listener an event costs a mutex lock, and events are rare (once per connection).

use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::Function;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

use crate::error::StoreError;

/// The JS listener: takes one event as JSON text, returns nothing; unref'd (weak).
type Listener = ThreadsafeFunction<String, (), String, napi::Status, false, true>;

/// Where a store's server is, for traces: fixed at creation (a Sentinel store's master is
/// known only once connected, from its `connect` event).
#[napi(object, object_from_js = false)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerInfo {
  /// `redis`, `cluster`, `sentinel`, `sqlite`, `memory` (or `postgres`).
  pub backend: String,
  pub server_address: Option<String>,
  pub server_port: Option<u32>,
  /// The Redis database number (SQL backends: the database name is in `serverAddress`'s URL).
  pub database: Option<String>,
}

impl ServerInfo {
  pub fn new(backend: &str) -> Self {
    Self {
      backend: backend.to_string(),
      ..Self::default()
    }
  }

  /// `host:port` (a socket path alone), as connection events give it.
  pub fn address(&self) -> String {
    match (&self.server_address, self.server_port) {
      (Some(host), Some(port)) if host.contains(':') => format!("[{host}]:{port}"),
      (Some(host), Some(port)) => format!("{host}:{port}"),
      (Some(path), None) => path.clone(),
      (None, _) => String::new(),
    }
  }

  /// A Redis target: its address (a socket path has no port) and database.
  pub fn redis(target: &crate::redis_target::RedisTarget) -> Self {
    let info = target.client.get_connection_info();
    let backend = if target.sentinel.is_some() {
      "sentinel"
    } else {
      "redis"
    };
    let mut server = Self::new(backend);
    server.database = Some(info.redis_settings().db().to_string());
    if target.sentinel.is_some() {
      return server;
    }
    match info.addr() {
      redis::ConnectionAddr::Tcp(host, port) | redis::ConnectionAddr::TcpTls { host, port, .. } => {
        server.server_address = Some(host.clone());
        server.server_port = Some(u32::from(*port));
      }
      redis::ConnectionAddr::Unix(path) => {
        server.server_address = Some(path.display().to_string());
      }
      _ => {}
    }
    server
  }

  /// A Redis Cluster: its first seed node (`redis://host:port`), database 0.
  pub fn cluster(seed: Option<&str>) -> Self {
    let mut server = Self::new("cluster");
    server.database = Some("0".to_string());
    if let Some(url) = seed.and_then(|seed| url::Url::parse(seed).ok()) {
      server.server_address = url.host_str().map(str::to_string);
      server.server_port = Some(u32::from(url.port().unwrap_or(6379)));
    }
    server
  }
}

/// A Rust observer of a backend's events (a Cluster's router watches its nodes' connections):
/// called with the event's type (`connect`, `reconnect`, `failover`, `drop`) and, for a
/// drop, its error; outside the events' lock.
pub type Relay = Arc<dyn Fn(&'static str, Option<&StoreError>) + Send + Sync>;

#[derive(Default)]
struct State {
  listener: Option<Listener>,
  relay: Option<Relay>,
  /// The address of the connection that is (or was last) open.
  address: Option<String>,
  /// Whether a connection is open now.
  open: bool,
}

/// One backend's connection events and its listener, shared with its driver.
pub struct ConnectionEvents {
  server: ServerInfo,
  state: Mutex<State>,
}

impl ConnectionEvents {
  pub fn new(server: ServerInfo) -> Arc<Self> {
    Arc::new(Self {
      server,
      state: Mutex::new(State::default()),
    })
  }

  pub fn server(&self) -> &ServerInfo {
    &self.server
  }

  /// A connection to `address` (`host:port`) is open: `connect` the first time,
  /// `failover` when the address changed, else `reconnect`.
  pub fn connected(&self, address: String) {
    self.announce(self.lock(), address);
  }

  /// `connected`, with the state already locked (one decision and its event, atomically).
  fn announce(&self, mut state: std::sync::MutexGuard<'_, State>, address: String) {
    let kind = kind(state.address.as_deref(), &address);
    let previous = state.address.replace(address.clone());
    state.open = true;
    let mut event = serde_json::json!({ "type": kind, "address": address });
    if kind == "failover" {
      event["previousAddress"] = serde_json::Value::from(previous);
    }
    emit(&state, event);
    let relay = state.relay.clone();
    drop(state);
    if let Some(relay) = relay {
      relay(kind, None);
    }
  }

  /// A connection of a pool (Postgres) to `address` is open: as `connected` when none
  /// was open (the first, or the first since one dropped) or the address changed;
  /// nothing when the pool adds a connection while others are open.
  pub fn pool_connected(&self, address: String) {
    let state = self.lock();
    if pool_announces(state.open, state.address.as_deref(), &address) {
      self.announce(state, address);
    }
  }

  /// A connection of a pool (Postgres) answered a call: `reconnect` when a `drop` was said
  /// since the last event, as when one connection of the pool was ended while the others
  /// stayed open and go on answering (the pool opens no new one then, so `pool_connected`
  /// would never say it). Nothing while a connection is known open.
  pub fn pool_answered(&self) {
    let state = self.lock();
    if state.open {
      return;
    }
    if let Some(address) = state.address.clone() {
      self.announce(state, address);
    }
  }

  /// The open connection dropped with `err`.
  pub fn dropped(&self, err: &StoreError) {
    let mut state = self.lock();
    if !state.open {
      return;
    }
    state.open = false;
    let event = serde_json::json!({
      "type": "drop",
      "address": state.address,
      "error": { "code": err.code.as_str(), "message": err.message },
    });
    emit(&state, event);
    let relay = state.relay.clone();
    drop(state);
    if let Some(relay) = relay {
      relay("drop", Some(err));
    }
  }

  /// Sets the Rust observer of these events ([`Relay`]).
  pub fn relay(&self, relay: Relay) {
    self.lock().relay = Some(relay);
  }

  /// Sets (or with `None` removes) the JS listener.
  pub fn listen(&self, callback: Option<Function<'_, String, ()>>) -> napi::Result<()> {
    let listener = match callback {
      Some(callback) => Some(
        callback
          .build_threadsafe_function()
          .callee_handled::<false>()
          .weak::<true>()
          .build()?,
      ),
      None => None,
    };
    self.lock().listener = listener;
    Ok(())
  }

  fn lock(&self) -> std::sync::MutexGuard<'_, State> {
    self.state.lock().unwrap_or_else(|e| e.into_inner())
  }
}

/// What a new connection to `address` is, after one to `previous`.
fn kind(previous: Option<&str>, address: &str) -> &'static str {
  match previous {
    None => "connect",
    Some(previous) if previous != address => "failover",
    Some(_) => "reconnect",
  }
}

/// Whether a pool's new connection to `address` is an event: not while a connection to
/// the same address is open (the pool grows).
fn pool_announces(open: bool, previous: Option<&str>, address: &str) -> bool {
  !(open && previous == Some(address))
}

fn emit(state: &State, event: serde_json::Value) {
  if let Some(listener) = &state.listener {
    listener.call(event.to_string(), ThreadsafeFunctionCallMode::NonBlocking);
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn names_a_connection_by_the_one_before() {
    assert_eq!(kind(None, "h:1"), "connect");
    assert_eq!(kind(Some("h:1"), "h:1"), "reconnect");
    assert_eq!(kind(Some("h:1"), "h:2"), "failover");
  }

  #[test]
  fn a_pool_says_its_first_connection_and_the_first_after_a_drop() {
    // The first connection; another while it is open; one after a drop; another host.
    assert!(pool_announces(false, None, "h:1"));
    assert!(!pool_announces(true, Some("h:1"), "h:1"));
    assert!(pool_announces(false, Some("h:1"), "h:1"));
    assert!(pool_announces(true, Some("h:1"), "h:2"));
  }

  #[test]
  fn gives_addresses_and_cluster_seeds() {
    let mut server = ServerInfo::new("redis");
    server.server_address = Some("::1".into());
    server.server_port = Some(6379);
    assert_eq!(server.address(), "[::1]:6379");
    let cluster = ServerInfo::cluster(Some("redis://u:***@10.0.0.1:7000"));
    assert_eq!(cluster.address(), "10.0.0.1:7000");
    assert_eq!(cluster.database.as_deref(), Some("0"));
  }
}
