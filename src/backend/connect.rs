//! Opening a connection for the event-loop driver, on tokio: find the server (asking
//! the sentinels for the master when there are any), connect, TLS, `AUTH`, `SELECT`,
//! `PING` (and the checks of `durability: 'aof'` and of the master's role), all within
//! `connectTimeout`. The result is a non-blocking socket for the driver.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use redis::{ConnectionAddr, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::resp::ReplyDecoder;
use super::socket::Socket;
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::redis_target::{RedisTarget, SentinelSettings};

/// Connects, authenticates, selects the database and checks with `PING`, all within
/// `limit`. Returns a non-blocking socket, ready for the loop driver.
pub async fn open(target: &RedisTarget, limit: Duration) -> StoreResult<Socket> {
  let in_tls_handshake = AtomicBool::new(false);
  let attempt = async {
    let (host, port) = server_address(target, limit).await?;
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
      .await
      .map_err(|err| unavailable(target, &format!("{host}:{port}: {err}")))?;
    stream
      .set_nodelay(true)
      .map_err(|err| unavailable(target, &err.to_string()))?;
    let Some(tls) = &target.tls else {
      let mut stream = stream;
      handshake(&mut stream, target).await?;
      let stream = stream
        .into_std()
        .map_err(|err| unavailable(target, &err.to_string()))?;
      return Ok(Socket::new(stream, None));
    };
    in_tls_handshake.store(true, Ordering::Relaxed);
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let mut stream = connector
      .connect(tls.server_name.clone(), stream)
      .await
      .map_err(|err| tls_failed(target, &err.to_string()))?;
    in_tls_handshake.store(false, Ordering::Relaxed);
    handshake(&mut stream, target).await?;
    let (stream, session) = stream.into_inner();
    let stream = stream
      .into_std()
      .map_err(|err| unavailable(target, &err.to_string()))?;
    Ok(Socket::new(stream, Some(session)))
  };
  match tokio::time::timeout(limit, attempt).await {
    Ok(result) => result,
    Err(_) if in_tls_handshake.load(Ordering::Relaxed) => Err(tls_failed(
      target,
      &format!(
        "no TLS handshake within connectTimeout ({} ms); does the server speak TLS on that port?",
        limit.as_millis()
      ),
    )),
    Err(_) => Err(unavailable(
      target,
      &format!(
        "no connection within connectTimeout ({} ms)",
        limit.as_millis()
      ),
    )),
  }
}

/// Where the server is: the URL's address, or the master the sentinels name now.
async fn server_address(target: &RedisTarget, limit: Duration) -> StoreResult<(String, u16)> {
  if let Some(sentinel) = &target.sentinel {
    return master_address(target, sentinel, limit).await;
  }
  match target.client.get_connection_info().addr() {
    ConnectionAddr::Tcp(host, port) => Ok((host.clone(), *port)),
    _ => Err(StoreError::invalid_input("the loop driver only speaks TCP")),
  }
}

/// Asks each sentinel in turn for the master's address (`SENTINEL
/// GET-MASTER-ADDR-BY-NAME`); the first that knows it answers. Each sentinel gets an
/// equal share of `limit`, so one that does not answer leaves time for the others.
async fn master_address(
  target: &RedisTarget,
  sentinel: &SentinelSettings,
  limit: Duration,
) -> StoreResult<(String, u16)> {
  let share = limit / (sentinel.sentinels.len() as u32 + 1);
  let mut failures = Vec::new();
  for (host, port) in &sentinel.sentinels {
    let asked = tokio::time::timeout(share, ask_sentinel(host, *port, sentinel)).await;
    let answer =
      asked.unwrap_or_else(|_| Err(format!("no answer within {} ms", share.as_millis())));
    match answer {
      Ok(Some(address)) => return Ok(address),
      Ok(None) => failures.push(format!(
        "{host}:{port} does not know master \"{}\"",
        sentinel.master
      )),
      Err(err) => failures.push(format!("{host}:{port}: {err}")),
    }
  }
  Err(unavailable(
    target,
    &format!("no sentinel named the master: {}", failures.join("; ")),
  ))
}

async fn ask_sentinel(
  host: &str,
  port: u16,
  sentinel: &SentinelSettings,
) -> Result<Option<(String, u16)>, String> {
  let mut stream = tokio::net::TcpStream::connect((host, port))
    .await
    .map_err(|err| err.to_string())?;
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
    .map_err(|err| err.to_string())?;
  match answers.last() {
    Some(Value::Array(parts)) if parts.len() == 2 => {
      let text = |value: &Value| match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(text) => text.clone(),
        _ => String::new(),
      };
      let port = text(&parts[1])
        .parse()
        .map_err(|_| "bad port".to_string())?;
      Ok(Some((text(&parts[0]), port)))
    }
    Some(Value::ServerError(err)) => Err(format!("{err:?}")),
    _ => Ok(None),
  }
}

