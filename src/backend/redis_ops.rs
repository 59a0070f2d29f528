//! How the Redis backends (event loop, threads, cluster) run the store operations of
//! the seam: each step operation is lowered into hash commands on the byte-compatible
//! `@idioteque/redis` layout, and their replies are folded back into the operation's
//! reply. Entry commands (strings) pass through unchanged.
//!
//! Layout, for an execution whose marker key is `<exec>`: the marker string `<exec>`,
//! the hash of steps in progress `<exec>-transactions` (task -> mark), and the hash of
//! results `<exec>-results` (task -> JSON text).

use crate::command::{Batch, Command, ExecutionView, Reply, Step};
use crate::glob;

use crate::keys::{RESULTS_SUFFIX as RESULTS, TRANSACTIONS_SUFFIX as TRANSACTIONS};

/// Lowers `step`'s batch, and every batch its continuation asks for, into Redis commands.
pub fn lower_step(step: Step) -> Step {
  match step {
    Step::Done(result) => Step::Done(result),
    Step::Then(batch, finish) => {
      let (batch, folds) = lower(batch);
      Step::Then(
        batch,
        Box::new(move |replies| lower_step(finish(fold(folds, replies)))),
      )
    }
  }
}

/// How the replies of one lowered operation become its reply.
enum Fold {
  /// One command, its reply as is.
  Same,
  /// `n` commands; the reply of the first.
  First(usize),
  /// `n` commands; `Ok`.
  Ok(usize),
  /// GET, HGETALL, HGETALL, PTTL, PTTL, PTTL.
  Execution,
  /// A SCAN whose keys become execution keys.
  ExecutionKeys,
  /// EXISTS then a write: `Nil` when the key was missing (as `SET ... GET` answers).
  Existed,
}

fn lower(batch: Batch) -> (Batch, Vec<Fold>) {
  let mut commands = Vec::with_capacity(batch.commands.len() + 2);
  let mut folds = Vec::with_capacity(batch.commands.len());
  let mut atomic = batch.atomic;
  let resend = batch.resend;
  for command in batch.commands {
    let before = commands.len();
    let fold = lower_one(command, &mut commands);
    // An operation that became several writes is applied whole (MULTI/EXEC). EXISTS then
    // SET is not: a key made or removed between them by another client only moves this
    // process's entry count by one, which it counts again once stale.
    atomic |= matches!(fold, Fold::First(_) | Fold::Ok(_)) && commands.len() - before > 1;
    folds.push(fold);
  }
  let lowered = Batch {
    commands,
    atomic,
    resend,
  };
  (lowered, folds)
}

fn lower_one(command: Command, out: &mut Vec<Command>) -> Fold {
  match command {
    Command::Claim {
      exec,
      task,
      value,
      exclusive,
      ttl_ms,
    } => {
      let key = format!("{exec}{TRANSACTIONS}");
      match (exclusive, ttl_ms) {
        // A claim that lost must not refresh the marks' expiry: one script.
        (true, Some(ttl_ms)) => {
          out.push(Command::HSetNxExpire {
            key,
            field: task,
            value,
            ttl_ms,
          });
          Fold::Same
        }
        (true, None) => {
          out.push(Command::HSetNx {
            key,
            field: task,
            value,
          });
          Fold::Same
        }
        (false, ttl_ms) => {
          out.push(Command::HSet {
            key: key.clone(),
            field: task,
            value,
          });
          push_expiry(out, key, ttl_ms);
          Fold::First(1 + ttl_ms.is_some() as usize)
        }
      }
    }
    Command::Commit {
      exec,
      task,
      json,
      ttl_ms,
    } => {
      let results = format!("{exec}{RESULTS}");
      out.push(Command::HDel {
        key: format!("{exec}{TRANSACTIONS}"),
        field: task.clone(),
      });
      out.push(Command::HSet {
        key: results.clone(),
        field: task,
        value: json,
      });
      push_expiry(out, results, ttl_ms);
      Fold::Ok(2 + ttl_ms.is_some() as usize)
    }
    Command::StepResult { exec, task } => hget(out, exec + RESULTS, task),
    Command::StepClaim { exec, task } => hget(out, exec + TRANSACTIONS, task),
    Command::StepResults { exec } => {
      out.push(Command::HGetAll {
        key: exec + RESULTS,
      });
      Fold::Same
    }
    Command::Dispose { exec } => {
      let keys = vec![
        exec.clone(),
        format!("{exec}{TRANSACTIONS}"),
        exec + RESULTS,
      ];
      out.push(Command::Del { keys });
      Fold::Ok(1)
    }
    Command::ResetSteps { exec, tasks } => {
      let (transactions, results) = (format!("{exec}{TRANSACTIONS}"), exec + RESULTS);
      for task in &tasks {
        for key in [&transactions, &results] {
          out.push(Command::HDel {
            key: key.clone(),
            field: task.clone(),
          });
        }
      }
      Fold::Ok(2 * tasks.len())
    }
    Command::Execution { exec } => {
      let (transactions, results) = (format!("{exec}{TRANSACTIONS}"), exec.clone() + RESULTS);
      out.push(Command::Get { key: exec.clone() });
      out.push(Command::HGetAll {
        key: transactions.clone(),
      });
      out.push(Command::HGetAll {
        key: results.clone(),
      });
      for key in [exec, transactions, results] {
        out.push(Command::PTtl { key });
      }
      Fold::Execution
    }
    Command::ScanExecutions {
      cursor,
      prefix,
      count,
    } => {
      out.push(Command::Scan {
        cursor,
        pattern: format!("{}*", glob::escape(&prefix)),
        count,
        kind: None,
      });
      Fold::ExecutionKeys
    }
    // Not `SET ... GET`, which fails with WRONGTYPE on a key holding another type (another
    // program's hash under a mount's prefix): inside a MULTI the batch's other writes would
    // still be applied (a `setMany` half written), and a `SET` without `GET` (the path of a
    // stale count) overwrites that key. EXISTS then SET never fails (in a `setMany`, the
    // batch's MULTI/EXEC holds them all).
    Command::SetGet { key, value, ttl_ms } => {
      out.push(Command::Exists { key: key.clone() });
      out.push(Command::Set { key, value, ttl_ms });
      Fold::Existed
    }
    other => {
      out.push(other);
      Fold::Same
    }
  }
}

