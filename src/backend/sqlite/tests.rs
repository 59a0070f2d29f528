//! The SQL backend against Redis's semantics: entries, step operations, TTLs, sweeps,
//! groups, and the query plans that keep them off full scans.

use rusqlite::{Connection, OptionalExtension};

use super::*;
use crate::command::{Condition, ExecutionView, KeyKind, MergeOutcome};

fn db() -> Connection {
  let mut connection = Connection::open_in_memory().unwrap();
  prepare(&mut connection, false, None, || 0, true).unwrap();
  connection
}

fn run(c: &mut Connection, command: Command, now: u64) -> StoreResult<Reply> {
  let batch = Batch::one(command);
  let mut answers = execute_group(c, &[&batch], || now, &mut Sweeper::default())?;
  answers.remove(0).map(|mut replies| replies.remove(0))
}

fn set(c: &mut Connection, key: &str, value: &str, ttl_ms: Option<u64>, now: u64) {
  let command = Command::Set {
    key: key.into(),
    value: value.into(),
    ttl_ms,
  };
  assert_eq!(run(c, command, now).unwrap(), Reply::Ok);
}

fn get(c: &mut Connection, key: &str, now: u64) -> Reply {
  run(c, Command::Get { key: key.into() }, now).unwrap()
}

fn claim(exec: &str, task: &str, exclusive: bool, ttl_ms: Option<u64>) -> Command {
  Command::Claim {
    exec: exec.into(),
    task: task.into(),
    value: "true".into(),
    exclusive,
    ttl_ms,
  }
}

fn commit(exec: &str, task: &str, json: &str, ttl_ms: Option<u64>) -> Command {
  Command::Commit {
    exec: exec.into(),
    task: task.into(),
    json: json.into(),
    ttl_ms,
  }
}

fn view(c: &mut Connection, exec: &str, now: u64) -> ExecutionView {
  match run(c, Command::Execution { exec: exec.into() }, now).unwrap() {
    Reply::Execution(view) => *view,
    other => panic!("{other:?}"),
  }
}

fn count(c: &Connection, table: &str) -> i64 {
  let sql = format!("SELECT count(*) FROM {table}");
  c.query_row(&sql, [], |r| r.get(0)).unwrap()
}

fn scan_all(c: &mut Connection, pattern: &str, count: u32, now: u64) -> Vec<String> {
  let (mut cursor, mut found) = ("0".to_string(), Vec::new());
  loop {
    let command = Command::Scan {
      cursor,
      pattern: pattern.into(),
      count,
      kind: Some(KeyKind::String),
    };
    let Reply::Scan { cursor: next, keys } = run(c, command, now).unwrap() else {
      panic!("not a scan page")
    };
    found.extend(keys);
    if next == "0" {
      return found;
    }
    cursor = next;
  }
}

#[test]
fn scan_pages_through_live_entries_matching_the_glob() {
  let mut c = db();
  for i in 0..25 {
    set(&mut c, &format!("a*[x]:{i:02}"), "1", None, 0);
  }
  set(&mut c, "a*[x]:gone", "1", Some(10), 0);
  set(&mut c, "ab:1", "1", None, 0);
  let pattern = format!("{}*", crate::glob::escape("a*[x]:"));
  let expected: Vec<String> = (0..25).map(|i| format!("a*[x]:{i:02}")).collect();
  assert_eq!(scan_all(&mut c, &pattern, 4, 100), expected);
  assert_eq!(scan_all(&mut c, "a*[x]:0?", 1000, 100).len(), 0);
  assert_eq!(scan_all(&mut c, "a\\*\\[x\\]:0?", 1000, 100).len(), 10);
}

