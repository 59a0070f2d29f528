//! TLS for Redis (`rediss://`, option `tls`): a rustls client configuration built once,
//! when the store is created, from PEM text or files. Bad certificates or keys are
//! `INVALID_INPUT` at once; handshake failures are `TLS` when connecting.

use std::sync::Arc;

use napi_derive::napi;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{StoreError, StoreResult};

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

/// A validated TLS configuration and the server name to verify.
pub struct TlsSettings {
  pub config: Arc<ClientConfig>,
  pub server_name: ServerName<'static>,
}

impl TlsSettings {
  /// Builds the client configuration for a server reached as `host`.
  pub fn new(options: &TlsOptions, host: &str) -> StoreResult<Self> {
    let name = options.servername.as_deref().unwrap_or(host);
    let server_name = ServerName::try_from(name.trim_matches(['[', ']']).to_string())
      .map_err(|_| StoreError::invalid_input(format!("tls: invalid server name \"{name}\"")))?;
    let builder = ClientConfig::builder();
    let builder = if options.reject_unauthorized == Some(false) {
      builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate))
    } else {
      builder.with_root_certificates(roots(options.ca.as_deref())?)
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
      server_name,
    })
  }
}

fn roots(ca: Option<&str>) -> StoreResult<RootCertStore> {
  let mut roots = RootCertStore::empty();
  match ca {
    Some(ca) => {
      for cert in certificates("tls.ca", ca)? {
        roots
          .add(cert)
          .map_err(|err| StoreError::invalid_input(format!("tls.ca: {err}")))?;
      }
    }
    None => {
      let found = rustls_native_certs::load_native_certs();
      roots.add_parsable_certificates(found.certs);
    }
  }
  Ok(roots)
}

/// PEM text as is; anything else is read as a file path.
fn pem_bytes(what: &str, value: &str) -> StoreResult<Vec<u8>> {
  if value.contains("-----BEGIN") {
    return Ok(value.as_bytes().to_vec());
  }
  std::fs::read(value)
    .map_err(|err| StoreError::invalid_input(format!("{what}: cannot read \"{value}\": {err}")))
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
