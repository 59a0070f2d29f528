//! Where a Redis store connects: a URL or `{ host, port, ... }`, validated up front.

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use std::sync::Arc;

use napi::Either;

use crate::error::{StoreError, StoreResult};
use crate::options::{whole_number, RedisConnectionOptions, MAX_REDIS_DB};
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
  /// TLS settings for the sentinels: those of the server unless `sentinelTls` says otherwise.
  pub sentinel_tls: Option<Arc<TlsSettings>>,
  /// Sentinels to ask for the master's address at every connect; `None`: a fixed address.
  pub sentinel: Option<Arc<SentinelSettings>>,
  /// Where the database number (`SELECT`) was given, for messages: the URL path, its
  /// `db` parameter, or option `db`.
  pub db_origin: String,
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

  /// From a URL (`redis://`, `rediss://`, `redis+unix://`, `redis+sentinel://`).
  pub fn from_url(url: &str) -> StoreResult<Self> {
    if url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://") {
      return Self::from_sentinel_url(url);
    }
    refuse_ambiguous_userinfo("Redis URL", url)?;
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
    refuse_unknown_parameters(url, &parsed)?;
    // TLS is durastate's own (rustls, `backend/connect.rs`); redis-rs only parses the
    // address, so it is given the plain-text form of the URL.
    let wants_tls = parsed.scheme() == "rediss";
    let mut plain = parsed.clone();
    if wants_tls {
      let _ = plain.set_scheme("redis");
    }
    let client = redis::Client::open(plain.as_str()).map_err(|err| {
      StoreError::invalid_input(format!("invalid Redis URL \"{}\": {err}", redact(url)))
    })?;
    let db_origin = if parsed.query_pairs().any(|(name, _)| name == "db") {
      "the URL's db parameter".to_string()
    } else {
      format!("the URL path \"{}\"", parsed.path())
    };
    // Redis takes a database number up to 2^31 - 1; a larger one would fail each connect.
    let db = client.get_connection_info().redis_settings().db();
    if !(0..=MAX_REDIS_DB as i64).contains(&db) {
      return Err(StoreError::invalid_input(format!(
        "invalid Redis URL \"{}\": the database number in {db_origin} must be 0 to {MAX_REDIS_DB}",
        redact(url)
      )));
    }
    Ok(Self {
      client,
      db_origin,
      display: redact(url),
      require_aof: false,
      tls: None,
      sentinel_tls: None,
      sentinel: None,
      wants_tls,
    })
  }

  /// Sets up TLS when the URL is `rediss://` or `options` are given (PEM files are read
  /// now, so a bad one is `INVALID_INPUT` at once). With sentinels, the sentinels speak
  /// TLS as the server does, unless `sentinel_tls` says otherwise: `false` (plain text),
  /// `true` (TLS with `options`), or options of their own.
  pub fn configure_tls(
    &mut self,
    options: Option<&TlsOptions>,
    sentinel_tls: Option<&Either<bool, TlsOptions>>,
  ) -> StoreResult<()> {
    if self.wants_tls || options.is_some() {
      if !self.is_tcp() {
        return Err(StoreError::invalid_input(
          "TLS needs a TCP address (rediss://host:port), not a unix socket",
        ));
      }
      let settings = TlsSettings::new(&options.cloned().unwrap_or_default())?;
      self.tls = Some(Arc::new(settings));
    }
    if self.sentinel.is_none() {
      if sentinel_tls.is_some() {
        return Err(StoreError::invalid_input(
          "option `sentinelTls` applies only with sentinels (redis+sentinel:// or option `sentinels`)",
        ));
      }
      return Ok(());
    }
    self.sentinel_tls = match sentinel_tls {
      None => self.tls.clone(),
      Some(Either::A(false)) => None,
      Some(Either::A(true)) => Some(Arc::new(TlsSettings::new(
        &options.cloned().unwrap_or_default(),
      )?)),
      Some(Either::B(own)) => Some(Arc::new(TlsSettings::new(own)?)),
    };
    Ok(())
  }

  /// From `{ host, port, username, password, db }`, or `{ sentinels, name, ... }`.
  pub fn from_fields(fields: &RedisConnectionOptions) -> StoreResult<Self> {
    let Some(sentinels) = &fields.sentinels else {
      let mut target = Self::from_url(&url_from_fields(fields)?)?;
      target.db_origin = "option `db`".into();
      return Ok(target);
    };
    let master = fields.name.clone().ok_or_else(|| {
      StoreError::invalid_input("option `name` (the master's name) is required with `sentinels`")
    })?;
    let addresses = sentinels
      .iter()
      .enumerate()
      .map(|(i, s)| {
        let port = port_number(&format!("sentinels[{i}].port"), s.port)?;
        Ok((s.host.clone(), port.unwrap_or(26_379)))
      })
      .collect::<StoreResult<Vec<_>>>()?;
    let settings = SentinelSettings {
      sentinels: addresses,
      master,
      username: fields.sentinel_username.clone(),
      password: fields.sentinel_password.clone(),
    };
    let placeholder = RedisConnectionOptions {
      sentinels: None,
      ..fields.clone()
    };
    let mut target = Self::from_url(&url_from_fields(&placeholder)?)?;
    target.db_origin = "option `db`".into();
    target.display = settings.describe();
    target.sentinel = Some(Arc::new(settings.checked()?));
    Ok(target)
  }

  /// `redis+sentinel://[user:pass@]host1:port1,host2:port2/masterName[/db][?sentinelPassword=..]`;
  /// `rediss+sentinel://` reaches the sentinels and the server over TLS.
  fn from_sentinel_url(url: &str) -> StoreResult<Self> {
    let invalid = |why: &str| {
      StoreError::invalid_input(format!(
        "invalid Sentinel URL \"{}\": {why}",
        redact_sentinel(url)
      ))
    };
    let (scheme, rest) = url.split_once("://").expect("a sentinel URL has ://");
    refuse_at_in_query("Sentinel URL", url, rest)?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    // The user information ends at the last `@`, as in a redis:// URL: a password may hold
    // a raw `/` or `#`.
    let (auth, rest) = match rest.rsplit_once('@') {
      Some((auth, rest)) => (Some(auth), rest),
      None => (None, rest),
    };
    let (hosts, path) = rest
      .split_once('/')
      .ok_or_else(|| invalid("no master name"))?;
    let sentinels = hosts
      .split(',')
      .map(|host| parse_host_port(host, 26_379).ok_or_else(|| invalid("bad sentinel address")))
      .collect::<StoreResult<Vec<_>>>()?;
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let master = segments.next().ok_or_else(|| invalid("no master name"))?;
    let db = segments.next().unwrap_or("0");
    if db.parse::<u16>().is_err() || segments.next().is_some() {
      return Err(invalid(&format!(
        "the path is /<master name>[/<db number>], got \"/{path}\""
      )));
    }
    let mut settings = SentinelSettings {
      sentinels,
      master: decode(master),
      username: None,
      password: None,
    };
    let mut after_password = false;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
      match name.as_ref() {
        "sentinelPassword" => settings.password = Some(value.into_owned()),
        "sentinelUsername" => settings.username = Some(value.into_owned()),
        _ => {
          return Err(StoreError::invalid_input(format!(
            "invalid Sentinel URL \"{}\": {}",
            without_query_values(&redact_sentinel(url)),
            unknown_parameter(&name, after_password)
          )))
        }
      }
      after_password |= names_a_password(&name);
    }
    // The server's credentials, as read here (a raw character of the password is
    // itself), for the target the sentinels' answer completes.
    let auth = match auth.map(|a| a.split_once(':').unwrap_or((a, ""))) {
      Some((user, "")) => format!("{}@", encode(&decode(user))),
      Some((user, pass)) => format!("{}:{}@", encode(&decode(user)), encode(&decode(pass))),
      None => String::new(),
    };
    let mut target = Self::from_url(&format!("redis://{auth}127.0.0.1:6379/{db}"))?;
    target.db_origin = format!("the URL path \"/{path}\"");
    target.wants_tls = scheme == "rediss+sentinel";
    target.display = settings.describe();
    target.sentinel = Some(Arc::new(settings.checked()?));
    Ok(target)
  }
}

