//! Opening a Redis connection, for every driver: find the server (asking the sentinels
//! for the master when there are any), connect, TLS, `AUTH`, `SELECT`, `PING` (and the
//! checks of `durability: 'aof'` and of the master's role), all within `connectTimeout`.
//! The login and checks are one sans-IO [`Handshake`]. On tokio, the event-loop driver
//! takes the result as a non-blocking socket ([`open`]); the threads driver (TCP, TLS or
//! a unix socket, a cluster's nodes included) as a tokio stream ([`open_stream`]). The
//! socket driver (`redis_js.rs`) connects with the JS runtime's socket and feeds the
//! [`Handshake`] itself, asking [`server_address`] for the sentinels' master. A cluster's
//! slot map is asked for on a short-lived connection of its own ([`ask_node`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use redis::{ConnectionAddr, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::resp::ReplyDecoder;
use super::sentinel_watch::MasterWatch;
#[cfg(unix)]
use super::socket::Socket;
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::redis_target::{RedisTarget, SentinelSettings};
use crate::tls::TlsSettings;

/// A connected stream: plain TCP, TLS over TCP, or a unix socket.
pub enum Stream {
  Plain(TcpStream),
  Tls(Box<TlsStream<TcpStream>>),
  #[cfg(unix)]
  Unix(tokio::net::UnixStream),
}

impl Stream {
  /// The address of the server at the other end (`host:port`), when the OS says.
  pub fn peer(&self) -> Option<std::net::SocketAddr> {
    match self {
      Stream::Plain(stream) => stream.peer_addr().ok(),
      Stream::Tls(stream) => stream.get_ref().0.peer_addr().ok(),
      #[cfg(unix)]
      Stream::Unix(_) => None,
    }
  }
}

impl AsyncRead for Stream {
  fn poll_read(
    self: Pin<&mut Self>,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
  ) -> Poll<io::Result<()>> {
    match self.get_mut() {
      Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
      Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
      #[cfg(unix)]
      Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
    }
  }
}

impl AsyncWrite for Stream {
  fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    match self.get_mut() {
      Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
      Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
      #[cfg(unix)]
      Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
    }
  }

  fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    match self.get_mut() {
      Stream::Plain(s) => Pin::new(s).poll_flush(cx),
      Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
      #[cfg(unix)]
      Stream::Unix(s) => Pin::new(s).poll_flush(cx),
    }
  }

  fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    match self.get_mut() {
      Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
      Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
      #[cfg(unix)]
      Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
    }
  }
}

/// Who to log in as, and what to check, once connected.
#[derive(Default)]
pub struct Login<'a> {
  pub username: Option<&'a str>,
  pub password: Option<&'a str>,
  pub db: i64,
  /// Where `db` was given, for messages: "option `db`", "the URL path \"/3\"", ...
  pub db_origin: &'a str,
  /// `durability: 'aof'`: the server must fsync every write before its reply.
  pub require_aof: bool,
  /// With sentinels: the server must still be the master (`ROLE`).
  pub check_master: bool,
}

/// How the server is named in messages, and its TLS settings.
#[derive(Clone, Copy)]
pub struct Peer<'a> {
  pub display: &'a str,
  pub tls: Option<&'a TlsSettings>,
}

impl Peer<'_> {
  pub fn unavailable(&self, detail: &str) -> StoreError {
    StoreError::cannot_connect(self.display, detail)
  }

  pub fn tls_failed(&self, detail: &str) -> StoreError {
    StoreError::new(
      ErrorCode::Tls,
      format!("TLS handshake with {} failed: {detail}", self.display),
    )
  }

  /// A socket error while connecting; one that comes from the TLS session (an alert
  /// such as `CertificateRequired`) is a `TLS` error.
  fn io_failed(&self, err: &io::Error) -> StoreError {
    match self.tls.and_then(|tls| tls.explain_io(err)) {
      Some(reason) => self.tls_failed(&reason),
      None => self.unavailable(&err.to_string()),
    }
  }
}

/// Connects to `host:port` (TLS when `peer.tls`), logs in and checks as every
/// connection does, then sends `commands` in one write
/// (a cluster's `CLUSTER SLOTS`; none for the checks alone): their replies, server
/// errors included; the whole within `limit`. The connection is closed after. A
/// handshake that does not finish in time is `TLS`, anything else that does not is
/// `UNAVAILABLE`.
pub async fn ask_node(
  host: &str,
  port: u16,
  peer: Peer<'_>,
  login: &Login<'_>,
  limit: Duration,
  commands: &[redis::Cmd],
) -> StoreResult<Vec<Value>> {
  let in_tls_handshake = AtomicBool::new(false);
  let attempt = async {
    let mut stream = tcp_then_tls(host, port, peer, &in_tls_handshake).await?;
    handshake(&mut stream, peer, login).await?;
    exchange(&mut stream, commands)
      .await
      .map_err(|err| peer.io_failed(&err))
  };
  let said = connect_timeout_said(limit);
  bounded(peer, limit, &said, &in_tls_handshake, attempt).await
}

