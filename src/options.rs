//! Options as JS passes them, and their validation into settings the stores use.

use std::time::Duration;

use napi_derive::napi;

use crate::error::{StoreError, StoreResult};

/// Default bound on one call, end to end (ms).
pub const DEFAULT_COMMAND_TIMEOUT_MS: u64 = 5_000;
/// Default bound on establishing a connection (ms).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default SQLite busy timeout (ms).
pub const DEFAULT_BUSY_TIMEOUT_MS: u64 = 5_000;
/// Largest millisecond value accepted (JS `Number.MAX_SAFE_INTEGER`).
const MAX_MS: f64 = 9_007_199_254_740_991.0;

/// Options shared by every store.
#[napi(object, object_to_js = false)]
#[derive(Default, Clone)]
pub struct StoreOptions {
  /// Time to live of every key written, in ms (exact; fractions round up). 0 or absent: no expiry.
  pub ttl: Option<f64>,
  /// Prepended to every key.
  pub prefix: Option<String>,
  /// Bound on establishing a connection, in ms (Redis). Default 5000.
  pub connect_timeout: Option<f64>,
  /// Bound on every call end to end, in ms, including connecting. Default 5000.
  pub command_timeout: Option<f64>,
  /// How long SQLite waits for another process's lock, in ms. Default 5000.
  pub busy_timeout: Option<f64>,
  /// SQLite durability: `"normal"` (default; survives a crash of the process) or
  /// `"full"` (also survives power loss; one fsync per commit).
  pub synchronous: Option<String>,
  // Whole-number options are `f64`, as JS gives them, checked by `whole_number`: a `u32`
  // field would wrap `-1`, truncate `1.9` and turn `NaN` into 0 unseen.
  /// SQLite page size of a new file, in bytes (a power of two, 512 to 65536). Default 1024.
  pub page_size: Option<f64>,
  /// Redis: how calls ride out a dropped connection.
  pub retry: Option<RetryOptions>,
  /// Redis: `"none"` (default) or `"aof"`: acknowledged writes are on the server's disk
  /// (checked at connect: `appendonly yes`, `appendfsync always`).
  pub durability: Option<String>,
  /// Redis: TLS settings (implied by a `rediss://` URL); for a cluster, every node's.
  pub tls: Option<crate::tls::TlsOptions>,
  /// Redis with sentinels: how the sentinels are reached, when not as the server is:
  /// `false` plain text, `true` TLS with `tls`, or TLS settings of their own.
  pub sentinel_tls: Option<napi::Either<bool, crate::tls::TlsOptions>>,
  /// WorkerStore key layout: `"compatible"` (default; the JS store's keys) or
  /// `"hashtag"` (`{<id>}`, `{<id>}-transactions`, `{<id>}-results`: one cluster slot
  /// per execution). Required on a Redis Cluster.
  pub key_layout: Option<String>,
  /// Postgres: the schema holding the store's tables (created on first use). Default `durastate`.
  pub schema: Option<String>,
  /// Postgres: connections the store opens at most (group-commit lanes + one for the sweep). Default 4.
  pub pool_size: Option<f64>,
  /// Postgres: whether the first call creates the schema and its tables when they are
  /// missing (default `true`). `false` (the CLI's reads: `inspect`, `kv get`, `ui`, ...):
  /// a schema without a durastate store rejects every call `UNAVAILABLE` ("schema ... holds
  /// no durastate store") and nothing is created. SQLite: `false` opens only an existing
  /// file of this build's format, and changes nothing in it to open it (a missing or empty
  /// file, or one of an older format, which a store would migrate, rejects `UNAVAILABLE`).
  /// Internal to the CLI, not in index.d.ts.
  pub create_tables: Option<bool>,
}

/// How a Redis store rides out a dropped connection.
#[napi(object, object_to_js = false)]
#[derive(Default, Clone)]
pub struct RetryOptions {
  /// How many times a call that is safe to repeat is sent again after its connection
  /// dropped, reconnecting with backoff in between (never past `commandTimeout`). Default 3; 0: never.
  pub attempts: Option<f64>,
  /// First reconnect delay, in ms; doubles per failed attempt, with jitter. Default 50.
  pub min_delay: Option<f64>,
  /// Longest reconnect delay, in ms. Default 2000.
  pub max_delay: Option<f64>,
}

/// Validated [`RetryOptions`].
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
  pub attempts: u32,
  pub min_delay: Duration,
  pub max_delay: Duration,
}

