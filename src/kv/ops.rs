//! The KV calls as chains of keyspace batches ([`Step`]s), written once for every
//! backend. Single-key calls are one round trip; a write that may add keys is one
//! round trip while a count less than a second old says there is room, else the JS
//! layer runs it in [`Phase`]s around one shared count of the mount; `merge` is one
//! atomic merge on the store.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::mount::Mount;
use crate::command::{Batch, Command, KeyKind, MergeOutcome, Reply, Resend, Step};
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::glob;
use crate::output::Output;

/// Keys asked per `SCAN` page (a hint to Redis; a row limit on SQLite).
const SCAN_COUNT: u32 = 1_000;
/// Keys per `MGET` or `UNLINK` command.
const CHUNK: usize = 1_000;

/// `GET`, then `answer(stored JSON or None)`.
pub fn get(
  mount: Arc<Mount>,
  key: &str,
  answer: impl FnOnce(Option<String>) -> StoreResult<Output> + Send + 'static,
) -> Step {
  let full_key = mount.full_key(key);
  let batch = Batch::one(Command::Get {
    key: full_key.clone(),
  });
  Step::then(batch, move |replies| {
    Step::Done(text(first(replies), &full_key).and_then(answer))
  })
}

/// Which part of a write that may add keys a call runs. A new key needs room under
/// the mount's entry limit; while the mount's count is fresh, a write reserves from it
/// and is one round trip. Otherwise the JS layer (`index.js`) runs the write in parts,
/// keeping the call's keys busy meanwhile (later calls on them wait), and counts the
/// mount once for every write that needs it (`count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
  /// The whole write when the count is fresh ([`Write::Whole`]); else only what needs
  /// no room ([`Write::Staged`]): the update of a stored key (set, merge), or how many
  /// of the keys are new (setMany).
  First,
  /// The write of `n` new entries with room from a fresh count; [`Write::NeedsCount`]
  /// when the count is stale.
  New(u64),
  /// The write of `n` new entries with room from the count just made, however old.
  Counted(u64),
}

impl Phase {
  /// From the JS arguments: no phase or `0`: [`Phase::First`]; `1`: `New(n)`; `2`:
  /// `Counted(n)`.
  pub fn from_js(phase: Option<u32>, new: u64) -> StoreResult<Self> {
    match phase {
      None | Some(0) => Ok(Self::First),
      Some(1) => Ok(Self::New(new)),
      Some(2) => Ok(Self::Counted(new)),
      Some(other) => Err(StoreError::invalid_input(format!(
        "unknown write phase {other}"
      ))),
    }
  }
}

/// What a write that may add keys sends (see [`Phase`]).
pub enum Write {
  /// The whole write.
  Whole(Step),
  /// The part that needs no room; the JS layer continues with [`Phase::New`].
  Staged(Step),
  /// Nothing: the count is stale; the JS layer counts, then continues with
  /// [`Phase::Counted`].
  NeedsCount,
}

/// `set`: the checks are done; writes `json`, making room for a new key. Staged: the
/// update of a stored key, resolving with whether it was stored.
pub fn set(mount: Arc<Mount>, key: &str, json: String, ttl_ms: Option<u64>, phase: Phase) -> Write {
  let full_key = mount.full_key(key);
  match phase {
    Phase::First if mount.reserve(1) => Write::Whole(set_counted(mount, full_key, json, ttl_ms)),
    Phase::First => {
      let update = Batch::one(Command::SetIf {
        key: full_key,
        value: json,
        ttl_ms,
        when: crate::command::Condition::Exists,
      });
      Write::Staged(Step::then(update, |replies| {
        Step::Done(Ok(Output::Bool(first(replies) == Reply::Ok)))
      }))
    }
    Phase::New(_) if mount.reserve(1) => Write::Whole(set_counted(mount, full_key, json, ttl_ms)),
    Phase::New(_) => Write::NeedsCount,
    Phase::Counted(_) => {
      let adding = key_named(&mount, &full_key);
      Write::Whole(counted_room(mount.clone(), 1, adding, move || {
        set_counted(mount, full_key, json, ttl_ms)
      }))
    }
  }
}

