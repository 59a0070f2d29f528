//! Where a Postgres store connects: libpq's URL grammar (`postgres://user:pass@host:port/db
//! ?sslmode=...&application_name=...`, or fields), parsed by tokio-postgres's `Config`
//! once the TLS parameters it does not know (`sslmode=verify-full`, ...) are taken out,
//! and the rustls configuration of the `tls` option shape Redis uses (`crate::tls`).

use std::sync::Arc;
use std::time::Duration;

use napi_derive::napi;
use rustls::ClientConfig;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::Config;

use crate::error::{StoreError, StoreResult};
use crate::tls::{TlsOptions, TlsSettings};

/// A Postgres server given as fields rather than a URL.
#[napi(object, object_to_js = false)]
#[derive(Default, Clone)]
pub struct PostgresConnectionOptions {
  /// Host name, IP address, or a directory holding the server's unix socket. Default `localhost`.
  pub host: Option<String>,
  /// TCP port. Default 5432.
  pub port: Option<u32>,
  /// Role to connect as. Default `postgres`.
  pub user: Option<String>,
  pub password: Option<String>,
  /// Database. Default: the user's name.
  pub database: Option<String>,
  /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full` (libpq's `sslmode`).
  pub sslmode: Option<String>,
  /// Shown in `pg_stat_activity`. Default `durastate`.
  pub application_name: Option<String>,
}

/// The libpq `sslmode`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
  Disable,
  /// `allow`/`prefer`: TLS when the server offers it, certificate not checked.
  Prefer,
  /// `require`: TLS always, certificate not checked (as libpq does without a root
  /// file); with one (`tls.ca`, `sslrootcert`), as `verify-ca`.
  Require,
  /// `verify-ca`: TLS always, the certificate's chain checked, not its name.
  VerifyCa,
  /// `verify-full`: TLS always, certificate and host name checked.
  Verify,
}

impl TlsMode {
  fn parse(value: &str) -> StoreResult<Self> {
    Ok(match value {
      "disable" => TlsMode::Disable,
      "allow" | "prefer" => TlsMode::Prefer,
      "require" => TlsMode::Require,
      "verify-ca" => TlsMode::VerifyCa,
      "verify-full" => TlsMode::Verify,
      other => {
        return Err(StoreError::invalid_input(format!(
          "sslmode must be disable, allow, prefer, require, verify-ca or verify-full, got \"{other}\""
        )))
      }
    })
  }
}

/// A validated Postgres target.
pub struct PostgresTarget {
  pub config: Config,
  /// The rustls configuration when TLS may be used.
  pub tls: Option<Arc<ClientConfig>>,
  /// `user@host:port/db`, for messages (never the password).
  pub display: String,
}

impl PostgresTarget {
  /// A `postgres://` or `postgresql://` URL.
  pub fn from_url(url: &str, tls: Option<&TlsOptions>) -> StoreResult<Self> {
    let (rest, taken) = take_tls_parameters(url)?;
    let config: Config = rest.parse().map_err(|err| {
      StoreError::invalid_input(format!(
        "invalid Postgres URL \"{}\": {err}",
        crate::redis_target::redact(url)
      ))
    })?;
    let tls = taken.merged(tls);
    Self::finish(config, taken.mode, tls.as_ref())
  }

