//! Calls on an embedded (SQLite or memory) store, from the JS thread: group commit.
//!
//! A call does not run when it is made: it joins this thread's pending calls, and the
//! first call of a tick schedules one microtask that runs them all. Calls that can run
//! on the JS thread run in one transaction (one WAL append for the whole group), and
//! each promise settles after that transaction committed. Calls that must wait (a
//! `synchronous: 'full'` store, another process's lock, keys of a call already queued)
//! go to the store's thread in the order they were made, and their continuation comes
//! back here.

use std::cell::{Cell, RefCell};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use napi::{sys, Env};

use crate::backend::{answer, Answer, Claim, EmbeddedBackend, Held};
use crate::command::{Batch, Finish, Step};
use crate::error::{ErrorCode, StoreError};
use crate::js_promise::{self, check, Deferred};

/// A call waiting for its batch to run.
pub struct Call {
  pub batch: Batch,
  pub waiter: Waiter,
}

/// Who waits for a call's batch, and what it does with the replies.
pub struct Waiter {
  pub store: Arc<EmbeddedBackend>,
  /// Counts the call as unsettled: the store closes after it, later batches included.
  pub held: Held,
  pub what: &'static str,
  pub limit: Duration,
  pub deferred: Deferred,
  pub finish: Finish,
}

/// Groups run on JS threads, and the calls in them (`debugEmbeddedGroups`).
static GROUPS: AtomicU64 = AtomicU64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);
/// Calls sent to a store's thread.
static QUEUED: AtomicU64 = AtomicU64::new(0);

/// `[groups, calls]` run on JS threads so far in this process (a group that found the
/// database busy counts here and again in `queued`), and `queued`: calls sent to a
/// store's thread.
pub fn group_counts() -> [u64; 3] {
  [
    GROUPS.load(Ordering::Relaxed),
    CALLS.load(Ordering::Relaxed),
    QUEUED.load(Ordering::Relaxed),
  ]
}

thread_local! {
  /// This JS thread's calls not yet run, in the order they were made.
  static PENDING: RefCell<Vec<Call>> = const { RefCell::new(Vec::new()) };
}

/// Adds `call` to this tick's group; the first call of a tick schedules the group.
/// (Running a read at once when nothing is pending was measured: it splits the groups
/// of concurrent calls, 64 in flight ran at half the speed.)
pub fn submit(env: &Env, call: Call) {
  let first = PENDING.with(|pending| {
    let mut pending = pending.borrow_mut();
    pending.push(call);
    pending.len() == 1
  });
  // Without a microtask queue, run the group now rather than leave its calls pending.
  if first && schedule(env).is_err() {
    flush(env);
  }
}

/// The JS values a group is scheduled with, made once per JS thread (per env): a
/// resolved promise, its `then`, and the function that runs the group. A reaction of a
/// resolved promise is a microtask, as `queueMicrotask`'s callback is, without the async
/// resource Node.js makes for each `queueMicrotask` (measured: 0.07 µs against 0.25 µs).
#[derive(Clone, Copy)]
struct Scheduler {
  env: sys::napi_env,
  resolved: sys::napi_ref,
  then: sys::napi_ref,
  flush: sys::napi_ref,
}

thread_local! {
  static SCHEDULER: Cell<Option<Scheduler>> = const { Cell::new(None) };
}

/// Queues one microtask that runs this thread's pending calls.
fn schedule(env: &Env) -> napi::Result<()> {
  let raw = env.raw();
  let scheduler = match SCHEDULER.with(Cell::get) {
    Some(scheduler) if scheduler.env == raw => scheduler,
    _ => {
      let scheduler = make_scheduler(raw)?;
      SCHEDULER.with(|cell| cell.set(Some(scheduler)));
      scheduler
    }
  };
  unsafe {
    let resolved = value_of(raw, scheduler.resolved)?;
    let then = value_of(raw, scheduler.then)?;
    let flush = value_of(raw, scheduler.flush)?;
    let mut result = ptr::null_mut();
    check(sys::napi_call_function(
      raw,
      resolved,
      then,
      1,
      &flush,
      &mut result,
    ))
  }
}

unsafe fn value_of(env: sys::napi_env, reference: sys::napi_ref) -> napi::Result<sys::napi_value> {
  let mut value = ptr::null_mut();
  check(sys::napi_get_reference_value(env, reference, &mut value))?;
  Ok(value)
}

unsafe fn property(
  env: sys::napi_env,
  object: sys::napi_value,
  name: &std::ffi::CStr,
) -> napi::Result<sys::napi_value> {
  let mut value = ptr::null_mut();
  check(sys::napi_get_named_property(
    env,
    object,
    name.as_ptr(),
    &mut value,
  ))?;
  Ok(value)
}

