//! The synchronous `create*Store` functions: validate, pick a backend, return the store.
//! Nothing connects or opens here; that happens on first use.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use napi::{Either, Env};
use napi_derive::napi;

use crate::backend::JsRedis;
#[cfg(unix)]
use crate::backend::LoopRedis;
use crate::backend::{
  ClusterBackend, EmbeddedBackend, EmbeddedSettings, Location, PostgresBackend,
  PostgresConnectionOptions, PostgresSettings, PostgresTarget, RedisBackend,
};
use crate::engine::Engine;
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::keys::KeyLayout;
use crate::options::{
  millis, whole_number, CommonSettings, RedisConnectionOptions, StoreOptions,
  DEFAULT_BUSY_TIMEOUT_MS,
};
use crate::redis_target::{RedisTarget, DEFAULT_REDIS_URL};
use crate::worker_store::{NativeWorkerStore, StoreConfig};

/// The SQLite file used when no location is given.
pub const DEFAULT_SQLITE_PATH: &str = "./.durastate/state.db";

/// A store on Redis. `target` is a URL or `{ host, port, ... }`; default
/// `redis://127.0.0.1:6379`. Connects on first use. (index.js gives `REDIS_URL` first, read
/// from `process.env`: the addon never reads the environment for a target, see
/// `create_store`.)
#[napi(catch_unwind)]
pub fn create_redis_store(
  env: Env,
  target: Option<Either<String, RedisConnectionOptions>>,
  options: Option<StoreOptions>,
) -> napi::Result<NativeWorkerStore, ErrorCode> {
  made(
    &env,
    (|| {
      let options = options.unwrap_or_default();
      match &target {
        Some(Either::B(fields)) if fields.cluster.is_some() => {
          return Ok(worker_store(cluster_engine(fields, &options)?)?);
        }
        Some(Either::A(url)) if is_cluster_url(url) => {
          let fields = crate::redis_target::cluster_fields_from_url(url)?;
          return Ok(worker_store(cluster_engine(&fields, &options)?)?);
        }
        _ => {}
      }
      let target = match &target {
        Some(Either::A(url)) => RedisTarget::from_url(url)?,
        Some(Either::B(fields)) => RedisTarget::from_fields(fields)?,
        None => RedisTarget::from_url(DEFAULT_REDIS_URL)?,
      };
      Ok(redis_store(target, &options)?)
    })(),
  )
}

/// A store in a SQLite file (default `./.durastate/state.db`; directories are created).
#[napi(catch_unwind)]
pub fn create_sqlite_store(
  env: Env,
  path: Option<String>,
  options: Option<StoreOptions>,
) -> napi::Result<NativeWorkerStore, ErrorCode> {
  made(
    &env,
    (|| {
      let path = path.unwrap_or_else(|| DEFAULT_SQLITE_PATH.to_string());
      Ok(sqlite_store(
        file_path(&path)?,
        &options.unwrap_or_default(),
      )?)
    })(),
  )
}

/// A store in this process's memory: same semantics, nothing persisted.
#[napi(catch_unwind)]
pub fn create_memory_store(
  env: Env,
  options: Option<StoreOptions>,
) -> napi::Result<NativeWorkerStore, ErrorCode> {
  made(
    &env,
    (|| {
      Ok(embedded_store(
        Location::Memory,
        &options.unwrap_or_default(),
      )?)
    })(),
  )
}

/// A store on Postgres. `target` is a libpq URL (`postgres://user:pass@host:port/db
/// ?sslmode=...`) or `{ host, port, user, password, database, ... }`; default
/// `postgres://postgres@localhost:5432/postgres` (index.js gives `DATABASE_URL` first). Connects on first
/// use, and creates its tables then (schema `durastate`, option `schema`).
#[napi(catch_unwind)]
pub fn create_postgres_store(
  env: Env,
  target: Option<Either<String, PostgresConnectionOptions>>,
  options: Option<StoreOptions>,
) -> napi::Result<NativeWorkerStore, ErrorCode> {
  made(
    &env,
    (|| {
      let options = options.unwrap_or_default();
      let target = match &target {
        Some(Either::A(url)) if !url.is_empty() => {
          PostgresTarget::from_url(url, options.tls.as_ref())?
        }
        Some(Either::B(fields)) => PostgresTarget::from_fields(fields, options.tls.as_ref())?,
        _ => PostgresTarget::from_url(
          "postgres://postgres@localhost:5432/postgres",
          options.tls.as_ref(),
        )?,
      };
      Ok(worker_store(postgres_engine(target, &options)?)?)
    })(),
  )
}

