//! How a batch is routed over a cluster, and its replies put back together. Pure:
//! unit-tested without a server.
//!
//! - Commands on one slot: in an atomic batch, all of a slot's commands go as one
//!   transaction (`MULTI`/`EXEC`; with the `hashtag` key layout a WorkerStore batch is
//!   on one slot); otherwise each command is a part of its own, so a redirect of one
//!   command never sends another again (they still go out together: one node, one
//!   connection, one write).
//! - A multi-key command over several slots (`MGET`, `UNLINK`, `DEL`): one part per
//!   slot with that slot's keys; `MGET` values go back in key order, counts are summed.
//! - `SCAN`: one page on the master its cursor names ([`ScanCursor`]); `"0"` starts on
//!   the first master of the slot map.

use std::collections::HashMap;

use super::scan::ScanCursor;
use super::slots::{slot, Address};
use crate::command::{Batch, Command, Reply};
use crate::error::{ErrorCode, StoreError, StoreResult};

/// Where a part goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
  /// The master of a slot.
  Slot(u16),
  /// A node by address (a `SCAN` page; a command without keys: the first master).
  Node(Address),
}

/// Which replies of the batch a part answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
  /// The batch's commands at these indices, in order.
  Commands(Vec<usize>),
  /// The keys at `positions` of the multi-key command `index`.
  Split { index: usize, positions: Vec<usize> },
  /// One page of the `SCAN` at `index`, read where `cursor` says.
  Scan { index: usize, cursor: ScanCursor },
}

/// One round trip to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
  pub target: Target,
  pub piece: Piece,
  /// What the node is sent.
  pub batch: Batch,
}

/// Splits `batch` into parts, each for one node; `masters` (sorted) are where a new
/// `SCAN` walks, on a slot map of `layout`.
pub fn plan(batch: &Batch, masters: &[Address], layout: u64) -> StoreResult<Vec<Part>> {
  let sub = |commands: Vec<Command>, atomic: bool| Batch {
    atomic: atomic && commands.len() > 1,
    commands,
    resend: batch.resend,
  };
  let mut parts: Vec<Part> = Vec::new();
  // An atomic batch: the part of each slot, by slot.
  let mut by_slot: HashMap<u16, usize> = HashMap::new();
  for (index, command) in batch.commands.iter().enumerate() {
    if let Command::Scan { cursor, .. } = command {
      let cursor = if cursor == "0" {
        ScanCursor::start(masters.to_vec(), layout, 0)
      } else {
        ScanCursor::decode(cursor)
          .ok_or_else(|| StoreError::invalid_input("invalid cluster scan cursor"))?
      };
      if cursor.masters.is_empty() {
        return Err(no_master());
      }
      let mut page = command.clone();
      if let Command::Scan { cursor: node, .. } = &mut page {
        node.clone_from(&cursor.node_cursor);
      }
      parts.push(Part {
        target: Target::Node(cursor.master().clone()),
        piece: Piece::Scan { index, cursor },
        batch: sub(vec![page], false),
      });
      continue;
    }
    let keys = command.keys();
    let Some(first) = keys.first() else {
      let master = masters.first().ok_or_else(no_master)?;
      parts.push(Part {
        target: Target::Node(master.clone()),
        piece: Piece::Commands(vec![index]),
        batch: sub(vec![command.clone()], false),
      });
      continue;
    };
    let first_slot = slot(first.as_bytes());
    if keys[1..]
      .iter()
      .all(|key| slot(key.as_bytes()) == first_slot)
    {
      if batch.atomic {
        if let Some(&at) = by_slot.get(&first_slot) {
          let part = &mut parts[at];
          if let Piece::Commands(indices) = &mut part.piece {
            indices.push(index);
          }
          part.batch.commands.push(command.clone());
          part.batch.atomic = true;
          continue;
        }
        by_slot.insert(first_slot, parts.len());
      }
      parts.push(Part {
        target: Target::Slot(first_slot),
        piece: Piece::Commands(vec![index]),
        batch: sub(vec![command.clone()], false),
      });
      continue;
    }
    // A multi-key command over several slots: one part per slot, in the order the
    // slots first appear.
    let mut slots: Vec<(u16, Vec<usize>)> = Vec::new();
    for (position, key) in keys.iter().enumerate() {
      let key_slot = slot(key.as_bytes());
      match slots.iter_mut().find(|(s, _)| *s == key_slot) {
        Some((_, positions)) => positions.push(position),
        None => slots.push((key_slot, vec![position])),
      }
    }
    for (key_slot, positions) in slots {
      let keys: Vec<String> = positions.iter().map(|&p| keys[p].clone()).collect();
      let part_command = match command {
        Command::MGet { .. } => Command::MGet { keys },
        Command::Unlink { .. } => Command::Unlink { keys },
        Command::Del { .. } => Command::Del { keys },
        other => {
          return Err(StoreError::invalid_input(format!(
            "{other:?} names keys of several cluster slots"
          )))
        }
      };
      parts.push(Part {
        target: Target::Slot(key_slot),
        piece: Piece::Split { index, positions },
        batch: sub(vec![part_command], false),
      });
    }
  }
  Ok(parts)
}

