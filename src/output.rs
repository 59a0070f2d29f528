//! What a store call resolves with, as one type every backend can hand back.

use napi::bindgen_prelude::{ToNapiValue, TypeName};
use napi::{sys, Either, ValueType};

/// The resolved value of a store call.
pub enum Output {
  /// `undefined` (writes).
  Undefined,
  /// A boolean (in-progress checks, claims).
  Bool(bool),
  /// JSON text of one result, or `null` when there is none.
  Text(Option<String>),
  /// All results: one JSON object's text, or `[taskId, json, ...]` when one is not JSON.
  Results(Either<String, Vec<String>>),
  /// A list of strings: keys, or flattened `[key, json, key, json, ...]` pairs.
  Strings(Vec<String>),
  /// A count or a duration in ms.
  Int(i64),
  /// JSON texts, `null` where there is none.
  Texts(Vec<Option<String>>),
  /// One execution, for tools.
  Execution(crate::inspector::ExecutionInfo),
}

impl TypeName for Output {
  fn type_name() -> &'static str {
    "Output"
  }

  fn value_type() -> ValueType {
    ValueType::Unknown
  }
}

impl ToNapiValue for Output {
  unsafe fn to_napi_value(env: sys::napi_env, value: Self) -> napi::Result<sys::napi_value> {
    match value {
      Output::Undefined => <()>::to_napi_value(env, ()),
      Output::Bool(b) => bool::to_napi_value(env, b),
      Output::Text(text) => Option::<String>::to_napi_value(env, text),
      Output::Results(results) => Either::to_napi_value(env, results),
      Output::Strings(strings) => Vec::<String>::to_napi_value(env, strings),
      Output::Int(n) => i64::to_napi_value(env, n),
      Output::Texts(texts) => Vec::<Option<String>>::to_napi_value(env, texts),
      Output::Execution(info) => crate::inspector::ExecutionInfo::to_napi_value(env, info),
    }
  }
}
