//! Where keys live on a Redis Cluster: a key's slot (CRC16 of its hash tag, modulo
//! 16384), the slot map read from `CLUSTER SLOTS`, and what a node's `MOVED`, `ASK`,
//! `TRYAGAIN` and `CLUSTERDOWN` errors ask for. Pure: unit-tested without a server.

use redis::Value;

/// How many slots a Redis Cluster has.
pub const SLOTS: usize = 16384;

/// A node's address, as the cluster names it.
pub type Address = (String, u16);

/// `host:port` (`[host]:port` for an IPv6 address).
pub fn display(address: &Address) -> String {
  let (host, port) = address;
  if host.contains(':') {
    format!("[{host}]:{port}")
  } else {
    format!("{host}:{port}")
  }
}

/// The slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the first `{`
/// and the next `}`, when not empty), else of the whole key, modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
  let tagged = key
    .iter()
    .position(|&b| b == b'{')
    .and_then(|open| {
      let rest = &key[open + 1..];
      let close = rest.iter().position(|&b| b == b'}')?;
      (close > 0).then(|| &rest[..close])
    })
    .unwrap_or(key);
  crc16(tagged) % SLOTS as u16
}

fn crc16(bytes: &[u8]) -> u16 {
  let mut crc: u16 = 0;
  for &byte in bytes {
    crc ^= u16::from(byte) << 8;
    for _ in 0..8 {
      crc = if crc & 0x8000 != 0 {
        (crc << 1) ^ 0x1021
      } else {
        crc << 1
      };
    }
  }
  crc
}

/// Which master serves each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
  /// The masters, sorted (a `SCAN` over the cluster walks them in this order).
  pub masters: Vec<Address>,
  /// The index in `masters` of each slot's master; `u16::MAX` where no master serves it.
  owners: Vec<u16>,
}

impl SlotMap {
  /// The map a `CLUSTER SLOTS` reply describes, asked of the node at `asked` (a master
  /// announced without an address, `""`, `"?"` or a null, is on that node's host). `None` when the reply
  /// is not one.
  pub fn from_cluster_slots(reply: &Value, asked: &Address) -> Option<Self> {
    let Value::Array(ranges) = reply else {
      return None;
    };
    let mut found: Vec<(u16, u16, Address)> = Vec::with_capacity(ranges.len());
    for range in ranges {
      let Value::Array(parts) = range else {
        return None;
      };
      let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
        (parts.first(), parts.get(1), parts.get(2))
      else {
        return None;
      };
      let host = match master.first() {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(Value::SimpleString(text)) => text.clone(),
        // `cluster-preferred-endpoint-type unknown-endpoint`: no host announced.
        Some(Value::Nil) => String::new(),
        _ => return None,
      };
      let Some(Value::Int(port)) = master.get(1) else {
        return None;
      };
      let host = if host.is_empty() || host == "?" {
        asked.0.clone()
      } else {
        host
      };
      let (start, end) = (u16::try_from(*start).ok()?, u16::try_from(*end).ok()?);
      if start > end || usize::from(end) >= SLOTS {
        return None;
      }
      found.push((start, end, (host, u16::try_from(*port).ok()?)));
    }
    let mut masters: Vec<Address> = found.iter().map(|(_, _, a)| a.clone()).collect();
    masters.sort();
    masters.dedup();
    let mut owners = vec![u16::MAX; SLOTS];
    for (start, end, address) in &found {
      let index = masters.binary_search(address).ok()? as u16;
      owners[usize::from(*start)..=usize::from(*end)].fill(index);
    }
    Some(Self { masters, owners })
  }

