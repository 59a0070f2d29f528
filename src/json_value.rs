//! Values as the JSON text JS made with `JSON.stringify`: their type, and the shallow
//! merge of two objects, done on the text so that values are kept byte for byte. The
//! Redis merge script (`backend/redis_codec.rs`) follows the same rules in Lua.

use std::collections::HashMap;
use std::fmt;

use crate::error::{StoreError, StoreResult};

/// The longest JSON text a stored value may have, in UTF-16 code units: the longest
/// string V8 makes (2^29 − 24 on 64-bit), so that every value can be read back as one JS
/// string (a longer one fails as it is read, for good).
pub const MAX_VALUE_UNITS: usize = (1 << 29) - 24;

/// Refuses JSON text `json` longer than [`MAX_VALUE_UNITS`], naming it `what()`. Its
/// UTF-8 length bounds its UTF-16 length, so only a text that long is counted.
pub fn check_value_size(what: impl FnOnce() -> String, json: &str) -> StoreResult<()> {
  check_units(what, json, MAX_VALUE_UNITS)
}

/// The longest string argument Redis takes by default (`proto-max-bulk-len`, 512 MiB).
pub const REDIS_MAX_BULK: usize = 512 * 1024 * 1024;

/// Refuses, for Redis, JSON text `json` over [`REDIS_MAX_BULK`] bytes of UTF-8 (the
/// server would close the connection on it, and a call safe to resend would be sent again
/// each time), naming it `what()`.
pub fn check_redis_size(what: impl FnOnce() -> String, json: &str) -> StoreResult<()> {
  if json.len() <= REDIS_MAX_BULK {
    return Ok(());
  }
  Err(StoreError::invalid_input(format!(
    "{} is {} bytes of JSON (UTF-8): over Redis's limit of {REDIS_MAX_BULK} bytes on a value \
     (proto-max-bulk-len); nothing was stored",
    what(),
    json.len()
  )))
}

fn check_units(what: impl FnOnce() -> String, json: &str, limit: usize) -> StoreResult<()> {
  if json.len() <= limit {
    return Ok(());
  }
  let units = json.encode_utf16().count();
  if units <= limit {
    return Ok(());
  }
  Err(StoreError::invalid_input(format!(
    "{} is {units} UTF-16 code units of JSON: over {limit}, the longest string a JS runtime can read back; nothing was stored",
    what()
  )))
}

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The JSON types a schema can declare, plus `null` (which no schema type accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
  String,
  Number,
  Bool,
  List,
  Dict,
  Null,
}

impl JsonType {
  /// The type of a schema entry, by its name in the options.
  pub fn from_schema_name(name: &str) -> Option<Self> {
    Some(match name {
      "string" => Self::String,
      "number" => Self::Number,
      "bool" => Self::Bool,
      "list" => Self::List,
      "dict" => Self::Dict,
      _ => return None,
    })
  }

  /// The type of a JSON text (as `JSON.stringify` writes it: no leading whitespace).
  pub fn of(json: &str) -> Option<Self> {
    Some(match json.trim_start().as_bytes().first()? {
      b'"' => Self::String,
      b'-' | b'0'..=b'9' => Self::Number,
      b't' | b'f' => Self::Bool,
      b'[' => Self::List,
      b'{' => Self::Dict,
      b'n' => Self::Null,
      _ => return None,
    })
  }

  pub fn name(self) -> &'static str {
    match self {
      Self::String => "string",
      Self::Number => "number",
      Self::Bool => "bool",
      Self::List => "list",
      Self::Dict => "dict",
      Self::Null => "null",
    }
  }
}

/// Why two values could not be merged.
#[derive(Debug, PartialEq, Eq)]
pub enum MergeError {
  /// The stored value is not a JSON object.
  NotAnObject,
  /// The stored value is not valid JSON.
  Unreadable(String),
}

/// `{...current, ...partial}` as JS computes it: keys keep their first position, later
/// values win, and array-index keys come first in ascending order (JS object order).
/// Values are copied verbatim, so numbers and strings keep their exact text.
pub fn merge_objects(current: &str, partial: &str) -> Result<String, MergeError> {
  if JsonType::of(current) != Some(JsonType::Dict) {
    return Err(MergeError::NotAnObject);
  }
  let mut entries = parse_object(current).map_err(MergeError::Unreadable)?;
  let additions = parse_object(partial).map_err(MergeError::Unreadable)?;
  for (key, value) in additions.list {
    entries.upsert(key, value);
  }
  Ok(write_object(entries.list))
}

/// A JSON object's members as `(key as JSON text, value as JSON text)`, in order: the
/// arguments of the Redis merge script. Keys are written as `JSON.stringify` writes them.
pub fn object_members(json: &str) -> Result<Vec<(String, String)>, String> {
  let members = parse_object(json)?;
  Ok(
    members
      .list
      .into_iter()
      .map(|(key, value)| (key_json(&key), value.get().to_string()))
      .collect(),
  )
}

