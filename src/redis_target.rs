//! Where a Redis store connects: a URL or `{ host, port, ... }`, validated up front.

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use std::sync::Arc;

use crate::error::{StoreError, StoreResult};
use crate::options::RedisConnectionOptions;
use crate::tls::{TlsOptions, TlsSettings};

/// The address used when neither a target nor `REDIS_URL` is given.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A validated Redis target: the client to connect with and a printable address
/// (without the password) for error messages.
pub struct RedisTarget {
  pub client: redis::Client,
  pub display: String,
  /// `durability: 'aof'`: check at connect that the server fsyncs every write.
  pub require_aof: bool,
  /// TLS settings (`rediss://` or option `tls`); `None` for plain TCP.
  pub tls: Option<Arc<TlsSettings>>,
  /// The URL asked for TLS (`rediss://`), so [`configure_tls`](Self::configure_tls) must set it up.
  wants_tls: bool,
}

impl RedisTarget {
  /// Whether the server is reached over plain TCP.
  pub fn is_tcp(&self) -> bool {
    matches!(
      self.client.get_connection_info().addr(),
      redis::ConnectionAddr::Tcp(..)
    )
  }

  /// From a URL (`redis://`, `rediss://`, `redis+unix://`).
  pub fn from_url(url: &str) -> StoreResult<Self> {
    let parsed = url::Url::parse(url).map_err(|err| {
      StoreError::invalid_input(format!("invalid Redis URL \"{}\": {err}", redact(url)))
    })?;
    match parsed.scheme() {
      "redis" | "rediss" | "redis+unix" | "unix" => {}
      other => {
        return Err(StoreError::invalid_input(format!(
          "invalid Redis URL \"{}\": scheme must be redis:// or rediss://, got {other}://",
          redact(url)
        )))
      }
    }
    // TLS is durastate's own (rustls on the event-loop driver); redis-rs only parses the
    // address, so it is given the plain-text form of the URL.
    let wants_tls = parsed.scheme() == "rediss";
    let mut plain = parsed.clone();
    if wants_tls {
      let _ = plain.set_scheme("redis");
    }
    let client = redis::Client::open(plain.as_str()).map_err(|err| {
      StoreError::invalid_input(format!("invalid Redis URL \"{}\": {err}", redact(url)))
    })?;
    Ok(Self {
      client,
      display: redact(url),
      require_aof: false,
      tls: None,
      wants_tls,
    })
  }

  /// Sets up TLS when the URL is `rediss://` or `options` are given (PEM files are read
  /// now, so a bad one is `INVALID_INPUT` at once).
  pub fn configure_tls(&mut self, options: Option<&TlsOptions>) -> StoreResult<()> {
    if !self.wants_tls && options.is_none() {
      return Ok(());
    }
    let redis::ConnectionAddr::Tcp(host, _) = self.client.get_connection_info().addr() else {
      return Err(StoreError::invalid_input(
        "TLS needs a TCP address (rediss://host:port), not a unix socket",
      ));
    };
    let settings = TlsSettings::new(&options.cloned().unwrap_or_default(), host)?;
    self.tls = Some(Arc::new(settings));
    Ok(())
  }

  /// From `{ host, port, username, password, db }`.
  pub fn from_fields(fields: &RedisConnectionOptions) -> StoreResult<Self> {
    Self::from_url(&url_from_fields(fields)?)
  }

  /// The target to use when none is given: `REDIS_URL`, else the local default.
  pub fn from_env() -> StoreResult<Self> {
    match std::env::var("REDIS_URL") {
      Ok(url) if !url.is_empty() => Self::from_url(&url),
      _ => Self::from_url(DEFAULT_REDIS_URL),
    }
  }
}

fn url_from_fields(fields: &RedisConnectionOptions) -> StoreResult<String> {
  let scheme = if fields.tls.unwrap_or(false) {
    "rediss"
  } else {
    "redis"
  };
  let host = fields.host.clone().unwrap_or_else(|| "127.0.0.1".into());
  if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
    return Err(StoreError::invalid_input(format!(
      "invalid Redis host \"{host}\""
    )));
  }
  let host = if host.contains(':') && !host.starts_with('[') {
    format!("[{host}]")
  } else {
    host
  };
  let port = fields.port.unwrap_or(6379);
  if port == 0 || port > 65_535 {
    return Err(StoreError::invalid_input(format!(
      "invalid Redis port {port}: must be 1-65535"
    )));
  }
  let auth = match (&fields.username, &fields.password) {
    (Some(user), Some(pass)) => format!("{}:{}@", encode(user), encode(pass)),
    (None, Some(pass)) => format!(":{}@", encode(pass)),
    (Some(user), None) => format!("{}@", encode(user)),
    (None, None) => String::new(),
  };
  let db = fields.db.unwrap_or(0);
  Ok(format!("{scheme}://{auth}{host}:{port}/{db}"))
}

fn encode(part: &str) -> String {
  utf8_percent_encode(part, NON_ALPHANUMERIC).to_string()
}

/// The URL with any password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
  match url::Url::parse(url) {
    Ok(mut parsed) if parsed.password().is_some() => {
      let _ = parsed.set_password(Some("***"));
      parsed.to_string()
    }
    Ok(parsed) => parsed.to_string(),
    Err(_) => "<unparsable>".to_string(),
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn fields_become_an_encoded_url() {
    let fields = RedisConnectionOptions {
      host: Some("localhost".into()),
      port: Some(6380),
      username: Some("app user".into()),
      password: Some("p@ss:word".into()),
      db: Some(2),
      tls: None,
    };
    assert_eq!(
      url_from_fields(&fields).unwrap(),
      "redis://app%20user:p%40ss%3Aword@localhost:6380/2"
    );
  }

  #[test]
  fn redacts_passwords() {
    assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
  }

  #[test]
  fn rejects_other_schemes_and_garbage() {
    assert!(RedisTarget::from_url("http://localhost").is_err());
    assert!(RedisTarget::from_url("not a url").is_err());
    assert!(RedisTarget::from_url("redis://localhost:6379/0").is_ok());
    let mut tls = RedisTarget::from_url("rediss://localhost:6380").unwrap();
    tls.configure_tls(None).unwrap();
    assert!(tls.tls.is_some());
  }
}
