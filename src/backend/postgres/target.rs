//! Where a Postgres store connects: libpq's URL grammar (`postgres://user:pass@host:port/db
//! ?sslmode=...&application_name=...`, or fields), parsed by tokio-postgres's `Config`
//! once the TLS parameters it does not know (`sslmode=verify-full`, ...) are taken out,
//! and the rustls configuration of the `tls` option shape Redis uses (`crate::tls`).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig};
use futures_util::future::BoxFuture;
use napi_derive::napi;
use rustls::ClientConfig;
use tokio_postgres::config::{Host, LoadBalanceHosts, SslMode};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Config, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{StoreError, StoreResult};
use crate::events::ConnectionEvents;
use crate::tls::{TlsOptions, TlsSettings};

/// A Postgres server given as fields rather than a URL.
#[napi(object, object_to_js = false)]
#[derive(Default, Clone)]
pub struct PostgresConnectionOptions {
  /// Host name, IP address, or a directory holding the server's unix socket. Default `localhost`.
  pub host: Option<String>,
  /// TCP port. Default 5432.
  pub port: Option<f64>,
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
  /// `allow`: as `prefer` here.
  Allow,
  /// `prefer`: TLS when the server offers it, certificate not checked.
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
      "allow" => TlsMode::Allow,
      "prefer" => TlsMode::Prefer,
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

  /// libpq's name of the mode.
  fn name(self) -> &'static str {
    match self {
      TlsMode::Disable => "disable",
      TlsMode::Allow => "allow",
      TlsMode::Prefer => "prefer",
      TlsMode::Require => "require",
      TlsMode::VerifyCa => "verify-ca",
      TlsMode::Verify => "verify-full",
    }
  }
}

/// The parameters tokio-postgres's parser takes (besides those `from_params` takes out).
const SUPPORTED: &[&str] = &[
  "options",
  "application_name",
  "sslnegotiation",
  "connect_timeout",
  "tcp_user_timeout",
  "keepalives",
  "keepalives_idle",
  "keepalives_interval",
  "keepalives_retries",
  "target_session_attrs",
  "channel_binding",
  "load_balance_hosts",
];

/// libpq's parameters that durastate's client (tokio-postgres) does not take.
const LIBPQ_UNSUPPORTED: &[&str] = &[
  "service",
  "servicefile",
  "client_encoding",
  "fallback_application_name",
  "sslpassword",
  "sslcompression",
  "sslcrl",
  "sslcrldir",
  "sslsni",
  "sslcertmode",
  "sslkeylogfile",
  "ssl_min_protocol_version",
  "ssl_max_protocol_version",
  "min_protocol_version",
  "max_protocol_version",
  "requirepeer",
  "require_auth",
  "gssencmode",
  "gsslib",
  "gssdelegation",
  "krbsrvname",
  "replication",
  "oauth_issuer",
  "oauth_client_id",
  "oauth_client_secret",
  "oauth_scope",
  "scram_client_key",
  "scram_server_key",
];

/// A validated Postgres target.
pub struct PostgresTarget {
  pub config: Config,
  /// `config` for each of its hosts alone.
  each_host: Vec<Config>,
  /// The rustls configuration when TLS may be used.
  pub tls: Option<Arc<ClientConfig>>,
  /// `user@host:port/db`, for messages (never the password).
  pub display: String,
}

impl PostgresTarget {
  /// A `postgres://` or `postgresql://` URL, or a libpq key/value string
  /// (`host=db port=5433 sslmode = require password='a b'`).
  pub fn from_url(url: &str, tls: Option<&TlsOptions>) -> StoreResult<Self> {
    let (params, context) = match parse_url(url)? {
      Some(params) => (
        params,
        format!("invalid Postgres URL \"{}\"", redact_url(url)),
      ),
      None => (
        parse_key_value(url)?,
        "invalid Postgres connection string".to_string(),
      ),
    };
    Self::from_params(params, tls, &context)
  }