#[test]
fn conditional_sets_set_get_and_pttl() {
  let mut c = db();
  let set_if = |when| Command::SetIf {
    key: "k".into(),
    value: "v".into(),
    ttl_ms: None,
    when,
  };
  assert_eq!(
    run(&mut c, set_if(Condition::Exists), 0).unwrap(),
    Reply::Nil
  );
  assert_eq!(
    run(&mut c, set_if(Condition::Missing), 0).unwrap(),
    Reply::Ok
  );
  assert_eq!(
    run(&mut c, set_if(Condition::Missing), 0).unwrap(),
    Reply::Nil
  );
  let set_get = Command::SetGet {
    key: "k".into(),
    value: "w".into(),
    ttl_ms: Some(50),
  };
  assert_eq!(
    run(&mut c, set_get, 0).unwrap(),
    Reply::Bytes(b"v".to_vec())
  );
  let pttl = Command::PTtl { key: "k".into() };
  assert_eq!(run(&mut c, pttl.clone(), 10).unwrap(), Reply::Int(40));
  assert_eq!(run(&mut c, pttl, 60).unwrap(), Reply::Int(-2));
  // An expired entry is missing to NX, and not there for XX.
  assert_eq!(
    run(&mut c, set_if(Condition::Exists), 60).unwrap(),
    Reply::Nil
  );
  assert_eq!(
    run(&mut c, set_if(Condition::Missing), 60).unwrap(),
    Reply::Ok
  );
}