impl RetrySettings {
  fn from_options(options: Option<&RetryOptions>) -> StoreResult<Self> {
    let options = options.cloned().unwrap_or_default();
    let attempts = whole_number("retry.attempts", options.attempts, 0, 100)?.unwrap_or(3) as u32;
    let min_delay = millis("retry.minDelay", options.min_delay)?.unwrap_or(50);
    let max_delay = millis("retry.maxDelay", options.max_delay)?.unwrap_or(2_000);
    if min_delay > max_delay {
      return Err(StoreError::invalid_input(format!(
        "option `retry.minDelay` ({min_delay} ms) must not exceed `retry.maxDelay` ({max_delay} ms)"
      )));
    }
    Ok(Self {
      attempts,
      min_delay: Duration::from_millis(min_delay),
      max_delay: Duration::from_millis(max_delay),
    })
  }
}

/// A Redis server given as fields rather than a URL.
#[napi(object, object_to_js = false)]
#[derive(Default, Clone)]
pub struct RedisConnectionOptions {
  /// Host name or IP address. Default `127.0.0.1`.
  pub host: Option<String>,
  /// TCP port. Default 6379.
  pub port: Option<f64>,
  /// ACL user name.
  pub username: Option<String>,
  /// Password (with or without `username`).
  pub password: Option<String>,
  /// Database number. Default 0.
  pub db: Option<f64>,
  /// Use TLS (`rediss://`).
  pub tls: Option<bool>,
  /// Sentinels to ask for the master (`name`) at every connect, instead of `host`/`port`.
  pub sentinels: Option<Vec<SentinelAddress>>,
  /// The master's name, as the sentinels monitor it.
  pub name: Option<String>,
  /// ACL user on the sentinels, if they need one.
  pub sentinel_username: Option<String>,
  /// Password of the sentinels, if they need one.
  pub sentinel_password: Option<String>,
  /// Redis Cluster: URLs of some of its nodes (`redis://host:port`); the others are
  /// found from them. `username`/`password` apply to every node.
  pub cluster: Option<Vec<String>>,
}

/// One sentinel's address.
#[napi(object, object_to_js = false)]
#[derive(Default, Clone)]
pub struct SentinelAddress {
  pub host: String,
  /// Default 26379.
  pub port: Option<f64>,
}

/// Validated settings common to every store.
#[derive(Debug, Clone)]
pub struct CommonSettings {
  pub ttl_ms: Option<u64>,
  pub prefix: String,
  pub command_timeout: Duration,
  pub connect_timeout: Duration,
  pub retry: RetrySettings,
  /// `keyLayout: 'hashtag'`.
  pub hashtag: bool,
}

impl CommonSettings {
  /// Validates the options every backend shares.
  pub fn from_options(options: &StoreOptions) -> StoreResult<Self> {
    let ttl_ms = millis("ttl", options.ttl)?.filter(|ttl| *ttl > 0);
    let command_timeout = positive_millis("commandTimeout", options.command_timeout)?
      .unwrap_or(DEFAULT_COMMAND_TIMEOUT_MS);
    let connect_timeout = positive_millis("connectTimeout", options.connect_timeout)?
      .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS);
    Ok(Self {
      ttl_ms,
      prefix: options.prefix.clone().unwrap_or_default(),
      command_timeout: Duration::from_millis(command_timeout),
      connect_timeout: Duration::from_millis(connect_timeout),
      retry: RetrySettings::from_options(options.retry.as_ref())?,
      hashtag: crate::keys::KeyLayout::with_option("", options.key_layout.as_deref())?.is_hashtag(),
    })
  }
}

/// A non-negative whole number of milliseconds (fractions round up).
pub fn millis(name: &str, value: Option<f64>) -> StoreResult<Option<u64>> {
  let Some(value) = value else { return Ok(None) };
  if !value.is_finite() || !(0.0..=MAX_MS).contains(&value) {
    return Err(StoreError::invalid_input(format!(
      "option `{name}` must be a number of milliseconds between 0 and {MAX_MS}, got {}",
      js_number(value)
    )));
  }
  Ok(Some(value.ceil() as u64))
}

/// The largest Redis database number `SELECT` takes (a signed 32-bit integer).
pub const MAX_REDIS_DB: u64 = i32::MAX as u64;

