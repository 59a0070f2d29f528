//! The non-blocking socket the event-loop driver reads and writes: plain TCP, or TCP
//! with a rustls session whose handshake was done on tokio. Writes take what the kernel
//! accepts now; reads take everything available.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use bytes::BytesMut;
use rustls::ClientConnection;

use super::redis_core::{lost, tls_lost};
use crate::error::StoreResult;
use crate::tls::take_plaintext;

/// A connected, non-blocking socket.
pub struct Socket {
  stream: TcpStream,
  tls: Option<Box<ClientConnection>>,
}

impl Socket {
  pub fn new(stream: TcpStream, tls: Option<ClientConnection>) -> Self {
    Self {
      stream,
      tls: tls.map(Box::new),
    }
  }

  /// The server's address, as connected.
  pub fn peer(&self) -> Option<std::net::SocketAddr> {
    self.stream.peer_addr().ok()
  }

  pub fn fd(&self) -> RawFd {
    self.stream.as_raw_fd()
  }

  /// Sends as much of `unsent` as the socket takes now and removes it from `unsent`.
  /// Returns whether bytes are still waiting (then watch for writability).
  pub fn write_some(&mut self, unsent: &mut Vec<u8>) -> StoreResult<bool> {
    let Some(tls) = &mut self.tls else {
      let written = write_plain(&mut self.stream, unsent)?;
      unsent.drain(..written);
      return Ok(!unsent.is_empty());
    };
    // rustls holds at most 64 KiB of records: feed it in turns with the socket.
    loop {
      while tls.wants_write() {
        match tls.write_tls(&mut self.stream) {
          Ok(0) => return Err(lost("the server closed the connection")),
          Ok(_) => {}
          Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(true),
          Err(err) if err.kind() == ErrorKind::Interrupted => {}
          Err(err) => return Err(lost(&err.to_string())),
        }
      }
      if unsent.is_empty() {
        return Ok(false);
      }
      let taken = tls
        .writer()
        .write(unsent)
        .map_err(|e| lost(&e.to_string()))?;
      if taken == 0 {
        return Ok(true);
      }
      unsent.drain(..taken);
    }
  }

  /// Appends every reply byte available now to `received`. Returns how many bytes came
  /// from the server (TLS records counted whole, decrypted or not yet) and whether the TLS
  /// session has bytes to send in answer (alerts, key updates).
  pub fn read_available(&mut self, received: &mut BytesMut) -> StoreResult<(usize, bool)> {
    let Some(tls) = &mut self.tls else {
      return Ok((read_plain(&mut self.stream, received)?, false));
    };
    let mut read = 0;
    loop {
      match tls.read_tls(&mut self.stream) {
        Ok(0) => return Err(lost("the server closed the connection")),
        Ok(n) => {
          read += n;
          take_plaintext(tls, received).map_err(tls_lost)?
        }
        Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok((read, tls.wants_write())),
        Err(err) if err.kind() == ErrorKind::Interrupted => {}
        Err(err) => return Err(lost(&err.to_string())),
      }
    }
  }
}

fn write_plain(stream: &mut TcpStream, bytes: &[u8]) -> StoreResult<usize> {
  let mut written = 0;
  while written < bytes.len() {
    match stream.write(&bytes[written..]) {
      Ok(0) => return Err(lost("the server closed the connection")),
      Ok(n) => written += n,
      Err(err) if err.kind() == ErrorKind::WouldBlock => break,
      Err(err) if err.kind() == ErrorKind::Interrupted => {}
      Err(err) => return Err(lost(&err.to_string())),
    }
  }
  Ok(written)
}

/// Reads what is available into `received`; returns how many bytes.
fn read_plain(stream: &mut TcpStream, received: &mut BytesMut) -> StoreResult<usize> {
  let mut read = 0;
  loop {
    received.reserve(64 * 1024);
    let spare = received.spare_capacity_mut();
    // SAFETY: `read` only writes into the buffer; we expose only what it wrote.
    let buffer = unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast(), spare.len()) };
    match stream.read(buffer) {
      Ok(0) => return Err(lost("the server closed the connection")),
      Ok(n) => {
        let drained = n < buffer.len();
        unsafe { received.set_len(received.len() + n) };
        read += n;
        // A short read emptied the socket: skip the read that would say EAGAIN (the
        // poll is level-triggered and reports data that comes later).
        if drained {
          return Ok(read);
        }
      }
      Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(read),
      Err(err) if err.kind() == ErrorKind::Interrupted => {}
      Err(err) => return Err(lost(&err.to_string())),
    }
  }
}