/// A store picked by URL: `redis://`/`rediss://`, `postgres://`, `sqlite:<path>`/`file:<path>`,
/// `memory:`. Without a URL: the SQLite default file. The environment fallbacks
/// (`DURASTATE_URL`, then `REDIS_URL`, then `DATABASE_URL`) are index.js's, read from
/// `process.env`: on Bun that is not the process's environment (an assignment or a `delete`
/// there does not reach it), so the addon reading it too would see what the program removed.
#[napi(catch_unwind)]
pub fn create_store(
  env: Env,
  url: Option<String>,
  options: Option<StoreOptions>,
) -> napi::Result<NativeWorkerStore, ErrorCode> {
  made(
    &env,
    (|| {
      let options = options.unwrap_or_default();
      let Some(url) = url.filter(|u| !u.is_empty()) else {
        return Ok(sqlite_store(PathBuf::from(DEFAULT_SQLITE_PATH), &options)?);
      };
      Ok(store_for_url(&url, &options)?)
    })(),
  )
}

/// `store`, closed when the env it is made in goes away ([`Engine::close_with`]).
fn made(
  env: &Env,
  store: napi::Result<NativeWorkerStore, ErrorCode>,
) -> napi::Result<NativeWorkerStore, ErrorCode> {
  if let Ok(store) = &store {
    store.engine().close_with(env);
  }
  store
}

/// The engine a target names: a URL (any backend), Redis fields, or, when absent, the
/// SQLite default file (the environment is index.js's and the CLI's, as for `create_store`).
/// Used by the KV store and the inspector, which take any backend.
pub fn engine_for_target(
  target: Option<Either<String, RedisConnectionOptions>>,
  options: &StoreOptions,
) -> StoreResult<(Engine, CommonSettings)> {
  match target {
    Some(Either::B(fields)) if fields.cluster.is_some() => cluster_engine(&fields, options),
    Some(Either::B(fields)) => redis_engine_for(RedisTarget::from_fields(&fields)?, options),
    Some(Either::A(url)) if !url.is_empty() => engine_for_url(&url, options),
    _ => embedded_engine(Location::File(PathBuf::from(DEFAULT_SQLITE_PATH)), options),
  }
}

fn store_for_url(url: &str, options: &StoreOptions) -> StoreResult<NativeWorkerStore> {
  worker_store(engine_for_url(url, options)?)
}

/// The URL schemes `createStore`, `createKvStore` and the CLI take: each names the
/// backend `engine_for_url` makes for it.
const URL_SCHEMES: &[&str] = &[
  "redis",
  "rediss",
  "redis+unix",
  "redis+sentinel",
  "rediss+sentinel",
  "redis+cluster",
  "rediss+cluster",
  "postgres",
  "postgresql",
  "sqlite",
  "file",
  "memory",
];

/// The URL schemes stores take (`redis`, `sqlite`, ...), for tools that must tell a URL
/// from another argument.
#[napi]
pub fn store_url_schemes() -> Vec<String> {
  URL_SCHEMES
    .iter()
    .map(|scheme| scheme.to_string())
    .collect()
}

/// `redis+cluster://` or `rediss+cluster://`, in any case.
fn is_cluster_url(url: &str) -> bool {
  let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
  matches!(scheme.as_deref(), Some("redis+cluster" | "rediss+cluster"))
}

