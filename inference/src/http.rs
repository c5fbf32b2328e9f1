//! The HTTP shell: `GET /health` and `POST /v1/infer`.
//!
//! Request parsing and validation live in [`run_batch`], a plain function of
//! the model and the body bytes; the axum handlers only move bytes and status
//! codes. [`serve`] takes an already-bound listener and a shutdown future, so
//! tests can bind port 0.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::net::TcpListener;

use crate::gpu_env::GpuEnv;
use crate::model::{argmax, Model};

/// Most rows accepted in one request.
pub const MAX_BATCH: usize = 256;

/// Largest accepted request body. A full batch of 256 × 16 numbers written
/// with full f32 precision is about 100 KiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Largest accepted input magnitude: far beyond any sensible feature, small
/// enough that the forward pass cannot overflow f32.
pub const MAX_ABS_INPUT: f32 = 1.0e6;

/// What the handlers share; built once at start.
#[derive(Debug)]
pub struct AppState {
    pub model: Model,
    pub gpu: GpuEnv,
    /// When this process started (Unix ms): tells a restart from a survivor.
    pub started_unix_ms: u64,
}

/// `POST /v1/infer` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    pub inputs: Vec<Vec<f32>>,
}

/// The result of one batch: softmax rows and the winning class of each.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchOutput {
    pub outputs: Vec<Vec<f32>>,
    pub argmax: Vec<usize>,
}

/// Why a request was refused; the message goes back in `{"error": ...}`.
#[derive(Debug, Error)]
pub enum RequestError {
    #[error("invalid request body: {0}")]
    Json(serde_json::Error),
    #[error("inputs: expected 1 to {MAX_BATCH} rows, got 0")]
    EmptyBatch,
    #[error("inputs: expected at most {MAX_BATCH} rows, got {0}")]
    TooManyRows(usize),
    #[error("inputs[{row}]: expected {expected} numbers, got {got}")]
    RowLength { row: usize, expected: usize, got: usize },
    #[error("inputs[{row}][{col}]: expected a finite number of magnitude at most {MAX_ABS_INPUT:e}")]
    BadNumber { row: usize, col: usize },
    #[error("inputs[{0}]: the model's output is not finite")]
    NonFiniteOutput(usize),
}

/// Parses, validates and runs one `POST /v1/infer` body. Every row is
/// checked before any is run, so a bad row costs no inference.
pub fn run_batch(model: &Model, body: &[u8]) -> Result<BatchOutput, RequestError> {
    let request: InferRequest = serde_json::from_slice(body).map_err(RequestError::Json)?;
    let rows = request.inputs;
    if rows.is_empty() {
        return Err(RequestError::EmptyBatch);
    }
    if rows.len() > MAX_BATCH {
        return Err(RequestError::TooManyRows(rows.len()));
    }
    for (row, values) in rows.iter().enumerate() {
        if values.len() != model.input_dim() {
            return Err(RequestError::RowLength { row, expected: model.input_dim(), got: values.len() });
        }
        if let Some(col) = values.iter().position(|v| !(v.is_finite() && v.abs() <= MAX_ABS_INPUT)) {
            return Err(RequestError::BadNumber { row, col });
        }
    }
    let mut out =
        BatchOutput { outputs: Vec::with_capacity(rows.len()), argmax: Vec::with_capacity(rows.len()) };
    for (row, values) in rows.iter().enumerate() {
        let probs = model.infer(values).ok_or(RequestError::NonFiniteOutput(row))?;
        out.argmax.push(argmax(&probs));
        out.outputs.push(probs);
    }
    Ok(out)
}

/// The routes, with the body limit applied.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/infer", post(infer))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

#[derive(Serialize)]
struct HealthResponse<'a> {
    status: &'static str,
    model: &'a str,
    gpu: &'a GpuEnv,
    started_unix_ms: u64,
}

#[derive(Serialize)]
struct InferResponse<'a> {
    #[serde(flatten)]
    batch: BatchOutput,
    model: &'a str,
    gpu: &'a GpuEnv,
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    Json(HealthResponse {
        status: "ok",
        model: state.model.name(),
        gpu: &state.gpu,
        started_unix_ms: state.started_unix_ms,
    })
    .into_response()
}

