//! Store commands in Redis terms, for every Redis driver: a batch's RESP encoding
//! (`MULTI`/`EXEC` when atomic), each command as a redis-rs `Cmd` (the merge as a Lua
//! script), and each reply decoded into the keyspace's [`Reply`].

use redis::Value;

use crate::command::{Command, Condition, MergeOutcome, Reply};
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::json_value;

/// Appends the RESP encoding of a batch to `out` (`MULTI` ... `EXEC` when atomic),
/// after `ASKING` when `asking` (a Redis Cluster's `ASK` redirect:
/// the node the slot is migrating to takes the batch, a transaction included, since the
/// flag lasts until `EXEC`).
pub(super) fn pack(commands: &[Command], atomic: bool, asking: bool, out: &mut Vec<u8>) {
  if asking {
    redis::cmd("ASKING").write_packed_command(out);
  }
  if atomic {
    redis::cmd("MULTI").write_packed_command(out);
  }
  for command in commands {
    to_redis(command).write_packed_command(out);
  }
  if atomic {
    redis::cmd("EXEC").write_packed_command(out);
  }
}

pub(super) fn to_redis(command: &Command) -> redis::Cmd {
  match command {
    Command::Get { key } => redis::cmd("GET").arg(key).clone(),
    Command::Set { key, value, ttl_ms } => set(key, value, *ttl_ms),
    Command::HGet { key, field } => redis::cmd("HGET").arg(key).arg(field).clone(),
    Command::HGetAll { key } => redis::cmd("HGETALL").arg(key).clone(),
    Command::HSet { key, field, value } => {
      redis::cmd("HSET").arg(key).arg(field).arg(value).clone()
    }
    Command::HSetNx { key, field, value } => {
      redis::cmd("HSETNX").arg(key).arg(field).arg(value).clone()
    }
    Command::HSetNxExpire {
      key,
      field,
      value,
      ttl_ms,
    } => redis::cmd("EVAL")
      .arg(HSETNX_EXPIRE)
      .arg(1)
      .arg(key)
      .arg(field)
      .arg(value)
      .arg(*ttl_ms)
      .clone(),
    Command::HDel { key, field } => redis::cmd("HDEL").arg(key).arg(field).clone(),
    Command::PExpire { key, ttl_ms } => redis::cmd("PEXPIRE").arg(key).arg(*ttl_ms).clone(),
    Command::Del { keys } => redis::cmd("DEL").arg(keys).clone(),
    Command::Unlink { keys } => redis::cmd("UNLINK").arg(keys).clone(),
    Command::Exists { key } => redis::cmd("EXISTS").arg(key).clone(),
    Command::PTtl { key } => redis::cmd("PTTL").arg(key).clone(),
    Command::MGet { keys } => redis::cmd("MGET").arg(keys).clone(),
    Command::SetIf {
      key,
      value,
      ttl_ms,
      when,
    } => {
      let mut cmd = set(key, value, *ttl_ms);
      cmd.arg(match when {
        Condition::Missing => "NX",
        Condition::Exists => "XX",
      });
      cmd
    }
    Command::Merge {
      key,
      partial,
      ttl_ms,
      max_size,
      create,
    } => {
      let mut cmd = redis::cmd("EVAL");
      cmd.arg(MERGE).arg(1).arg(key);
      cmd.arg(ttl_ms.map(|ttl| ttl.to_string()).unwrap_or_default());
      cmd.arg(*max_size).arg(if *create { "1" } else { "0" });
      // The partial was checked to be an object; members of one that is not are none.
      for (member, value) in json_value::object_members(partial).unwrap_or_default() {
        cmd.arg(member).arg(value);
      }
      cmd
    }
    Command::Scan {
      cursor,
      pattern,
      count,
      kind,
    } => {
      let mut cmd = redis::cmd("SCAN");
      cmd
        .arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(*count);
      if let Some(kind) = kind {
        cmd.arg("TYPE").arg(kind.as_str());
      }
      cmd
    }
    operation => unreachable!("{operation:?} is lowered by redis_ops before it is sent"),
  }
}