fn engine_for_url(url: &str, options: &StoreOptions) -> StoreResult<(Engine, CommonSettings)> {
  let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
  match scheme.as_deref() {
    Some("redis" | "rediss" | "redis+unix" | "redis+sentinel" | "rediss+sentinel") => {
      redis_engine_for(RedisTarget::from_url(url)?, options)
    }
    Some("redis+cluster" | "rediss+cluster") => cluster_engine(&crate::redis_target::cluster_fields_from_url(url)?, options),
    Some(scheme @ ("sqlite" | "file")) => {
      let rest = &url[url.find(':').expect("has a scheme") + 1..];
      embedded_engine(Location::File(url_file_path(url, scheme, rest)?), options)
    }
    // `memory:?x`, `memory://host/path` and `memory:name` read as `memory:`: each store in
    // memory is its own, with no name, host, path or query to give it.
    Some("memory") if url.len() > "memory:".len() => Err(StoreError::invalid_input(format!(
      "store URL \"{}\": memory: takes nothing after it (a store in memory has no name, host, path or query; each store is its own)",
      crate::redis_target::redact(url)
    ))),
    Some("memory") => embedded_engine(Location::Memory, options),
    Some("postgres" | "postgresql") => {
      postgres_engine(PostgresTarget::from_url(url, options.tls.as_ref())?, options)
    }
    _ => Err(StoreError::invalid_input(format!(
      "unsupported store URL \"{}\": use redis://, rediss://, redis+sentinel://, rediss+sentinel://, redis+cluster://, rediss+cluster://, postgres://, postgresql://, sqlite:<path>, file:<path> or memory:",
      crate::redis_target::redact(url)
    ))),
  }
}

/// The file a `sqlite:` or `file:` URL names. `sqlite:<path>` (or `sqlite://<path>`) takes
/// the path as written. A `file:` URL is read as one (RFC 8089, as `pathToFileURL()` makes
/// them): percent-escapes are decoded (`my%20dir` is `my dir`), and its host must be empty
/// or `localhost` (`file:///tmp/x.db`, `file://localhost/tmp/x.db`); another host is
/// refused. Neither takes a query (`?mode=ro` made a file named `c.db?mode=ro`).
fn url_file_path(url: &str, scheme: &str, rest: &str) -> StoreResult<PathBuf> {
  let query = || {
    StoreError::invalid_input(format!(
      "store URL \"{url}\" has a query (\"?...\"): a sqlite: or file: URL takes no parameters, only the file's path (a path with \"?\" in it can be given to createSqliteStore)"
    ))
  };
  if scheme == "sqlite" {
    let path = rest.strip_prefix("//").unwrap_or(rest);
    // (A SQLite URI after the scheme is refused as such by `file_path`.)
    if path.contains('?') && !path.starts_with("file:") {
      return Err(query());
    }
    return file_path(path);
  }
  if rest.contains('?') {
    return Err(query());
  }
  if rest.contains('#') {
    return Err(StoreError::invalid_input(format!(
      "store URL \"{url}\" has a fragment (\"#...\"): write \"#\" in a file: URL's path as %23"
    )));
  }
  let path = match rest.strip_prefix("//") {
    Some(after) => {
      let (host, path) = after.split_at(after.find('/').unwrap_or(after.len()));
      if !(host.is_empty() || host.eq_ignore_ascii_case("localhost")) {
        return Err(StoreError::invalid_input(format!(
          "store URL \"{url}\" names the host \"{host}\": a file: URL must name a local file (file:///path or file://localhost/path)"
        )));
      }
      path
    }
    None => rest,
  };
  let decoded = percent_decode(path).ok_or_else(|| {
    StoreError::invalid_input(format!(
      "store URL \"{url}\" has a bad percent-escape (each % must start two hex digits, and the path must decode to UTF-8)"
    ))
  })?;
  // `file:///C:/dir/x.db` names `C:/dir/x.db` on Windows.
  #[cfg(windows)]
  let decoded = match decoded.as_bytes() {
    [b'/', drive, b':', ..] if drive.is_ascii_alphabetic() => decoded[1..].to_string(),
    _ => decoded,
  };
  file_path(&decoded)
}

