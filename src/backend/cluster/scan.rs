//! `SCAN` over a cluster: every master in turn, the position kept in the opaque cursor.

use super::Connection as ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{RedisResult, Value};

use super::super::redis_codec::{decode, to_redis};
use crate::command::{Command, Reply};
use crate::error::{StoreError, StoreResult};

/// Where a cluster-wide scan is: the masters (fixed at its start), which one is being
/// scanned, and that master's own cursor. Encoded `<index>|<cursor>|<host:port>,...`.
#[derive(Debug, PartialEq, Eq)]
struct ScanCursor {
  masters: Vec<(String, u16)>,
  index: usize,
  node_cursor: String,
}

impl ScanCursor {
  fn encode(&self) -> String {
    let masters: Vec<String> = self
      .masters
      .iter()
      .map(|(host, port)| format!("{host}:{port}"))
      .collect();
    format!("{}|{}|{}", self.index, self.node_cursor, masters.join(","))
  }

  fn decode(text: &str) -> Option<Self> {
    let mut parts = text.splitn(3, '|');
    let index = parts.next()?.parse().ok()?;
    let node_cursor = parts.next()?.to_string();
    let masters = parts
      .next()?
      .split(',')
      .map(|address| {
        let (host, port) = address.rsplit_once(':')?;
        Some((host.to_string(), port.parse().ok()?))
      })
      .collect::<Option<Vec<_>>>()?;
    (index < masters.len()).then_some(Self {
      masters,
      index,
      node_cursor,
    })
  }

  /// The cursor after a page whose node cursor was `next`: `"0"` when every master is done.
  fn advance(mut self, next: String) -> String {
    if next != "0" {
      self.node_cursor = next;
      return self.encode();
    }
    self.index += 1;
    self.node_cursor = "0".to_string();
    if self.index == self.masters.len() {
      "0".to_string()
    } else {
      self.encode()
    }
  }
}

/// One `SCAN` page on the master the cursor names; `"0"` starts on the first master.
pub(super) async fn scan_page(
  connection: &mut ClusterConnection,
  command: &Command,
  cursor: &str,
) -> RedisResult<StoreResult<Reply>> {
  let position = if cursor == "0" {
    ScanCursor {
      masters: masters(connection).await?,
      index: 0,
      node_cursor: "0".to_string(),
    }
  } else {
    match ScanCursor::decode(cursor) {
      Some(position) => position,
      None => {
        return Ok(Err(StoreError::invalid_input(
          "invalid cluster scan cursor",
        )))
      }
    }
  };
  if position.masters.is_empty() {
    return Ok(Ok(Reply::Scan {
      cursor: "0".to_string(),
      keys: Vec::new(),
    }));
  }
  let (host, port) = position.masters[position.index].clone();
  let mut scan = to_redis(command);
  // The node's own cursor replaces the cluster cursor (the second word of `SCAN`).
  scan = replace_cursor(scan, &position.node_cursor);
  let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
  let value = connection.route_command(scan, routing).await?;
  Ok(match decode(value, command) {
    Ok(Reply::Scan { cursor, keys }) => Ok(Reply::Scan {
      cursor: position.advance(cursor),
      keys,
    }),
    other => other,
  })
}

fn replace_cursor(scan: redis::Cmd, node_cursor: &str) -> redis::Cmd {
  let mut fresh = redis::cmd("SCAN");
  fresh.arg(node_cursor);
  for arg in scan.args_iter().skip(2) {
    if let redis::Arg::Simple(bytes) = arg {
      fresh.arg(bytes);
    }
  }
  fresh
}

/// The masters' addresses, sorted (`CLUSTER SLOTS` on any node).
pub(super) async fn masters(connection: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
  let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
  let value = connection
    .route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), routing)
    .await?;
  let mut found = Vec::new();
  if let Value::Array(ranges) = value {
    for range in ranges {
      let Value::Array(parts) = range else { continue };
      let Some(Value::Array(master)) = parts.get(2) else {
        continue;
      };
      let host = match master.first() {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(Value::SimpleString(text)) => text.clone(),
        _ => continue,
      };
      let Some(Value::Int(port)) = master.get(1) else {
        continue;
      };
      found.push((host, *port as u16));
    }
  }
  found.sort();
  found.dedup();
  Ok(found)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn scan_cursor_round_trips_and_ends() {
    let position = ScanCursor {
      masters: vec![("127.0.0.1".into(), 7000), ("::1".into(), 7001)],
      index: 0,
      node_cursor: "0".into(),
    };
    let text = position.advance("17".into());
    assert_eq!(text, "0|17|127.0.0.1:7000,::1:7001");
    let position = ScanCursor::decode(&text).unwrap();
    let text = position.advance("0".into());
    assert_eq!(text, "1|0|127.0.0.1:7000,::1:7001");
    assert_eq!(ScanCursor::decode(&text).unwrap().advance("0".into()), "0");
    assert!(ScanCursor::decode("5|0|127.0.0.1:7000").is_none());
  }
}
