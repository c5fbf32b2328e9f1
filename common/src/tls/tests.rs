#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use x509_parser::extensions::GeneralName;

use super::*;
use crate::identity::{ALPN_AGENT, ALPN_API, ALPN_RAFT};

/// Safety net only: every handshake here finishes or fails in milliseconds.
const LIMIT: Duration = Duration::from_secs(10);

fn agent(name: &str) -> PeerIdentity {
    PeerIdentity { role: Role::Agent, name: name.into() }
}

/// A PKI dir with a CA, one coordinator `c1` and one agent `gpu-01`.
fn pki() -> (tempfile::TempDir, Identity, Identity) {
    let dir = tempfile::tempdir().unwrap();
    init_ca(dir.path(), "test").unwrap();
    let coord = issue(dir.path(), Role::Coordinator, "c1", &["127.0.0.1".into()], 30).unwrap();
    let agent = issue(dir.path(), Role::Agent, "gpu-01", &[], 30).unwrap();
    (dir, Identity::load(&coord).unwrap(), Identity::load(&agent).unwrap())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn issue_and_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ca = init_ca(&dir.path().join("pki"), "prod").unwrap();
    assert_eq!(ca, dir.path().join("pki/ca.pem"));
    let pki = dir.path().join("pki");

    let sans = vec!["10.0.0.5".to_string(), "gpu-01.example.com".to_string(), "::1".to_string()];
    let files = issue(&pki, Role::Agent, "gpu-01", &sans, 365).unwrap();
    assert_eq!(files, TlsFiles::in_dir(&pki, Role::Agent, "gpu-01"));
    assert_eq!(files.cert, pki.join("agent-gpu-01.pem"));
    assert_eq!(files.key, pki.join("agent-gpu-01.key"));
    let id = Identity::load(&files).unwrap();
    assert_eq!(id.peer(), &agent("gpu-01"));

    let der = CertificateDer::from_pem_file(&files.cert).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let names = cert.subject_alternative_name().unwrap().unwrap().value.general_names.clone();
    assert!(names.contains(&GeneralName::IPAddress(&[10, 0, 0, 5])));
    assert!(names.contains(&GeneralName::DNSName("gpu-01.example.com")));
    assert!(names.contains(&GeneralName::URI("urn:gantry:agent:gpu-01")));
    assert!(!names.contains(&GeneralName::DNSName(COORDINATOR_SERVER_NAME)));
    assert_eq!(cert.subject().to_string(), "CN=gpu-01, OU=agent");
    let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86_400;
    assert_eq!(days, 365, "one hour of backdating rounds down");

    let coord = Identity::load(&issue(&pki, Role::Coordinator, "c-1", &[], 30).unwrap()).unwrap();
    assert_eq!(coord.peer(), &PeerIdentity { role: Role::Coordinator, name: "c-1".into() });
    let der = CertificateDer::from_pem_file(pki.join("coordinator-c-1.pem")).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let names = cert.subject_alternative_name().unwrap().unwrap().value.general_names.clone();
    assert!(names.contains(&GeneralName::DNSName(COORDINATOR_SERVER_NAME)));

    // Issuing again renews in place.
    let again = issue(&pki, Role::Agent, "gpu-01", &[], 10).unwrap();
    assert_eq!(Identity::load(&again).unwrap().peer(), &agent("gpu-01"));
}

#[test]
fn init_ca_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let ca = init_ca(dir.path(), "prod").unwrap();
    let before = std::fs::read(&ca).unwrap();
    let err = init_ca(dir.path(), "prod").unwrap_err();
    assert!(matches!(err, TlsError::CaExists { .. }), "{err:?}");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&ca).unwrap(), before);

    // A lone key also counts as an existing CA.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join(CA_KEY_FILE), "x").unwrap();
    let err = init_ca(other.path(), "prod").unwrap_err();
    assert!(err.to_string().contains("ca.key already exists"), "{err}");
}