/// `SET key value [PX ttl]`.
fn set(key: &str, value: &str, ttl_ms: Option<u64>) -> redis::Cmd {
  let mut cmd = redis::cmd("SET");
  cmd.arg(key).arg(value);
  if let Some(ttl) = ttl_ms {
    cmd.arg("PX").arg(ttl);
  }
  cmd
}

/// `HSETNX KEYS[1] ARGV[1] ARGV[2]`, then `PEXPIRE KEYS[1] ARGV[3]` only when the field
/// was created: a claim that lost writes nothing (a TTL refreshed by every losing claim
/// would keep a dead worker's mark alive). Replies 1 or 0; an error of `HSETNX`
/// (`WRONGTYPE`) is the script's reply as the server gave it.
const HSETNX_EXPIRE: &str = r#"
local created = redis.pcall('HSETNX', KEYS[1], ARGV[1], ARGV[2])
if type(created) == 'table' and created.err then return created end
if created == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return created
"#;

/// Shallow-merges an object into the JSON object at KEYS[1], atomically, on the JSON
/// text (values are kept verbatim): `json_value::merge_objects` in Lua. ARGV: the TTL
/// in ms ('' keeps the key's), the largest size, '1' to create a missing key, then the
/// partial's members as (key as JSON text, value as JSON text) pairs. Replies
/// `{'merged', created}`, `{'missing'}`, `{'not-object'}`, `{'too-large', size}` or
/// `{'unreadable'}`; writes only on 'merged'.
const MERGE: &str = r#"
local current = redis.call('GET', KEYS[1])
if not current and ARGV[3] ~= '1' then return {'missing'} end
local names, values, slot = {}, {}, {}
local function put(name, value)
  local i = slot[name]
  if i then values[i] = value else
    names[#names + 1] = name; values[#values + 1] = value; slot[name] = #names
  end
end
local function string_end(s, i)
  while true do
    local q = string.find(s, '["\\%z\1-\31]', i)
    if not q then error('unterminated string') end
    local c = string.sub(s, q, q)
    if c == '"' then return q end
    if c ~= '\\' then error('control character in a string') end
    local e = string.sub(s, q + 1, q + 1)
    if e == 'u' then
      if not string.find(s, '^%x%x%x%x', q + 2) then error('bad escape') end
      i = q + 6
    elseif string.find(e, '^["\\/bfnrt]$') then
      i = q + 2
    else
      error('bad escape')
    end
  end
end
local function utf8_char(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
    0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end
local escaped = {[8] = '\\b', [12] = '\\f', [10] = '\\n', [13] = '\\r', [9] = '\\t', [34] = '\\"', [92] = '\\\\'}
local escapes = {b = 8, f = 12, n = 10, r = 13, t = 9, ['"'] = 34, ['\\'] = 92, ['/'] = 47}
-- One UTF-16 code unit (not a surrogate) as JSON.stringify writes it.
local function unit_text(u)
  if escaped[u] then return escaped[u] end
  if u < 0x20 then return string.format('\\u%04x', u) end
  return utf8_char(u)
end
-- A key's JSON text (quoted, valid) as JSON.stringify writes it (json_value::key_json),
-- so keys compare as JS compares them whatever their escapes ("caf\u00e9" is "café").
local function canonical(raw)
  if not string.find(raw, '\\', 1, true) then return raw end
  local out, i, n = {}, 2, #raw - 1
  while i <= n do
    local q = string.find(raw, '\\', i, true)
    if not q or q > n then out[#out + 1] = string.sub(raw, i, n); break end
    out[#out + 1] = string.sub(raw, i, q - 1)
    local e = string.sub(raw, q + 1, q + 1)
    if e == 'u' then
      local u = tonumber(string.sub(raw, q + 2, q + 5), 16)
      i = q + 6
      if u >= 0xD800 and u <= 0xDBFF and string.sub(raw, i, i + 1) == '\\u' then
        local low = tonumber(string.sub(raw, i + 2, i + 5), 16)
        if low and low >= 0xDC00 and low <= 0xDFFF then
          out[#out + 1] = utf8_char(0x10000 + (u - 0xD800) * 1024 + (low - 0xDC00))
          i = i + 6
          u = nil
        end
      end
      if u and u >= 0xD800 and u <= 0xDFFF then out[#out + 1] = string.format('\\u%04x', u)
      elseif u then out[#out + 1] = unit_text(u) end
    else
      out[#out + 1] = unit_text(escapes[e])
      i = q + 2
    end
  end
  return '"' .. table.concat(out) .. '"'
end
local function skip_space(s, i) return string.find(s, '[^ \t\n\r]', i) end
local function number_end(s, i)
  local j = i
  if string.sub(s, j, j) == '-' then j = j + 1 end
  local c = string.sub(s, j, j)
  if c == '0' then j = j + 1
  elseif string.find(c, '^[1-9]$') then local _, e = string.find(s, '^%d+', j); j = e + 1
  else error('bad number') end
  if string.sub(s, j, j) == '.' then
    local _, e = string.find(s, '^%d+', j + 1)
    if not e then error('bad number') end
    j = e + 1
  end
  c = string.sub(s, j, j)
  if c == 'e' or c == 'E' then
    j = j + 1
    c = string.sub(s, j, j)
    if c == '+' or c == '-' then j = j + 1 end
    local _, e = string.find(s, '^%d+', j)
    if not e then error('bad number') end
    j = e + 1
  end
  return j - 1
end
local function scalar_end(s, i)
  local c = string.sub(s, i, i)
  if c == '"' then return string_end(s, i + 1) end
  if c == '-' or string.find(c, '^%d$') then return number_end(s, i) end
  for _, word in ipairs({'true', 'false', 'null'}) do
    if string.sub(s, i, i + #word - 1) == word then return i + #word - 1 end
  end
  error('bad value')
end
local function after_key(s, j)
  if not j or string.sub(s, j, j) ~= '"' then error('bad key') end
  local m = skip_space(s, string_end(s, j + 1) + 1)
  if not m or string.sub(s, m, m) ~= ':' then error('bad member') end
  return skip_space(s, m + 1)
end
-- Whether every byte of s at 0x80 or above is part of a well-formed UTF-8 sequence
-- (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF).
local function check_utf8(s)
  local i = string.find(s, '[\128-\255]')
  while i do
    local c = string.byte(s, i)
    local n, low, high
    if c >= 0xC2 and c <= 0xDF then n = 1
    elseif c >= 0xE0 and c <= 0xEF then n = 2
    elseif c >= 0xF0 and c <= 0xF4 then n = 3
    else error('not UTF-8') end
    low, high = 0x80, 0xBF
    if c == 0xE0 then low = 0xA0 elseif c == 0xED then high = 0x9F
    elseif c == 0xF0 then low = 0x90 elseif c == 0xF4 then high = 0x8F end
    for k = 1, n do
      local d = string.byte(s, i + k)
      if not d or d < low or d > high then error('not UTF-8') end
      low, high = 0x80, 0xBF
    end
    i = string.find(s, '[\128-\255]', i + n + 1)
  end
end
-- Whether s is one JSON value and nothing else (RFC 8259), without recursion: the
-- stored text is another client's as much as ours, and a merge must not keep or build
-- on text that is no JSON (SQLite and Postgres parse it whole).
local function check_json(s)
  local open = {}
  local i = skip_space(s, 1)
  while true do
    if not i then error('unexpected end') end
    local c = string.sub(s, i, i)
    local last
    if c == '{' or c == '[' then
      local j = skip_space(s, i + 1)
      if not j then error('unexpected end') end
      if string.sub(s, j, j) == (c == '{' and '}' or ']') then
        last = j
      else
        open[#open + 1] = c
        if c == '{' then i = after_key(s, j) else i = j end
      end
    else
      last = scalar_end(s, i)
    end
    while last do
      local j = skip_space(s, last + 1)
      local top = open[#open]
      if not top then
        if j then error('data after the value') end
        return true
      end
      if not j then error('unexpected end') end
      local d = string.sub(s, j, j)
      if d == ',' then
        j = skip_space(s, j + 1)
        if top == '{' then i = after_key(s, j) else i = j end
        last = nil
      elseif d == (top == '{' and '}' or ']') then
        open[#open] = nil
        last = j
      else
        error('bad separator')
      end
    end
  end
end
local function value_end(s, i)
  local c = string.sub(s, i, i)
  if c == '"' then return string_end(s, i + 1) end
  if c == '{' or c == '[' then
    local depth, j = 1, i + 1
    while true do
      local q = string.find(s, '[%[%]{}"]', j)
      if not q then error('unterminated value') end
      local d = string.sub(s, q, q)
      if d == '"' then q = string_end(s, q + 1)
      elseif d == '{' or d == '[' then depth = depth + 1
      else depth = depth - 1; if depth == 0 then return q end end
      j = q + 1
    end
  end
  local q = string.find(s, '[,}%]%s]', i)
  if not q or q == i then error('bad value') end
  return q - 1
end
local function next_token(s, i)
  local q = string.find(s, '%S', i)
  if not q then error('unexpected end') end
  return q, string.sub(s, q, q)
end
local function members(s)
  local i, c = next_token(s, 1)
  if c ~= '{' then return 'not-object' end
  i, c = next_token(s, i + 1)
  if c == '}' then return nil end
  while true do
    if c ~= '"' then error('bad key') end
    local key_end = string_end(s, i + 1)
    local name = canonical(string.sub(s, i, key_end))
    i, c = next_token(s, key_end + 1)
    if c ~= ':' then error('bad member') end
    i = next_token(s, i + 1)
    local last = value_end(s, i)
    put(name, string.sub(s, i, last))
    i, c = next_token(s, last + 1)
    if c == '}' then return nil end
    if c ~= ',' then error('bad separator') end
    i, c = next_token(s, i + 1)
  end
end
if current then
  if not pcall(check_utf8, current) or not pcall(check_json, current) then return {'unreadable'} end
  local ok, outcome = pcall(members, current)
  if not ok then return {'unreadable'} end
  if outcome then return {outcome} end
end
for i = 4, #ARGV, 2 do put(ARGV[i], ARGV[i + 1]) end
local indices, others = {}, {}
for i, name in ipairs(names) do
  local digits = string.match(name, '^"(%d+)"$')
  local index = digits and (digits == '0' or string.sub(digits, 1, 1) ~= '0') and #digits <= 10 and tonumber(digits)
  if index and index < 4294967295 then
    indices[#indices + 1] = {index, i}
  else
    others[#others + 1] = i
  end
end
table.sort(indices, function(a, b) return a[1] < b[1] end)
local parts = {}
for _, entry in ipairs(indices) do parts[#parts + 1] = names[entry[2]] .. ':' .. values[entry[2]] end
for _, i in ipairs(others) do parts[#parts + 1] = names[i] .. ':' .. values[i] end
local merged = '{' .. table.concat(parts, ',') .. '}'
if #merged > tonumber(ARGV[2]) then return {'too-large', #merged} end
if ARGV[1] == '' then
  redis.call('SET', KEYS[1], merged, 'KEEPTTL')
else
  redis.call('SET', KEYS[1], merged, 'PX', ARGV[1])
end
if current then return {'merged', 0} end
return {'merged', 1}
"#;

/// The replies of a batch's commands, decoded.
/// A reply as the keyspace's [`Reply`] for `command`.
pub(super) fn decode(value: Value, command: &Command) -> StoreResult<Reply> {
  match value {
    Value::Nil => Ok(Reply::Nil),
    Value::Int(n) => Ok(Reply::Int(n)),
    Value::Okay | Value::SimpleString(_) => Ok(Reply::Ok),
    Value::BulkString(bytes) => Ok(Reply::Bytes(bytes)),
    Value::Array(items) if matches!(command, Command::HGetAll { .. }) => pairs(items),
    Value::Array(items) if matches!(command, Command::MGet { .. }) => values(items),
    Value::Array(items) if matches!(command, Command::Scan { .. }) => scan_page(items),
    Value::Array(items) if matches!(command, Command::Merge { .. }) => merge_outcome(items),
    Value::Map(entries) => entries
      .into_iter()
      .map(|(k, v)| Ok((bytes(k)?, bytes(v)?)))
      .collect::<StoreResult<_>>()
      .map(Reply::Pairs),
    Value::ServerError(err) => Err(server_error(err)),
    other => Err(StoreError::new(
      ErrorCode::Unavailable,
      format!("unexpected reply from Redis: {other:?}"),
    )),
  }
}

/// Whether `value` is a reply `command` can get (a server error fits any command):
/// what [`decode`] is given is checked first, so a reply of another type is not read as
/// a missing key, an empty hash or `false`.
pub(super) fn fits(value: &Value, command: &Command) -> bool {
  let text = |value: &Value| matches!(value, Value::BulkString(_) | Value::SimpleString(_));
  match (command, value) {
    (_, Value::ServerError(_)) => true,
    (Command::Get { .. } | Command::HGet { .. }, value) => {
      matches!(value, Value::Nil | Value::BulkString(_))
    }
    (Command::Set { .. }, value) => matches!(value, Value::Okay | Value::SimpleString(_)),
    (Command::SetIf { .. }, value) => {
      matches!(value, Value::Okay | Value::SimpleString(_) | Value::Nil)
    }
    (
      Command::HSet { .. }
      | Command::HSetNx { .. }
      | Command::HSetNxExpire { .. }
      | Command::HDel { .. }
      | Command::PExpire { .. }
      | Command::Del { .. }
      | Command::Unlink { .. }
      | Command::Exists { .. }
      | Command::PTtl { .. },
      value,
    ) => matches!(value, Value::Int(_)),
    (Command::HGetAll { .. }, Value::Array(items)) => {
      items.len() % 2 == 0 && items.iter().all(text)
    }
    (Command::HGetAll { .. }, Value::Map(_)) => true,
    (Command::MGet { keys }, Value::Array(items)) => {
      items.len() == keys.len()
        && items
          .iter()
          .all(|item| matches!(item, Value::Nil | Value::BulkString(_)))
    }
    (Command::Scan { .. }, Value::Array(items)) => {
      items.len() == 2 && text(&items[0]) && matches!(items[1], Value::Array(_))
    }
    (Command::Merge { .. }, Value::Array(items)) => !items.is_empty(),
    (
      Command::HGetAll { .. } | Command::MGet { .. } | Command::Scan { .. } | Command::Merge { .. },
      _,
    ) => false,
    _ => true,
  }
}

/// What is wrong with `value` as a reply to `command` (one that does not [`fits`]).
pub(super) fn misfit(value: &Value, command: &Command) -> String {
  let name = to_redis(command)
    .args_iter()
    .next()
    .map(|arg| match arg {
      redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
      _ => String::new(),
    })
    .unwrap_or_default();
  match (command, value) {
    (Command::MGet { keys }, Value::Array(items)) if items.len() != keys.len() => {
      format!(
        "MGET answered {} values for {} keys",
        items.len(),
        keys.len()
      )
    }
    (_, Value::Array(items)) => format!(
      "{name} answered an array of {} elements that does not fit",
      items.len()
    ),
    _ => format!("{name} answered {}", kind(value)),
  }
}

/// A reply's type, for messages (not its content, which may be large).
pub(super) fn kind(value: &Value) -> &'static str {
  match value {
    Value::Nil => "nil",
    Value::Int(_) => "an integer",
    Value::BulkString(_) => "a bulk string",
    Value::Array(_) => "an array",
    Value::SimpleString(_) | Value::Okay => "a simple string",
    Value::Map(_) => "a map",
    Value::Attribute { .. } => "an attribute",
    Value::Set(_) => "a set",
    Value::Double(_) => "a double",
    Value::Boolean(_) => "a boolean",
    Value::VerbatimString { .. } => "a verbatim string",
    Value::BigNumber(_) => "a big number",
    Value::Push { .. } => "a push frame",
    Value::ServerError(_) => "an error",
    _ => "an unknown type",
  }
}

/// The words a Redis Cluster's redirect and wait errors start with.
const CLUSTER_ERRORS: [&str; 4] = ["MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"];

/// A server's error reply as a store error. A Redis Cluster's `MOVED`, `ASK`,
/// `TRYAGAIN` and `CLUSTERDOWN` keep their words as the server gave them, after
/// `"cluster: "`, so the cluster backend reads where to go ([`cluster_error`]).
pub(super) fn server_error(err: redis::ServerError) -> StoreError {
  if CLUSTER_ERRORS.contains(&err.code()) {
    let message = match err.details() {
      Some(details) => format!("cluster: {} {details}", err.code()),
      None => format!("cluster: {}", err.code()),
    };
    return StoreError::new(ErrorCode::Unavailable, message);
  }
  // A node still loading its data, or a replica without its master, answers later.
  let passing = matches!(err.code(), "LOADING" | "BUSY" | "MASTERDOWN");
  StoreError {
    from_server: !passing,
    ..redis::RedisError::from(err).into()
  }
}

/// The code and details of a cluster error [`server_error`] made (`MOVED`, `ASK`,
/// `TRYAGAIN`, `CLUSTERDOWN`), or `None` for any other error.
pub(super) fn cluster_error(err: &StoreError) -> Option<(&str, &str)> {
  let rest = err.message.strip_prefix("cluster: ")?;
  let (code, details) = rest.split_once(' ').unwrap_or((rest, ""));
  (err.code == ErrorCode::Unavailable && CLUSTER_ERRORS.contains(&code)).then_some((code, details))
}

fn pairs(items: Vec<Value>) -> StoreResult<Reply> {
  let mut out = Vec::with_capacity(items.len() / 2);
  let mut iter = items.into_iter();
  while let (Some(field), Some(value)) = (iter.next(), iter.next()) {
    out.push((bytes(field)?, bytes(value)?));
  }
  Ok(Reply::Pairs(out))
}

fn values(items: Vec<Value>) -> StoreResult<Reply> {
  let values = items
    .into_iter()
    .map(|item| match item {
      Value::Nil => Ok(None),
      other => bytes(other).map(Some),
    })
    .collect::<StoreResult<_>>()?;
  Ok(Reply::Values(values))
}

fn scan_page(items: Vec<Value>) -> StoreResult<Reply> {
  let mut items = items.into_iter();
  let (Some(cursor), Some(Value::Array(keys))) = (items.next(), items.next()) else {
    return Err(unexpected("SCAN reply"));
  };
  let cursor = String::from_utf8(bytes(cursor)?).map_err(|_| unexpected("SCAN cursor"))?;
  // A key that is not UTF-8 (another client's) cannot be a durastate key, which is a JS
  // string: it is left out, not listed, counted or deleted under a name it does not have.
  let mut names = Vec::with_capacity(keys.len());
  for key in keys {
    if let Ok(name) = String::from_utf8(bytes(key)?) {
      names.push(name);
    }
  }
  Ok(Reply::Scan {
    cursor,
    keys: names,
  })
}

fn merge_outcome(items: Vec<Value>) -> StoreResult<Reply> {
  let mut items = items.into_iter();
  let status = items.next().map(bytes).transpose()?.unwrap_or_default();
  let number = match items.next() {
    Some(Value::Int(n)) => n,
    _ => 0,
  };
  let outcome = match status.as_slice() {
    b"merged" => MergeOutcome::Merged {
      created: number == 1,
    },
    b"missing" => MergeOutcome::Missing,
    b"not-object" => MergeOutcome::NotAnObject,
    b"too-large" => MergeOutcome::TooLarge(number as u64),
    b"unreadable" => MergeOutcome::Unreadable,
    _ => return Err(unexpected("merge reply")),
  };
  Ok(Reply::Merge(outcome))
}

fn unexpected(what: &str) -> StoreError {
  StoreError::new(
    ErrorCode::Unavailable,
    format!("unexpected {what} from Redis"),
  )
}

fn bytes(value: Value) -> StoreResult<Vec<u8>> {
  match value {
    Value::BulkString(bytes) => Ok(bytes),
    Value::SimpleString(s) => Ok(s.into_bytes()),
    other => Err(StoreError::new(
      ErrorCode::Unavailable,
      format!("unexpected hash entry from Redis: {other:?}"),
    )),
  }
}
