//! TLS: what the connection URL's `sslmode` and `sslrootcert` ask for, read as libpq reads them,
//! and the rustls connector that every connection of the store uses (the first one of
//! `connect`, the pool's, the notification listener's).
//!
//! tokio-postgres parses `sslmode` but knows only `disable`, `prefer` and `require`, and refuses
//! `sslrootcert`; so [`split_url`] takes both out of the URL before tokio-postgres reads it, and
//! [`Settings`] decides what is checked. rustls runs with the `ring` provider, chosen explicitly
//! (never the process's default), so that another crate's rustls features change nothing here.

use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use saga_core::store::StoreError;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Config, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{pg, PostgresError};

/// How a connection uses TLS: the URL's `sslmode`, with libpq's words and meaning (see the
/// [crate docs](crate#tls) for what each checks here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// `disable`: never TLS.
    Disable,
    /// `prefer` (the default, as in libpq): TLS when the server offers it, a plain connection
    /// when it does not. The server's certificate is checked only when root certificates are
    /// given (then as [`SslMode::VerifyCa`]).
    Prefer,
    /// `require`: TLS or no connection. The server's certificate is checked only when root
    /// certificates are given (then as [`SslMode::VerifyCa`], as libpq does).
    Require,
    /// `verify-ca`: TLS, and the server's certificate must chain to the root certificates; its
    /// host name is not checked.
    VerifyCa,
    /// `verify-full`: TLS, the certificate must chain to the root certificates and be valid for
    /// the host name connected to.
    VerifyFull,
}

impl SslMode {
    /// libpq's word for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(word: &str) -> Result<SslMode, PostgresError> {
        Ok(match word {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(PostgresError::InvalidTlsSettings(
                    "sslmode=allow (plain first, TLS only when the server insists) is not \
                     supported: use sslmode=prefer, or sslmode=disable"
                        .into(),
                ))
            }
            other => {
                return Err(PostgresError::InvalidTlsSettings(format!(
                    "sslmode={other:?} is not a mode: use disable, prefer, require, verify-ca or \
                     verify-full"
                )))
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which check of a TLS connection failed (the `problem` of [`PostgresError::Tls`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsProblem {
    /// The server answered that it does not take TLS, and the mode requires it.
    NotSupported,
    /// The server refused a connection without TLS (its `pg_hba.conf` has `hostssl` lines only
    /// for this client).
    RequiredByServer {
        /// The server's message.
        server_said: String,
    },
    /// The server's certificate does not chain to the root certificates given.
    UnknownCa {
        /// Which root certificates: a file, or the system's.
        roots: String,
    },
    /// The server's certificate chains to the roots but is not valid for the host name
    /// connected to (checked by `verify-full` only).
    WrongHostName {
        /// The names the certificate is valid for, as it presents them (may be empty when
        /// rustls does not say).
        presented: Vec<String>,
    },
    /// The server's certificate has expired, or is not valid yet.
    NotValidNow {
        /// rustls's account of it.
        detail: String,
    },
    /// Another failure of the TLS handshake (an alert from the server, a protocol error, a
    /// host name TLS cannot check).
    Handshake {
        /// rustls's account of it.
        detail: String,
    },
}

/// The sentence of [`PostgresError::Tls`].
pub(crate) fn describe(host: &str, mode: SslMode, problem: &TlsProblem) -> String {
    match problem {
        TlsProblem::NotSupported => format!(
            "the server at {host} does not support TLS, which sslmode={mode} requires: turn ssl \
             on in its postgresql.conf, or connect with sslmode=prefer or sslmode=disable"
        ),
        TlsProblem::RequiredByServer { server_said } => format!(
            "the server at {host} refused a connection without TLS (sslmode={mode}; it said: \
             {server_said}): connect with sslmode=require, verify-ca or verify-full"
        ),
        TlsProblem::UnknownCa { roots } => format!(
            "TLS with the server at {host} failed (sslmode={mode}): its certificate was issued \
             by an unknown certificate authority, not one of {roots}; name the authority that \
             issued it with sslrootcert=<file>"
        ),
        TlsProblem::WrongHostName { presented } => {
            let names =
                if presented.is_empty() { "other names".to_owned() } else { presented.join(", ") };
            format!(
                "TLS with the server at {host} failed (sslmode={mode}): its certificate is not \
                 valid for the host name {host} (it names {names}); connect by one of its names, \
                 or with sslmode=verify-ca, which does not check the host name"
            )
        }
        TlsProblem::NotValidNow { detail } => format!(
            "TLS with the server at {host} failed (sslmode={mode}): its certificate is not valid \
             now ({detail})"
        ),
        TlsProblem::Handshake { detail } => {
            format!("TLS with the server at {host} failed (sslmode={mode}): {detail}")
        }
    }
}

/// Where the certificates that the server's must chain to come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RootCerts {
    /// A PEM file of one or more certificates (`sslrootcert=<path>`).
    File(PathBuf),
    /// The system's trusted roots (`sslrootcert=system`), as `rustls-native-certs` finds them
    /// (on Linux: `SSL_CERT_FILE`/`SSL_CERT_DIR`, else OpenSSL's usual files).
    System,
}

impl RootCerts {
    fn from_url(value: &str) -> Option<RootCerts> {
        match value {
            "" => None,
            "system" => Some(RootCerts::System),
            path => Some(RootCerts::File(PathBuf::from(path))),
        }
    }
}

impl fmt::Display for RootCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCerts::File(path) => write!(f, "the root certificates in {}", path.display()),
            RootCerts::System => f.write_str("the system's root certificates"),
        }
    }
}

/// What the URL said of TLS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UrlTls {
    pub(crate) mode: Option<SslMode>,
    pub(crate) roots: Option<RootCerts>,
}

