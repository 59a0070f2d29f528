//! Bounds every call: a time limit end to end, and a Rust panic turned into an error.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;

use crate::error::{ErrorCode, StoreError, StoreResult};

/// Runs `work` within `limit`; a timeout rejects with `TIMEOUT`, a panic with `INTERNAL`.
pub async fn bounded<T>(
  what: &str,
  limit: Duration,
  work: impl Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
  match tokio::time::timeout(limit, AssertUnwindSafe(work).catch_unwind()).await {
    Ok(Ok(result)) => result,
    Ok(Err(panic)) => Err(panic_error(what, panic)),
    Err(_) => Err(StoreError::timeout(what, limit.as_millis() as u64)),
  }
}

/// Describes a caught panic; the message asks for a bug report.
pub fn panic_error(what: &str, panic: Box<dyn std::any::Any + Send>) -> StoreError {
  let detail = panic
    .downcast_ref::<&str>()
    .map(|s| s.to_string())
    .or_else(|| panic.downcast_ref::<String>().cloned())
    .unwrap_or_else(|| "unknown panic".to_string());
  StoreError::new(
    ErrorCode::Internal,
    format!("{what} failed with an internal error (please report it): {detail}"),
  )
}

#[cfg(test)]
mod tests {
  use super::*;

  #[tokio::test]
  async fn times_out_and_catches_panics() {
    let slow = bounded("slow", Duration::from_millis(20), async {
      tokio::time::sleep(Duration::from_secs(5)).await;
      Ok(())
    });
    assert_eq!(slow.await.unwrap_err().code, ErrorCode::Timeout);
    let boom = bounded::<()>("boom", Duration::from_secs(1), async { panic!("kaboom") });
    let err = boom.await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal);
    assert!(err.message.contains("kaboom"));
  }
}