unsafe fn reference(env: sys::napi_env, value: sys::napi_value) -> napi::Result<sys::napi_ref> {
  let mut reference = ptr::null_mut();
  check(sys::napi_create_reference(env, value, 1, &mut reference))?;
  Ok(reference)
}

fn make_scheduler(env: sys::napi_env) -> napi::Result<Scheduler> {
  unsafe {
    let mut global = ptr::null_mut();
    check(sys::napi_get_global(env, &mut global))?;
    let promise = property(env, global, c"Promise")?;
    let resolve = property(env, promise, c"resolve")?;
    let mut resolved = ptr::null_mut();
    check(sys::napi_call_function(
      env,
      promise,
      resolve,
      0,
      ptr::null(),
      &mut resolved,
    ))?;
    let then = property(env, resolved, c"then")?;
    let mut flush = ptr::null_mut();
    let flush_name = c"durastateFlush";
    check(sys::napi_create_function(
      env,
      flush_name.as_ptr(),
      flush_name.count_bytes() as isize,
      Some(flush_callback),
      ptr::null_mut(),
      &mut flush,
    ))?;
    Ok(Scheduler {
      env,
      resolved: reference(env, resolved)?,
      then: reference(env, then)?,
      flush: reference(env, flush)?,
    })
  }
}

unsafe extern "C" fn flush_callback(
  env: sys::napi_env,
  _info: sys::napi_callback_info,
) -> sys::napi_value {
  let env = Env::from_raw(env);
  flush(&env);
  ptr::null_mut()
}

/// Runs this thread's pending calls on `store` now (it is closing: they were made before).
pub fn run_pending(env: &Env, store: &Arc<EmbeddedBackend>) {
  let group = PENDING.with(|pending| {
    let mut pending = pending.borrow_mut();
    let (group, rest) = std::mem::take(&mut *pending)
      .into_iter()
      .partition(|call: &Call| Arc::ptr_eq(&call.waiter.store, store));
    *pending = rest;
    group
  });
  if !group.is_empty() {
    run_group(env, store, group);
  }
}

/// Runs every pending call: one group per store, in the order the calls were made.
fn flush(env: &Env) {
  let mut calls = PENDING.with(|pending| std::mem::take(&mut *pending.borrow_mut()));
  while !calls.is_empty() {
    let store = calls[0].waiter.store.clone();
    let (group, rest): (Vec<Call>, Vec<Call>) = calls
      .into_iter()
      .partition(|call| Arc::ptr_eq(&call.waiter.store, &store));
    run_group(env, &store, group);
    calls = rest;
  }
}

fn run_group(env: &Env, store: &EmbeddedBackend, calls: Vec<Call>) {
  let mut now = Vec::with_capacity(calls.len());
  let mut queue: Vec<Call> = Vec::new();
  for call in calls {
    // Once a call queues, so do the later calls of the group on the same keys.
    if store.must_queue(&call.batch) || queue.iter().any(|q| overlaps(&q.batch, &call.batch)) {
      queue.push(call);
    } else {
      now.push(call);
    }
  }
  if !now.is_empty() {
    let batches: Vec<&Batch> = now.iter().map(|call| &call.batch).collect();
    GROUPS.fetch_add(1, Ordering::Relaxed);
    CALLS.fetch_add(batches.len() as u64, Ordering::Relaxed);
    match store.try_run_now(&batches) {
      None => {
        // The database is busy (another process holds its write lock): the writes wait
        // on the store's thread. Reads no earlier call of the group writes still run now
        // (WAL readers take no lock); before, they queued with the writes and failed with
        // them (TIMEOUT) when the lock outlived the busy timeout.
        let mut waiting: Vec<Call> = Vec::new();
        let mut reads: Vec<Call> = Vec::new();
        for call in now {
          if call.batch.writes() || waiting.iter().any(|w| overlaps(&w.batch, &call.batch)) {
            waiting.push(call);
          } else {
            reads.push(call);
          }
        }
        let batches: Vec<&Batch> = reads.iter().map(|call| &call.batch).collect();
        let answered = match reads.is_empty() {
          true => None,
          false => store.try_run_now(&batches),
        };
        match answered {
          Some(answers) => {
            let answers = crate::backend::spread(answers, reads.len());
            for (call, answer) in reads.into_iter().zip(answers) {
              resume(env, call.waiter, answer);
            }
          }
          // Busy for reads too (the database is being opened, a checkpoint truncates it):
          // they queue as well, after the writes they do not touch.
          None => waiting.extend(reads),
        }
        queue.splice(0..0, waiting).for_each(drop);
      }
      Some(answers) => {
        let answers = crate::backend::spread(answers, now.len());
        for (call, answer) in now.into_iter().zip(answers) {
          resume(env, call.waiter, answer);
        }
      }
    }
  }
  if !queue.is_empty() {
    to_thread(env, store, queue);
  }
}