/// Takes `sslmode` and `sslrootcert` out of `url` (a `postgres://` URL or a key-value string):
/// what is left is for tokio-postgres. Other parameters stay as they were written. Text that
/// does not tokenize is returned whole, for tokio-postgres to say what is wrong with it.
pub(crate) fn split_url(url: &str) -> Result<(String, UrlTls), PostgresError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_uri(url)
    } else {
        split_key_values(url)
    }
}

fn take(tls: &mut UrlTls, key: &str, value: &str) -> Result<bool, PostgresError> {
    match key {
        "sslmode" => tls.mode = Some(SslMode::parse(value)?),
        "sslrootcert" => tls.roots = RootCerts::from_url(value),
        _ => return Ok(false),
    }
    Ok(true)
}

fn split_uri(url: &str) -> Result<(String, UrlTls), PostgresError> {
    let mut tls = UrlTls::default();
    // As tokio-postgres reads it: the user info runs to the first `@`; the query starts at the
    // first `?` after it.
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let after_user = url[scheme_end..].find('@').map_or(scheme_end, |i| scheme_end + i + 1);
    let Some(q) = url[after_user..].find('?').map(|i| after_user + i) else {
        return Ok((url.to_owned(), tls));
    };
    let mut kept = Vec::new();
    for pair in url[q + 1..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
        let value = percent_encoding::percent_decode_str(value).decode_utf8().map_err(|_| {
            PostgresError::InvalidTlsSettings(format!(
                "the URL's {key} is not UTF-8 once percent-decoded"
            ))
        })?;
        if !take(&mut tls, &key, &value)? {
            kept.push(pair);
        }
    }
    let mut rest = url[..q].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, tls))
}

fn split_key_values(text: &str) -> Result<(String, UrlTls), PostgresError> {
    let mut tls = UrlTls::default();
    let Some(params) = key_values(text) else { return Ok((text.to_owned(), tls)) };
    let mut rest = String::new();
    let mut from = 0;
    for (start, end, key, value) in params {
        if take(&mut tls, &key, &value)? {
            rest.push_str(&text[from..start]);
            from = end;
        }
    }
    rest.push_str(&text[from..]);
    Ok((rest.trim().to_owned(), tls))
}

/// The `key=value` parameters of a libpq key-value string, with the byte range each takes, as
/// tokio-postgres tokenizes them; `None` when it would refuse the text.
fn key_values(text: &str) -> Option<Vec<(usize, usize, String, String)>> {
    let mut params = Vec::new();
    let mut it = text.char_indices().peekable();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let Some(&(start, _)) = it.peek() else { return Some(params) };
        let mut key = String::new();
        while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            return None;
        }
        skip_ws(&mut it);
        it.next_if(|(_, c)| *c == '=')?;
        skip_ws(&mut it);
        let mut value = String::new();
        if it.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match it.next()? {
                    (_, '\'') => break,
                    (_, '\\') => value.push(it.next()?.1),
                    (_, c) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some((_, escaped)) = it.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return None;
            }
        }
        let end = it.peek().map_or(text.len(), |&(i, _)| i);
        params.push((start, end, key, value));
    }
}

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// Nothing but the handshake's signatures (libpq without root certificates).
    Nothing,
    /// The chain to the roots.
    Chain,
    /// The chain and the host name.
    ChainAndName,
}