  /// A fingerprint of which master serves which slot (never 0): maps with the same one
  /// route alike. A cluster-wide `SCAN` compares it at its end with its start's.
  pub fn layout(&self) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    self.masters.hash(&mut hasher);
    self.owners.hash(&mut hasher);
    hasher.finish().max(1)
  }

  /// The master that serves `slot`, if one does.
  pub fn owner(&self, slot: u16) -> Option<&Address> {
    let index = *self.owners.get(usize::from(slot))?;
    self.masters.get(usize::from(index))
  }

  /// `slot` is served by `address` now (a `MOVED` said so).
  pub fn moved(&mut self, slot: u16, address: &Address) {
    let index = match self.masters.binary_search(address) {
      Ok(index) => index,
      Err(at) => {
        self.masters.insert(at, address.clone());
        // Indices at and after the new master's place shift by one.
        for owner in self.owners.iter_mut() {
          if *owner != u16::MAX && usize::from(*owner) >= at {
            *owner += 1;
          }
        }
        at
      }
    };
    if let Some(owner) = self.owners.get_mut(usize::from(slot)) {
      *owner = index as u16;
    }
  }
}

/// What a node's error asks the cluster backend to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
  /// `MOVED <slot> <host:port>`: the slot is served there now; nothing was run.
  Moved(u16, Address),
  /// `ASK <slot> <host:port>`: the slot is migrating there; send it there once, after
  /// `ASKING`; nothing was run.
  Ask(Address),
  /// `TRYAGAIN` (a multi-key batch while its keys are split over a migration) or
  /// `CLUSTERDOWN` (the cluster cannot serve the slot now): nothing was run; wait and
  /// send again.
  Wait { down: bool },
}

impl Redirect {
  /// The redirect an error's code and details (`"MOVED"`, `"3999 127.0.0.1:7001"`) name.
  pub fn parse(code: &str, details: &str) -> Option<Self> {
    let address = || {
      let target = details.split_whitespace().nth(1)?;
      let (host, port) = target.rsplit_once(':')?;
      let host = host.trim_start_matches('[').trim_end_matches(']');
      Some((host.to_string(), port.parse().ok()?))
    };
    match code {
      "MOVED" => {
        let slot = details.split_whitespace().next()?.parse().ok()?;
        Some(Self::Moved(slot, address()?))
      }
      "ASK" => Some(Self::Ask(address()?)),
      "TRYAGAIN" => Some(Self::Wait { down: false }),
      "CLUSTERDOWN" => Some(Self::Wait { down: true }),
      _ => None,
    }
  }

  /// A redirect to a node announced without a host (`MOVED 3999 :7001`, as a node with
  /// `cluster-preferred-endpoint-type unknown-endpoint` answers) means the host of the
  /// node that answered, `replied` (when known).
  pub fn on_host_of(self, replied: Option<&Address>) -> Self {
    let fill = |(host, port): Address| match (host.is_empty() || host == "?", replied) {
      (true, Some((known, _))) => (known.clone(), port),
      _ => (host, port),
    };
    match self {
      Self::Moved(slot, address) => Self::Moved(slot, fill(address)),
      Self::Ask(address) => Self::Ask(fill(address)),
      other => other,
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn bulk(text: &str) -> Value {
    Value::BulkString(text.as_bytes().to_vec())
  }

  fn range(start: i64, end: i64, host: &str, port: i64) -> Value {
    Value::Array(vec![
      Value::Int(start),
      Value::Int(end),
      Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]),
      Value::Array(vec![bulk(host), Value::Int(port + 100), bulk("replica")]),
    ])
  }

  #[test]
  fn slots_follow_hash_tags() {
    // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
    assert_eq!(slot(b"123456789"), 12739);
    assert_eq!(slot(b"foo"), 12182);
    assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
    assert_eq!(slot(b"app:{e1}-results"), slot(b"e1"));
    assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
    assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
    assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
  }