fn hget(out: &mut Vec<Command>, key: String, field: String) -> Fold {
  out.push(Command::HGet { key, field });
  Fold::Same
}

fn push_expiry(out: &mut Vec<Command>, key: String, ttl_ms: Option<u64>) {
  if let Some(ttl_ms) = ttl_ms {
    out.push(Command::PExpire { key, ttl_ms });
  }
}

fn fold(folds: Vec<Fold>, replies: Vec<Reply>) -> Vec<Reply> {
  let mut replies = replies.into_iter();
  let mut take = |n: usize| -> Vec<Reply> { replies.by_ref().take(n).collect() };
  folds
    .into_iter()
    .map(|fold| match fold {
      Fold::Same => first(take(1)),
      Fold::First(n) => first(take(n)),
      Fold::Ok(n) => {
        take(n);
        Reply::Ok
      }
      Fold::Execution => execution(take(6)),
      Fold::ExecutionKeys => execution_keys(first(take(1))),
      Fold::Existed => match first(take(2)) {
        Reply::Int(0) => Reply::Nil,
        existed => existed,
      },
    })
    .collect()
}

fn first(replies: Vec<Reply>) -> Reply {
  replies.into_iter().next().unwrap_or(Reply::Nil)
}

fn execution(replies: Vec<Reply>) -> Reply {
  let mut replies = replies.into_iter();
  let mut next = || replies.next().unwrap_or(Reply::Nil);
  let marker = match next() {
    Reply::Bytes(bytes) => Some(bytes),
    _ => None,
  };
  let claims = pairs(next());
  let results = pairs(next());
  let mut ttl = || match next() {
    Reply::Int(ms) => ms,
    _ => -2,
  };
  Reply::Execution(Box::new(ExecutionView {
    marker,
    marker_ttl: ttl(),
    claims,
    claims_ttl: ttl(),
    results,
    results_ttl: ttl(),
  }))
}

fn pairs(reply: Reply) -> Vec<(Vec<u8>, Vec<u8>)> {
  match reply {
    Reply::Pairs(pairs) => pairs,
    _ => Vec::new(),
  }
}

/// Hash keys become the execution they belong to; other keys stay (a marker, or a KV
/// entry that [`Command::Execution`] will show is not an execution).
fn execution_keys(reply: Reply) -> Reply {
  match reply {
    Reply::Scan { cursor, keys } => {
      let keys = keys
        .into_iter()
        .map(|key| match key.strip_suffix(TRANSACTIONS) {
          Some(exec) => exec.to_string(),
          None => key.strip_suffix(RESULTS).unwrap_or(&key).to_string(),
        })
        .collect();
      Reply::Scan { cursor, keys }
    }
    other => other,
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn lowered(command: Command) -> Batch {
    lower(Batch::one(command)).0
  }

  #[test]
  fn an_exclusive_claim_with_ttl_is_one_script_that_expires_only_when_it_won() {
    let batch = lowered(Command::Claim {
      exec: "p:e".into(),
      task: "t".into(),
      value: "true".into(),
      exclusive: true,
      ttl_ms: Some(5),
    });
    assert!(!batch.atomic);
    assert_eq!(
      batch.commands,
      vec![Command::HSetNxExpire {
        key: "p:e-transactions".into(),
        field: "t".into(),
        value: "true".into(),
        ttl_ms: 5
      }]
    );
    let batch = lowered(Command::Claim {
      exec: "p:e".into(),
      task: "t".into(),
      value: "true".into(),
      exclusive: false,
      ttl_ms: Some(5),
    });
    assert!(batch.atomic);
    assert_eq!(batch.commands.len(), 2);
    let folded = fold(vec![Fold::First(2)], vec![Reply::Int(0), Reply::Int(1)]);
    assert_eq!(folded, vec![Reply::Int(0)]);
  }

  #[test]
  fn a_commit_without_ttl_is_hdel_hset_in_one_transaction() {
    let batch = lowered(Command::Commit {
      exec: "e".into(),
      task: "t".into(),
      json: "1".into(),
      ttl_ms: None,
    });
    assert!(batch.atomic);
    assert_eq!(batch.commands.len(), 2);
    assert!(!lowered(Command::StepResults { exec: "e".into() }).atomic);
  }

  #[test]
  fn scanned_hash_keys_name_their_execution() {
    let reply = Reply::Scan {
      cursor: "7".into(),
      keys: vec!["a-results".into(), "b-transactions".into(), "c".into()],
    };
    let keys = ["a", "b", "c"].map(String::from).to_vec();
    assert_eq!(
      execution_keys(reply),
      Reply::Scan {
        cursor: "7".into(),
        keys
      }
    );
  }
}
