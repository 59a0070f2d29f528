//! The KV store: named mounts (prefix, access mode, optional schema, size and entry
//! limits, TTL) over the same backends as the WorkerStore.

mod mount;
mod ops;
mod store;

pub use ops::count_runs;
pub use store::{create_kv_store, NativeKvStore};
