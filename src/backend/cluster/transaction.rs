//! Transactions on a cluster: `MULTI`/`EXEC` on the slot's master, sent again where
//! `ASK`/`MOVED` point, since redis-rs 1.8.1 does not follow them inside a transaction.

use std::time::Duration;

use super::Connection as ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{RedisResult, Value};

/// Where a transaction goes next after it was aborted.
#[derive(Debug, PartialEq, Eq)]
enum Redirect {
  /// Every key is missing on the slot's old master (`ASK` for every command): send it,
  /// after `ASKING`, to the node the slot is migrating to.
  Ask(String, u16),
  /// The slot has a new master (`MOVED`).
  Moved(String, u16),
  /// Some keys of the slot have moved and some not (`ASK` for some commands, or
  /// `TRYAGAIN`), or the cluster is down (`CLUSTERDOWN`, a failover under way): wait,
  /// then send it again.
  Wait,
}

/// `MULTI`/`EXEC` on the master of the commands' slot. redis-rs 1.8.1 routes the
/// transaction by slot but does not follow `ASK`/`MOVED` inside it: the queued commands
/// get `-ASK`/`-MOVED`, `EXEC` aborts and nothing is applied. Since nothing was applied,
/// it is sent again where the errors point (bounded by the call's `commandTimeout`).
pub(super) async fn transaction(
  connection: &mut ClusterConnection,
  commands: &[redis::Cmd],
) -> RedisResult<Vec<Value>> {
  let mut pipe = redis::pipe();
  pipe.atomic();
  for command in commands {
    pipe.add_command(command.clone());
  }
  let mut next: Option<(String, u16, bool)> = None;
  for attempt in 0u32.. {
    if attempt > 1 {
      tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt.min(10)))).await;
    }
    let result = match &next {
      None => pipe.query_async(connection).await,
      Some((host, port, asking)) => {
        redirected(connection, commands, host.clone(), *port, *asking).await
      }
    };
    let err = match result {
      Ok(values) => return Ok(values),
      Err(err) => err,
    };
    next = match redirect_of(&err, commands.len()) {
      Some(Redirect::Ask(host, port)) => Some((host, port, true)),
      Some(Redirect::Moved(host, port)) => Some((host, port, false)),
      Some(Redirect::Wait) => None,
      None => return Err(err),
    };
  }
  unreachable!("the loop returns")
}

/// The transaction sent to one node: `[ASKING] MULTI ... EXEC`; replies the `EXEC`'s.
async fn redirected(
  connection: &mut ClusterConnection,
  commands: &[redis::Cmd],
  host: String,
  port: u16,
  asking: bool,
) -> RedisResult<Vec<Value>> {
  let mut pipe = redis::pipe();
  if asking {
    pipe.add_command(redis::cmd("ASKING"));
  }
  pipe.add_command(redis::cmd("MULTI"));
  for command in commands {
    pipe.add_command(command.clone());
  }
  pipe.add_command(redis::cmd("EXEC"));
  let skipped = commands.len() + 1 + usize::from(asking);
  let route = SingleNodeRoutingInfo::ByAddress { host, port };
  let mut values = connection.route_pipeline(pipe, skipped, 1, route).await?;
  match values.pop() {
    Some(Value::Array(items)) => Ok(items),
    Some(Value::ServerError(err)) => Err(err.into()),
    other => Err(redis::RedisError::from((
      redis::ErrorKind::Client,
      "unexpected EXEC reply",
      format!("{other:?}"),
    ))),
  }
}

/// What an aborted transaction's errors ask for, if they are about the slot's location.
fn redirect_of(err: &redis::RedisError, commands: usize) -> Option<Redirect> {
  use redis::ServerErrorKind as Kind;
  // The node connections' aborted transaction (node.rs), else redis-rs's.
  let errors: Vec<redis::ServerError> = match super::node::queued_errors(err) {
    Some(errors) => errors,
    None => err
      .clone()
      .into_server_errors()?
      .iter()
      .map(|(_, error)| error.clone())
      .collect(),
  };
  let address = |detail: Option<&str>| {
    let (host, port) = detail?.split_whitespace().nth(1)?.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
  };
  let (mut asks, mut ask_to, mut wait) = (0, None, false);
  for error in &errors {
    match error.kind() {
      Some(Kind::Moved) => {
        let (host, port) = address(error.details())?;
        return Some(Redirect::Moved(host, port));
      }
      Some(Kind::Ask) => {
        asks += 1;
        ask_to = address(error.details());
      }
      Some(Kind::TryAgain | Kind::ClusterDown) => wait = true,
      Some(Kind::ExecAbort) => {}
      _ => return None,
    }
  }
  match ask_to {
    Some((host, port)) if asks == commands && !wait => Some(Redirect::Ask(host, port)),
    _ if asks > 0 || wait => Some(Redirect::Wait),
    _ => None,
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::backend::cluster::node::aborted_transaction;

  fn server_error(line: &str) -> redis::ServerError {
    match redis::parse_redis_value(format!("-{line}\r\n").as_bytes()) {
      Ok(Value::ServerError(err)) => err,
      other => panic!("{other:?}"),
    }
  }

  #[test]
  fn a_node_connections_aborted_transaction_says_where_to_go() {
    let moved = aborted_transaction(&[server_error("MOVED 3999 127.0.0.1:7001")]);
    assert_eq!(
      redirect_of(&moved, 2),
      Some(Redirect::Moved("127.0.0.1".into(), 7001))
    );
    let ask = server_error("ASK 3999 127.0.0.1:7002");
    let all_ask = aborted_transaction(&[ask.clone(), ask.clone()]);
    assert_eq!(
      redirect_of(&all_ask, 2),
      Some(Redirect::Ask("127.0.0.1".into(), 7002))
    );
    let some_ask = aborted_transaction(&[ask]);
    assert_eq!(redirect_of(&some_ask, 2), Some(Redirect::Wait));
    let down = aborted_transaction(&[server_error("CLUSTERDOWN The cluster is down")]);
    assert_eq!(redirect_of(&down, 1), Some(Redirect::Wait));
    let wrong = aborted_transaction(&[server_error("ERR unknown command")]);
    assert_eq!(redirect_of(&wrong, 1), None);
    assert_eq!(
      wrong.kind(),
      redis::ErrorKind::Server(redis::ServerErrorKind::ExecAbort)
    );
  }
}
