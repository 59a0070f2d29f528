//! Embedded backend: a SQLite database (a durable file, or private memory) on tables
//! shaped for the stores (`sqlite/`). Calls made in the same tick run as one group, in
//! one transaction, on the JS thread when that cannot block, else on the store's own
//! thread (which groups what is queued to it the same way).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::sqlite::{self, Sweeper};
use crate::command::{Batch, Reply};
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::guard::{Calls, Shut};

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
  /// Whether opening may create the file, its directory and the store's tables, and
  /// migrate an older format (the store option `createTables`, default true). Without,
  /// the file must hold a store of this build's format, and opening it writes nothing:
  /// the CLI's reads.
  pub create: bool,
}

/// What a call's batch answers.
pub type Answer = StoreResult<Vec<Reply>>;

enum Job {
  /// Calls, run in one transaction with the calls queued with them; answered together.
  /// Each call's [`Claim`] says whether its caller still waits for it.
  Calls {
    batches: Vec<Batch>,
    claims: Vec<Arc<Claim>>,
    reply: oneshot::Sender<Vec<Answer>>,
  },
  /// Copy the WAL back into the database file (it fsyncs: never on the JS thread).
  Checkpoint,
}

/// Whether a call queued to the store's thread still runs: its caller's deadline
/// (`commandTimeout`) and the thread race for it. The thread, once its transaction has
/// begun (a write group holds the write lock), takes each call from `PENDING` to
/// `RUNNING` and skips those already `ABANDONED`; the deadline takes a call from
/// `PENDING` to `ABANDONED` and rejects it with `TIMEOUT`, or, finding it `RUNNING`,
/// lets its answer (due shortly: the lock is held) settle it. So a call that rejected
/// `TIMEOUT` was not applied, and is never applied later.
#[derive(Default)]
pub struct Claim(AtomicU8);

const PENDING: u8 = 0;
const RUNNING: u8 = 1;
const ABANDONED: u8 = 2;

impl Claim {
  /// The store's thread: whether the call runs (it was not abandoned); from now on
  /// it cannot be.
  fn start(&self) -> bool {
    match self
      .0
      .compare_exchange(PENDING, RUNNING, Ordering::AcqRel, Ordering::Acquire)
    {
      Ok(_) => true,
      Err(state) => state == RUNNING,
    }
  }

  /// Whether the caller already gave up (the call will not run).
  fn is_abandoned(&self) -> bool {
    self.0.load(Ordering::Acquire) == ABANDONED
  }

  /// The caller's deadline: whether the call was given up (it had not started, and
  /// now never will); `false`: it runs, and its answer is due.
  pub fn abandon(&self) -> bool {
    match self
      .0
      .compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
    {
      Ok(_) => true,
      Err(state) => state == ABANDONED,
    }
  }
}

/// WAL pages after which a checkpoint is due (SQLite's own default threshold).
const CHECKPOINT_PAGES: i32 = 1000;
/// Calls the store's thread runs in one transaction at most.
const GROUP_LIMIT: usize = 256;

/// An open database, its sweep clock, and the watch on its file.
struct Db {
  connection: Connection,
  sweeper: Sweeper,
  file: FileWatch,
  /// How long its rescue of a deleted WAL waits for other connections.
  busy_timeout: Duration,
}

/// How often the calls ask whether the database file was deleted or replaced (one
/// `stat` of its path): a call within this time of the last check does not ask.
const MOVED_CHECK_EVERY: Duration = Duration::from_millis(100);

/// Whether the file the store has open is still the one at its path. A file deleted, or
/// replaced (renamed over), under an open connection takes the writes made to it since
/// with it: they go to a file no name reaches. SQLite does not notice on its own; the
/// store asks every [`MOVED_CHECK_EVERY`] on the calls' path and before each checkpoint.
///
/// The same for the WAL and shared-memory files (`-wal`, `-shm`), part of the database
/// while it is open: a WAL deleted under the connection keeps the acknowledged writes
/// only in a file no name reaches (lost in a crash), and a shared-memory file deleted or
/// replaced splits the processes using the database (each its own index of the WAL:
/// they overwrite each other's frames, and the file ends up corrupted).
struct FileWatch {
  /// The database file (`None` in memory).
  path: Option<PathBuf>,
  /// When the calls' path asks next.
  next_check: Instant,
  /// The WAL and shared-memory files this connection uses (path, device and inode; an id
  /// is recorded once the file exists). When the database file moved, SQLite closes
  /// without checkpointing and leaves them: the next connection to open the path would
  /// take this WAL for the new file's and copy its pages into that file (a replacement
  /// overwritten with pages of the old one). Those still at their names are removed then.
  companions: Vec<(PathBuf, Option<(u64, u64)>)>,
  /// A companion found deleted or replaced: the calls do not run on this connection
  /// any more.
  changed: Option<Changed>,
}