/// `redis+cluster://[user:pass@]host1:port1,host2:port2` (`rediss+cluster://` for TLS) as
/// `{ cluster: [...], username, password }`: some of the nodes; the others are found from them.
pub fn cluster_fields_from_url(url: &str) -> StoreResult<RedisConnectionOptions> {
  let invalid = |why: &str| {
    StoreError::invalid_input(format!(
      "invalid Cluster URL \"{}\": {why}",
      redact_sentinel(url)
    ))
  };
  let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("no ://"))?;
  let node_scheme = if scheme.eq_ignore_ascii_case("rediss+cluster") {
    "rediss"
  } else {
    "redis"
  };
  refuse_at_in_query("Cluster URL", url, rest)?;
  // The user information ends at the last `@` (a password may hold a raw `/`).
  let (auth, hosts) = match rest.rsplit_once('@') {
    Some((auth, hosts)) => (Some(auth), hosts),
    None => (None, rest),
  };
  let hosts = hosts.trim_end_matches('/');
  if hosts.contains(['/', '?', '#']) {
    return Err(invalid("a cluster has no database number or parameters"));
  }
  let cluster = hosts
    .split(',')
    .map(|host| {
      let (host, port) = parse_host_port(host, 6379).ok_or_else(|| invalid("bad node address"))?;
      let host = if host.contains(':') {
        format!("[{host}]")
      } else {
        host
      };
      Ok(format!("{node_scheme}://{host}:{port}"))
    })
    .collect::<StoreResult<Vec<_>>>()?;
  let (username, password) = match auth.map(|a| a.split_once(':').unwrap_or(("", a))) {
    Some((user, pass)) => (
      Some(decode(user)).filter(|u| !u.is_empty()),
      Some(decode(pass)).filter(|p| !p.is_empty()),
    ),
    None => (None, None),
  };
  Ok(RedisConnectionOptions {
    cluster: Some(cluster),
    username,
    password,
    ..Default::default()
  })
}

/// A Redis Cluster as `{ cluster: [url, ...], username, password, tls }` names it: the seed
/// nodes, and what every node connection needs. The nodes are all `redis://` or all
/// `rediss://`; TLS (also from `tls: true` or the store option `tls`) applies to every
/// node, those found later and those redirects name included.
pub struct ClusterTarget {
  /// The seed nodes, as `redis://host:port` (TLS is given by `tls`).
  pub seeds: Vec<String>,
  pub display: String,
  pub username: Option<String>,
  pub password: Option<String>,
  pub tls: Option<Arc<TlsSettings>>,
}

