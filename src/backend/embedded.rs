//! Embedded backend: a SQLite database (a durable file, or private memory) owned by
//! one background thread per store. Calls queue to it and never block the JS thread.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::keyspace;
use crate::command::{Batch, Reply};
use crate::error::{ErrorCode, StoreError, StoreResult};

/// Where the embedded data lives.
#[derive(Debug, Clone)]
pub enum Location {
  /// A database file (created with its directories on first use).
  File(PathBuf),
  /// Private memory of this store; gone when it closes.
  Memory,
}

/// How the database is opened.
#[derive(Debug, Clone)]
pub struct EmbeddedSettings {
  pub location: Location,
  pub busy_timeout: Duration,
  /// `PRAGMA synchronous=FULL` rather than `NORMAL`.
  pub full_sync: bool,
  /// `PRAGMA page_size` for a new database (an existing file keeps its own).
  pub page_size: Option<u32>,
}

enum Job {
  /// A call to run as one transaction.
  Call {
    batch: Batch,
    reply: oneshot::Sender<StoreResult<Vec<Reply>>>,
  },
  /// Copy the WAL back into the database file (it fsyncs: never on the JS thread).
  Checkpoint,
}

/// WAL pages after which a checkpoint is due (SQLite's own default threshold).
const CHECKPOINT_PAGES: i32 = 1000;

enum Worker {
  NotStarted,
  Running(mpsc::Sender<Job>),
  Closed,
}

/// The database connection, shared by the JS thread (fast path) and the store's thread.
type Database = Arc<Mutex<Option<Connection>>>;

/// The embedded store's handle. A call runs at once on the calling (JS) thread when the
/// database is free and nothing is queued (no thread hop: a small transaction takes
/// microseconds); otherwise, or when it would have to wait for another process's lock
/// or for an fsync (`synchronous: 'full'`), it queues to the store's own thread.
pub struct EmbeddedBackend {
  settings: EmbeddedSettings,
  database: Database,
  /// The keys of calls queued to the store's thread and not finished (with counts). A
  /// call touching any of them queues behind them, so calls on the same execution
  /// apply in the order they were made; calls on other keys need not wait.
  queued: Arc<QueuedKeys>,
  /// Set by the WAL hook once the WAL is long enough to checkpoint. SQLite's automatic
  /// checkpoint is replaced by this, so the fsync it does happens on the store's thread.
  checkpoint_due: Arc<AtomicBool>,
  worker: Mutex<Worker>,
}

impl EmbeddedBackend {
  pub fn new(settings: EmbeddedSettings) -> Self {
    Self {
      settings,
      database: Arc::new(Mutex::new(None)),
      queued: Arc::new(QueuedKeys::default()),
      checkpoint_due: Arc::new(AtomicBool::new(false)),
      worker: Mutex::new(Worker::NotStarted),
    }
  }

