//! The backends every store runs on. A store builds [`Batch`]es of keyspace commands;
//! a backend runs each batch in one round trip (Redis) or one transaction (SQLite).

mod embedded;
mod keyspace;
mod redis;
#[cfg(unix)]
mod redis_loop;

pub use embedded::{EmbeddedBackend, EmbeddedSettings, Location};
pub use redis::RedisBackend;
#[cfg(unix)]
pub use redis_loop::LoopRedis;

use crate::command::{Batch, Reply};
use crate::error::StoreResult;

/// One of the backends.
pub enum Backend {
  /// A Redis server.
  Redis(Box<RedisBackend>),
  /// SQLite, in a file or in memory.
  Embedded(EmbeddedBackend),
}

impl Backend {
  /// Runs the batch: all of it, in one round trip or transaction.
  pub async fn execute(&self, batch: Batch) -> StoreResult<Vec<Reply>> {
    match self {
      Backend::Redis(redis) => redis.execute(&batch).await,
      Backend::Embedded(embedded) => embedded.execute(batch).await,
    }
  }

  /// Runs the batch at once on the calling thread when that cannot block (SQLite only).
  pub fn try_execute_now(&self, batch: &Batch) -> Option<StoreResult<Vec<Reply>>> {
    match self {
      Backend::Redis(_) => None,
      Backend::Embedded(embedded) => embedded.try_execute_now(batch),
    }
  }

  /// Releases connections and threads; calls in flight finish.
  pub fn close(&self) {
    match self {
      Backend::Redis(redis) => redis.close(),
      Backend::Embedded(embedded) => embedded.close(),
    }
  }
}