#[test]
fn bad_input_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let err = issue(dir.path(), Role::Agent, "gpu-01", &[], 30).unwrap_err();
    assert!(err.to_string().contains("certs init"), "{err}");

    assert!(init_ca(dir.path(), "bad name").unwrap_err().to_string().starts_with("cluster_name: "));
    assert!(init_ca(dir.path(), "").unwrap_err().to_string().starts_with("cluster_name: "));
    init_ca(dir.path(), "prod").unwrap();

    let err = issue(dir.path(), Role::Agent, "a b", &[], 30).unwrap_err();
    assert!(err.to_string().starts_with("name: "), "{err}");
    let err = issue(dir.path(), Role::Agent, "../etc", &[], 30).unwrap_err();
    assert!(err.to_string().starts_with("name: "), "{err}");
    let err = issue(dir.path(), Role::Agent, "gpu-01", &["not a host!".into()], 30).unwrap_err();
    assert!(err.to_string().starts_with("san: "), "{err}");
    let err = issue(dir.path(), Role::Agent, "gpu-01", &[COORDINATOR_SERVER_NAME.into()], 30).unwrap_err();
    assert!(err.to_string().starts_with("san: ") && err.to_string().contains("reserved"), "{err}");
    for days in [0, MAX_DAYS + 1] {
        let err = issue(dir.path(), Role::Agent, "gpu-01", &[], days).unwrap_err();
        assert!(err.to_string().starts_with("days: "), "{err}");
    }
    let err = "root".parse::<Role>().unwrap_err();
    assert!(err.starts_with("role: "), "{err}");
    // Nothing was written by the refused requests.
    assert!(!dir.path().join("agent-gpu-01.pem").exists());
}

#[test]
fn key_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("new/pki");
    init_ca(&pki, "prod").unwrap();
    assert_eq!(mode(&pki), 0o700);
    assert_eq!(mode(&pki.join(CA_KEY_FILE)), 0o600);
    let files = issue(&pki, Role::Operator, "alice", &[], 30).unwrap();
    assert_eq!(mode(&files.key), 0o600);
    // Renewal replaces the key and keeps it private.
    let files = issue(&pki, Role::Operator, "alice", &[], 30).unwrap();
    assert_eq!(mode(&files.key), 0o600);
}

#[test]
fn load_names_the_bad_file() {
    let (dir, _, _) = pki();
    let good = TlsFiles::in_dir(dir.path(), Role::Agent, "gpu-01");

    let missing = TlsFiles { key: dir.path().join("nope.key"), ..good.clone() };
    assert!(Identity::load(&missing).unwrap_err().to_string().contains("nope.key"));

    let wrong_key = TlsFiles { key: dir.path().join("coordinator-c1.key"), ..good.clone() };
    let err = Identity::load(&wrong_key).unwrap_err().to_string();
    assert!(err.contains("coordinator-c1.key") && err.contains("does not belong"), "{err}");

    let foreign = tempfile::tempdir().unwrap();
    init_ca(foreign.path(), "other").unwrap();
    let foreign_ca = TlsFiles { ca: foreign.path().join(CA_CERT_FILE), ..good.clone() };
    let err = Identity::load(&foreign_ca).unwrap_err().to_string();
    assert!(err.contains("agent-gpu-01.pem") && err.contains("not valid under the CA"), "{err}");

    let not_pem = TlsFiles { cert: dir.path().join(CA_KEY_FILE), ..good };
    let err = Identity::load(&not_pem).unwrap_err().to_string();
    assert!(err.contains("ca.key") && err.contains("no PEM certificate"), "{err}");
}

#[test]
fn only_coordinators_serve() {
    let (_dir, _, agent_id) = pki();
    let err = server_config(&agent_id, &[ALPN_AGENT]).unwrap_err();
    assert!(matches!(err, TlsError::NotCoordinator { .. }), "{err:?}");
}

/// Who connected with which ALPN, or why the handshake failed.
type Accepted = tokio::task::JoinHandle<Result<(PeerIdentity, Vec<u8>), String>>;

