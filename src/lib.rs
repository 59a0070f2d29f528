//! durastate: durable execution state for Node.js workers, as a native addon.
#![deny(clippy::all)]

mod backend;
mod command;
mod completions;
pub mod debug;
mod embedded_call;
mod engine;
mod error;
mod events;
mod factory;
mod glob;
mod guard;
mod inspector;
mod js_promise;
mod json_value;
mod keys;
mod kv;
mod options;
mod output;
mod redis_target;
mod results;
pub mod runtime;
mod tls;
#[cfg(unix)]
mod uv;
mod worker_store;

pub use error::{ErrorCode, StoreError};
pub use factory::{
  create_memory_store, create_postgres_store, create_redis_store, create_sqlite_store,
  create_store, store_url_schemes,
};
pub use inspector::{create_inspector, NativeInspector};
pub use kv::{create_kv_store, NativeKvStore};
pub use worker_store::NativeWorkerStore;
