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
