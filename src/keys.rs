//! The key layouts: the default is byte-compatible with the `@idioteque/redis` JS store;
//! `hashtag` puts an execution's three keys in one Redis Cluster slot.

use crate::error::{StoreError, StoreResult};

/// What the hash of an execution's steps in progress appends to its key (the Redis
/// backend's layout, `backend/redis_ops.rs`).
pub const TRANSACTIONS_SUFFIX: &str = "-transactions";
/// What the hash of an execution's results appends to its key.
pub const RESULTS_SUFFIX: &str = "-results";

/// Names the three keys of an execution. `compatible` (default): `<prefix><id>`,
/// `<prefix><id>-transactions`, `<prefix><id>-results`. `hashtag`: `<prefix>{<id>}`,
/// `<prefix>{<id>}-transactions`, `<prefix>{<id>}-results` (one slot per execution).
#[derive(Debug, Clone, Default)]
pub struct KeyLayout {
  prefix: String,
  hashtag: bool,
}

impl KeyLayout {
  pub fn new(prefix: impl Into<String>) -> Self {
    Self {
      prefix: prefix.into(),
      hashtag: false,
    }
  }

  /// The layout option `keyLayout`: `"compatible"` (default) or `"hashtag"`.
  pub fn with_option(prefix: impl Into<String>, layout: Option<&str>) -> StoreResult<Self> {
    let hashtag = match layout {
      None | Some("compatible") => false,
      Some("hashtag") => true,
      Some(other) => {
        return Err(StoreError::invalid_input(format!(
          "option `keyLayout` must be \"compatible\" or \"hashtag\", got \"{other}\""
        )))
      }
    };
    let prefix = prefix.into();
    if hashtag
      && prefix
        .find('{')
        .is_some_and(|at| prefix[at + 1..].starts_with('}'))
    {
      return Err(StoreError::invalid_input(format!(
        "prefix \"{prefix}\" with keyLayout 'hashtag': Redis takes a key's first {{...}} as its hash tag, and an empty {{}} means none, so an execution's keys would fall in different cluster slots (its commits no longer atomic)"
      )));
    }
    Ok(Self { prefix, hashtag })
  }

  /// Checks an execution id: not empty, and with the `hashtag` layout not starting with
  /// `}` after a prefix without `{` (its tag `{}` would be empty: no tag, see above).
  pub fn check_id(&self, id: &str) -> StoreResult<()> {
    if id.is_empty() {
      return Err(StoreError::invalid_input(
        "executionId must be a non-empty string",
      ));
    }
    if self.hashtag && id.starts_with('}') && !self.prefix.contains('{') {
      return Err(StoreError::invalid_input(format!(
        "executionId \"{id}\" starts with '}}': with keyLayout 'hashtag' its keys' hash tag {{}} would be empty, and its keys would fall in different cluster slots"
      )));
    }
    Ok(())
  }

  /// Whether the three keys of an execution share a hash tag (one cluster slot).
  pub fn is_hashtag(&self) -> bool {
    self.hashtag
  }

  fn base(&self, id: &str) -> String {
    if self.hashtag {
      format!("{}{{{}}}", self.prefix, id)
    } else {
      format!("{}{}", self.prefix, id)
    }
  }

  /// The string key that holds `"true"` while the execution is in progress.
  pub fn execution(&self, id: &str) -> String {
    self.base(id)
  }

  /// The hash of committed step results (field = task id, value = JSON text).
  pub fn results(&self, id: &str) -> String {
    format!("{}{RESULTS_SUFFIX}", self.base(id))
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn matches_the_js_store_layout() {
    let keys = KeyLayout::new("app:");
    assert_eq!(keys.execution("e1"), "app:e1");
    let transactions = format!("{}{TRANSACTIONS_SUFFIX}", keys.execution("e1"));
    assert_eq!(transactions, "app:e1-transactions");
    assert_eq!(keys.results("e1"), "app:e1-results");
    assert_eq!(KeyLayout::default().results("x"), "x-results");
  }

  #[test]
  fn hashtag_layout_shares_one_slot() {
    let keys = KeyLayout::with_option("app:", Some("hashtag")).unwrap();
    assert_eq!(keys.execution("e1"), "app:{e1}");
    let transactions = format!("{}{TRANSACTIONS_SUFFIX}", keys.execution("e1"));
    assert_eq!(transactions, "app:{e1}-transactions");
    assert_eq!(keys.results("e1"), "app:{e1}-results");
    assert!(KeyLayout::with_option("", Some("tags")).is_err());
    assert!(!KeyLayout::with_option("", None).unwrap().is_hashtag());
    // An empty first {} is no hash tag: refused in the prefix, and at the id's start.
    assert!(KeyLayout::with_option("hp{}:", Some("hashtag")).is_err());
    assert!(KeyLayout::with_option("a{}b{c}", Some("hashtag")).is_err());
    assert!(KeyLayout::with_option("hp{}:", None).is_ok());
    let tagged = KeyLayout::with_option("t{x}:", Some("hashtag")).unwrap();
    assert!(tagged.check_id("}a").is_ok());
    let keys = KeyLayout::with_option("app:", Some("hashtag")).unwrap();
    assert!(keys.check_id("}a").is_err());
    assert!(keys.check_id("a}b").is_ok());
    assert!(keys.check_id("").is_err());
    assert!(KeyLayout::new("app:").check_id("}a").is_ok());
  }
}