  /// The parameters of a URL or key/value string: the TLS ones, hosts, ports, user,
  /// password and database taken here (with libpq's rules), the others given to
  /// tokio-postgres's parser, which refuses an unknown one.
  fn from_params(mut params: Params, tls: Option<&TlsOptions>, context: &str) -> StoreResult<Self> {
    let invalid = |problem: String| StoreError::invalid_input(format!("{context}: {problem}"));
    let mut taken = TlsParameters::default();
    for name in ["sslmode", "sslrootcert", "sslcert", "sslkey"] {
      if let Some(value) = params.take(name) {
        taken.take(name, value)?;
      }
    }
    // libpq 16: `sslrootcert=system` makes the default `verify-full`, and refuses a
    // weaker mode (the system's roots vouch for any name: only the name check ties the
    // certificate to this server).
    if let (Some("system"), Some(mode)) = (taken.root.as_deref(), taken.mode) {
      if mode != TlsMode::Verify {
        return Err(invalid(format!(
          "sslmode={} may not be used with sslrootcert=system (as libpq refuses it): the system's roots vouch for any public name, so only verify-full, which checks the host name too, ties the certificate to this server; give sslmode=verify-full, or leave sslmode out (with sslrootcert=system it is verify-full)",
          mode.name()
        )));
      }
    }
    let hosts = params.take("host");
    let ports = params.take("port");
    let hostaddrs = params.take("hostaddr");
    let user = params.take("user");
    let password = params.take("password");
    let dbname = params.take("dbname");
    // (not echoed: it is not a keyword, and may hold anything)
    if params.0.iter().any(|(k, _)| !is_keyword(k)) {
      return Err(invalid(
        "a parameter's name is not made of letters, digits and `_`".to_string(),
      ));
    }
    // Named here, never with its value (a mistyped `passwd=` is a password).
    if let Some((keyword, _)) = params
      .0
      .iter()
      .find(|(k, _)| !SUPPORTED.contains(&k.as_str()))
    {
      return Err(invalid(match keyword.as_str() {
        "ssl" => "parameter `ssl` is understood only as ssl=true (sslmode=require): use sslmode".to_string(),
        "passfile" => "parameter `passfile` is not supported: give the password in the URL, or the `password` field".to_string(),
        known if LIBPQ_UNSUPPORTED.contains(&known) => {
          format!("libpq parameter `{known}` is not supported by durastate")
        }
        unknown => format!("unknown parameter `{unknown}`"),
      }));
    }
    let rest: Vec<String> = params
      .0
      .iter()
      .map(|(k, v)| format!("{k}={}", quote_value(v)))
      .collect();
    let mut config: Config = rest.join(" ").parse().map_err(|err| {
      // tokio-postgres says what it could not read in the error's source (`invalid value
      // for option `keepalives``: the keyword, never the value).
      let mut message = format!("{err}");
      let mut source = std::error::Error::source(&err);
      while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
      }
      invalid(message)
    })?;
    let hosts: Vec<&str> = hosts
      .as_deref()
      .map(|h| h.split(',').collect())
      .unwrap_or_default();
    let hostaddrs = match hostaddrs.as_deref() {
      Some(list) => list
        .split(',')
        .map(|a| {
          a.parse::<std::net::IpAddr>().map_err(|_| {
            invalid(format!(
              "hostaddr must be IP addresses, got \"{}\"",
              a.escape_debug()
            ))
          })
        })
        .collect::<StoreResult<Vec<_>>>()?,
      None => Vec::new(),
    };
    if !hosts.is_empty() && !hostaddrs.is_empty() && hosts.len() != hostaddrs.len() {
      return Err(invalid(format!(
        "{} hosts and {} hostaddrs: give one hostaddr per host",
        hosts.len(),
        hostaddrs.len()
      )));
    }
    if let Some(user) = user {
      config.user(user);
    }
    if let Some(password) = password {
      config.password(password);
    }
    if let Some(dbname) = dbname {
      config.dbname(dbname);
    }
    // Without hosts and ports: each host's own connection starts from it.
    let base = config.clone();
    // A `hostaddr` without a host name (none given, an empty one, or a socket directory,
    // which a `hostaddr` makes TCP): libpq connects to the address and has no name to
    // check the certificate against. tokio-postgres takes the host as the TLS name only,
    // so the address is given as the host too (a `localhost` in its place would be a
    // name never given).
    let mut unnamed = Vec::new();
    for i in 0..hosts.len().max(hostaddrs.len()) {
      let host = hosts.get(i).copied().unwrap_or("");
      match hostaddrs.get(i) {
        Some(addr) if host.is_empty() || is_socket_directory(host) => {
          config.host(addr.to_string());
          unnamed.push(*addr);
        }
        _ if host.is_empty() => {
          config.host("localhost");
        }
        _ => {
          config.host(host);
        }
      }
    }
    for addr in &hostaddrs {
      config.hostaddr(*addr);
    }
    if let Some(ports) = ports.as_deref() {
      let ports = ports
        .split(',')
        .map(|port| match port {
          "" => Ok(5432),
          _ => port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            // A port that is not a number is not quoted: in a URL whose password holds
            // a raw `/` or `?`, what looks like a port is part of the password.
            invalid(match port.bytes().all(|b| b.is_ascii_digit()) {
              true => format!("port must be 1 to 65535, got \"{port}\""),
              false => "port must be a number from 1 to 65535 (a password with `/`, `?`, `@` or `:` in a URL must be percent-encoded)".to_string(),
            })
          }),
        })
        .collect::<StoreResult<Vec<u16>>>()?;
      // libpq: one port for every host, or one per host.
      let count = hosts.len().max(hostaddrs.len()).max(1);
      if ports.len() != 1 && ports.len() != count {
        return Err(invalid(format!(
          "{} ports for {count} host{}: give one port for all hosts, or one per host",
          ports.len(),
          if count == 1 { "" } else { "s" }
        )));
      }
      for port in ports {
        config.port(port);
      }
    }
    let merged = taken.merged(tls);
    Self::finish(
      config,
      base,
      taken.mode,
      merged.as_ref(),
      tls.is_some(),
      &unnamed,
      &invalid,
    )
  }

  /// Fields (`{ host, port, user, password, database, sslmode, applicationName }`).
  pub fn from_fields(
    fields: &PostgresConnectionOptions,
    tls: Option<&TlsOptions>,
  ) -> StoreResult<Self> {
    let mut config = Config::new();
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
    let base = config.clone();
    config.host(fields.host.as_deref().unwrap_or("localhost"));
    if let Some(port) = crate::options::whole_number("port", fields.port, 1, 65_535)? {
      config.port(port as u16);
    }
    let mode = fields.sslmode.as_deref().map(TlsMode::parse).transpose()?;
    Self::finish(config, base, mode, tls, tls.is_some(), &[], &|problem| {
      StoreError::invalid_input(format!("invalid Postgres connection fields: {problem}"))
    })
  }

  /// `config` with its hosts and ports, `base` the same without them; `tls` the `tls`
  /// option with the URL's TLS files, `explicit_tls` whether the `tls` option was given;
  /// `unnamed` the `hostaddr`s given without a host name (their address is their host).
  fn finish(
    mut config: Config,
    mut base: Config,
    mode: Option<TlsMode>,
    tls: Option<&TlsOptions>,
    explicit_tls: bool,
    unnamed: &[std::net::IpAddr],
    invalid: &dyn Fn(String) -> StoreError,
  ) -> StoreResult<Self> {
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
      config.host("localhost");
    }
    if config.get_user().is_none() {
      config.user("postgres");
      base.user("postgres");
    }
    if config.get_application_name().is_none() {
      config.application_name("durastate");
      base.application_name("durastate");
    }
    if tls.is_some_and(|t| t.servername.is_some()) {
      return Err(StoreError::invalid_input(
        "option `tls.servername` is not supported on Postgres: the certificate is checked against the URL's host",
      ));
    }
    // The `tls` option asks for TLS: a mode that turns it off, or falls back to plain
    // text when the server offers none, would drop it without a word (as the CLI's TLS
    // flags, refused).
    if let Some(weak @ (TlsMode::Disable | TlsMode::Allow | TlsMode::Prefer)) =
      mode.filter(|_| explicit_tls)
    {
      let why = match weak {
        TlsMode::Disable => "turns it off (the connection would be plain text)",
        _ => "connects in plain text when the server offers no TLS",
      };
      return Err(invalid(format!(
        "option `tls` asks for TLS, but sslmode={} {why}: drop one, or give sslmode=verify-full (or require, verify-ca)",
        weak.name()
      )));
    }
    // libpq's default is `prefer`; a `tls` option asks for TLS.
    let given = mode;
    let mode = mode.unwrap_or(match tls {
      Some(_) => TlsMode::Verify,
      None => TlsMode::Prefer,
    });
    // libpq documents that `verify-full` requires a host name ("host name must be
    // specified for a verified SSL connection"; libpq 15 checks a socket directory's name).
    if let (TlsMode::Verify, Some(addr)) = (mode, unnamed.first()) {
      return Err(invalid(format!(
        "hostaddr={addr} has no host name, and sslmode=verify-full checks the server's certificate against the host name (a host name is required for verify-full, as libpq documents; it fails too): give the name the certificate carries with it (host=db.example hostaddr={addr}; in a URL, postgres://user@db.example/db?hostaddr={addr}), or sslmode=verify-ca to check the chain only{}",
        match given {
          None => " (the `tls` option without sslmode means verify-full)",
          Some(_) => "",
        }
      )));
    }
    // libpq ignores `sslmode` on a unix socket: there is no TLS there. When every host
    // is one, no TLS at all (a `hostaddr`, TCP whatever the host, keeps the mode); in a
    // list that mixes sockets and TCP, each socket's own connection has none (below).
    #[cfg(unix)]
    let mode = match !config.get_hosts().is_empty()
      && config.get_hostaddrs().is_empty()
      && config
        .get_hosts()
        .iter()
        .all(|h| matches!(h, Host::Unix(_)))
    {
      true => TlsMode::Disable,
      false => mode,
    };
    let tls = match mode {
      TlsMode::Disable => None,
      TlsMode::Allow | TlsMode::Prefer | TlsMode::Require => {
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
    let ssl_mode = match mode {
      TlsMode::Disable => SslMode::Disable,
      TlsMode::Allow | TlsMode::Prefer => SslMode::Prefer,
      TlsMode::Require | TlsMode::VerifyCa | TlsMode::Verify => SslMode::Require,
    };
    config.ssl_mode(ssl_mode);
    base.ssl_mode(ssl_mode);
    // One configuration per host (its name, address and port), tried in turn.
    let (hosts, addrs, ports) = (
      config.get_hosts(),
      config.get_hostaddrs(),
      config.get_ports(),
    );
    let each_host = (0..hosts.len().max(addrs.len()))
      .map(|i| {
        let mut one = base.clone();
        match hosts.get(i) {
          Some(Host::Tcp(host)) => {
            one.host(host);
          }
          #[cfg(unix)]
          Some(Host::Unix(path)) => {
            one.host_path(path);
            // libpq: no TLS on a unix socket, whatever sslmode says (per host, in a
            // list that mixes sockets and TCP), unless a `hostaddr` makes it TCP.
            if addrs.get(i).is_none() {
              one.ssl_mode(SslMode::Disable);
            }
          }
          None => {}
        }
        if let Some(addr) = addrs.get(i) {
          one.hostaddr(*addr);
        }
        if let Some(port) = ports.get(i).or(ports.first()) {
          one.port(*port);
        }
        one
      })
      .collect();
    let display = display(&config);
    Ok(Self {
      config,
      each_host,
      tls,
      display,
    })
  }

  /// Sets the bound on establishing a connection (to each host).
  pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
    self.config.connect_timeout(timeout);
    for one in &mut self.each_host {
      one.connect_timeout(timeout);
    }
    self
  }

  /// How many hosts the target names (libpq's multi-host lists): `connectTimeout`
  /// bounds each.
  pub fn host_count(&self) -> usize {
    self.each_host.len().max(1)
  }

  /// The pool's manager: it connects to the hosts in turn, each within the connect
  /// timeout (tokio-postgres bounds only the TCP connect of each, so a host that
  /// accepts and never answers held every connection and the next hosts were never
  /// tried).
  pub fn manager(&self, manager_config: ManagerConfig, events: Arc<ConnectionEvents>) -> Manager {
    let timeout = self.config.get_connect_timeout().copied();
    match &self.tls {
      Some(tls) => Manager::from_connect(
        self.config.clone(),
        HostsConnect {
          each_host: self.each_host.clone(),
          timeout,
          tls: MakeRustlsConnect::new((**tls).clone()),
          events: events.clone(),
        },
        manager_config,
      ),
      None => Manager::from_connect(
        self.config.clone(),
        HostsConnect {
          each_host: self.each_host.clone(),
          timeout,
          tls: NoTls,
          events,
        },
        manager_config,
      ),
    }
  }
}