/// A socket error while connecting; one that comes from the TLS session (an alert
/// such as `CertificateRequired`) is a `TLS` error.
fn io_failed(target: &RedisTarget, err: std::io::Error) -> StoreError {
  let from_tls = err
    .get_ref()
    .is_some_and(|inner| inner.is::<rustls::Error>());
  if from_tls {
    tls_failed(target, &err.to_string())
  } else {
    unavailable(target, &err.to_string())
  }
}

fn tls_failed(target: &RedisTarget, detail: &str) -> StoreError {
  StoreError::new(
    ErrorCode::Tls,
    format!("TLS handshake with {} failed: {detail}", target.display),
  )
}

/// Sends `commands` in one write and reads one reply each (server errors included).
async fn exchange(
  stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
  commands: &[redis::Cmd],
) -> std::io::Result<Vec<Value>> {
  let mut bytes = Vec::new();
  for command in commands {
    command.write_packed_command(&mut bytes);
  }
  stream.write_all(&bytes).await?;
  let mut decoder = ReplyDecoder::default();
  let mut received = BytesMut::with_capacity(256);
  let mut answers = Vec::with_capacity(commands.len());
  while answers.len() < commands.len() {
    if let Some(value) = decoder
      .decode(&mut received)
      .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err.to_string()))?
    {
      answers.push(value);
      continue;
    }
    if stream.read_buf(&mut received).await? == 0 {
      return Err(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the server closed the connection during the handshake",
      ));
    }
  }
  Ok(answers)
}

/// `AUTH`, `SELECT`, `PING`, and the checks: `durability: 'aof'`, and with sentinels,
/// that the server is still the master (`ROLE`).
async fn handshake(
  stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
  target: &RedisTarget,
) -> StoreResult<()> {
  let settings = target.client.get_connection_info().redis_settings();
  let mut commands = Vec::new();
  if let Some(password) = settings.password() {
    let mut auth = redis::cmd("AUTH");
    if let Some(user) = settings.username() {
      auth.arg(user);
    }
    commands.push(auth.arg(password).clone());
  }
  if settings.db() != 0 {
    commands.push(redis::cmd("SELECT").arg(settings.db()).clone());
  }
  commands.push(redis::cmd("PING"));
  if target.require_aof {
    commands.push(redis::cmd("CONFIG").arg("GET").arg("appendonly").clone());
    commands.push(redis::cmd("CONFIG").arg("GET").arg("appendfsync").clone());
  }
  if target.sentinel.is_some() {
    commands.push(redis::cmd("ROLE"));
  }
  let mut answers = exchange(stream, &commands)
    .await
    .map_err(|err| io_failed(target, err))?;
  if let Some(err) = answers.iter().find_map(|answer| match answer {
    Value::ServerError(err) => Some(err.clone()),
    _ => None,
  }) {
    let err = StoreError::from(redis::RedisError::from(err));
    let what = if err.code == ErrorCode::Auth {
      "authentication to"
    } else {
      "cannot connect to"
    };
    return Err(StoreError::new(
      err.code,
      format!("{what} {} failed: {}", target.display, err.message),
    ));
  }
  if target.sentinel.is_some() {
    check_master(target, &answers.pop().expect("ROLE was sent"))?;
  }
  if target.require_aof {
    check_aof(target, &answers[answers.len() - 2..])?;
  }
  Ok(())
}

/// The server the sentinels named must still be a master (a failover may be under way).
fn check_master(target: &RedisTarget, role: &Value) -> StoreResult<()> {
  let name = match role {
    Value::Array(items) => match items.first() {
      Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
      Some(Value::SimpleString(text)) => text.clone(),
      _ => String::new(),
    },
    _ => String::new(),
  };
  if name == "master" {
    return Ok(());
  }
  Err(unavailable(
    target,
    &format!("the server the sentinels named is not the master (role: {name}); a failover may be under way"),
  ))
}

/// `durability: 'aof'` holds only if every write is fsynced before its reply.
fn check_aof(target: &RedisTarget, answers: &[Value]) -> StoreResult<()> {
  let setting = |value: &Value| -> String {
    let items: Vec<&Value> = match value {
      Value::Array(items) => items.iter().collect(),
      Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
      _ => Vec::new(),
    };
    match items.get(1) {
      Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
      Some(Value::SimpleString(text)) => text.clone(),
      _ => "(unknown)".to_string(),
    }
  };
  let (appendonly, appendfsync) = (setting(&answers[0]), setting(&answers[1]));
  if appendonly == "yes" && appendfsync == "always" {
    return Ok(());
  }
  Err(StoreError::new(
    ErrorCode::Unavailable,
    format!(
      "durability 'aof' needs {} to run with appendonly yes and appendfsync always, so that \
       every acknowledged write is on disk; it has appendonly {appendonly}, appendfsync {appendfsync}",
      target.display
    ),
  ))
}

fn unavailable(target: &RedisTarget, detail: &str) -> StoreError {
  StoreError::new(
    ErrorCode::Unavailable,
    format!("cannot connect to {}: {detail}", target.display),
  )
}
