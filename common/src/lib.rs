//! Types shared by every Gantry process.
//!
//! # Layout
//!
//! - [`model`]: nodes, GPUs, telemetry — the nouns of the cluster.
//! - [`api`]: operator requests and the views they return (admin socket, remote API, forwarding).
//! - [`identity`]: roles, ALPN names, and the identity a certificate proves.
//! - [`wire`]: length-prefixed postcard frames and the QUIC messages.
//! - [`tls`]: cluster CA, certificate issuance, rustls/quinn configs that check roles.
//! - [`gpu_spec`]: parsing `8xH100-80GB,2xL4-24GB` into simulated GPU descriptions.
//! - [`rpc`]: one request/response per QUIC stream, the hello exchange, failure classes.
//! - [`config`]: loading TOML config files with errors that name the field.
//!
//! Nothing here starts long-lived tasks or binds sockets: the daemons own those.

pub mod api;
pub mod config;
pub mod gpu_spec;
pub mod identity;
pub mod model;
pub mod rpc;
pub mod tls;
pub mod wire;
