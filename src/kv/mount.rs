//! KV mounts: their options as JS passes them, validated into [`Mount`]s, and the
//! checks every call makes against its mount (mode, schema, size, entry count).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use napi_derive::napi;
use serde_json::json;

use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::json_value::JsonType;
use crate::options::millis;

/// Default most entries per mount.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;
/// Default largest value, in UTF-8 bytes of its JSON.
pub const DEFAULT_MAX_VALUE_SIZE: u64 = 102_400;
/// How long a counted number of entries is trusted before the mount is counted again.
const COUNT_FRESH_FOR: Duration = Duration::from_secs(1);

/// One mount, as the JS layer passes it (in configuration order, defaults as JSON text).
#[napi(object, object_to_js = false)]
pub struct KvMountSpec {
  pub name: String,
  pub mode: Option<String>,
  pub prefix: Option<String>,
  pub schema: Option<Vec<KvSchemaSpec>>,
  pub max_entries: Option<f64>,
  pub max_value_size: Option<f64>,
  pub ttl: Option<f64>,
}

/// One declared key of a mount, as the JS layer passes it.
#[napi(object, object_to_js = false)]
pub struct KvSchemaSpec {
  pub key: String,
  #[napi(js_name = "type")]
  pub kind: String,
  /// `JSON.stringify(default)`; absent when the default has no JSON form.
  pub default_json: Option<String>,
  pub description: Option<String>,
}

/// What a mount allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
  Read,
  Write,
  ReadWrite,
}

impl Mode {
  fn parse(mount: &str, mode: Option<&str>) -> StoreResult<Self> {
    Ok(match mode {
      None | Some("read-write") => Self::ReadWrite,
      Some("read") => Self::Read,
      Some("write") => Self::Write,
      Some(other) => {
        return Err(StoreError::invalid_input(format!(
          "mount '{mount}': mode must be \"read\", \"write\" or \"read-write\", got \"{other}\""
        )))
      }
    })
  }

  fn name(self) -> &'static str {
    match self {
      Self::Read => "read",
      Self::Write => "write",
      Self::ReadWrite => "read-write",
    }
  }
}

/// A declared key.
#[derive(Debug)]
pub struct SchemaEntry {
  pub key: String,
  pub kind: JsonType,
  pub default_json: String,
  pub description: String,
}

/// A validated mount.
#[derive(Debug)]
pub struct Mount {
  pub name: String,
  pub mode: Mode,
  pub prefix: String,
  /// `None`: open mount; `Some`: declared (possibly empty).
  pub schema: Option<Vec<SchemaEntry>>,
  pub max_entries: u64,
  pub max_value_size: u64,
  pub ttl_ms: Option<u64>,
  /// The last counted number of entries (plus what this process added since) and when
  /// it was counted, and what was reserved while a count ran.
  counted: Mutex<Counted>,
}

impl Mount {
  /// Validates one mount's options.
  pub fn from_spec(spec: KvMountSpec) -> StoreResult<Self> {
    let name = spec.name;
    if name.is_empty() {
      return Err(StoreError::invalid_input("mount names must not be empty"));
    }
    let mode = Mode::parse(&name, spec.mode.as_deref())?;
    let schema = spec
      .schema
      .map(|entries| {
        entries
          .into_iter()
          .map(|e| schema_entry(&name, e))
          .collect()
      })
      .transpose()?;
    let max_entries = positive_whole(&name, "maxEntries", spec.max_entries)?;
    let max_value_size = positive_whole(&name, "maxValueSize", spec.max_value_size)?;
    if let Some(size) =
      max_value_size.filter(|size| *size > crate::json_value::MAX_VALUE_UNITS as u64)
    {
      return Err(StoreError::invalid_input(format!(
        "mount '{name}': `maxValueSize` {size} is over {}, the longest value a JS runtime can read back as one string",
        crate::json_value::MAX_VALUE_UNITS
      )));
    }
    let ttl_ms = millis(&format!("mounts.{name}.ttl"), spec.ttl)?.filter(|ttl| *ttl > 0);
    let prefix = spec.prefix.unwrap_or_else(|| format!("{name}:"));
    if prefix.is_empty() {
      return Err(StoreError::invalid_input(format!(
        "mount '{name}': prefix must not be empty, or clear() and keys() would cover every key of the database"
      )));
    }
    Ok(Self {
      prefix,
      name,
      mode,
      schema,
      max_entries: max_entries.unwrap_or(DEFAULT_MAX_ENTRIES),
      max_value_size: max_value_size.unwrap_or(DEFAULT_MAX_VALUE_SIZE),
      ttl_ms,
      counted: Mutex::new(Counted::default()),
    })
  }