/// The TLS settings of a store: the mode and the roots, from the URL and the options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) mode: SslMode,
    pub(crate) roots: Option<RootCerts>,
}

impl Settings {
    /// What the URL says, with the options' roots when the URL names none; refuses what libpq
    /// refuses.
    pub(crate) fn resolve(
        url: UrlTls,
        options_roots: Option<&RootCerts>,
    ) -> Result<Settings, PostgresError> {
        let roots = url.roots.or_else(|| options_roots.cloned());
        let mode = url.mode.unwrap_or(if roots == Some(RootCerts::System) {
            SslMode::VerifyFull
        } else {
            SslMode::Prefer
        });
        if roots == Some(RootCerts::System) && mode != SslMode::VerifyFull {
            return Err(PostgresError::InvalidTlsSettings(format!(
                "sslmode={mode} may not be used with the system's root certificates \
                 (sslrootcert=system): any public authority signs certificates for any name, so \
                 only sslmode=verify-full proves whose server it is"
            )));
        }
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && roots.is_none() {
            return Err(PostgresError::InvalidTlsSettings(format!(
                "sslmode={mode} checks the server's certificate against root certificates, and \
                 none were given: add sslrootcert=<CA file> (or sslrootcert=system) to the URL, \
                 or set PostgresOptions::ssl_root_cert"
            )));
        }
        Ok(Settings { mode, roots })
    }

    fn check(&self) -> Check {
        match (self.mode, &self.roots) {
            (SslMode::VerifyFull, _) => Check::ChainAndName,
            (SslMode::VerifyCa, _) | (_, Some(_)) => Check::Chain,
            (_, None) => Check::Nothing,
        }
    }

    /// The mode tokio-postgres negotiates with: the checks are the connector's.
    pub(crate) fn tokio_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// Reads the root certificates.
fn load_roots(roots: &RootCerts) -> Result<RootCertStore, PostgresError> {
    let refused =
        |problem: String| PostgresError::RootCertificates { roots: roots.to_string(), problem };
    let mut store = RootCertStore::empty();
    match roots {
        RootCerts::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| refused(format!("the file cannot be read: {e}")))?;
            for cert in certs {
                let cert = cert.map_err(|e| refused(format!("the file is not PEM: {e}")))?;
                store.add(cert).map_err(|e| refused(format!("a certificate is refused: {e}")))?;
            }
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                return Err(refused(format!(
                    "none was found ({}); install the ca-certificates package, or set \
                     SSL_CERT_FILE",
                    if errors.is_empty() {
                        "no error was reported".into()
                    } else {
                        errors.join("; ")
                    }
                )));
            }
        }
    }
    if store.is_empty() {
        return Err(refused("it holds no certificate".into()));
    }
    Ok(store)
}

/// The `MakeTlsConnect` of every connection of a store: rustls through tokio-postgres-rustls,
/// with the checks the settings ask for, and errors that name the host and the check.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: MakeRustlsConnect,
    mode: SslMode,
    roots: Arc<str>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector").field("mode", &self.mode).field("roots", &self.roots).finish()
    }
}

impl Connector {
    /// Builds the rustls configuration (reading the root certificates) once.
    pub(crate) fn new(settings: &Settings) -> Result<Connector, PostgresError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PostgresError::InvalidTlsSettings(format!("rustls refused: {e}")))?;
        let algorithms = provider.signature_verification_algorithms;
        let roots = settings.roots.as_ref().map(load_roots).transpose()?.map(Arc::new);
        let mut config = match (settings.check(), roots) {
            (Check::ChainAndName, Some(roots)) => {
                let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| {
                        PostgresError::InvalidTlsSettings(format!("rustls refused the roots: {e}"))
                    })?;
                builder.with_webpki_verifier(verifier).with_no_client_auth()
            }
            (Check::Chain, Some(roots)) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient {
                    roots: Some(roots),
                    algorithms,
                }))
                .with_no_client_auth(),
            _ => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient { roots: None, algorithms }))
                .with_no_client_auth(),
        };
        // What libpq 17 sends: a server reached with direct TLS negotiation insists on it;
        // earlier servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        let roots = match &settings.roots {
            Some(roots) => roots.to_string(),
            None => "no root certificates".to_owned(),
        };
        Ok(Connector {
            inner: MakeRustlsConnect::new(config),
            mode: settings.mode,
            roots: roots.into(),
        })
    }
}

