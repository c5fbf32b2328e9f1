//! Cluster CA, certificate issuance, and the rustls/quinn configs of mutual TLS.
//!
//! Every Gantry connection is QUIC with mutual TLS under one cluster CA. A
//! certificate names its holder twice: subject `CN=<name>, OU=<role>` for people,
//! and the URI SAN `urn:gantry:<role>:<name>` ([`PeerIdentity::to_uri`]) that the
//! code trusts. After the handshake, [`peer_identity`] says who is on the other
//! end and [`negotiated_alpn`] what they asked to speak; the caller then checks
//! the role against the ALPN ([`crate::identity::Role::for_alpn`]).
//!
//! # Layout
//!
//! - this file: [`TlsError`], [`TlsFiles`], [`Identity`] and the quinn configs.
//! - `pki`: [`init_ca`] and [`issue`] — key generation and signing with rcgen,
//!   files written with private keys at mode 0600.
//!
//! # Who may be a server
//!
//! Only coordinators accept connections. Their certificates carry the DNS SAN
//! [`COORDINATOR_SERVER_NAME`] and the `serverAuth` extended key usage; agents
//! and operators get `clientAuth` only, and [`issue`] refuses to put the
//! coordinator name on them, so a stolen agent key cannot impersonate a
//! coordinator. Clients dial any address with the server name
//! [`COORDINATOR_SERVER_NAME`]:
//!
//! ```ignore
//! let conn = endpoint.connect_with(client_config(&id, ALPN_AGENT)?, addr, COORDINATOR_SERVER_NAME)?.await?;
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde::{Deserialize, Serialize};

use crate::identity::{PeerIdentity, Role};

mod pki;

pub use pki::{init_ca, issue, CaSigner, CA_CERT_FILE, CA_KEY_FILE, DEFAULT_DAYS, MAX_DAYS};

/// The DNS name every coordinator certificate carries, and that clients use as the TLS server name,
/// so clients can reach coordinators by any IP/hostname (like Nomad's server.<region>.nomad).
pub const COORDINATOR_SERVER_NAME: &str = "coordinator.gantry";

/// How often an idle connection sends a keep-alive.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a connection may hear nothing before it counts as dead.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong while creating, loading or using certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Invalid input; the message names the field (`name: ...`, `san: ...`).
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists: refusing to overwrite an existing cluster CA (every certificate it signed would stop working); move it away first if you really mean to start over", path = .path.display())]
    CaExists { path: PathBuf },
    #[error("no cluster CA in {dir} ({file} is missing): run `gantryctl certs init --dir {dir}` first", dir = .dir.display(), file = CA_CERT_FILE)]
    NoCa { dir: PathBuf },
    /// A file that is not what it should be: bad PEM, no certificate, wrong key, not signed by the CA.
    #[error("{path}: {reason}", path = .path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("generating a key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("building the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("building the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("building the QUIC configuration: the crypto provider lacks TLS13_AES_128_GCM_SHA256, which QUIC needs for its initial packets")]
    NoInitialCipherSuite,
    #[error("server_config: only a coordinator certificate can serve connections, this identity is {peer}")]
    NotCoordinator { peer: PeerIdentity },
    #[error("peer certificate: the peer presented no certificate")]
    NoPeerCertificate,
    #[error("peer certificate: {0}")]
    PeerCertificate(String),
}

/// Files of one identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM), the only root trusted.
    pub ca: PathBuf,
    /// Our certificate (PEM); the leaf first if it holds a chain.
    pub cert: PathBuf,
    /// Our private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl TlsFiles {
    /// `DIR/ca.pem`, `DIR/<role>-<name>.pem`, `DIR/<role>-<name>.key`: where [`issue`] writes.
    pub fn in_dir(dir: &Path, role: Role, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join(CA_CERT_FILE),
            cert: dir.join(format!("{role}-{name}.pem")),
            key: dir.join(format!("{role}-{name}.key")),
        }
    }
}

/// A loaded identity: CA roots, our chain and key, and who we are (parsed from our own cert).
pub struct Identity {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    peer: PeerIdentity,
}