/// `%XX` escapes decoded; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
  let mut bytes = Vec::with_capacity(text.len());
  let mut rest = text.as_bytes();
  while let Some((&byte, after)) = rest.split_first() {
    if byte == b'%' {
      let hex = after
        .get(..2)
        .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))?;
      bytes.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
      rest = &after[2..];
    } else {
      bytes.push(byte);
      rest = after;
    }
  }
  String::from_utf8(bytes).ok()
}

fn file_path(path: &str) -> StoreResult<PathBuf> {
  if path.is_empty() || path.contains('\0') {
    return Err(StoreError::invalid_input(format!(
      "invalid SQLite path \"{path}\""
    )));
  }
  // SQLite reads these as no file at all: `:memory:` keeps the data in memory (gone when
  // the store closes) and a `file:` URI can name memory (`?mode=memory`), a read-only or
  // shared-cache database, or another VFS. Data the caller meant to be durable was not.
  if path == ":memory:" {
    return Err(StoreError::invalid_input(
      "SQLite path \":memory:\" is not a file: its data would be gone when the store closes; use createMemoryStore() or the URL memory: for a store in memory",
    ));
  }
  if path.starts_with("file:") {
    return Err(StoreError::invalid_input(format!(
      "SQLite path \"{path}\" is a SQLite URI, which durastate does not take: give the file's path (a URL of createStore/createKvStore is sqlite:<path> or file:<path>, with the plain path after the scheme)"
    )));
  }
  let path = PathBuf::from(path);
  if path.is_dir() {
    return Err(StoreError::invalid_input(format!(
      "SQLite path {} is a directory; give a file path such as {}/state.db",
      path.display(),
      path.display()
    )));
  }
  Ok(path)
}

fn redis_store(target: RedisTarget, options: &StoreOptions) -> StoreResult<NativeWorkerStore> {
  worker_store(redis_engine_for(target, options)?)
}

fn redis_engine_for(
  mut target: RedisTarget,
  options: &StoreOptions,
) -> StoreResult<(Engine, CommonSettings)> {
  let common = common_settings(options)?;
  target.configure_tls(options.tls.as_ref(), options.sentinel_tls.as_ref())?;
  // Checked at connect, on every driver and address (TCP, TLS, unix socket).
  target.require_aof = durability(options)?;
  Ok((redis_engine(target, &common), common))
}

/// The settings every backend shares, after checking the options of every backend: one
/// options object serves whichever backend a URL names, so a bad value of another
/// backend's option (`poolSize: 0` on SQLite, `pageSize: 1000` on Redis) fails on every
/// factory alike, not only once that backend is used.
fn common_settings(options: &StoreOptions) -> StoreResult<CommonSettings> {
  let common = CommonSettings::from_options(options)?;
  durability(options)?;
  busy_timeout(options)?;
  synchronous(options)?;
  page_size(options)?;
  pool_size(options)?;
  if let Some(schema) = &options.schema {
    crate::backend::check_schema_name(schema)?;
  }
  // Its PEM text and pairing; files are read by the backends that use TLS.
  if let Some(tls) = &options.tls {
    crate::tls::TlsSettings::check(tls)?;
  }
  if let Some(napi::Either::B(tls)) = &options.sentinel_tls {
    crate::tls::TlsSettings::check(tls)?;
  }
  Ok(common)
}

/// SQLite's `busyTimeout` in ms (default 5 s).
fn busy_timeout(options: &StoreOptions) -> StoreResult<u64> {
  let busy_ms = millis("busyTimeout", options.busy_timeout)?.unwrap_or(DEFAULT_BUSY_TIMEOUT_MS);
  // SQLite takes a C int of ms (rusqlite panics on more, failing every call).
  if busy_ms > i32::MAX as u64 {
    return Err(StoreError::invalid_input(format!(
      "option `busyTimeout` must be at most {} ms (about 24.8 days, SQLite's limit), got {busy_ms}",
      i32::MAX
    )));
  }
  Ok(busy_ms)
}

