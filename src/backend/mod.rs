//! The backends every store runs on. A store builds `Batch`es of keyspace commands;
//! a backend runs each batch in one round trip (Redis) or one transaction (SQLite).
//! The store's `Engine` (in `worker_store`) picks the backend for each call.

mod cluster;
#[cfg(unix)]
mod connect;
mod embedded;
mod keyspace;
mod redis;
#[cfg(unix)]
mod redis_loop;
#[cfg(unix)]
mod socket;

pub use cluster::ClusterBackend;
pub use embedded::{answer, EmbeddedBackend, EmbeddedSettings, Location};
pub use redis::RedisBackend;
#[cfg(unix)]
pub use redis_loop::LoopRedis;
