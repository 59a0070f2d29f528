//! TLS for Redis (`rediss://`, option `tls`): a rustls client configuration built once,
//! when the store is created, from PEM text or files. Bad certificates or keys are
//! `INVALID_INPUT` at once; handshake failures are `TLS` when connecting.

use std::io::Read;
use std::sync::Arc;

use bytes::BytesMut;
use napi_derive::napi;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
  ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::error::{StoreError, StoreResult};

/// Why a TLS session's records gave no plaintext.
pub enum RecordFailure {
  /// The session failed (a bad record, an alert, a certificate refused in the handshake).
  Session(rustls::Error),
  /// The server closed the session.
  Closed,
  Io(String),
}

/// Processes the records `read_tls` gave `tls` and appends the plaintext they carried to
/// `plain`. Shared by the drivers that run TLS on a socket of their own (`socket.rs` and
/// the JS runtime's socket, `redis_js.rs`).
pub fn take_plaintext(
  tls: &mut ClientConnection,
  plain: &mut BytesMut,
) -> Result<(), RecordFailure> {
  let state = tls.process_new_packets().map_err(RecordFailure::Session)?;
  let available = state.plaintext_bytes_to_read();
  if available > 0 {
    let start = plain.len();
    plain.resize(start + available, 0);
    tls
      .reader()
      .read_exact(&mut plain[start..])
      .map_err(|err| RecordFailure::Io(err.to_string()))?;
  }
  if state.peer_has_closed() {
    return Err(RecordFailure::Closed);
  }
  Ok(())
}

/// TLS options of a Redis store. Each PEM value is the PEM text itself or a file path.
#[napi(object, object_to_js = false)]
#[derive(Default, Clone)]
pub struct TlsOptions {
  /// CA certificate(s) the server's certificate must chain to. Default: the system's roots.
  pub ca: Option<String>,
  /// Client certificate (chain), for servers that require one (`tls-auth-clients yes`).
  pub cert: Option<String>,
  /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1).
  pub key: Option<String>,
  /// The name the server's certificate must carry. Default: the host of the URL.
  pub servername: Option<String>,
  /// `false` accepts any server certificate (tests only: no protection against a
  /// man in the middle). Default `true`.
  pub reject_unauthorized: Option<bool>,
}

/// A validated TLS configuration: one for every server a store reaches (the server, the
/// sentinels, every cluster node), each checked against its own name unless `servername`
/// names the one every certificate must carry.
pub struct TlsSettings {
  pub config: Arc<ClientConfig>,
  servername: Option<ServerName<'static>>,
  /// Whether a client certificate is configured (to explain a refused handshake).
  has_client_cert: bool,
}

impl TlsSettings {
  /// Builds the client configuration (PEM files are read now).
  pub fn new(options: &TlsOptions) -> StoreResult<Self> {
    Self::build(options, true)
  }

  /// As [`new`](Self::new), but the server's certificate is checked for its chain only,
  /// not the name connected to: libpq's `sslmode=verify-ca`.
  pub fn chain_only(options: &TlsOptions) -> StoreResult<Self> {
    Self::build(options, false)
  }

