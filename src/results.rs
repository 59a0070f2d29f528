//! Turning replies into what JS receives: flags, JSON text, one JSON object of results.

use napi::Either;

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

/// All results of an execution. When every value is valid JSON: the text of one JSON
/// object (`{}` when none), so JS parses once. Otherwise the flat entries
/// `[field, value, ...]`, so JS parses each and names the field that fails.
pub fn all_results(reply: Reply, key: &str) -> StoreResult<Either<String, Vec<String>>> {
  let pairs = match reply {
    Reply::Pairs(pairs) => pairs,
    _ => Vec::new(),
  };
  let mut entries = Vec::with_capacity(pairs.len() * 2);
  let mut all_valid = true;
  for (field, value) in pairs {
    let field = utf8(field, key, "<field name>")?;
    let value = utf8(value, key, &field)?;
    all_valid = all_valid && is_json(&value);
    entries.push(field);
    entries.push(value);
  }
  Ok(match all_valid {
    true => Either::A(object_text(&entries)),
    false => Either::B(entries),
  })
}

fn is_json(text: &str) -> bool {
  serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok()
}

fn object_text(entries: &[String]) -> String {
  let size = entries.iter().map(|s| s.len() + 4).sum::<usize>() + 2;
  let mut out = String::with_capacity(size);
  out.push('{');
  for (index, pair) in entries.chunks_exact(2).enumerate() {
    if index > 0 {
      out.push(',');
    }
    out.push_str(&serde_json::to_string(&pair[0]).expect("a string always encodes"));
    out.push(':');
    out.push_str(&pair[1]);
  }
  out.push('}');
  out
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
    let Either::A(text) = all_results(reply, "k").unwrap() else {
      panic!("expected text")
    };
    assert_eq!(text, r#"{"a":1,"p:\"q\"":{"x":[1]}}"#);
    let Either::A(empty) = all_results(Reply::Nil, "k").unwrap() else {
      panic!("expected text")
    };
    assert_eq!(empty, "{}");
  }

  #[test]
  fn invalid_json_falls_back_to_entries() {
    let reply = Reply::Pairs(vec![
      (b"a".to_vec(), b"1".to_vec()),
      (b"b".to_vec(), b"1,\"c\":2".to_vec()),
      (b"c".to_vec(), b"{\"unterminated\":".to_vec()),
    ]);
    let Either::B(entries) = all_results(reply, "k").unwrap() else {
      panic!("expected entries")
    };
    assert_eq!(entries[3], "1,\"c\":2");
    assert_eq!(entries.len(), 6);
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
