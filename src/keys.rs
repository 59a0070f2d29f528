//! The key layout, byte-compatible with the `@idioteque/redis` JS store.

/// Names the three keys of an execution: `<prefix><id>`, `<prefix><id>-transactions`
/// and `<prefix><id>-results`.
#[derive(Debug, Clone, Default)]
pub struct KeyLayout {
  prefix: String,
}

impl KeyLayout {
  pub fn new(prefix: impl Into<String>) -> Self {
    Self {
      prefix: prefix.into(),
    }
  }

  /// The string key that holds `"true"` while the execution is in progress.
  pub fn execution(&self, id: &str) -> String {
    format!("{}{}", self.prefix, id)
  }

  /// The hash of steps in progress (field = task id, value = `"true"`).
  pub fn transactions(&self, id: &str) -> String {
    format!("{}{}-transactions", self.prefix, id)
  }

  /// The hash of committed step results (field = task id, value = JSON text).
  pub fn results(&self, id: &str) -> String {
    format!("{}{}-results", self.prefix, id)
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn matches_the_js_store_layout() {
    let keys = KeyLayout::new("app:");
    assert_eq!(keys.execution("e1"), "app:e1");
    assert_eq!(keys.transactions("e1"), "app:e1-transactions");
    assert_eq!(keys.results("e1"), "app:e1-results");
    assert_eq!(KeyLayout::default().results("x"), "x-results");
  }
}
