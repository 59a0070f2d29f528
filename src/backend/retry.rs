//! The retry policy every Redis driver shares (event loop, tokio threads, Cluster): which
//! errors another attempt may cure, how long to wait before it, and how many attempts a
//! call has. Pure: no I/O, no clock but the jitter's seed, so it is tested without a
//! server. Whether a batch may be sent twice at all is the batch's own declaration
//! ([`crate::command::Resend`]); this module only says when, and how often.

use std::time::Duration;

use crate::error::{ErrorCode, StoreError};
use crate::options::RetrySettings;

/// What another attempt could do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
  /// The connection or the server may recover (a dropped connection, a refused or timed
  /// out connect, a cluster that is down or resharding): another attempt may pass.
  Transient,
  /// The call itself is wrong, or the store is closed: another attempt fails the same.
  Permanent,
  /// The server refused the credentials; never retried, so a fixed password takes
  /// effect on the next call, not on a loop of refused ones.
  Auth,
  /// The TLS handshake failed (certificate, name, protocol): never retried.
  Tls,
}

impl ErrorClass {
  /// Whether another attempt may pass.
  pub fn may_retry(self) -> bool {
    self == ErrorClass::Transient
  }
}

/// How a store error (a failed connect, a failed round trip) classifies.
pub fn classify(err: &StoreError) -> ErrorClass {
  match err.code {
    ErrorCode::Unavailable | ErrorCode::Timeout => ErrorClass::Transient,
    ErrorCode::Auth => ErrorClass::Auth,
    ErrorCode::Tls => ErrorClass::Tls,
    _ => ErrorClass::Permanent,
  }
}

/// The wait before reconnect attempt `failures` (1-based): `minDelay` doubling up to
/// `maxDelay`, with "equal jitter" (half fixed, half `random` in [0, 1]) so many clients
/// do not reconnect in step.
pub fn backoff(settings: &RetrySettings, failures: u32, random: f64) -> Duration {
  let exponential = settings
    .min_delay
    .saturating_mul(1 << failures.saturating_sub(1).min(16));
  let capped = exponential.min(settings.max_delay);
  capped / 2 + capped.mul_f64(random.clamp(0.0, 1.0) / 2.0)
}

/// A number in [0, 1) for backoff jitter (no need for a cryptographic source).
pub fn jitter() -> f64 {
  use std::hash::{BuildHasher, Hasher};
  let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
  let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
  hasher.write_u128(now.map(|d| d.as_nanos()).unwrap_or_default());
  (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// One call's retry budget: how many more times its batch may be sent again
/// (`retry.attempts`, none for a batch that must not be sent twice), and the connect
/// attempts that failed in a row (for the backoff).
#[derive(Debug, Clone)]
pub struct Budget {
  settings: RetrySettings,
  resends_left: u32,
  failures: u32,
}

impl Budget {
  /// The budget of a call whose batch may (`resendable`) or may not be sent again.
  pub fn new(settings: &RetrySettings, resendable: bool) -> Self {
    Self {
      settings: *settings,
      resends_left: if resendable { settings.attempts } else { 0 },
      failures: 0,
    }
  }

  /// Spends one resend; false when none is left.
  pub fn spend(&mut self) -> bool {
    let left = self.resends_left > 0;
    self.resends_left = self.resends_left.saturating_sub(1);
    left
  }

  /// A connect attempt failed: the wait before the next one (the first reconnect after a
  /// drop is immediate; this is only for a reconnect that failed).
  pub fn connect_failed(&mut self, random: f64) -> Duration {
    self.failures += 1;
    backoff(&self.settings, self.failures, random)
  }

  /// A connect attempt passed: the backoff starts over.
  pub fn connected(&mut self) {
    self.failures = 0;
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn settings(attempts: u32) -> RetrySettings {
    RetrySettings {
      attempts,
      min_delay: Duration::from_millis(50),
      max_delay: Duration::from_millis(2_000),
    }
  }

  #[test]
  fn backoff_doubles_caps_and_jitters() {
    let retry = settings(3);
    assert_eq!(backoff(&retry, 1, 0.0), Duration::from_millis(25));
    assert_eq!(backoff(&retry, 1, 1.0), Duration::from_millis(50));
    assert_eq!(backoff(&retry, 3, 1.0), Duration::from_millis(200));
    assert_eq!(backoff(&retry, 30, 1.0), Duration::from_millis(2_000));
    for _ in 0..100 {
      assert!((0.0..1.0).contains(&jitter()));
    }
  }

  #[test]
  fn a_budget_spends_attempts_and_never_resends_what_must_not_be() {
    let mut safe = Budget::new(&settings(2), true);
    assert!(safe.spend() && safe.spend());
    assert!(!safe.spend());
    let mut never = Budget::new(&settings(5), false);
    assert!(!never.spend());
  }

  #[test]
  fn connect_failures_back_off() {
    let mut budget = Budget::new(&settings(3), true);
    assert_eq!(budget.connect_failed(1.0), Duration::from_millis(50));
    assert_eq!(budget.connect_failed(1.0), Duration::from_millis(100));
  }

  #[test]
  fn classifies_store_errors() {
    let err = |code| StoreError::new(code, "x");
    assert_eq!(
      classify(&err(ErrorCode::Unavailable)),
      ErrorClass::Transient
    );
    assert_eq!(classify(&err(ErrorCode::Timeout)), ErrorClass::Transient);
    assert_eq!(classify(&err(ErrorCode::Auth)), ErrorClass::Auth);
    assert_eq!(classify(&err(ErrorCode::Tls)), ErrorClass::Tls);
    assert_eq!(classify(&err(ErrorCode::Disposed)), ErrorClass::Permanent);
    assert!(!classify(&err(ErrorCode::InvalidInput)).may_retry());
  }
}