/// Whether two batches touch a common key, or either reads keys it does not name.
fn overlaps(a: &Batch, b: &Batch) -> bool {
  a.reads_any_key() || b.reads_any_key() || a.keys().any(|key| b.keys().any(|other| other == key))
}

/// Settles the call, or submits the batch its continuation asks for next.
fn resume(env: &Env, waiter: Waiter, answer: Answer) {
  let Waiter {
    store,
    held,
    what,
    limit,
    deferred,
    finish,
  } = waiter;
  let replies = match answer {
    Ok(replies) => replies,
    Err(err) => return js_promise::settle(env.raw(), deferred, Err(err)),
  };
  match finish(replies) {
    Step::Done(result) => js_promise::settle(env.raw(), deferred, result),
    Step::Then(batch, finish) => {
      let waiter = Waiter {
        store,
        held,
        what,
        limit,
        deferred,
        finish,
      };
      submit(env, Call { batch, waiter })
    }
  }
}

/// Queues calls to the store's thread as one group and resumes them together on the
/// JS thread when it answers (one wake-up for the whole group), each within its own
/// `limit` (a KV call that waited behind others on its keys has less left). At a call's
/// limit, if the thread has not started it, it is given up ([`Claim`]): it rejects with
/// `TIMEOUT` and will never run; one it has started (it holds the write lock) is settled
/// by its answer, which is due shortly.
fn to_thread(env: &Env, store: &EmbeddedBackend, calls: Vec<Call>) {
  let (batches, waiters): (Vec<Batch>, Vec<Waiter>) = calls
    .into_iter()
    .map(|call| (call.batch, call.waiter))
    .unzip();
  QUEUED.fetch_add(batches.len() as u64, Ordering::Relaxed);
  let deferreds: Vec<Deferred> = waiters.iter().map(|w| w.deferred).collect();
  let claims: Vec<Arc<Claim>> = batches.iter().map(|_| Arc::default()).collect();
  let receiver = match store.enqueue(batches, claims.clone()) {
    Ok(receiver) => receiver,
    Err(err) => return reject_all(env, &deferreds, &err),
  };
  let limits: Vec<Duration> = waiters.iter().map(|w| w.limit).collect();
  let spawned = env.spawn_future_with_callback(
    async move {
      let started = tokio::time::Instant::now();
      let answers = answer(receiver);
      tokio::pin!(answers);
      let mut abandoned = vec![false; claims.len()];
      let mut deadlines = limits.clone();
      deadlines.sort_unstable();
      deadlines.dedup();
      for deadline in deadlines {
        if let Ok(answers) = tokio::time::timeout_at(started + deadline, &mut answers).await {
          return Ok((answers, abandoned));
        }
        for (i, claim) in claims.iter().enumerate() {
          if limits[i] <= deadline && !abandoned[i] {
            abandoned[i] = claim.abandon();
          }
        }
        if abandoned.iter().all(|given_up| *given_up) {
          return Ok((Ok(Vec::new()), abandoned));
        }
      }
      Ok((answers.await, abandoned))
    },
    move |env, (answers, abandoned)| {
      let given_up = |i: usize| abandoned.get(i).copied().unwrap_or(false);
      let mut answers = match answers {
        Ok(answers) => answers.into_iter().map(Some).collect(),
        Err(err) => vec![Some(Err(err)); waiters.len()],
      };
      answers.resize(waiters.len(), None);
      for (i, (waiter, answer)) in waiters.into_iter().zip(answers).enumerate() {
        match answer {
          Some(answer) if !given_up(i) => resume(env, waiter, answer),
          _ => {
            let err = StoreError::timeout(waiter.what, waiter.limit.as_millis() as u64);
            js_promise::settle(env.raw(), waiter.deferred, Err(err))
          }
        }
      }
      Ok(())
    },
  );
  if let Err(err) = spawned {
    let err = StoreError::new(ErrorCode::Internal, err.reason.clone());
    reject_all(env, &deferreds, &err);
  }
}

fn reject_all(env: &Env, deferreds: &[Deferred], err: &StoreError) {
  for deferred in deferreds {
    js_promise::settle(env.raw(), *deferred, Err(err.clone()));
  }
}
