//! Embedded backend: a SQLite database (a durable file, or private memory) owned by
//! one background thread per store. Calls queue to it and never block the JS thread.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Mutex;
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
}

struct Job {
  batch: Batch,
  reply: oneshot::Sender<StoreResult<Vec<Reply>>>,
}

enum Worker {
  NotStarted,
  Running(mpsc::Sender<Job>),
  Closed,
}

/// The embedded store's handle: a queue to its database thread.
pub struct EmbeddedBackend {
  settings: EmbeddedSettings,
  worker: Mutex<Worker>,
}

impl EmbeddedBackend {
  pub fn new(settings: EmbeddedSettings) -> Self {
    Self {
      settings,
      worker: Mutex::new(Worker::NotStarted),
    }
  }

  /// Runs a batch as one SQLite transaction on the store's thread.
  pub async fn execute(&self, batch: Batch) -> StoreResult<Vec<Reply>> {
    let (reply, receive) = oneshot::channel();
    self.submit(Job { batch, reply })?;
    receive.await.unwrap_or_else(|_| {
      Err(StoreError::new(
        ErrorCode::Internal,
        "the database thread stopped before answering",
      ))
    })
  }

  /// Stops taking calls; queued calls finish, then the database closes.
  pub fn close(&self) {
    *self.worker.lock().unwrap_or_else(|e| e.into_inner()) = Worker::Closed;
  }

  fn submit(&self, job: Job) -> StoreResult<()> {
    let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
    if let Worker::NotStarted = *worker {
      *worker = Worker::Running(self.spawn()?);
    }
    match &*worker {
      Worker::Running(sender) => sender
        .send(job)
        .map_err(|_| StoreError::new(ErrorCode::Internal, "the database thread has stopped")),
      _ => Err(StoreError::disposed()),
    }
  }

  fn spawn(&self) -> StoreResult<mpsc::Sender<Job>> {
    let (sender, jobs) = mpsc::channel();
    let settings = self.settings.clone();
    std::thread::Builder::new()
      .name("durastate-sqlite".into())
      .spawn(move || serve(settings, jobs))
      .map_err(|err| {
        StoreError::new(
          ErrorCode::Unavailable,
          format!("cannot start the database thread: {err}"),
        )
      })?;
    Ok(sender)
  }
}

fn serve(settings: EmbeddedSettings, jobs: mpsc::Receiver<Job>) {
  let mut database: Option<Connection> = None;
  while let Ok(job) = jobs.recv() {
    let result = run(&settings, &mut database, &job.batch);
    if matches!(&result, Err(err) if err.code == ErrorCode::CorruptData) {
      database = None;
    }
    let _ = job.reply.send(result);
  }
}

fn run(
  settings: &EmbeddedSettings,
  database: &mut Option<Connection>,
  batch: &Batch,
) -> StoreResult<Vec<Reply>> {
  if database.is_none() {
    *database = Some(open(settings)?);
  }
  let connection = database.as_mut().expect("opened above");
  keyspace::execute(connection, batch, now_ms())
}

fn open(settings: &EmbeddedSettings) -> StoreResult<Connection> {
  let connection = match &settings.location {
    Location::Memory => Connection::open_in_memory(),
    Location::File(path) => {
      create_parent_dir(path)?;
      Connection::open(path)
    }
  }
  .map_err(|err| open_error(settings, err.into()))?;
  connection
    .busy_timeout(settings.busy_timeout)
    .map_err(|err| open_error(settings, err.into()))?;
  keyspace::prepare(&connection, settings.full_sync).map_err(|err| open_error(settings, err))?;
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