impl Identity {
    /// Reads the three files and checks them: the key matches the certificate,
    /// the certificate chains to the CA and is valid now, and it carries a
    /// `urn:gantry:<role>:<name>` URI SAN. Every error names the file at fault.
    pub fn load(files: &TlsFiles) -> Result<Identity, TlsError> {
        let provider = provider();

        let mut roots = RootCertStore::empty();
        for ca in read_certs(&files.ca)? {
            roots.add(ca).map_err(|e| bad_file(&files.ca, format!("not a usable CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);

        let chain = read_certs(&files.cert)?;
        let key = read_key(&files.key)?;
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(|e| {
            bad_file(&files.key, format!("does not belong to the certificate {}: {e}", files.cert.display()))
        })?;

        let (leaf, intermediates) = chain.split_first().ok_or_else(|| no_cert(&files.cert))?;
        // Every certificate we issue carries clientAuth (coordinators dial each
        // other too), so the client verifier checks chain, validity and usage.
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        verifier.verify_client_cert(leaf, intermediates, UnixTime::now()).map_err(|e| {
            bad_file(&files.cert, format!("is not valid under the CA {}: {e}", files.ca.display()))
        })?;
        let peer = identity_of(leaf).map_err(|reason| bad_file(&files.cert, reason))?;

        Ok(Identity { provider, roots, chain, key, peer })
    }

    /// An identity [`CaSigner`] has just signed: one CA, one leaf, its key.
    fn from_signed(
        ca: CertificateDer<'static>,
        leaf: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Identity, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(ca).map_err(|e| TlsError::Invalid(format!("ca: not a usable CA certificate: {e}")))?;
        let peer = identity_of(&leaf).map_err(TlsError::PeerCertificate)?;
        Ok(Identity { provider: provider(), roots: Arc::new(roots), chain: vec![leaf], key, peer })
    }

    /// Who our own certificate says we are.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }
}

impl Clone for Identity {
    fn clone(&self) -> Identity {
        Identity {
            provider: self.provider.clone(),
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            peer: self.peer.clone(),
        }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Identity")
            .field("peer", &self.peer)
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The QUIC endpoint config of a coordinator: its stateless-reset key is
/// derived from the coordinator's private key, so it is the same across
/// restarts. A peer or agent still holding a connection to the process
/// that died then gets a valid stateless reset (RFC 9000 §10.3) from the
/// restarted one at its first packet, and reconnects at once instead of
/// waiting out the idle timeout ([`MAX_IDLE_TIMEOUT`]). With quinn's
/// default (a random key per process) that reset is ignored, and Raft
/// calls to a restarted coordinator time out for up to 5 s (seen as a 5 s
/// election after a follower restart, in `gantryctl bench swarm`).
pub fn endpoint_config(id: &Identity) -> quinn::EndpointConfig {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"gantry quic stateless reset key v1\0");
    ctx.update(id.key.secret_der());
    let derived = ctx.finish();
    let mut config =
        quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref())));
    // Connection ids carry a keyed check, and a packet whose id fails it is
    // dropped without a reset: the restarted process must share that key too.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(derived.as_ref().get(..8).unwrap_or(&[0; 8]));
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    config
}

/// quinn server config: requires a client certificate chaining to our CA (no cert / foreign CA => handshake fails), offers the given ALPNs, uses transport_config().
///
/// Only a coordinator identity may serve ([`TlsError::NotCoordinator`]
/// otherwise): no other certificate carries the server name clients check.
pub fn server_config(id: &Identity, alpns: &[&[u8]]) -> Result<quinn::ServerConfig, TlsError> {
    if id.peer.role != Role::Coordinator {
        return Err(TlsError::NotCoordinator { peer: id.peer.clone() });
    }
    if alpns.is_empty() {
        return Err(TlsError::Invalid("alpns: a server must offer at least one ALPN protocol".into()));
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(id.roots.clone(), id.provider.clone()).build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(id.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    let quic = QuicServerConfig::try_from(tls).map_err(|_| TlsError::NoInitialCipherSuite)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// quinn client config: presents our cert, verifies the server chains to our CA with server name COORDINATOR_SERVER_NAME, offers one ALPN, uses transport_config().
///
/// The server name is the caller's to pass: `endpoint.connect_with(config, addr, COORDINATOR_SERVER_NAME)`.
pub fn client_config(id: &Identity, alpn: &[u8]) -> Result<quinn::ClientConfig, TlsError> {
    build_client_config(&id.provider, id.roots.clone(), Some((id.chain.clone(), id.key.clone_key())), alpn)
}

/// Transport settings shared by both sides: keep-alive ~1 s, max idle ~5 s (so a dead peer is noticed within seconds), sensible stream limits.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            MAX_IDLE_TIMEOUT.as_millis() as u32,
        ))))
        // One stream per request; a coordinator serving many agents wants
        // headroom, but not unbounded per-connection state.
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(256))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(64));
    Arc::new(transport)
}

/// Identity proven by the peer's certificate on an established connection (from its URI SAN; error if absent/malformed).
pub fn peer_identity(conn: &quinn::Connection) -> Result<PeerIdentity, TlsError> {
    let any = conn.peer_identity().ok_or(TlsError::NoPeerCertificate)?;
    let chain = any.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| TlsError::NoPeerCertificate)?;
    let leaf = chain.first().ok_or(TlsError::NoPeerCertificate)?;
    identity_of(leaf).map_err(TlsError::PeerCertificate)
}

/// ALPN negotiated on the connection.
pub fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?.downcast::<HandshakeData>().ok()?.protocol
}

/// The crypto provider of every Gantry TLS config: ring, named explicitly so
/// that no process-wide default has to be installed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build_client_config(
    provider: &Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut tls = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|_| TlsError::NoInitialCipherSuite)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// The identity in a certificate's `urn:gantry:` URI SAN. Exactly one such SAN
/// must be present; other URIs are ignored.
fn identity_of(der: &CertificateDer<'_>) -> Result<PeerIdentity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| format!("malformed subjectAltName extension: {e}"))?
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    let mut found = None;
    for san in sans {
        let x509_parser::extensions::GeneralName::URI(uri) = san else { continue };
        if !uri.starts_with("urn:gantry:") {
            continue;
        }
        let id = PeerIdentity::from_uri(uri)
            .ok_or_else(|| format!("URI SAN {uri:?} is not urn:gantry:<role>:<name> with a known role"))?;
        if found.replace(id).is_some() {
            return Err("carries more than one urn:gantry: URI SAN".into());
        }
    }
    found.ok_or_else(|| {
        "carries no urn:gantry:<role>:<name> URI SAN (was it issued by `gantryctl certs issue`?)".into()
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_file(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(no_cert(path));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => bad_file(path, "holds no PEM private key".into()),
        e => bad_file(path, format!("bad PEM private key: {e}")),
    })
}

fn bad_file(path: &Path, reason: String) -> TlsError {
    TlsError::BadFile { path: path.to_path_buf(), reason }
}

fn no_cert(path: &Path) -> TlsError {
    bad_file(path, "holds no PEM certificate".into())
}

#[cfg(test)]
mod tests;