/// Connects to each host in turn (libpq's order; `load_balance_hosts=random` starts at a
/// random one), each attempt bounded by the connect timeout but the last (which the
/// pool's bound covers), and returns the first connection made or the last error. It
/// reports the connection events: a connection made (`connect`, or `reconnect` once one
/// dropped), and one that ends with an error (`drop`: the server closed it, the network
/// failed), not one the pool or the store closed.
struct HostsConnect<T> {
  each_host: Vec<Config>,
  timeout: Option<Duration>,
  tls: T,
  events: Arc<ConnectionEvents>,
}

impl<T> deadpool_postgres::Connect for HostsConnect<T>
where
  T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
  T::Stream: Sync + Send,
  T::TlsConnect: Sync + Send,
  <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
  fn connect(
    &self,
    _config: &Config,
  ) -> BoxFuture<
    '_,
    Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
  > {
    Box::pin(async move {
      let count = self.each_host.len();
      let start = match self.each_host.first().map(|c| c.get_load_balance_hosts()) {
        Some(LoadBalanceHosts::Random) => (crate::backend::retry::jitter() * count as f64) as usize,
        _ => 0,
      };
      let mut error = None;
      for n in 0..count {
        let config = &self.each_host[(start + n) % count];
        let attempt = config.connect(self.tls.clone());
        let result = match self.timeout {
          // The last host is bounded by the pool's wait, unless an earlier host failed
          // in a way worth saying: then that error is said when it does not answer.
          Some(timeout) if n + 1 < count || error.as_ref().is_some_and(telling) => {
            match tokio::time::timeout(timeout, attempt).await {
              Ok(result) => result,
              // No answer in time: the next host.
              Err(_) => continue,
            }
          }
          _ => attempt.await,
        };
        match result {
          Ok((client, connection)) => {
            let events = self.events.clone();
            events.pool_connected(super::server_info(config).address());
            let task = tokio::spawn(async move {
              if let Err(err) = connection.await {
                events.dropped(&super::errors::store_error(&err));
              }
            });
            return Ok((client, task));
          }
          // The error said is the last host's, unless an earlier one's tells more: a TLS
          // or authentication failure (a setting to fix, not retried) is not hidden
          // behind a later host's refused connection.
          Err(err) => {
            if error.as_ref().is_none_or(|kept| !telling(kept)) {
              error = Some(err);
            }
          }
        }
      }
      match error {
        Some(err) => Err(err),
        // No host at all (never: a target has one); tokio-postgres says so.
        None => match Config::new().connect(self.tls.clone()).await {
          Err(err) => Err(err),
          Ok(_) => unreachable!("a configuration without hosts connects nowhere"),
        },
      }
    })
  }
}