  /// Runs the batch on the calling (JS) thread if that cannot block: no fsync is due
  /// (not `synchronous: 'full'`), the database is open and free, no queued call touches
  /// the same keys, and no other process holds the write lock (the busy timeout is 0
  /// here, so a busy transaction changes nothing). `None`: queue it, in order, with
  /// [`enqueue`](Self::enqueue) instead.
  pub fn try_execute_now(&self, batch: &Batch) -> Option<StoreResult<Vec<Reply>>> {
    if self.settings.full_sync || self.queued.touches(batch) {
      return None;
    }
    let mut database = self.database.try_lock().ok()?;
    let connection = database.as_mut()?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
      connection.busy_timeout(Duration::ZERO)?;
      keyspace::execute(connection, batch, now_ms())
    }));
    if matches!(&outcome, Ok(Err(err)) if err.code == ErrorCode::CorruptData) {
      *database = None;
    }
    drop(database);
    if self.checkpoint_due.load(Ordering::Acquire) {
      let _ = self.submit(Job::Checkpoint);
    }
    match outcome {
      Ok(Err(err)) if err.code == ErrorCode::Timeout => None,
      Ok(result) => Some(result),
      Err(panic) => Some(Err(crate::guard::panic_error("embedded store call", panic))),
    }
  }

  /// Queues a batch to the store's thread now (so calls keep the order they were made
  /// in); the receiver yields its result.
  pub fn enqueue(&self, batch: Batch) -> StoreResult<oneshot::Receiver<StoreResult<Vec<Reply>>>> {
    let (reply, receive) = oneshot::channel();
    self.submit(Job::Call { batch, reply })?;
    Ok(receive)
  }

  /// Runs a batch as one SQLite transaction on the store's thread.
  pub async fn execute(&self, batch: Batch) -> StoreResult<Vec<Reply>> {
    answer(self.enqueue(batch)?).await
  }

  /// Stops taking calls; queued calls finish, then the database closes.
  pub fn close(&self) {
    *self.worker.lock().unwrap_or_else(|e| e.into_inner()) = Worker::Closed;
    if self.queued.is_empty() {
      if let Ok(mut database) = self.database.try_lock() {
        *database = None;
      }
    }
  }

  fn submit(&self, job: Job) -> StoreResult<()> {
    let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
    if let Worker::NotStarted = *worker {
      *worker = Worker::Running(self.spawn()?);
    }
    match &*worker {
      Worker::Running(sender) => {
        if let Job::Call { batch, .. } = &job {
          self.queued.add(batch);
        }
        sender.send(job).map_err(|unsent| {
          if let Job::Call { batch, .. } = &unsent.0 {
            self.queued.remove(batch);
          }
          StoreError::new(ErrorCode::Internal, "the database thread has stopped")
        })
      }
      _ => Err(StoreError::disposed()),
    }
  }

  fn spawn(&self) -> StoreResult<mpsc::Sender<Job>> {
    let (sender, jobs) = mpsc::channel();
    let settings = self.settings.clone();
    let shared = Shared {
      database: self.database.clone(),
      queued: self.queued.clone(),
      checkpoint_due: self.checkpoint_due.clone(),
    };
    std::thread::Builder::new()
      .name("durastate-sqlite".into())
      .spawn(move || serve(settings, shared, jobs))
      .map_err(|err| {
        StoreError::new(
          ErrorCode::Unavailable,
          format!("cannot start the database thread: {err}"),
        )
      })?;
    Ok(sender)
  }
}

/// The result a queued call's receiver yields.
pub async fn answer(
  receiver: oneshot::Receiver<StoreResult<Vec<Reply>>>,
) -> StoreResult<Vec<Reply>> {
  receiver.await.unwrap_or_else(|_| {
    Err(StoreError::new(
      ErrorCode::Internal,
      "the database thread stopped before answering",
    ))
  })
}

/// What the store's thread shares with the JS thread.
struct Shared {
  database: Database,
  queued: Arc<QueuedKeys>,
  checkpoint_due: Arc<AtomicBool>,
}

fn serve(settings: EmbeddedSettings, shared: Shared, jobs: mpsc::Receiver<Job>) {
  while let Ok(job) = jobs.recv() {
    let mut database = shared.database.lock().unwrap_or_else(|e| e.into_inner());
    if let Job::Call { batch, reply } = job {
      let due = &shared.checkpoint_due;
      let result = run(&settings, &mut database, &batch, settings.busy_timeout, due);
      shared.queued.remove(&batch);
      let _ = reply.send(result);
    }
    if shared.checkpoint_due.swap(false, Ordering::AcqRel) {
      checkpoint(database.as_ref());
    }
  }
  // The store was closed (or dropped) and every queued call is done.
  *shared.database.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// A passive checkpoint: copies what it can without waiting for other connections.
/// Failure is harmless (the WAL just stays longer); the next one retries.
fn checkpoint(connection: Option<&Connection>) {
  if let Some(connection) = connection {
    let _ = connection.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
  }
}

/// Keys of the calls queued to the store's thread, with how many calls touch each.
#[derive(Default)]
struct QueuedKeys(Mutex<HashMap<String, usize>>);

impl QueuedKeys {
  fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
    self.0.lock().unwrap_or_else(|e| e.into_inner())
  }

  fn touches(&self, batch: &Batch) -> bool {
    let queued = self.lock();
    !queued.is_empty()
      && (batch.reads_any_key() || batch_keys(batch).any(|key| queued.contains_key(key)))
  }

  fn is_empty(&self) -> bool {
    self.lock().is_empty()
  }

  fn add(&self, batch: &Batch) {
    let mut queued = self.lock();
    for key in batch_keys(batch) {
      *queued.entry(key.clone()).or_default() += 1;
    }
  }

  fn remove(&self, batch: &Batch) {
    let mut queued = self.lock();
    for key in batch_keys(batch) {
      if let Some(count) = queued.get_mut(key) {
        *count -= 1;
        if *count == 0 {
          queued.remove(key);
        }
      }
    }
  }
}