pub fn cluster_target(
  fields: &RedisConnectionOptions,
  tls_options: Option<&TlsOptions>,
) -> StoreResult<ClusterTarget> {
  let urls = fields.cluster.clone().unwrap_or_default();
  if urls.is_empty() {
    return Err(StoreError::invalid_input(
      "option `cluster` needs at least one node URL (redis://host:port or rediss://host:port)",
    ));
  }
  if fields.sentinels.is_some() || fields.host.is_some() || fields.port.is_some() {
    return Err(StoreError::invalid_input(
      "give either `cluster` or `host`/`port`/`sentinels`, not both",
    ));
  }
  for (field, given) in [
    ("name", fields.name.is_some()),
    ("sentinelUsername", fields.sentinel_username.is_some()),
    ("sentinelPassword", fields.sentinel_password.is_some()),
  ] {
    if given {
      return Err(StoreError::invalid_input(format!(
        "field `{field}` applies only with `sentinels`, not with `cluster` (a Redis Cluster has no sentinels)"
      )));
    }
  }
  if whole_number("db", fields.db, 0, MAX_REDIS_DB)?.unwrap_or(0) != 0 {
    return Err(StoreError::invalid_input(
      "a Redis Cluster has only database 0",
    ));
  }
  // Credentials: those of the fields, else those of the node URLs, which must agree (they
  // apply to every node, so two different ones would leave one of them unused).
  let mut username = Credential::new("username", fields.username.clone());
  let mut password = Credential::new("password", fields.password.clone());
  let mut seeds = Vec::with_capacity(urls.len());
  let mut schemes = std::collections::BTreeSet::new();
  for (i, url) in urls.iter().enumerate() {
    let invalid = |why: String| {
      StoreError::invalid_input(format!(
        "invalid cluster node URL \"{}\" (`cluster[{i}]`): {why}",
        without_query_values(&redact(url))
      ))
    };
    refuse_ambiguous_userinfo(&format!("cluster node URL (`cluster[{i}]`)"), url)?;
    let mut parsed = url::Url::parse(url).map_err(|err| invalid(err.to_string()))?;
    if !matches!(parsed.scheme(), "redis" | "rediss") {
      return Err(invalid(
        "use redis://host:port or rediss://host:port".to_string(),
      ));
    }
    if parsed.host_str().is_none() || !matches!(parsed.path(), "" | "/" | "/0") {
      return Err(invalid(
        "a node URL is [user:password@]host:port (a cluster has only database 0)".to_string(),
      ));
    }
    if parsed.port() == Some(0) {
      return Err(invalid("port 0 is no port".to_string()));
    }
    // Each node is reached by its address alone: a parameter would be ignored.
    if let Some((name, _)) = parsed.query_pairs().next() {
      let hint = match name.as_ref() {
        "db" | "database" => ": a Redis Cluster has only database 0",
        "tls" | "ssl" => {
          ": TLS is asked for by the scheme, rediss://host:port, its settings by the store option `tls`"
        }
        "password" | "pass" | "user" | "username" => {
          ": the credentials go before the host, redis://user:password@host:port, or in the fields `username` and `password`"
        }
        _ => "",
      };
      return Err(invalid(format!(
        "unknown parameter \"{}\"{hint} (a cluster node URL takes no parameters)",
        name.escape_debug()
      )));
    }
    if parsed.fragment().is_some() {
      return Err(invalid("a node URL has no fragment (`#`)".to_string()));
    }
    if !parsed.username().is_empty() {
      username.give(decode(parsed.username()), i)?;
    }
    if let Some(pass) = parsed.password() {
      password.give(decode(pass), i)?;
    }
    schemes.insert(parsed.scheme().to_string());
    let _ = parsed.set_scheme("redis");
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    seeds.push(parsed.to_string());
  }
  let (username, password) = (username.value, password.value);
  if schemes.len() > 1 {
    return Err(StoreError::invalid_input(
      "the cluster node URLs mix redis:// and rediss://: every node of a cluster is reached the same way",
    ));
  }
  let wants_tls =
    schemes.contains("rediss") || fields.tls.unwrap_or(false) || tls_options.is_some();
  let tls = if wants_tls {
    Some(Arc::new(TlsSettings::new(
      &tls_options.cloned().unwrap_or_default(),
    )?))
  } else {
    None
  };
  let display: Vec<String> = urls
    .iter()
    .map(|url| without_query_values(&redact(url)))
    .collect();
  Ok(ClusterTarget {
    seeds,
    display: format!("cluster {}", display.join(",")),
    username,
    password,
    tls,
  })
}

/// A cluster credential (user name or password) given by the fields or by node URLs: every
/// value given must be the same one.
struct Credential {
  what: &'static str,
  value: Option<String>,
  /// Where `value` came from, for messages: `None` for the field.
  from_url: Option<usize>,
}

impl Credential {
  fn new(what: &'static str, field: Option<String>) -> Self {
    Self {
      what,
      value: field,
      from_url: None,
    }
  }

  /// `value`, given by `cluster[i]`: INVALID_INPUT (naming where, never a value) when
  /// another one was given.
  fn give(&mut self, value: String, i: usize) -> StoreResult<()> {
    match &self.value {
      None => {
        self.value = Some(value);
        self.from_url = Some(i);
        Ok(())
      }
      Some(same) if *same == value => Ok(()),
      Some(_) => {
        let other = match self.from_url {
          Some(j) => format!("`cluster[{j}]`"),
          None => format!("the field `{}`", self.what),
        };
        Err(StoreError::invalid_input(format!(
          "`cluster[{i}]` gives another {} than {other}: every node of a cluster is reached with the same credentials",
          self.what
        )))
      }
    }
  }
}

impl ClusterTarget {
  /// The seed nodes' addresses.
  pub fn seed_addresses(&self) -> Vec<(String, u16)> {
    self
      .seeds
      .iter()
      .filter_map(|seed| {
        let url = url::Url::parse(seed).ok()?;
        let host = url
          .host_str()?
          .trim_start_matches('[')
          .trim_end_matches(']');
        Some((host.to_string(), url.port().unwrap_or(6379)))
      })
      .collect()
  }

  /// The target of one node (`host:port`, as the cluster names it): this cluster's
  /// credentials and TLS, shown as `cluster node host:port`.
  pub fn node(&self, host: &str, port: u16, require_aof: bool) -> StoreResult<RedisTarget> {
    let fields = RedisConnectionOptions {
      host: Some(host.to_string()),
      port: Some(f64::from(port)),
      username: self.username.clone(),
      password: self.password.clone(),
      ..Default::default()
    };
    let mut target = RedisTarget::from_url(&url_from_fields(&fields)?)?;
    target.display = if host.contains(':') {
      format!("cluster node [{host}]:{port}")
    } else {
      format!("cluster node {host}:{port}")
    };
    target.require_aof = require_aof;
    target.tls = self.tls.clone();
    Ok(target)
  }
}

/// Where the sentinels are and which master to ask them for.
pub struct SentinelSettings {
  pub sentinels: Vec<(String, u16)>,
  pub master: String,
  pub username: Option<String>,
  pub password: Option<String>,
}

impl SentinelSettings {
  fn checked(self) -> StoreResult<Self> {
    if self.sentinels.is_empty() || self.master.is_empty() {
      return Err(StoreError::invalid_input(
        "Sentinel needs at least one sentinel address and the master's name",
      ));
    }
    Ok(self)
  }