fn no_master() -> StoreError {
  StoreError::new(ErrorCode::Unavailable, "the Redis Cluster has no master")
}

/// The batch's replies from the replies of each of its parts (in the order of `parts`).
pub fn assemble(
  batch: &Batch,
  parts: Vec<Part>,
  answers: Vec<Vec<Reply>>,
) -> StoreResult<Vec<Reply>> {
  let mut replies: Vec<Option<Reply>> = vec![None; batch.commands.len()];
  for (part, answer) in parts.into_iter().zip(answers) {
    match part.piece {
      Piece::Commands(indices) => {
        if answer.len() != indices.len() {
          return Err(unexpected());
        }
        for (index, reply) in indices.into_iter().zip(answer) {
          replies[index] = Some(reply);
        }
      }
      Piece::Split { index, positions } => {
        let reply = answer.into_iter().next().ok_or_else(unexpected)?;
        let merged = replies[index].take();
        replies[index] = Some(match (&batch.commands[index], reply, merged) {
          (Command::MGet { keys }, Reply::Values(values), merged) => {
            let mut all = match merged {
              Some(Reply::Values(all)) => all,
              _ => vec![None; keys.len()],
            };
            if values.len() != positions.len() {
              return Err(unexpected());
            }
            for (position, value) in positions.into_iter().zip(values) {
              all[position] = value;
            }
            Reply::Values(all)
          }
          (_, Reply::Int(count), Some(Reply::Int(sum))) => Reply::Int(sum + count),
          (_, Reply::Int(count), None) => Reply::Int(count),
          _ => return Err(unexpected()),
        });
      }
      Piece::Scan { index, cursor } => {
        let reply = answer.into_iter().next().ok_or_else(unexpected)?;
        replies[index] = Some(match reply {
          Reply::Scan { cursor: next, keys } => Reply::Scan {
            cursor: cursor.advance(next),
            keys,
          },
          _ => return Err(unexpected()),
        });
      }
    }
  }
  Ok(
    replies
      .into_iter()
      .map(|reply| reply.unwrap_or(Reply::Nil))
      .collect(),
  )
}

fn unexpected() -> StoreError {
  StoreError::new(
    ErrorCode::Unavailable,
    "unexpected reply from a cluster node",
  )
}

#[cfg(test)]
mod tests {
  use super::*;

  fn get(key: &str) -> Command {
    Command::Get { key: key.into() }
  }

  fn masters() -> Vec<Address> {
    vec![("a".into(), 1), ("b".into(), 2)]
  }