/// A `-wal` or `-shm` file deleted or replaced under the open connection.
#[derive(Clone)]
struct Changed {
  path: PathBuf,
  wal: bool,
  deleted: bool,
}

impl FileWatch {
  fn new(location: &Location) -> Self {
    let path = match location {
      Location::File(path) => Some(path.clone()),
      Location::Memory => None,
    };
    let companions = path
      .iter()
      .flat_map(|path| ["-wal", "-shm"].map(|suffix| companion(path, suffix)))
      .map(|companion| {
        let id = file_id(&companion);
        (companion, id)
      })
      .collect();
    Self {
      path,
      next_check: Instant::now() + MOVED_CHECK_EVERY,
      companions,
      changed: None,
    }
  }

  /// The first companion no longer at its name (a `stat` of each); records the id of
  /// one that exists for the first time.
  fn companion_changed(&mut self) -> Option<Changed> {
    for (path, id) in &mut self.companions {
      let now = file_id(path);
      match (*id, now) {
        (None, now) => *id = now,
        (Some(was), Some(is)) if was == is => {}
        (Some(_), now) => {
          return Some(Changed {
            wal: path.as_os_str().to_string_lossy().ends_with("-wal"),
            path: path.clone(),
            deleted: now.is_none(),
          })
        }
      }
    }
    None
  }
}

impl Db {
  fn open(settings: &EmbeddedSettings, checkpoint_due: Arc<AtomicBool>) -> StoreResult<Self> {
    let connection = open(settings, checkpoint_due)?;
    Ok(Self {
      connection,
      sweeper: Sweeper::default(),
      file: FileWatch::new(&settings.location),
      busy_timeout: settings.busy_timeout,
    })
  }

  /// `UNAVAILABLE` when the file was deleted or replaced since it was opened (asked at
  /// most every [`MOVED_CHECK_EVERY`]): the caller then drops this `Db`, so the next
  /// call opens the file at the path anew.
  fn check_file(&mut self) -> StoreResult<()> {
    let Some(path) = &self.file.path else {
      return Ok(());
    };
    let now = Instant::now();
    if now < self.file.next_check {
      return Ok(());
    }
    self.file.next_check = now + MOVED_CHECK_EVERY;
    if has_moved(&self.connection) {
      return Err(moved_error(path));
    }
    if self.file.changed.is_none() {
      self.file.changed = self.file.companion_changed();
    }
    Ok(())
  }

  /// After a companion was deleted or replaced: copies the frames of the WAL this
  /// connection has open (still readable through it, whatever is at its name now) into
  /// the database file, waiting up to the busy timeout, so the acknowledged writes are
  /// in the file before the connection closes. Whether they are (all frames copied). A
  /// changed `-shm` alone needs no copy: the WAL at its name holds the frames.
  fn rescue(&self, changed: &Changed) -> bool {
    if !changed.wal {
      return true;
    }
    // (frames are -1 when the checkpoint could not run)
    let copied = wal_checkpoint(&self.connection, "TRUNCATE");
    matches!(copied, Ok((busy, frames, done)) if busy == 0 || (frames >= 0 && frames == done))
  }
}

impl Drop for Db {
  fn drop(&mut self) {
    if self.file.path.is_none() {
      return;
    }
    if has_moved(&self.connection) {
      for (path, id) in &self.file.companions {
        if id.is_some() && file_id(path) == *id {
          let _ = std::fs::remove_file(path);
        }
      }
      return;
    }
    // A WAL deleted or replaced under the connection: its frames are copied into the
    // file before the connection closes (closing copies them only when it is the last
    // connection to the file).
    let changed = self
      .file
      .changed
      .take()
      .or_else(|| self.file.companion_changed());
    if let Some(changed) = changed {
      let _ = self.connection.busy_timeout(self.busy_timeout);
      self.rescue(&changed);
    }
  }
}

