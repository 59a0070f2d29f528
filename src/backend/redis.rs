//! Redis backend: one multiplexed connection per store, made on first use and
//! re-made after it breaks; every batch is one round trip.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use crate::command::{Batch, Command, Condition, Reply};
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::redis_target::RedisTarget;

/// The connection slot: the live connection, a generation to tell reconnects apart,
/// and whether the store was closed.
#[derive(Default)]
struct Slot {
  connection: Option<MultiplexedConnection>,
  generation: u64,
  closed: bool,
}

/// A Redis server reached over one pipelined connection.
pub struct RedisBackend {
  target: RedisTarget,
  config: AsyncConnectionConfig,
  connect_timeout: Duration,
  slot: Mutex<Slot>,
  connecting: tokio::sync::Mutex<()>,
}

impl RedisBackend {
  pub fn new(target: RedisTarget, connect_timeout: Duration, response_timeout: Duration) -> Self {
    let config = AsyncConnectionConfig::new()
      .set_connection_timeout(Some(connect_timeout))
      .set_response_timeout(Some(response_timeout));
    Self {
      target,
      config,
      connect_timeout,
      slot: Mutex::new(Slot::default()),
      connecting: tokio::sync::Mutex::new(()),
    }
  }

  /// Runs a batch in one round trip (`MULTI`/`EXEC` when it is atomic).
  pub async fn execute(&self, batch: &Batch) -> StoreResult<Vec<Reply>> {
    let (mut connection, generation) = self.connection().await?;
    let values = send(&mut connection, batch).await;
    let values = match values {
      Ok(values) => values,
      Err(err) => {
        if err.is_unrecoverable_error() || err.is_connection_dropped() || err.is_io_error() {
          self.forget(generation);
        }
        return Err(err.into());
      }
    };
    values
      .into_iter()
      .zip(&batch.commands)
      .map(|(value, command)| decode(value, command))
      .collect()
  }

  /// Drops the connection; calls already in flight keep their handle and finish.
  pub fn close(&self) {
    let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
    slot.closed = true;
    slot.connection = None;
  }

  fn cached(&self) -> StoreResult<Option<(MultiplexedConnection, u64)>> {
    let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.closed {
      return Err(StoreError::disposed());
    }
    Ok(slot.connection.clone().map(|c| (c, slot.generation)))
  }

  async fn connection(&self) -> StoreResult<(MultiplexedConnection, u64)> {
    if let Some(found) = self.cached()? {
      return Ok(found);
    }
    let _one_connect_at_a_time = self.connecting.lock().await;
    if let Some(found) = self.cached()? {
      return Ok(found);
    }
    let connection = self.connect().await?;
    let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.closed {
      return Err(StoreError::disposed());
    }
    slot.generation += 1;
    slot.connection = Some(connection.clone());
    Ok((connection, slot.generation))
  }

  async fn connect(&self) -> StoreResult<MultiplexedConnection> {
    let attempt = self
      .target
      .client
      .get_multiplexed_async_connection_with_config(&self.config);
    match tokio::time::timeout(self.connect_timeout, attempt).await {
      Ok(Ok(connection)) => Ok(connection),
      Ok(Err(err)) => Err(self.connect_error(err)),
      Err(_) => Err(self.connect_timed_out()),
    }
  }

  fn connect_error(&self, err: redis::RedisError) -> StoreError {
    let mapped = StoreError::from(err);
    match mapped.code {
      ErrorCode::Timeout => self.connect_timed_out(),
      ErrorCode::Auth => StoreError::new(
        ErrorCode::Auth,
        format!(
          "authentication to {} failed: {}",
          self.target.display, mapped.message
        ),
      ),
      code => StoreError::new(
        code,
        format!(
          "cannot connect to {}: {}",
          self.target.display, mapped.message
        ),
      ),
    }
  }

  fn connect_timed_out(&self) -> StoreError {
    StoreError::new(
      ErrorCode::Unavailable,
      format!(
        "cannot connect to {}: no connection within connectTimeout ({} ms)",
        self.target.display,
        self.connect_timeout.as_millis()
      ),
    )
  }

  fn forget(&self, generation: u64) {
    let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.generation == generation {
      slot.connection = None;
    }
  }
}

async fn send(
  connection: &mut MultiplexedConnection,
  batch: &Batch,
) -> redis::RedisResult<Vec<Value>> {
  if let [command] = batch.commands.as_slice() {
    let value: Value = to_redis(command).query_async(connection).await?;
    return Ok(vec![value]);
  }
  let mut pipe = redis::pipe();
  if batch.atomic {
    pipe.atomic();
  }
  for command in &batch.commands {
    pipe.add_command(to_redis(command));
  }
  pipe.query_async(connection).await
}

/// Appends the RESP encoding of a batch to `out` (`MULTI` ... `EXEC` when atomic).
pub(super) fn pack_commands(commands: &[Command], atomic: bool, out: &mut Vec<u8>) {
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

fn to_redis(command: &Command) -> redis::Cmd {
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
    Command::SetGet { key, value, ttl_ms } => set(key, value, *ttl_ms).arg("GET").clone(),
    Command::CompareAndSet {
      key,
      expected,
      value,
      ttl_ms,
    } => {
      let mut cmd = redis::cmd("EVAL");
      cmd.arg(COMPARE_AND_SET).arg(1).arg(key);
      match expected {
        Some(expected) => cmd.arg("1").arg(expected),
        None => cmd.arg("0").arg(""),
      };
      cmd.arg(value);
      match ttl_ms {
        Some(ttl) => cmd.arg(ttl.to_string()),
        None => cmd.arg(""),
      };
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

/// Sets KEYS[1] to ARGV[3] if it holds ARGV[2] (ARGV[1] = "1") or is missing
/// (ARGV[1] = "0"); with PX ARGV[4], or keeping the TTL when ARGV[4] is empty.
/// Returns 1, or on a mismatch the current value (nil when missing).
const COMPARE_AND_SET: &str = "\
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return current end
elseif current then
  return current
end
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[3], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1";

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
    Value::Map(entries) => entries
      .into_iter()
      .map(|(k, v)| Ok((bytes(k)?, bytes(v)?)))
      .collect::<StoreResult<_>>()
      .map(Reply::Pairs),
    Value::ServerError(err) => Err(redis::RedisError::from(err).into()),
    other => Err(StoreError::new(
      ErrorCode::Unavailable,
      format!("unexpected reply from Redis: {other:?}"),
    )),
  }
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
  let keys = keys
    .into_iter()
    .map(|key| Ok(String::from_utf8_lossy(&bytes(key)?).into_owned()))
    .collect::<StoreResult<_>>()?;
  Ok(Reply::Scan { cursor, keys })
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