/// `attempt` within `limit` (named in messages as `said`: "connectTimeout (N ms)", or a
/// sentinel's share of it).
async fn bounded<T>(
  peer: Peer<'_>,
  limit: Duration,
  said: &str,
  in_tls_handshake: &AtomicBool,
  attempt: impl std::future::Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
  match tokio::time::timeout(limit, attempt).await {
    Ok(result) => result,
    Err(_) if in_tls_handshake.load(Ordering::Relaxed) => Err(peer.tls_failed(&format!(
      "no TLS handshake within {said}; does the server speak TLS on that port?"
    ))),
    Err(_) => Err(peer.unavailable(&format!("no connection within {said}"))),
  }
}

/// How `connectTimeout` is named in messages.
fn connect_timeout_said(limit: Duration) -> String {
  format!("connectTimeout ({} ms)", limit.as_millis())
}

/// How a sentinel's share of `connectTimeout` (`limit`) is named in messages: the share is
/// `limit` split evenly between the `sentinels` and the master.
fn sentinel_share_said(share: Duration, limit: Duration, sentinels: usize) -> String {
  let many = if sentinels == 1 { "" } else { "s" };
  format!(
    "{} ms (this sentinel's share of connectTimeout ({} ms), which is split evenly between \
     the {sentinels} sentinel{many} and the master)",
    share.as_millis(),
    limit.as_millis()
  )
}

/// Idle time before the first keepalive probe, the time between probes, and how many go
/// unanswered before the connection is dropped: a peer that vanished without a word (a
/// host down, a NAT or load balancer that forgot the flow) is found in about 30 s, not
/// after the system's default of hours.
const KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(15), Duration::from_secs(5), 3);
/// How long written bytes may stay unacknowledged before the kernel drops the connection
/// (Linux): calls in flight to a vanished peer fail over to a new connection instead of
/// waiting out about 15 minutes of retransmissions.
#[cfg(any(target_os = "linux", target_os = "android"))]
const UNACKNOWLEDGED_LIMIT: Duration = Duration::from_secs(30);

/// TCP keepalive (and, on Linux, a bound on unacknowledged data) on a new connection. Best
/// effort: a socket that refuses an option works as before.
fn watch_for_a_vanished_peer(stream: &TcpStream) {
  let socket = socket2::SockRef::from(stream);
  let (idle, interval, probes) = KEEPALIVE;
  let keepalive = socket2::TcpKeepalive::new()
    .with_time(idle)
    .with_interval(interval)
    .with_retries(probes);
  let _ = socket.set_tcp_keepalive(&keepalive);
  #[cfg(any(target_os = "linux", target_os = "android"))]
  let _ = socket.set_tcp_user_timeout(Some(UNACKNOWLEDGED_LIMIT));
}

async fn tcp_then_tls(
  host: &str,
  port: u16,
  peer: Peer<'_>,
  in_tls_handshake: &AtomicBool,
) -> StoreResult<Stream> {
  let stream = TcpStream::connect((host, port))
    .await
    .map_err(|err| peer.unavailable(&format!("{host}:{port}: {err}")))?;
  stream
    .set_nodelay(true)
    .map_err(|err| peer.unavailable(&err.to_string()))?;
  watch_for_a_vanished_peer(&stream);
  let Some(tls) = peer.tls else {
    return Ok(Stream::Plain(stream));
  };
  in_tls_handshake.store(true, Ordering::Relaxed);
  let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
  let stream = connector
    .connect(tls.server_name(host)?, stream)
    .await
    .map_err(|err| match tls.explain_io(&err) {
      Some(reason) => peer.tls_failed(&reason),
      // The server went away mid-handshake (a node being killed): not a TLS problem,
      // and another attempt may pass.
      None if is_reset(&err) => peer.unavailable(&format!("{host}:{port}: {err}")),
      None => peer.tls_failed(&err.to_string()),
    })?;
  in_tls_handshake.store(false, Ordering::Relaxed);
  Ok(Stream::Tls(Box::new(stream)))
}