/// SQLite's `SQLITE_FCNTL_HAS_MOVED`: whether the file `connection` has open is no longer
/// the one at its path (deleted, or another file renamed over it); one `stat`.
fn has_moved(connection: &Connection) -> bool {
  let mut moved: std::ffi::c_int = 0;
  // SAFETY: the handle is open for as long as `connection` is borrowed, "main" is a
  // NUL-terminated name, and this file control writes one int to the pointer given.
  let rc = unsafe {
    rusqlite::ffi::sqlite3_file_control(
      connection.handle(),
      c"main".as_ptr(),
      rusqlite::ffi::SQLITE_FCNTL_HAS_MOVED,
      (&mut moved as *mut std::ffi::c_int).cast(),
    )
  };
  rc == rusqlite::ffi::SQLITE_OK && moved != 0
}

fn moved_error(path: &Path) -> StoreError {
  StoreError::new(
    ErrorCode::Unavailable,
    format!(
      "the database file {} was deleted or replaced while the store had it open: writes \
       made to it since are lost with it; the next call opens the file at that path anew",
      path.display()
    ),
  )
}

/// `UNAVAILABLE` naming the `-wal` or `-shm` file deleted or replaced, and what became
/// of the writes the WAL held (`saved`: copied into the database file).
fn companion_error(changed: &Changed, saved: bool) -> StoreError {
  let what = match changed.deleted {
    true => "deleted",
    false => "replaced",
  };
  let kind = match changed.wal {
    true => "WAL file",
    false => "shared-memory file",
  };
  let next = match (changed.wal, saved) {
    (true, true) => {
      "the writes it held were copied into the database file from the open WAL; the \
       store closed its connections, and the next call opens the database anew"
    }
    (true, false) => {
      "the writes it held could not be copied into the database file yet (another \
       connection is using the database): they are only in the open WAL, which no name \
       reaches, and are lost if this process ends; calls reject until the copy succeeds \
       (close() tries once more)"
    }
    (false, _) => {
      "processes opening the database since use another one, so the file may be \
       corrupted; the store closed its connections, and the next call opens the database \
       anew"
    }
  };
  StoreError::new(
    ErrorCode::Unavailable,
    format!(
      "the {kind} {} of the database was {what} while the store had it open (the -wal and \
       -shm files are part of the database: never delete them while a process has it \
       open); {next}",
      changed.path.display()
    ),
  )
}

/// `<path><suffix>` (the WAL is `state.db-wal`).
fn companion(path: &Path, suffix: &str) -> PathBuf {
  let mut name = path.as_os_str().to_owned();
  name.push(suffix);
  PathBuf::from(name)
}

/// The device and inode of the file at `path`.
#[cfg(unix)]
fn file_id(path: &Path) -> Option<(u64, u64)> {
  use std::os::unix::fs::MetadataExt;
  let meta = std::fs::metadata(path).ok()?;
  Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &Path) -> Option<(u64, u64)> {
  None
}

fn location_id(location: &Location) -> Option<(u64, u64)> {
  match location {
    Location::File(path) => file_id(path),
    Location::Memory => None,
  }
}

enum Worker {
  NotStarted,
  Running(mpsc::Sender<Job>),
  Closed,
}

/// The database connection, shared by the JS thread (fast path) and the store's thread.
type Database = Arc<Mutex<Option<Db>>>;

/// The embedded store's handle. A group of calls (`embedded_call`) runs on the JS thread
/// when the database is free and none of its calls touches keys queued to the store's
/// thread (no thread hop: a small transaction takes microseconds); otherwise, or when it
/// would wait for another process's lock or for an fsync (`synchronous: 'full'`), the
/// group queues to the store's own thread.
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
  /// Calls made on the store and not settled ([`hold`](Self::hold)): the database closes
  /// when the last call made before `close()` settles.
  calls: Calls,
  /// Set once the database is closed for good after `close()`: every connection to the
  /// file released (so SQLite checkpointed the WAL into it and removed the WAL file).
  finished: Arc<crate::guard::Latch>,
  /// Why the WAL could not be copied into the file at close (`close()` rejects with it).
  close_error: CloseError,
}

