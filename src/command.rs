//! The few keyspace commands the stores are built from, and their replies.
//!
//! Every store call becomes one [`Batch`]: Redis sends it as one command or one
//! `MULTI`/`EXEC`, the embedded backend runs it as one SQLite transaction. The
//! semantics of a store are therefore written once, over these primitives.

/// One keyspace command, with Redis semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
  /// `GET key`.
  Get { key: String },
  /// `SET key value [PX ttl]`.
  Set {
    key: String,
    value: String,
    ttl_ms: Option<u64>,
  },
  /// `HGET key field`.
  HGet { key: String, field: String },
  /// `HGETALL key`.
  HGetAll { key: String },
  /// `HSET key field value`.
  HSet {
    key: String,
    field: String,
    value: String,
  },
  /// `HSETNX key field value`: replies 1 when the field was created.
  HSetNx {
    key: String,
    field: String,
    value: String,
  },
  /// `HDEL key field`.
  HDel { key: String, field: String },
  /// `PEXPIRE key ttl`.
  PExpire { key: String, ttl_ms: u64 },
  /// `DEL key [key ...]`.
  Del { keys: Vec<String> },
}

impl Command {
  /// The keys the command touches.
  pub fn keys(&self) -> &[String] {
    match self {
      Command::Get { key }
      | Command::Set { key, .. }
      | Command::HGet { key, .. }
      | Command::HGetAll { key }
      | Command::HSet { key, .. }
      | Command::HSetNx { key, .. }
      | Command::HDel { key, .. }
      | Command::PExpire { key, .. } => std::slice::from_ref(key),
      Command::Del { keys } => keys,
    }
  }

  /// Whether the command changes the keyspace.
  pub fn writes(&self) -> bool {
    !matches!(
      self,
      Command::Get { .. } | Command::HGet { .. } | Command::HGetAll { .. }
    )
  }
}

/// A reply, decoded just enough for the stores to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
  /// No value (missing key or field).
  Nil,
  /// An integer reply.
  Int(i64),
  /// A string value, as raw bytes (validated as UTF-8 by the caller, who knows the key).
  Bytes(Vec<u8>),
  /// Field/value pairs of a hash.
  Pairs(Vec<(Vec<u8>, Vec<u8>)>),
  /// A status reply such as `OK`.
  Ok,
}

/// Commands sent together in one round trip; `atomic` asks for all-or-nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
  pub commands: Vec<Command>,
  pub atomic: bool,
}

impl Batch {
  /// A batch of one command.
  pub fn one(command: Command) -> Self {
    Self {
      commands: vec![command],
      atomic: false,
    }
  }

  /// Commands applied together or not at all (`MULTI`/`EXEC`, one SQLite transaction).
  pub fn atomic(commands: Vec<Command>) -> Self {
    Self {
      commands,
      atomic: true,
    }
  }

  /// Whether any command changes the keyspace.
  pub fn writes(&self) -> bool {
    self.commands.iter().any(Command::writes)
  }
}