/// Writes with `SET ... GET`, room for one new entry already counted; gives the room
/// back when the key turns out to have existed.
fn set_counted(mount: Arc<Mount>, full_key: String, json: String, ttl_ms: Option<u64>) -> Step {
  let batch = Batch::one(Command::SetGet {
    key: full_key,
    value: json,
    ttl_ms,
  });
  Step::then(batch, move |replies| {
    if first(replies) != Reply::Nil {
      mount.adjust_count(-1);
    }
    done_true()
  })
}

/// `setMany`: the checks are done; writes every entry in one atomic batch. Staged:
/// resolves with how many of the keys are not stored.
pub fn set_many(
  mount: Arc<Mount>,
  entries: Vec<(String, String)>,
  ttl_ms: Option<u64>,
  phase: Phase,
) -> Write {
  if entries.is_empty() {
    return Write::Whole(done_true());
  }
  let full_keys: Vec<String> = entries.iter().map(|(k, _)| mount.full_key(k)).collect();
  let write = move |full_keys: Vec<String>, entries: Vec<(String, String)>| {
    let commands = full_keys
      .into_iter()
      .zip(entries)
      .map(|(key, (_, value))| Command::Set { key, value, ttl_ms })
      .collect();
    Step::then(Batch::atomic(commands), |_| done_true())
  };
  match phase {
    Phase::First if mount.reserve(full_keys.len() as u64) => {
      // Room for every key was reserved: `SET ... GET` says which existed.
      let commands = full_keys
        .into_iter()
        .zip(entries)
        .map(|(key, (_, value))| Command::SetGet { key, value, ttl_ms })
        .collect();
      Write::Whole(Step::then(Batch::atomic(commands), move |replies| {
        let existed = replies.iter().filter(|r| **r != Reply::Nil).count() as i64;
        mount.adjust_count(-existed);
        done_true()
      }))
    }
    Phase::First => {
      let exists = full_keys
        .into_iter()
        .map(|key| Command::Exists { key })
        .collect();
      Write::Staged(Step::then(Batch::many(exists), |replies| {
        let new = replies.iter().filter(|r| **r == Reply::Int(0)).count() as i64;
        Step::Done(Ok(Output::Int(new)))
      }))
    }
    Phase::New(0) | Phase::Counted(0) => Write::Whole(write(full_keys, entries)),
    Phase::New(new) if mount.reserve(new) => Write::Whole(write(full_keys, entries)),
    Phase::New(_) => Write::NeedsCount,
    Phase::Counted(new) => {
      let adding = format!("{new} new keys");
      Write::Whole(counted_room(mount, new, adding, move || {
        write(full_keys, entries)
      }))
    }
  }
}

/// `count`: counts the mount's entries (a `SCAN`) and records the count.
pub fn count(mount: Arc<Mount>) -> Step {
  COUNTS.fetch_add(1, Ordering::Relaxed);
  let pattern = format!("{}*", glob::escape(&mount.prefix));
  let running = mount.begin_count();
  scan(pattern, move |keys| {
    let count = keys.len() as u64;
    mount.record_count(count);
    drop(running);
    Step::Done(Ok(Output::Int(count as i64)))
  })
}

/// Mount counts started in this process (`debugKvCounts`).
static COUNTS: AtomicU64 = AtomicU64::new(0);

/// How many times a mount was counted in this process so far.
pub fn count_runs() -> u64 {
  COUNTS.load(Ordering::Relaxed)
}

/// Runs `then` with room for `new` entries reserved from the count just made; rejects
/// with `ENTRY_LIMIT` when it has no room; counts first when there is no count (a
/// `clear` forgot it).
fn counted_room(
  mount: Arc<Mount>,
  new: u64,
  adding: String,
  then: impl FnOnce() -> Step + Send + 'static,
) -> Step {
  match mount.reserve_counted(new) {
    Some(Ok(())) => then(),
    Some(Err(count)) => Step::Done(Err(mount.entry_limit_error(count, new, &adding))),
    None => with_room(mount, new, adding, then),
  }
}

/// Counts the mount, then runs `then` if it has room for `new` more entries, else
/// rejects with `ENTRY_LIMIT`.
fn with_room(
  mount: Arc<Mount>,
  new: u64,
  adding: String,
  then: impl FnOnce() -> Step + Send + 'static,
) -> Step {
  COUNTS.fetch_add(1, Ordering::Relaxed);
  let pattern = format!("{}*", glob::escape(&mount.prefix));
  let running = mount.begin_count();
  scan(pattern, move |keys| {
    let count = keys.len() as u64;
    if count + new > mount.max_entries {
      return Step::Done(Err(mount.entry_limit_error(count, new, &adding)));
    }
    mount.record_count(count + new);
    drop(running);
    then()
  })
}