/// A server endpoint on 127.0.0.1:0 and a task that accepts one connection and
/// reports who connected with which ALPN, or the handshake error.
fn serve_one(id: &Identity, alpns: &[&[u8]]) -> (quinn::Endpoint, SocketAddr, Accepted) {
    let config = server_config(id, alpns).unwrap();
    let endpoint = quinn::Endpoint::server(config, (Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let server = endpoint.clone();
    let task = tokio::spawn(async move {
        let incoming = server.accept().await.ok_or("endpoint closed")?;
        let conn = incoming.await.map_err(|e| e.to_string())?;
        let peer = peer_identity(&conn).map_err(|e| e.to_string())?;
        let alpn = negotiated_alpn(&conn).ok_or("no ALPN")?;
        // Keep the connection open until the client has seen it complete.
        conn.closed().await;
        Ok((peer, alpn))
    });
    (endpoint, addr, task)
}

/// Connects with `config`; Ok only if the connection is established and still
/// open after one round trip (a refused client certificate is reported by the
/// server after the client already thinks it is done, so a client-side
/// handshake alone proves nothing).
async fn connect(config: quinn::ClientConfig, addr: SocketAddr) -> Result<quinn::Connection, String> {
    let client = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let conn = client
        .connect_with(config, addr, COORDINATOR_SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(LIMIT, probe(&conn)).await {
        Ok(Ok(())) => Ok(conn),
        // The stream error only says "connection lost"; the reason is on the connection.
        Ok(Err(e)) => Err(conn.close_reason().map_or(e, |reason| reason.to_string())),
        Err(_) => Err("timed out".into()),
    }
}

/// Succeeds once the server has acknowledged data on a stream, which it does
/// only after it accepted our certificate; fails if it closes the connection.
async fn probe(conn: &quinn::Connection) -> Result<(), String> {
    let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
    send.write_all(b"x").await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    send.stopped().await.map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test]
async fn agent_handshake_proves_identity_and_alpn() {
    let (_dir, coord, agent_id) = pki();
    let (_server, addr, task) = serve_one(&coord, &[ALPN_RAFT, ALPN_AGENT]);

    let conn = connect(client_config(&agent_id, ALPN_AGENT).unwrap(), addr).await.unwrap();
    assert_eq!(peer_identity(&conn).unwrap(), PeerIdentity { role: Role::Coordinator, name: "c1".into() });
    assert_eq!(negotiated_alpn(&conn).as_deref(), Some(ALPN_AGENT));
    conn.close(0u32.into(), b"done");

    let (peer, alpn) = tokio::time::timeout(LIMIT, task).await.unwrap().unwrap().unwrap();
    assert_eq!(peer, agent("gpu-01"));
    assert_eq!(alpn, ALPN_AGENT);
    assert_eq!(Role::for_alpn(&alpn), Some(peer.role));
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let (_dir, coord, agent_id) = pki();
    let (_server, addr, task) = serve_one(&coord, &[ALPN_AGENT]);

    let config = build_client_config(&agent_id.provider, agent_id.roots.clone(), None, ALPN_AGENT).unwrap();
    let err = connect(config, addr).await.unwrap_err();
    assert!(err.contains("peer sent no certificates"), "{err}");
    let server_err = tokio::time::timeout(LIMIT, task).await.unwrap().unwrap().unwrap_err();
    assert!(server_err.contains("peer sent no certificates"), "{server_err}");
}

#[tokio::test]
async fn client_with_foreign_ca_certificate_is_refused() {
    let (_dir, coord, agent_id) = pki();
    let (_server, addr, task) = serve_one(&coord, &[ALPN_AGENT]);

    // Same role and name, signed by another CA. The client trusts OUR CA, so
    // the only thing that can fail is the server's check of the client.
    let foreign = tempfile::tempdir().unwrap();
    init_ca(foreign.path(), "evil").unwrap();
    let evil = Identity::load(&issue(foreign.path(), Role::Agent, "gpu-01", &[], 30).unwrap()).unwrap();
    let config = build_client_config(
        &agent_id.provider,
        agent_id.roots.clone(),
        Some((evil.chain.clone(), evil.key.clone_key())),
        ALPN_AGENT,
    )
    .unwrap();
    let err = connect(config, addr).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    let server_err = tokio::time::timeout(LIMIT, task).await.unwrap().unwrap().unwrap_err();
    assert!(server_err.contains("UnknownIssuer"), "{server_err}");
}

#[tokio::test]
async fn unoffered_alpn_fails() {
    let (_dir, coord, agent_id) = pki();
    let (_server, addr, task) = serve_one(&coord, &[ALPN_RAFT, ALPN_AGENT]);

    let err = connect(client_config(&agent_id, ALPN_API).unwrap(), addr).await.unwrap_err();
    assert!(err.contains("error 120"), "no_application_protocol expected: {err}");
    assert!(tokio::time::timeout(LIMIT, task).await.unwrap().unwrap().is_err());
}

#[tokio::test]
async fn server_must_be_a_coordinator() {
    // An agent certificate that also carries the right IP cannot pose as a
    // coordinator: it lacks the coordinator name and the serverAuth usage.
    let (dir, coord, _) = pki();
    let (_server, addr, _task) = serve_one(&coord, &[ALPN_AGENT]);
    let operator = Identity::load(&issue(dir.path(), Role::Operator, "alice", &[], 30).unwrap()).unwrap();
    let conn = connect(client_config(&operator, ALPN_AGENT).unwrap(), addr).await.unwrap();
    // The *role* check is the caller's: an operator may complete a handshake
    // on the agent ALPN, and peer_identity tells it apart.
    conn.close(0u32.into(), b"done");

    let rogue = issue(dir.path(), Role::Agent, "rogue", &["127.0.0.1".into()], 30).unwrap();
    let rogue = Identity::load(&rogue).unwrap();
    let mut rogue_tls = rustls::ServerConfig::builder_with_provider(rogue.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(rogue.chain.clone(), rogue.key.clone_key())
        .unwrap();
    rogue_tls.alpn_protocols = vec![ALPN_AGENT.to_vec()];
    let rogue_config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(rogue_tls).unwrap()));
    let rogue_server = quinn::Endpoint::server(rogue_config, (Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let rogue_addr = rogue_server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = rogue_server.accept().await {
            let _ = incoming.await;
        }
    });
    let err = connect(client_config(&operator, ALPN_AGENT).unwrap(), rogue_addr).await.unwrap_err();
    assert!(err.contains("extended key usage for server authentication"), "{err}");
}

#[tokio::test]
async fn identities_signed_in_memory_handshake_like_issued_ones() {
    let (dir, coord, _agent) = pki();
    let signer = CaSigner::load(dir.path()).unwrap();
    let id = signer.identity(Role::Agent, "sim-00042", 1).unwrap();
    assert_eq!(id.peer(), &agent("sim-00042"));
    // Nothing was written: the identity lives in memory only.
    assert!(!dir.path().join("agent-sim-00042.pem").exists());

    let (_server, addr, task) = serve_one(&coord, &[ALPN_AGENT]);
    let conn = connect(client_config(&id, ALPN_AGENT).unwrap(), addr).await.unwrap();
    conn.close(0u32.into(), b"done");
    let (peer, _) = tokio::time::timeout(LIMIT, task).await.unwrap().unwrap().unwrap();
    assert_eq!(peer, agent("sim-00042"));

    assert!(matches!(signer.identity(Role::Agent, "bad name", 1), Err(TlsError::Invalid(_))));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(CaSigner::load(empty.path()), Err(TlsError::NoCa { .. })));
}

/// A coordinator killed and restarted at the same address: a client still
/// holding a connection to the dead process gets a stateless reset from
/// the new one, because both derive the reset key from the same
/// certificate key, and learns at once that the connection is gone.
#[tokio::test]
async fn a_restarted_coordinator_resets_connections_to_its_dead_self() {
    let (_dir, coord, agent_id) = pki();
    // The first "process": an endpoint on a runtime of its own, which is
    // dropped outright later (as kill -9 would: no close frame is sent).
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (die_tx, die_rx) = tokio::sync::oneshot::channel::<()>();
    let first_coord = coord.clone();
    let first = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let held = rt.block_on(async move {
            let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            addr_tx.send(socket.local_addr().unwrap()).unwrap();
            let endpoint = quinn::Endpoint::new(
                endpoint_config(&first_coord),
                Some(server_config(&first_coord, &[ALPN_AGENT]).unwrap()),
                socket,
                Arc::new(quinn::TokioRuntime),
            )
            .unwrap();
            let conn = endpoint.accept().await.unwrap().await.unwrap();
            let _ = die_rx.await;
            (endpoint, conn)
        });
        drop(rt);
        drop(held);
    });
    let addr = addr_rx.recv().unwrap();
    let conn = connect(client_config(&agent_id, ALPN_AGENT).unwrap(), addr).await.unwrap();
    die_tx.send(()).unwrap();
    first.join().unwrap();

    let _second = quinn::Endpoint::new(
        endpoint_config(&coord),
        Some(server_config(&coord, &[ALPN_AGENT]).unwrap()),
        std::net::UdpSocket::bind(addr).unwrap(),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    // Any packet on the old connection now draws a reset.
    if let Ok(mut s) = conn.open_uni().await {
        let _ = s.write_all(b"x").await;
    }
    let reason = tokio::time::timeout(LIMIT, conn.closed()).await.unwrap();
    assert!(matches!(reason, quinn::ConnectionError::Reset), "{reason:?}");
}