  /// How messages name the target (no passwords).
  fn describe(&self) -> String {
    let hosts: Vec<String> = self
      .sentinels
      .iter()
      .map(|(host, port)| format!("{host}:{port}"))
      .collect();
    format!(
      "master \"{}\" of sentinels {}",
      self.master,
      hosts.join(",")
    )
  }
}

/// Refuses a query parameter of a `redis://`, `rediss://` or unix socket URL that redis-rs
/// would not read, which would be ignored: `?tls=true` connected in plain text, `?db=3` on
/// a TCP URL used database 0. A TCP URL takes `protocol` (checked by redis-rs), a unix
/// socket URL `db`, `user`, `pass` and `protocol`.
fn refuse_unknown_parameters(url: &str, parsed: &url::Url) -> StoreResult<()> {
  let unix = matches!(parsed.scheme(), "redis+unix" | "unix");
  let (known, takes): (&[&str], &str) = if unix {
    (
      &["db", "user", "pass", "protocol"],
      "db, user, pass and protocol",
    )
  } else {
    (&["protocol"], "only protocol")
  };
  let mut after_password = false;
  for (name, _) in parsed.query_pairs() {
    if known.contains(&name.as_ref()) {
      after_password |= names_a_password(&name);
      continue;
    }
    if after_password {
      return Err(StoreError::invalid_input(format!(
        "invalid Redis URL \"{}\": {}",
        without_query_values(&redact(url)),
        unknown_parameter(&name, true)
      )));
    }
    let hint = match name.as_ref() {
      "tls" | "ssl" if !unix => {
        ": TLS is asked for by the scheme, rediss://host:port, its settings by the store option `tls`"
      }
      "db" | "database" if !unix => ": the database is the URL's path, redis://host:port/3",
      "password" | "pass" | "user" | "username" if !unix => {
        ": the credentials go before the host, redis://user:password@host:port"
      }
      _ => "",
    };
    return Err(StoreError::invalid_input(format!(
      "invalid Redis URL \"{}\": unknown parameter \"{}\"{hint} (a {}:// URL takes {takes})",
      without_query_values(&redact(url)),
      name.escape_debug(),
      parsed.scheme()
    )));
  }
  Ok(())
}

/// Why a URL with ambiguous user information is refused.
const AMBIGUOUS_USERINFO: &str = "an `@` after the first `/`, `?` or `#` past `//`: a password (or user name) holding `@`, `/`, `?` or `#` must be percent-encoded (%40, %2F, %3F, %23)";

/// Whether `url` has an `@` after the first `/`, `?` or `#` that follows its `//`: a raw `@`
/// that `url::Url` does not take as the end of the user information, while messages (and
/// libpq) read the user information up to the last `@`. Such a URL holds a password
/// `url::Url` would cut, and show part of as a host, path or parameter.
fn userinfo_is_ambiguous(url: &str) -> bool {
  let Some((scheme, rest)) = url.split_once("://") else {
    return false;
  };
  // A unix socket URL without user information (`redis+unix:///run/redis@6379.sock`): its
  // path may hold an `@`; only one in its query or fragment is ambiguous.
  let unix = ["redis+unix", "unix"]
    .iter()
    .any(|unix| scheme.eq_ignore_ascii_case(unix));
  let ends: &[char] = if unix && rest.starts_with('/') {
    &['?', '#']
  } else {
    &['/', '?', '#']
  };
  rest.find(ends).is_some_and(|end| rest[end..].contains('@'))
}

/// INVALID_INPUT for a URL with ambiguous user information, shown as its scheme alone:
/// where its password ends cannot be told, so no part after `//` is shown.
fn ambiguous_userinfo(what: &str, url: &str) -> StoreError {
  StoreError::invalid_input(format!(
    "invalid {what} \"{}\": {AMBIGUOUS_USERINFO}",
    scheme_only(url)
  ))
}

/// `scheme://***`: a URL of which nothing after `//` may be shown.
fn scheme_only(url: &str) -> String {
  match url.split_once("://") {
    Some((scheme, _)) => format!("{scheme}://***"),
    None => "***".to_string(),
  }
}

/// Whether the text before `url`'s last `@` holds a `?` or `#`: the `@` may then be part
/// of a query value (a password given as a parameter), and the text after it the end of
/// that password, so a redaction up to the last `@` would show it.
fn at_after_query(url: &str) -> bool {
  url
    .split_once("://")
    .and_then(|(_, rest)| rest.rsplit_once('@'))
    .is_some_and(|(before, _)| before.contains(['?', '#']))
}

/// Refuses a URL whose user information is ambiguous ([`userinfo_is_ambiguous`]).
fn refuse_ambiguous_userinfo(what: &str, url: &str) -> StoreResult<()> {
  if userinfo_is_ambiguous(url) {
    return Err(ambiguous_userinfo(what, url));
  }
  Ok(())
}

/// Refuses a Sentinel or Cluster URL (`rest`: what follows its `//`, where the user
/// information ends at the last `@`) with an `@` after a `?`: a password given as a
/// parameter, or one holding a raw `?`, which cannot be told apart (a message naming a
/// parameter would show the rest of the password).
fn refuse_at_in_query(what: &str, url: &str, rest: &str) -> StoreResult<()> {
  match rest.split_once('?') {
    Some((_, query)) if query.contains('@') => Err(ambiguous_userinfo(what, url)),
    _ => Ok(()),
  }
}

/// `url` with the value of every query parameter hidden (`name=***`), for a message about
/// a parameter durastate does not read: its value may be a secret under any name.
pub(crate) fn without_query_values(url: &str) -> String {
  redact_query_where(url, |_| true)
}

/// `host:port` (or `[v6]:port`, or a host alone with `default_port`); `None` when it is
/// not one, port 0 included.
fn parse_host_port(text: &str, default_port: u16) -> Option<(String, u16)> {
  parse_address(text, default_port).filter(|(_, port)| *port != 0)
}