/// `merge`: the checks of `partial` are done. One atomic merge on the store (a script
/// on Redis), so concurrent merges never conflict; a new key first needs room. Staged:
/// the merge into a stored object, resolving with `null` when the key is missing.
pub fn merge(
  mount: Arc<Mount>,
  key: String,
  partial: String,
  ttl_ms: Option<u64>,
  phase: Phase,
) -> Write {
  let create = match phase {
    Phase::First => mount.reserve(1),
    Phase::New(_) if mount.reserve(1) => {
      return Write::Whole(create_by_merge(mount, key, partial, ttl_ms));
    }
    Phase::New(_) => return Write::NeedsCount,
    Phase::Counted(_) => {
      let adding = format!("key \"{key}\"");
      return Write::Whole(counted_room(mount.clone(), 1, adding, move || {
        create_by_merge(mount, key, partial, ttl_ms)
      }));
    }
  };
  let command = Command::Merge {
    key: mount.full_key(&key),
    partial,
    ttl_ms,
    max_size: mount.max_value_size,
    create,
  };
  let step = Step::then(Batch::one(command), move |replies| {
    let outcome = match first(replies) {
      Reply::Merge(outcome) => outcome,
      other => return unexpected_reply("merge", &other),
    };
    if create && outcome != (MergeOutcome::Merged { created: true }) {
      mount.adjust_count(-1);
    }
    match outcome {
      MergeOutcome::Merged { .. } => done_true(),
      MergeOutcome::Missing => Step::Done(Ok(Output::Text(None))),
      other => Step::Done(Err(merge_error(&mount, &key, other))),
    }
  });
  if create {
    Write::Whole(step)
  } else {
    Write::Staged(step)
  }
}

/// The merge of a missing key, once the mount has room: `partial` becomes the value
/// (or is merged into one a concurrent writer made meanwhile).
fn create_by_merge(mount: Arc<Mount>, key: String, partial: String, ttl_ms: Option<u64>) -> Step {
  let command = Command::Merge {
    key: mount.full_key(&key),
    partial,
    ttl_ms,
    max_size: mount.max_value_size,
    create: true,
  };
  Step::then(Batch::one(command), move |replies| match first(replies) {
    Reply::Merge(MergeOutcome::Merged { created }) => {
      if !created {
        mount.adjust_count(-1);
      }
      done_true()
    }
    Reply::Merge(other) => {
      mount.adjust_count(-1);
      Step::Done(Err(merge_error(&mount, &key, other)))
    }
    other => unexpected_reply("merge", &other),
  })
}

fn merge_error(mount: &Mount, key: &str, outcome: MergeOutcome) -> StoreError {
  match outcome {
    MergeOutcome::TooLarge(size) => StoreError::new(
      ErrorCode::ValueTooLarge,
      format!(
        "merged value for \"{key}\" exceeds size limit ({size} > {}) (mount '{}')",
        mount.max_value_size, mount.name
      ),
    ),
    MergeOutcome::NotAnObject => StoreError::invalid_input(format!(
      "Cannot merge into non-dict value at key \"{key}\" (mount '{}')",
      mount.name
    )),
    _ => StoreError::new(
      ErrorCode::CorruptData,
      format!(
        "stored JSON at key \"{}\" is not a valid JSON object",
        mount.full_key(key)
      ),
    ),
  }
}

fn unexpected_reply(what: &str, reply: &Reply) -> Step {
  Step::Done(Err(StoreError::new(
    ErrorCode::Unavailable,
    format!("unexpected {what} reply: {reply:?}"),
  )))
}

/// The mount's stored keys (prefix stripped) matching the glob `pattern` over the key.
pub fn keys(mount: Arc<Mount>, pattern: &str) -> Step {
  let full_pattern = format!("{}{}", glob::escape(&mount.prefix), pattern);
  scan(full_pattern, move |keys| {
    let stripped = keys
      .into_iter()
      .map(|key| key[mount.prefix.len()..].to_string())
      .collect();
    Step::Done(Ok(Output::Strings(stripped)))
  })
}