/// A connection the peer reset or aborted.
fn is_reset(err: &io::Error) -> bool {
  matches!(
    err.kind(),
    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
  )
}

/// The target's server (the master the sentinels name now, when there are any: `watch`
/// then watches it), connected, logged in and checked, within `limit`.
pub async fn open_stream(
  target: &RedisTarget,
  limit: Duration,
  watch: Option<&MasterWatch>,
) -> StoreResult<Stream> {
  let peer = Peer {
    display: &target.display,
    tls: target.tls.as_deref(),
  };
  let in_tls_handshake = AtomicBool::new(false);
  let attempt = async {
    #[cfg(unix)]
    if let ConnectionAddr::Unix(path) = target.client.get_connection_info().addr() {
      let settings = target.client.get_connection_info().redis_settings();
      let login = Login {
        username: settings.username(),
        password: settings.password(),
        db: settings.db(),
        db_origin: &target.db_origin,
        require_aof: target.require_aof,
        check_master: false,
      };
      let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|err| peer.unavailable(&format!("{}: {err}", path.display())))?;
      let mut stream = Stream::Unix(stream);
      handshake(&mut stream, peer, &login).await?;
      return Ok(stream);
    }
    let (host, port) = server_address(target, limit, watch).await?;
    let mut stream = tcp_then_tls(&host, port, peer, &in_tls_handshake).await?;
    handshake(&mut stream, peer, &login_of(target)).await?;
    Ok(stream)
  };
  let said = connect_timeout_said(limit);
  bounded(peer, limit, &said, &in_tls_handshake, attempt).await
}

/// [`open_stream`] as a non-blocking socket, ready for the loop driver.
#[cfg(unix)]
pub async fn open(
  target: &RedisTarget,
  limit: Duration,
  watch: Option<&MasterWatch>,
) -> StoreResult<Socket> {
  let peer = Peer {
    display: &target.display,
    tls: target.tls.as_deref(),
  };
  match open_stream(target, limit, watch).await? {
    Stream::Plain(stream) => {
      let stream = stream
        .into_std()
        .map_err(|err| peer.unavailable(&err.to_string()))?;
      Ok(Socket::new(stream, None))
    }
    Stream::Tls(stream) => {
      let (stream, session) = stream.into_inner();
      let stream = stream
        .into_std()
        .map_err(|err| peer.unavailable(&err.to_string()))?;
      Ok(Socket::new(stream, Some(session)))
    }
    Stream::Unix(_) => Err(StoreError::invalid_input(
      "the event-loop driver needs a TCP address; a unix socket runs on tokio threads",
    )),
  }
}

/// Where the server is: the URL's address, or the master the sentinels name now (one the
/// `watch` saw replaced is not taken back from a sentinel that lags), which `watch` then
/// watches while the store is connected to it.
pub async fn server_address(
  target: &RedisTarget,
  limit: Duration,
  watch: Option<&MasterWatch>,
) -> StoreResult<(String, u16)> {
  match &target.sentinel {
    Some(sentinel) => {
      let named = master_address(target, sentinel, limit).await?;
      let Some(watch) = watch else {
        return Ok(named);
      };
      let address = watch.vet(named, &target.display)?;
      watch.connected_to(&address);
      Ok(address)
    }
    None => tcp_address(target),
  }
}

/// The URL's address (a target without sentinels).
pub fn tcp_address(target: &RedisTarget) -> StoreResult<(String, u16)> {
  match target.client.get_connection_info().addr() {
    ConnectionAddr::Tcp(host, port) => Ok((host.clone(), *port)),
    _ => Err(StoreError::invalid_input(
      "a Redis connection of durastate's own needs a TCP address",
    )),
  }
}

/// Who the target's connections log in as, and what they check.
pub fn login_of(target: &RedisTarget) -> Login<'_> {
  let settings = target.client.get_connection_info().redis_settings();
  Login {
    username: settings.username(),
    password: settings.password(),
    db: settings.db(),
    db_origin: &target.db_origin,
    require_aof: target.require_aof,
    check_master: target.sentinel.is_some(),
  }
}