async fn infer(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    // Taking the rejection lets an over-long body get the same JSON error
    // shape (with axum's 413) as every other refusal.
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return error_response(rejection.status(), rejection.body_text()),
    };
    // A full batch is ~150 kFLOP: microseconds, so it runs inline on the
    // runtime rather than on the blocking pool.
    match run_batch(&state.model, &body) {
        Ok(batch) => {
            tracing::debug!(rows = batch.argmax.len(), "inferred");
            Json(InferResponse { batch, model: state.model.name(), gpu: &state.gpu }).into_response()
        }
        Err(err) => {
            tracing::debug!(error = %err, "refused request");
            error_response(StatusCode::BAD_REQUEST, err.to_string())
        }
    }
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "no such route; try GET /health or POST /v1/infer".to_owned())
}

fn error_response(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Weights;

    /// 2 → 2 → 2 identity-ish model: class 1 wins when x[1] > x[0].
    fn model() -> Model {
        Model::new(
            "test",
            None,
            Weights {
                w1: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
                b1: vec![0.0, 0.0],
                w2: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
                b2: vec![0.0, 0.0],
            },
        )
        .expect("valid")
    }

    fn refusal(body: &str) -> String {
        run_batch(&model(), body.as_bytes()).expect_err("must be refused").to_string()
    }

    #[test]
    fn runs_a_batch() {
        let out = run_batch(&model(), br#"{"inputs": [[1, 0], [0, 2], [0, 0]]}"#).expect("runs");
        assert_eq!(out.argmax, vec![0, 1, 0]);
        assert_eq!(out.outputs.len(), 3);
        assert_eq!(out.outputs[2], vec![0.5, 0.5]);
    }

    #[test]
    fn refusals_name_the_row_and_field() {
        assert_eq!(
            refusal(r#"{"inputs": [[1, 2], [1, 2], [1, 2, 3]]}"#),
            "inputs[2]: expected 2 numbers, got 3"
        );
        assert_eq!(refusal(r#"{"inputs": []}"#), "inputs: expected 1 to 256 rows, got 0");
        assert_eq!(
            refusal(r#"{"inputs": [[1, 2], [3, 1e39]]}"#),
            "inputs[1][1]: expected a finite number of magnitude at most 1e6"
        );
        assert_eq!(
            refusal(r#"{"inputs": [[1, -2000000]]}"#),
            "inputs[0][1]: expected a finite number of magnitude at most 1e6"
        );
        let many = format!(r#"{{"inputs": [{}]}}"#, vec!["[0, 0]"; MAX_BATCH + 1].join(","));
        assert_eq!(refusal(&many), "inputs: expected at most 256 rows, got 257");
    }

    #[test]
    fn malformed_bodies_are_refused_with_the_parser_message() {
        assert!(refusal("not json").starts_with("invalid request body: expected ident"));
        assert!(refusal(r#"{"inputs": [[1, "a"]]}"#).contains("invalid type: string \"a\""));
        assert!(refusal(r#"{"inputs": [[1, 2]], "extra": 1}"#).contains("unknown field `extra`"));
        assert!(refusal(r#"{}"#).contains("missing field `inputs`"));
    }

    #[test]
    fn full_batch_is_accepted() {
        let full = format!(r#"{{"inputs": [{}]}}"#, vec!["[0, 1]"; MAX_BATCH].join(","));
        assert_eq!(run_batch(&model(), full.as_bytes()).expect("runs").argmax, vec![1; MAX_BATCH]);
    }

    #[test]
    fn response_shape_matches_the_documented_api() {
        let gpu = GpuEnv::from_vars([("CUDA_VISIBLE_DEVICES", "GPU-a")]);
        let batch = run_batch(&model(), br#"{"inputs": [[0, 0]]}"#).expect("runs");
        let json = serde_json::to_value(InferResponse { batch, model: "test", gpu: &gpu }).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "outputs": [[0.5, 0.5]],
                "argmax": [0],
                "model": "test",
                "gpu": {"CUDA_VISIBLE_DEVICES": "GPU-a"},
            })
        );
    }
}