/// Every stored entry whose key starts with `key_prefix` (literally), as flattened
/// `[key, json, ...]` pairs.
pub fn entries_by_prefix(mount: Arc<Mount>, key_prefix: &str) -> Step {
  let pattern = format!("{}*", glob::escape(&mount.full_key(key_prefix)));
  scan(pattern, move |keys| {
    let keys: Vec<String> = keys.into_iter().collect();
    values_of(mount, keys)
  })
}

/// The stored values of `full_keys` (one round trip: `MGET`s of up to 1,000 keys),
/// as flattened `[key, json, ...]` pairs with the prefix stripped; missing keys left out.
pub fn values_of(mount: Arc<Mount>, full_keys: Vec<String>) -> Step {
  if full_keys.is_empty() {
    return Step::Done(Ok(Output::Strings(Vec::new())));
  }
  Step::then(mget_batch(&full_keys), move |replies| {
    let mut pairs = Vec::new();
    for (full_key, value) in full_keys.iter().zip(mget_values(replies)) {
      match value.map(|bytes| utf8_value(bytes, full_key)).transpose() {
        Ok(Some(json)) => {
          pairs.push(full_key[mount.prefix.len()..].to_string());
          pairs.push(json);
        }
        Ok(None) => {}
        Err(err) => return Step::Done(Err(err)),
      }
    }
    Step::Done(Ok(Output::Strings(pairs)))
  })
}

/// The stored values of `full_keys`, in order, `None` where missing (`getMany`: the
/// caller knows the keys, so only the values cross to JS).
pub fn values(full_keys: Vec<String>) -> Step {
  if full_keys.is_empty() {
    return Step::Done(Ok(Output::Texts(Vec::new())));
  }
  Step::then(mget_batch(&full_keys), move |replies| {
    let values = full_keys
      .iter()
      .zip(mget_values(replies))
      .map(|(full_key, value)| value.map(|bytes| utf8_value(bytes, full_key)).transpose())
      .collect::<StoreResult<Vec<_>>>();
    Step::Done(values.map(Output::Texts))
  })
}

fn mget_batch(full_keys: &[String]) -> Batch {
  let commands = full_keys
    .chunks(CHUNK)
    .map(|chunk| Command::MGet {
      keys: chunk.to_vec(),
    })
    .collect();
  Batch::many(commands)
}

fn mget_values(replies: Vec<Reply>) -> impl Iterator<Item = Option<Vec<u8>>> {
  replies.into_iter().flat_map(|reply| match reply {
    Reply::Values(values) => values,
    _ => Vec::new(),
  })
}

fn utf8_value(bytes: Vec<u8>, full_key: &str) -> StoreResult<String> {
  String::from_utf8(bytes).map_err(|_| not_utf8(full_key))
}

/// Deletes `full_keys` (`UNLINK`s of up to 1,000 keys, one round trip); resolves with
/// how many existed. Never sent twice: a second `UNLINK` after a first that landed would
/// count fewer, so a dropped connection rejects the call with `UNAVAILABLE`.
pub fn delete_keys(mount: Arc<Mount>, full_keys: Vec<String>) -> Step {
  unlink(full_keys, Resend::Never, move |deleted| {
    mount.adjust_count(-deleted);
    Step::Done(Ok(Output::Int(deleted)))
  })
}

/// `UNLINK`s `full_keys`, then `then(how many existed)`; `resend` says whether that
/// count matters (a resend after a first run that landed counts fewer).
fn unlink(
  full_keys: Vec<String>,
  resend: Resend,
  then: impl FnOnce(i64) -> Step + Send + 'static,
) -> Step {
  if full_keys.is_empty() {
    return then(0);
  }
  let commands = full_keys
    .chunks(CHUNK)
    .map(|chunk| Command::Unlink {
      keys: chunk.to_vec(),
    })
    .collect();
  let mut batch = Batch::many(commands);
  batch.resend = resend;
  Step::then(batch, move |replies| {
    let deleted = replies
      .iter()
      .map(|reply| match reply {
        Reply::Int(n) => *n,
        _ => 0,
      })
      .sum();
    then(deleted)
  })
}

