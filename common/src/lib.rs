//! Types shared by every Gantry process.
//!
//! # Layout
//!
//! - [`model`]: nodes, GPUs, telemetry — the nouns of the cluster.
//! - [`workload`]: workload specs (and their TOML file), allocations, agent reports.
//! - [`api`]: operator requests and the views they return (admin socket, remote API, forwarding).
//! - [`identity`]: roles, ALPN names, and the identity a certificate proves.
//! - [`schema`]: the encoding of everything stored or sent (named MessagePack), its rules and versions.
//! - [`wire`]: length-prefixed frames and the QUIC messages.
//! - [`tls`]: cluster CA, certificate issuance, rustls/quinn configs that check roles.
//! - [`gpu_spec`]: parsing `8xH100-80GB,2xL4-24GB` into simulated GPU descriptions.
//! - [`rpc`]: one request/response per QUIC stream, the hello exchange, failure classes.
//! - [`slow_calls`]: whether an agent's link outlives a heartbeat that timed out.
//! - [`reload`]: the SIGHUP configuration reload loop of both daemons.
//! - [`strict`]: operators' TOML and JSON, read with unknown fields refused and errors that name the field.
//! - [`shutdown`]: the SIGTERM/SIGINT stop signal, installed eagerly.
//! - [`config`]: loading TOML config files with errors that name the field; what changed on reload.
//! - [`logging`]: the daemons' tracing setup, with a log filter that SIGHUP can change.
//! - [`systemd`]: sd_notify (READY, STATUS, STOPPING, RELOADING) and the watchdog ping.
//! - `http_server` (feature `http-server`): the bounded HTTP accept loop of the daemons' listeners.
//! - [`cli_docs`]: man pages and shell completions generated from a binary's clap `Command`.
//! - [`exit`]: how the binaries end on an error (one `error: ...` line, status 1).
//! - [`exposition`]: `/metrics` in OpenMetrics or the Prometheus text format, by `Accept`.
//!
//! Nothing here spawns tasks or binds sockets: the daemons own those.

pub mod api;
pub mod cli_docs;
pub mod config;
pub mod exit;
pub mod exposition;
pub mod gpu_spec;
#[cfg(feature = "http-server")]
pub mod http_server;
pub mod identity;
pub mod logging;
pub mod model;
pub mod reload;
pub mod rpc;
pub mod schema;
pub mod shutdown;
pub mod slow_calls;
pub mod strict;
pub mod systemd;
pub mod tls;
pub mod wire;
pub mod workload;