/// Whether SQLite's `synchronous: 'full'` is asked for.
fn synchronous(options: &StoreOptions) -> StoreResult<bool> {
  match options.synchronous.as_deref() {
    None | Some("normal") => Ok(false),
    Some("full") => Ok(true),
    Some(other) => Err(StoreError::invalid_input(format!(
      "option `synchronous` must be \"normal\" or \"full\", got \"{other}\""
    ))),
  }
}

/// The page size of a new SQLite file (option `pageSize`, default [`DEFAULT_PAGE_SIZE`]).
fn page_size(options: &StoreOptions) -> StoreResult<u32> {
  match whole_number("pageSize", options.page_size, 512, 65_536)? {
    None => Ok(DEFAULT_PAGE_SIZE),
    Some(size) if size.is_power_of_two() => Ok(size as u32),
    Some(other) => Err(StoreError::invalid_input(format!(
      "option `pageSize` must be a power of two from 512 to 65536, got {other}"
    ))),
  }
}

/// Postgres's `poolSize`, when given: 1 to 1000.
fn pool_size(options: &StoreOptions) -> StoreResult<Option<u64>> {
  whole_number("poolSize", options.pool_size, 1, 1000)
}

/// Whether `durability: 'aof'` is asked for.
fn durability(options: &StoreOptions) -> StoreResult<bool> {
  match options.durability.as_deref() {
    None | Some("none") => Ok(false),
    Some("aof") => Ok(true),
    Some(other) => Err(StoreError::invalid_input(format!(
      "option `durability` must be \"none\" or \"aof\", got \"{other}\""
    ))),
  }
}

fn sqlite_store(path: PathBuf, options: &StoreOptions) -> StoreResult<NativeWorkerStore> {
  embedded_store(Location::File(path), options)
}

fn embedded_store(location: Location, options: &StoreOptions) -> StoreResult<NativeWorkerStore> {
  worker_store(embedded_engine(location, options)?)
}

fn embedded_engine(
  location: Location,
  options: &StoreOptions,
) -> StoreResult<(Engine, CommonSettings)> {
  let common = common_settings(options)?;
  let busy_ms = busy_timeout(options)?;
  let full_sync = synchronous(options)?;
  let page_size = Some(page_size(options)?);
  // A relative path is made absolute now, once: every connection (the calls', the
  // checkpoints') opens the same file, whatever the process's directory is later.
  let location = match location {
    Location::File(path) => Location::File(std::path::absolute(&path).map_err(|err| {
      StoreError::invalid_input(format!("invalid SQLite path {}: {err}", path.display()))
    })?),
    memory => memory,
  };
  let settings = EmbeddedSettings {
    location,
    busy_timeout: Duration::from_millis(busy_ms),
    full_sync,
    page_size,
    create: options.create_tables.unwrap_or(true),
  };
  let backend = EmbeddedBackend::new(settings);
  Ok((Engine::Embedded(Arc::new(backend)), common))
}

/// The page size of a new SQLite file: small pages make each commit's WAL append small
/// (measured in `npm run bench`: the lifecycle runs ~1.5x faster than with SQLite's 4 KiB).
const DEFAULT_PAGE_SIZE: u32 = 1024;

/// Redis over TCP runs on the JS thread's event loop (no thread hop per call) where that
/// loop is libuv's, that is on Node.js (see `runtime`); elsewhere (Bun, Deno, platforms
/// without it) over a socket of the JS runtime, with the same single-thread design
/// (`backend/redis_js.rs`). A unix socket, and a runtime without `node:net`, run on tokio
/// threads. `DURASTATE_REDIS_DRIVER=socket` or `=threads` picks one of the last two (for
/// tests and benchmarks). Every driver connects the same way (`backend/connect.rs`: TLS,
/// Sentinel, `durability: 'aof'`) and runs on the same connection core.
fn redis_engine(target: RedisTarget, common: &CommonSettings) -> Engine {
  let (connect, command) = (common.connect_timeout, common.command_timeout);
  match (target.is_tcp(), tcp_redis_driver()) {
    #[cfg(unix)]
    (true, RedisDriver::EventLoop) => {
      Engine::EventLoop(LoopRedis::new(target, connect, command, common.retry))
    }
    (true, RedisDriver::JsSocket) => {
      Engine::JsSocket(JsRedis::new(target, connect, command, common.retry))
    }
    _ => Engine::tokio(Arc::new(RedisBackend::new(
      target,
      connect,
      command,
      common.retry,
    ))),
  }
}

