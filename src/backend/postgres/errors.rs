//! Postgres errors as store errors, and what another attempt could do about them.

use tokio_postgres::error::SqlState;

use crate::error::{ErrorCode, StoreError};

/// What a failed statement means for its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
  /// The connection is gone: what was in flight may or may not have landed.
  Dropped,
  /// A serialization failure or deadlock: the transaction was rolled back, nothing
  /// landed, and running it again may pass.
  Conflict,
  /// Anything else: final.
  Other,
}

pub fn kind(err: &tokio_postgres::Error) -> Kind {
  if err.is_closed() || io_error(err) {
    return Kind::Dropped;
  }
  match err.code() {
    Some(code)
      if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED =>
    {
      Kind::Conflict
    }
    Some(code)
      if *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || code.code().starts_with("08") =>
    {
      Kind::Dropped
    }
    _ => Kind::Other,
  }
}

fn io_error(err: &tokio_postgres::Error) -> bool {
  let mut source = std::error::Error::source(err);
  while let Some(inner) = source {
    if inner.is::<std::io::Error>() {
      return true;
    }
    source = inner.source();
  }
  false
}

/// The store error of a failed statement or connect.
pub fn store_error(err: &tokio_postgres::Error) -> StoreError {
  let text = match err.as_db_error() {
    Some(db) => db.message().to_string(),
    None => match tls_reason(err) {
      Some(reason) => format!("TLS handshake failed: {reason} ({})", full_text(err)),
      None => full_text(err),
    },
  };
  let code = match err.code().map(|c| c.code()) {
    // pg_hba's `clientcert`/`cert`, with no client certificate given: a TLS setting to
    // fix, as on Redis (the server's message; a server with other `lc_messages` says AUTH).
    Some("28000") if text.contains("client certificate") => ErrorCode::Tls,
    Some(c) if c.starts_with("28") || c == "42501" => ErrorCode::Auth,
    // 22: bad data; 54000: a key or id too long for the index (a B-tree row holds
    // about 2.7 KB): permanent, not worth a retry.
    Some(c) if c.starts_with("22") || c == "54000" => ErrorCode::InvalidInput,
    // 42939: a reserved name (`pg_...`): refused at creation, but a name the server
    // reserves that this build does not know of is the user's choice too.
    Some("42939") => ErrorCode::InvalidInput,
    // A table, column, function or type of the store's schema missing or of another
    // shape (dropped or altered by hand, or made by something else): its data is not
    // what this store wrote.
    Some("42P01" | "42703" | "42883" | "42804" | "42809" | "42P07" | "42710" | "42704") => {
      ErrorCode::CorruptData
    }
    // Syntax errors and the rest of class 42: a bug of this build.
    Some(c) if c.starts_with("42") || c.starts_with("23") || c.starts_with("XX") => {
      ErrorCode::Internal
    }
    Some(_) => ErrorCode::Unavailable,
    None if tls_reason(err).is_some() || is_tls(err) => ErrorCode::Tls,
    None if text.contains("timed out") => ErrorCode::Unavailable,
    None => ErrorCode::Unavailable,
  };
  StoreError::new(code, format!("Postgres: {text}"))
}

/// The error's text with its causes (tokio-postgres puts the detail in the source).
fn full_text(err: &tokio_postgres::Error) -> String {
  let mut text = err.to_string();
  let mut source = std::error::Error::source(err);
  while let Some(inner) = source {
    let more = inner.to_string();
    if !text.contains(&more) {
      text = format!("{text}: {more}");
    }
    source = inner.source();
  }
  text
}

fn is_tls(err: &tokio_postgres::Error) -> bool {
  let text = full_text(err).to_ascii_lowercase();
  text.contains("tls") || text.contains("certificate") || text.contains("ssl")
}

/// Why a TLS connection failed, in words, as Redis's (`TlsSettings::explain`) say, in
/// Postgres's terms (`sslmode`, `sslrootcert`, ...). `None` when it is not a TLS failure
/// this knows.
fn tls_reason(err: &tokio_postgres::Error) -> Option<&'static str> {
  let mut source = std::error::Error::source(err);
  while let Some(inner) = source {
    // `io::Error::source` skips the error it wraps: look at it through `get_ref`.
    let wrapped = inner
      .downcast_ref::<std::io::Error>()
      .and_then(|io| io.get_ref())
      .and_then(|e| e.downcast_ref::<rustls::Error>());
    if let Some(tls) = wrapped.or_else(|| inner.downcast_ref::<rustls::Error>()) {
      return Some(explain(tls));
    }
    if inner.to_string() == "server does not support TLS" {
      return Some(
        "the server does not offer TLS (its `ssl` setting is off), and sslmode=require, verify-ca or verify-full (or a `tls` option) requires it: turn TLS on in the server, or use sslmode=prefer or disable on a network you trust",
      );
    }
    source = inner.source();
  }
  None
}

fn explain(err: &rustls::Error) -> &'static str {
  use rustls::{AlertDescription as Alert, CertificateError as Cert, Error as E};
  match err {
    E::InvalidCertificate(Cert::Other(other))
      if format!("{other:?}").contains("CaUsedAsEndEntity") =>
    {
      "untrusted issuer: the server presents a CA certificate (self-signed?) that is not one of `tls.ca` or sslrootcert"
    }
    E::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
      "untrusted issuer: the server's certificate does not chain to `tls.ca` or sslrootcert (or, without them, the system's roots)"
    }
    E::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
      "the server's certificate has expired"
    }
    E::InvalidCertificate(Cert::NotValidYet | Cert::NotValidYetContext { .. }) => {
      "the server's certificate is not valid yet"
    }
    E::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
      "wrong name: the server's certificate is not valid for the host connected to (connect by a name it carries, or use sslmode=verify-ca to check its chain only)"
    }
    E::AlertReceived(Alert::CertificateRequired) => {
      "the server requires a client certificate (`tls.cert` and `tls.key`, or sslcert and sslkey)"
    }
    E::AlertReceived(Alert::HandshakeFailure | Alert::BadCertificate) => {
      "the server refused the handshake; it may require a client certificate (`tls.cert` and `tls.key`, or sslcert and sslkey) or not trust the one given"
    }
    E::AlertReceived(Alert::UnknownCA) => "the server does not trust the client certificate",
    E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
      "the server does not speak TLS after accepting to (not a Postgres server?)"
    }
    _ => "the TLS handshake failed",
  }
}
