//! `SCAN` over a cluster: every master in turn, the position kept in the opaque cursor,
//! with the slot map's layout at the walk's start: a walk during which slots changed
//! hands (a resharding, a failover) starts again, on the new masters (see
//! `ClusterBackend`'s `scan_page`).

use super::slots::Address;

/// Where a cluster-wide scan is: the masters (fixed at its start), which one is being
/// scanned, and that master's own cursor; the layout of the slot map it started on
/// (`SlotMap::layout`) and how many times it started again. Encoded
/// `<index>|<cursor>|<layout>|<restarts>|<host:port>,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCursor {
  pub masters: Vec<Address>,
  pub index: usize,
  pub node_cursor: String,
  pub layout: u64,
  pub restarts: u32,
}

impl ScanCursor {
  /// A walk from the first of `masters`.
  pub fn start(masters: Vec<Address>, layout: u64, restarts: u32) -> Self {
    Self {
      masters,
      index: 0,
      node_cursor: "0".to_string(),
      layout,
      restarts,
    }
  }

  pub fn encode(&self) -> String {
    let masters: Vec<String> = self
      .masters
      .iter()
      .map(|(host, port)| format!("{host}:{port}"))
      .collect();
    format!(
      "{}|{}|{}|{}|{}",
      self.index,
      self.node_cursor,
      self.layout,
      self.restarts,
      masters.join(",")
    )
  }

  pub fn decode(text: &str) -> Option<Self> {
    let mut parts = text.splitn(5, '|');
    let index = parts.next()?.parse().ok()?;
    let node_cursor = parts.next()?.to_string();
    let layout = parts.next()?.parse().ok()?;
    let restarts = parts.next()?.parse().ok()?;
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
      layout,
      restarts,
    })
  }

  /// The master this page is read from.
  pub fn master(&self) -> &Address {
    &self.masters[self.index]
  }

  /// The cursor after a page whose node cursor was `next`: `"0"` when every master is done.
  pub fn advance(mut self, next: String) -> String {
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

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn scan_cursor_round_trips_and_ends() {
    let masters = vec![("127.0.0.1".into(), 7000), ("::1".into(), 7001)];
    let position = ScanCursor::start(masters, 42, 1);
    let text = position.advance("17".into());
    assert_eq!(text, "0|17|42|1|127.0.0.1:7000,::1:7001");
    let position = ScanCursor::decode(&text).unwrap();
    assert_eq!((position.layout, position.restarts), (42, 1));
    let text = position.advance("0".into());
    assert_eq!(text, "1|0|42|1|127.0.0.1:7000,::1:7001");
    assert_eq!(ScanCursor::decode(&text).unwrap().advance("0".into()), "0");
    assert!(ScanCursor::decode("5|0|1|0|127.0.0.1:7000").is_none());
    assert!(ScanCursor::decode("0|0|127.0.0.1:7000").is_none());
  }
}