  /// Fields (`{ host, port, user, password, database, sslmode, applicationName }`).
  pub fn from_fields(
    fields: &PostgresConnectionOptions,
    tls: Option<&TlsOptions>,
  ) -> StoreResult<Self> {
    let mut config = Config::new();
    config.host(fields.host.as_deref().unwrap_or("localhost"));
    if let Some(port) = fields.port {
      let port = u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| StoreError::invalid_input(format!("port must be 1 to 65535, got {port}")))?;
      config.port(port);
    }
    if let Some(user) = &fields.user {
      config.user(user);
    }
    if let Some(password) = &fields.password {
      config.password(password);
    }
    if let Some(database) = &fields.database {
      config.dbname(database);
    }
    if let Some(name) = &fields.application_name {
      config.application_name(name);
    }
    let mode = fields.sslmode.as_deref().map(TlsMode::parse).transpose()?;
    Self::finish(config, mode, tls)
  }

  fn finish(
    mut config: Config,
    mode: Option<TlsMode>,
    tls: Option<&TlsOptions>,
  ) -> StoreResult<Self> {
    if config.get_hosts().is_empty() {
      config.host("localhost");
    }
    if config.get_user().is_none() {
      config.user("postgres");
    }
    if config.get_application_name().is_none() {
      config.application_name("durastate");
    }
    if tls.is_some_and(|t| t.servername.is_some()) {
      return Err(StoreError::invalid_input(
        "option `tls.servername` is not supported on Postgres: the certificate is checked against the URL's host",
      ));
    }
    // libpq's default is `prefer`; a `tls` option asks for TLS.
    let mode = mode.unwrap_or(match tls {
      Some(_) => TlsMode::Verify,
      None => TlsMode::Prefer,
    });
    // libpq ignores `sslmode` on a unix socket: there is no TLS there.
    #[cfg(unix)]
    let mode = match config
      .get_hosts()
      .iter()
      .all(|h| matches!(h, Host::Unix(_)))
    {
      true => TlsMode::Disable,
      false => mode,
    };
    let tls = match mode {
      TlsMode::Disable => None,
      TlsMode::Prefer | TlsMode::Require => {
        let mut options = tls.cloned().unwrap_or_default();
        // Encrypted, not verified, unless the `tls` option asks for verification; then,
        // as libpq does with a root file, the chain is checked, not the name.
        if tls.is_none() || options.reject_unauthorized.is_none() && options.ca.is_none() {
          options.reject_unauthorized = Some(false);
        }
        Some(TlsSettings::chain_only(&options)?.config)
      }
      TlsMode::VerifyCa => {
        let options = tls.cloned().unwrap_or_default();
        Some(TlsSettings::chain_only(&options)?.config)
      }
      TlsMode::Verify => {
        let options = tls.cloned().unwrap_or_default();
        Some(TlsSettings::new(&options)?.config)
      }
    };
    config.ssl_mode(match mode {
      TlsMode::Disable => SslMode::Disable,
      TlsMode::Prefer => SslMode::Prefer,
      TlsMode::Require | TlsMode::VerifyCa | TlsMode::Verify => SslMode::Require,
    });
    let display = display(&config);
    Ok(Self {
      config,
      tls,
      display,
    })
  }

  /// Sets the bound on establishing a connection.
  pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
    self.config.connect_timeout(timeout);
    self
  }
}

/// The TLS parameters of a URL that tokio-postgres does not take: `sslmode` (it knows
/// only three of libpq's six, and the mode it parsed would be replaced by the default
/// here) and libpq's files, `sslrootcert`, `sslcert` and `sslkey` (paths).
#[derive(Default)]
struct TlsParameters {
  mode: Option<TlsMode>,
  root: Option<String>,
  cert: Option<String>,
  key: Option<String>,
}

impl TlsParameters {
  fn take(&mut self, name: &str, value: String) -> StoreResult<bool> {
    match name {
      "sslmode" => self.mode = Some(TlsMode::parse(&value)?),
      "sslrootcert" => self.root = Some(value),
      "sslcert" => self.cert = Some(value),
      "sslkey" => self.key = Some(value),
      _ => return Ok(false),
    }
    Ok(true)
  }

  /// The `tls` option with the URL's files filling what it leaves out. `sslrootcert=system`
  /// (libpq 16) means the system's roots, and `verify-full` unless `sslmode` says otherwise.
  fn merged(&self, tls: Option<&TlsOptions>) -> Option<TlsOptions> {
    if self.root.is_none() && self.cert.is_none() && self.key.is_none() {
      return tls.cloned();
    }
    let mut options = tls.cloned().unwrap_or_default();
    match self.root.as_deref() {
      Some("system") => options.reject_unauthorized = options.reject_unauthorized.or(Some(true)),
      Some(root) => options.ca = options.ca.or_else(|| Some(root.to_string())),
      None => {}
    }
    options.cert = options.cert.or_else(|| self.cert.clone());
    options.key = options.key.or_else(|| self.key.clone());
    Some(options)
  }
}

/// Takes the [`TlsParameters`] out of a URL's query, or out of a libpq key/value string
/// (`host=... sslmode=require`); the rest goes to tokio-postgres.
fn take_tls_parameters(url: &str) -> StoreResult<(String, TlsParameters)> {
  let mut taken = TlsParameters::default();
  if !url.contains("://") {
    let mut kept = Vec::new();
    for pair in url.split_whitespace() {
      match pair.split_once('=') {
        Some((name, value)) if taken.take(name, value.trim_matches('\'').to_string())? => {}
        _ => kept.push(pair),
      }
    }
    return Ok((kept.join(" "), taken));
  }
  let Some((base, query)) = url.split_once('?') else {
    return Ok((url.to_string(), taken));
  };
  let mut kept = Vec::new();
  for pair in query.split('&').filter(|p| !p.is_empty()) {
    match pair.split_once('=') {
      Some((name, value))
        if taken.take(
          name,
          percent_encoding::percent_decode_str(value)
            .decode_utf8_lossy()
            .into_owned(),
        )? => {}
      _ => kept.push(pair),
    }
  }
  let rest = match kept.is_empty() {
    true => base.to_string(),
    false => format!("{base}?{}", kept.join("&")),
  };
  Ok((rest, taken))
}

