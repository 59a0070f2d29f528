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
  let errors = err.clone().into_server_errors()?;
  let address = |detail: Option<&str>| {
    let (host, port) = detail?.split_whitespace().nth(1)?.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
  };
  let (mut asks, mut ask_to, mut wait) = (0, None, false);
  for (_, error) in errors.iter() {
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