  /// The stored key of `key`.
  pub fn full_key(&self, key: &str) -> String {
    format!("{}{}", self.prefix, key)
  }

  /// Rejects a write on a read-only mount.
  pub fn check_writable(&self, action: &str, key: Option<&str>) -> StoreResult<()> {
    if self.mode == Mode::Read {
      return Err(self.mode_error(ErrorCode::ReadOnly, "read-only", action, key));
    }
    Ok(())
  }

  /// Rejects a read on a write-only mount.
  pub fn check_readable(&self, action: &str, key: Option<&str>) -> StoreResult<()> {
    if self.mode == Mode::Write {
      return Err(self.mode_error(ErrorCode::WriteOnly, "write-only", action, key));
    }
    Ok(())
  }

  fn mode_error(&self, code: ErrorCode, what: &str, action: &str, key: Option<&str>) -> StoreError {
    let target = key.map(|k| format!(" key \"{k}\"")).unwrap_or_default();
    StoreError::new(
      code,
      format!(
        "Mount '{}' is {what} (mode: {}): cannot {action}{target}",
        self.name,
        self.mode.name()
      ),
    )
  }

  /// The schema entry of `key`; on a declared mount an undeclared key is an error.
  pub fn declared(&self, key: &str) -> StoreResult<Option<&SchemaEntry>> {
    let Some(schema) = &self.schema else {
      return Ok(None);
    };
    match schema.iter().find(|entry| entry.key == key) {
      Some(entry) => Ok(Some(entry)),
      None => Err(StoreError::invalid_input(format!(
        "key \"{key}\" not declared in schema (mount '{}')",
        self.name
      ))),
    }
  }

  /// Checks a value's type against the key's declared type, if any.
  pub fn check_type(&self, entry: Option<&SchemaEntry>, key: &str, json: &str) -> StoreResult<()> {
    let Some(entry) = entry else { return Ok(()) };
    let actual = JsonType::of(json).map_or("unknown", JsonType::name);
    if JsonType::of(json) != Some(entry.kind) {
      return Err(StoreError::new(
        ErrorCode::TypeMismatch,
        format!(
          "key \"{key}\" expects {}, got {actual} (mount '{}')",
          entry.kind.name(),
          self.name
        ),
      ));
    }
    Ok(())
  }

  /// Checks a value's size: UTF-8 bytes of its JSON, at most `maxValueSize`.
  pub fn check_size(&self, key: &str, json: &str, merged: bool) -> StoreResult<()> {
    let size = json.len() as u64;
    if size > self.max_value_size {
      let what = if merged { "merged value" } else { "value" };
      return Err(StoreError::new(
        ErrorCode::ValueTooLarge,
        format!(
          "{what} for \"{key}\" exceeds size limit ({size} > {}) (mount '{}')",
          self.max_value_size, self.name
        ),
      ));
    }
    Ok(())
  }

  /// All the checks of a write of `json` to `key`, in the contract's order (the entry
  /// limit, which needs the store, comes after).
  pub fn check_write(&self, action: &str, key: &str, json: &str, merged: bool) -> StoreResult<()> {
    self.check_writable(action, Some(key))?;
    let entry = self.declared(key)?;
    self.check_type(entry, key, json)?;
    self.check_size(key, json, merged)
  }

