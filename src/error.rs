//! One error type for the whole crate, with stable codes that JS sees as `err.code`:
//! the native layer sets the code on the error object it rejects or throws with, and the
//! message is only the text a person reads.

use std::fmt;

/// The stable error codes. Native rejections and throws carry one as `err.code` (see
/// `js_promise::settle`, and `napi::Result<T, ErrorCode>` for synchronous throws), so
/// these strings are part of the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
  /// An argument or option is invalid; nothing was sent or stored.
  InvalidInput,
  /// A value could not be encoded as JSON (BigInt, circular, function).
  Serialize,
  /// Stored data is not what this store writes (bad JSON, unreadable file).
  CorruptData,
  /// A key holds another type of data (Redis `WRONGTYPE`).
  WrongType,
  /// The server or file could not be reached or used.
  Unavailable,
  /// The call did not finish within its time bound.
  Timeout,
  /// The server refused our credentials (`WRONGPASS`, `NOAUTH`).
  Auth,
  /// The TLS handshake failed: an untrusted, expired or misnamed certificate, or a
  /// server that does not speak TLS.
  Tls,
  /// The store was closed.
  Disposed,
  /// A bug in durastate (a Rust panic); the call was rejected, the process lives on.
  Internal,
  /// KV: the mount name is not configured.
  UnknownMount,
  /// KV: a write on a read-only mount.
  ReadOnly,
  /// KV: a read on a write-only mount.
  WriteOnly,
  /// KV: a value's type is not the one its key's schema declares.
  TypeMismatch,
  /// KV: a value's JSON is larger than the mount allows.
  ValueTooLarge,
  /// KV: a new key would take the mount past its entry limit.
  EntryLimit,
}

impl ErrorCode {
  /// Every code (index.js keeps the same list to tell them from napi's own codes).
  pub const ALL: [ErrorCode; 16] = [
    Self::InvalidInput,
    Self::Serialize,
    Self::CorruptData,
    Self::WrongType,
    Self::Unavailable,
    Self::Timeout,
    Self::Auth,
    Self::Tls,
    Self::Disposed,
    Self::Internal,
    Self::UnknownMount,
    Self::ReadOnly,
    Self::WriteOnly,
    Self::TypeMismatch,
    Self::ValueTooLarge,
    Self::EntryLimit,
  ];

  /// The code as JS sees it in `err.code`.
  pub fn as_str(self) -> &'static str {
    match self {
      Self::InvalidInput => "INVALID_INPUT",
      Self::Serialize => "SERIALIZE",
      Self::CorruptData => "CORRUPT_DATA",
      Self::WrongType => "WRONG_TYPE",
      Self::Unavailable => "UNAVAILABLE",
      Self::Timeout => "TIMEOUT",
      Self::Auth => "AUTH",
      Self::Tls => "TLS",
      Self::Disposed => "DISPOSED",
      Self::Internal => "INTERNAL",
      Self::UnknownMount => "UNKNOWN_MOUNT",
      Self::ReadOnly => "READ_ONLY",
      Self::WriteOnly => "WRITE_ONLY",
      Self::TypeMismatch => "TYPE_MISMATCH",
      Self::ValueTooLarge => "VALUE_TOO_LARGE",
      Self::EntryLimit => "ENTRY_LIMIT",
    }
  }
}

/// An error with a stable code and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
  pub code: ErrorCode,
  pub message: String,
  /// The call was in flight when its connection dropped (`redis_core::lost`): it may
  /// have run on the server. A router that would resend it asks its batch first.
  pub may_have_run: bool,
  /// The server answered with this error (the connection is fine): a router gives it as
  /// the answer instead of reconnecting and sending the call again.
  pub from_server: bool,
  /// (SQLite) The error is about one stored value, not the database: the transaction
  /// that read it is still good, and the calls grouped with it go on.
  pub one_value: bool,
}

/// Result alias used across the crate.
pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
  pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
    Self {
      code,
      message: message.into(),
      may_have_run: false,
      from_server: false,
      one_value: false,
    }
  }

  pub fn invalid_input(message: impl Into<String>) -> Self {
    Self::new(ErrorCode::InvalidInput, message)
  }

  pub fn disposed() -> Self {
    Self::new(
      ErrorCode::Disposed,
      "the store is closed; create a new store to continue",
    )
  }

  /// `UNAVAILABLE`: no connection to `place` (a server or a URL as shown), `detail` says why.
  pub fn cannot_connect(place: &str, detail: impl fmt::Display) -> Self {
    Self::new(
      ErrorCode::Unavailable,
      format!("cannot connect to {place}: {detail}"),
    )
  }

  /// `UNAVAILABLE`: no connection to `place` within `connectTimeout` (`limit`).
  pub fn connect_timeout(place: &str, limit: std::time::Duration) -> Self {
    Self::cannot_connect(
      place,
      format_args!(
        "no connection within connectTimeout ({} ms)",
        limit.as_millis()
      ),
    )
  }

  pub fn timeout(what: &str, ms: u64) -> Self {
    Self::new(
      ErrorCode::Timeout,
      format!("{what} did not complete within {ms} ms"),
    )
  }
}