  #[test]
  fn an_atomic_batch_is_one_transaction_per_slot() {
    let batch = Batch::atomic(vec![get("{a}1"), get("{b}1"), get("{a}2")]).never_resend();
    let parts = plan(&batch, &masters(), 1).unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].target, Target::Slot(slot(b"a")));
    assert_eq!(parts[0].piece, Piece::Commands(vec![0, 2]));
    assert!(parts[0].batch.atomic);
    assert!(!parts[0].batch.may_resend());
    assert_eq!(parts[0].batch.commands, vec![get("{a}1"), get("{a}2")]);
    assert_eq!(parts[1].piece, Piece::Commands(vec![1]));
    assert!(!parts[1].batch.atomic);
  }

  #[test]
  fn other_batches_send_each_command_alone() {
    let batch = Batch::many(vec![get("{a}1"), get("{a}2")]);
    let parts = plan(&batch, &masters(), 1).unwrap();
    assert_eq!(parts.len(), 2);
    assert!(parts.iter().all(|p| p.target == Target::Slot(slot(b"a"))));
    let answers = vec![vec![Reply::Int(1)], vec![Reply::Int(2)]];
    let replies = assemble(&batch, parts, answers).unwrap();
    assert_eq!(replies, vec![Reply::Int(1), Reply::Int(2)]);
  }

  #[test]
  fn splits_multi_key_commands_by_slot_and_reassembles() {
    let keys: Vec<String> = ["{x}1", "{y}1", "{x}2", "{z}1"]
      .iter()
      .map(|k| k.to_string())
      .collect();
    let batch = Batch::one(Command::MGet { keys: keys.clone() });
    let parts = plan(&batch, &masters(), 1).unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(
      parts[0].piece,
      Piece::Split {
        index: 0,
        positions: vec![0, 2]
      }
    );
    assert_eq!(
      parts[0].batch.commands,
      vec![Command::MGet {
        keys: vec!["{x}1".into(), "{x}2".into()]
      }]
    );
    let value = |v: &str| Some(v.as_bytes().to_vec());
    let answers = vec![
      vec![Reply::Values(vec![value("x1"), None])],
      vec![Reply::Values(vec![value("y1")])],
      vec![Reply::Values(vec![value("z1")])],
    ];
    assert_eq!(
      assemble(&batch, parts, answers).unwrap(),
      vec![Reply::Values(vec![
        value("x1"),
        value("y1"),
        None,
        value("z1")
      ])]
    );
    let batch = Batch::one(Command::Unlink { keys }).never_resend();
    let parts = plan(&batch, &masters(), 1).unwrap();
    assert!(parts.iter().all(|p| !p.batch.may_resend()));
    let answers = vec![
      vec![Reply::Int(2)],
      vec![Reply::Int(0)],
      vec![Reply::Int(1)],
    ];
    assert_eq!(
      assemble(&batch, parts, answers).unwrap(),
      vec![Reply::Int(3)]
    );
  }

  #[test]
  fn scans_walk_the_masters() {
    let scan = |cursor: &str| Command::Scan {
      cursor: cursor.into(),
      pattern: "p*".into(),
      count: 10,
      kind: None,
    };
    let batch = Batch::one(scan("0"));
    let parts = plan(&batch, &masters(), 1).unwrap();
    assert_eq!(parts[0].target, Target::Node(("a".into(), 1)));
    assert_eq!(parts[0].batch.commands, vec![scan("0")]);
    let answers = vec![vec![Reply::Scan {
      cursor: "0".into(),
      keys: vec!["p1".into()],
    }]];
    let replies = assemble(&batch, parts, answers).unwrap();
    let Reply::Scan { cursor, keys } = &replies[0] else {
      panic!("a scan page")
    };
    assert_eq!(keys, &vec!["p1".to_string()]);
    assert_eq!(cursor, "1|0|1|0|a:1,b:2");
    // The next page: on the second master, with its own cursor.
    let parts = plan(&Batch::one(scan(cursor)), &[], 1).unwrap();
    assert_eq!(parts[0].target, Target::Node(("b".into(), 2)));
    assert_eq!(parts[0].batch.commands, vec![scan("0")]);
    assert!(plan(&Batch::one(scan("bogus")), &masters(), 1).is_err());
  }
}
