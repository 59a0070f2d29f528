use super::*;

#[tokio::test]
async fn join_ordered_polls_in_order_and_keeps_order() {
  let order = Arc::new(Mutex::new(Vec::new()));
  let futures: Vec<BoxFuture<'_, usize>> = (0..40usize)
    .map(|i| {
      let order = order.clone();
      Box::pin(async move {
        order.lock().unwrap().push(i);
        tokio::time::sleep(Duration::from_millis((40 - i) as u64 % 7)).await;
        i
      }) as BoxFuture<'_, usize>
    })
    .collect();
  let outputs = join_ordered(futures).await;
  assert_eq!(outputs, (0..40).collect::<Vec<_>>());
  assert_eq!(*order.lock().unwrap(), (0..40).collect::<Vec<_>>());
}

#[test]
fn early_reads_are_single_reads_of_keys_no_earlier_call_writes() {
  use crate::command::Command;
  let result = |exec: &str| Command::StepResult {
    exec: exec.into(),
    task: "t".into(),
  };
  let batches = [
    Batch::one(result("a")),
    Batch::one(Command::Commit {
      exec: "a".into(),
      task: "t".into(),
      json: "1".into(),
      ttl_ms: None,
    }),
    Batch::one(result("a")),
    Batch::one(result("b")),
    Batch::one(Command::Get { key: "b".into() }),
    Batch::many(vec![result("c"), result("d")]),
    Batch::one(Command::Execution { exec: "e".into() }),
    Batch::one(Command::Scan {
      cursor: "0".into(),
      pattern: "*".into(),
      count: 10,
      kind: None,
    }),
    Batch::one(Command::MGet {
      keys: vec!["b".into(), "c".into()],
    }),
    Batch::one(Command::MGet {
      keys: vec!["b".into(), "a".into()],
    }),
  ];
  let batches: Vec<&Batch> = batches.iter().collect();
  assert_eq!(
    early_reads(&batches),
    [true, false, false, true, true, false, false, false, true, false]
  );
}