fn parse_address(text: &str, default_port: u16) -> Option<(String, u16)> {
  let text = text.trim();
  if let Some(rest) = text.strip_prefix('[') {
    let (host, after) = rest.split_once(']')?;
    let port = match after.strip_prefix(':') {
      Some(port) => port.parse().ok()?,
      None => default_port,
    };
    return Some((host.to_string(), port));
  }
  match text.rsplit_once(':') {
    Some((host, port)) if !host.is_empty() => Some((host.to_string(), port.parse().ok()?)),
    None if !text.is_empty() => Some((text.to_string(), default_port)),
    _ => None,
  }
}

/// The port option `name`, when given: a whole number from 1 to 65535.
fn port_number(name: &str, port: Option<f64>) -> StoreResult<Option<u16>> {
  Ok(whole_number(name, port, 1, 65_535)?.map(|port| port as u16))
}

fn decode(text: &str) -> String {
  percent_encoding::percent_decode_str(text)
    .decode_utf8_lossy()
    .into_owned()
}

/// A Sentinel or Cluster URL for messages: its query's passwords, and everything before
/// its last `@` (user information holding a raw `/`, `?` or `#` included), hidden.
fn redact_sentinel(url: &str) -> String {
  if at_after_query(url) {
    return scheme_only(url);
  }
  // The user information first: hiding a query value first could take an `@` of the
  // password with it, and leave the part of the password before it shown.
  match url
    .split_once("://")
    .and_then(|(scheme, rest)| Some((scheme, rest.rsplit_once('@')?.1)))
  {
    Some((scheme, after)) => redact_query(&format!("{scheme}://***@{after}")),
    None => redact_query(url),
  }
}

/// `url` with the value of every query parameter that names a password
/// (`sentinelPassword=`, libpq's `password=`) replaced by `***`.
pub(crate) fn redact_query(url: &str) -> String {
  // the name as it is read: `pass%77ord=` names the password too
  redact_query_where(url, |name| names_a_password(&decoded(name)))
}

/// `url` with the value of each query parameter whose (raw) name `hide` picks replaced by
/// `***`, and its fragment too (durastate reads none; a `#` may be part of a secret).
/// Whatever follows a password parameter is hidden whole, names too: a raw `&` in a
/// password ends it there, and the rest of the password reads as another parameter.
fn redact_query_where(url: &str, hide: impl Fn(&str) -> bool) -> String {
  let Some((base, query)) = url.split_once('?') else {
    return url.to_string();
  };
  let (query, fragment) = match query.split_once('#') {
    Some((query, _)) => (query, "#***"),
    None => (query, ""),
  };
  let mut after_password = false;
  let pairs: Vec<String> = query
    .split('&')
    .map(|pair| {
      if after_password {
        return "***".to_string();
      }
      let name = pair.split_once('=').map(|(name, _)| name);
      after_password = name.is_some_and(|name| names_a_password(&decoded(name)));
      match name {
        Some(name) if hide(name) || after_password => format!("{name}=***"),
        _ => pair.to_string(),
      }
    })
    .collect();
  format!("{base}?{}{fragment}", pairs.join("&"))
}

/// What a message says of an unknown query parameter: its name, unless a password
/// parameter comes before it (a raw `&` in a password ends it there, and the rest of the
/// password reads as this parameter's name).
pub(crate) fn unknown_parameter(name: &str, after_password: bool) -> String {
  if after_password {
    "an unknown parameter after the password (not shown: a raw \"&\" in a password ends it there; write it as %26)".to_string()
  } else {
    format!("unknown parameter \"{}\"", name.escape_debug())
  }
}

/// Whether a query parameter carries a password: `password=`, `sentinelPassword=`, and a
/// unix socket URL's `pass=`.
fn names_a_password(name: &str) -> bool {
  let name = name.to_lowercase();
  name.contains("password") || name == "pass"
}

/// A URL query's parameter name, percent-decoded.
fn decoded(name: &str) -> String {
  url::form_urlencoded::parse(name.as_bytes())
    .next()
    .map(|(decoded, _)| decoded.into_owned())
    .unwrap_or_default()
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
  let port = port_number("port", fields.port)?.unwrap_or(6379);
  let auth = match (&fields.username, &fields.password) {
    (Some(user), Some(pass)) => format!("{}:{}@", encode(user), encode(pass)),
    (None, Some(pass)) => format!(":{}@", encode(pass)),
    (Some(user), None) => format!("{}@", encode(user)),
    (None, None) => String::new(),
  };
  let db = whole_number("db", fields.db, 0, MAX_REDIS_DB)?.unwrap_or(0);
  Ok(format!("{scheme}://{auth}{host}:{port}/{db}"))
}

fn encode(part: &str) -> String {
  utf8_percent_encode(part, NON_ALPHANUMERIC).to_string()
}

/// The URL with any password replaced by `***`, for messages. A URL whose password holds
/// a raw `/`, `?`, `#` or space (which `url::Url` reads as the end of the user
/// information, or refuses) is redacted up to its last `@`, as libpq reads it: a message
/// may then hide more than the password, never less.
pub fn redact(url: &str) -> String {
  // Read as text first: `url::Url` ends the user information at the first `/` or `@` of a
  // password, and would show the rest.
  if let Some(redacted) = redact_userinfo_text(url) {
    return redact_query(&redacted);
  }
  match url::Url::parse(url) {
    Ok(mut parsed) => {
      if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
      }
      redact_query(parsed.as_str())
    }
    Err(_) => "<unparsable>".to_string(),
  }
}