fn batch_keys(batch: &Batch) -> impl Iterator<Item = &String> {
  batch.commands.iter().flat_map(|command| command.keys())
}

/// Runs one batch, opening the database on first use; waits up to `busy` for another
/// process's lock. A database found corrupt is closed, to be opened afresh next time.
fn run(
  settings: &EmbeddedSettings,
  database: &mut Option<Connection>,
  batch: &Batch,
  busy: Duration,
  checkpoint_due: &Arc<AtomicBool>,
) -> StoreResult<Vec<Reply>> {
  if database.is_none() {
    *database = Some(open(settings, checkpoint_due.clone())?);
  }
  let connection = database.as_mut().expect("opened above");
  connection.busy_timeout(busy)?;
  let result = keyspace::execute(connection, batch, now_ms());
  if matches!(&result, Err(err) if err.code == ErrorCode::CorruptData) {
    *database = None;
  }
  result
}

fn open(settings: &EmbeddedSettings, checkpoint_due: Arc<AtomicBool>) -> StoreResult<Connection> {
  let mut connection = match &settings.location {
    Location::Memory => Connection::open_in_memory(),
    Location::File(path) => {
      create_parent_dir(path)?;
      Connection::open(path)
    }
  }
  .map_err(|err| open_error(settings, err.into()))?;
  connection.set_prepared_statement_cache_capacity(64);
  connection
    .busy_timeout(settings.busy_timeout)
    .map_err(|err| open_error(settings, err.into()))?;
  keyspace::prepare(&connection, settings.full_sync, settings.page_size)
    .map_err(|err| open_error(settings, err))?;
  // Replaces SQLite's automatic checkpoint (which would fsync inside a commit on
  // whichever thread made it) with a flag the store's thread acts on.
  connection
    .wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
      if pages >= CHECKPOINT_PAGES {
        checkpoint_due.store(true, Ordering::Release);
      }
      Ok(())
    }))
    .map_err(|err| open_error(settings, err.into()))?;
  Ok(connection)
}

fn create_parent_dir(path: &std::path::Path) -> StoreResult<()> {
  match path.parent() {
    Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir).map_err(|err| {
      StoreError::new(
        ErrorCode::Unavailable,
        format!("cannot create directory {}: {err}", dir.display()),
      )
    }),
    _ => Ok(()),
  }
}

fn open_error(settings: &EmbeddedSettings, err: StoreError) -> StoreError {
  let place = match &settings.location {
    Location::File(path) => format!("SQLite file {}", path.display()),
    Location::Memory => "in-memory database".to_string(),
  };
  let hint = if err.code == ErrorCode::CorruptData {
    " (it is not a durastate database or it is damaged; move it aside to start afresh)"
  } else {
    ""
  };
  StoreError::new(
    err.code,
    format!("cannot open {place}: {}{hint}", err.message),
  )
}

/// Milliseconds since the Unix epoch: TTLs in the file must mean the same to every process.
pub fn now_ms() -> u64 {
  std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .map(|d| d.as_millis() as u64)
    .unwrap_or(0)
}