/// Whether a connect error is one a setting must fix (TLS, authentication).
fn telling(err: &tokio_postgres::Error) -> bool {
  matches!(
    super::errors::store_error(err).code,
    crate::error::ErrorCode::Tls | crate::error::ErrorCode::Auth
  )
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

/// libpq connection parameters in the order given; a keyword given again replaces its
/// earlier value (as libpq: `host=a host=b` is `b`, and a URL's query overrides its
/// authority, `postgres://h/db?port=5433`).
#[derive(Default, Debug, PartialEq, Eq)]
struct Params(Vec<(String, String)>);

impl Params {
  fn set(&mut self, keyword: &str, value: String) {
    match self.0.iter_mut().find(|(k, _)| k == keyword) {
      Some(pair) => pair.1 = value,
      None => self.0.push((keyword.to_string(), value)),
    }
  }

  fn take(&mut self, keyword: &str) -> Option<String> {
    let at = self.0.iter().position(|(k, _)| k == keyword)?;
    Some(self.0.remove(at).1)
  }
}

/// libpq's key/value connection string (`conninfo_parse` in `fe-connect.c`), exactly:
/// a keyword, optional whitespace, `=`, optional whitespace, then a value that is either
/// unquoted (up to the next whitespace; `\` takes the next character as it is) or single
/// quoted (`\'` and `\\` inside). Errors name the keyword, never a value.
fn parse_key_value(text: &str) -> StoreResult<Params> {
  let invalid = |problem: String| {
    StoreError::invalid_input(format!("invalid Postgres connection string: {problem}"))
  };
  let mut params = Params::default();
  let mut chars = text.chars().peekable();
  let mut previous: Option<String> = None;
  loop {
    while chars.next_if(|c| is_space(*c)).is_some() {}
    if chars.peek().is_none() {
      return Ok(params);
    }
    let mut keyword = String::new();
    while let Some(c) = chars.next_if(|c| *c != '=' && !is_space(*c)) {
      keyword.push(c);
    }
    // A keyword is letters, digits and `_`: anything else is not echoed (a URL that is
    // not a `postgres://` one is read here, its password in what looks like a keyword).
    if !keyword.is_empty() && !is_keyword(&keyword) {
      return Err(bad_keyword(text, previous.as_deref(), &keyword));
    }
    while chars.next_if(|c| is_space(*c)).is_some() {}
    if chars.next() != Some('=') {
      // The word may be the rest of an unquoted value with a space: it is named only
      // when it does not follow a password.
      return Err(invalid(match previous.as_deref() {
        Some(p) if p.contains("password") => {
          format!("missing \"=\" after the value of `{p}` (quote a value with spaces: {p}='a b')")
        }
        Some(p) => format!(
          "missing \"=\" after \"{}\" (quote a value with spaces: {p}='a b')",
          keyword.escape_debug()
        ),
        None => format!("missing \"=\" after \"{}\"", keyword.escape_debug()),
      }));
    }
    if keyword.is_empty() {
      return Err(invalid("a parameter has no keyword before \"=\"".into()));
    }
    while chars.next_if(|c| is_space(*c)).is_some() {}
    let mut value = String::new();
    if chars.next_if_eq(&'\'').is_some() {
      loop {
        match chars.next() {
          None => {
            return Err(invalid(format!(
              "unterminated quoted value of `{}` (a ' without its closing ')",
              keyword.escape_debug()
            )))
          }
          Some('\\') => value.extend(chars.next()),
          Some('\'') => break,
          Some(c) => value.push(c),
        }
      }
    } else {
      while let Some(c) = chars.next() {
        match c {
          c if is_space(c) => break,
          '\\' => value.extend(chars.next()),
          c => value.push(c),
        }
      }
    }
    params.set(&keyword, value);
    previous = Some(keyword);
  }
}

/// Whether tokio-postgres takes `host` for a unix socket's directory (as libpq: a path).
fn is_socket_directory(host: &str) -> bool {
  cfg!(unix) && host.starts_with('/')
}

/// Whether `word` may be echoed as a keyword: letters, digits and `_` only.
fn is_keyword(word: &str) -> bool {
  !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The error for a key/value string whose `keyword` is not one (see `is_keyword`); it
/// never shows the keyword. When it is the first word and reads as a URL (`://`, `@`,
/// `:`), the text was meant as a URL of another form (`postgresql+asyncpg://`,
/// `postgress://`, a leading space): said so, the URL shown without its password.
fn bad_keyword(text: &str, previous: Option<&str>, keyword: &str) -> StoreError {
  let problem = match previous {
    None if keyword.contains("://") || keyword.contains(['@', ':']) => {
      let trimmed = text.trim_matches(is_space);
      let hint = match parse_url(trimmed) {
        Ok(Some(_)) => " (remove the whitespace around it)",
        _ => "",
      };
      return StoreError::invalid_input(format!(
        "invalid Postgres target \"{}\": not a postgres:// or postgresql:// URL, nor a libpq key=value string{hint}",
        redact_target(trimmed)
      ));
    }
    None => "the first keyword is not made of letters, digits and `_`".to_string(),
    Some(p) if p.contains("password") => format!(
      "a keyword after the value of `{p}` is not made of letters, digits and `_` (quote a value with spaces: {p}='a b')"
    ),
    Some(p) => format!("the keyword after `{p}` is not made of letters, digits and `_`"),
  };
  StoreError::invalid_input(format!("invalid Postgres connection string: {problem}"))
}

/// The first word of a target that is not a `postgres://` URL, for a message, with what
/// may be a password hidden: everything between its scheme and its last `@`, and the
/// value of a `password` parameter; a rest after whitespace is left out.
fn redact_target(text: &str) -> String {
  let (word, more) = match text.split_once(is_space) {
    Some((word, _)) => (word, " ..."),
    None => (text, ""),
  };
  let word = match word.rsplit_once('@') {
    Some((before, after)) => match before.split_once(':') {
      Some((scheme, _)) => format!("{scheme}:***@{after}"),
      None => format!("***@{after}"),
    },
    None => word.to_string(),
  };
  let mut shown = crate::redis_target::without_query_values(&word);
  // `password=` outside a query (`jdbc:...;password=...`).
  let mut from = 0;
  while let Some(at) = shown[from..].to_ascii_lowercase().find("password=") {
    let start = from + at + "password=".len();
    let end = shown[start..]
      .find(['&', ';'])
      .map_or(shown.len(), |n| start + n);
    shown.replace_range(start..end, "***");
    from = start + 3;
  }
  format!("{shown}{more}")
}

/// A Postgres URL for an error message: its password, and the value of every query
/// parameter (a mistyped or unsupported one may hold a secret under any name), hidden.
fn redact_url(url: &str) -> String {
  let url = crate::redis_target::without_query_values(url);
  match crate::redis_target::redact(&url) {
    unparsable if unparsable == "<unparsable>" && url.contains("://") => url,
    redacted => redacted,
  }
}

/// C's `isspace` in the C locale, which libpq uses: ASCII only (a no-break space is part
/// of a value), `\v` included.
fn is_space(c: char) -> bool {
  matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}

/// `value` single-quoted for a key/value string (`\` and `'` escaped).
fn quote_value(value: &str) -> String {
  format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A `postgres://` or `postgresql://` URL as libpq reads it (`conninfo_uri_parse_options`):
/// `user:password@` (percent-encoded), hosts `h1[:p1],[::1][:p2]` (each port applies to
/// its host; an empty one is the default), `/dbname`, then `?keyword=value&...` that
/// override them.
fn parse_url(url: &str) -> StoreResult<Option<Params>> {
  let lower = url.get(..13).unwrap_or(url).to_ascii_lowercase();
  let rest = if lower.starts_with("postgresql://") {
    &url[13..]
  } else if lower.starts_with("postgres://") {
    &url[11..]
  } else {
    return Ok(None);
  };
  let invalid = |problem: String| {
    StoreError::invalid_input(format!(
      "invalid Postgres URL \"{}\": {problem}",
      redact_url(url)
    ))
  };
  let decode = |what: &str, text: &str| -> StoreResult<String> {
    percent_encoding::percent_decode_str(text)
      .decode_utf8()
      .map(|s| s.into_owned())
      .map_err(|_| invalid(format!("{what} is not UTF-8 once percent-decoded")))
  };
  let mut params = Params::default();
  let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
  let (mut authority, rest) = rest.split_at(authority_end);
  if let Some((credentials, hosts)) = authority.split_once('@') {
    // libpq ends the user information at the first `@`: a second one is a password's,
    // unencoded, and libpq would take its tail for the host.
    if hosts.contains('@') {
      return Err(invalid(
        "a password with `@`, `/`, `?` or `:` in a URL must be percent-encoded".to_string(),
      ));
    }
    let (user, password) = match credentials.split_once(':') {
      Some((user, password)) => (user, Some(password)),
      None => (credentials, None),
    };
    if !user.is_empty() {
      params.set("user", decode("the user", user)?);
    }
    if let Some(password) = password {
      params.set("password", decode("the password", password)?);
    }
    authority = hosts;
  }
  if !authority.is_empty() {
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for chunk in authority.split(',') {
      let (host, port) = match chunk.strip_prefix('[') {
        Some(bracketed) => {
          let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| invalid("a \"[\" without its \"]\" in the host".into()))?;
          match after {
            "" => (host, ""),
            _ => match after.strip_prefix(':') {
              Some(port) => (host, port),
              None => {
                return Err(invalid(format!(
                  "unexpected \"{after}\" after \"[{host}]\""
                )))
              }
            },
          }
        }
        None => chunk.split_once(':').unwrap_or((chunk, "")),
      };
      hosts.push(decode("the host", host)?);
      ports.push(decode("the port", port)?);
    }
    params.set("host", hosts.join(","));
    if ports.iter().any(|p| !p.is_empty()) || ports.len() > 1 {
      params.set("port", ports.join(","));
    }
  }
  let (path, query) = match rest.split_once('?') {
    Some((path, query)) => (path, Some(query)),
    None => (rest, None),
  };
  let db = path.strip_prefix('/').unwrap_or(path);
  if !db.is_empty() {
    params.set("dbname", decode("the database name", db)?);
  }
  if let Some(query) = query {
    let mut after_password = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
      let (keyword, value) = pair
        .split_once('=')
        .ok_or_else(|| invalid("a query parameter without \"=\"".into()))?;
      let keyword = decode("a query parameter's name", keyword)?;
      // Not named: a raw `&` in the password ends it, and its rest reads as this keyword.
      if after_password && !is_taken_keyword(&keyword) {
        return Err(invalid(crate::redis_target::unknown_parameter(
          &keyword, true,
        )));
      }
      after_password |= keyword == "password";
      let value = decode(&format!("the value of `{keyword}`"), value)?;
      // libpq's JDBC-compatible `ssl=true`.
      match (keyword.as_str(), value.as_str()) {
        ("ssl", "true") => params.set("sslmode", "require".into()),
        _ => params.set(&keyword, value),
      }
    }
  }
  Ok(Some(params))
}

/// Whether `keyword` is one durastate takes from a URL's query (the others are refused).
fn is_taken_keyword(keyword: &str) -> bool {
  const TAKEN: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "ssl",
    "host",
    "port",
    "hostaddr",
    "user",
    "password",
    "dbname",
  ];
  TAKEN.contains(&keyword)
    || SUPPORTED.contains(&keyword)
    || LIBPQ_UNSUPPORTED.contains(&keyword)
    || keyword == "passfile"
}

