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
    None => full_text(err),
  };
  let code = match err.code().map(|c| c.code()) {
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
    None if is_tls(err) => ErrorCode::Tls,
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