/// Asks each sentinel in turn for the master's address (`SENTINEL
/// GET-MASTER-ADDR-BY-NAME`); the first that knows it answers. Each sentinel gets an
/// equal share of `limit`, so one that does not answer leaves time for the others. A TLS
/// failure with every sentinel is `TLS`.
async fn master_address(
  target: &RedisTarget,
  sentinel: &SentinelSettings,
  limit: Duration,
) -> StoreResult<(String, u16)> {
  let share = limit / (sentinel.sentinels.len() as u32 + 1);
  let said = sentinel_share_said(share, limit, sentinel.sentinels.len());
  let mut failures = Vec::new();
  let mut all_tls = true;
  let mut all_auth = true;
  for (host, port) in &sentinel.sentinels {
    let display = format!("sentinel {host}:{port}");
    let peer = Peer {
      display: &display,
      tls: target.sentinel_tls.as_deref(),
    };
    match ask_sentinel(host, *port, peer, sentinel, share, &said).await {
      Ok(Some(address)) => return Ok(address),
      Ok(None) => {
        all_tls = false;
        all_auth = false;
        failures.push(format!(
          "{host}:{port} does not know master \"{}\"",
          sentinel.master
        ))
      }
      Err(err) => {
        all_tls &= err.code == ErrorCode::Tls;
        all_auth &= err.code == ErrorCode::Auth;
        failures.push(err.message);
      }
    }
  }
  // Every sentinel refused the handshake, or the login: that, not a transient failure.
  let code = if all_tls {
    ErrorCode::Tls
  } else if all_auth {
    ErrorCode::Auth
  } else {
    ErrorCode::Unavailable
  };
  Err(StoreError::new(
    code,
    format!(
      "cannot connect to {}: no sentinel named the master: {}",
      target.display,
      failures.join("; ")
    ),
  ))
}

async fn ask_sentinel(
  host: &str,
  port: u16,
  peer: Peer<'_>,
  sentinel: &SentinelSettings,
  limit: Duration,
  said: &str,
) -> StoreResult<Option<(String, u16)>> {
  let in_tls_handshake = AtomicBool::new(false);
  let attempt = async {
    let mut stream = tcp_then_tls(host, port, peer, &in_tls_handshake).await?;
    let mut commands = Vec::new();
    if let Some(password) = &sentinel.password {
      let mut auth = redis::cmd("AUTH");
      if let Some(user) = &sentinel.username {
        auth.arg(user);
      }
      commands.push(auth.arg(password).clone());
    }
    let mut ask = redis::cmd("SENTINEL");
    ask.arg("GET-MASTER-ADDR-BY-NAME").arg(&sentinel.master);
    commands.push(ask);
    let answers = exchange(&mut stream, &commands)
      .await
      .map_err(|err| peer.io_failed(&err))?;
    // A refused AUTH (or a SENTINEL refused for want of one) is `AUTH`, said as the
    // server said it.
    if let Some(err) = answers.iter().find_map(|answer| match answer {
      Value::ServerError(err) => Some(err.clone()),
      _ => None,
    }) {
      return Err(login_failed(peer, err));
    }
    match answers.last() {
      Some(Value::Array(parts)) if parts.len() == 2 => {
        let port = text(&parts[1])
          .parse()
          .map_err(|_| peer.unavailable("bad port"))?;
        Ok(Some((text(&parts[0]), port)))
      }
      _ => Ok(None),
    }
  };
  bounded(peer, limit, said, &in_tls_handshake, attempt).await
}

/// A connection to a sentinel, logged in (`AUTH` when the sentinels need a password),
/// within `limit`: the watch of a connected store keeps one to each sentinel.
pub(super) async fn sentinel_session(
  host: &str,
  port: u16,
  peer: Peer<'_>,
  sentinel: &SentinelSettings,
  limit: Duration,
) -> StoreResult<Stream> {
  let in_tls_handshake = AtomicBool::new(false);
  let attempt = async {
    let mut stream = tcp_then_tls(host, port, peer, &in_tls_handshake).await?;
    if let Some(password) = &sentinel.password {
      let mut auth = redis::cmd("AUTH");
      if let Some(user) = &sentinel.username {
        auth.arg(user);
      }
      let answers = exchange(&mut stream, &[auth.arg(password).clone()])
        .await
        .map_err(|err| peer.io_failed(&err))?;
      if let Some(err) = answers.first().and_then(server_error) {
        return Err(login_failed(peer, err));
      }
    }
    Ok(stream)
  };
  let said = connect_timeout_said(limit);
  bounded(peer, limit, &said, &in_tls_handshake, attempt).await
}

pub(super) fn text(value: &Value) -> String {
  match value {
    Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
    Value::SimpleString(text) => text.clone(),
    Value::VerbatimString { text, .. } => text.clone(),
    _ => String::new(),
  }
}