fn display(config: &Config) -> String {
  let ports = config.get_ports();
  let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
  let hosts: Vec<String> = match config.get_hosts() {
    [] => config
      .get_hostaddrs()
      .iter()
      .enumerate()
      .map(|(i, addr)| match addr {
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", port(i)),
        v4 => format!("{v4}:{}", port(i)),
      })
      .collect(),
    hosts => hosts
      .iter()
      .enumerate()
      .map(|(i, host)| match host {
        Host::Tcp(host) if host.contains(':') => format!("[{host}]:{}", port(i)),
        Host::Tcp(host) => format!("{host}:{}", port(i)),
        #[cfg(unix)]
        Host::Unix(path) => format!("{}:{}", path.display(), port(i)),
      })
      .collect(),
  };
  let hosts = match hosts.is_empty() {
    true => format!("localhost:{}", port(0)),
    false => hosts.join(","),
  };
  let user = config.get_user().unwrap_or("postgres");
  let db = config.get_dbname().unwrap_or(user);
  format!("postgres://{user}@{hosts}/{db}")
}

#[cfg(test)]
mod tests {
  use super::*;

  fn pairs(params: &Params) -> Vec<(&str, &str)> {
    params
      .0
      .iter()
      .map(|(k, v)| (k.as_str(), v.as_str()))
      .collect()
  }