  fn build(options: &TlsOptions, check_name: bool) -> StoreResult<Self> {
    let servername = options
      .servername
      .as_deref()
      .map(parse_server_name)
      .transpose()?;
    let builder = ClientConfig::builder();
    let builder = if options.reject_unauthorized == Some(false) {
      builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate))
    } else {
      builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnchorVerifier::new(
          options.ca.as_deref(),
          check_name,
        )?))
    };
    let config = match (&options.cert, &options.key) {
      (Some(cert), Some(key)) => builder
        .with_client_auth_cert(certificates("tls.cert", cert)?, private_key(key)?)
        .map_err(|err| StoreError::invalid_input(format!("tls: client certificate: {err}")))?,
      (None, None) => builder.with_no_client_auth(),
      _ => {
        return Err(StoreError::invalid_input(
          "tls: `cert` and `key` go together (a client certificate needs its key)",
        ))
      }
    };
    Ok(Self {
      config: Arc::new(config),
      servername,
      has_client_cert: options.cert.is_some(),
    })
  }

  /// Checks `options` as far as the machine does not matter, on every backend (SQLite and
  /// memory included, which use no TLS): `cert` and `key` together, `servername`, and the
  /// PEM text given inline (`ca`, `cert`, `key`; with both `cert` and `key` inline, that
  /// they make a client certificate), with the messages [`new`](Self::new) gives. A file
  /// path is not read here: it is read by the backends that use TLS, so a path that exists
  /// only where the server is reached (a production container) does not fail elsewhere.
  pub fn check(options: &TlsOptions) -> StoreResult<()> {
    if let Some(name) = &options.servername {
      parse_server_name(name)?;
    }
    fn inline(value: &Option<String>) -> Option<&str> {
      value.as_deref().filter(|v| is_pem_text(v))
    }
    if options.reject_unauthorized != Some(false) {
      if let Some(ca) = inline(&options.ca) {
        AnchorVerifier::new(Some(ca), true)?;
      }
    }
    // In the order `build` checks them, so each backend names the same problem first.
    if options.cert.is_some() != options.key.is_some() {
      return Err(StoreError::invalid_input(
        "tls: `cert` and `key` go together (a client certificate needs its key)",
      ));
    }
    let cert = inline(&options.cert)
      .map(|cert| certificates("tls.cert", cert))
      .transpose()?;
    let key = inline(&options.key).map(private_key).transpose()?;
    if let (Some(cert), Some(key)) = (cert, key) {
      ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate))
        .with_client_auth_cert(cert, key)
        .map_err(|err| StoreError::invalid_input(format!("tls: client certificate: {err}")))?;
    }
    Ok(())
  }

  /// The name the certificate of the server at `host` must carry: `servername`, else `host`.
  pub fn server_name(&self, host: &str) -> StoreResult<ServerName<'static>> {
    match &self.servername {
      Some(name) => Ok(name.clone()),
      None => parse_server_name(host),
    }
  }

  /// Why a handshake failed, in words, with rustls's own text after them.
  pub fn explain(&self, err: &rustls::Error) -> String {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error as E};
    let reason = match err {
      // A CA certificate presented as the server's own that is not one of `tls.ca`.
      E::InvalidCertificate(Cert::Other(other)) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
        "untrusted issuer: the server presents a CA certificate (self-signed?) that is not one of `tls.ca`"
      }
      E::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
        "untrusted issuer: the server's certificate does not chain to `tls.ca` (or the system's roots)"
      }
      E::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
        "the server's certificate has expired"
      }
      E::InvalidCertificate(Cert::NotValidYet | Cert::NotValidYetContext { .. }) => {
        "the server's certificate is not valid yet"
      }
      E::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
        "wrong name: the server's certificate is not valid for the name connected to (set `tls.servername` to the name it carries)"
      }
      E::AlertReceived(Alert::CertificateRequired) => {
        "the server requires a client certificate (`tls.cert` and `tls.key`)"
      }
      E::AlertReceived(Alert::HandshakeFailure | Alert::BadCertificate)
        if !self.has_client_cert =>
      {
        "the server refused the handshake; it may require a client certificate (`tls.cert` and `tls.key`)"
      }
      E::AlertReceived(Alert::UnknownCA | Alert::BadCertificate) => {
        "the server does not trust the client certificate"
      }
      E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
        "the server does not speak TLS on that port (a plain-text port?)"
      }
      _ => "",
    };
    if reason.is_empty() {
      err.to_string()
    } else {
      format!("{reason} ({err})")
    }
  }

  /// [`explain`](Self::explain) for a socket error that comes from the TLS session.
  pub fn explain_io(&self, err: &std::io::Error) -> Option<String> {
    let inner = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(self.explain(inner))
  }
}

fn parse_server_name(name: &str) -> StoreResult<ServerName<'static>> {
  ServerName::try_from(name.trim_matches(['[', ']']).to_string())
    .map_err(|_| StoreError::invalid_input(format!("tls: invalid server name \"{name}\"")))
}