/// Sends `commands` in one write and reads one reply each (server errors included).
pub(super) async fn exchange(
  stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
  commands: &[redis::Cmd],
) -> io::Result<Vec<Value>> {
  send(stream, &packed(commands)).await?;
  let mut reader = Replies::default();
  let mut answers = Vec::with_capacity(commands.len());
  while answers.len() < commands.len() {
    answers.push(reader.next(stream).await?);
  }
  Ok(answers)
}

fn packed(commands: &[redis::Cmd]) -> Vec<u8> {
  let mut bytes = Vec::new();
  for command in commands {
    command.write_packed_command(&mut bytes);
  }
  bytes
}

async fn send(stream: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> io::Result<()> {
  stream.write_all(bytes).await?;
  stream.flush().await
}

/// Replies read from a stream, one at a time.
#[derive(Default)]
struct Replies {
  decoder: ReplyDecoder,
  received: BytesMut,
}

impl Replies {
  async fn next(&mut self, stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Value> {
    loop {
      if let Some(value) = self
        .decoder
        .decode(&mut self.received)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?
      {
        return Ok(value);
      }
      if stream.read_buf(&mut self.received).await? == 0 {
        return Err(io::Error::new(
          io::ErrorKind::UnexpectedEof,
          "the server closed the connection during the handshake",
        ));
      }
    }
  }
}

/// `AUTH`, `SELECT`, `PING`, and the checks: `durability: 'aof'`, and with sentinels,
/// that the server is still the master (`ROLE`).
async fn handshake(
  stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
  peer: Peer<'_>,
  login: &Login<'_>,
) -> StoreResult<()> {
  let (mut handshake, bytes) = Handshake::start(login);
  let failed = |err: io::Error| peer.io_failed(&err);
  send(stream, &bytes).await.map_err(failed)?;
  let mut replies = Replies::default();
  loop {
    let reply = replies.next(stream).await.map_err(failed)?;
    match handshake.take(peer, reply)? {
      Progress::Wait => {}
      Progress::Send(bytes) => send(stream, &bytes).await.map_err(failed)?,
      Progress::Done => return Ok(()),
    }
  }
}

/// The login and checks of a new connection ([`Login`]), without I/O: the driver sends
/// the bytes [`Handshake::start`] gives, then hands it each reply, in order, until it
/// says `Done` (or fails). The tokio drivers run it through [`handshake`]; the JS socket
/// driver (`redis_js.rs`) feeds it from the socket's data events.
pub struct Handshake {
  /// Replies that answer the login (`AUTH`, `SELECT`, `PING`), then the checks'.
  answers: Vec<Value>,
  login_replies: usize,
  expected: usize,
  check_master: bool,
  require_aof: bool,
  /// `CONFIG GET` was refused: `INFO persistence` was sent instead.
  config_refused: Option<redis::ServerError>,
  /// `AUTH` was sent (its reply is the first).
  sent_auth: bool,
  /// `SELECT` was sent: the db, for a refusal's message (boxed: rarely there).
  select: Option<Box<Select>>,
}

/// The `SELECT` of a handshake: which login reply answers it, the db and where it was given.
struct Select {
  at: usize,
  db: i64,
  origin: String,
}

/// What a [`Handshake`] wants after a reply.
pub enum Progress {
  /// More replies are due.
  Wait,
  /// Send these bytes, then go on handing it replies.
  Send(Vec<u8>),
  /// The connection is ready for calls.
  Done,
}

impl Handshake {
  /// The handshake of `login`, and the bytes to send first.
  pub fn start(login: &Login<'_>) -> (Self, Vec<u8>) {
    let mut commands = Vec::new();
    let mut select = None;
    if let Some(password) = login.password {
      let mut auth = redis::cmd("AUTH");
      if let Some(user) = login.username {
        auth.arg(user);
      }
      commands.push(auth.arg(password).clone());
    }
    if login.db != 0 {
      select = Some(Box::new(Select {
        at: commands.len(),
        db: login.db,
        origin: login.db_origin.to_string(),
      }));
      commands.push(redis::cmd("SELECT").arg(login.db).clone());
    }
    commands.push(redis::cmd("PING"));
    let login_replies = commands.len();
    if login.check_master {
      commands.push(redis::cmd("ROLE"));
    }
    if login.require_aof {
      commands.push(redis::cmd("CONFIG").arg("GET").arg("appendonly").clone());
      commands.push(redis::cmd("CONFIG").arg("GET").arg("appendfsync").clone());
    }
    let handshake = Self {
      answers: Vec::with_capacity(commands.len()),
      login_replies,
      expected: commands.len(),
      check_master: login.check_master,
      require_aof: login.require_aof,
      config_refused: None,
      sent_auth: login.password.is_some(),
      select,
    };
    (handshake, packed(&commands))
  }

  /// Takes the next reply; an error means the connection cannot be used.
  pub fn take(&mut self, peer: Peer<'_>, reply: Value) -> StoreResult<Progress> {
    if let Some(refused) = self.config_refused.take() {
      return Err(aof_without_config(peer, refused, &reply));
    }
    self.answers.push(reply);
    if self.answers.len() < self.expected {
      return Ok(Progress::Wait);
    }
    let answers = std::mem::take(&mut self.answers);
    let refused = answers[..self.login_replies]
      .iter()
      .enumerate()
      .find_map(|(at, answer)| server_error(answer).map(|err| (at, err)));
    if let Some((at, err)) = refused {
      // Both are settings to fix, not outages: never retried.
      if at == 0 && self.sent_auth && is_no_password_set(&err) {
        return Err(no_password_set(peer));
      }
      if let Some(select) = self.select.as_deref().filter(|select| select.at == at) {
        if is_db_out_of_range(&err) {
          return Err(db_out_of_range(peer, select.db, &select.origin));
        }
      }
      return Err(login_failed(peer, err));
    }
    let mut checks = answers[self.login_replies..].iter();
    if self.check_master {
      let role = checks.next().expect("ROLE was sent");
      if let Some(err) = server_error(role) {
        return Err(login_failed(peer, err));
      }
      check_master(peer, role)?;
    }
    if self.require_aof {
      let (appendonly, appendfsync) = (checks.next(), checks.next());
      let (appendonly, appendfsync) = (appendonly.expect("sent"), appendfsync.expect("sent"));
      if let Some(refused) = server_error(appendonly).or_else(|| server_error(appendfsync)) {
        self.config_refused = Some(refused);
        let info = packed(&[redis::cmd("INFO").arg("persistence").clone()]);
        return Ok(Progress::Send(info));
      }
      check_aof(peer, &config_value(appendonly), &config_value(appendfsync))?;
    }
    Ok(Progress::Done)
  }
}

fn server_error(value: &Value) -> Option<redis::ServerError> {
  match value {
    Value::ServerError(err) => Some(err.clone()),
    _ => None,
  }
}

fn login_failed(peer: Peer<'_>, err: redis::ServerError) -> StoreError {
  let err = StoreError::from(redis::RedisError::from(err));
  let what = if err.code == ErrorCode::Auth {
    "authentication to"
  } else {
    "cannot connect to"
  };
  StoreError::new(
    err.code,
    format!("{what} {} failed: {}", peer.display, err.message),
  )
}

/// `AUTH` with a password to a server that has none: "AUTH <password> called without any
/// password configured for the default user" (Redis 6+), "Client sent AUTH, but no
/// password is set" (older).
fn is_no_password_set(err: &redis::ServerError) -> bool {
  let detail = err.details().unwrap_or_default();
  detail.contains("without any password configured") || detail.contains("no password is set")
}

/// A password given to a server that has none: `AUTH` (a configuration to fix, never
/// retried). The server's words are not quoted: the password is never in a message.
fn no_password_set(peer: Peer<'_>) -> StoreError {
  StoreError::new(
    ErrorCode::Auth,
    format!(
      "authentication to {} failed: a password was given, but the server has no password \
       configured (for its default user); remove the password from the connection settings, \
       or set one on the server (requirepass, or an ACL user)",
      peer.display
    ),
  )
}

/// `SELECT` of a database the server does not have: "DB index is out of range".
fn is_db_out_of_range(err: &redis::ServerError) -> bool {
  err
    .details()
    .unwrap_or_default()
    .contains("DB index is out of range")
}

/// A `db` beyond the server's `databases` setting: `INVALID_INPUT` (never retried).
fn db_out_of_range(peer: Peer<'_>, db: i64, origin: &str) -> StoreError {
  let origin = if origin.is_empty() {
    "option `db`"
  } else {
    origin
  };
  StoreError::invalid_input(format!(
    "db {db} (from {origin}) is out of range on {}: the server's `databases` setting bounds \
     the db to 0 to databases-1 (16 databases by default); use a lower db or raise \
     `databases` in the server's configuration",
    peer.display
  ))
}

/// The server the sentinels named must still be a master (a failover may be under way).
fn check_master(peer: Peer<'_>, role: &Value) -> StoreResult<()> {
  let name = match role {
    Value::Array(items) => items.first().map(text).unwrap_or_default(),
    _ => String::new(),
  };
  if name == "master" {
    return Ok(());
  }
  Err(peer.unavailable(&format!(
    "the server the sentinels named is not the master (role: {name}); a failover may be under way"
  )))
}

/// The value of a `CONFIG GET name` answer (RESP2 array or RESP3 map).
fn config_value(value: &Value) -> String {
  let items: Vec<&Value> = match value {
    Value::Array(items) => items.iter().collect(),
    Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
    _ => Vec::new(),
  };
  items
    .get(1)
    .map(|v| text(v))
    .unwrap_or_else(|| "(unknown)".into())
}

/// `durability: 'aof'` holds only if every write is fsynced before its reply.
fn check_aof(peer: Peer<'_>, appendonly: &str, appendfsync: &str) -> StoreResult<()> {
  if appendonly == "yes" && appendfsync == "always" {
    return Ok(());
  }
  Err(StoreError::new(
    ErrorCode::Unavailable,
    format!(
      "durability 'aof' needs {} to run with appendonly yes and appendfsync always, so that \
       every acknowledged write is on disk; it has appendonly {appendonly}, appendfsync {appendfsync}",
      peer.display
    ),
  ))
}

/// `CONFIG GET` refused (renamed or blocked, as managed services do): `INFO persistence`
/// (its answer: `info`) still tells whether the AOF is on, but not its fsync policy, so
/// `aof` can be refused when it is off and cannot be confirmed when it is on. Never claims
/// what it cannot see.
fn aof_without_config(peer: Peer<'_>, refused: redis::ServerError, info: &Value) -> StoreError {
  let info = text(info);
  let enabled = info
    .lines()
    .find_map(|line| line.trim().strip_prefix("aof_enabled:"));
  let refused = format!("{refused:?}");
  let detail = match enabled {
    Some("0") => format!(
      "{} runs without the append-only file (INFO persistence: aof_enabled:0)",
      peer.display
    ),
    Some(_) => format!(
      "{} has the append-only file on (INFO persistence: aof_enabled:1), but its fsync policy \
       cannot be read: CONFIG GET is unavailable ({refused}), and only appendfsync always \
       puts every acknowledged write on disk",
      peer.display
    ),
    None => format!(
      "the persistence settings of {} cannot be read: CONFIG GET is unavailable ({refused}) and \
       INFO persistence does not show aof_enabled",
      peer.display
    ),
  };
  StoreError::new(
    ErrorCode::Unavailable,
    format!(
      "durability 'aof' cannot be confirmed: {detail}. Allow CONFIG GET for this user (ACL \
       +config|get) where you can, or use durability 'none' and rely on what the service \
       documents about its persistence"
    ),
  )
}

#[cfg(test)]
mod tests {
  use super::*;

  const PEER: Peer<'static> = Peer {
    display: "redis://test:6379",
    tls: None,
  };

  /// One reply, as the server sends it.
  fn reply(resp: &str) -> Value {
    let mut bytes = BytesMut::from(resp.as_bytes());
    ReplyDecoder::default()
      .decode(&mut bytes)
      .expect("valid RESP")
      .expect("a whole reply")
  }

  fn login(require_aof: bool, check_master: bool) -> Login<'static> {
    Login {
      username: Some("app"),
      password: Some("secret"),
      db: 3,
      db_origin: "the URL path \"/3\"",
      require_aof,
      check_master,
    }
  }

  /// Hands `replies` to the handshake; the last one's progress, or the first error.
  fn run(handshake: &mut Handshake, replies: &[&str]) -> StoreResult<Progress> {
    let mut last = Progress::Wait;
    for resp in replies {
      last = handshake.take(PEER, reply(resp))?;
    }
    Ok(last)
  }

  #[test]
  fn sends_the_login_and_the_checks_in_one_write_and_is_done_after_the_last_reply() {
    let (mut handshake, bytes) = Handshake::start(&login(true, true));
    let text = String::from_utf8(bytes).unwrap();
    let names: Vec<&str> = [
      "AUTH",
      "app",
      "secret",
      "SELECT",
      "3",
      "PING",
      "ROLE",
      "CONFIG",
      "appendonly",
      "appendfsync",
    ]
    .to_vec();
    let mut at = 0;
    for name in names {
      let found = text[at..]
        .find(&format!("\r\n{name}\r\n"))
        .unwrap_or_else(|| panic!("{name} in order in {text:?}"));
      at += found + 1;
    }
    let before_last = [
      "+OK\r\n",
      "+OK\r\n",
      "+PONG\r\n",
      "*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n",
    ];
    assert!(matches!(
      run(&mut handshake, &before_last),
      Ok(Progress::Wait)
    ));
    assert!(matches!(
      run(
        &mut handshake,
        &["*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n"]
      ),
      Ok(Progress::Wait)
    ));
    assert!(matches!(
      run(
        &mut handshake,
        &["*2\r\n$11\r\nappendfsync\r\n$6\r\nalways\r\n"]
      ),
      Ok(Progress::Done)
    ));
  }

  #[test]
  fn a_refused_login_is_an_auth_error_naming_the_server() {
    let (mut handshake, _) = Handshake::start(&login(false, false));
    let refused = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    let err = run(
      &mut handshake,
      &[
        refused,
        "-NOAUTH Authentication required.\r\n",
        "-NOAUTH Authentication required.\r\n",
      ],
    )
    .err()
    .expect("refused");
    assert_eq!(err.code, ErrorCode::Auth);
    assert!(err.message.contains("redis://test:6379"), "{}", err.message);
  }

  #[test]
  fn a_password_to_a_server_without_one_is_auth_and_never_quoted() {
    for said in [
      "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n",
      "-ERR Client sent AUTH, but no password is set\r\n",
    ] {
      let (mut handshake, _) = Handshake::start(&login(false, false));
      let err = run(&mut handshake, &[said, "+OK\r\n", "+PONG\r\n"])
        .err()
        .expect("refused");
      assert_eq!(err.code, ErrorCode::Auth);
      assert!(
        err.message.contains("no password configured") && err.message.contains("redis://test:6379"),
        "{}",
        err.message
      );
      assert!(!err.message.contains("secret"), "{}", err.message);
    }
  }

  #[test]
  fn a_db_out_of_range_is_invalid_input_naming_it_and_where_it_came_from() {
    let (mut handshake, _) = Handshake::start(&login(false, false));
    let err = run(
      &mut handshake,
      &["+OK\r\n", "-ERR DB index is out of range\r\n", "+PONG\r\n"],
    )
    .err()
    .expect("refused");
    assert_eq!(err.code, ErrorCode::InvalidInput);
    assert!(
      err.message.contains("db 3 (from the URL path \"/3\")")
        && err.message.contains("`databases`"),
      "{}",
      err.message
    );
  }

  #[test]
  fn a_server_that_is_no_longer_the_master_is_unavailable() {
    let (mut handshake, _) = Handshake::start(&Login {
      check_master: true,
      ..Login::default()
    });
    let replica = "*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6380\r\n$9\r\nconnected\r\n:1\r\n";
    let err = run(&mut handshake, &["+PONG\r\n", replica])
      .err()
      .expect("not the master");
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert!(
      err.message.contains("not the master (role: slave)"),
      "{}",
      err.message
    );
  }

  #[test]
  fn aof_without_fsync_always_is_refused() {
    let (mut handshake, _) = Handshake::start(&Login {
      require_aof: true,
      ..Login::default()
    });
    let replies = [
      "+PONG\r\n",
      "*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n",
      "*2\r\n$11\r\nappendfsync\r\n$8\r\neverysec\r\n",
    ];
    let err = run(&mut handshake, &replies).err().expect("not fsynced");
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert!(
      err.message.contains("appendfsync everysec"),
      "{}",
      err.message
    );
  }

  #[test]
  fn aof_with_config_refused_asks_info_persistence_and_never_claims_what_it_cannot_see() {
    for (info, says) in [
      ("aof_enabled:0", "aof_enabled:0"),
      ("aof_enabled:1", "its fsync policy cannot be read"),
    ] {
      let (mut handshake, _) = Handshake::start(&Login {
        require_aof: true,
        ..Login::default()
      });
      let refused = "-ERR unknown command 'CONFIG'\r\n";
      let Ok(Progress::Send(bytes)) = run(&mut handshake, &["+PONG\r\n", refused, refused]) else {
        panic!("INFO persistence is asked for");
      };
      assert!(String::from_utf8(bytes).unwrap().contains("persistence"));
      let body = format!("# Persistence\r\n{info}\r\n");
      let answer = format!("${}\r\n{body}\r\n", body.len());
      let err = run(&mut handshake, &[&answer])
        .err()
        .expect("cannot be confirmed");
      assert_eq!(err.code, ErrorCode::Unavailable);
      assert!(err.message.contains(says), "{}", err.message);
    }
  }
}