/// The whole-number option `name` (`poolSize`, `port`, `db`, `retry.attempts`, ...) when it
/// is from `min` to `max`. JS gives every number as an `f64`: a fraction, `NaN`, an infinity
/// or a value out of range is `INVALID_INPUT` quoting the value as it was given, never
/// wrapped, truncated or turned into 0.
pub fn whole_number(
  name: &str,
  value: Option<f64>,
  min: u64,
  max: u64,
) -> StoreResult<Option<u64>> {
  let Some(value) = value else { return Ok(None) };
  match whole_in(value, min, max) {
    Some(whole) => Ok(Some(whole)),
    None => Err(StoreError::invalid_input(format!(
      "option `{name}` must be a whole number from {min} to {max}, got {}",
      js_number(value)
    ))),
  }
}

/// `value` as a whole number from `min` to `max`, or `None` when it is not one.
pub fn whole_in(value: f64, min: u64, max: u64) -> Option<u64> {
  let fits =
    value.is_finite() && value.fract() == 0.0 && value >= min as f64 && value <= max as f64;
  fits.then_some(value as u64)
}

/// A number as JS prints it (`NaN`, `Infinity`, `1.5`, `-1`, `1e+300`), for messages that
/// quote the value given.
pub fn js_number(value: f64) -> String {
  if value.is_nan() {
    "NaN".to_string()
  } else if value.is_infinite() {
    if value > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
  } else if value == 0.0 {
    "0".to_string()
  } else if value.abs() >= 1e21 || value.abs() < 1e-6 {
    let text = format!("{value:e}");
    match text.split_once('e') {
      Some((mantissa, exponent)) if !exponent.starts_with('-') => format!("{mantissa}e+{exponent}"),
      _ => text,
    }
  } else {
    format!("{value}")
  }
}

/// A strictly positive number of milliseconds.
pub fn positive_millis(name: &str, value: Option<f64>) -> StoreResult<Option<u64>> {
  match millis(name, value)? {
    Some(0) => Err(StoreError::invalid_input(format!(
      "option `{name}` must be greater than 0 ms"
    ))),
    other => Ok(other),
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn ttl_rounds_up_and_zero_means_none() {
    let options = StoreOptions {
      ttl: Some(1.2),
      ..Default::default()
    };
    assert_eq!(
      CommonSettings::from_options(&options).unwrap().ttl_ms,
      Some(2)
    );
    let zero = StoreOptions {
      ttl: Some(0.0),
      ..Default::default()
    };
    assert_eq!(CommonSettings::from_options(&zero).unwrap().ttl_ms, None);
  }

  #[test]
  fn retry_defaults_and_checks_delays() {
    let retry = RetrySettings::from_options(None).unwrap();
    assert_eq!(retry.attempts, 3);
    assert_eq!(retry.min_delay, Duration::from_millis(50));
    assert_eq!(retry.max_delay, Duration::from_millis(2_000));
    let bad = RetryOptions {
      min_delay: Some(10.0),
      max_delay: Some(5.0),
      ..Default::default()
    };
    assert!(RetrySettings::from_options(Some(&bad)).is_err());
  }

  #[test]
  fn whole_numbers_are_refused_rather_than_wrapped_truncated_or_zeroed() {
    assert_eq!(
      whole_number("poolSize", Some(4.0), 1, 1000).unwrap(),
      Some(4)
    );
    assert_eq!(whole_number("poolSize", None, 1, 1000).unwrap(), None);
    for (value, shown) in [
      (1.5, "1.5"),
      (-1.0, "-1"),
      (f64::NAN, "NaN"),
      (f64::INFINITY, "Infinity"),
      (4_294_967_300.0, "4294967300"),
      (1e300, "1e+300"),
      (0.0, "0"),
    ] {
      let err = whole_number("poolSize", Some(value), 1, 1000).unwrap_err();
      assert_eq!(
        err.message,
        format!("option `poolSize` must be a whole number from 1 to 1000, got {shown}")
      );
    }
    assert_eq!(js_number(-0.0), "0");
    assert_eq!(js_number(2.5e-7), "2.5e-7");
  }

  #[test]
  fn rejects_negative_and_non_finite() {
    assert!(millis("ttl", Some(-1.0)).is_err());
    assert!(millis("ttl", Some(f64::NAN)).is_err());
    assert!(millis("ttl", Some(f64::INFINITY)).is_err());
    assert!(positive_millis("commandTimeout", Some(0.0)).is_err());
  }
}