/// `clear`: deletes every entry of the mount (and only of it) and writes the schema's
/// defaults, in one batch: one transaction on SQLite, memory and Postgres, one
/// `MULTI`/`EXEC` on Redis (per slot on a cluster), so a call that fails (or times out)
/// never leaves the mount emptied without its defaults.
pub fn clear(mount: Arc<Mount>) -> Step {
  let pattern = format!("{}*", glob::escape(&mount.prefix));
  scan(pattern, move |keys| {
    let keys: Vec<String> = keys.into_iter().collect();
    let mut commands: Vec<Command> = keys
      .chunks(CHUNK)
      .map(|chunk| Command::Unlink {
        keys: chunk.to_vec(),
      })
      .collect();
    let deletes = commands.len();
    commands.extend(mount.schema.iter().flatten().map(|entry| Command::Set {
      key: mount.full_key(&entry.key),
      value: entry.default_json.clone(),
      ttl_ms: mount.ttl_ms,
    }));
    // Forgotten before (a failed batch may have applied part, on a cluster) and after
    // (a count made while the batch ran saw the entries it deleted).
    mount.forget_count();
    if commands.is_empty() {
      return done_true();
    }
    // Deletes alone need no `MULTI`: a batch of them is applied whole on the embedded
    // stores and Postgres, and sending the `UNLINK`s again is safe (the count is not used).
    let batch = match deletes == commands.len() {
      true => Batch::many(commands),
      false => Batch::atomic(commands),
    };
    Step::then(batch, move |_| {
      mount.forget_count();
      done_true()
    })
  })
}

/// Every string key matching `pattern` (a full-key glob), each once, sorted: a `SCAN`
/// loop, one page per round trip.
fn scan(pattern: String, then: impl FnOnce(BTreeSet<String>) -> Step + Send + 'static) -> Step {
  let walk = ScanWalk {
    pattern,
    found: BTreeSet::new(),
    cursors: HashSet::new(),
    then: Box::new(then),
  };
  scan_page("0".to_string(), walk)
}

type ScanDone = Box<dyn FnOnce(BTreeSet<String>) -> Step + Send>;

/// A `SCAN` loop under way: what it found, and the cursors the server gave so far.
struct ScanWalk {
  pattern: String,
  found: BTreeSet<String>,
  /// A server's cursors never repeat within one walk (Redis's reverse-binary cursor only
  /// moves on): one given twice (a proxy or server that is not Redis) would make the
  /// listing go round forever, each page within `commandTimeout`.
  cursors: HashSet<String>,
  then: ScanDone,
}

fn scan_page(cursor: String, mut walk: ScanWalk) -> Step {
  let batch = Batch::one(Command::Scan {
    cursor,
    pattern: walk.pattern.clone(),
    count: SCAN_COUNT,
    kind: Some(KeyKind::String),
  });
  Step::then(batch, move |replies| match first(replies) {
    Reply::Scan { cursor, keys } => {
      walk.found.extend(keys);
      if cursor == "0" {
        (walk.then)(walk.found)
      } else if !walk.cursors.insert(cursor.clone()) {
        Step::Done(Err(StoreError::new(
          ErrorCode::Unavailable,
          format!(
            "the server answered SCAN with cursor {cursor} a second time in one listing, \
             so the listing would never end (a proxy or server that does not iterate as Redis does)"
          ),
        )))
      } else {
        scan_page(cursor, walk)
      }
    }
    other => unexpected_reply("SCAN", &other),
  })
}

/// The first reply of a batch.
pub fn first(replies: Vec<Reply>) -> Reply {
  replies.into_iter().next().unwrap_or(Reply::Nil)
}

/// A stored value as text (`None` when missing).
fn text(reply: Reply, full_key: &str) -> StoreResult<Option<String>> {
  match reply {
    Reply::Bytes(bytes) => utf8_value(bytes, full_key).map(Some),
    _ => Ok(None),
  }
}

fn not_utf8(full_key: &str) -> StoreError {
  StoreError::new(
    ErrorCode::CorruptData,
    format!("the value at key \"{full_key}\" is not UTF-8 text, so not JSON"),
  )
}

/// `key "k"` for a full key of `mount`.
fn key_named(mount: &Mount, full_key: &str) -> String {
  format!("key \"{}\"", &full_key[mount.prefix.len()..])
}

fn done_true() -> Step {
  Step::Done(Ok(Output::Bool(true)))
}