fn display(config: &Config) -> String {
  let host = match config.get_hosts().first() {
    Some(Host::Tcp(host)) => host.clone(),
    #[cfg(unix)]
    Some(Host::Unix(path)) => path.display().to_string(),
    None => "localhost".to_string(),
  };
  let port = config.get_ports().first().copied().unwrap_or(5432);
  let user = config.get_user().unwrap_or("postgres");
  let db = config.get_dbname().unwrap_or(user);
  format!("postgres://{user}@{host}:{port}/{db}")
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn takes_sslmode_from_a_key_value_string() {
    let (rest, taken) =
      take_tls_parameters("host=db.example port=5433 sslmode=require user=alice").unwrap();
    assert_eq!(rest, "host=db.example port=5433 user=alice");
    assert!(matches!(taken.mode, Some(TlsMode::Require)));
    let (_, taken) = take_tls_parameters("host=db.example sslmode='verify-full'").unwrap();
    assert!(matches!(taken.mode, Some(TlsMode::Verify)));
    assert!(take_tls_parameters("host=db.example sslmode=sometimes").is_err());
    // Required in key/value form: the target asks for TLS, not the `prefer` default.
    let target = PostgresTarget::from_url("host=db.example sslmode=require", None).unwrap();
    assert!(matches!(target.config.get_ssl_mode(), SslMode::Require));
  }

  #[test]
  fn parses_libpq_urls_and_sslmodes() {
    let target = PostgresTarget::from_url(
      "postgresql://alice:secret@db.example:6543/app?sslmode=disable&application_name=worker",
      None,
    )
    .unwrap();
    assert!(target.tls.is_none());
    assert_eq!(target.display, "postgres://alice@db.example:6543/app");
    assert_eq!(target.config.get_application_name(), Some("worker"));
    assert_eq!(target.config.get_password(), Some(&b"secret"[..]));
    let verify = PostgresTarget::from_url("postgres://h/db?sslmode=verify-full", None).unwrap();
    assert!(verify.tls.is_some());
    assert_eq!(verify.config.get_ssl_mode(), SslMode::Require);
    let default = PostgresTarget::from_url("postgres://h/db", None).unwrap();
    assert_eq!(default.config.get_ssl_mode(), SslMode::Prefer);
    assert_eq!(default.config.get_application_name(), Some("durastate"));
    let percent = PostgresTarget::from_url("postgres://h/db?sslmode=verify%2Dca", None).unwrap();
    assert_eq!(percent.config.get_ssl_mode(), SslMode::Require);
    // libpq's files: taken out of the query (tokio-postgres refuses them), a path each.
    let (rest, taken) = take_tls_parameters(
      "postgres://h/db?sslrootcert=%2Fetc%2Fca.pem&application_name=w&sslcert=/c.pem&sslkey=/k.pem",
    )
    .unwrap();
    assert_eq!(rest, "postgres://h/db?application_name=w");
    let options = taken.merged(None).unwrap();
    assert_eq!(options.ca.as_deref(), Some("/etc/ca.pem"));
    assert_eq!(options.cert.as_deref(), Some("/c.pem"));
    assert_eq!(options.key.as_deref(), Some("/k.pem"));
    // A unix socket has no TLS, whatever sslmode says (as libpq).
    #[cfg(unix)]
    {
      let socket = PostgresTarget::from_url(
        "postgresql:///db?host=/run/postgresql&sslmode=require",
        None,
      )
      .unwrap();
      assert!(socket.tls.is_none());
      assert_eq!(socket.config.get_ssl_mode(), SslMode::Disable);
    }
  }

  #[test]
  fn rejects_bad_urls() {
    for url in [
      "postgres://h/db?sslmode=sometimes",
      "postgres://h:notaport/db",
      "postgres://h/db?nonsense_option=1",
    ] {
      let err = PostgresTarget::from_url(url, None).err().expect(url);
      assert_eq!(err.code, crate::error::ErrorCode::InvalidInput, "{url}");
    }
  }
}