/// A key as JS holds it: UTF-16 code units, so a key UTF-8 cannot hold (a lone surrogate,
/// written `"\ud800"` by `JSON.stringify`) is kept, and keys compare as in JS whatever
/// their escapes in the text (`"\u0031"` is `"1"`).
type Key = Vec<u16>;

/// A JSON object's members in text order, values raw; a repeated key keeps its first
/// position and its last value (as `JSON.parse` does). `index` finds a key's member, so
/// reading or merging an object of n members is O(n), not O(n²) (an object of 80,000
/// members took 15–23 s to merge one member into).
struct Members {
  list: Vec<(Key, Box<RawValue>)>,
  index: HashMap<Key, usize>,
}

impl Members {
  fn upsert(&mut self, key: Key, value: Box<RawValue>) {
    match self.index.get(&key) {
      Some(&at) => self.list[at].1 = value,
      None => {
        self.index.insert(key.clone(), self.list.len());
        self.list.push((key, value));
      }
    }
  }
}

fn parse_object(json: &str) -> Result<Members, String> {
  serde_json::from_str(json).map_err(|err| err.to_string())
}

/// The code units of a JSON string's text (quoted, valid: serde_json read it).
fn key_units(raw: &str) -> Key {
  let raw = raw.trim();
  let inner = raw
    .strip_prefix('"')
    .and_then(|r| r.strip_suffix('"'))
    .unwrap_or(raw);
  let mut units = Vec::with_capacity(inner.len());
  let mut chars = inner.chars();
  while let Some(c) = chars.next() {
    if c != '\\' {
      let mut buffer = [0u16; 2];
      units.extend_from_slice(c.encode_utf16(&mut buffer));
      continue;
    }
    match chars.next() {
      Some('b') => units.push(0x08),
      Some('f') => units.push(0x0c),
      Some('n') => units.push(0x0a),
      Some('r') => units.push(0x0d),
      Some('t') => units.push(0x09),
      Some('u') => {
        let hex: String = chars.by_ref().take(4).collect();
        units.push(u16::from_str_radix(&hex, 16).unwrap_or(0xfffd));
      }
      // `"`, `\\`, `/`
      Some(other) => units.push(other as u16),
      None => {}
    }
  }
  units
}

/// A key as `JSON.stringify` writes it: `"`, `\\` and control characters escaped (`\n`,
/// `\u001f`), a lone surrogate as `\udXXX`, everything else as it is.
fn key_json(key: &[u16]) -> String {
  let mut out = String::with_capacity(key.len() + 2);
  out.push('"');
  for decoded in char::decode_utf16(key.iter().copied()) {
    match decoded {
      Ok('"') => out.push_str("\\\""),
      Ok('\\') => out.push_str("\\\\"),
      Ok('\u{8}') => out.push_str("\\b"),
      Ok('\u{c}') => out.push_str("\\f"),
      Ok('\n') => out.push_str("\\n"),
      Ok('\r') => out.push_str("\\r"),
      Ok('\t') => out.push_str("\\t"),
      Ok(c) if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
      Ok(c) => out.push(c),
      Err(lone) => out.push_str(&format!("\\u{:04x}", lone.unpaired_surrogate())),
    }
  }
  out.push('"');
  out
}

fn write_object(mut entries: Vec<(Key, Box<RawValue>)>) -> String {
  // Stable: array-index keys first, ascending; the rest keep their order.
  entries.sort_by_key(|(key, _)| array_index(key).map_or((1, 0), |index| (0, index)));
  let mut out = String::from("{");
  for (i, (key, value)) in entries.iter().enumerate() {
    if i > 0 {
      out.push(',');
    }
    out.push_str(&key_json(key));
    out.push(':');
    out.push_str(value.get());
  }
  out.push('}');
  out
}

/// The key as an array index (`"0"`, `"17"`; below 2³² − 1), which JS orders first.
fn array_index(key: &[u16]) -> Option<u64> {
  let key = String::from_utf16(key).ok()?;
  let canonical = key == "0" || (!key.starts_with('0') && !key.is_empty());
  if !canonical || key.len() > 10 || !key.bytes().all(|b| b.is_ascii_digit()) {
    return None;
  }
  key
    .parse::<u64>()
    .ok()
    .filter(|index| *index < u32::MAX as u64)
}

impl<'de> serde::Deserialize<'de> for Members {
  fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
    deserializer.deserialize_map(MembersVisitor)
  }
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
  type Value = Members;

  fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
    formatter.write_str("a JSON object")
  }

  fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
    let mut members = Members {
      list: Vec::new(),
      index: HashMap::new(),
    };
    while let Some((key, value)) = map.next_entry::<Box<RawValue>, Box<RawValue>>()? {
      members.upsert(key_units(key.get()), value);
    }
    Ok(members)
  }
}

#[cfg(test)]
mod tests {
  #[test]
  fn refuses_values_a_js_runtime_could_not_read_back() {
    // (a limit of 4 units stands for V8's 2^29 − 24)
    // 3 bytes of UTF-8 but one UTF-16 unit each: counted in units
    assert!(check_units(|| "v".into(), "\u{20ac}\u{20ac}\u{20ac}\u{20ac}", 4).is_ok());
    let err = check_units(|| "the result of task \"t\"".into(), "aaaaa", 4).unwrap_err();
    assert_eq!(err.code, crate::error::ErrorCode::InvalidInput);
    assert!(
      err
        .message
        .contains("the result of task \"t\" is 5 UTF-16 code units of JSON: over 4"),
      "{}",
      err.message
    );
    assert_eq!(MAX_VALUE_UNITS, 536_870_888);
  }