  #[test]
  fn reads_cluster_slots() {
    let asked = ("10.0.0.9".to_string(), 7009);
    let reply = Value::Array(vec![
      range(5461, 10922, "127.0.0.1", 7001),
      range(0, 5460, "127.0.0.1", 7000),
      range(10923, 16383, "", 7002),
    ]);
    let map = SlotMap::from_cluster_slots(&reply, &asked).unwrap();
    assert_eq!(
      map.masters,
      vec![
        ("10.0.0.9".to_string(), 7002),
        ("127.0.0.1".to_string(), 7000),
        ("127.0.0.1".to_string(), 7001),
      ]
    );
    assert_eq!(map.owner(0).unwrap().1, 7000);
    assert_eq!(map.owner(5460).unwrap().1, 7000);
    assert_eq!(map.owner(5461).unwrap().1, 7001);
    assert_eq!(map.owner(16383), Some(&("10.0.0.9".to_string(), 7002)));
    assert!(SlotMap::from_cluster_slots(&Value::Int(1), &asked).is_none());
    let bad = Value::Array(vec![range(0, 16384, "h", 1)]);
    assert!(SlotMap::from_cluster_slots(&bad, &asked).is_none());
    // A slot no range names has no master.
    let partial = Value::Array(vec![range(0, 99, "h", 1)]);
    let map = SlotMap::from_cluster_slots(&partial, &asked).unwrap();
    assert!(map.owner(100).is_none());
    // `cluster-preferred-endpoint-type unknown-endpoint`: the host is a null.
    let unknown = Value::Array(vec![Value::Array(vec![
      Value::Int(0),
      Value::Int(16383),
      Value::Array(vec![Value::Nil, Value::Int(7003), bulk("id")]),
    ])]);
    let map = SlotMap::from_cluster_slots(&unknown, &asked).unwrap();
    assert_eq!(map.owner(0), Some(&("10.0.0.9".to_string(), 7003)));
  }

  #[test]
  fn moved_updates_one_slot() {
    let reply = Value::Array(vec![range(0, 16383, "b", 2)]);
    let mut map = SlotMap::from_cluster_slots(&reply, &("x".into(), 1)).unwrap();
    map.moved(7, &("a".into(), 1));
    assert_eq!(map.owner(7), Some(&("a".to_string(), 1)));
    assert_eq!(map.owner(8), Some(&("b".to_string(), 2)));
    map.moved(8, &("a".into(), 1));
    assert_eq!(map.masters.len(), 2);
    assert_eq!(map.owner(8), Some(&("a".to_string(), 1)));
  }

  #[test]
  fn parses_redirects() {
    assert_eq!(
      Redirect::parse("MOVED", "3999 127.0.0.1:6381"),
      Some(Redirect::Moved(3999, ("127.0.0.1".into(), 6381)))
    );
    assert_eq!(
      Redirect::parse("ASK", "3999 [::1]:7000"),
      Some(Redirect::Ask(("::1".into(), 7000)))
    );
    assert_eq!(
      Redirect::parse("TRYAGAIN", "Multiple keys request during rehashing of slot"),
      Some(Redirect::Wait { down: false })
    );
    assert_eq!(
      Redirect::parse("CLUSTERDOWN", "The cluster is down"),
      Some(Redirect::Wait { down: true })
    );
    assert_eq!(Redirect::parse("MOVED", "nonsense"), None);
    // No host: the host of the node that answered.
    let replied = ("10.0.0.5".to_string(), 7000);
    assert_eq!(
      Redirect::parse("MOVED", "3999 :7001").map(|r| r.on_host_of(Some(&replied))),
      Some(Redirect::Moved(3999, ("10.0.0.5".to_string(), 7001)))
    );
    assert_eq!(
      Redirect::parse("ASK", "3999 ?:7001").map(|r| r.on_host_of(Some(&replied))),
      Some(Redirect::Ask(("10.0.0.5".to_string(), 7001)))
    );
    assert_eq!(
      Redirect::parse("MOVED", "3999 10.0.0.6:7001").map(|r| r.on_host_of(Some(&replied))),
      Some(Redirect::Moved(3999, ("10.0.0.6".to_string(), 7001)))
    );
    assert_eq!(Redirect::parse("ERR", "x"), None);
  }
}
