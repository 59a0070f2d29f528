//! The backends every store runs on. A store builds `Batch`es of store operations
//! (`command.rs`, the seam); a backend runs each batch in its own terms: Redis lowers it
//! to commands (`redis_ops`) sent in one round trip, SQLite and Postgres run it as statements
//! on store-shaped tables (`sqlite/`, `postgres/`) in one transaction. The store's `Engine` picks how.

mod cluster;
mod connect;
mod embedded;
mod postgres;
mod redis;
mod redis_calls;
mod redis_codec;
mod redis_core;
mod redis_js;
#[cfg(unix)]
mod redis_loop;
pub mod redis_ops;
mod resp;
pub mod retry;
mod sentinel_watch;
#[cfg(unix)]
mod socket;
mod sqlite;

pub use cluster::ClusterBackend;
pub use embedded::{
  answer, spread, Answer, Claim, EmbeddedBackend, EmbeddedSettings, Held, Location,
};
pub use postgres::schema::check_schema_name;
pub use postgres::{PostgresBackend, PostgresConnectionOptions, PostgresSettings, PostgresTarget};
pub use redis::RedisBackend;
pub use redis_js::{
  registered as redis_js_registered, set_factory as set_redis_js_factory, JsRedis,
};
#[cfg(unix)]
pub use redis_loop::LoopRedis;