  #[test]
  fn tokenizes_key_value_strings_as_libpq() {
    // Whitespace around `=`, as libpq allows.
    let params =
      parse_key_value("  host = db.example\tport=5433 sslmode =require  user= alice ").unwrap();
    assert_eq!(
      pairs(&params),
      [
        ("host", "db.example"),
        ("port", "5433"),
        ("sslmode", "require"),
        ("user", "alice")
      ]
    );
    // Quoted values keep their whitespace; \' and \\ inside; `\` escapes unquoted too.
    let params = parse_key_value(r"password='a  b\'c\\d' dbname=x\ y application_name=''").unwrap();
    assert_eq!(
      pairs(&params),
      [
        ("password", "a  b'c\\d"),
        ("dbname", "x y"),
        ("application_name", "")
      ]
    );
    // libpq's spaces are C's (ASCII): a no-break space is part of the value.
    assert_eq!(
      pairs(&parse_key_value("password=a\u{a0}b\x0Bhost=h").unwrap()),
      [("password", "a\u{a0}b"), ("host", "h")]
    );
    // A keyword given again replaces the earlier value.
    assert_eq!(
      pairs(&parse_key_value("host=a host=b").unwrap()),
      [("host", "b")]
    );
    // After `=` blanks are skipped: the value is the next word (libpq).
    assert_eq!(
      pairs(&parse_key_value("password= host=x").unwrap()),
      [("password", "host=x")]
    );
    assert!(parse_key_value("").unwrap().0.is_empty());
    let message = |text: &str| parse_key_value(text).expect_err(text).message;
    assert!(message("host='db port=1").contains("unterminated quoted value of `host`"));
    assert!(message("host=db port").contains("missing \"=\" after \"port\""));
    assert!(message("=db").contains("no keyword"));
    // An unquoted password with a space: the error does not quote the rest of it.
    let leaked = message("host=db password=top secret");
    assert!(leaked.contains("after the value of `password`"), "{leaked}");
    assert!(!leaked.contains("secret"), "{leaked}");
    assert_eq!(
      parse_key_value("host=db x").err().unwrap().code,
      crate::error::ErrorCode::InvalidInput
    );
    // Quoting for tokio-postgres's parser round-trips.
    assert_eq!(quote_value(r"a 'b' \c"), r"'a \'b\' \\c'");
  }

  #[test]
  fn takes_the_tls_parameters_of_a_key_value_string() {
    // `sslmode = require` (spaces) asks for TLS: never the `prefer` default.
    for text in [
      "host=db.example sslmode=require",
      "host=db.example sslmode = require",
      "host=db.example sslmode= 'require'",
    ] {
      let target = PostgresTarget::from_url(text, None).unwrap();
      assert_eq!(target.config.get_ssl_mode(), SslMode::Require, "{text}");
      assert!(target.tls.is_some(), "{text}");
    }
    let target = PostgresTarget::from_url(
      "host = db.example port = 5433 user = alice password = 'p w\\'d' dbname = 'my db' application_name = w",
      None,
    )
    .unwrap();
    assert_eq!(target.config.get_password(), Some(&b"p w'd"[..]));
    assert_eq!(target.config.get_dbname(), Some("my db"));
    assert_eq!(target.config.get_ports(), [5433]);
    assert_eq!(target.config.get_application_name(), Some("w"));
    assert_eq!(target.display, "postgres://alice@db.example:5433/my db");
    // A quoted path keeps its space (read at creation: this one does not exist).
    let err = PostgresTarget::from_url(
      "host=h sslmode=verify-full sslrootcert='/a dir/ca.pem'",
      None,
    )
    .err()
    .unwrap();
    assert!(err.message.contains("\"/a dir/ca.pem\""), "{}", err.message);
    assert!(PostgresTarget::from_url("host=db.example sslmode=sometimes", None).is_err());
    assert!(PostgresTarget::from_url("host=h nonsense=1", None).is_err());
  }