/// `scheme://user:***@rest` when `url` has user information with a password, read as
/// text: it ends at the last `@`. `None` when there is no `user:password@`.
pub(crate) fn redact_userinfo_text(url: &str) -> Option<String> {
  if at_after_query(url) {
    return Some(scheme_only(url));
  }
  let (scheme, rest) = url.split_once("://")?;
  let (userinfo, hosts) = rest.rsplit_once('@')?;
  let (user, _) = userinfo.split_once(':')?;
  Some(format!("{scheme}://{user}:***@{hosts}"))
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::error::ErrorCode;

  #[test]
  fn redacts_passwords_in_the_query_too() {
    // What follows a password is hidden whole: a raw `&` in the password ends it there.
    assert_eq!(
      redact("redis://h:6379/?password=ab&cdSECRET&x=1"),
      "redis://h:6379/?password=***&***&***"
    );
    assert_eq!(
      without_query_values("redis://h/?db=1&password=ab&cdSECRET=1"),
      "redis://h/?db=***&password=***&***"
    );
    assert_eq!(
      redact("postgres://app:pw@db/app?password=TOP&sslmode=require"),
      "postgres://app:***@db/app?password=***&***"
    );
    assert_eq!(
      redact("postgres://app@db/app?pass%77ord=TOP&sslmode=require"),
      "postgres://app@db/app?pass%77ord=***&***"
    );
    assert_eq!(
      redact_sentinel("rediss+sentinel://u:pw@h:26379/main?sentinelPassword=TOP&x=1"),
      "rediss+sentinel://***@h:26379/main?sentinelPassword=***&***"
    );
    assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
    // a `#` in a password's value starts the fragment: hidden with it
    assert_eq!(
      redact("postgres://db/app?password=TO#P&sslmode=require"),
      "postgres://db/app?password=***#***"
    );
    assert_eq!(
      without_query_values("redis://h/?auth=TOP&tls=1"),
      "redis://h/?auth=***&tls=***"
    );
    assert_eq!(
      redact("redis+unix:///tmp/r.sock?db=1&pass=TOP&x=1"),
      "redis+unix:///tmp/r.sock?db=1&pass=***&***"
    );
    // a raw `/` or space in the password: everything up to the last `@` is user information
    assert_eq!(
      redact("postgres://app:123/x@db/app"),
      "postgres://app:***@db/app"
    );
    assert_eq!(
      redact("redis://:right pass@127.0.0.1:6379"),
      "redis://:***@127.0.0.1:6379"
    );
    // (a `?` or `#` before the last `@`: nothing after `//` is shown)
    assert_eq!(redact("redis://:a#b?c@h:1/0"), "redis://***");
    assert_eq!(redact("redis://u:s3@cr/et@h:1/0"), "redis://u:***@h:1/0");
    // Sentinel and Cluster URLs: up to the last `@` too
    for url in [
      "redis+sentinel://:pa/ss@127.0.0.1:26379",
      "redis+sentinel://u:pa?ss@127.0.0.1:26379/main",
      "rediss+cluster://:pa/ss@127.0.0.1:7000/2",
    ] {
      let redacted = redact_sentinel(url);
      assert!(!redacted.contains("pa"), "{redacted}");
      // (`?` before the last `@`: nothing after `//`)
      assert!(
        redacted.ends_with("@127.0.0.1:26379")
          || redacted.contains("***@127.0.0.1:")
          || (url.contains('?') && redacted == "redis+sentinel://***"),
        "{redacted}"
      );
    }
  }

  #[test]
  fn fields_become_an_encoded_url() {
    let fields = RedisConnectionOptions {
      host: Some("localhost".into()),
      port: Some(6380.0),
      username: Some("app user".into()),
      password: Some("p@ss:word".into()),
      db: Some(2.0),
      ..Default::default()
    };
    assert_eq!(
      url_from_fields(&fields).unwrap(),
      "redis://app%20user:p%40ss%3Aword@localhost:6380/2"
    );
  }

  #[test]
  fn never_names_a_parameter_after_a_password_whose_raw_ampersand_split_it() {
    let mut urls = vec![
      "redis+sentinel://127.0.0.1:26379/main?sentinelPassword=ab&cdSECRET",
      "redis+sentinel://127.0.0.1:26379/main?sentinelUsername=u&sentinelPassword=ab&cdSECRET=1",
      "redis://127.0.0.1:6379/?password=ab&cdSECRET",
    ];
    if cfg!(unix) {
      urls.push("redis+unix:///tmp/r.sock?pass=ab&cdSECRET");
    }
    for url in urls {
      let Err(err) = RedisTarget::from_url(url) else {
        panic!("{url} was accepted")
      };
      assert!(!err.message.contains("SECRET"), "{url}: {}", err.message);
    }
    // Before any password, an unknown parameter is named.
    let Err(err) =
      RedisTarget::from_url("redis+sentinel://127.0.0.1:26379/main?bogus=1&sentinelPassword=x")
    else {
      panic!("accepted")
    };
    assert!(
      err.message.contains("unknown parameter \"bogus\""),
      "{}",
      err.message
    );
  }

  #[test]
  fn refuses_query_parameters_redis_rs_would_ignore() {
    let message = |url: &str| match RedisTarget::from_url(url) {
      Err(err) => err.message,
      Ok(_) => panic!("{url} was accepted"),
    };
    for url in ["redis://h:6379/?protocol=resp3", "rediss://h/0?protocol=2"] {
      assert!(RedisTarget::from_url(url).is_ok(), "{url}");
    }
    #[cfg(unix)]
    assert!(
      RedisTarget::from_url("redis+unix:///tmp/r.sock?db=3&user=u&pass=p&protocol=3").is_ok()
    );
    assert!(message("redis://h:6379/0?tls=true")
      .contains("unknown parameter \"tls\": TLS is asked for by the scheme"));
    assert!(message("rediss://h/?foo=bar")
      .contains("unknown parameter \"foo\" (a rediss:// URL takes only protocol)"));
    for url in [
      "redis://127.0.0.1:1?auth=SECRETPW",
      "redis://127.0.0.1:1/0?protocol=resp3&requirepass=SECRETPW",
      "redis+sentinel://127.0.0.1:1/m?auth=SECRETPW",
    ] {
      let Err(err) = RedisTarget::from_url(url) else {
        panic!("{url} taken")
      };
      assert!(err.message.contains("unknown parameter"), "{}", err.message);
      assert!(!err.message.contains("SECRETPW"), "{}", err.message);
    }
    assert!(message("redis://h/?db=3").contains("the database is the URL's path"));
    assert!(message("redis://h/2147483648").contains("must be 0 to 2147483647"));
    assert!(RedisTarget::from_url("redis://h/2147483647").is_ok());
    let leaked = message("redis://h/?password=TOP");
    assert!(
      leaked.contains("password=***") && !leaked.contains("TOP"),
      "{leaked}"
    );
    #[cfg(unix)]
    {
      // (after a password, not named: it may be the password's rest)
      let leaked = message("redis+unix:///tmp/r.sock?pass=TOP&ssl=1");
      assert!(
        leaked.contains("an unknown parameter after the password") && !leaked.contains("TOP"),
        "{leaked}"
      );
    }
  }

  #[test]
  fn a_password_with_a_raw_at_and_question_mark_is_refused_never_shown() {
    // url::Url ends the user information at the first `/`, `?` or `#`; messages read it up
    // to the last `@`: the part of the password between them was shown as a parameter.
    for url in [
      "redis://u:pa@ss?SECRETtok3n@127.0.0.1:6379/",
      "rediss://u:pa@ss?SECRETtok3n@127.0.0.1:6379/",
      "redis://u:pa@ss/0?SECRET=x@127.0.0.1:6379/",
      "redis://u:pa@ss?pass=SECRET@127.0.0.1:6379/",
      "redis+unix://u:pa@ss?SECRET@/tmp/s.sock",
      "redis+sentinel://u:pa@h:1/m?SECRET@127.0.0.1:1/m",
      "redis+sentinel://u:pa@h:1/m?sentinelPassword=SECRET@127.0.0.1:1/m",
    ] {
      let Err(err) = RedisTarget::from_url(url) else {
        panic!("{url} was accepted")
      };
      assert_eq!(err.code, ErrorCode::InvalidInput, "{}", err.message);
      assert!(
        err.message.contains("must be percent-encoded"),
        "{}",
        err.message
      );
      for fragment in ["SECRET", "pa@", "@ss"] {
        assert!(!err.message.contains(fragment), "{url}: {}", err.message);
      }
    }
    for url in [
      "redis://u:pa@ss?SECRET@127.0.0.1:7000",
      "redis://u:pa@ss/0?SECRET=x@127.0.0.1:7000",
    ] {
      let fields = RedisConnectionOptions {
        cluster: Some(vec![url.to_string()]),
        ..Default::default()
      };
      let Err(err) = cluster_target(&fields, None) else {
        panic!("{url} was accepted")
      };
      assert!(
        err.message.contains("must be percent-encoded"),
        "{}",
        err.message
      );
      assert!(!err.message.contains("SECRET"), "{}", err.message);
    }
    // Where the last `@` follows a `?` or `#`, nothing after `//` is shown: the text after
    // it may be the end of a password given as a parameter.
    assert_eq!(
      redact_sentinel("redis+cluster://u:pa@ss?password=SECRET@h:1"),
      "redis+cluster://***"
    );
    // The secret after the last `@`: a password given as a parameter, holding a raw `@`.
    for url in [
      "redis://10.0.0.1:6379/0?password=hunter2@SECRET-Tail",
      "redis+unix:///tmp/r.sock?pass=p@SECRET-Tail",
      "unix:///tmp/r.sock?pass=p@SECRET-Tail",
      "redis+sentinel://10.0.0.1:26379/main?sentinelPassword=s3nt@SECRET-Tail",
      "redis://u:pw@h:1/0#frag@SECRET-Tail",
    ] {
      let Err(err) = RedisTarget::from_url(url) else {
        panic!("{url} was accepted")
      };
      assert!(
        err.message.contains("must be percent-encoded"),
        "{}",
        err.message
      );
      for fragment in ["SECRET", "hunter2", "s3nt", "p@"] {
        assert!(!err.message.contains(fragment), "{url}: {}", err.message);
      }
    }
    for url in [
      "redis+cluster://10.0.0.1:7000?password=hunter2@SECRET-Tail",
      "redis+cluster://u:pa?ss@SECRET-Tail:7000",
    ] {
      let Err(err) = cluster_fields_from_url(url) else {
        panic!("{url} was accepted")
      };
      assert!(
        err.message.contains("must be percent-encoded"),
        "{}",
        err.message
      );
      assert!(!err.message.contains("SECRET"), "{url}: {}", err.message);
      assert!(!err.message.contains("hunter2"), "{url}: {}", err.message);
    }
    let fields = RedisConnectionOptions {
      cluster: Some(vec![
        "redis://10.0.0.1:7000?password=hunter2@SECRET-Tail".to_string()
      ]),
      ..Default::default()
    };
    let Err(err) = cluster_target(&fields, None) else {
      panic!("accepted")
    };
    assert!(!err.message.contains("SECRET"), "{}", err.message);
    assert!(!err.message.contains("hunter2"), "{}", err.message);
    assert_eq!(
      redact("redis://10.0.0.1:6379/0?password=hunter2@SECRET-Tail"),
      "redis://***"
    );
    // A unix socket's path may hold an `@` (no user information there): taken as written.
    for url in [
      "redis+unix:///run/redis@6379.sock",
      "unix:///run/redis@6379.sock",
      "redis+unix:///run/redis@6379.sock?db=2",
    ] {
      let target = RedisTarget::from_url(url).expect(url);
      assert!(
        matches!(target.client.get_connection_info().addr(), redis::ConnectionAddr::Unix(path) if path.to_string_lossy() == "/run/redis@6379.sock"),
        "{url}"
      );
    }
    // Still taken: a raw `@` in the password with no `/`, `?` or `#` before it, and a
    // percent-encoded one.
    let at = RedisTarget::from_url("redis://u:p@ss@127.0.0.1:6379/1").unwrap();
    assert_eq!(
      at.client.get_connection_info().redis_settings().password(),
      Some("p@ss")
    );
    assert!(RedisTarget::from_url("redis://u:pa%40ss%3Fx@127.0.0.1:6379/").is_ok());
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
    let sentinel =
      RedisTarget::from_url("redis+sentinel://u:p@127.0.0.1:26379,[::1]:26380/main/2").unwrap();
    let settings = sentinel.sentinel.as_ref().unwrap();
    assert_eq!(settings.master, "main");
    assert_eq!(
      settings.sentinels,
      vec![("127.0.0.1".to_string(), 26379), ("::1".to_string(), 26380)]
    );
    assert_eq!(
      sentinel.client.get_connection_info().redis_settings().db(),
      2
    );
    assert!(RedisTarget::from_url("redis+sentinel://127.0.0.1:26379").is_err());
    // Port 0 is no port (the fields form refused it; the URL took it).
    assert!(RedisTarget::from_url("redis+sentinel://127.0.0.1:0/main").is_err());
    let Err(err) = RedisTarget::from_url("redis+sentinel://127.0.0.1:26379/main/abc") else {
      panic!("a db that is not a number")
    };
    assert!(
      err.message.contains("/main/abc") && !err.message.contains("6379/abc"),
      "{}",
      err.message
    );
    assert!(cluster_fields_from_url("redis+cluster://10.0.0.1:0").is_err());
    let cluster =
      cluster_fields_from_url("redis+cluster://u:p%40ss@10.0.0.1:7000,[::1]:7001").unwrap();
    assert_eq!(
      cluster.cluster.unwrap(),
      vec!["redis://10.0.0.1:7000", "redis://[::1]:7001"]
    );
    assert_eq!(cluster.username.as_deref(), Some("u"));
    assert_eq!(cluster.password.as_deref(), Some("p@ss"));
    assert!(cluster_fields_from_url("redis+cluster://10.0.0.1:7000/2").is_err());
    // A password with a raw `/` or `#`: the user information ends at the last `@`.
    let raw = cluster_fields_from_url("redis+cluster://u:pa/s#s@10.0.0.1:7000").unwrap();
    assert_eq!(raw.password.as_deref(), Some("pa/s#s"));
    let raw = RedisTarget::from_url("redis+sentinel://u:pa/s#s@127.0.0.1:26379/main/2").unwrap();
    let info = raw.client.get_connection_info().redis_settings().clone();
    assert_eq!(info.password(), Some("pa/s#s"));
    assert_eq!(info.username(), Some("u"));
    assert_eq!(info.db(), 2);
    let tls_cluster = cluster_fields_from_url("rediss+cluster://10.0.0.1:7000").unwrap();
    assert_eq!(tls_cluster.cluster.unwrap(), vec!["rediss://10.0.0.1:7000"]);
    let secure = RedisTarget::from_url("rediss+sentinel://127.0.0.1:26379/main").unwrap();
    assert!(secure.wants_tls && secure.sentinel.is_some());
    let mut tls = RedisTarget::from_url("rediss://localhost:6380").unwrap();
    tls.configure_tls(None, None).unwrap();
    assert!(tls.tls.is_some());
  }

  #[test]
  fn cluster_node_urls_are_checked_as_single_server_urls() {
    let cluster = |urls: &[&str]| RedisConnectionOptions {
      cluster: Some(urls.iter().map(|url| url.to_string()).collect()),
      ..Default::default()
    };
    let refused = |fields: RedisConnectionOptions, pattern: &str| {
      let Err(err) = cluster_target(&fields, None) else {
        panic!("{:?} was accepted", fields.cluster)
      };
      assert_eq!(err.code, ErrorCode::InvalidInput, "{}", err.message);
      assert!(err.message.contains(pattern), "{}", err.message);
      assert!(!err.message.contains("S3cr3t"), "{}", err.message);
      err.message
    };
    // A parameter is named, its value never shown: it was ignored (no password, db 0).
    refused(
      cluster(&["redis://127.0.0.1:38000?password=S3cr3t"]),
      "unknown parameter \"password\": the credentials go before the host",
    );
    refused(
      cluster(&["redis://127.0.0.1:38000?db=3"]),
      "unknown parameter \"db\": a Redis Cluster has only database 0",
    );
    refused(
      cluster(&[
        "redis://127.0.0.1:7000",
        "redis://127.0.0.1:7001/?protocol=3&auth=S3cr3t",
      ]),
      "`cluster[1]`): unknown parameter \"protocol\"",
    );
    refused(cluster(&["redis://:S3cr3t@h:7000/1"]), "only database 0");
    // Port 0, as in redis+cluster://h:0.
    refused(cluster(&["redis://:S3cr3t@127.0.0.1:0"]), "port 0");
    // Sentinel fields with `cluster`, as `sentinels` with `cluster`.
    for (fields, name) in [
      (
        RedisConnectionOptions {
          name: Some("main".into()),
          ..cluster(&["redis://h:7000"])
        },
        "`name`",
      ),
      (
        RedisConnectionOptions {
          sentinel_username: Some("S3cr3tU".into()),
          ..cluster(&["redis://h:7000"])
        },
        "`sentinelUsername`",
      ),
      (
        RedisConnectionOptions {
          sentinel_password: Some("S3cr3tP".into()),
          ..cluster(&["redis://h:7000"])
        },
        "`sentinelPassword`",
      ),
    ] {
      refused(
        fields,
        &format!("field {name} applies only with `sentinels`"),
      );
    }
    // Different credentials: refused, naming where, not which.
    refused(
      cluster(&["redis://:S3cr3tA@h:7000", "redis://:S3cr3tB@h:7001"]),
      "`cluster[1]` gives another password than `cluster[0]`",
    );
    refused(
      cluster(&["redis://u1:S3cr3t@h:7000", "redis://u2:S3cr3t@h:7001"]),
      "`cluster[1]` gives another username than `cluster[0]`",
    );
    refused(
      RedisConnectionOptions {
        password: Some("S3cr3tF".into()),
        ..cluster(&["redis://:S3cr3tA@h:7000"])
      },
      "`cluster[0]` gives another password than the field `password`",
    );
    // The same credentials, or credentials in one URL only, apply to every node.
    let same = cluster_target(
      &cluster(&[
        "redis://u:p%40ss@h:7000",
        "redis://h:7001",
        "redis://u:p%40ss@h:7002/0",
      ]),
      None,
    )
    .unwrap();
    assert_eq!(same.username.as_deref(), Some("u"));
    assert_eq!(same.password.as_deref(), Some("p@ss"));
    assert_eq!(
      same.seed_addresses(),
      vec![
        ("h".to_string(), 7000),
        ("h".to_string(), 7001),
        ("h".to_string(), 7002)
      ]
    );
  }
}
