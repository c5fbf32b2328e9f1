//! `gantry-infer`: a small, real inference server for Gantry's end-to-end
//! tests and `gantryctl dev --demo`.
//!
//! It serves a tiny MLP (16 inputs → 32 ReLU → 4 softmax outputs) whose
//! weights are committed as `model/tiny-mlp.json` and built into the binary,
//! answers `GET /health` and `POST /v1/infer`, and reports the GPU it was
//! given as the container saw it in its environment. It never touches a GPU:
//! its job is to be a real process in a real container that the agent starts,
//! places and stops, and to say what it was handed.
//!
//! ```text
//! GET  /health    -> 200 {"status":"ok","model":"tiny-mlp","gpu":{...}}
//! POST /v1/infer  {"inputs":[[f32; 16], ...]}            (1..=256 rows)
//!                 -> 200 {"outputs":[[f32; 4], ...],"argmax":[...],"model":"tiny-mlp","gpu":{...}}
//!                 -> 400 {"error":"inputs[2]: expected 16 numbers, got 3"}
//!                 -> 413 {"error":"..."}                      (body over 1 MiB)
//! ```
//!
//! The binary is linked statically and shipped in a `FROM scratch` image
//! (`build-image.sh`, `Dockerfile`); `test-image.sh` checks the image end to
//! end and `bench.sh` measures request latency.
//!
//! # Layout
//!
//! - `main.rs` — the CLI: serve (default), `--generate-model`, `--check-model`;
//!   logging and the SIGTERM/SIGINT shutdown signal.
//! - [`config`] — choosing the listen address (`--listen`, `GANTRY_PORT_HTTP`,
//!   `PORT`, 8080).
//! - [`model`] — the model file format, its validation (dimensions, finite
//!   weights, FNV-1a checksum) and the forward pass. Pure.
//! - [`generate`] — the deterministic generator of the committed model file.
//! - [`gpu_env`] — the GPU report taken from the environment.
//! - [`http`] — request validation ([`http::run_batch`], pure) and the axum
//!   routes around it; [`http::serve`] takes a bound listener and a shutdown
//!   future.

pub mod config;
pub mod generate;
pub mod gpu_env;
pub mod http;
pub mod model;
