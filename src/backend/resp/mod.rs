//! Replies read off a socket, one at a time, for the event-loop driver and the
//! handshake: a resumable scan finds where a RESP2/RESP3 reply ends, and redis-rs's
//! public `parse_redis_value` turns its bytes into a `Value` (so the values, server
//! errors included, are exactly the ones the rest of redis-rs gives).

use std::fmt;

use bytes::{Buf, BytesMut};
use redis::Value;

#[cfg(test)]
mod tests;

/// Splits a byte stream into replies. Keeps how far the current reply was scanned, so
/// a large reply arriving in many reads is scanned once, not once per read.
#[derive(Default)]
pub struct ReplyDecoder {
  /// Where the next element of the current reply starts.
  scanned: usize,
  /// Elements still to come in each open aggregate (array, map, set, push, attribute).
  open: Vec<u64>,
}

/// A reply that is not RESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespError(String);

impl fmt::Display for RespError {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str(&self.0)
  }
}

/// What one element's header says.
enum Element {
  /// The element ends at this offset.
  Ends(usize),
  /// An aggregate of this many elements, which start at this offset.
  Opens(u64, usize),
  /// The buffer does not hold the whole header (or bulk payload) yet.
  Incomplete,
}

impl ReplyDecoder {
  /// The first whole reply in `received`, removed from it; `None` until one is there.
  pub fn decode(&mut self, received: &mut BytesMut) -> Result<Option<Value>, RespError> {
    let Some(end) = self.scan(received)? else {
      return Ok(None);
    };
    let value = redis::parse_redis_value(&received[..end]);
    received.advance(end);
    value.map(Some).map_err(|err| RespError(err.to_string()))
  }

  /// Where the first reply ends, once `buf` holds all of it. Resumes where it stopped.
  fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, RespError> {
    loop {
      match element(buf, self.scanned)? {
        Element::Incomplete => return Ok(None),
        Element::Opens(count, start) if count > 0 => {
          self.open.push(count);
          self.scanned = start;
        }
        Element::Opens(_, end) | Element::Ends(end) => {
          self.scanned = end;
          if self.close_finished() {
            self.scanned = 0;
            return Ok(Some(end));
          }
        }
      }
    }
  }

  /// Counts one finished element against the open aggregates, closing the ones it
  /// completes; true when no aggregate is left open (the reply is whole).
  fn close_finished(&mut self) -> bool {
    while let Some(left) = self.open.last_mut() {
      *left -= 1;
      if *left > 0 {
        return false;
      }
      self.open.pop();
    }
    true
  }
}

/// Reads the header of the element at `start`.
fn element(buf: &[u8], start: usize) -> Result<Element, RespError> {
  let Some(&kind) = buf.get(start) else {
    return Ok(Element::Incomplete);
  };
  let Some(line_end) = find_crlf(buf, start + 1) else {
    return Ok(Element::Incomplete);
  };
  let after = line_end + 2;
  let line = &buf[start + 1..line_end];
  match kind {
    b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(Element::Ends(after)),
    b'$' | b'!' | b'=' => match length(line)? {
      None => Ok(Element::Ends(after)),
      Some(size) => {
        let end = after.saturating_add(size as usize).saturating_add(2);
        Ok(if buf.len() < end {
          Element::Incomplete
        } else {
          Element::Ends(end)
        })
      }
    },
    b'*' | b'~' | b'>' => Ok(Element::Opens(length(line)?.unwrap_or(0), after)),
    b'%' => Ok(Element::Opens(pairs(line, 0)?, after)),
    b'|' => Ok(Element::Opens(pairs(line, 1)?, after)),
    other => Err(RespError(format!(
      "unexpected byte {other:#04x} at the start of a reply element"
    ))),
  }
}

/// A length header: `None` for -1 (RESP2 nil); any other negative length is no RESP.
fn length(line: &[u8]) -> Result<Option<u64>, RespError> {
  let text = std::str::from_utf8(line).unwrap_or("");
  match text.trim().parse::<i64>() {
    Ok(-1) => Ok(None),
    Ok(n) if n >= 0 => Ok(Some(n as u64)),
    Ok(n) => Err(RespError(format!("a negative length {n}"))),
    Err(_) => Err(RespError(format!(
      "expected a length, got {:?}",
      String::from_utf8_lossy(line)
    ))),
  }
}

/// The element count of a map (`extra` 0) or an attribute (`extra` 1, its data).
fn pairs(line: &[u8], extra: u64) -> Result<u64, RespError> {
  let Some(count) = length(line)? else {
    return Err(RespError("a negative map or attribute length".to_string()));
  };
  count
    .checked_mul(2)
    .and_then(|n| n.checked_add(extra))
    .ok_or_else(|| RespError("a map or attribute length too large".to_string()))
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
  let rest = buf.get(from..)?;
  rest
    .windows(2)
    .position(|pair| pair == b"\r\n")
    .map(|at| from + at)
}