/// The failure of the checkpoint made when the store closes, if any.
type CloseError = Arc<Mutex<Option<StoreError>>>;

impl EmbeddedBackend {
  /// `sqlite` or `memory`, as traces name the backend.
  pub fn kind(&self) -> &'static str {
    match self.settings.location {
      Location::File(_) => "sqlite",
      Location::Memory => "memory",
    }
  }

  pub fn new(settings: EmbeddedSettings) -> Self {
    Self {
      settings,
      database: Arc::new(Mutex::new(None)),
      queued: Arc::new(QueuedKeys::default()),
      checkpoint_due: Arc::new(AtomicBool::new(false)),
      worker: Mutex::new(Worker::NotStarted),
      calls: Calls::default(),
      finished: Arc::default(),
      close_error: Arc::default(),
    }
  }

  /// Whether a call on `batch` must queue to the store's thread: every call does with
  /// `synchronous: 'full'` (its commit fsyncs), and so does a call touching keys of a
  /// call queued there (calls on the same keys keep their order).
  pub fn must_queue(&self, batch: &Batch) -> bool {
    self.settings.full_sync || self.queued.touches(batch)
  }

  /// Runs `batches` as one group on the calling (JS) thread if that cannot block: the
  /// database is open and free, and no other process holds the write lock (the busy
  /// timeout is 0 here, so a busy group changes nothing). `None`: queue them, in order,
  /// with [`enqueue`](Self::enqueue) instead.
  pub fn try_run_now(&self, batches: &[&Batch]) -> Option<StoreResult<Vec<Answer>>> {
    let mut database = self.database.try_lock().ok()?;
    let db = database.as_mut()?;
    if let Err(err) = db.check_file() {
      *database = None;
      return Some(Err(err));
    }
    // A companion file changed: the store's thread copies the WAL into the file (it
    // waits for locks, which this thread must not).
    if db.file.changed.is_some() {
      return None;
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
      db.connection.busy_timeout(Duration::ZERO)?;
      sqlite::execute_group(&mut db.connection, batches, now_ms, &mut db.sweeper)
    }));
    if matches!(&outcome, Ok(Err(err)) if err.code == ErrorCode::CorruptData && !err.one_value) {
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

  /// Queues calls to the store's thread now (so calls keep the order they were made
  /// in); the receiver yields their answers, in order, all at once. A call whose
  /// claim is [abandoned](Claim::abandon) before the thread starts it is skipped (its
  /// answer is nobody's).
  pub fn enqueue(
    &self,
    batches: Vec<Batch>,
    claims: Vec<Arc<Claim>>,
  ) -> StoreResult<oneshot::Receiver<Vec<Answer>>> {
    let (reply, receive) = oneshot::channel();
    self.submit(Job::Calls {
      batches,
      claims,
      reply,
    })?;
    Ok(receive)
  }

  /// Counts a call until the guard is dropped (when it settles): its batches run, all of
  /// them, even after [`close`](Self::close).
  pub fn hold(self: &Arc<Self>) -> Held {
    Calls::hold(self)
  }

  /// Stops taking calls once the calls made before settled (their later batches
  /// included); queued calls finish, then the database closes ([`closed`] tells when).
  ///
  /// [`closed`]: Self::closed
  pub fn close(&self) {
    Calls::close(self)
  }

  /// Resolves once the database is closed after [`close`](Self::close): the calls queued
  /// before it ran, and every connection to the file is released (the last one to close
  /// copies the WAL into the file and deletes it), so the file can be copied or removed.
  ///
  /// `UNAVAILABLE` when the WAL could not be copied into the file then (the file cannot
  /// be written): the store is closed all the same, and the WAL, left next to the file,
  /// holds writes the file lacks.
  pub fn closed(&self) -> impl std::future::Future<Output = StoreResult<()>> + Send + 'static {
    let finished = self.finished.wait();
    let close_error = self.close_error.clone();
    async move {
      finished.await;
      match close_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
        Some(err) => Err(err),
        None => Ok(()),
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
        if let Job::Calls { batches, .. } = &job {
          batches.iter().for_each(|batch| self.queued.add(batch));
        }
        sender.send(job).map_err(|unsent| {
          if let Job::Calls { batches, .. } = &unsent.0 {
            batches.iter().for_each(|batch| self.queued.remove(batch));
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
      close_error: self.close_error.clone(),
      database: self.database.clone(),
      queued: self.queued.clone(),
      checkpoint_due: self.checkpoint_due.clone(),
      finished: self.finished.clone(),
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

/// A call of [`EmbeddedBackend::hold`], not settled yet.
pub type Held = crate::guard::Held<EmbeddedBackend>;

impl Shut for EmbeddedBackend {
  fn calls(&self) -> &Calls {
    &self.calls
  }

  /// Stops taking batches: the store's thread ends after its queue, closing the database.
  fn shut(&self) {
    let was = std::mem::replace(
      &mut *self.worker.lock().unwrap_or_else(|e| e.into_inner()),
      Worker::Closed,
    );
    // A file is closed by the store's thread (its last checkpoint fsyncs, never on the
    // JS thread, and a failure of it is what `close()` rejects with).
    if self.queued.is_empty() && matches!(self.settings.location, Location::Memory) {
      if let Ok(mut database) = self.database.try_lock() {
        *database = None;
      }
    }
    // The store's thread (the only one that opens the database) closes everything it
    // holds once its queue is done, then says so; without that thread nothing was opened.
    if let Worker::NotStarted = was {
      self.finished.set();
    }
  }
}

/// The answers a queued group's receiver yields.
pub async fn answer(receiver: oneshot::Receiver<Vec<Answer>>) -> StoreResult<Vec<Answer>> {
  receiver.await.map_err(|_| {
    StoreError::new(
      ErrorCode::Internal,
      "the database thread stopped before answering",
    )
  })
}

/// What the store's thread shares with the JS thread.
struct Shared {
  close_error: CloseError,
  database: Database,
  queued: Arc<QueuedKeys>,
  checkpoint_due: Arc<AtomicBool>,
  finished: Arc<crate::guard::Latch>,
}

/// Closes the database and says `closed()` when dropped: when the store's thread ends,
/// whether its queue is done or a bug made it panic (so `close()` never waits for a
/// thread that is gone, nor resolves with the file still open).
struct Finished(Database, Arc<crate::guard::Latch>);

impl Drop for Finished {
  fn drop(&mut self) {
    *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    self.1.set();
  }
}

fn serve(settings: EmbeddedSettings, shared: Shared, jobs: mpsc::Receiver<Job>) {
  let _finished = Finished(shared.database.clone(), shared.finished.clone());
  let mut checkpointer = Checkpointer::default();
  // The device and inode of the file the calls' connection opened last.
  let mut calls_file = None;
  while let Ok(job) = jobs.recv() {
    // Every job queued by now joins one transaction, up to GROUP_LIMIT calls.
    let mut groups = Vec::new();
    let (mut calls, mut next) = (0, Some(job));
    while let Some(job) = next.take() {
      if let Job::Calls {
        batches,
        claims,
        reply,
      } = job
      {
        calls += batches.len();
        groups.push((batches, claims, reply));
      }
      if calls < GROUP_LIMIT {
        next = jobs.try_recv().ok();
      }
    }
    if calls > 0 {
      crate::debug::sqlite_thread_panic_point();
      // The lock is let go before the answers are sent: the JS thread, woken by them,
      // would otherwise find the database busy and queue its next call here too.
      let answers = {
        let mut database = shared.database.lock().unwrap_or_else(|e| e.into_inner());
        // The calls' connection was dropped (a damaged file, a moved one): the checkpoint
        // connection goes too, before the calls' opens again. Its lock would make that
        // wait (a file truncated in place is set up again, under an exclusive lock), and
        // it keeps the old file's shared memory in this process.
        if database.is_none() {
          checkpointer.close();
        }
        let batches: Vec<&Batch> = groups.iter().flat_map(|(b, ..)| b.iter()).collect();
        let claims: Vec<Arc<Claim>> = groups
          .iter()
          .flat_map(|(_, c, _)| c.iter().cloned())
          .collect();
        let answers = run(
          &settings,
          &mut database,
          &mut calls_file,
          &batches,
          &claims,
          &shared.checkpoint_due,
        );
        if database.is_none() {
          checkpointer.close();
        }
        answers
      };
      let mut answers = spread(answers, calls).into_iter();
      // (The keys of skipped calls are let go too: they will not run.)
      for (batches, _, reply) in groups {
        batches.iter().for_each(|batch| shared.queued.remove(batch));
        let _ = reply.send(answers.by_ref().take(batches.len()).collect());
      }
    }
    if shared.checkpoint_due.swap(false, Ordering::AcqRel) {
      checkpointer.run(&settings, calls_file);
    }
  }
  // The store was closed (or dropped) and every queued call is done: the connections
  // close (the last one checkpoints the WAL into the file and removes it), then
  // `closed()` resolves.
  // The checkpoint connection first: the calls' connection, closing last, copies the WAL
  // it has open (the one holding its writes, even when another is at its name now).
  drop(checkpointer);
  close_database(
    &mut shared.database.lock().unwrap_or_else(|e| e.into_inner()),
    &shared.close_error,
  );
}

/// Closes the database when the store closes, first copying the WAL into the file (what
/// closing does anyway when this is the last connection to it). When that copy fails or
/// stops short and the file cannot be opened for writing (made read-only or immutable
/// while the store ran: every checkpoint failed), the file alone lacks acknowledged
/// writes: `close()` rejects with that (kept in `close_error`). A copy held back by
/// other connections to the file is theirs to finish.
fn close_database(database: &mut Option<Db>, close_error: &CloseError) {
  let Some(db) = database.take() else {
    return;
  };
  if let Some(path) = &db.file.path {
    if !has_moved(&db.connection) {
      let copied = wal_checkpoint(&db.connection, "PASSIVE");
      let failure = match copied {
        Ok((0, frames, done)) if frames == done => None,
        Ok(_) => Some("the checkpoint stopped short".to_string()),
        Err(err) => Some(StoreError::from(err).message),
      };
      let unwritable = || std::fs::OpenOptions::new().write(true).open(path).err();
      if let Some((failure, why)) = failure.and_then(|f| Some((f, unwritable()?))) {
        *close_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(StoreError::new(
          ErrorCode::Unavailable,
          format!(
            "the store closed, but its WAL could not be copied into the database file {} \
             ({failure}; the file cannot be written: {why}): {} holds acknowledged writes \
             the file lacks; keep it next to the file (a store opening the file reads it, \
             and copies it in once the file can be written)",
            path.display(),
            companion(path, "-wal").display()
          ),
        ));
      }
    }
  }
  drop(db);
}

/// One answer per call: a group's failure is every call's.
pub fn spread(answers: StoreResult<Vec<Answer>>, calls: usize) -> Vec<Answer> {
  match answers {
    Ok(answers) => answers,
    Err(err) => vec![Err(err); calls],
  }
}

/// The store thread's own connection to the file, for checkpoints only. A checkpoint
/// copies WAL pages into the database file and fsyncs it (milliseconds on a slow disk);
/// on a connection of its own it holds no lock the store's calls need, so calls keep
/// running on the JS thread meanwhile (SQLite lets readers and a writer go on during a
/// checkpoint). On the calls' connection, every call made during a checkpoint waited
/// for it.
///
/// A passive checkpoint never catches up with writes that never pause: the WAL starts
/// over only when a writer finds every frame copied, and frames are appended during each
/// checkpoint's fsync, so the file grew without bound (hundreds of MB in seconds). Once
/// the WAL holds [`WAL_LIMIT_BYTES`] after a passive checkpoint, a `TRUNCATE` one makes
/// writers wait for the last frames (calls made meanwhile queue to this thread, which runs
/// them right after) and empties the file.
#[derive(Default)]
struct Checkpointer {
  connection: Option<Connection>,
  page_size: i64,
  /// The device and inode of the file at the path when it opened its connection.
  file: Option<(u64, u64)>,
}

/// WAL size after which a checkpoint makes writers wait to start the WAL over.
const WAL_LIMIT_BYTES: i64 = 16 << 20;
/// How long that checkpoint waits for other connections at most.
const TRUNCATE_WAIT: Duration = Duration::from_millis(100);

impl Checkpointer {
  /// Closes its connection (the next checkpoint opens one anew).
  fn close(&mut self) {
    self.connection = None;
  }

  /// Copies what it can without waiting for other connections; then, past the limit,
  /// what is left, and empties the WAL. Failure is harmless (the WAL just stays longer);
  /// the next one retries.
  ///
  /// Never into a file other than the one the calls' connection opened (`calls_file`):
  /// the checkpoint's own file is still the one at the path (`SQLITE_FCNTL_HAS_MOVED`),
  /// and was, when it opened it, the one the calls opened. (Told without the calls'
  /// connection: its lock is the JS thread's fast path.)
  fn run(&mut self, settings: &EmbeddedSettings, calls_file: Option<(u64, u64)>) {
    let Location::File(path) = &settings.location else {
      return;
    };
    if self.connection.is_none() {
      // Never creates the file: one deleted under the store is not made anew (empty)
      // here, which made SQLite drop the WAL holding the store's acknowledged writes.
      let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
      self.connection = Connection::open_with_flags(path, flags).ok();
      self.file = file_id(path);
      self.page_size = self
        .connection
        .as_ref()
        .and_then(|c| c.query_row("PRAGMA page_size", [], |row| row.get(0)).ok())
        .unwrap_or(4096);
    }
    let Some(connection) = &self.connection else {
      return;
    };
    // Its own file moved (deleted or replaced since it opened it), or is not the calls'
    // file: copying the WAL would write into the old file, or, through a WAL the
    // replacement now shares, pages of the old file into the new one.
    if self.file != calls_file || has_moved(connection) {
      self.connection = None;
      return;
    }
    let checkpoint = |mode: &str| wal_checkpoint(connection, mode).map(|(_, frames, _)| frames);
    let done = checkpoint("PASSIVE").and_then(|frames| {
      if frames * self.page_size < WAL_LIMIT_BYTES {
        return Ok(());
      }
      // While it waits it holds writers back: briefly (this process's transactions take
      // microseconds). A reader of another process that keeps the WAL longer makes it
      // give up; the next checkpoint due tries again.
      connection.busy_timeout(TRUNCATE_WAIT)?;
      checkpoint("TRUNCATE").map(drop)
    });
    if done.is_err() {
      self.connection = None;
    }
  }
}

/// `PRAGMA wal_checkpoint(<mode>)`: (busy, frames in the WAL, frames copied).
fn wal_checkpoint(connection: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
  connection.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
  })
}

/// Keys of the calls queued to the store's thread, with how many calls touch each, and
/// how many queued calls read keys they do not name (a `SCAN`): while one waits, every
/// later call queues behind it, so none runs ahead of the listing.
#[derive(Default)]
struct QueuedKeys(Mutex<Queued>);

#[derive(Default)]
struct Queued {
  keys: HashMap<String, usize>,
  scans: usize,
}

impl QueuedKeys {
  fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
    self.0.lock().unwrap_or_else(|e| e.into_inner())
  }

  fn touches(&self, batch: &Batch) -> bool {
    let queued = self.lock();
    queued.scans > 0
      || (!queued.keys.is_empty()
        && (batch.reads_any_key() || batch.keys().any(|key| queued.keys.contains_key(key))))
  }

  fn is_empty(&self) -> bool {
    let queued = self.lock();
    queued.keys.is_empty() && queued.scans == 0
  }

  fn add(&self, batch: &Batch) {
    let mut queued = self.lock();
    if batch.reads_any_key() {
      queued.scans += 1;
    }
    for key in batch.keys() {
      *queued.keys.entry(key.clone()).or_default() += 1;
    }
  }

  fn remove(&self, batch: &Batch) {
    let mut queued = self.lock();
    if batch.reads_any_key() {
      queued.scans = queued.scans.saturating_sub(1);
    }
    for key in batch.keys() {
      if let Some(count) = queued.keys.get_mut(key) {
        *count -= 1;
        if *count == 0 {
          queued.keys.remove(key);
        }
      }
    }
  }
}

/// Runs a group of calls, opening the database on first use; waits up to the busy
/// timeout for another process's lock. Calls whose caller gave up meanwhile are skipped
/// ([`Claim`]). A database found corrupt is closed, to be opened afresh next time.
fn run(
  settings: &EmbeddedSettings,
  database: &mut Option<Db>,
  opened: &mut Option<(u64, u64)>,
  batches: &[&Batch],
  claims: &[Arc<Claim>],
  checkpoint_due: &Arc<AtomicBool>,
) -> StoreResult<Vec<Answer>> {
  // Every caller gave up already: nothing to open or wait for.
  if claims.iter().all(|claim| claim.is_abandoned()) {
    return Ok(claims.iter().map(|_| Err(sqlite::skipped())).collect());
  }
  if database.is_none() {
    *database = Some(Db::open(settings, checkpoint_due.clone())?);
    *opened = location_id(&settings.location);
  }
  let db = database.as_mut().expect("opened above");
  if let Err(err) = db.check_file() {
    *database = None;
    return Err(err);
  }
  db.connection.busy_timeout(settings.busy_timeout)?;
  if let Some(changed) = db.file.changed.clone() {
    let saved = db.rescue(&changed);
    if saved {
      // Closed now (and the checkpoint connection with it): the next call opens the
      // database, its -wal and -shm at their names.
      db.file.changed = None;
      *database = None;
    }
    return Err(companion_error(&changed, saved));
  }
  db.connection.busy_handler(Some(give_up_when_abandoned(
    claims.to_vec(),
    settings.busy_timeout,
  )))?;
  let claim = |i: usize| claims[i].start();
  let abandoned = |i: usize| claims[i].is_abandoned();
  let result = sqlite::execute_claimed_group(
    &mut db.connection,
    batches,
    claim,
    abandoned,
    now_ms,
    &mut db.sweeper,
  );
  if matches!(&result, Err(err) if err.code == ErrorCode::CorruptData && !err.one_value) {
    *database = None;
  }
  result
}

/// The busy handler of a group on the store's thread: waits for another process's lock
/// up to `timeout` (as `busy_timeout` does), but stops as soon as every caller of the
/// group gave up (`TIMEOUT`): the group would be skipped anyway, and `close()` waits for
/// it. Polls every few milliseconds, so a caller's deadline is seen at once.
fn give_up_when_abandoned(
  claims: Vec<Arc<Claim>>,
  timeout: Duration,
) -> impl FnMut(i32) -> bool + Send + 'static {
  let mut started = Instant::now();
  move |count: i32| {
    if count == 0 {
      started = Instant::now();
    }
    if claims.iter().all(|claim| claim.is_abandoned()) {
      return false;
    }
    let left = timeout.saturating_sub(started.elapsed());
    if left.is_zero() {
      return false;
    }
    let pause = Duration::from_millis(match count {
      0 => 1,
      1 => 2,
      _ => 5,
    });
    std::thread::sleep(left.min(pause));
    true
  }
}

fn open(settings: &EmbeddedSettings, checkpoint_due: Arc<AtomicBool>) -> StoreResult<Connection> {
  let mut connection = match &settings.location {
    Location::Memory => Connection::open_in_memory(),
    Location::File(path) if !settings.create => {
      if !path.exists() {
        return Err(StoreError::new(
          ErrorCode::Unavailable,
          format!("no SQLite file at {}", path.display()),
        ));
      }
      // Without SQLITE_OPEN_CREATE: a file removed since is not made anew.
      Connection::open_with_flags(path, OpenFlags::default() - OpenFlags::SQLITE_OPEN_CREATE)
    }
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
  prepare_waiting(&mut connection, settings).map_err(|err| open_error(settings, err))?;
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

/// Prepares the file, waiting up to the busy timeout for another process that opens it at
/// the same moment: switching a new file to WAL can answer "database is locked" at once,
/// without SQLite's busy handler, while another connection sets the file up.
fn prepare_waiting(connection: &mut Connection, settings: &EmbeddedSettings) -> StoreResult<()> {
  let started = std::time::Instant::now();
  loop {
    let now = || now_ms() as i64;
    let create = settings.create || matches!(settings.location, Location::Memory);
    match sqlite::prepare(
      connection,
      settings.full_sync,
      settings.page_size,
      now,
      create,
    ) {
      Err(err) if err.code == ErrorCode::Timeout && started.elapsed() < settings.busy_timeout => {
        std::thread::sleep(Duration::from_millis(10));
      }
      other => return other,
    }
  }
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