impl AsRef<str> for ErrorCode {
  fn as_ref(&self) -> &str {
    self.as_str()
  }
}

/// The message alone; the code is data (`err.code` in JS), never part of the text.
impl fmt::Display for StoreError {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str(&self.message)
  }
}

impl std::error::Error for StoreError {}

/// A synchronous `#[napi]` function that can fail with a [`StoreError`] returns
/// `napi::Result<T, ErrorCode>` (spelled so: napi-derive looks for `Result`); napi-rs
/// throws the error with its status string, the code, as `err.code`.
impl From<StoreError> for napi::Error<ErrorCode> {
  fn from(err: StoreError) -> Self {
    napi::Error::new(err.code, err.message)
  }
}

/// A failed napi call (creating a promise or a value): a bug or a dying environment.
impl From<napi::Error> for StoreError {
  fn from(err: napi::Error) -> Self {
    Self::new(
      ErrorCode::Internal,
      format!("napi call failed ({}): {}", err.status, err.reason),
    )
  }
}

impl From<redis::RedisError> for StoreError {
  fn from(err: redis::RedisError) -> Self {
    let code = redis_error_code(&err);
    Self::new(code, format!("redis: {err}"))
  }
}

/// The code a redis-rs error maps to.
pub(crate) fn redis_error_code(err: &redis::RedisError) -> ErrorCode {
  match err.code() {
    Some("WRONGTYPE") => return ErrorCode::WrongType,
    Some("WRONGPASS") | Some("NOAUTH") | Some("NOPERM") => return ErrorCode::Auth,
    _ => {}
  }
  if err.kind() == redis::ErrorKind::AuthenticationFailed {
    ErrorCode::Auth
  } else if err.is_timeout() {
    ErrorCode::Timeout
  } else if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
    ErrorCode::Unavailable
  } else if err.kind() == redis::ErrorKind::InvalidClientConfig {
    ErrorCode::InvalidInput
  } else {
    ErrorCode::Unavailable
  }
}

impl From<rusqlite::Error> for StoreError {
  fn from(err: rusqlite::Error) -> Self {
    use rusqlite::ffi::ErrorCode as Sqlite;
    use rusqlite::Error as E;
    // A stored value of a type or form durastate never writes (another program wrote it).
    let one_value = matches!(
      err,
      E::InvalidColumnType(..)
        | E::FromSqlConversionFailure(..)
        | E::IntegralValueOutOfRange(..)
        | E::Utf8Error(..)
    );
    let code = match err.sqlite_error_code() {
      Some(Sqlite::NotADatabase) | Some(Sqlite::DatabaseCorrupt) => ErrorCode::CorruptData,
      Some(Sqlite::DatabaseBusy) | Some(Sqlite::DatabaseLocked) => ErrorCode::Timeout,
      // A string or row over SQLite's length limit: sending it again fails the same way.
      Some(Sqlite::TooBig) => ErrorCode::InvalidInput,
      _ if one_value => ErrorCode::CorruptData,
      _ => ErrorCode::Unavailable,
    };
    Self {
      one_value,
      ..Self::new(code, format!("sqlite: {err}"))
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn display_is_the_message_and_the_code_travels_apart() {
    let err = StoreError::new(ErrorCode::WrongType, "key \"x\" holds a string");
    assert_eq!(err.to_string(), "key \"x\" holds a string");
    assert_eq!(err.code.as_ref(), "WRONG_TYPE");
    // (A `napi::Error` cannot be built here: dropping one links against Node's napi.)
  }

  #[test]
  fn index_js_knows_every_code() {
    let index = include_str!("../index.js");
    let known = index
      .lines()
      .find(|line| line.starts_with("const NATIVE_CODES"))
      .expect("index.js lists NATIVE_CODES");
    for code in ErrorCode::ALL {
      assert!(known.contains(&format!("'{}'", code.as_str())), "{code:?}");
    }
  }

  #[test]
  fn io_errors_are_unavailable() {
    let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(redis_error_code(&io), ErrorCode::Unavailable);
  }
}