#[test]
fn merge_keeps_the_ttl_checks_the_size_and_refuses_non_objects() {
  let mut c = db();
  let merge = |partial: &str, create, max_size| Command::Merge {
    key: "m".into(),
    partial: partial.into(),
    ttl_ms: None,
    max_size,
    create,
  };
  let outcome = |reply| match reply {
    Reply::Merge(outcome) => outcome,
    other => panic!("{other:?}"),
  };
  let missing = run(&mut c, merge(r#"{"a":1}"#, false, 100), 0).unwrap();
  assert_eq!(outcome(missing), MergeOutcome::Missing);
  set(&mut c, "m", r#"{"a":1}"#, Some(1_000), 0);
  let merged = run(&mut c, merge(r#"{"b":2}"#, false, 100), 10).unwrap();
  assert_eq!(outcome(merged), MergeOutcome::Merged { created: false });
  assert_eq!(
    get(&mut c, "m", 20),
    Reply::Bytes(br#"{"a":1,"b":2}"#.to_vec())
  );
  let pttl = run(&mut c, Command::PTtl { key: "m".into() }, 20).unwrap();
  assert_eq!(pttl, Reply::Int(980));
  let big = run(&mut c, merge(r#"{"c":"xxxxxxxx"}"#, false, 20), 30).unwrap();
  assert_eq!(outcome(big), MergeOutcome::TooLarge(28));
  set(&mut c, "m", "[1]", None, 40);
  let list = run(&mut c, merge("{}", false, 100), 50).unwrap();
  assert_eq!(outcome(list), MergeOutcome::NotAnObject);
}

#[test]
fn entries_expire_exactly_at_their_ttl_and_deletes_count_live_ones() {
  let mut c = db();
  set(&mut c, "k", "v", Some(100), 1_000);
  assert_eq!(get(&mut c, "k", 1_099), Reply::Bytes(b"v".to_vec()));
  assert_eq!(get(&mut c, "k", 1_100), Reply::Nil);
  set(&mut c, "live", "v", None, 1_100);
  let unlink = Command::Unlink {
    keys: vec!["k".into(), "live".into(), "never".into()],
  };
  assert_eq!(run(&mut c, unlink, 1_100).unwrap(), Reply::Int(1));
  assert_eq!(
    count(&c, "ds_entries"),
    0,
    "the expired entry is removed too"
  );
}

#[test]
fn an_exclusive_claim_wins_once_and_commit_clears_it() {
  let mut c = db();
  assert_eq!(
    run(&mut c, claim("e", "t", true, None), 0).unwrap(),
    Reply::Int(1)
  );
  assert_eq!(
    run(&mut c, claim("e", "t", true, None), 0).unwrap(),
    Reply::Int(0)
  );
  let step_claim = Command::StepClaim {
    exec: "e".into(),
    task: "t".into(),
  };
  assert_eq!(
    run(&mut c, step_claim.clone(), 0).unwrap(),
    Reply::Bytes(b"true".to_vec())
  );
  run(&mut c, commit("e", "t", r#"{"z":1,"a":2}"#, None), 0).unwrap();
  assert_eq!(run(&mut c, step_claim, 0).unwrap(), Reply::Nil);
  let result = Command::StepResult {
    exec: "e".into(),
    task: "t".into(),
  };
  assert_eq!(
    run(&mut c, result, 0).unwrap(),
    Reply::Bytes(br#"{"z":1,"a":2}"#.to_vec())
  );
  // A step done can be claimed again (a retried step), as HSETNX on the marks allows.
  assert_eq!(
    run(&mut c, claim("e", "t", true, None), 0).unwrap(),
    Reply::Int(1)
  );
}

#[test]
fn marks_and_results_expire_as_their_two_hashes_do() {
  let mut c = db();
  run(&mut c, claim("e", "a", false, Some(100)), 0).unwrap();
  run(&mut c, claim("e", "b", false, Some(100)), 50).unwrap();
  run(&mut c, commit("e", "a", "1", Some(1_000)), 60).unwrap();
  let v = view(&mut c, "e", 100);
  assert_eq!(
    (v.claims.len(), v.claims_ttl),
    (1, 50),
    "b's claim reset the TTL of all marks"
  );
  assert_eq!((v.results.len(), v.results_ttl), (1, 960));
  let v = view(&mut c, "e", 150);
  assert_eq!((v.claims.len(), v.claims_ttl), (0, -2));
  // The last mark cleared by a commit takes the marks' expiry with it.
  run(&mut c, claim("e", "c", false, Some(100)), 200).unwrap();
  run(&mut c, commit("e", "c", "2", None), 210).unwrap();
  run(&mut c, claim("e", "d", false, None), 220).unwrap();
  assert_eq!(view(&mut c, "e", 10_000).claims_ttl, -1);
  assert_eq!(view(&mut c, "e", 1_059).results.len(), 2);
  assert_eq!(view(&mut c, "e", 1_060).results.len(), 0);
}

#[test]
fn dispose_removes_the_marker_the_steps_and_the_expiries() {
  let mut c = db();
  set(&mut c, "e", "true", Some(1_000), 0);
  run(&mut c, claim("e", "a", false, Some(1_000)), 0).unwrap();
  run(&mut c, commit("e", "b", "1", None), 0).unwrap();
  set(&mut c, "e2", "true", None, 0);
  run(&mut c, Command::Dispose { exec: "e".into() }, 0).unwrap();
  assert_eq!(
    view(&mut c, "e", 0),
    ExecutionView {
      marker_ttl: -2,
      claims_ttl: -2,
      results_ttl: -2,
      ..Default::default()
    }
  );
  assert_eq!(count(&c, "ds_steps") + count(&c, "ds_step_expiry"), 0);
  assert_eq!(count(&c, "ds_entries"), 1);
}

#[test]
fn reset_steps_removes_their_marks_and_results_only() {
  let mut c = db();
  set(&mut c, "e", "true", None, 0);
  run(&mut c, commit("e", "a", "1", None), 0).unwrap();
  run(&mut c, commit("e", "b", "2", None), 0).unwrap();
  run(&mut c, claim("e", "b:c", false, None), 0).unwrap();
  let tasks = vec!["b".to_string(), "b:c".to_string()];
  run(
    &mut c,
    Command::ResetSteps {
      exec: "e".into(),
      tasks,
    },
    0,
  )
  .unwrap();
  let v = view(&mut c, "e", 0);
  assert_eq!(v.marker.as_deref(), Some(&b"true"[..]));
  assert_eq!(v.results, vec![(b"a".to_vec(), b"1".to_vec())]);
  assert!(v.claims.is_empty());
}

#[test]
fn scan_executions_finds_steps_then_markers_under_the_prefix() {
  let mut c = db();
  for i in 0..5 {
    run(&mut c, commit(&format!("p:s{i}"), "t", "1", None), 0).unwrap();
  }
  set(&mut c, "p:m", "true", None, 0);
  run(&mut c, commit("q:other", "t", "1", None), 0).unwrap();
  let (mut cursor, mut found) = ("0".to_string(), Vec::new());
  loop {
    let command = Command::ScanExecutions {
      cursor,
      prefix: "p:".into(),
      count: 2,
    };
    let Reply::Scan { cursor: next, keys } = run(&mut c, command, 0).unwrap() else {
      panic!()
    };
    found.extend(keys);
    if next == "0" {
      break;
    }
    cursor = next;
  }
  assert_eq!(found, ["p:s0", "p:s1", "p:s2", "p:s3", "p:s4", "p:m"]);
}

#[test]
fn a_failing_call_in_a_group_leaves_the_others_applied() {
  let mut c = db();
  let good = Batch::one(commit("e", "a", "1", None));
  let bad = Batch::atomic(vec![
    commit("e", "b", "2", None),
    Command::HSet {
      key: "h".into(),
      field: "f".into(),
      value: "1".into(),
    },
  ]);
  let answers = execute_group(&mut c, &[&good, &bad], || 0, &mut Sweeper::default()).unwrap();
  assert!(answers[0].is_ok() && answers[1].is_err());
  assert_eq!(
    view(&mut c, "e", 0).results.len(),
    1,
    "b's commit was rolled back"
  );
  assert!(
    run(&mut c, bad.commands[1].clone(), 0).is_err(),
    "a lone failing call fails"
  );
}

#[test]
fn calls_not_claimed_once_the_transaction_began_are_skipped() {
  let mut c = db();
  let (a, b, d) = (
    Batch::one(commit("e", "a", "1", None)),
    Batch::one(commit("e", "b", "2", None)),
    Batch::one(claim("e", "d", true, None)),
  );
  let claimed = |i: usize| i != 1;
  let answers = execute_claimed_group(
    &mut c,
    &[&a, &b, &d],
    claimed,
    |_| false,
    || 0,
    &mut Sweeper::default(),
  )
  .unwrap();
  assert!(answers[0].is_ok() && answers[1].is_err() && answers[2].is_ok());
  assert_eq!(view(&mut c, "e", 0).results.len(), 1, "b was skipped");
  // Alone, a skipped write or read runs nothing either.
  let answers = execute_claimed_group(
    &mut c,
    &[&b],
    |_| false,
    |_| false,
    || 0,
    &mut Sweeper::default(),
  )
  .unwrap();
  assert!(answers[0].is_err());
  let read = Batch::one(Command::StepResult {
    exec: "e".into(),
    task: "a".into(),
  });
  let answers = execute_claimed_group(
    &mut c,
    &[&read],
    |_| false,
    |_| false,
    || 0,
    &mut Sweeper::default(),
  )
  .unwrap();
  assert!(answers[0].is_err());
  assert_eq!(view(&mut c, "e", 0).results.len(), 1);
  // Given up before the group began: no transaction at all, so no wait for another
  // connection's write lock (a second connection holds it here).
  let path = std::env::temp_dir().join(format!("durastate-abandoned-{}.db", std::process::id()));
  let mut first = Connection::open(&path).unwrap();
  let holder = Connection::open(&path).unwrap();
  holder
    .execute_batch("BEGIN IMMEDIATE; CREATE TABLE t(x)")
    .unwrap();
  first
    .busy_timeout(std::time::Duration::from_secs(5))
    .unwrap();
  let started = std::time::Instant::now();
  let answers = execute_claimed_group(
    &mut first,
    &[&b],
    |_| false,
    |_| true,
    || 0,
    &mut Sweeper::default(),
  )
  .unwrap();
  assert!(answers[0].is_err());
  assert!(
    started.elapsed() < std::time::Duration::from_secs(1),
    "waited for the lock"
  );
  drop(holder);
  drop(first);
  let _ = std::fs::remove_file(&path);
}

#[test]
fn a_value_over_the_length_limit_is_invalid_input_naming_the_limit_and_the_key() {
  let mut c = db();
  c.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, 1000)
    .unwrap();
  let big = format!("\"{}\"", "x".repeat(2000));
  let err = run(&mut c, commit("e", "t", &big, None), 0).unwrap_err();
  assert_eq!(err.code, ErrorCode::InvalidInput, "{}", err.message);
  assert!(
    err.message.contains("limit of 1000 bytes") && err.message.contains("\"e\" task \"t\""),
    "{}",
    err.message
  );
  // Only that call fails in a group; nothing of it is stored.
  let (good, bad) = (
    Batch::one(commit("e", "a", "1", None)),
    Batch::one(commit("e", "b", &big, None)),
  );
  let answers = execute_group(&mut c, &[&good, &bad], || 0, &mut Sweeper::default()).unwrap();
  assert!(answers[0].is_ok());
  assert_eq!(
    answers[1].as_ref().unwrap_err().code,
    ErrorCode::InvalidInput
  );
  assert_eq!(view(&mut c, "e", 0).results.len(), 1);
}

#[test]
fn a_stored_value_of_a_foreign_type_is_corrupt_data_naming_the_key_and_fails_only_its_call() {
  let mut c = db();
  c.execute_batch(
    "INSERT INTO ds_steps(exec, task, result) VALUES ('e', 'blob', x'ff00');
     INSERT INTO ds_entries(key, value) VALUES ('k', x'ff00');",
  )
  .unwrap();
  let read = |task: &str| Command::StepResult {
    exec: "e".into(),
    task: task.into(),
  };
  for command in [
    read("blob"),
    Command::StepResults { exec: "e".into() },
    Command::Get { key: "k".into() },
  ] {
    let err = run(&mut c, command.clone(), 0).unwrap_err();
    assert_eq!(
      err.code,
      ErrorCode::CorruptData,
      "{command:?}: {}",
      err.message
    );
    let named = match command {
      Command::Get { .. } => "key \"k\"",
      Command::StepResults { .. } => "key \"e\"",
      _ => "key \"e\" task \"blob\"",
    };
    assert!(err.message.contains(named), "{}", err.message);
  }
  // The calls grouped with it are answered (the transaction is still good).
  let (good, bad) = (
    Batch::one(commit("e", "a", "1", None)),
    Batch::one(read("blob")),
  );
  let answers = execute_group(&mut c, &[&good, &bad], || 0, &mut Sweeper::default()).unwrap();
  assert!(answers[0].is_ok());
  assert_eq!(
    answers[1].as_ref().unwrap_err().code,
    ErrorCode::CorruptData
  );
  assert_eq!(
    run(&mut c, read("a"), 0).unwrap(),
    Reply::Bytes(b"1".to_vec())
  );
}

#[test]
fn writes_sweep_expired_rows_at_most_every_interval() {
  let mut c = db();
  for i in 0..10 {
    set(&mut c, &format!("k{i}"), "v", Some(10), 0);
    run(&mut c, claim(&format!("e{i}"), "t", false, Some(10)), 0).unwrap();
  }
  let mut sweeper = Sweeper::default();
  let write = Batch::one(Command::Set {
    key: "x".into(),
    value: "v".into(),
    ttl_ms: None,
  });
  execute_group(&mut c, &[&write], || 5, &mut sweeper).unwrap();
  assert_eq!(count(&c, "ds_entries"), 11, "nothing expired yet");
  execute_group(&mut c, &[&write], || 50, &mut sweeper).unwrap();
  assert_eq!(
    count(&c, "ds_entries"),
    11,
    "swept at 5 ms: not again before 105 ms"
  );
  execute_group(&mut c, &[&write], || 200, &mut sweeper).unwrap();
  assert_eq!(count(&c, "ds_entries"), 1);
  assert_eq!(count(&c, "ds_steps") + count(&c, "ds_step_expiry"), 0);
}

#[test]
fn a_sweep_that_fills_its_limit_sweeps_again_on_the_next_write_until_none_is_left() {
  let mut c = db();
  for i in 0..200 {
    set(&mut c, &format!("k{i}"), "v", Some(10), 0);
  }
  let mut sweeper = Sweeper::default();
  let write = Batch::one(Command::Set {
    key: "x".into(),
    value: "v".into(),
    ttl_ms: None,
  });
  // All at the same time: the 100 ms pacing alone would sweep once (64 rows).
  let left: Vec<i64> = (0..5)
    .map(|_| {
      execute_group(&mut c, &[&write], || 200, &mut sweeper).unwrap();
      count(&c, "ds_entries")
    })
    .collect();
  assert_eq!(left, [137, 73, 9, 1, 1]);
  for i in 0..100 {
    set(&mut c, &format!("j{i}"), "v", Some(10), 200);
  }
  execute_group(&mut c, &[&write], || 250, &mut sweeper).unwrap();
  assert_eq!(
    count(&c, "ds_entries"),
    101,
    "paced again once none was left"
  );
}

fn due(c: &Connection, exec: &str) -> Option<i64> {
  c.query_row(
    "SELECT due FROM ds_step_expiry WHERE exec = ?1",
    [exec],
    |row| row.get(0),
  )
  .optional()
  .unwrap()
}

#[test]
fn due_is_a_lower_bound_moved_on_by_the_sweep_not_by_every_write() {
  let mut c = db();
  run(&mut c, claim("e", "t", false, Some(100)), 0).unwrap();
  assert_eq!(due(&c, "e"), Some(100));
  run(&mut c, commit("e", "t", "1", Some(100)), 50).unwrap();
  run(&mut c, claim("e", "u", false, Some(300)), 60).unwrap();
  assert_eq!(due(&c, "e"), Some(100), "expiries moved later keep due");
  let view_at = |c: &mut Connection, now| view(c, "e", now);
  assert_eq!(
    view_at(&mut c, 120).results.len(),
    1,
    "results expire at 150"
  );
  let mut sweeper = Sweeper::default();
  let write = Batch::one(Command::Set {
    key: "x".into(),
    value: "v".into(),
    ttl_ms: None,
  });
  execute_group(&mut c, &[&write], || 120, &mut sweeper).unwrap();
  assert_eq!(
    due(&c, "e"),
    Some(150),
    "the sweep moved due to the earliest expiry"
  );
  assert_eq!(view_at(&mut c, 120).results.len(), 1);
  assert_eq!(view_at(&mut c, 120).claims.len(), 1);
  execute_group(&mut c, &[&write], || 225, &mut sweeper).unwrap();
  assert_eq!(
    due(&c, "e"),
    Some(360),
    "results swept (150); the marks expire at 360"
  );
  assert_eq!(view_at(&mut c, 225).results.len(), 0);
  assert_eq!(view_at(&mut c, 225).claims.len(), 1);
  execute_group(&mut c, &[&write], || 400, &mut sweeper).unwrap();
  assert_eq!(due(&c, "e"), None);
  assert_eq!(count(&c, "ds_steps"), 0);
  // A shorter TTL than the stored due moves due earlier.
  run(&mut c, claim("f", "t", false, Some(1000)), 400).unwrap();
  run(&mut c, commit("f", "t", "1", Some(10)), 401).unwrap();
  assert_eq!(due(&c, "f"), Some(411));
}

#[test]
fn hot_queries_use_indexes_not_scans() {
  let c = db();
  let queries = [
    "SELECT key FROM ds_entries WHERE expires_at IS NOT NULL AND expires_at <= 1 LIMIT 64",
    "SELECT exec FROM ds_step_expiry WHERE due <= 1 ORDER BY due LIMIT 64",
    "SELECT (SELECT result FROM ds_steps WHERE exec = 'a' AND task = 'b'), \
     (SELECT results_at FROM ds_step_expiry WHERE exec = 'a')",
    "SELECT task, result, (SELECT results_at FROM ds_step_expiry WHERE exec = 'a') \
     FROM ds_steps WHERE exec = 'a' AND result IS NOT NULL",
  ];
  for sql in queries {
    let plan: Vec<String> = c
      .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
      .unwrap()
      .query_map([], |row| row.get::<_, String>(3))
      .unwrap()
      .collect::<Result<_, _>>()
      .unwrap();
    let plan = plan.join("; ").replace("SCAN CONSTANT ROW", "");
    assert!(!plan.contains("SCAN "), "{sql}: {plan}");
  }
}