impl Connector {
    /// The `sslmode` its connections use.
    pub(crate) fn mode(&self) -> SslMode {
        self.mode
    }
}

type RustlsConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
type RustlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

impl MakeTlsConnect<Socket> for Connector {
    type Stream = RustlsStream;
    type TlsConnect = Connect;
    type Error = std::convert::Infallible;

    fn make_tls_connect(&mut self, host: &str) -> Result<Connect, Self::Error> {
        let inner = MakeTlsConnect::<Socket>::make_tls_connect(&mut self.inner, host)?;
        Ok(Connect { inner, host: host.to_owned(), mode: self.mode, roots: self.roots.clone() })
    }
}

/// One handshake, whose failure names the host and the check.
pub(crate) struct Connect {
    inner: RustlsConnect,
    host: String,
    mode: SslMode,
    roots: Arc<str>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl TlsConnect<Socket> for Connect {
    type Stream = RustlsStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream, BoxError>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        let Connect { inner, host, mode, roots } = self;
        let handshake = inner.connect(stream);
        Box::pin(async move {
            handshake.await.map_err(|e| -> BoxError {
                // An I/O error alone (a reset, the server gone) stays one: it may pass.
                let Some(rustls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
                else {
                    if e.kind() == std::io::ErrorKind::InvalidInput {
                        let detail = format!("{host:?} is not a host name TLS can check ({e})");
                        let problem = TlsProblem::Handshake { detail };
                        return Box::new(PostgresError::Tls { host, sslmode: mode, problem });
                    }
                    return Box::new(e);
                };
                let problem = problem_of(rustls, &roots);
                Box::new(PostgresError::Tls { host, sslmode: mode, problem })
            })
        })
    }
}

fn problem_of(error: &rustls::Error, roots: &str) -> TlsProblem {
    match error {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::UnknownIssuer => TlsProblem::UnknownCa { roots: roots.to_owned() },
            CertificateError::NotValidForName => {
                TlsProblem::WrongHostName { presented: Vec::new() }
            }
            CertificateError::NotValidForNameContext { presented, .. } => {
                TlsProblem::WrongHostName { presented: presented.iter().map(|n| name(n)).collect() }
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                TlsProblem::NotValidNow { detail: error.to_string() }
            }
            _ => TlsProblem::Handshake { detail: error.to_string() },
        },
        _ => TlsProblem::Handshake { detail: error.to_string() },
    }
}

/// A name as rustls presents it (`DnsName("db.example.com")`, `IpAddress(10.0.0.1)`) as a
/// person writes it.
fn name(presented: &str) -> String {
    let inner = |prefix: &str, suffix: &str| {
        presented.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(suffix)).map(str::to_owned)
    };
    inner("DnsName(\"", "\")")
        .or_else(|| inner("IpAddress(", ")"))
        .unwrap_or_else(|| presented.to_owned())
}

/// A verifier that checks less than rustls's own: with `roots`, the chain to them but not the
/// host name (`verify-ca`); without, nothing of the certificate but that the server holds its
/// key (`prefer` and `require` without root certificates, as libpq).
#[derive(Debug)]
struct Lenient {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The hosts of `config`, as messages name them: `host:port`, several joined by `, `.
pub(crate) fn hosts(config: &Config) -> String {
    host_list(config).join(", ")
}

/// The hosts of `config` as `host:port` each, in the order they are tried.
fn host_list(config: &Config) -> Vec<String> {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or_else(|| ports.first()).copied().unwrap_or(5432);
    if config.get_hosts().is_empty() {
        let addr = |i: usize, a: &std::net::IpAddr| match a {
            std::net::IpAddr::V6(_) => format!("[{a}]:{}", port(i)),
            std::net::IpAddr::V4(_) => format!("{a}:{}", port(i)),
        };
        config.get_hostaddrs().iter().enumerate().map(|(i, a)| addr(i, a)).collect()
    } else {
        config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| match host {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{}", port(i)),
                Host::Tcp(name) => format!("{name}:{}", port(i)),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            })
            .collect()
    }
}