  /// The error for a write that would take the mount past its entry limit.
  pub fn entry_limit_error(&self, count: u64, new: u64, adding: &str) -> StoreError {
    StoreError::new(
      ErrorCode::EntryLimit,
      format!(
        "mount '{}' exceeds entry limit ({} > {}): cannot add {adding}",
        self.name,
        count + new,
        self.max_entries
      ),
    )
  }

  fn counted(&self) -> std::sync::MutexGuard<'_, Counted> {
    self.counted.lock().unwrap_or_else(|e| e.into_inner())
  }

  /// Reserves room for `new` entries from a fresh count, without asking the store;
  /// `false` when the count is stale or says there is no room (then count again).
  pub fn reserve(&self, new: u64) -> bool {
    let mut counted = self.counted();
    let counted = &mut *counted;
    match counted.last.as_mut() {
      Some((count, at)) if at.elapsed() < COUNT_FRESH_FOR && *count + new <= self.max_entries => {
        *count += new;
        counted.note_reserved(new);
        true
      }
      _ => false,
    }
  }

  /// Reserves room for `new` entries from the last count however old it is (a count
  /// the caller just had made): `None` when nothing was counted yet, `Some(Err(count))`
  /// when there is no room.
  pub fn reserve_counted(&self, new: u64) -> Option<Result<(), u64>> {
    let mut counted = self.counted();
    let counted = &mut *counted;
    let (count, _) = counted.last.as_mut()?;
    if *count + new > self.max_entries {
      return Some(Err(*count));
    }
    *count += new;
    counted.note_reserved(new);
    Some(Ok(()))
  }

  /// A count starts (its `SCAN` is made now): until the guard goes, room reserved is
  /// also kept aside, to be added to what the count finds. The writes that reserved it
  /// were made after the `SCAN`, so it may not see them; without this, the count
  /// replaced their reservations and the mount went past `maxEntries`.
  pub fn begin_count(self: &Arc<Self>) -> CountRunning {
    self.counted().scans += 1;
    CountRunning(self.clone())
  }

  /// Records a count just made (including the `new` entries about to be written), plus
  /// what was reserved while it ran (an over-count when such a write landed before the
  /// `SCAN`: a limit errs on the safe side).
  pub fn record_count(&self, count: u64) {
    let mut counted = self.counted();
    let total = count + counted.reserved_meanwhile;
    counted.last = Some((total, Instant::now()));
  }

  /// Corrects the count by what a write turned out to do (a reserved key that existed,
  /// a delete).
  pub fn adjust_count(&self, delta: i64) {
    let mut counted = self.counted();
    if let Some((count, _)) = counted.last.as_mut() {
      *count = count.saturating_add_signed(delta);
    }
  }

  /// A count could not be made because a node did not answer (a cluster master down,
  /// or not answering while the cluster detects its failure): the last count, with what
  /// this process added and deleted since, is used as a fresh one for another
  /// `COUNT_FRESH_FOR`. `false` when there is none (never counted in this process, or
  /// `clear` forgot it): then the write cannot be checked and rejects.
  pub fn keep_last_count(&self) -> bool {
    match self.counted().last.as_mut() {
      Some((_, at)) => {
        *at = Instant::now();
        true
      }
      None => false,
    }
  }

  /// Forgets the count (after `clear`).
  pub fn forget_count(&self) {
    self.counted().last = None;
  }

  /// `schema()`: the declared keys, in declaration order.
  pub fn schema_info(&self) -> serde_json::Value {
    let entries = self.schema.iter().flatten().map(|entry| {
      json!({ "key": entry.key, "type": entry.kind.name(), "description": entry.description })
    });
    serde_json::Value::Array(entries.collect())
  }

  /// One entry of `mounts()`.
  pub fn info(&self) -> serde_json::Value {
    json!({
      "name": self.name,
      "mode": self.mode.name(),
      "schema": if self.schema.is_some() { "declared" } else { "open" },
      "prefix": self.prefix,
      "maxEntries": self.max_entries,
      "maxValueSize": self.max_value_size,
      "ttl": self.ttl_ms.unwrap_or(0),
    })
  }
}