/// Verifies server certificates as Node.js's `tls` does with `ca`: a chain to one of the
/// given certificates (webpki), and also a server certificate that *is* one of them: the
/// self-signed `CA:TRUE` certificate of `openssl req -x509`, which webpki refuses as an end
/// entity (`CaUsedAsEndEntity`). That one is a trust anchor given by the user, so it is
/// accepted after the checks that still apply: its validity dates and the server name
/// (the handshake signature is checked as for any certificate).
#[derive(Debug)]
struct AnchorVerifier {
  webpki: Arc<WebPkiServerVerifier>,
  anchors: Vec<CertificateDer<'static>>,
  /// Whether the certificate must be valid for the name connected to (`false`: the
  /// chain only, libpq's `verify-ca`).
  check_name: bool,
}

/// The operating system's trust anchors, read once per process: reading them took about
/// 0.3 s per store (Bun), and every `rediss://` store without `ca` needs them.
fn system_roots() -> Arc<RootCertStore> {
  static ROOTS: std::sync::OnceLock<Arc<RootCertStore>> = std::sync::OnceLock::new();
  ROOTS
    .get_or_init(|| {
      let mut roots = RootCertStore::empty();
      roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
      Arc::new(roots)
    })
    .clone()
}

impl AnchorVerifier {
  fn new(ca: Option<&str>, check_name: bool) -> StoreResult<Self> {
    let mut anchors = Vec::new();
    let roots = match ca {
      Some(ca) => {
        let mut roots = RootCertStore::empty();
        for cert in certificates("tls.ca", ca)? {
          roots
            .add(cert.clone())
            .map_err(|err| StoreError::invalid_input(format!("tls.ca: {err}")))?;
          anchors.push(cert);
        }
        Arc::new(roots)
      }
      None => system_roots(),
    };
    if roots.is_empty() && ca.is_none() {
      return Err(StoreError::invalid_input(
        "no system CA certificates found to verify the server with: install them (Debian: \
         ca-certificates), or give `tls.ca`",
      ));
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, Arc::new(provider()))
      .build()
      .map_err(|err| StoreError::invalid_input(format!("tls.ca: {err}")))?;
    Ok(Self {
      webpki,
      anchors,
      check_name,
    })
  }

  /// The checks left for a server certificate that is itself a configured trust anchor.
  fn verify_anchor(
    &self,
    end_entity: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
  ) -> Result<ServerCertVerified, rustls::Error> {
    use rustls::CertificateError as Cert;
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(end_entity)
      .map_err(|_| rustls::Error::InvalidCertificate(Cert::BadEncoding))?;
    let validity = &parsed.tbs_certificate.validity;
    let now = std::time::Duration::from_secs(now.as_secs());
    if now < validity.not_before.to_unix_duration() {
      return Err(rustls::Error::InvalidCertificate(Cert::NotValidYet));
    }
    if now > validity.not_after.to_unix_duration() {
      return Err(rustls::Error::InvalidCertificate(Cert::Expired));
    }
    let cert = ParsedCertificate::try_from(end_entity)?;
    if self.check_name {
      rustls::client::verify_server_name(&cert, server_name)?;
    }
    Ok(ServerCertVerified::assertion())
  }
}

impl ServerCertVerifier for AnchorVerifier {
  fn verify_server_cert(
    &self,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    server_name: &ServerName<'_>,
    ocsp_response: &[u8],
    now: UnixTime,
  ) -> Result<ServerCertVerified, rustls::Error> {
    let verified =
      self
        .webpki
        .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
    use rustls::CertificateError as Cert;
    match verified {
      // webpki checks the name last, once the chain and dates passed.
      Err(rustls::Error::InvalidCertificate(
        Cert::NotValidForName | Cert::NotValidForNameContext { .. },
      )) if !self.check_name => Ok(ServerCertVerified::assertion()),
      Err(_)
        if self
          .anchors
          .iter()
          .any(|a| a.as_ref() == end_entity.as_ref()) =>
      {
        self.verify_anchor(end_entity, server_name, now)
      }
      other => other,
    }
  }

