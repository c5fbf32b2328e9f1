//! `gantryctl certs`: create the cluster CA and sign certificates with it.

use std::path::{Path, PathBuf};

use crate::out::outln;
use anyhow::Context;
use gantry_common::identity::{PeerIdentity, Role};
use gantry_common::tls::{self, TlsFiles, CA_KEY_FILE};

/// Create the cluster CA and sign coordinator, agent and operator certificates.
///
/// Every Gantry connection is mutual TLS under one cluster CA. A certificate
/// says who holds it (`urn:gantry:<role>:<name>`), and a connection may only do
/// what that role allows. Keep `ca.key` off the cluster's hosts: copy only
/// `ca.pem` and the holder's own `.pem` and `.key` to each host.
#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    #[command(subcommand)]
    cmd: CertsCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CertsCommand {
    /// Create a new cluster CA: DIR/ca.pem (certificate) and DIR/ca.key (private key, mode 0600).
    ///
    /// Refuses to overwrite an existing CA: replacing it would invalidate every
    /// certificate it signed.
    Init {
        /// Directory for the CA files; created (mode 0700) if missing.
        #[arg(long, value_name = "PKI")]
        dir: PathBuf,
        /// Name of the cluster, written into the CA's subject.
        #[arg(long, value_name = "NAME", default_value = "gantry")]
        cluster_name: String,
    },
    /// Sign a certificate with the CA in DIR: writes DIR/<role>-<name>.pem and .key (mode 0600).
    ///
    /// Issuing again for the same role and name replaces both files; that is how
    /// a certificate is renewed. Coordinator certificates also carry the DNS
    /// name `coordinator.gantry`, which clients check whatever address they dial.
    Issue {
        /// Directory holding the CA (see `certs init`); the new files go there too.
        #[arg(long, value_name = "PKI")]
        dir: PathBuf,
        /// What the holder may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The holder's name: the node name for an agent, the member name for a
        /// coordinator, a person or script for an operator. ASCII letters,
        /// digits, '-', '_' and '.', at most 63.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Extra subject alternative name: an IP address or a DNS name. Repeatable.
        #[arg(long = "san", value_name = "HOST_OR_IP")]
        sans: Vec<String>,
        /// Days the certificate stays valid.
        #[arg(long, value_name = "N", default_value_t = tls::DEFAULT_DAYS)]
        days: u32,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum RoleArg {
    /// Control-plane member: serves agents and clients, speaks Raft.
    Coordinator,
    /// A GPU host's agent: reports for its own node only.
    Agent,
    /// A person or script administering the cluster remotely.
    Operator,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Coordinator => Role::Coordinator,
            RoleArg::Agent => Role::Agent,
            RoleArg::Operator => Role::Operator,
        }
    }
}

/// Runs `gantryctl certs ...`; with `json`, prints one JSON object instead of prose.
pub fn run(args: CertsArgs, json: bool) -> anyhow::Result<()> {
    match args.cmd {
        CertsCommand::Init { dir, cluster_name } => {
            let ca_cert = tls::init_ca(&dir, &cluster_name)
                .with_context(|| format!("creating the cluster CA in {}", dir.display()))?;
            let ca_key = dir.join(CA_KEY_FILE);
            if json {
                let out = serde_json::json!({
                    "cluster_name": cluster_name,
                    "ca_cert": ca_cert,
                    "ca_key": ca_key,
                });
                outln!("{out}");
            } else {
                outln!("Created cluster CA {cluster_name:?}:");
                outln!("  certificate  {}", ca_cert.display());
                outln!("  private key  {}  (keep it secret and off the cluster's hosts)", ca_key.display());
                outln!();
                outln!("Next: gantryctl certs issue --dir {} --role coordinator --name NAME", shell(&dir));
            }
        }
        CertsCommand::Issue { dir, role, name, sans, days } => {
            let role = Role::from(role);
            let files = tls::issue(&dir, role, &name, &sans, days)
                .with_context(|| format!("issuing a certificate for {role} {name:?}"))?;
            print_issued(&files, &PeerIdentity { role, name }, &sans, days, json)?;
        }
    }
    Ok(())
}

fn print_issued(
    files: &TlsFiles,
    peer: &PeerIdentity,
    sans: &[String],
    days: u32,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let out = serde_json::json!({
            "role": peer.role,
            "name": peer.name,
            "identity": peer.to_uri(),
            "sans": sans,
            "days": days,
            "files": serde_json::to_value(files)?,
        });
        outln!("{out}");
        return Ok(());
    }
    outln!("Issued {peer} certificate ({}), valid {days} days:", peer.to_uri());
    outln!("  CA           {}", files.ca.display());
    outln!("  certificate  {}", files.cert.display());
    outln!("  private key  {}  (mode 0600)", files.key.display());
    if !sans.is_empty() {
        outln!("  extra names  {}", sans.join(", "));
    }
    outln!();
    outln!(
        "Copy these three files to the {} host and point the `[tls]` section of its config (ca, cert, key) at them.",
        peer.role
    );
    Ok(())
}

/// A path as the user could paste it back into a shell (quoted when needed).
fn shell(path: &Path) -> String {
    let s = path.display().to_string();
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