/// Validates a store's mounts: at least one, unique names, no prefix starting another.
pub fn validate_mounts(specs: Vec<KvMountSpec>) -> StoreResult<Vec<Mount>> {
  if specs.is_empty() {
    return Err(StoreError::invalid_input(
      "option `mounts` must name at least one mount",
    ));
  }
  let mounts = specs
    .into_iter()
    .map(Mount::from_spec)
    .collect::<StoreResult<Vec<_>>>()?;
  for (i, a) in mounts.iter().enumerate() {
    for b in &mounts[i + 1..] {
      if a.name == b.name {
        return Err(StoreError::invalid_input(format!(
          "mount '{}' is configured twice",
          a.name
        )));
      }
      if a.prefix.starts_with(&b.prefix) || b.prefix.starts_with(&a.prefix) {
        return Err(StoreError::invalid_input(format!(
          "mounts '{}' and '{}' have overlapping prefixes (\"{}\", \"{}\"): one would see the other's keys",
          a.name, b.name, a.prefix, b.prefix
        )));
      }
    }
  }
  Ok(mounts)
}

/// The error for a mount name that is not configured.
pub fn unknown_mount(name: &str, mounts: &[std::sync::Arc<Mount>]) -> StoreError {
  let names: Vec<&str> = mounts.iter().map(|m| m.name.as_str()).collect();
  StoreError::new(
    ErrorCode::UnknownMount,
    format!(
      "Mount '{name}' not found. Available mounts: {}",
      names.join(", ")
    ),
  )
}

fn schema_entry(mount: &str, spec: KvSchemaSpec) -> StoreResult<SchemaEntry> {
  let key = spec.key;
  let kind = JsonType::from_schema_name(&spec.kind).ok_or_else(|| {
    StoreError::invalid_input(format!(
      "mount '{mount}': schema key \"{key}\" has type \"{}\"; use string, number, bool, list or dict",
      spec.kind
    ))
  })?;
  let default_json = spec.default_json.ok_or_else(|| {
    StoreError::invalid_input(format!(
      "mount '{mount}': schema key \"{key}\" needs a JSON default of type {}",
      kind.name()
    ))
  })?;
  if JsonType::of(&default_json) != Some(kind) {
    return Err(StoreError::invalid_input(format!(
      "mount '{mount}': the default of schema key \"{key}\" is not a {}: {default_json}",
      kind.name()
    )));
  }
  Ok(SchemaEntry {
    key,
    kind,
    default_json,
    description: spec.description.unwrap_or_default(),
  })
}

fn positive_whole(mount: &str, name: &str, value: Option<f64>) -> StoreResult<Option<u64>> {
  let Some(value) = value else { return Ok(None) };
  match crate::options::whole_in(value, 1, 9_007_199_254_740_991) {
    Some(whole) => Ok(Some(whole)),
    None => Err(StoreError::invalid_input(format!(
      "mount '{mount}': `{name}` must be a whole number of at least 1, got {}",
      crate::options::js_number(value)
    ))),
  }
}

/// A mount's entry count, as this process knows it.
#[derive(Debug, Default)]
struct Counted {
  /// The last count (plus what this process reserved since) and when it was made.
  last: Option<(u64, Instant)>,
  /// Counts under way.
  scans: u32,
  /// Room reserved since the first count under way started.
  reserved_meanwhile: u64,
}

impl Counted {
  fn note_reserved(&mut self, new: u64) {
    if self.scans > 0 {
      self.reserved_meanwhile += new;
    }
  }
}

/// A count under way (`Mount::begin_count`); its end, answered or failed, is the drop.
pub struct CountRunning(Arc<Mount>);

impl Drop for CountRunning {
  fn drop(&mut self) {
    let mut counted = self.0.counted();
    counted.scans = counted.scans.saturating_sub(1);
    if counted.scans == 0 {
      counted.reserved_meanwhile = 0;
    }
  }
}