/// The Redis drivers (`redis_engine`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RedisDriver {
  EventLoop,
  JsSocket,
  Threads,
}

impl RedisDriver {
  pub fn name(self) -> &'static str {
    match self {
      RedisDriver::EventLoop => "event-loop",
      RedisDriver::JsSocket => "socket",
      RedisDriver::Threads => "threads",
    }
  }
}

/// The driver a Redis store over TCP gets on this JS thread.
pub fn tcp_redis_driver() -> RedisDriver {
  let wanted = std::env::var("DURASTATE_REDIS_DRIVER").unwrap_or_default();
  let event_loop = cfg!(unix) && crate::runtime::event_loop_unavailable().is_none();
  if event_loop && wanted != "threads" && wanted != "socket" {
    RedisDriver::EventLoop
  } else if wanted != "threads" && crate::backend::redis_js_registered() {
    RedisDriver::JsSocket
  } else {
    RedisDriver::Threads
  }
}

/// A Redis Cluster from `{ cluster: [url, ...], username, password, tls }`: durastate's
/// own router (`backend/cluster/`) over one threads-driver connection per master.
fn cluster_engine(
  fields: &RedisConnectionOptions,
  options: &StoreOptions,
) -> StoreResult<(Engine, CommonSettings)> {
  let common = common_settings(options)?;
  if options.sentinel_tls.is_some() {
    return Err(StoreError::invalid_input(
      "option `sentinelTls` applies only with sentinels, not to a Redis Cluster",
    ));
  }
  let target = crate::redis_target::cluster_target(fields, options.tls.as_ref())?;
  let backend = ClusterBackend::new(target, &common, durability(options)?)?;
  Ok((Engine::tokio(Arc::new(backend)), common))
}

/// Connections a Postgres store opens at most, by default: three group-commit lanes and
/// one for the sweep of expired rows.
const DEFAULT_POSTGRES_POOL: u64 = 4;

/// Postgres on tokio threads (`backend/postgres`).
fn postgres_engine(
  target: PostgresTarget,
  options: &StoreOptions,
) -> StoreResult<(Engine, CommonSettings)> {
  let common = common_settings(options)?;
  // `durability` (Redis's) is checked by `common_settings` and ignored here, as on SQLite:
  // every acknowledged write is committed as the server's `synchronous_commit` says.
  let pool_size = pool_size(options)?.unwrap_or(DEFAULT_POSTGRES_POOL) as usize;
  let backend = PostgresBackend::new(PostgresSettings {
    target,
    schema: options
      .schema
      .clone()
      .unwrap_or_else(|| "durastate".to_string()),
    pool_size,
    connect_timeout: common.connect_timeout,
    command_timeout: common.command_timeout,
    retry: common.retry,
    create_tables: options.create_tables.unwrap_or(true),
  })?;
  Ok((Engine::tokio(Arc::new(backend)), common))
}

fn worker_store((engine, common): (Engine, CommonSettings)) -> StoreResult<NativeWorkerStore> {
  if engine.needs_one_slot() && !common.hashtag {
    return Err(StoreError::invalid_input(
      "a WorkerStore on a Redis Cluster needs option `keyLayout: 'hashtag'`: the default \
       layout puts an execution's keys in different slots, where its atomic commit cannot run",
    ));
  }
  let config = StoreConfig {
    keys: KeyLayout::with_option(common.prefix, common.hashtag.then_some("hashtag"))?,
    ttl_ms: common.ttl_ms,
    command_timeout: common.command_timeout,
  };
  Ok(NativeWorkerStore::new(engine, config))
}
