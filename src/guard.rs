//! Bounds every call: a time limit end to end, a Rust panic turned into an error, and a
//! backend closed only after the last call made before `close()` settled.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
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

/// Something a store closes once `close()` was called and its last call settled.
pub trait Shut: Send + Sync + 'static {
  /// The store's count of calls not settled.
  fn calls(&self) -> &Calls;
  /// Closes it: called once, by [`Calls::close`] or by the last [`Held`] dropped after it.
  fn shut(&self);
}

/// A flag set once (a store closed, a call answered) that futures can wait for.
pub struct Latch(tokio::sync::watch::Sender<bool>);

impl Default for Latch {
  fn default() -> Self {
    Self(tokio::sync::watch::channel(false).0)
  }
}

impl Latch {
  /// Marks it closed; every [`wait`](Self::wait) resolves.
  pub fn set(&self) {
    self.0.send_replace(true);
  }

  /// Resolves once [`set`](Self::set) was called (at once if it was).
  pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
    let mut closed = self.0.subscribe();
    async move {
      let _ = closed.wait_for(|closed| *closed).await;
    }
  }
}

/// Calls made on a store and not settled, and whether `close()` was called. A call of
/// several batches (a `hashtag` claim that checks its token, a listing of pages) sends its
/// later batches after `close()`, so the store closes when the last call settles.
#[derive(Default)]
pub struct Calls {
  state: Mutex<(usize, bool)>,
  /// Set once the store is shut: `close()` was called and its last call settled.
  shut: Latch,
}

impl Calls {
  fn lock(&self) -> MutexGuard<'_, (usize, bool)> {
    self.state.lock().unwrap_or_else(|e| e.into_inner())
  }

  /// Resolves once the store is shut: `close()` was called and every call made before
  /// it settled.
  pub fn shut(&self) -> impl Future<Output = ()> + Send + 'static {
    self.shut.wait()
  }

  fn shut_now<T: Shut + ?Sized>(owner: &T) {
    owner.shut();
    owner.calls().shut.set();
  }

  /// Counts a call until the guard is dropped (when it settles).
  pub fn hold<T: Shut>(owner: &Arc<T>) -> Held<T> {
    owner.calls().lock().0 += 1;
    Held(owner.clone())
  }

  /// Closes `owner` now if no call is left, else when the last one settles.
  pub fn close<T: Shut + ?Sized>(owner: &T) {
    let idle = {
      let mut state = owner.calls().lock();
      let first = !state.1;
      state.1 = true;
      first && state.0 == 0
    };
    if idle {
      Calls::shut_now(owner);
    }
  }
}

/// One call of [`Calls::hold`], not settled yet.
pub struct Held<T: Shut>(Arc<T>);

impl<T: Shut> Drop for Held<T> {
  fn drop(&mut self) {
    let last = {
      let mut state = self.0.calls().lock();
      state.0 -= 1;
      state.1 && state.0 == 0
    };
    if last {
      Calls::shut_now(&*self.0);
    }
  }
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

  struct Store(Calls, std::sync::atomic::AtomicUsize);

  impl Shut for Store {
    fn calls(&self) -> &Calls {
      &self.0
    }
    fn shut(&self) {
      self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
  }

  fn shuts(store: &Store) -> usize {
    store.1.load(std::sync::atomic::Ordering::SeqCst)
  }

  #[test]
  fn closes_once_after_the_last_call_settles() {
    let idle = Arc::new(Store(Calls::default(), Default::default()));
    Calls::close(&*idle);
    Calls::close(&*idle);
    assert_eq!(shuts(&idle), 1, "an idle store closes at once, and once");

    let busy = Arc::new(Store(Calls::default(), Default::default()));
    let first = Calls::hold(&busy);
    let second = Calls::hold(&busy);
    drop(first);
    Calls::close(&*busy);
    assert_eq!(shuts(&busy), 0, "a call is still unsettled");
    let shut = busy.calls().shut();
    drop(second);
    assert_eq!(shuts(&busy), 1, "the last call closed it");
    futures_util::FutureExt::now_or_never(shut).expect("shut() resolved");
    Calls::close(&*busy);
    assert_eq!(shuts(&busy), 1);
  }
}