  #[test]
  fn checks_the_ports_against_the_hosts_as_libpq() {
    let ok = |text: &str| PostgresTarget::from_url(text, None).expect(text);
    let bad = |text: &str| {
      let err = PostgresTarget::from_url(text, None).err().expect(text);
      assert_eq!(err.code, crate::error::ErrorCode::InvalidInput, "{text}");
      err.message
    };
    assert_eq!(ok("postgres://h1:1,h2:2/db").config.get_ports(), [1, 2]);
    assert_eq!(ok("postgres://h1,h2:2/db").config.get_ports(), [5432, 2]);
    // `?port=` replaces the URL's ports: one for all hosts.
    let query = ok("postgres://h1,h2/db?port=5433");
    assert_eq!(query.config.get_ports(), [5433]);
    assert_eq!(query.config.get_hosts().len(), 2);
    assert_eq!(query.display, "postgres://postgres@h1:5433,h2:5433/db");
    assert_eq!(ok("host=a,b port=7").config.get_ports(), [7]);
    assert_eq!(ok("host=a,b port=7,8").config.get_ports(), [7, 8]);
    assert!(bad("host=a,b port=7,8,9").contains("3 ports for 2 hosts"));
    let multi = bad("postgres://u:s3cret@h1:1,h2:2/db?port=1,2,3&password=top");
    assert!(
      multi.starts_with(
        "invalid Postgres URL \"postgres://u:***@h1:1,h2:2/db?port=***&password=***\""
      ),
      "{multi}"
    );
    assert!(bad("postgres://h1,h2/db?port=1,2,3").contains("3 ports for 2 hosts"));
    // A password with a raw `/` or `?` (base64): never in the message, not even the
    // part that looks like a port.
    // (With a `?` before the last `@`, that `@` may be in a query value, and what follows
    // it the end of a password: nothing after `//` is shown.)
    for (url, secret, shown) in [
      (
        "postgres://app:Ab/cD+e=@db.example/app",
        ["Ab", "cD+e"],
        "app:***@",
      ),
      (
        "postgres://app:x?y@db.example/app?sslmode",
        ["x?y", "x"],
        "\"postgres://***\"",
      ),
    ] {
      let message = bad(url);
      assert!(message.contains(shown), "{message}");
      for part in secret {
        assert!(!message.contains(&format!(":{part}")), "{message}");
      }
    }
    assert!(bad("host=a port=1,2").contains("2 ports for 1 host"));
    assert!(bad("postgres://h:0/db").contains("port must be 1 to 65535, got \"0\""));
    assert!(bad("host=a,b port=1,0").contains("got \"0\""));
    assert!(bad("postgres://h/db?port=0").contains("got \"0\""));
    assert!(bad("host=a,b hostaddr=127.0.0.1").contains("2 hosts and 1 hostaddrs"));
    // The query's host replaces the URL's (libpq), here a socket directory.
    #[cfg(unix)]
    assert!(matches!(
      ok("postgres://h/db?host=%2Ftmp").config.get_hosts(),
      [Host::Unix(_)]
    ));
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
    let mut params = parse_url(
      "postgres://h/db?sslrootcert=%2Fetc%2Fca.pem&application_name=w&sslcert=/c.pem&sslkey=/k.pem",
    )
    .unwrap()
    .unwrap();
    let mut taken = TlsParameters::default();
    for name in ["sslrootcert", "sslcert", "sslkey"] {
      let value = params.take(name).unwrap();
      taken.take(name, value).unwrap();
    }
    assert_eq!(
      pairs(&params),
      [("host", "h"), ("dbname", "db"), ("application_name", "w")]
    );
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
      // A `hostaddr` is TCP: its sslmode holds, with or without a host (a socket
      // directory as host included).
      for text in [
        "postgres://app@/db?hostaddr=10.0.0.5&sslmode=require",
        "postgres:///db?host=/run/postgresql&hostaddr=10.0.0.5&sslmode=require",
      ] {
        let tcp = PostgresTarget::from_url(text, None).unwrap();
        assert!(tcp.tls.is_some(), "{text}");
        assert_eq!(tcp.config.get_ssl_mode(), SslMode::Require, "{text}");
      }
      let kv =
        PostgresTarget::from_url("hostaddr=10.0.0.5 sslmode=verify-ca user=app", None).unwrap();
      assert!(kv.tls.is_some());
      assert_eq!(kv.config.get_ssl_mode(), SslMode::Require);
    }
  }

  /// The error of a target refused at creation: `INVALID_INPUT`, the password never shown.
  fn refused(text: &str, tls: Option<&TlsOptions>) -> String {
    let err = PostgresTarget::from_url(text, tls).err().expect(text);
    assert_eq!(err.code, crate::error::ErrorCode::InvalidInput, "{text}");
    assert!(!err.message.contains("S3cretPw"), "{}", err.message);
    err.message
  }

  #[test]
  fn a_hostaddr_without_a_host_name_is_the_tls_name_and_verify_full_is_refused_as_libpq() {
    // Each host's connection has the address as its host: tokio-postgres connects to the
    // `hostaddr` and takes the host as the TLS name (none: "no hostname provided").
    for (text, ip) in [
      (
        "hostaddr=10.0.0.5 port=5433 user=app password=S3cretPw",
        "10.0.0.5",
      ),
      ("hostaddr=10.0.0.5 sslmode=require", "10.0.0.5"),
      ("hostaddr=::1 sslmode=verify-ca", "::1"),
      // An empty host in a URL is no name either (never `localhost`, a name not given).
      (
        "postgres://app:S3cretPw@:5433/db?hostaddr=10.0.0.5&sslmode=require",
        "10.0.0.5",
      ),
      #[cfg(unix)]
      (
        "host=/run/postgresql hostaddr=10.0.0.5 sslmode=require",
        "10.0.0.5",
      ),
    ] {
      let target = PostgresTarget::from_url(text, None).expect(text);
      assert_eq!(target.each_host.len(), 1, "{text}");
      let one = &target.each_host[0];
      assert!(
        matches!(one.get_hosts(), [Host::Tcp(host)] if host == ip),
        "{text}: {:?}",
        one.get_hosts()
      );
      assert_eq!(
        one.get_hostaddrs(),
        [ip.parse::<std::net::IpAddr>().unwrap()]
      );
      assert!(target.tls.is_some(), "{text}");
      assert!(!target.display.contains("localhost"), "{}", target.display);
    }
    let pair = PostgresTarget::from_url(
      "host=db.example,,/tmp hostaddr=10.0.0.1,10.0.0.2,10.0.0.3",
      None,
    )
    .unwrap();
    let names: Vec<_> = pair
      .each_host
      .iter()
      .map(|c| c.get_hosts()[0].clone())
      .collect();
    assert!(
      matches!(&names[..], [Host::Tcp(a), Host::Tcp(b), Host::Tcp(c)] if a == "db.example" && b == "10.0.0.2" && c == "10.0.0.3"),
      "{names:?}"
    );
    // verify-full needs a host name: refused at creation, as libpq refuses it ("host
    // name must be specified for a verified SSL connection"), saying what to write.
    let ca = TlsOptions::default();
    for (text, tls) in [
      (
        "hostaddr=127.0.0.1 port=5433 password=S3cretPw sslmode=verify-full",
        None,
      ),
      (
        "postgres://app:S3cretPw@:5433/db?hostaddr=127.0.0.1&sslmode=verify-full",
        None,
      ),
      ("postgres://app:S3cretPw@/db?hostaddr=127.0.0.1", Some(&ca)),
      (
        "host=db.example, hostaddr=10.0.0.1,127.0.0.1 sslmode=verify-full",
        None,
      ),
      #[cfg(unix)]
      ("host=/tmp hostaddr=127.0.0.1 sslmode=verify-full", None),
    ] {
      let message = refused(text, tls);
      assert!(
        message.contains("hostaddr=127.0.0.1 has no host name"),
        "{message}"
      );
      assert!(
        message.contains("host=db.example hostaddr=127.0.0.1"),
        "{message}"
      );
      assert!(message.contains("verify-ca"), "{message}");
      assert_eq!(
        tls.is_some(),
        message.contains("`tls` option without sslmode"),
        "{message}"
      );
    }
    // With the name, verify-full holds.
    assert!(PostgresTarget::from_url(
      "host=db.example hostaddr=127.0.0.1 sslmode=verify-full",
      None
    )
    .is_ok());
    assert!(PostgresTarget::from_url(
      "postgres://db.example/db?hostaddr=127.0.0.1&sslmode=verify-full",
      None
    )
    .is_ok());
  }

  #[test]
  fn a_tls_option_with_an_sslmode_that_may_be_plain_text_is_refused() {
    let tls = TlsOptions {
      ca: Some("-----BEGIN CERTIFICATE-----".into()),
      ..Default::default()
    };
    let empty = TlsOptions::default(); // `tls: true`
    for mode in ["disable", "allow", "prefer"] {
      for options in [&tls, &empty] {
        for text in [
          format!("postgres://app:S3cretPw@db.example/app?sslmode={mode}"),
          format!("host=db.example password=S3cretPw sslmode={mode}"),
          #[cfg(unix)]
          format!("host=/run/postgresql sslmode={mode}"),
        ] {
          let message = refused(&text, Some(options));
          assert!(
            message.contains(&format!("option `tls` asks for TLS, but sslmode={mode} ")),
            "{message}"
          );
          assert!(message.contains("plain text"), "{message}");
          assert!(message.contains("give sslmode=verify-full"), "{message}");
        }
        let fields = PostgresConnectionOptions {
          host: Some("db.example".into()),
          password: Some("S3cretPw".into()),
          sslmode: Some(mode.into()),
          ..Default::default()
        };
        let err = PostgresTarget::from_fields(&fields, Some(options))
          .err()
          .expect(mode);
        assert_eq!(err.code, crate::error::ErrorCode::InvalidInput);
        assert!(
          err.message.contains(&format!("sslmode={mode}")),
          "{}",
          err.message
        );
        assert!(!err.message.contains("S3cretPw"), "{}", err.message);
      }
      // Without the option, the mode is libpq's (a root file in the URL included).
      assert!(PostgresTarget::from_url(&format!("host=db.example sslmode={mode}"), None).is_ok());
    }
    assert!(
      refused("postgres://db.example/app?sslmode=prefer", Some(&empty))
        .contains("connects in plain text when the server offers no TLS")
    );
    assert!(
      refused("postgres://db.example/app?sslmode=disable", Some(&empty))
        .contains("turns it off (the connection would be plain text)")
    );
    // require, verify-ca, verify-full or none (then verify-full) take it.
    for mode in [
      "&sslmode=require",
      "&sslmode=verify-ca",
      "&sslmode=verify-full",
      "",
    ] {
      let target = PostgresTarget::from_url(
        &format!("postgres://db.example/app?application_name=a{mode}"),
        Some(&empty),
      )
      .expect(mode);
      assert_eq!(target.config.get_ssl_mode(), SslMode::Require, "{mode}");
    }
  }

  #[test]
  fn sslrootcert_system_takes_verify_full_only_as_libpq_16() {
    for mode in ["disable", "allow", "prefer", "require", "verify-ca"] {
      for text in [
        format!("postgres://app:S3cretPw@db.example/app?sslrootcert=system&sslmode={mode}"),
        format!("host=db.example password=S3cretPw sslmode={mode} sslrootcert=system"),
      ] {
        let message = refused(&text, None);
        assert!(
          message.contains(&format!(
            "sslmode={mode} may not be used with sslrootcert=system"
          )),
          "{message}"
        );
        assert!(message.contains("give sslmode=verify-full"), "{message}");
      }
    }
    // `ssl=true` is require.
    assert!(refused(
      "postgres://db.example/app?ssl=true&sslrootcert=system",
      None
    )
    .contains("sslmode=require may not"));
    for text in [
      "postgres://db.example/app?sslrootcert=system",
      "postgres://db.example/app?sslrootcert=system&sslmode=verify-full",
    ] {
      let target = PostgresTarget::from_url(text, None).expect(text);
      assert!(target.tls.is_some(), "{text}");
      assert_eq!(target.config.get_ssl_mode(), SslMode::Require, "{text}");
    }
  }

  #[test]
  fn never_echoes_the_password_of_a_target_that_is_not_a_postgres_url() {
    for text in [
      "postgresql+asyncpg://app:S3cretPw@db.internal:5432/app",
      "postgress://app:S3cretPw@db/app",
      " postgres://app:S3cretPw@db/app",
      "postgres:/app:S3cretPw@db/app",
      "postgres:/app:S3c:re/tPw@db/app sslmode=require",
      "jdbc:postgresql://db/app?user=app&password=S3cretPw",
      "jdbc:postgresql:db;password=S3cretPw;ssl=true",
      "host=db password=x S3c:retPw=1",
      "host=db S3c@retPw",
    ] {
      let err = PostgresTarget::from_url(text, None).err().expect(text);
      assert_eq!(err.code, crate::error::ErrorCode::InvalidInput, "{text}");
      assert!(!err.message.contains("S3c"), "{text}: {}", err.message);
    }
    assert_eq!(
      redact_target("postgresql+asyncpg://app:pw@db:5432/app?password=x&a=1 user=u"),
      "postgresql+asyncpg:***@db:5432/app?password=***&*** ..."
    );
    assert_eq!(
      redact_target("jdbc:postgresql:db;password=pw;ssl=true"),
      "jdbc:postgresql:db;password=***;ssl=true"
    );
  }

  #[cfg(unix)]
  #[test]
  fn a_socket_in_a_host_list_has_no_tls_each_tcp_host_keeps_sslmode() {
    let target = PostgresTarget::from_url(
      "host=/run/postgresql,db.example port=5432 sslmode=require",
      None,
    )
    .unwrap();
    assert!(target.tls.is_some());
    let modes: Vec<SslMode> = target.each_host.iter().map(|c| c.get_ssl_mode()).collect();
    assert_eq!(modes, [SslMode::Disable, SslMode::Require]);
  }

  #[test]
  fn names_an_unknown_or_unsupported_parameter_never_its_value() {
    // After a password in the query, an unknown parameter is not named: a raw `&` in the
    // password ends it, and its rest reads as the parameter's name.
    for text in [
      "postgres://h/db?password=ab&cdSECRET=1",
      "postgres://h/db?password=ab&cdSECRET",
      "postgres://h/db?sslmode=disable&password=ab&cdSECRET=1&application_name=x",
    ] {
      let Err(err) = PostgresTarget::from_url(text, None) else {
        panic!("{text} was accepted")
      };
      assert_eq!(err.code, crate::error::ErrorCode::InvalidInput, "{text}");
      assert!(!err.message.contains("SECRET"), "{text}: {}", err.message);
    }
    assert!(
      PostgresTarget::from_url("postgres://h/db?password=ab&application_name=x", None).is_ok()
    );
    for (text, named) in [
      ("postgres://h/db?bogus=1", "unknown parameter `bogus`"),
      ("postgres://h/db?passfile=/p", "`passfile` is not supported"),
      ("host=h service=foo", "`service` is not supported"),
      ("host=h passwd=S3cretPw", "unknown parameter `passwd`"),
      ("postgres://h/db?ssl=1", "`ssl`"),
      (
        "host=h keepalives=often",
        "invalid value for option `keepalives`",
      ),
      // a URL's query values are hidden too, whatever the parameter's name
      (
        "postgres://app@db.internal/app?passwd=S3cretPw",
        "unknown parameter `passwd`",
      ),
      (
        "postgres://app@db.internal/app?oauth_client_secret=S3cretPw",
        "`oauth_client_secret` is not supported",
      ),
      (
        "postgres://app@db.internal/app?sslmode=require&scram_client_key=S3cretPw",
        "`scram_client_key` is not supported",
      ),
      (
        "postgres://app@db.internal/app?keepalives=S3cretPw",
        "invalid value for option `keepalives`",
      ),
    ] {
      let err = PostgresTarget::from_url(text, None).err().expect(text);
      assert_eq!(err.code, crate::error::ErrorCode::InvalidInput, "{text}");
      assert!(err.message.contains(named), "{text}: {}", err.message);
      assert!(!err.message.contains("S3cretPw"), "{}", err.message);
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
