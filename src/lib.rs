//! durastate: durable execution state for Node.js workers, as a native addon.
#![deny(clippy::all)]

mod backend;
mod command;
pub mod debug;
mod error;
mod factory;
mod guard;
mod js_promise;
mod keys;
mod options;
mod output;
mod redis_target;
mod results;
#[cfg(unix)]
mod uv;
mod worker_store;

pub use error::{ErrorCode, StoreError};
pub use factory::{create_memory_store, create_redis_store, create_sqlite_store, create_store};
pub use worker_store::NativeWorkerStore;
