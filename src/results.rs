//! Turning replies into what JS receives: flags, JSON text, one JSON object of results.

use crate::command::Reply;
use crate::error::{ErrorCode, StoreError, StoreResult};

/// A flag as the JS store reads it: `Boolean(value)`, so present and non-empty.
pub fn truthy(reply: &Reply) -> bool {
  matches!(reply, Reply::Bytes(bytes) if !bytes.is_empty())
}

/// A stored JSON text, or `None` when missing.
pub fn json_text(reply: Reply, key: &str, field: &str) -> StoreResult<Option<String>> {
  match reply {
    Reply::Bytes(bytes) => utf8(bytes, key, field).map(Some),
    _ => Ok(None),
  }
}

/// All results of an execution as the text of one JSON object (`{}` when none),
/// so JS parses once. Values are stored JSON and are inserted as they are.
pub fn results_object(reply: Reply, key: &str) -> StoreResult<String> {
  let pairs = match reply {
    Reply::Pairs(pairs) => pairs,
    _ => Vec::new(),
  };
  let size = pairs
    .iter()
    .map(|(f, v)| f.len() + v.len() + 8)
    .sum::<usize>()
    + 2;
  let mut out = String::with_capacity(size);
  out.push('{');
  for (index, (field, value)) in pairs.into_iter().enumerate() {
    if index > 0 {
      out.push(',');
    }
    let field = utf8(field, key, "<field name>")?;
    let value = utf8(value, key, &field)?;
    out.push_str(&serde_json::to_string(&field).expect("a string always encodes"));
    out.push(':');
    out.push_str(&value);
  }
  out.push('}');
  Ok(out)
}

/// The entries as `[field, value, field, value, ...]`, for naming a corrupt field.
pub fn results_entries(reply: Reply, key: &str) -> StoreResult<Vec<String>> {
  let pairs = match reply {
    Reply::Pairs(pairs) => pairs,
    _ => Vec::new(),
  };
  let mut out = Vec::with_capacity(pairs.len() * 2);
  for (field, value) in pairs {
    let field = utf8(field, key, "<field name>")?;
    let value = utf8(value, key, &field)?;
    out.push(field);
    out.push(value);
  }
  Ok(out)
}

fn utf8(bytes: Vec<u8>, key: &str, field: &str) -> StoreResult<String> {
  String::from_utf8(bytes).map_err(|_| {
    StoreError::new(
      ErrorCode::CorruptData,
      format!("stored value at key \"{key}\" field \"{field}\" is not UTF-8 text"),
    )
  })
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn builds_one_object_with_escaped_field_names() {
    let reply = Reply::Pairs(vec![
      (b"a".to_vec(), b"1".to_vec()),
      (b"p:\"q\"".to_vec(), br#"{"x":[1]}"#.to_vec()),
    ]);
    assert_eq!(
      results_object(reply, "k").unwrap(),
      r#"{"a":1,"p:\"q\"":{"x":[1]}}"#
    );
    assert_eq!(results_object(Reply::Nil, "k").unwrap(), "{}");
  }

  #[test]
  fn flags_follow_js_truthiness() {
    assert!(truthy(&Reply::Bytes(b"true".to_vec())));
    assert!(!truthy(&Reply::Bytes(Vec::new())));
    assert!(!truthy(&Reply::Nil));
  }

  #[test]
  fn non_utf8_names_key_and_field() {
    let err = json_text(Reply::Bytes(vec![0xff]), "k-results", "t").unwrap_err();
    assert_eq!(err.code, ErrorCode::CorruptData);
    assert!(err.message.contains("k-results") && err.message.contains("\"t\""));
  }
}