/// A failed connection as a store error: the connector's TLS errors (naming the host), the
/// server's "does not support TLS" and its refusal of a plain connection as
/// [`PostgresError::Tls`]; everything else as [`pg`] makes it.
pub(crate) fn connect_error(
    context: &str,
    config: &Config,
    mode: SslMode,
    error: tokio_postgres::Error,
) -> StoreError {
    // Of several hosts, tokio-postgres tells the last one's error: the refusal came from one of
    // them, tried in order.
    let host = || host_list(config).join(" or ");
    if let Some(db) = error.as_db_error() {
        // The server's words for a plain connection that `pg_hba.conf` has no line for (only
        // `hostssl` ones): "no pg_hba.conf entry for host …, no encryption".
        if db.code() == &SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            && db.message().ends_with("no encryption")
        {
            let problem = TlsProblem::RequiredByServer { server_said: db.message().to_owned() };
            return StoreError::backend(
                context,
                PostgresError::Tls { host: host(), sslmode: mode, problem },
            );
        }
    } else if error.source().is_some_and(|s| s.to_string() == "server does not support TLS") {
        // tokio-postgres's words when the server answers the TLS request with "no".
        let problem = TlsProblem::NotSupported;
        return StoreError::backend(
            context,
            PostgresError::Tls { host: host(), sslmode: mode, problem },
        );
    }
    if host_list(config).len() > 1 {
        // Each host refused, or took no writes (a standby); the error is the last one's.
        let context = format!(
            "{context}: none of {} took a read-write session (the last one tried said)",
            hosts(config)
        );
        return pg(context, error);
    }
    pg(context, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, UrlTls) {
        split_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn uri_parameters_are_taken_out_and_the_rest_stays() {
        let (rest, tls) = split(
            "postgres://u:p%3F@h:5/db?application_name=a&sslmode=verify-full&sslrootcert=%2Fca%20dir%2Fca.crt&connect_timeout=3",
        );
        assert_eq!(rest, "postgres://u:p%3F@h:5/db?application_name=a&connect_timeout=3");
        assert_eq!(tls.mode, Some(SslMode::VerifyFull));
        assert_eq!(tls.roots, Some(RootCerts::File("/ca dir/ca.crt".into())));

        let (rest, tls) = split("postgresql://h/db?sslmode=require");
        assert_eq!(
            (rest.as_str(), tls.mode, tls.roots),
            ("postgresql://h/db", Some(SslMode::Require), None)
        );
        let (rest, tls) = split("postgres://u:a?b@h/db?sslrootcert=system");
        assert_eq!((rest.as_str(), tls.roots), ("postgres://u:a?b@h/db", Some(RootCerts::System)));
        let (rest, tls) = split("postgres://h/db");
        assert_eq!((rest.as_str(), tls), ("postgres://h/db", UrlTls::default()));
        // The rest parses as tokio-postgres reads it.
        let config: Config = split("postgres://u@h:7/db?sslmode=disable&hostaddr=127.0.0.1")
            .0
            .parse()
            .expect("parses");
        assert_eq!(config.get_ports(), [7]);
        assert_eq!(config.get_hostaddrs().len(), 1);
    }

    #[test]
    fn multi_host_urls_keep_every_host_and_their_order() {
        let (rest, tls) = split(
            "postgres://u:p@db1.example.com:5433,10.0.0.2:5434,[::1]:5435/saga?target_session_attrs=read-write&sslmode=require",
        );
        assert_eq!(
            rest,
            "postgres://u:p@db1.example.com:5433,10.0.0.2:5434,[::1]:5435/saga?target_session_attrs=read-write"
        );
        assert_eq!(tls.mode, Some(SslMode::Require));
        let config: Config = rest.parse().expect("parses");
        assert_eq!(config.get_ports(), [5433, 5434, 5435]);
        assert_eq!(
            config.get_target_session_attrs(),
            tokio_postgres::config::TargetSessionAttrs::ReadWrite
        );
        assert_eq!(hosts(&config), "db1.example.com:5433, 10.0.0.2:5434, [::1]:5435");
        // One port for every host, as libpq.
        let config: Config = split("postgres://h1,h2/db").0.parse().expect("parses");
        assert_eq!(hosts(&config), "h1:5432, h2:5432");
        let config: Config =
            split("host=h1,h2 port=7,8 sslmode=disable target_session_attrs=read-write")
                .0
                .parse()
                .expect("parses");
        assert_eq!(hosts(&config), "h1:7, h2:8");
    }

    #[test]
    fn key_value_parameters_are_taken_out_and_the_rest_stays() {
        let (rest, tls) = split(
            "host=h sslmode = 'verify-ca' password='a b\\'c' sslrootcert=/x\\ y/ca.crt dbname=d",
        );
        assert_eq!(rest, "host=h  password='a b\\'c'  dbname=d");
        assert_eq!(tls.mode, Some(SslMode::VerifyCa));
        assert_eq!(tls.roots, Some(RootCerts::File("/x y/ca.crt".into())));
        let config: Config = rest.parse().expect("parses");
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(config.get_dbname(), Some("d"));
        // Text tokio-postgres refuses goes to it whole.
        let (rest, tls) = split("host=h sslmode");
        assert_eq!((rest.as_str(), tls), ("host=h sslmode", UrlTls::default()));
    }

    #[test]
    fn modes_are_libpqs_and_the_rest_is_refused_in_a_sentence() {
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            let (_, tls) = split(&format!("postgres://h/db?sslmode={mode}"));
            assert_eq!(tls.mode.map(SslMode::as_str), Some(mode));
        }
        for (bad, says) in [("allow", "not supported"), ("verify_full", "not a mode")] {
            match split_url(&format!("postgres://h/db?sslmode={bad}")) {
                Err(PostgresError::InvalidTlsSettings(text)) => {
                    assert!(text.contains(says), "{text}")
                }
                other => panic!("sslmode={bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn settings_follow_libpq() {
        let file = || Some(RootCerts::File("/ca.crt".into()));
        let resolve = |mode, roots, options: Option<RootCerts>| {
            Settings::resolve(UrlTls { mode, roots }, options.as_ref())
        };
        // Default: prefer, checking nothing; with roots, the chain.
        let s = resolve(None, None, None).expect("default");
        assert_eq!((s.mode, s.check()), (SslMode::Prefer, Check::Nothing));
        assert_eq!(
            resolve(Some(SslMode::Require), None, None).map(|s| s.check()).ok(),
            Some(Check::Nothing)
        );
        assert_eq!(
            resolve(Some(SslMode::Require), file(), None).map(|s| s.check()).ok(),
            Some(Check::Chain)
        );
        assert_eq!(
            resolve(Some(SslMode::VerifyCa), None, file()).map(|s| s.check()).ok(),
            Some(Check::Chain)
        );
        assert_eq!(
            resolve(Some(SslMode::VerifyFull), file(), None).map(|s| s.check()).ok(),
            Some(Check::ChainAndName)
        );
        // The URL's roots win over the options'.
        let s =
            resolve(Some(SslMode::VerifyFull), file(), Some(RootCerts::System)).expect("resolves");
        assert_eq!(s.roots, file());
        // System roots: verify-full by default, and nothing weaker.
        let s = resolve(None, Some(RootCerts::System), None).expect("system");
        assert_eq!(s.mode, SslMode::VerifyFull);
        match resolve(Some(SslMode::Require), Some(RootCerts::System), None) {
            Err(PostgresError::InvalidTlsSettings(text)) => {
                assert!(text.contains("verify-full"), "{text}")
            }
            other => panic!("{other:?}"),
        }
        // Verifying needs roots.
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            match resolve(Some(mode), None, None) {
                Err(PostgresError::InvalidTlsSettings(text)) => {
                    assert!(text.contains("sslrootcert=<CA file>"), "{text}")
                }
                other => panic!("{mode}: {other:?}"),
            }
        }
    }

    #[test]
    fn presented_names_read_as_written() {
        assert_eq!(name("DnsName(\"db.example.com\")"), "db.example.com");
        assert_eq!(name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(name("IpAddress(::1)"), "::1");
        assert_eq!(name("UriName(x)"), "UriName(x)");
    }

    #[test]
    fn an_unreadable_root_file_is_refused_by_name() {
        let path = std::env::temp_dir().join(format!("saga-no-such-ca-{}.crt", std::process::id()));
        let settings =
            Settings { mode: SslMode::VerifyFull, roots: Some(RootCerts::File(path.clone())) };
        match Connector::new(&settings) {
            Err(e @ PostgresError::RootCertificates { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains(&path.display().to_string()) && text.contains("cannot be read"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        let empty = std::env::temp_dir().join(format!("saga-empty-ca-{}.crt", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").expect("writing a file");
        let settings =
            Settings { mode: SslMode::VerifyFull, roots: Some(RootCerts::File(empty.clone())) };
        let answer = Connector::new(&settings);
        let _ = std::fs::remove_file(&empty);
        match answer {
            Err(e @ PostgresError::RootCertificates { .. }) => {
                assert!(e.to_string().contains("holds no certificate"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
}
