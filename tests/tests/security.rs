//! Who may talk to a coordinator: real QUIC clients against a real process.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::sync::Arc;
use std::time::Duration;

use gantry_common::api::{ApiRequest, ApiResponse};
use gantry_common::identity::{Role, ALPN_AGENT, ALPN_API, ALPN_RAFT};
use gantry_common::rpc::{self, RpcError};
use gantry_common::tls::{self, Identity, TlsFiles, COORDINATOR_SERVER_NAME};
use gantry_common::wire::{
    AgentRequest, AgentResponse, ApiCall, ApiReply, Hello, HelloReply, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
use gantry_tests::{serial, DevCluster, DevOptions};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const T: Duration = Duration::from_secs(5);

fn endpoint() -> anyhow::Result<quinn::Endpoint> {
    Ok(quinn::Endpoint::client("127.0.0.1:0".parse()?)?)
}

/// A client config that trusts the cluster CA but presents `client` (or nothing).
fn raw_client(
    ca: &std::path::Path,
    client: Option<&TlsFiles>,
    alpn: &[u8],
) -> anyhow::Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca)?)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let chain = vec![CertificateDer::from_pem_file(&files.cert)?];
            let key = PrivateKeyDer::from_pem_file(&files.key)?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(config)?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

async fn connect(config: quinn::ClientConfig, addr: &str) -> Result<quinn::Connection, RpcError> {
    let ep = endpoint().map_err(|e| RpcError::Unreachable { addr: addr.into(), reason: e.to_string() })?;
    rpc::connect(&ep, config, addr, COORDINATOR_SERVER_NAME, "test", T).await.map(|(c, _)| c)
}

#[test]
fn coordinator_refuses_clients_it_must_not_serve() -> anyhow::Result<()> {
    let _serial = serial();
    let c = DevCluster::start(DevOptions { coordinators: 1, agents: 1, ..Default::default() })?;
    let coord = c.coordinators()[0].clone();
    let addr = coord.listen.clone();
    let pki = c.pki();
    let ca = pki.join("ca.pem");
    let agent = TlsFiles::in_dir(&pki, Role::Agent, "node-1");
    let operator = TlsFiles::in_dir(&pki, Role::Operator, "dev-operator");
    let foreign_dir = tempfile::tempdir()?;
    tls::init_ca(foreign_dir.path(), "elsewhere")?;
    let foreign = tls::issue(foreign_dir.path(), Role::Agent, "node-1", &[], 1)?;

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        // Positive control: an operator on gantry-api/1 is served.
        let id = Identity::load(&operator)?;
        let conn = connect(tls::client_config(&id, ALPN_API)?, &addr).await?;
        let reply: ApiReply = rpc::call(&conn, &addr, &ApiCall(ApiRequest::Nodes), DEFAULT_MAX_FRAME, T).await?;
        match reply.0 {
            Ok(ApiResponse::Nodes(nodes)) => assert_eq!(nodes.len(), 1),
            other => panic!("operator not served: {other:?}"),
        }

        // No client certificate.
        let r = connect(raw_client(&ca, None, ALPN_AGENT)?, &addr).await;
        let err = r.expect_err("a client without a certificate was served");
        assert!(err.to_string().contains("certificate"), "{err}");

        // A certificate from another CA (the client trusts our CA, so only the server can refuse).
        let r = connect(raw_client(&ca, Some(&foreign), ALPN_AGENT)?, &addr).await;
        let err = r.expect_err("a client with a foreign CA's certificate was served");
        assert!(!err.is_unreachable(), "refusal must not look like an outage: {err}");

        // Right CA, wrong role for the ALPN: an agent may not speak Raft, an operator may not act as an agent.
        let id = Identity::load(&agent)?;
        let err = connect(tls::client_config(&id, ALPN_RAFT)?, &addr).await.expect_err("agent spoke raft");
        assert!(err.to_string().contains("may not use gantry-raft/1"), "{err}");
        let id = Identity::load(&operator)?;
        let err = connect(tls::client_config(&id, ALPN_AGENT)?, &addr).await.expect_err("operator acted as agent");
        assert!(err.to_string().contains("may not use gantry-agent/1"), "{err}");

        // An agent may only report for its own node.
        let id = Identity::load(&agent)?;
        let conn = connect(tls::client_config(&id, ALPN_AGENT)?, &addr).await?;
        let hb = gantry_common::wire::Heartbeat {
            node: "node-2".into(),
            seq: 1,
            host: gantry_common::model::HostTelemetry { cpu_usage_pct: 0.0, memory_used_mib: 0 },
            gpus: vec![],
        };
        let resp: AgentResponse = rpc::call(&conn, &addr, &AgentRequest::Heartbeat(hb), DEFAULT_MAX_FRAME, T).await?;
        match resp {
            AgentResponse::Refused { reason } => assert!(reason.contains("not for node \"node-2\""), "{reason}"),
            other => panic!("agent reported for another node: {other:?}"),
        }

        // A protocol version mismatch is answered clearly, not as a decode failure.
        let id = Identity::load(&agent)?;
        let ep = endpoint()?;
        let conn = ep.connect_with(tls::client_config(&id, ALPN_AGENT)?, addr.parse()?, COORDINATOR_SERVER_NAME)?.await?;
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION + 1,
            software: "future".into(),
            max_protocol_version: PROTOCOL_VERSION + 1,
        };
        let reply: HelloReply = rpc::send_hello(&conn, &addr, &hello, T).await?;
        assert!(
            matches!(reply, HelloReply::VersionMismatch { ours, theirs, .. } if ours == PROTOCOL_VERSION && theirs == PROTOCOL_VERSION + 1),
            "{reply:?}"
        );
        // An agent of protocol 1 (postcard messages, c6cdaa7) is told the same way.
        let conn = ep.connect_with(tls::client_config(&id, ALPN_AGENT)?, addr.parse()?, COORDINATOR_SERVER_NAME)?.await?;
        let hello = Hello { protocol_version: 1, software: "gantry-agent 0.1.0".into(), max_protocol_version: 1 };
        let reply: HelloReply = rpc::send_hello(&conn, &addr, &hello, T).await?;
        assert!(matches!(reply, HelloReply::VersionMismatch { theirs: 1, .. }), "{reply:?}");
        // An agent of protocol 2 (7a019f8) is accepted with the answer it knows.
        let conn = ep.connect_with(tls::client_config(&id, ALPN_AGENT)?, addr.parse()?, COORDINATOR_SERVER_NAME)?.await?;
        let hello = Hello { protocol_version: 2, software: "gantry-agent 0.1.0".into(), max_protocol_version: 2 };
        let reply: HelloReply = rpc::send_hello(&conn, &addr, &hello, T).await?;
        assert!(matches!(reply, HelloReply::Ok { .. }), "{reply:?}");
        // And a current one agrees on the current version.
        let conn = ep.connect_with(tls::client_config(&id, ALPN_AGENT)?, addr.parse()?, COORDINATOR_SERVER_NAME)?.await?;
        let hello = Hello::current("gantry-agent 0.2.0", PROTOCOL_VERSION);
        let reply: HelloReply = rpc::send_hello(&conn, &addr, &hello, T).await?;
        assert_eq!(reply.version(), Some(PROTOCOL_VERSION), "{reply:?}");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}