  use super::*;

  #[test]
  fn types_come_from_the_first_character() {
    assert_eq!(JsonType::of("\"a\""), Some(JsonType::String));
    assert_eq!(JsonType::of("-1.5e3"), Some(JsonType::Number));
    assert_eq!(JsonType::of("false"), Some(JsonType::Bool));
    assert_eq!(JsonType::of("[1]"), Some(JsonType::List));
    assert_eq!(JsonType::of("{}"), Some(JsonType::Dict));
    assert_eq!(JsonType::of("null"), Some(JsonType::Null));
    assert_eq!(JsonType::of(""), None);
  }

  #[test]
  fn merge_is_shallow_and_ordered_as_in_js() {
    let merged = merge_objects(r#"{"a":1,"b":2,"c":3}"#, r#"{"b":20,"d":4}"#).unwrap();
    assert_eq!(merged, r#"{"a":1,"b":20,"c":3,"d":4}"#);
    let nested = merge_objects(r#"{"x":{"y":1,"z":2}}"#, r#"{"x":{"y":5}}"#).unwrap();
    assert_eq!(nested, r#"{"x":{"y":5}}"#);
    let numbers = merge_objects(r#"{"b":1,"5":1}"#, r#"{"2":0.1,"a":1e21}"#).unwrap();
    assert_eq!(numbers, r#"{"2":0.1,"5":1,"b":1,"a":1e21}"#);
    assert_eq!(merge_objects(r#"{"a":1}"#, "{}").unwrap(), r#"{"a":1}"#);
  }

  #[test]
  fn keys_compare_as_in_js_whatever_their_escapes_and_are_written_as_json_stringify_does() {
    // Text another client wrote (Python's json.dumps escapes non-ASCII; `\u0031` is "1").
    let merged = merge_objects(
      r#"{"1":"new","\u0031":"old","caf\u00e9":1}"#,
      r#"{"café":2,"q\"\\":3}"#,
    )
    .unwrap();
    assert_eq!(merged, r#"{"1":"old","café":2,"q\"\\":3}"#);
    let escapes = merge_objects(r#"{"a\/b":1,"\u0007\n":2}"#, r#"{"a/b":3}"#).unwrap();
    assert_eq!(escapes, r#"{"a/b":3,"\u0007\n":2}"#);
  }

  #[test]
  fn merging_into_a_large_object_takes_linear_time() {
    // 200,000 members: about 2·10^10 key comparisons when each lookup was a walk of the
    // list (this test ran for minutes), a fraction of a second with the index.
    let n = 200_000;
    let current = format!(
      "{{{}}}",
      (0..n)
        .map(|i| format!("\"k{i}\":{i}"))
        .collect::<Vec<_>>()
        .join(",")
    );
    let merged = merge_objects(&current, r#"{"k7":"seven","z":1}"#).unwrap();
    assert!(merged
      .starts_with(r#"{"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":"seven","k8":8"#));
    assert!(merged.ends_with(&format!(r#""k{}":{},"z":1}}"#, n - 1, n - 1)));
    // a repeated key keeps its first place and its last value, as JSON.parse does
    assert_eq!(
      merge_objects(r#"{"a":1,"b":2,"a":3}"#, "{}").unwrap(),
      r#"{"a":3,"b":2}"#
    );
  }

  #[test]
  fn keys_stay_as_json_writes_them_lone_surrogates_too() {
    // `JSON.stringify({ '\ud800': 1 })`: a key UTF-8 cannot hold, kept as its JSON text.
    let merged = merge_objects(r#"{"a":1,"\ud800":2}"#, r#"{"\ud800":3,"\udc00":4}"#).unwrap();
    assert_eq!(merged, r#"{"a":1,"\ud800":3,"\udc00":4}"#);
    let members = object_members(r#"{"\ud800":1,"b\n":"\udfff"}"#).unwrap();
    assert_eq!(
      members,
      vec![
        (r#""\ud800""#.to_string(), "1".to_string()),
        (r#""b\n""#.to_string(), r#""\udfff""#.to_string())
      ]
    );
  }

  #[test]
  fn merge_into_a_non_object_fails() {
    assert_eq!(merge_objects("[1]", "{}"), Err(MergeError::NotAnObject));
    assert_eq!(merge_objects("\"s\"", "{}"), Err(MergeError::NotAnObject));
    assert!(matches!(
      merge_objects("{bad", "{}"),
      Err(MergeError::Unreadable(_))
    ));
  }

  #[test]
  fn keys_are_escaped_as_json_stringify_does() {
    let merged = merge_objects("{}", r#"{"q\"\n\u0001":1}"#).unwrap();
    assert_eq!(merged, r#"{"q\"\n\u0001":1}"#);
  }
}