  fn verify_tls12_signature(
    &self,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
  ) -> Result<HandshakeSignatureValid, rustls::Error> {
    self.webpki.verify_tls12_signature(message, cert, dss)
  }

  fn verify_tls13_signature(
    &self,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
  ) -> Result<HandshakeSignatureValid, rustls::Error> {
    self.webpki.verify_tls13_signature(message, cert, dss)
  }

  fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
    self.webpki.supported_verify_schemes()
  }
}

/// Whether a PEM value is the PEM text itself (else it is a file path).
fn is_pem_text(value: &str) -> bool {
  value.contains("-----BEGIN")
}

/// PEM text as is; anything else is read as a file path. A path that cannot be read is
/// quoted in the error, except for `tls.key`: a key whose PEM lines were lost (a base64
/// secret, a body without its `-----BEGIN` line) would be read as a path and printed.
fn pem_bytes(what: &str, value: &str) -> StoreResult<Vec<u8>> {
  if is_pem_text(value) {
    return Ok(value.as_bytes().to_vec());
  }
  std::fs::read(value).map_err(|err| {
    let given = match what {
      "tls.key" => format!(
        "the file given ({} characters; not PEM text, which starts with a `-----BEGIN` line)",
        value.chars().count()
      ),
      _ => format!("\"{value}\""),
    };
    StoreError::invalid_input(format!("{what}: cannot read {given}: {err}"))
  })
}

fn certificates(what: &str, value: &str) -> StoreResult<Vec<CertificateDer<'static>>> {
  let pem = pem_bytes(what, value)?;
  let certs = CertificateDer::pem_slice_iter(&pem)
    .collect::<Result<Vec<_>, _>>()
    .map_err(|err| StoreError::invalid_input(format!("{what}: not PEM certificates: {err}")))?;
  if certs.is_empty() {
    return Err(StoreError::invalid_input(format!(
      "{what}: no PEM certificate found"
    )));
  }
  Ok(certs)
}

fn private_key(value: &str) -> StoreResult<PrivateKeyDer<'static>> {
  let pem = pem_bytes("tls.key", value)?;
  if pem
    .windows(b"ENCRYPTED PRIVATE KEY".len())
    .any(|w| w == b"ENCRYPTED PRIVATE KEY")
    || pem
      .windows(b"Proc-Type: 4,ENCRYPTED".len())
      .any(|w| w == b"Proc-Type: 4,ENCRYPTED")
  {
    return Err(StoreError::invalid_input(
      "tls.key: the private key is encrypted (a passphrase), which is not supported: give it decrypted (`openssl pkey -in key.pem -out plain.pem`)",
    ));
  }
  PrivateKeyDer::from_pem_slice(&pem)
    .map_err(|err| StoreError::invalid_input(format!("tls.key: no PEM private key: {err}")))
}

/// `rejectUnauthorized: false`: every certificate is accepted (signatures are still
/// checked, so the session keys belong to whoever presented the certificate).
#[derive(Debug)]
struct AcceptAnyCertificate;

impl ServerCertVerifier for AcceptAnyCertificate {
  fn verify_server_cert(
    &self,
    _end_entity: &CertificateDer<'_>,
    _intermediates: &[CertificateDer<'_>],
    _server_name: &ServerName<'_>,
    _ocsp_response: &[u8],
    _now: UnixTime,
  ) -> Result<ServerCertVerified, rustls::Error> {
    Ok(ServerCertVerified::assertion())
  }

  fn verify_tls12_signature(
    &self,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
  ) -> Result<HandshakeSignatureValid, rustls::Error> {
    let algorithms = &provider().signature_verification_algorithms;
    rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
  }

  fn verify_tls13_signature(
    &self,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
  ) -> Result<HandshakeSignatureValid, rustls::Error> {
    let algorithms = &provider().signature_verification_algorithms;
    rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
  }

  fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
    provider()
      .signature_verification_algorithms
      .supported_schemes()
  }
}

fn provider() -> rustls::crypto::CryptoProvider {
  rustls::crypto::ring::default_provider()
}
